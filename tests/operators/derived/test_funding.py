"""funding_rates from derivative_ticker: change detection, nulls, batch cuts, snapshots, flow."""

from __future__ import annotations

import pickle

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.tables import TICK_TABLES
from operators.derived.common import float_column, int_column
from operators.derived.funding import (
    FUNDING_RATES_SCHEMA,
    FundingChangeDetector,
    FundingLogic,
    FundingState,
    funding_builder,
)
from operators.derived.rows import derived_table_rows
from operators.messages import TickBatch
from tests.conftest import shared_file
from tests.operators.derived.batches import T0, S, cut, read_tardis, ticker

F1 = T0 + 8 * 3600 * S
F2 = F1 + 8 * 3600 * S


def changes(tbs: list[TickBatch], det: FundingChangeDetector) -> list[int]:
    """Indices (over all batches together) of the rows the detector emits."""
    out, offset = [], 0
    for tb in tbs:
        fts, ok = int_column(tb.batch, "funding_timestamp")
        out += (det.changes(float_column(tb.batch, "funding_rate"), fts, ok) + offset).tolist()
        offset += len(tb)
    return out


def test_known_answer_rate_or_funding_time_change():
    rates = [1e-4, 1e-4, 1.5e-4, None, 1.5e-4, 1.5e-4, None, 1e-4, 1e-4]
    fts = [F1, F1, F1, None, None, F2, F2, F2, F2]
    tb = ticker([T0 + i * S for i in range(9)], rates, fts)
    # 0 first value; 2 rate changed; 3, 4 nulls are not changes; 5 funding time changed;
    # 6 null rate; 7 rate back to an earlier value is a change
    assert changes([tb], FundingChangeDetector()) == [0, 2, 5, 7]


def test_rows_carry_the_funding_rates_columns():
    tb = ticker([T0, T0 + S, T0 + 2 * S], [1e-4, 1e-4, 2e-4], [F1, F1, F1])
    logic = FundingLogic()
    (out,), _ = logic.on_batch([tb])
    assert out.data_type == "funding_rates" and out.key == "bitmex:XBTUSD"
    assert out.batch.schema == FUNDING_RATES_SCHEMA
    rows = out.batch.to_pylist()
    assert [r["funding_rate"] for r in rows] == [1e-4, 2e-4]
    assert [r["predicted_funding_rate"] for r in rows] == [2e-4, 4e-4]
    assert [r["mark_price"] for r in rows] == [1000.0, 1002.0]
    assert [r["index_price"] for r in rows] == [1000.0, 1002.0]
    assert [int(r["timestamp"].timestamp()) * S for r in rows] == [T0, T0 + 2 * S]
    assert out.lines.to_pylist() == [2, 4]
    name, table = derived_table_rows(out)
    assert name == "ticks_funding_rates"
    assert table.rows.schema == TICK_TABLES["ticks_funding_rates"].schema
    assert table.rows.column("row_key").to_pylist() == [
        f"bitmex|XBTUSD|{T0}|{F1}", f"bitmex|XBTUSD|{T0 + 2 * S}|{F1}"]


def test_leading_nulls_emit_nothing_and_the_first_value_counts():
    tb = ticker([T0, T0 + S, T0 + 2 * S, T0 + 3 * S], [None, None, None, 3e-4],
                [None, None, F1, F1])
    assert changes([tb], FundingChangeDetector()) == [2, 3]


def random_ticker(n: int, seed: int) -> TickBatch:
    rng = np.random.default_rng(seed)
    rate_levels = np.array([1e-4, 1.2e-4, -5e-5, 3e-4])
    rates = rate_levels[np.cumsum(rng.random(n) < 0.05) % 4]
    fts = F1 + (np.cumsum(rng.random(n) < 0.02) * 8 * 3600 * S)
    rate_list = [None if rng.random() < 0.1 else float(r) for r in rates]
    fts_list = [None if rng.random() < 0.1 else int(f) for f in fts]
    return ticker([T0 + i * S for i in range(n)], rate_list, fts_list)


def expected_changes(tb: TickBatch) -> list[int]:
    """The rule as a plain loop over rows."""
    out, last_rate, last_fts = [], None, None
    for i, r in enumerate(tb.batch.to_pylist()):
        rate, fts = r["funding_rate"], r["funding_timestamp"]
        if (rate is not None and rate != last_rate) or (fts is not None and fts != last_fts):
            out.append(i)
        last_rate = rate if rate is not None else last_rate
        last_fts = fts if fts is not None else last_fts
    return out


def test_matches_a_plain_loop_and_any_cut_of_the_input():
    tb = random_ticker(500, seed=4)
    whole = changes([tb], FundingChangeDetector())
    assert whole == expected_changes(tb)
    assert 20 <= len(whole) < 500
    for positions in ([250], list(range(1, 500)), [0, 0, 3, 499], whole[:10]):
        assert changes(cut(tb, positions), FundingChangeDetector()) == whole


def test_snapshot_and_restore_mid_stream():
    tb = random_ticker(400, seed=9)
    whole = changes([tb], FundingChangeDetector())
    a, b = cut(tb, [173])
    det = FundingChangeDetector()
    head = changes([a], det)
    state = pickle.loads(pickle.dumps(det.snapshot()))
    assert isinstance(state, FundingState) and state.funding_rate is not None
    tail = changes([b], FundingChangeDetector(state))
    assert head + [i + 173 for i in tail] == whole
    # the Bytewax logic resumes from its own snapshot the same way
    logic = FundingLogic()
    first, _ = logic.on_batch([a])
    second, _ = funding_builder()(pickle.loads(pickle.dumps(logic.snapshot()))).on_batch([b])
    lines = [ln for t in [*first, *second] for ln in t.lines.to_pylist()]
    assert lines == [i + 2 for i in whole]


def test_constructor_and_inputs_are_validated():
    with pytest.raises(ValueError):
        FundingChangeDetector(FundingState(float("nan"), None))
    with pytest.raises(ValueError):
        FundingChangeDetector().changes(np.array([1e-4]), np.array([1, 2]), np.array([True]))


@pytest.mark.shared_data
def test_schema_example_derivative_ticker():
    tb = read_tardis(shared_file("tardis/schema-examples/derivative_ticker_example.csv"),
                     "derivative_ticker", "bitmex", "XBTUSD")
    (out,), _ = FundingLogic().on_batch([tb])
    rows = out.batch.to_pylist()
    # two rows: the first is a change by definition; the second changes rate and funding time
    assert [r["funding_rate"] for r in rows] == [0.0001, 0.00015]
    assert [r["predicted_funding_rate"] for r in rows] == [0.00012, 0.00018]
    assert [r["mark_price"] for r in rows] == [9500.25, 9500.75]
    assert [r["index_price"] for r in rows] == [9500.0, 9500.5]
    fts = out.batch.column("funding_timestamp").cast(pa.int64()).to_pylist()
    assert fts == [1583020800000000, 1583020860000000]
    assert out.lines.to_pylist() == [2, 3]
    # the last row again (a ticker update without a funding change) emits nothing
    logic = FundingLogic()
    logic.on_batch([tb])
    assert logic.on_batch([cut(tb, [1])[1]])[0] == []


def test_keyed_step_in_a_bytewax_flow():
    a = random_ticker(300, seed=1)
    b = random_ticker(300, seed=2)
    b = TickBatch("deribit", "BTC-PERPETUAL", "derivative_ticker",
                  b.batch.set_column(0, "exchange", pa.array(["deribit"] * 300))
                  .set_column(1, "symbol", pa.array(["BTC-PERPETUAL"] * 300)),
                  "b.csv", b.lines)
    items = [x for pair in zip(cut(a, [100, 200]), cut(b, [150, 151]), strict=True)
             for x in pair]
    out: list = []
    flow = Dataflow("derived_funding")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda t: t.key)
    op.output("sink", op.key_rm("out", op.stateful_batch("funding", keyed, funding_builder())),
              TestingSink(out))
    run_main(flow)
    for tb in (a, b):
        got = [t for t in out if t.key == tb.key]
        lines = [ln for t in got for ln in t.lines.to_pylist()]
        assert lines == [i + 2 for i in expected_changes(tb)]
        assert all(t.batch.schema == FUNDING_RATES_SCHEMA for t in got)
