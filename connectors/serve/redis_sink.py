"""Redis serve sink: closed candles to one Redis Stream per series, plus a latest-candle hash.

`RedisServeSink` is a Bytewax `DynamicSink` over `CandleBatch` items (or keyed
`(key, CandleBatch)` items). Per series (exchange, symbol, timeframe) each candle becomes a
stream entry with ID `<interval start ms>-0` and field `d` (its JSON row), trimmed to MAXLEN
(approximately by default); the newest candle also goes to the series' `:latest` hash (see
`connectors.serve.keys`).

Idempotent: one Lua script per series appends each candle with its explicit ID; Redis refuses
an ID equal to or below the stream's top ("equal or smaller than the target stream top item"),
which the script counts as a duplicate. A replay, a Bytewax recovery or a retry after a lost
reply therefore never doubles a candle, and the latest hash only moves forward. Candles of a
series must arrive oldest first (the candle operator emits them so).

Pipelined: `write_batch` encodes and queues; a background thread sends everything queued in
one pipeline (one EVALSHA per series, one round trip per flush, not per candle), so a slow or
absent Redis never blocks the Bytewax worker. When Redis is down the thread retries with
exponential backoff and jitter, holding at most `buffer_max_rows` candles; nothing that fits
is lost. On overflow the oldest held candles are dropped, counted in `dropped_rows` and
logged at ERROR. `close()` (end of a finite flow) waits up to `close_timeout` for the buffer
to drain. Counters: `sink.stats()` / `partition.stats()` (see `connectors.serve.stats`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.serve.codec import encode_many
from connectors.serve.keys import DEFAULT_PREFIX, latest_key, stream_key
from connectors.serve.stats import SinkStats, track, unwrap
from connectors.serve.url import RedisTarget, parse_redis_url, resolve_redis_url
from operators import metrics

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

#: KEYS: stream, latest hash. ARGV: trim mode ('~' or '='), maxlen, then id, payload pairs.
#: Returns {added, duplicates}. An ID not above the stream's top is a duplicate, not an error.
APPEND_SCRIPT = """
local added, dup = 0, 0
local last_id, last_payload
for i = 3, #ARGV, 2 do
  local r = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], ARGV[i], 'd', ARGV[i + 1])
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'equal or smaller', 1, true) then
      dup = dup + 1
    else
      return redis.error_reply(r.err)
    end
  else
    added = added + 1
    last_id, last_payload = ARGV[i], ARGV[i + 1]
  end
end
if last_id then
  redis.call('HSET', KEYS[2], 'id', last_id, 'd', last_payload)
end
return {added, dup}
"""
APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()

#: Server replies (not mapped to a redis-py class) meaning "try again later", not "wrong write".
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "OOM", "BUSY", "MASTERDOWN", "TRYAGAIN",
                      "CLUSTERDOWN", "NOREPLICAS", "NOSCRIPT")


def _is_transient(err: Exception) -> bool:
    """A write error that a later retry may cure (connection, failover, memory, loading)."""
    from redis import exceptions as rex

    transient = (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError,
                 rex.OutOfMemoryError, rex.NoScriptError, rex.TryAgainError,
                 rex.ClusterDownError)
    return isinstance(err, (*transient, OSError)) or str(err).startswith(_TRANSIENT_REPLIES)


class ServeSettings(Protocol):
    """The `serve:` section of streaming.yaml (dataflows.config.ServeConfig)."""

    redis_url: str
    stream_maxlen: int
    key_prefix: str
    buffer_max_rows: int


@dataclass
class _Chunk:
    """Encoded candles of one series, oldest first, waiting to be written."""

    stream: str
    latest: str
    ids: list[str]
    payloads: list[bytes]
    nbytes: int

    def __len__(self) -> int:
        return len(self.ids)

    def drop_oldest(self, n: int) -> int:
        """Remove the `n` oldest candles; returns how many bytes went."""
        gone = sum(len(p) for p in self.payloads[:n])
        del self.ids[:n]
        del self.payloads[:n]
        self.nbytes -= gone
        return gone

    def split(self, n: int) -> _Chunk:
        """Cut off and return the `n` oldest candles as a new chunk."""
        head = _Chunk(self.stream, self.latest, self.ids[:n], self.payloads[:n], 0)
        head.nbytes = self.drop_oldest(n)
        return head


class RedisServePartition(StatelessSinkPartition[Any]):
    """One worker's writer: a queue, a flusher thread and a Redis connection."""

    transport = "redis"

    def __init__(self, sink: RedisServeSink, step_id: str, worker_index: int) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.step_id = step_id
        self.worker_index = worker_index
        self._sink = sink
        self._redact = sink.target.redactor()
        self._client: redis.Redis = redis.Redis.from_url(
            sink.target.url,
            socket_timeout=sink.socket_timeout,
            socket_connect_timeout=sink.connect_timeout,
            retry=Retry(NoBackoff(), 0),       # this class retries, with backoff and a buffer
            client_name=f"serve-sink-{step_id}-{worker_index}",
            health_check_interval=30,
        )
        self._cond = threading.Condition()
        self._queue: deque[_Chunk] = deque()
        self._queued_rows = 0
        self._inflight_rows = 0
        self._inflight_bytes = 0
        self._queued_bytes = 0
        self._stats = SinkStats()
        self._stopping = False
        self._abort = False
        self._last_overflow_log = 0.0
        self._unlogged_drops = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"redis-serve-{step_id}-{worker_index}")
        self._thread.start()
        track(self)

    # -- Bytewax API -------------------------------------------------------------------------

    def write_batch(self, items: list[Any]) -> None:
        with metrics.PROCESSING_LATENCY.time(stage="serve"):
            self._write_batch(items)

    def _write_batch(self, items: list[Any]) -> None:
        """Encode and queue candles; returns at once (the flusher thread writes them)."""
        if not self._thread.is_alive() and not self._stopping:
            raise RuntimeError("the Redis serve sink's writer thread has stopped")
        chunks = []
        candles = [cb for cb in map(unwrap, items) if len(cb)]
        for cb, encoded in zip(candles, encode_many([cb.batch for cb in candles]),
                               strict=True):
            if isinstance(encoded, ValueError):
                with self._cond:
                    self._stats.failed_rows += len(cb)
                log.error("serve sink: %d candles of %s:%s:%s cannot be written: %s",
                          len(cb), cb.exchange, cb.symbol, cb.timeframe, encoded)
                continue
            ids, payloads = encoded
            s = self._sink
            chunks.append(_Chunk(
                stream_key(s.key_prefix, cb.exchange, cb.symbol, cb.timeframe),
                latest_key(s.key_prefix, cb.exchange, cb.symbol, cb.timeframe),
                ids, payloads, sum(len(p) for p in payloads)))
        if chunks:
            # queued together, with one wake-up: the writer thread then sends them in one
            # pipeline instead of contending for the GIL while this thread still encodes
            with self._cond:
                for chunk in chunks:
                    self._enqueue(chunk)

    def close(self) -> None:
        """Drain the buffer (up to close_timeout), stop the thread, close the connection."""
        drained = self.flush(self._sink.close_timeout)
        with self._cond:
            self._stopping = True
            self._abort = True
            left = self._queued_rows + self._inflight_rows
            self._cond.notify_all()
        self._thread.join(timeout=self._sink.socket_timeout + 1)
        if not drained and left:
            with self._cond:
                left = self._queued_rows   # in-flight rows may still have gone through
                self._stats.dropped_rows += left
                self._queue.clear()
                self._queued_rows = self._queued_bytes = 0
                self._update_buffered()
            log.error("serve sink %s/%d: closed with %d candles not delivered to %s "
                      "(Redis unreachable for %.0f s)", self.step_id, self.worker_index, left,
                      self._sink.target.redacted, self._sink.close_timeout)
        self._client.close()

    # -- public helpers ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is acknowledged by Redis; False on timeout."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: not self._queued_rows and not self._inflight_rows or self._abort,
                timeout=timeout) and not (self._queued_rows or self._inflight_rows)

    def stats(self) -> SinkStats:
        with self._cond:
            return self._stats.copy()

    def __repr__(self) -> str:
        return (f"RedisServePartition({self.step_id!r}, worker={self.worker_index}, "
                f"url={self._sink.target.redacted!r})")

    # -- internals ---------------------------------------------------------------------------

    def _update_buffered(self) -> None:
        self._stats.buffered_rows = self._queued_rows + self._inflight_rows
        self._stats.buffered_bytes = self._queued_bytes + self._inflight_bytes

    def _enqueue(self, chunk: _Chunk) -> None:
        cap = self._sink.buffer_max_rows
        dropped = 0
        with self._cond:
            excess = self._queued_rows + self._inflight_rows + len(chunk) - cap
            while excess > 0 and self._queue:
                head = self._queue[0]
                n = min(excess, len(head))
                self._queued_bytes -= head.drop_oldest(n)
                self._queued_rows -= n
                dropped += n
                excess -= n
                if not len(head):
                    self._queue.popleft()
            if excess > 0:      # only in-flight rows are older: drop the oldest new ones
                n = min(excess, len(chunk))
                chunk.drop_oldest(n)
                dropped += n
            if len(chunk):
                self._queue.append(chunk)
                self._queued_rows += len(chunk)
                self._queued_bytes += chunk.nbytes
            self._stats.dropped_rows += dropped
            self._update_buffered()
            self._cond.notify_all()
            if dropped:
                self._unlogged_drops += dropped
                now = time.monotonic()
                if now - self._last_overflow_log < 5.0:
                    return
                self._last_overflow_log = now
                dropped, self._unlogged_drops = self._unlogged_drops, 0
                total = self._stats.dropped_rows
                err = self._stats.last_error
        if dropped:
            log.error("serve sink %s/%d: buffer full (%d candles held, Redis %s unreachable: "
                      "%s); DROPPED the %d oldest candles (%d dropped in total)",
                      self.step_id, self.worker_index, cap, self._sink.target.redacted, err,
                      dropped, total)

    def _take(self) -> list[_Chunk]:
        """Move up to max_rows_per_flush queued rows in flight (caller holds the lock)."""
        limit = self._sink.max_rows_per_flush
        taken: list[_Chunk] = []
        rows = 0
        while self._queue and rows < limit:
            head = self._queue[0]
            if rows + len(head) > limit:
                head = head.split(limit - rows)
            else:
                self._queue.popleft()
            taken.append(head)
            rows += len(head)
            self._queued_bytes -= head.nbytes
        self._queued_rows -= rows
        self._inflight_rows = rows
        self._inflight_bytes = sum(c.nbytes for c in taken)
        return taken

    def _probe(self) -> None:
        """PING once at start, so `connected` and a bad URL or password show up before the
        first candle closes."""
        try:
            self._client.ping()
        except Exception as e:
            reason = self._redact(f"{type(e).__name__}: {e}")
            with self._cond:
                self._stats.last_error = reason
            log.warning("serve sink %s/%d: Redis %s not reachable yet: %s", self.step_id,
                        self.worker_index, self._sink.target.redacted, reason)
            return
        with self._cond:
            self._stats.connected = True

    def _run(self) -> None:
        self._probe()
        attempt = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._abort)
                if self._abort:
                    return
                taken = self._take()
            retry, error = self._send_safely(taken)
            with self._cond:
                for c in reversed(retry):           # back to the front, oldest first
                    self._queue.appendleft(c)
                    self._queued_rows += len(c)
                    self._queued_bytes += c.nbytes
                self._inflight_rows = self._inflight_bytes = 0
                self._update_buffered()
                if retry:
                    self._stats.retries += 1
                    self._stats.connected = False
                    self._stats.last_error = error
                self._cond.notify_all()
            if not retry:
                if attempt:
                    log.warning("serve sink %s/%d: Redis %s reachable again after %d failed "
                                "attempts", self.step_id, self.worker_index,
                                self._sink.target.redacted, attempt)
                attempt = 0
                continue
            attempt += 1
            delay = min(self._sink.retry_max_delay,
                        self._sink.retry_initial_delay * 2 ** min(attempt - 1, 30))
            delay *= random.uniform(0.5, 1.0)
            level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
            log.log(level, "serve sink %s/%d: write to Redis %s failed (attempt %d, %d candles "
                    "held): %s; retrying in %.2f s", self.step_id, self.worker_index,
                    self._sink.target.redacted, attempt, self._stats.buffered_rows, error, delay)
            with self._cond:
                self._cond.wait_for(lambda: self._abort, timeout=delay)

    def _send_safely(self, taken: list[_Chunk]) -> tuple[list[_Chunk], str | None]:
        """Write chunks; returns those to retry and the (redacted) reason."""
        try:
            return self._send(taken), None
        except Exception as e:      # connection, timeout, auth, or anything unexpected
            reason = self._redact(f"{type(e).__name__}: {e}")
            from redis import exceptions as rex
            if not isinstance(e, rex.RedisError | OSError):
                log.error("serve sink %s/%d: unexpected error writing to Redis: %s",
                          self.step_id, self.worker_index, reason)
            return taken, reason

    def _send(self, taken: list[_Chunk]) -> list[_Chunk]:
        """One pipeline: one EVALSHA per series. Returns the chunks to retry."""
        from redis import exceptions as rex

        groups: dict[str, list[_Chunk]] = {}
        for c in taken:
            groups.setdefault(c.stream, []).append(c)
        pending = list(groups.values())
        loaded = False
        retry: list[_Chunk] = []
        while pending:
            pipe = self._client.pipeline(transaction=False)
            for cs in pending:
                args: list[Any] = ["~" if self._sink.approximate_trim else "=",
                                   self._sink.maxlen]
                for c in cs:
                    for id_, payload in zip(c.ids, c.payloads, strict=True):
                        args += (id_, payload)
                pipe.evalsha(APPEND_SHA, 2, cs[0].stream, cs[0].latest, *args)
            results = pipe.execute(raise_on_error=False)
            again: list[list[_Chunk]] = []
            for cs, r in zip(pending, results, strict=True):
                rows = sum(len(c) for c in cs)
                if isinstance(r, rex.NoScriptError) and not loaded:
                    again.append(cs)
                elif isinstance(r, Exception):
                    msg = self._redact(f"{type(r).__name__}: {r}")
                    if _is_transient(r):
                        retry.extend(cs)
                        with self._cond:
                            self._stats.last_error = msg
                    else:
                        with self._cond:
                            self._stats.failed_rows += rows
                            self._stats.last_error = msg
                        log.error("serve sink %s/%d: Redis refused %d candles for %s: %s",
                                  self.step_id, self.worker_index, rows, cs[0].stream, msg)
                else:
                    added, dup = int(r[0]), int(r[1])
                    with self._cond:
                        self._stats.written_rows += added
                        self._stats.duplicate_rows += dup
            if again:
                self._client.script_load(APPEND_SCRIPT)   # after a restart or SCRIPT FLUSH
                loaded = True
            pending = again
        with self._cond:
            self._stats.flushes += 1
            self._stats.connected = not retry
        return retry


class RedisServeSink(DynamicSink[Any]):
    """Bytewax sink: CandleBatch items to Redis Streams (see the module docstring).

    `redis_url`: redis://[user:password@]host:port/db, rediss://... for TLS (options such as
    ssl_ca_certs in the query), or unix://; None reads env REDIS_URL, else the default
    redis://127.0.0.1:6379/0. `maxlen`: stream length bound (serve.stream_maxlen);
    `approximate_trim`: MAXLEN ~ (cheaper; the stream may exceed maxlen by up to one
    radix-tree node, 100 entries by default) or exact. `buffer_max_rows`: candles held while
    Redis is unreachable (serve.buffer_max_rows). `max_rows_per_flush`: candles per round trip.
    """

    def __init__(self, redis_url: str | None = None, *, key_prefix: str = DEFAULT_PREFIX,
                 maxlen: int = 10_000, approximate_trim: bool = True,
                 buffer_max_rows: int = 100_000, max_rows_per_flush: int = 5_000,
                 retry_initial_delay: float = 0.1, retry_max_delay: float = 5.0,
                 close_timeout: float = 30.0, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0) -> None:
        self.target: RedisTarget = parse_redis_url(
            redis_url if redis_url is not None else resolve_redis_url())
        stream_key(key_prefix, "x", "x", "x")     # validates the prefix
        for name, value in (("maxlen", maxlen), ("buffer_max_rows", buffer_max_rows),
                            ("max_rows_per_flush", max_rows_per_flush)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, fvalue in (("retry_initial_delay", retry_initial_delay),
                             ("retry_max_delay", retry_max_delay),
                             ("socket_timeout", socket_timeout),
                             ("connect_timeout", connect_timeout)):
            if not fvalue > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {fvalue!r}")
        if retry_max_delay < retry_initial_delay:
            raise ValueError("retry_max_delay must be >= retry_initial_delay")
        if not close_timeout >= 0:
            raise ValueError(f"close_timeout must be >= 0 seconds, got {close_timeout!r}")
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.approximate_trim = approximate_trim
        self.buffer_max_rows = buffer_max_rows
        self.max_rows_per_flush = max_rows_per_flush
        self.retry_initial_delay = retry_initial_delay
        self.retry_max_delay = retry_max_delay
        self.close_timeout = close_timeout
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.partitions: list[RedisServePartition] = []

    @classmethod
    def from_config(cls, serve: ServeSettings, **overrides: Any) -> RedisServeSink:
        """From streaming.yaml's `serve:` section; env REDIS_URL overrides serve.redis_url."""
        kw: dict[str, Any] = {
            "redis_url": resolve_redis_url(serve.redis_url),
            "key_prefix": serve.key_prefix,
            "maxlen": serve.stream_maxlen,
            "buffer_max_rows": serve.buffer_max_rows,
        }
        kw.update(overrides)
        return cls(**kw)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> RedisServePartition:
        part = RedisServePartition(self, step_id, worker_index)
        self.partitions.append(part)
        return part

    def stats(self) -> SinkStats:
        """Counters summed over this sink's partitions."""
        return SinkStats.total(p.stats() for p in self.partitions)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every partition's buffer is acknowledged; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for p in self.partitions:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ok = p.flush(left) and ok
        return ok

    def __repr__(self) -> str:
        return (f"RedisServeSink(url={self.target.redacted!r}, prefix={self.key_prefix!r}, "
                f"maxlen={self.maxlen}, buffer_max_rows={self.buffer_max_rows})")


__all__ = ["APPEND_SCRIPT", "RedisServePartition", "RedisServeSink", "ServeSettings"]
