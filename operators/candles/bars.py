"""Bar accumulation: trades and partial bars combined per interval, vectorised.

A `Partials` is a columnar set of partial bars, each keyed by its interval start. A single
trade is a partial bar of one trade, a closed-over-time open bar is a partial bar, and a
finer timeframe's bars are partial bars of a coarser one, so one `combine` builds every
timeframe. Arrival order decides the open (the first trade to arrive) and breaks ties of the
close (the latest exchange timestamp; among equals, the last to arrive), exactly as tardis-dev's
`computeTradeBars` does on time-ordered trades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.candles import kernels
from operators.candles.kernels import combine_sorted, sorted_bars

SIDE_UNKNOWN, SIDE_BUY, SIDE_SELL = kernels.SIDE_UNKNOWN, kernels.SIDE_BUY, kernels.SIDE_SELL


@dataclass(slots=True)
class Partials:
    """Columnar partial bars. `first_idx`/`close_idx` are the arrival indices (per key, from
    0) of the trades that set the open and the close."""

    start: np.ndarray       # int64 interval start, us
    open: np.ndarray        # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    open_ts: np.ndarray     # int64 exchange time of the opening trade
    close_ts: np.ndarray    # int64 exchange time of the closing trade
    local_ts: np.ndarray    # int64 latest receive time
    volume: np.ndarray
    buy: np.ndarray
    sell: np.ndarray
    count: np.ndarray       # int64
    notional: np.ndarray    # sum(price * amount), for vwap
    first_idx: np.ndarray   # int64
    close_idx: np.ndarray   # int64

    def __len__(self) -> int:
        return len(self.start)

    @staticmethod
    def empty() -> Partials:
        f, i = np.empty(0, np.float64), np.empty(0, np.int64)
        return Partials(i, f, f, f, f, i, i, i, f, f, f, i, f, i, i)

    @staticmethod
    def from_trades(start: np.ndarray, ts: np.ndarray, local_ts: np.ndarray,
                    price: np.ndarray, amount: np.ndarray, side: np.ndarray,
                    arrival: np.ndarray) -> Partials:
        """One partial bar per trade."""
        buy = np.where(side == SIDE_BUY, amount, 0.0)
        sell = np.where(side == SIDE_SELL, amount, 0.0)
        return Partials(start, price, price, price, price, ts, ts, local_ts, amount, buy, sell,
                        np.ones(len(start), np.int64), price * amount, arrival, arrival)

    def take(self, idx: np.ndarray | slice) -> Partials:
        return Partials(*(getattr(self, f)[idx] for f in _FIELDS))

    def with_start(self, start: np.ndarray) -> Partials:
        """The same bars under other starts (arrays are shared, never written in place)."""
        return Partials(start, *(getattr(self, f) for f in _FIELDS[1:]))

    def columns(self, count: int | None = None) -> tuple[np.ndarray, ...]:
        """The first `count` columns (all by default) as C-contiguous arrays of their dtypes,
        as the compiled kernels take them."""
        return tuple(np.ascontiguousarray(getattr(self, f), _DTYPES[f])
                     for f in _FIELDS[:count])

    def to_tuple(self) -> tuple[tuple, ...]:
        """A small immutable picklable value (for snapshots)."""
        return tuple(tuple(getattr(self, f).tolist()) for f in _FIELDS)

    @staticmethod
    def from_tuple(t: tuple[tuple, ...]) -> Partials:
        return Partials(*(np.asarray(v, dtype=_DTYPES[f]) for f, v in zip(_FIELDS, t,
                                                                         strict=True)))


_FIELDS = tuple(Partials.__slots__)  # type: ignore[attr-defined]
_DTYPES = {f: (np.float64 if f in {"open", "high", "low", "close", "volume", "buy", "sell",
                                     "notional"} else np.int64) for f in _FIELDS}


def concat(parts: list[Partials]) -> Partials:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Partials.empty()
    if len(parts) == 1:
        return parts[0]
    return Partials(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


def merge(open_bars: Partials, fresh: Partials) -> Partials:
    """Open bars combined with fresh ones (arrival indices decide open and close ties); both
    sorted with distinct starts. The usual live case, fresh bars at or after the last open
    bar, takes a short path; anything else goes through `combine`."""
    if not len(fresh):
        return open_bars
    if not len(open_bars):
        return fresh
    last = open_bars.start[-1]
    first = fresh.start[0]
    if first > last:
        return concat([open_bars, fresh])
    if first == last and (len(fresh) == 1 or fresh.start[1] > last):
        head = _merge_one(open_bars, len(open_bars) - 1, fresh, 0)
        return concat([head, fresh.take(slice(1, None))]) if len(fresh) > 1 else head
    return combine(concat([open_bars, fresh]))


def _merge_one(o: Partials, i: int, f: Partials, j: int) -> Partials:
    """`o` with its bar i merged with bar j of `f` (same start; f's trades arrived later)."""
    out = Partials(*(getattr(o, name).copy() for name in _FIELDS))
    out.high[i] = max(o.high[i], f.high[j])
    out.low[i] = min(o.low[i], f.low[j])
    if f.first_idx[j] < o.first_idx[i]:
        out.open[i], out.open_ts[i], out.first_idx[i] = f.open[j], f.open_ts[j], f.first_idx[j]
    if (f.close_ts[j], f.close_idx[j]) >= (o.close_ts[i], o.close_idx[i]):
        out.close[i], out.close_ts[i], out.close_idx[i] = (f.close[j], f.close_ts[j],
                                                           f.close_idx[j])
    out.local_ts[i] = max(o.local_ts[i], f.local_ts[j])
    out.volume[i] += f.volume[j]
    out.buy[i] += f.buy[j]
    out.sell[i] += f.sell[j]
    out.count[i] += f.count[j]
    out.notional[i] += f.notional[j]
    return out


def combine(p: Partials) -> Partials:
    """Combine partial bars with the same start into one bar each, sorted by start (one
    compiled pass, `kernels.combine_sorted`, after a stable sort when needed)."""
    n = len(p)
    if n <= 1:
        return p
    start = p.start
    if np.any(start[1:] < start[:-1]):
        p = p.take(np.argsort(start, kind="stable"))
    elif not np.any(start[1:] == start[:-1]):  # every start distinct: nothing to combine
        return p
    return Partials(*combine_sorted(*p.columns()))


def bars_of_sorted(ts: np.ndarray, local_ts: np.ndarray, price: np.ndarray,
                   amount: np.ndarray, side: np.ndarray, tf: int, first_arrival: int
                   ) -> Partials:
    """`combine(Partials.from_trades(...))` for trades in exchange-time order (not
    decreasing, arrival indices from `first_arrival` on) of one timeframe `tf`, in one
    compiled pass: each bar opens with its first trade and closes with its last, which is
    what `combine` picks for such trades; sums are added in trade order."""
    if not len(ts):
        return Partials.empty()
    i8, f8 = np.int64, np.float64
    return Partials(*sorted_bars(
        np.ascontiguousarray(ts, i8), np.ascontiguousarray(local_ts, i8),
        np.ascontiguousarray(price, f8), np.ascontiguousarray(amount, f8),
        np.ascontiguousarray(side, np.int8), int(tf), int(first_arrival)))
