"""Key layout and entry IDs of serve mode."""

from __future__ import annotations

import pytest

from connectors.serve.keys import (
    entry_id,
    exchange_of,
    format_id,
    latest_key,
    latest_key_of,
    parse_id,
    stream_key,
    stream_pattern,
)


def test_stream_and_latest_keys_share_a_cluster_hash_tag() -> None:
    s = stream_key("candles", "binance-futures", "BTCUSDT", "1m")
    latest = latest_key("candles", "binance-futures", "BTCUSDT", "1m")
    assert s == "candles:{binance-futures:BTCUSDT:1m}:stream"
    assert latest == "candles:{binance-futures:BTCUSDT:1m}:latest"
    assert latest_key_of(s) == latest
    assert exchange_of(s, "candles") == "binance-futures"


@pytest.mark.parametrize(("exchange", "symbol", "timeframe"), [
    ("", "BTCUSDT", "1m"), ("binance", "BTC{USDT", "1m"), ("binance", "BTC USDT", "1m"),
    ("binance", "BTCUSDT", ""),
])
def test_bad_names_are_refused(exchange: str, symbol: str, timeframe: str) -> None:
    with pytest.raises(ValueError):
        stream_key("candles", exchange, symbol, timeframe)


def test_entry_ids_come_from_the_interval_start_and_compare_as_tuples() -> None:
    assert entry_id(1_709_251_200_000) == "1709251200000-0"
    assert parse_id("1709251200000-0") == (1_709_251_200_000, 0)
    assert parse_id(b"5-3") == (5, 3)
    assert parse_id("7") == (7, 0)
    assert parse_id("10-0") > parse_id("9-5")
    assert format_id((12, 1)) == "12-1"
    with pytest.raises(ValueError):
        entry_id(0)
    for bad in ("", "abc", "1-2-3", "-1"):
        with pytest.raises(ValueError):
            parse_id(bad)


def test_scan_pattern_matches_any_exchange_and_escapes_glob_characters() -> None:
    assert stream_pattern("candles", "BTCUSDT", "1m") == "candles:{*:BTCUSDT:1m}:stream"
    assert stream_pattern("candles", "BTC*", "1m") == r"candles:{*:BTC\*:1m}:stream"
