"""Password and TLS (rediss://) against real servers; the password never shows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from connectors.serve.redis_sink import RedisServeSink
from connectors.serve.stream import LiveFeatureStream
from tests.connectors.serve.candles import candles, entry_ids
from tests.redis_server import RedisServer, make_tls_files

PASSWORD = "Sup3r/secret@pw:42"
ENCODED = quote(PASSWORD, safe="")


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    server = RedisServer(password=PASSWORD, tls=tls).start()
    yield server
    server.close()


def assert_hidden(*texts: object) -> None:
    for t in texts:
        assert PASSWORD not in str(t) and ENCODED not in str(t), t


def round_trip(url: str, prefix: str) -> tuple[RedisServeSink, LiveFeatureStream, list[str]]:
    sink = RedisServeSink(url, key_prefix=prefix)
    part = sink.build("serve", 0, 1)
    part.write_batch([candles(0, 5)])
    assert part.flush(10)
    assert_hidden(repr(sink), repr(part), sink.target, sink.stats())
    part.close()

    async def read() -> tuple[LiveFeatureStream, list[str]]:
        async with LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=url,
                                     key_prefix=prefix, start="beginning") as s:
            ids = []
            async for c in s:
                ids.append(c["stream_id"])
                if len(ids) == 5:
                    break
        return s, ids

    stream, ids = asyncio.run(asyncio.wait_for(read(), 10))
    return sink, stream, ids


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_password_and_tls_urls_work_end_to_end(
        secure_server: RedisServer, redis_prefix: str, scheme: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = secure_server.url if scheme == "redis" else secure_server.tls_url
    assert url.startswith(f"{scheme}://") and ENCODED in url
    sink, stream, ids = round_trip(url, redis_prefix)
    assert ids == entry_ids(0, 5)
    assert sink.stats().written_rows == 5
    assert_hidden(repr(stream), caplog.text)


def test_tls_port_refuses_plain_connections(secure_server: RedisServer) -> None:
    plain = f"redis://:{ENCODED}@127.0.0.1:{secure_server.tls_port}/0"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=1, socket_connect_timeout=1).ping()


def test_wrong_password_is_reported_without_any_password(
        secure_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"redis://:{ENCODED}x@127.0.0.1:{secure_server.port}/0"
    sink = RedisServeSink(wrong, retry_initial_delay=0.02, retry_max_delay=0.05,
                          close_timeout=0.2)
    part = sink.build("serve", 0, 1)
    part.write_batch([candles(0, 3)])
    assert not part.flush(0.3)
    stats = sink.stats()
    assert stats.retries >= 1 and stats.last_error and "Authentication" in stats.last_error
    part.close()
    assert sink.stats().dropped_rows == 3

    async def read() -> None:
        s = LiveFeatureStream("BTCUSDT", "1m", "binance", redis_url=wrong)
        with pytest.raises(redis.AuthenticationError) as info:
            await s.open()
        assert_hidden(info.value, repr(info.value), repr(s))
        await s.aclose()

    asyncio.run(read())
    assert_hidden(stats, repr(sink), repr(part), caplog.text)
    assert "***" in caplog.text                   # the redacted URL was logged


def test_tls_files_are_real(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    assert Path(files.cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in Path(files.key).read_text()
