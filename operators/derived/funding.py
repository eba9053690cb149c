"""funding_rates: the derivative_ticker rows at which the funding rate or funding time changes.

Rule, per (exchange, symbol): a derivative_ticker row is a funding_rates row when its
`funding_rate` differs from the last non-null funding rate seen, or its `funding_timestamp`
differs from the last non-null funding timestamp seen (exact comparison; the first non-null
value counts as a change). A null field never counts as a change and does not erase the last
value, so a ticker update that omits funding fields emits nothing. The row keeps the ticker's
timestamps, predicted funding rate, mark and index price (the ticks_funding_rates columns).

Detection is vectorised per batch (forward-filled previous values, one comparison per
column); only the last funding rate and funding timestamp are carried between batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from connectors.tables import TICK_TABLES
from operators.derived.common import DERIVED_ROWS, float_column, int_column
from operators.messages import TickBatch

#: Columns of a funding_rates row (the ticks_funding_rates table without its row_key).
_TABLE = TICK_TABLES["ticks_funding_rates"].schema
FUNDING_RATES_SCHEMA = _TABLE.remove(_TABLE.get_field_index("row_key"))


@dataclass(frozen=True, slots=True)
class FundingState:
    """The last non-null funding rate and funding timestamp of a key (None: none yet)."""

    funding_rate: float | None = None
    funding_timestamp: int | None = None


def _changed(values: np.ndarray, valid: np.ndarray, last: float | int | None
             ) -> tuple[np.ndarray, float | int | None]:
    """Rows whose valid value differs from the last valid value before them, and the last
    valid value after the batch."""
    n = len(values)
    ext = np.concatenate(([0 if last is None else last], values)).astype(values.dtype)
    ok = np.concatenate(([last is not None], valid))
    pos = np.maximum.accumulate(np.where(ok, np.arange(n + 1), -1))
    prev = pos[:-1]
    changed = valid & ((prev < 0) | (values != ext[np.maximum(prev, 0)]))
    new_last = ext[pos[-1]].item() if pos[-1] >= 0 else None
    return changed, new_last


class FundingChangeDetector:
    """The numpy core of funding_rates for one (exchange, symbol); see the module doc."""

    def __init__(self, state: FundingState | None = None) -> None:
        state = state or FundingState()
        if state.funding_rate is not None and not np.isfinite(state.funding_rate):
            raise ValueError(f"funding_rate state must be finite, got {state.funding_rate!r}")
        self._rate = state.funding_rate
        self._fts = state.funding_timestamp

    def snapshot(self) -> FundingState:
        return FundingState(self._rate, self._fts)

    def changes(self, funding_rate: np.ndarray, funding_ts: np.ndarray,
                funding_ts_valid: np.ndarray) -> np.ndarray:
        """Row indices (ascending) that start a new funding rate or funding timestamp.

        `funding_rate` is float64 with NaN for null; `funding_ts` int64 microseconds with
        `funding_ts_valid` False for null."""
        rate = np.asarray(funding_rate, np.float64)
        if not (len(rate) == len(funding_ts) == len(funding_ts_valid)):
            raise ValueError("funding_rate, funding_ts and funding_ts_valid differ in length")
        if not len(rate):
            return np.empty(0, np.int64)
        rate_changed, last_rate = _changed(rate, np.isfinite(rate), self._rate)
        ts_changed, last_fts = _changed(np.asarray(funding_ts, np.int64),
                                        np.asarray(funding_ts_valid, bool), self._fts)
        self._rate = None if last_rate is None else float(last_rate)
        self._fts = None if last_fts is None else int(last_fts)
        return np.flatnonzero(rate_changed | ts_changed)


def funding_rows(batch: pa.RecordBatch, index: np.ndarray) -> pa.RecordBatch:
    """The derivative_ticker rows at `index` with the funding_rates columns."""
    rows = batch.take(pa.array(index, pa.int64()))
    return pa.RecordBatch.from_arrays([rows.column(f.name).cast(f.type)
                                       for f in FUNDING_RATES_SCHEMA],
                                      schema=FUNDING_RATES_SCHEMA)


class FundingLogic(StatefulBatchLogic[TickBatch, TickBatch, tuple]):
    """Keyed step: derivative_ticker `TickBatch` -> `TickBatch` of data type "funding_rates"."""

    def __init__(self, resume: tuple | None = None) -> None:
        self.exchange, self.symbol, state = resume if resume is not None else ("", "", None)
        self.detector = FundingChangeDetector(state)

    def on_batch(self, values: list[TickBatch]) -> tuple[Iterable[TickBatch], bool]:
        out: list[TickBatch] = []
        for tb in values:
            if tb.data_type != "derivative_ticker" or not len(tb):
                continue
            self.exchange, self.symbol = tb.exchange, tb.symbol
            fts, fts_valid = int_column(tb.batch, "funding_timestamp")
            idx = self.detector.changes(float_column(tb.batch, "funding_rate"), fts, fts_valid)
            if not len(idx):
                continue
            DERIVED_ROWS.inc(len(idx), data_type="funding_rates")
            lines = tb.lines.take(pa.array(idx)) if tb.lines is not None else None
            out.append(TickBatch(tb.exchange, tb.symbol, "funding_rates",
                                 funding_rows(tb.batch, idx), tb.source, lines))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple:
        return (self.exchange, self.symbol, self.detector.snapshot())


def funding_builder() -> Callable[[tuple | None], FundingLogic]:
    """The `builder` of `op.stateful_batch` for funding_rates (resume state in)."""
    return FundingLogic
