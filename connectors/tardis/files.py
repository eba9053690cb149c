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

# Decompression, CSV parsing and the split per symbol run on this pool, not on the flow's
# thread (the flow's thread is the replay's bottleneck: it runs every keyed step). At most
# _AHEAD_SLOTS chunks are read ahead or waiting in the whole process, whatever the number of
# partitions, so memory stays flat (a few MB of Arrow per slot); a partition without a slot
# waits for one (see _MAX_SLOT_WAIT_S) while the flow works on the chunks that are ready.
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
#: how soon a partition waiting for its chunk from the pool is polled again
_WAIT_POLL = timedelta(microseconds=500)
#: how long a partition waits for a read-ahead slot before it reads on the flow's thread
_MAX_SLOT_WAIT_S = 0.5
#: partitions waiting for a read-ahead slot (weak: an abandoned partition drops out)
_WAITING: weakref.WeakSet[_StreamPartition] = weakref.WeakSet()
_WAITING_LOCK = threading.Lock()
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
        self._waiting = False
        self._no_slot_since: float | None = None
        self._ahead: Future[_Prepared | None] | None = None
        self._submit_ahead()

    def _open_current(self) -> None:
        f = self._files[self._index]
        self._chunker = LineChunker(f.path, self._chunk_bytes, skip_lines=self._next_line - 2)
        self._parser = ChunkParser(get_spec(f.data_type), self._chunker.header, f.path)
        self._chunks = iter(self._chunker)

    def _read_next(self) -> _Prepared | None:
        """Open the current file if needed, decompress, parse and split its next chunk into
        the items to emit (on the read-ahead pool); None at file end."""
        if self._chunks is None:
            self._open_current()
        assert self._chunks is not None and self._parser is not None
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        return _prepare(self._files[self._index], chunk.first_line + chunk.n_lines,
                        self._parser.parse(chunk))

    def _submit_ahead(self) -> None:
        """Read the next chunk on the pool if a read-ahead slot is free."""
        if self._ahead is not None or self._index >= len(self._files):
            return
        if _AHEAD_SLOTS.acquire(blocking=False):
            self._ahead = _READ_AHEAD.submit(self._read_next)
            self._no_slot_since = None
            with _WAITING_LOCK:
                _WAITING.discard(self)
        else:
            if self._no_slot_since is None:
                self._no_slot_since = time.monotonic()
            with _WAITING_LOCK:
                _WAITING.add(self)

    def _pass_turn(self) -> None:
        """After taking a chunk: read the next one ahead, unless other partitions wait for a
        slot; then this one waits its turn too (slots go round instead of staying with the
        partitions that got them first)."""
        with _WAITING_LOCK:
            others = bool(_WAITING)
        if not others:
            self._submit_ahead()

    def _starved(self) -> bool:
        """No read-ahead slot came free for a while (other partitions hold them all, or
        partitions of an abandoned run were never closed): read on the flow's thread."""
        return (self._ahead is None and self._no_slot_since is not None
                and time.monotonic() - self._no_slot_since > _MAX_SLOT_WAIT_S)

    def _take_next(self) -> _Prepared | None:
        """The chunk read ahead (the caller checked that it is done)."""
        assert self._ahead is not None
        try:
            return self._ahead.result()
        finally:
            self._ahead = None
            _AHEAD_SLOTS.release()

    def next_batch(self) -> list[SourceItem]:
        self._waiting = False
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
                with _WAITING_LOCK:
                    _WAITING.discard(self)
                self._status.done()
                raise StopIteration()
            # The flow's thread takes chunks the pool has read, and meanwhile runs the rest of
            # the flow (slots go round the partitions); it reads only when starved of a slot.
            self._submit_ahead()
            starved = self._starved()
            if not starved and (self._ahead is None or not self._ahead.done()):
                self._waiting = True
                return []
            try:
                prepared = self._read_next() if starved else self._take_next()
            except InputError as e:
                self._status.failed(str(e))
                raise
            self._no_slot_since = None
            if prepared is None:
                items = self._finish_file()
                self._pass_turn()  # the next file's first chunk
                if items:
                    return items
                continue
            self._pass_turn()
            self._next_line = prepared.next_line  # only what was emitted counts
            self._status.message()
            data_type = self._files[self._index].data_type
            if prepared.rejected:
                metrics.REJECTED.inc(prepared.rejected, data_type=data_type)
            if prepared.rows:
                metrics.ROWS_IN.inc(prepared.rows, data_type=data_type)
            for item in prepared.items:
                if isinstance(item, TickBatch):
                    IN_FLIGHT.track(item)
            return prepared.items

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

    def next_awake(self) -> datetime | None:
        if self._throttled:
            return datetime.now(UTC) + timedelta(milliseconds=1)
        if self._waiting:  # a chunk is being read on the pool (or waits for a slot)
            return datetime.now(UTC) + _WAIT_POLL
        return None

    def snapshot(self) -> FilePosition:
        if self._index >= len(self._files):
            return FilePosition(self._files[-1].path, 1 << 62)
        return FilePosition(self._files[self._index].path, self._next_line)

    def close(self) -> None:
        with _WAITING_LOCK:
            _WAITING.discard(self)
        if self._ahead is not None:
            with contextlib.suppress(Exception):  # closing: any error was reported already
                self._ahead.result()
            self._ahead = None
            _AHEAD_SLOTS.release()
        if self._chunker is not None:
            self._chunker.close()


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A chunk made ready on the read-ahead pool: the items to emit, what they count, and
    the resume position after them."""

    items: list[SourceItem]
    next_line: int
    rows: int
    rejected: int  # rows quarantined as dead letters (of the file's data type)


def _prepare(f: TardisFile, next_line: int, parsed: ParsedChunk) -> _Prepared:
    """A parsed chunk as items: rows from another exchange rejected, the rest split per
    symbol into one TickBatch each (pure Arrow/numpy work, run off the flow's thread)."""
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
    items: list[SourceItem] = []
    if rej_reasons:
        items.append(dead_letters("rejected", f.path, rej_lines, f.exchange, f.symbol,
                                  f.data_type, rej_reasons, rej_raw))
    if table.num_rows:
        for symbol, part, part_lines in _split_by_symbol(table, lines):
            if not part.num_rows:
                continue
            batch = part.combine_chunks().to_batches()[0]
            items.append(TickBatch(f.exchange, symbol, f.data_type, batch, f.path,
                                   pa.array(part_lines, pa.int64())))
    return _Prepared(items, next_line, table.num_rows, len(rej_reasons))


def poll(part: StatefulSourcePartition[SourceItem, FilePosition]
         ) -> Iterator[list[SourceItem]]:
    """Drive a partition outside a Bytewax run (benchmarks, tests) as Bytewax does: call
    `next_batch` until StopIteration, sleeping until `next_awake` when it had nothing; yields
    each non-empty list of items. The partition is closed at the end."""
    try:
        while True:
            try:
                items = list(part.next_batch())
            except StopIteration:
                return
            if items:
                yield items
                continue
            awake = part.next_awake()
            if awake is not None:
                time.sleep(max(0.0, (awake - datetime.now(UTC)).total_seconds()))
    finally:
        part.close()


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
