"""Fixtures for the monitoring tests: clean counters and sources, a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.monitoring import SOURCES, HealthSettings, MonitoringServer, stop_monitoring
from operators import metrics


@pytest.fixture(autouse=True)
def clean_state() -> Iterator[None]:
    """Every test starts with zero counters, no sources and no process-wide server."""
    metrics.reset_all()
    SOURCES.clear()
    yield
    stop_monitoring()
    metrics.reset_all()
    SOURCES.clear()


@pytest.fixture
def serve() -> Iterator[Callable[..., MonitoringServer]]:
    """Start a real MonitoringServer on a free loopback port with the given settings (short
    windows; the throughput check off unless a test sets min_throughput)."""
    started: list[MonitoringServer] = []

    def start(**settings: Any) -> MonitoringServer:
        base = {"window_s": 0.4, "sample_interval_s": 0.05, "min_throughput": 0.0}
        server = MonitoringServer(HealthSettings(**{**base, **settings}), port=0).start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()
