"""Names and order of the feature columns that follow the OHLCV columns of a candle row."""

from __future__ import annotations

from collections.abc import Sequence

#: Features computed from one candle (and the previous close), in column order.
PER_CANDLE = ("log_return", "volume_imbalance", "avg_trade_size", "hl_range")

#: Windowed features, one column per period: sma_5, sma_10, ..., rsi_20, price_volatility_20.
WINDOWED = ("sma", "ema", "rsi", "price_volatility")


def feature_columns(periods: Sequence[int]) -> list[str]:
    """Feature column names for the given periods, in the order they appear in a candle row."""
    cols = list(PER_CANDLE)
    for name in WINDOWED:
        cols.extend(f"{name}_{n}" for n in periods)
    return cols
