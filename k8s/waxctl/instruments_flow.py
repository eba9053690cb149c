"""waxctl entry point of the CCXT instruments flow (deploy with `--processes 1`).

The Bytewax helm chart runs `python -m bytewax.run /var/bytewax/instruments_flow.py`, which
looks up `flow` here; the configuration is the file named by STREAMING_CONFIG.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access, exactly as `python -m bytewax.run dataflows.instruments` does.
    if name == "flow":
        from dataflows.instruments import get_flow

        return get_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
