"""`BigQueryWriter`: the BigQuery persist backend (a `connectors.sinks.base.TableWriter`).

- `ensure_table` creates the dataset and table if missing (live: HOUR partitions on the
  table's partition field with a partition expiration; historical: DAY partitions, kept;
  both clustered on exchange, symbol), adds columns a newer schema has, and creates the
  `<table>_dedup` view that keeps one row per row_key.
- `write` checks REQUIRED columns locally (rows with a null there come back rejected with
  the reason, before anything is sent), then writes through the Storage Write API default
  stream with Arrow record batches (requests under the 10 MB cap, one AppendRows call per
  write on a long-lived channel) or, when configured, the legacy `insert_all` streaming API
  with row_key as insertId. Transient errors are retried with exponential backoff and
  jitter; rows the service refuses come back rejected with its message; an error that
  outlasts the retries raises `RetriesExhausted` (rows may be partly written: the sink
  resubmits the batch and the dedup view hides the repeats).

The default stream is at-least-once: a retry after a lost response writes rows twice.
Users query `<table>_dedup`, so a replayed or retried batch never doubles a row there.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.api_core import exceptions as gexc

from connectors.bigquery.client import BigQueryClients, make_clients
from connectors.bigquery.retry import (
    TRANSIENT_RPC_CODES,
    Backoff,
    RetriesExhausted,
    Sleep,
    is_transient,
)
from connectors.bigquery.schema import (
    DAY_MS,
    DEDUP_SUFFIX,
    bq_type,
    dedup_view_sql,
    table_resource,
)
from connectors.sinks.base import WriteResult
from connectors.tables import TableDef, conform
from dataflows.config import BigQueryConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: insert_all per-row reasons that mean "not inserted, but the row itself is fine".
_RESEND_REASONS = frozenset({"stopped", "timeout", "backendError"})
#: Errors of a whole request that say the rows are unusable (they go to the dead letters).
_DATA_ERRORS = (gexc.BadRequest, gexc.FailedPrecondition, gexc.OutOfRange)
_RPC_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def reason_table(rows: pa.Table | pa.RecordBatch, reason: str | pa.Array) -> pa.Table:
    """`rows` plus a string column `reason` (the dead-letter shape of WriteResult.rejected)."""
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    col = (pa.array([reason] * rows.num_rows, pa.string()) if isinstance(reason, str)
           else reason)
    return rows.append_column(pa.field("reason", pa.string()), col)


def split_required(table: TableDef, rows: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """(rows with every REQUIRED column set, rejected rows with a reason naming the nulls).

    Done before sending because BigQuery would fail the whole request for one such row (and
    the emulator does not check REQUIRED at all).
    """
    masks: list[np.ndarray] = []
    names: list[str] = []
    for col in table.required:
        m = pc.is_null(rows.column(col))
        if pc.any(m).as_py():
            masks.append(_flat(m).to_numpy(zero_copy_only=False))
            names.append(col)
    if not masks:
        return rows, None
    bad = np.logical_or.reduce(masks)
    idx = np.flatnonzero(bad)
    # Rejected rows are few: a Python string per rejected row is fine here.
    reasons = ["REQUIRED column is null: " + ", ".join(
        n for n, m in zip(names, masks, strict=True) if m[i]) for i in idx]
    keep = pa.array(~bad)
    return (rows.filter(keep),
            reason_table(rows.take(pa.array(idx)), pa.array(reasons, pa.string())))


def _flat(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def json_rows(rows: pa.Table) -> list[dict[str, Any]]:
    """Rows as insert_all JSON objects: RFC 3339 timestamps, NaN/Infinity as strings."""
    names = rows.column_names
    cols: list[list[Any]] = []
    for f in rows.schema:
        col = rows.column(f.name)
        if pa.types.is_timestamp(f.type):
            cols.append(pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ").to_pylist())
        elif pa.types.is_floating(f.type):
            values = col.to_pylist()
            if not pc.all(pc.fill_null(pc.is_finite(col), True)).as_py():
                values = [_json_float(v) for v in values]
            cols.append(values)
        else:
            cols.append(col.to_pylist())
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]


def _json_float(v: float | None) -> float | str | None:
    if v is None or math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


@dataclass
class _Chunk:
    """One AppendRows request: a record batch and its serialized bytes."""

    batch: pa.RecordBatch
    payload: bytes


@dataclass
class _Stats:
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


class BigQueryWriter:
    """Writes conformed Arrow tables to BigQuery; see the module docstring."""

    def __init__(self, config: BigQueryConfig, *, live: bool,
                 clients: BigQueryClients | None = None, sleep: Sleep = time.sleep,
                 rng: random.Random | None = None) -> None:
        if not isinstance(config, BigQueryConfig):
            raise TypeError(f"config must be a BigQueryConfig, got {type(config).__name__}")
        if not isinstance(live, bool):
            raise TypeError("live must be a bool (resolve `live: auto` with "
                            "BigQueryConfig.is_live first)")
        self.config = config
        self.live = live
        self.dataset = config.dataset_for(live)
        self.backoff = Backoff(config.max_retries, config.retry_initial_backoff / 1e6,
                               config.retry_max_backoff / 1e6)
        self._timeout_s = config.request_timeout / 1e6
        # REST calls: this writer's retry policy, not the client's built-in one.
        self._rest: dict[str, Any] = {"retry": None, "timeout": self._timeout_s}
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._owns_clients = clients is None
        self._clients = clients or make_clients(
            config.project, config.location, need_storage_write=config.write_api == "storage")
        if config.write_api == "storage" and self._clients.write is None:
            raise ValueError("write_api storage needs a Storage Write client")
        self.project: str = self._clients.project
        self._dataset_ready = False
        self._ensured: set[str] = set()
        self._schema_bytes: dict[str, bytes] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (f"BigQueryWriter(project={self.project!r}, dataset={self.dataset!r}, "
                f"live={self.live}, write_api={self.config.write_api!r})")

    @property
    def client(self) -> Any:
        """The google.cloud.bigquery.Client (for queries and table inspection)."""
        return self._clients.bq

    def table_id(self, table: TableDef | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.project}.{self.dataset}.{name}"

    def dedup_view_id(self, table: TableDef | str) -> str:
        return self.table_id(table) + DEDUP_SUFFIX

    # -- tables ------------------------------------------------------------------------

    def ensure_dataset(self) -> None:
        """Create the dataset if missing (live: a default partition expiration too)."""
        if self._dataset_ready:
            return
        from google.cloud import bigquery

        ds = bigquery.Dataset(f"{self.project}.{self.dataset}")
        ds.location = self.config.location
        if self.live:
            ds.default_partition_expiration_ms = self.config.live_partition_expiration_days \
                * DAY_MS
            ds.description = ("Live market data: HOUR partitions, "
                              f"{self.config.live_partition_expiration_days}-day expiration")
        else:
            ds.description = "Historical market data: DAY partitions, no expiration"
        self._with_retries(f"create dataset {self.dataset}",
                           lambda: self._clients.bq.create_dataset(
                               ds, exists_ok=True, **self._rest))
        self._dataset_ready = True

    def ensure_table(self, table: TableDef) -> None:
        """Create the table (and dataset, and dedup view) if missing; idempotent.

        An existing table gets the columns it lacks (added NULLABLE); a column whose type
        differs raises ValueError, since writing to it would fail for every row.
        """
        self._check_open()
        self.ensure_dataset()
        tid = self.table_id(table)
        expected = table_resource(table, tid, self.live,
                                  self.config.live_partition_expiration_days)

        def get_or_create() -> Any:
            try:
                return self._clients.bq.get_table(tid, **self._rest)
            except gexc.NotFound:
                log.info("creating BigQuery table %s (%s partitions on %s, clustered by %s)",
                         tid, expected.time_partitioning.type_, table.partition_field,
                         ", ".join(table.cluster_fields))
                return self._clients.bq.create_table(expected, exists_ok=True, **self._rest)

        existing = self._with_retries(f"create table {tid}", get_or_create)
        self._reconcile(table, existing)
        if self.config.dedup_views:
            self._ensure_dedup_view(table)
        self._ensured.add(table.name)

    def _reconcile(self, table: TableDef, existing: Any) -> None:
        have = {f.name: f for f in existing.schema}
        missing = []
        for f in table.schema:
            want = bq_type(f.type, f.name)
            got = have.get(f.name)
            if got is None:
                missing.append(f)
            elif _norm_type(got.field_type) != want:
                raise ValueError(f"BigQuery table {existing.full_table_id or table.name}: "
                                 f"column {f.name} is {got.field_type}, the schema says {want}")
        tp = existing.time_partitioning
        want_type = "HOUR" if self.live else "DAY"
        if tp is None or tp.type_ != want_type or tp.field != table.partition_field:
            log.warning("BigQuery table %s is partitioned %s, expected %s on %s; leaving it "
                        "as it is", self.table_id(table), tp, want_type, table.partition_field)
        if missing:
            from google.cloud import bigquery

            tid = self.table_id(table)
            log.info("adding columns %s to %s", [f.name for f in missing], tid)
            existing.schema = list(existing.schema) + [
                bigquery.SchemaField(f.name, bq_type(f.type, f.name), mode="NULLABLE")
                for f in missing]
            # One metadata update (BigQuery allows 5 per 10 s per table).
            self._with_retries(f"add columns to {tid}",
                               lambda: self._clients.bq.update_table(existing, ["schema"],
                                                                    **self._rest))

    def _ensure_dedup_view(self, table: TableDef) -> None:
        from google.cloud import bigquery

        vid = self.dedup_view_id(table)
        sql = dedup_view_sql(table, self.project, self.dataset)

        def create_or_update() -> None:
            try:
                view = self._clients.bq.get_table(vid, **self._rest)
            except gexc.NotFound:
                view = bigquery.Table(vid)
                view.view_query = sql
                view.description = f"{table.name}, one row per row_key"
                self._clients.bq.create_table(view, exists_ok=True, **self._rest)
                return
            if view.view_query is not None and view.view_query.strip() != sql.strip():
                view.view_query = sql
                self._clients.bq.update_table(view, ["view_query"], **self._rest)

        self._with_retries(f"create view {vid}", create_or_update)

    # -- writing -----------------------------------------------------------------------

    def write(self, table: TableDef, rows: pa.Table) -> WriteResult:
        """Write rows conformed to `table.schema`; see the module docstring."""
        self._check_open()
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if rows.num_rows == 0:
            return WriteResult(0)
        if table.name not in self._ensured:
            self.ensure_table(table)
        if not rows.schema.equals(table.schema, check_metadata=False):
            rows = conform(rows, table)
        valid, rejected_required = split_required(table, rows)
        rejected: list[pa.Table] = [rejected_required] if rejected_required is not None else []
        stats = _Stats()
        written = 0
        if valid.num_rows:
            if self.config.write_api == "storage":
                written = self._write_storage(table, valid, rejected, stats)
            else:
                written = self._write_insert_all(table, valid, rejected, stats)
        out = pa.concat_tables(rejected) if rejected else None
        details: dict[str, object] = {
            "api": self.config.write_api, "requests": stats.requests,
            "retries": stats.retries, "bytes": stats.bytes,
            "rejected_required": 0 if rejected_required is None
            else rejected_required.num_rows}
        if stats.errors:
            details["errors"] = stats.errors
        log.debug("wrote %d rows to %s (%s)", written, self.table_id(table), details)
        return WriteResult(written=written, rejected=out, details=details)

    def _chunks(self, rows: pa.Table) -> list[_Chunk]:
        """Record batches whose serialized size stays under max_request_bytes."""
        limit = self.config.max_request_bytes - 16_384  # room for the request envelope
        rows = rows.combine_chunks()
        per_row = max(1, rows.nbytes // max(1, rows.num_rows))
        out: list[_Chunk] = []
        for batch in rows.to_batches(max_chunksize=max(1, int(limit * 0.8) // per_row)):
            self._split_to_fit(batch, limit, out)
        return out

    def _split_to_fit(self, batch: pa.RecordBatch, limit: int, out: list[_Chunk]) -> None:
        payload = batch.serialize().to_pybytes()
        if len(payload) <= limit or batch.num_rows == 1:
            out.append(_Chunk(batch, payload))
            return
        half = batch.num_rows // 2
        self._split_to_fit(batch.slice(0, half), limit, out)
        self._split_to_fit(batch.slice(half), limit, out)

    def _write_storage(self, table: TableDef, rows: pa.Table, rejected: list[pa.Table],
                       stats: _Stats) -> int:
        from google.cloud.bigquery_storage_v1 import types

        stream = (f"projects/{self.project}/datasets/{self.dataset}/tables/{table.name}"
                  "/streams/_default")
        schema_bytes = self._schema_bytes.get(table.name)
        if schema_bytes is None:
            schema_bytes = table.schema.serialize().to_pybytes()
            self._schema_bytes[table.name] = schema_bytes
        metadata = (("x-goog-request-params", f"write_stream={stream}"),)
        write_client = self._clients.write
        assert write_client is not None  # checked in __init__
        pending = self._chunks(rows)
        written = 0
        attempt = 0
        recreated = False
        while pending:
            sent = list(pending)

            def requests(sent: list[_Chunk] = sent) -> Any:
                for i, chunk in enumerate(sent):
                    data: dict[str, Any] = {"rows": types.ArrowRecordBatch(
                        serialized_record_batch=chunk.payload, row_count=chunk.batch.num_rows)}
                    if i == 0:  # the schema goes with a connection's first request
                        data["writer_schema"] = types.ArrowSchema(
                            serialized_schema=schema_bytes)
                    yield types.AppendRowsRequest(
                        write_stream=stream, arrow_rows=types.AppendRowsRequest.ArrowData(**data))

            stats.requests += len(sent)
            stats.bytes += sum(len(c.payload) for c in sent)
            again: list[_Chunk] = []
            transient: str | None = None
            answered = 0
            try:
                responses = write_client.append_rows(
                    requests=requests(), retry=None, timeout=self._timeout_s, metadata=metadata)
                for resp in responses:
                    chunk = sent[answered]
                    answered += 1
                    written += self._handle_response(chunk, resp, again, rejected)
                    if resp.error.code in TRANSIENT_RPC_CODES:
                        transient = f"{_code_name(resp.error.code)}: {resp.error.message}"
                    if answered == len(sent):
                        break
                if answered < len(sent):
                    transient = "AppendRows stream ended before every response"
                    again.extend(sent[answered:])
            except Exception as e:  # classified below; anything unknown is raised
                rest = sent[answered:]
                if is_transient(e):
                    transient = _describe(e)
                    again.extend(rest)
                elif isinstance(e, gexc.NotFound) and not recreated:
                    # The table was dropped (or is not yet visible): create it once more.
                    recreated = True
                    transient = _describe(e)
                    self._ensured.discard(table.name)
                    self.ensure_table(table)
                    again.extend(rest)
                elif isinstance(e, _DATA_ERRORS):
                    for chunk in rest:
                        rejected.append(reason_table(chunk.batch, _describe(e)))
                else:
                    raise
            pending = again
            if (pending and transient is None and sum(c.batch.num_rows for c in pending)
                    == sum(c.batch.num_rows for c in sent)):
                transient = "no progress (the same rows came back for a resend)"
            if pending and transient is not None:
                stats.errors.append(transient)
                if attempt >= self.backoff.max_retries:
                    raise RetriesExhausted(
                        f"{self.table_id(table)}: {transient} (gave up after {attempt} "
                        f"retries; {sum(c.batch.num_rows for c in pending)} rows not written)",
                        pending=sum(c.batch.num_rows for c in pending))
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                stats.retries += 1
                log.warning("BigQuery append to %s: %s; retry %d/%d in %.2fs",
                            self.table_id(table), transient, attempt, self.backoff.max_retries,
                            delay)
                self._sleep(delay)
        return written

    def _handle_response(self, chunk: _Chunk, resp: Any, again: list[_Chunk],
                         rejected: list[pa.Table]) -> int:
        """Account one AppendRows response; returns rows written."""
        if len(resp.row_errors):
            # The request failed as a whole: reject the bad rows, resend the others.
            bad = {int(e.index): str(e.message) for e in resp.row_errors}
            idx = sorted(i for i in bad if 0 <= i < chunk.batch.num_rows)
            if idx:
                rejected.append(reason_table(chunk.batch.take(pa.array(idx)),
                                             pa.array([bad[i] for i in idx], pa.string())))
            keep = pa.array([i not in bad for i in range(chunk.batch.num_rows)])
            rest = chunk.batch.filter(keep)
            if rest.num_rows:
                again.append(_Chunk(rest, rest.serialize().to_pybytes()))
            return 0
        code = resp.error.code
        if code == 0:
            return int(chunk.batch.num_rows)
        if code in TRANSIENT_RPC_CODES:
            again.append(chunk)
        else:
            rejected.append(reason_table(chunk.batch,
                                         f"{_code_name(code)}: {resp.error.message}"))
        return 0

    def _write_insert_all(self, table: TableDef, rows: pa.Table, rejected: list[pa.Table],
                          stats: _Stats) -> int:
        tid = self.table_id(table)
        objs = json_rows(rows)
        keys = rows.column("row_key").to_pylist()
        reasons: dict[int, str] = {}
        written = 0
        step = self.config.insert_all_max_rows
        for start in range(0, rows.num_rows, step):
            pending = list(range(start, min(rows.num_rows, start + step)))
            attempt = 0
            recreated = False
            while pending:
                transient: str | None = None
                again: list[int] = []
                stats.requests += 1
                try:
                    errors = self._clients.bq.insert_rows_json(
                        tid, [objs[i] for i in pending], row_ids=[keys[i] for i in pending],
                        retry=None, timeout=self._timeout_s)
                except Exception as e:  # classified below; anything unknown is raised
                    if is_transient(e):
                        transient = _describe(e)
                        again = pending
                    elif isinstance(e, gexc.NotFound) and not recreated:
                        recreated = True
                        transient = _describe(e)
                        self._ensured.discard(table.name)
                        self.ensure_table(table)
                        again = pending
                    elif isinstance(e, _DATA_ERRORS):
                        for i in pending:
                            reasons[i] = _describe(e)
                    else:
                        raise
                else:
                    failed: set[int] = set()
                    for err in errors:
                        i = pending[int(err["index"])]
                        failed.add(i)
                        found = err.get("errors") or []
                        if all(r.get("reason") in _RESEND_REASONS for r in found):
                            again.append(i)
                            if any(r.get("reason") != "stopped" for r in found):
                                transient = "insert_all: " + "; ".join(
                                    str(r.get("message")) for r in found)
                        else:
                            reasons[i] = "; ".join(
                                f"{r.get('reason')}: {r.get('message')}" for r in found
                                if r.get("reason") != "stopped")
                    written += len(pending) - len(failed)
                if again and transient is None and len(again) == len(pending):
                    transient = "no progress (every row came back 'stopped')"
                pending = again
                if pending and transient is not None:
                    stats.errors.append(transient)
                    if attempt >= self.backoff.max_retries:
                        raise RetriesExhausted(
                            f"{tid}: {transient} (gave up after {attempt} retries; "
                            f"{len(pending)} rows not written)", pending=len(pending))
                    delay = self.backoff.delay(attempt, self._rng)
                    attempt += 1
                    stats.retries += 1
                    log.warning("BigQuery insert_all to %s: %s; retry %d/%d in %.2fs", tid,
                                transient, attempt, self.backoff.max_retries, delay)
                    self._sleep(delay)
        if reasons:
            idx = sorted(reasons)
            rejected.append(reason_table(rows.take(pa.array(idx)),
                                         pa.array([reasons[i] for i in idx], pa.string())))
        return written

    # -- queries and lifecycle ---------------------------------------------------------

    def query(self, sql: str, **job_config: Any) -> pa.Table:
        """Run a query and return its rows as Arrow (REST reads, so emulators work too)."""
        from google.cloud import bigquery

        cfg = bigquery.QueryJobConfig(**job_config) if job_config else None
        job = self._clients.bq.query(sql, job_config=cfg)
        return job.result().to_arrow(create_bqstorage_client=False)

    def close(self) -> None:
        """Release the clients (if this writer made them); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_clients:
            self._clients.close()

    def __enter__(self) -> BigQueryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("BigQueryWriter is closed")

    def _with_retries(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as e:
                if not is_transient(e):
                    raise
                if attempt >= self.backoff.max_retries:
                    raise RetriesExhausted(f"{what}: {_describe(e)} (gave up after {attempt} "
                                           "retries)", pending=0) from e
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                log.warning("BigQuery %s: %s; retry %d/%d in %.2fs", what, _describe(e),
                            attempt, self.backoff.max_retries, delay)
                self._sleep(delay)


def _norm_type(t: str) -> str:
    return {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}.get(t.upper(), t.upper())


def _code_name(code: int) -> str:
    return _RPC_CODE_NAMES.get(code, f"code {code}")


def _describe(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500]
