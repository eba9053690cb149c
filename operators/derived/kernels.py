"""Compiled loops of the gap detectors (numba, cached on disk, compiled at import, GIL
released), each one pass over a batch in place of a dozen numpy calls:
- `decimal_ids` parses trade ids from an Arrow string column's buffers: the check that ids
  are plain integers, and their values, without pyarrow's generic string-to-number cast;
- `id_gaps` finds the ids missing between consecutive trades (running largest id);
- `silences` finds the stretches longer than a bound without data (running latest time).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types as nt

from features.jit import array_type as arr
from features.jit import compiled

MAX_DIGITS = 18  # every id of at most 18 digits fits in int64


def _ids_signature() -> Any:
    """`decimal_ids`' signature: read-only int32 offsets, bytes and validity (Arrow buffers),
    int64 values and bool flags out."""
    return nt.void(arr(nt.int32, True), arr(nt.uint8, True), arr(nt.boolean, True), arr(nt.int64),
                  arr(nt.boolean))


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
                d = int(data[k]) - 48
                if d < 0 or d > 9:
                    good = False
                    break
                v = v * 10 + d
        ok[i] = good
        values[i] = v if good else 0


def _gaps_signature() -> Any:
    """`id_gaps`' signature: int64 ids and times (read-only), the state before them (largest
    id, time of the last trade, whether there is one) and the smallest gap reported; the state
    after them and the gaps' starts, ends, first missing ids and counts out."""
    i8 = nt.int64
    out = nt.Tuple([i8, i8, nt.boolean, arr(i8), arr(i8), arr(i8), arr(i8)])
    return out(arr(i8, True), arr(i8, True), i8, i8, nt.boolean, i8)


@compiled(_gaps_signature())
def id_gaps(values: np.ndarray, ts: np.ndarray, top: int, last_ts: int, seen: bool,
            min_missing: int) -> tuple:  # pragma: no cover - compiled; tested via gaps
    """Id gaps in trades given in arrival order: a trade whose id exceeds the largest id so
    far by more than one, with at least `min_missing` ids missing, is a gap from the previous
    trade's time to max(its own, that). Returns (largest id, time of the last trade, seen,
    starts, ends, first missing ids, missing counts)."""
    n = values.shape[0]
    found = 0
    t_top, t_seen = top, seen
    for i in range(n):
        v = values[i]
        if t_seen:
            if v - t_top - 1 >= min_missing:
                found += 1
            if v > t_top:
                t_top = v
        else:
            t_top, t_seen = v, True
    starts = np.empty(found, np.int64)
    ends = np.empty(found, np.int64)
    firsts = np.empty(found, np.int64)
    counts = np.empty(found, np.int64)
    j = 0
    for i in range(n):
        v = values[i]
        t = ts[i]
        if seen:
            missing = v - top - 1
            if missing >= min_missing:
                starts[j] = last_ts
                ends[j] = t if t > last_ts else last_ts
                firsts[j] = top + 1
                counts[j] = missing
                j += 1
            if v > top:
                top = v
        else:
            top, seen = v, True
        last_ts = t
    return top, last_ts, seen, starts, ends, firsts, counts


def _silences_signature() -> Any:
    """`silences`' signature: int64 times (read-only), the latest time before them and
    whether there is one, the bound; the latest time after them and the silences out."""
    i8 = nt.int64
    return nt.Tuple([i8, arr(i8), arr(i8)])(arr(i8, True), i8, nt.boolean, i8)


@compiled(_silences_signature())
def silences(ts: np.ndarray, latest: int, seen: bool, max_silence: int
             ) -> tuple:  # pragma: no cover - compiled; tested via gaps
    """Times in arrival order more than `max_silence` after the latest time before them:
    (latest time after them, silence starts (that latest time), ends (the time))."""
    n = ts.shape[0]
    found = 0
    t_latest, t_seen = latest, seen
    for i in range(n):
        t = ts[i]
        if t_seen and t - t_latest > max_silence:
            found += 1
        if not t_seen or t > t_latest:
            t_latest, t_seen = t, True
    starts = np.empty(found, np.int64)
    ends = np.empty(found, np.int64)
    j = 0
    for i in range(n):
        t = ts[i]
        if seen and t - latest > max_silence:
            starts[j] = latest
            ends[j] = t
            j += 1
        if not seen or t > latest:
            latest, seen = t, True
    return latest, starts, ends
