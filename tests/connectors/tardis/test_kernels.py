"""The live decoder's compiled scan, checked value by value against orjson and Arrow.

Whatever the scan takes (status OK, a NUMBER, a timestamp) must be exactly what the general
decoder (orjson, then Arrow's casts) makes of the same text; whatever it cannot take exactly
it must refuse, so that the general decoder sees it.
"""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.tardis import kernels as k
from connectors.tardis.flat import _KEY_BYTES, _KEY_OFF, _KEY_TS, _KEYS, _MULTS, _SLOTS
from connectors.tardis.normalized import parse_timestamps


def scan(frames: list[bytes]) -> dict[str, np.ndarray]:
    """scan_flat over `frames` with the decoder's key table."""
    n, n_keys = len(frames), len(_KEYS)
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    ends = np.cumsum(lens)
    out = {"status": np.empty(n, np.uint8), "kind": np.empty((n, n_keys), np.int8),
           "vstart": np.empty((n, n_keys), np.int64), "vend": np.empty((n, n_keys), np.int64),
           "num": np.empty((n, n_keys)), "tsv": np.empty((n, n_keys), np.int64)}
    buf = np.frombuffer(b"".join(frames), np.uint8)
    k.scan_flat(buf, ends - lens, ends, _KEY_BYTES, _KEY_OFF, _KEY_TS, _SLOTS, _MULTS,
                out["status"], out["kind"], out["vstart"], out["vend"], out["num"], out["tsv"])
    return out


PRICE = _KEYS.index("price")
TS = _KEYS.index("timestamp")


def number_of(text: str) -> tuple[int, float]:
    got = scan([f'{{"price":{text}}}'.encode()])
    return int(got["kind"][0, PRICE]) if got["status"][0] == k.OK else -1, got["num"][0, PRICE]


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


# --------------------------------------------------------------------------------------------
# numbers

number_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e7, max_value=1e7).map(
        lambda x: f"{x:.{abs(hash(x)) % 12}f}"),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.builds(lambda m, f, e: f"{m}.{f}e{e}", st.integers(-999, 999),
              st.integers(0, 10**12), st.integers(-30, 30)),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z"),
)


@given(number_text)
@example("0.1")
@example("-0")
@example("-0.0")
@example("9007199254740993")  # 2**53 + 1: not one exact operation
@example("1e22")
@example("1e23")
@example("123456789012345678901234567890")
@example("0.000000000000000000001")
@settings(max_examples=1500, deadline=None)
def test_numbers_are_orjsons_values_or_refused(text):
    kind, value = number_of(text)
    try:
        expected = orjson.loads(text)
    except orjson.JSONDecodeError:  # out of double's range: orjson refuses it
        assert kind == k.BIG
        return
    assert kind in (k.NUMBER, k.BIG)
    if kind == k.NUMBER:
        # what normalized._floats makes of orjson's value: an int through Arrow's cast
        want = (pa.array([expected]).cast(pa.float64())[0].as_py()
                if isinstance(expected, int) else expected)
        assert bits(value) == bits(want), (text, value, want)


def test_small_decimals_and_integers_take_the_fast_path():
    for text in ("0", "7996", "32180.5", "0.00012345", "-12.75", "1e5", "123456789.123456"):
        assert number_of(text)[0] == k.NUMBER, text


@given(st.sampled_from(["01", "1.", ".5", "-", "+1", "1e", "1e+", "--1", "0x10", "1.2.3",
                        "NaN", "Infinity", "-Infinity", "1_000", "١"]))
def test_what_json_does_not_allow_is_refused(text):
    kind, _ = number_of(text)
    assert kind == -1  # the message goes to orjson, which rejects it
    try:
        orjson.loads(f'{{"price":{text}}}')
    except orjson.JSONDecodeError:
        return
    raise AssertionError(f"orjson accepts {text!r}")


# --------------------------------------------------------------------------------------------
# timestamps

timestamp_text = st.one_of(
    st.builds(lambda y, mo, d, h, mi, s, frac, zone, sep: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{zone}"),
        st.integers(1960, 2100), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
        st.integers(0, 60), st.integers(0, 60),
        st.one_of(st.just(""), st.from_regex(r"\A\.[0-9]{0,11}\Z")),
        st.sampled_from(["Z", "Z", "Z", "", "z", "+00:00", "+01:30"]),
        st.sampled_from(["T", "T", "T", " "])),
    st.text(max_size=30).filter(lambda t: '"' not in t and "\\" not in t),
)


FAST_FORM = re.compile(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z\Z")


@given(timestamp_text)
@example("2019-10-23T10:32:49.669Z")
@example("2024-02-29T23:59:59.999999999Z")
@example("2023-02-29T00:00:00Z")  # not a date
@example("1970-01-01T00:00:00Z")
@example("1969-12-31T23:59:59.999999Z")  # before 1970: left to Arrow
@example("2019-10-23T10:32:49.1234567890Z")
@settings(max_examples=1500, deadline=None)
def test_timestamps_are_arrows_values_or_refused(text):
    got = scan([orjson.dumps({"timestamp": text})])
    if got["status"][0] != k.OK:
        assert not text.isascii() or any(ord(c) < 32 for c in text)
        return
    us = int(got["tsv"][0, TS])
    arrow, errors = parse_timestamps([text])
    fast_form = FAST_FORM.match(text) is not None and int(text[:4]) >= 1970
    if us >= 0:
        assert fast_form and not errors and arrow[0].value == us, text
    else:  # refused: any other form goes to the general decoder
        assert not fast_form or errors, text


# --------------------------------------------------------------------------------------------
# whole messages

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)
keys = st.sampled_from(["type", "symbol", "exchange", "id", "price", "amount", "side",
                        "timestamp", "localTimestamp", "other", "x"]) | st.text(max_size=6)


@st.composite
def message_text(draw: st.DrawFn) -> bytes:
    obj = draw(st.dictionaries(keys, json_value, max_size=8))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    spaced = draw(st.booleans())
    if spaced:
        text = text.replace(",", " , ").replace(":", ": ").replace("{", "{ ")
    mangle = draw(st.sampled_from(["", "", "", "cut", "trail", "lead", "dup"]))
    if mangle == "cut" and len(text) > 2:
        text = text[:draw(st.integers(1, len(text) - 1))]
    elif mangle == "trail":
        text += draw(st.sampled_from([" ", "\n", "x", "}", ","]))
    elif mangle == "lead":
        text = draw(st.sampled_from([" ", "\t", "x"])) + text
    elif mangle == "dup" and obj:
        key = next(iter(obj))
        text = text[:-1] + f',{orjson.dumps(key).decode()}:1}}'
    return text.encode()


@given(st.lists(message_text(), min_size=1, max_size=6))
@settings(max_examples=500, deadline=None)
def test_a_message_the_scan_takes_is_a_flat_object_with_the_values_orjson_reads(frames):
    got = scan(frames)
    for m, frame in enumerate(frames):
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            assert got["status"][m] == k.SLOW, frame
            continue
        if got["status"][m] != k.OK:
            continue
        assert isinstance(obj, dict) and frame.isascii() and b"\\" not in frame
        assert not any(isinstance(v, list | dict) for v in obj.values())
        base = sum(len(f) for f in frames[:m])
        for col, key in enumerate(_KEYS):
            kind = got["kind"][m, col]
            if key not in obj:
                assert kind == k.ABSENT
                continue
            value = obj[key]
            if isinstance(value, str):
                assert kind == k.STRING
                span = b"".join(frames)[got["vstart"][m, col]:got["vend"][m, col]]
                assert base <= got["vstart"][m, col] and span.decode() == value
            elif value is None:
                assert kind == k.NULL
            elif isinstance(value, bool):
                assert kind == (k.TRUE if value else k.FALSE)
            elif kind == k.NUMBER:
                assert math.isclose(got["num"][m, col], float(value), rel_tol=0, abs_tol=0)
            else:
                assert kind == k.BIG


def test_a_repeated_wanted_key_leaves_the_message_to_orjson():
    got = scan([b'{"price":1,"price":2}', b'{"other":1,"other":2,"price":3}'])
    assert list(got["status"]) == [k.SLOW, k.OK]


def test_groups_are_by_type_exchange_and_symbol_in_order_of_first_appearance():
    frames = [orjson.dumps({"type": t, "exchange": e, "symbol": s}) for t, e, s in [
        ("trade", "a", "X"), ("trade", "a", "Y"), ("trade", "a", "X"), ("quote", "a", "X"),
        ("trade", "ab", "X"), ("trade", "a", "bX"), ("trade", "a", "Y")]]
    got = scan(frames)
    cols = np.array([_KEYS.index(c) for c in ("type", "exchange", "symbol")], dtype=np.int64)
    taken = np.ones(len(frames), dtype=bool)
    taken[5] = False
    codes, firsts = k.group_streams(np.frombuffer(b"".join(frames), np.uint8), got["vstart"],
                                    got["vend"], cols, taken)
    assert codes.tolist() == [0, 1, 0, 2, 3, -1, 1]
    assert firsts.tolist() == [0, 1, 3, 4]


def test_stream_runs_count_the_equal_local_timestamps_at_the_end():
    frames = [b"aa", b"aa", b"bb", b"aa", b"bb", b"bb", b"cc"]
    codes = np.array([0, 0, 1, 0, 1, 1, 2], dtype=np.int64)
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    ends = np.cumsum(lens)
    count, first, last, run, all_same = k.stream_runs(
        np.frombuffer(b"".join(frames), np.uint8), ends - lens, ends, codes, 3)
    assert count.tolist() == [3, 3, 1]
    assert first.tolist() == [0, 2, 6] and last.tolist() == [3, 5, 6]
    assert run.tolist() == [3, 3, 1] and all_same.tolist() == [True, True, True]
    codes[3] = 1  # stream 1: bb, aa, bb, bb
    count, first, last, run, all_same = k.stream_runs(
        np.frombuffer(b"".join(frames), np.uint8), ends - lens, ends, codes, 3)
    assert run.tolist() == [2, 2, 1] and all_same.tolist() == [True, False, True]
