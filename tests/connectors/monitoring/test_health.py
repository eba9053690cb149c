"""The health verdict's window arithmetic and thresholds, on explicit clocks."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.monitoring.health import (
    HealthSettings,
    Monitor,
    bucket_quantile,
    resolve_port,
)
from connectors.monitoring.sources import SourceRegistry
from dataflows.config import config_from_dict
from operators import metrics


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def monitor(clock: Clock, sources: SourceRegistry | None = None, **kw: Any) -> Monitor:
    settings = HealthSettings(**{"window_s": 60.0, "sample_interval_s": 1.0, **kw})
    return Monitor(settings, sources=sources or SourceRegistry(), clock=clock, wall=clock)


def test_rates_are_over_the_last_window_only() -> None:
    clock = Clock()
    m = monitor(clock)
    m.sample()                                       # t=0
    metrics.ROWS_IN.inc(900, data_type="trades")
    metrics.REJECTED.inc(100, data_type="trades")    # 10% rejected in the first minute
    for t in range(1, 61):
        clock.t = t
        m.sample()
    report = m.report()                              # window [0, 60]: the errors are in it
    assert report.status == "degraded"
    assert report.checks == ["input error rate 10% over the last 60 s > 5% "
                             "(rejected / read rows)"]
    assert report.body["window"]["input_error_rate"] == pytest.approx(0.1)
    assert report.body["window"]["full"] is True
    clock.t = 61.5                                   # window [1, 61.5]: they have left it
    report = m.report()
    assert report.status == "ok" and report.body["window"]["input_error_rate"] is None
    assert report.body["data_types"] == {"trades": {"ticks_in": 900, "rejected": 100}}


def test_sink_error_rate_and_its_threshold() -> None:
    clock = Clock()
    m = monitor(clock)
    m.sample()
    metrics.SINK_ROWS.inc(960, table="candles_1m")
    metrics.SINK_ERRORS.inc(40, sink="candles_1m")   # 4%: under 5%
    clock.t = 10
    r = m.report()
    assert r.status == "ok" and r.body["window"]["sink_error_rate"] == pytest.approx(0.04)
    assert r.body["sinks"]["candles_1m"] == {"rows": 960, "errors": 40, "buffered": 0}
    metrics.SINK_ERRORS.inc(60, sink="candles_1m")   # 100 / 1060
    r = m.report()
    assert r.status == "degraded" and r.checks[0].startswith("sink error rate 9.43%")


def test_throughput_is_checked_only_with_a_full_window_and_a_running_tick_source() -> None:
    clock = Clock()
    sources = SourceRegistry()
    m = monitor(clock, sources, min_throughput=10)
    m.sample()
    metrics.ROWS_IN.inc(300, data_type="trades")     # 5 ticks/s over the minute
    clock.t = 30
    m.sample()
    assert m.report().status == "ok"                 # no source registered
    src = sources.get("files:x", live=False, clock=clock)
    assert m.report().status == "ok"                 # window not full yet (30 s of 60)
    clock.t = 60
    r = m.report()
    assert r.status == "degraded" and r.checks == [
        "throughput 5 ticks/s over the last 60 s < 10 ticks/s"]
    metrics.ROWS_IN.inc(600, data_type="trades")     # 900 in 60 s = 15/s
    assert m.report().status == "ok"
    metrics.ROWS_IN.reset()
    src.done()                                       # a finished replay is not slow
    assert m.report().status == "ok"


def test_throughput_check_off_for_flows_without_ticks() -> None:
    clock = Clock()
    sources = SourceRegistry()
    sources.get("ccxt", live=False, ticks=False, clock=clock)
    m = monitor(clock, sources)
    m.sample()
    clock.t = 61
    assert m.report().status == "ok"
    settings = HealthSettings(check_throughput=False)
    assert settings.as_json()["min_throughput"] is None


def test_latency_quantile_over_the_window() -> None:
    clock = Clock()
    m = monitor(clock)
    m.sample()
    for _ in range(95):
        metrics.PROCESSING_LATENCY.observe(0.002, stage="candles")
    for _ in range(5):
        metrics.PROCESSING_LATENCY.observe(3.0, stage="sink")
    clock.t = 5
    r = m.report()
    # rank 95 of 100 falls at the top of the (0.001, 0.0025] bucket
    assert r.body["window"]["processing_latency_s"] == pytest.approx(0.0025)
    assert r.status == "ok"
    for _ in range(20):
        metrics.PROCESSING_LATENCY.observe(1.5, stage="sink")
    r = m.report()
    assert r.status == "degraded" and r.checks[0].startswith("processing latency p95 ")
    assert r.body["window"]["processing_latency_s"] > 1.0


def test_event_lag_threshold_is_optional() -> None:
    clock = Clock()
    m = monitor(clock)
    m.sample()
    metrics.EVENT_LAG.observe(20.0, stage="candles")
    clock.t = 1
    assert m.report().status == "ok"                  # max_event_lag_s unset: off
    m2 = monitor(clock, max_event_lag_s=2.0)
    m2.sample()
    metrics.EVENT_LAG.observe(20.0, stage="candles")
    clock.t = 2
    r = m2.report()
    assert r.status == "degraded" and r.checks[0].startswith("event lag p95 ")


def test_every_live_source_down_for_the_bound_is_failing() -> None:
    clock = Clock()
    sources = SourceRegistry()
    a = sources.get("tm:a", live=True, clock=clock)
    b = sources.get("tm:b", live=True, clock=clock)
    m = monitor(clock, sources, stale_after_s=10, failing_after_s=30)
    for s in (a, b):
        s.connected()
        s.message()
    a.disconnected("reset")
    clock.t = 29
    r = m.report()
    assert r.status == "degraded" and r.http_status == 200   # b is still fine
    clock.t = 45               # b stale since t=10: down 35 s; a down 45 s
    r = m.report()
    assert r.status == "failing" and r.http_status == 503
    assert r.checks[0] == "every live source down or stale for at least 30 s"
    assert r.body["sources"]["tm:b"]["state"] == "idle"
    b.message()
    assert m.report().status == "degraded"


def test_failed_source_is_failing() -> None:
    clock = Clock()
    sources = SourceRegistry()
    sources.get("files:x", live=False, clock=clock).failed("unreadable file")
    r = monitor(clock, sources).report()
    assert r.status == "failing" and r.checks == ["source files:x failed: unreadable file"]


def test_bucket_quantile_matches_promql_histogram_quantile() -> None:
    bounds = (0.1, 1.0, 10.0)
    assert bucket_quantile(0.5, bounds, (0, 0, 0), 0) is None
    # 10 obs: 4 in (0, .1], 4 in (.1, 1], 2 in (1, 10]
    assert bucket_quantile(0.2, bounds, (4, 8, 10), 10) == pytest.approx(0.05)
    assert bucket_quantile(0.6, bounds, (4, 8, 10), 10) == pytest.approx(0.55)
    assert bucket_quantile(0.9, bounds, (4, 8, 10), 10) == pytest.approx(5.5)
    # above every finite bound (+Inf bucket): the highest finite bound, as PromQL
    assert bucket_quantile(0.99, bounds, (4, 8, 9), 10) == 10.0


def test_settings_validate_and_come_from_config() -> None:
    with pytest.raises(ValueError, match="half"):
        HealthSettings(window_s=1, sample_interval_s=0.6)
    with pytest.raises(ValueError, match="max_error_rate"):
        HealthSettings(max_error_rate=1.5)
    with pytest.raises(ValueError, match="stale_after_s"):
        HealthSettings(stale_after_s=0)
    cfg = config_from_dict({"monitoring": {"window": "2m", "max_processing_latency": "250ms",
                                           "stale_after": "5s", "max_event_lag": "3s"}})
    s = HealthSettings.from_config(cfg.monitoring)
    assert (s.window_s, s.max_processing_latency_s, s.stale_after_s, s.max_event_lag_s) == (
        120.0, 0.25, 5.0, 3.0)
    assert (s.max_error_rate, s.min_throughput, s.latency_quantile) == (0.05, 10.0, 0.95)


def test_health_port_environment_override() -> None:
    assert resolve_port(8080, {}) == 8080
    assert resolve_port(8080, {"HEALTH_PORT": " 9102 "}) == 9102
    assert resolve_port(8080, {"HEALTH_PORT": ""}) == 8080
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ValueError, match="HEALTH_PORT"):
            resolve_port(8080, {"HEALTH_PORT": bad})
