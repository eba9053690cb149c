"""The items that travel through the flow.

Ticks and candles travel as Arrow record batches wrapped in small frozen envelopes that name
their (exchange, symbol) and kind, so Bytewax routes and keys them without ever looking at a
row. Every envelope pickles (Arrow batches pickle through IPC), which Bytewax needs to move
items between workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

#: Rows that left the flow: rejected by validation, or late for their closed candle.
DEAD_LETTER_SCHEMA = pa.schema([
    ("kind", pa.string()),          # "rejected" | "late"
    ("source", pa.string()),        # file path or WebSocket URL
    ("line", pa.int64()),           # 1-based line in the file (header is line 1), or null
    ("exchange", pa.string()),
    ("symbol", pa.string()),
    ("data_type", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),           # the row's values as JSON, for inspection and replay
])


@dataclass(frozen=True, slots=True, weakref_slot=True)
class TickBatch:
    """Ticks of one (exchange, symbol, data type) in arrival order.

    `lines` holds each row's 1-based line in `source` when the source is a file; it lets a
    later step send a row to the dead-letter output with its file and line.
    """

    exchange: str
    symbol: str
    data_type: str
    batch: pa.RecordBatch
    source: str = ""
    lines: pa.Array | None = None

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    def __len__(self) -> int:
        return self.batch.num_rows

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (for Bytewax's exchange between workers) only this batch's rows: a slice of
        a larger batch would otherwise carry its parent's whole buffers."""
        lines = None if self.lines is None else _compact(pa.record_batch([self.lines], ["l"]))
        return (_tick_batch, (self.exchange, self.symbol, self.data_type,
                              _compact(self.batch), self.source, lines))


def _compact(batch: pa.RecordBatch) -> pa.Buffer:
    """A batch as Arrow IPC stream bytes; the IPC writer keeps only a slice's own range."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def _from_ipc(data: pa.Buffer) -> pa.RecordBatch:
    return pa.ipc.open_stream(data).read_next_batch()


def _tick_batch(exchange: str, symbol: str, data_type: str, batch: pa.Buffer, source: str,
                lines: pa.Buffer | None) -> TickBatch:
    return TickBatch(exchange, symbol, data_type, _from_ipc(batch), source,
                     None if lines is None else _from_ipc(lines).column(0))


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """Rows that could not be used, with the reason for each (DEAD_LETTER_SCHEMA)."""

    batch: pa.RecordBatch

    def __len__(self) -> int:
        return self.batch.num_rows

    @property
    def kind(self) -> str:
        return str(self.batch.column(0)[0]) if self.batch.num_rows else ""


@dataclass(frozen=True, slots=True)
class CandleBatch:
    """Closed candles of one (exchange, symbol, timeframe), oldest first."""

    exchange: str
    symbol: str
    timeframe: str
    batch: pa.RecordBatch

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"

    def __len__(self) -> int:
        return self.batch.num_rows


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of time in which data may be missing (a disconnect or a detected gap)."""

    exchange: str
    symbol: str
    start_us: int
    end_us: int
    reason: str
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"


def dead_letters(
    kind: str,
    source: str,
    lines: pa.Array | list[int | None] | None,
    exchange: pa.Array | list[str] | str,
    symbol: pa.Array | list[str] | str,
    data_type: str,
    reasons: pa.Array | list[str],
    raw: pa.Array | list[str],
) -> DeadLetters:
    """Build a DeadLetters batch; scalar arguments are broadcast to every row."""
    n = len(reasons)

    def col(v: object, typ: pa.DataType) -> pa.Array:
        if isinstance(v, pa.ChunkedArray):
            v = v.combine_chunks()
        if isinstance(v, pa.Array):
            return v.cast(typ)
        if isinstance(v, list):
            return pa.array(v, type=typ)
        return pa.array([v] * n, type=typ)

    batch = pa.RecordBatch.from_arrays(
        [
            col(kind, pa.string()),
            col(source, pa.string()),
            col(lines if lines is not None else [None] * n, pa.int64()),
            col(exchange, pa.string()),
            col(symbol, pa.string()),
            col(data_type, pa.string()),
            col(reasons, pa.string()),
            col(raw, pa.string()),
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
    return DeadLetters(batch)


@dataclass(frozen=True, slots=True)
class TableRows:
    """Rows bound for one persisted table (a `connectors.tables.TableDef` name), already
    conformed to that table's schema, row_key included."""

    table: str
    rows: pa.Table

    def __len__(self) -> int:
        return self.rows.num_rows
