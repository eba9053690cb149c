"""The live clock: wall-clock time, but never ahead of what the live sources have delivered.

Closing candles by wall clock (a quiet market still gets its candle on time) must not close a
candle whose trades are still queued in a source because the flow runs behind. Each live source
partition reports, after every poll, the wall time up to which everything it received has been
handed to the flow (`caught_up`); `live_clock_us()` is the earliest of those, or the wall clock
when this process has no live source. Sources in other processes are not seen: with several
processes, each candle step follows the sources of its own process (see README, scale-out).

The other direction: each candle step says when it will next read the clock to close a candle
(`need`), and live sources flush their micro-batches at that time (`next_need`) instead of
waiting for `max_batch_delay`. So a long micro-batch delay (fewer, larger batches with many
symbols) does not hold candles back.
"""

from __future__ import annotations

import threading
import time

_LOCK = threading.Lock()
_CAUGHT_UP: dict[str, int] = {}
_NEEDS: dict[int, int] = {}


def caught_up(source: str, wall_us: int) -> None:
    """`source` has delivered everything it received before `wall_us` (microseconds)."""
    with _LOCK:
        _CAUGHT_UP[source] = wall_us


def forget(source: str) -> None:
    """A source that ended or closed no longer holds the clock back."""
    with _LOCK:
        _CAUGHT_UP.pop(source, None)


def live_clock_us() -> int:
    now = time.time_ns() // 1000
    with _LOCK:
        if not _CAUGHT_UP:
            return now
        return min(now, min(_CAUGHT_UP.values()))


def need(consumer: int, wall_us: int | None) -> None:
    """`consumer` (a candle step's key, by id) will next close candles when the clock reaches
    `wall_us` (None: nothing to close)."""
    with _LOCK:
        if wall_us is None:
            _NEEDS.pop(consumer, None)
        else:
            _NEEDS[consumer] = wall_us


def next_need(after: int) -> int | None:
    """The earliest close time any candle step in this process waits for, later than
    `after` (a time already served), or None."""
    with _LOCK:
        return min((us for us in _NEEDS.values() if us > after), default=None)
