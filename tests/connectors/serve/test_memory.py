"""In-memory transport: the broker, MemoryServeSink, and a flow feeding LiveFeatureStream."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY, generate_latest

from connectors.serve import serve_sink
from connectors.serve.codec import encode_candles
from connectors.serve.keys import parse_id, stream_key
from connectors.serve.memory import MemoryBroker, MemoryServeSink, default_broker
from connectors.serve.redis_sink import RedisServeSink
from connectors.serve.stream import LiveFeatureStream
from dataflows.config import ServeConfig
from tests.connectors.serve.candles import candles, entry_ids

KEY = stream_key("candles", "binance", "BTCUSDT", "1m")


def publish(broker: MemoryBroker, start: int, n: int, maxlen: int | None = None) -> tuple[int, int]:
    ids, payloads = encode_candles(candles(start, n).batch)
    return broker.publish(KEY, ids, payloads, maxlen)


async def take(stream: LiveFeatureStream, n: int) -> list[dict[str, Any]]:
    out = []
    async for c in stream:
        out.append(c)
        if len(out) == n:
            break
    return out


def test_broker_appends_idempotently_and_keeps_maxlen() -> None:
    b = MemoryBroker()
    assert publish(b, 0, 20, maxlen=15) == (20, 0)
    assert publish(b, 0, 25, maxlen=15) == (5, 20)          # replay plus 5 new
    assert b.length(KEY) == 15
    assert b.top(KEY) == parse_id(entry_ids(24, 1)[0])
    assert b.first(KEY) == parse_id(entry_ids(10, 1)[0])
    assert [i for i, _ in b.read_after(KEY, parse_id(entry_ids(19, 1)[0]), 3)] == \
        entry_ids(20, 3)
    assert [i for i, _ in b.read_after(KEY, (0, 0), 100)] == entry_ids(10, 15)
    latest = b.latest(KEY)
    assert latest is not None and latest[0] == entry_ids(24, 1)[0]
    assert b.read_after("nope", (0, 0), 10) == [] and b.latest("nope") is None
    with pytest.raises(ValueError):
        MemoryBroker(default_maxlen=0)


def test_waiters_are_woken_from_another_thread() -> None:
    b = MemoryBroker()

    async def main() -> tuple[bool, bool]:
        timed_out = await b.wait(KEY, (0, 0), 0.05)
        threading.Timer(0.05, publish, args=(b, 0, 1)).start()
        woken = await b.wait(KEY, (0, 0), 5.0)
        return timed_out, woken

    assert asyncio.run(main()) == (False, True)


def test_flow_in_the_same_process_feeds_live_feature_stream() -> None:
    broker = MemoryBroker()
    batches: list[Any] = [candles(i, 10) for i in range(0, 100, 10)]
    batches += [("binance:ETHUSDT", candles(0, 10, symbol="ETHUSDT"))]
    batches += [candles(50, 20)]                          # a replayed stretch: no duplicates
    flow = Dataflow("memory_serve")
    sink = MemoryServeSink(broker)
    op.output("serve", op.input("in", flow, TestingSource(batches)), sink)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", transport="memory",
                                     broker=broker, start="latest", block_ms=100) as s:
            runner = threading.Thread(target=run_main, args=(flow,))
            runner.start()
            btc = await take(s, 100)
        await asyncio.to_thread(runner.join)
        async with LiveFeatureStream("ETHUSDT", "1m", transport="memory", broker=broker,
                                     start="beginning") as s:
            assert s.exchange == "binance"
            eth = await take(s, 10)
            newest = await s.latest()
            assert newest is not None and newest["stream_id"] == entry_ids(9, 1)[0]
        return btc, eth

    btc, eth = asyncio.run(asyncio.wait_for(main(), 20))
    assert [c["stream_id"] for c in btc] == entry_ids(0, 100)
    assert [c["stream_id"] for c in eth] == entry_ids(0, 10)
    row = candles(42, 1).batch.to_pylist()[0]
    assert btc[42]["close"] == row["close"] and btc[42]["timestamp"] == row["timestamp"]
    assert btc[42]["hft_features"]["ema_10"] == row["ema_10"]
    s = sink.stats()
    assert (s.written_rows, s.duplicate_rows) == (110, 20)


def test_trimmed_candles_are_reported_on_memory_too() -> None:
    broker = MemoryBroker()
    publish(broker, 0, 50, maxlen=10)

    async def main() -> LiveFeatureStream:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", transport="memory",
                                     broker=broker, start=entry_ids(5, 1)[0]) as s:
            assert [c["stream_id"] for c in await take(s, 10)] == entry_ids(40, 10)
        return s

    assert asyncio.run(main()).trimmed_gaps == 1


def test_serve_sink_follows_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    mem = serve_sink(ServeConfig(transport="memory", key_prefix=prefix, stream_maxlen=7))
    assert isinstance(mem, MemoryServeSink) and mem.broker is default_broker()
    part = mem.build("serve", 0, 1)
    part.write_batch([candles(0, 10)])
    assert default_broker().length(stream_key(prefix, "binance", "BTCUSDT", "1m")) == 7
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    cfg = ServeConfig(transport="redis", redis_url="redis://cfg:6379/0", stream_maxlen=9)
    red = serve_sink(cfg)
    assert isinstance(red, RedisServeSink) and red.target.host == "from-env"
    # a run plan passes the transport and the URL it resolved: they win
    planned = serve_sink(cfg, "redis", "redis://planned:6379/4")
    assert isinstance(planned, RedisServeSink)
    assert (planned.target.host, planned.target.db, planned.maxlen) == ("planned", 4, 9)
    assert isinstance(serve_sink(cfg, "memory", "redis://unused:1/0"), MemoryServeSink)
    with pytest.raises(ValueError):
        serve_sink(cfg, "kafka")


def test_sink_counters_are_on_the_prometheus_registry() -> None:
    sink = MemoryServeSink(MemoryBroker())
    part = sink.build("serve_metrics_test", 3, 4)
    part.write_batch([candles(0, 6), candles(0, 6)])
    text = generate_latest(REGISTRY).decode()
    labels = 'step_id="serve_metrics_test",transport="memory",worker="3"'
    assert f"bytewax_serve_written_rows_total{{{labels}}} 6.0" in text
    assert f"bytewax_serve_duplicate_rows_total{{{labels}}} 6.0" in text
    assert f"bytewax_serve_buffered_rows{{{labels}}} 0.0" in text
