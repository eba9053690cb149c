"""Counters of the serve sinks, readable as attributes and on Bytewax's Prometheus endpoint.

Every sink partition keeps a `SinkStats`; `sink.stats()` sums them. The first sink built in
a process registers one collector with prometheus_client's default registry (the one Bytewax
serves when its dataflow API is enabled), exposing each live partition's counters as
`bytewax_serve_*{step_id, worker, transport}`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from operators.messages import CandleBatch


@dataclass
class SinkStats:
    """What a serve sink partition did and holds.

    written_rows: candles appended to a stream; duplicate_rows: candles refused because their
    entry ID was not above the stream's top (already written: a replay or a retry);
    buffered_rows/buffered_bytes: held in memory, not yet acknowledged by Redis;
    dropped_rows: lost because the buffer overflowed or close() timed out while Redis was
    down; failed_rows: refused by Redis with a permanent error (e.g. WRONGTYPE);
    retries: failed write attempts retried after a backoff; flushes: successful round trips.
    """

    written_rows: int = 0
    duplicate_rows: int = 0
    buffered_rows: int = 0
    buffered_bytes: int = 0
    dropped_rows: int = 0
    failed_rows: int = 0
    retries: int = 0
    flushes: int = 0
    connected: bool = False
    last_error: str | None = None

    def copy(self) -> SinkStats:
        return replace(self)

    @staticmethod
    def total(parts: Iterable[SinkStats]) -> SinkStats:
        """Sum of counters; `connected` when every partition is; the latest error seen."""
        out = SinkStats(connected=True)
        any_part = False
        for s in parts:
            any_part = True
            for f in fields(SinkStats):
                if f.type in ("int", int):
                    setattr(out, f.name, getattr(out, f.name) + getattr(s, f.name))
            out.connected = out.connected and s.connected
            out.last_error = s.last_error or out.last_error
        if not any_part:
            out.connected = False
        return out


def unwrap(item: Any) -> CandleBatch:
    """A CandleBatch, or the value of a keyed `(key, CandleBatch)` item."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], CandleBatch):
        item = item[1]
    if not isinstance(item, CandleBatch):
        raise TypeError(f"a serve sink takes CandleBatch items, got {type(item).__name__}")
    return item


class _HasStats(Protocol):
    step_id: str
    worker_index: int
    transport: str

    def stats(self) -> SinkStats: ...


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
_LOCK = threading.Lock()
_REGISTERED = False


def track(partition: _HasStats) -> None:
    """Expose a partition's stats on the Prometheus registry while it is alive."""
    global _REGISTERED
    with _LOCK:
        _LIVE.add(partition)
        if _REGISTERED:
            return
        _REGISTERED = True
    try:
        from prometheus_client import REGISTRY
        REGISTRY.register(_Collector())
    except Exception:   # prometheus_client missing or a name clash: attributes still work
        pass


class _Collector:
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["step_id", "worker", "transport"]
        counters = {n: CounterMetricFamily(f"bytewax_serve_{n}", f"serve sink {n}", labels=labels)
                    for n in ("written_rows", "duplicate_rows", "dropped_rows", "failed_rows",
                              "retries", "flushes")}
        gauges = {n: GaugeMetricFamily(f"bytewax_serve_{n}", f"serve sink {n}", labels=labels)
                  for n in ("buffered_rows", "buffered_bytes", "connected")}
        with _LOCK:
            parts = list(_LIVE)
        for p in parts:
            s = p.stats()
            lv = [p.step_id, str(p.worker_index), p.transport]
            for n, m in counters.items():
                m.add_metric(lv, getattr(s, n))
            for n, g in gauges.items():
                g.add_metric(lv, float(getattr(s, n)))
        yield from counters.values()
        yield from gauges.values()
