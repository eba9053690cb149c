"""Fixtures: a real BigQuery API emulator (bqemulator, REST + Storage gRPC) for this session.

The emulator runs as a subprocess on free ports; `bq_env` points the project's clients at it
through BIGQUERY_EMULATOR_HOST / BIGQUERY_STORAGE_EMULATOR_HOST (anonymous credentials).
Outside CI a missing emulator skips these tests; in CI it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connectors.bigquery.emulator import BigQueryEmulator, EmulatorError
from dataflows.config import BigQueryConfig

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROJECT = "test-project"


def _unavailable(msg: str) -> None:
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def bq_emulator() -> Iterator[BigQueryEmulator]:
    """One emulator for the session (ephemeral, in-memory DuckDB)."""
    try:
        emu = BigQueryEmulator(project=PROJECT).start()
    except EmulatorError as e:
        _unavailable(f"BigQuery emulator unavailable: {e}")
        raise  # unreachable; keeps type checkers content
    try:
        yield emu
    finally:
        emu.close()


@pytest.fixture
def bq_env(bq_emulator: BigQueryEmulator, monkeypatch: pytest.MonkeyPatch) -> BigQueryEmulator:
    """Point BigQuery clients at the session emulator for one test."""
    for k, v in bq_emulator.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    return bq_emulator


def fast_config(**overrides: Any) -> BigQueryConfig:
    """A config with datasets unique to one test and short backoffs."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "dataset": f"hist_{suffix}", "live_dataset": f"live_{suffix}",
        "retry_initial_backoff": "50ms", "retry_max_backoff": "500ms",
        "request_timeout": "20s",
    }
    values.update(overrides)
    return BigQueryConfig(**values)


@pytest.fixture
def make_writer(bq_env: BigQueryEmulator) -> Iterator[Callable[..., Any]]:
    """Build BigQueryWriters against the emulator; closes them after the test."""
    from connectors.bigquery.writer import BigQueryWriter

    made: list[BigQueryWriter] = []

    def make(config: BigQueryConfig | None = None, *, live: bool = False,
             **overrides: Any) -> BigQueryWriter:
        w = BigQueryWriter(config or fast_config(**overrides), live=live)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
