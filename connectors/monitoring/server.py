"""The HTTP endpoint every flow serves: GET /health (JSON verdict) and GET /metrics.

A stdlib ThreadingHTTPServer in a daemon thread, plus a daemon thread sampling the counters
for the health window. Both stop with `stop()` or at process exit. A flow starts it with

    server = start_monitoring(cfg)        # None when monitoring.enabled is false

which binds `monitoring.host` (default 127.0.0.1) and `monitoring.port` (default 8080; the
environment variable HEALTH_PORT overrides it; 0 picks a free port, see `server.port`).
One endpoint per process: calling it again returns the running server.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from connectors.monitoring.health import HealthSettings, Monitor, resolve_port
from connectors.monitoring.sources import SOURCES, SourceRegistry

if TYPE_CHECKING:
    from dataflows.config import MonitoringConfig, StreamingConfig

log = logging.getLogger(__name__)

ENDPOINTS = ("/health", "/metrics")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: MonitoringServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def version_string(self) -> str:
        return "market-data-monitoring"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/health":
                report = self.server.owner.monitor.report()
                body = json.dumps(report.body, separators=(",", ":")).encode()
                self._send(report.http_status, "application/json", body, head)
            elif path == "/metrics":
                from connectors.monitoring.prometheus import CONTENT_TYPE_LATEST, exposition

                self._send(200, CONTENT_TYPE_LATEST, exposition(self.server.owner.monitor), head)
            else:
                body = json.dumps({"error": "not found", "endpoints": list(ENDPOINTS)}).encode()
                self._send(404, "application/json", body, head)
        except Exception:  # never let a probe kill the thread; details go to the log only
            log.exception("monitoring: %s failed", path)
            self._send(500, "application/json", b'{"error":"internal error"}', head)

    def _send(self, code: int, content_type: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("monitoring %s - %s", self.address_string(), format % args)


class _Sampler(threading.Thread):
    def __init__(self, monitor: Monitor) -> None:
        super().__init__(name="monitoring-sampler", daemon=True)
        self.monitor = monitor
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.monitor.settings.sample_interval_s
        while not self.stopping.wait(interval):
            try:
                self.monitor.sample()
            except Exception:
                log.exception("monitoring: sampling the counters failed")


class MonitoringServer:
    """/health and /metrics on `host:port` (port 0: a free port, read `port` after start)."""

    def __init__(self, settings: HealthSettings | None = None, host: str = "127.0.0.1",
                 port: int = 8080, *, sources: SourceRegistry = SOURCES) -> None:
        if not isinstance(host, str) or not host.strip():
            raise ValueError(f"host must be a non-empty host name or address, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer 0-65535, got {port!r}")
        self.host = host.strip()
        self.requested_port = port
        self.monitor = Monitor(settings or HealthSettings(), sources=sources)
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sampler: _Sampler | None = None

    @classmethod
    def from_config(cls, cfg: MonitoringConfig, *, check_throughput: bool = True,
                    environ: Mapping[str, str] | None = None) -> MonitoringServer:
        """The server `monitoring:` describes, HEALTH_PORT (from `environ`) applied."""
        return cls(HealthSettings.from_config(cfg, check_throughput=check_throughput),
                   cfg.host, resolve_port(cfg.port, environ))

    @property
    def running(self) -> bool:
        return self._http is not None

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return int(self._http.server_address[1]) if self._http else self.requested_port

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to; the requested ones until started."""
        if self._http is None:
            return self.host, self.requested_port
        host, port = self._http.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MonitoringServer:
        """Bind and serve; raises OSError naming the address when it cannot bind."""
        if self._http is not None:
            return self
        try:
            http = _HTTPServer((self.host, self.requested_port), self)
        except OSError as e:
            raise OSError(e.errno, f"monitoring: cannot listen on {self.host}:"
                          f"{self.requested_port}: {e.strerror} (set monitoring.port or "
                          f"HEALTH_PORT)") from None
        self._http = http
        self.monitor.sample()   # the window starts now, before any later count
        self._sampler = _Sampler(self.monitor)
        self._sampler.start()
        self._thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="monitoring-http", daemon=True)
        self._thread.start()
        log.info("health and metrics on %s (/health, /metrics)", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and sampling, and release the port."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._sampler is not None:
            self._sampler.stopping.set()
            self._sampler.join(timeout=5)
            self._sampler = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MonitoringServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MonitoringServer({self.url}, running={self.running})"


_LOCK = threading.Lock()
_RUNNING: MonitoringServer | None = None


def start_monitoring(cfg: StreamingConfig | MonitoringConfig, *, check_throughput: bool = True,
                     environ: Mapping[str, str] | None = None) -> MonitoringServer | None:
    """Start this process's endpoint from streaming.yaml (`cfg` or its `monitoring` section);
    None when monitoring is disabled. Returns the running one if already started.
    `check_throughput=False` for flows without ticks (the instruments flow)."""
    global _RUNNING
    from dataflows.config import StreamingConfig

    section = cfg.monitoring if isinstance(cfg, StreamingConfig) else cfg
    if not section.enabled:
        return None
    with _LOCK:
        if _RUNNING is not None and _RUNNING.running:
            return _RUNNING
        server = MonitoringServer.from_config(section, check_throughput=check_throughput,
                                              environ=environ).start()
        _RUNNING = server
        return server


def stop_monitoring() -> None:
    """Stop this process's endpoint, if one runs."""
    global _RUNNING
    with _LOCK:
        server, _RUNNING = _RUNNING, None
    if server is not None:
        server.stop()


def running_server() -> MonitoringServer | None:
    """The endpoint start_monitoring started, if it still runs."""
    return _RUNNING if _RUNNING is not None and _RUNNING.running else None
