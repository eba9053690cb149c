"""The /health verdict: counters sampled over a sliding window, checked against thresholds.

`Monitor.sample()` (called every `sample_interval_s` by the server) records the totals of
the counters in operators.metrics and of the serve sinks. `Monitor.report()` compares the
totals now with the newest sample at least `window_s` old (the oldest one while the window is
still filling), so every rate is "over the last window":

- input error rate = delta rows_rejected_total / (delta ticks_in_total + delta rows_rejected_total)
- sink error rate = delta errors / (delta rows written + delta errors), over the persist sinks
  (sink_errors_total, sink_rows_total) and the serve sinks (failed + dropped, written)
- throughput = delta ticks_in_total / elapsed seconds; checked only once the window is full and
  while a tick source is registered and not done (a finished replay is not "slow")
- processing latency = the `latency_quantile` of processing_latency_seconds observed in the
  window (all stages together), interpolated within buckets as PromQL histogram_quantile does
- event lag (optional) = the same quantile of event_lag_seconds

Any threshold crossed, a disconnected source or a live source silent for longer than its
stale bound makes the status "degraded" (HTTP 200, so a readiness probe keeps the pod);
a failed source, or every live source down or stale for `failing_after_s`, makes it
"failing" (HTTP 503).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.monitoring.sources import (
    DISCONNECTED,
    DONE,
    FAILED,
    IDLE,
    SOURCES,
    SourceReading,
    SourceRegistry,
)
from operators import metrics

if TYPE_CHECKING:
    from dataflows.config import MonitoringConfig

OK, DEGRADED, FAILING = "ok", "degraded", "failing"
STATUS_CODE = {OK: 0, DEGRADED: 1, FAILING: 2}
HEALTH_PORT_ENV = "HEALTH_PORT"


@dataclass(frozen=True)
class HealthSettings:
    """Thresholds and windows of the health checks, in seconds (see the module docstring).

    `check_throughput=False` switches the throughput check off for flows without ticks (the
    instruments flow); `min_throughput=0` does so for every flow.
    """

    window_s: float = 60.0
    sample_interval_s: float = 1.0
    max_error_rate: float = 0.05
    max_processing_latency_s: float = 1.0
    latency_quantile: float = 0.95
    min_throughput: float = 10.0
    max_event_lag_s: float | None = None
    stale_after_s: float = 30.0
    failing_after_s: float = 120.0
    check_throughput: bool = True

    def __post_init__(self) -> None:
        def positive(name: str, v: float) -> None:
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")

        positive("window_s", self.window_s)
        positive("sample_interval_s", self.sample_interval_s)
        positive("max_processing_latency_s", self.max_processing_latency_s)
        positive("stale_after_s", self.stale_after_s)
        positive("failing_after_s", self.failing_after_s)
        if self.max_event_lag_s is not None:
            positive("max_event_lag_s", self.max_event_lag_s)
        if self.sample_interval_s * 2 > self.window_s:
            raise ValueError("sample_interval_s must be at most half of window_s")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate!r}")
        if not 0 < self.latency_quantile < 1:
            raise ValueError(f"latency_quantile must be in (0, 1), got {self.latency_quantile!r}")
        if not (math.isfinite(self.min_throughput) and self.min_throughput >= 0):
            raise ValueError(f"min_throughput must be >= 0, got {self.min_throughput!r}")

    @classmethod
    def from_config(cls, cfg: MonitoringConfig, *, check_throughput: bool = True
                    ) -> HealthSettings:
        """The settings of streaming.yaml's `monitoring:` section (durations in seconds)."""
        return cls(
            window_s=cfg.window / 1e6,
            sample_interval_s=cfg.sample_interval / 1e6,
            max_error_rate=cfg.max_error_rate,
            max_processing_latency_s=cfg.max_processing_latency / 1e6,
            latency_quantile=cfg.latency_quantile,
            min_throughput=cfg.min_throughput,
            max_event_lag_s=None if cfg.max_event_lag is None else cfg.max_event_lag / 1e6,
            stale_after_s=cfg.stale_after / 1e6,
            failing_after_s=cfg.failing_after / 1e6,
            check_throughput=check_throughput,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "max_error_rate": self.max_error_rate,
            "max_processing_latency_s": self.max_processing_latency_s,
            "latency_quantile": self.latency_quantile,
            "min_throughput": self.min_throughput if self.check_throughput else None,
            "max_event_lag_s": self.max_event_lag_s,
            "stale_after_s": self.stale_after_s,
            "failing_after_s": self.failing_after_s,
        }


def resolve_port(configured: int, environ: Mapping[str, str] | None = None) -> int:
    """The port to bind: HEALTH_PORT from the environment if set, else `configured`."""
    env = os.environ if environ is None else environ
    raw = env.get(HEALTH_PORT_ENV, "").strip()
    if not raw:
        return configured
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{HEALTH_PORT_ENV} must be a port number 0-65535, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{HEALTH_PORT_ENV} must be a port number 0-65535, got {raw!r}")
    return port


# --------------------------------------------------------------------------------------------
# sink figures


@dataclass(frozen=True)
class SinkFigures:
    """Rows written, rows failed and rows buffered by one sink."""

    rows: float = 0
    errors: float = 0
    buffered: float = 0

    def as_json(self) -> dict[str, float]:
        return {"rows": _num(self.rows), "errors": _num(self.errors),
                "buffered": _num(self.buffered)}


def persist_sinks() -> dict[str, SinkFigures]:
    """The persist sinks' counters, by table (sink_rows_total, sink_errors_total,
    sink_buffered_rows)."""
    rows, errors, buffered = (dict(m.items()) for m in (metrics.SINK_ROWS, metrics.SINK_ERRORS,
                                                         metrics.BUFFERED))
    names = sorted(set(rows) | set(errors) | set(buffered))
    return {n: SinkFigures(rows.get(n, 0), errors.get(n, 0), buffered.get(n, 0)) for n in names}


def all_sinks() -> dict[str, SinkFigures]:
    """Persist sinks by table, then serve sinks as "serve:<step_id>"."""
    from connectors.monitoring.prometheus import serve_sinks

    out = persist_sinks()
    out.update(serve_sinks())
    return out


# --------------------------------------------------------------------------------------------
# samples and window


@dataclass(frozen=True)
class Sample:
    """Counter totals at monotonic time `t`; histogram buckets summed over stages."""

    t: float
    ticks_in: float
    rejected: float
    sink_rows: float
    sink_errors: float
    latency: tuple[int, ...]
    latency_count: int
    lag: tuple[int, ...]
    lag_count: int


def _histogram_totals(h: metrics.Histogram) -> tuple[tuple[int, ...], int]:
    cumulative = [0] * len(h.buckets)
    count = 0
    for _label, buckets, _sum, n in h.series():
        for i, c in enumerate(buckets):
            cumulative[i] += c
        count += n
    return tuple(cumulative), count


def take_sample(t: float, sinks: Mapping[str, SinkFigures] | None = None) -> Sample:
    """The current totals, stamped with `t`."""
    sinks = all_sinks() if sinks is None else sinks
    latency, latency_count = _histogram_totals(metrics.PROCESSING_LATENCY)
    lag, lag_count = _histogram_totals(metrics.EVENT_LAG)
    return Sample(
        t=t,
        ticks_in=metrics.ROWS_IN.value(),
        rejected=metrics.REJECTED.value(),
        sink_rows=sum(s.rows for s in sinks.values()),
        sink_errors=sum(s.errors for s in sinks.values()),
        latency=latency, latency_count=latency_count, lag=lag, lag_count=lag_count,
    )


def bucket_quantile(q: float, bounds: tuple[float, ...], cumulative: tuple[int, ...],
                    total: int) -> float | None:
    """The q-quantile of a bucketed distribution as PromQL's histogram_quantile computes it
    (linear within a bucket; the highest finite bound when it falls above every bound)."""
    if total <= 0:
        return None
    rank = q * total
    prev_count, lower = 0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return bound
            return lower + (bound - lower) * (rank - prev_count) / in_bucket
        prev_count, lower = count, bound
    return bounds[-1]


@dataclass(frozen=True)
class WindowFigures:
    """Rates over the last `seconds` (None where there was nothing to divide)."""

    seconds: float
    full: bool
    ticks_per_s: float | None
    input_error_rate: float | None
    sink_error_rate: float | None
    latency_quantile_s: float | None
    event_lag_quantile_s: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "full": self.full,
            "ticks_per_s": _round(self.ticks_per_s),
            "input_error_rate": _round(self.input_error_rate, 6),
            "sink_error_rate": _round(self.sink_error_rate, 6),
            "processing_latency_s": _round(self.latency_quantile_s, 6),
            "event_lag_s": _round(self.event_lag_quantile_s, 6),
        }


def window_figures(base: Sample, now: Sample, q: float, full: bool) -> WindowFigures:
    """Rates between two samples."""
    elapsed = now.t - base.t
    ticks = now.ticks_in - base.ticks_in
    rejected = now.rejected - base.rejected
    rows = now.sink_rows - base.sink_rows
    errors = now.sink_errors - base.sink_errors

    def quantile(cur: tuple[int, ...], old: tuple[int, ...], n: int,
                 h: metrics.Histogram) -> float | None:
        if n <= 0:
            return None
        delta = tuple(max(a - b, 0) for a, b in zip(cur, old, strict=True))
        return bucket_quantile(q, h.buckets, delta, n)

    return WindowFigures(
        seconds=elapsed,
        full=full,
        ticks_per_s=ticks / elapsed if elapsed > 0 else None,
        input_error_rate=rejected / (ticks + rejected) if ticks + rejected > 0 else None,
        sink_error_rate=errors / (rows + errors) if rows + errors > 0 else None,
        latency_quantile_s=quantile(now.latency, base.latency,
                                    now.latency_count - base.latency_count,
                                    metrics.PROCESSING_LATENCY),
        event_lag_quantile_s=quantile(now.lag, base.lag, now.lag_count - base.lag_count,
                                      metrics.EVENT_LAG),
    )


# --------------------------------------------------------------------------------------------
# the verdict


@dataclass(frozen=True)
class HealthReport:
    """The verdict and everything /health shows."""

    status: str
    checks: list[str]
    body: dict[str, Any] = field(repr=False)

    @property
    def http_status(self) -> int:
        return 503 if self.status == FAILING else 200


class Monitor:
    """Samples the counters and judges health against `settings`.

    `clock` (monotonic seconds) times the window; `wall` (time.time) dates source messages.
    """

    def __init__(self, settings: HealthSettings, *, sources: SourceRegistry = SOURCES,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if not isinstance(settings, HealthSettings):
            raise TypeError(f"settings must be HealthSettings, got {type(settings).__name__}")
        self.settings = settings
        self.sources = sources
        self._clock = clock
        self._wall = wall
        self._started = clock()
        self._lock = threading.Lock()
        keep = int(math.ceil(settings.window_s / settings.sample_interval_s)) + 3
        self._samples: deque[Sample] = deque(maxlen=keep)

    @property
    def uptime_s(self) -> float:
        return self._clock() - self._started

    def sample(self) -> Sample:
        """Record the current totals (the server calls this every sample_interval_s)."""
        s = take_sample(self._clock())
        with self._lock:
            self._samples.append(s)
        return s

    def _baseline(self, now: float) -> tuple[Sample | None, bool]:
        """The newest sample at least a window old (full window), else the oldest one."""
        horizon = now - self.settings.window_s
        with self._lock:
            samples = list(self._samples)
        base = None
        for s in samples:
            if s.t <= horizon:
                base = s
            else:
                break
        if base is not None:
            return base, True
        return (samples[0] if samples else None), False

    def figures(self, sinks: Mapping[str, SinkFigures] | None = None) -> WindowFigures | None:
        """Rates over the window ending now; None before the first sample."""
        now = self._clock()
        base, full = self._baseline(now)
        if base is None:
            return None
        current = take_sample(now, sinks)
        return window_figures(base, current, self.settings.latency_quantile, full)

    def readings(self) -> list[SourceReading]:
        """Every registered source's state now."""
        now = self._wall()
        return [s.read(self.settings.stale_after_s, now) for s in self.sources.all()]

    def report(self) -> HealthReport:
        """Evaluate every check now."""
        st = self.settings
        sinks = all_sinks()
        win = self.figures(sinks)
        readings = self.readings()
        degraded: list[str] = []
        failing: list[str] = []
        w = _secs(st.window_s)

        if win is not None:
            pct = _pct(st.max_error_rate)
            if win.input_error_rate is not None and win.input_error_rate > st.max_error_rate:
                degraded.append(f"input error rate {_pct(win.input_error_rate)} over the last "
                                f"{w} > {pct} (rejected / read rows)")
            if win.sink_error_rate is not None and win.sink_error_rate > st.max_error_rate:
                degraded.append(f"sink error rate {_pct(win.sink_error_rate)} over the last {w} "
                                f"> {pct} (failed / written rows)")
            qname = f"p{st.latency_quantile * 100:g}"
            lat = win.latency_quantile_s
            if lat is not None and lat > st.max_processing_latency_s:
                degraded.append(f"processing latency {qname} {lat:.3g} s over the last {w} > "
                                f"{st.max_processing_latency_s:g} s")
            lag = win.event_lag_quantile_s
            if st.max_event_lag_s is not None and lag is not None and lag > st.max_event_lag_s:
                degraded.append(f"event lag {qname} {lag:.3g} s over the last {w} > "
                                f"{st.max_event_lag_s:g} s")
            tick_sources = [r for r in readings if r.ticks and r.state not in (DONE, FAILED)]
            if (st.check_throughput and st.min_throughput > 0 and win.full and tick_sources
                    and win.ticks_per_s is not None and win.ticks_per_s < st.min_throughput):
                degraded.append(f"throughput {win.ticks_per_s:.3g} ticks/s over the last {w} < "
                                f"{st.min_throughput:g} ticks/s")

        for r in readings:
            if r.state == FAILED:
                failing.append(f"source {r.name} failed" + (f": {r.reason}" if r.reason else ""))
            elif r.state == DISCONNECTED:
                degraded.append(f"source {r.name} disconnected for {r.down_s:.1f} s"
                                + (f": {r.reason}" if r.reason else ""))
            elif r.state == IDLE:
                degraded.append(f"source {r.name}: no message for {r.silent_s:.1f} s "
                                f"(stale after {r.stale_after_s:g} s)")
        live = [r for r in readings if r.live and r.state not in (DONE, FAILED)]
        if live and all(r.down_s >= st.failing_after_s for r in live):
            failing.append(f"every live source down or stale for at least "
                           f"{_secs(st.failing_after_s)}")

        status = FAILING if failing else DEGRADED if degraded else OK
        checks = failing + degraded
        body = self._body(status, checks, readings, sinks, win)
        return HealthReport(status, checks, body)

    def _body(self, status: str, checks: list[str], readings: list[SourceReading],
              sinks: Mapping[str, SinkFigures], win: WindowFigures | None) -> dict[str, Any]:
        ticks, rejected = dict(metrics.ROWS_IN.items()), dict(metrics.REJECTED.items())
        data_types = {dt: {"ticks_in": _num(ticks.get(dt, 0)),
                           "rejected": _num(rejected.get(dt, 0))}
                      for dt in sorted(set(ticks) | set(rejected))}
        return {
            "status": status,
            "checks": checks,
            "sources": {r.name: r.as_json() for r in readings},
            "data_types": data_types,
            "candles_out": {tf: _num(n) for tf, n in metrics.CANDLES_OUT.items()},
            "late": {tf: _num(n) for tf, n in metrics.LATE.items()},
            "files_done": _num(metrics.FILES_DONE.value()),
            "sinks": {name: s.as_json() for name, s in sinks.items()},
            "window": win.as_json() if win is not None else None,
            "thresholds": self.settings.as_json(),
            "uptime_s": round(self.uptime_s, 3),
        }


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _pct(v: float) -> str:
    return f"{v * 100:.3g}%"


def _secs(v: float) -> str:
    return f"{v:g} s"
