"""streaming.yaml's `monitoring:` section: defaults and readable errors."""

from __future__ import annotations

import pytest

from connectors.monitoring import MonitoringServer
from dataflows.config import ConfigError, MonitoringConfig, config_from_dict


def test_defaults_are_the_seed_thresholds_on_loopback() -> None:
    m = config_from_dict({}).monitoring
    assert m == MonitoringConfig()
    assert (m.enabled, m.host, m.port) == (True, "127.0.0.1", 8080)
    assert (m.max_error_rate, m.max_processing_latency, m.min_throughput) == (
        0.05, 1_000_000, 10.0)
    assert (m.window, m.sample_interval, m.stale_after, m.failing_after) == (
        60_000_000, 1_000_000, 30_000_000, 120_000_000)
    assert m.max_event_lag is None and m.latency_quantile == 0.95


@pytest.mark.parametrize(("section", "message"), [
    ({"port": 70000}, "monitoring.port"),
    ({"host": "http://0.0.0.0"}, "host name or IP address"),
    ({"window": "50ms"}, "at least 100ms"),
    ({"window": "1s", "sample_interval": "600ms"}, "half the window"),
    ({"max_error_rate": 1.5}, "monitoring.max_error_rate"),
    ({"latency_quantile": 1}, "monitoring.latency_quantile"),
    ({"min_throughput": -1}, "monitoring.min_throughput"),
    ({"max_event_lag": "0s"}, "max_event_lag must be > 0"),
    ({"stale_after": 0}, "stale_after and failing_after"),
    ({"treshold": 1}, "monitoring.treshold: unknown key"),
])
def test_bad_values_name_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"monitoring": section})


def test_server_from_config_applies_health_port() -> None:
    m = config_from_dict({"monitoring": {"host": "0.0.0.0", "port": 9000,
                                         "window": "30s", "min_throughput": 0}}).monitoring
    s = MonitoringServer.from_config(m, environ={"HEALTH_PORT": "9100"})
    assert s.address == ("0.0.0.0", 9100)
    assert s.monitor.settings.window_s == 30 and s.monitor.settings.min_throughput == 0
    assert MonitoringServer.from_config(m, environ={}).address == ("0.0.0.0", 9000)
    off = MonitoringServer.from_config(m, check_throughput=False, environ={})
    assert off.monitor.settings.check_throughput is False
