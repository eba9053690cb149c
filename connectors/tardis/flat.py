"""Bulk decoding of flat tardis-machine messages: a run of frames -> Arrow batches at once.

The message types with one row per message and only top-level values (trade, liquidation,
derivative_ticker, option_summary) make up nearly all of a live feed's messages by count.
`FlatScan` reads a run of such frames with one compiled pass (connectors.tardis.kernels):
which messages it can take, their (type, exchange, symbol) stream, and each wanted value.
`FlatScan.build` then makes the data type's batch for any set of those messages with a few
Arrow calls, equal to what `normalized.build_batch` makes from the orjson-decoded messages
(same columns, values, rejected rows and reasons; tests compare the two on random messages).

A message the scan does not take (not a flat object of plain ASCII strings, an escape, a
number that needs more than one exact operation, a timestamp in another form, a value of the
wrong kind for its column, another message type) is `eligible` False: the caller decodes it
with orjson, which also reports what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from connectors.tardis import kernels as k
from connectors.tardis.datatypes import TS
from connectors.tardis.normalized import _F, _FIELDS, _S, _T, BuiltBatch, _finish, spec_of

#: message type -> data type of the types decoded here
FLAT_TYPES = {"trade": "trades", "liquidation": "liquidations",
              "derivative_ticker": "derivative_ticker", "option_summary": "options_chain"}
_BASE_KEYS = [("type", _S), ("exchange", _S), ("symbol", _S), ("timestamp", _T),
              ("localTimestamp", _T)]


def _key_table() -> tuple[list[str], dict[str, int], list[str]]:
    names: list[str] = []
    kinds: list[str] = []
    for key, kind in _BASE_KEYS + [(key, kind) for data_type in set(FLAT_TYPES.values())
                                   for _, key, kind in _FIELDS[data_type]]:
        if key not in names:
            names.append(key)
            kinds.append(kind)
    return names, {n: i for i, n in enumerate(names)}, kinds


_KEYS, _COL, _KINDS = _key_table()
_KEY_BYTES = np.frombuffer("".join(_KEYS).encode(), dtype=np.uint8)
_KEY_OFF = np.concatenate([[0], np.cumsum([len(x) for x in _KEYS])]).astype(np.int64)
_KEY_TS = np.array([kind == _T for kind in _KINDS], dtype=bool)


def _slot_table(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A collision-free slot table of the wanted keys for kernels.key_slot: slot -> key
    index (-1: no wanted key), and the multipliers that make it collision-free."""
    encoded = [np.frombuffer(key.encode(), dtype=np.uint8) for key in _KEYS]
    for m in ((a, b, c, d) for a in range(1, 8) for b in range(1, 8) for c in range(1, 8)
              for d in range(1, 8)):
        mults = np.array(m, dtype=np.int64)
        slots = [k.key_slot(e, 0, len(e), mults, size) for e in encoded]
        if len(set(slots)) == len(slots):
            table = np.full(size, -1, dtype=np.int64)
            table[slots] = np.arange(len(slots))
            return table, mults
    raise RuntimeError("no collision-free slot table for the wanted keys")  # pragma: no cover


_SLOTS, _MULTS = _slot_table()
TYPE, EXCHANGE, SYMBOL, TIMESTAMP, LOCAL = (_COL[n] for n in ("type", "exchange", "symbol",
                                                               "timestamp", "localTimestamp"))
_STREAM_COLS = np.array([TYPE, EXCHANGE, SYMBOL], dtype=np.int64)
_ALLOWED = {  # value kinds a column of each kind takes here (absent and null give a null)
    _F: (k.ABSENT, k.NULL, k.NUMBER),
    _S: (k.ABSENT, k.NULL, k.STRING),
    _T: (k.ABSENT, k.NULL, k.STRING),  # and a timestamp in the fast form (checked apart)
}


def _checks() -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Per flat data type (its index): the bit mask of value kinds each wanted key may have
    (any, for keys the type does not read) and which keys are its timestamp columns."""
    types = sorted(set(FLAT_TYPES.values()))
    masks = np.full((len(types), len(_KEYS)), 0x7F, dtype=np.int8)
    ts_cols = np.zeros((len(types), len(_KEYS)), dtype=bool)
    for t, data_type in enumerate(types):
        for _, key, kind in _FIELDS[data_type]:
            masks[t, _COL[key]] = sum(1 << kv for kv in _ALLOWED[kind])
            ts_cols[t, _COL[key]] = kind == _T
    return {d: t for t, d in enumerate(types)}, masks, ts_cols


_TYPE_INDEX, _MASKS, _TS_COLS = _checks()


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    """An Arrow validity bitmap of `valid` (None when all are valid)."""
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


@dataclass(frozen=True, slots=True)
class Stream:
    """One (type, exchange, symbol) of a scan."""

    type: str
    exchange: str
    symbol: str


class FlatScan:
    """One compiled pass over `frames`; see the module docstring.

    `stream[m]` is message m's index into `streams` (-1 where the scan did not take it) and
    `eligible[m]` says whether `build` can make its row (its type is a flat type, its values
    have the right kinds, its stream's exchange and symbol are not empty).
    """

    def __init__(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        n = len(frames)
        self.frames = frames
        lens = np.fromiter(map(len, frames), dtype=np.int64, count=n)
        ends = np.cumsum(lens)
        self.blob = b"".join(frames)
        self.buf = np.frombuffer(self.blob, dtype=np.uint8)
        n_keys = len(_KEYS)
        self.status = np.empty(n, dtype=np.uint8)
        self.kind = np.empty((n, n_keys), dtype=np.int8)
        self.vstart = np.empty((n, n_keys), dtype=np.int64)
        self.vend = np.empty((n, n_keys), dtype=np.int64)
        self.num = np.empty((n, n_keys), dtype=np.float64)
        self.tsv = np.empty((n, n_keys), dtype=np.int64)
        k.scan_flat(self.buf, ends - lens, ends, _KEY_BYTES, _KEY_OFF, _KEY_TS, _SLOTS, _MULTS,
                    self.status, self.kind, self.vstart, self.vend, self.num, self.tsv)
        self.streams: list[Stream] = []
        self.stream = np.empty(0, dtype=np.int64)
        self.data_types: list[str | None] = []
        self.eligible = np.zeros(n, dtype=bool)
        self._group()

    def text(self, m: int, col: int) -> str:
        """The string value of wanted key `col` in message m (ASCII by construction)."""
        return self.blob[self.vstart[m, col]:self.vend[m, col]].decode("ascii")

    def _group(self) -> None:
        kind = self.kind
        taken = (self.status == k.OK) & (kind[:, TYPE] == k.STRING) & (
            kind[:, EXCHANGE] == k.STRING) & (kind[:, SYMBOL] == k.STRING) & (
            self.tsv[:, TIMESTAMP] >= 0) & (self.tsv[:, LOCAL] >= 0)
        codes, firsts = k.group_streams(self.buf, self.vstart, self.vend, _STREAM_COLS, taken)
        self.stream = codes
        group_type = np.full(len(firsts), -1, dtype=np.int64)
        for code, m in enumerate(firsts.tolist()):
            st = Stream(self.text(m, TYPE), self.text(m, EXCHANGE), self.text(m, SYMBOL))
            self.streams.append(st)
            data_type = FLAT_TYPES.get(st.type)
            self.data_types.append(data_type)
            if data_type is not None and st.exchange and st.symbol:
                group_type[code] = _TYPE_INDEX[data_type]
        k.fitting(kind, self.tsv, codes, group_type, _MASKS, _TS_COLS, self.eligible)

    # -- columns ---------------------------------------------------------------------------

    def strings(self, rows: np.ndarray, col: int) -> pa.Array:
        valid = self.kind[rows, col] == k.STRING
        vs = np.where(valid, self.vstart[rows, col], 0)
        ve = np.where(valid, self.vend[rows, col], 0)
        offsets, data = k.gather_spans(self.buf, vs, ve)
        return pa.Array.from_buffers(pa.string(), len(rows), [
            _validity(valid), pa.py_buffer(offsets), pa.py_buffer(data)])

    def floats(self, rows: np.ndarray, col: int) -> pa.Array:
        valid = self.kind[rows, col] == k.NUMBER
        values = np.where(valid, self.num[rows, col], 0.0)
        return pa.Array.from_buffers(pa.float64(), len(rows), [_validity(valid),
                                                                 pa.py_buffer(values)])

    def timestamps(self, rows: np.ndarray, col: int) -> pa.Array:
        valid = self.kind[rows, col] == k.STRING
        values = np.where(valid, self.tsv[rows, col], 0)
        return pa.Array.from_buffers(TS, len(rows), [_validity(valid),
                                                     pa.py_buffer(values)])

    def build(self, data_type: str, rows: np.ndarray) -> BuiltBatch:
        """The rows of eligible messages `rows` (all of `data_type`), in that order, checked
        against the data type's rules as `normalized.build_batch` checks them."""
        spec = spec_of(data_type)
        columns = {"exchange": self.strings(rows, EXCHANGE),
                   "symbol": self.strings(rows, SYMBOL),
                   "timestamp": self.timestamps(rows, TIMESTAMP),
                   "local_timestamp": self.timestamps(rows, LOCAL)}
        convert = {_F: self.floats, _S: self.strings, _T: self.timestamps}
        for column, key, kind in _FIELDS[data_type]:
            columns[column] = convert[kind](rows, _COL[key])
        batch = pa.RecordBatch.from_arrays([columns[f.name] for f in spec.schema],
                                           schema=spec.schema)
        return _finish(spec, batch, {}, None, None)
