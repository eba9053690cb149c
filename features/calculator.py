"""`HFTFeatureCalculator`: the per-timeframe candle features, one compiled kernel
(`features.kernel`) for both the batch path (`compute_batch`, Arrow in and out) and the live
path (`compute_incremental`, one closed candle as a dict).

State per timeframe is constant-size: the last max(periods) closes, and for each period the
current EMA and Wilder average gain and loss. Every output value is computed by the same
sequence of float operations whatever the block boundaries (see `features.kernel`), so batch
over any chunking, candle-by-candle incremental and one call over the whole series agree
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from features.columns import feature_columns
from features.kernel import feature_block

#: Candle columns the kernel reads, in the order it takes them.
INPUT_COLUMNS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume",
                 "trade_count")

_NAN = float("nan")
Floats = NDArray[np.float64]
_F64 = pa.float64()


@dataclass(frozen=True)
class TimeframeSnapshot:
    """The state of one timeframe: last closes (oldest first, at most max(periods)), and per
    period (in sorted order) the EMA and Wilder average gain / loss, None until seeded."""

    closes: tuple[float, ...]
    ema: tuple[float | None, ...]
    avg_gain: tuple[float | None, ...]
    avg_loss: tuple[float | None, ...]


@dataclass(frozen=True)
class FeatureSnapshot:
    """The whole calculator's state: its periods and one `TimeframeSnapshot` per timeframe."""

    periods: tuple[int, ...]
    timeframes: tuple[tuple[str, TimeframeSnapshot], ...]


class _State:
    """Mutable per-timeframe state: the last closes (<= max period), the 3K recurrence values
    (EMAs, Wilder gains, Wilder losses; NaN until seeded) and whether all of them are seeded."""

    __slots__ = ("closes", "rec", "seeded")

    def __init__(self, closes: Floats, rec: Floats) -> None:
        self.closes = closes
        self.rec = rec
        self.seeded = not bool(np.isnan(rec).any())


def _validate_periods(periods: Iterable[int]) -> tuple[int, ...]:
    try:
        values = tuple(periods)
    except TypeError:
        raise ValueError(f"periods must be a sequence of ints, got {periods!r}") from None
    if not values:
        raise ValueError("periods must not be empty")
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int | np.integer):
            raise ValueError(f"periods must be ints, got {p!r} in {values!r}")
        if p < 2:
            raise ValueError(f"every period must be >= 2, got {p} in {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"periods must be distinct, got {values!r}")
    return tuple(sorted(int(p) for p in values))


def _to_arrow(feats: Floats) -> list[pa.Array]:
    """Feature rows as float64 Arrow arrays, NaN as null, zero-copy over the rows of `feats`
    (each array owns just its row's bytes, so a pickled column stays its own size)."""
    rows, m = feats.shape
    undefined = np.isnan(feats)
    nulls = undefined.sum(axis=1).tolist()
    valid = np.packbits(~undefined, axis=1, bitorder="little")
    return [pa.Array.from_buffers(_F64, m, [pa.py_buffer(valid[i]) if nulls[i] else None,
                                            pa.py_buffer(feats[i])], nulls[i])
            for i in range(rows)]


def _opt(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


class HFTFeatureCalculator:
    """Windowed and per-candle features of closed candles, kept per timeframe.

    Per timeframe and period N: sma_N (mean of the last N closes), ema_N (alpha 2/(N+1), seeded
    with the SMA of the first N closes), rsi_N (Wilder, seeded with the mean of the first N gains
    and losses; 0 when both averages are 0) and price_volatility_N (population std of the last N
    log returns). Per candle: log_return, volume_imbalance, avg_trade_size, hl_range. Undefined
    values are null (None).
    """

    def __init__(self, periods: Sequence[int] = (5, 10, 20)) -> None:
        self.periods: tuple[int, ...] = _validate_periods(periods)
        self.columns: tuple[str, ...] = tuple(feature_columns(self.periods))
        self._max = self.periods[-1]
        n = np.asarray(self.periods, dtype=np.float64)
        alpha = 2.0 / (n + 1.0)
        self._periods = np.asarray(self.periods, dtype=np.int64)
        # Recurrence series: K EMAs on closes, K Wilder gains, K Wilder losses.
        self._b = np.concatenate([alpha, 1.0 / n, 1.0 / n])
        self._c = np.concatenate([1.0 - alpha, (n - 1.0) / n, (n - 1.0) / n])
        self._no_seed = (np.full(3 * len(self.periods), _NAN),
                         np.full(3 * len(self.periods), -1, dtype=np.int64))
        self._fields = [pa.field(name, _F64) for name in self.columns]
        self._states: dict[str, _State] = {}
        self._layout_cache: tuple[pa.Schema, pa.Schema, tuple[str, ...]] | None = None

    # -- state ------------------------------------------------------------------------------

    def timeframes(self) -> tuple[str, ...]:
        """The timeframes that have state, in first-seen order."""
        return tuple(self._states)

    def snapshot(self) -> FeatureSnapshot:
        """An immutable, picklable copy of the state; its size does not grow with the stream."""
        k = len(self.periods)
        out = []
        for tf, st in self._states.items():
            rec = [_opt(v) for v in st.rec.tolist()]
            out.append((tf, TimeframeSnapshot(
                closes=tuple(st.closes.tolist()),
                ema=tuple(rec[:k]), avg_gain=tuple(rec[k:2 * k]), avg_loss=tuple(rec[2 * k:]))))
        return FeatureSnapshot(periods=self.periods, timeframes=tuple(out))

    @classmethod
    def from_snapshot(cls, snap: FeatureSnapshot) -> HFTFeatureCalculator:
        """A calculator that continues exactly where the one that took `snap` stood."""
        if not isinstance(snap, FeatureSnapshot):
            raise TypeError(f"expected a FeatureSnapshot, got {type(snap).__name__}")
        calc = cls(snap.periods)
        if calc.periods != tuple(snap.periods):
            raise ValueError(f"snapshot periods {snap.periods!r} are not sorted and distinct")
        for tf, ts in snap.timeframes:
            calc._states[tf] = calc._restore(tf, ts)
        return calc

    def _restore(self, tf: str, ts: TimeframeSnapshot) -> _State:
        """The state of one timeframe from its snapshot, checked for consistency."""
        if not isinstance(tf, str) or not tf:
            raise ValueError(f"snapshot timeframe must be a non-empty string, got {tf!r}")
        k, big_p = len(self.periods), self._max
        known = len(ts.closes)
        if known > big_p:
            raise ValueError(f"snapshot of {tf!r} holds {known} closes, more than "
                             f"max(periods)={big_p}")
        closes = np.array(ts.closes, dtype=np.float64)
        if not ((closes > 0.0) & (closes < math.inf)).all():
            raise ValueError(f"snapshot of {tf!r} has a close that is not finite and > 0")
        if not (len(ts.ema) == len(ts.avg_gain) == len(ts.avg_loss) == k):
            raise ValueError(f"snapshot of {tf!r} must hold {k} values per average")
        for j, n in enumerate(self.periods):
            values = {"ema": ts.ema[j], "avg_gain": ts.avg_gain[j], "avg_loss": ts.avg_loss[j]}
            for name, value in values.items():
                if value is not None and not (math.isfinite(value) and
                                              (name == "ema" or value >= 0.0)):
                    raise ValueError(f"snapshot of {tf!r}: {name} of period {n} is {value!r}")
            # The EMA seeds at the N-th close, Wilder at the (N+1)-th; with a full buffer of
            # N == max(periods) closes, Wilder's may or may not have seeded yet.
            if (ts.ema[j] is not None) != (known >= n):
                raise ValueError(f"snapshot of {tf!r}: ema of period {n} is inconsistent "
                                 f"with {known} closes")
            wilder = (ts.avg_gain[j] is not None, ts.avg_loss[j] is not None)
            if wilder[0] != wilder[1] or (wilder[0] != (known >= n + 1) and known < big_p):
                raise ValueError(f"snapshot of {tf!r}: Wilder averages of period {n} are "
                                 f"inconsistent with {known} closes")
        rec = np.array([_NAN if v is None else v
                        for v in (*ts.ema, *ts.avg_gain, *ts.avg_loss)], dtype=np.float64)
        return _State(closes, rec)

    def _state(self, timeframe: str) -> _State:
        """The timeframe's state; a new one is kept only once a block went through."""
        st = self._states.get(timeframe)
        if st is None:
            if not isinstance(timeframe, str) or not timeframe:
                raise ValueError(f"timeframe must be a non-empty string, got {timeframe!r}")
            st = _State(np.empty(0), np.full(3 * len(self.periods), _NAN))
        return st

    # -- the kernel -------------------------------------------------------------------------

    def _kernel(self, st: _State, v: Floats) -> Floats:
        """Features of a block. `v` is (8, m): the INPUT_COLUMNS as float rows. Returns
        (len(columns), m) with NaN where undefined, and advances `st`."""
        if not np.isfinite(v).all():
            row, i = (int(a[0]) for a in np.nonzero(~np.isfinite(v)))
            raise ValueError(f"candle {i}: {INPUT_COLUMNS[row]} is {float(v[row, i])} "
                             "(null, NaN or infinite)")
        close = v[3]
        if not np.minimum.reduce(close) > 0.0:
            i = int(np.flatnonzero(close <= 0.0)[0])
            raise ValueError(f"candle {i}: close must be > 0, got {float(close[i])}")
        big_p, k, m = self._max, len(self.periods), close.size
        known = st.closes.size
        x = np.empty(big_p + m)  # closes: history (NaN where unknown), then the block's
        x[:big_p - known] = _NAN
        x[big_p - known:big_p] = st.closes
        x[big_p:] = close
        ret = np.divide(x[1:], x[:-1])
        np.log(ret, out=ret)
        if st.seeded:
            seed, seed_at = self._no_seed
        else:
            seed, seed_at = self._seeds(x, known, m)
        out = np.empty((4 + 4 * k, m))
        rec = st.rec.copy()  # advanced in place by the kernel
        feature_block(v, x, ret, rec, self._periods, self._b, self._c, seed, seed_at, out)
        st.rec = rec
        keep = min(big_p, known + m)
        st.closes = (close[m - keep:].copy() if keep <= m
                     else np.concatenate((st.closes[known + m - keep:], close)))
        if not st.seeded:
            st.seeded = not bool(np.isnan(rec).any())
        return out

    def _seeds(self, c: Floats, known: int, m: int) -> tuple[Floats, NDArray[np.int64]]:
        """Seeds and their block positions for a warm-up block: the EMA seeds with the SMA at
        the N-th close (taken by the kernel: seed NaN), Wilder's averages with the mean of the
        first N gains / losses (exact `math.fsum`) at the (N+1)-th close. `c` holds the
        max(periods) closes before the block (NaN where unknown) and the block's closes."""
        k = len(self.periods)
        seed = np.full(3 * k, _NAN)
        seed_at = np.full(3 * k, -1, dtype=np.int64)
        offset = self._max - known  # index in c of the first close ever seen
        for j, n in enumerate(self.periods):
            p = n - 1 - known  # block position of the N-th close
            if 0 <= p < m:
                seed_at[j] = p
            p += 1  # block position of the (N+1)-th close
            if 0 <= p < m:
                d = np.diff(c[offset:offset + n + 1]).tolist()
                seed[k + j] = math.fsum(g for g in d if g > 0.0) / n
                seed[2 * k + j] = math.fsum(-g for g in d if g < 0.0) / n
                seed_at[k + j] = seed_at[2 * k + j] = p
        return seed, seed_at

    # -- public API -------------------------------------------------------------------------

    def compute_batch(self, candles: pa.Table | pa.RecordBatch, *, timeframe: str) -> pa.Table:
        """Features of a block of closed candles of one (exchange, symbol, timeframe), oldest
        first, continuing from and advancing this timeframe's state. Returns the input columns
        (minus any stale feature columns of the same names) followed by the feature columns."""
        out_schema, stale = self._layout(candles.schema)
        feats = self._features(candles, timeframe)
        table = candles if isinstance(candles, pa.Table) else pa.Table.from_batches([candles])
        if stale:
            table = table.drop_columns(list(stale))
        return pa.Table.from_arrays([*table.columns, *feats], schema=out_schema)

    def compute_record_batch(self, candles: pa.RecordBatch, *, timeframe: str
                             ) -> pa.RecordBatch:
        """`compute_batch` for a RecordBatch, returning one (no Table in between: the flow's
        features step calls this for every candle batch)."""
        out_schema, stale = self._layout(candles.schema)
        if stale:
            return self.compute_batch(candles, timeframe=timeframe).combine_chunks(
                ).to_batches()[0]
        return pa.RecordBatch.from_arrays([*candles.columns, *self._features(candles, timeframe)],
                                          schema=out_schema)

    def _features(self, candles: pa.Table | pa.RecordBatch, timeframe: str) -> list[pa.Array]:
        """The feature columns of a block (advancing the timeframe's state)."""
        st = self._state(timeframe)
        m = candles.num_rows
        if m:
            v = np.empty((len(INPUT_COLUMNS), m))
            for i, name in enumerate(INPUT_COLUMNS):
                v[i] = candles.column(name).to_numpy(zero_copy_only=False)  # null -> NaN
            feats = self._kernel(st, v)
            self._states[timeframe] = st
        else:
            feats = np.empty((len(self.columns), 0))
        return _to_arrow(feats)

    def _layout(self, schema: pa.Schema) -> tuple[pa.Schema, tuple[str, ...]]:
        """The output schema for an input schema, and the input's stale feature columns.
        Cached for the last input schema: a stream sends the same one every time."""
        cached = self._layout_cache
        if cached is not None and cached[0].equals(schema, check_metadata=True):
            return cached[1], cached[2]
        missing = [c for c in INPUT_COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"candles lack column(s) {missing}; need {list(INPUT_COLUMNS)}")
        for name in INPUT_COLUMNS:
            typ = schema.field(name).type
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
                raise ValueError(f"candle column {name!r} must be numeric, not {typ}")
        stale = tuple(n for n in schema.names if n in self.columns)
        kept = [f for f in schema if f.name not in stale]
        out = pa.schema([*kept, *self._fields], metadata=schema.metadata)
        self._layout_cache = (schema, out, stale)
        return out, stale

    def compute_incremental(self, candle: Mapping[str, float | None], *,
                            timeframe: str) -> dict[str, float | None]:
        """Features of one closed candle (a mapping with the INPUT_COLUMNS keys; None, NaN or
        infinite values are rejected like nulls in `compute_batch`), advancing this timeframe's
        state: the same kernel as `compute_batch`, on a block of one."""
        try:
            row = [candle[name] for name in INPUT_COLUMNS]
        except KeyError:
            missing = [c for c in INPUT_COLUMNS if c not in candle]
            raise ValueError(f"candle lacks key(s) {missing}; need {list(INPUT_COLUMNS)}"
                             ) from None
        st = self._state(timeframe)
        feats = self._kernel(st, np.array(row, dtype=np.float64)[:, None])  # None -> NaN
        self._states[timeframe] = st
        return {name: (None if value != value else value)
                for name, value in zip(self.columns, feats[:, 0].tolist(), strict=True)}
