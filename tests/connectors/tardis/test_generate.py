"""The trade generator: deterministic bytes, Tardis format, realistic data, the bundled sample."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from connectors.tardis import generate as gen
from connectors.tardis.generate import (
    HEADER,
    KNOWN_SYMBOLS,
    SAMPLE,
    SAMPLE_DIR,
    generate_sample,
    generate_trades,
    split_trades,
    symbol_specs,
    trades_file_name,
)

NAME_RE = re.compile(r"^(?P<exchange>[a-z0-9-]+)_trades_(?P<date>\d{4}-\d{2}-\d{2})_"
                     r"(?P<symbol>[A-Z0-9]+)\.csv\.gz$")
TYPES = {"exchange": pa.string(), "symbol": pa.string(), "timestamp": pa.int64(),
         "local_timestamp": pa.int64(), "id": pa.int64(), "side": pa.string(),
         "price": pa.string(), "amount": pa.string()}
DAY_US = 86_400_000_000


def read(path: Path) -> dict[str, np.ndarray]:
    """The file's columns; price and amount as their exact text."""
    table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=TYPES))
    assert table.column_names == HEADER.split(",")
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


def assert_on_grid(texts: np.ndarray, step: str) -> None:
    """Every decimal text is a positive multiple of `step`, written plainly (no exponent)."""
    unit = Decimal(step)
    for text in np.unique(texts):
        assert re.fullmatch(r"\d+(\.\d*[1-9])?", text), f"{text!r} is not a plain decimal"
        value = Decimal(text)
        assert value > 0 and value % unit == 0, f"{text} is not a positive multiple of {step}"


def assert_valid_trades_file(path: Path, tick: str, lot: str) -> dict[str, np.ndarray]:
    """The invariants of a generated file (default options); returns its columns."""
    m = NAME_RE.match(path.name)
    assert m, path.name
    with gzip.open(path, "rt") as fh:
        assert fh.readline() == HEADER + "\n"
    cols = read(path)
    n = len(cols["id"])
    assert n > 0
    assert set(cols["exchange"]) == {m["exchange"]}
    assert set(cols["symbol"]) == {m["symbol"]}
    day_start = int(dt.datetime.fromisoformat(m["date"]).replace(tzinfo=dt.UTC).timestamp()) \
        * 1_000_000
    ts, local = cols["timestamp"], cols["local_timestamp"]
    assert ts.min() >= day_start and local.max() < day_start + DAY_US
    assert np.all(ts % 1000 == 0), "exchange timestamps are at millisecond resolution"
    assert np.all(np.diff(local) > 0), "rows are ordered by local_timestamp"
    assert np.all(np.diff(ts) >= 0), "exchange timestamps never go backwards by default"
    latency = local - ts
    assert latency.min() > 0 and latency.max() < 100_000
    assert np.array_equal(cols["id"], np.arange(cols["id"][0], cols["id"][0] + n))
    assert set(cols["side"]) <= {"buy", "sell"}
    assert_on_grid(cols["price"], tick)
    assert_on_grid(cols["amount"], lot)
    return cols


# ------------------------------------------------------------------ the bundled sample


def test_sample_regenerates_byte_identical(tmp_path: Path) -> None:
    committed = sorted(SAMPLE_DIR.glob("*.csv.gz"))
    assert [p.name for p in committed] == sorted(
        trades_file_name("binance-futures", "2024-01-15", s) for s in SAMPLE)
    written = generate_sample(tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in committed]
    for old in committed:
        new = tmp_path / old.name
        # The CSV text first (a clearer failure), then the gzip bytes themselves.
        assert gzip.decompress(new.read_bytes()) == gzip.decompress(old.read_bytes()), old.name
        assert new.read_bytes() == old.read_bytes(), (
            f"{old.name}: same CSV but different gzip bytes (zlib implementation differs?)")


def test_sample_is_small_and_realistic() -> None:
    files = sorted(SAMPLE_DIR.glob("*.csv.gz"))
    assert sum(p.stat().st_size for p in files) < 2_000_000
    for path in files:
        assert path.read_bytes()[4:8] == b"\0\0\0\0", "gzip mtime is 0 (deterministic)"
        symbol = NAME_RE.match(path.name)["symbol"]  # type: ignore[index]
        spec = KNOWN_SYMBOLS[symbol]
        cols = assert_valid_trades_file(path, spec.tick, spec.lot)
        n = len(cols["id"])
        assert n == SAMPLE[symbol] and 20_000 <= n <= 40_000
        ts = cols["timestamp"]
        # A full day: trades in (nearly) every hour, some quiet 15 s intervals without any.
        assert len(np.unique(ts // 3_600_000_000)) == 24
        buckets = len(np.unique(ts // 15_000_000))
        assert 0.6 * 5760 < buckets < 5760
        # Orders filling several resting orders share a timestamp, as on Binance.
        assert 0.2 < float(np.mean(np.diff(ts) == 0)) < 0.6
        prices = cols["price"].astype(np.float64)
        assert abs(prices[0] / spec.price - 1) < 0.01
        assert 0.001 < prices.max() / prices.min() - 1 < 0.5
        assert 0.4 < float(np.mean(cols["side"] == "buy")) < 0.6


# ------------------------------------------------------------------ generate_trades


def test_output_is_deterministic_and_independent_of_threads(tmp_path: Path) -> None:
    kwargs = dict(n_symbols=4, total_trades=4_000, day="2024-03-01", seed=11)
    one = generate_trades(tmp_path / "one", workers=1, **kwargs)  # type: ignore[arg-type]
    two = generate_trades(tmp_path / "two", workers=2, **kwargs)  # type: ignore[arg-type]
    other = generate_trades(tmp_path / "other", n_symbols=4, total_trades=4_000,
                            day="2024-03-01", seed=12)
    assert [p.name for p in one] == [p.name for p in two] == [p.name for p in other]
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(one, other, strict=True))


def test_many_symbols_include_synthetic_ones_on_their_grids(tmp_path: Path) -> None:
    specs = symbol_specs(30, seed=5)
    assert [s.symbol for s in specs[:3]] == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
    assert specs[len(KNOWN_SYMBOLS)].symbol == "SYN001USDT"
    assert len({s.symbol for s in specs}) == 30
    paths = generate_trades(tmp_path, n_symbols=30, total_trades=30_000, seed=5)
    assert len(paths) == 30
    rows = []
    for spec, path in zip(specs, paths, strict=True):
        assert path.name == trades_file_name("binance-futures", "2024-01-15", spec.symbol)
        rows.append(len(assert_valid_trades_file(path, spec.tick, spec.lot)["id"]))
    assert sum(rows) == 30_000
    assert rows[0] == max(rows) and max(rows) > 5 * min(rows), "uneven like real markets"


def test_trades_per_symbol_for_unknown_names_and_consecutive_days(tmp_path: Path) -> None:
    paths = generate_trades(tmp_path, exchange="bybit", symbols=["FOOUSDT", "BTCUSDT"],
                            trades_per_symbol={"FOOUSDT": 500, "BTCUSDT": 800},
                            day=dt.date(2024, 2, 28), days=2, seed=3)
    assert [p.name for p in paths] == [
        "bybit_trades_2024-02-28_FOOUSDT.csv.gz", "bybit_trades_2024-02-28_BTCUSDT.csv.gz",
        "bybit_trades_2024-02-29_FOOUSDT.csv.gz", "bybit_trades_2024-02-29_BTCUSDT.csv.gz"]
    day1 = read(paths[1])
    day2 = assert_valid_trades_file(paths[3], "0.01", "0.001")
    assert len(day1["id"]) == len(day2["id"]) == 800
    assert day2["id"][0] == day1["id"][-1] + 1, "ids continue across days"
    last, first = float(day1["price"][-1]), float(day2["price"][0])
    assert abs(first / last - 1) < 0.005, "the price continues across days"
    assert len(read(paths[0])["id"]) == 500


def test_reorder_option_adds_rare_small_reorderings(tmp_path: Path) -> None:
    kwargs = dict(symbols=["BTCUSDT"], trades_per_symbol=60_000, seed=1)
    plain = read(generate_trades(tmp_path / "a", **kwargs)[0])  # type: ignore[arg-type]
    shuffled_path = generate_trades(tmp_path / "b", reorder=True, **kwargs)[0]  # type: ignore[arg-type]
    shuffled = read(shuffled_path)
    assert np.all(np.diff(plain["timestamp"]) >= 0)
    steps = np.diff(shuffled["timestamp"])
    backwards = steps[steps < 0]
    assert 0 < len(backwards) < 0.002 * len(steps)
    assert backwards.min() >= -5_000, "reorderings are at most a few ms"
    assert np.all(np.diff(shuffled["local_timestamp"]) > 0)
    assert np.all(shuffled["local_timestamp"] > shuffled["timestamp"])


def test_split_trades_is_exact_uneven_and_positive() -> None:
    counts = split_trades(1_000_003, 50, seed=7)
    assert sum(counts) == 1_000_003 and len(counts) == 50
    assert min(counts) >= 1 and counts[0] == max(counts) > 10 * min(counts)
    assert split_trades(3, 3) == [1, 1, 1]
    assert split_trades(1_000, 1) == [1_000]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_symbols": 2, "symbols": ["BTCUSDT"], "total_trades": 10}, "exactly one of symbols"),
    ({"n_symbols": 2}, "exactly one of trades_per_symbol"),
    ({"n_symbols": 0, "total_trades": 10}, "n_symbols must be a positive integer"),
    ({"n_symbols": 5, "total_trades": 4}, "total_trades must be an integer >= n_symbols"),
    ({"symbols": ["BTCUSDT"], "trades_per_symbol": 0}, "must be a positive integer"),
    ({"symbols": ["BTCUSDT"], "trades_per_symbol": {"ETHUSDT": 5}}, "no count for"),
    ({"symbols": ["BTCUSDT", "BTCUSDT"], "trades_per_symbol": 5}, "must be unique"),
    ({"symbols": ["BTC_USDT"], "trades_per_symbol": 5}, "without ',' or '_'"),
    ({"symbols": "BTCUSDT", "trades_per_symbol": 5}, "non-empty list"),
    ({"n_symbols": 1, "total_trades": 5, "day": "2024-13-01"}, "YYYY-MM-DD"),
    ({"n_symbols": 1, "total_trades": 5, "days": 0}, "days must be a positive"),
    ({"n_symbols": 1, "total_trades": 5, "exchange": "a_b"}, "exchange must be"),
    ({"n_symbols": 1, "total_trades": 5, "seed": -1}, "seed must be"),
    ({"n_symbols": 1, "total_trades": 5, "compresslevel": 10}, "compresslevel"),
    ({"n_symbols": 1, "total_trades": 5, "workers": 0}, "workers must be"),
])
def test_bad_arguments_are_rejected_clearly(tmp_path: Path, kwargs: dict[str, object],
                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_trades(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.csv.gz"))


def test_symbol_spec_validation() -> None:
    with pytest.raises(ValueError, match="tick must be a positive decimal"):
        gen.SymbolSpec("ABCUSDT", 10.0, "0", "1")
    with pytest.raises(ValueError, match=">= 100 ticks"):
        gen.SymbolSpec("ABCUSDT", 0.5, "0.01", "1")


def test_cli_writes_named_files_and_reports_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--out", str(tmp_path), "--symbols", "BTCUSDT, XYZUSDT",
                     "--trades", "3000", "--date", "2024-02-29", "--seed", "3"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["binance-futures_trades_2024-02-29_BTCUSDT.csv.gz",
                     "binance-futures_trades_2024-02-29_XYZUSDT.csv.gz"]
    total = sum(len(read(tmp_path / name)["id"]) for name in names)
    assert total == 3000
    assert gen.main(["--out", str(tmp_path / "n"), "--symbols", "4", "--trades", "100"]) == 0
    assert len(list((tmp_path / "n").glob("*.csv.gz"))) == 4
    assert gen.main(["--out", str(tmp_path), "--symbols", "3", "--trades", "2"]) == 2
    assert "total_trades must be" in capsys.readouterr().err
