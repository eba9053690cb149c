"""The candle step's compiled loops (operators.candles.kernels): `combine` against a plain
Python reference of its rules, and `bars_of_sorted` against `combine` of single trades."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.candles.bars import (
    SIDE_BUY,
    SIDE_SELL,
    SIDE_UNKNOWN,
    Partials,
    bars_of_sorted,
    combine,
)

S = 1_000_000
T0 = 1_700_000_000_000_000
_SUMS = {"volume", "buy", "sell", "notional"}

sorted_trades = st.lists(
    st.tuples(st.integers(0, 200 * S), st.integers(0, 5 * S), st.integers(1, 10_000),
              st.integers(1, 1000), st.sampled_from([SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN])),
    min_size=1, max_size=200,
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(rows=sorted_trades, tf=st.sampled_from([1, 15 * S, 60 * S, 7 * S + 3]),
       first=st.integers(0, 10**9))
def test_bars_of_sorted_equal_combine_of_single_trades(rows, tf, first):
    ts = np.array([T0 + r[0] for r in rows], np.int64)
    local = ts + np.array([r[1] for r in rows], np.int64)
    price = np.array([r[2] / 100 for r in rows])
    amount = np.array([r[3] / 1000 for r in rows])
    side = np.array([r[4] for r in rows], np.int8)
    arrival = np.arange(first, first + len(rows), dtype=np.int64)
    want = combine(Partials.from_trades(ts - ts % tf, ts, local, price, amount, side, arrival))
    got = bars_of_sorted(ts, local, price, amount, side, tf, first)
    for name in Partials.__slots__:  # type: ignore[attr-defined]
        a, b = getattr(want, name), getattr(got, name)
        assert a.dtype == b.dtype, name
        if name in _SUMS:  # added in trade order by both; numpy may pair them differently
            np.testing.assert_allclose(b, a, rtol=1e-13, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), name


def test_bars_of_sorted_reads_arrow_buffers_and_slices():
    ts = np.array([T0, T0 + 1, T0 + 15 * S, T0 + 16 * S], np.int64)
    col = pa.array(ts)  # read-only numpy views of Arrow buffers, as the step passes them
    view = col.to_numpy()
    assert not view.flags.writeable
    bars = bars_of_sorted(view, view, pa.array([1.0, 3.0, 2.0, 5.0]).to_numpy(),
                          np.ones(4), np.array([1, 2, 0, 1], np.int8), 15 * S, 7)
    assert bars.start.tolist() == [T0 - T0 % (15 * S), T0 + 15 * S - (T0 + 15 * S) % (15 * S)]
    assert bars.open.tolist() == [1.0, 2.0] and bars.close.tolist() == [3.0, 5.0]
    assert bars.buy.tolist() == [1.0, 1.0] and bars.sell.tolist() == [1.0, 0.0]
    assert bars.first_idx.tolist() == [7, 9] and bars.close_idx.tolist() == [8, 10]
    strided = bars_of_sorted(ts[::2], ts[::2], np.ones(2), np.ones(2),
                             np.zeros(2, np.int8), 15 * S, 0)  # not contiguous: copied
    assert strided.count.tolist() == [1, 1]
    assert len(bars_of_sorted(ts[:0], ts[:0], np.ones(0), np.ones(0), np.zeros(0, np.int8),
                              15 * S, 0)) == 0


partial_bars = st.lists(
    st.tuples(st.integers(0, 6), st.integers(1, 10_000), st.integers(1, 10_000),
              st.integers(0, 50), st.integers(0, 50), st.integers(1, 1000)),
    min_size=0, max_size=40,
)


def _reference_combine(rows: list[dict]) -> list[dict]:
    """One bar per start, by the rules in plain Python: open of the member with the smallest
    first_idx, close of the member with the largest (close_ts, close_idx)."""
    out = []
    for s in sorted({r["start"] for r in rows}):
        g = [r for r in rows if r["start"] == s]
        first = min(g, key=lambda r: r["first_idx"])
        last = max(g, key=lambda r: (r["close_ts"], r["close_idx"]))
        out.append({"start": s, "open": first["open"], "open_ts": first["open_ts"],
                    "first_idx": first["first_idx"], "close": last["close"],
                    "close_ts": last["close_ts"], "close_idx": last["close_idx"],
                    "high": max(r["high"] for r in g), "low": min(r["low"] for r in g),
                    "local_ts": max(r["local_ts"] for r in g),
                    **{k: sum(r[k] for r in g)
                       for k in ("volume", "buy", "sell", "count", "notional")}})
    return out


@settings(max_examples=200, deadline=None)
@given(bars=partial_bars)
def test_combine_follows_the_open_and_close_rules(bars):
    # distinct arrival indices, as every partial bar's trades have
    firsts = np.random.default_rng(len(bars)).permutation(len(bars) * 2)
    rows = [{"start": s * 15 * S, "open": o / 100, "high": max(o, c) / 100 + 1,
             "low": min(o, c) / 100, "close": c / 100, "open_ts": T0 + ot,
             "close_ts": T0 + 50 + ct, "local_ts": T0 + ot + ct, "volume": v / 10,
             "buy": v / 20, "sell": v / 40, "count": v, "notional": v * o / 1000,
             "first_idx": int(firsts[2 * i]), "close_idx": int(firsts[2 * i + 1])}
            for i, (s, o, c, ot, ct, v) in enumerate(bars)]
    fields = Partials.__slots__  # type: ignore[attr-defined]
    p = Partials(*(np.array([r[f] for r in rows],
                            np.float64 if isinstance(rows[0][f] if rows else 0.0, float)
                            else np.int64) for f in fields)) if rows else Partials.empty()
    got = combine(p)
    want = _reference_combine(rows)
    assert len(got) == len(want)
    for f in fields:
        values = getattr(got, f).tolist()
        expected = [w[f] for w in want]
        if f in _SUMS:
            np.testing.assert_allclose(values, expected, rtol=1e-13, err_msg=f)
        else:
            assert values == expected, f


def test_candles_are_laid_on_their_grid_and_bars_off_it_are_refused():
    from operators.candles.builder import MultiTimeframeCandles

    tf = 15 * S
    m = MultiTimeframeCandles([tf])
    state = m._tfs[0]
    ts = np.array([T0 - T0 % tf, T0 - T0 % tf + 2 * tf], np.int64)
    bars = bars_of_sorted(ts, ts, np.array([1.0, 2.0]), np.ones(2), np.ones(2, np.int8), tf, 0)
    grid = np.arange(ts[0], ts[1] + tf, tf, dtype=np.int64)
    out = m._emit(state, grid, bars)
    assert out.is_filled.tolist() == [False, True, False]
    assert out.close.tolist() == [1.0, 1.0, 2.0]  # the empty interval carries the close
    assert np.isnan(out.vwap[1]) and out.count.tolist() == [1, 0, 1]
    with pytest.raises(RuntimeError, match="would be lost"):
        m._emit(state, grid + 1, bars)  # no bar starts on this grid
