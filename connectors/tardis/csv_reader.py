"""Tardis CSV datasets -> validated Arrow batches, chunk by chunk, with dead letters.

The reader decompresses a file itself (zlib, streaming, multi-member gzip) and cuts the text
into chunks of whole lines, so it always knows the line number of every row (for dead
letters and for resuming at a row), and it can keep every complete row of a truncated or
corrupt gzip file. Each chunk is parsed by pyarrow with typed columns (the fast path); a chunk
that fails to convert is parsed again as text and validated column by column (the robust
path), so one bad value quarantines one row, not the file.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from connectors.tardis.datatypes import DataTypeSpec
from connectors.tardis.naming import InputError

_inflater: Any = zlib
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error,)
try:  # ISA-L's inflate: the same output as zlib, about 2.5x faster
    from isal import isal_zlib

    _inflater = isal_zlib
    _INFLATE_ERRORS = (zlib.error, cast(type[BaseException], isal_zlib.error))
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    pass

_READ_BYTES = 64 << 10  # raw bytes per read: bounds what a chunker holds between chunks
# Microsecond timestamps must fall in [2001-09-09, 2100-01-01): catches ms/s/ns confusion.
_TS_MIN_US = 1_000_000_000_000_000
_TS_MAX_US = 4_102_444_800_000_000
_FLOAT_RE = (r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
             r"|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)\s*$")
_INT_RE = r"^\s*[-+]?\d+\s*$"
_BOOL_RE = r"^(true|false|True|False|TRUE|FALSE|1|0)$"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole lines of a file: `data` starts at line `first_line` (1-based; header = 1) and
    holds `n_lines` newline-terminated lines."""

    first_line: int
    data: bytes
    n_lines: int


@dataclass(frozen=True, slots=True)
class ParsedChunk:
    """A chunk's valid rows (in file order, with their lines) and its rejected rows."""

    table: pa.Table
    lines: np.ndarray
    rejected_lines: list[int]
    rejected_reasons: list[str]
    rejected_raw: list[str]


class LineChunker:
    """Streams a .csv or .csv.gz file as chunks of whole lines after the header.

    `skip_lines` data lines are skipped first (resume). After iteration, `problem` says why the
    file ended early (truncated or corrupt gzip), with `problem_line` the first line affected
    and `tail` the incomplete last line, if any; both go to the dead-letter output.
    """

    def __init__(self, path: str, chunk_bytes: int = 8 << 20, skip_lines: int = 0) -> None:
        if chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be at least 1024")
        if skip_lines < 0:
            raise ValueError("skip_lines cannot be negative")
        self.path = path
        self.gzipped = path.endswith(".gz")
        self.chunk_bytes = chunk_bytes
        self.skip_lines = skip_lines
        self.problem: str | None = None
        self.problem_line: int | None = None
        self.tail = b""
        self.lines_read = 0
        self._raw: BinaryIO | None = None
        self._dec: Any = None  # an isal_zlib or zlib decompressor
        self._buf = bytearray()
        self._eof = False
        self._raw_done = 0  # compressed bytes inflated without error
        self._out_done = 0  # bytes they gave
        self.header = self._read_header()

    # -- decompression ------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise InputError(f"{self.path}: cannot open: {e.strerror}") from None
        if self.gzipped:
            self._dec = _inflater.decompressobj(wbits=31)

    def _fill(self, size: int = _READ_BYTES) -> bool:
        """Append the next decompressed block to the buffer; False at the end of data."""
        if self._eof:
            return False
        assert self._raw is not None
        block = self._raw.read(size)
        if not block:
            self._eof = True
            if self._dec is not None and not self._dec.eof:
                self.problem = "gzip stream is truncated (no end-of-stream marker)"
            return False
        if self._dec is None:
            self._buf += block
            return True
        try:
            out = self._inflate(block)
        except _INFLATE_ERRORS as e:
            self._salvage(block)
            self._eof = True
            self.problem = (f"gzip data is corrupt ({e}); rows decoded just before this point "
                            "may be damaged too")
            return bool(self._buf)
        self._raw_done += len(block)
        self._out_done += len(out)
        self._buf += out
        return True

    def _inflate(self, block: bytes, module: Any = None) -> bytes:
        assert self._dec is not None
        module = module or _inflater
        out = self._dec.decompress(block)
        while self._dec.eof and self._dec.unused_data:  # multi-member gzip
            rest = self._dec.unused_data
            self._dec = module.decompressobj(wbits=31)
            out += self._dec.decompress(rest)
        return out

    def _salvage(self, block: bytes) -> None:
        """Keep whatever decompresses before the damage in `block`: replay the stream up to
        it with the standard zlib (whose state can be copied), then go on in small steps.
        The two inflaters may hold back different amounts of output at a given input point,
        so only the replay's output beyond what the buffer already had is added."""
        assert self._raw is not None
        self._raw.seek(0)
        self._dec = zlib.decompressobj(wbits=31)
        skip = self._out_done  # bytes already in (or consumed from) the buffer
        remaining = self._raw_done

        def add(out: bytes) -> None:
            nonlocal skip
            if skip >= len(out):
                skip -= len(out)
                return
            self._buf += out[skip:]
            skip = 0

        while remaining:
            piece = self._raw.read(min(remaining, _READ_BYTES))
            remaining -= len(piece)
            add(self._inflate(piece, zlib))
        for i in range(0, len(block), 512):
            try:
                add(self._inflate(block[i:i + 512], zlib))
            except zlib.error:
                break

    def _read_header(self) -> list[str]:
        self._open()
        while b"\n" not in self._buf and self._fill(4096):
            pass
        nl = self._buf.find(b"\n")
        if nl < 0:
            why = self.problem or "the file has no complete header line"
            self.close()
            raise InputError(f"{self.path}: cannot read the CSV header: {why}")
        header = bytes(self._buf[:nl]).decode("utf-8", "replace").strip("\r\n")
        del self._buf[: nl + 1]
        self.lines_read = 1
        names = [h.strip() for h in header.split(",")]
        if not names or any(not n for n in names):
            self.close()
            raise InputError(f"{self.path}: the CSV header has an empty column name: {header!r}")
        return names

    # -- chunks -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Chunk]:
        try:
            while True:
                while len(self._buf) < self.chunk_bytes and self._fill():
                    pass
                cut = self._buf.rfind(b"\n", 0, self.chunk_bytes) + 1
                if cut == 0:  # a line longer than a chunk: take it whole
                    cut = self._buf.find(b"\n") + 1
                if cut == 0:
                    break
                with memoryview(self._buf) as view:  # one copy, not a slice and a copy
                    data = bytes(view[:cut])
                # a new buffer for the rest: `del` would keep the chunk's capacity allocated
                # for as long as this (possibly idle) partition lives
                self._buf = self._buf[cut:]
                # numpy counts without holding the GIL (bytes.count holds it ~1 ms a chunk,
                # which the flow's thread waits for)
                n_lines = int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))
                first = self.lines_read + 1
                self.lines_read += n_lines
                if self.skip_lines:
                    if n_lines <= self.skip_lines:
                        self.skip_lines -= n_lines
                        continue
                    nl_pos = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
                    start = int(nl_pos[self.skip_lines - 1]) + 1
                    data, first = data[start:], first + self.skip_lines
                    n_lines -= self.skip_lines
                    self.skip_lines = 0
                yield Chunk(first, data, n_lines)
            rest = bytes(self._buf).strip(b"\r\n")
            if rest:
                if self.problem is None:  # a plain last line without a newline is fine
                    if self.skip_lines:
                        self.skip_lines -= 1
                    else:
                        self.lines_read += 1
                        yield Chunk(self.lines_read, rest + b"\n", 1)
                else:
                    self.tail = rest
            if self.problem is not None:
                self.problem_line = self.lines_read + 1
        finally:
            self.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def _arrow_csv_type(t: pa.DataType) -> pa.DataType:
    return pa.int64() if pa.types.is_timestamp(t) else t


class ChunkParser:
    """Parses and validates chunks of one file against its data type's spec."""

    def __init__(self, spec: DataTypeSpec, header: list[str], path: str) -> None:
        self.spec = spec
        self.path = path
        self.header = header
        by_csv = {spec.csv_name(f.name): f for f in spec.schema}
        missing = [spec.csv_name(c) for c in spec.required if spec.csv_name(c) not in header]
        if missing:
            raise InputError(
                f"{path}: missing required column(s) {', '.join(missing)} for data type "
                f"{spec.name} (header: {','.join(header)})"
            )
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputError(f"{path}: duplicate column(s) in the header: {', '.join(dupes)}")
        self.present = [h for h in header if h in by_csv]
        self.types = {h: _arrow_csv_type(by_csv[h].type) for h in self.present}
        # One thread per chunk: the read-ahead pool already parses chunks side by side, and
        # pyarrow's own threads took ~25% more CPU for the same chunk (1 MiB blocks each)
        self._fast_opts = (
            pcsv.ReadOptions(column_names=header, use_threads=False, block_size=4 << 20),
            pcsv.ConvertOptions(column_types=self.types, include_columns=self.present,
                                strings_can_be_null=True, null_values=[""]),
        )
        self._text_opts = (
            pcsv.ReadOptions(column_names=header, use_threads=False),
            pcsv.ConvertOptions(column_types={h: pa.string() for h in self.present},
                                include_columns=self.present, strings_can_be_null=True,
                                null_values=[""]),
        )

    # -- parsing ------------------------------------------------------------------------
    def parse(self, chunk: Chunk) -> ParsedChunk:
        invalid: list[tuple[int | None, str]] = []

        def on_invalid(row: pcsv.InvalidRow) -> str:
            invalid.append((row.number, row.text))
            return "skip"

        parse_opts = pcsv.ParseOptions(invalid_row_handler=on_invalid)
        try:
            raw = pcsv.read_csv(pa.py_buffer(chunk.data), read_options=self._fast_opts[0],
                                parse_options=parse_opts, convert_options=self._fast_opts[1])
            conversion: dict[str, np.ndarray] = {}
            text = raw
            typed = True
        except pa.ArrowInvalid:
            typed = False
        if not typed or invalid:
            invalid.clear()
            text = pcsv.read_csv(pa.py_buffer(chunk.data), read_options=self._text_opts[0],
                                 parse_options=parse_opts, convert_options=self._text_opts[1])
            raw, conversion = self._convert_text(text)
        lines = self._line_numbers(chunk, raw.num_rows, [n for n, _ in invalid])
        table = self._normalize(raw)
        bad_reason = self._validate(table, conversion, text)
        rej_lines = [chunk.first_line + (n - 1) for n, _ in invalid if n is not None]
        rej_reasons = [f"malformed CSV row: {_count_fields(t)} fields, expected "
                       f"{len(self.header)}" for _, t in invalid]
        rej_raw = [orjson.dumps({"text": t}).decode() for _, t in invalid]
        if bad_reason is not None:
            mask = np.asarray(pc.is_valid(bad_reason))
            idx = np.flatnonzero(mask)
            reasons = bad_reason.filter(pa.array(mask)).to_pylist()
            rows = (text.take(pa.array(idx)) if conversion else table.take(pa.array(idx)))
            rej_lines += [int(x) for x in lines[idx]]
            rej_reasons += reasons
            rej_raw += [orjson.dumps(r, default=str).decode() for r in rows.to_pylist()]
            keep = ~mask
            table = table.filter(pa.array(keep))
            lines = lines[keep]
        return ParsedChunk(table, lines, rej_lines, rej_reasons, rej_raw)

    def _line_numbers(self, chunk: Chunk, n_rows: int, invalid: list[int | None]) -> np.ndarray:
        n_lines = chunk.n_lines
        if n_rows == n_lines:
            return np.arange(chunk.first_line, chunk.first_line + n_rows, dtype=np.int64)
        # Blank lines (skipped by the parser) or malformed rows: map rows to lines exactly.
        arr = np.frombuffer(chunk.data, dtype=np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        length = ends - starts
        blank = (length == 0) | ((length == 1) & (arr[np.maximum(ends - 1, 0)] == 13))
        keep = ~blank
        bad = [n - 1 for n in invalid if n is not None and 0 < n <= len(keep)]
        keep[bad] = False
        out = np.flatnonzero(keep).astype(np.int64) + chunk.first_line
        if len(out) != n_rows:  # should not happen; fall back to best effort, never crash
            out = np.resize(out, n_rows) if len(out) else np.full(n_rows, chunk.first_line)
        return out

    def _convert_text(self, raw: pa.Table) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """Cast text columns to their types; values that do not parse become null and are
        reported (column -> mask of rows with a non-parsable value)."""
        cols, problems = [], {}
        for name in raw.column_names:
            col = raw.column(name)
            target = self.types[name]
            if pa.types.is_string(target):
                cols.append(col)
                continue
            pattern = (_FLOAT_RE if pa.types.is_floating(target) else
                       _BOOL_RE if pa.types.is_boolean(target) else _INT_RE)
            ok = pc.match_substring_regex(col, pattern)
            bad = pc.and_(pc.is_valid(col), pc.invert(pc.fill_null(ok, False)))
            bad_np = np.asarray(pc.fill_null(bad, False).combine_chunks()
                                if isinstance(bad, pa.ChunkedArray) else bad)
            if bad_np.any():
                problems[name] = bad_np
            clean = pc.if_else(pc.fill_null(ok, False), col, pa.scalar(None, pa.string()))
            if pa.types.is_boolean(target):
                clean = pc.utf8_lower(clean)
                clean = pc.if_else(pc.equal(clean, "1"), "true",
                                   pc.if_else(pc.equal(clean, "0"), "false", clean))
            cols.append(pc.cast(pc.utf8_trim_whitespace(clean), target))
        return pa.table(cols, names=raw.column_names), problems

    def _normalize(self, raw: pa.Table) -> pa.Table:
        """Rename to normalized columns, order to the schema, add absent nullable columns."""
        n = raw.num_rows
        cols = []
        for field in self.spec.schema:
            name = self.spec.csv_name(field.name)
            if name in raw.column_names:
                col = raw.column(name)
                if pa.types.is_timestamp(field.type):
                    col = col.cast(pa.int64()).cast(field.type)
                cols.append(col)
            else:
                cols.append(pa.chunked_array([pa.nulls(n, field.type)]))
        return pa.Table.from_arrays(cols, schema=self.spec.schema)

    def _validate(self, table: pa.Table, conversion: dict[str, np.ndarray],
                  text: pa.Table) -> pa.Array | None:
        """A reason per row (null when the row is valid), or None when every row is valid."""
        spec = self.spec
        checks: list[tuple[pa.Array, pa.Array | str]] = []

        def add(mask: pa.Array | pa.ChunkedArray, reason: pa.Array | str) -> None:
            checks.append((mask, reason))

        for name, bad in conversion.items():
            norm = next(f.name for f in spec.schema if spec.csv_name(f.name) == name)
            kind = "a number" if pa.types.is_floating(self.types[name]) else (
                "true/false" if pa.types.is_boolean(self.types[name]) else "an integer")
            quoted = pc.binary_join_element_wise(
                f"{norm} is not {kind}: '", pc.fill_null(text.column(name), ""), "'", "")
            add(pa.array(bad), quoted.combine_chunks())
        for name in spec.required:
            add(pc.is_null(table.column(name)), f"missing value for {name}")
        for name in spec.timestamp_columns:
            us = table.column(name).cast(pa.int64())
            out_of_range = pc.or_(pc.less(us, _TS_MIN_US), pc.greater_equal(us, _TS_MAX_US))
            add(out_of_range, f"{name} is not a microsecond UTC epoch in 2001..2100")
        floats = [f.name for f in spec.schema if pa.types.is_floating(f.type)]
        checked = set(spec.positive) | set(spec.non_negative) | set(spec.required)
        for name in floats:
            col = table.column(name)
            if name in checked:
                add(pc.invert(pc.is_finite(col)), f"{name} is not a finite number")
        for name in spec.positive:
            add(pc.less_equal(table.column(name), 0), f"{name} must be > 0")
        for name in spec.non_negative:
            add(pc.less(table.column(name), 0), f"{name} must be >= 0")
        for name, allowed in spec.enums.items():
            col = table.column(name)
            ok = pc.is_in(col, value_set=pa.array(sorted(allowed)))
            add(pc.invert(ok), f"unknown {name} (expected one of {', '.join(sorted(allowed))})")

        reason: pa.Array | None = None
        for mask, text in checks:
            m = mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
            if not pc.any(m).as_py():  # skips nulls (a null mask value is not a bad row)
                continue
            m = pc.fill_null(m, False)
            value = pa.scalar(text) if isinstance(text, str) else text
            this = pc.if_else(m, value, pa.scalar(None, pa.string()))
            reason = this if reason is None else pc.coalesce(reason, this)
        if reason is not None:
            reason = self._with_values(table, reason)
        return reason

    @staticmethod
    def _with_values(table: pa.Table, reason: pa.Array) -> pa.Array:
        """Append the offending value to each reason ("price must be > 0, got -5")."""
        out = reason.to_pylist()
        rows = np.flatnonzero(np.asarray(pc.is_valid(reason)))
        for i in rows:
            text = out[i]
            col = re.split(r"[ ]", text.removeprefix("unknown ").removeprefix(
                "missing value for "), maxsplit=1)[0]
            if col in table.column_names and not text.startswith("missing") and ": '" not in text:
                column = table.column(col)
                if pa.types.is_timestamp(column.type):
                    column = column.cast(pa.int64())
                val = column[int(i)].as_py()
                out[i] = f"{text}, got {val!r}" if val is not None else text
        return pa.array(out, pa.string())


def _count_fields(text: str) -> int:
    return text.count(",") + 1


def read_header(path: str | Path) -> list[str]:
    """The header of a dataset file (validates that the file can be read at all)."""
    chunker = LineChunker(str(path))
    chunker.close()
    return chunker.header
