"""Live (and replayed) Tardis ticks from a tardis-machine server's normalized WebSocket API.

`TardisMachineSource` is a Bytewax source. Per partition, a background thread runs its own
asyncio loop with a `websockets` client on `/ws-stream-normalized` (live) or
`/ws-replay-normalized` (replay_from/replay_to set), the `options` query parameter being the
JSON array tardis-machine defines (one entry per exchange: exchange, symbols, dataTypes,
withDisconnectMessages, from/to). The thread only receives frames and appends them to a deque
(complete frames go there straight from the connection's event hook, see _DirectConnection);
Bytewax's `next_batch` drains that deque for at most a few milliseconds. Frames are decoded
when their micro-batch is due (the first waited `max_batch_delay`, or `max_batch_rows` of them
wait) or before anything that needs them (a connection event, a snapshot): runs of flat
messages (trades, liquidations, derivative tickers, option summaries) in bulk by a compiled
scan (connectors.tardis.flat), anything else one by one with orjson; both make the same rows
(connectors.tardis.normalized). Messages are grouped per (exchange, symbol, data type) into
Arrow batches of at most `max_batch_rows` rows (a book_change message's levels stay
together). So `next_batch` never waits on the network, and everything stateful (positions,
gaps, dead letters) happens in one thread, in frame order. That receiving and
decoding is `LocalDecoder`; with `decoder: process` it runs in a child process instead
(connectors.tardis.decoder_process) and the partition only takes what it emitted.

Items emitted: `TickBatch` (one exchange, symbol and data type), `Gap` and `DeadLetters`.

Connection life:
- reconnect forever, with exponential backoff and full jitter (delay drawn uniformly from
  [0, min(reconnect_max_delay, reconnect_initial_delay * 2**attempt)]); the attempt counter
  resets once a connection delivers a message;
- a dead socket is found by WebSocket ping/pong (`ping_interval`, `ping_timeout`); a stalled feed
  on a live socket by `stale_timeout` (no message at all on the connection). A quiet symbol
  never causes a reconnect: its message age is only reported (`SourceStats.message_age`);
- live mode: each socket drop, stale timeout or tardis-machine `disconnect` message becomes one
  `Gap(exchange, symbol, start_us, end_us, reason)` per affected symbol, start_us being the
  exchange timestamp of the symbol's last message before and end_us that of its first message
  after. A restart from a Bytewax snapshot also opens a gap ("restart");
- replay mode: a dropped connection resumes from the last message received (tardis-machine
  replays whole minutes, so `from` is floored to the minute and the messages already seen are
  skipped by their (localTimestamp, count) position per stream); nothing is lost, so no gap.
  Recorded `disconnect` messages still become gaps. (tardis-machine rebuilds normalized
  book_change only from exchange snapshots, which its replay has at 00:00 UTC: after a resume
  mid-day, book_change of some exchanges may not restart until then.)
- backpressure: when `max_queue_frames` frames wait for Bytewax, the thread stops reading the
  socket until half are consumed (TCP pushes back on tardis-machine; pings wait too).

The snapshot (resume state) is small and picklable: per stream the position of the last
message emitted, per exchange the replay floor, per symbol the last exchange timestamp emitted
and the gaps still open.

A malformed frame (not JSON, not an object, no exchange/symbol, an unsupported type, a value of
the wrong type) is counted and quarantined as a DeadLetters row with the frame's text; it never
stops the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from connectors.tardis import kernels
from connectors.tardis.datatypes import route_of
from connectors.tardis.flat import LOCAL, TIMESTAMP, FlatScan
from connectors.tardis.normalized import (
    build_batches,
    machine_data_type,
    message_data_type,
    parse_iso_us,
)
from dataflows.config import StreamingConfig, format_validation_error, parse_duration_us
from dataflows.config import TardisMachineSource as TardisMachineSettings
from operators import clock as live_clock
from operators import metrics
from operators.messages import DeadLetters, Gap, TickBatch, dead_letters

log = logging.getLogger(__name__)

URL_ENV = "TARDIS_MACHINE_URL"
LIVE_PATH = "/ws-stream-normalized"
REPLAY_PATH = "/ws-replay-normalized"
RESUME_VERSION = 1
_POLL_BUDGET_S = 0.004  # longest a next_batch call keeps decoding
_SEGMENT_FRAMES = 4096  # most frames decoded in one bulk pass
_MIN_BULK = 8  # shorter runs of flat messages are decoded one by one
_MAX_FRAME_BYTES = 64 << 20

LiveItem = TickBatch | Gap | DeadLetters
FrameData = bytes | bytearray | memoryview  # a WebSocket frame's payload
StreamKey = tuple[str, str, str]  # (exchange, symbol, message type or book_snapshot name)
SymbolKey = tuple[str, str]


# --------------------------------------------------------------------------------------------
# options and URLs


def build_options(settings: TardisMachineSettings, exchanges: list[str],
                  replay_from: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """tardis-machine's `options` array: one entry per exchange.

    `replay_from` overrides the replay start per exchange (used when resuming a replay).
    """
    replay = settings.replay_from is not None
    out: list[dict[str, Any]] = []
    for exchange in exchanges:
        option: dict[str, Any] = {"exchange": exchange}
        symbols = settings.exchanges[exchange]
        if symbols:
            option["symbols"] = list(symbols)
        option["dataTypes"] = list(settings.data_types)
        option["withDisconnectMessages"] = settings.with_disconnect_messages
        if replay:
            option["from"] = (replay_from or {}).get(exchange, settings.replay_from)
            option["to"] = settings.replay_to
        out.append(option)
    return out


def machine_url(base: str, options: list[dict[str, Any]], replay: bool) -> str:
    """The WebSocket URL of the normalized endpoint with `options` as its query parameter."""
    path = REPLAY_PATH if replay else LIVE_PATH
    return f"{base.rstrip('/')}{path}?options={quote(orjson.dumps(options).decode(), safe='')}"


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment: safe for logs and `source` columns."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _iso_minute(us: int) -> str:
    """Microseconds -> ISO 8601, floored to the minute (tardis-machine replays whole minutes)."""
    minute = us // 60_000_000 * 60
    return datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_or_none(value: Any) -> int | None:
    try:
        return parse_iso_us(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# counters


@dataclass
class SourceStats:
    """Counters of one partition (or their sum), for health checks and metrics.

    messages: frames decoded into tick messages; rows/batches: Arrow rows and TickBatches
    emitted; malformed: frames quarantined because they could not be read or mapped;
    rejected: messages quarantined for invalid values (rows_rejected counts their rows);
    duplicates_skipped: replayed messages already seen before a reconnect; gaps: Gap items
    emitted; connects/reconnects/disconnects/connect_failures: connection life;
    last_message_wall: "exchange:symbol" -> time.time() of its latest emitted batch.
    """

    messages: int = 0
    rows: int = 0
    batches: int = 0
    malformed: int = 0
    rejected: int = 0
    rows_rejected: int = 0
    dead_letters: int = 0
    duplicates_skipped: int = 0
    gaps: int = 0
    disconnect_messages: int = 0
    server_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    connected: bool = False
    queue_depth: int = 0
    last_error: str | None = None
    last_message_wall: dict[str, float] = field(default_factory=dict)

    def message_age(self, key: str, now: float | None = None) -> float | None:
        """Seconds since `key` ("exchange:symbol") last had a batch; None if never."""
        seen = self.last_message_wall.get(key)
        return None if seen is None else (now if now is not None else time.time()) - seen

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["last_message_wall"] = dict(self.last_message_wall)
        return out

    @classmethod
    def merged(cls, parts: list[SourceStats]) -> SourceStats:
        total = cls()
        for p in parts:
            for f in fields(cls):
                v = getattr(p, f.name)
                if isinstance(v, bool):
                    setattr(total, f.name, getattr(total, f.name) or v)
                elif isinstance(v, int):
                    setattr(total, f.name, getattr(total, f.name) + v)
            total.last_error = p.last_error or total.last_error
            total.last_message_wall.update(p.last_message_wall)
        return total


# --------------------------------------------------------------------------------------------
# connection thread -> assembler events


@dataclass(frozen=True, slots=True)
class _Connected:
    url: str


@dataclass(frozen=True, slots=True)
class _Disconnected:
    reason: str
    handled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class _Finished:
    reason: str


@dataclass(frozen=True, slots=True)
class _Crashed:
    error: str


class _FrameSink:
    """What _DirectConnection hands complete data frames to (implemented by _Connection)."""

    direct: bool

    def deliver(self, data: FrameData, connection: ClientConnection) -> None:
        raise NotImplementedError


class _DirectConnection(ClientConnection):
    """A websockets ClientConnection that passes each complete data frame straight to the sink.

    websockets' default path queues frames in an assembler that `recv()` then reads, about
    2 µs per frame; tardis-machine sends one unfragmented text frame per message, so this
    subclass (plugged in through connect's `create_connection`) overrides the connection's
    event hook for those frames only. Pings, pongs and closes keep websockets' handling, and
    at the first fragmented message the connection falls back to the assembler for good
    (messages stay in order: `recv()` reads them from then on).
    """

    sink: _FrameSink
    #: fast path on: this class parses the byte stream itself (see data_received)
    _fast = False
    _carry = b""
    _head_tail = b""  # last bytes of the handshake response seen so far
    fast_frames = 0  # frames this class cut itself (the rest went through websockets)

    def data_received(self, data: bytes) -> None:
        """Cut unfragmented, unmasked TEXT/BINARY frames here, straight to the sink.

        websockets parses frames with generator coroutines, the largest single cost of the
        live path at 100k messages/s (py-spy: about a quarter of the process's CPU). This
        class takes the byte stream over where websockets' parser is between frames with
        nothing buffered: right after the handshake response, whose end it finds itself.
        It then cuts data frames itself and passes each control frame (ping, pong, close),
        whole, to websockets, which answers it as usual. At anything else (a continuation
        frame, reserved bits, a mask, a frame over max_size) it hands the rest of the
        stream back to websockets for good, which checks and reports it."""
        if not self._fast:
            if self.protocol.state is State.CONNECTING:
                data = self._through_handshake(data)
                if not self._fast:
                    return
            else:
                super().data_received(data)
                return
        buf = self._carry + data if self._carry else data
        n = len(buf)
        i = 0
        limit = self.protocol.max_message_size
        deliver = self.sink.deliver
        while i + 2 <= n:
            b0, b1 = buf[i], buf[i + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if i + 4 > n:
                    break
                length, head = int.from_bytes(buf[i + 2:i + 4], "big"), 4
            elif length == 127:
                if i + 10 > n:
                    break
                length, head = int.from_bytes(buf[i + 2:i + 10], "big"), 10
            end = i + head + length
            if (b0 == 0x81 or b0 == 0x82) and not b1 & 0x80 and (
                    limit is None or length <= limit):
                if end > n:
                    break
                deliver(buf[i + head:end], self)
                self.fast_frames += 1
                i = end
                continue
            if b0 in (0x88, 0x89, 0x8A) and not b1 & 0x80 and length <= 125:
                if end > n:
                    break
                super().data_received(buf[i:end])  # close, ping or pong: websockets' job
                i = end
                if self._at_frame_boundary():
                    continue
            self._fast, self._carry = False, b""  # anything else: websockets from here on
            if i < n:
                super().data_received(buf[i:])
            return
        self._carry = buf[i:]

    def _through_handshake(self, data: bytes) -> bytes:
        """Feed websockets the handshake response; return the bytes after it if the fast
        path takes over from there (else feed those to websockets too and return b"")."""
        seen = self._head_tail + data
        k = seen.find(b"\r\n\r\n")
        if k < 0:
            self._head_tail = seen[-3:]
            super().data_received(data)
            return b""
        cut = k + 4 - len(self._head_tail)
        super().data_received(data[:cut])
        rest = data[cut:]
        self._fast = self._at_frame_boundary()
        if not self._fast and rest:
            super().data_received(rest)
        return rest

    def eof_received(self) -> None:
        if self._fast and self._carry:  # an incomplete frame: let websockets report it
            carry, self._carry, self._fast = self._carry, b"", False
            super().data_received(carry)
        super().eof_received()

    def _at_frame_boundary(self) -> bool:
        """websockets' parser is between frames with nothing buffered, so the stream can be
        taken over without splitting a frame (its innermost coroutine waits in at_eof)."""
        p = self.protocol
        if (not self.sink.direct or p.state is not State.OPEN or p.reader.buffer
                or p.current_size is not None or p.extensions):
            return False
        g: Any = p.parser
        while getattr(g, "gi_yieldfrom", None) is not None:
            g = g.gi_yieldfrom
        return getattr(getattr(g, "gi_code", None), "co_name", "") == "at_eof"

    def process_event(self, event: Event) -> None:
        if (self.sink.direct and type(event) is Frame and event.fin
                and (event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY)):
            self.sink.deliver(event.data, self)
            return
        if type(event) is Frame and event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            self.sink.direct = False
        super().process_event(event)


class _Connection(threading.Thread, _FrameSink):
    """Owns the WebSocket: connects, receives frames into `queue`, reconnects with backoff."""

    def __init__(self, settings: TardisMachineSettings, url_factory: Callable[[], str],
                 queue: deque[Any], stats: SourceStats, final_on_normal_close: bool,
                 wait_for_resume_point: bool, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._settings = settings
        self._url_factory = url_factory
        self._queue = queue
        self._stats = stats
        self._final_on_normal_close = final_on_normal_close
        self._wait_for_resume_point = wait_for_resume_point
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._frames = 0
        self._backpressured = False
        self._abort_reason: str | None = None
        self._random = random.Random()
        self._public = public_url(settings.url)
        self.direct = True
        self._paused: ClientConnection | None = None
        self._connection_class = type("_BoundConnection", (_DirectConnection,), {"sink": self})

    # -- thread side ------------------------------------------------------------------------

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._main())
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # a bug: make the dataflow fail instead of hanging
            log.exception("tardis-machine connection thread crashed")
            self._queue.append(_Crashed(f"{type(e).__name__}: {e}"))
        finally:
            # let websockets' own tasks (keepalive, close) see the aborted transport and end
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread (called from Bytewax's thread)."""
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        if self.is_alive():
            self.join(timeout)

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)] seconds."""
        s = self._settings
        cap = min(s.reconnect_max_delay, s.reconnect_initial_delay * (2 ** min(attempt, 40)))
        return self._random.uniform(0, cap) / 1e6

    async def _main(self) -> None:
        attempt = 0
        while not self._stopping:
            url = self._url_factory()
            connected, delivered, reason, final = await self._session(url)
            handled: threading.Event | None = None
            if connected:
                self._stats.disconnects += 1
                if final:
                    self._queue.append(_Finished(reason))
                else:
                    event = _Disconnected(reason)
                    handled = event.handled
                    self._queue.append(event)
            if final:
                return
            self._stats.last_error = reason
            if delivered:
                attempt = 0
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.warning("tardis-machine %s: %s; reconnecting in %.3fs", self._public, reason,
                        delay)
            await asyncio.sleep(delay)
            if handled is not None and self._wait_for_resume_point:
                # A replay resumes where the assembler stopped: let it see the drop first.
                while not handled.is_set() and not self._stopping:
                    await asyncio.sleep(0.002)

    async def _session(self, url: str) -> tuple[bool, bool, str, bool]:
        """One connection: (connected, delivered a frame, why it ended, stream complete)."""
        s = self._settings
        self._abort_reason = None
        self.direct = True  # a new connection starts on the direct path (see _DirectConnection)
        try:
            ws = await connect(
                url,
                open_timeout=s.open_timeout / 1e6,
                ping_interval=(s.ping_interval / 1e6) or None,
                ping_timeout=(s.ping_timeout / 1e6) or None,
                # a failed keepalive waits this long for the peer's close: keep it short
                close_timeout=min(1.0, max(0.05, s.ping_timeout / 1e6)),
                max_size=_MAX_FRAME_BYTES,
                max_queue=1024,
                create_connection=self._connection_class,
            )
        except InvalidStatus as e:
            body = e.response.body.decode("utf-8", "replace").strip()[:300]
            self._stats.connect_failures += 1
            return False, False, (f"tardis-machine refused the request: HTTP "
                                  f"{e.response.status_code} {body}".rstrip()), False
        except (OSError, TimeoutError, InvalidHandshake) as e:
            self._stats.connect_failures += 1
            return False, False, f"cannot connect: {type(e).__name__}: {e}", False
        self._stats.connects += 1
        self._stats.reconnects = self._stats.connects - 1
        self._stats.connected = True
        log.info("tardis-machine %s: connected", self._public)
        self._queue.append(_Connected(self._public))
        self.direct = True
        start_frames = self._frames
        watchdog = (asyncio.get_running_loop().create_task(self._watch(ws))
                    if s.stale_timeout else None)
        try:
            await self._receive(ws)
            reason, final = "connection ended", False  # not reached: recv raises on close
        except ConnectionClosed as e:
            reason, final = self._close_reason(e)
        finally:
            self._stats.connected = False
            if watchdog is not None:
                watchdog.cancel()
            if ws.state is not State.CLOSED:
                ws.transport.abort()
        return True, self._frames > start_frames, reason, final

    def deliver(self, data: FrameData, connection: ClientConnection) -> None:
        """A complete data frame (called by _DirectConnection inside data_received)."""
        queue = self._queue
        queue.append(data)
        self._frames += 1
        if len(queue) >= self._settings.max_queue_frames and self._paused is None:
            # Backpressure: stop reading, so TCP pushes back, until Bytewax drained half.
            self._paused = connection
            self._backpressured = True
            connection.transport.pause_reading()
            asyncio.get_running_loop().create_task(self._resume_when_drained(connection))

    async def _resume_when_drained(self, connection: ClientConnection) -> None:
        low = self._settings.max_queue_frames // 2
        try:
            while len(self._queue) > low and not self._stopping:
                await asyncio.sleep(0.002)
        finally:
            self._paused = None
            self._backpressured = False
            if not connection.transport.is_closing():
                connection.transport.resume_reading()

    async def _receive(self, ws: ClientConnection) -> None:
        """Messages websockets assembled itself (after a fragmented one); ends on close."""
        queue = self._queue
        while True:
            data = await ws.recv(decode=False)
            while self._paused is not None and not self._stopping:
                await asyncio.sleep(0.002)
            queue.append(data)
            self._frames += 1

    def _close_reason(self, e: ConnectionClosed) -> tuple[str, bool]:
        if self._abort_reason is not None:
            return self._abort_reason, False
        rcvd = e.rcvd
        if rcvd is not None and rcvd.code == 1000:
            final = self._final_on_normal_close
            return f"server closed the stream ({rcvd.code} {rcvd.reason})".strip(), final
        if rcvd is not None:
            return f"server closed the connection: {rcvd.code} {rcvd.reason}".strip(), False
        if e.sent is not None and e.sent.code == 1011:
            return f"no pong within ping_timeout ({e.sent.reason})", False
        if e.sent is None:
            return "socket dropped without a close frame", False
        return str(e), False

    async def _watch(self, ws: ClientConnection) -> None:
        """Abort a connection that delivered nothing for `stale_timeout` (pings may still work)."""
        timeout = self._settings.stale_timeout / 1e6
        loop = asyncio.get_running_loop()
        seen, since = self._frames, loop.time()
        while True:
            await asyncio.sleep(max(timeout / 4, 0.005))
            now = loop.time()
            if self._frames != seen or self._backpressured:
                seen, since = self._frames, now
            elif now - since >= timeout:
                self._abort_reason = (f"stale: no message for {now - since:.2f}s "
                                      f"(stale_timeout {timeout:g}s)")
                ws.transport.abort()
                return


# --------------------------------------------------------------------------------------------
# assembler: frames -> TickBatch / Gap / DeadLetters, in the Bytewax thread


class _Stream:
    """Pending messages and positions of one (exchange, symbol, message type or name)."""

    __slots__ = ("key", "exchange", "symbol", "data_type", "is_book_change", "msgs", "raws",
                 "parts", "waiting", "rows", "since", "last_local", "run", "last_ts",
                 "emit_local", "emit_run", "emit_ts", "first_pending_local", "caught_up",
                 "dedup_seen")

    def __init__(self, key: StreamKey, data_type: str | None) -> None:
        self.key = key
        self.exchange, self.symbol = key[0], key[1]
        self.data_type = data_type
        self.is_book_change = data_type == "incremental_book_L2"
        self.msgs: list[dict[str, Any]] = []  # decoded one by one, not built yet
        self.raws: list[FrameData] = []
        self.parts: list[pa.RecordBatch] = []  # built rows waiting, in message order
        self.waiting = 0  # messages received and not emitted yet
        self.rows = 0
        self.since = 0.0
        self.last_local: Any = None     # localTimestamp of the last message received
        self.run = 0                    # messages received with that localTimestamp
        self.last_ts: Any = None        # exchange timestamp of the last message received
        self.emit_local: Any = None     # the same three at the last emitted message
        self.emit_run = 0
        self.emit_ts: Any = None
        self.first_pending_local: Any = None
        self.caught_up = True
        self.dedup_seen = 0

    @property
    def pending(self) -> bool:
        """Messages wait to be emitted."""
        return self.waiting > 0


@dataclass
class _Resume:
    """Where a replay restarts: per stream (local_us, count), per exchange the floor."""

    floors: dict[str, int]
    streams: dict[StreamKey, tuple[int, int]]


@dataclass
class _OpenGap:
    start_us: int
    reasons: list[str]


class _Assembler:
    """Decodes frames, groups them into Arrow batches, tracks positions, gaps, dead letters."""

    def __init__(self, settings: TardisMachineSettings, exchanges: list[str], source: str,
                 stats: SourceStats, resume_state: dict[str, Any] | None) -> None:
        self.replay = settings.replay_from is not None
        self._exchanges = exchanges
        self._max_rows = settings.max_batch_rows
        self._max_delay = settings.max_batch_delay / 1e6
        self._source = source
        self.stats = stats
        self._streams: dict[StreamKey, _Stream] = {}
        self._by_symbol: dict[SymbolKey, list[_Stream]] = {}
        self._pending: dict[StreamKey, _Stream] = {}  # insertion order = order of `since`
        self._gaps: dict[SymbolKey, _OpenGap] = {}
        self._resume: _Resume | None = None
        self._skipped_max: dict[str, int] = {}  # latest localTimestamp skipped as duplicate
        self._out: list[LiveItem] = []
        self._dead: list[tuple[str, str, str, str, str]] = []
        self._raw: list[FrameData] = []  # frames received, not decoded yet
        self._raw_since = 0.0  # when the oldest of them was taken from the connection
        self._arrival = 0.0  # when the frames being decoded were taken (monotonic s)
        self._decode_at = min(self._max_rows, _SEGMENT_FRAMES)
        self._need_served = 0  # the latest candle close time flushed for (live_clock.need)
        self.finished = False
        self.crashed: str | None = None
        #: replay: the `from` per exchange of the next connection (read by the thread)
        self.resume_from: dict[str, str] = {}
        if resume_state is not None:
            self._restore(resume_state)

    # -- frames -------------------------------------------------------------------------------

    def on_frames(self, frames: list[FrameData]) -> None:
        """Frames taken from the connection, in order. They are decoded when their micro-batch
        is due (max_batch_delay after the first, or max_batch_rows of them) or before anything
        that needs them decoded (a connection event, a snapshot): one bulk decode of a run of
        messages costs a fraction of decoding each as it comes."""
        if not self._raw:
            self._raw_since = time.monotonic()
        self._raw += frames
        if len(self._raw) >= self._decode_at:
            self.decode_pending()

    @property
    def raw_count(self) -> int:
        """Frames received and not decoded yet."""
        return len(self._raw)

    def decode_pending(self) -> None:
        """Decode every frame received so far into the streams' micro-batches."""
        raw, self._raw = self._raw, []
        self._arrival = self._raw_since
        for i in range(0, len(raw), _SEGMENT_FRAMES):
            self._decode(raw[i:i + _SEGMENT_FRAMES])

    def _decode(self, frames: list[FrameData]) -> None:
        """Runs of flat messages go through the bulk decoder, anything else through orjson
        one by one, in frame order."""
        if len(frames) < _MIN_BULK:
            for frame in frames:
                self.on_frame(frame)
            return
        try:
            scan = FlatScan(frames)
        except Exception:  # never fatal: the general decoder reports each frame
            log.exception("bulk decoding failed; decoding %d frames one by one", len(frames))
            for frame in frames:
                self.on_frame(frame)
            return
        ok = scan.eligible
        if ok.all():
            bounds = [0, len(frames)]
        else:
            bounds = [0, *(np.flatnonzero(np.diff(ok.view(np.int8))) + 1).tolist(),
                      len(frames)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            if not (ok[a] and b - a >= _MIN_BULK and self._bulk(scan, a, b)):
                for i in range(a, b):
                    self.on_frame(frames[i])

    def _bulk(self, scan: FlatScan, a: int, b: int) -> bool:
        """Messages a..b of `scan` (all eligible) into their streams: the same positions,
        gaps, counts and rows as `on_frame` of each. False (nothing done) where a stream is
        still skipping a replay's duplicates: those go one by one."""
        codes = scan.stream[a:b]
        count, first, last, run, all_same = kernels.stream_runs(
            scan.buf, scan.vstart[a:b, LOCAL].copy(), scan.vend[a:b, LOCAL].copy(), codes,
            len(scan.streams))
        present = np.flatnonzero(count).tolist()
        streams: dict[int, _Stream] = {}
        for c in present:
            info = scan.streams[c]
            key = (info.exchange, info.symbol, info.type)
            st = self._streams.get(key) or self._add_stream(key, scan.data_types[c])
            if not st.caught_up:
                return False
            streams[c] = st
        try:
            parts, rejected = self._bulk_rows(scan, a, b, codes, streams)
        except Exception:  # never fatal: the general decoder takes these frames instead
            log.exception("bulk decoding failed; decoding %d frames one by one", b - a)
            return False
        for m, reason, st, rows_lost in rejected:
            self._dead_letter(scan.frames[m], reason, st.exchange, st.symbol,
                              st.data_type or "")
            self.stats.rejected += 1
            self.stats.rows_rejected += rows_lost
        gap_ends: dict[SymbolKey, int] = {}
        for c in present:
            st = streams[c]
            n_c, i_first, i_last = int(count[c]), a + int(first[c]), a + int(last[c])
            first_local = scan.text(i_first, LOCAL)
            if all_same[c] and first_local == st.last_local:
                st.run += n_c
            else:
                st.run = int(run[c])
            st.last_local = first_local if all_same[c] else scan.text(i_last, LOCAL)
            st.last_ts = scan.text(i_last, TIMESTAMP)
            sym = (st.exchange, st.symbol)
            if self._gaps and sym in self._gaps and (
                    sym not in gap_ends or i_first < gap_ends[sym]):
                gap_ends[sym] = i_first
            if st.msgs:  # messages decoded one by one before these go first
                self._seal([st])
            if not st.pending:
                st.since = self._arrival
                st.first_pending_local = first_local
                self._pending[st.key] = st
            part = parts.get(c)
            if part is not None:
                st.parts.append(part)
            st.waiting += n_c
            st.rows += n_c
        for sym, i in sorted(gap_ends.items(), key=lambda kv: kv[1]):
            self._close_gap(sym, int(scan.tsv[i, TIMESTAMP]))
        self.stats.messages += b - a
        for c in present:
            if streams[c].rows >= self._max_rows:
                self._flush(streams[c])
        return True

    def _bulk_rows(self, scan: FlatScan, a: int, b: int, codes: np.ndarray,
                   streams: dict[int, _Stream]
                   ) -> tuple[dict[int, pa.RecordBatch],
                              list[tuple[int, str, _Stream, int]]]:
        """The valid rows of messages a..b per stream code, and the rejected messages
        (index, reason, stream, rows lost). Changes nothing: the caller applies it."""
        out: dict[int, pa.RecordBatch] = {}
        rejected: list[tuple[int, str, _Stream, int]] = []
        types = {scan.data_types[c] for c in streams}
        for data_type in types:
            assert data_type is not None
            if len(types) == 1:
                rows = np.arange(a, b)
            else:
                mine = [c for c in streams if scan.data_types[c] == data_type]
                rows = a + np.flatnonzero(np.isin(codes, mine))
            row_codes = codes[rows - a]
            built = scan.build(data_type, rows)
            if built.rejected:  # one row per message: each rejected message lost its row
                keep = np.ones(len(rows), dtype=bool)
                for i, reason in built.rejected.items():
                    keep[i] = False
                    rejected.append((int(rows[i]), reason, streams[int(row_codes[i])], 1))
                row_codes = row_codes[keep]
            batch = built.batch
            if not batch.num_rows:
                continue
            if len(streams) == 1 or (row_codes == row_codes[0]).all():
                out[int(row_codes[0])] = batch
                continue
            order = np.argsort(row_codes, kind="stable")
            batch = batch.take(pa.array(order))
            sorted_codes = row_codes[order]
            cuts = np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1
            starts = [0, *cuts.tolist()]
            ends = [*cuts.tolist(), len(sorted_codes)]
            for s0, e0 in zip(starts, ends, strict=True):
                out[int(sorted_codes[s0])] = batch.slice(s0, e0 - s0)
        rejected.sort(key=lambda r: r[0])
        return out, rejected

    def on_frame(self, frame: FrameData) -> None:
        """One frame through the general decoder (orjson, then normalized.build_batches)."""
        try:
            m = orjson.loads(frame)
        except orjson.JSONDecodeError as e:
            self._malformed(frame, f"invalid JSON: {e}")
            return
        try:
            self._on_message(m, frame)
        except Exception as e:  # a frame must never stop the stream
            self._malformed(frame, f"cannot map message: {type(e).__name__}: {e}")

    def _on_message(self, m: Any, frame: FrameData) -> None:
        if type(m) is not dict:
            self._malformed(frame, f"expected a JSON object, got {type(m).__name__}")
            return
        mtype = m.get("type")
        if mtype == "disconnect":
            self._on_disconnect_message(m, frame)
            return
        key = (m.get("exchange"), m.get("symbol"),
               m.get("name") if mtype == "book_snapshot" else mtype)
        st = self._streams.get(key)  # type: ignore[arg-type]
        if st is None:
            if mtype == "error":
                self._on_server_error(m)
                return
            st = self._new_stream(key, m, frame)
            if st is None:
                return
        if st.is_book_change:
            asks, bids = m.get("asks"), m.get("bids")
            if type(asks) is not list or type(bids) is not list:
                self._malformed(frame, "book_change needs 'asks' and 'bids' lists",
                                st.exchange, st.symbol, "incremental_book_L2")
                return
            rows = len(asks) + len(bids)
        else:
            rows = 1
        local = m.get("localTimestamp")
        if not st.caught_up and not self._accept(st, local):
            self.stats.duplicates_skipped += 1
            return
        if local == st.last_local:
            st.run += 1
        else:
            st.last_local = local
            st.run = 1
        st.last_ts = m.get("timestamp")
        self.stats.messages += 1
        if self._gaps and (st.exchange, st.symbol) in self._gaps:
            self._close_gap((st.exchange, st.symbol), _parse_or_none(st.last_ts))
        if not st.pending:
            st.since = self._arrival
            st.first_pending_local = local
            self._pending[st.key] = st
        st.msgs.append(m)
        st.raws.append(frame)
        st.waiting += 1
        st.rows += rows
        if st.rows >= self._max_rows:
            self._flush(st)

    def _new_stream(self, key: tuple[Any, Any, Any], m: dict[str, Any],
                    frame: FrameData) -> _Stream | None:
        exchange, symbol, tag = key
        mtype = m.get("type")
        if not isinstance(mtype, str):
            self._malformed(frame, "message has no 'type'", exchange, symbol)
            return None
        data_type = message_data_type(mtype, m.get("name"))
        if data_type is None:
            what = (f"book_snapshot name {m.get('name')!r}" if mtype == "book_snapshot"
                    else f"message type {mtype!r}")
            self._malformed(frame, f"unsupported {what}", exchange, symbol)
            return None
        if not isinstance(exchange, str) or not exchange:
            self._malformed(frame, "message has no 'exchange'", data_type=data_type)
            return None
        if not isinstance(symbol, str) or not symbol:
            self._malformed(frame, "message has no 'symbol'", exchange, data_type=data_type)
            return None
        return self._add_stream((exchange, symbol, tag), data_type)

    def _add_stream(self, key: StreamKey, data_type: str | None) -> _Stream:
        st = _Stream(key, data_type)
        st.caught_up = self._resume is None
        self._streams[key] = st
        self._by_symbol.setdefault((key[0], key[1]), []).append(st)
        return st

    def _accept(self, st: _Stream, local: Any) -> bool:
        """Replay resume: is this message after the position already seen for its stream?"""
        resume = self._resume
        if resume is None:
            st.caught_up = True
            return True
        local_us = _parse_or_none(local)
        if local_us is None:  # unreadable: let the batch builder quarantine it
            return True
        pos = resume.streams.get(st.key)
        if pos is None:
            floor = resume.floors.get(st.exchange)
            accept = floor is None or local_us >= floor
        elif local_us != pos[0]:
            accept = local_us > pos[0]
        else:
            st.dedup_seen += 1
            accept = st.dedup_seen > pos[1]
            if accept:  # keep counting messages of this localTimestamp from the old position
                st.last_local, st.run = local, st.dedup_seen - 1
        if accept:
            st.caught_up = True
        elif local_us > self._skipped_max.get(st.exchange, -1):
            self._skipped_max[st.exchange] = local_us
        return accept

    def _resume_point(self) -> _Resume:
        """Positions of the last emitted message per stream, and per exchange the floor.

        A later connection (or a restart) accepts a message of a stream with a position only
        when its (localTimestamp, count) is past it, and a message of any other stream only from
        the floor on: the earliest pending message, or the latest message shown so far.
        """
        old = self._resume
        positions = dict(old.streams) if old else {}
        shown = dict(old.floors) if old else {}
        for ex, us in self._skipped_max.items():
            shown[ex] = max(shown.get(ex, us), us)
        pending: dict[str, int] = {}
        for st in self._streams.values():
            local = _parse_or_none(st.last_local)
            if local is not None:
                shown[st.exchange] = max(shown.get(st.exchange, local), local)
            emitted = _parse_or_none(st.emit_local)
            if emitted is not None:
                positions[st.key] = (emitted, st.emit_run)
            if st.pending:
                first = _parse_or_none(st.first_pending_local)
                if first is not None:
                    pending[st.exchange] = min(pending.get(st.exchange, first), first)
        for ex, us in pending.items():
            shown[ex] = min(shown.get(ex, us), us)
        return _Resume(shown, positions)

    # -- disconnects and gaps ----------------------------------------------------------------

    def _on_disconnect_message(self, m: dict[str, Any], frame: FrameData) -> None:
        exchange = m.get("exchange")
        if not isinstance(exchange, str) or not exchange:
            self._malformed(frame, "disconnect message has no 'exchange'")
            return
        key = (exchange, "", "disconnect")
        st = self._streams.get(key)
        if st is None:
            st = _Stream(key, None)
            st.caught_up = self._resume is None
            self._streams[key] = st
        local = m.get("localTimestamp")
        if not st.caught_up and not self._accept(st, local):
            self.stats.duplicates_skipped += 1
            return
        if local == st.last_local:
            st.run += 1
        else:
            st.last_local, st.run = local, 1
        st.emit_local, st.emit_run = st.last_local, st.run
        self.stats.disconnect_messages += 1
        symbols = m.get("symbols")
        if isinstance(symbols, list) and symbols:
            affected = [(exchange, s) for s in symbols if isinstance(s, str)]
        else:
            affected = [k for k in self._by_symbol if k[0] == exchange]
        self._open_gaps(affected, f"tardis-machine disconnect message: {exchange} feed "
                                  f"disconnected at {local}")

    def _on_server_error(self, m: dict[str, Any]) -> None:
        self.stats.server_errors += 1
        detail = m.get("details") or m.get("message") or m
        self.stats.last_error = f"tardis-machine error ({m.get('exchange')}): {detail}"
        log.warning("%s", self.stats.last_error)

    def _open_gaps(self, symbols: list[SymbolKey], reason: str) -> None:
        for sym in symbols:
            streams = self._by_symbol.get(sym, [])
            for st in streams:
                if st.pending:
                    self._flush(st)
            starts = [us for us in (_parse_or_none(st.last_ts) for st in streams)
                      if us is not None]
            if not starts:
                continue  # nothing seen yet for this symbol: nothing to be missing after
            gap = self._gaps.get(sym)
            if gap is None:
                self._gaps[sym] = _OpenGap(max(starts), [reason])
            elif reason not in gap.reasons:
                gap.reasons.append(reason)

    def _close_gap(self, sym: SymbolKey, end_us: int | None) -> None:
        gap = self._gaps.pop(sym)
        end = gap.start_us if end_us is None else max(end_us, gap.start_us)
        self._out.append(Gap(sym[0], sym[1], gap.start_us, end, "; ".join(gap.reasons),
                             self._source))
        self.stats.gaps += 1

    # -- connection events -------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        if self._raw:
            self.decode_pending()  # everything received before the event comes first
        if isinstance(event, _Disconnected):
            try:
                self._on_connection_lost(event.reason)
            finally:
                event.handled.set()
        elif isinstance(event, _Finished):
            self._finish(event.reason)
        elif isinstance(event, _Crashed):
            self.crashed = event.error
        # _Connected: nothing to do; gaps close on each symbol's first message.

    def _on_connection_lost(self, reason: str) -> None:
        self.flush_all()
        if not self.replay:
            self._open_gaps(list(self._by_symbol), f"connection lost: {reason}")
            return
        self._resume = self._resume_point()
        self._skipped_max = {}
        for st in self._streams.values():
            st.caught_up = False
            st.dedup_seen = 0
        self.resume_from = {ex: _iso_minute(us) for ex, us in self._resume.floors.items()}

    def _finish(self, reason: str) -> None:
        self.flush_all()
        if self._gaps:
            latest = max((us for us in (_parse_or_none(st.last_ts)
                                        for st in self._streams.values()) if us is not None),
                         default=None)
            for sym in list(self._gaps):
                self._gaps[sym].reasons.append("stream ended before data resumed")
                self._close_gap(sym, latest)
        self.finished = True
        log.info("tardis-machine stream finished: %s", reason)

    # -- batching ----------------------------------------------------------------------------

    def _flush(self, st: _Stream) -> None:
        self._flush_many([st])

    def _flush_many(self, streams: list[_Stream]) -> None:
        """Emit the pending messages of `streams`."""
        self._seal(streams)
        for st in streams:
            parts, st.parts, st.rows, st.waiting = st.parts, [], 0, 0
            st.emit_local, st.emit_run, st.emit_ts = st.last_local, st.run, st.last_ts
            self._pending.pop(st.key, None)
            if parts:
                self._emit(st, parts)

    def _seal(self, streams: list[_Stream]) -> None:
        """Build the messages of `streams` decoded one by one into parts: one Arrow build per
        data type (normalized.build_batches)."""
        by_type: dict[str, list[tuple[_Stream, list[dict[str, Any]], list[FrameData]]]] = {}
        for st in streams:
            if not st.msgs:
                continue
            assert st.data_type is not None
            by_type.setdefault(st.data_type, []).append((st, st.msgs, st.raws))
            st.msgs, st.raws = [], []
        for data_type, group in by_type.items():
            try:
                built = build_batches(data_type, [(st.exchange, st.symbol, msgs)
                                                  for st, msgs, _ in group])
            except Exception as e:  # never fatal: quarantine the group, keep streaming
                log.exception("cannot build %s batches for %s", data_type,
                              ", ".join(f"{st.exchange}:{st.symbol}" for st, _, _ in group))
                for st, _, raws in group:
                    for raw in raws:
                        self._dead_letter(raw, f"internal error building the batch: {e!r}",
                                          st.exchange, st.symbol, data_type)
                    self.stats.rejected += len(raws)
                continue
            for (st, _, raws), one in zip(group, built, strict=True):
                if one.batch.num_rows:
                    st.parts.append(one.batch)
                if one.rejected:
                    self.stats.rejected += len(one.rejected)
                    self.stats.rows_rejected += one.rows_rejected
                    for i, reason in one.rejected.items():
                        self._dead_letter(raws[i], reason, st.exchange, st.symbol, data_type)

    def _emit(self, st: _Stream, parts: list[pa.RecordBatch]) -> None:
        """One stream's rows as TickBatches: one, or max_batch_rows each where bulk-decoded
        runs made more (a book_change message's levels are never split)."""
        assert st.data_type is not None
        batch = parts[0] if len(parts) == 1 else pa.concat_batches(parts)
        n, step = batch.num_rows, self._max_rows
        pieces = ([batch] if n <= step or st.is_book_change
                  else [batch.slice(i, step) for i in range(0, n, step)])
        for piece in pieces:
            self._out.append(TickBatch(st.exchange, st.symbol, st.data_type, piece,
                                       self._source))
        self.stats.batches += len(pieces)
        self.stats.rows += n
        self.stats.last_message_wall[f"{st.exchange}:{st.symbol}"] = time.time()

    def pending_since_wall_us(self) -> int:
        """Wall time (us) before which every received message has been emitted: now, or the
        arrival of the oldest message still waiting in a micro-batch."""
        now = time.time_ns() // 1000
        if not self._pending and not self._raw:
            return now
        oldest = min([st.since for st in self._pending.values()]  # monotonic seconds
                     + ([self._raw_since] if self._raw else []))
        return now - int((time.monotonic() - oldest) * 1_000_000)

    def flush_due(self) -> None:
        if not self.replay and (self._raw or self._pending):
            # a candle step closes candles now: everything received goes out first
            need = live_clock.next_need(self._need_served)
            if need is not None and need <= time.time_ns() // 1000:
                self._need_served = need
                self.flush_all()
                return
        if self._raw and self._raw_since <= time.monotonic() - self._max_delay:
            self.decode_pending()
        if not self._pending:
            return
        # When the oldest micro-batch is due, every pending one goes with it: no message waits
        # longer than max_batch_delay, and one Arrow build covers all symbols of a data type.
        oldest = next(iter(self._pending.values()))
        if oldest.since <= time.monotonic() - self._max_delay:
            self._flush_many(list(self._pending.values()))

    def flush_all(self) -> None:
        if self._raw:
            self.decode_pending()
        if self._pending:
            self._flush_many(list(self._pending.values()))

    # -- dead letters ------------------------------------------------------------------------

    def _malformed(self, frame: FrameData, reason: str, exchange: Any = "", symbol: Any = "",
                   data_type: str = "") -> None:
        self.stats.malformed += 1
        self._dead_letter(frame, reason, exchange if isinstance(exchange, str) else "",
                          symbol if isinstance(symbol, str) else "", data_type)

    def _dead_letter(self, frame: FrameData, reason: str, exchange: str, symbol: str,
                     data_type: str) -> None:
        raw = bytes(frame).decode("utf-8", "replace")
        self._dead.append((data_type, exchange, symbol, reason, raw))
        self.stats.dead_letters += 1

    def take_output(self) -> list[LiveItem]:
        if self._dead:
            by_type: dict[str, list[tuple[str, str, str, str, str]]] = {}
            for row in self._dead:
                by_type.setdefault(row[0], []).append(row)
            self._dead = []
            for data_type, rows in by_type.items():
                self._out.append(dead_letters(
                    "rejected", self._source, None, [r[1] for r in rows], [r[2] for r in rows],
                    data_type, [r[3] for r in rows], [r[4] for r in rows]))
        out, self._out = self._out, []
        return out

    # -- snapshot / restore ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        if self._raw:
            self.decode_pending()  # received frames are part of the position
        point = self._resume_point()
        last_ts: dict[SymbolKey, int] = {}
        for st in self._streams.values():
            ts = _parse_or_none(st.emit_ts)
            if ts is not None and st.data_type is not None:
                sym = (st.exchange, st.symbol)
                last_ts[sym] = max(last_ts.get(sym, ts), ts)
        return {
            "v": RESUME_VERSION,
            "mode": "replay" if self.replay else "live",
            "floors": point.floors,
            "streams": [(*key, local, run) for key, (local, run) in point.streams.items()],
            "last_ts": [(ex, sym, us) for (ex, sym), us in last_ts.items()],
            "gaps": [(ex, sym, g.start_us, list(g.reasons))
                     for (ex, sym), g in self._gaps.items()],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        mode = "replay" if self.replay else "live"
        if not isinstance(state, dict) or state.get("v") != RESUME_VERSION:
            log.warning("tardis-machine source: ignoring a resume state of another version")
            return
        if state.get("mode") != mode:
            log.warning("tardis-machine source: resume state is for %s mode, running %s; "
                        "starting fresh", state.get("mode"), mode)
            return
        mine = set(self._exchanges)
        for ex, sym, start_us, reasons in state.get("gaps", []):
            if ex in mine:
                self._gaps[(ex, sym)] = _OpenGap(int(start_us), list(reasons))
        if self.replay:
            floors = {ex: int(us) for ex, us in state.get("floors", {}).items() if ex in mine}
            streams = {(ex, sym, tag): (int(local), int(run))
                       for ex, sym, tag, local, run in state.get("streams", []) if ex in mine}
            self._resume = _Resume(floors, streams)
            self.resume_from = {ex: _iso_minute(us) for ex, us in floors.items()}
            return
        for ex, sym, us in state.get("last_ts", []):
            if ex in mine and (ex, sym) not in self._gaps:
                self._gaps[(ex, sym)] = _OpenGap(int(us), ["restart: resumed from a snapshot"])


# --------------------------------------------------------------------------------------------
# Bytewax partition and source


@dataclass(slots=True)
class Polled:
    """What one poll of a decoder gave: items for Bytewax, connection events for the health
    registry (("connected" | "disconnected" | "finished" | "crashed", text)), the wall time
    (us) before which everything received has been emitted (None: not caught up, or a
    replay), and whether the stream finished."""

    items: list[LiveItem]
    events: list[tuple[str, str]]
    clock_us: int | None
    finished: bool = False
    crashed: str | None = None


class Decoder(Protocol):
    """What a partition reads its items from: `LocalDecoder`, or the decoder process's
    `ProcessDecoder` (connectors.tardis.decoder_process)."""

    def poll(self) -> Polled: ...
    def snapshot(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class LocalDecoder:
    """Receives (connection thread) and decodes (caller's thread) one partition's frames.

    `poll` drains the frame queue for at most _POLL_BUDGET_S, so it never waits on the
    network. Used by the partition directly (`decoder: thread`) or inside the decoder process
    (`decoder: process`, connectors.tardis.decoder_process)."""

    def __init__(self, settings: TardisMachineSettings, exchanges: list[str],
                 resume_state: dict[str, Any] | None, stats: SourceStats, name: str) -> None:
        self.replay = settings.replay_from is not None
        self._settings = settings
        self._exchanges = exchanges
        self._queue: deque[Any] = deque()
        self.stats = stats
        endpoint = REPLAY_PATH if self.replay else LIVE_PATH
        self._assembler = _Assembler(settings, exchanges,
                                     public_url(settings.url.rstrip("/") + endpoint), stats,
                                     resume_state)
        self._conn = _Connection(settings, self._url, self._queue, stats,
                                 final_on_normal_close=self.replay
                                 or settings.stop_on_normal_close,
                                 wait_for_resume_point=self.replay,
                                 name=f"tardis-machine:{name}")
        self._conn.start()

    def _url(self) -> str:
        options = build_options(self._settings, self._exchanges, self._assembler.resume_from)
        return machine_url(self._settings.url, options, self.replay)

    @property
    def idle(self) -> bool:
        """No frame waits to be decoded."""
        return not self._queue

    def poll(self) -> Polled:
        asm, queue = self._assembler, self._queue
        deadline = time.perf_counter() + _POLL_BUDGET_S
        events: list[tuple[str, str]] = []
        frames: list[FrameData] = []
        n = 0
        while queue:
            item = queue.popleft()
            kind = type(item)
            if kind is bytearray or kind is bytes or kind is memoryview:
                frames.append(item)
            else:
                if frames:
                    asm.on_frames(frames)
                    frames = []
                events.append(_event_record(item))
                asm.on_event(item)
                if asm.crashed:
                    return Polled(asm.take_output(), events, None, crashed=asm.crashed)
                if asm.finished:
                    break
            n += 1
            if not n & 1023:
                if frames:
                    asm.on_frames(frames)
                    frames = []
                if time.perf_counter() > deadline:
                    break
        if frames:
            asm.on_frames(frames)
        asm.flush_due()
        self.stats.queue_depth = len(queue) + asm.raw_count
        # everything received is decoded: the live clock may advance
        clock = asm.pending_since_wall_us() if not queue and not self.replay else None
        return Polled(asm.take_output(), events, clock, finished=asm.finished)

    def snapshot(self) -> dict[str, Any]:
        return self._assembler.snapshot()

    def close(self) -> None:
        self._conn.stop()


def _event_record(event: Any) -> tuple[str, str]:
    if isinstance(event, _Connected):
        return ("connected", event.url)
    if isinstance(event, _Disconnected):
        return ("disconnected", event.reason)
    if isinstance(event, _Finished):
        return ("finished", event.reason)
    if isinstance(event, _Crashed):
        return ("crashed", event.error)
    return ("other", repr(event))


class _TardisMachinePartition(StatefulSourcePartition[LiveItem, dict[str, Any]]):
    def __init__(self, settings: TardisMachineSettings, exchanges: list[str],
                 resume_state: dict[str, Any] | None, stats: SourceStats, name: str) -> None:
        self._replay = settings.replay_from is not None
        self._stats = stats
        self._done = False
        from connectors.monitoring import source_status

        self._status = source_status(f"tardis-machine:{name}", live=not self._replay)
        self._clock_name = f"tardis-machine:{name}:{id(self)}"
        self._decoder: Decoder
        if settings.decoder == "process":
            from connectors.tardis.decoder_process import ProcessDecoder

            self._decoder = ProcessDecoder(settings, exchanges, resume_state, stats, name)
        else:
            self._decoder = LocalDecoder(settings, exchanges, resume_state, stats, name)

    def next_batch(self) -> list[LiveItem]:
        if self._done:
            raise StopIteration
        polled = self._decoder.poll()
        for kind, text in polled.events:
            self._report(kind, text)
        if polled.crashed:
            raise RuntimeError(f"tardis-machine connection thread crashed: {polled.crashed}")
        if polled.clock_us is not None:
            live_clock.caught_up(self._clock_name, polled.clock_us)
        out = polled.items
        self._count(out)
        if polled.finished:
            self._done = True
            live_clock.forget(self._clock_name)
            self._decoder.close()
            if not out:
                raise StopIteration
        return out

    def _report(self, kind: str, text: str) -> None:
        """Connection events -> the health registry (/health, /metrics)."""
        if kind == "connected":
            self._status.connected()
        elif kind == "disconnected":
            self._status.disconnected(text)
        elif kind == "finished":
            self._status.done()
        elif kind == "crashed":
            self._status.failed(text)

    def _count(self, out: list[LiveItem]) -> None:
        """Rows in and rejected, per data type, once per batch (operators.metrics)."""
        for item in out:
            if isinstance(item, TickBatch):
                metrics.ROWS_IN.inc(len(item), data_type=item.data_type)
                self._status.message()
            elif isinstance(item, DeadLetters):
                for data_type in set(item.batch.column("data_type").to_pylist()):
                    n = pc.sum(pc.equal(item.batch.column("data_type"), data_type)).as_py()
                    metrics.REJECTED.inc(n, data_type=data_type or "unknown")

    def next_awake(self) -> datetime | None:
        # Frames arrive at any time, so never sleep past the next poll: with None, Bytewax
        # calls again at once after a non-empty batch and 1 ms after an empty one, which also
        # serves the max_batch_delay deadlines.
        return None

    def snapshot(self) -> dict[str, Any]:
        return self._decoder.snapshot()

    def close(self) -> None:
        live_clock.forget(self._clock_name)
        self._decoder.close()


def _revalidatable(settings: TardisMachineSettings) -> dict[str, Any]:
    """The settings as input that validates back to them (durations as '<n>us', since a bare
    number would be read as seconds)."""
    data = settings.model_dump()
    for name, info in TardisMachineSettings.model_fields.items():
        if any(getattr(m, "func", None) is parse_duration_us for m in info.metadata):
            data[name] = f"{data[name]}us"
    return data


class TardisMachineSource(FixedPartitionedSource[LiveItem, dict[str, Any]]):
    """Bytewax source of TickBatch, Gap and DeadLetters items from tardis-machine.

    Takes the `source.tardis_machine` settings of streaming.yaml (a `TardisMachineSettings`,
    i.e. dataflows.config.TardisMachineSource) and/or the same keys as keyword arguments, e.g.
    `TardisMachineSource(exchanges={"bitmex": ["XBTUSD"]}, data_types=["trade"])`. The URL
    comes from the `url` argument, else the environment variable TARDIS_MACHINE_URL, else the
    settings. `routes` (router branches, e.g. ["trades", "book_snapshots"]) subscribes only to
    the configured data types the flow uses. One partition (one connection) covers every
    exchange, unless `connection_per_exchange` gives each exchange its own. `stats` exposes
    the counters.
    """

    def __init__(self, settings: TardisMachineSettings | Mapping[str, Any] | None = None, *,
                 routes: Iterable[str] | None = None, **overrides: Any) -> None:
        if isinstance(settings, TardisMachineSettings):
            data = _revalidatable(settings)
        elif settings is None:
            data = {}
        elif isinstance(settings, Mapping):
            data = dict(settings)
        else:
            raise TypeError(f"settings must be TardisMachineSettings or a mapping, "
                            f"got {type(settings).__name__}")
        data.update(overrides)
        env_url = os.environ.get(URL_ENV)
        if "url" not in overrides and env_url:
            data["url"] = env_url
        try:
            self.settings = TardisMachineSettings.model_validate(data)
        except ValidationError as err:
            where = "tardis-machine source" + (f" (url from {URL_ENV})"
                                               if "url" not in overrides and env_url else "")
            raise ValueError(format_validation_error(err, where)) from None
        if not self.settings.exchanges:
            raise ValueError("tardis-machine source: no exchanges configured "
                             "(source.tardis_machine.exchanges: {exchange: [symbols]})")
        if routes is not None:
            wanted = set(routes)
            kept = [dt for dt in self.settings.data_types
                    if route_of(machine_data_type(dt)) in wanted]
            if not kept:
                raise ValueError(
                    f"tardis-machine source: none of data_types {self.settings.data_types} "
                    f"feeds an enabled route ({', '.join(sorted(wanted)) or 'none'})")
            self.settings = self.settings.model_copy(update={"data_types": kept})
        self._parts: dict[str, SourceStats] = {}

    @classmethod
    def from_config(cls, config: StreamingConfig | TardisMachineSettings,
                    **overrides: Any) -> TardisMachineSource:
        """The source of streaming.yaml's `source.tardis_machine` section (given the whole
        config or the section); keyword arguments as for the constructor."""
        section = config.source.tardis_machine if isinstance(config, StreamingConfig) else config
        return cls(section, **overrides)

    @property
    def replay(self) -> bool:
        return self.settings.replay_from is not None

    @property
    def url(self) -> str:
        """The endpoint URL without credentials."""
        return public_url(self.settings.url + (REPLAY_PATH if self.replay else LIVE_PATH))

    @property
    def stats(self) -> SourceStats:
        """Counters: the live object for one partition, a merged copy for several."""
        parts = list(self._parts.values())
        if len(parts) == 1:
            return parts[0]
        return SourceStats.merged(parts)

    def _groups(self) -> dict[str, list[str]]:
        exchanges = list(self.settings.exchanges)
        if self.settings.connection_per_exchange:
            return {f"tardis-machine:{ex}": [ex] for ex in exchanges}
        return {"tardis-machine": exchanges}

    def list_parts(self) -> list[str]:
        return list(self._groups())

    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict[str, Any] | None) -> _TardisMachinePartition:
        exchanges = self._groups()[for_part]
        stats = SourceStats()
        self._parts[for_part] = stats
        return _TardisMachinePartition(self.settings, exchanges, resume_state, stats,
                                       f"{step_id}:{for_part}")


#: Compatibility name from the original design.
LiveTickStreamer = TardisMachineSource

__all__ = [
    "LIVE_PATH",
    "REPLAY_PATH",
    "URL_ENV",
    "LiveItem",
    "LiveTickStreamer",
    "SourceStats",
    "TardisMachineSettings",
    "TardisMachineSource",
    "build_options",
    "machine_url",
    "public_url",
]
