"""Exactly-once recovery into BigQuery: a candles replay to the emulator, SIGKILLed at random
points and restarted with its recovery store, leaves the `_dedup` views (what users query)
holding exactly what an uninterrupted run writes: every candle once, the same values.

Rows written after the last snapshot are written again on resume, so the raw table may hold a
row twice (the emulator ignores insertId, as BigQuery's default stream does); the views keep
one row per row_key, and the test checks the repeated rows are identical copies.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from connectors.bigquery.emulator import BigQueryEmulator
from connectors.tardis.generate import generate_trades
from tests.connectors.bigquery.conftest import PROJECT
from tests.flows import sigkill_at_random_points

ROOT = Path(__file__).resolve().parents[3]
TIMEFRAMES = ("15s", "1m", "5m", "15m", "1h", "4h", "1d")
COLUMNS = "row_key, open, high, low, close, volume, trade_count, vwap, sma_5, ema_10, rsi_20"


def _config(path: Path, tmp: Path, dataset: str) -> Path:
    path.write_text(json.dumps({
        "mode": "streaming-candles-bigquery",
        "source": {"files": {"chunk_bytes": 65536}},
        "persist": {"backend": "bigquery", "bigquery": {
            "dataset": dataset, "live_dataset": f"{dataset}_live",
            "retry_initial_backoff": "50ms", "retry_max_backoff": "500ms"}},
        "outputs": {"dead_letter_path": str(tmp / "dead_letter"),
                    "progress_interval": "0.1s"},
        "recovery": {"snapshot_interval": "0.2s"},
        "monitoring": {"enabled": False},
    }))
    return path


def _replay(emu: BigQueryEmulator, config: Path, inputs: list[str],
            *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "dataflows.replay", "--config", str(config), *extra]
    for f in inputs:
        args += ["--input", f]
    env = {**os.environ, **emu.env(), "GOOGLE_CLOUD_PROJECT": PROJECT}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _query(emu: BigQueryEmulator, dataset: str, sql: str) -> pa.Table:
    from connectors.bigquery.writer import BigQueryWriter
    from dataflows.config import BigQueryConfig

    w = BigQueryWriter(BigQueryConfig(dataset=dataset, live_dataset=f"{dataset}_live"),
                       live=False)
    try:
        return w.query(sql)
    finally:
        w.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("bq-recovery")
    files = generate_trades(d, symbols=["BTCUSDT", "ETHUSDT", "XRPUSDT"], day="2024-01-15",
                            trades_per_symbol=120_000, seed=33)
    return sorted(str(f) for f in files)


def test_sigkill_then_resume_into_bigquery_equals_an_uninterrupted_run(
        bq_env: BigQueryEmulator, inputs: list[str], tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    whole_ds, killed_ds = f"whole_{suffix}", f"killed_{suffix}"
    whole = _replay(bq_env, _config(tmp_path / "a.json", tmp_path / "a", whole_ds), inputs,
                    "--quiet")
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err

    cfg = _config(tmp_path / "b.json", tmp_path / "b", killed_ds)
    store = tmp_path / "store"

    def started(proc: subprocess.Popen[str]) -> bool:  # a progress line: past start-up
        assert proc.stderr is not None
        return "rows" in proc.stderr.readline()

    kills = sigkill_at_random_points(lambda: _replay(bq_env, cfg, inputs, "--recovery",
                                                     str(store)),
                                     started, random.Random(4321), wait_s=(0.1, 1.2))
    assert kills >= 1, "every run finished before it could be killed: make the input larger"
    final = _replay(bq_env, cfg, inputs, "--recovery", str(store), "--quiet")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    for tf in TIMEFRAMES:
        def sql(ds: str, view: str, tf: str = tf) -> str:
            return f"SELECT {COLUMNS} FROM `{ds}.candles_{tf}{view}` ORDER BY row_key"

        want = _query(bq_env, whole_ds, sql(whole_ds, "_dedup"))
        got = _query(bq_env, killed_ds, sql(killed_ds, "_dedup"))
        assert want.num_rows > 0, tf
        assert got.num_rows == want.num_rows, tf
        assert got.column("row_key").to_pylist() == want.column("row_key").to_pylist(), tf
        for col in COLUMNS.split(", ")[1:]:
            x = want.column(col).to_numpy(zero_copy_only=False).astype(float)
            y = got.column(col).to_numpy(zero_copy_only=False).astype(float)
            np.testing.assert_allclose(y, x, rtol=1e-12, equal_nan=True, err_msg=f"{tf}.{col}")
        # rows written twice around a kill are identical copies of one candle
        raw = _query(bq_env, killed_ds, sql(killed_ds, ""))
        distinct = {tuple(r.values()) for r in raw.to_pylist()}
        assert len(distinct) == want.num_rows, tf
