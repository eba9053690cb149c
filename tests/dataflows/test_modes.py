"""Every mode through dataflows.main's flow: ticks to Parquet, candles served through Redis,
and `modes: [serve, persist]` (both outputs from one flow)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bytewax.testing import run_main

from connectors import LiveFeatureStream
from connectors.sinks.parquet import read_table
from connectors.tardis.generate import generate_trades
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from tests.conftest import shared_file
from tests.flows import replay_to_parquet


@pytest.fixture(scope="module")
def one_symbol(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("modes")
    [f] = generate_trades(d, symbols=["BTCUSDT"], day="2024-01-15", trades_per_symbol=4_000,
                          seed=3)
    return str(f)


@pytest.mark.shared_data
def test_ticks_mode_to_parquet_one_table_per_data_type(tmp_path, caplog):
    folder = shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz").parent
    tables = replay_to_parquet([str(folder / "*.csv.gz")], tmp_path / "out",
                               mode="streaming-ticks-bigquery")
    counts = {name: t.num_rows for name, t in tables.items()}
    # incremental_book_L2 is switched off by default: its file is not replayed, and the log
    # says so
    assert counts == {"ticks_book_snapshots": 20, "ticks_quotes": 10,
                      "ticks_trades": 9_999 + 10}
    snaps = tables["ticks_book_snapshots"]
    assert sorted(set(snaps.column("depth").to_pylist())) == [5, 25]
    five = snaps.filter(snaps.column("depth").to_numpy() == 5)
    assert five.column("asks_5_price").null_count == five.num_rows  # thinner book: nulls
    trades = tables["ticks_trades"]
    assert trades.column("row_key")[0].as_py().startswith("binance-futures|BTCUSDT|")
    assert "not replaying 1 file(s) of incremental_book_L2" in caplog.text


def _read_stream(redis_url: str, n: int, prefix: str) -> list[dict]:
    async def go() -> list[dict]:
        out = []
        async with LiveFeatureStream(symbol="BTCUSDT", timeframe="1m",
                                     exchange="binance-futures", transport="redis",
                                     redis_url=redis_url, start="beginning",
                                     key_prefix=prefix) as stream:
            async for c in stream:
                out.append(c)
                if len(out) == n:
                    break
        return out

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_serve_mode_backfills_redis_for_live_feature_stream(redis_url, redis_prefix,
                                                            one_symbol, tmp_path):
    raw = {"serve": {"transport": "redis", "redis_url": redis_url, "key_prefix": redis_prefix},
           "outputs": {"dead_letter_path": str(tmp_path / "dl")}}
    cfg = config_from_dict(raw)
    plan = plan_run(cfg, mode="streaming-candles-serve", inputs=[one_symbol], env={})
    assert plan.outputs == ("serve",)
    run_main(build_flow(cfg, plan, flow_id="serve"))
    expected = replay_to_parquet([one_symbol], tmp_path / "pq")["candles_1m"].sort_by(
        "timestamp")
    got = _read_stream(redis_url, expected.num_rows, redis_prefix)
    assert [c["close"] for c in got] == expected.column("close").to_pylist()
    assert [c["hft_features"]["rsi_10"] for c in got] == expected.column("rsi_10").to_pylist()
    assert got[-1]["hft_features"]["trade_count"] == expected.column("trade_count")[-1].as_py()


def test_serve_and_persist_from_one_flow(redis_url, redis_prefix, one_symbol, tmp_path):
    out = tmp_path / "pq"
    raw = {"mode": "streaming-candles-serve", "modes": ["serve", "persist"],
           "serve": {"transport": "redis", "redis_url": redis_url, "key_prefix": redis_prefix},
           "persist": {"parquet": {"path": str(out)}},
           "outputs": {"dead_letter_path": str(tmp_path / "dl")}}
    cfg = config_from_dict(raw)
    plan = plan_run(cfg, inputs=[one_symbol], env={})
    assert plan.outputs == ("serve", "persist")
    run_main(build_flow(cfg, plan, flow_id="both"))
    persisted = read_table(out, "candles_1m").sort_by("timestamp")
    served = _read_stream(redis_url, persisted.num_rows, redis_prefix)
    assert [c["row_key"] for c in served] == persisted.column("row_key").to_pylist()


def test_redis_url_from_environment_overrides_the_file(tmp_path):
    cfg = config_from_dict({"serve": {"redis_url": "redis://file-host:6379/0"}})
    plan = plan_run(cfg, mode="streaming-candles-serve", inputs=[str(Path(__file__))],
                    env={"REDIS_URL": "redis://env-host:6380/1"})
    assert plan.redis_url == "redis://env-host:6380/1"


@pytest.mark.shared_data
def test_ticks_mode_writes_the_derived_tables(tmp_path):
    trades = shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz")
    ticker = tmp_path / "bitmex_derivative_ticker_2020-03-01_XBTUSD.csv"
    ticker.write_bytes(shared_file("tardis/schema-examples/derivative_ticker_example.csv")
                       .read_bytes())
    tables = replay_to_parquet(
        [str(trades), str(ticker)], tmp_path / "out", mode="streaming-ticks-bigquery",
        derived={"liquidations": {"native_exchanges": []},
                 "gaps": {"max_silence": {"trades": "15s"}}})
    funding = tables["ticks_funding_rates"].sort_by("timestamp")
    assert funding.column("funding_rate").to_pylist() == [0.0001, 0.00015]
    liq = tables["ticks_liquidations"]
    assert liq.num_rows > 0 and all(liq.column("derived").to_pylist())
    assert set(liq.column("exchange").to_pylist()) == {"binance-futures"}
    gaps = tables["ticks_gaps"]
    assert gaps.num_rows > 0
    assert all(r.startswith("time_gap") for r in gaps.column("reason").to_pylist())
    assert tables["ticks_trades"].num_rows == 9_999
