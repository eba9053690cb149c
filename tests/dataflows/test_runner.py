"""dataflows.runner: the heap is settled before a run (gc.freeze)."""

from __future__ import annotations

import gc
import weakref

from dataflows.runner import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settle_heap_frees_garbage_and_puts_the_rest_out_of_the_collectors_reach():
    alive = [_Node()]  # tracked and alive at startup: frozen
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    gc.disable()  # no automatic collection between here and settle_heap
    try:
        settle_heap()
        assert gone() is None  # collected first, so not kept for the run's lifetime
        assert gc.get_freeze_count() > 0
        # the collector no longer sees startup objects: full collections skip them
        assert not any(o is alive for o in gc.get_objects())
        fresh = [_Node()]
        assert any(o is fresh for o in gc.get_objects())
    finally:
        gc.enable()
        gc.unfreeze()  # leave the test process as it was
    assert any(o is alive for o in gc.get_objects())
