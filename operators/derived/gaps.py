"""gaps: stretches of time in which a (exchange, symbol) may be missing data.

Three kinds, all emitted as `Gap` items (the candle step marks the candles they touch; the
ticks_gaps table gets one row each, see operators.derived.rows):
- trade-id gaps, on exchanges whose trade ids are contiguous integers per symbol (Binance):
  a trade whose id exceeds the largest id seen so far by more than one means the ids between
  are missing. Reason "trade_id_gap: N missing ids (first..last)"; the gap runs from the
  exchange time of the previous trade to that of this one. Ids that are not integers (BitMEX
  and Bybit UUIDs) are skipped; an id at or below the largest seen (a duplicate or a late
  trade) is not a gap. tardis-dev drops Binance's off-book trades (insurance fund, ADL), so a
  small id gap there is not always lost data: `min_missing_ids` sets the smallest gap reported.
- time gaps, per data type with a bound: a row whose exchange timestamp is more than the
  bound after the latest timestamp seen before it. Reason "time_gap: 312.4 s without trades".
  A silence is only seen when data resumes; a quiet market can cause one (set bounds per
  data type with that in mind).
- disconnects: `Gap` items from the source (WebSocket drops, tardis-machine disconnect
  messages, restarts) pass through unchanged. A disconnect and the silence it causes may
  both be reported, under their own reasons.

Detection is one compiled pass per batch (operators.derived.kernels; a few rows go row by row
in plain Python); per key the state is the largest trade id, the timestamp of the last trade,
and the latest timestamp per data type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import StatefulBatchLogic

from connectors.tardis.datatypes import route_of
from dataflows.config import DerivedConfig
from operators.derived.common import DERIVED_ROWS, int_column
from operators.derived.kernels import decimal_ids, id_gaps, silences
from operators.messages import Gap, TickBatch

GapIn = TickBatch | Gap
GapOut = TickBatch | Gap
_MAX_ID = 10**18  # ids have at most 18 digits, so every one fits in int64
#: Batches up to this many rows are checked row by row in plain Python: a live micro-batch
#: holds a few rows, and the vectorised path's dozen numpy calls cost more than the rows.
_SMALL = 128  # measured crossover: ~150 rows


@dataclass(frozen=True, slots=True)
class DetectedGaps:
    """Gaps found in one batch: [start_us, end_us] and a reason each, oldest first."""

    start_us: np.ndarray
    end_us: np.ndarray
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.reasons)

    @staticmethod
    def empty() -> DetectedGaps:
        return DetectedGaps(np.empty(0, np.int64), np.empty(0, np.int64), [])


def integer_ids(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids, mask of the rows they come from); rows whose id is null or not a plain
    non-negative integer of at most 18 digits are left out. Strings are read from their
    buffers in one compiled pass (`kernels.decimal_ids`)."""
    if pa.types.is_integer(ids.type):
        wide = pa.uint64() if pa.types.is_unsigned_integer(ids.type) else pa.int64()
        ids = ids.cast(wide)
        in_range = pc.and_(pc.greater_equal(ids, pa.scalar(0, wide)),
                           pc.less(ids, pa.scalar(_MAX_ID, wide)))
        ok = np.asarray(pc.fill_null(in_range, False))
        return np.asarray(ids.filter(pa.array(ok)).cast(pa.int64())), ok
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    n = len(ids)
    values = np.empty(n, np.int64)
    ok = np.empty(n, bool)
    if not n:
        return values, ok
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, ids.offset * 4)
    data = (np.frombuffer(data_buf, np.uint8) if data_buf is not None and data_buf.size
            else np.zeros(1, np.uint8))
    valid = np.asarray(ids.is_valid()) if ids.null_count else np.ones(n, bool)
    decimal_ids(offsets, data, valid, values, ok)
    return (values if ok.all() else values[ok]), ok


def _id_gap_reason(first: int, missing: int) -> str:
    if missing == 1:
        return f"trade_id_gap: 1 missing id ({first})"
    return f"trade_id_gap: {missing} missing ids ({first}..{first + missing - 1})"


def _silence_reason(silence_us: int, data_type: str) -> str:
    return f"time_gap: {silence_us / 1e6:.1f} s without {data_type}"


class TradeIdGapDetector:
    """Trade-id gaps of one (exchange, symbol): ids must be contiguous integers."""

    def __init__(self, min_missing: int = 1, state: tuple[int, int] | None = None) -> None:
        if min_missing < 1:
            raise ValueError(f"min_missing must be at least 1, got {min_missing!r}")
        self.min_missing = int(min_missing)
        self._state = state  # (largest id seen, exchange timestamp of the last trade)

    def snapshot(self) -> tuple[int, int] | None:
        return self._state

    def add(self, ts: np.ndarray, ids: pa.Array) -> DetectedGaps:
        """Trades in arrival order (exchange timestamps, ids) -> the id gaps before them."""
        if len(ids) <= _SMALL and (ids.type == pa.string() or pa.types.is_integer(ids.type)):
            return self._add_rows(np.asarray(ts, np.int64).tolist(), ids.to_pylist())
        values, ok = integer_ids(ids)
        if not len(values):
            return DetectedGaps.empty()
        ts = np.ascontiguousarray(ts, np.int64)
        if len(values) < len(ts):
            ts = ts[ok]
        top, last_ts = self._state if self._state is not None else (0, 0)
        top, last_ts, _, start, end, first, n = id_gaps(
            values, ts, top, last_ts, self._state is not None, self.min_missing)
        self._state = (int(top), int(last_ts))
        if not len(start):
            return DetectedGaps.empty()
        reasons = [_id_gap_reason(a, c) for a, c in zip(first.tolist(), n.tolist(), strict=True)]
        return DetectedGaps(start, end, reasons)

    def _add_rows(self, ts: list[int], ids: list[str | int | None]) -> DetectedGaps:
        """`add` row by row, for a few rows: the same gaps, reasons and state."""
        top, last_ts = self._state if self._state is not None else (None, 0)
        starts: list[int] = []
        ends: list[int] = []
        reasons: list[str] = []
        for t, raw in zip(ts, ids, strict=True):
            if type(raw) is str:
                if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
                    continue
                v = int(raw)
            elif type(raw) is int and 0 <= raw < _MAX_ID:
                v = raw
            else:
                continue
            if top is not None:
                missing = v - top - 1
                if missing >= self.min_missing:
                    a = top + 1
                    reasons.append(_id_gap_reason(a, missing))
                    starts.append(last_ts)
                    ends.append(max(t, last_ts))
                if v > top:
                    top = v
            else:
                top = v
            last_ts = t
        if top is not None:
            self._state = (top, last_ts)
        if not reasons:
            return DetectedGaps.empty()
        return DetectedGaps(np.array(starts, np.int64), np.array(ends, np.int64), reasons)


class SilenceDetector:
    """Time gaps of one data type of one (exchange, symbol): exchange-time silences longer
    than `max_silence_us`."""

    def __init__(self, max_silence_us: int, data_type: str, state: int | None = None) -> None:
        if max_silence_us <= 0:
            raise ValueError(f"max_silence_us must be > 0, got {max_silence_us!r}")
        self.max_silence_us = int(max_silence_us)
        self.data_type = data_type
        self._latest = state  # latest exchange timestamp seen

    def snapshot(self) -> int | None:
        return self._latest

    def add(self, ts: np.ndarray) -> DetectedGaps:
        """Exchange timestamps in arrival order -> the silences they end."""
        ts = np.asarray(ts, np.int64)
        if not len(ts):
            return DetectedGaps.empty()
        if len(ts) <= _SMALL:
            return self._add_rows(ts.tolist())
        latest, start, end = silences(np.ascontiguousarray(ts), self._latest or 0,
                                      self._latest is not None, self.max_silence_us)
        self._latest = int(latest)
        if not len(start):
            return DetectedGaps.empty()
        reasons = [_silence_reason(s, self.data_type) for s in (end - start).tolist()]
        return DetectedGaps(start, end, reasons)

    def _add_rows(self, ts: list[int]) -> DetectedGaps:
        """`add` row by row, for a few rows: the same gaps, reasons and state."""
        latest = self._latest
        starts: list[int] = []
        ends: list[int] = []
        reasons: list[str] = []
        for t in ts:
            if latest is None:
                latest = t
                continue
            silence = t - latest
            if silence > self.max_silence_us:
                reasons.append(_silence_reason(silence, self.data_type))
                starts.append(latest)
                ends.append(t)
            if t > latest:
                latest = t
        self._latest = latest
        if not reasons:
            return DetectedGaps.empty()
        return DetectedGaps(np.array(starts, np.int64), np.array(ends, np.int64), reasons)


class GapLogic(StatefulBatchLogic[GapIn, GapOut, tuple]):
    """Keyed step: `TickBatch` and `Gap` items -> `Gap` items (source gaps unchanged, then
    the gaps each batch reveals, oldest first). With `passthrough`, each batch follows the
    gaps it revealed, so a downstream candle step sees a gap before the trades after it."""

    def __init__(self, rules: DerivedConfig.Gaps, *, passthrough: bool = False,
                 resume: tuple | None = None) -> None:
        self.rules = rules
        self.passthrough = passthrough
        self.exchange, self.symbol, ids, silences = (
            resume if resume is not None else ("", "", None, ()))
        self.ids = TradeIdGapDetector(rules.min_missing_ids, ids)
        self.silences: dict[str, SilenceDetector] = {}
        for data_type, latest in silences:
            bound = self._bound(data_type)
            if bound:
                self.silences[data_type] = SilenceDetector(bound, data_type, latest)

    def _bound(self, data_type: str) -> int:
        try:
            return int(self.rules.max_silence.get(route_of(data_type), 0))
        except KeyError:
            return 0

    def on_batch(self, values: list[GapIn]) -> tuple[Iterable[GapOut], bool]:
        out: list[GapOut] = []
        for v in values:
            if isinstance(v, Gap):
                out.append(v)
                continue
            self.exchange, self.symbol = v.exchange, v.symbol
            if len(v):
                out.extend(self._detect(v))
            if self.passthrough:
                out.append(v)
        return out, StatefulBatchLogic.RETAIN

    def _detect(self, tb: TickBatch) -> list[Gap]:
        ts, _ = int_column(tb.batch, "timestamp")
        found: list[DetectedGaps] = []
        if tb.data_type == "trades" and tb.exchange in self.rules.trade_id_exchanges:
            found.append(self.ids.add(ts, tb.batch.column("id")))
        silence = self.silences.get(tb.data_type)
        if silence is None:
            bound = self._bound(tb.data_type)
            if bound:
                silence = self.silences[tb.data_type] = SilenceDetector(bound, tb.data_type)
        if silence is not None:
            found.append(silence.add(ts))
        gaps = [Gap(tb.exchange, tb.symbol, s, e, r, tb.source)
                for d in found if len(d)
                for s, e, r in zip(d.start_us.tolist(), d.end_us.tolist(), d.reasons,
                                   strict=True)]
        if gaps:
            DERIVED_ROWS.inc(len(gaps), data_type="gaps")
            gaps.sort(key=lambda g: (g.start_us, g.end_us))
        return gaps

    def snapshot(self) -> tuple:
        silences = tuple(sorted((k, d.snapshot()) for k, d in self.silences.items()))
        return (self.exchange, self.symbol, self.ids.snapshot(), silences)


def gap_builder(rules: DerivedConfig.Gaps, *, passthrough: bool = False
                ) -> Callable[[tuple | None], GapLogic]:
    """The `builder` of `op.stateful_batch` for gaps (resume state in)."""

    def build(resume: tuple | None) -> GapLogic:
        return GapLogic(rules, passthrough=passthrough, resume=resume)

    return build

