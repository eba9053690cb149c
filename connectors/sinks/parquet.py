"""Local Parquet: the embedded persist backend, the same tables as BigQuery.

Layout: `{root}/{table}/date=YYYY-MM-DD/part-{run}-{seq}.parquet`, Hive-partitioned by the
UTC date of the table's partition column (candles: timestamp_out, ticks: timestamp), so
pyarrow, polars, DuckDB and Spark read it as one dataset with a `date` column.

Files are append-only and every row carries its `row_key`. A run resumed from a recovery
snapshot first deletes the files it wrote after that snapshot (truncation to the resume
point), so recovery never doubles a row; two separate runs into one directory do append,
and `read_table` deduplicates on row_key the way the BigQuery `_dedup` views do.
"""

from __future__ import annotations

import os
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from connectors.sinks.base import WriteResult
from connectors.tables import TableDef

_NULL_DATE = "__HIVE_DEFAULT_PARTITION__"
_HIGH_CARDINALITY = frozenset({"row_key", "id"})
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="parquet-writer")
_PART_RE = re.compile(r"^part-(?P<run>[0-9A-Za-z]+)-(?P<seq>\d{8})\.parquet$")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + uuid.uuid4().hex[:6]


def _by_date(rows: pa.Table, field: str) -> list[tuple[str, pa.Table]]:
    """The rows split by the UTC date (YYYY-MM-DD) of their `field`, in date order.

    Day numbers come from integer division of the microseconds (pc.strftime over every row
    cost more than encoding the file); only the distinct days are formatted."""
    col = rows.column(field)
    if col.null_count:  # Hive's folder for a null partition value; pyarrow reads it as null
        nulls = pc.is_null(col)
        return [(_NULL_DATE, rows.filter(nulls)),
                *_by_date(rows.filter(pc.invert(nulls)), field)]
    if not len(col):
        return []
    us = col.cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64()).to_numpy()
    day_no = us // 86_400_000_000
    lo, hi = int(day_no.min()), int(day_no.max())

    def label(n: int) -> str:
        return datetime.fromtimestamp(n * 86_400, UTC).strftime("%Y-%m-%d")

    if lo == hi:
        return [(label(lo), rows)]
    return [(label(int(n)), rows.filter(pa.array(day_no == n))) for n in np.unique(day_no)]


class ParquetWriter:
    """Writes conformed Arrow tables as Hive-partitioned Parquet files under `root`.

    Files are encoded and written on a small thread pool (pyarrow releases the GIL), so the
    flow keeps computing meanwhile; at most `max_pending` writes are in flight per writer, and
    `checkpoint` and `close` wait for them, so a snapshot never covers a file not yet on disk.
    A failed write raises on the next call. `checkpoint(table)` is the resume position (run
    id, next file number); `resume(table, position)` deletes what this run wrote after it.
    With `wait_at_checkpoint=False` (a run without a recovery store, whose snapshots are never
    used) `checkpoint` does not wait for the writes in flight, so the tables' last files at the
    end of a replay are encoded side by side; `close` still waits for every write and raises
    a failed one.
    """

    def __init__(self, root: str | os.PathLike[str], *, compression: str = "zstd",
                 run_id: str | None = None, truncate_when_fresh: bool = False,
                 wait_at_checkpoint: bool = True) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root}: Parquet output must be a directory")
        self.compression = compression
        self.truncate_when_fresh = truncate_when_fresh
        self.wait_at_checkpoint = wait_at_checkpoint
        self.max_pending = 2
        self._pending: list[Future[None]] = []
        self.run_id = run_id or new_run_id()
        if not re.fullmatch(r"[0-9A-Za-z]+", self.run_id):
            raise ValueError(f"run_id must be alphanumeric, got {self.run_id!r}")
        self._seq: dict[str, int] = {}

    def ensure_table(self, table: TableDef) -> None:
        (self.root / table.name).mkdir(parents=True, exist_ok=True)

    def write(self, table: TableDef, rows: pa.Table) -> WriteResult:
        if rows.num_rows == 0:
            return WriteResult(0)
        if rows.schema != table.schema:
            rows = rows.cast(table.schema)
        seq = self._seq.get(table.name, 0)
        self._seq[table.name] = seq + 1
        self._reap(block=len(self._pending) >= self.max_pending)
        self._pending.append(_POOL.submit(self._write_files, table, rows, seq))
        return WriteResult(rows.num_rows)

    def _write_files(self, table: TableDef, rows: pa.Table, seq: int) -> None:
        name = f"part-{self.run_id}-{seq:08d}.parquet"
        dictionary = [f.name for f in table.schema
                      if pa.types.is_string(f.type) and f.name not in _HIGH_CARDINALITY]
        for d, part in _by_date(rows, table.partition_field):
            out_dir = self.root / table.name / f"date={d}"
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".{name}.tmp"
            pq.write_table(part, tmp, compression=self.compression, use_dictionary=dictionary)
            os.replace(tmp, out_dir / name)  # readers never see a half-written file

    def _reap(self, block: bool) -> None:
        """Collect finished writes (all of them when `block`); re-raise a failed one."""
        keep = []
        for f in self._pending:
            if block or f.done():
                f.result()
            else:
                keep.append(f)
        self._pending = keep

    def checkpoint(self, table: TableDef) -> tuple[str, int]:
        self._reap(block=self.wait_at_checkpoint)
        return (self.run_id, self._seq.get(table.name, 0))

    def resume(self, table: TableDef, position: tuple[str, int] | None) -> None:
        """Continue after a recovery snapshot: drop this run's files numbered >= position.

        With no snapshot yet (`position` None) and `truncate_when_fresh` (a recovery run, whose
        run id is stable across restarts), the run starts over: all its files are dropped."""
        if position is None:
            if not self.truncate_when_fresh:
                return
            position = (self.run_id, 0)
        run_id, seq = position
        self.run_id = run_id
        self._seq[table.name] = seq
        for f in (self.root / table.name).glob("date=*/part-*.parquet"):
            m = _PART_RE.match(f.name)
            if m and m.group("run") == run_id and int(m.group("seq")) >= seq:
                f.unlink()

    def close(self) -> None:
        self._reap(block=True)


def read_table(root: str | os.PathLike[str], table: str, *, dedupe: bool = True,
               filter: ds.Expression | None = None) -> pa.Table:  # noqa: A002
    """Read one table of a Parquet output (with its `date` partition column), keeping one row
    per row_key (the last written) unless `dedupe=False`."""
    path = Path(root) / table
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table in the Parquet output")
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    data = dataset.to_table(filter=filter)
    if not dedupe or data.num_rows == 0:
        return data
    idx = pa.array(range(data.num_rows), pa.int64())
    data = data.append_column("__i", idx)
    last = data.group_by("row_key").aggregate([("__i", "max")]).column("__i_max")
    return data.take(pc.sort_indices(last)).drop_columns(["__i"])
