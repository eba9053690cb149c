"""The code stays lint-clean (ruff) and type-clean (mypy) on the packages users import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["dataflows", "operators", "connectors", "features"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_the_packages() -> None:
    done = _run("mypy", *PACKAGES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
