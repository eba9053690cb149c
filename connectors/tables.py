"""Table definitions shared by every persist backend (BigQuery and local Parquet).

One `TableDef` says a table's Arrow schema, which columns are REQUIRED, the time column it is
partitioned on, its clustering, and the columns its deterministic `row_key` is built from, so
a replayed or retried row can be deduplicated wherever it lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from connectors.tardis.datatypes import (
    DERIVATIVE_TICKER,
    INCREMENTAL_BOOK_L2,
    LIQUIDATIONS,
    OPTIONS_CHAIN,
    QUOTES,
    TRADES,
    book_snapshot_spec,
)
from features.columns import feature_columns
from operators.candles.schema import CANDLE_SCHEMA

TS = pa.timestamp("us", tz="UTC")
BOOK_SNAPSHOT_TABLE_DEPTH = 25


@dataclass(frozen=True)
class TableDef:
    """A persisted table: schema, REQUIRED columns, partitioning, clustering, row key."""

    name: str
    schema: pa.Schema
    required: tuple[str, ...]
    partition_field: str
    key_columns: tuple[str, ...]
    cluster_fields: tuple[str, ...] = ("exchange", "symbol")

    def __post_init__(self) -> None:
        names = set(self.schema.names)
        for col in (*self.required, self.partition_field, *self.key_columns,
                    *self.cluster_fields):
            if col not in names:
                raise ValueError(f"table {self.name}: column {col!r} is not in its schema")
        if "row_key" not in names:
            raise ValueError(f"table {self.name}: every table needs a row_key column")


def _with_key(schema: pa.Schema, extra: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    fields = list(schema) + [pa.field(n, t) for n, t in extra]
    if "row_key" not in schema.names:
        fields.append(pa.field("row_key", pa.string()))
    return pa.schema(fields)


_BOOK_25 = book_snapshot_spec(BOOK_SNAPSHOT_TABLE_DEPTH)

TICK_TABLES: dict[str, TableDef] = {
    t.name: t
    for t in (
        TableDef("ticks_trades", _with_key(TRADES.schema), TRADES.required, "timestamp",
                 ("exchange", "symbol", "timestamp", "id", "side", "price", "amount")),
        TableDef("ticks_liquidations", _with_key(LIQUIDATIONS.schema, [("derived", pa.bool_())]),
                 LIQUIDATIONS.required, "timestamp",
                 ("exchange", "symbol", "timestamp", "id", "side", "price", "amount")),
        TableDef("ticks_quotes", _with_key(QUOTES.schema), QUOTES.required, "timestamp",
                 ("exchange", "symbol", "timestamp", "local_timestamp")),
        TableDef("ticks_book_snapshots", _with_key(_BOOK_25.schema, [("depth", pa.int32())]),
                 _BOOK_25.required, "timestamp",
                 ("exchange", "symbol", "depth", "timestamp", "local_timestamp")),
        TableDef("ticks_book_changes", _with_key(INCREMENTAL_BOOK_L2.schema),
                 INCREMENTAL_BOOK_L2.required, "timestamp",
                 ("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side",
                  "price")),
        TableDef("ticks_derivative_ticker", _with_key(DERIVATIVE_TICKER.schema),
                 DERIVATIVE_TICKER.required, "timestamp",
                 ("exchange", "symbol", "timestamp", "local_timestamp")),
        TableDef("ticks_options_chain", _with_key(OPTIONS_CHAIN.schema), OPTIONS_CHAIN.required,
                 "timestamp", ("exchange", "symbol", "timestamp", "local_timestamp")),
        TableDef(
            "ticks_funding_rates",
            _with_key(pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("timestamp", TS),
                ("local_timestamp", TS), ("funding_timestamp", TS), ("funding_rate", pa.float64()),
                ("predicted_funding_rate", pa.float64()), ("mark_price", pa.float64()),
                ("index_price", pa.float64()),
            ])),
            ("exchange", "symbol", "timestamp", "local_timestamp"), "timestamp",
            ("exchange", "symbol", "timestamp", "funding_timestamp"),
        ),
        TableDef(
            "ticks_gaps",
            _with_key(pa.schema([
                ("exchange", pa.string()), ("symbol", pa.string()), ("timestamp", TS),
                ("timestamp_end", TS), ("reason", pa.string()), ("source", pa.string()),
            ])),
            ("exchange", "symbol", "timestamp", "timestamp_end", "reason"), "timestamp",
            ("exchange", "symbol", "timestamp", "timestamp_end", "reason"),
        ),
    )
}

#: Tick table of each router branch (streaming.yaml `data_types:` key).
TICK_TABLE_OF_ROUTE = {
    "trades": "ticks_trades",
    "liquidations": "ticks_liquidations",
    "quotes": "ticks_quotes",
    "book_snapshots": "ticks_book_snapshots",
    "incremental_book_L2": "ticks_book_changes",
    "derivative_ticker": "ticks_derivative_ticker",
    "options_chain": "ticks_options_chain",
    "funding_rates": "ticks_funding_rates",
    "gaps": "ticks_gaps",
}

CANDLE_KEY_COLUMNS = ("exchange", "symbol", "timeframe", "timestamp")


def candle_schema(periods: Sequence[int]) -> pa.Schema:
    """The candle row with its feature columns (all nullable float64)."""
    return pa.schema(list(CANDLE_SCHEMA) +
                     [pa.field(c, pa.float64()) for c in feature_columns(periods)])


def candle_table(timeframe: str, periods: Sequence[int]) -> TableDef:
    """`candles_{timeframe}`: one table per timeframe, partitioned on the interval end."""
    return TableDef(
        name=f"candles_{timeframe}",
        schema=candle_schema(periods),
        required=("exchange", "symbol", "timeframe", "timestamp", "timestamp_out", "open",
                  "high", "low", "close", "volume", "trade_count", "row_key"),
        partition_field="timestamp_out",
        key_columns=CANDLE_KEY_COLUMNS,
    )


def _key_part(col: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    return pc.fill_null(col, "")


def row_keys(table: pa.Table | pa.RecordBatch, key_columns: Sequence[str]) -> pa.Array:
    """Deterministic row keys: the key columns joined by '|' (timestamps as integer us)."""
    parts = [_key_part(table.column(c)) for c in key_columns]
    out = pc.binary_join_element_wise(*parts, "|")
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    return out


def conform(table: pa.Table | pa.RecordBatch, tdef: TableDef,
            extra: dict[str, object] | None = None) -> pa.Table:
    """Arrange `table` to `tdef.schema`: add missing nullable columns, constants from `extra`,
    the row_key when absent, and drop columns the table does not have."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not extra and table.schema.equals(tdef.schema):
        return table
    n = table.num_rows
    index = {name: i for i, name in enumerate(table.schema.names)}
    cols = []
    for field in tdef.schema:
        if field.name in index:
            col = table.column(index[field.name])
            if col.type != field.type:
                col = col.cast(field.type)
        elif extra and field.name in extra:
            col = pa.chunked_array([pa.array([extra[field.name]] * n, type=field.type)])
        elif field.name == "row_key":
            col = None
        else:
            col = pa.chunked_array([pa.nulls(n, type=field.type)])
        cols.append(col)
    key_idx = tdef.schema.get_field_index("row_key")
    if cols[key_idx] is None:
        partial = pa.table({f.name: c for f, c in zip(tdef.schema, cols, strict=True)
                            if c is not None})
        cols[key_idx] = pa.chunked_array([row_keys(partial, tdef.key_columns)])
    return pa.Table.from_arrays(cols, schema=tdef.schema)
