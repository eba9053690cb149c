"""/metrics: the flow's counters in Prometheus text format (prometheus_client).

Exposed, under the names operators.metrics registers them:
- every Counter as a counter (ticks_in_total{data_type}, rows_rejected_total{data_type},
  trades_late_total{timeframe}, candles_out_total{timeframe}, files_done_total,
  sink_rows_total{table}, sink_errors_total{sink}, source_reconnects_total{source}, ...),
  every Gauge as a gauge (sink_buffered_rows{sink}), every Histogram as a histogram
  (processing_latency_seconds{stage}, event_lag_seconds{stage});
- per source: source_connected, source_active (not done), source_last_message_age_seconds
  (since the last message, or since the source started or reconnected when none came since),
  source_stale_after_seconds (live sources only: their bound);
- tick_sources_active (tick sources registered and not done), health_status (0 ok,
  1 degraded, 2 failing) and health_uptime_seconds;
- everything in prometheus_client's default registry: the serve sinks' bytewax_serve_*
  counters (connectors.serve.stats), process_* and python_* (a family whose name clashes with
  one above is left out).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connectors.monitoring.health import STATUS_CODE, Monitor, SinkFigures
from connectors.monitoring.sources import DONE, FAILED
from operators import metrics

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "health_families", "operator_families",
           "serve_sinks"]

_SERVE_PREFIX = "bytewax_serve_"


def operator_families(registry: dict[str, metrics.Counter] | None = None) -> Iterator[Metric]:
    """Families for every entry of operators.metrics.REGISTRY."""
    registry = metrics.REGISTRY if registry is None else registry
    for name, m in sorted(registry.items()):
        labels = [m.label] if m.label else []
        try:
            fam: Metric
            if isinstance(m, metrics.Histogram):
                fam = HistogramMetricFamily(name, m.help, labels=labels)
                for key, cumulative, total, count in m.series():
                    buckets: list[tuple[str, float]] = [
                        (repr(b), float(c)) for b, c in zip(m.buckets, cumulative, strict=True)]
                    buckets.append(("+Inf", float(count)))
                    fam.add_metric([key] if labels else [], buckets, total)
            elif isinstance(m, metrics.Gauge):
                fam = GaugeMetricFamily(name, m.help, labels=labels)
                for key, v in m.items():
                    fam.add_metric([key] if labels else [], float(v))
            else:
                fam = CounterMetricFamily(name, m.help, labels=labels)
                for key, v in m.items():
                    fam.add_metric([key] if labels else [], float(v))
        except ValueError as e:  # an invalid name someone registered: skip, never break /metrics
            log.warning("metric %s not exposed: %s", name, e)
            continue
        yield fam


def health_families(monitor: Monitor) -> Iterator[Metric]:
    """Source gauges and the health verdict of `monitor`."""
    readings = monitor.readings()
    connected = GaugeMetricFamily("source_connected",
                                  "1 while the source is connected (replays: running)",
                                  labels=["source"])
    active = GaugeMetricFamily("source_active", "1 until the source is done", labels=["source"])
    age = GaugeMetricFamily(
        "source_last_message_age_seconds",
        "Seconds since the source's last message (or its start or reconnect if none since)",
        labels=["source"])
    bound = GaugeMetricFamily("source_stale_after_seconds",
                              "A live source silent longer than this is stale", labels=["source"])
    ticking = 0
    for r in readings:
        running = r.state not in (DONE, FAILED)
        connected.add_metric([r.name], 1.0 if r.connected or (running and not r.live) else 0.0)
        active.add_metric([r.name], 1.0 if running else 0.0)
        age.add_metric([r.name], r.silent_s)
        if r.live and r.stale_after_s is not None and running:
            bound.add_metric([r.name], r.stale_after_s)
        ticking += int(running and r.ticks)
    yield from (connected, active, age, bound)
    yield GaugeMetricFamily("tick_sources_active", "Tick sources registered and not done",
                            value=ticking)
    yield GaugeMetricFamily("health_status", "/health verdict: 0 ok, 1 degraded, 2 failing",
                            value=STATUS_CODE[monitor.report().status])
    yield GaugeMetricFamily("health_uptime_seconds", "Seconds since monitoring started",
                            value=monitor.uptime_s)


class _Families:
    """A collector of families gathered once per scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def exposition(monitor: Monitor) -> bytes:
    """The /metrics body: operators.metrics, the sources and verdict, then the default
    registry's families (one whose name is already taken is left out)."""
    own = [*operator_families(), *health_families(monitor)]
    taken = {f.name for f in own}
    rest = [f for f in DEFAULT_REGISTRY.collect() if f.name not in taken]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(own + rest))  # type: ignore[arg-type]
    return generate_latest(registry)


def serve_sinks() -> dict[str, SinkFigures]:
    """The serve sinks' figures from the default registry's bytewax_serve_* families, summed
    over workers and keyed "serve:<step_id>": rows = written_rows, errors = failed_rows +
    dropped_rows, buffered = buffered_rows."""
    acc: dict[str, dict[str, float]] = {}
    wanted = {"written_rows", "failed_rows", "dropped_rows", "buffered_rows"}
    for fam in DEFAULT_REGISTRY.collect():
        if not fam.name.startswith(_SERVE_PREFIX):
            continue
        field = fam.name[len(_SERVE_PREFIX):]
        if field not in wanted:
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            step = s.labels.get("step_id", "")
            figures = acc.setdefault(f"serve:{step}", {})
            figures[field] = figures.get(field, 0.0) + s.value
    return {name: SinkFigures(rows=f.get("written_rows", 0),
                              errors=f.get("failed_rows", 0) + f.get("dropped_rows", 0),
                              buffered=f.get("buffered_rows", 0))
            for name, f in sorted(acc.items())}
