"""HFTFeatureCalculator: batch == incremental, chunking invariance, snapshot / restore, nulls
until N inputs, edge cases (flat prices, zero volume, several timeframes), validation."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.tables import candle_schema
from features import INPUT_COLUMNS, FeatureSnapshot, HFTFeatureCalculator, feature_columns
from operators.candles.schema import CANDLE_SCHEMA

RTOL = 1e-9


def walk_candles(seed: int, n: int, sigma: float = 1e-3, tick: float = 0.5) -> pa.Table:
    """Candles over a tick-rounded random walk, with some empty (zero-volume) intervals."""
    rng = np.random.default_rng(seed)
    close = np.round(20_000.0 * np.exp(np.cumsum(rng.normal(0.0, sigma, n))) / tick) * tick
    trades = rng.integers(0, 40, n)
    trades[rng.random(n) < 0.1] = 0
    volume = np.where(trades > 0, rng.exponential(2.0, n), 0.0)
    buy = volume * rng.random(n)
    spread = np.where(trades > 0, rng.random(n) * 20.0, 0.0)
    return pa.table({
        "exchange": pa.array(["binance-futures"] * n),
        "open": close, "high": close + spread, "low": close - spread / 2, "close": close,
        "volume": volume, "buy_volume": buy, "sell_volume": volume - buy,
        "trade_count": pa.array(trades, pa.int64()),
    })


def values(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def assert_features_close(a: pa.Table, b: pa.Table, columns: tuple[str, ...]) -> None:
    for name in columns:
        np.testing.assert_allclose(values(a, name), values(b, name), rtol=RTOL, err_msg=name)


def incremental_table(calc: HFTFeatureCalculator, candles: pa.Table, tf: str) -> pa.Table:
    rows = [calc.compute_incremental(row, timeframe=tf) for row in candles.to_pylist()]
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.float64()) for c in calc.columns]))


# -- one implementation: batch, incremental, chunked --------------------------------------


@pytest.mark.parametrize("periods", [(5, 10, 20), (2, 3, 7)])
def test_incremental_equals_batch_candle_by_candle(periods: tuple[int, ...]) -> None:
    candles = walk_candles(1, 400)
    batch = HFTFeatureCalculator(periods).compute_batch(candles, timeframe="1m")
    inc = incremental_table(HFTFeatureCalculator(periods), candles, "1m")
    assert_features_close(inc, batch, tuple(feature_columns(sorted(periods))))
    # Stronger than the contract: the same kernel makes them identical.
    assert inc.equals(batch.select(inc.column_names))


def test_incremental_from_a_mid_stream_state_equals_batch() -> None:
    candles = walk_candles(2, 300)
    a, b = HFTFeatureCalculator(), HFTFeatureCalculator()
    a.compute_batch(candles.slice(0, 137), timeframe="5m")
    b.compute_batch(candles.slice(0, 137), timeframe="5m")
    rest = candles.slice(137)
    assert_features_close(incremental_table(a, rest, "5m"),
                          b.compute_batch(rest, timeframe="5m"), a.columns)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000),
       chunks=st.lists(st.integers(1, 45), min_size=1, max_size=25),
       periods=st.sampled_from([(5, 10, 20), (2, 3), (2, 7, 13), (30,)]))
def test_any_chunking_equals_one_call(seed: int, chunks: list[int],
                                      periods: tuple[int, ...]) -> None:
    total = sum(chunks)
    candles = walk_candles(seed, total)
    whole = HFTFeatureCalculator(periods).compute_batch(candles, timeframe="15s")
    calc, parts, start = HFTFeatureCalculator(periods), [], 0
    for size in chunks:
        parts.append(calc.compute_batch(candles.slice(start, size), timeframe="15s"))
        start += size
    chunked = pa.concat_tables(parts)
    assert_features_close(chunked, whole, calc.columns)
    assert chunked.equals(whole)  # bit for bit: no value depends on the block boundaries


def test_record_batch_input_and_passthrough_columns() -> None:
    candles = walk_candles(3, 50)
    calc = HFTFeatureCalculator()
    out = calc.compute_batch(candles.to_batches()[0], timeframe="1m")
    assert isinstance(out, pa.Table)
    assert out.column_names == [*candles.column_names, *calc.columns]
    assert out.select(candles.column_names).equals(candles)
    assert all(out.schema.field(c).type == pa.float64() for c in calc.columns)


def test_multi_chunk_table_input_equals_single_chunk() -> None:
    candles = walk_candles(15, 90)
    chunked = pa.concat_tables([candles.slice(0, 31), candles.slice(31, 2), candles.slice(33)])
    assert chunked.column("close").num_chunks == 3
    a = HFTFeatureCalculator().compute_batch(chunked, timeframe="1m")
    b = HFTFeatureCalculator().compute_batch(candles, timeframe="1m")
    assert a.equals(b)


def test_feature_columns_pickle_at_their_own_size() -> None:
    """Feature arrays share the kernel's output memory zero-copy, each over its own row only:
    a pickled column must not drag the other columns' bytes along (Bytewax pickles items)."""
    out = HFTFeatureCalculator().compute_batch(walk_candles(16, 4_000), timeframe="1m")
    size = len(pickle.dumps(out.column("sma_5")))
    assert 4_000 * 8 <= size < 4_000 * 8 + 2_000


def test_candle_schema_in_gives_the_persisted_candle_schema_out() -> None:
    n = 30
    close = np.linspace(100.0, 130.0, n)
    data: dict[str, pa.Array] = {}
    for field in CANDLE_SCHEMA:
        if pa.types.is_floating(field.type):
            data[field.name] = pa.array(close, field.type)
        elif pa.types.is_integer(field.type):
            data[field.name] = pa.array(np.full(n, 4), field.type)
        elif pa.types.is_timestamp(field.type):
            data[field.name] = pa.array(np.arange(n) * 60_000_000, field.type)
        elif pa.types.is_boolean(field.type):
            data[field.name] = pa.array([False] * n)
        else:
            data[field.name] = pa.array(["x"] * n, field.type)
    candles = pa.Table.from_pydict(data, schema=CANDLE_SCHEMA)
    out = HFTFeatureCalculator((20, 5, 10)).compute_batch(candles, timeframe="1m")
    assert out.schema.equals(candle_schema((5, 10, 20)))


def test_stale_feature_columns_are_replaced_not_duplicated() -> None:
    candles = walk_candles(4, 40)
    first = HFTFeatureCalculator().compute_batch(candles, timeframe="1m")
    again = HFTFeatureCalculator().compute_batch(first, timeframe="1m")
    assert again.column_names == first.column_names
    assert again.equals(first)


def test_empty_block_returns_feature_columns_and_keeps_state() -> None:
    candles = walk_candles(5, 30)
    calc = HFTFeatureCalculator()
    calc.compute_batch(candles.slice(0, 25), timeframe="1m")
    before = calc.snapshot()
    out = calc.compute_batch(candles.slice(0, 0), timeframe="1m")
    assert out.num_rows == 0
    assert out.column_names == [*candles.column_names, *calc.columns]
    assert calc.snapshot() == before


# -- snapshot / restore ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 9, 19, 20, 21, 150])
def test_restore_mid_stream_continues_exactly(cut: int) -> None:
    candles = walk_candles(6, 260)
    whole = HFTFeatureCalculator().compute_batch(candles, timeframe="1h")
    calc = HFTFeatureCalculator()
    head = calc.compute_batch(candles.slice(0, cut), timeframe="1h")
    snap = pickle.loads(pickle.dumps(calc.snapshot()))
    restored = HFTFeatureCalculator.from_snapshot(snap)
    tail = restored.compute_batch(candles.slice(cut), timeframe="1h")
    assert pa.concat_tables([head, tail]).equals(whole)
    calc.compute_batch(candles.slice(cut), timeframe="1h")  # the original, uninterrupted
    assert restored.snapshot() == calc.snapshot()


def test_snapshot_is_immutable_and_detached() -> None:
    candles = walk_candles(7, 80)
    calc = HFTFeatureCalculator()
    calc.compute_batch(candles.slice(0, 40), timeframe="1m")
    snap = calc.snapshot()
    copy = pickle.loads(pickle.dumps(snap))
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.periods = (1,)  # type: ignore[misc]
    tf_state = snap.timeframes[0][1]
    assert isinstance(tf_state.closes, tuple) and len(tf_state.closes) == 20
    calc.compute_batch(candles.slice(40), timeframe="1m")  # moving on leaves it unchanged
    assert snap == copy
    assert calc.snapshot() != snap


def test_snapshot_size_does_not_grow_with_the_stream() -> None:
    candles = walk_candles(8, 10_000)
    calc = HFTFeatureCalculator()
    sizes = {}
    done = 0
    for upto in (100, 1_000, 10_000):
        calc.compute_batch(candles.slice(done, upto - done), timeframe="1m")
        calc.compute_batch(candles.slice(done, upto - done), timeframe="15s")
        done = upto
        sizes[upto] = len(pickle.dumps(calc.snapshot()))
    assert sizes[100] == sizes[1_000] == sizes[10_000]
    assert sizes[100] < 2_000  # two timeframes: 20 closes and 9 averages each


def test_restore_rejects_inconsistent_snapshots() -> None:
    calc = HFTFeatureCalculator((2, 3))
    calc.compute_batch(walk_candles(9, 2), timeframe="1m")
    snap = calc.snapshot()
    tf, state = snap.timeframes[0]
    assert state.ema[0] is not None and state.avg_gain[0] is None  # 2 closes seen
    bad_states = {
        "more than max": dataclasses.replace(state, closes=(1.0, 2.0, 3.0, 4.0)),
        "per average": dataclasses.replace(state, ema=(None,)),
        "ema of period 2": dataclasses.replace(state, ema=(None, None)),
        "Wilder averages of period 2": dataclasses.replace(state, avg_gain=(0.5, None)),
        "not finite": dataclasses.replace(state, closes=(1.0, -2.0)),
        "avg_loss of period 3": dataclasses.replace(state, avg_loss=(None, -1.0)),
    }
    for message, bad in bad_states.items():
        with pytest.raises(ValueError, match=message):
            HFTFeatureCalculator.from_snapshot(FeatureSnapshot(snap.periods, ((tf, bad),)))
    with pytest.raises(ValueError, match="sorted and distinct"):
        HFTFeatureCalculator.from_snapshot(FeatureSnapshot((3, 2), ()))
    with pytest.raises(TypeError, match="FeatureSnapshot"):
        HFTFeatureCalculator.from_snapshot((1, 2))  # type: ignore[arg-type]


# -- semantics and edge cases ---------------------------------------------------------------


def test_hand_computed_values() -> None:
    closes = [1.0, 2.0, 4.0, 3.0]
    n = len(closes)
    candles = pa.table({"open": closes, "high": [1.5, 2.5, 4.0, 4.5], "low": [1.0, 1.0, 3.0, 3.0],
                        "close": closes, "volume": [2.0, 4.0, 0.0, 8.0],
                        "buy_volume": [2.0, 1.0, 0.0, 2.0], "sell_volume": [0.0, 3.0, 0.0, 6.0],
                        "trade_count": [1, 4, 0, 2]})
    out = HFTFeatureCalculator((2, 3)).compute_batch(candles, timeframe="1m")
    expect = {
        "log_return": [None, np.log(2.0), np.log(2.0), np.log(0.75)],
        "volume_imbalance": [1.0, -0.5, None, -0.5],
        "avg_trade_size": [2.0, 1.0, None, 4.0],
        "hl_range": [0.5, 0.75, 0.25, 0.5],
        "sma_2": [None, 1.5, 3.0, 3.5],
        "sma_3": [None, None, 7 / 3, 3.0],
        # alpha 2/3 seeded 1.5; then 2/3*4 + 1/3*1.5 = 19/6; then 2/3*3 + 1/3*19/6 = 55/18
        "ema_2": [None, 1.5, 19 / 6, 55 / 18],
        "ema_3": [None, None, 7 / 3, 8 / 3],
        # period 2: gains (1, 2) -> 1.5, losses 0 -> 100; then g = 0.75, l = 0.5 -> 60
        "rsi_2": [None, None, 100.0, 60.0],
        "rsi_3": [None, None, None, 75.0],  # g = 3/3 = 1, l = 1/3
        "price_volatility_2": [None, None, 0.0, abs(np.log(2.0) - np.log(0.75)) / 2],
        "price_volatility_3": [None, None, None,
                               float(np.std([np.log(2.0), np.log(2.0), np.log(0.75)]))],
    }
    assert out.num_rows == n
    for name, want in expect.items():
        got = out.column(name).to_pylist()
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None), (name, got)
            if w is not None:
                assert g == pytest.approx(w, rel=1e-12, abs=1e-15), (name, got)


@pytest.mark.parametrize("periods", [(5, 10, 20), (2, 9)])
def test_null_until_n_inputs(periods: tuple[int, ...]) -> None:
    candles = walk_candles(10, 60)
    calc = HFTFeatureCalculator(periods)
    out = incremental_table(calc, candles, "1m")
    assert out.column("log_return").null_count == 1
    assert out.column("log_return")[0].as_py() is None
    for n in periods:
        for name, first in (("sma", n - 1), ("ema", n - 1), ("rsi", n),
                            ("price_volatility", n)):
            column = out.column(f"{name}_{n}").to_pylist()
            assert all(v is None for v in column[:first]), (name, n)
            assert all(v is not None for v in column[first:]), (name, n)


def test_flat_prices() -> None:
    n = 50
    flat = pa.table({"open": np.full(n, 7.5), "high": np.full(n, 7.5), "low": np.full(n, 7.5),
                     "close": np.full(n, 7.5), "volume": np.ones(n), "buy_volume": np.ones(n),
                     "sell_volume": np.zeros(n), "trade_count": np.ones(n, dtype=np.int64)})
    out = HFTFeatureCalculator().compute_batch(flat, timeframe="1m")
    for p in (5, 10, 20):
        assert values(out, f"rsi_{p}")[p:].tolist() == [0.0] * (n - p)  # TA-Lib's 0/0 rule
        assert values(out, f"price_volatility_{p}")[p:].tolist() == [0.0] * (n - p)
        assert values(out, f"sma_{p}")[p - 1:].tolist() == [7.5] * (n - p + 1)
        np.testing.assert_allclose(values(out, f"ema_{p}")[p - 1:], 7.5, rtol=1e-15)
    assert values(out, "log_return")[1:].tolist() == [0.0] * (n - 1)
    assert values(out, "hl_range").tolist() == [0.0] * n
    assert values(out, "volume_imbalance").tolist() == [1.0] * n


def test_rsi_after_a_flat_stretch_only_moves_with_prices() -> None:
    closes = np.r_[np.linspace(100.0, 110.0, 10), np.full(30, 110.0), [109.0]]
    out = HFTFeatureCalculator((5,)).compute_batch(
        walk_candles(0, closes.size).set_column(4, "close", pa.array(closes)), timeframe="1m")
    rsi = values(out, "rsi_5")
    assert (rsi[5:40] == 100.0).all()  # only gains so far, decaying but never a loss
    assert 0.0 < rsi[40] < 100.0


def test_zero_volume_candles() -> None:
    candles = walk_candles(11, 40)
    n = candles.num_rows
    zero = pa.array(np.zeros(n))
    candles = (candles.set_column(candles.schema.get_field_index("volume"), "volume", zero)
               .set_column(candles.schema.get_field_index("buy_volume"), "buy_volume", zero)
               .set_column(candles.schema.get_field_index("sell_volume"), "sell_volume", zero)
               .set_column(candles.schema.get_field_index("trade_count"), "trade_count",
                           pa.array(np.zeros(n, dtype=np.int64))))
    out = HFTFeatureCalculator().compute_batch(candles, timeframe="1m")
    assert out.column("volume_imbalance").null_count == n
    assert out.column("avg_trade_size").null_count == n
    assert out.column("hl_range").null_count == 0
    assert out.column("rsi_5").null_count == 5  # price features are unaffected


def test_timeframes_are_independent() -> None:
    fast, slow = walk_candles(12, 300), walk_candles(13, 75)
    mixed = HFTFeatureCalculator()
    parts: dict[str, list[pa.Table]] = {"15s": [], "1m": []}
    for i in range(15):  # interleave the two streams in one calculator
        parts["15s"].append(mixed.compute_batch(fast.slice(i * 20, 20), timeframe="15s"))
        parts["1m"].append(mixed.compute_batch(slow.slice(i * 5, 5), timeframe="1m"))
    assert mixed.timeframes() == ("15s", "1m")
    alone_fast = HFTFeatureCalculator().compute_batch(fast, timeframe="15s")
    alone_slow = HFTFeatureCalculator().compute_batch(slow, timeframe="1m")
    assert pa.concat_tables(parts["15s"]).equals(alone_fast)
    assert pa.concat_tables(parts["1m"]).equals(alone_slow)
    assert not alone_fast.slice(0, 75).select(["sma_5"]).equals(alone_slow.select(["sma_5"]))
    snap = mixed.snapshot()
    assert [tf for tf, _ in snap.timeframes] == ["15s", "1m"]


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("periods", "message"), [
    ((), "must not be empty"),
    ((5, 1), ">= 2"),
    ((5, 5), "distinct"),
    ((5, 2.0), "ints"),
    ((True, 5), "ints"),
    (("5",), "ints"),
    (5, "sequence"),
])
def test_constructor_validates_periods(periods: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HFTFeatureCalculator(periods)  # type: ignore[arg-type]


def test_periods_are_sorted() -> None:
    calc = HFTFeatureCalculator((20, 5, 10))
    assert calc.periods == (5, 10, 20)
    assert calc.columns == tuple(feature_columns((5, 10, 20)))


def test_bad_input_is_rejected_and_leaves_state_unchanged() -> None:
    candles = walk_candles(14, 30)
    calc = HFTFeatureCalculator()
    calc.compute_batch(candles.slice(0, 10), timeframe="1m")
    before = calc.snapshot()
    close_at = candles.schema.get_field_index("close")
    cases = {
        "lack column": candles.drop_columns(["buy_volume"]),
        "must be numeric": candles.set_column(
            close_at, "close", pa.array([str(v) for v in values(candles, "close")])),
        "close must be > 0": candles.set_column(
            close_at, "close", pa.array(np.r_[values(candles, "close")[:29], 0.0])),
        "close is nan": candles.set_column(
            close_at, "close", pa.array(np.r_[values(candles, "close")[:29], np.nan])),
        "volume is nan": candles.set_column(
            candles.schema.get_field_index("volume"), "volume",
            pa.array([None] + values(candles, "volume")[1:].tolist(), pa.float64())),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            calc.compute_batch(bad, timeframe="1m")
    row = candles.slice(10, 1).to_pylist()[0]
    with pytest.raises(ValueError, match="lacks key"):
        calc.compute_incremental({k: v for k, v in row.items() if k != "close"},
                                 timeframe="1m")
    with pytest.raises(ValueError, match="trade_count is nan"):
        calc.compute_incremental({**row, "trade_count": None}, timeframe="1m")
    with pytest.raises(ValueError, match="timeframe"):
        calc.compute_batch(candles, timeframe="")
    with pytest.raises(ValueError, match="close must be > 0"):
        calc.compute_incremental({**row, "close": -1.0}, timeframe="4h")
    calc.compute_batch(candles.slice(0, 0), timeframe="1d")
    assert calc.timeframes() == ("1m",)  # failed or empty first blocks leave no state
    assert calc.snapshot() == before
    assert set(INPUT_COLUMNS) <= set(candles.column_names)
