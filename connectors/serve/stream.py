"""`LiveFeatureStream`: closed candles with features, for downstream trading services.

    async with LiveFeatureStream(symbol="BTCUSDT", timeframe="1m", exchange="binance",
                                 transport="redis", start="latest") as stream:
        async for candle in stream:
            candle["close"], candle["timestamp"], candle["hft_features"]["rsi_14"], ...

Each item is a candle_with_features dict (see `connectors.serve.codec.decode_candle`): the
candle columns (timestamps as timezone-aware UTC datetimes, or ISO strings with
`timestamps="iso"`), `hft_features` (the feature columns plus vwap and trade_count) and
`stream_id`, the entry ID (`<interval start ms>-0`).

`start`: "latest" (only candles closed after the stream opens), "beginning" (the oldest candle
still held, then onwards) or an entry ID such as a saved `stream_id` (the candles after it).
The position is fixed when the stream opens ("latest" becomes the stream's top ID), so nothing
is skipped between opening and the first read.

Redis transport: XREAD BLOCK from the last entry ID read. A lost connection or a Redis restart
is retried with exponential backoff and jitter (forever unless `max_reconnect_attempts`),
then reading resumes after the last ID already read: no candle is lost or repeated, provided
the entries are still in the stream (Redis persistence on, and the consumer not further
behind than the stream's MAXLEN; a candle trimmed before it was read is reported at ERROR
and counted in `trimmed_gaps`). Memory transport: the same semantics over a
`connectors.serve.memory.MemoryBroker` fed by `MemoryServeSink` in the same process.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from connectors.serve.codec import Timestamps, decode_candle
from connectors.serve.keys import (
    DEFAULT_PREFIX,
    ID_FIELD,
    PAYLOAD_FIELD,
    EntryPos,
    exchange_of,
    format_id,
    latest_key,
    parse_id,
    stream_key,
    stream_pattern,
    timeframe_ms,
)
from connectors.serve.memory import MemoryBroker, default_broker
from connectors.serve.url import RedisTarget, parse_redis_url, resolve_redis_url

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

Transport = Literal["redis", "memory"]
T = TypeVar("T")
_PAYLOAD = PAYLOAD_FIELD.encode()


class LiveFeatureStream:
    """Async context manager and async iterator over one series' closed candles.

    Parameters: `symbol`, `timeframe` ("1m", ...), `exchange` (None: the only exchange that
    has a stream for this symbol and timeframe, else LookupError/ValueError at open);
    `transport` "redis" or "memory"; `redis_url` (None: env REDIS_URL, else
    redis://127.0.0.1:6379/0); `start` "latest" | "beginning" | an entry ID; `key_prefix`
    (serve.key_prefix); `timestamps` "datetime" | "iso"; `block_ms` (longest single wait);
    `count` (entries per read); `broker` (memory transport; default: the process-wide one).
    """

    def __init__(self, symbol: str, timeframe: str, exchange: str | None = None, *,
                 transport: Transport = "redis", redis_url: str | None = None,
                 start: str = "latest", key_prefix: str = DEFAULT_PREFIX,
                 timestamps: Timestamps = "datetime", block_ms: int = 1000, count: int = 500,
                 broker: MemoryBroker | None = None, reconnect_initial_delay: float = 0.05,
                 reconnect_max_delay: float = 5.0, max_reconnect_attempts: int | None = None,
                 connect_timeout: float = 2.0) -> None:
        if transport not in ("redis", "memory"):
            raise ValueError(f"transport must be 'redis' or 'memory', got {transport!r}")
        if timestamps not in ("datetime", "iso"):
            raise ValueError(f"timestamps must be 'datetime' or 'iso', got {timestamps!r}")
        stream_pattern(key_prefix, symbol, timeframe)          # validates the names
        if exchange is not None:
            stream_key(key_prefix, exchange, symbol, timeframe)
        if start not in ("latest", "beginning", "$"):
            parse_id(start)                                    # raises on a bad ID
        for name, value in (("block_ms", block_ms), ("count", count)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < reconnect_initial_delay <= reconnect_max_delay:
            raise ValueError("need 0 < reconnect_initial_delay <= reconnect_max_delay")
        if max_reconnect_attempts is not None and max_reconnect_attempts < 0:
            raise ValueError("max_reconnect_attempts must be >= 0 or None (forever)")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self.symbol = symbol
        self.timeframe = timeframe
        self.exchange = exchange
        self.transport: Transport = transport
        self.start = start
        self.key_prefix = key_prefix
        self.timestamps: Timestamps = timestamps
        self.block_ms = block_ms
        self.count = count
        self.reconnect_initial_delay = reconnect_initial_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.max_reconnect_attempts = max_reconnect_attempts
        self.connect_timeout = connect_timeout
        self.target: RedisTarget | None = None
        if transport == "redis":
            self.target = parse_redis_url(redis_url if redis_url is not None
                                          else resolve_redis_url())
        self._redact = self.target.redactor() if self.target else (lambda s: str(s))
        self.broker = (broker if broker is not None else default_broker()) \
            if transport == "memory" else broker
        self._client: redis.asyncio.Redis | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._key: str | None = None
        self._pos: EntryPos = (0, 0)          # last entry read from the transport
        self._pending: deque[tuple[str, bytes]] = deque()
        self._opened = False
        self._closed = False
        self._failures = 0
        self._tf_ms = timeframe_ms(timeframe)
        #: ID of the last candle yielded (pass it as `start=` to resume in a new process).
        self.last_id: str | None = None
        #: candles yielded; successful recoveries after a lost connection; trimmed stretches.
        self.yielded = 0
        self.reconnects = 0
        self.trimmed_gaps = 0

    @classmethod
    def from_config(cls, serve: Any, symbol: str, timeframe: str, exchange: str | None = None,
                    **kw: Any) -> LiveFeatureStream:
        """From streaming.yaml's `serve:` section (transport, redis_url, key_prefix); env
        REDIS_URL overrides serve.redis_url."""
        opts: dict[str, Any] = {"transport": serve.transport, "key_prefix": serve.key_prefix}
        if serve.transport == "redis":
            opts["redis_url"] = resolve_redis_url(serve.redis_url)
        opts.update(kw)
        return cls(symbol, timeframe, exchange, **opts)

    # -- context manager and iterator --------------------------------------------------------

    async def __aenter__(self) -> LiveFeatureStream:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> LiveFeatureStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        if not self._opened:
            await self.open()
        while not self._pending:
            try:
                await self._fill()
            except Exception:
                if self._closed:        # aclose() from another task ends the iteration
                    raise StopAsyncIteration from None
                raise
            if self._closed:
                raise StopAsyncIteration
        entry_id, payload = self._pending.popleft()
        row = decode_candle(entry_id, payload, self.timestamps)
        self.last_id = entry_id
        self.yielded += 1
        return row

    async def open(self) -> None:
        """Connect, pick the exchange if not given, and fix the start position."""
        if self._opened:
            return
        if self._closed:
            raise RuntimeError("this LiveFeatureStream is closed")
        if self.transport == "redis":
            self._client = self._make_client()
        if self.exchange is None:
            self.exchange = await self._retrying(self._find_exchange)
        self._key = stream_key(self.key_prefix, self.exchange, self.symbol, self.timeframe)
        if self.start in ("latest", "$"):
            self._pos = await self._retrying(self._top)
        elif self.start == "beginning":
            self._pos = (0, 0)
        else:
            self._pos = parse_id(self.start)
        self._opened = True
        log.debug("LiveFeatureStream %s opened at %s", self._describe(), format_id(self._pos))

    async def aclose(self) -> None:
        """Close the connection; iteration then stops."""
        self._closed = True
        if self._waiter is not None:
            self._waiter.cancel()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def latest(self) -> dict[str, Any] | None:
        """The newest candle of the series (from the latest hash), or None; does not move the
        iteration position."""
        if not self._opened:
            await self.open()
        assert self.exchange is not None and self._key is not None
        if self.transport == "memory":
            got = self._memory().latest(self._key)
            return decode_candle(got[0], got[1], self.timestamps) if got else None
        key = latest_key(self.key_prefix, self.exchange, self.symbol, self.timeframe)

        async def fetch() -> list[Any]:
            return list(await self._redis().hmget(key, [ID_FIELD, PAYLOAD_FIELD]))
        id_, payload = await self._retrying(fetch)
        if id_ is None or payload is None:
            return None
        return decode_candle(id_.decode(), payload, self.timestamps)

    @property
    def position(self) -> str:
        """The entry ID after which the next read starts (read, not necessarily yielded)."""
        return format_id(self._pos)

    def __repr__(self) -> str:
        where = self.target.redacted if self.target else "memory"
        return (f"LiveFeatureStream({self._describe()}, transport={self.transport!r}, "
                f"at={where!r}, last_id={self.last_id!r})")

    # -- internals ---------------------------------------------------------------------------

    def _describe(self) -> str:
        return f"{self.exchange or '*'}:{self.symbol}:{self.timeframe}"

    def _make_client(self) -> redis.asyncio.Redis:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert self.target is not None
        return redis.asyncio.Redis.from_url(
            self.target.url,
            socket_timeout=self.block_ms / 1000 + 10,
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),      # this class retries, resuming from its position
            decode_responses=False,
            health_check_interval=30,
        )

    def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("this LiveFeatureStream is closed")
        return self._client

    def _memory(self) -> MemoryBroker:
        assert self.broker is not None
        return self.broker

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op`, retrying lost connections with backoff until it succeeds."""
        if self.transport == "memory":
            return await op()
        from redis import exceptions as rex

        while True:
            try:
                result = await op()
            except (rex.AuthenticationError, rex.AuthorizationError):
                raise
            except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
                if self._closed:
                    raise
                await self._backoff(e)
                continue
            if self._failures:
                self.reconnects += 1
                log.warning("LiveFeatureStream %s: reconnected to %s after %d failed attempts;"
                            " resuming after %s", self._describe(),
                            self.target.redacted if self.target else "", self._failures,
                            format_id(self._pos))
                self._failures = 0
            return result

    async def _backoff(self, err: BaseException) -> None:
        self._failures += 1
        reason = self._redact(f"{type(err).__name__}: {err}")
        limit = self.max_reconnect_attempts
        if limit is not None and self._failures > limit:
            raise ConnectionError(
                f"LiveFeatureStream {self._describe()}: Redis "
                f"{self.target.redacted if self.target else ''} unreachable after "
                f"{self._failures} attempts: {reason}") from None
        delay = min(self.reconnect_max_delay,
                    self.reconnect_initial_delay * 2 ** min(self._failures - 1, 30))
        delay *= random.uniform(0.5, 1.0)
        level = logging.WARNING if self._failures == 1 or self._failures % 10 == 0 \
            else logging.DEBUG
        log.log(level, "LiveFeatureStream %s: Redis read failed (attempt %d): %s; retrying in "
                "%.2f s from %s", self._describe(), self._failures, reason, delay,
                format_id(self._pos))
        if self._client is not None:
            # drop broken sockets now, so the retry opens a fresh connection
            await self._client.connection_pool.disconnect(inuse_connections=True)
        await asyncio.sleep(delay)

    async def _find_exchange(self) -> str:
        if self.transport == "memory":
            head, tail = f"{self.key_prefix}:{{", f":{self.symbol}:{self.timeframe}}}:stream"
            keys = [k for k in self._memory().streams()
                    if k.startswith(head) and k.endswith(tail)
                    and ":" not in k[len(head):-len(tail)]]
        else:
            pattern = stream_pattern(self.key_prefix, self.symbol, self.timeframe)
            keys = [k.decode() async for k in
                    self._redis().scan_iter(match=pattern, count=1000, _type="STREAM")]
        exchanges = sorted({exchange_of(k, self.key_prefix) for k in keys})
        if not exchanges:
            raise LookupError(
                f"no {self.transport} stream for {self.symbol} {self.timeframe} under prefix "
                f"{self.key_prefix!r} yet; pass exchange=... to wait for one")
        if len(exchanges) > 1:
            raise ValueError(f"{self.symbol} {self.timeframe} is served for several exchanges "
                             f"({', '.join(exchanges)}); pass exchange=...")
        return exchanges[0]

    async def _top(self) -> EntryPos:
        assert self._key is not None
        if self.transport == "memory":
            return self._memory().top(self._key)
        info = await self._xinfo()
        top = info.get("last-generated-id") if info else None
        return parse_id(top) if top else (0, 0)

    async def _xinfo(self) -> dict[str, Any] | None:
        from redis import exceptions as rex

        assert self._key is not None
        try:
            return dict(await self._redis().xinfo_stream(self._key))
        except rex.ResponseError as e:
            if "no such key" in str(e).lower():
                return None
            raise

    async def _fill(self) -> None:
        """Read the next entries after the current position into the pending queue."""
        assert self._key is not None
        if self.transport == "memory":
            broker = self._memory()
            got = broker.read_after(self._key, self._pos, self.count)
            if not got:
                self._waiter = asyncio.ensure_future(
                    broker.wait(self._key, self._pos, self.block_ms / 1000))
                try:
                    await self._waiter
                except asyncio.CancelledError:
                    if not self._closed:        # our own task was cancelled
                        raise
                finally:
                    self._waiter = None
                return
        else:
            key, pos = self._key, format_id(self._pos)

            async def read() -> Any:
                return await self._redis().xread({key: pos}, count=self.count,
                                                 block=self.block_ms)
            reply = await self._retrying(read)
            got = []
            streams = reply.items() if isinstance(reply, dict) else (reply or [])
            for _, entries in streams:
                for eid, fields in entries:
                    got.append((eid.decode() if isinstance(eid, bytes) else eid,
                                fields[_PAYLOAD]))
            if not got:
                return
        before, first = self._pos, parse_id(got[0][0])
        self._pending.extend(got)
        self._pos = parse_id(got[-1][0])
        if before != (0, 0) and first[0] - before[0] != self._tf_ms:
            await self._check_trimmed(before, first)

    async def _check_trimmed(self, before: EntryPos, first_read: EntryPos) -> None:
        """After a jump of more than one interval: say loudly if the stream had been trimmed
        past our position (MAXLEN), i.e. candles between `before` and `first_read` may be
        lost. A jump with `before` still in the stream is a real gap (skipped intervals)."""
        assert self._key is not None
        deleted: EntryPos = (0, 0)
        if self.transport == "memory":
            oldest = self._memory().first(self._key)
        else:
            info = await self._retrying(self._xinfo)
            if not info:
                return
            entry = info.get("first-entry")
            oldest = parse_id(entry[0]) if entry else None
            raw = info.get("max-deleted-entry-id")           # XDEL'd entries, Redis >= 7
            deleted = parse_id(raw) if raw else (0, 0)
        if (oldest is not None and before < oldest) or before < deleted < first_read:
            self.trimmed_gaps += 1
            log.error("LiveFeatureStream %s: the stream was trimmed past this consumer's "
                      "position; candles after %s and before %s may be lost (raise "
                      "serve.stream_maxlen or read faster)", self._describe(),
                      format_id(before), format_id(first_read))
