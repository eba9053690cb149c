"""A real WebSocket server speaking tardis-machine's normalized protocol, for tests and benches.

It serves `/ws-stream-normalized` and `/ws-replay-normalized` like tardis-machine does: the
`options` query parameter is a JSON object or array of {exchange, symbols, dataTypes,
withDisconnectMessages, from, to}; each message goes out as one text frame of normalized JSON.
A missing or unparseable `options` is refused with HTTP 400; options that parse but are invalid
(no exchange, unknown data type, replay without from/to) are accepted and then closed with
code 1011 and the error text, as tardis-machine does.

What it streams: recorded messages (`load_jsonl`, e.g. the shared BitMEX recording), given
ones (`recorded([...])`) or synthetic trades (`synthetic_trades`, fast enough for benchmarks),
filtered per connection by exchange, symbols and data types.

- live (`/ws-stream-normalized`): a real-time feed per subscription (the same options): a
  reconnecting client continues where its previous connection stopped, except that
  `lost_on_drop` messages are "published while the client was away" and never reach it;
- replay (`/ws-replay-normalized`): each connection replays [from, to) by localTimestamp in
  whole minutes, like tardis-machine's minute slices (so a resumed replay re-sends the start of
  its minute).

Faults are scripted per connection (`Script`): drop the TCP connection (or close with a code)
after K messages, stall for T seconds after K messages (optionally freezing the socket so pings
go unanswered), send garbage frames before given messages. `connections` logs what each
connection asked for and was sent.

Run standalone for benchmarks (a separate process keeps the server off the flow's GIL):
    python -m tests.connectors.tardis.ws_server --port 8001 --synthetic 1000000 --pace 100000
"""

from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

LIVE_PATH = "/ws-stream-normalized"
REPLAY_PATH = "/ws-replay-normalized"
_MINUTE_US = 60_000_000


# --------------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True, slots=True)
class Recorded:
    """One normalized message, pre-encoded, with the fields the server filters on."""

    data: bytes
    type: str
    exchange: str
    symbol: str | None
    name: str | None
    local_us: int | None

    @property
    def text(self) -> str:
        return self.data.decode()


def _iso_us(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    text = value.rstrip("Zz")
    head, _, frac = text.partition(".")
    try:
        seconds = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000 + int((frac + "000000")[:6] or 0)


def to_recorded(message: str | bytes | Mapping[str, Any]) -> Recorded:
    """A message (JSON text or dict) ready to serve."""
    if isinstance(message, Mapping):
        data = orjson.dumps(message)
        m: Any = message
    else:
        data = message.encode() if isinstance(message, str) else bytes(message)
        m = orjson.loads(data)
    return Recorded(data, str(m.get("type")), str(m.get("exchange")), m.get("symbol"),
                    m.get("name"), _iso_us(m.get("localTimestamp")))


def recorded(messages: Iterable[str | bytes | Mapping[str, Any]]) -> list[Recorded]:
    return [to_recorded(m) for m in messages]


def load_jsonl(path: str | Path) -> list[Recorded]:
    """Messages of a JSON-lines recording (one normalized message per line)."""
    with open(path, "rb") as f:
        return [to_recorded(line.rstrip(b"\r\n")) for line in f if line.strip()]


def iso(us: int) -> str:
    """Microseconds -> tardis-style ISO 8601 with millisecond precision."""
    seconds, micros = divmod(us, 1_000_000)
    return (datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            + f".{micros // 1000:03d}Z")


def synthetic_trades(n: int, *, exchange: str = "bitmex", symbols: Sequence[str] = ("XBTUSD",),
                     start_us: int = 1_626_993_360_000_000, step_us: int = 1_000,
                     price: float = 32_000.0, latency_us: int = 5_000) -> list[Recorded]:
    """`n` trade messages, round-robin over `symbols`, one every `step_us` (deterministic).

    Prices walk in half-dollar ticks, sides alternate, ids are "t{i}"; about 1 s per million.
    """
    out: list[Recorded] = []
    append = out.append
    k = len(symbols)
    ticks = (0, 1, 2, 1, 0, -1, -2, -1)
    for i in range(n):
        ts = start_us + i * step_us
        sym = symbols[i % k]
        p = price + 0.5 * ticks[i % 8] + (i // 1000) % 20
        data = (
            f'{{"type":"trade","symbol":"{sym}","exchange":"{exchange}","id":"t{i}",'
            f'"price":{p},"amount":{1 + i % 7}00,"side":"{"buy" if i % 2 else "sell"}",'
            f'"timestamp":"{iso(ts)}","localTimestamp":"{iso(ts + latency_us)}"}}'
        ).encode()
        append(Recorded(data, "trade", exchange, sym, None, (ts + latency_us) // 1000 * 1000))
    return out


# --------------------------------------------------------------------------------------------
# options (as tardis-machine parses and validates them)

_DATA_TYPE_RE = re.compile(
    r"^(trade|book_change|derivative_ticker|liquidation|option_summary|"
    r"book_snapshot_\d+_\d+(ms|s|m)|quote(_\d+(ms|s|m))?|trade_bar_\d+(ticks|ms|s|m|vol))$"
)


class OptionsError(ValueError):
    """Options that parse but cannot be served (tardis-machine closes with 1011)."""


def parse_options(query: str) -> list[dict[str, Any]]:
    """The `options` query parameter as a list of option objects.

    Raises KeyError when absent, orjson.JSONDecodeError when not JSON (HTTP 400 both).
    """
    values = parse_qs(query, keep_blank_values=True).get("options")
    if not values:
        raise KeyError("missing 'options' query parameter")
    parsed = orjson.loads(values[0])
    return parsed if isinstance(parsed, list) else [parsed]


def validate_options(options: list[Any], replay: bool) -> None:
    """Raise OptionsError with tardis-machine-like messages for options it would refuse."""
    if not options:
        raise OptionsError("Error: options array is empty")
    for option in options:
        if not isinstance(option, dict):
            raise OptionsError(f"Error: Invalid options entry: {option!r}")
        exchange = option.get("exchange")
        if not isinstance(exchange, str) or not exchange:
            raise OptionsError(f'Error: Invalid "exchange" argument: {exchange}')
        symbols = option.get("symbols")
        if symbols is not None and (not isinstance(symbols, list)
                                    or not all(isinstance(s, str) for s in symbols)):
            raise OptionsError(f'Error: Invalid "symbols[]" argument: {symbols}. Please '
                               "provide array of symbol strings")
        data_types = option.get("dataTypes")
        if not isinstance(data_types, list) or not data_types:
            raise OptionsError(f'Error: Invalid "dataTypes" argument: {data_types}')
        for dt in data_types:
            if not isinstance(dt, str) or not _DATA_TYPE_RE.match(dt):
                raise OptionsError(f"Error: invalid data type: {dt}")
        if replay:
            start, end = _iso_us(option.get("from")), _iso_us(option.get("to"))
            if start is None:
                raise OptionsError(f'Error: Invalid "from" argument: {option.get("from")}. '
                                   "Please provide valid date string.")
            if end is None:
                raise OptionsError(f'Error: Invalid "to" argument: {option.get("to")}. '
                                   "Please provide valid date string.")
            if end < start:
                raise OptionsError('Error: Invalid "to" and "from" arguments combination. '
                                   'Please provide "to" date that is later than "from" date.')


class _Filter:
    """Which recorded messages one connection's options select."""

    def __init__(self, options: list[dict[str, Any]], replay: bool) -> None:
        self.per_exchange: dict[str, tuple[set[str] | None, set[str], set[str], bool,
                                           tuple[int, int] | None]] = {}
        for o in options:
            symbols = {s.upper() for s in o.get("symbols") or []} or None
            types: set[str] = set()
            names: set[str] = set()
            for dt in o["dataTypes"]:
                if dt.startswith(("book_snapshot_", "quote", "trade_bar_")):
                    names.add(dt)  # computed types: messages carry the requested name
                else:
                    types.add(dt)
            window = None
            if replay:
                start = _iso_us(o["from"]) // _MINUTE_US * _MINUTE_US  # type: ignore[operator]
                end = -(-_iso_us(o["to"]) // _MINUTE_US) * _MINUTE_US  # type: ignore[operator]
                window = (start, end)
            # live: tardis-machine always forwards disconnects; replay: only when asked
            disconnects = not replay or bool(o.get("withDisconnectMessages"))
            self.per_exchange[o["exchange"]] = (symbols, types, names, disconnects, window)

    def __call__(self, m: Recorded) -> bool:
        spec = self.per_exchange.get(m.exchange)
        if spec is None:
            return False
        symbols, types, names, disconnects, window = spec
        if window is not None and m.local_us is not None and not (
                window[0] <= m.local_us < window[1]):
            return False
        if m.type == "disconnect":
            return disconnects
        if symbols is not None and (m.symbol or "").upper() not in symbols:
            return False
        if m.type in ("book_snapshot", "trade_bar"):
            return m.name in names
        return m.type in types


# --------------------------------------------------------------------------------------------
# server


@dataclass
class Script:
    """Faults of one connection; message counts are per connection, after filtering.

    drop_after: after this many messages close the TCP connection without a close frame
    (the client sees 1006), or with `drop_code` if set. stall_after/stall_seconds: pause
    sending; with freeze_socket the server also stops reading, so pings go unanswered.
    garbage: frames to send before the message of that index (0 = first).
    fragmented: indices of messages sent as two fragments (TEXT without FIN, then CONT),
    which RFC 6455 allows and tardis-machine never does.
    """

    drop_after: int | None = None
    drop_code: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    freeze_socket: bool = False
    garbage: Mapping[int, str | bytes] = field(default_factory=dict)
    fragmented: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for name in ("drop_after", "stall_after"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.stall_seconds < 0:
            raise ValueError("stall_seconds must be >= 0")


@dataclass
class ConnectionLog:
    """What one connection asked for and got (indices into the server's messages)."""

    path: str
    options: list[dict[str, Any]] | None = None
    sent: list[int] = field(default_factory=list)
    garbage_sent: int = 0
    ended: str = ""


class _Writer:
    """Sends text frames in chunks: one transport write per 256 frames when uncompressed.

    Frames written this way are ordinary RFC 6455 server frames (unmasked, FIN set), so the
    client sees exactly what websockets' send() would produce, at several times the rate. With
    compression negotiated, each frame goes through send() instead.
    """

    CHUNK = 256
    HIGH_WATER = 1 << 20

    def __init__(self, ws: ServerConnection, raw: bool) -> None:
        self.ws = ws
        self.raw = raw
        self.pending: list[bytes] = []

    async def add(self, payload: bytes, text: bool, fragmented: bool = False) -> None:
        if fragmented:
            half = len(payload) // 2
            if not self.raw:
                await self.ws.send([payload[:half], payload[half:]], text=text)
                return
            self._frame(payload[:half], 0x01 if text else 0x02)  # no FIN
            self._frame(payload[half:], 0x80)  # CONT + FIN
        elif not self.raw:
            await self.ws.send(payload, text=text)
            return
        else:
            self._frame(payload, 0x81 if text else 0x82)
        if len(self.pending) >= self.CHUNK:
            await self.flush()

    def _frame(self, payload: bytes, first: int) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((first, n))
        elif n < 65536:
            head = bytes((first, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, 127)) + n.to_bytes(8, "big")
        self.pending.append(head + payload)

    async def flush(self) -> None:
        if not self.pending:
            return
        transport: Any = self.ws.transport
        if self.ws.state is State.OPEN and not transport.is_closing():
            transport.write(b"".join(self.pending))
        self.pending.clear()
        while (self.ws.state is State.OPEN and not transport.is_closing()
               and transport.get_write_buffer_size() > self.HIGH_WATER):
            await asyncio.sleep(0.0005)
        await asyncio.sleep(0)  # let pings, closes and other connections through


class TardisMachineServer:
    """tardis-machine's normalized WebSocket API on a free loopback port, in its own thread.

    `with TardisMachineServer(messages) as server: ... server.url ...`; `scripts[i]` scripts
    connection i (later connections run clean). `pace` limits the send rate (messages/s).
    `close_when_done`: close with 1000 after the last message (tardis-machine does so when a
    replay ends); otherwise keep the connection open and idle.
    """

    def __init__(self, messages: Sequence[Recorded], *, scripts: Sequence[Script] = (),
                 lost_on_drop: int = 0, pace: float | None = None, close_when_done: bool = True,
                 host: str = "127.0.0.1", port: int = 0, record_sent: bool = True,
                 compression: str | None = None) -> None:
        if lost_on_drop < 0:
            raise ValueError("lost_on_drop must be >= 0")
        if pace is not None and pace <= 0:
            raise ValueError("pace must be > 0 messages/s")
        self.messages = list(messages)
        self.scripts = list(scripts)
        self.lost_on_drop = lost_on_drop
        self.pace = pace
        self.close_when_done = close_when_done
        self.record_sent = record_sent
        self.connections: list[ConnectionLog] = []
        self.refused: list[str] = []
        self._host, self._port, self._compression = host, port, compression
        self._cursors: dict[bytes, int] = {}  # live feed position per subscription
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}"

    def start(self) -> TardisMachineServer:
        self._thread = threading.Thread(target=self._run, name="tardis-machine-test-server",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test tardis-machine server did not start")
        if self._error is not None:
            raise RuntimeError(f"test tardis-machine server failed: {self._error}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> TardisMachineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, self._host, self._port,
                         process_request=self._process_request,
                         compression=self._compression, max_size=None) as server:
            self._server = server
            self._port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            for task in list(self._handlers):  # stalled handlers must not delay the close
                task.cancel()
            server.close(close_connections=True)

    # -- protocol -------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request
                         ) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path not in (LIVE_PATH, REPLAY_PATH):
            self.refused.append(f"404 {parts.path}")
            return connection.respond(HTTPStatus.NOT_FOUND, f"no endpoint {parts.path}\n")
        try:
            parse_options(parts.query)
        except KeyError as e:
            self.refused.append(f"400 {e.args[0]}")
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{e.args[0]}\n")
        except orjson.JSONDecodeError as e:
            self.refused.append(f"400 {e}")
            return connection.respond(HTTPStatus.BAD_REQUEST,
                                      f"'options' is not valid JSON: {e}\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_connection(ws)
        finally:
            self._handlers.discard(task)

    async def _serve_connection(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path if ws.request else "")
        replay = parts.path == REPLAY_PATH
        index = len(self.connections)
        conn = ConnectionLog(parts.path)
        self.connections.append(conn)
        script = self.scripts[index] if index < len(self.scripts) else Script()
        try:
            options = parse_options(parts.query)
            conn.options = options
            validate_options(options, replay)
        except OptionsError as e:
            conn.ended = f"1011 {e}"
            await ws.close(1011, str(e)[:120])
            return
        wanted = _Filter(options, replay)
        feed = orjson.dumps(options, option=orjson.OPT_SORT_KEYS)
        try:
            await self._stream(ws, conn, script, wanted, replay, feed)
        except ConnectionClosed as e:
            conn.ended = conn.ended or f"client gone ({e})"

    async def _stream(self, ws: ServerConnection, conn: ConnectionLog, script: Script,
                      wanted: _Filter, replay: bool, feed: bytes) -> None:
        messages = self.messages
        cursors = self._cursors
        out = _Writer(ws, raw=self._compression is None)
        i = 0 if replay else cursors.get(feed, 0)
        sent = 0
        stalled = False
        started = time.perf_counter()
        while i < len(messages):
            if ws.state is not State.OPEN:  # the client left: what follows was never sent
                conn.ended = conn.ended or "client gone"
                return
            m = messages[i]
            if not wanted(m):
                i += 1
                if not replay:
                    cursors[feed] = i
                continue
            if script.drop_after is not None and sent >= script.drop_after:
                if not replay:
                    cursors[feed] = min(len(messages), i + self.lost_on_drop)
                await out.flush()
                await self._drop(ws, conn, script)
                return
            if script.stall_after is not None and sent == script.stall_after and not stalled:
                stalled = True
                await out.flush()
                await self._stall(ws, conn, script)
                continue
            garbage = script.garbage.get(sent)
            if garbage is not None:
                await out.add(garbage.encode() if isinstance(garbage, str) else garbage,
                              text=isinstance(garbage, str))
                conn.garbage_sent += 1
            await out.add(m.data, text=True, fragmented=sent in script.fragmented)
            if self.record_sent:
                conn.sent.append(i)
            sent += 1
            i += 1
            if not replay:
                cursors[feed] = i
            if self.pace is not None:
                ahead = sent / self.pace - (time.perf_counter() - started)
                if ahead > 0.001:
                    await out.flush()
                    await asyncio.sleep(ahead)
        await out.flush()
        if self.close_when_done:
            conn.ended = "1000 done"
            await ws.close(1000, "WS stream-normalized finished" if not replay
                           else "WS replay-normalized finished")
        else:
            conn.ended = "idle"
            await ws.wait_closed()

    async def _drop(self, ws: ServerConnection, conn: ConnectionLog, script: Script) -> None:
        if script.drop_code is None:
            conn.ended = "dropped"
            ws.transport.close()  # flushes what was sent, then closes TCP: no close frame
        else:
            conn.ended = f"closed {script.drop_code}"
            await ws.close(script.drop_code, "test server drop")

    async def _stall(self, ws: ServerConnection, conn: ConnectionLog, script: Script) -> None:
        transport: Any = ws.transport
        if script.freeze_socket:
            transport.pause_reading()
        conn.ended = f"stalled {script.stall_seconds}s"
        try:
            await asyncio.sleep(script.stall_seconds)
        finally:
            if script.freeze_socket and not transport.is_closing():
                transport.resume_reading()
        conn.ended = ""


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a recording or synthetic trades until interrupted (for benchmarks)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl", help="normalized messages, one JSON object per line")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic trades")
    p.add_argument("--symbols", default="XBTUSD", help="comma-separated, for --synthetic")
    p.add_argument("--exchange", default="bitmex", help="for --synthetic")
    p.add_argument("--pace", type=float, default=None, help="messages per second")
    args = p.parse_args(argv)
    messages = (load_jsonl(args.jsonl) if args.jsonl else
                synthetic_trades(args.synthetic, exchange=args.exchange,
                                 symbols=args.symbols.split(",")))
    server = TardisMachineServer(messages, host=args.host, port=args.port, pace=args.pace,
                                 record_sent=False).start()
    print(f"serving {len(messages)} messages on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
