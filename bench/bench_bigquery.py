"""BigQuery write benchmark and cost model: `python -m bench.bench_bigquery`.

1. Throughput: starts a local BigQuery emulator (bqemulator, DuckDB-backed), then writes the
   same N candle rows (candles_1m with features) and N tick rows (ticks_trades) twice in the
   same run: through the project's `BigQueryWriter` (Storage Write API default stream, Arrow
   record batches, batches of --batch-rows as the sink sends them) and through a plain
   `client.insert_rows_json` baseline (the legacy streaming API, 500 rows per request as
   Google recommends, JSON built from the same Arrow table). It checks each table's row count
   by query and prints rows/s side by side. The emulator is local and single-process, so the
   figures compare client-side and protocol cost, not BigQuery's service capacity.
2. Cost model: bytes written per day per table for the default configuration (7 candle
   timeframes for --symbols symbols, ticks at the stated rates), priced for legacy streaming
   inserts, the Storage Write API and batch loads, using BigQuery's data size rules (STRING
   2 bytes + UTF-8 length, INT64/FLOAT64/TIMESTAMP 8 bytes, BOOL 1 byte, NULL 0 bytes;
   streaming inserts bill at least 1 KB per row) and the public US list prices below.

Both tables print as markdown, ready for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.tables import TICK_TABLES, TableDef, candle_table, conform

# Public list prices (US multi-region, on-demand), USD.
STREAMING_INSERT_USD_PER_GIB = 0.01 / 200 * 1024   # $0.01 per 200 MiB = $0.05 per GiB
STREAMING_INSERT_MIN_ROW_BYTES = 1024               # each row billed at least 1 KB
STORAGE_WRITE_USD_PER_GIB = 0.025                   # $0.025 per GiB ingested
STORAGE_WRITE_FREE_GIB_PER_MONTH = 2048             # first 2 TiB per month free
BATCH_LOAD_USD_PER_GIB = 0.0                        # batch loads: free (shared slot pool)
ACTIVE_STORAGE_USD_PER_GIB_MONTH = 0.02             # active logical storage
GIB = 1024 ** 3
S = 1_000_000
TIMEFRAMES = {"15s": 15, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14_400,
              "1d": 86_400}
PERIODS = (5, 10, 20)
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "BNBUSDT",
           "AVAXUSDT"]


# -- data --------------------------------------------------------------------------------

def trades(n: int, seed: int = 1) -> pa.Table:
    """`n` synthetic trades (ticks_trades), vectorized, realistic sizes."""
    rng = np.random.default_rng(seed)
    ts = 1_714_521_600 * S + np.cumsum(rng.integers(1, 20_000, n))
    sym = np.array(SYMBOLS)[rng.integers(0, len(SYMBOLS), n)]
    t = pa.table({
        "exchange": pa.array(np.full(n, "binance-futures")),
        "symbol": pa.array(sym),
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "local_timestamp": pa.array(ts + rng.integers(500, 5_000, n),
                                    pa.timestamp("us", tz="UTC")),
        "id": pa.array((4_000_000_000 + np.arange(n)).astype(str)),
        "side": pa.array(np.where(rng.random(n) < 0.5, "buy", "sell")),
        "price": pa.array(np.round(60_000 + np.cumsum(rng.normal(0, 2, n)), 1)),
        "amount": pa.array(np.round(rng.exponential(0.05, n), 3) + 0.001),
    })
    return conform(t, TICK_TABLES["ticks_trades"])


def candles(n: int, seed: int = 2) -> pa.Table:
    """`n` synthetic 1m candles with every feature column set (the worst case for size)."""
    tdef = candle_table("1m", PERIODS)
    rng = np.random.default_rng(seed)
    nsym = len(SYMBOLS)
    start = (1_714_521_600 + 60 * (np.arange(n) // nsym)) * S
    close = 60_000 + np.cumsum(rng.normal(0, 5, n))
    cols: dict[str, Any] = {
        "exchange": np.full(n, "binance-futures"),
        "symbol": np.array(SYMBOLS * (n // nsym + 1))[:n],
        "timeframe": np.full(n, "1m"),
        "timestamp": pa.array(start, pa.timestamp("us", tz="UTC")),
        "timestamp_out": pa.array(start + 60 * S, pa.timestamp("us", tz="UTC")),
        "open": close - 1, "high": close + 3, "low": close - 4, "close": close,
        "volume": rng.exponential(20, n), "buy_volume": rng.exponential(10, n),
        "sell_volume": rng.exponential(10, n), "trade_count": rng.integers(1, 5_000, n),
        "vwap": close - 0.5,
        "open_timestamp": pa.array(start + 10, pa.timestamp("us", tz="UTC")),
        "close_timestamp": pa.array(start + 59 * S, pa.timestamp("us", tz="UTC")),
        "local_timestamp": pa.array(start + 60 * S + 900, pa.timestamp("us", tz="UTC")),
        "is_filled": np.zeros(n, bool), "has_gap": np.zeros(n, bool),
    }
    for f in tdef.schema:
        if f.name not in cols and f.name != "row_key":
            cols[f.name] = rng.normal(0, 1, n)
    return conform(pa.table({k: pa.array(v) if not isinstance(v, pa.Array) else v
                             for k, v in cols.items()}), tdef)


def bigquery_row_bytes(rows: pa.Table) -> float:
    """Mean billed size of a row by BigQuery's data size rules (NULL is 0 bytes)."""
    total = 0
    for f in rows.schema:
        col = rows.column(f.name)
        valid = len(col) - col.null_count
        if pa.types.is_string(f.type):
            lengths = pc.sum(pc.binary_length(col)).as_py() or 0
            total += 2 * valid + lengths
        elif pa.types.is_boolean(f.type):
            total += valid
        else:
            total += 8 * valid
    return total / max(1, rows.num_rows)


# -- throughput --------------------------------------------------------------------------

@dataclass
class Run:
    path: str
    table: str
    rows: int
    seconds: float
    payload_bytes: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def _insert_rows_json(client: Any, table_id: str, rows: pa.Table, chunk: int) -> None:
    """The baseline: JSON objects from the Arrow rows, `chunk` rows per insert_rows_json."""
    from connectors.bigquery.writer import json_rows

    for start in range(0, rows.num_rows, chunk):
        part = rows.slice(start, chunk)
        errors = client.insert_rows_json(
            table_id, json_rows(part), row_ids=part.column("row_key").to_pylist())
        if errors:
            raise RuntimeError(f"insert_rows_json errors: {errors[:3]}")


def _json_bytes(rows: pa.Table) -> int:
    from connectors.bigquery.writer import json_rows

    return len(json.dumps(json_rows(rows)).encode())


def throughput(n: int, batch_rows: int, insert_chunk: int) -> list[Run]:
    from connectors.bigquery.emulator import BigQueryEmulator
    from connectors.bigquery.writer import BigQueryWriter
    from dataflows.config import BigQueryConfig

    runs: list[Run] = []
    data = {"candles_1m": (candle_table("1m", PERIODS), candles(n)),
            "ticks_trades": (TICK_TABLES["ticks_trades"], trades(n))}
    with BigQueryEmulator() as emu:
        os.environ.update(emu.env())
        os.environ["GOOGLE_CLOUD_PROJECT"] = emu.project
        storage = BigQueryWriter(BigQueryConfig(dataset="bench_storage",
                                                live_dataset="bench_storage_live"), live=False)
        plain = BigQueryWriter(BigQueryConfig(dataset="bench_insert_all",
                                              live_dataset="bench_insert_all_live",
                                              write_api="insert_all"), live=False)
        for name, (tdef, rows) in data.items():
            for w in (storage, plain):
                w.ensure_table(tdef)
            # Warm up both paths (connections, first-request schema) on a few rows elsewhere.
            _warm(storage, plain, tdef, rows.slice(0, 10))

            t0 = time.perf_counter()
            written = 0
            payload = 0
            for start in range(0, n, batch_rows):
                r = storage.write(tdef, rows.slice(start, batch_rows))
                written += r.written
                payload += int(r.details["bytes"])  # type: ignore[call-overload]
            dt = time.perf_counter() - t0
            _check(storage, tdef, written, n)
            runs.append(Run("Storage Write API (Arrow, BigQueryWriter)", name, n, dt, payload))

            t0 = time.perf_counter()
            _insert_rows_json(plain.client, plain.table_id(tdef), rows, insert_chunk)
            dt = time.perf_counter() - t0
            size = _json_bytes(rows)
            _check(plain, tdef, n, n)
            runs.append(Run(f"insert_rows_json ({insert_chunk} rows/request)", name, n, dt,
                            size))
        storage.close()
        plain.close()
    return runs


def _warm(storage: Any, plain: Any, tdef: TableDef, rows: pa.Table) -> None:
    from connectors.bigquery.writer import json_rows

    storage.write(tdef, rows)
    plain.client.insert_rows_json(plain.table_id(tdef), json_rows(rows))
    for w in (storage, plain):
        w.client.query(f"DELETE FROM `{w.table_id(tdef)}` WHERE TRUE").result()


def _check(w: Any, tdef: TableDef, written: int, n: int) -> None:
    got = w.query(f"SELECT COUNT(*) AS n FROM `{w.table_id(tdef)}`").column("n")[0].as_py()
    if written != n or got != n:
        raise RuntimeError(f"{w.table_id(tdef)}: wrote {written}, table has {got}, want {n}")


# -- cost model --------------------------------------------------------------------------

@dataclass
class CostRow:
    table: str
    rows_per_day: float
    row_bytes: float

    @property
    def gib_per_day(self) -> float:
        return self.rows_per_day * self.row_bytes / GIB

    @property
    def streaming_gib_per_day(self) -> float:
        return self.rows_per_day * max(self.row_bytes, STREAMING_INSERT_MIN_ROW_BYTES) / GIB


def cost_model(symbols: int, trades_per_s: float, snapshots_per_s: float,
               tickers_per_s: float) -> list[CostRow]:
    candle_bytes = bigquery_row_bytes(candles(2_000))
    out = [CostRow(f"candles_{tf}", symbols * 86_400 / secs, candle_bytes)
           for tf, secs in TIMEFRAMES.items()]
    out.append(CostRow("ticks_trades", trades_per_s * 86_400,
                       bigquery_row_bytes(trades(20_000))))
    book = TICK_TABLES["ticks_book_snapshots"]
    out.append(CostRow("ticks_book_snapshots", snapshots_per_s * 86_400,
                       _full_row_bytes(book)))
    ticker = TICK_TABLES["ticks_derivative_ticker"]
    out.append(CostRow("ticks_derivative_ticker", tickers_per_s * 86_400,
                       _full_row_bytes(ticker)))
    return out


def _full_row_bytes(tdef: TableDef) -> float:
    """Row size of a tick table with every column set (exchange/symbol as in the trades)."""
    size = 0
    for f in tdef.schema:
        if pa.types.is_string(f.type):
            size += 2 + {"exchange": 15, "symbol": 7, "row_key": 60}.get(f.name, 8)
        elif pa.types.is_boolean(f.type):
            size += 1
        else:
            size += 8
    return float(size)


# -- output ------------------------------------------------------------------------------

def throughput_markdown(runs: list[Run]) -> str:
    lines = ["| table | path | rows | seconds | rows/s | payload MB/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.table} | {r.path} | {r.rows:,} | {r.seconds:.2f} | "
                     f"{r.rows_per_s:,.0f} | {r.payload_bytes / r.seconds / 1e6:.1f} |")
    by_table: dict[str, list[Run]] = {}
    for r in runs:
        by_table.setdefault(r.table, []).append(r)
    for table, rs in by_table.items():
        if len(rs) == 2:
            lines.append(f"\n{table}: Storage Write API path is "
                         f"{rs[0].rows_per_s / rs[1].rows_per_s:.1f}x insert_rows_json")
    return "\n".join(lines)


def cost_markdown(rows: list[CostRow], symbols: int, trades_per_s: float,
                  snapshots_per_s: float, tickers_per_s: float) -> str:
    head = [
        f"Default configuration: 7 candle tables (15s, 1m, 5m, 15m, 1h, 4h, 1d) with features "
        f"for periods {', '.join(map(str, PERIODS))} for {symbols} symbols; ticks_trades at "
        f"{trades_per_s:,.0f} trades/s, ticks_book_snapshots (25 levels) at "
        f"{snapshots_per_s:,.0f}/s, ticks_derivative_ticker at {tickers_per_s:,.0f}/s "
        "(all symbols together).",
        "Prices (public US list prices): legacy streaming inserts $0.01 per 200 MiB, each row "
        "billed at least 1 KiB; Storage Write API $0.025 per GiB of actual bytes, first 2 TiB "
        "a month free; batch loads free; active storage $0.02 per GiB-month. Row sizes by "
        "BigQuery's rules (STRING 2 B + length, numbers and TIMESTAMP 8 B, BOOL 1 B, NULL 0).",
        "",
        "| table | rows/day | bytes/row | GiB/day written | streaming inserts $/day "
        "(1 KiB min) | Storage Write API $/day | batch load $/day |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tot_rows = tot_gib = tot_stream = tot_write = 0.0
    for r in rows:
        stream = r.streaming_gib_per_day * STREAMING_INSERT_USD_PER_GIB
        write = r.gib_per_day * STORAGE_WRITE_USD_PER_GIB
        head.append(f"| {r.table} | {r.rows_per_day:,.0f} | {r.row_bytes:,.0f} | "
                    f"{r.gib_per_day:,.3f} | {stream:,.2f} | {write:,.3f} | 0.00 |")
        tot_rows += r.rows_per_day
        tot_gib += r.gib_per_day
        tot_stream += stream
        tot_write += write
    head.append(f"| **total** | {tot_rows:,.0f} | {tot_gib * GIB / max(1, tot_rows):,.0f} | "
                f"{tot_gib:,.3f} | {tot_stream:,.2f} | {tot_write:,.3f} | 0.00 |")
    month_gib = tot_gib * 30
    billable = max(0.0, month_gib - STORAGE_WRITE_FREE_GIB_PER_MONTH)
    head += [
        "",
        f"Per 30-day month: {month_gib:,.1f} GiB written; streaming inserts "
        f"${tot_stream * 30:,.2f}; Storage Write API ${tot_write * 30:,.2f} list, "
        f"${billable * STORAGE_WRITE_USD_PER_GIB:,.2f} after the 2 TiB free tier; batch loads "
        f"$0. Keeping 30 days in the live dataset costs about "
        f"${month_gib * ACTIVE_STORAGE_USD_PER_GIB_MONTH:,.2f} a month in active storage "
        "(logical, uncompressed bytes).",
    ]
    return "\n".join(head)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=20_000, help="rows per table and path")
    p.add_argument("--batch-rows", type=int, default=10_000,
                   help="rows per BigQueryWriter.write (the sink's batch_size)")
    p.add_argument("--insert-chunk", type=int, default=500,
                   help="rows per insert_rows_json request")
    p.add_argument("--symbols", type=int, default=100)
    p.add_argument("--trades-per-s", type=float, default=1_000.0)
    p.add_argument("--snapshots-per-s", type=float, default=100.0)
    p.add_argument("--tickers-per-s", type=float, default=100.0)
    p.add_argument("--cost-only", action="store_true", help="skip the emulator throughput run")
    a = p.parse_args(argv)
    for name in ("rows", "batch_rows", "insert_chunk", "symbols"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not a.cost_only:
        print(f"## BigQuery write throughput (local emulator, {a.rows:,} rows per table and "
              "path)\n")
        print(throughput_markdown(throughput(a.rows, a.batch_rows, a.insert_chunk)))
        print()
    print("## BigQuery ingestion cost model\n")
    print(cost_markdown(cost_model(a.symbols, a.trades_per_s, a.snapshots_per_s,
                                   a.tickers_per_s),
                        a.symbols, a.trades_per_s, a.snapshots_per_s, a.tickers_per_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
