"""`serve_sink`: the Bytewax sink of serve mode, chosen from streaming.yaml's `serve:` section.

    op.output("serve_candles", candles, serve_sink(cfg.serve, plan.serve_transport,
                                                   plan.redis_url))

`transport` and `redis_url` override the section's own values (a run plan has already applied
env REDIS_URL); when `redis_url` is None, env REDIS_URL overrides `serve.redis_url`.
"""

from __future__ import annotations

from typing import Any, Protocol


class ServeSection(Protocol):
    """The `serve:` section of streaming.yaml (dataflows.config.ServeConfig)."""

    @property
    def transport(self) -> str: ...
    redis_url: str
    stream_maxlen: int
    key_prefix: str
    buffer_max_rows: int


def serve_sink(serve: ServeSection, transport: str | None = None,
               redis_url: str | None = None, **overrides: Any) -> Any:
    """RedisServeSink for transport "redis", MemoryServeSink (on the process-wide broker,
    or `broker=` in overrides) for "memory". Both take CandleBatch items."""
    transport = transport or serve.transport
    if transport == "redis":
        from connectors.serve.redis_sink import RedisServeSink

        if redis_url is not None:
            overrides = {"redis_url": redis_url, **overrides}
        return RedisServeSink.from_config(serve, **overrides)
    if transport == "memory":
        from connectors.serve.memory import MemoryServeSink

        kw: dict[str, Any] = {"key_prefix": serve.key_prefix, "maxlen": serve.stream_maxlen}
        kw.update(overrides)
        return MemoryServeSink(**kw)
    raise ValueError(f"serve.transport must be 'redis' or 'memory', got {transport!r}")
