"""The candle step's conversions between Arrow and numpy (operators.candles.step)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given
from hypothesis import strategies as st

from operators.candles.bars import SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN
from operators.candles.builder import MultiTimeframeCandles
from operators.candles.schema import CANDLE_SCHEMA
from operators.candles.step import _Repeated, candles_to_batch, side_codes

_SIDES = st.one_of(st.none(), st.sampled_from(["buy", "sell", "unknown", "", "bu", "buyy",
                                                "sel", "sellx", "BUY", "s", "b", "bux",
                                                "xuy", "selm", "aell", "buy\x00"]))


def _expected(values: list[str | None]) -> list[int]:
    return [SIDE_BUY if v == "buy" else SIDE_SELL if v == "sell" else SIDE_UNKNOWN
            for v in values]


@given(st.lists(_SIDES, max_size=60), st.integers(0, 10), st.integers(0, 60))
def test_side_codes_equal_string_comparison_on_any_slice(values, lo, length):
    arr = pa.array(values, pa.string())
    part = arr.slice(min(lo, len(values)), length)
    assert side_codes(part).tolist() == _expected(part.to_pylist())


def test_side_codes_of_empty_strings_only():
    # an all-empty string column may have no data buffer at all
    assert side_codes(pa.array(["", "", None], pa.string())).tolist() == [SIDE_UNKNOWN] * 3


def test_side_codes_of_a_dictionary_column():
    arr = pa.array(["sell", "buy", None, "unknown"]).dictionary_encode()
    assert side_codes(arr).tolist() == [SIDE_SELL, SIDE_BUY, SIDE_UNKNOWN, SIDE_UNKNOWN]


def test_candles_to_batch_row_keys_and_timestamps():
    tf = 15_000_000
    m = MultiTimeframeCandles([tf])
    ts = np.array([1_700_000_000_000_000, 1_700_000_000_000_001, 1_700_000_031_000_000],
                  np.int64)
    closed, _ = m.add_trades(ts, ts + 7, np.array([1.0, 2.0, 3.0]), np.ones(3),
                             np.array([SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN], np.int8))
    closed += m.flush()
    repeated = _Repeated()
    for c in closed:
        for const in (None, repeated):  # built anew, or sliced from reused columns
            b = candles_to_batch("binance", "BTCUSDT", "15s", c, const)
            assert b.schema == CANDLE_SCHEMA
            starts = c.start.tolist()
            assert b.column("row_key").to_pylist() == [f"binance|BTCUSDT|15s|{s}"
                                                       for s in starts]
            assert pc.cast(b.column("timestamp"), pa.int64()).to_pylist() == starts
            assert b.column("exchange").to_pylist() == ["binance"] * len(c)
            filled = c.is_filled.tolist()
            assert [v is None for v in b.column("open_timestamp").to_pylist()] == filled


def test_row_keys_of_starts_outside_sixteen_digits():
    from operators.candles.step import _row_keys

    values = np.array([999_999_999_999_999, 10**16, 0, 7], np.int64)
    keys = _row_keys("x|", values, pa.array(values), _Repeated())
    assert keys.to_pylist() == ["x|999999999999999", "x|10000000000000000", "x|0", "x|7"]


@given(st.lists(st.integers(-(10**17), 2**63 - 1), max_size=30),
       st.text(max_size=12))
def test_row_keys_are_the_prefix_and_the_decimal_start(values, prefix):
    from operators.candles.step import _row_keys

    arr = np.array(values, np.int64)
    keys = _row_keys(prefix, arr, pa.array(arr), _Repeated())  # negative: the cast path
    assert keys.to_pylist() == [f"{prefix}{v}" for v in values]
