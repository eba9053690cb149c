"""Sources and sinks: Tardis (file replay, WebSocket), Redis, BigQuery, Parquet, stdout, CCXT.

Heavy client libraries are imported on first use, so `import connectors` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TardisFileSource": "connectors.tardis.files",
    "LiveFeatureStream": "connectors.serve.stream",
    "LiveTickStreamer": "connectors.tardis.websocket",
    "TardisMachineSource": "connectors.tardis.websocket",
    "LiveInstrumentProvider": "connectors.instruments.provider",
    "CCXTAdapter": "connectors.instruments.ccxt_adapter",
    "InstrumentMapper": "connectors.instruments.mapper",
    "InstrumentDefinition": "connectors.instruments.definition",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connectors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
