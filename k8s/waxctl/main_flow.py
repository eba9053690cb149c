"""waxctl entry point of the main flow.

`waxctl dataflow deploy k8s/waxctl/main_flow.py ...` ships this file; the Bytewax helm chart
then runs `python -m bytewax.run /var/bytewax/main_flow.py`, which looks up `flow` here. The
code itself is in the image (tardis-bytewax-streaming); the configuration is the file named by
STREAMING_CONFIG (the ConfigMap market-data-config, see values.yaml).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first access, exactly as `python -m bytewax.run dataflows.main` builds it.
    if name == "flow":
        from dataflows.main import get_flow

        return get_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
