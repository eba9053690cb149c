"""gaps: trade-id gaps, time gaps, disconnect pass-through; cuts, snapshots, real data, flow."""

from __future__ import annotations

import pickle
import uuid

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.tables import TICK_TABLES
from connectors.tardis.datatypes import get_spec
from dataflows.config import DerivedConfig
from operators.candles.builder import ClosePolicy
from operators.candles.step import candle_builder
from operators.derived.gaps import (
    GapLogic,
    SilenceDetector,
    TradeIdGapDetector,
    gap_builder,
    integer_ids,
)
from operators.derived.rows import derived_table_rows, gap_rows
from operators.messages import CandleBatch, Gap, TickBatch
from tests.conftest import shared_file
from tests.operators.derived.batches import T0, S, cut, read_tardis, trades


def rules(**kw) -> DerivedConfig.Gaps:
    return DerivedConfig.Gaps(**kw)


def detect(tbs: list[TickBatch | Gap], logic: GapLogic) -> list[Gap]:
    out, _ = logic.on_batch(tbs)
    return [g for g in out if isinstance(g, Gap)]


def test_trade_id_gap_known_answer():
    ids = [str(i) for i in [*range(1, 11), *range(13, 21)]]
    ts = [T0 + i * S for i in range(len(ids))]
    (gap,) = detect([trades(ts, [1.0] * len(ids), ids=ids)], GapLogic(rules()))
    assert gap.reason == "trade_id_gap: 2 missing ids (11..12)"
    assert (gap.start_us, gap.end_us) == (ts[9], ts[10])  # from id 10's time to id 13's
    assert (gap.exchange, gap.symbol, gap.source) == ("binance", "BTCUSDT", "test.csv")


def test_duplicates_and_late_ids_are_not_gaps():
    det = TradeIdGapDetector()
    found = det.add(np.arange(7) * S, pa.array(["1", "2", "3", "3", "2", "4", "6"]))
    assert found.reasons == ["trade_id_gap: 1 missing id (5)"]
    assert det.snapshot() == (6, 6 * S)


def test_non_integer_ids_are_skipped():
    uuids = [str(uuid.UUID(int=i)) for i in range(5)]
    det = TradeIdGapDetector()
    assert len(det.add(np.arange(5) * S, pa.array(uuids))) == 0
    assert det.snapshot() is None
    mixed = pa.array(["1", "2", uuids[0], "3", None, "-4", "5", "1e3", "6"])
    values, ok = integer_ids(mixed)
    assert values.tolist() == [1, 2, 3, 5, 6]
    assert ok.tolist() == [True, True, False, True, False, False, True, False, True]
    assert det.add(np.arange(9) * S, mixed).reasons == ["trade_id_gap: 1 missing id (4)"]


def test_integer_ids_accepts_exactly_1_to_18_ascii_digits():
    import re

    odd = ["", "0", "007", "+5", " 5", "5 ", "0x10", "\u0663", "1" * 18, "1" * 19, "12a", None]
    _, ok = integer_ids(pa.array(odd))
    assert ok.tolist() == [v is not None and re.fullmatch(r"[0-9]{1,18}", v) is not None
                           for v in odd]
    values, ok = integer_ids(pa.array([3, None, -1, 4, 10**18], pa.int64()))
    assert values.tolist() == [3, 4] and ok.tolist() == [True, False, False, True, False]
    values, ok = integer_ids(pa.array([7, 2**64 - 1], pa.uint64()))
    assert values.tolist() == [7] and ok.tolist() == [True, False]


def test_min_missing_ids_and_trade_id_exchanges():
    ids = ["1", "2", "4", "5", "8"]
    tb = trades([T0 + i * S for i in range(5)], [1.0] * 5, ids=ids)
    assert [g.reason for g in detect([tb], GapLogic(rules(min_missing_ids=2)))] == [
        "trade_id_gap: 2 missing ids (6..7)"]
    other = trades([T0 + i * S for i in range(5)], [1.0] * 5, ids=ids, exchange="bitfinex")
    assert detect([other], GapLogic(rules())) == []  # not an exchange with contiguous ids


def test_time_gap_known_answer():
    det = SilenceDetector(300 * S, "trades")
    ts = np.array([0, 1, 2, 400, 401, 395, 1000.4], float) * S
    found = det.add(ts.astype(np.int64))
    # 395 arrives late: it neither opens nor ends a silence
    assert found.reasons == ["time_gap: 398.0 s without trades",
                             "time_gap: 599.4 s without trades"]
    assert found.start_us.tolist() == [2 * S, 401 * S]
    assert found.end_us.tolist() == [400 * S, int(1000.4 * S)]
    with pytest.raises(ValueError):
        SilenceDetector(0, "trades")
    with pytest.raises(ValueError):
        TradeIdGapDetector(min_missing=0)


def test_bounds_per_data_type_and_switched_off():
    ts = [T0, T0 + 90 * S, T0 + 200 * S]
    tb = trades(ts, [1.0] * 3)
    spec = get_spec("book_snapshot_5")
    book = TickBatch("binance", "BTCUSDT", "book_snapshot_5", pa.RecordBatch.from_arrays(
        [tb.batch.column(f.name) if f.name in tb.batch.schema.names else pa.nulls(3, f.type)
         for f in spec.schema], schema=spec.schema))
    logic = GapLogic(rules(max_silence={"trades": "100s", "book_snapshots": "60s"}))
    got = detect([tb, book], logic)
    assert [g.reason for g in got] == ["time_gap: 110.0 s without trades",
                                       "time_gap: 90.0 s without book_snapshot_5",
                                       "time_gap: 110.0 s without book_snapshot_5"]
    assert detect([tb], GapLogic(rules(max_silence={"trades": 0}))) == []


def test_disconnect_gaps_pass_through_unchanged_and_in_order():
    src = Gap("binance", "BTCUSDT", T0, T0 + 30 * S, "tardis-machine disconnect message", "ws")
    tb = trades([T0 + 40 * S, T0 + 41 * S], [1.0, 1.0], ids=["1", "3"])
    out, _ = GapLogic(rules(), passthrough=True).on_batch([src, tb])
    assert out[0] is src
    assert isinstance(out[1], Gap) and out[1].reason == "trade_id_gap: 1 missing id (2)"
    assert out[2] is tb  # the batch follows the gaps it revealed
    assert GapLogic(rules()).on_batch([tb])[0][-1] is not tb  # no passthrough by default


def random_stream(n: int, seed: int) -> TickBatch:
    """Trades with holes in the ids and long silences in time."""
    rng = np.random.default_rng(seed)
    ids = 1000 + np.cumsum(np.where(rng.random(n) < 0.01, rng.integers(2, 50, n), 1))
    steps = np.where(rng.random(n) < 0.005, rng.integers(700, 3000, n) * S,
                     rng.integers(0, 5 * S, n))
    ts = T0 + np.cumsum(steps)
    return trades(ts.tolist(), [1.0] * n, ids=[str(i) for i in ids])


def _key(g: Gap) -> tuple:
    return (g.start_us, g.end_us, g.reason)


def test_any_cut_of_the_input_and_a_restore_give_the_same_gaps():
    tb = random_stream(3_000, seed=8)
    whole = detect([tb], GapLogic(rules()))
    reasons = [g.reason.split(":")[0] for g in whole]
    assert reasons.count("trade_id_gap") >= 10 and reasons.count("time_gap") >= 5
    rng = np.random.default_rng(1)
    for positions in ([1_500], list(range(1, 3_000, 7)), [0, 0, 2_999],
                      sorted(rng.choice(np.arange(1, 3_000), 50, replace=False).tolist())):
        pieces = detect(cut(tb, positions), GapLogic(rules()))
        assert sorted(map(_key, pieces)) == sorted(map(_key, whole))
    a, b = cut(tb, [1_777])
    logic = GapLogic(rules())
    head = detect([a], logic)
    resumed = gap_builder(rules())(pickle.loads(pickle.dumps(logic.snapshot())))
    assert sorted(map(_key, head + detect([b], resumed))) == sorted(map(_key, whole))


@pytest.mark.shared_data
def test_real_binance_futures_trades_have_contiguous_ids():
    tb = read_tardis(shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz"),
                     "trades", "binance-futures", "BTCUSDT")
    assert detect([tb], GapLogic(rules())) == []  # 9,999 contiguous ids, never 10 min quiet
    # cut 42 trades out: exactly one gap, of 42 ids, spanning the missing time
    keep = np.ones(len(tb), bool)
    keep[100:142] = False
    holed = TickBatch(tb.exchange, tb.symbol, "trades", tb.batch.filter(pa.array(keep)),
                      tb.source)
    ids = tb.batch.column("id").to_pylist()
    ts = tb.batch.column("timestamp").cast(pa.int64()).to_numpy()
    (gap,) = detect(cut(holed, [50, 100, 101]), GapLogic(rules()))
    assert gap.reason == f"trade_id_gap: 42 missing ids ({ids[100]}..{ids[141]})"
    assert (gap.start_us, gap.end_us) == (ts[99], ts[142])
    # time gaps with a 15 s bound: the trade-to-trade silences numpy finds in the file
    silent = np.flatnonzero(np.diff(ts) > 15 * S)
    assert len(silent) >= 1
    got = detect([tb], GapLogic(rules(max_silence={"trades": "15s"})))
    assert [(g.start_us, g.end_us) for g in got] == [(ts[i], ts[i + 1]) for i in silent]


@pytest.mark.shared_data
def test_real_bitmex_uuids_are_skipped():
    tb = read_tardis(shared_file("tardis/bitmex_trades_2020-03-01_XBTUSD.csv.gz"),
                     "trades", "bitmex", "XBTUSD")
    assert len(integer_ids(tb.batch.column("id"))[0]) == 0
    assert detect([tb], GapLogic(rules(trade_id_exchanges=["bitmex"]))) == []


def test_gaps_feed_the_candle_step_and_the_ticks_gaps_table():
    # trades every second for 2 minutes, ids 31..40 lost; plus a disconnect from the source
    n = 120
    ids = [str(i) for i in range(1, n + 11) if not 31 <= i <= 40]
    tb = trades([T0 + i * S for i in range(n)], [1.0] * n, ids=ids)
    disconnect = Gap("binance", "BTCUSDT", T0 + 100 * S, T0 + 101 * S, "connection lost", "ws")
    first, second, third = cut(tb, [60, 100])
    items = [first, second, disconnect, third]
    out: list = []
    flow = Dataflow("derived_gaps")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda x: x.key)
    annotated = op.stateful_batch("gaps", keyed, gap_builder(rules(), passthrough=True))
    candles = op.key_rm("out", op.stateful_batch(
        "candles", annotated, candle_builder([15 * S], ClosePolicy())))
    gaps = op.filter("only_gaps", op.key_rm("gaps_out", annotated),
                     lambda x: isinstance(x, Gap))
    op.output("candles_sink", candles, TestingSink(out))
    op.output("gaps_sink", gaps, TestingSink(out))
    run_main(flow)

    found = [x for x in out if isinstance(x, Gap)]
    assert sorted(g.reason for g in found) == ["connection lost",
                                               "trade_id_gap: 10 missing ids (31..40)"]
    bars = pa.Table.from_batches([c.batch for c in out if isinstance(c, CandleBatch)])
    marked = [int(t.timestamp()) * S - T0 for t, g in zip(
        bars.column("timestamp").to_pylist(), bars.column("has_gap").to_pylist(), strict=True)
        if g]
    # id 30 traded at 29 s, id 41 at 30 s: [15, 30) and [30, 45) are touched; the
    # disconnect [100, 101] s touches [90, 105)
    assert marked == [15 * S, 30 * S, 90 * S]
    table = gap_rows(found)
    assert table.schema == TICK_TABLES["ticks_gaps"].schema
    assert sorted(table.column("reason").to_pylist()) == sorted(g.reason for g in found)
    name, rows = derived_table_rows(found[0])
    assert name == "ticks_gaps" and rows.rows.column("row_key").null_count == 0


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.text(alphabet="0123456789a -/:", max_size=20), min_size=1, max_size=40),
       offset=st.integers(0, 5))
def test_integer_ids_of_null_free_strings_match_the_rule(ids, offset):
    """Null-free string ids take a fast path checked on the buffers; any slice of them must
    give what the rule says: 1 to 18 ASCII digits."""
    import re

    arr = pa.array(["x"] * offset + ids).slice(offset)
    values, ok = integer_ids(arr)
    want = [re.fullmatch(r"[0-9]{1,18}", v) is not None for v in ids]
    assert ok.tolist() == want
    assert values.tolist() == [int(v) for v, w in zip(ids, want, strict=True) if w]


_ID = st.one_of(st.none(), st.integers(0, 60).map(str), st.sampled_from(["", "7a", "x", "-3",
                "١٢", "1" * 19, "0" * 18, " 5"]), st.integers(0, 60))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 40), _ID), min_size=1, max_size=40),
       cuts=st.lists(st.integers(1, 39), max_size=6), min_missing=st.integers(1, 3),
       state=st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(0, 20))),
       integer_typed=st.booleans())
def test_small_batches_row_by_row_find_what_the_vectorised_path_finds(
        rows, cuts, min_missing, state, integer_typed):
    """Batches of up to 128 rows go through plain-Python loops: cut into such pieces, any
    stream gives the gaps, reasons and state of the vectorised path over the whole."""
    from unittest.mock import patch

    import operators.derived.gaps as gaps

    ts = np.array([t * S for t, _ in rows], np.int64)
    if integer_typed:
        ids = pa.array([v if isinstance(v, int) else None for _, v in rows], pa.int64())
    else:
        ids = pa.array([v if not isinstance(v, int) else str(v) for _, v in rows], pa.string())
    with patch.object(gaps, "_SMALL", -1):  # everything vectorised
        ref_ids, ref_sil = TradeIdGapDetector(min_missing, state), SilenceDetector(3 * S, "trades")
        want_ids, want_sil = ref_ids.add(ts, ids), ref_sil.add(ts)
    det_ids, det_sil = TradeIdGapDetector(min_missing, state), SilenceDetector(3 * S, "trades")
    got_ids, got_sil = [], []
    bounds = [0, *sorted(c for c in set(cuts) if c < len(rows)), len(rows)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        got_ids.append(det_ids.add(ts[lo:hi], ids.slice(lo, hi - lo)))
        got_sil.append(det_sil.add(ts[lo:hi]))

    def flat(found):
        return [(int(a), int(b), r) for d in found
                for a, b, r in zip(d.start_us, d.end_us, d.reasons, strict=True)]

    assert flat(got_ids) == flat([want_ids])
    assert flat(got_sil) == flat([want_sil])
    assert det_ids.snapshot() == ref_ids.snapshot()
    assert det_sil.snapshot() == ref_sil.snapshot()
