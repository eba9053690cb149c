"""tardis-dev's computeTradeBars, run by node: the peer the candle tests compare against.

The npm package (tardis-dev 13.35.3, pinned in package-lock.json) is installed into
tests/reference/node_modules with `npm ci` on first use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_LOCK = threading.Lock()


def _require_node() -> str:
    from tests.conftest import IN_CI

    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        msg = "node and npm are needed to run tardis-dev (the candle correctness peer)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg + "; install Node.js 18+")
    return node


def ensure_installed() -> str:
    """Install tardis-dev with `npm ci` unless present; returns the node binary."""
    node = _require_node()
    with _LOCK:
        marker = HERE / "node_modules" / "tardis-dev" / "package.json"
        if not marker.exists():
            proc = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=HERE, capture_output=True, text=True, timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"npm ci failed in {HERE}:\n{proc.stderr[-2000:]}")
    return node


def trade_bars(path: str | Path, intervals_ms: list[int]) -> list[dict]:
    """Every trade_bar tardis-dev computes from the trades of one CSV file."""
    node = ensure_installed()
    proc = subprocess.run(
        [node, str(HERE / "trade_bars.mjs"), str(path), *map(str, intervals_ms)],
        cwd=HERE, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tardis-dev failed on {path}:\n{proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line]
