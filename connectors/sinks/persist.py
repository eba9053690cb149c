"""The persist sink: rows batched per table, written by a backend (Parquet or BigQuery).

A `FixedPartitionedSink` with one partition per table, so each table has one writer and its
batches stay in order. A table's buffer is written when it reaches the data type's
`batch_size`, when its oldest row is older than `batch_timeout` (checked as rows arrive), and
at every Bytewax snapshot (epoch), so what a recovery snapshot covers is on disk before the
snapshot is taken. Rows a backend refuses come back with a reason and go to the dead-letter
output; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.sinks.base import TableWriter
from connectors.tables import TableDef
from operators import metrics
from operators.messages import TableRows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """When a table's buffer is written: at `max_rows` rows or `max_age_s` seconds."""

    max_rows: int = 50_000
    max_age_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_age_s < 0:
            raise ValueError("max_rows must be >= 1 and max_age_s >= 0")


RejectHandler = Callable[[str, pa.Table], None]


def log_rejected(table: str, rejected: pa.Table) -> None:
    """Default handler for rows a backend refused: log them as JSON, one line each."""
    for row in rejected.to_pylist():
        log.error("dead letter for %s: %s", table, orjson.dumps(row, default=str).decode())


class RejectedRowsFile:
    """Rows a backend refused, appended as JSON lines to `{directory}/sink_rejected.jsonl`
    (one object per row: table, reason, and the row's columns), and logged."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / "sink_rejected.jsonl"
        self._lock = threading.Lock()

    def __call__(self, table: str, rejected: pa.Table) -> None:
        log.error("%s: %d row(s) refused by the backend; see %s", table, rejected.num_rows,
                  self.path)
        lines = b"".join(
            orjson.dumps({"table": table, **row}, default=str,
                         option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC) + b"\n"
            for row in rejected.to_pylist())
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(lines)


class _TablePartition(StatefulSinkPartition[TableRows, Any]):
    def __init__(self, table: TableDef, writer: TableWriter, policy: BatchPolicy,
                 on_reject: RejectHandler, resume: Any) -> None:
        self.table = table
        self.writer = writer
        self.policy = policy
        self.on_reject = on_reject
        self._buf: list[pa.Table] = []
        self._rows = 0
        self._since = 0.0
        writer.ensure_table(table)
        resume_fn = getattr(writer, "resume", None)
        if resume_fn is not None:
            resume_fn(table, resume)

    def write_batch(self, values: list[TableRows]) -> None:
        for v in values:
            if v.table != self.table.name:
                raise RuntimeError(f"rows for {v.table} were routed to the {self.table.name} "
                                   "partition; the sink's part_fn is inconsistent")
            if v.rows.num_rows:
                if not self._buf:
                    self._since = time.monotonic()
                self._buf.append(v.rows)
                self._rows += v.rows.num_rows
        metrics.BUFFERED.set(self._rows, sink=self.table.name)
        if self._rows >= self.policy.max_rows or (
                self._buf and time.monotonic() - self._since >= self.policy.max_age_s):
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        rows = pa.concat_tables(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf, self._rows = [], 0
        with metrics.PROCESSING_LATENCY.time(stage="persist"):
            result = self.writer.write(self.table, rows)
        metrics.SINK_ROWS.inc(result.written, table=self.table.name)
        metrics.BUFFERED.set(0, sink=self.table.name)
        if result.rejected is not None and result.rejected.num_rows:
            metrics.SINK_ERRORS.inc(result.rejected.num_rows, sink=self.table.name)
            self.on_reject(self.table.name, result.rejected)

    def snapshot(self) -> Any:
        self.flush()
        checkpoint = getattr(self.writer, "checkpoint", None)
        return checkpoint(self.table) if checkpoint is not None else None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.close()


class PersistSink(FixedPartitionedSink[TableRows, Any]):
    """Persists `(table_name, TableRows)` items through `writer_factory()` backends."""

    def __init__(self, tables: Mapping[str, TableDef], writer_factory: Callable[[], TableWriter],
                 policies: Mapping[str, BatchPolicy] | None = None, *,
                 default_policy: BatchPolicy | None = None,
                 on_reject: RejectHandler = log_rejected) -> None:
        if not tables:
            raise ValueError("no tables to persist")
        self.tables = dict(tables)
        self.writer_factory = writer_factory
        self.policies = dict(policies or {})
        self.default_policy = default_policy or BatchPolicy()
        self.on_reject = on_reject

    def list_parts(self) -> list[str]:
        return sorted(self.tables)

    def part_fn(self, item_key: str) -> int:
        try:
            return self.list_parts().index(item_key)
        except ValueError:
            raise KeyError(f"no persisted table named {item_key!r}") from None

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _TablePartition:
        return _TablePartition(self.tables[for_part], self.writer_factory(),
                               self.policies.get(for_part, self.default_policy),
                               self.on_reject, resume_state)
