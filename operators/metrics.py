"""Process-wide counters the flow's steps update once per batch (never per row).

The replay command reads them for its progress line and summary; the health and metrics
server exposes them in Prometheus format. Counters are labelled (e.g. by data type or
timeframe) and thread safe, since Bytewax workers of one process are threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator


class Counter:
    """A monotonically increasing, labelled count."""

    def __init__(self, name: str, help_text: str, label: str | None = None) -> None:
        self.name = name
        self.help = help_text
        self.label = label
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        REGISTRY[name] = self

    def inc(self, amount: float = 1, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = labels.get(self.label, "") if self.label else ""
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, label_value: str | None = None) -> float:
        with self._lock:
            if label_value is None:
                return sum(self._values.values())
            return self._values.get(label_value, 0)

    def items(self) -> Iterator[tuple[str, float]]:
        with self._lock:
            return iter(sorted(self._values.items()))

    def reset(self) -> None:
        with self._lock:
            self._values.clear()


class Gauge(Counter):
    """A labelled value that can go up and down (buffered rows, connection state)."""

    def set(self, value: float, **labels: str) -> None:
        key = labels.get(self.label, "") if self.label else ""
        with self._lock:
            self._values[key] = value

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = labels.get(self.label, "") if self.label else ""
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount


REGISTRY: dict[str, Counter] = {}

ROWS_IN = Counter("ticks_in_total", "Valid tick rows read, by data type", "data_type")
REJECTED = Counter("rows_rejected_total", "Rows sent to the dead-letter output, by data type",
                   "data_type")
LATE = Counter("trades_late_total", "Trades older than their closed candle, by timeframe",
               "timeframe")
CANDLES_OUT = Counter("candles_out_total", "Closed candles emitted, by timeframe", "timeframe")
FILES_DONE = Counter("files_done_total", "Input files replayed to the end")
SINK_ROWS = Counter("sink_rows_total", "Rows written by the sinks, by table", "table")
SINK_ERRORS = Counter("sink_errors_total", "Sink write errors (retried or not), by sink", "sink")
BUFFERED = Gauge("sink_buffered_rows", "Rows held in sink buffers, by sink", "sink")


def reset_all() -> None:
    """Zero every counter (tests and repeated in-process runs)."""
    for c in REGISTRY.values():
        c.reset()


# --------------------------------------------------------------------------------------------
# Added for health and metrics (connectors.monitoring serves all of the above on /metrics).

#: Upper bounds (seconds) of the latency histograms' buckets; 1 s, the default alert
#: threshold, is a bound so its quantile is exact at the threshold.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram(Counter):
    """Observations (e.g. seconds) counted into cumulative buckets, by label.

    `value()`/`items()` give the number of observations (as for a Counter), `series()` the
    buckets, sum and count that /metrics exposes as a Prometheus histogram. Steps call
    `observe(seconds, stage=...)` once per batch, or time a block with `time(stage=...)`.
    """

    def __init__(self, name: str, help_text: str, label: str | None = None,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"{name}: buckets must be a non-empty increasing sequence")
        self.buckets = bounds
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        super().__init__(name, help_text, label)

    def inc(self, amount: float = 1, **labels: str) -> None:
        raise TypeError(f"{self.name} is a histogram: use observe(value)")

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation of `value` (negative values count as 0)."""
        v = max(float(value), 0.0)
        key = labels.get(self.label, "") if self.label else ""
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * len(self.buckets)
            for i, bound in enumerate(self.buckets):
                if v <= bound:
                    counts[i] += 1
                    break
            self._values[key] = self._values.get(key, 0) + 1
            self._sums[key] = self._sums.get(key, 0.0) + v

    def time(self, **labels: str) -> _Timer:
        """Context manager observing the wall-clock seconds its block took."""
        return _Timer(self, labels)

    def series(self) -> list[tuple[str, list[int], float, int]]:
        """(label value, cumulative counts per bound, sum, count) per label value, sorted."""
        with self._lock:
            out = []
            for key in sorted(self._counts):
                cumulative, running = [], 0
                for c in self._counts[key]:
                    running += c
                    cumulative.append(running)
                out.append((key, cumulative, self._sums[key], int(self._values[key])))
            return out

    def reset(self) -> None:
        with self._lock:
            self._values.clear()
            self._counts.clear()
            self._sums.clear()


class _Timer:
    def __init__(self, histogram: Histogram, labels: dict[str, str]) -> None:
        self._histogram = histogram
        self._labels = labels
        self._start = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(time.perf_counter() - self._start, **self._labels)


RECONNECTS = Counter("source_reconnects_total",
                     "Reconnections of a source after a lost connection, by source", "source")
PROCESSING_LATENCY = Histogram(
    "processing_latency_seconds",
    "Wall-clock seconds a step spent on one batch (source read, candles, features, sink "
    "write), by stage", "stage")
EVENT_LAG = Histogram(
    "event_lag_seconds",
    "Wall clock at emit minus the newest exchange timestamp of the batch, by stage "
    "(live sources only)", "stage")


def record_event_lag(newest_exchange_us: int, stage: str) -> None:
    """Observe now minus an exchange timestamp (microseconds): call only for live data."""
    EVENT_LAG.observe(time.time() - newest_exchange_us / 1e6, stage=stage)
