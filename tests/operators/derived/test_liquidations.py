"""Derived liquidations: the large-taker-order rule, batch cuts, snapshots, real trades, flow."""

from __future__ import annotations

import functools
import operator
import pickle

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.tables import TICK_TABLES
from dataflows.config import DerivedConfig, config_from_dict
from operators.candles.step import trade_arrays
from operators.derived.liquidations import (
    DERIVED_LIQUIDATIONS_SCHEMA,
    LargeOrderDetector,
    LargeOrders,
    LiquidationLogic,
    liquidation_builder,
)
from operators.derived.rows import derived_table_rows
from operators.messages import TickBatch
from tests.conftest import shared_file
from tests.operators.derived.batches import T0, S, cut, read_tardis, trades

FLAT = 10**9  # a half-life so long that the EWMA is the plain mean to ~1e-9


def run(tbs: list[TickBatch], det: LargeOrderDetector, flush: bool = True) -> list[dict]:
    """Feed batches through a detector; the flagged orders as plain rows."""
    found = [det.add(*_arrays(tb)) for tb in tbs]
    if flush:
        found.append(det.flush())
    return [r for f in found for r in _rows(f)]


def _arrays(tb: TickBatch) -> tuple:
    ts, local, price, amount, side = trade_arrays(tb.batch)
    return ts, local, side, price, amount, tb.batch.column("id"), tb.lines.to_numpy()


def _rows(f: LargeOrders) -> list[dict]:
    return [{"timestamp": int(f.timestamp[i]), "local_timestamp": int(f.local_timestamp[i]),
             "side": int(f.side[i]), "price": float(f.price[i]), "amount": float(f.amount[i]),
             "threshold": float(f.threshold[i]), "id": f.ids[i].as_py(), "line": int(f.lines[i])}
            for i in range(len(f))]


def reference(tb: TickBatch, multiplier: float, halflife: int, warmup: int,
              min_notional: float, group: bool = True) -> list[dict]:
    """The rule written as a plain per-trade loop: the independent model of the detector."""
    rows = tb.batch.to_pylist()
    orders: list[dict] = []
    for r in rows:
        ts = int(r["timestamp"].timestamp() * 1e6 + 0.5)
        o = orders[-1] if orders else None
        if group and o is not None and o["ts"] == ts and o["side"] == r["side"]:
            o["amount"] += r["amount"]
            o["notional"] += r["price"] * r["amount"]
            continue
        orders.append({"ts": ts, "side": r["side"], "amount": r["amount"],
                       "notional": r["price"] * r["amount"], "id": r["id"]})
    d, s, w, out = 0.5 ** (1 / halflife), 0.0, 0.0, []
    for k, o in enumerate(orders):
        if k >= warmup and o["amount"] > multiplier * s / w and o["notional"] >= min_notional:
            out.append(o)
        s, w = d * s + o["amount"], d * w + 1.0
    return out


def random_trades(n: int, seed: int) -> TickBatch:
    """Log-normal trade sizes with rare blocks; ~40% of trades are further fills of the
    previous order (same timestamp and side)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    same[0] = False
    ts = T0 + np.cumsum(np.where(same, 0, rng.integers(1, 400_000, n)))
    side_code = rng.integers(0, 2, n)
    for i in np.flatnonzero(same):
        side_code[i] = side_code[i - 1]
    amounts = np.round(rng.lognormal(-2.0, 1.2, n) * np.where(rng.random(n) < 0.01, 300, 1), 6)
    amounts = np.maximum(amounts, 1e-6)
    prices = np.round(20_000 + np.cumsum(rng.normal(0, 2, n)), 2)
    sides = np.array(["buy", "sell"])[side_code].tolist()
    return trades(ts.tolist(), amounts.tolist(), sides=sides, prices=prices.tolist(),
                  ids=[str(1000 + i) for i in range(n)])


def test_known_answer_threshold_warmup_and_scale_update():
    # orders of amount 1, 1, 100, 1, 1 (the 100 falls inside the warm-up: not flagged, but it
    # counts in the scale), then 70 > 3 x 20.8, 80 < 3 x 29, 120 > 3 x 36.29
    amounts = [1, 1, 100, 1, 1, 70, 80, 120]
    tb = trades([T0 + i * S for i in range(8)], amounts)
    det = LargeOrderDetector(multiplier=3, halflife=FLAT, warmup=5, min_notional=0)
    out = run([tb], det)
    assert [r["amount"] for r in out] == [70, 120]
    assert [r["id"] for r in out] == ["6", "8"]
    assert out[0]["threshold"] == pytest.approx(3 * 104 / 5, rel=1e-8)
    assert out[1]["threshold"] == pytest.approx(3 * 254 / 7, rel=1e-8)
    assert det.scale == pytest.approx(374 / 8, rel=1e-8)


def test_ewma_half_life_weights_recent_orders_more():
    # 50 orders of 1 then 50 of 2, half-life 10: the scale is close to 2, not the mean 1.5
    det = LargeOrderDetector(multiplier=3, halflife=10, warmup=1, min_notional=0)
    run([trades([T0 + i * S for i in range(100)], [1.0] * 50 + [2.0] * 50)], det)
    w = 0.5 ** (np.arange(100)[::-1] / 10)
    expected = float((w * np.array([1.0] * 50 + [2.0] * 50)).sum() / w.sum())
    assert det.scale == pytest.approx(expected, rel=1e-12)
    assert det.scale > 1.96


def test_fills_of_one_market_order_form_one_derived_liquidation():
    warm = [T0 + i * S for i in range(10)]
    sweep = T0 + 20 * S
    tb = trades(warm + [sweep, sweep, sweep, sweep + S],
                [1.0] * 10 + [10.0, 20.0, 30.0, 1.0],
                sides=["buy"] * 10 + ["sell", "sell", "sell", "buy"],
                prices=[100.0] * 10 + [100.0, 99.0, 98.0, 98.0])
    det = LargeOrderDetector(multiplier=20, halflife=FLAT, warmup=10, min_notional=0)
    (row,) = run([tb], det)
    assert row["amount"] == 60.0 and row["side"] == 2  # sell: a long was liquidated
    assert row["price"] == pytest.approx((1000 + 1980 + 2940) / 60)
    assert row["timestamp"] == sweep
    assert row["id"] == "11" and row["line"] == 12  # the first fill
    assert row["local_timestamp"] == sweep + 1000 + 12  # the last fill's arrival
    # the same trades judged one by one: no single fill is 20x the scale
    single = LargeOrderDetector(multiplier=20, halflife=FLAT, warmup=10, min_notional=0,
                                group_fills=False)
    assert run([tb], single) == []


def test_open_order_waits_for_a_different_timestamp_or_side():
    det = LargeOrderDetector(multiplier=5, halflife=FLAT, warmup=3, min_notional=0)
    first = run([trades([T0, T0 + S, T0 + 2 * S, T0 + 3 * S], [1, 1, 1, 50])], det, flush=False)
    assert first == []  # the 50 may still get more fills
    more = run([trades([T0 + 3 * S], [25], ids=["5"])], det, flush=False)
    assert more == []  # a further fill of the same order
    (row,) = run([trades([T0 + 4 * S], [1], ids=["6"])], det, flush=False)
    assert row["amount"] == 75 and row["id"] == "4"
    assert len(det.flush()) == 0  # the last order (1) is not large


def test_same_timestamp_other_side_is_another_order():
    det = LargeOrderDetector(multiplier=5, halflife=FLAT, warmup=3, min_notional=0)
    rows = run([trades([T0, T0 + S, T0 + 2 * S, T0 + 3 * S, T0 + 3 * S],
                       [1, 1, 1, 50, 4], sides=["buy", "buy", "buy", "buy", "sell"])], det)
    assert [(r["amount"], r["side"]) for r in rows] == [(50, 1)]


def test_min_notional_floor():
    tb = trades([T0 + i * S for i in range(6)], [1, 1, 1, 1, 1, 70], prices=[10.0] * 6)
    assert run([tb], LargeOrderDetector(3, FLAT, 5, min_notional=701)) == []
    assert len(run([tb], LargeOrderDetector(3, FLAT, 5, min_notional=700))) == 1


@pytest.mark.parametrize("group", [True, False])
def test_matches_the_per_trade_reference_loop(group):
    tb = random_trades(4_000, seed=7)
    params = dict(multiplier=8.0, halflife=300, warmup=50, min_notional=500.0)
    ours = run([tb], LargeOrderDetector(**params, group_fills=group))
    ref = reference(tb, **params, group=group)
    assert len(ref) >= 10, "the generated input should contain large orders"
    assert [r["id"] for r in ours] == [o["id"] for o in ref]
    assert [r["timestamp"] for r in ours] == [o["ts"] for o in ref]
    assert [r["amount"] for r in ours] == [o["amount"] for o in ref]  # summed in fill order
    assert [r["price"] for r in ours] == [o["notional"] / o["amount"] for o in ref]


def _same(a: list[dict], b: list[dict]) -> None:
    """Identical rows, floats bit for bit (row keys are built from price and amount)."""
    keys = ("id", "timestamp", "local_timestamp", "side", "line", "amount", "price")
    assert [tuple(r[k] for k in keys) for r in a] == [tuple(r[k] for k in keys) for r in b]


def test_cutting_the_input_anywhere_gives_the_same_rows():
    tb = random_trades(3_000, seed=11)
    params = dict(multiplier=8.0, halflife=300, warmup=50, min_notional=0.0)
    whole = run([tb], LargeOrderDetector(**params))
    assert len(whole) >= 10
    rng = np.random.default_rng(3)
    large_at = [r["line"] - 2 for r in whole]
    for positions in ([1500], [x + 1 for x in large_at[:5]],  # cut right inside large orders
                      list(range(1, 3_000)),                  # one trade per batch
                      sorted(rng.choice(np.arange(1, 3_000), 40, replace=False).tolist()),
                      [0, 0, 10, 10, 2_999]):                 # empty pieces
        _same(run(cut(tb, positions), LargeOrderDetector(**params)), whole)


def test_a_long_sweep_cut_anywhere_sums_to_the_same_float():
    # one market order of 150 fills (numpy's pairwise reduceat would round differently from
    # the open order's partial sum plus the rest): every cut gives the same bits
    rng = np.random.default_rng(2)
    n = 150
    amounts = np.round(rng.lognormal(0, 2, n), 6).tolist()
    prices = np.round(100 - np.arange(n) * 0.07, 2).tolist()
    tb = trades([T0 + i * S for i in range(10)] + [T0 + 20 * S] * n,
                [0.01] * 10 + amounts, prices=[100.0] * 10 + prices)
    params = dict(multiplier=5.0, halflife=100, warmup=10, min_notional=0.0)
    (whole,) = run([tb], LargeOrderDetector(**params))
    assert whole["amount"] == functools.reduce(operator.add, amounts)  # left to right
    for at in range(11, 10 + n):
        assert run(cut(tb, [at]), LargeOrderDetector(**params)) == [whole]


def test_snapshot_and_restore_mid_stream():
    tb = random_trades(3_000, seed=5)
    params = dict(multiplier=8.0, halflife=300, warmup=50, min_notional=0.0)
    whole = run([tb], LargeOrderDetector(**params))
    a, b = cut(tb, [1_234])
    det = LargeOrderDetector(**params)
    head = run([a], det, flush=False)
    state = pickle.loads(pickle.dumps(det.snapshot()))
    assert state.open_order is not None  # mid-order at the cut: carried in the snapshot
    resumed = LargeOrderDetector(**params, state=state)
    _same(head + run([b], resumed), whole)
    # and through the Bytewax logic's own snapshot and builder
    rules = DerivedConfig.Liquidations(native_exchanges=[], **params)
    logic = LiquidationLogic(rules)
    out1, _ = logic.on_batch([a])
    logic2 = liquidation_builder(rules)(pickle.loads(pickle.dumps(logic.snapshot())))
    out2, _ = logic2.on_batch([b])
    out3, _ = logic2.on_eof()
    ids = [i for o in [*out1, *out2, *out3] for i in o.batch.column("id").to_pylist()]
    assert ids == [r["id"] for r in whole]


@pytest.mark.parametrize("kwargs", [
    {"multiplier": 1.0}, {"multiplier": float("nan")}, {"halflife": 0}, {"warmup": 0},
    {"min_notional": -1.0}, {"min_notional": float("inf")},
])
def test_constructor_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LargeOrderDetector(**kwargs)


@pytest.mark.shared_data
def test_real_binance_futures_trades():
    tb = read_tardis(shared_file("tardis/binance-futures_trades_2020-02-22_BTCUSDT.csv.gz"),
                     "trades", "binance-futures", "BTCUSDT")
    params = dict(multiplier=20.0, halflife=1_000, warmup=200, min_notional=10_000.0)
    defaults = DerivedConfig.Liquidations()
    assert params == dict(multiplier=defaults.multiplier, halflife=defaults.halflife,
                          warmup=defaults.warmup, min_notional=defaults.min_notional)
    ours = run([tb], LargeOrderDetector(**params))
    ref = reference(tb, **params)
    assert [r["id"] for r in ours] == [o["id"] for o in ref]
    # a quiet Saturday night: 17 of 5,663 taker orders in 2 hours are 20x the running scale
    # (16 to 40 BTC against a scale of 0.6 to 0.9 BTC)
    assert len(ours) == 17
    file_rows = {r["id"]: r for r in tb.batch.to_pylist()}
    for r in ours:
        assert r["amount"] > r["threshold"] > 20 * 0.5
        assert r["amount"] * r["price"] >= 10_000
        first = file_rows[r["id"]]
        assert first["side"] == ("buy" if r["side"] == 1 else "sell")
        assert int(first["timestamp"].timestamp() * 1e6 + 0.5) == r["timestamp"]
    _same(run(cut(tb, [3_333, 6_666]), LargeOrderDetector(**params)), ours)
    # binance-futures has a native liquidation feed: with the default rules nothing is derived
    native = LiquidationLogic(config_from_dict({}).derived.liquidations)
    assert native.on_batch([tb])[0] == [] and native.on_eof()[0] == []


def test_keyed_step_in_a_bytewax_flow():
    rules = DerivedConfig.Liquidations(native_exchanges=["bitmex"], multiplier=8.0,
                                       halflife=300, warmup=50, min_notional=0.0)
    btc = random_trades(2_000, seed=1)
    eth = random_trades(2_000, seed=2)
    eth = TickBatch("binance", "ETHUSDT", "trades",
                    eth.batch.set_column(1, "symbol", pa.array(["ETHUSDT"] * 2_000)),
                    "eth.csv", eth.lines)
    xbt = TickBatch("bitmex", "XBTUSD", "trades",
                    btc.batch.set_column(0, "exchange", pa.array(["bitmex"] * 2_000)),
                    "xbt.csv", btc.lines)
    items = [x for pair in zip(cut(btc, [700, 1_400]), cut(eth, [500, 1_000]), strict=True)
             for x in pair] + [xbt]
    out: list = []
    flow = Dataflow("derived_liquidations")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda t: t.key)
    built = op.key_rm("out", op.stateful_batch("liquidations", keyed, liquidation_builder(rules)))
    op.output("sink", built, TestingSink(out))
    run_main(flow)

    params = dict(multiplier=8.0, halflife=300, warmup=50, min_notional=0.0)
    assert not [t for t in out if t.exchange == "bitmex"]  # native feed: not derived
    for tb, symbol in ((btc, "BTCUSDT"), (eth, "ETHUSDT")):
        got = [t for t in out if t.symbol == symbol]
        assert got and all(t.data_type == "liquidations" for t in got)
        assert all(t.batch.schema == DERIVED_LIQUIDATIONS_SCHEMA for t in got)
        ids = [i for t in got for i in t.batch.column("id").to_pylist()]
        assert ids == [o["id"] for o in reference(tb, **params)]
    name, rows = derived_table_rows(out[0])
    assert name == "ticks_liquidations"
    assert rows.rows.schema == TICK_TABLES["ticks_liquidations"].schema
    assert rows.rows.column("derived").to_pylist() == [True] * len(rows)
    assert rows.rows.column("row_key").null_count == 0
