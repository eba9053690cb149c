"""JSON lines output: stdout for the default run and debugging, or a file.

Rows keep the Arrow column names (the same as Parquet and BigQuery); timestamps are ISO-8601
UTC strings with microseconds, nulls and NaN are `null`.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO

import orjson
import pyarrow as pa
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.messages import CandleBatch, DeadLetters, TableRows, TickBatch

JsonItem = CandleBatch | DeadLetters | TableRows | TickBatch
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def rows_of(item: JsonItem) -> pa.Table | pa.RecordBatch:
    if isinstance(item, TableRows):
        return item.rows
    return item.batch


def to_json_lines(table: pa.Table | pa.RecordBatch) -> bytes:
    """Rows as newline-terminated JSON objects."""
    return b"".join(orjson.dumps(r, option=_OPTS) + b"\n" for r in table.to_pylist())


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


class _JsonLinesPartition(StatelessSinkPartition[JsonItem]):
    def __init__(self, target: str) -> None:
        self._lock = _lock_for(target)
        self._own = target != "-"
        self._out: IO[bytes]
        if self._own:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._out = open(target, "ab")  # noqa: SIM115 - closed in close()
        else:
            self._out = sys.stdout.buffer

    def write_batch(self, items: list[JsonItem]) -> None:
        data = b"".join(to_json_lines(rows_of(i)) for i in items)
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


class JsonLinesSink(DynamicSink[JsonItem]):
    """Writes every row of the items it receives as JSON lines to `target` ('-' = stdout).

    Workers of one process share the file through a lock; `per_worker=True` gives each worker
    its own file (`name-w{index}.jsonl`), for runs of several processes.
    """

    def __init__(self, target: str, *, per_worker: bool = False) -> None:
        if not target:
            raise ValueError("target must be a path or '-'")
        self.target = target
        self.per_worker = per_worker and target != "-"

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonLinesPartition:
        target = self.target
        if self.per_worker:
            p = Path(target)
            target = str(p.with_name(f"{p.stem}-w{worker_index}{p.suffix}"))
        return _JsonLinesPartition(target)
