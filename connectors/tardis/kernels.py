"""Compiled loops of the live decoder (numba, cached on disk, compiled at import, GIL released).

tardis-machine sends one small, flat JSON object per message (trades, liquidations, derivative
tickers, option summaries). Decoding them one by one (orjson, a dict per message, a list per
column) was most of the live path's CPU at 100k messages/s. These kernels read a whole run of
messages, concatenated in one buffer, in one pass:
- `scan_flat` checks each message is a flat JSON object in the subset this fast path takes
  (ASCII, no escapes, no nested values) and records, for a table of wanted keys, each value's
  kind, byte span, number and (for timestamp keys) microseconds. A message outside the subset
  is marked SLOW and goes through the general decoder (orjson), which reports what is wrong.
- `group_streams` groups messages by their (type, exchange, symbol) values, and `fitting`
  says which messages have values of the kinds their type's columns take;
- `stream_runs` gives each stream's count, first and last message and the run of equal
  `localTimestamp` strings at its end (the replay resume position);
- `gather_spans` copies string values into an Arrow string column's buffers.

Numbers are converted exactly where a single IEEE operation is exact (a mantissa of at most
2**53 and a power of ten of at most 22, the classic fast path of correctly rounded parsers);
any other number is marked BIG and its message goes through orjson. Timestamps are taken in
the one form tardis-machine writes (`YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, 1970 on) and truncated
to microseconds, as Arrow's cast does; any other form goes through the general decoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types as nt

from features.jit import array_type as arr
from features.jit import compiled
from features.jit import inlined as _inline  # scan helpers: a call per token was ~30% slower

# value kinds (the `kind` matrix)
ABSENT, STRING, NUMBER, NULL, TRUE, FALSE, BIG = 0, 1, 2, 3, 4, 5, 6
# message status
OK, SLOW = 0, 1

_POW10 = np.array([10.0 ** k for k in range(23)])  # all exact in float64
_MAX_MANTISSA = 1 << 53
_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


@_inline
def _number(buf: np.ndarray, i: int, end: int) -> tuple:  # pragma: no cover - compiled
    """The JSON number at buf[i:]: (index after it, NUMBER | BIG | -1 for not a number, value)."""
    neg = False
    if buf[i] == 45:  # '-'
        neg = True
        i += 1
    if i >= end:
        return i, np.int8(-1), 0.0
    c = buf[i]
    mant = 0
    digits = 0
    exp10 = 0
    exact = True
    is_int = True
    if c == 48:  # a leading 0 stands alone
        i += 1
    elif 49 <= c <= 57:
        while i < end and 48 <= buf[i] <= 57:
            if digits < 18:
                mant = mant * 10 + (buf[i] - 48)
                digits += 1
            else:
                exact = False
            i += 1
    else:
        return i, np.int8(-1), 0.0
    if i < end and buf[i] == 46:  # '.'
        is_int = False
        i += 1
        if i >= end or not 48 <= buf[i] <= 57:
            return i, np.int8(-1), 0.0
        while i < end and 48 <= buf[i] <= 57:
            d = buf[i] - 48
            if mant == 0 and d == 0:
                exp10 -= 1  # leading zeros of a fraction are not significant digits
            elif digits < 18:
                mant = mant * 10 + d
                digits += 1
                exp10 -= 1
            elif d != 0:
                exact = False
            i += 1
    if i < end and (buf[i] == 101 or buf[i] == 69):  # 'e' | 'E'
        is_int = False
        i += 1
        sign = 1
        if i < end and (buf[i] == 43 or buf[i] == 45):
            sign = -1 if buf[i] == 45 else 1
            i += 1
        if i >= end or not 48 <= buf[i] <= 57:
            return i, np.int8(-1), 0.0
        e = 0
        while i < end and 48 <= buf[i] <= 57:
            if e < 100_000:
                e = e * 10 + (buf[i] - 48)
            i += 1
        exp10 += sign * e
    if mant == 0:
        # orjson: an integer -0 is int 0 (+0.0 as a float); a float -0.0 keeps its sign
        return i, np.int8(NUMBER), (-0.0 if neg and not is_int else 0.0)
    if not exact or mant > _MAX_MANTISSA or exp10 < -22 or exp10 > 22:
        return i, np.int8(BIG), 0.0
    v = float(mant) * _POW10[exp10] if exp10 >= 0 else float(mant) / _POW10[-exp10]
    return i, np.int8(NUMBER), (-v if neg else v)


@_inline
def _iso_us(buf: np.ndarray, s: int, e: int) -> int:  # pragma: no cover - compiled
    """`YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (1970-9999) as microseconds since the epoch, the
    fraction truncated; -1 for any other text."""
    if e - s < 20 or e - s > 30:
        return -1
    for k in (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18):
        if not 48 <= buf[s + k] <= 57:
            return -1
    if (buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 10] != 84 or buf[s + 13] != 58
            or buf[s + 16] != 58 or buf[e - 1] != 90):
        return -1
    year = ((buf[s] - 48) * 1000 + (buf[s + 1] - 48) * 100 + (buf[s + 2] - 48) * 10
            + (buf[s + 3] - 48))
    month = (buf[s + 5] - 48) * 10 + (buf[s + 6] - 48)
    day = (buf[s + 8] - 48) * 10 + (buf[s + 9] - 48)
    hour = (buf[s + 11] - 48) * 10 + (buf[s + 12] - 48)
    minute = (buf[s + 14] - 48) * 10 + (buf[s + 15] - 48)
    second = (buf[s + 17] - 48) * 10 + (buf[s + 18] - 48)
    frac = 0
    p = s + 19
    if p < e - 1:
        if buf[p] != 46:
            return -1
        p += 1
        nf = 0
        while p < e - 1:
            c = buf[p]
            if not 48 <= c <= 57:
                return -1
            if nf < 6:
                frac = frac * 10 + (c - 48)
            nf += 1
            p += 1
        if nf == 0 or nf > 9:
            return -1
        while nf < 6:
            frac *= 10
            nf += 1
    if year < 1970 or month < 1 or month > 12 or hour > 23 or minute > 59 or second > 59:
        return -1
    leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    dim = 29 if (month == 2 and leap) else _DAYS[month]
    if day < 1 or day > dim:
        return -1
    # days from civil (H. Hinnant), year >= 1970 so all terms are non-negative
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return (((days * 24 + hour) * 60 + minute) * 60 + second) * 1_000_000 + frac


@_inline
def _string_end(buf: np.ndarray, i: int, end: int) -> int:  # pragma: no cover - compiled
    """buf[i] follows an opening quote: the index of the closing quote, or -1 when the
    string has an escape, a control character or a non-ASCII byte, or does not end."""
    while i < end:
        c = buf[i]
        if c == 34:
            return i
        if c == 92 or c < 32 or c >= 128:
            return -1
        i += 1
    return -1


@compiled(nt.int64(arr(nt.uint8, True), nt.int64, nt.int64, arr(nt.int64, True), nt.int64))
def key_slot(b: np.ndarray, s: int, length: int, mults: np.ndarray,
             size: int) -> int:  # pragma: no cover - compiled
    """The slot of key b[s:s + length] (length >= 1) in a table of `size` (a power of two):
    the scan's key lookup, one table read instead of a comparison with every wanted key."""
    h = (length * mults[0] + b[s] * mults[1] + b[s + length - 1] * mults[2]
         + b[s + length // 2] * mults[3])
    return h & (size - 1)


@_inline
def _skip_space(buf: np.ndarray, i: int, end: int) -> int:  # pragma: no cover - compiled
    """The index of the first byte from i on that is not JSON whitespace (or end)."""
    while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 10 or buf[i] == 13):
        i += 1
    return i


@_inline
def _literal(buf: np.ndarray, i: int, end: int) -> int:  # pragma: no cover - compiled
    """TRUE, FALSE or NULL for the literal at buf[i:], -1 for anything else."""
    c = buf[i]
    if c == 116 and i + 4 <= end and buf[i + 1] == 114 and buf[i + 2] == 117 \
            and buf[i + 3] == 101:
        return TRUE
    if c == 102 and i + 5 <= end and buf[i + 1] == 97 and buf[i + 2] == 108 \
            and buf[i + 3] == 115 and buf[i + 4] == 101:
        return FALSE
    if c == 110 and i + 4 <= end and buf[i + 1] == 117 and buf[i + 2] == 108 \
            and buf[i + 3] == 108:
        return NULL
    return -1


@_inline
def _wanted(buf: np.ndarray, s: int, length: int, keys: np.ndarray, key_off: np.ndarray,
            slots: np.ndarray, mults: np.ndarray) -> int:  # pragma: no cover - compiled
    """The index of the wanted key equal to buf[s:s + length], or -1."""
    if length == 0:
        return -1
    key = int(slots[key_slot(buf, s, length, mults, slots.shape[0])])
    if key < 0 or key_off[key + 1] - key_off[key] != length:
        return -1
    for j in range(length):
        if keys[key_off[key] + j] != buf[s + j]:
            return -1
    return key


def _scan_signature() -> Any:
    """buffer, message starts and ends, key table (bytes, offsets, timestamp flags); status,
    kind, value start, value end, number and timestamp out."""
    u8, i8 = nt.uint8, nt.int64
    m8 = nt.Array(nt.int8, 2, "C")
    m64 = nt.Array(i8, 2, "C")
    mf = nt.Array(nt.float64, 2, "C")
    return nt.void(arr(u8, True), arr(i8, True), arr(i8, True), arr(u8, True), arr(i8, True),
                   arr(nt.boolean, True), arr(i8, True), arr(i8, True), arr(u8), m8, m64, m64,
                   mf, m64)


@compiled(_scan_signature())
def scan_flat(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, keys: np.ndarray,
              key_off: np.ndarray, key_ts: np.ndarray, slots: np.ndarray, mults: np.ndarray,
              status: np.ndarray, kind: np.ndarray,
              vstart: np.ndarray, vend: np.ndarray, num: np.ndarray,
              tsv: np.ndarray) -> None:  # pragma: no cover - compiled
    """Message m is buf[starts[m]:ends[m]]. For wanted key k (bytes keys[key_off[k]:
    key_off[k + 1]], found through `slots`, see `key_slot`): kind[m, k], the value's span
    (inside the quotes for a string), num[m, k] for a NUMBER and, where key_ts[k], tsv[m, k]
    the microseconds of a STRING (-1 when not in the fast form). status[m] is SLOW when the
    message is not a flat object of the subset, or repeats a wanted key."""
    n_keys = key_off.shape[0] - 1
    for m in range(starts.shape[0]):
        for k in range(n_keys):
            kind[m, k] = ABSENT
            tsv[m, k] = -1
        status[m] = SLOW
        end = ends[m]
        i = _skip_space(buf, starts[m], end)
        if i >= end or buf[i] != 123:  # '{'
            continue
        i += 1
        good = False
        while True:
            i = _skip_space(buf, i, end)
            if i >= end or buf[i] != 34:  # a key
                break
            ks = i + 1
            ke = _string_end(buf, ks, end)
            if ke < 0:
                break
            i = _skip_space(buf, ke + 1, end)
            if i >= end or buf[i] != 58:  # ':'
                break
            i = _skip_space(buf, i + 1, end)
            if i >= end:
                break
            key = _wanted(buf, ks, ke - ks, keys, key_off, slots, mults)
            c = buf[i]
            value = 0.0
            vs = i
            if c == 34:
                vs = i + 1
                ve = _string_end(buf, vs, end)
                if ve < 0:
                    break
                i = ve + 1
                kv = STRING
            elif c == 45 or 48 <= c <= 57:
                i, kv, value = _number(buf, i, end)
                if kv < 0:
                    break
                ve = i
            else:
                kv = _literal(buf, i, end)
                if kv < 0:  # nested object or array, or not JSON
                    break
                i += 4 if kv != FALSE else 5
                ve = i
            if key >= 0:
                if kind[m, key] != ABSENT:  # a repeated key: orjson's rule (last wins)
                    break
                kind[m, key] = kv
                vstart[m, key] = vs
                vend[m, key] = ve
                num[m, key] = value
                if kv == STRING and key_ts[key]:
                    tsv[m, key] = _iso_us(buf, vs, ve)
            i = _skip_space(buf, i, end)
            if i >= end:
                break
            if buf[i] == 44:  # ','
                i += 1
                continue
            if buf[i] == 125:  # '}'
                good = _skip_space(buf, i + 1, end) == end
            break
        if good:
            status[m] = OK


def _group_signature() -> Any:
    i8 = nt.int64
    m64 = nt.Array(i8, 2, "C", readonly=True)
    return nt.Tuple([arr(i8), arr(i8)])(arr(nt.uint8, True), m64, m64, arr(i8, True),
                                          arr(nt.boolean, True))


@compiled(_group_signature())
def group_streams(buf: np.ndarray, vstart: np.ndarray, vend: np.ndarray, cols: np.ndarray,
                  taken: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """Group the `taken` messages by the values of `cols` (spans in vstart/vend): each
    message's group code (-1 where not taken) and each group's first message, codes in
    order of first appearance. A hash table keyed by the values' bytes (FNV-1a), every hit
    compared byte by byte."""
    n = taken.shape[0]
    size = 64
    while size < 2 * n:
        size *= 2
    rep = np.full(size, -1, dtype=np.int64)
    rep_hash = np.zeros(size, dtype=np.uint64)
    rep_code = np.zeros(size, dtype=np.int64)
    codes = np.full(n, -1, dtype=np.int64)
    firsts = np.empty(n, dtype=np.int64)
    count = 0
    prime = np.uint64(1099511628211)
    for m in range(n):
        if not taken[m]:
            continue
        h = np.uint64(14695981039346656037)
        for c in cols:
            for j in range(vstart[m, c], vend[m, c]):
                h = (h ^ np.uint64(buf[j])) * prime
            h = (h ^ np.uint64(0xFF)) * prime  # no byte of an ASCII string: a separator
        slot = np.int64(h & np.uint64(size - 1))
        while True:
            r = rep[slot]
            if r < 0:
                rep[slot] = m
                rep_hash[slot] = h
                rep_code[slot] = count
                firsts[count] = m
                codes[m] = count
                count += 1
                break
            if rep_hash[slot] == h:
                same = True
                for c in cols:
                    length = vend[m, c] - vstart[m, c]
                    if length != vend[r, c] - vstart[r, c]:
                        same = False
                        break
                    a, b = vstart[m, c], vstart[r, c]
                    for j in range(length):
                        if buf[a + j] != buf[b + j]:
                            same = False
                            break
                    if not same:
                        break
                if same:
                    codes[m] = rep_code[slot]
                    break
            slot = (slot + 1) & (size - 1)
    return codes, firsts[:count].copy()


def _fits_signature() -> Any:
    i8 = nt.int64
    m64 = nt.Array(i8, 2, "C", readonly=True)
    return nt.void(nt.Array(nt.int8, 2, "C", readonly=True), m64, arr(i8, True),
                   arr(i8, True), nt.Array(nt.int8, 2, "C", readonly=True),
                   nt.Array(nt.boolean, 2, "C", readonly=True), arr(nt.boolean))


@compiled(_fits_signature())
def fitting(kind: np.ndarray, tsv: np.ndarray, codes: np.ndarray, group_type: np.ndarray,
            masks: np.ndarray, ts_cols: np.ndarray,
            out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[m]: message m's group has a type t >= 0 (group_type[codes[m]]) and each wanted
    key's kind is one the type takes (bit kind of masks[t, key]), a timestamp key's string
    (ts_cols[t, key]) being in the fast form."""
    for m in range(codes.shape[0]):
        c = codes[m]
        ok = c >= 0
        if ok:
            t = group_type[c]
            ok = t >= 0
            if ok:
                for col in range(kind.shape[1]):
                    kv = kind[m, col]
                    if not (masks[t, col] >> kv) & 1:
                        ok = False
                        break
                    if ts_cols[t, col] and kv == STRING and tsv[m, col] < 0:
                        ok = False
                        break
        out[m] = ok


def _runs_signature() -> Any:
    i8 = nt.int64
    out = nt.Tuple([arr(i8), arr(i8), arr(i8), arr(i8), arr(nt.boolean)])
    return out(arr(nt.uint8, True), arr(i8, True), arr(i8, True), arr(i8, True), i8)


@compiled(_runs_signature())
def stream_runs(buf: np.ndarray, ls: np.ndarray, le: np.ndarray, codes: np.ndarray,
                n_streams: int) -> tuple:  # pragma: no cover - compiled
    """Per stream code, over messages in order (localTimestamp spans ls/le): count, index of
    the first and last message, how many messages at the end share the last one's
    localTimestamp, and whether all of them share the first one's."""
    count = np.zeros(n_streams, dtype=np.int64)
    first = np.full(n_streams, -1, dtype=np.int64)
    last = np.full(n_streams, -1, dtype=np.int64)
    run = np.zeros(n_streams, dtype=np.int64)
    all_same = np.ones(n_streams, dtype=np.bool_)
    for i in range(codes.shape[0]):
        c = codes[i]
        p = last[c]
        same = False
        if p >= 0 and le[i] - ls[i] == le[p] - ls[p]:
            same = True
            a, b = ls[i], ls[p]
            for j in range(le[i] - ls[i]):
                if buf[a + j] != buf[b + j]:
                    same = False
                    break
        if p < 0:
            first[c] = i
            run[c] = 1
        elif same:
            run[c] += 1
        else:
            run[c] = 1
            all_same[c] = False
        last[c] = i
        count[c] += 1
    return count, first, last, run, all_same


def _gather_signature() -> Any:
    i8 = nt.int64
    out = nt.Tuple([arr(nt.int32), arr(nt.uint8)])
    return out(arr(nt.uint8, True), arr(i8, True), arr(i8, True))


@compiled(_gather_signature())
def gather_spans(buf: np.ndarray, vs: np.ndarray,
                 ve: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """Arrow string buffers (int32 offsets, data) of the spans buf[vs[i]:ve[i]] (an empty
    span where vs[i] >= ve[i])."""
    n = vs.shape[0]
    offsets = np.empty(n + 1, dtype=np.int32)
    total = 0
    offsets[0] = 0
    for i in range(n):
        if ve[i] > vs[i]:
            total += ve[i] - vs[i]
        offsets[i + 1] = total
    data = np.empty(total, dtype=np.uint8)
    p = 0
    for i in range(n):
        for j in range(vs[i], ve[i]):
            data[p] = buf[j]
            p += 1
    return offsets, data
