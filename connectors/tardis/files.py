"""Replay of Tardis downloadable CSV datasets as a Bytewax source.

One partition per stream: the files of one (exchange, data type, symbol) are replayed in
date order by one partition, so a symbol's second day never races its first (with one file
per stream, that is one partition per file). A partition's snapshot is its resume position,
the file and the next line to read, like a Kafka offset; a resumed run emits exactly the rows
after it.

Items emitted: `TickBatch` (rows of one exchange, symbol and data type, in file order, with
their line numbers) and `DeadLetters` (rows rejected with file, line and reason). A file that
cannot be read at all (missing, not gzip, no header, a required column absent) stops the run
with an `InputError` naming it, raised before the flow starts where possible.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.tardis.csv_reader import ChunkParser, LineChunker, ParsedChunk
from connectors.tardis.datatypes import get_spec, route_of
from connectors.tardis.naming import InputError, TardisFile, expand_inputs, group_streams
from operators import metrics
from operators.messages import DeadLetters, TickBatch, dead_letters

log = logging.getLogger(__name__)

SourceItem = TickBatch | DeadLetters

# Decompression and CSV parsing release the GIL: reading the next chunk on this pool while
# the flow processes the current one keeps both cores busy. At most _AHEAD_SLOTS chunks are
# read ahead in the whole process, whatever the number of partitions, so memory stays flat
# (a few MB of Arrow per slot); more slots than workers lets partitions polled round-robin
# find their next chunk ready instead of reading it on the flow's thread.
_READ_AHEAD = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tardis-read-ahead")
_AHEAD_SLOTS = threading.BoundedSemaphore(16)


class _InFlight:
    """Backpressure: Arrow bytes this process's file sources emitted that the flow still holds.

    Bytewax polls every partition of a worker in each activation, so without a bound 50 files
    would put 50 chunks in flight at once. Each emitted TickBatch is tracked until it is
    garbage (processed downstream); while more than `limit` bytes are held, partitions wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._lock = threading.Lock()

    def track(self, item: TickBatch) -> None:
        n = item.batch.nbytes
        with self._lock:
            self.bytes += n
        weakref.finalize(item, self._release, n)

    def _release(self, n: int) -> None:
        with self._lock:
            self.bytes -= n

    def full(self) -> bool:
        return self.bytes > self.limit

    #: longest a partition waits for room before reading anyway (a consumer holding batches
    #: for good must not stall the flow; memory then grows instead, and a warning says so)
    max_wait_s = 2.0


IN_FLIGHT = _InFlight(256 << 20)
_WARNED: list[bool] = []


@dataclass(frozen=True, slots=True)
class FilePosition:
    """Resume position of a stream: the file being read and the next line to read in it
    (line 1 is the header, so 2 is the first data row)."""

    path: str
    next_line: int


class _StreamPartition(StatefulSourcePartition[SourceItem, FilePosition]):
    def __init__(self, files: list[TardisFile], resume: FilePosition | None,
                 chunk_bytes: int) -> None:
        from connectors.monitoring import source_status

        self._status = source_status(f"files:{files[0].stream}", live=False)
        self._status.connected()
        self._files = files
        self._chunk_bytes = chunk_bytes
        self._index = 0
        self._next_line = 2
        if resume is not None:
            paths = [f.path for f in files]
            if resume.path not in paths:
                raise InputError(
                    f"cannot resume: {resume.path} is no longer among this run's inputs "
                    f"for stream {files[0].stream}"
                )
            self._index = paths.index(resume.path)
            self._next_line = resume.next_line
        self._chunks: Iterator | None = None
        self._chunker: LineChunker | None = None
        self._parser: ChunkParser | None = None
        self._throttled = False
        self._throttled_since = 0.0
        self._ahead: Future[tuple[int, int, ParsedChunk] | None] | None = None
        self._submit_ahead()

    def _open_current(self) -> None:
        f = self._files[self._index]
        self._chunker = LineChunker(f.path, self._chunk_bytes, skip_lines=self._next_line - 2)
        self._parser = ChunkParser(get_spec(f.data_type), self._chunker.header, f.path)
        self._chunks = iter(self._chunker)

    def _read_next(self) -> tuple[int, int, ParsedChunk] | None:
        """Open the current file if needed, decompress and parse its next chunk (on the
        read-ahead pool); None at file end."""
        if self._chunks is None:
            self._open_current()
        assert self._chunks is not None and self._parser is not None
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        return chunk.first_line, chunk.n_lines, self._parser.parse(chunk)

    def _submit_ahead(self) -> None:
        """Read the next chunk on the pool if a read-ahead slot is free."""
        if self._ahead is None and self._index < len(self._files) \
                and _AHEAD_SLOTS.acquire(blocking=False):
            self._ahead = _READ_AHEAD.submit(self._read_next)

    def _take_next(self) -> tuple[int, int, ParsedChunk] | None:
        """The next chunk: the one read ahead, else read now."""
        if self._ahead is None:
            return self._read_next()
        try:
            return self._ahead.result()
        finally:
            self._ahead = None
            _AHEAD_SLOTS.release()

    def next_batch(self) -> list[SourceItem]:
        if IN_FLIGHT.full():  # downstream still holds a lot: let it catch up first
            now = time.monotonic()
            if not self._throttled:
                self._throttled, self._throttled_since = True, now
            if now - self._throttled_since < IN_FLIGHT.max_wait_s:
                return []
            if not _WARNED:
                _WARNED.append(True)
                log.warning("in-flight tick batches stay above %d MB: a downstream step holds "
                            "them; reading on without backpressure", IN_FLIGHT.limit >> 20)
        self._throttled = False
        while True:
            if self._index >= len(self._files):
                self._status.done()
                raise StopIteration()
            try:
                result = self._take_next()
            except InputError as e:
                self._status.failed(str(e))
                raise
            if result is None:
                items = self._finish_file()
                self._submit_ahead()  # the next file's first chunk
                if items:
                    return items
                continue
            self._submit_ahead()
            first_line, n_lines, parsed = result
            self._next_line = first_line + n_lines  # only what was emitted counts
            self._status.message()
            return list(self._emit(parsed))

    def _finish_file(self) -> list[SourceItem]:
        f = self._files[self._index]
        chunker = self._chunker
        assert chunker is not None
        out: list[SourceItem] = []
        if chunker.problem is not None:
            reasons = [f"{chunker.problem}; the rest of the file is missing"]
            raw = [""]
            if chunker.tail:
                reasons[0] = f"incomplete last row: {chunker.problem}"
                raw = [chunker.tail.decode("utf-8", "replace")]
            log.warning("%s: %s after line %s", f.path, chunker.problem, chunker.lines_read)
            dl = dead_letters("rejected", f.path, [chunker.problem_line], f.exchange, f.symbol,
                              f.data_type, reasons, raw)
            metrics.REJECTED.inc(len(dl), data_type=f.data_type)
            out.append(dl)
        metrics.FILES_DONE.inc(1)
        self._index += 1
        self._next_line = 2
        self._chunks = self._chunker = self._parser = None
        return out

    def _emit(self, parsed: ParsedChunk) -> Iterator[SourceItem]:
        f = self._files[self._index]
        table = parsed.table
        rej_lines = list(parsed.rejected_lines)
        rej_reasons = list(parsed.rejected_reasons)
        rej_raw = list(parsed.rejected_raw)
        lines = parsed.lines
        if table.num_rows:
            exch = table.column("exchange")
            wrong = pc.fill_null(pc.not_equal(exch, f.exchange), True)
            if pc.any(wrong).as_py():
                mask = np.asarray(wrong.combine_chunks() if isinstance(wrong, pa.ChunkedArray)
                                  else wrong)
                bad = table.filter(pa.array(mask))
                rej_lines += [int(x) for x in lines[mask]]
                rej_reasons += [f"exchange {e!r} does not match the file name's {f.exchange!r}"
                                for e in bad.column("exchange").to_pylist()]
                rej_raw += [str(r) for r in bad.to_pylist()]
                table = table.filter(pa.array(~mask))
                lines = lines[~mask]
        if rej_reasons:
            metrics.REJECTED.inc(len(rej_reasons), data_type=f.data_type)
            yield dead_letters("rejected", f.path, rej_lines, f.exchange, f.symbol, f.data_type,
                               rej_reasons, rej_raw)
        if not table.num_rows:
            return
        metrics.ROWS_IN.inc(table.num_rows, data_type=f.data_type)
        for symbol, part, part_lines in _split_by_symbol(table, lines):
            batch = part.combine_chunks().to_batches()[0] if part.num_rows else None
            if batch is None:
                continue
            item = TickBatch(f.exchange, symbol, f.data_type, batch, f.path,
                             pa.array(part_lines, pa.int64()))
            IN_FLIGHT.track(item)
            yield item

    def next_awake(self) -> datetime | None:
        if self._throttled:
            return datetime.now(UTC) + timedelta(milliseconds=1)
        return None

    def snapshot(self) -> FilePosition:
        if self._index >= len(self._files):
            return FilePosition(self._files[-1].path, 1 << 62)
        return FilePosition(self._files[self._index].path, self._next_line)

    def close(self) -> None:
        if self._ahead is not None:
            with contextlib.suppress(Exception):  # closing: any error was reported already
                self._ahead.result()
            self._ahead = None
            _AHEAD_SLOTS.release()
        if self._chunker is not None:
            self._chunker.close()


def _split_by_symbol(table: pa.Table, lines: np.ndarray
                     ) -> Iterator[tuple[str, pa.Table, np.ndarray]]:
    """Rows per symbol, order kept within each (grouped files such as OPTIONS hold many)."""
    sym = table.column("symbol")
    first = sym[0].as_py()
    if not pc.any(pc.not_equal(sym, first)).as_py():
        yield first, table, lines
        return
    enc = sym.combine_chunks().dictionary_encode()
    codes = np.asarray(enc.indices)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(enc.dictionary))
    bounds = np.concatenate(([0], np.cumsum(counts)))
    taken = table.take(pa.array(order))
    sorted_lines = lines[order]
    for code, name in enumerate(enc.dictionary.to_pylist()):
        lo, hi = int(bounds[code]), int(bounds[code + 1])
        if hi > lo:
            yield name, taken.slice(lo, hi - lo), sorted_lines[lo:hi]


class TardisFileSource(FixedPartitionedSource[SourceItem, FilePosition]):
    """Replays Tardis CSV datasets (.csv, .csv.gz) into Arrow tick batches.

    `paths` are globs of Tardis-named files; `from_date`/`to_date` filter on the file name's
    date (inclusive); `routes` keeps only data types whose router branch is listed (None:
    all). Every file is checked before the flow starts: a bad name, an unknown data type, an
    unreadable file or a missing required column raises InputError naming the file.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        from_date: date | None = None,
        to_date: date | None = None,
        routes: Iterable[str] | None = None,
        chunk_bytes: int = 2 << 20,
    ) -> None:
        if not paths:
            raise InputError("no input files given")
        if chunk_bytes < 64 << 10:
            raise ValueError("chunk_bytes must be at least 64 KiB")
        files = expand_inputs(paths, from_date, to_date)
        wanted = set(routes) if routes is not None else None
        kept = []
        skipped: dict[str, int] = {}
        for f in files:
            try:
                spec = get_spec(f.data_type)
                route = route_of(f.data_type)
            except KeyError as e:
                raise InputError(f"{f.path}: {e.args[0]}") from None
            if wanted is not None and route not in wanted:
                skipped[f.data_type] = skipped.get(f.data_type, 0) + 1
                continue
            chunker = LineChunker(f.path, 64 << 10)
            chunker.close()
            ChunkParser(spec, chunker.header, f.path)  # raises on missing columns
            kept.append(f)
        if skipped:
            log.warning("not replaying %s: data type(s) not enabled for this mode",
                        ", ".join(f"{n} file(s) of {t}" for t, n in sorted(skipped.items())))
        if not kept:
            raise InputError(f"no input file left after filtering: {', '.join(paths)}"
                             + (f" (skipped data types: {', '.join(sorted(skipped))})"
                                if skipped else ""))
        self.files = kept
        self.streams = group_streams(kept)
        self.chunk_bytes = chunk_bytes

    def list_parts(self) -> list[str]:
        return list(self.streams)

    def build_part(self, step_id: str, for_part: str,
                   resume_state: FilePosition | None) -> _StreamPartition:
        return _StreamPartition(self.streams[for_part], resume_state, self.chunk_bytes)
