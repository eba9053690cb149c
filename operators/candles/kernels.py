"""Compiled loops of the candle step (numba, cached on disk, compiled at import, GIL released).

Each replaces a run of numpy calls whose fixed costs dominated a batch: `sorted_bars` builds
a timeframe's bars from time-ordered trades in one pass (what `bars.combine` computes for
them), `combine_sorted` combines partial bars with equal starts (`bars.combine`),
`fill_grid` lays closed bars on their interval grid with the empty intervals filled,
`prefixed_decimals` writes the candles' row keys, and `string_sides` reads trade sides from
an Arrow string column's buffers. Each has one
explicit signature, so it is compiled (or loaded from numba's cache) when this module is
imported, never in the middle of a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types as nt

from features.jit import array_type as arr
from features.jit import compiled

SIDE_UNKNOWN, SIDE_BUY, SIDE_SELL = 0, 1, 2


def _bar_kinds() -> tuple[Any, ...]:
    """numba types of the 15 columns of bars.Partials, in order."""
    i8, f8 = nt.int64, nt.float64
    return (i8, f8, f8, f8, f8, i8, i8, i8, f8, f8, f8, i8, f8, i8, i8)


def _bars_type() -> Any:
    return nt.Tuple([arr(k) for k in _bar_kinds()])


@compiled(_bars_type()(nt.int64))
def _new_bars(m: int) -> tuple:  # pragma: no cover - compiled
    """15 uninitialised bar columns of length m (bars.Partials' order and dtypes)."""
    return (np.empty(m, np.int64), np.empty(m), np.empty(m), np.empty(m), np.empty(m),
            np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m),
            np.empty(m), np.empty(m), np.empty(m, np.int64), np.empty(m),
            np.empty(m, np.int64), np.empty(m, np.int64))


def _bars_signature() -> Any:
    """`sorted_bars`' one signature, compiled (or loaded from numba's disk cache) at import:
    C-contiguous int64 times, float64 prices and amounts (read-only: they may be Arrow
    buffers), int8 side codes; the bars' 15 columns out."""
    i8, f8 = nt.int64, nt.float64
    return _bars_type()(arr(i8, True), arr(i8, True), arr(f8, True), arr(f8, True),
                        arr(nt.int8, True), i8, i8)


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
    (start, open_, high, low, close, open_ts, close_ts, local, volume, buy, sell, count,
     notional, first_idx, close_idx) = _new_bars(m)
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


def _combine_signature() -> Any:
    """`combine_sorted`' signature: the 15 bar columns in (read-only), the same 15 out."""
    return _bars_type()(*(arr(k, True) for k in _bar_kinds()))


@compiled(_combine_signature())
def combine_sorted(start: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray,
                   close: np.ndarray, open_ts: np.ndarray, close_ts: np.ndarray,
                   local_ts: np.ndarray, volume: np.ndarray, buy: np.ndarray, sell: np.ndarray,
                   count: np.ndarray, notional: np.ndarray, first_idx: np.ndarray,
                   close_idx: np.ndarray
                   ) -> tuple:  # pragma: no cover - compiled; tested through bars.combine
    """Partial bars sorted by start (the 15 columns of bars.Partials) combined into one bar per
    start: the open of the member whose opening trade arrived first, the close of the member
    with the latest close time (among equal times, the last to arrive), high / low / latest
    receive time over the members, sums added in member order."""
    n = start.shape[0]
    m = 0
    for i in range(n):
        if i == 0 or start[i] != start[i - 1]:
            m += 1
    (o_start, o_open, o_high, o_low, o_close, o_open_ts, o_close_ts, o_local, o_volume, o_buy,
     o_sell, o_count, o_notional, o_first, o_close_idx) = _new_bars(m)
    j = -1
    for i in range(n):
        if i == 0 or start[i] != start[i - 1]:
            j += 1
            o_start[j] = start[i]
            o_open[j] = open_[i]
            o_high[j] = high[i]
            o_low[j] = low[i]
            o_close[j] = close[i]
            o_open_ts[j] = open_ts[i]
            o_close_ts[j] = close_ts[i]
            o_local[j] = local_ts[i]
            o_volume[j] = volume[i]
            o_buy[j] = buy[i]
            o_sell[j] = sell[i]
            o_count[j] = count[i]
            o_notional[j] = notional[i]
            o_first[j] = first_idx[i]
            o_close_idx[j] = close_idx[i]
            continue
        if first_idx[i] < o_first[j]:
            o_first[j] = first_idx[i]
            o_open[j] = open_[i]
            o_open_ts[j] = open_ts[i]
        if close_ts[i] > o_close_ts[j] or (close_ts[i] == o_close_ts[j]
                                           and close_idx[i] > o_close_idx[j]):
            o_close_ts[j] = close_ts[i]
            o_close_idx[j] = close_idx[i]
            o_close[j] = close[i]
        if high[i] > o_high[j]:
            o_high[j] = high[i]
        if low[i] < o_low[j]:
            o_low[j] = low[i]
        if local_ts[i] > o_local[j]:
            o_local[j] = local_ts[i]
        o_volume[j] += volume[i]
        o_buy[j] += buy[i]
        o_sell[j] += sell[i]
        o_count[j] += count[i]
        o_notional[j] += notional[i]
    return (o_start, o_open, o_high, o_low, o_close, o_open_ts, o_close_ts, o_local, o_volume,
            o_buy, o_sell, o_count, o_notional, o_first, o_close_idx)


def _grid_signature() -> Any:
    """`fill_grid`' signature: the grid and 13 bar columns in, 13 candle columns out."""
    i8, f8 = nt.int64, nt.float64
    out = (f8, f8, f8, f8, f8, f8, f8, i8, f8, i8, i8, i8, nt.boolean)
    return nt.Tuple([arr(k) for k in out])(arr(i8, True),
                                          *(arr(k, True) for k in _bar_kinds()[:13]), f8)


@compiled(_grid_signature())
def fill_grid(grid: np.ndarray, start: np.ndarray, open_: np.ndarray, high: np.ndarray,
              low: np.ndarray, close: np.ndarray, open_ts: np.ndarray, close_ts: np.ndarray,
              local_ts: np.ndarray, volume: np.ndarray, buy: np.ndarray, sell: np.ndarray,
              count: np.ndarray, notional: np.ndarray, prev_close: float
              ) -> tuple:  # pragma: no cover - compiled; tested through the builder
    """Candles on `grid` (interval starts, ascending) from the bars whose starts are among
    them: a bar's values where it has one; elsewhere a filled candle, open = high = low =
    close = the close before it (`prev_close` before the first bar), volume 0, times 0.
    Returns open, high, low, close, volume, buy, sell, count, vwap (NaN when filled or
    without volume), open_ts, close_ts, local_ts, is_filled."""
    m = grid.shape[0]
    o_open = np.empty(m)
    o_high = np.empty(m)
    o_low = np.empty(m)
    o_close = np.empty(m)
    o_volume = np.zeros(m)
    o_buy = np.zeros(m)
    o_sell = np.zeros(m)
    o_count = np.zeros(m, np.int64)
    o_vwap = np.full(m, np.nan)
    o_open_ts = np.zeros(m, np.int64)
    o_close_ts = np.zeros(m, np.int64)
    o_local = np.zeros(m, np.int64)
    o_filled = np.ones(m, np.bool_)
    last = prev_close
    r = 0
    n = start.shape[0]
    for g in range(m):
        if r < n and start[r] == grid[g]:
            o_open[g] = open_[r]
            o_high[g] = high[r]
            o_low[g] = low[r]
            o_close[g] = close[r]
            o_volume[g] = volume[r]
            o_buy[g] = buy[r]
            o_sell[g] = sell[r]
            o_count[g] = count[r]
            if volume[r] > 0.0:
                o_vwap[g] = notional[r] / volume[r]
            o_open_ts[g] = open_ts[r]
            o_close_ts[g] = close_ts[r]
            o_local[g] = local_ts[r]
            o_filled[g] = False
            last = close[r]
            r += 1
        else:
            o_open[g] = o_high[g] = o_low[g] = o_close[g] = last
    return (o_open, o_high, o_low, o_close, o_volume, o_buy, o_sell, o_count, o_vwap,
            o_open_ts, o_close_ts, o_local, o_filled)


def _keys_signature() -> Any:
    """`prefixed_decimals`' signature: prefix bytes and int64 values in; int32 offsets and
    bytes of an Arrow string column out."""
    return nt.Tuple([arr(nt.int32), arr(nt.uint8)])(arr(nt.uint8, True), arr(nt.int64, True))


@compiled(_keys_signature())
def prefixed_decimals(head: np.ndarray, values: np.ndarray
                      ) -> tuple:  # pragma: no cover - compiled; tested through step._row_keys
    """The strings head + decimal(value) for non-negative values, as Arrow string buffers."""
    n = values.shape[0]
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    for i in range(n):
        v = values[i]
        digits = 1
        while v >= 10:
            v //= 10
            digits += 1
        offsets[i + 1] = offsets[i] + head.shape[0] + digits
    data = np.empty(offsets[n], np.uint8)
    for i in range(n):
        at = offsets[i]
        for k in range(head.shape[0]):
            data[at + k] = head[k]
        v = values[i]
        pos = offsets[i + 1] - 1
        while True:
            data[pos] = 48 + v % 10
            v //= 10
            pos -= 1
            if v == 0:
                break
    return offsets, data


def _sides_signature() -> Any:
    """`string_sides`' signature: read-only int32 offsets and bytes (Arrow buffers)."""
    return nt.void(arr(nt.int32, True), arr(nt.uint8, True), arr(nt.int8))


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
