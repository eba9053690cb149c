"""Serve mode: closed candles with features to Redis Streams or an in-process broker, read by
downstream services with `LiveFeatureStream`.

- `RedisServeSink` / `MemoryServeSink`: Bytewax sinks over `CandleBatch` items;
  `serve_sink(config.serve)` (connectors.serve.sinks) picks one from streaming.yaml.
- `LiveFeatureStream`: async iterator of candle_with_features dicts (`connectors.serve.stream`).
- Key layout and entry IDs: `connectors.serve.keys`; wire format: `connectors.serve.codec`.

Submodules are imported on first use, so the memory transport works without redis-py.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LiveFeatureStream": "connectors.serve.stream",
    "RedisServeSink": "connectors.serve.redis_sink",
    "MemoryServeSink": "connectors.serve.memory",
    "MemoryBroker": "connectors.serve.memory",
    "default_broker": "connectors.serve.memory",
    "SinkStats": "connectors.serve.stats",
    "resolve_redis_url": "connectors.serve.url",
    "redact_url": "connectors.serve.url",
    "serve_sink": "connectors.serve.sinks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connectors.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
