"""The persist modes end to end against the BigQuery emulator: the same flow as production.

Replays go through dataflows.main's flow with `persist.backend: bigquery`; rows are read back
by query. The emulator ignores insertId, so a second replay doubles the raw table: the
`_dedup` views are what users query, and they must not double.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.compute as pc
import pytest
from bytewax.testing import run_main

from connectors.tardis.generate import generate_trades
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from tests.conftest import shared_file
from tests.flows import replay_to_parquet


def _config(tmp_path: Path) -> tuple[dict, str]:
    suffix = uuid.uuid4().hex[:8]
    dataset = f"hist_{suffix}"
    return ({
        "persist": {"backend": "bigquery", "bigquery": {
            "dataset": dataset, "live_dataset": f"live_{suffix}",
            "retry_initial_backoff": "50ms", "retry_max_backoff": "500ms"}},
        "outputs": {"dead_letter_path": str(tmp_path / "dl")},
    }, dataset)


def _replay(raw: dict, inputs: list[str], mode: str) -> None:
    cfg = config_from_dict(raw)
    plan = plan_run(cfg, mode=mode, inputs=inputs)
    assert plan.persist_backend == "bigquery"
    run_main(build_flow(cfg, plan, flow_id="bq_mode"))


@pytest.fixture(scope="module")
def trades_file(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("bqflow")
    [f] = generate_trades(d, symbols=["ETHUSDT"], day="2024-01-15", trades_per_symbol=3_000,
                          seed=5)
    return str(f)


def test_candles_mode_writes_every_timeframe_and_dedups_replays(bq_env, tmp_path, trades_file):
    raw, dataset = _config(tmp_path)
    _replay(raw, [trades_file], "streaming-candles-bigquery")
    expected = replay_to_parquet([trades_file], tmp_path / "pq")
    from connectors.bigquery.writer import BigQueryWriter

    writer = BigQueryWriter(config_from_dict(raw).persist.bigquery, live=False)
    try:
        for tf in ("15s", "1m", "1h", "1d"):
            got = writer.query(f"SELECT row_key, open, close, volume, trade_count, sma_5, "
                               f"rsi_10 FROM `{dataset}.candles_{tf}_dedup` ORDER BY row_key")
            want = expected[f"candles_{tf}"].sort_by("row_key")
            assert got.num_rows == want.num_rows, tf
            assert got.column("row_key").to_pylist() == want.column("row_key").to_pylist()
            for col in ("open", "close", "trade_count"):
                assert got.column(col).to_pylist() == want.column(col).to_pylist(), (tf, col)
            assert pc.max(pc.abs(pc.subtract(got.column("volume"), want.column("volume")))
                          ).as_py() < 1e-9
        # replay the same file: the raw table doubles (emulator ignores insertId), the view not
        _replay(raw, [trades_file], "streaming-candles-bigquery")
        raw_n = writer.query(f"SELECT COUNT(*) AS n FROM `{dataset}.candles_1m`")
        view_n = writer.query(f"SELECT COUNT(*) AS n FROM `{dataset}.candles_1m_dedup`")
        n = expected["candles_1m"].num_rows
        assert raw_n.column("n")[0].as_py() == 2 * n
        assert view_n.column("n")[0].as_py() == n
        # the analytics query of the README: latest hour of 1m candles with features
        last = writer.query(
            f"SELECT timestamp, close, sma_5, ema_10, rsi_20 FROM `{dataset}.candles_1m_dedup` "
            "WHERE exchange = 'binance-futures' AND symbol = 'ETHUSDT' AND timestamp_out > "
            f"TIMESTAMP_SUB((SELECT MAX(timestamp_out) FROM `{dataset}.candles_1m_dedup`), "
            "INTERVAL 1 HOUR) ORDER BY timestamp")
        assert last.num_rows == 60
    finally:
        writer.close()


@pytest.mark.shared_data
def test_ticks_mode_writes_each_data_type_to_its_table(bq_env, tmp_path):
    folder = shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz").parent
    raw, dataset = _config(tmp_path)
    raw["data_types"] = {"incremental_book_L2": {"enabled": True}}
    _replay(raw, [str(folder / "*.csv.gz")], "streaming-ticks-bigquery")
    from connectors.bigquery.writer import BigQueryWriter

    writer = BigQueryWriter(config_from_dict(raw).persist.bigquery, live=False)
    try:
        counts = {}
        for table in ("ticks_trades", "ticks_book_snapshots", "ticks_quotes",
                      "ticks_book_changes"):
            t = writer.query(f"SELECT COUNT(*) AS n FROM `{dataset}.{table}_dedup`")
            counts[table] = t.column("n")[0].as_py()
        assert counts == {"ticks_trades": 9_999 + 10, "ticks_book_snapshots": 20,
                          "ticks_quotes": 10, "ticks_book_changes": 15}
        depth = writer.query(f"SELECT depth, COUNT(*) AS n FROM `{dataset}.ticks_book_snapshots`"
                             " GROUP BY depth ORDER BY depth")
        assert depth.to_pylist() == [{"depth": 5, "n": 10}, {"depth": 25, "n": 10}]
        first = writer.query(f"SELECT price, amount, side FROM `{dataset}.ticks_trades` "
                             "WHERE id = '42377944'")
        assert first.to_pylist() == [{"price": 9682.0, "amount": 0.132, "side": "buy"}]
    finally:
        writer.close()
