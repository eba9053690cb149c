"""Compiled loops of the derived steps (numba, cached on disk, compiled at import, GIL released).

`decimal_ids` parses trade ids from an Arrow string column's buffers in one pass: the gap
detector's check that ids are plain integers, and their values, without pyarrow's cast (which
built the int64 column through its generic string-to-number conversion, ~0.3 ms per 23k ids).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.jit import compiled

MAX_DIGITS = 18  # every id of at most 18 digits fits in int64


def _ids_signature() -> Any:
    """`decimal_ids`' signature: read-only int32 offsets, bytes and validity (Arrow buffers),
    int64 values and bool flags out."""
    from numba import types as t

    def ro(dtype: Any) -> Any:
        return t.Array(dtype, 1, "C", readonly=True)

    return t.void(ro(t.int32), ro(t.uint8), ro(t.boolean), t.Array(t.int64, 1, "C"),
                  t.Array(t.boolean, 1, "C"))


@compiled(_ids_signature())
def decimal_ids(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray, values: np.ndarray,
                ok: np.ndarray) -> None:  # pragma: no cover - compiled; tested via gaps
    """For string i (bytes data[offsets[i]:offsets[i + 1]], null where not valid[i]):
    ok[i] when it is 1 to MAX_DIGITS ASCII digits, and values[i] its value (0 otherwise)."""
    for i in range(ok.shape[0]):
        s = offsets[i]
        length = offsets[i + 1] - s
        v = 0
        good = valid[i] and 1 <= length <= MAX_DIGITS
        if good:
            for k in range(s, s + length):
                d = np.int64(data[k]) - 48
                if d < 0 or d > 9:
                    good = False
                    break
                v = v * 10 + d
        ok[i] = good
        values[i] = v if good else 0
