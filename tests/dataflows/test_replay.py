"""The replay flow end to end: determinism, workers, resume, bad input, the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

from connectors.sinks.parquet import read_table
from connectors.tardis.files import TardisFileSource, _StreamPartition
from connectors.tardis.generate import generate_trades
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from operators import metrics
from tests.flows import dead_letters, replay_to_parquet

ROOT = Path(__file__).resolve().parents[2]
CANDLE_TABLES = [f"candles_{tf}" for tf in ("15s", "1m", "5m", "15m", "1h", "4h", "1d")]


@pytest.fixture(scope="module")
def four_symbols(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("gen")
    files = generate_trades(d, symbols=["BTCUSDT", "ETHUSDT", "XRPUSDT", "ADAUSDT"],
                            day="2024-01-15", trades_per_symbol=15_000, seed=11)
    return sorted(str(f) for f in files)


def _sorted(t: pa.Table) -> pa.Table:
    t = t.drop_columns([c for c in ("date",) if c in t.column_names])
    return t.take(pc.sort_indices(t, sort_keys=[("row_key", "ascending")]))


def assert_same_tables(a: dict[str, pa.Table], b: dict[str, pa.Table], rtol: float = 0) -> None:
    """Equal tables (same rows by row_key); floats to `rtol` (0: bit for bit)."""
    assert sorted(a) == sorted(b)
    for name in a:
        ta, tb = _sorted(a[name]), _sorted(b[name])
        assert ta.num_rows == tb.num_rows, name
        if rtol == 0:
            assert ta.equals(tb), name
            continue
        assert ta.schema == tb.schema, name
        for col in ta.column_names:
            x, y = ta.column(col), tb.column(col)
            if pa.types.is_floating(x.type):
                np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=rtol,
                                           err_msg=f"{name}.{col}")
            else:
                assert x.equals(y), f"{name}.{col}"


def test_every_timeframe_is_written_with_features(four_symbols, tmp_path):
    tables = replay_to_parquet(four_symbols, tmp_path / "out")
    assert sorted(tables) == sorted(CANDLE_TABLES)
    one_min = tables["candles_1m"]
    assert set(one_min.column("symbol").to_pylist()) == {"BTCUSDT", "ETHUSDT", "XRPUSDT",
                                                        "ADAUSDT"}
    for col in ("sma_5", "ema_20", "rsi_10", "price_volatility_20", "log_return"):
        assert col in one_min.column_names
        assert one_min.column(col).null_count < one_min.num_rows
    # a day of 1m candles per symbol, filled where empty, contiguous
    assert one_min.num_rows == 4 * 1440
    assert tables["candles_1d"].num_rows == 4
    assert metrics.ROWS_IN.value() == 60_000


def test_same_replay_twice_is_identical(four_symbols, tmp_path):
    a = replay_to_parquet(four_symbols, tmp_path / "a")
    b = replay_to_parquet(four_symbols, tmp_path / "b")
    assert_same_tables(a, b)


def test_one_worker_and_two_workers_give_the_same_candles(four_symbols, tmp_path):
    one = replay_to_parquet(four_symbols, tmp_path / "one")
    cfg = config_from_dict({})
    out = tmp_path / "two"
    plan = plan_run(cfg, inputs=four_symbols, output=str(out))
    cluster_main(build_flow(cfg, plan, flow_id="two"), [], 0, worker_count_per_proc=2)
    two = {t: read_table(out, t) for t in CANDLE_TABLES}
    assert_same_tables(one, two)


class _CrashingSource(TardisFileSource):
    """The real source, but the run dies after `crash_after` batches of one partition."""

    crash_after = 10

    def build_part(self, step_id, for_part, resume_state):
        part = super().build_part(step_id, for_part, resume_state)
        inner_next = part.next_batch
        calls = {"n": 0}

        def next_batch():
            calls["n"] += 1
            if calls["n"] > self.crash_after and for_part.endswith("ETHUSDT"):
                raise RuntimeError("simulated crash")
            return inner_next()

        part.next_batch = next_batch  # type: ignore[method-assign]
        return part


def test_replay_stopped_midfile_and_resumed_gives_the_same_candles(four_symbols, tmp_path):
    whole = replay_to_parquet(four_symbols, tmp_path / "whole")

    cfg = config_from_dict({"source": {"files": {"chunk_bytes": 65536}}})
    out = tmp_path / "resumed"
    plan = plan_run(cfg, inputs=four_symbols, output=str(out))
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    recovery = RecoveryConfig(str(rec))
    crashing = _CrashingSource(four_symbols, chunk_bytes=65536)
    with pytest.raises(Exception, match="next_batch") as crash:
        run_main(build_flow(cfg, plan, flow_id="resume", source=crashing),
                 epoch_interval=timedelta(0), recovery_config=recovery)
    assert "simulated crash" in str(crash.value.__cause__)
    partial = {p.name: read_table(out, p.name) for p in out.iterdir()
               if p.is_dir() and p.name != "dead_letter"}
    assert sum(t.num_rows for t in partial.values()) < sum(t.num_rows for t in whole.values())
    # resume with the normal source from the recovery store
    run_main(build_flow(cfg, plan, flow_id="resume",
                        source=TardisFileSource(four_symbols, chunk_bytes=65536)),
             epoch_interval=timedelta(0), recovery_config=recovery)
    resumed = {t: read_table(out, t, dedupe=False) for t in CANDLE_TABLES}
    # no candle lost, none doubled; sums may differ in the last bit (other chunk boundaries)
    assert_same_tables(whole, resumed, rtol=1e-12)


def test_bad_rows_and_late_trades_reach_the_dead_letter_output(tmp_path):
    header = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
    t0 = 1_705_276_800_000_000  # 2024-01-15
    lines = [f"binance-futures,BTCUSDT,{t0 + i * 1_000_000},{t0 + i * 1_000_000 + 500},{i},"
             f"buy,100.5,1" for i in range(100)]
    lines[10] = lines[10].replace(",100.5,", ",oops,")
    lines[20] = lines[20].replace(",buy,", ",hold,")
    # a trade 40 s in the past: its 15s candle has closed (lateness 0)
    lines[60] = (f"binance-futures,BTCUSDT,{t0 + 15_000_000},{t0 + 60_000_500},60,sell,99,2")
    f = tmp_path / "binance-futures_trades_2024-01-15_BTCUSDT.csv.gz"
    f.write_bytes(gzip.compress(("\n".join([header, *lines]) + "\n").encode(), mtime=0))
    out = tmp_path / "out"
    tables = replay_to_parquet([str(f)], out)
    dead = dead_letters(out)
    rejected = [d for d in dead if d["kind"] == "rejected"]
    late = [d for d in dead if d["kind"] == "late"]
    assert sorted((d["line"], d["reason"].split(":")[0]) for d in rejected) == [
        (12, "price is not a number"), (22, "unknown side (expected one of buy, sell, unknown), "
                                            "got 'hold'")]
    # late for its 15s candle only: the 1m candle [0, 60 s) was still open at 59 s
    assert [(d["line"], d["reason"].split(" candle")[0]) for d in late] == [
        (62, "late for the 15s")]
    assert metrics.REJECTED.value() == 2 and metrics.LATE.value() == 1
    c15, c1m = tables["candles_15s"], tables["candles_1m"]
    assert pc.sum(c15.column("trade_count")).as_py() == 100 - 3
    assert 99.0 not in c15.column("low").to_pylist()
    assert pc.sum(c1m.column("trade_count")).as_py() == 100 - 2
    assert 99.0 in c1m.column("low").to_pylist()


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataflows.replay", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_replays_to_json_lines_with_progress_and_summary(four_symbols, tmp_path):
    cfg = tmp_path / "streaming.yaml"
    cfg.write_text("outputs: {progress_interval: 0.05s, dead_letter_path: dl}\n"
                   "source: {files: {chunk_bytes: 65536}}\n")
    out = tmp_path / "candles.jsonl"
    proc = _cli("--config", str(cfg), "--input", four_symbols[0], "--input", four_symbols[1],
                "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith("replay done: rows in 30,000, candles out ")
    assert "late 0, rejected 0, files 2" in summary
    assert "progress: files " in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["symbol"] for r in rows} == {"ADAUSDT", "BTCUSDT"}
    assert {r["timeframe"] for r in rows} == {"15s", "1m", "5m", "15m", "1h", "4h", "1d"}
    assert rows[0]["timestamp"].endswith("Z") and "sma_5" in rows[0]


def test_cli_reports_bad_config_and_missing_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("candles: {timeframes: [2x]}\n")
    proc = _cli("--config", str(bad), "--input", "x.csv.gz")
    assert proc.returncode == 2
    assert "candles.timeframes" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("--input", str(tmp_path / "nothing_trades_2020-01-01_X.csv.gz"))
    assert proc.returncode == 2
    assert "no file matches this input" in proc.stderr and "Traceback" not in proc.stderr


def test_main_job_runs_on_the_embedded_default(tmp_path):
    cfg = tmp_path / "streaming.yaml"
    sample = ROOT / "connectors" / "tardis" / "sample"
    cfg.write_text(f"source: {{files: {{paths: ['{sample}/*.csv.gz']}}}}\n"
                   "persist: {parquet: {path: out}}\noutputs: {dead_letter_path: out/dl}\n")
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.main"], cwd=ROOT,
                          env={**__import__("os").environ, "STREAMING_CONFIG": str(cfg)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tables = {t: read_table(tmp_path / "out", t) for t in CANDLE_TABLES}
    assert tables["candles_1d"].num_rows == 3
    # three symbols, first to last trade of the day, every 15 s interval (filled when empty)
    assert 3 * 5750 < tables["candles_15s"].num_rows <= 3 * 5760


def test_source_partition_is_private_but_resumable():
    assert hasattr(_StreamPartition, "snapshot")


def test_cutting_a_stream_into_several_files_gives_the_same_candles(four_symbols, tmp_path):
    """One symbol's day split at arbitrary rows into three consecutive Tardis files (one
    stream, replayed in date order) gives exactly the candles of the single file."""
    src = next(f for f in four_symbols if f.endswith("_BTCUSDT.csv.gz"))
    with gzip.open(src, "rt") as fh:
        header, *rows = fh.read().splitlines()
    cuts = [0, 4_321, 9_876, len(rows)]
    split = tmp_path / "split"
    split.mkdir()
    for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        name = split / f"binance-futures_trades_2024-01-{15 + k:02d}_BTCUSDT.csv.gz"
        name.write_bytes(gzip.compress(("\n".join([header, *rows[lo:hi]]) + "\n").encode()))
    whole = replay_to_parquet([src], tmp_path / "whole")
    parts = replay_to_parquet([str(split / "*.csv.gz")], tmp_path / "parts")
    assert_same_tables(whole, parts, rtol=1e-12)
