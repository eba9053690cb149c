"""Health and metrics: /health (JSON verdict) and /metrics (Prometheus) for every flow.

    from connectors.monitoring import start_monitoring, source_status
    server = start_monitoring(cfg)                  # binds monitoring.host:port / HEALTH_PORT
    source_status("tardis-machine", live=True).connected()

Steps record into operators.metrics (counters, and the processing_latency_seconds /
event_lag_seconds histograms); sources report their connection through `source_status`.
The alert rules and Grafana dashboard under k8s/monitoring come from `rules`.
"""

from connectors.monitoring.health import HealthReport, HealthSettings, Monitor
from connectors.monitoring.server import (
    MonitoringServer,
    running_server,
    start_monitoring,
    stop_monitoring,
)
from connectors.monitoring.sources import SOURCES, SourceStatus, source_status

__all__ = [
    "SOURCES",
    "HealthReport",
    "HealthSettings",
    "Monitor",
    "MonitoringServer",
    "SourceStatus",
    "running_server",
    "source_status",
    "start_monitoring",
    "stop_monitoring",
]
