"""Compiled loops of the candle step (numba, cached on disk, compiled at import, GIL released).

Each replaces a run of numpy calls whose fixed costs dominated a batch: `sorted_bars` builds
a timeframe's bars from time-ordered trades in one pass (what `bars.combine` computes for
them), `string_sides` reads trade sides from an Arrow string column's buffers. Each has one
explicit signature, so it is compiled (or loaded from numba's cache) when this module is
imported, never in the middle of a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.jit import compiled

SIDE_UNKNOWN, SIDE_BUY, SIDE_SELL = 0, 1, 2


def _bars_signature() -> Any:
    """`sorted_bars`' one signature, compiled (or loaded from numba's disk cache) at import:
    C-contiguous int64 times, float64 prices and amounts (read-only: they may be Arrow
    buffers), int8 side codes; the bars' 15 columns out."""
    from numba import types as t

    def arr(dtype: Any, readonly: bool = False) -> Any:
        return t.Array(dtype, 1, "C", readonly=readonly)

    i8, f8 = t.int64, t.float64
    out = t.Tuple([arr(i8), arr(f8), arr(f8), arr(f8), arr(f8), arr(i8), arr(i8), arr(i8),
                   arr(f8), arr(f8), arr(f8), arr(i8), arr(f8), arr(i8), arr(i8)])
    return out(arr(i8, True), arr(i8, True), arr(f8, True), arr(f8, True), arr(t.int8, True),
               i8, i8)


@compiled(_bars_signature())
def sorted_bars(ts: np.ndarray, local_ts: np.ndarray, price: np.ndarray, amount: np.ndarray,
                 side: np.ndarray, tf: int, first_arrival: int
                 ) -> tuple:  # pragma: no cover - compiled; tested through bars.bars_of_sorted
    """The bars of time-ordered trades (see bars.bars_of_sorted), as 15 columns: start, open,
    high, low, close, open_ts, close_ts, local_ts, volume, buy, sell, count, notional,
    first_idx, close_idx. One integer division per bar, not per trade."""
    n = ts.shape[0]
    m = 0
    end = ts[0] - 1  # below every trade: the first one starts a bar
    for i in range(n):
        if ts[i] >= end:
            m += 1
            end = ts[i] - ts[i] % tf + tf
    start = np.empty(m, np.int64)
    open_ = np.empty(m)
    high = np.empty(m)
    low = np.empty(m)
    close = np.empty(m)
    open_ts = np.empty(m, np.int64)
    close_ts = np.empty(m, np.int64)
    local = np.empty(m, np.int64)
    volume = np.empty(m)
    buy = np.empty(m)
    sell = np.empty(m)
    count = np.empty(m, np.int64)
    notional = np.empty(m)
    first_idx = np.empty(m, np.int64)
    close_idx = np.empty(m, np.int64)
    j = -1
    end = ts[0] - 1
    for i in range(n):
        t = ts[i]
        p = price[i]
        a = amount[i]
        if t >= end:
            j += 1
            start[j] = t - t % tf
            end = start[j] + tf
            open_[j] = high[j] = low[j] = p
            open_ts[j] = t
            local[j] = local_ts[i]
            volume[j] = a
            buy[j] = a if side[i] == SIDE_BUY else 0.0
            sell[j] = a if side[i] == SIDE_SELL else 0.0
            count[j] = 1
            notional[j] = p * a
            first_idx[j] = first_arrival + i
        else:
            if p > high[j]:
                high[j] = p
            if p < low[j]:
                low[j] = p
            if local_ts[i] > local[j]:
                local[j] = local_ts[i]
            volume[j] += a
            if side[i] == SIDE_BUY:
                buy[j] += a
            elif side[i] == SIDE_SELL:
                sell[j] += a
            count[j] += 1
            notional[j] += p * a
        close[j] = p
        close_ts[j] = t
        close_idx[j] = first_arrival + i
    return (start, open_, high, low, close, open_ts, close_ts, local, volume, buy, sell, count,
            notional, first_idx, close_idx)


def _sides_signature() -> Any:
    """`string_sides`' signature: read-only int32 offsets and bytes (Arrow buffers)."""
    from numba import types as t

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    return t.void(ro(t.int32), ro(t.uint8), t.Array(t.int8, 1, "C"))


@compiled(_sides_signature())
def string_sides(offsets: np.ndarray, data: np.ndarray, out: np.ndarray
                  ) -> None:  # pragma: no cover - compiled; tested through step.side_codes
    """out[i] = the side code of string i, whose bytes are data[offsets[i]:offsets[i + 1]]."""
    for i in range(out.shape[0]):
        s = offsets[i]
        length = offsets[i + 1] - s
        code = SIDE_UNKNOWN
        if length == 3 and data[s] == 98 and data[s + 1] == 117 and data[s + 2] == 121:
            code = SIDE_BUY  # b u y
        elif (length == 4 and data[s] == 115 and data[s + 1] == 101 and data[s + 2] == 108
              and data[s + 3] == 108):
            code = SIDE_SELL  # s e l l
        out[i] = code
