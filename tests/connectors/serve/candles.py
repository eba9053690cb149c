"""Candle batches for serve tests, built with the real candle schema (connectors.tables)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa

from connectors.tables import candle_schema
from features.columns import feature_columns
from operators.messages import CandleBatch

PERIODS = (5, 10, 20)
TF_MS = {"15s": 15_000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
T0_MS = 1_709_251_200_000          # 2024-03-01T00:00:00Z


def close_at(i: int) -> float:
    """A deterministic close price for the i-th candle of a series."""
    return round(60_000 + 250 * math.sin(i / 7) + i * 0.5, 2)


def candles(start: int, n: int, *, exchange: str = "binance", symbol: str = "BTCUSDT",
            timeframe: str = "1m", periods: Sequence[int] = PERIODS) -> CandleBatch:
    """Candles number start..start+n-1 of a series (interval i starts at T0 + i * tf)."""
    tf = TF_MS[timeframe]
    schema = candle_schema(periods)
    rows = []
    for i in range(start, start + n):
        close = close_at(i)
        prev = close_at(i - 1)
        filled = i % 13 == 12
        row = {
            "exchange": exchange, "symbol": symbol, "timeframe": timeframe,
            "timestamp": (T0_MS + i * tf) * 1000, "timestamp_out": (T0_MS + (i + 1) * tf) * 1000,
            "open": prev, "high": max(prev, close) + 1.0, "low": min(prev, close) - 1.0,
            "close": close, "volume": 0.0 if filled else 1.5 + i % 5,
            "buy_volume": 0.0 if filled else 1.0, "sell_volume": 0.0 if filled else 0.5 + i % 5,
            "trade_count": 0 if filled else 10 + i % 7,
            "vwap": None if filled else round((prev + close) / 2, 4),
            "open_timestamp": None if filled else (T0_MS + i * tf) * 1000 + 1234,
            "close_timestamp": None if filled else (T0_MS + (i + 1) * tf) * 1000 - 1,
            "local_timestamp": None if filled else (T0_MS + (i + 1) * tf) * 1000 + 50,
            "is_filled": filled, "has_gap": i % 17 == 16,
            "row_key": f"{exchange}|{symbol}|{timeframe}|{(T0_MS + i * tf) * 1000}",
        }
        for col in feature_columns(periods):
            name, _, p = col.rpartition("_")
            row[col] = None if p.isdigit() and i + 1 < int(p) else round(close / 1000 + i, 6)
        rows.append(row)
    return CandleBatch(exchange, symbol, timeframe, pa.RecordBatch.from_pylist(rows, schema))


def entry_ids(start: int, n: int, timeframe: str = "1m") -> list[str]:
    """The stream entry IDs of candles number start..start+n-1."""
    return [f"{T0_MS + i * TF_MS[timeframe]}-0" for i in range(start, start + n)]
