"""Liquidations derived from unusually large taker orders, for exchanges without a native feed.

A HEURISTIC, not a liquidation feed. A liquidation engine closes a position with a market
(taker) order, which prints as trades on the taker side (a long liquidated sells: side
"sell"; as in Tardis liquidations, "buy" means a short was liquidated). So an unusually large
taker order is a liquidation candidate. Block trades and large discretionary market orders
look the same and are flagged too; small liquidations are missed.

Rule, per (exchange, symbol):
- a taker order is the run of consecutive trades with the same exchange timestamp and side
  (the fills of one market order sweeping several levels; `group_fills=False`: each trade);
- scale = EWMA of the amounts of all earlier orders (weights 2^(-age/halflife), age counted
  in orders, normalised by the sum of the weights, so it is unbiased from the first order);
- the order is a derived liquidation when at least `warmup` orders came before it, and
  amount > multiplier x scale, and price x amount >= min_notional.
Its row: timestamp and side of the order, id of its first fill, local_timestamp of its last
fill, amount = summed fills, price = their volume-weighted average.

The last order of a batch may continue in the next batch, so it is decided when the next
trade with another timestamp or side arrives (or at the end of the input): cutting the input
anywhere gives the same rows. State per key is constant-size: two running sums, a count and
that one open order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from bytewax.operators import StatefulBatchLogic
from scipy.signal import lfilter

from connectors.tardis.datatypes import LIQUIDATIONS
from dataflows.config import DerivedConfig
from operators.candles.bars import SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN
from operators.candles.step import trade_arrays
from operators.derived.common import (
    DERIVED_ROWS,
    const_str,
    lines_array,
    lines_of,
    timestamps,
)
from operators.messages import TickBatch

#: Rows of derived liquidations: the liquidations schema plus `derived` (always True), which
#: the ticks_liquidations table has and `connectors.tables.conform` keeps.
DERIVED_LIQUIDATIONS_SCHEMA = LIQUIDATIONS.schema.append(pa.field("derived", pa.bool_()))

_SIDE_NAMES = np.empty(3, object)
_SIDE_NAMES[[SIDE_UNKNOWN, SIDE_BUY, SIDE_SELL]] = ["unknown", "buy", "sell"]


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """The last taker order seen: further fills with its timestamp and side may still join."""

    timestamp: int
    local_timestamp: int
    side: int
    amount: float
    notional: float
    first_id: str | None
    first_line: int


@dataclass(frozen=True, slots=True)
class DetectorState:
    """Resume state of a `LargeOrderDetector` (small, immutable, picklable)."""

    ew_sum: float
    ew_weight: float
    seen: int
    open_order: OpenOrder | None


@dataclass(frozen=True, slots=True)
class LargeOrders:
    """Orders flagged as derived liquidations, as columns (oldest first)."""

    timestamp: np.ndarray        # int64 us, exchange time of the order
    local_timestamp: np.ndarray  # int64 us, arrival of its last fill
    side: np.ndarray             # int8 side code (operators.candles.bars)
    price: np.ndarray            # volume-weighted average fill price
    amount: np.ndarray           # summed fill amounts
    threshold: np.ndarray        # the amount it had to exceed (multiplier x scale)
    ids: pa.Array                # id of the first fill
    lines: np.ndarray            # source line of the first fill, -1 = unknown

    def __len__(self) -> int:
        return len(self.timestamp)

    @staticmethod
    def empty() -> LargeOrders:
        z = np.empty(0, np.int64)
        f = np.empty(0, np.float64)
        return LargeOrders(z, z, np.empty(0, np.int8), f, f, f, pa.array([], pa.string()), z)


def sequential_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum of values[start..end] per segment, added strictly left to right (np.add.reduceat
    sums long segments pairwise), so an order's sum does not depend on where a batch cut
    it: the open order's partial sum plus the rest is the same float as the whole."""
    out = values[starts].astype(np.float64)
    lengths = ends - starts + 1
    order = np.argsort(-lengths, kind="stable")
    by_len = lengths[order]
    for k in range(1, int(by_len[0]) if len(by_len) else 0):
        active = order[:int(np.searchsorted(-by_len, -k, side="left"))]
        out[active] += values[starts[active] + k]
    return out


class LargeOrderDetector:
    """The numpy core of derived liquidations for one (exchange, symbol); see the module doc."""

    def __init__(self, multiplier: float = 20.0, halflife: int = 1_000, warmup: int = 200,
                 min_notional: float = 10_000.0, *, group_fills: bool = True,
                 state: DetectorState | None = None) -> None:
        if not multiplier > 1.0 or not np.isfinite(multiplier):
            raise ValueError(f"multiplier must be a finite number > 1, got {multiplier!r}")
        if halflife < 1:
            raise ValueError(f"halflife must be at least 1 order, got {halflife!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 order, got {warmup!r}")
        if not min_notional >= 0.0 or not np.isfinite(min_notional):
            raise ValueError(f"min_notional must be finite and >= 0, got {min_notional!r}")
        self.multiplier = float(multiplier)
        self.warmup = int(warmup)
        self.min_notional = float(min_notional)
        self.group_fills = group_fills
        self._decay = 0.5 ** (1.0 / halflife)
        s = state or DetectorState(0.0, 0.0, 0, None)
        if s.open_order is not None and not group_fills:
            raise ValueError("a state with an open order needs group_fills=True")
        self._sum, self._weight, self._seen, self._open = (s.ew_sum, s.ew_weight, s.seen,
                                                           s.open_order)

    @property
    def scale(self) -> float:
        """The current EWMA of order amounts (NaN before the first order)."""
        return self._sum / self._weight if self._weight > 0 else float("nan")

    def snapshot(self) -> DetectorState:
        return DetectorState(self._sum, self._weight, self._seen, self._open)

    def add(self, ts: np.ndarray, local: np.ndarray, side: np.ndarray, price: np.ndarray,
            amount: np.ndarray, ids: pa.Array, lines: np.ndarray | None = None) -> LargeOrders:
        """Trades in arrival order -> the orders among them (and the open one) decided now."""
        n = len(ts)
        if n == 0:
            return LargeOrders.empty()
        lines = np.full(n, -1, np.int64) if lines is None else np.asarray(lines, np.int64)
        ids = ids.cast(pa.string())
        notional = price * amount
        o = self._open
        if o is not None:
            ts = np.concatenate(([o.timestamp], ts))
            local = np.concatenate(([o.local_timestamp], local))
            side = np.concatenate(([o.side], side)).astype(np.int8)
            amount = np.concatenate(([o.amount], amount))
            notional = np.concatenate(([o.notional], notional))
            ids = pa.concat_arrays([pa.array([o.first_id], pa.string()), ids])
            lines = np.concatenate(([o.first_line], lines))
        if not self.group_fills:
            starts = np.arange(len(ts))
            return self._decide(starts, starts, amount, notional, ts, local, side, ids, lines)
        brk = np.empty(len(ts), bool)
        brk[0] = True
        brk[1:] = (ts[1:] != ts[:-1]) | (side[1:] != side[:-1])
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], len(ts)) - 1
        amt = sequential_sums(amount, starts, ends)
        notl = sequential_sums(notional, starts, ends)
        first, last = int(starts[-1]), int(ends[-1])
        self._open = OpenOrder(int(ts[first]), int(local[last]), int(side[first]),
                               float(amt[-1]), float(notl[-1]), ids[first].as_py(),
                               int(lines[first]))
        return self._decide(starts[:-1], ends[:-1], amt[:-1], notl[:-1], ts, local, side, ids,
                            lines)

    def flush(self) -> LargeOrders:
        """End of input: decide the open order."""
        o = self._open
        if o is None:
            return LargeOrders.empty()
        self._open = None
        zero = np.zeros(1, np.int64)
        return self._decide(zero, zero, np.array([o.amount]), np.array([o.notional]),
                            np.array([o.timestamp]), np.array([o.local_timestamp]),
                            np.array([o.side], np.int8), pa.array([o.first_id], pa.string()),
                            np.array([o.first_line]))

    def _decide(self, starts: np.ndarray, ends: np.ndarray, amt: np.ndarray, notl: np.ndarray,
                ts: np.ndarray, local: np.ndarray, side: np.ndarray, ids: pa.Array,
                lines: np.ndarray) -> LargeOrders:
        """Compare each complete order with the scale of the orders before it, then fold it
        into the scale (exponentially weighted sums through scipy's lfilter, exact across
        calls since the filter state is the running sum itself)."""
        m = len(amt)
        if m == 0:
            return LargeOrders.empty()
        d = self._decay
        s = lfilter([1.0], [1.0, -d], amt, zi=[d * self._sum])[0]
        w = lfilter([1.0], [1.0, -d], np.ones(m), zi=[d * self._weight])[0]
        s_before = np.concatenate(([self._sum], s[:-1]))
        w_before = np.concatenate(([self._weight], w[:-1]))
        seen_before = self._seen + np.arange(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            threshold = self.multiplier * (s_before / w_before)
        flag = (seen_before >= self.warmup) & (amt > threshold) & (notl >= self.min_notional)
        self._sum, self._weight = float(s[-1]), float(w[-1])
        self._seen = min(self._seen + m, 1 << 62)
        k = np.flatnonzero(flag)
        if not len(k):
            return LargeOrders.empty()
        first = starts[k]
        return LargeOrders(
            timestamp=ts[first].astype(np.int64), local_timestamp=local[ends[k]].astype(np.int64),
            side=side[first].astype(np.int8), price=notl[k] / amt[k], amount=amt[k],
            threshold=threshold[k], ids=ids.take(pa.array(first)), lines=lines[first],
        )


def large_orders_batch(exchange: str, symbol: str, orders: LargeOrders) -> pa.RecordBatch:
    """Flagged orders as rows of DERIVED_LIQUIDATIONS_SCHEMA (derived = True)."""
    n = len(orders)
    return pa.RecordBatch.from_arrays(
        [const_str(exchange, n), const_str(symbol, n), timestamps(orders.timestamp),
         timestamps(orders.local_timestamp), orders.ids,
         pa.array(_SIDE_NAMES[orders.side], pa.string()), pa.array(orders.price),
         pa.array(orders.amount), pa.repeat(pa.scalar(True), n)],
        schema=DERIVED_LIQUIDATIONS_SCHEMA,
    )


class LiquidationLogic(StatefulBatchLogic[TickBatch, TickBatch, tuple]):
    """Keyed step: trades `TickBatch` -> `TickBatch` of data type "liquidations" whose rows
    carry derived=True. Keys of exchanges with a native feed are ignored."""

    def __init__(self, rules: DerivedConfig.Liquidations, resume: tuple | None = None) -> None:
        self.rules = rules
        self.exchange, self.symbol, self.source, state = (
            resume if resume is not None else ("", "", "", None))
        self.detector = LargeOrderDetector(rules.multiplier, rules.halflife, rules.warmup,
                                           rules.min_notional, group_fills=rules.group_fills,
                                           state=state)

    def on_batch(self, values: list[TickBatch]) -> tuple[Iterable[TickBatch], bool]:
        out: list[TickBatch] = []
        for tb in values:
            if tb.data_type != "trades" or not len(tb):
                continue
            if not self.rules.derives_for(tb.exchange):
                continue
            self.exchange, self.symbol, self.source = tb.exchange, tb.symbol, tb.source
            ts, local, price, amount, side = trade_arrays(tb.batch)
            found = self.detector.add(ts, local, side, price, amount, tb.batch.column("id"),
                                      lines_of(tb.lines, len(tb)))
            out.extend(self._emit(found))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[TickBatch], bool]:
        return self._emit(self.detector.flush()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> tuple:
        return (self.exchange, self.symbol, self.source, self.detector.snapshot())

    def _emit(self, orders: LargeOrders) -> list[TickBatch]:
        if not len(orders):
            return []
        DERIVED_ROWS.inc(len(orders), data_type="liquidations")
        batch = large_orders_batch(self.exchange, self.symbol, orders)
        return [TickBatch(self.exchange, self.symbol, "liquidations", batch, self.source,
                          lines_array(orders.lines))]


def liquidation_builder(rules: DerivedConfig.Liquidations
                        ) -> Callable[[tuple | None], LiquidationLogic]:
    """The `builder` of `op.stateful_batch` for derived liquidations (resume state in)."""

    def build(resume: tuple | None) -> LiquidationLogic:
        return LiquidationLogic(rules, resume)

    return build
