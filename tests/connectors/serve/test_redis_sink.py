"""RedisServeSink against a real Redis server: values, bounds, idempotency, outages."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import cast

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.serve.keys import latest_key, stream_key
from connectors.serve.redis_sink import RedisServeSink
from dataflows.config import ServeConfig
from tests.connectors.serve.candles import candles, entry_ids
from tests.redis_server import RedisServer, free_port


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def stream_ids(r: redis.Redis, key: str) -> list[str]:
    return [i.decode() for i, _ in entries_of(r, key)]


def entries_of(r: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The stream's (ID, fields) pairs, oldest first."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(key))


def test_writes_every_candle_to_its_stream_and_the_newest_to_the_latest_hash(
        redis_url: str, redis_prefix: str, r: redis.Redis) -> None:
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix)
    part = sink.build("serve", 0, 1)
    btc, eth = candles(0, 30), candles(0, 7, symbol="ETHUSDT", timeframe="5m")
    part.write_batch([btc, ("binance:ETHUSDT", eth)])      # keyed items are accepted too
    assert part.flush(10)
    part.close()

    key = stream_key(redis_prefix, "binance", "BTCUSDT", "1m")
    entries = entries_of(r, key)
    assert [i.decode() for i, _ in entries] == entry_ids(0, 30)
    want = btc.batch.to_pylist()
    for (_, fields), row in zip(entries, want, strict=True):
        got = orjson.loads(fields[b"d"])
        assert set(fields) == {b"d"}
        assert got["close"] == row["close"] and got["trade_count"] == row["trade_count"]
        assert got["sma_20"] == row["sma_20"] and got["vwap"] == row["vwap"]
    latest = cast(dict[bytes, bytes],
                  r.hgetall(latest_key(redis_prefix, "binance", "BTCUSDT", "1m")))
    assert latest[b"id"].decode() == entry_ids(29, 1)[0]
    assert orjson.loads(latest[b"d"])["close"] == want[-1]["close"]
    assert stream_ids(r, stream_key(redis_prefix, "binance", "ETHUSDT", "5m")) == \
        entry_ids(0, 7, "5m")
    stats = sink.stats()
    assert (stats.written_rows, stats.duplicate_rows, stats.buffered_rows) == (37, 0, 0)
    assert stats.dropped_rows == stats.failed_rows == 0 and stats.connected


def test_exact_maxlen_keeps_the_newest_candles(redis_url: str, redis_prefix: str,
                                               r: redis.Redis) -> None:
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix, maxlen=25, approximate_trim=False)
    part = sink.build("serve", 0, 1)
    for start in range(0, 100, 10):
        part.write_batch([candles(start, 10)])
    assert part.flush(10)
    part.close()
    assert stream_ids(r, stream_key(redis_prefix, "binance", "BTCUSDT", "1m")) == \
        entry_ids(75, 25)


def test_approximate_maxlen_stays_within_one_node_of_the_bound(
        redis_url: str, redis_prefix: str, r: redis.Redis) -> None:
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix, maxlen=200)
    part = sink.build("serve", 0, 1)
    for start in range(0, 2000, 100):
        part.write_batch([candles(start, 100)])
    assert part.flush(10)
    part.close()
    key = stream_key(redis_prefix, "binance", "BTCUSDT", "1m")
    assert 200 <= r.xlen(key) <= 200 + 100      # stream-node-max-entries defaults to 100
    assert stream_ids(r, key)[-1] == entry_ids(1999, 1)[0]


def test_replaying_the_same_batches_never_duplicates_a_candle(
        redis_url: str, redis_prefix: str, r: redis.Redis) -> None:
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix)
    part = sink.build("serve", 0, 1)
    part.write_batch([candles(0, 20), candles(20, 20)])
    assert part.flush(10)
    latest_before = r.hgetall(latest_key(redis_prefix, "binance", "BTCUSDT", "1m"))
    part.write_batch([candles(0, 20), candles(20, 20)])     # a full replay
    part.write_batch([candles(10, 20)])                     # an old overlapping stretch
    assert part.flush(10)
    assert r.hgetall(latest_key(redis_prefix, "binance", "BTCUSDT", "1m")) == latest_before
    part.write_batch([candles(30, 20)])                     # overlaps the top, then new
    assert part.flush(10)
    part.close()
    assert stream_ids(r, stream_key(redis_prefix, "binance", "BTCUSDT", "1m")) == \
        entry_ids(0, 50)
    stats = sink.stats()
    assert (stats.written_rows, stats.duplicate_rows) == (50, 40 + 20 + 10)


def test_bytewax_flow_run_twice_serves_each_candle_once(
        redis_url: str, redis_prefix: str, r: redis.Redis) -> None:
    batches = [candles(i, 10) for i in range(0, 60, 10)] + \
        [candles(0, 15, symbol="ETHUSDT")]
    for _ in range(2):
        flow = Dataflow("serve_test")
        stream = op.input("in", flow, TestingSource(batches))
        sink = RedisServeSink(redis_url, key_prefix=redis_prefix)
        op.output("serve", stream, sink)
        run_main(flow)           # close() drains the buffer at the end of the input
        assert sink.stats().buffered_rows == 0
    assert stream_ids(r, stream_key(redis_prefix, "binance", "BTCUSDT", "1m")) == \
        entry_ids(0, 60)
    assert stream_ids(r, stream_key(redis_prefix, "binance", "ETHUSDT", "1m")) == \
        entry_ids(0, 15)
    assert sink.stats().duplicate_rows == 75 and sink.stats().written_rows == 0


def test_one_script_call_per_series_per_flush_not_per_candle() -> None:
    server = RedisServer().start()
    try:
        sink = RedisServeSink(server.url)
        part = sink.build("serve", 0, 1)
        part.write_batch([candles(0, 1)])          # loads the script (one NOSCRIPT)
        assert part.flush(10)
        client = redis.Redis.from_url(server.url)
        client.config_resetstat()
        part.write_batch([candles(1, 500), candles(0, 300, symbol="ETHUSDT")])
        assert part.flush(10)
        stats = client.info("commandstats")
        assert stats["cmdstat_xadd"]["calls"] == 800
        assert stats["cmdstat_evalsha"]["calls"] <= 2      # one per series, in one pipeline
        part.close()
        client.close()
    finally:
        server.close()


def test_buffers_while_redis_is_down_and_delivers_everything_after() -> None:
    server = RedisServer(free_port()).start()
    try:
        sink = RedisServeSink(server.url, retry_initial_delay=0.02, retry_max_delay=0.1,
                              buffer_max_rows=1000)
        part = sink.build("serve", 0, 1)
        part.write_batch([candles(0, 10)])
        assert part.flush(10)
        server.stop()
        t0 = time.monotonic()
        for start in range(10, 110, 10):
            part.write_batch([candles(start, 10)])      # never blocks on the dead server
        assert time.monotonic() - t0 < 1.0
        assert not part.flush(0.3)
        held = sink.stats()
        assert held.buffered_rows == 100 and held.buffered_bytes > 0
        assert held.retries >= 1 and not held.connected and held.last_error
        server.start()            # no persistence: the restarted server is empty
        assert part.flush(10)
        part.close()
        client = redis.Redis.from_url(server.url)
        assert stream_ids(client, stream_key("candles", "binance", "BTCUSDT", "1m")) == \
            entry_ids(10, 100)
        client.close()
        done = sink.stats()
        assert (done.written_rows, done.buffered_rows, done.dropped_rows) == (110, 0, 0)
        assert done.connected
    finally:
        server.close()


def test_buffer_overflow_drops_the_oldest_counts_and_logs_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = RedisServer(free_port()).start()
    try:
        sink = RedisServeSink(server.url, retry_initial_delay=0.02, retry_max_delay=0.1,
                              buffer_max_rows=50)
        part = sink.build("serve", 0, 1)
        server.stop()
        for start in range(0, 80, 10):
            part.write_batch([candles(start, 10)])
        s = sink.stats()
        assert (s.buffered_rows, s.dropped_rows) == (50, 30)
        errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
        assert any("DROPPED" in rec.getMessage() for rec in errors)
        server.start()
        assert part.flush(10)
        part.close()
        client = redis.Redis.from_url(server.url)
        got = stream_ids(client, stream_key("candles", "binance", "BTCUSDT", "1m"))
        client.close()
        # the newest candles survive; the oldest went, except any that were being sent
        assert len(got) == 50 and got[-40:] == entry_ids(40, 40)
        assert set(got) <= set(entry_ids(0, 80)) and got == sorted(got, key=lambda i: int(i[:-2]))
    finally:
        server.close()


def test_close_with_redis_down_reports_what_was_not_delivered(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = RedisServeSink(f"redis://127.0.0.1:{free_port()}/0", close_timeout=0.2,
                          retry_initial_delay=0.02, retry_max_delay=0.05)
    part = sink.build("serve", 0, 1)
    part.write_batch([candles(0, 12)])
    part.close()
    assert sink.stats().dropped_rows == 12 and sink.stats().buffered_rows == 0
    assert any("not delivered" in rec.getMessage() for rec in caplog.records
               if rec.levelno == logging.ERROR)


def test_a_refused_series_is_counted_and_others_still_written(
        redis_url: str, redis_prefix: str, r: redis.Redis) -> None:
    r.set(stream_key(redis_prefix, "binance", "ETHUSDT", "1m"), "not a stream")
    sink = RedisServeSink(redis_url, key_prefix=redis_prefix)
    part = sink.build("serve", 0, 1)
    part.write_batch([candles(0, 5, symbol="ETHUSDT"), candles(0, 5)])
    assert part.flush(10)
    part.close()
    s = sink.stats()
    assert (s.written_rows, s.failed_rows) == (5, 5)
    assert "WRONGTYPE" in (s.last_error or "")
    assert stream_ids(r, stream_key(redis_prefix, "binance", "BTCUSDT", "1m")) == \
        entry_ids(0, 5)


def test_from_config_reads_serve_section_and_env_redis_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ServeConfig(transport="redis", redis_url="redis://configured:6379/1",
                      stream_maxlen=123, key_prefix="feat", buffer_max_rows=456)
    monkeypatch.delenv("REDIS_URL", raising=False)
    sink = RedisServeSink.from_config(cfg)
    assert (sink.target.host, sink.target.db, sink.maxlen, sink.key_prefix,
            sink.buffer_max_rows) == ("configured", 1, 123, "feat", 456)
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6390/2")
    assert RedisServeSink.from_config(cfg).target.host == "from-env"


@pytest.mark.parametrize("kwargs", [
    {"maxlen": 0}, {"buffer_max_rows": -1}, {"max_rows_per_flush": 0},
    {"retry_initial_delay": 0}, {"retry_initial_delay": 2.0, "retry_max_delay": 1.0},
    {"close_timeout": -1}, {"key_prefix": "bad prefix"}, {"redis_url": "http://x"},
])
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    kw: dict[str, object] = {"redis_url": "redis://127.0.0.1:6379/0", **kwargs}
    with pytest.raises(ValueError):
        RedisServeSink(**kw)  # type: ignore[arg-type]


def test_items_that_are_not_candle_batches_are_refused(redis_url: str) -> None:
    part = RedisServeSink(redis_url).build("serve", 0, 1)
    try:
        with pytest.raises(TypeError):
            part.write_batch([{"close": 1.0}])
    finally:
        part.close()
