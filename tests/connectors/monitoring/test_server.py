"""The real HTTP server: /health and /metrics over HTTP, thresholds turning /health degraded
within their bounds, binding and HEALTH_PORT."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.monitoring import (
    MonitoringServer,
    running_server,
    source_status,
    start_monitoring,
    stop_monitoring,
)
from dataflows.config import config_from_dict
from operators import metrics
from tests.connectors.monitoring.helpers import get, wait_for

HEALTH_FIELDS = {"status", "checks", "sources", "data_types", "candles_out", "late",
                 "files_done", "sinks", "window", "thresholds", "uptime_s"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_health_and_metrics_answer_with_the_documented_fields(
        serve: Callable[..., MonitoringServer]) -> None:
    server = serve()
    src = source_status("tardis-machine", live=True)
    src.connected()
    metrics.ROWS_IN.inc(1000, data_type="trades")
    metrics.REJECTED.inc(3, data_type="trades")
    metrics.CANDLES_OUT.inc(7, timeframe="1m")
    metrics.LATE.inc(2, timeframe="1m")
    metrics.SINK_ROWS.inc(7, table="candles_1m")
    metrics.BUFFERED.set(5, sink="candles_1m")
    metrics.PROCESSING_LATENCY.observe(0.004, stage="candles")
    src.message()

    r = get(server.url + "/health")
    assert r.status == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == HEALTH_FIELDS
    assert body["status"] == "ok" and body["checks"] == []
    assert body["sources"]["tardis-machine"]["state"] == "connected"
    assert body["sources"]["tardis-machine"]["last_message_age_s"] < 1.0
    assert body["sources"]["tardis-machine"]["reconnects"] == 0
    assert body["data_types"] == {"trades": {"ticks_in": 1000, "rejected": 3}}
    assert body["candles_out"] == {"1m": 7} and body["late"] == {"1m": 2}
    persist = {k: v for k, v in body["sinks"].items() if not k.startswith("serve:")}
    assert persist == {"candles_1m": {"rows": 7, "errors": 0, "buffered": 5}}
    assert body["thresholds"]["max_error_rate"] == 0.05
    assert body["uptime_s"] >= 0

    r = get(server.url + "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    got = samples(r.body.decode())
    assert got[("ticks_in_total", (("data_type", "trades"),))] == 1000
    assert got[("rows_rejected_total", (("data_type", "trades"),))] == 3
    assert got[("candles_out_total", (("timeframe", "1m"),))] == 7
    assert got[("trades_late_total", (("timeframe", "1m"),))] == 2
    assert got[("sink_rows_total", (("table", "candles_1m"),))] == 7
    assert got[("sink_buffered_rows", (("sink", "candles_1m"),))] == 5
    assert got[("processing_latency_seconds_count", (("stage", "candles"),))] == 1
    assert got[("processing_latency_seconds_bucket", (("le", "0.005"), ("stage", "candles")))] \
        == 1
    assert got[("source_connected", (("source", "tardis-machine"),))] == 1
    assert got[("source_stale_after_seconds", (("source", "tardis-machine"),))] == 30
    assert got[("tick_sources_active", ())] == 1
    assert got[("health_status", ())] == 0
    assert any(name.startswith("process_") or name.startswith("python_")
               for name, _ in got)           # prometheus_client's default registry too


def test_stalled_source_turns_health_degraded_within_its_bound(
        serve: Callable[..., MonitoringServer]) -> None:
    bound = 0.3
    server = serve(stale_after_s=bound)
    src = source_status("tardis-machine", live=True)
    src.connected()
    last = time.monotonic()
    src.message()
    assert get(server.url + "/health").json()["status"] == "ok"
    body = wait_for(lambda: (b := get(server.url + "/health").json())["status"] == "degraded"
                    and b, timeout=3)
    took = time.monotonic() - last
    assert bound <= took < bound + 1.0             # the bound plus polling and HTTP slack
    assert body["sources"]["tardis-machine"]["state"] == "idle"
    assert any("tardis-machine: no message for" in c for c in body["checks"])
    src.message()                                   # data flows again: healthy again
    assert get(server.url + "/health").json()["status"] == "ok"


def test_disconnected_then_failing_with_503_then_recovered(
        serve: Callable[..., MonitoringServer]) -> None:
    server = serve(stale_after_s=5, failing_after_s=0.4)
    src = source_status("tardis-machine", live=True)
    src.connected()
    src.message()
    src.disconnected("connection reset by peer")
    r = get(server.url + "/health")
    assert r.status == 200 and r.json()["status"] == "degraded"
    assert "disconnected" in r.json()["checks"][0]
    r = wait_for(lambda: (x := get(server.url + "/health")).status == 503 and x, timeout=3)
    assert r.json()["status"] == "failing"
    assert get(server.url + "/metrics").body.count(b"health_status 2.0") == 1
    src.connected()
    r = get(server.url + "/health")
    assert r.status == 200 and r.json()["status"] == "ok"
    assert r.json()["sources"]["tardis-machine"]["reconnects"] == 1
    assert b'source_reconnects_total{source="tardis-machine"} 1.0' in \
        get(server.url + "/metrics").body


def test_high_error_rate_degrades_until_it_leaves_the_window(
        serve: Callable[..., MonitoringServer]) -> None:
    server = serve(window_s=0.4)
    metrics.ROWS_IN.inc(1000, data_type="trades")
    metrics.REJECTED.inc(10, data_type="trades")       # 1%: fine
    assert get(server.url + "/health").json()["status"] == "ok"
    metrics.REJECTED.inc(90, data_type="trades")       # 100 / 1100 = 9.1%
    body = get(server.url + "/health").json()
    assert body["status"] == "degraded"
    assert body["checks"][0].startswith("input error rate 9.09%")
    wait_for(lambda: get(server.url + "/health").json()["status"] == "ok", timeout=3)


def test_sink_errors_degrade(serve: Callable[..., MonitoringServer]) -> None:
    server = serve()
    metrics.SINK_ROWS.inc(100, table="ticks_trades")
    metrics.SINK_ERRORS.inc(20, sink="ticks_trades")
    body = get(server.url + "/health").json()
    assert body["status"] == "degraded" and body["checks"][0].startswith("sink error rate")
    assert body["sinks"]["ticks_trades"] == {"rows": 100, "errors": 20, "buffered": 0}


def test_throughput_below_threshold_degrades(serve: Callable[..., MonitoringServer]) -> None:
    server = serve(window_s=0.4, min_throughput=1000)
    source_status("files:binance-futures_trades_BTCUSDT", live=False)
    stop = threading.Event()

    def feed() -> None:           # 100 ticks every 10 ms: ~10,000 ticks/s
        while not stop.wait(0.01):
            metrics.ROWS_IN.inc(100, data_type="trades")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(0.6)           # a full window of feeding
        body = get(server.url + "/health").json()
        assert body["status"] == "ok" and body["window"]["full"] is True
        assert body["window"]["ticks_per_s"] > 1000
    finally:
        stop.set()
        feeder.join()
    body = wait_for(lambda: (b := get(server.url + "/health").json())["status"] == "degraded"
                    and b, timeout=3)
    assert body["checks"] and body["checks"][0].startswith("throughput ")
    assert body["window"]["ticks_per_s"] < 1000


def test_processing_latency_above_threshold_degrades(
        serve: Callable[..., MonitoringServer]) -> None:
    server = serve(max_processing_latency_s=0.25)
    for _ in range(10):
        metrics.PROCESSING_LATENCY.observe(0.01, stage="features")
    assert get(server.url + "/health").json()["status"] == "ok"
    for _ in range(10):
        metrics.PROCESSING_LATENCY.observe(0.8, stage="candles")
    body = get(server.url + "/health").json()
    assert body["status"] == "degraded"
    assert body["checks"][0].startswith("processing latency p95")
    assert body["window"]["processing_latency_s"] > 0.25


def test_unknown_path_head_and_query() -> None:
    with MonitoringServer(port=0) as server:
        r = get(server.url + "/nope")
        assert r.status == 404 and r.json()["endpoints"] == ["/health", "/metrics"]
        r = get(server.url + "/health", method="HEAD")
        assert r.status == 200 and r.body == b"" and int(r.headers["Content-Length"]) > 0
        assert get(server.url + "/metrics?x=1").status == 200
    assert not server.running


def test_binds_to_loopback_by_default_and_honours_health_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert MonitoringServer().address == ("127.0.0.1", 8080)
    cfg = config_from_dict({})
    assert (cfg.monitoring.host, cfg.monitoring.port) == ("127.0.0.1", 8080)
    with socket.socket() as s:                      # a free port for HEALTH_PORT
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    monkeypatch.setenv("HEALTH_PORT", str(free))
    server = start_monitoring(cfg)
    assert server is not None and running_server() is server
    assert server.address == ("127.0.0.1", free)
    assert get(f"http://127.0.0.1:{free}/health").json()["status"] == "ok"
    assert start_monitoring(cfg) is server          # one endpoint per process
    stop_monitoring()
    assert running_server() is None
    with pytest.raises(OSError):                    # the port is released
        socket.create_connection(("127.0.0.1", free), timeout=1).close()


def test_disabled_and_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTH_PORT", raising=False)
    assert start_monitoring(config_from_dict({"monitoring": {"enabled": False}})) is None
    with MonitoringServer(port=0) as first:
        taken = first.port
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}"):
            MonitoringServer(port=taken).start()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="port"):
        MonitoringServer(port=70000)
    with pytest.raises(ValueError, match="port"):
        MonitoringServer(port=True)
    with pytest.raises(ValueError, match="host"):
        MonitoringServer(host="")
