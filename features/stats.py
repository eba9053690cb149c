"""Vectorised building blocks of the feature kernel: rolling window sums and seeded recurrences.

Both are written so that every output value is produced by one fixed sequence of floating-point
operations that depends only on the data, never on where a block starts or how long it is. That
is what makes `compute_batch` over any chunking bit-identical to one call over the whole series,
and a one-candle block identical to a long one: each function has a small-block and a
large-block strategy, and both perform exactly the same additions and multiplications.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.signal import lfilter

Floats = NDArray[np.float64]

#: Blocks up to this many positions take the small-block path of `window_sums`.
SMALL_BLOCK = 16
#: Blocks up to this many positions take the fused-step path of `seeded_recurrence`.
SMALL_RECURRENCE = 32


def window_sums(x: Floats, lookback: int, lengths: Sequence[int]) -> Floats:
    """Sums of the last N values ending at each of the newest positions, for every N in `lengths`.

    `x` has shape (rows, lookback + m): the last m columns are the positions to compute, preceded
    by `lookback` columns of history (NaN where the history is unknown, which makes every window
    that reaches it NaN). Returns shape (len(lengths), rows, m). Each window is added newest
    value first, strictly sequentially, so a value never depends on the block it was computed in.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, lookback + m), got shape {x.shape}")
    longest = max(lengths)
    if min(lengths) < 1 or longest > lookback + 1:
        raise ValueError(f"window lengths must be in [1, lookback + 1 = {lookback + 1}], "
                         f"got {tuple(lengths)}")
    rows, width = x.shape
    m = width - lookback
    if m < 0:
        raise ValueError(f"x has {width} columns, fewer than lookback={lookback}")
    if m == 0:
        return np.empty((len(lengths), rows, 0))
    if m <= SMALL_BLOCK:
        # One reversed window view (rows, m, longest): view[r, i, k] = x[r, lookback + i - k];
        # accumulate is sequential by definition, in the same order as the shifted adds below.
        x = np.ascontiguousarray(x, dtype=np.float64)
        item = x.itemsize
        view = np.ndarray((rows, m, longest), dtype=np.float64, buffer=x,
                          offset=lookback * item, strides=(width * item, item, -item))
        acc = np.add.accumulate(view, axis=2)
        return acc[:, :, [n - 1 for n in lengths]].transpose(2, 0, 1)
    out = np.empty((len(lengths), rows, m))
    acc = x[:, lookback:].copy()
    wanted = {n: j for j, n in enumerate(lengths)}
    for k in range(longest):
        if k:
            acc += x[:, lookback - k:lookback - k + m]
        j = wanted.get(k + 1)
        if j is not None:
            out[j] = acc
    return out


def seeded_recurrence(x: Floats, src: NDArray[np.intp], b: Floats, c: Floats, prev: Floats,
                      seed: Floats | None = None,
                      seed_at: NDArray[np.intp] | None = None) -> Floats:
    """First-order recurrences y[k] = b*u[k] + c*y[k-1], one per series, over a block.

    Series r reads its input u from row `src[r]` of `x` (rows, m) and has coefficients b[r],
    c[r]. `prev[r]` is its value before the block, NaN while it is not seeded; then y stays NaN
    until block position `seed_at[r]`, where y = seed[r] (a position outside [0, m) means the
    seed is not in this block). This is an EMA seeded with an SMA, or Wilder's average seeded
    with a plain mean. With `seed` None no series gets seeded in this block (the steady state,
    where every series already is). Short blocks take fused steps over all series; longer
    ones run `scipy.signal.lfilter` (direct form II transposed), which computes the same
    b*u + c*y_prev, so both paths give identical bits. Returns shape (series, m).
    """
    rows = src.shape[0]
    m = x.shape[1]
    if not (b.shape == c.shape == prev.shape == (rows,)):
        raise ValueError("src, b, c and prev must have one value per series")
    if (seed is None) != (seed_at is None):
        raise ValueError("give both seed and seed_at, or neither")
    if seed is not None and seed_at is not None and not seed.shape == seed_at.shape == (rows,):
        raise ValueError("seed and seed_at must have one value per series")
    if m == 0:
        return np.empty((rows, 0))
    if m <= SMALL_RECURRENCE:
        # Fused steps over all series, one block position at a time: the same b*u + c*y_prev
        # as lfilter, so identical bits, without its fixed cost per call. A series that is
        # not seeded stays NaN (NaN * c propagates) until its seed position.
        u = x[src]
        y = np.empty((rows, m))
        prev_y = prev
        seeding = None
        if seed is not None and seed_at is not None:
            seeding = np.isnan(prev) & (seed_at >= 0) & (seed_at < m)
            if not seeding.any():
                seeding = None
        for k in range(m):
            yk = y[:, k]
            np.multiply(b, u[:, k], out=yk)
            yk += c * prev_y
            if seeding is not None:
                at = seeding & (seed_at == k)
                if at.any():
                    yk[at] = seed[at]  # type: ignore[index]
            prev_y = yk
        return y
    y = np.empty((rows, m))
    # Series with the same coefficients and start share one lfilter call.
    groups: dict[tuple[float, float, int], tuple[list[int], list[float]]] = {}
    for r in range(rows):
        if not np.isnan(prev[r]):
            start, zi = 0, c[r] * prev[r]
        elif seed is None or seed_at is None:
            y[r] = np.nan
            continue
        else:
            p = int(seed_at[r])
            if not 0 <= p < m:
                y[r] = np.nan
                continue
            y[r, :p] = np.nan
            y[r, p] = seed[r]
            start, zi = p + 1, c[r] * seed[r]
        if start < m:
            members, zis = groups.setdefault((float(b[r]), float(c[r]), start), ([], []))
            members.append(r)
            zis.append(zi)
    for (bk, ck, start), (members, zis) in groups.items():
        out, _ = lfilter([bk], [1.0, -ck], x[src[members], start:], axis=1,
                         zi=np.asarray(zis)[:, None])
        y[members, start:] = out
    return y
