"""Which BigQuery errors are transient, and the backoff between retries.

Transient: gRPC UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ABORTED, RESOURCE_EXHAUSTED; HTTP
429 and 5xx (but 501); a refused or dropped connection. Everything else (bad request,
permission, schema mismatch, gRPC UNKNOWN) is not retried: retrying cannot fix it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.api_core import exceptions as gexc

TRANSIENT_GRPC_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
})
#: google.rpc.Code numbers of the same statuses (AppendRowsResponse.error.code).
TRANSIENT_RPC_CODES = frozenset(c.value[0] for c in TRANSIENT_GRPC_CODES)


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix (see the module docstring)."""
    if isinstance(exc, gexc.GoogleAPICallError):
        reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
        if reasons & {"rateLimitExceeded", "backendError", "internalError"}:
            return True  # BigQuery REST reports rate limits as 403 rateLimitExceeded
        if exc.grpc_status_code is not None:  # gRPC, or an HTTP error with a gRPC equivalent
            return exc.grpc_status_code in TRANSIENT_GRPC_CODES
        code = exc.code
        return isinstance(code, int) and (code == 429 or (500 <= code < 600 and code != 501))
    if isinstance(exc, grpc.RpcError):
        code_fn = getattr(exc, "code", None)
        return callable(code_fn) and code_fn() in TRANSIENT_GRPC_CODES
    try:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - requests comes with google-cloud-bigquery
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits in [d/2, d], d = min(cap, base * 2**n)."""

    max_retries: int = 8
    initial_s: float = 0.25
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= max_s")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        d = min(self.max_s, self.initial_s * (2 ** min(attempt, 62)))
        r = (rng or random).random()
        return d / 2 + d / 2 * r


class RetriesExhausted(RuntimeError):
    """A transient error outlasted the retries; the rows not yet written are in `pending`."""

    def __init__(self, message: str, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


Sleep = Callable[[float], None]
