"""The candle row: OHLCV columns shared by every output (JSON lines, Parquet, BigQuery, Redis).

Feature columns (sma_5, ema_5, ...) follow these, named by `features.feature_columns`.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

CANDLE_SCHEMA = pa.schema([
    ("exchange", pa.string()),
    ("symbol", pa.string()),
    ("timeframe", pa.string()),          # label: 15s, 1m, 5m, 15m, 1h, 4h, 1d
    ("timestamp", TS),                   # interval start (inclusive), exchange time
    ("timestamp_out", TS),               # interval end (exclusive)
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("volume", pa.float64()),
    ("buy_volume", pa.float64()),
    ("sell_volume", pa.float64()),
    ("trade_count", pa.int64()),
    ("vwap", pa.float64()),              # null for an empty (filled) interval
    ("open_timestamp", TS),              # exchange time of the first trade, null when empty
    ("close_timestamp", TS),             # exchange time of the latest trade, null when empty
    ("local_timestamp", TS),             # latest receive time of its trades, null when empty
    ("is_filled", pa.bool_()),           # true: no trades, OHLC carried from the previous close
    ("has_gap", pa.bool_()),             # a disconnect or detected gap touches this interval
    ("row_key", pa.string()),            # exchange|symbol|timeframe|start_us, for deduplication
])

CANDLE_COLUMNS = tuple(CANDLE_SCHEMA.names)
