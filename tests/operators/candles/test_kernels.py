"""The candle step's compiled loops (operators.candles.kernels), against the numpy code they
replace: `bars_of_sorted` must build the same bars as `combine(Partials.from_trades(...))`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
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
