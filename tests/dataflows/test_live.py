"""The tardis-machine source through the main flow: the same candles as a file replay of the
same trades, and live candles on time (closed by wall clock, even when no trade follows)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bytewax.testing import run_main

from connectors import LiveFeatureStream
from connectors.tardis.generate import generate_trades
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from tests.connectors.tardis.ws_server import TardisMachineServer, recorded
from tests.flows import replay_to_parquet

ROOT = Path(__file__).resolve().parents[2]


def iso_us(us: int) -> str:
    s, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def messages_from_csv(path: Path) -> list[dict]:
    """The trades of a Tardis CSV file as tardis-machine's normalized trade messages."""
    with gzip.open(path, "rt") as f:
        return [{"type": "trade", "symbol": r["symbol"], "exchange": r["exchange"],
                 "id": r["id"], "price": float(r["price"]), "amount": float(r["amount"]),
                 "side": r["side"], "timestamp": iso_us(int(r["timestamp"])),
                 "localTimestamp": iso_us(int(r["local_timestamp"]))}
                for r in csv.DictReader(f)]


@pytest.mark.parametrize("decoder", ["thread", "process"])
def test_websocket_replay_gives_the_candles_of_a_file_replay(tmp_path, decoder):
    [f] = generate_trades(tmp_path / "gen", symbols=["ETHUSDT"], day="2024-01-15",
                          trades_per_symbol=5_000, seed=8)
    expected = replay_to_parquet([str(f)], tmp_path / "files")
    out = tmp_path / "ws"
    with TardisMachineServer(recorded(messages_from_csv(f))) as server:
        cfg = config_from_dict({
            "source": {"kind": "tardis-machine", "tardis_machine": {
                "url": server.url, "exchanges": {"binance-futures": ["ETHUSDT"]},
                "data_types": ["trade"], "replay_from": "2024-01-15T00:00:00Z",
                "replay_to": "2024-01-16T00:00:00Z", "decoder": decoder}},
            "persist": {"parquet": {"path": str(out)}},
            "outputs": {"dead_letter_path": str(out / "dead_letter")},
            "monitoring": {"enabled": False}})
        plan = plan_run(cfg, env={})
        assert plan.source_kind == "tardis-machine" and not plan.wall_clock
        run_main(build_flow(cfg, plan, flow_id="ws_replay"))
    from connectors.sinks.parquet import read_table

    for tf in ("15s", "1m", "5m", "1h", "1d"):
        want = expected[f"candles_{tf}"].drop_columns(["date"]).sort_by("row_key")
        got = read_table(out, f"candles_{tf}").drop_columns(["date"]).sort_by("row_key")
        assert got.num_rows == want.num_rows, tf
        for col in want.column_names:
            a, b = want.column(col), got.column(col)
            if pa.types.is_floating(a.type):
                diff = pc.max(pc.abs(pc.subtract(a, b))).as_py()
                assert diff is None or diff <= 1e-9 * max(1.0, pc.max(pc.abs(a)).as_py()), (
                    tf, col)
            else:
                assert a.equals(b), (tf, col)


def test_live_candles_arrive_on_time_even_without_a_next_trade(tmp_path, redis_url,
                                                              redis_prefix):
    """Trades stamped in one future second S arrive at once; then the market goes quiet. The
    candle of S must reach a LiveFeatureStream consumer soon after S + 1 s + lateness, and so
    must the (filled) candle of S + 1 s, though no trade ever follows."""
    lateness = 0.25
    now = time.time()
    second = int(now) + 6  # far enough ahead for the flow process to start and connect
    trades = [{"type": "trade", "symbol": "BTCUSDT", "exchange": "binance-futures",
               "id": str(i), "price": 100.0 + i, "amount": 1.0, "side": "buy",
               "timestamp": iso_us(second * 1_000_000 + i * 100_000),
               "localTimestamp": iso_us(int(now * 1_000_000))} for i in range(5)]
    with TardisMachineServer(recorded(trades), close_when_done=False) as server:
        cfg = tmp_path / "live.json"
        cfg.write_text(json.dumps({
            "mode": "streaming-candles-serve",
            "source": {"kind": "tardis-machine", "tardis_machine": {
                "url": server.url, "exchanges": {"binance-futures": ["BTCUSDT"]},
                "data_types": ["trade"]}},
            "candles": {"timeframes": ["1s"], "allowed_lateness": lateness},
            "serve": {"transport": "redis", "redis_url": redis_url, "key_prefix": redis_prefix},
            "outputs": {"dead_letter_path": str(tmp_path / "dl")},
            "monitoring": {"enabled": False}}))
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",
                                                                  "TARDIS_MACHINE_URL")}
        proc = subprocess.Popen([sys.executable, "-m", "dataflows.main", "--config", str(cfg)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            async def consume() -> list[tuple[float, dict]]:
                got = []
                async with LiveFeatureStream(symbol="BTCUSDT", timeframe="1s",
                                             exchange="binance-futures", redis_url=redis_url,
                                             start="beginning", key_prefix=redis_prefix,
                                             block_ms=50) as stream:
                    async for c in stream:
                        got.append((time.time(), c))
                        if len(got) == 2:
                            return got
                return got

            got = asyncio.run(asyncio.wait_for(consume(), 30))
        finally:
            proc.kill()
            _, err = proc.communicate()
    assert len(got) == 2, err
    (t1, c1), (t2, c2) = got
    assert c1["timestamp"].timestamp() == second and c1["trade_count"] == 5
    assert c1["open"] == 100.0 and c1["close"] == 104.0
    assert c2["is_filled"] and c2["close"] == 104.0 and c2["trade_count"] == 0
    # latency from interval end + allowed lateness to the consumer
    late1 = t1 - (second + 1 + lateness)
    late2 = t2 - (second + 2 + lateness)
    assert -0.05 < late1 < 0.5, late1
    assert -0.05 < late2 < 0.5, late2
