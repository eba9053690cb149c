"""MultiTimeframeCandles: close policy, late trades, fills, gaps, snapshots, invariants."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.candles.bars import SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN
from operators.candles.builder import ClosedCandles, ClosePolicy, MultiTimeframeCandles

S = 1_000_000  # one second in microseconds
T0 = 1_699_920_000 * S  # 2023-11-14 00:00 UTC: aligned to every timeframe


def trades(*rows: tuple[float, float, float, int]) -> tuple[np.ndarray, ...]:
    """(seconds after T0, price, amount, side) -> the five arrays add_trades takes."""
    ts = np.array([T0 + int(r[0] * S) for r in rows], np.int64)
    return (ts, ts + 1000, np.array([r[1] for r in rows], float),
            np.array([r[2] for r in rows], float), np.array([r[3] for r in rows], np.int8))


def collect(out: list[ClosedCandles], tf: int) -> dict[str, np.ndarray]:
    parts = [c for c in out if c.timeframe_us == tf]
    if not parts:
        return {"start": np.empty(0, np.int64)}
    return {f: np.concatenate([getattr(c, f) for c in parts])
            for f in ("start", "open", "high", "low", "close", "volume", "buy", "sell", "count",
                      "vwap", "is_filled", "has_gap", "open_ts", "close_ts")}


def run(batches, tfs=(15 * S, 60 * S), policy=None, flush=True):
    m = MultiTimeframeCandles(tfs, policy or ClosePolicy())
    out, late = [], []
    for b in batches:
        c, lt = m.add_trades(*b)
        out += c
        late += lt
    if flush:
        out += m.flush()
    return m, out, late


def test_left_closed_epoch_aligned_buckets():
    _, out, _ = run([trades((0, 10, 1, SIDE_BUY), (14.999999, 11, 1, SIDE_SELL),
                            (15, 12, 2, SIDE_BUY))])
    c = collect(out, 15 * S)
    assert list(c["start"]) == [T0, T0 + 15 * S]
    assert list(c["count"]) == [2, 1]
    assert list(c["close"]) == [11, 12]
    m1 = collect(out, 60 * S)
    assert list(m1["start"]) == [T0] and m1["count"][0] == 3
    assert m1["vwap"][0] == pytest.approx((10 + 11 + 24) / 4)


def test_open_is_first_arrival_close_is_latest_exchange_time():
    # within lateness, an older trade arrives last: it may set high/low, not open/close
    _, out, late = run([trades((5, 10, 1, SIDE_BUY), (7, 12, 1, SIDE_BUY), (6, 9, 1, SIDE_SELL),
                               (7, 11, 1, SIDE_BUY))], policy=ClosePolicy(2 * S))
    c = collect(out, 15 * S)
    assert not late
    assert (c["open"][0], c["high"][0], c["low"][0], c["close"][0]) == (10, 12, 9, 11)
    assert c["close_ts"][0] == T0 + 7 * S and c["open_ts"][0] == T0 + 5 * S


def test_candle_closes_when_watermark_passes_end():
    m = MultiTimeframeCandles([15 * S], ClosePolicy(allowed_lateness_us=2 * S))
    out, _ = m.add_trades(*trades((1, 10, 1, SIDE_BUY), (16, 11, 1, SIDE_BUY)))
    assert out == []  # watermark 14s < 15s
    out, _ = m.add_trades(*trades((17, 12, 1, SIDE_BUY)))
    assert [c.start[0] for c in out] == [T0]  # watermark 15s closes [0, 15)


def test_late_trade_goes_to_late_output_not_a_later_candle():
    m, out, late = run([trades((1, 10, 1, SIDE_BUY), (20, 11, 1, SIDE_BUY), (2, 99, 5, SIDE_BUY),
                               (21, 12, 1, SIDE_BUY))])
    c15 = collect(out, 15 * S)
    assert 99 not in c15["high"] and c15["volume"].sum() == 3
    lt = [x for x in late if x.timeframe_us == 15 * S]
    assert len(lt) == 1 and list(lt[0].index) == [2]
    # the 1m candle was still open, so the same trade counts there
    c60 = collect(out, 60 * S)
    assert c60["high"][0] == 99 and c60["count"][0] == 4


def test_lateness_admits_out_of_order_trades():
    _, out, late = run([trades((1, 10, 1, SIDE_BUY), (16, 11, 1, SIDE_BUY), (14, 9, 1, SIDE_BUY))],
                       policy=ClosePolicy(allowed_lateness_us=3 * S))
    assert not late
    assert collect(out, 15 * S)["count"][0] == 2


def test_empty_intervals_filled_with_previous_close():
    _, out, _ = run([trades((1, 10, 1, SIDE_BUY), (50, 12, 1, SIDE_SELL))], tfs=(15 * S,))
    c = collect(out, 15 * S)
    assert list(c["start"] - T0) == [0, 15 * S, 30 * S, 45 * S]
    assert list(c["is_filled"]) == [False, True, True, False]
    assert list(c["open"][1:3]) == [10, 10] and list(c["close"][1:3]) == [10, 10]
    assert list(c["volume"][1:3]) == [0, 0] and np.isnan(c["vwap"][1:3]).all()


def test_empty_intervals_skipped_by_config():
    _, out, _ = run([trades((1, 10, 1, SIDE_BUY), (50, 12, 1, SIDE_SELL))], tfs=(15 * S,),
                    policy=ClosePolicy(fill_empty=False))
    assert list(collect(out, 15 * S)["start"] - T0) == [0, 45 * S]


def test_flush_closes_open_candles_and_fills_nothing_beyond():
    m, out, _ = run([trades((1, 10, 1, SIDE_BUY), (20, 11, 1, SIDE_BUY))], flush=False)
    assert list(collect(out, 15 * S)["start"]) == [T0]
    tail = m.flush()
    assert list(collect(tail, 15 * S)["start"]) == [T0 + 15 * S]
    assert list(collect(tail, 60 * S)["start"]) == [T0]
    assert m.flush() == []


def test_wall_clock_closes_quiet_market_on_time():
    m = MultiTimeframeCandles([15 * S], ClosePolicy(allowed_lateness_us=1 * S))
    m.add_trades(*trades((3, 10, 1, SIDE_BUY)))
    assert m.next_close_us() == T0 + 16 * S
    assert m.advance_to(T0 + 15 * S) == []  # not yet: lateness
    out = m.advance_to(T0 + 16 * S)
    assert [int(c.start[0]) for c in out] == [T0]
    assert m.next_close_us() == T0 + 31 * S  # the next (empty) interval
    out = m.advance_to(T0 + 47 * S)
    c = collect(out, 15 * S)
    assert list(c["start"] - T0) == [15 * S, 30 * S] and c["is_filled"].all()
    _, late = m.add_trades(*trades((40, 11, 1, SIDE_BUY)))
    assert len(late) == 1  # its candle was closed by the clock


def test_gap_marks_the_candles_it_touches():
    m = MultiTimeframeCandles([15 * S])
    m.add_trades(*trades((1, 10, 1, SIDE_BUY)))
    m.mark_gap(T0 + 20 * S, T0 + 33 * S)
    out = m.add_trades(*trades((70, 11, 1, SIDE_BUY)))[0] + m.flush()
    c = collect(out, 15 * S)
    assert dict(zip((c["start"] - T0) // S, c["has_gap"], strict=True)) == {
        0: False, 15: True, 30: True, 45: False, 60: False}


def test_snapshot_is_small_picklable_and_resumes_exactly():
    rng = np.random.default_rng(3)
    n = 20_000
    ts = T0 + np.cumsum(rng.integers(0, 2 * S, n))
    arrays = (ts, ts + 5, 100 + rng.standard_normal(n).cumsum(), rng.random(n) + 0.01,
              rng.integers(0, 3, n).astype(np.int8))
    _, whole, _ = run([arrays], tfs=(15 * S, 60 * S, 3600 * S))

    m = MultiTimeframeCandles((15 * S, 60 * S, 3600 * S))
    first, _ = m.add_trades(*(a[: n // 2] for a in arrays))
    blob = pickle.dumps(m.snapshot())
    assert len(blob) < 4096
    r = MultiTimeframeCandles.from_snapshot(pickle.loads(blob), ClosePolicy())
    rest = r.add_trades(*(a[n // 2:] for a in arrays))[0] + r.flush()
    for tf in (15 * S, 60 * S, 3600 * S):
        a, b = collect(whole, tf), collect(first + rest, tf)
        for k in a:  # sums may differ in the last bit: the batch cut changes their order
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=f"{tf} {k}")
    # state does not grow with input: same snapshot size after 10x more trades
    big = MultiTimeframeCandles((15 * S, 60 * S, 3600 * S))
    for _ in range(10):
        big.add_trades(*arrays)
        arrays = (arrays[0] + n * 2 * S, arrays[1] + n * 2 * S, *arrays[2:])
    assert len(pickle.dumps(big.snapshot())) < 4096


def test_constructor_validates():
    with pytest.raises(ValueError, match="distinct"):
        MultiTimeframeCandles([15 * S, 15 * S])
    with pytest.raises(ValueError, match="at least one"):
        MultiTimeframeCandles([])
    with pytest.raises(ValueError, match="negative"):
        ClosePolicy(allowed_lateness_us=-1)


# -- invariants ------------------------------------------------------------------------------

trade_streams = st.lists(
    st.tuples(st.integers(0, 400_000_000), st.integers(1, 10_000), st.integers(1, 1000),
              st.sampled_from([SIDE_BUY, SIDE_SELL, SIDE_UNKNOWN])),
    min_size=1, max_size=300,
)


def _arrays(rows):
    ts = np.array([T0 + r[0] for r in rows], np.int64)
    return (ts, ts + 7, np.array([r[1] / 100 for r in rows]), np.array([r[2] / 1000 for r in rows]),
            np.array([r[3] for r in rows], np.int8))


@settings(max_examples=150, deadline=None)
@given(rows=trade_streams, cuts=st.lists(st.integers(0, 300), max_size=8),
       lateness=st.sampled_from([0, 2 * S, 20 * S]), fill=st.booleans(),
       sort=st.booleans())
def test_batch_boundaries_never_change_candles(rows, cuts, lateness, fill, sort):
    if sort:
        rows = sorted(rows)
    arrays = _arrays(rows)
    n = len(rows)
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    tfs = (15 * S, 60 * S, 300 * S)
    policy = ClosePolicy(lateness, fill)
    _, whole, late_whole = run([arrays], tfs, policy)
    pieces = [tuple(a[lo:hi] for a in arrays)
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    _, parts, late_parts = run(pieces, tfs, policy)
    for tf in tfs:
        a, b = collect(whole, tf), collect(parts, tf)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=f"{tf} {k}")
        n_late_a = sum(len(x.index) for x in late_whole if x.timeframe_us == tf)
        n_late_b = sum(len(x.index) for x in late_parts if x.timeframe_us == tf)
        assert n_late_a == n_late_b
        if sort:
            assert n_late_a == 0  # time-ordered input is never late


@settings(max_examples=150, deadline=None)
@given(rows=trade_streams, lateness=st.sampled_from([0, 5 * S]))
def test_ohlcv_invariants(rows, lateness):
    arrays = _arrays(rows)
    _, out, late = run([arrays], (15 * S, 60 * S), ClosePolicy(lateness, True))
    for tf in (15 * S, 60 * S):
        c = collect(out, tf)
        assert (c["high"] >= np.maximum(c["open"], c["close"])).all()
        assert (c["low"] <= np.minimum(c["open"], c["close"])).all()
        unknown_vol = c["volume"] - c["buy"] - c["sell"]
        assert (unknown_vol >= -1e-9 * np.maximum(c["volume"], 1)).all()
        assert (np.diff(c["start"]) == tf).all()  # filled: contiguous
        # every trade is in exactly one candle or in the late output
        n_late = sum(len(x.index) for x in late if x.timeframe_us == tf)
        assert c["count"].sum() + n_late == len(rows)
        # volume = buy + sell + unknown-side volume, per side code
        side = arrays[4]
        accepted = np.ones(len(rows), bool)
        for x in late:
            if x.timeframe_us == tf:
                accepted[x.index] = False
        amt = arrays[3]
        assert c["buy"].sum() == pytest.approx(amt[accepted & (side == SIDE_BUY)].sum())
        assert c["sell"].sum() == pytest.approx(amt[accepted & (side == SIDE_SELL)].sum())
        assert c["volume"].sum() == pytest.approx(amt[accepted].sum())


# -- against a per-trade reference -------------------------------------------------------------

def _reference(rows, tfs, lateness, fill):
    """Candles by the semantics of the README, one trade at a time in plain Python: a trade
    is late for a timeframe when its bucket ended at or before the watermark (largest
    exchange time seen before it minus the lateness); open = first to arrive, close = latest
    exchange time (among equals the last to arrive)."""
    out = {}
    for tf in tfs:
        bars: dict[int, dict] = {}
        top = None
        late = 0
        for t, p, a, side in rows:
            ts = T0 + t
            start = ts - ts % tf
            if top is not None and start + tf <= top - lateness:
                late += 1
            else:
                b = bars.get(start)
                if b is None:
                    bars[start] = b = {"open": p, "high": p, "low": p, "close": p, "open_ts": ts,
                                       "close_ts": ts, "volume": 0.0, "buy": 0.0, "sell": 0.0,
                                       "count": 0, "notional": 0.0}
                b["high"], b["low"] = max(b["high"], p), min(b["low"], p)
                if ts >= b["close_ts"]:
                    b["close"], b["close_ts"] = p, ts
                b["volume"] += a
                b["buy"] += a if side == SIDE_BUY else 0.0
                b["sell"] += a if side == SIDE_SELL else 0.0
                b["count"] += 1
                b["notional"] += p * a
            top = ts if top is None else max(top, ts)
        starts = sorted(bars)
        if fill and starts:
            starts = list(range(starts[0], starts[-1] + tf, tf))
        rows_out, prev = [], None
        for s in starts:
            b = bars.get(s)
            if b is None:
                rows_out.append((s, prev, prev, prev, prev, 0.0, 0, True))
            else:
                rows_out.append((s, b["open"], b["high"], b["low"], b["close"], b["volume"],
                                 b["count"], False))
                prev = b["close"]
        out[tf] = (rows_out, late)
    return out


@settings(max_examples=200, deadline=None)
@given(rows=trade_streams, cuts=st.lists(st.integers(0, 300), max_size=8),
       lateness=st.sampled_from([0, 2 * S, 20 * S, 100 * S]), fill=st.booleans())
def test_matches_a_per_trade_reference(rows, cuts, lateness, fill):
    """Out-of-order trades, any batch cut, every timeframe of a chain (15s, 1m, 5m) and one
    outside it (40s), against the plain-Python reference above."""
    rows = [(t, p / 100, a / 1000, side) for t, p, a, side in rows]
    arrays = _arrays([(t, p * 100, a * 1000, side) for t, p, a, side in rows])
    n = len(rows)
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    pieces = [tuple(a[lo:hi] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                   strict=True)]
    tfs = (15 * S, 40 * S, 60 * S, 300 * S)
    _, out, late = run(pieces, tfs, ClosePolicy(lateness, fill))
    expected = _reference(rows, tfs, lateness, fill)
    for tf in tfs:
        c = collect(out, tf)
        want, want_late = expected[tf]
        assert sum(len(x.index) for x in late if x.timeframe_us == tf) == want_late
        assert list(c["start"]) == [w[0] for w in want], tf
        for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
            np.testing.assert_allclose(c[name], [w[i] for w in want], rtol=1e-12,
                                       err_msg=f"{tf} {name}")
        assert list(c["count"]) == [w[6] for w in want]
        assert list(c["is_filled"]) == [w[7] for w in want]


def test_snapshot_of_the_earlier_layout_is_refused_with_a_clear_message():
    m = MultiTimeframeCandles((15 * S, 60 * S))
    m.add_trades(*trades((1, 10, 1, SIDE_BUY)))
    legacy = m.snapshot()[1:5]  # (max_ts, closed_until, timeframes, gaps): the old layout
    with pytest.raises(ValueError, match="earlier version of the candle step"):
        MultiTimeframeCandles.from_snapshot(legacy, ClosePolicy())
    # the current layout round-trips
    r = MultiTimeframeCandles.from_snapshot(pickle.loads(pickle.dumps(m.snapshot())),
                                            ClosePolicy())
    assert r.snapshot() == m.snapshot()


@settings(max_examples=200, deadline=None)
@given(rows=trade_streams, cuts=st.lists(st.integers(0, 300), max_size=8),
       ticks=st.lists(st.integers(0, 400), max_size=8),
       lateness=st.sampled_from([0, 2 * S, 20 * S]), fill=st.booleans())
def test_the_nothing_due_shortcut_emits_what_the_full_pass_emits_call_by_call(
        rows, cuts, ticks, lateness, fill):
    """A batch or clock tick that closes nothing skips the pass over the timeframes; every
    call must still return exactly what the full pass returns, at the same call (filled
    intervals before an open bar included), and leave the same snapshot."""
    from unittest.mock import patch

    arrays = _arrays(rows)
    n = len(rows)
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    pieces = [tuple(a[lo:hi] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                   strict=True)]
    tfs = (1 * S, 15 * S, 40 * S, 60 * S)
    policy = ClosePolicy(lateness, fill)

    def calls(m: MultiTimeframeCandles) -> list:
        out = []
        for i, piece in enumerate(pieces):
            c, lt = m.add_trades(*piece)
            out.append(([(x.timeframe_us, x.start.tolist(), x.close.tolist()) for x in c],
                        [(x.timeframe_us, x.index.tolist()) for x in lt]))
            if i < len(ticks):  # a wall-clock tick between batches
                now = int(piece[0].max()) + ticks[i] * S // 10
                out.append([(x.timeframe_us, x.start.tolist()) for x in m.advance_to(now)])
        return out

    fast = MultiTimeframeCandles(tfs, policy)
    got = calls(fast)
    full = MultiTimeframeCandles(tfs, policy)
    with patch.object(MultiTimeframeCandles, "_closes_by", lambda self, threshold: True):
        want = calls(full)
    assert got == want
    assert fast.snapshot() == full.snapshot()
