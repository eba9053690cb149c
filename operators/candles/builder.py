"""Multi-timeframe candles of one (exchange, symbol): accumulation plus the close policy.

`MultiTimeframeCandles` is plain numpy, independent of Bytewax, so the benchmark and the tests
drive it directly; `operators.candles.step` wraps it as a keyed Bytewax step.

Close policy (see README, "Candle semantics"):
- buckets are left-closed `[start, start + tf)`, aligned to the Unix epoch, by exchange time;
- the watermark is the largest exchange timestamp seen minus `allowed_lateness`; a candle
  closes once the watermark (or, in live mode, wall-clock time minus the lateness) reaches
  its end; `flush()` closes every open candle at the end of a replay;
- a trade whose candle has already closed is late: it is not merged into any other candle,
  and `add_trades` reports it per timeframe for the late output;
- intervals without trades between two candles (and up to the watermark) are filled with
  open = high = low = close = the previous close and volume 0, or skipped.

State is constant-size: per timeframe, the open candles (at most lateness / tf + 2 of them),
the end and close of the last emitted candle; per key, the watermark and a few pending gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from operators.candles.bars import Partials, bars_of_sorted, combine, merge
from operators.candles.kernels import fill_grid

NEG_INF = -(1 << 62)
_EMPTY = Partials.empty()  # shared, never written to
MAX_PENDING_GAPS = 32
#: Tag of the snapshot layout: coarser timeframes fed by their parent's closed bars, arrival
#: indices counted per key (see `add_trades`).
_SNAPSHOT_LAYOUT = "candles/2"


@dataclass(frozen=True)
class ClosePolicy:
    """When candles close. `allowed_lateness_us` delays closing so slightly out-of-order
    trades still count; `fill_empty` emits candles for intervals without trades."""

    allowed_lateness_us: int = 0
    fill_empty: bool = True

    def __post_init__(self) -> None:
        if self.allowed_lateness_us < 0:
            raise ValueError("allowed_lateness_us cannot be negative")


@dataclass(slots=True)
class ClosedCandles:
    """Candles of one timeframe closed by one call, oldest first (columnar)."""

    timeframe_us: int
    start: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    buy: np.ndarray
    sell: np.ndarray
    count: np.ndarray
    vwap: np.ndarray          # NaN for filled candles
    open_ts: np.ndarray       # int64; NEG_INF... replaced by null on output when filled
    close_ts: np.ndarray
    local_ts: np.ndarray
    is_filled: np.ndarray     # bool
    has_gap: np.ndarray       # bool

    def __len__(self) -> int:
        return len(self.start)


@dataclass(slots=True)
class LateTrades:
    """Indices (into the batch given to `add_trades`) of trades late for one timeframe."""

    timeframe_us: int
    index: np.ndarray
    watermark_us: int


@dataclass(slots=True)
class _Timeframe:
    tf: int
    open_bars: Partials
    last_end: int | None = None       # end of the last emitted candle
    last_close: float | None = None   # close of the last emitted candle


class MultiTimeframeCandles:
    """Candles for several timeframes of one instrument, from batches of trades."""

    def __init__(self, timeframes_us: Sequence[int], policy: ClosePolicy | None = None) -> None:
        tfs = sorted(int(t) for t in timeframes_us)
        if not tfs:
            raise ValueError("at least one timeframe is needed")
        if tfs[0] <= 0 or len(set(tfs)) != len(tfs):
            raise ValueError(f"timeframes must be positive and distinct, got {list(timeframes_us)}")
        self.policy = policy or ClosePolicy()
        self._tfs = [_Timeframe(tf, Partials.empty()) for tf in tfs]
        # A coarser timeframe is built from the finest one it is a multiple of.
        self._parent: list[int | None] = []
        for i, tf in enumerate(tfs):
            parent = next((j for j in range(i - 1, -1, -1) if tf % tfs[j] == 0), None)
            self._parent.append(parent)
        self.max_ts = NEG_INF          # largest exchange timestamp seen
        self.closed_until = NEG_INF    # every candle ending at or before this is closed
        self.gaps: list[tuple[int, int]] = []
        self.arrived = 0               # trades added so far: the next one's arrival index

    @property
    def timeframes_us(self) -> list[int]:
        return [t.tf for t in self._tfs]

    # -- input ----------------------------------------------------------------------------
    def add_trades(self, ts: np.ndarray, local_ts: np.ndarray, price: np.ndarray,
                   amount: np.ndarray, side: np.ndarray
                   ) -> tuple[list[ClosedCandles], list[LateTrades]]:
        """Add trades in arrival order; returns the candles this closes and the late trades.

        Trades go into the open bars of the root timeframes (those built from trades); a
        coarser timeframe takes its parent's bars when they close (see `_close_until`), plus
        the trades late for the parent but not for it. So a batch costs one timeframe's work
        however many timeframes there are, until something closes."""
        n = len(ts)
        if n == 0:
            return [], []
        lateness = self.policy.allowed_lateness_us
        in_order = bool(ts[0] >= self.max_ts and ts[0] >= self.closed_until
                        and np.all(ts[1:] >= ts[:-1]))
        if in_order:  # time-ordered input cannot be late: skip the per-trade checks
            closed_at = None
            latest = int(ts[-1])
        else:
            running = np.maximum.accumulate(ts)
            latest = int(running[-1])
            before = np.empty(n, np.int64)
            before[0] = self.max_ts
            np.maximum(running[:-1], self.max_ts, out=before[1:])
            # A trade is late when its candle closed before it arrived.
            closed_at = np.maximum(before - lateness, self.closed_until)
        first_arrival = self.arrived
        self.arrived += n
        arrival: np.ndarray | None = None

        lates: list[LateTrades] = []
        late_masks: list[np.ndarray | None] = []
        for i, tfs in enumerate(self._tfs):
            tf = tfs.tf
            parent = self._parent[i]
            late: np.ndarray | None = None
            if closed_at is not None:
                late = (ts - ts % tf) + tf <= closed_at
                if not late.any():
                    late = None
            late_masks.append(late)
            if late is not None:
                assert closed_at is not None
                lates.append(LateTrades(tf, np.flatnonzero(late), int(closed_at[late][0])))
            if parent is None:  # a root: every trade not late for it
                take: np.ndarray | None = ~late if late is not None else None
            else:  # late for the parent (so not in its bars) but not for this timeframe
                parent_late = late_masks[parent]
                if parent_late is None:
                    continue
                take = parent_late & ~late if late is not None else parent_late
                if not take.any():
                    continue
            if take is None and closed_at is None:  # in time order: one compiled pass
                tfs.open_bars = merge(tfs.open_bars, bars_of_sorted(
                    ts, local_ts, price, amount, side, tf, first_arrival))
                continue
            if arrival is None:
                arrival = np.arange(first_arrival, first_arrival + n, dtype=np.int64)
            if take is None:
                fresh = Partials.from_trades(ts - ts % tf, ts, local_ts, price, amount, side,
                                             arrival)
            else:
                xs = ts[take]
                fresh = Partials.from_trades(xs - xs % tf, xs, local_ts[take], price[take],
                                             amount[take], side[take], arrival[take])
            tfs.open_bars = merge(tfs.open_bars, combine(fresh))

        self.max_ts = max(self.max_ts, latest)
        threshold = max(self.closed_until, self.max_ts - lateness)
        return self._close_until(threshold, threshold), lates

    def mark_gap(self, start_us: int, end_us: int) -> None:
        """Remember a stretch with possibly missing data; candles it touches get has_gap."""
        if end_us < start_us:
            raise ValueError("a gap cannot end before it starts")
        self.gaps.append((int(start_us), int(end_us)))
        self.gaps.sort()
        if len(self.gaps) > MAX_PENDING_GAPS:  # merge the oldest two: bounded state
            (a0, a1), (b0, b1) = self.gaps[0], self.gaps[1]
            self.gaps[:2] = [(min(a0, b0), max(a1, b1))]

    def advance_to(self, now_us: int) -> list[ClosedCandles]:
        """Wall-clock close (live mode): close what ends at or before now - lateness."""
        threshold = max(self.closed_until, now_us - self.policy.allowed_lateness_us)
        return self._close_until(threshold, threshold)

    def flush(self) -> list[ClosedCandles]:
        """End of input: close every open candle (filling gaps between them, not beyond)."""
        return self._close_until(None, self.closed_until)

    def next_close_us(self) -> int | None:
        """Earliest wall-clock time at which `advance_to` could emit a candle, or None."""
        lateness = self.policy.allowed_lateness_us
        times = []
        for t in self._tfs:
            if len(t.open_bars):
                times.append(int(t.open_bars.start[0]) + t.tf + lateness)
            elif t.last_end is not None and self.policy.fill_empty:
                times.append(t.last_end + t.tf + lateness)
        return min(times) if times else None

    # -- closing ----------------------------------------------------------------------------
    def _close_until(self, threshold: int | None, closed_until: int) -> list[ClosedCandles]:
        """Close every timeframe up to `threshold` (None: through its last open bar, at the
        end of input), finest first: the real bars a timeframe closes go into the open bars
        of the timeframes built from it before those are closed."""
        if threshold is not None and not self._closes_by(threshold):
            # the usual live batch: nothing ends yet (skips a pass over every timeframe)
            self.closed_until = closed_until
            self._prune_gaps()
            return []
        out = []
        closed_real: list[Partials] = []
        for i, tfs in enumerate(self._tfs):
            parent = self._parent[i]
            if parent is not None and len(closed_real[parent]):
                pb = closed_real[parent]
                tfs.open_bars = merge(tfs.open_bars,
                                      combine(pb.with_start(pb.start - pb.start % tfs.tf)))
            if threshold is not None:
                at = threshold
            elif len(tfs.open_bars):
                at = int(tfs.open_bars.start[-1]) + tfs.tf
                closed_until = max(closed_until, at)
            else:
                closed_real.append(_EMPTY)
                continue
            c, real = self._close_timeframe(tfs, at)
            closed_real.append(real)
            if c is not None and len(c):
                out.append(c)
        self.closed_until = closed_until
        self._prune_gaps()
        return out

    def _closes_by(self, threshold: int) -> bool:
        """Whether closing up to `threshold` emits anything: some timeframe has an open bar
        ending at or before it, or (filling) an empty interval after its last candle does.
        A coarser timeframe only gets bars when its parent closes one, so the check is
        exact without the cascade."""
        fill = self.policy.fill_empty
        for t in self._tfs:
            if len(t.open_bars) and int(t.open_bars.start[0]) + t.tf <= threshold:
                return True
            if fill and t.last_end is not None and t.last_end + t.tf <= threshold:
                return True  # empty intervals before the first open bar are due
        return False

    def _prune_gaps(self) -> None:
        """Forget gaps that end before every timeframe's last closed interval."""
        if self.gaps:
            ends = [t.last_end for t in self._tfs if t.last_end is not None]
            if ends:
                horizon = min(ends)
                self.gaps = [g for g in self.gaps if g[1] >= horizon]

    def _close_timeframe(self, tfs: _Timeframe, threshold: int
                         ) -> tuple[ClosedCandles | None, Partials]:
        """(candles closed up to `threshold`, the real bars among them)."""
        tf = tfs.tf
        bars = tfs.open_bars
        if len(bars) and int(bars.start[0]) + tf > threshold:
            n_close = 0  # the usual case in live mode: nothing of this timeframe ends yet
        else:
            n_close = int(np.searchsorted(bars.start, threshold - tf, side="right"))
        if n_close == 0:
            real = _EMPTY
        elif n_close == len(bars):
            real, tfs.open_bars = bars, _EMPTY
        else:
            real = bars.take(slice(0, n_close))
            tfs.open_bars = bars.take(slice(n_close, None))
        if self.policy.fill_empty:
            lo = tfs.last_end if tfs.last_end is not None else (
                int(real.start[0]) if len(real) else None)
            if lo is None:
                return None, real
            hi = threshold - threshold % tf  # every bucket ending at or before the threshold
            if len(real):
                hi = max(hi, int(real.start[-1]) + tf)
            if hi <= lo:
                return None, real
            grid = np.arange(lo, hi, tf, dtype=np.int64)
        else:
            if not len(real):
                return None, real
            grid = real.start
        return self._emit(tfs, grid, real), real

    def _emit(self, tfs: _Timeframe, grid: np.ndarray, real: Partials) -> ClosedCandles:
        tf = tfs.tf
        prev = tfs.last_close if tfs.last_close is not None else np.nan
        # fill_grid reads the bars' first 13 columns, start to notional
        (open_, high, low, close, volume, buy, sell, count, vwap, open_ts, close_ts, local_ts,
         filled) = fill_grid(np.ascontiguousarray(grid, np.int64), *real.columns(13), prev)
        if len(grid) - int(np.count_nonzero(filled)) != len(real):  # never silently
            raise RuntimeError(f"{len(real)} closed {tf} us bars do not all start on the "
                               f"candle grid {grid[0]}..{grid[-1]}: candles would be lost")
        has_gap = np.zeros(len(grid), bool)
        for g0, g1 in self.gaps:
            has_gap |= (grid <= g1) & (grid + tf > g0)
        out = ClosedCandles(
            timeframe_us=tf, start=grid, open=open_, high=high, low=low, close=close,
            volume=volume, buy=buy, sell=sell, count=count, vwap=vwap, open_ts=open_ts,
            close_ts=close_ts, local_ts=local_ts, is_filled=filled, has_gap=has_gap,
        )
        tfs.last_end = int(grid[-1]) + tf
        tfs.last_close = float(close[-1])
        return out

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """A small immutable picklable value; its size does not grow with the input."""
        return (
            _SNAPSHOT_LAYOUT,
            self.max_ts,
            self.closed_until,
            tuple((t.tf, t.open_bars.to_tuple(), t.last_end, t.last_close) for t in self._tfs),
            tuple(self.gaps),
            self.arrived,
        )

    @classmethod
    def from_snapshot(cls, snap: tuple, policy: ClosePolicy) -> MultiTimeframeCandles:
        if not snap or snap[0] != _SNAPSHOT_LAYOUT:
            raise ValueError(
                "this candle state was saved by an earlier version of the candle step, whose "
                "coarser timeframes held their finer timeframe's open bars; it cannot be "
                "resumed exactly. Start the flow on a new recovery directory (replay the "
                "files from the last complete candle).")
        _, max_ts, closed_until, tfs, gaps, arrived = snap
        obj = cls([t[0] for t in tfs], policy)
        obj.max_ts, obj.closed_until, obj.gaps = max_ts, closed_until, list(gaps)
        obj.arrived = arrived
        for state, (_, bars, last_end, last_close) in zip(obj._tfs, tfs, strict=True):
            state.open_bars = Partials.from_tuple(bars)
            state.last_end, state.last_close = last_end, last_close
        return obj


#: Compatibility name from the original design: the multi-timeframe candle builder.
MultiTimeframeProcessor = MultiTimeframeCandles
