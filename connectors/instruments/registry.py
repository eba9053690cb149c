"""Where instrument definitions and change events are published: in memory or in Redis.

The sidecar flow publishes every sync's events; `LiveInstrumentProvider` can be fed from the
same registry (load the current definitions, then follow the events). One `publish` call
applies its events atomically: the definitions, the per-exchange status and the event log
change together.

Redis layout, with the default prefix `instruments` (the braces are a Redis Cluster hash tag,
so one transaction may touch every key):
- `{instruments}:defs:<tardis exchange>`: hash, Tardis symbol -> definition JSON;
- `{instruments}:status`: hash, Tardis exchange -> last `SyncStatus` JSON;
- `{instruments}:events`: stream of events, field `e` = event JSON, trimmed to about
  `events_maxlen` entries.

The API is synchronous (the Bytewax sink is); async callers run it in a worker thread.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.events import (
    InstrumentChange,
    SyncStatus,
    event_from_json,
    event_to_json,
)

Event = InstrumentChange | SyncStatus
EVENT_FIELD = "e"
START_ID = "0-0"


class RegistryError(RuntimeError):
    """The registry cannot be used (unreachable Redis, unreadable data); says which and why."""


def redact(url: str) -> str:
    """A Redis URL without its password, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}" if user else f"***@{host}",
                       parts.path, "", ""))


def _check_events(events: Sequence[Event]) -> None:
    for e in events:
        if not isinstance(e, InstrumentChange | SyncStatus):
            raise TypeError(f"registry events must be InstrumentChange or SyncStatus, got "
                            f"{type(e).__name__}")


class InstrumentRegistry(ABC):
    """Current definitions per Tardis exchange, their sync status, and an event log."""

    @abstractmethod
    def load(self, exchange: str) -> dict[str, InstrumentDefinition]:
        """The current definitions of one Tardis exchange, keyed by Tardis symbol."""

    @abstractmethod
    def status(self, exchange: str) -> SyncStatus | None:
        """The last sync status of one Tardis exchange (None if it never synced)."""

    @abstractmethod
    def exchanges(self) -> list[str]:
        """Tardis exchanges that have definitions or a status here."""

    @abstractmethod
    def publish(self, events: Sequence[Event]) -> None:
        """Apply events (added/changed set, delisted removes, status replaces) and append
        them to the event log, atomically."""

    @abstractmethod
    def last_event_id(self) -> str:
        """The id of the newest event ("0-0" when there is none)."""

    @abstractmethod
    def read_events(self, after: str, *, block: float | None = None,
                    count: int = 1000) -> list[tuple[str, Event]]:
        """Events newer than id `after`, oldest first; waits up to `block` seconds for one."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release in memory
        """Release connections (nothing to do in memory)."""
        return None


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return (int(ms), int(seq or 0))


class MemoryRegistry(InstrumentRegistry):
    """A process-local registry (embedded runs and tests); thread-safe, bounded event log."""

    def __init__(self, events_maxlen: int = 10_000) -> None:
        if not isinstance(events_maxlen, int) or events_maxlen < 1:
            raise ValueError(f"events_maxlen must be a positive integer, got {events_maxlen!r}")
        self._defs: dict[str, dict[str, InstrumentDefinition]] = {}
        self._status: dict[str, SyncStatus] = {}
        self._events: deque[tuple[str, Event]] = deque(maxlen=events_maxlen)
        self._seq = 0
        self._cond = threading.Condition()

    def load(self, exchange: str) -> dict[str, InstrumentDefinition]:
        with self._cond:
            return dict(self._defs.get(exchange, {}))

    def status(self, exchange: str) -> SyncStatus | None:
        with self._cond:
            return self._status.get(exchange)

    def exchanges(self) -> list[str]:
        with self._cond:
            return sorted(set(self._defs) | set(self._status))

    def publish(self, events: Sequence[Event]) -> None:
        _check_events(events)
        with self._cond:
            for event in events:
                _apply(self._defs, self._status, event)
                self._seq += 1
                self._events.append((f"{self._seq}-0", event))
            self._cond.notify_all()

    def last_event_id(self) -> str:
        with self._cond:
            return self._events[-1][0] if self._events else START_ID

    def read_events(self, after: str, *, block: float | None = None,
                    count: int = 1000) -> list[tuple[str, Event]]:
        after_key = _id_key(after)
        with self._cond:
            def newer() -> list[tuple[str, Event]]:
                return [(i, e) for i, e in self._events if _id_key(i) > after_key][:count]

            found = newer()
            if not found and block:
                self._cond.wait_for(lambda: bool(newer()), timeout=block)
                found = newer()
            return found

    def events(self) -> list[Event]:
        """Every event still in the log, oldest first."""
        with self._cond:
            return [e for _, e in self._events]


def _apply(defs: dict[str, dict[str, InstrumentDefinition]], status: dict[str, SyncStatus],
           event: Event) -> None:
    if isinstance(event, SyncStatus):
        status[event.exchange] = event
    elif event.kind == "delisted":
        defs.get(event.exchange, {}).pop(event.symbol, None)
    else:
        defs.setdefault(event.exchange, {})[event.symbol] = event.definition


class RedisRegistry(InstrumentRegistry):
    """The registry in Redis (layout in the module docstring); `client` may be injected."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "instruments",
                 events_maxlen: int = 10_000, client: Any = None,
                 socket_timeout: float = 10.0) -> None:
        if not prefix or any(c in prefix for c in "{} \t\n"):
            raise ValueError(f"prefix must be non-empty without braces or spaces, got "
                             f"{prefix!r}")
        if not isinstance(events_maxlen, int) or events_maxlen < 1:
            raise ValueError(f"events_maxlen must be a positive integer, got {events_maxlen!r}")
        if client is None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got "
                             f"{redact(url)!r}")
        self.url = url
        self.prefix = prefix
        self.events_maxlen = events_maxlen
        self._socket_timeout = socket_timeout
        self._client = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisRegistry({redact(self.url)!r}, prefix={self.prefix!r})"

    # keys
    def defs_key(self, exchange: str) -> str:
        return f"{{{self.prefix}}}:defs:{exchange}"

    @property
    def status_key(self) -> str:
        return f"{{{self.prefix}}}:status"

    @property
    def events_key(self) -> str:
        return f"{{{self.prefix}}}:events"

    @property
    def client(self) -> Any:
        """The redis-py client, created on first use (so building a flow does not connect)."""
        with self._lock:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=self._socket_timeout,
                    socket_connect_timeout=self._socket_timeout, health_check_interval=30)
            return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise RegistryError(f"instrument registry at {redact(self.url)}: {what} failed: "
                                f"{type(e).__name__}: {e}") from e

    def load(self, exchange: str) -> dict[str, InstrumentDefinition]:
        raw = self._call("reading definitions", self.client.hgetall, self.defs_key(exchange))
        out: dict[str, InstrumentDefinition] = {}
        for symbol, text in raw.items():
            name = symbol.decode() if isinstance(symbol, bytes) else symbol
            try:
                out[name] = InstrumentDefinition.from_json(text)
            except ValueError as e:
                raise RegistryError(f"{self.defs_key(exchange)} {name}: unreadable definition: "
                                    f"{e}") from None
        return out

    def status(self, exchange: str) -> SyncStatus | None:
        text = self._call("reading status", self.client.hget, self.status_key, exchange)
        if text is None:
            return None
        event = event_from_json(text)
        return event if isinstance(event, SyncStatus) else None

    def exchanges(self) -> list[str]:
        names = set()
        pattern = f"{{{self.prefix}}}:defs:*"
        for key in self._call("listing exchanges", self.client.scan_iter, match=pattern):
            k = key.decode() if isinstance(key, bytes) else key
            names.add(k.split(":defs:", 1)[1])
        for key in self._call("listing exchanges", self.client.hkeys, self.status_key):
            names.add(key.decode() if isinstance(key, bytes) else key)
        return sorted(names)

    def publish(self, events: Sequence[Event]) -> None:
        _check_events(events)
        if not events:
            return
        pipe = self.client.pipeline(transaction=True)
        for event in events:
            payload = event_to_json(event)
            if isinstance(event, SyncStatus):
                pipe.hset(self.status_key, event.exchange, payload)
            elif event.kind == "delisted":
                pipe.hdel(self.defs_key(event.exchange), event.symbol)
            else:
                pipe.hset(self.defs_key(event.exchange), event.symbol, event.definition.to_json())
            pipe.xadd(self.events_key, {EVENT_FIELD: payload}, maxlen=self.events_maxlen,
                      approximate=True)
        self._call("publishing events", pipe.execute)

    def last_event_id(self) -> str:
        entries = self._call("reading the event log", self.client.xrevrange, self.events_key,
                             count=1)
        if not entries:
            return START_ID
        entry_id = entries[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def read_events(self, after: str, *, block: float | None = None,
                    count: int = 1000) -> list[tuple[str, Event]]:
        block_ms = int(block * 1000) if block else None
        reply = self._call("reading the event log", self.client.xread,
                           {self.events_key: after}, count=count, block=block_ms)
        out: list[tuple[str, Event]] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                payload = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
                if payload is None:
                    raise RegistryError(f"{self.events_key} entry {eid} has no {EVENT_FIELD!r} "
                                        "field")
                out.append((eid, event_from_json(payload)))
        return out

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def latest_success(status: SyncStatus | None) -> datetime | None:
    """When the exchange last synced successfully, from its status."""
    if status is None:
        return None
    return status.at if status.ok else status.last_success
