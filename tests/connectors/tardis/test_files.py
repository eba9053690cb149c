"""TardisFileSource and its CSV reader: parsing, resume positions, bad input."""

from __future__ import annotations

import gzip
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.tardis.datatypes import TRADES, get_spec
from connectors.tardis.files import FilePosition, TardisFileSource, poll
from connectors.tardis.naming import InputError, expand_inputs, parse_name
from operators.messages import DeadLetters, TickBatch
from tests.conftest import shared_file

HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
TS = 1_582_329_602_111_000


def trade_line(i: int, price: str = "9682.5", side: str = "buy", amount: str = "0.5",
               ts: int | None = None) -> str:
    t = TS + i * 1000 if ts is None else ts
    return f"binance-futures,BTCUSDT,{t},{t + 300},{i},{side},{price},{amount}"


def write(path: Path, lines: list[str], header: str = HEADER) -> Path:
    text = (header + "\n" + "\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text, mtime=0))
    else:
        path.write_bytes(text)
    return path


def read_all(source: TardisFileSource) -> tuple[list[TickBatch], list[DeadLetters]]:
    out: list = []
    flow = Dataflow("read")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return ([x for x in out if isinstance(x, TickBatch)],
            [x for x in out if isinstance(x, DeadLetters)])


def rows(batches: list[TickBatch]) -> pa.Table:
    return pa.Table.from_batches([b.batch for b in batches])


def dead_rows(dls: list[DeadLetters]) -> list[dict]:
    return [r for d in dls for r in d.batch.to_pylist()]


def trades_file(tmp_path: Path, lines: list[str], name: str = "2020-02-22",
                gz: bool = True) -> Path:
    ext = ".csv.gz" if gz else ".csv"
    return write(tmp_path / f"binance-futures_trades_{name}_BTCUSDT{ext}", lines)


# -- parsing -----------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_every_real_data_type_parses_to_its_schema():
    folder = shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz").parent
    batches, dls = read_all(TardisFileSource([str(folder / "*.csv.gz")]))
    assert not dls
    by_type = {}
    for b in batches:
        assert b.batch.schema == get_spec(b.data_type).schema
        by_type[b.data_type] = by_type.get(b.data_type, 0) + len(b)
    assert by_type == {"trades": 9_999 + 10, "book_snapshot_5": 10, "book_snapshot_25": 10,
                       "incremental_book_L2": 15, "quotes": 10}
    book = next(b for b in batches if b.data_type == "book_snapshot_25").batch
    assert book.column("asks_24_price")[0].as_py() == 11659.34
    assert book.column("bids_0_amount")[0].as_py() == 10.896


@pytest.mark.shared_data
def test_schema_examples_derivative_ticker_and_options_chain(tmp_path):
    src = shared_file("tardis/schema-examples/options_chain_example.csv")
    f = tmp_path / "deribit_options_chain_2020-06-08_OPTIONS.csv"
    f.write_bytes(src.read_bytes())
    d = tmp_path / "bitmex_derivative_ticker_2020-03-01_XBTUSD.csv"
    d.write_bytes(shared_file("tardis/schema-examples/derivative_ticker_example.csv").read_bytes())
    batches, dls = read_all(TardisFileSource([str(f), str(d)]))
    assert not dls
    opts = [b for b in batches if b.data_type == "options_chain"]
    # one grouped OPTIONS file -> one batch per option symbol, file order kept within each
    assert sorted(b.symbol for b in opts) == ["BTC-10JUN20-10000-C", "BTC-9JUN20-10000-C",
                                             "BTC-9JUN20-9875-P", "ETH-9JUN20-250-P",
                                             "ETH-9JUN20-300-C"]
    put = next(b for b in opts if b.symbol == "BTC-9JUN20-9875-P")
    assert put.lines.to_pylist() == [2, 3, 8]
    assert put.batch.column("delta").to_pylist() == [-0.61752, -0.61757, -0.61767]
    thin = next(b for b in opts if b.symbol == "BTC-10JUN20-10000-C").batch
    assert thin.column("bid_price")[0].as_py() is None  # empty field -> null
    tick = rows([b for b in batches if b.data_type == "derivative_ticker"])
    assert tick.column("funding_rate").to_pylist() == [0.0001, 0.00015]
    assert tick.column("funding_timestamp").type == pa.timestamp("us", tz="UTC")


def test_plain_and_gzip_files_give_identical_batches(tmp_path):
    lines = [trade_line(i) for i in range(50)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gz, _ = read_all(TardisFileSource([str(trades_file(tmp_path / "a", lines))]))
    plain, _ = read_all(TardisFileSource([str(trades_file(tmp_path / "b", lines, gz=False))]))
    assert rows(gz).equals(rows(plain))
    assert rows(gz).num_rows == 50


def test_chunks_carry_exact_line_numbers(tmp_path):
    lines = [trade_line(i) for i in range(20_000)]
    f = trades_file(tmp_path, lines)
    batches, _ = read_all(TardisFileSource([str(f)], chunk_bytes=64 << 10))
    assert len(batches) > 5
    got = [x for b in batches for x in b.lines.to_pylist()]
    assert got == list(range(2, 20_002))
    assert rows(batches).column("id").to_pylist() == [str(i) for i in range(20_000)]


def test_files_of_one_stream_replay_in_date_order_in_one_partition(tmp_path):
    day2 = trades_file(tmp_path, [trade_line(i) for i in range(100, 110)], "2020-02-23")
    day1 = trades_file(tmp_path, [trade_line(i) for i in range(0, 10)], "2020-02-22")
    src = TardisFileSource([str(day2), str(day1)])
    assert src.list_parts() == ["binance-futures/trades/BTCUSDT"]
    batches, _ = read_all(src)
    ids = rows(batches).column("id").to_pylist()
    assert ids == [str(i) for i in [*range(0, 10), *range(100, 110)]]


def test_date_range_and_naming(tmp_path):
    for d in ("2020-02-21", "2020-02-22", "2020-02-23"):
        trades_file(tmp_path, [trade_line(1)], d)
    from datetime import date
    files = expand_inputs([str(tmp_path / "*.csv.gz")], date(2020, 2, 22), date(2020, 2, 23))
    assert [f.day.isoformat() for f in files] == ["2020-02-22", "2020-02-23"]
    f = parse_name("deribit_incremental_book_L2_2020-04-01_BTC-PERPETUAL.csv.gz")
    assert (f.exchange, f.data_type, f.symbol) == ("deribit", "incremental_book_L2",
                                                   "BTC-PERPETUAL")
    with pytest.raises(InputError, match="not a Tardis dataset file name"):
        parse_name("trades.csv.gz")
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(tmp_path / "nothing_*.csv.gz")])


# -- resume ------------------------------------------------------------------------------------

def test_resume_from_snapshot_emits_exactly_the_rows_after_it(tmp_path):
    lines = [trade_line(i) for i in range(30_000)]
    f1 = trades_file(tmp_path, lines[:10_000], "2020-02-22")
    f2 = trades_file(tmp_path, lines[10_000:], "2020-02-23")
    src = TardisFileSource([str(f1), str(f2)], chunk_bytes=64 << 10)
    part_key = src.list_parts()[0]
    full = src.build_part("s", part_key, None)
    seen: list[str] = []
    snaps: list[tuple[int, FilePosition]] = []
    for items in poll(full):
        for it in items:
            seen += it.batch.column("id").to_pylist()
        snaps.append((len(seen), pickle.loads(pickle.dumps(full.snapshot()))))
    assert seen == [str(i) for i in range(30_000)]
    # resume from every snapshot: the rest is exactly what followed it
    for n_before, snap in snaps[:-1]:
        part = src.build_part("s", part_key, snap)
        rest: list[str] = []
        for items in poll(part):
            for it in items:
                rest += it.batch.column("id").to_pylist()
        assert rest == seen[n_before:], snap


def test_resume_position_must_name_an_input(tmp_path):
    f = trades_file(tmp_path, [trade_line(1)])
    src = TardisFileSource([str(f)])
    with pytest.raises(InputError, match="cannot resume"):
        src.build_part("s", src.list_parts()[0], FilePosition("/elsewhere.csv.gz", 5))


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (trade_line(5, price="abc"), "price is not a number: 'abc'"),
        (trade_line(5, price="-5"), "price must be > 0, got -5.0"),
        (trade_line(5, price="0"), "price must be > 0, got 0.0"),
        (trade_line(5, price="nan"), "price is not a finite number, got nan"),
        (trade_line(5, price="NaN"), "price is not a finite number, got nan"),
        (trade_line(5, amount=""), "missing value for amount"),
        (trade_line(5, amount="-0.1"), "amount must be > 0, got -0.1"),
        (trade_line(5, side="hold"),
         "unknown side (expected one of buy, sell, unknown), got 'hold'"),
        (trade_line(5, ts=TS // 1000), "timestamp is not a microsecond UTC epoch"),
        ("binance-futures,BTCUSDT,1582329602116000,1582329602418420,5,buy,9682",
         "malformed CSV row: 7 fields, expected 8"),
        (trade_line(5).replace("binance-futures", "bitmex"),
         "exchange 'bitmex' does not match the file name's 'binance-futures'"),
    ],
)
def test_bad_row_is_quarantined_with_file_line_and_reason(tmp_path, bad_line, reason):
    lines = [trade_line(i) for i in range(10)]
    lines[5] = bad_line
    f = trades_file(tmp_path, lines)
    batches, dls = read_all(TardisFileSource([str(f)]))
    dead = dead_rows(dls)
    assert len(dead) == 1, dead
    assert dead[0]["source"] == str(f) and dead[0]["line"] == 7
    assert dead[0]["reason"].startswith(reason), dead[0]["reason"]
    assert dead[0]["kind"] == "rejected" and dead[0]["raw"]
    kept = rows(batches)
    assert kept.column("id").to_pylist() == [str(i) for i in range(10) if i != 5]
    assert [x for b in batches for x in b.lines.to_pylist()] == [i + 2 for i in range(10)
                                                                 if i != 5]


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    lines = [trade_line(i) for i in range(6)]
    lines.insert(3, "")
    lines[5] = trade_line(4, price="x")
    f = trades_file(tmp_path, lines)
    batches, dls = read_all(TardisFileSource([str(f)]))
    assert [r["line"] for r in dead_rows(dls)] == [7]
    assert [x for b in batches for x in b.lines.to_pylist()] == [2, 3, 4, 6, 8]


def test_missing_required_column_stops_with_a_message_naming_it(tmp_path):
    f = write(tmp_path / "binance-futures_trades_2020-02-22_BTCUSDT.csv.gz",
              ["binance-futures,BTCUSDT,1,2,3,buy,4"],
              header="exchange,symbol,timestamp,local_timestamp,id,side,amount")
    with pytest.raises(InputError, match=r"missing required column\(s\) price") as e:
        TardisFileSource([str(f)])
    assert str(f) in str(e.value)


def test_truncated_gzip_keeps_complete_rows_and_reports_the_rest(tmp_path):
    lines = [trade_line(i) for i in range(5_000)]
    good = trades_file(tmp_path, lines)
    data = good.read_bytes()
    cut = tmp_path / "binance-futures_trades_2020-02-23_BTCUSDT.csv.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    batches, dls = read_all(TardisFileSource([str(cut)]))
    kept = rows(batches).column("id").to_pylist()
    assert 1_000 < len(kept) < 5_000
    assert kept == [str(i) for i in range(len(kept))]  # a clean prefix, nothing invented
    dead = dead_rows(dls)
    assert len(dead) == 1
    assert "gzip stream is truncated" in dead[0]["reason"]
    assert dead[0]["line"] == len(kept) + 2
    assert dead[0]["source"] == str(cut)


def test_corrupt_gzip_midway_is_reported_not_fatal(tmp_path):
    f = trades_file(tmp_path, [trade_line(i) for i in range(5_000)])
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = b"\x00" * 64
    f.write_bytes(bytes(data))
    batches, dls = read_all(TardisFileSource([str(f)]))
    dead = dead_rows(dls)
    assert dead and "gzip data is corrupt" in dead[-1]["reason"]
    kept = rows(batches).column("id").to_pylist() if batches else []
    # rows well before the damage are intact (deflate may decode a little garbage just before
    # zlib notices; the reason says so)
    assert len(kept) > 1_000 and kept[:1_000] == [str(i) for i in range(1_000)]


@pytest.mark.parametrize("content", [b"this is not gzip at all\n" * 10, b""])
def test_unreadable_file_stops_the_run_naming_it(tmp_path, content):
    f = tmp_path / "binance-futures_trades_2020-02-22_BTCUSDT.csv.gz"
    f.write_bytes(content)
    with pytest.raises(InputError, match="cannot read the CSV header") as e:
        TardisFileSource([str(f)])
    assert str(f) in str(e.value)


def test_unknown_data_type_is_a_clear_error(tmp_path):
    f = write(tmp_path / "binance_fancy_2020-02-22_BTCUSDT.csv", [trade_line(1)])
    with pytest.raises(InputError, match="unknown Tardis data type 'fancy'"):
        TardisFileSource([str(f)])


def test_trades_spec_requires_what_candles_need():
    assert {"timestamp", "price", "amount", "side"} <= set(TRADES.required)


def test_backpressure_pauses_then_never_deadlocks(tmp_path, monkeypatch, caplog):
    from connectors.tardis import files as files_mod

    f = trades_file(tmp_path, [trade_line(i) for i in range(20_000)])
    monkeypatch.setattr(files_mod.IN_FLIGHT, "limit", 1)       # any held batch is "too much"
    monkeypatch.setattr(files_mod._InFlight, "max_wait_s", 0.2)
    monkeypatch.setattr(files_mod, "_WARNED", [])
    src = TardisFileSource([str(f)], chunk_bytes=64 << 10)
    part = src.build_part("s", src.list_parts()[0], None)
    held, empty_polls = [], 0
    while True:
        try:
            got = part.next_batch()
        except StopIteration:
            break
        if not got:
            empty_polls += 1
            awake = part.next_awake()
            assert awake is not None  # throttled or waiting for the pool: no busy loop
            time.sleep(max(0.0, (awake - datetime.now(UTC)).total_seconds()))
        held += got  # a consumer that never lets go
    assert empty_polls > 0  # it did pause for the flow to catch up
    assert rows(held).num_rows == 20_000  # and then read on: nothing stalls, nothing lost
    assert "reading on without backpressure" in caplog.text
    del held
    import gc

    gc.collect()
    assert files_mod.IN_FLIGHT.bytes == 0  # every batch released once dropped
