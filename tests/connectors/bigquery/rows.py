"""Small deterministic Arrow tables for every persisted table, and a NaN-aware comparison."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from connectors.tables import TableDef, candle_table, conform

S = 1_000_000
#: 2024-05-01T00:00:00Z in microseconds: a fixed historical time.
HIST_BASE_US = 1_714_521_600 * S

_STRINGS = {
    "exchange": ["binance", "binance"],
    "symbol": ["BTCUSDT", "ETHUSDT"],
    "side": ["buy", "sell"],
    "type": ["call", "put"],
    "reason": ["trade_id_gap", "disconnect"],
    "source": ["derived", "derived"],
    "timeframe": ["1m", "1m"],
}


def tick_rows(table: TableDef, n: int, base_us: int = HIST_BASE_US) -> pa.Table:
    """`n` rows of a tick table, conformed (row_key set); nullable columns hold some nulls
    and one NaN so both round-trip."""
    cols: dict[str, pa.Array] = {}
    required = set(table.required)
    for j, f in enumerate(table.schema):
        if f.name == "row_key":
            continue
        nullable = f.name not in required and f.name not in table.key_columns
        vals: list[Any]
        if pa.types.is_timestamp(f.type):
            if f.name == "timestamp":
                vals = [base_us + i * S + i for i in range(n)]
            elif f.name == "local_timestamp":
                vals = [base_us + i * S + i + 1500 for i in range(n)]
            else:
                vals = [base_us + 8 * 3600 * S + i * S for i in range(n)]
        elif pa.types.is_string(f.type):
            choices = _STRINGS.get(f.name)
            if table.name == "ticks_book_changes" and f.name == "side":
                choices = ["bid", "ask"]
            vals = ([choices[i % 2] for i in range(n)] if choices
                    else [f"{f.name}-{1000 + i}" for i in range(n)])
        elif pa.types.is_floating(f.type):
            vals = [100.0 + i * 0.25 + j * 0.001 for i in range(n)]
            if nullable and n > 2:
                vals[1] = None
                if j % 5 == 0:
                    vals[2] = math.nan
        elif pa.types.is_integer(f.type):
            vals = [25 if f.name == "depth" else i for i in range(n)]
        elif pa.types.is_boolean(f.type):
            vals = [i % 2 == 0 for i in range(n)]
        else:  # pragma: no cover - every table type is listed above
            raise TypeError(f.type)
        cols[f.name] = pa.array(vals, type=f.type)
    return conform(pa.table(cols), table)


def candle_rows(n: int, periods: tuple[int, ...] = (5, 10, 20), base_us: int = HIST_BASE_US,
                symbol: str = "BTCUSDT", timeframe: str = "1m") -> pa.Table:
    """`n` consecutive 1m candles with features (null until the period is reached)."""
    table = candle_table(timeframe, periods)
    tf = 60 * S
    start = base_us - base_us % tf
    cols: dict[str, list[Any]] = {name: [] for name in table.schema.names if name != "row_key"}
    for i in range(n):
        ts = start + i * tf
        close = 30_000.0 + 10.0 * math.sin(i / 3.0)
        row = {
            "exchange": "binance", "symbol": symbol, "timeframe": timeframe,
            "timestamp": ts, "timestamp_out": ts + tf,
            "open": close - 1.0, "high": close + 2.5, "low": close - 3.0, "close": close,
            "volume": 1.5 + i, "buy_volume": 1.0 + i / 2, "sell_volume": 0.5 + i / 2,
            "trade_count": 10 + i, "vwap": close - 0.25,
            "open_timestamp": ts + 1_000, "close_timestamp": ts + tf - 1_000,
            "local_timestamp": ts + tf - 500, "is_filled": False, "has_gap": i == 3,
        }
        for name in cols:
            if name in row:
                cols[name].append(row[name])
            else:  # a feature column: null until its period has passed
                period = int(name.rsplit("_", 1)[1]) if name.rsplit("_", 1)[-1].isdigit() else 1
                cols[name].append(None if i + 1 < period else close / (period + 1) + i * 1e-3)
    arrays = {name: pa.array(vals, type=table.schema.field(name).type)
              for name, vals in cols.items()}
    return conform(pa.table(arrays), table)


def _norm(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v


def normalized(rows: pa.Table, table: TableDef) -> list[dict[str, Any]]:
    """Rows in the table's column order and types, sorted by row_key, NaN comparable."""
    rows = rows.select(table.schema.names).cast(table.schema)
    out = [{k: _norm(v) for k, v in r.items()} for r in rows.to_pylist()]
    return sorted(out, key=lambda r: r["row_key"])
