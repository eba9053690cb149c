"""Bulk decoding of flat messages equals the general decoder's (orjson + build_batch).

Random messages of the four flat types, with the values real feeds send and the odd ones
(nulls, missing keys, integers, negative or zero numbers, unknown sides, other timestamp
forms, escapes, non-ASCII text, nested extras): every message the scan calls eligible gives
exactly the rows and rejection reasons the general decoder gives, and the real recorded
samples are eligible.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.tardis.flat import FLAT_TYPES, FlatScan
from connectors.tardis.normalized import build_batch
from tests.conftest import shared_file

good_timestamps = st.builds(
    lambda s, frac: f"2024-03-{1 + s % 28:02d}T{s % 24:02d}:{s % 60:02d}:{(s * 7) % 60:02d}{frac}Z",
    st.integers(0, 10**6),
    st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ".123456789"]))
odd_timestamps = st.one_of(
    st.sampled_from(["2024-03-01T00:00:00", "2024-03-01 00:00:00Z", "2024-02-30T00:00:00Z",
                     "2024-03-01T00:00:00+01:00", "1969-12-31T23:59:59Z", "yesterday", ""]),
    st.none(), st.integers(0, 10))
good_numbers = st.one_of(
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False).map(lambda x: round(x, 4)),
    st.integers(1, 10**6), st.floats(min_value=1e-9, max_value=1e12))
odd_numbers = st.one_of(st.integers(-5, 0), st.floats(allow_nan=False, allow_infinity=False),
                        st.none(), st.just("12.5"), st.integers(2**53, 2**60), st.just(-0.0))
good_strings = st.sampled_from(["buy", "sell", "unknown", "put", "call", "7", "abc-1"])
odd_strings = st.one_of(st.sampled_from(["Buy", ""]), st.text(max_size=6), st.none(),
                        st.integers(0, 10**9))
kinds = {"timestamp": (good_timestamps, odd_timestamps),
         "localTimestamp": (good_timestamps, odd_timestamps),
         "fundingTimestamp": (good_timestamps, odd_timestamps),
         "expirationDate": (good_timestamps, odd_timestamps), "id": (good_strings, odd_strings),
         "side": (good_strings, odd_strings), "optionType": (good_strings, odd_strings),
         "underlyingIndex": (good_strings, odd_strings)}
FIELDS = {
    "trade": ["id", "price", "amount", "side"],
    "liquidation": ["id", "price", "amount", "side"],
    "derivative_ticker": ["fundingTimestamp", "fundingRate", "predictedFundingRate",
                          "openInterest", "lastPrice", "indexPrice", "markPrice"],
    "option_summary": ["optionType", "strikePrice", "expirationDate", "openInterest",
                       "lastPrice", "bestBidPrice", "bestBidAmount", "bestBidIV",
                       "bestAskPrice", "bestAskAmount", "bestAskIV", "markPrice", "markIV",
                       "underlyingIndex", "underlyingPrice", "delta", "gamma", "vega",
                       "theta", "rho"],
}


@st.composite
def message(draw: st.DrawFn) -> bytes:
    mtype = draw(st.sampled_from([*FIELDS, "trade", "trade", "trade", "book_change"]))
    m: dict[str, Any] = {"type": mtype,
                         "exchange": draw(st.sampled_from(["binance", "deribit", "deribit",
                                                           ""])),
                         "symbol": draw(st.sampled_from(["BTCUSDT", "ETHUSDT", "X-1"]))}
    for key in ["timestamp", "localTimestamp", *FIELDS.get(mtype, ["price"])]:
        if draw(st.integers(0, 29)):  # mostly present, mostly a value of the usual kind
            good, odd = kinds.get(key, (good_numbers, odd_numbers))
            m[key] = draw(odd if draw(st.integers(0, 29)) == 0 else good)
    if draw(st.integers(0, 29)) == 0:
        m["extra"] = draw(st.sampled_from([[1], {"a": 1}, "x", 1.5]))
    keys = list(m)
    if draw(st.booleans()):
        keys = draw(st.permutations(keys))
    return json.dumps({key: m[key] for key in keys},
                      ensure_ascii=draw(st.booleans())).encode()


def general(frames: list[bytes], rows: np.ndarray) -> dict[tuple[str, str, str], Any]:
    """The general decoder's build of messages `rows`, per (data type, exchange, symbol)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for m in rows:
        d = orjson.loads(frames[m])
        groups.setdefault((FLAT_TYPES[d["type"]], d["exchange"], d["symbol"]), []).append(d)
    return {key: build_batch(*key, msgs) for key, msgs in groups.items()}


@given(st.lists(message(), min_size=1, max_size=40))
@settings(max_examples=400, deadline=None)
def test_eligible_messages_build_exactly_as_the_general_decoder_builds_them(frames):
    scan = FlatScan(frames)
    rows = np.flatnonzero(scan.eligible)
    for m in rows:
        d = orjson.loads(frames[m])
        assert d["type"] in FLAT_TYPES and d["exchange"] and d["symbol"]
    expected = general(frames, rows)
    for code, info in enumerate(scan.streams):
        mine = rows[scan.stream[rows] == code]
        if not len(mine):
            continue
        data_type = FLAT_TYPES[info.type]
        got = scan.build(data_type, mine)
        want = expected[(data_type, info.exchange, info.symbol)]
        assert got.batch.equals(want.batch)
        assert got.rejected == want.rejected and got.rows_rejected == want.rows_rejected


def sample_frame(name: str) -> bytes:
    return orjson.dumps(orjson.loads(shared_file(f"tardis-machine/{name}").read_bytes()))


def test_recorded_samples_and_the_benchmark_feed_are_eligible():
    frames = [sample_frame("trade.json"), sample_frame("derivative_ticker.json"),
              shared_file("tardis-machine/trade.json").read_bytes(),  # pretty-printed
              b'{"type":"trade","symbol":"SYM001USDT","exchange":"binance-futures","id":"7",'
              b'"price":100.5,"amount":3,"side":"buy","timestamp":"2026-11-24T10:00:00.123456Z",'
              b'"localTimestamp":"2026-11-24T10:00:00.124456Z"}']
    scan = FlatScan(frames)
    assert scan.eligible.all()
    got = scan.build("trades", np.array([0, 2]))
    assert got.batch.equals(build_batch("trades", "bitmex", "XBTUSD",
                                        [orjson.loads(frames[0])] * 2).batch)


def test_nested_types_and_garbage_are_left_to_the_general_decoder():
    frames = [sample_frame("book_change.json"), sample_frame("book_snapshot.json"),
              sample_frame("disconnect.json"), b"not json", b"[1,2]", b"{}",
              b'{"type":"trade","symbol":"X","exchange":"e","id":"\\u0041","price":1,'
              b'"amount":1,"side":"buy","timestamp":"2024-01-01T00:00:00Z",'
              b'"localTimestamp":"2024-01-01T00:00:00Z"}']
    scan = FlatScan(frames)
    assert not scan.eligible.any()


def test_rows_of_several_streams_keep_their_order():
    frames = [orjson.dumps({"type": "trade", "symbol": f"S{i % 3}", "exchange": "e",
                            "id": str(i), "price": 1 + i, "amount": 1, "side": "buy",
                            "timestamp": "2024-01-01T00:00:00Z",
                            "localTimestamp": "2024-01-01T00:00:00Z"}) for i in range(30)]
    scan = FlatScan(frames)
    assert [s.symbol for s in scan.streams] == ["S0", "S1", "S2"]
    for code in range(3):
        rows = np.flatnonzero(scan.stream == code)
        ids = scan.build("trades", rows).batch.column("id")
        assert ids == pa.array([str(i) for i in range(code, 30, 3)])
