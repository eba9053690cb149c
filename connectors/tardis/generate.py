"""Deterministic generator of realistic Tardis `trades` CSV.gz files.

Why: tests, the benchmark and the bundled sample need realistic trade data that can be
committed (the sample) or regenerated at any size (the benchmark) without copying real Tardis
files. Output bytes depend only on the arguments (seeded numpy, gzip with mtime 0 and a fixed
compression level), and generation is fully vectorised: no Python loop per trade.

The files look like Tardis's downloadable `trades` datasets (binance-futures style):

- name `{exchange}_trades_{YYYY-MM-DD}_{SYMBOL}.csv.gz`, header
  `exchange,symbol,timestamp,local_timestamp,id,side,price,amount`;
- `timestamp` is the exchange time in integer microseconds at millisecond resolution and
  `local_timestamp` the receive time, a few milliseconds later with jitter; rows are ordered by
  `local_timestamp` (strictly increasing), so exchange timestamps are non-decreasing unless
  `reorder=True` adds rare reorderings of a few milliseconds;
- contiguous increasing integer trade ids, `side` buy/sell, `price` on the symbol's tick grid,
  `amount` a positive multiple of the lot size;
- aggressive orders arrive as a Poisson process with an intraday activity pattern,
  volatility-linked activity, bursts and quiet spells (so some 15 s intervals are empty); an
  order fills against one or more resting orders (trades with the same exchange timestamp,
  prices walking away from the touch); the mid price is a random walk with stochastic
  (clustered) volatility, and buys and sells trade at the ask and the bid.

Typical use::

    generate_trades("bench/data", n_symbols=50, total_trades=1_000_000, seed=7)
    python -m connectors.tardis.generate --out bench/data --symbols 50 --trades 1000000 \\
        --date 2024-01-15 --seed 7
    python -m connectors.tardis.generate --sample        # rewrite connectors/tardis/sample/
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from scipy.signal import lfilter

__all__ = [
    "HEADER",
    "KNOWN_SYMBOLS",
    "SAMPLE",
    "SAMPLE_DIR",
    "SymbolSpec",
    "generate_sample",
    "generate_trades",
    "main",
    "split_trades",
    "symbol_specs",
    "trades_file_name",
]

HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
#: Fixed gzip level: part of the output's determinism (and a good size/speed balance).
COMPRESS_LEVEL = 6
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

_DAY_US = 86_400_000_000
_DAY_S = 86_400
_ROWS_PER_CHUNK = 262_144
#: Last exchange millisecond of a day a trade may have, so receive times stay inside the day.
_LAST_MS = 86_399_800


@dataclass(frozen=True)
class SymbolSpec:
    """How one instrument trades: start price, tick and lot size (decimal strings), activity.

    `daily_vol` is the typical daily standard deviation of log returns, `median_notional` the
    median trade size in quote currency, `amount_sigma` the lognormal spread of trade sizes.
    """

    symbol: str
    price: float
    tick: str
    lot: str
    daily_vol: float = 0.04
    median_notional: float = 600.0
    amount_sigma: float = 1.9

    def __post_init__(self) -> None:
        if not self.symbol or "," in self.symbol or "_" in self.symbol:
            raise ValueError(f"symbol must be non-empty without ',' or '_', got {self.symbol!r}")
        for name in ("tick", "lot"):
            value = getattr(self, name)
            if Decimal(value) <= 0:
                raise ValueError(f"{self.symbol}: {name} must be a positive decimal, got {value}")
        if not self.price > 0 or not math.isfinite(self.price):
            raise ValueError(f"{self.symbol}: price must be positive, got {self.price}")
        if Decimal(repr(self.price)) < Decimal(self.tick) * 100:
            raise ValueError(f"{self.symbol}: price {self.price} must be >= 100 ticks")
        if not 0 < self.daily_vol < 1:
            raise ValueError(f"{self.symbol}: daily_vol must be in (0, 1), got {self.daily_vol}")
        if not self.median_notional > 0 or not self.amount_sigma >= 0:
            raise ValueError(f"{self.symbol}: median_notional > 0 and amount_sigma >= 0 required")


#: Realistic binance-futures instruments (early-2020 price levels, tick and lot sizes).
KNOWN_SYMBOLS: dict[str, SymbolSpec] = {s.symbol: s for s in (
    SymbolSpec("BTCUSDT", 9600.0, "0.01", "0.001", 0.035, 900.0, 1.9),
    SymbolSpec("ETHUSDT", 260.0, "0.01", "0.001", 0.045, 500.0, 1.9),
    SymbolSpec("XRPUSDT", 0.27, "0.0001", "0.1", 0.05, 300.0, 1.8),
    SymbolSpec("BCHUSDT", 380.0, "0.01", "0.001", 0.05, 400.0),
    SymbolSpec("LTCUSDT", 70.0, "0.01", "0.001", 0.05, 400.0),
    SymbolSpec("EOSUSDT", 4.1, "0.001", "0.1", 0.05, 300.0),
    SymbolSpec("BNBUSDT", 20.5, "0.001", "0.01", 0.045, 300.0),
    SymbolSpec("LINKUSDT", 4.4, "0.001", "0.01", 0.06, 300.0),
    SymbolSpec("ETCUSDT", 10.8, "0.001", "0.01", 0.055, 300.0),
    SymbolSpec("TRXUSDT", 0.0205, "0.00001", "1", 0.05, 200.0),
    SymbolSpec("ADAUSDT", 0.063, "0.00001", "1", 0.055, 200.0),
    SymbolSpec("XLMUSDT", 0.065, "0.00001", "1", 0.055, 200.0),
    SymbolSpec("XTZUSDT", 3.1, "0.001", "0.1", 0.06, 200.0),
    SymbolSpec("DASHUSDT", 115.0, "0.01", "0.001", 0.05, 250.0),
    SymbolSpec("ZECUSDT", 65.0, "0.01", "0.001", 0.055, 250.0),
    SymbolSpec("XMRUSDT", 85.0, "0.01", "0.001", 0.045, 250.0),
    SymbolSpec("ATOMUSDT", 5.0, "0.001", "0.01", 0.06, 200.0),
    SymbolSpec("ONTUSDT", 0.85, "0.0001", "0.1", 0.06, 150.0),
    SymbolSpec("IOTAUSDT", 0.28, "0.0001", "0.1", 0.06, 150.0),
    SymbolSpec("BATUSDT", 0.25, "0.0001", "0.1", 0.06, 150.0),
    SymbolSpec("VETUSDT", 0.0075, "0.000001", "1", 0.065, 150.0),
    SymbolSpec("NEOUSDT", 13.5, "0.001", "0.01", 0.055, 200.0),
    SymbolSpec("QTUMUSDT", 2.8, "0.001", "0.1", 0.06, 150.0),
    SymbolSpec("IOSTUSDT", 0.0068, "0.000001", "1", 0.065, 150.0),
)}

#: Trades per symbol in the bundled sample (see `generate_sample`, which makes it).
SAMPLE: Mapping[str, int] = MappingProxyType(
    {"BTCUSDT": 36_000, "ETHUSDT": 28_000, "XRPUSDT": 22_000})


def trades_file_name(exchange: str, day: dt.date | str, symbol: str) -> str:
    """Tardis's name for a trades dataset file: `{exchange}_trades_{date}_{SYMBOL}.csv.gz`."""
    return f"{exchange}_trades_{_parse_day(day).isoformat()}_{symbol}.csv.gz"


def symbol_specs(n_symbols: int, seed: int = 0) -> list[SymbolSpec]:
    """`n_symbols` instruments: the known ones first, then synthetic `SYN001USDT`, ...

    Synthetic instruments get a log-uniform start price in [0.01, 5000] and tick/lot sizes
    scaled to it (about 4-5 significant price digits, a lot worth a few cents to dollars).
    """
    if not isinstance(n_symbols, int) or isinstance(n_symbols, bool) or n_symbols < 1:
        raise ValueError(f"n_symbols must be a positive integer, got {n_symbols!r}")
    specs = list(KNOWN_SYMBOLS.values())[:n_symbols]
    rng = np.random.default_rng([seed, 0x5EED])
    for i in range(len(specs), n_symbols):
        price_exp = rng.uniform(-2.0, math.log10(5000.0))
        price = float(f"{10.0 ** price_exp:.4g}")
        tick_exp = math.floor(math.log10(price)) - 4
        lot_exp = min(3, max(-3, round(math.log10(1.0 / price))))
        specs.append(SymbolSpec(
            symbol=f"SYN{i - len(KNOWN_SYMBOLS) + 1:03d}USDT",
            price=price,
            tick=_pow10(tick_exp),
            lot=_pow10(lot_exp),
            daily_vol=float(rng.uniform(0.03, 0.08)),
            median_notional=float(rng.uniform(100.0, 500.0)),
        ))
    return specs


def split_trades(total_trades: int, n_symbols: int, seed: int = 0) -> list[int]:
    """Split `total_trades` over symbols unevenly, like real markets (Zipf-like by rank).

    The first symbol gets the most; every symbol gets at least one trade; the sum is exact.
    """
    if not isinstance(n_symbols, int) or n_symbols < 1:
        raise ValueError(f"n_symbols must be a positive integer, got {n_symbols!r}")
    if not isinstance(total_trades, int) or total_trades < n_symbols:
        raise ValueError(
            f"total_trades must be an integer >= n_symbols ({n_symbols}), got {total_trades!r}")
    rng = np.random.default_rng([seed, 0x5917])
    ranks = np.arange(1, n_symbols + 1, dtype=np.float64)
    weights = ranks ** -1.1 * np.exp(0.25 * rng.standard_normal(n_symbols))
    weights[0] = weights.max()
    spare = total_trades - n_symbols
    share = spare * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    remainder = spare - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:remainder]] += 1
    return [int(c) + 1 for c in counts]


def generate_trades(
    out_dir: str | Path,
    *,
    exchange: str = "binance-futures",
    symbols: Sequence[str | SymbolSpec] | None = None,
    n_symbols: int | None = None,
    day: dt.date | str = "2024-01-15",
    days: int = 1,
    trades_per_symbol: int | Mapping[str, int] | None = None,
    total_trades: int | None = None,
    seed: int = 7,
    reorder: bool = False,
    compresslevel: int = COMPRESS_LEVEL,
    workers: int | None = None,
) -> list[Path]:
    """Write one Tardis trades CSV.gz per (symbol, day) into `out_dir`; return their paths.

    Choose the instruments with `symbols` (names, known or not, or `SymbolSpec`s) or
    `n_symbols`, and the volume with `trades_per_symbol` (per day; an int or a mapping by
    symbol) or `total_trades` (per day, split unevenly over symbols). With `days > 1`
    consecutive daily files continue each symbol's price and trade ids. `reorder=True` adds rare
    exchange-timestamp reorderings of a few ms (rows stay ordered by local_timestamp).
    Symbols are written by `workers` threads (default: the CPU count; numpy, Arrow and zlib
    release the GIL); the output does not depend on it. Paths are returned day by day, symbols
    in the order given.
    """
    if not exchange or "_" in exchange or "," in exchange:
        raise ValueError(f"exchange must be non-empty without '_' or ',', got {exchange!r}")
    if (symbols is None) == (n_symbols is None):
        raise ValueError("give exactly one of symbols= or n_symbols=")
    if (trades_per_symbol is None) == (total_trades is None):
        raise ValueError("give exactly one of trades_per_symbol= or total_trades=")
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a positive integer, got {days!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(compresslevel, int) or not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be an integer 0..9, got {compresslevel!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    first_day = _parse_day(day)
    specs = _resolve_specs(symbols, n_symbols, seed)
    counts = _resolve_counts(specs, trades_per_symbol, total_trades, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def one_symbol(spec: SymbolSpec, count: int) -> list[Path]:
        # Each symbol has its own random stream, so threads cannot change the output.
        rng = np.random.default_rng([seed, _stable_hash(exchange), _stable_hash(spec.symbol)])
        log_mid = math.log(spec.price / float(Decimal(spec.tick)))
        next_id = int(rng.integers(10_000_000, 900_000_000))
        written = []
        for k in range(days):
            current = first_day + dt.timedelta(days=k)
            path = out / trades_file_name(exchange, current, spec.symbol)
            log_mid, next_id = _write_symbol_day(
                path, exchange, spec, current, count, rng, log_mid, next_id, reorder,
                compresslevel)
            written.append(path)
        return written

    n_workers = min(workers or os.cpu_count() or 1, len(specs))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        per_symbol = list(pool.map(one_symbol, specs, counts))
    return [per_symbol[i][k] for k in range(days) for i in range(len(specs))]


def generate_sample(out_dir: str | Path = SAMPLE_DIR) -> list[Path]:
    """Write the bundled sample into `out_dir`: binance-futures, one UTC day, three symbols.

    This call is the sample's definition; connectors/tardis/sample/ holds its output, committed
    (regenerate with `python -m connectors.tardis.generate --sample`).
    """
    return generate_trades(
        out_dir,
        exchange="binance-futures",
        symbols=list(SAMPLE),
        day="2024-01-15",
        trades_per_symbol=SAMPLE,
        seed=20240115,
    )


# --------------------------------------------------------------------------- internals


def _pow10(exponent: int) -> str:
    """10**exponent as an exact decimal string ('0.001', '1', '100')."""
    return format(Decimal(1).scaleb(exponent), "f")


def _stable_hash(text: str) -> int:
    """A hash of `text` that is the same in every process (unlike `hash`)."""
    return zlib.crc32(text.encode())


def _parse_day(day: dt.date | str) -> dt.date:
    if isinstance(day, dt.datetime):
        raise ValueError(f"day must be a date, not a datetime: {day!r}")
    if isinstance(day, dt.date):
        return day
    try:
        return dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"day must be a date or 'YYYY-MM-DD', got {day!r}") from None


def _resolve_specs(symbols: Sequence[str | SymbolSpec] | None, n_symbols: int | None,
                   seed: int) -> list[SymbolSpec]:
    if n_symbols is not None:
        return symbol_specs(n_symbols, seed)
    assert symbols is not None
    if isinstance(symbols, str) or not symbols:
        raise ValueError(f"symbols must be a non-empty list of names, got {symbols!r}")
    specs: list[SymbolSpec] = []
    synthetic = iter(symbol_specs(len(KNOWN_SYMBOLS) + len(symbols), seed)[len(KNOWN_SYMBOLS):])
    for item in symbols:
        if isinstance(item, SymbolSpec):
            specs.append(item)
        elif isinstance(item, str) and item in KNOWN_SYMBOLS:
            specs.append(KNOWN_SYMBOLS[item])
        elif isinstance(item, str):
            template = next(synthetic)
            specs.append(SymbolSpec(item, template.price, template.tick, template.lot,
                                    template.daily_vol, template.median_notional))
        else:
            raise ValueError(f"symbols entries must be names or SymbolSpec, got {item!r}")
    names = [s.symbol for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"symbols must be unique, got {names}")
    return specs


def _resolve_counts(specs: list[SymbolSpec], trades_per_symbol: int | Mapping[str, int] | None,
                    total_trades: int | None, seed: int) -> list[int]:
    if total_trades is not None:
        return split_trades(total_trades, len(specs), seed)
    if isinstance(trades_per_symbol, Mapping):
        missing = [s.symbol for s in specs if s.symbol not in trades_per_symbol]
        if missing:
            raise ValueError(f"trades_per_symbol has no count for {missing}")
        counts = [trades_per_symbol[s.symbol] for s in specs]
    else:
        counts = [trades_per_symbol] * len(specs)  # type: ignore[list-item]
    for spec, count in zip(specs, counts, strict=True):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"trades for {spec.symbol} must be a positive integer, got {count!r}")
    return counts


def _ar1(rng: np.random.Generator, n: int, tau: float, std: float) -> np.ndarray:
    """A stationary AR(1) path of `n` steps with e-folding time `tau` steps and std `std`."""
    phi = math.exp(-1.0 / tau)
    noise = rng.standard_normal(n) * (std * math.sqrt(1.0 - phi * phi))
    start = rng.standard_normal() * std
    path, _ = lfilter([1.0], [1.0, -phi], noise, zi=[phi * start])
    return np.asarray(path)


def _episodes(rng: np.random.Generator, rate_per_day: float, mean_s: float,
              low: float, high: float) -> np.ndarray:
    """Per-second multiplier: 1 outside random episodes, a random factor in [low, high] in them."""
    count = int(rng.poisson(rate_per_day))
    starts = rng.integers(0, _DAY_S, count)
    ends = np.minimum(starts + 3 + rng.exponential(mean_s, count).astype(np.int64), _DAY_S)
    log_factor = rng.uniform(math.log(low), math.log(high), count)
    acc = np.zeros(_DAY_S + 1)
    np.add.at(acc, starts, log_factor)
    np.add.at(acc, ends, -log_factor)
    return np.asarray(np.exp(np.cumsum(acc[:-1])))


def _intraday(seconds: np.ndarray) -> np.ndarray:
    """Activity by time of day (UTC): Asia, Europe and US sessions, a quiet late evening."""
    h = seconds / 3600.0
    return np.asarray(0.45
                      + 0.30 * np.exp(-0.5 * ((h - 2.0) / 2.0) ** 2)
                      + 0.40 * np.exp(-0.5 * ((h - 8.5) / 1.5) ** 2)
                      + 0.75 * np.exp(-0.5 * ((h - 14.5) / 1.8) ** 2))


def _decimal_parts(value: str) -> tuple[int, int]:
    """'0.025' -> (25, 1000): an exact integer multiple and power-of-ten divisor."""
    d = Decimal(value).normalize()
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int) and sign == 0
    mantissa = int("".join(map(str, digits)))
    if exponent >= 0:
        return mantissa * 10 ** exponent, 1
    return mantissa, 10 ** -exponent


def _write_symbol_day(path: Path, exchange: str, spec: SymbolSpec, day: dt.date, n: int,
                      rng: np.random.Generator, log_mid: float, first_id: int, reorder: bool,
                      compresslevel: int) -> tuple[float, int]:
    """Simulate one symbol's day of trades and write it; return (end log mid, next id)."""
    cols = _simulate_day(spec, n, rng, log_mid, reorder)
    day_us = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) \
        * 1_000_000
    tick_m, tick_div = _decimal_parts(spec.tick)
    lot_m, lot_div = _decimal_parts(spec.lot)
    # k * m / 10**d is the double nearest the decimal, so Arrow prints it exactly and shortest.
    price = cols["price_ticks"] * float(tick_m) / float(tick_div) if tick_m != 1 \
        else cols["price_ticks"] / float(tick_div)
    amount = cols["lots"] * float(lot_m) / float(lot_div) if lot_m != 1 \
        else cols["lots"] / float(lot_div)
    zeros = pa.array(np.zeros(n, dtype=np.int8))
    table = pa.table({
        "exchange": pa.DictionaryArray.from_arrays(zeros, pa.array([exchange])),
        "symbol": pa.DictionaryArray.from_arrays(zeros, pa.array([spec.symbol])),
        "timestamp": pa.array(cols["ts_us"] + day_us),
        "local_timestamp": pa.array(cols["local_us"] + day_us),
        "id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "side": pa.DictionaryArray.from_arrays(pa.array(cols["sell"].astype(np.int8)),
                                               pa.array(["buy", "sell"])),
        "price": pa.array(price),
        "amount": pa.array(amount),
    })
    _write_csv_gz(path, table, compresslevel)
    return float(cols["end_log_mid"][0]), first_id + n


def _simulate_day(spec: SymbolSpec, n: int, rng: np.random.Generator, log_mid0: float,
                  reorder: bool) -> dict[str, np.ndarray]:
    """The trades of one day as arrays (times in us since midnight, prices in ticks, lots)."""
    # Aggressive orders; each fills one or more resting orders (same exchange timestamp).
    new_order = rng.random(n) < 0.58
    new_order[0] = True
    order = np.cumsum(new_order) - 1
    m = int(order[-1]) + 1
    order_start = np.flatnonzero(new_order)
    fill_no = np.arange(n) - order_start[order]

    # Per-second activity and volatility: intraday pattern, clustered log-volatility, bursts
    # (busy and volatile) and quiet spells (almost no trading: empty 15 s intervals).
    sec = np.arange(_DAY_S, dtype=np.float64)
    log_vol = _ar1(rng, _DAY_S, 900.0, 0.40) + _ar1(rng, _DAY_S, 10_800.0, 0.30)
    bursts = _episodes(rng, 30.0, 25.0, 3.0, 15.0)
    quiet = _episodes(rng, 12.0, 90.0, 0.01, 0.1)
    session = _intraday(sec)
    activity = session * np.exp(1.2 * log_vol) * bursts * quiet
    sigma = np.exp(log_vol) * np.sqrt(bursts * session)
    sigma *= spec.daily_vol / math.sqrt(float(np.mean(sigma * sigma)) * _DAY_S)

    # Order times: m sorted draws from the activity density (a Poisson process given its
    # count), via normalised exponential spacings and the inverse cumulative intensity.
    spacings = np.cumsum(rng.exponential(1.0, m + 1))
    cum = np.concatenate(([0.0], np.cumsum(activity)))
    t = np.interp(spacings[:m] / spacings[m] * cum[-1], cum, np.arange(_DAY_S + 1.0))
    ms = np.minimum((t * 1000.0).astype(np.int64), _LAST_MS)

    # Mid price: Brownian in calendar time with the local volatility; sides lean with the move.
    shocks = rng.standard_normal(m)
    dt_s = np.diff(t, prepend=0.0)
    sec_idx = np.minimum(t.astype(np.int64), _DAY_S - 1)
    log_mid = log_mid0 + np.cumsum(sigma[sec_idx] * np.sqrt(dt_s) * shocks)
    log_mid = np.maximum(log_mid, math.log(110.0))       # stays >= ~100 ticks
    bid = np.floor(np.exp(log_mid))
    sell_order = shocks + 0.8 * rng.standard_normal(m) < 0.0

    # Fills walk away from the touch: buys at the ask and up, sells at the bid and down.
    gap = max(1.0, spec.price * 1e-5 / float(Decimal(spec.tick)))
    step = np.where((fill_no > 0) & (rng.random(n) < 0.45), rng.geometric(1.0 / gap, n), 0)
    walk = np.cumsum(step)
    offset = walk - walk[order_start][order]
    sell = sell_order[order]
    price_ticks = np.where(sell, np.maximum(bid[order] - offset, 1.0), bid[order] + 1 + offset)

    # Sizes: lognormal notional, in whole lots, never zero.
    lot = float(Decimal(spec.lot))
    mu = math.log(spec.median_notional / (spec.price * lot))
    z = np.clip(rng.standard_normal(n), -4.0, 3.5)          # no absurd block trades
    lots = np.clip(np.rint(np.exp(mu + spec.amount_sigma * z)), 1.0, 1e12)

    # Exchange time at ms resolution; receive time a few ms later, strictly increasing.
    order_ms = ms
    if reorder:
        # In busy moments, a few orders carry an exchange time 1-3 ms before the previous one.
        gap_ms = np.diff(ms, prepend=ms[0] + 1_000_000)
        late = (gap_ms <= 4) & (rng.random(m) < 0.1)
        order_ms = np.where(late, np.maximum(ms - gap_ms - rng.integers(1, 4, m), 0), ms)
    ts_us = order_ms[order] * 1000
    base_latency = 1_500 + int(rng.integers(0, 2_500))
    latency = base_latency + np.minimum(rng.gamma(2.0, 600.0, m), 60_000).astype(np.int64)
    latency += (ms - order_ms) * 1000                       # a reordered trade arrived late
    local = ts_us + latency[order] + fill_no * 7 + rng.integers(0, 4, n)
    idx = np.arange(n, dtype=np.int64)
    local = np.maximum.accumulate(local - idx) + idx

    return {
        "ts_us": ts_us,
        "local_us": local,
        "sell": sell,
        "price_ticks": price_ticks,
        "lots": lots,
        "end_log_mid": np.array([log_mid[-1]]),
    }


def _write_csv_gz(path: Path, table: pa.Table, compresslevel: int) -> None:
    """Write `table` as CSV (Tardis header, no quoting) in a gzip with a fixed header."""
    compressor = zlib.compressobj(compresslevel, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
    crc = 0
    size = 0
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        # gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
        fh.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")
        pieces = [(HEADER + "\n").encode()]
        for start in range(0, table.num_rows, _ROWS_PER_CHUNK):
            sink = pa.BufferOutputStream()
            pa_csv.write_csv(table.slice(start, _ROWS_PER_CHUNK), sink, options)
            pieces.append(sink.getvalue().to_pybytes())
            for piece in pieces:
                crc = zlib.crc32(piece, crc)
                size += len(piece)
                fh.write(compressor.compress(piece))
            pieces = []
        fh.write(compressor.flush())
        fh.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    tmp.replace(path)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write generated trades files (or the bundled sample) and list them."""
    parser = argparse.ArgumentParser(
        prog="python -m connectors.tardis.generate",
        description="Write deterministic, realistic Tardis trades CSV.gz files.")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--symbols", default="50",
                        help="a number of symbols, or comma-separated names (default 50)")
    parser.add_argument("--trades", type=int, default=1_000_000,
                        help="total trades per day, split unevenly over symbols")
    parser.add_argument("--date", default="2024-01-15", help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=1, help="consecutive days (default 1)")
    parser.add_argument("--exchange", default="binance-futures")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reorder", action="store_true",
                        help="add rare exchange-timestamp reorderings of a few ms")
    parser.add_argument("--sample", action="store_true",
                        help="write the bundled sample (to --out, default the package's sample/)")
    args = parser.parse_args(argv)
    try:
        if args.sample:
            paths = generate_sample(args.out or SAMPLE_DIR)
        else:
            if args.out is None:
                parser.error("--out is required (unless --sample)")
            chosen: dict[str, object] = (
                {"n_symbols": int(args.symbols)} if args.symbols.strip().isdigit()
                else {"symbols": [s.strip() for s in args.symbols.split(",") if s.strip()]})
            paths = generate_trades(
                args.out, exchange=args.exchange, day=args.date, days=args.days,
                total_trades=args.trades, seed=args.seed, reorder=args.reorder,
                **chosen)  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
