"""The live clock both ways: sources hold it back, candle steps say when they need it."""

from __future__ import annotations

import time

import pyarrow as pa

from connectors.tardis.datatypes import TRADES
from operators import clock
from operators.candles.builder import ClosePolicy
from operators.candles.step import CandleLogic
from operators.messages import TickBatch


def trades_batch(ts: list[int]) -> pa.RecordBatch:
    n = len(ts)
    return pa.RecordBatch.from_pydict({
        "exchange": ["ex"] * n, "symbol": ["SYM"] * n, "timestamp": ts, "local_timestamp": ts,
        "id": [str(i) for i in range(n)], "side": ["buy"] * n, "price": [10.0] * n,
        "amount": [1.0] * n}, schema=TRADES.schema)


def test_the_clock_is_the_earliest_source_position_never_ahead_of_the_wall():
    now = time.time_ns() // 1000
    clock.caught_up("a", now - 5_000_000)
    clock.caught_up("b", now - 1_000_000)
    try:
        assert clock.live_clock_us() == now - 5_000_000
        clock.forget("a")
        assert clock.live_clock_us() == now - 1_000_000
        clock.caught_up("b", now + 60_000_000)
        assert clock.live_clock_us() <= time.time_ns() // 1000
    finally:
        clock.forget("a")
        clock.forget("b")


def test_next_need_is_the_earliest_close_time_after_the_one_served():
    clock.need(1, 3_000)
    clock.need(2, 2_000)
    clock.need(3, 2_000)
    try:
        assert clock.next_need(0) == 2_000
        assert clock.next_need(2_000) == 3_000
        assert clock.next_need(3_000) is None
        clock.need(2, None)
        clock.need(3, None)
        assert clock.next_need(0) == 3_000
    finally:
        for k in (1, 2, 3):
            clock.need(k, None)


def test_a_live_candle_step_registers_its_next_close_and_a_replay_step_does_not():
    policy = ClosePolicy(allowed_lateness_us=100_000)
    start = 1_700_000_000_000_000
    batch = TickBatch("ex", "SYM", "trades", trades_batch([start + 250_000]), "test")
    live = CandleLogic([1_000_000, 60_000_000], policy, wall_clock=True, clock=lambda: 0)
    replay = CandleLogic([1_000_000], policy)
    try:
        live.on_batch([batch])
        replay.on_batch([batch])
        assert live.notify_at() is not None and replay.notify_at() is None
        # the 1s candle of `start` closes at its end plus the allowed lateness
        assert clock._NEEDS[id(live)] == start + 1_000_000 + 100_000
        assert id(replay) not in clock._NEEDS
    finally:
        clock.need(id(live), None)
