"""Exactly-once for sinks that write asynchronously: drain them at every Bytewax snapshot.

A sink that queues writes on a background thread (the Redis serve sink) can lose what it
queued before a snapshot if the process dies: recovery resumes after the snapshot and never
re-emits those rows. `DrainAtSnapshot` wraps such a `DynamicSink` into a
`FixedPartitionedSink` whose `snapshot()` waits until the queue is acknowledged, so every
snapshot covers only delivered rows; rows after it are re-emitted on resume, and the inner
sink's idempotent writes drop the repeats.
"""

from __future__ import annotations

import logging
from typing import Any
from zlib import adler32

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition

log = logging.getLogger(__name__)


class _DrainingPartition(StatefulSinkPartition[Any, None]):
    def __init__(self, inner: Any, name: str, timeout_s: float | None) -> None:
        self.inner = inner
        self.name = name
        self.timeout_s = timeout_s

    def write_batch(self, values: list[Any]) -> None:
        self.inner.write_batch(values)

    def snapshot(self) -> None:
        if not self.inner.flush(self.timeout_s):
            log.error("%s: buffered rows not acknowledged within %s s at a snapshot; after a "
                      "crash now they could be missing", self.name, self.timeout_s)
        return None

    def close(self) -> None:
        self.inner.close()


class DrainAtSnapshot(FixedPartitionedSink[Any, None]):
    """`(key, item)` pairs to `inner` (a DynamicSink whose partitions have `flush(timeout)`),
    drained at each snapshot. Items of one key always reach the same partition, in order.
    `timeout_s=None` waits as long as it takes (the flow pauses while the target is down)."""

    def __init__(self, inner: DynamicSink[Any], *, partitions: int = 1,
                 timeout_s: float | None = None) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        if timeout_s is not None and timeout_s < 0:
            raise ValueError("timeout_s must be >= 0 or None")
        self.inner = inner
        self.partitions = partitions
        self.timeout_s = timeout_s

    def list_parts(self) -> list[str]:
        return [f"part-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return adler32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None
                   ) -> _DrainingPartition:
        index = int(for_part.rsplit("-", 1)[1])
        inner = self.inner.build(step_id, index, self.partitions)
        if not hasattr(inner, "flush"):
            raise TypeError(f"{type(inner).__name__} has no flush(timeout); it cannot be "
                            "drained at snapshots")
        return _DrainingPartition(inner, f"{step_id}/{for_part}", self.timeout_s)
