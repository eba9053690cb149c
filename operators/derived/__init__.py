"""Derived data types: liquidations from large taker orders, funding_rates from
derivative_ticker, gaps from trade ids, exchange-time silences and disconnects.

Each is a keyed Bytewax step (`*_builder` for `op.stateful_batch`, keyed "exchange:symbol")
over `TickBatch` items, around a numpy core that is tested without Bytewax. Their rules and
thresholds are `DerivedConfig` (streaming.yaml `derived:`); `derived_table_rows` turns their
output into rows of ticks_liquidations, ticks_funding_rates and ticks_gaps.
"""

from operators.derived.funding import FundingChangeDetector, funding_builder
from operators.derived.gaps import (
    GapLogic,
    SilenceDetector,
    TradeIdGapDetector,
    gap_builder,
)
from operators.derived.liquidations import LargeOrderDetector, liquidation_builder
from operators.derived.rows import derived_table_rows, gap_rows

__all__ = [
    "FundingChangeDetector",
    "GapLogic",
    "LargeOrderDetector",
    "SilenceDetector",
    "TradeIdGapDetector",
    "derived_table_rows",
    "funding_builder",
    "gap_builder",
    "gap_rows",
    "liquidation_builder",
]
