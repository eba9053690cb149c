"""In-memory serve transport: a process-local broker with Redis Stream semantics.

A flow run in the same process as its consumers (tests, notebooks, a single-process service)
publishes closed candles to a `MemoryBroker` through `MemoryServeSink`; `LiveFeatureStream(...,
transport="memory")` reads them. It behaves like the Redis transport: the same keys, entry IDs
(`<interval start ms>-0`), JSON payloads, bounded length, idempotent appends (an ID not above
the top is a duplicate) and start positions, so code moves between the two unchanged.
The sink publishes from a Bytewax worker thread and consumers wait in their own asyncio loops;
the broker is thread-safe and wakes waiters with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.serve.codec import encode_many
from connectors.serve.keys import DEFAULT_PREFIX, EntryPos, parse_id, stream_key
from connectors.serve.stats import SinkStats, track, unwrap
from operators import metrics


@dataclass
class _Topic:
    maxlen: int
    entries: deque[tuple[EntryPos, str, bytes]] = field(default_factory=deque)
    last_id: EntryPos = (0, 0)
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list)


class MemoryBroker:
    """Bounded, append-only streams of candle payloads keyed like the Redis streams."""

    def __init__(self, default_maxlen: int = 10_000) -> None:
        if default_maxlen < 1:
            raise ValueError(f"default_maxlen must be >= 1, got {default_maxlen}")
        self.default_maxlen = default_maxlen
        self._topics: dict[str, _Topic] = {}
        self._lock = threading.Lock()

    def _topic(self, key: str, maxlen: int | None = None) -> _Topic:
        t = self._topics.get(key)
        if t is None:
            t = self._topics[key] = _Topic(maxlen or self.default_maxlen)
        elif maxlen:
            t.maxlen = maxlen
        return t

    def publish(self, key: str, ids: list[str], payloads: list[bytes],
                maxlen: int | None = None) -> tuple[int, int]:
        """Append entries whose ID is above the top; returns (added, duplicates)."""
        if len(ids) != len(payloads):
            raise ValueError("ids and payloads differ in length")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        added = dup = 0
        with self._lock:
            t = self._topic(key, maxlen)
            for id_, payload in zip(ids, payloads, strict=True):
                pos = parse_id(id_)
                if pos <= t.last_id:
                    dup += 1
                    continue
                t.entries.append((pos, id_, payload))
                t.last_id = pos
                added += 1
            while len(t.entries) > t.maxlen:
                t.entries.popleft()
            waiters, t.waiters = (t.waiters, []) if added else ([], t.waiters)
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):   # the waiter's loop is closed
                loop.call_soon_threadsafe(_wake, fut)
        return added, dup

    def read_after(self, key: str, pos: EntryPos, count: int) -> list[tuple[str, bytes]]:
        """Up to `count` entries with ID above `pos`, oldest first."""
        with self._lock:
            t = self._topics.get(key)
            if t is None or t.last_id <= pos:
                return []
            i = bisect.bisect_right(t.entries, pos, key=lambda e: e[0])
            n = len(t.entries)
            return [(t.entries[j][1], t.entries[j][2]) for j in range(i, min(n, i + count))]

    def top(self, key: str) -> EntryPos:
        """The ID of the newest entry ever appended ((0, 0) for an unknown stream)."""
        with self._lock:
            t = self._topics.get(key)
            return t.last_id if t else (0, 0)

    def first(self, key: str) -> EntryPos | None:
        """The ID of the oldest entry still held (None when empty)."""
        with self._lock:
            t = self._topics.get(key)
            return t.entries[0][0] if t and t.entries else None

    def latest(self, key: str) -> tuple[str, bytes] | None:
        """(entry ID, payload) of the newest entry still held."""
        with self._lock:
            t = self._topics.get(key)
            if not t or not t.entries:
                return None
            _, id_, payload = t.entries[-1]
            return id_, payload

    def length(self, key: str) -> int:
        with self._lock:
            t = self._topics.get(key)
            return len(t.entries) if t else 0

    def streams(self) -> list[str]:
        """Keys of every stream the broker holds."""
        with self._lock:
            return sorted(self._topics)

    async def wait(self, key: str, pos: EntryPos, timeout: float) -> bool:
        """Wait up to `timeout` s for an entry above `pos`; True when one is there."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            t = self._topic(key)
            if t.last_id > pos:
                return True
            t.waiters.append((loop, fut))
        try:
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            with self._lock:
                t = self._topic(key)
                if (loop, fut) in t.waiters:
                    t.waiters.remove((loop, fut))
        return fut.done()

    def clear(self) -> None:
        """Forget every stream (tests)."""
        with self._lock:
            self._topics.clear()

    def __repr__(self) -> str:
        return f"MemoryBroker({len(self._topics)} streams)"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_DEFAULT = MemoryBroker()


def default_broker() -> MemoryBroker:
    """The process-wide broker used when none is passed."""
    return _DEFAULT


class MemoryServePartition(StatelessSinkPartition[Any]):
    """Publishes each CandleBatch to the broker as it arrives (no buffer is needed)."""

    transport = "memory"

    def __init__(self, broker: MemoryBroker, key_prefix: str, maxlen: int, step_id: str,
                 worker_index: int) -> None:
        self.broker = broker
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.step_id = step_id
        self.worker_index = worker_index
        self._stats = SinkStats(connected=True)
        self._lock = threading.Lock()
        track(self)

    def write_batch(self, items: list[Any]) -> None:
        with metrics.PROCESSING_LATENCY.time(stage="serve"):
            self._write_batch(items)

    def _write_batch(self, items: list[Any]) -> None:
        candles = [cb for cb in map(unwrap, items) if len(cb)]
        for cb, encoded in zip(candles, encode_many([cb.batch for cb in candles]),
                               strict=True):
            if isinstance(encoded, ValueError):
                raise encoded
            ids, payloads = encoded
            key = stream_key(self.key_prefix, cb.exchange, cb.symbol, cb.timeframe)
            added, dup = self.broker.publish(key, ids, payloads, self.maxlen)
            with self._lock:
                self._stats.written_rows += added
                self._stats.duplicate_rows += dup
                self._stats.flushes += 1

    def stats(self) -> SinkStats:
        with self._lock:
            return self._stats.copy()

    def __repr__(self) -> str:
        return f"MemoryServePartition({self.step_id!r}, worker={self.worker_index})"


class MemoryServeSink(DynamicSink[Any]):
    """Bytewax sink of CandleBatch items (or `(key, CandleBatch)`) into a MemoryBroker."""

    def __init__(self, broker: MemoryBroker | None = None, *, key_prefix: str = DEFAULT_PREFIX,
                 maxlen: int = 10_000) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        stream_key(key_prefix, "x", "x", "x")   # validates the prefix
        self.broker = broker if broker is not None else default_broker()
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.partitions: list[MemoryServePartition] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> MemoryServePartition:
        part = MemoryServePartition(self.broker, self.key_prefix, self.maxlen, step_id,
                                    worker_index)
        self.partitions.append(part)
        return part

    def stats(self) -> SinkStats:
        """Counters summed over this sink's partitions."""
        return SinkStats.total(p.stats() for p in self.partitions)

    def __repr__(self) -> str:
        return f"MemoryServeSink(prefix={self.key_prefix!r}, maxlen={self.maxlen})"
