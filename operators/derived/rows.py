"""Derived items -> rows of their persisted tables (ticks_liquidations, ticks_funding_rates,
ticks_gaps), conformed with `connectors.tables.conform` so each row carries its row_key."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from connectors.tables import TICK_TABLES, conform
from operators.derived.common import timestamps
from operators.messages import Gap, TableRows, TickBatch

DerivedItem = TickBatch | Gap

_TABLE_OF = {"liquidations": "ticks_liquidations", "funding_rates": "ticks_funding_rates"}


def gap_rows(gaps: Sequence[Gap]) -> pa.Table:
    """`Gap` items as ticks_gaps rows (timestamp = start, timestamp_end = end)."""
    n = len(gaps)
    tdef = TICK_TABLES["ticks_gaps"]
    if not n:
        return tdef.schema.empty_table()
    table = pa.table({
        "exchange": pa.array([g.exchange for g in gaps], pa.string()),
        "symbol": pa.array([g.symbol for g in gaps], pa.string()),
        "timestamp": timestamps(np.array([g.start_us for g in gaps], np.int64)),
        "timestamp_end": timestamps(np.array([g.end_us for g in gaps], np.int64)),
        "reason": pa.array([g.reason for g in gaps], pa.string()),
        "source": pa.array([g.source for g in gaps], pa.string()),
    })
    return conform(table, tdef)


def derived_table_rows(item: DerivedItem) -> tuple[str, TableRows]:
    """`(table name, TableRows)` of a derived item, the input `PersistSink` takes: a `Gap`,
    or a `TickBatch` of derived liquidations (derived=True kept) or of funding_rates."""
    if isinstance(item, Gap):
        return "ticks_gaps", TableRows("ticks_gaps", gap_rows([item]))
    name = _TABLE_OF.get(item.data_type)
    if name is None:
        raise ValueError(f"{item.data_type!r} is not a derived data type")
    # a native liquidations batch has no `derived` column: it is not derived
    extra: dict[str, object] | None = (
        {"derived": False} if name == "ticks_liquidations" else None)
    return name, TableRows(name, conform(item.batch, TICK_TABLES[name], extra))
