"""LiveFeatureStream over Redis: order, exactly-once, start positions, restarts."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import pytest

from connectors import LiveFeatureStream as ExportedStream
from connectors.serve.redis_sink import RedisServeSink
from connectors.serve.stream import LiveFeatureStream, Transport
from dataflows.config import ServeConfig
from tests.connectors.serve.candles import candles, entry_ids
from tests.redis_server import RedisServer, free_port

T = TypeVar("T")
FAST: dict[str, Any] = {"reconnect_initial_delay": 0.02, "reconnect_max_delay": 0.1,
                        "block_ms": 200}


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


def write(redis_url: str, prefix: str, *batches: Any, **kw: Any) -> RedisServeSink:
    sink = RedisServeSink(redis_url, key_prefix=prefix, **kw)
    part = sink.build("serve", 0, 1)
    part.write_batch(list(batches))
    assert part.flush(10)
    part.close()
    return sink


async def take(stream: LiveFeatureStream, n: int) -> list[dict[str, Any]]:
    out = []
    async for c in stream:
        out.append(c)
        if len(out) == n:
            break
    return out


def test_connectors_exports_the_stream() -> None:
    assert ExportedStream is LiveFeatureStream


def test_every_candle_exactly_once_and_in_order_while_the_producer_writes(
        redis_url: str, redis_prefix: str) -> None:
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix)
    part = sink.build("serve", 0, 1)

    def produce() -> None:
        for start in range(0, 200, 5):
            part.write_batch([candles(start, 5), candles(start, 5, symbol="ETHUSDT")])
            time.sleep(0.002)
        assert part.flush(10)

    async def consume() -> list[dict[str, Any]]:
        async with LiveFeatureStream(symbol="BTCUSDT", timeframe="1m", exchange="binance",
                                     redis_url=redis_url, key_prefix=redis_prefix,
                                     start="latest", count=7, **FAST) as s:
            producer = threading.Thread(target=produce)
            producer.start()
            got = await take(s, 200)
            assert s.last_id == entry_ids(199, 1)[0] and s.yielded == 200
        await asyncio.to_thread(producer.join)
        return got

    got = run(consume())
    part.close()
    assert [c["stream_id"] for c in got] == entry_ids(0, 200)
    want = candles(0, 200).batch.to_pylist()
    for c, row in zip(got, want, strict=True):
        assert c["timestamp"] == row["timestamp"] and c["close"] == row["close"]
        assert c["hft_features"]["rsi_20"] == row["rsi_20"]
        assert c["hft_features"]["trade_count"] == row["trade_count"]
        assert c["symbol"] == "BTCUSDT"


def test_start_positions(redis_url: str, redis_prefix: str) -> None:
    write(redis_url, redis_prefix, candles(0, 10))
    kw: dict[str, Any] = {"redis_url": redis_url, "key_prefix": redis_prefix, **FAST}

    async def main() -> None:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", start="beginning", **kw) as s:
            assert [c["stream_id"] for c in await take(s, 10)] == entry_ids(0, 10)
        saved = entry_ids(6, 1)[0]
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", start=saved, **kw) as s:
            assert [c["stream_id"] for c in await take(s, 3)] == entry_ids(7, 3)
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", start="latest", **kw) as s:
            pending = asyncio.ensure_future(s.__anext__())
            await asyncio.sleep(0.3)
            assert not pending.done()                     # nothing new yet
            await asyncio.to_thread(write, redis_url, redis_prefix, candles(10, 1))
            assert (await pending)["stream_id"] == entry_ids(10, 1)[0]
            newest = await s.latest()
            assert newest is not None and newest["stream_id"] == entry_ids(10, 1)[0]

    run(main())


@pytest.mark.parametrize("transport", ["redis", "memory"])
def test_aclose_from_another_task_ends_a_waiting_iteration(
        redis_url: str, redis_prefix: str, transport: str) -> None:
    async def main() -> tuple[list[dict[str, Any]], float]:
        s = LiveFeatureStream("BTCUSDT", "1m", "binance", transport=cast(Transport, transport),
                              redis_url=redis_url, key_prefix=redis_prefix, block_ms=5000)
        await s.open()

        async def closer() -> None:
            await asyncio.sleep(0.2)
            await s.aclose()

        task = asyncio.ensure_future(closer())
        t0 = time.monotonic()
        got = [c async for c in s]
        await task
        return got, time.monotonic() - t0

    got, waited = run(main())
    assert got == []
    assert waited < 2.0


def test_timestamps_as_iso_strings(redis_url: str, redis_prefix: str) -> None:
    write(redis_url, redis_prefix, candles(0, 1))

    async def main() -> dict[str, Any]:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=redis_url,
                                     key_prefix=redis_prefix, start="beginning",
                                     timestamps="iso") as s:
            return (await take(s, 1))[0]

    assert run(main())["timestamp"] == "2024-03-01T00:00:00.000000Z"


def test_exchange_is_found_when_only_one_serves_the_series(
        redis_url: str, redis_prefix: str) -> None:
    write(redis_url, redis_prefix, candles(0, 3))
    write(redis_url, redis_prefix, candles(0, 2, exchange="bybit", symbol="ETHUSDT"),
          candles(0, 2, exchange="okex", symbol="ETHUSDT"))
    kw: dict[str, Any] = {"redis_url": redis_url, "key_prefix": redis_prefix,
                          "start": "beginning"}

    async def main() -> None:
        async with LiveFeatureStream(symbol="BTCUSDT", timeframe="1m", **kw) as s:
            assert s.exchange == "binance"
            assert len(await take(s, 3)) == 3
        with pytest.raises(ValueError, match="bybit, okex"):
            await LiveFeatureStream(symbol="ETHUSDT", timeframe="1m", **kw).open()
        with pytest.raises(LookupError):
            await LiveFeatureStream(symbol="SOLUSDT", timeframe="1m", **kw).open()

    run(main())


def test_trimmed_candles_are_reported(redis_url: str, redis_prefix: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    write(redis_url, redis_prefix, candles(0, 50), maxlen=10, approximate_trim=False)

    async def main() -> LiveFeatureStream:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=redis_url,
                                     key_prefix=redis_prefix, start=entry_ids(5, 1)[0]) as s:
            assert [c["stream_id"] for c in await take(s, 10)] == entry_ids(40, 10)
        return s

    s = run(main())
    assert s.trimmed_gaps == 1
    assert any("trimmed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_every_candle_exactly_once_across_a_redis_crash_and_restart() -> None:
    """Redis (AOF, appendfsync always) is killed mid-run while the consumer lags behind;
    the producer keeps writing into the sink's buffer; Redis restarts on the same port."""
    server = RedisServer(free_port(), appendonly=True).start()
    total, per = 300, 5
    consumer_paused = threading.Event()
    try:
        sink = RedisServeSink(server.url, retry_initial_delay=0.02, retry_max_delay=0.1)
        part = sink.build("serve", 0, 1)
        held_while_down: list[int] = []

        def produce() -> None:
            for b in range(total // per):
                if b == 20:
                    assert part.flush(10)                  # candles 0..99 are in Redis
                    assert consumer_paused.wait(10)
                    server.stop(hard=True)                 # a crash: SIGKILL
                if b == 40:
                    time.sleep(0.3)                        # a while with Redis down
                    held_while_down.append(sink.stats().buffered_rows)
                    server.start()
                part.write_batch([candles(b * per, per)])
                time.sleep(0.001)
            assert part.flush(20)

        async def consume() -> tuple[list[str], LiveFeatureStream]:
            ids: list[str] = []
            async with LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=server.url,
                                         start="beginning", count=10, **FAST) as s:
                async for c in s:
                    ids.append(c["stream_id"])
                    if len(ids) == 50:                     # lag behind while Redis dies
                        consumer_paused.set()
                        await asyncio.sleep(0.2)
                    if len(ids) == total:
                        break
            return ids, s

        producer = threading.Thread(target=produce)
        producer.start()
        ids, stream = run(consume(), timeout=40)
        producer.join()
        part.close()
        assert ids == entry_ids(0, total)                 # none lost, none repeated, in order
        assert stream.reconnects >= 1
        assert held_while_down == [100]                   # 20 batches held by the sink
        s = sink.stats()
        assert s.retries >= 1 and s.dropped_rows == 0 and s.written_rows == total
    finally:
        server.close()


def test_gives_up_after_max_reconnect_attempts_without_showing_the_password() -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"

    async def main() -> None:
        s = LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=url,
                              max_reconnect_attempts=2, **FAST)
        assert "hunter2secret" not in repr(s)
        with pytest.raises(ConnectionError) as info:
            await s.open()
        assert "hunter2secret" not in str(info.value) and "***" in str(info.value)
        await s.aclose()

    run(main())


def test_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6390/0")
    s = LiveFeatureStream.from_config(
        ServeConfig(transport="redis", redis_url="redis://cfg:6379/0", key_prefix="feat"),
        symbol="BTCUSDT", timeframe="1m", exchange="binance")
    assert s.target is not None and s.target.host == "from-env" and s.key_prefix == "feat"
    m = LiveFeatureStream.from_config(ServeConfig(transport="memory"), "BTCUSDT", "1m")
    assert m.transport == "memory" and m.target is None


@pytest.mark.parametrize("kwargs", [
    {"transport": "kafka"}, {"start": "yesterday"}, {"timestamps": "epoch"},
    {"block_ms": 0}, {"count": 0}, {"reconnect_initial_delay": 0},
    {"max_reconnect_attempts": -1}, {"redis_url": "http://x"}, {"exchange": "bin ance"},
])
def test_constructor_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LiveFeatureStream("BTCUSDT", "1m", **kwargs)
