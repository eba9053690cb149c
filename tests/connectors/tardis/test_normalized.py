"""tardis-machine normalized JSON -> the Tardis CSV data types' Arrow rows.

Each shared sample message (real tardis-machine output) is mapped and compared with rows built
by hand from the JSON, and with what the CSV file source's parser makes of the same tick
written as a Tardis CSV line: both sources must give identical batches.
"""

from __future__ import annotations

import calendar
from typing import Any

import orjson
import pyarrow as pa
import pytest

from connectors.tardis.csv_reader import Chunk, ChunkParser
from connectors.tardis.datatypes import (
    DERIVATIVE_TICKER,
    INCREMENTAL_BOOK_L2,
    LIQUIDATIONS,
    OPTIONS_CHAIN,
    QUOTES,
    TRADES,
    DataTypeSpec,
    book_snapshot_spec,
)
from connectors.tardis.normalized import (
    build_batch,
    build_batches,
    machine_data_type,
    message_data_type,
    parse_iso_us,
    parse_timestamps,
)
from tests.conftest import shared_file


def us(y: int, mo: int, d: int, h: int, mi: int, s: int, micro: int = 0) -> int:
    """Epoch microseconds, computed independently of the code under test."""
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000 + micro


def sample(name: str) -> dict[str, Any]:
    return orjson.loads(shared_file(f"tardis-machine/{name}").read_bytes())


def rows_batch(spec: DataTypeSpec, rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=spec.schema)


def csv_source_rows(spec: DataTypeSpec, header: list[str], lines: list[str]) -> pa.Table:
    """What the CSV file source's parser makes of Tardis CSV lines."""
    data = ("\n".join(lines) + "\n").encode()
    parsed = ChunkParser(spec, header, "same-tick.csv").parse(Chunk(2, data, len(lines)))
    assert parsed.rejected_reasons == []
    return parsed.table


def assert_same(built: pa.RecordBatch, expected: pa.RecordBatch) -> None:
    assert built.schema == expected.schema
    assert built.to_pylist() == expected.to_pylist()
    assert built.equals(expected)


# --------------------------------------------------------------------------------------------
# the shared samples, one per message type


def test_trade_sample_maps_to_trades_row():
    m = sample("trade.json")
    result = build_batch("trades", m["exchange"], m["symbol"], [m])
    expected = rows_batch(TRADES, [{
        "exchange": "bitmex", "symbol": "XBTUSD",
        "timestamp": us(2019, 10, 23, 10, 32, 49, 669_000),
        "local_timestamp": us(2019, 10, 23, 10, 32, 49, 740_000),
        "id": "282a0445-0e3a-abeb-f403-11003204ea1b", "side": "sell",
        "price": 7996.0, "amount": 50.0,
    }])
    assert result.rejected == {}
    assert_same(result.batch, expected)
    csv = csv_source_rows(TRADES, TRADES.schema.names, [
        f"bitmex,XBTUSD,{us(2019, 10, 23, 10, 32, 49, 669_000)},"
        f"{us(2019, 10, 23, 10, 32, 49, 740_000)},282a0445-0e3a-abeb-f403-11003204ea1b,sell,"
        "7996,50"])
    assert_same(result.batch, csv.to_batches()[0])


def test_book_change_sample_maps_to_one_row_per_level():
    m = sample("book_change.json")
    result = build_batch("incremental_book_L2", "bitmex", "XBTUSD", [m])
    ts = us(2019, 10, 23, 11, 29, 53, 469_000)
    expected = rows_batch(INCREMENTAL_BOOK_L2, [{
        "exchange": "bitmex", "symbol": "XBTUSD", "timestamp": ts, "local_timestamp": ts,
        "is_snapshot": False, "side": "ask", "price": 7985.0, "amount": 283318.0,
    }])
    assert_same(result.batch, expected)
    csv = csv_source_rows(INCREMENTAL_BOOK_L2, INCREMENTAL_BOOK_L2.schema.names,
                          [f"bitmex,XBTUSD,{ts},{ts},false,ask,7985,283318"])
    assert_same(result.batch, csv.to_batches()[0])


def test_book_snapshot_sample_maps_to_book_snapshot_depth_columns():
    m = sample("book_snapshot.json")
    assert m["name"] == "book_snapshot_2_50ms"
    data_type = message_data_type(m["type"], m["name"])
    assert data_type == "book_snapshot_2"
    result = build_batch(data_type, "bitmex", "XBTUSD", [m])
    spec = book_snapshot_spec(2)
    row = {
        "exchange": "bitmex", "symbol": "XBTUSD",
        "timestamp": us(2019, 10, 25, 13, 39, 46, 950_000),
        "local_timestamp": us(2019, 10, 25, 13, 39, 46, 961_000),
        "asks_0_price": 7634.0, "asks_0_amount": 1467849.0,
        "bids_0_price": 7633.5, "bids_0_amount": 1906067.0,
        "asks_1_price": 7634.5, "asks_1_amount": 67939.0,
        "bids_1_price": 7633.0, "bids_1_amount": 65319.0,
    }
    assert_same(result.batch, rows_batch(spec, [row]))
    header = ["exchange", "symbol", "timestamp", "local_timestamp"] + [
        spec.csv_name(c) for c in spec.schema.names[4:]]
    line = ",".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                    for v in row.values())
    assert_same(result.batch, csv_source_rows(spec, header, [line]).to_batches()[0])


def test_book_snapshot_thinner_than_depth_gives_nulls():
    m = sample("book_snapshot.json")
    m = {**m, "asks": [m["asks"][0], {}], "bids": [m["bids"][0]]}  # undefined level -> {}
    batch = build_batch("book_snapshot_2", "bitmex", "XBTUSD", [m]).batch
    row = batch.to_pylist()[0]
    assert row["asks_0_price"] == 7634.0
    assert row["asks_1_price"] is None and row["asks_1_amount"] is None
    assert row["bids_1_price"] is None and row["bids_1_amount"] is None


def test_derivative_ticker_sample_maps_with_nulls_for_absent_fields():
    m = sample("derivative_ticker.json")
    result = build_batch("derivative_ticker", m["exchange"], m["symbol"], [m])
    row = {
        "exchange": "deribit", "symbol": "BTC-PERPETUAL",
        "timestamp": us(2019, 10, 23, 11, 34, 29, 302_000),
        "local_timestamp": us(2019, 10, 23, 11, 34, 29, 416_000),
        "funding_timestamp": None, "funding_rate": -0.00001568, "predicted_funding_rate": None,
        "open_interest": 84129491.0, "last_price": 7987.5, "index_price": 7989.28,
        "mark_price": 7987.56,
    }
    assert_same(result.batch, rows_batch(DERIVATIVE_TICKER, [row]))
    line = ",".join("" if v is None else str(v) for v in row.values())
    csv = csv_source_rows(DERIVATIVE_TICKER, DERIVATIVE_TICKER.schema.names, [line])
    assert_same(result.batch, csv.to_batches()[0])


def test_derivative_ticker_funding_timestamp_is_parsed():
    m = {**sample("derivative_ticker.json"), "fundingTimestamp": "2019-10-23T16:00:00.000Z",
         "predictedFundingRate": 0.0001}
    row = build_batch("derivative_ticker", "deribit", "BTC-PERPETUAL", [m]).batch.to_pylist()[0]
    assert row["funding_timestamp"].timestamp() == us(2019, 10, 23, 16, 0, 0) / 1e6
    assert row["predicted_funding_rate"] == 0.0001


def test_liquidation_maps_to_liquidations():
    # tardis-dev's Liquidation type; side "buy" = a short position was liquidated
    m = {"type": "liquidation", "symbol": "XBTUSD", "exchange": "bitmex",
         "id": "e3ad9d0c", "price": 7100.5, "amount": 1200, "side": "buy",
         "timestamp": "2020-03-12T10:00:00.123Z", "localTimestamp": "2020-03-12T10:00:00.200Z"}
    assert message_data_type(m["type"], None) == "liquidations"
    result = build_batch("liquidations", "bitmex", "XBTUSD", [m, {**m, "id": None}])
    base = {"exchange": "bitmex", "symbol": "XBTUSD",
            "timestamp": us(2020, 3, 12, 10, 0, 0, 123_000),
            "local_timestamp": us(2020, 3, 12, 10, 0, 0, 200_000),
            "side": "buy", "price": 7100.5, "amount": 1200.0}
    assert_same(result.batch, rows_batch(LIQUIDATIONS, [{**base, "id": "e3ad9d0c"},
                                                        {**base, "id": None}]))


def test_option_summary_maps_to_options_chain():
    # tardis-dev's OptionSummary type, values of the first options_chain schema example row
    m = {"type": "option_summary", "symbol": "BTC-9JUN20-9875-P", "exchange": "deribit",
         "optionType": "put", "strikePrice": 9875, "expirationDate": "2020-06-09T08:00:00.000Z",
         "bestBidPrice": 0.0205, "bestBidAmount": 15.1, "bestBidIV": 55.91,
         "bestAskPrice": 0.0235, "bestAskAmount": 15.2, "bestAskIV": 68.94,
         "lastPrice": 0.0295, "openInterest": 0.1, "markPrice": 0.02210436, "markIV": 62.89,
         "delta": -0.61752, "gamma": 0.00103, "vega": 2.24964, "theta": -53.05655,
         "rho": -0.22796, "underlyingPrice": 9756.36, "underlyingIndex": "SYN.BTC-9JUN20",
         "timestamp": "2020-06-07T23:59:59.413Z", "localTimestamp": "2020-06-08T00:00:00.196008Z"}
    assert message_data_type(m["type"], None) == "options_chain"
    result = build_batch("options_chain", "deribit", m["symbol"], [m])
    line = ("deribit,BTC-9JUN20-9875-P,1591574399413000,1591574400196008,put,9875,"
            "1591689600000000,0.1,0.0295,0.0205,15.1,55.91,0.0235,15.2,68.94,0.02210436,62.89,"
            "SYN.BTC-9JUN20,9756.36,-0.61752,0.00103,2.24964,-53.05655,-0.22796")
    expected = {
        "exchange": "deribit", "symbol": "BTC-9JUN20-9875-P",
        "timestamp": us(2020, 6, 7, 23, 59, 59, 413_000),
        "local_timestamp": us(2020, 6, 8, 0, 0, 0, 196_008), "type": "put",
        "strike_price": 9875.0, "expiration": us(2020, 6, 9, 8, 0, 0), "open_interest": 0.1,
        "last_price": 0.0295, "bid_price": 0.0205, "bid_amount": 15.1, "bid_iv": 55.91,
        "ask_price": 0.0235, "ask_amount": 15.2, "ask_iv": 68.94, "mark_price": 0.02210436,
        "mark_iv": 62.89, "underlying_index": "SYN.BTC-9JUN20", "underlying_price": 9756.36,
        "delta": -0.61752, "gamma": 0.00103, "vega": 2.24964, "theta": -53.05655,
        "rho": -0.22796,
    }
    assert_same(result.batch, rows_batch(OPTIONS_CHAIN, [expected]))
    csv = csv_source_rows(OPTIONS_CHAIN, OPTIONS_CHAIN.schema.names, [line])
    assert_same(result.batch, csv.to_batches()[0])


def test_quote_snapshot_maps_to_quotes():
    m = {**sample("book_snapshot.json"), "name": "quote", "depth": 1}
    m["asks"], m["bids"] = m["asks"][:1], m["bids"][:1]
    assert message_data_type("book_snapshot", "quote") == "quotes"
    batch = build_batch("quotes", "bitmex", "XBTUSD", [m]).batch
    assert_same(batch, rows_batch(QUOTES, [{
        "exchange": "bitmex", "symbol": "XBTUSD",
        "timestamp": us(2019, 10, 25, 13, 39, 46, 950_000),
        "local_timestamp": us(2019, 10, 25, 13, 39, 46, 961_000),
        "ask_amount": 1467849.0, "ask_price": 7634.0, "bid_price": 7633.5,
        "bid_amount": 1906067.0}]))


def test_message_types_without_ticks_have_no_data_type():
    assert message_data_type("disconnect", None) is None
    assert message_data_type("trade_bar", "trade_bar_10000ms") is None
    assert message_data_type(sample("bar.json")["type"], sample("bar.json")["name"]) is None
    assert message_data_type("book_snapshot", "nonsense") is None


# --------------------------------------------------------------------------------------------
# the 30 s BitMEX recording


def test_bitmex_recording_maps_every_row():
    path = shared_file("tardis-machine/bitmex_XBTUSD_2021-07-22_normalized.jsonl")
    messages = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        groups.setdefault(message_data_type(m["type"], m.get("name")) or "", []).append(m)
    assert sorted((k, len(v)) for k, v in groups.items()) == [
        ("book_snapshot_5", 29), ("incremental_book_L2", 1300), ("trades", 15)]
    book = build_batch("incremental_book_L2", "bitmex", "XBTUSD", groups["incremental_book_L2"])
    levels = [(lv["price"], lv["amount"], side, m["isSnapshot"])
              for m in groups["incremental_book_L2"]
              for key, side in (("asks", "ask"), ("bids", "bid")) for lv in m[key]]
    assert book.rejected == {}
    assert book.batch.num_rows == len(levels)
    assert list(zip(book.batch.column("price").to_pylist(),
                    book.batch.column("amount").to_pylist(),
                    book.batch.column("side").to_pylist(),
                    book.batch.column("is_snapshot").to_pylist(), strict=True)) == levels
    trades = build_batch("trades", "bitmex", "XBTUSD", groups["trades"])
    assert trades.batch.column("id").to_pylist() == [m["id"] for m in groups["trades"]]
    assert trades.batch.column("timestamp").cast(pa.int64()).to_pylist() == [
        parse_iso_us(m["timestamp"]) for m in groups["trades"]]
    snaps = build_batch("book_snapshot_5", "bitmex", "XBTUSD", groups["book_snapshot_5"])
    assert snaps.batch.num_rows == 29 and snaps.rejected == {}
    assert snaps.batch.column("bids_4_price").null_count == 0


# --------------------------------------------------------------------------------------------
# timestamps


@pytest.mark.parametrize(("text", "expected"), [
    ("2019-10-23T10:32:49.669Z", us(2019, 10, 23, 10, 32, 49, 669_000)),
    ("2019-10-23T10:32:49.669123Z", us(2019, 10, 23, 10, 32, 49, 669_123)),
    ("2019-10-23T10:32:49.6691239Z", us(2019, 10, 23, 10, 32, 49, 669_123)),  # 100 ns digits
    ("2019-10-23T10:32:49.669123999Z", us(2019, 10, 23, 10, 32, 49, 669_123)),  # truncated
    ("2019-10-23T10:32:49Z", us(2019, 10, 23, 10, 32, 49)),
    ("2019-10-23T12:32:49.5+02:00", us(2019, 10, 23, 10, 32, 49, 500_000)),
    ("2019-10-23T10:32:49.5", us(2019, 10, 23, 10, 32, 49, 500_000)),  # no zone: UTC
])
def test_timestamps_vectorised_and_scalar_agree(text, expected):
    assert parse_iso_us(text) == expected
    arr, errors = parse_timestamps([text, None])
    assert errors == {}
    assert arr.cast(pa.int64()).to_pylist() == [expected, None]


def test_timestamps_with_more_than_nine_digits_fall_back_per_value():
    arr, errors = parse_timestamps(["2019-10-23T10:32:49.6691239876Z", "yesterday",
                                    "2019-02-30T00:00:00Z"])
    assert arr.cast(pa.int64()).to_pylist() == [us(2019, 10, 23, 10, 32, 49, 669_123), None,
                                                None]
    assert "not an ISO 8601 timestamp" in errors[1]
    assert "not a valid date/time" in errors[2]


# --------------------------------------------------------------------------------------------
# bad values: quarantined per message with a reason, the others pass


def test_value_of_wrong_type_rejects_its_message_only():
    good = sample("trade.json")
    bad_price = {**good, "price": "7996"}
    bool_amount = {**good, "amount": True}
    no_ts = {k: v for k, v in good.items() if k != "timestamp"}
    bad_side = {**good, "side": "long"}
    bad_ts = {**good, "localTimestamp": "not a time"}
    result = build_batch("trades", "bitmex", "XBTUSD",
                         [good, bad_price, bool_amount, no_ts, bad_side, bad_ts, good])
    assert result.batch.num_rows == 2
    assert result.rejected == {
        1: "price: expected a number, got '7996'",
        2: "amount: expected a number, got True",
        3: "timestamp: missing",
        4: "side: must be one of buy, sell, unknown",
        5: "local_timestamp: not an ISO 8601 timestamp: 'not a time'",
    }
    assert result.rows_rejected == 5


def _trade(exchange: str, symbol: str, i: int, **changes: Any) -> dict[str, Any]:
    m = {"type": "trade", "exchange": exchange, "symbol": symbol, "id": str(i),
         "price": 100.0 + i, "amount": 0.5 + i, "side": "buy" if i % 2 else "sell",
         "timestamp": f"2024-01-15T00:00:{i:02d}.123456Z",
         "localTimestamp": f"2024-01-15T00:00:{i:02d}.200000Z"}
    m.update(changes)
    return m


def test_build_batches_equals_build_batch_per_group() -> None:
    data_type = "trades"
    groups = [
        ("binance-futures", "BTCUSDT",
         [_trade("binance-futures", "BTCUSDT", i) for i in range(3)]),
        ("binance-futures", "ETHUSDT", [_trade("binance-futures", "ETHUSDT", 3),
                                         _trade("binance-futures", "ETHUSDT", 4, price="x"),
                                         _trade("binance-futures", "ETHUSDT", 5, amount=-1.0),
                                         _trade("binance-futures", "ETHUSDT", 6)]),
        ("bybit", "BTCUSDT", [_trade("bybit", "BTCUSDT", 7, side="long")]),
        ("bybit", "SOLUSDT", [_trade("bybit", "SOLUSDT", i) for i in range(8, 12)]),
    ]
    together = build_batches(data_type, groups)
    assert len(together) == len(groups)
    for (exchange, symbol, msgs), got in zip(groups, together, strict=True):
        alone = build_batch(data_type, exchange, symbol, msgs)
        assert_same(got.batch, alone.batch)
        assert got.rejected == alone.rejected
        assert got.rows_rejected == alone.rows_rejected
    assert together[1].rejected == {1: "price: expected a number, got 'x'",
                                     2: "amount: must be > 0"}
    assert together[2].batch.num_rows == 0 and list(together[2].rejected) == [0]
    assert together[3].batch.column("exchange").to_pylist() == ["bybit"] * 4


def test_numeric_trade_ids_become_text_as_in_the_csv_files():
    m = {**sample("trade.json"), "id": 123456789}
    batch = build_batch("trades", "bitmex", "XBTUSD", [m, sample("trade.json")]).batch
    assert batch.column("id").to_pylist() == ["123456789", "282a0445-0e3a-abeb-f403-11003204ea1b"]


def test_book_change_rule_breaking_level_drops_that_row_only():
    m = sample("book_change.json")
    m = {**m, "asks": [{"price": 7985, "amount": -1}, {"price": 7986, "amount": 5}],
         "bids": [{"price": 7980, "amount": 0}]}  # amount 0 = delete: valid
    result = build_batch("incremental_book_L2", "bitmex", "XBTUSD", [m])
    assert result.batch.column("price").to_pylist() == [7986.0, 7980.0]
    assert result.rejected == {0: "asks[0]: amount: must be >= 0"}
    assert result.rows_rejected == 1


def test_book_change_malformed_level_rejects_the_message():
    m = {**sample("book_change.json"), "bids": [[7980, 1]]}
    result = build_batch("incremental_book_L2", "bitmex", "XBTUSD",
                         [m, sample("book_change.json")])
    assert result.batch.num_rows == 1
    assert result.rejected == {0: "bids[0]: expected an object, got [7980, 1]"}


# --------------------------------------------------------------------------------------------
# tardis-machine dataTypes


@pytest.mark.parametrize(("option", "data_type"), [
    ("trade", "trades"), ("book_change", "incremental_book_L2"),
    ("derivative_ticker", "derivative_ticker"), ("liquidation", "liquidations"),
    ("option_summary", "options_chain"), ("book_snapshot_25_100ms", "book_snapshot_25"),
    ("book_snapshot_5_1s", "book_snapshot_5"), ("quote", "quotes"), ("quote_10s", "quotes"),
])
def test_machine_data_types(option, data_type):
    assert machine_data_type(option) == data_type


@pytest.mark.parametrize(("option", "message"), [
    ("trades", "unknown tardis-machine data type 'trades'"),
    ("book_snapshot_25", "unknown tardis-machine data type"),
    ("book_snapshot_0_1s", "depth must be 1..1000"),
    ("trade_bar_1m", "the flow builds its own candles"),
    ("", "non-empty string"),
])
def test_machine_data_type_errors_name_the_problem(option, message):
    with pytest.raises(ValueError, match=message):
        machine_data_type(option)
