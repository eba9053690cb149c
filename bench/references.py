"""Reference implementations the benchmark compares the product against.

Each takes a list of Tardis `trades` CSV(.gz) paths (read in the given order, which is the
arrival order) and is deliberately independent of the product's code:

- `pyarrow_parse_ceiling`: pyarrow's streaming CSV reader, typed columns, nothing else. The
  replay cannot be faster than parsing its input.
- `python_per_tick_candles`: a plain-Python aggregator (csv + gzip, one dict update per trade
  and timeframe): what a straightforward hand-written replay costs.
- `polars_candles`: an idiomatic, lazy polars batch job computing the same candles and
  features: the speed reference the candle + feature step must beat.

Candle semantics (DESIGN.md, as tardis-dev's computeTradeBars): buckets `[start, start + tf)`
aligned to the Unix epoch by EXCHANGE timestamp; open = the first trade to arrive in the bucket;
high/low; close = the trade with the latest exchange timestamp (among equal timestamps the last to
arrive); volume, buy_volume, sell_volume, trade_count; vwap = sum(price * amount) / volume. Only
intervals with trades produce candles. Timestamps are integer microseconds.

Features (per exchange, symbol and timeframe, over the non-empty candles in time order, TA-Lib
conventions): sma_N; ema_N with alpha 2/(N+1) seeded with the SMA of the first N closes; rsi_N
with Wilder's smoothing seeded with the mean of the first N gains and losses (0 when both averages
are ~0, as TA-Lib); price_volatility_N, the population standard deviation of the last N
close-to-close log returns; and per candle log_return, volume_imbalance, avg_trade_size,
hl_range. Windowed values are null until N inputs exist.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv

__all__ = [
    "DEFAULT_PERIODS",
    "TIMEFRAMES_US",
    "polars_candles",
    "polars_candles_from_trades",
    "polars_candles_plan",
    "scan_trades",
    "pyarrow_parse_ceiling",
    "python_per_tick_candles",
    "timeframe_label",
]

#: The product's default timeframes, label -> length in microseconds.
TIMEFRAMES_US: dict[str, int] = {
    "15s": 15_000_000,
    "1m": 60_000_000,
    "5m": 300_000_000,
    "15m": 900_000_000,
    "1h": 3_600_000_000,
    "4h": 14_400_000_000,
    "1d": 86_400_000_000,
}
DEFAULT_PERIODS = (5, 10, 20)

#: Typed columns of a Tardis trades file, as the product parses them.
TRADE_COLUMN_TYPES: dict[str, pa.DataType] = {
    "exchange": pa.string(),
    "symbol": pa.string(),
    "timestamp": pa.int64(),
    "local_timestamp": pa.int64(),
    "id": pa.string(),
    "side": pa.string(),
    "price": pa.float64(),
    "amount": pa.float64(),
}
_NEEDED = ("exchange", "symbol", "timestamp", "side", "price", "amount")
#: TA-Lib's RSI treats |avg gain + avg loss| below this as zero (and outputs 0).
_TALIB_ZERO = 1e-14

CANDLE_KEYS = ("exchange", "symbol", "timeframe", "timestamp", "timestamp_out", "open", "high",
               "low", "close", "volume", "buy_volume", "sell_volume", "trade_count", "vwap")


def timeframe_label(us: int) -> str:
    """The label of a timeframe given in microseconds: 15s, 1m, 4h, 1d (largest whole unit)."""
    if not isinstance(us, int) or isinstance(us, bool) or us <= 0:
        raise ValueError(f"a timeframe must be a positive number of microseconds, got {us!r}")
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000),
                       ("s", 1_000_000), ("ms", 1_000), ("us", 1)):
        if us % size == 0:
            return f"{us // size}{unit}"
    raise AssertionError("unreachable")


def _timeframes(timeframes_us: Mapping[str, int] | Sequence[int]) -> list[tuple[str, int]]:
    """(label, microseconds) pairs from a mapping or a sequence of lengths, validated."""
    if isinstance(timeframes_us, Mapping):
        pairs = [(str(k), v) for k, v in timeframes_us.items()]
    elif isinstance(timeframes_us, Sequence) and not isinstance(timeframes_us, str):
        pairs = [(timeframe_label(v), v) for v in timeframes_us]
    else:
        raise ValueError(f"timeframes_us must be a mapping or a list, got {timeframes_us!r}")
    if not pairs:
        raise ValueError("timeframes_us must not be empty")
    for label, us in pairs:
        if not isinstance(us, int) or isinstance(us, bool) or us <= 0:
            raise ValueError(f"timeframe {label!r} must be a positive int of microseconds, "
                             f"got {us!r}")
    if len({us for _, us in pairs}) != len(pairs) or len({lb for lb, _ in pairs}) != len(pairs):
        raise ValueError(f"timeframes must be unique, got {pairs}")
    return pairs


def _paths(paths: Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path) or not paths:
        raise ValueError(f"paths must be a non-empty list of CSV(.gz) files, got {paths!r}")
    out = [Path(p) for p in paths]
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such trades file: {', '.join(missing)}")
    return out


def _periods(periods: Sequence[int]) -> list[int]:
    values = list(periods)
    if not values or any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in values):
        raise ValueError(f"periods must be a non-empty list of integers >= 2, got {periods!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"periods must be unique, got {values}")
    return values


# ------------------------------------------------------------------ (a) the parse ceiling


def pyarrow_parse_ceiling(paths: Sequence[str | Path], *, block_size: int = 8 << 20) -> int:
    """Read every file with pyarrow's streaming CSV reader into typed batches; return the rows.

    Nothing else is done with the batches: this is the ceiling for any replay of these files.
    """
    if not isinstance(block_size, int) or block_size < 1 << 16:
        raise ValueError(f"block_size must be an int >= 65536 bytes, got {block_size!r}")
    read = pa_csv.ReadOptions(block_size=block_size)
    convert = pa_csv.ConvertOptions(column_types=TRADE_COLUMN_TYPES)
    rows = 0
    for path in _paths(paths):
        with pa_csv.open_csv(str(path), read_options=read, convert_options=convert) as reader:
            for batch in reader:
                rows += batch.num_rows
    return rows


# ------------------------------------------------------------------ (d1) plain Python


def python_per_tick_candles(
    paths: Sequence[str | Path],
    timeframes_us: Mapping[str, int] | Sequence[int] = TIMEFRAMES_US,
) -> list[dict[str, Any]]:
    """Candles of every non-empty interval, aggregated trade by trade in plain Python.

    Returns dicts with the keys `CANDLE_KEYS`, ordered by exchange, symbol, timeframe (in the
    given order) and interval start.
    """
    tfs = _timeframes(timeframes_us)
    order = {label: i for i, (label, _) in enumerate(tfs)}
    # state: [open, high, low, close, close_ts, volume, buy, sell, count, sum(price*amount)]
    bars: dict[tuple[str, str, str, int], list[Any]] = {}
    for path in _paths(paths):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                continue
            missing = [c for c in _NEEDED if c not in header]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            i_ex, i_sym, i_ts, i_side, i_px, i_amt = (header.index(c) for c in _NEEDED)
            for row in reader:
                ts = int(row[i_ts])
                price = float(row[i_px])
                amount = float(row[i_amt])
                side = row[i_side]
                buy = amount if side == "buy" else 0.0
                sell = amount if side == "sell" else 0.0
                ex, sym = row[i_ex], row[i_sym]
                for label, tf in tfs:
                    key = (ex, sym, label, ts - ts % tf)
                    bar = bars.get(key)
                    if bar is None:
                        bars[key] = [price, price, price, price, ts, amount, buy, sell, 1,
                                     price * amount]
                        continue
                    if price > bar[1]:
                        bar[1] = price
                    if price < bar[2]:
                        bar[2] = price
                    if ts >= bar[4]:
                        bar[3] = price
                        bar[4] = ts
                    bar[5] += amount
                    bar[6] += buy
                    bar[7] += sell
                    bar[8] += 1
                    bar[9] += price * amount
    size = dict(tfs)
    out = []
    for (ex, sym, label, start) in sorted(bars, key=lambda k: (k[0], k[1], order[k[2]], k[3])):
        o, h, lo, c, _, vol, buy, sell, n, pv = bars[(ex, sym, label, start)]
        out.append({
            "exchange": ex, "symbol": sym, "timeframe": label, "timestamp": start,
            "timestamp_out": start + size[label], "open": o, "high": h, "low": lo, "close": c,
            "volume": vol, "buy_volume": buy, "sell_volume": sell, "trade_count": n,
            "vwap": pv / vol if vol > 0 else math.nan,
        })
    return out


# ------------------------------------------------------------------ (d2) polars batch job

_TRADES_SCHEMA = {"exchange": pl.String, "symbol": pl.String, "timestamp": pl.Int64,
                  "local_timestamp": pl.Int64, "id": pl.String, "side": pl.String,
                  "price": pl.Float64, "amount": pl.Float64}


def scan_trades(paths: Sequence[str | Path]) -> pl.LazyFrame:
    """Lazy scan of Tardis trades files (in the given order), only the columns candles need."""
    return (pl.scan_csv([str(p) for p in _paths(paths)], schema=_TRADES_SCHEMA)
            .select(*_NEEDED))


def polars_candles(
    paths: Sequence[str | Path],
    timeframes_us: Mapping[str, int] | Sequence[int] = TIMEFRAMES_US,
    periods: Sequence[int] = DEFAULT_PERIODS,
) -> dict[str, pl.DataFrame]:
    """Candles and features of every timeframe from trades files; key = timeframe label.

    One lazy polars plan from the CSV scan to the features (see `polars_candles_plan`). Each
    frame is sorted by exchange, symbol and timestamp; its columns are `CANDLE_KEYS`, then
    log_return, volume_imbalance, avg_trade_size, hl_range, then sma_N, ema_N, rsi_N,
    price_volatility_N for each period.
    """
    tfs = _timeframes(timeframes_us)
    return _by_timeframe(polars_candles_plan(scan_trades(paths), dict(tfs), periods).collect(), tfs)


def polars_candles_from_trades(
    trades: pl.DataFrame | pl.LazyFrame | pa.Table,
    timeframes_us: Mapping[str, int] | Sequence[int] = TIMEFRAMES_US,
    periods: Sequence[int] = DEFAULT_PERIODS,
) -> dict[str, pl.DataFrame]:
    """As `polars_candles`, from trades already in memory (rows in arrival order).

    For timing polars against the product's candle step on the same in-memory data. The
    `timestamp` column may be integer microseconds or a datetime.
    """
    tfs = _timeframes(timeframes_us)
    frame = pl.from_arrow(trades) if isinstance(trades, pa.Table) else trades
    if not isinstance(frame, pl.DataFrame | pl.LazyFrame):
        raise ValueError(f"trades must be a polars frame or an Arrow table, got {type(trades)}")
    lazy = frame.lazy()
    missing = [c for c in _NEEDED if c not in lazy.collect_schema()]
    if missing:
        raise ValueError(f"trades lack the columns {missing}")
    if lazy.collect_schema()["timestamp"].is_temporal():
        lazy = lazy.with_columns(pl.col("timestamp").dt.epoch("us"))
    lazy = lazy.select(*_NEEDED)
    return _by_timeframe(polars_candles_plan(lazy, dict(tfs), periods).collect(), tfs)


def _by_timeframe(result: pl.DataFrame, tfs: list[tuple[str, int]]) -> dict[str, pl.DataFrame]:
    parts = result.partition_by("timeframe", as_dict=True, maintain_order=True)
    empty = result.clear()
    return {label: parts.get((label,), empty) for label, _ in tfs}


def polars_candles_plan(
    trades: pl.LazyFrame,
    timeframes_us: Mapping[str, int] | Sequence[int] = TIMEFRAMES_US,
    periods: Sequence[int] = DEFAULT_PERIODS,
) -> pl.LazyFrame:
    """The lazy plan: trades (exchange, symbol, timestamp us, side, price, amount) -> candles.

    How: trades are aggregated once into candles of the finest common bucket (the gcd of the
    timeframes; epoch aligned, so every timeframe is a union of whole base buckets), each
    timeframe is rolled up from those, and the features run on all timeframes at once with
    window expressions over (exchange, symbol, timeframe), staged so no window nests another.
    Rows come out grouped by timeframe (in the given order), then sorted by exchange, symbol,
    timestamp.
    """
    tfs = _timeframes(timeframes_us)
    ns = _periods(periods)
    base = 0
    for _, us in tfs:
        base = math.gcd(base, us)

    price, amount, ts = pl.col("price"), pl.col("amount"), pl.col("timestamp")
    base_bars = (
        trades.with_row_index("arrival")
        .with_columns(pl.col("exchange", "symbol").cast(pl.Categorical),
                      (ts // base * base).alias("bucket"))
        .group_by("exchange", "symbol", "bucket")
        .agg(
            open=price.first(),
            first_arrival=pl.col("arrival").first(),
            high=price.max(),
            low=price.min(),
            # the latest exchange time; among equal times the last to arrive
            close=price.reverse().get(ts.reverse().arg_max()),
            volume=amount.sum(),
            buy_volume=amount.filter(pl.col("side") == "buy").sum(),
            sell_volume=amount.filter(pl.col("side") == "sell").sum(),
            trade_count=pl.len(),
            pv=(price * amount).sum(),
        )
        .with_columns(pl.col("exchange", "symbol").cast(pl.String))
        .sort("exchange", "symbol", "bucket")
        .cache()
    )

    frames = []
    for label, us in tfs:
        if us == base:
            rolled = base_bars.drop("first_arrival")
        else:
            rolled = (
                base_bars.group_by("exchange", "symbol", pl.col("bucket") // us * us,
                                   maintain_order=True)
                .agg(
                    open=pl.col("open").get(pl.col("first_arrival").arg_min()),
                    high=pl.col("high").max(),
                    low=pl.col("low").min(),
                    close=pl.col("close").last(),     # base bars are in time order
                    volume=pl.col("volume").sum(),
                    buy_volume=pl.col("buy_volume").sum(),
                    sell_volume=pl.col("sell_volume").sum(),
                    trade_count=pl.col("trade_count").sum(),
                    pv=pl.col("pv").sum(),
                )
            )
        frames.append(rolled.rename({"bucket": "timestamp"}).with_columns(
            timeframe=pl.lit(label), timestamp_out=pl.col("timestamp") + us))

    keys = ["exchange", "symbol", "timeframe"]
    close, volume, row = pl.col("close"), pl.col("volume"), pl.col("_row")
    gain, loss = pl.col("_gain"), pl.col("_loss")

    def seeded(x: pl.Expr, seed: str, at: int) -> pl.Expr:
        """x from row `at` on, its first value replaced by the seed: nulls before."""
        return pl.when(row == at).then(pl.col(seed)).when(row > at).then(x)

    sma = {n: f"sma_{n}" for n in ns}
    ema = {n: f"ema_{n}" for n in ns}
    rsi = {n: f"rsi_{n}" for n in ns}
    vol = {n: f"price_volatility_{n}" for n in ns}
    return (
        pl.concat(frames)
        .with_columns(
            _row=pl.int_range(pl.len()).over(keys),
            _delta=close.diff().over(keys),
            log_return=(close / close.shift(1)).log().over(keys),
            vwap=pl.col("pv") / volume,
            volume_imbalance=(pl.col("buy_volume") - pl.col("sell_volume")) / volume,
            avg_trade_size=volume / pl.col("trade_count"),
            hl_range=(pl.col("high") - pl.col("low")) / close,
        )
        .with_columns(_gain=pl.col("_delta").clip(lower_bound=0.0),
                      _loss=(-pl.col("_delta")).clip(lower_bound=0.0))
        .with_columns(
            *[close.rolling_mean(n).over(keys).alias(sma[n]) for n in ns],
            *[gain.rolling_mean(n).over(keys).alias(f"_gain_seed_{n}") for n in ns],
            *[loss.rolling_mean(n).over(keys).alias(f"_loss_seed_{n}") for n in ns],
            *[pl.col("log_return").rolling_std(n, ddof=0).over(keys).alias(vol[n]) for n in ns],
        )
        .with_columns(
            *[seeded(close, sma[n], n - 1).ewm_mean(alpha=2.0 / (n + 1), adjust=False)
              .over(keys).alias(ema[n]) for n in ns],
            *[seeded(gain, f"_gain_seed_{n}", n).ewm_mean(alpha=1.0 / n, adjust=False)
              .over(keys).alias(f"_avg_gain_{n}") for n in ns],
            *[seeded(loss, f"_loss_seed_{n}", n).ewm_mean(alpha=1.0 / n, adjust=False)
              .over(keys).alias(f"_avg_loss_{n}") for n in ns],
        )
        .with_columns(*[
            pl.when((pl.col(f"_avg_gain_{n}") + pl.col(f"_avg_loss_{n}")).abs() < _TALIB_ZERO)
            .then(0.0)
            .otherwise(100.0 * pl.col(f"_avg_gain_{n}")
                       / (pl.col(f"_avg_gain_{n}") + pl.col(f"_avg_loss_{n}")))
            .alias(rsi[n]) for n in ns])
        .select(*CANDLE_KEYS, "log_return", "volume_imbalance", "avg_trade_size", "hl_range",
                *sma.values(), *ema.values(), *rsi.values(), *vol.values())
    )
