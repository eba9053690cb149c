"""The feature kernel, compiled: one pass over a block of candles of one timeframe.

`HFTFeatureCalculator` calls it for every closed candle batch. Written as plain loops and
compiled by numba (cached on disk, the GIL released), so a block of a few candles costs
microseconds instead of the fixed cost of some forty numpy calls, and the flow's other
threads run meanwhile.

Every output value is produced by one fixed sequence of float operations that depends only on
the data, never on where a block starts or how long it is:
- a window mean adds the window's values newest first, strictly sequentially, then divides by N;
- a recurrence (EMA, Wilder's average) is y = b*u + c*y_prev, each product rounded, then the
  sum;
so a block of one candle gives the same bits as the same candle inside a long block, which is
what makes `compute_batch` over any chunking equal `compute_incremental` candle by candle.

Output rows (features.columns order): log_return, volume_imbalance, avg_trade_size,
hl_range, then sma, ema, rsi and price_volatility for each period.
"""

from __future__ import annotations

import math

import numpy as np

from features.jit import compiled

#: Rows of the kernel's input block `v`, in order (see features.calculator.INPUT_COLUMNS).
OPEN, HIGH, LOW, CLOSE, VOLUME, BUY, SELL, TRADES = range(8)


#: The one signature, compiled (or loaded from numba's on-disk cache) at import, so the
#: first candle of a run does not wait for the compiler: float64 C-contiguous arrays, int64
#: periods and seed positions.
_SIGNATURE = ("void(f8[:, ::1], f8[::1], f8[::1], f8[::1], i8[::1], f8[::1], f8[::1], "
              "f8[::1], i8[::1], f8[:, ::1])")


@compiled(_SIGNATURE)
def feature_block(v: np.ndarray, x: np.ndarray, ret: np.ndarray, rec: np.ndarray,
                  periods: np.ndarray, b: np.ndarray, c: np.ndarray, seed: np.ndarray,
                  seed_at: np.ndarray, out: np.ndarray
                  ) -> None:  # pragma: no cover - compiled; tested through the calculator
    """Features of the block `v` (8, m) into `out` (4 + 4K, m); advances `rec` in place.

    `x` holds max(periods) closes before the block (oldest first, NaN where unknown), then
    the block's closes; `ret[i]` is log(x[i + 1] / x[i]) (numpy's log, computed by the caller,
    so the values are those of the earlier all-numpy kernel bit for bit).
    `rec` (3K) holds the K EMAs, K Wilder average gains and K average losses before the block
    (NaN while not seeded). A series r that is not seeded takes its seed at block position
    `seed_at[r]` (-1: not in this block): `seed[r]`, or for an EMA (r < K) the period's SMA
    at that position.
    """
    k = periods.shape[0]
    m = v.shape[1]
    big_p = x.shape[0] - m
    sq = np.empty(ret.shape[0])  # squared log returns; ret[i - 1] is the return into x[i]
    for i in range(ret.shape[0]):
        sq[i] = ret[i] * ret[i]
    for i in range(m):
        pos = big_p + i
        close = x[pos]
        out[0, i] = ret[pos - 1]
        vol = v[VOLUME, i]
        trades = v[TRADES, i]
        out[1, i] = (v[BUY, i] - v[SELL, i]) / vol if vol != 0.0 else np.nan
        out[2, i] = vol / trades if trades != 0.0 else np.nan
        out[3, i] = (v[HIGH, i] - v[LOW, i]) / close
        for j in range(k):
            n = periods[j]
            s0 = x[pos]
            s1 = ret[pos - 1]
            s2 = sq[pos - 1]
            for back in range(1, n):
                s0 += x[pos - back]
                if pos - back >= 1:
                    s1 += ret[pos - back - 1]
                    s2 += sq[pos - back - 1]
                else:  # the return into the first history close is unknown
                    s1 = np.nan
                    s2 = np.nan
            sma = s0 / n
            m1 = s1 / n
            var = s2 / n - m1 * m1
            if var < 0.0:
                var = 0.0
            out[4 + j, i] = sma
            out[4 + 3 * k + j, i] = math.sqrt(var)
        d = close - x[pos - 1]
        if d != d:
            gain = np.nan
        elif d > 0.0:
            gain = d
        else:
            gain = 0.0
        loss = gain - d  # max(-d, 0), exactly
        for r in range(3 * k):
            if r < k:
                u = close
            elif r < 2 * k:
                u = gain
            else:
                u = loss
            prev = rec[r]
            if prev != prev and seed_at[r] == i:
                y = out[4 + r, i] if r < k else seed[r]
            else:
                y = b[r] * u + c[r] * prev
            rec[r] = y
            if r < k:
                out[4 + k + r, i] = y
        for j in range(k):
            g = rec[k + j]
            total = g + rec[2 * k + j]
            if total == 0.0:
                total = 1.0  # RSI is 0 when both averages are 0 (TA-Lib's rule)
            out[4 + 2 * k + j, i] = g / total * 100.0
