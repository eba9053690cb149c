"""Column access shared by the derived-type steps: Arrow batch columns as numpy, and back.

Every helper works on a whole column at once; none creates a Python object per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators import metrics

TS = pa.timestamp("us", tz="UTC")

DERIVED_ROWS = metrics.Counter("derived_rows_total",
                               "Rows of derived data types emitted, by data type", "data_type")


def int_column(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values as int64, validity) of a timestamp or integer column; nulls read as 0."""
    col = batch.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.view(pa.int64())
    if not col.null_count:
        values = col.to_numpy() if col.type == pa.int64() else col.cast(pa.int64()).to_numpy()
        return values, np.ones(len(col), bool)
    valid = np.asarray(col.is_valid())
    return np.asarray(pc.fill_null(col, 0)), valid


def float_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A float column as float64 with NaN for null."""
    return np.asarray(pc.fill_null(batch.column(name).cast(pa.float64()), np.nan))


def timestamps(values: np.ndarray) -> pa.Array:
    """int64 microseconds -> timestamp[us, UTC]."""
    return pa.array(np.asarray(values, np.int64), pa.int64()).cast(TS)


def const_str(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def lines_array(lines: np.ndarray) -> pa.Array | None:
    """Source line numbers (-1 = unknown) as a nullable int64 array, None when all unknown."""
    if not len(lines) or (lines < 0).all():
        return None
    return pa.array(lines, pa.int64(), mask=lines < 0)


def lines_of(lines: pa.Array | None, n: int) -> np.ndarray:
    """A TickBatch's `lines` as int64 numpy, -1 where unknown."""
    if lines is None:
        return np.full(n, -1, np.int64)
    return np.asarray(pc.fill_null(lines.cast(pa.int64()), -1))
