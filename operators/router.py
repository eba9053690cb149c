"""The data-type router: one branch per data type (streaming.yaml `data_types:`).

Sources emit one mixed stream of `TickBatch`, `Gap` and `DeadLetters` items; the router
splits it so each data type has its own stream, dead letters go to their output, and gap
records to theirs. A batch whose data type is switched off is counted and logged once, never
dropped without a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import BranchOut

from connectors.tardis.datatypes import route_of
from operators import metrics
from operators.messages import DeadLetters, Gap, TickBatch

log = logging.getLogger(__name__)

SKIPPED = metrics.Counter("rows_skipped_disabled_total",
                          "Rows of data types switched off in streaming.yaml", "data_type")


@dataclass(frozen=True)
class Routes:
    """The router's outputs: tick streams by branch name, dead letters, gap records."""

    ticks: dict[str, Stream[TickBatch]]
    dead_letters: Stream[DeadLetters]
    gaps: Stream[Gap]


def _is_route(name: str, item: TickBatch) -> bool:
    return _route_name(item) == name


def _route_name(item: TickBatch) -> str:
    return route_of(item.data_type)


def route(step_id: str, up: Stream, enabled: Iterable[str]) -> Routes:
    """Split `up` into one stream per enabled branch (data_types key)."""
    enabled = list(dict.fromkeys(enabled))
    split = op.branch(f"{step_id}_dead_letters", up, lambda x: isinstance(x, DeadLetters))
    rest = op.branch(f"{step_id}_gaps", split.falses, lambda x: isinstance(x, Gap))
    ticks: dict[str, Stream[TickBatch]] = {}
    remaining: Stream = rest.falses
    for name in enabled:
        b: BranchOut[TickBatch, TickBatch] = op.branch(
            f"{step_id}_{name}", remaining, partial(_is_route, name))
        ticks[name] = b.trues
        remaining = b.falses
    warned: set[str] = set()

    def count_disabled(item: TickBatch) -> None:
        SKIPPED.inc(len(item), data_type=item.data_type)
        if item.data_type not in warned:
            warned.add(item.data_type)
            log.warning("data type %s is switched off in streaming.yaml; its rows are counted "
                        "in rows_skipped_disabled_total and not processed", item.data_type)

    op.inspect(f"{step_id}_disabled", remaining, lambda _sid, x: count_disabled(x))
    return Routes(ticks, split.trues, rest.trues)
