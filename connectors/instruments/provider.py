"""`LiveInstrumentProvider`: instrument definitions for trading code, current and cached.

Fed either by ccxt directly (a `CCXTAdapter`, refreshed every `refresh_interval`) or by the
registry the sidecar flow publishes to (load, then follow the event log). Reads are synchronous
dictionary lookups, safe from any thread:

    async with LiveInstrumentProvider(adapter=CCXTAdapter.create(["binanceusdm"]),
                                      exchanges=["binance-futures"]) as provider:
        btc = provider.get_instrument("binance-futures", "BTCUSDT")   # Tardis / native id
        btc = provider.get_instrument("binanceusdm", "BTC/USDT:USDT")  # ccxt
        btc.tick_size, btc.contract_size, btc.stale

Staleness: an exchange is stale when its last refresh failed, or when its definitions were
last confirmed more than `ttl` ago. Stale definitions keep being served with `stale=True`;
`get_instrument(..., allow_stale=False)` raises `StaleInstrumentError` instead, and
`status(exchange)` gives the error. An exchange that never loaded raises
`InstrumentsUnavailableError` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.instruments.ccxt_adapter import CCXTAdapter, InstrumentSyncError
from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.events import (
    InstrumentChange,
    SnapshotRejected,
    SyncStatus,
    diff_snapshot,
)
from connectors.instruments.mapper import InstrumentMapper, UnknownInstrumentError
from connectors.instruments.registry import (
    START_ID,
    InstrumentRegistry,
    RegistryError,
    latest_success,
)
from connectors.instruments.venues import (
    MARKET_TYPES,
    TARDIS_VENUES,
    ccxt_exchanges_for,
    ccxt_family,
    tardis_venue,
)

log = logging.getLogger(__name__)

Event = InstrumentChange | SyncStatus
Callback = Callable[[Event], Any]


class InstrumentsUnavailableError(LookupError):
    """No definitions are cached for an exchange (it never loaded); says why."""


class StaleInstrumentError(LookupError):
    """The cached definition is stale and the caller asked for fresh ones only."""


@dataclass(frozen=True)
class ExchangeHealth:
    """The cache's view of one Tardis exchange."""

    exchange: str
    instruments: int
    last_success: datetime | None
    last_attempt: datetime | None
    error: str | None
    stale: bool
    reason: str | None


@dataclass
class _ExchangeState:
    last_success: datetime | None = None
    last_attempt: datetime | None = None
    error: str | None = None


class Subscription:
    """A change subscription; `cancel()` ends it."""

    def __init__(self, provider: LiveInstrumentProvider, callback: Callback,
                 exchanges: frozenset[str] | None, kinds: frozenset[str] | None) -> None:
        self._provider = provider
        self.callback = callback
        self.exchanges = exchanges
        self.kinds = kinds

    def wants(self, event: Event) -> bool:
        return ((self.exchanges is None or event.exchange in self.exchanges)
                and (self.kinds is None or event.kind in self.kinds))

    def cancel(self) -> None:
        self._provider._subscriptions.discard(self)


class LiveInstrumentProvider:
    """An in-memory instrument cache with a TTL, refreshed from ccxt or a registry."""

    def __init__(
        self,
        *,
        adapter: CCXTAdapter | None = None,
        registry: InstrumentRegistry | None = None,
        exchanges: Iterable[str] | None = None,
        market_types: Iterable[str] | None = None,
        refresh_interval: float = 3600.0,
        ttl: float = 7200.0,
        max_delisted_fraction: float = 0.5,
        poll_interval: float = 1.0,
        close_adapter: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if (adapter is None) == (registry is None):
            raise ValueError("LiveInstrumentProvider needs exactly one source: adapter= (ccxt "
                             "directly) or registry= (what the sidecar flow publishes)")
        if adapter is not None and not isinstance(adapter, CCXTAdapter):
            raise TypeError(f"adapter must be a CCXTAdapter, got {type(adapter).__name__}")
        if registry is not None and not isinstance(registry, InstrumentRegistry):
            raise TypeError(f"registry must be an InstrumentRegistry, got "
                            f"{type(registry).__name__}")
        for name, value in (("refresh_interval", refresh_interval), ("ttl", ttl),
                            ("poll_interval", poll_interval)):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if ttl < refresh_interval:
            raise ValueError(f"ttl ({ttl}s) must be at least refresh_interval "
                             f"({refresh_interval}s), or every definition goes stale between "
                             "refreshes")
        if not 0.0 <= max_delisted_fraction <= 1.0:
            raise ValueError(f"max_delisted_fraction must be within [0, 1], got "
                             f"{max_delisted_fraction!r}")
        self._market_types = list(market_types) if market_types is not None else None
        if self._market_types is not None:
            unknown = set(self._market_types) - set(MARKET_TYPES)
            if unknown or not self._market_types:
                raise ValueError(f"market_types must be a non-empty subset of "
                                 f"{list(MARKET_TYPES)}, got {self._market_types!r}")
        if poll_interval > 5:
            raise ValueError(f"poll_interval must be at most 5 seconds (a blocking registry "
                             f"read must end well before the socket timeout), got "
                             f"{poll_interval!r}")
        names = list(exchanges) if exchanges is not None else None
        if names is not None:
            if not names:
                raise ValueError("exchanges must not be empty (None: every exchange the "
                                 "source has)")
            for name in names:
                tardis_venue(name)  # raises UnknownExchangeError with suggestions
        if adapter is not None:
            if names is None:
                names = [t for t, v in TARDIS_VENUES.items()
                         if _family_member(adapter, v.ccxt_exchange) is not None]
            self._groups = self._group_for_adapter(adapter, names)
        else:
            self._groups = {}
        self._exchanges: list[str] | None = names
        self.adapter = adapter
        self.registry = registry
        self.refresh_interval = float(refresh_interval)
        self.ttl = float(ttl)
        self.max_delisted_fraction = max_delisted_fraction
        self.poll_interval = float(poll_interval)
        self._close_adapter = close_adapter
        self._clock = clock or (lambda: datetime.now(UTC))
        self.mapper = InstrumentMapper()
        self._state: dict[str, _ExchangeState] = {}
        self._lock = threading.RLock()
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_event_id = START_ID
        self._started = False

    @staticmethod
    def _group_for_adapter(adapter: CCXTAdapter, names: list[str]) -> dict[str, list[str]]:
        """{ccxt id in the adapter: [Tardis exchanges it loads]}; raises if one is missing."""
        groups: dict[str, list[str]] = {}
        for ccxt_id, tardis in ccxt_exchanges_for(names).items():
            member = _family_member(adapter, ccxt_id)
            if member is None:
                raise ValueError(f"Tardis exchange(s) {', '.join(tardis)} need ccxt "
                                 f"{ccxt_id!r}, which the adapter does not have (it has "
                                 f"{', '.join(adapter.exchange_ids)})")
            groups.setdefault(member, []).extend(tardis)
        return groups

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LiveInstrumentProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the definitions once, then keep them current in a background task.

        Exchange failures do not raise here: they are recorded (see `status`) and the
        exchange's lookups raise until a refresh succeeds.
        """
        if self._started:
            raise RuntimeError("LiveInstrumentProvider already started")
        self._started = True
        if self.adapter is not None:
            await self.refresh()
            self._task = asyncio.create_task(self._refresh_loop(), name="instrument-refresh")
        else:
            await self._load_registry()
            self._task = asyncio.create_task(self._follow_loop(), name="instrument-follow")

    async def stop(self) -> None:
        """Stop refreshing (the cache stays readable) and close the ccxt clients."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.adapter is not None and self._close_adapter:
            await self.adapter.close()

    # -- reads ------------------------------------------------------------------------------

    def get_instrument(self, exchange: str, symbol: str, *,
                       allow_stale: bool = True) -> InstrumentDefinition:
        """The definition of `symbol` on `exchange`, in any naming scheme: a Tardis exchange
        with a Tardis symbol, native id or ccxt symbol, or a ccxt id with a ccxt symbol (or an
        unambiguous native id). Marked `stale` (or refused, if not `allow_stale`) when old."""
        try:
            d = self.mapper.resolve(exchange, symbol)
        except UnknownInstrumentError:
            self._raise_if_unavailable(exchange)
            raise
        last_success, reason = self._freshness(d.tardis_exchange)
        if reason is not None and not allow_stale:
            raise StaleInstrumentError(
                f"{d.tardis_exchange} {d.tardis_symbol}: cached definition is stale ({reason})")
        return d.model_copy(update={"synced_at": last_success, "stale": reason is not None})

    def list_instruments(self, exchange: str | None = None, *, type: str | None = None,
                         base: str | None = None, quote: str | None = None,
                         active: bool | None = None) -> list[InstrumentDefinition]:
        """Cached definitions (of one Tardis or ccxt exchange), filtered, sorted by key."""
        if type is not None and type not in MARKET_TYPES:
            raise ValueError(f"type must be one of {list(MARKET_TYPES)}, got {type!r}")
        out = []
        for d in self.mapper.definitions(exchange):
            if ((type is None or d.type == type) and (base is None or d.base == base)
                    and (quote is None or d.quote == quote)
                    and (active is None or d.active == active)):
                last_success, reason = self._freshness(d.tardis_exchange)
                out.append(d.model_copy(update={"synced_at": last_success,
                                                "stale": reason is not None}))
        return out

    def status(self, exchange: str) -> ExchangeHealth:
        """Freshness of one Tardis exchange's definitions."""
        tardis_venue(exchange)
        with self._lock:
            st = self._state.get(exchange, _ExchangeState())
            count = len(self.mapper.definitions(exchange))
        last_success, reason = self._freshness(exchange)
        return ExchangeHealth(exchange=exchange, instruments=count, last_success=last_success,
                              last_attempt=st.last_attempt, error=st.error,
                              stale=reason is not None, reason=reason)

    def _freshness(self, exchange: str) -> tuple[datetime | None, str | None]:
        """(last success, why it is stale or None when fresh)."""
        with self._lock:
            st = self._state.get(exchange)
            last, error = (st.last_success, st.error) if st else (None, None)
        if error is not None:
            return last, f"last refresh failed: {error}"
        if last is None:
            return None, "never synced"
        age = (self._clock() - last).total_seconds()
        if age > self.ttl:
            return last, (f"last synced {age:.0f}s ago ({last.isoformat()}), older than the "
                          f"TTL of {self.ttl:.0f}s")
        return last, None

    @property
    def exchanges(self) -> list[str]:
        """The Tardis exchanges this provider serves."""
        with self._lock:
            return list(self._exchanges or sorted(self._state))

    def _raise_if_unavailable(self, exchange: str) -> None:
        if exchange not in TARDIS_VENUES:
            return
        health = self.status(exchange)
        if health.instruments == 0 and health.last_success is None:
            raise InstrumentsUnavailableError(
                f"{exchange}: no instrument definitions are cached ({health.reason})")

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, callback: Callback, *, exchanges: Iterable[str] | None = None,
                  kinds: Iterable[str] | None = None) -> Subscription:
        """Call `callback(event)` (plain or async) for each change / status event."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        allowed = {"added", "changed", "delisted", "status"}
        kind_set = frozenset(kinds) if kinds is not None else None
        if kind_set is not None and not kind_set <= allowed:
            raise ValueError(f"kinds must be among {sorted(allowed)}, got {sorted(kind_set)}")
        sub = Subscription(self, callback, frozenset(exchanges) if exchanges else None, kind_set)
        self._subscriptions.add(sub)
        return sub

    async def changes(self, *, exchanges: Iterable[str] | None = None,
                      kinds: Iterable[str] | None = None) -> AsyncIterator[Event]:
        """Async iterator over events; it subscribes when iteration starts and unsubscribes
        when the caller stops iterating (or closes it)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        sub = self.subscribe(queue.put_nowait, exchanges=exchanges, kinds=kinds)
        try:
            while True:
                yield await queue.get()
        finally:
            sub.cancel()

    async def _notify(self, events: Iterable[Event]) -> None:
        for event in events:
            for sub in list(self._subscriptions):
                if not sub.wants(event):
                    continue
                try:
                    result = sub.callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("instrument change subscriber %r failed", sub.callback)

    # -- ccxt source -------------------------------------------------------------------------

    async def refresh(self) -> list[Event]:
        """Reload every exchange from ccxt now; returns (and publishes) the events."""
        if self.adapter is None:
            raise RuntimeError("refresh() needs a ccxt adapter; this provider follows a "
                               "registry")
        results = await asyncio.gather(*(self._refresh_one(ccxt_id, tardis)
                                         for ccxt_id, tardis in self._groups.items()))
        events = [e for group in results for e in group]
        await self._notify(events)
        return events

    async def _refresh_one(self, ccxt_id: str, tardis: list[str]) -> list[Event]:
        assert self.adapter is not None
        attempt = self._clock()
        try:
            snap = await self.adapter.load_definitions(ccxt_id, tardis_exchanges=tardis,
                                                       market_types=self._market_types)
        except InstrumentSyncError as e:
            log.warning("%s", e)
            return [self._failed(name, attempt, str(e)) for name in tardis]
        events: list[Event] = []
        for name in tardis:
            events.extend(self._apply_snapshot(name, snap.by_exchange.get(name, {}), attempt))
        return events

    def _apply_snapshot(self, exchange: str, current: dict[str, InstrumentDefinition],
                        at: datetime) -> list[Event]:
        with self._lock:
            previous = {d.tardis_symbol: d for d in self.mapper.definitions(exchange)}
            try:
                changes = diff_snapshot(exchange, previous, current, at,
                                        max_delisted_fraction=self.max_delisted_fraction)
            except SnapshotRejected as e:
                log.warning("%s", e)
                return [self._failed(exchange, at, str(e))]
            self.mapper.replace_exchange(exchange, current.values())
            st = self._state.setdefault(exchange, _ExchangeState())
            st.last_success, st.last_attempt, st.error = at, at, None
        status = SyncStatus.succeeded(exchange, at, len(current), changes)
        return [*changes, status]

    def _failed(self, exchange: str, at: datetime, error: str) -> SyncStatus:
        with self._lock:
            st = self._state.setdefault(exchange, _ExchangeState())
            st.last_attempt, st.error = at, error
            count = len(self.mapper.definitions(exchange))
        return SyncStatus(exchange=exchange, at=at, ok=False, instruments=count,
                          last_success=st.last_success, error=error)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not silently stop refreshing: log it loudly
                log.exception("instrument refresh failed unexpectedly")

    # -- registry source ---------------------------------------------------------------------

    async def _load_registry(self) -> None:
        """Read the registry's current definitions and status (events after this point are
        followed; applying one twice is harmless)."""
        registry = self.registry
        assert registry is not None

        def read() -> tuple[str, dict[str, tuple[dict[str, InstrumentDefinition],
                                                  SyncStatus | None]]]:
            last = registry.last_event_id()
            names = self._exchanges if self._exchanges is not None else registry.exchanges()
            return last, {n: (registry.load(n), registry.status(n)) for n in names}

        last_id, data = await asyncio.to_thread(read)
        with self._lock:
            self._last_event_id = last_id
            if self._exchanges is None:
                self._exchanges = sorted(data)
            for name, (defs, status) in data.items():
                self.mapper.replace_exchange(name, defs.values())
                st = self._state.setdefault(name, _ExchangeState())
                st.last_success = latest_success(status)
                st.last_attempt = status.at if status else None
                st.error = status.error if status and not status.ok else None

    async def _follow_loop(self) -> None:
        registry = self.registry
        assert registry is not None
        delay = self.poll_interval
        while True:
            try:
                batch = await asyncio.to_thread(registry.read_events, self._last_event_id,
                                                block=self.poll_interval)
            except RegistryError as e:
                self._registry_down(str(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                try:
                    await self._load_registry()  # events may have been missed meanwhile
                    delay = self.poll_interval
                except RegistryError as again:
                    self._registry_down(str(again))
                continue
            applied = [event for event_id, event in batch if self._apply_event(event_id, event)]
            await self._notify(applied)

    def _registry_down(self, error: str) -> None:
        log.warning("%s", error)
        with self._lock:
            for name in self._exchanges or []:
                self._state.setdefault(name, _ExchangeState()).error = error

    def _apply_event(self, event_id: str, event: Event) -> bool:
        with self._lock:
            self._last_event_id = event_id
            if self._exchanges is not None and event.exchange not in self._exchanges:
                return False
            if isinstance(event, SyncStatus):
                st = self._state.setdefault(event.exchange, _ExchangeState())
                st.last_attempt = event.at
                st.last_success = latest_success(event)
                st.error = None if event.ok else event.error
            elif event.kind == "delisted":
                self.mapper.remove(event.exchange, event.symbol)
            else:
                self.mapper.add(event.definition)
        return True


def _family_member(adapter: CCXTAdapter, ccxt_id: str) -> str | None:
    """The adapter's client for `ccxt_id`, or a same-venue client (binance for binanceusdm)."""
    if ccxt_id in adapter.exchange_ids:
        return ccxt_id
    family = ccxt_family(ccxt_id)
    for other in adapter.exchange_ids:
        if ccxt_family(other) == family:
            return other
    return None

