"""Transient errors provoked for real: an emulator that comes up late, and one restarted
between two writes (its data kept on disk), plus a retry budget that runs out."""

from __future__ import annotations

import logging
import threading

import pytest

from connectors.bigquery.emulator import BigQueryEmulator, free_port
from connectors.bigquery.retry import RetriesExhausted
from connectors.bigquery.writer import BigQueryWriter
from connectors.tables import TICK_TABLES
from tests.connectors.bigquery.conftest import PROJECT, fast_config
from tests.connectors.bigquery.rows import tick_rows

TRADES = TICK_TABLES["ticks_trades"]


def _start_later(emu: BigQueryEmulator, delay: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (threading.Event().wait(delay), emu.start()),
                         daemon=True)
    t.start()
    return t


@pytest.mark.usefixtures("bq_emulator")  # skips/fails like the other emulator tests
def test_late_port_and_restart_are_retried(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    emu = BigQueryEmulator(rest_port=free_port(), grpc_port=free_port(), project=PROJECT,
                           persistent=True)
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    cfg = fast_config(retry_initial_backoff="200ms", retry_max_backoff="1s", max_retries=40)
    rows = tick_rows(TRADES, 20)
    try:
        w = BigQueryWriter(cfg, live=False)
        # 1. Nothing listens yet: creating the dataset and table is retried until it does.
        starter = _start_later(emu, 0.2)
        with caplog.at_level(logging.WARNING, logger="connectors.bigquery.writer"):
            w.ensure_table(TRADES)
        starter.join()
        assert any("create dataset" in r.getMessage() and "retry 1/40" in r.getMessage()
                   for r in caplog.records)
        first = w.write(TRADES, rows.slice(0, 10))
        assert first.written == 10 and first.details["retries"] == 0

        # 2. The emulator goes away between two writes and comes back on the same ports.
        emu.stop()
        restarter = _start_later(emu, 0.2)
        second = w.write(TRADES, rows.slice(10))
        restarter.join()
        assert second.written == 10
        retries, errors = second.details["retries"], second.details["errors"]
        assert isinstance(retries, int) and retries >= 1
        assert isinstance(errors, list)
        assert any("UNAVAILABLE" in e.upper() or "ServiceUnavailable" in e for e in errors)
        back = w.query(f"SELECT row_key FROM `{w.dedup_view_id(TRADES)}`")
        assert sorted(back.column("row_key").to_pylist()) == sorted(
            rows.column("row_key").to_pylist())

        # 3. An outage longer than the retry budget raises (nothing silently dropped).
        impatient = BigQueryWriter(fast_config(dataset=cfg.dataset, max_retries=2,
                                               retry_initial_backoff="50ms"), live=False)
        impatient.ensure_table(TRADES)
        emu.stop()
        with pytest.raises(RetriesExhausted, match="gave up after 2 retries") as info:
            impatient.write(TRADES, rows)
        assert info.value.pending == 20
        impatient.close()
        w.close()
    finally:
        emu.close()
