"""Building and reading tick batches for the derived-type tests (real parsers, no mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from connectors.tardis.csv_reader import ChunkParser, LineChunker
from connectors.tardis.datatypes import DERIVATIVE_TICKER, TRADES, get_spec
from operators.messages import TickBatch

S = 1_000_000  # one second in microseconds
T0 = 1_699_920_000 * S  # 2023-11-14 00:00 UTC
TS = pa.timestamp("us", tz="UTC")


def trades(ts: Sequence[int], amounts: Sequence[float], *, sides: Sequence[str] | None = None,
           prices: Sequence[float] | None = None, ids: Sequence[str | None] | None = None,
           exchange: str = "binance", symbol: str = "BTCUSDT") -> TickBatch:
    """A trades TickBatch; ts in us, local_timestamp = ts + 1000 + row, line = row + 2."""
    n = len(ts)
    ts_a = np.asarray(ts, np.int64)
    sides = list(sides) if sides is not None else ["buy"] * n
    prices = list(prices) if prices is not None else [100.0] * n
    ids = list(ids) if ids is not None else [str(i + 1) for i in range(n)]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([exchange] * n), pa.array([symbol] * n), pa.array(ts_a).cast(TS),
         pa.array(ts_a + 1000 + np.arange(n)).cast(TS), pa.array(ids, pa.string()),
         pa.array(sides, pa.string()), pa.array(prices, pa.float64()),
         pa.array(amounts, pa.float64())],
        schema=TRADES.schema)
    return TickBatch(exchange, symbol, "trades", batch, "test.csv",
                     pa.array(np.arange(n) + 2, pa.int64()))


def ticker(ts: Sequence[int], funding_rate: Sequence[float | None],
           funding_ts: Sequence[int | None], *, exchange: str = "bitmex",
           symbol: str = "XBTUSD") -> TickBatch:
    """A derivative_ticker TickBatch; mark/index price = 1000 + row, predicted = rate * 2."""
    n = len(ts)
    ts_a = np.asarray(ts, np.int64)
    cols = {
        "exchange": pa.array([exchange] * n), "symbol": pa.array([symbol] * n),
        "timestamp": pa.array(ts_a).cast(TS), "local_timestamp": pa.array(ts_a + 500).cast(TS),
        "funding_timestamp": pa.array(list(funding_ts), pa.int64()).cast(TS),
        "funding_rate": pa.array(list(funding_rate), pa.float64()),
        "predicted_funding_rate": pa.array([None if r is None else r * 2
                                            for r in funding_rate], pa.float64()),
        "open_interest": pa.array([5.0] * n), "last_price": pa.array([1.0] * n),
        "index_price": pa.array(1000.0 + np.arange(n)),
        "mark_price": pa.array(1000.0 + np.arange(n)),
    }
    batch = pa.RecordBatch.from_arrays([cols[f.name] for f in DERIVATIVE_TICKER.schema],
                                       schema=DERIVATIVE_TICKER.schema)
    return TickBatch(exchange, symbol, "derivative_ticker", batch, "ticker.csv",
                     pa.array(np.arange(n) + 2, pa.int64()))


def read_tardis(path: Path, data_type: str, exchange: str, symbol: str) -> TickBatch:
    """A whole Tardis CSV file as one TickBatch, through the project's own CSV parser."""
    chunker = LineChunker(str(path), 1 << 20)
    parser = ChunkParser(get_spec(data_type), chunker.header, str(path))
    parts = [parser.parse(c) for c in chunker]
    chunker.close()
    assert all(not p.rejected_lines for p in parts), "real data rows were rejected"
    table = pa.concat_tables([p.table for p in parts]).combine_chunks()
    lines = np.concatenate([p.lines for p in parts])
    return TickBatch(exchange, symbol, data_type, table.to_batches()[0], str(path),
                     pa.array(lines, pa.int64()))


def cut(tb: TickBatch, positions: Sequence[int]) -> list[TickBatch]:
    """`tb` split before each of `positions` (empty pieces kept: steps must accept them)."""
    bounds = [0, *positions, len(tb)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        lines = tb.lines.slice(lo, hi - lo) if tb.lines is not None else None
        out.append(TickBatch(tb.exchange, tb.symbol, tb.data_type, tb.batch.slice(lo, hi - lo),
                             tb.source, lines))
    return out
