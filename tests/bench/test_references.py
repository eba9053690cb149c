"""The benchmark's reference implementations agree with each other, with hand-computed candles
and with TA-Lib."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import talib

from bench.references import (
    CANDLE_KEYS,
    TIMEFRAMES_US,
    polars_candles,
    polars_candles_from_trades,
    pyarrow_parse_ceiling,
    python_per_tick_candles,
    scan_trades,
    timeframe_label,
)
from connectors.tardis.generate import HEADER, generate_trades

PERIODS = (5, 10, 20)
EXACT = ("open", "high", "low", "close", "trade_count", "timestamp_out")
CLOSE_TO = ("volume", "buy_volume", "sell_volume", "vwap")
#: Log returns are scaled before TA-Lib's STDDEV, which reports 0 whenever the variance is
#: below 1e-8 (its zero threshold); per-candle log returns have variances of that order or less.
#: The population standard deviation scales linearly, so the scaled result divided by the scale
#: is the same quantity.
RETURN_SCALE = 1e4


@pytest.fixture(scope="module")
def trade_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two days of three symbols with rare exchange-timestamp reorderings, ~100k trades."""
    out = tmp_path_factory.mktemp("trades")
    return generate_trades(out, symbols=["BTCUSDT", "XRPUSDT", "ABCUSDT"], day="2024-01-15",
                           days=2, trades_per_symbol={"BTCUSDT": 40_000, "XRPUSDT": 8_000,
                                                      "ABCUSDT": 1_500},
                           seed=3, reorder=True)


@pytest.fixture(scope="module")
def python_bars(trade_files: list[Path]) -> list[dict[str, object]]:
    return python_per_tick_candles(trade_files, TIMEFRAMES_US)


@pytest.fixture(scope="module")
def polars_bars(trade_files: list[Path]) -> dict[str, pl.DataFrame]:
    return polars_candles(trade_files, TIMEFRAMES_US, PERIODS)


def write_csv_gz(path: Path, rows: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join([HEADER, *rows]) + "\n").encode(), mtime=0))
    return path


def test_data_has_reorderings(trade_files: list[Path]) -> None:
    """The comparison below covers the close rule (latest exchange time, last of equals)."""
    backwards = [int(np.sum(np.diff(scan_trades([p]).collect()["timestamp"].to_numpy()) < 0))
                 for p in trade_files]
    assert sum(backwards) > 0


def test_parse_ceiling_counts_every_row(trade_files: list[Path]) -> None:
    lines = 0
    for path in trade_files:
        with gzip.open(path, "rb") as fh:
            lines += sum(1 for _ in fh) - 1
    assert lines == 2 * (40_000 + 8_000 + 1_500)
    assert pyarrow_parse_ceiling(trade_files) == lines
    assert pyarrow_parse_ceiling(trade_files[:1], block_size=1 << 16) == 40_000


@pytest.mark.parametrize("label", list(TIMEFRAMES_US))
def test_python_and_polars_candles_agree(label: str, python_bars: list[dict[str, object]],
                                         polars_bars: dict[str, pl.DataFrame]) -> None:
    expected = pl.DataFrame([b for b in python_bars if b["timeframe"] == label])
    got = polars_bars[label]
    assert got.columns[:len(CANDLE_KEYS)] == list(CANDLE_KEYS)
    assert len(got) == len(expected) > 0
    keys = ["exchange", "symbol", "timeframe", "timestamp"]
    assert got.select(keys).equals(expected.select(keys)), "same intervals, same order"
    for column in EXACT:
        assert got[column].equals(expected[column]), column
    for column in CLOSE_TO:
        np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(),
                                   rtol=1e-9, atol=0, err_msg=column)
    assert int(got["trade_count"].sum()) == 2 * (40_000 + 8_000 + 1_500)
    tf = TIMEFRAMES_US[label]
    assert (got["timestamp"] % tf == 0).all()
    assert (got["timestamp_out"] - got["timestamp"] == tf).all()


def test_features_agree_with_talib(polars_bars: dict[str, pl.DataFrame]) -> None:
    checked = 0
    for label in ("15s", "1m", "5m", "15m"):
        frame = polars_bars[label]
        for (symbol,), candles in frame.partition_by("symbol", as_dict=True).items():
            close = candles["close"].to_numpy()
            if len(close) <= max(PERIODS) + 1:
                continue
            log_returns = np.log(close[1:] / close[:-1])
            for n in PERIODS:
                expected = {
                    f"sma_{n}": talib.SMA(close, n),
                    f"ema_{n}": talib.EMA(close, n),
                    f"rsi_{n}": talib.RSI(close, n),
                    f"price_volatility_{n}": np.concatenate(([np.nan], talib.STDDEV(
                        log_returns * RETURN_SCALE, n, 1.0) / RETURN_SCALE)),
                }
                for column, want in expected.items():
                    have = candles[column].to_numpy()        # nulls become NaN
                    where = f"{label} {symbol} {column}"
                    assert np.array_equal(np.isnan(have), np.isnan(want)), where
                    assert np.isnan(have).sum() == (n if column.startswith(("rsi", "price"))
                                                    else n - 1), where
                    np.testing.assert_allclose(have, want, rtol=1e-9, atol=0, err_msg=where)
                    checked += 1
    assert checked >= 4 * len(PERIODS) * 3 * 2


def test_per_candle_features(polars_bars: dict[str, pl.DataFrame]) -> None:
    frame = polars_bars["1m"].filter(pl.col("symbol") == "BTCUSDT")
    close = frame["close"].to_numpy()
    np.testing.assert_allclose(frame["log_return"].to_numpy()[1:], np.log(close[1:] / close[:-1]),
                               rtol=1e-12)
    assert frame["log_return"][0] is None
    volume = frame["volume"].to_numpy()
    np.testing.assert_allclose(
        frame["volume_imbalance"].to_numpy(),
        (frame["buy_volume"].to_numpy() - frame["sell_volume"].to_numpy()) / volume, rtol=1e-12)
    np.testing.assert_allclose(frame["avg_trade_size"].to_numpy(),
                               volume / frame["trade_count"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(frame["hl_range"].to_numpy(),
                               (frame["high"].to_numpy() - frame["low"].to_numpy()) / close,
                               rtol=1e-12)


def test_in_memory_entry_point_matches_files(trade_files: list[Path],
                                             polars_bars: dict[str, pl.DataFrame]) -> None:
    table = scan_trades(trade_files).collect().to_arrow()
    index = table.schema.get_field_index("timestamp")
    as_time = table["timestamp"].cast(pa.timestamp("us", tz="UTC"))
    table = table.set_column(index, "timestamp", as_time)
    got = polars_candles_from_trades(table, {"1m": 60_000_000, "1h": 3_600_000_000}, PERIODS)
    assert list(got) == ["1m", "1h"]
    for label, frame in got.items():
        want = polars_bars[label]
        assert frame.select(EXACT).equals(want.select(EXACT))
        np.testing.assert_allclose(frame["ema_20"].to_numpy(), want["ema_20"].to_numpy(),
                                   rtol=1e-12)


def test_candle_semantics_by_hand(tmp_path: Path) -> None:
    """Left-closed buckets by exchange time; open = first to arrive; close = latest exchange
    time, last of equals; unknown sides count in volume only."""
    t0 = 1_705_276_800_000_000                                   # 2024-01-15 00:00:00 UTC
    rows = [
        f"x,AAA,{t0 + 2_000},{t0 + 9_000},1,buy,10,1",
        f"x,AAA,{t0 + 1_000},{t0 + 9_500},2,sell,12,2",              # reordered: earlier time
        f"x,AAA,{t0 + 5_000},{t0 + 9_600},3,unknown,9,1",
        f"x,AAA,{t0 + 5_000},{t0 + 9_700},4,buy,11,0.5",             # close: last of equals
        f"x,AAA,{t0 + 15_000_000},{t0 + 15_001_000},5,sell,13,3",    # next 15 s bucket
    ]
    path = write_csv_gz(tmp_path / "x_trades_2024-01-15_AAA.csv.gz", rows)
    timeframes = {"15s": 15_000_000, "1m": 60_000_000}
    first = {"timestamp": t0, "timestamp_out": t0 + 15_000_000, "open": 10.0, "high": 12.0,
             "low": 9.0, "close": 11.0, "volume": 4.5, "buy_volume": 1.5, "sell_volume": 2.0,
             "trade_count": 4, "vwap": (10 + 24 + 9 + 5.5) / 4.5}
    second = {"timestamp": t0 + 15_000_000, "timestamp_out": t0 + 30_000_000, "open": 13.0,
              "high": 13.0, "low": 13.0, "close": 13.0, "volume": 3.0, "buy_volume": 0.0,
              "sell_volume": 3.0, "trade_count": 1, "vwap": 13.0}
    minute = {**first, "timestamp_out": t0 + 60_000_000, "close": 13.0, "high": 13.0,
              "volume": 7.5, "sell_volume": 5.0, "trade_count": 5,
              "vwap": (10 + 24 + 9 + 5.5 + 39) / 7.5}
    expected = {"15s": [first, second], "1m": [minute]}

    plain = python_per_tick_candles([path], timeframes)
    batch = polars_candles([path], timeframes, periods=(2,))
    for label, bars in expected.items():
        got_plain = [b for b in plain if b["timeframe"] == label]
        got_batch = batch[label].to_dicts()
        assert len(got_plain) == len(got_batch) == len(bars)
        for want, a, b in zip(bars, got_plain, got_batch, strict=True):
            assert a["exchange"] == b["exchange"] == "x" and a["symbol"] == b["symbol"] == "AAA"
            for key, value in want.items():
                assert a[key] == pytest.approx(value, rel=1e-12), (label, key)
                assert b[key] == pytest.approx(value, rel=1e-12), (label, key)
    assert pyarrow_parse_ceiling([path]) == 5


def test_sequence_timeframes_get_labels(tmp_path: Path) -> None:
    assert [timeframe_label(us) for us in TIMEFRAMES_US.values()] == list(TIMEFRAMES_US)
    assert timeframe_label(1_500_000) == "1500ms"
    t0 = 1_705_276_800_000_000
    path = write_csv_gz(tmp_path / "x_trades_2024-01-15_AAA.csv.gz",
                        [f"x,AAA,{t0},{t0 + 1},1,buy,10,1"])
    bars = python_per_tick_candles([path], [60_000_000, 3_600_000_000])
    assert [b["timeframe"] for b in bars] == ["1m", "1h"]
    assert list(polars_candles([path], [60_000_000])) == ["1m"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: pyarrow_parse_ceiling([]), "non-empty list"),
    (lambda p: pyarrow_parse_ceiling(p), "non-empty list"),
    (lambda p: pyarrow_parse_ceiling([p.parent / "missing.csv.gz"]), "no such trades file"),
    (lambda p: pyarrow_parse_ceiling([p], block_size=10), "block_size"),
    (lambda p: python_per_tick_candles([p], {}), "must not be empty"),
    (lambda p: python_per_tick_candles([p], {"1m": 0}), "positive int"),
    (lambda p: python_per_tick_candles([p], [60_000_000, 60_000_000]), "unique"),
    (lambda p: polars_candles([p], periods=(1,)), "periods"),
    (lambda p: polars_candles([p], periods=(5, 5)), "unique"),
    (lambda p: polars_candles_from_trades(pl.DataFrame({"price": [1.0]})), "lack the columns"),
])
def test_bad_arguments_are_rejected(tmp_path: Path, call: object, message: str) -> None:
    path = write_csv_gz(tmp_path / "x_trades_2024-01-15_AAA.csv.gz",
                        ["x,AAA,1000,2000,1,buy,10,1"])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        call(path)  # type: ignore[operator]


def test_python_reference_rejects_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(gzip.compress(b"exchange,symbol,timestamp\nx,A,1\n", mtime=0))
    with pytest.raises(ValueError, match=r"missing columns \['side', 'price', 'amount'\]"):
        python_per_tick_candles([path])
