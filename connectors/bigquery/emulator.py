"""A local BigQuery API emulator (the PyPI package `bqemulator`) run as a subprocess.

Used by the tests, the benchmark and local development: it serves the REST API and the
Storage Read/Write gRPC API from DuckDB, offline. `BigQueryEmulator().start()` picks free
ports (or takes given ones), installs DuckDB's spatial extension from its PyPI wheel (the
emulator needs it and would otherwise try to download it), starts `bqemulator start` and
waits until both endpoints answer. `env()` gives the two variables that point the project's
clients at it (BIGQUERY_EMULATOR_HOST, BIGQUERY_STORAGE_EMULATOR_HOST).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from connectors.bigquery.client import EMULATOR_ENV, STORAGE_EMULATOR_ENV

DEFAULT_PROJECT = "test-project"


class EmulatorError(RuntimeError):
    """The emulator is not installed or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_spatial_extension() -> None:
    """Install DuckDB's spatial extension from the `duckdb-extension-spatial` wheel.

    bqemulator runs `INSTALL spatial` on start; when the extension is already in DuckDB's
    extension directory that is a no-op, otherwise DuckDB downloads it, which fails offline.
    """
    try:
        import duckdb
        from duckdb_extensions import import_extension
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise EmulatorError(
            "the BigQuery emulator needs duckdb==1.5.5, duckdb-extensions and "
            f"duckdb-extension-spatial==1.5.5 ({e})"
        ) from None
    con = duckdb.connect()
    try:
        row = con.sql("SELECT installed FROM duckdb_extensions() "
                      "WHERE extension_name = 'spatial'").fetchone()
        if not (row and row[0]):
            import_extension("spatial", con=con)
    finally:
        con.close()


def _executable() -> list[str]:
    exe = Path(sys.executable).with_name("bqemulator")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("bqemulator")
    if found:
        return [found]
    raise EmulatorError("the `bqemulator` command is not installed (pip install bqemulator)")


class BigQueryEmulator:
    """One bqemulator process; a context manager. Restartable on the same ports and data."""

    def __init__(self, *, rest_port: int | None = None, grpc_port: int | None = None,
                 host: str = "127.0.0.1", project: str = DEFAULT_PROJECT,
                 persistent: bool = False, data_dir: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 60.0, log_path: str | os.PathLike[str] | None = None
                 ) -> None:
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        for name, port in (("rest_port", rest_port), ("grpc_port", grpc_port)):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{name} must be 1..65535, got {port}")
        if not project:
            raise ValueError("project must not be empty")
        self.host = host
        self.rest_port = rest_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.project = project
        self.persistent = persistent or data_dir is not None
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if self.persistent and data_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="bqemu-")
            data_dir = self._own_dir.name
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / (
            f"bqemulator-{self.rest_port}.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def env(self) -> dict[str, str]:
        """The variables that point the project's BigQuery clients at this emulator."""
        return {EMULATOR_ENV: self.rest_url, STORAGE_EMULATOR_ENV: self.grpc_endpoint}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait: bool = True) -> BigQueryEmulator:
        """Start the process (and by default wait until it serves REST and gRPC)."""
        if self.running:
            return self
        ensure_spatial_extension()
        cmd = [*_executable(), "start", "--rest-host", self.host,
               "--rest-port", str(self.rest_port), "--grpc-host", self.host,
               "--grpc-port", str(self.grpc_port), "--project", self.project,
               "--log-level", "warning"]
        if self.persistent:
            assert self.data_dir is not None
            cmd += ["--persistent", "--data-dir", str(self.data_dir)]
        else:
            cmd += ["--ephemeral"]
        env = dict(os.environ)
        # The avro extension is best-effort in the emulator and would try a download.
        env["BQEMU_ENABLE_FORMAT_EXTENSIONS"] = "false"
        env.pop("BQEMU_DATA_DIR", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Block until REST answers /readyz and the gRPC port accepts connections."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EmulatorError(
                    f"bqemulator exited with code {self._proc.returncode}; "
                    f"last log lines:\n{self._log_tail()}")
            if self._rest_ready() and self._port_open(self.grpc_port):
                return
            time.sleep(0.05)
        raise EmulatorError(f"bqemulator did not become ready in {self.startup_timeout}s; "
                            f"last log lines:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); data survives if persistent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None

    def __enter__(self) -> BigQueryEmulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _rest_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.rest_url}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _port_open(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(line[:500] for line in text.splitlines()[-lines:])
