"""`CCXTAdapter`: ccxt exchange clients with rate limits, retries and clear errors.

The adapter takes ready ccxt instances, sync (`ccxt.binance()`) or async
(`ccxt.async_support.binance()`), so callers and tests can inject their own; `create()` builds
async ones. Per exchange it:
- keeps ccxt's own request rate limiter on (`enableRateLimit`) and spaces whole market loads at
  least `min_interval` seconds apart;
- retries transient failures (ccxt `OperationFailed`: network errors, timeouts, rate limiting,
  maintenance, garbled responses) with exponential backoff and jitter;
- raises `ExchangeUnavailableError` naming the exchange, the attempts and the last error when
  the retries are spent, and `InstrumentSyncError` at once for errors a retry cannot fix.
Other exceptions (bugs) propagate unchanged.

A sync client's blocking `load_markets` runs in a worker thread, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.instruments.definition import DefinitionError, InstrumentDefinition
from connectors.instruments.venues import (
    MARKET_TYPES,
    UnmappedMarketError,
    ccxt_family,
    ccxt_fetch_types,
    tardis_venue,
)

log = logging.getLogger(__name__)


class InstrumentSyncError(RuntimeError):
    """Loading an exchange's instruments failed; the message says which exchange and why."""

    def __init__(self, message: str, *, exchange: str) -> None:
        super().__init__(message)
        self.exchange = exchange


class ExchangeUnavailableError(InstrumentSyncError):
    """The exchange could not be reached (or kept failing) through every retry."""

    def __init__(self, message: str, *, exchange: str, attempts: int,
                 last_error: BaseException | None) -> None:
        super().__init__(message, exchange=exchange)
        self.attempts = attempts
        self.last_error = last_error


@dataclass(frozen=True)
class MarketsSnapshot:
    """One `load_markets(reload=True)` result."""

    ccxt_exchange: str
    markets: Mapping[str, Mapping[str, Any]]
    precision_mode: int
    fetched_at: datetime


@dataclass
class DefinitionsSnapshot:
    """Definitions of one ccxt load, grouped by Tardis exchange (then keyed by Tardis symbol).

    `skipped` lists (ccxt symbol, reason) for markets that are not instruments of the requested
    Tardis exchanges or could not be read.
    """

    ccxt_exchange: str
    fetched_at: datetime
    by_exchange: dict[str, dict[str, InstrumentDefinition]]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def definitions_from_markets(
    ccxt_exchange: str,
    markets: Mapping[str, Mapping[str, Any]],
    precision_mode: int | str,
    *,
    tardis_exchanges: Iterable[str] | None = None,
    market_types: Iterable[str] | None = None,
) -> tuple[list[InstrumentDefinition], list[tuple[str, str]]]:
    """Definitions of the ccxt markets that belong to `tardis_exchanges` (default: any) and
    `market_types` (default: all), plus (symbol, reason) for each market left out."""
    wanted_exchanges = set(tardis_exchanges) if tardis_exchanges is not None else None
    wanted_types = set(market_types) if market_types is not None else set(MARKET_TYPES)
    unknown = wanted_types - set(MARKET_TYPES)
    if unknown:
        raise ValueError(f"unknown market types {sorted(unknown)}; known: {list(MARKET_TYPES)}")
    defs: list[InstrumentDefinition] = []
    skipped: list[tuple[str, str]] = []
    for symbol, market in markets.items():
        try:
            d = InstrumentDefinition.from_ccxt_market(market, ccxt_exchange=ccxt_exchange,
                                                      precision_mode=precision_mode)
        except UnmappedMarketError as e:
            skipped.append((symbol, str(e)))
            continue
        except DefinitionError as e:
            log.warning("skipping malformed market: %s", e)
            skipped.append((symbol, str(e)))
            continue
        if wanted_exchanges is not None and d.tardis_exchange not in wanted_exchanges:
            skipped.append((symbol, f"belongs to {d.tardis_exchange}, not requested"))
        elif d.type not in wanted_types:
            skipped.append((symbol, f"market type {d.type} not requested"))
        else:
            defs.append(d)
    return defs, skipped


class CCXTAdapter:
    """ccxt clients keyed by their id, with spacing, retries and clear failures."""

    def __init__(
        self,
        exchanges: Iterable[Any] | Mapping[str, Any],
        *,
        max_retries: int = 3,
        retry_initial_delay: float = 1.0,
        retry_max_delay: float = 30.0,
        min_interval: float = 1.0,
        timeout: float | None = 60.0,
        jitter: float = 0.1,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        items: list[tuple[Any, Any]] = (
            list(exchanges.items()) if isinstance(exchanges, Mapping)
            else [(getattr(e, "id", None), e) for e in exchanges])
        if not items:
            raise ValueError("CCXTAdapter needs at least one ccxt exchange instance")
        self._exchanges: dict[str, Any] = {}
        for key, exchange in items:
            if not callable(getattr(exchange, "load_markets", None)) or not hasattr(
                    exchange, "precisionMode"):
                raise TypeError(f"expected a ccxt exchange instance, got "
                                f"{type(exchange).__name__}")
            if not isinstance(key, str) or key != exchange.id:
                raise ValueError(f"exchange key {key!r} does not match the instance's id "
                                 f"{exchange.id!r}")
            ccxt_family(key)  # raises for an unsupported exchange
            if key in self._exchanges:
                raise ValueError(f"two instances of ccxt exchange {key!r}")
            if hasattr(exchange, "enableRateLimit"):
                exchange.enableRateLimit = True
            self._exchanges[key] = exchange
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        for name, value in (("retry_initial_delay", retry_initial_delay),
                            ("retry_max_delay", retry_max_delay), ("min_interval", min_interval),
                            ("jitter", jitter)):
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if retry_max_delay < retry_initial_delay:
            raise ValueError("retry_max_delay must be >= retry_initial_delay")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        self.max_retries = max_retries
        self.retry_initial_delay = float(retry_initial_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.min_interval = float(min_interval)
        self.timeout = timeout
        self.jitter = float(jitter)
        self._sleep = sleep or asyncio.sleep
        self._last_start: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._random = random.Random()

    @classmethod
    def create(cls, ccxt_ids: Iterable[str], *, tardis_exchanges: Iterable[str] = (),
               ccxt_config: Mapping[str, Mapping[str, Any]] | None = None,
               timeout: float | None = 60.0, load_currencies: bool = False,
               **kwargs: Any) -> CCXTAdapter:
        """Async ccxt clients for `ccxt_ids`, narrowed to the markets the Tardis exchanges need
        (`options.fetchMarkets.types`); `ccxt_config` adds constructor settings per id.

        Unless `load_currencies`, `load_markets` skips ccxt's currency listing (a second
        request per sync that instrument definitions do not use)."""
        import ccxt.async_support as ccxt_async

        tardis = list(tardis_exchanges)
        instances = []
        for ccxt_id in ccxt_ids:
            ccxt_family(ccxt_id)
            config: dict[str, Any] = {"enableRateLimit": True}
            if timeout is not None:
                config["timeout"] = int(timeout * 1000)
            mine = [t for t in tardis if tardis_venue(t).ccxt_exchange == ccxt_id]
            types = ccxt_fetch_types(mine) if mine else None
            if types:
                config["options"] = {"fetchMarkets": {"types": types}}
            for key, value in (ccxt_config or {}).get(ccxt_id, {}).items():
                if key == "options" and isinstance(value, Mapping):
                    config.setdefault("options", {}).update(value)
                else:
                    config[key] = value
            instance = getattr(ccxt_async, ccxt_id)(config)
            if not load_currencies:
                instance.has["fetchCurrencies"] = False
            instances.append(instance)
        return cls(instances, timeout=timeout, **kwargs)

    @property
    def exchange_ids(self) -> list[str]:
        return list(self._exchanges)

    def exchange(self, ccxt_id: str) -> Any:
        """The ccxt instance for an id; raises a clear KeyError for others."""
        try:
            return self._exchanges[ccxt_id]
        except KeyError:
            raise KeyError(f"this CCXTAdapter has no ccxt exchange {ccxt_id!r}; it has "
                           f"{', '.join(self._exchanges)}") from None

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): doubling, capped, jittered."""
        base = min(self.retry_max_delay, self.retry_initial_delay * 2 ** (attempt - 1))
        return base * (1.0 + self.jitter * self._random.random())

    async def load_markets(self, ccxt_id: str) -> MarketsSnapshot:
        """`load_markets(reload=True)` with spacing and retries; see the module docstring."""
        import ccxt

        exchange = self.exchange(ccxt_id)
        lock = self._locks.setdefault(ccxt_id, asyncio.Lock())
        async with lock:
            started = time.monotonic()
            last_error: BaseException | None = None
            attempts = 0
            for attempt in range(self.max_retries + 1):
                if attempt:
                    delay = self.backoff_delay(attempt)
                    log.info("%s: retry %d/%d in %.2fs after %s", ccxt_id, attempt,
                             self.max_retries, delay, _describe(last_error))
                    await self._sleep(delay)
                await self._space(ccxt_id)
                attempts += 1
                try:
                    markets = await self._load_once(exchange)
                except (ccxt.OperationFailed, TimeoutError) as e:
                    last_error = e
                    continue
                except ccxt.BaseError as e:
                    raise InstrumentSyncError(
                        f"{ccxt_id}: loading markets failed with an error a retry cannot fix: "
                        f"{_describe(e)}", exchange=ccxt_id) from e
                if not isinstance(markets, Mapping):
                    raise InstrumentSyncError(
                        f"{ccxt_id}: load_markets returned {type(markets).__name__}, not a dict",
                        exchange=ccxt_id)
                return MarketsSnapshot(ccxt_exchange=ccxt_id, markets=markets,
                                       precision_mode=int(exchange.precisionMode),
                                       fetched_at=datetime.now(UTC))
            elapsed = time.monotonic() - started
            raise ExchangeUnavailableError(
                f"{ccxt_id}: exchange unreachable after {attempts} attempt"
                f"{'s' if attempts != 1 else ''} in {elapsed:.1f}s; last error: "
                f"{_describe(last_error)}",
                exchange=ccxt_id, attempts=attempts, last_error=last_error)

    async def load_definitions(self, ccxt_id: str, *, tardis_exchanges: Iterable[str],
                               market_types: Iterable[str] | None = None) -> DefinitionsSnapshot:
        """Load the markets of one ccxt client and convert those of `tardis_exchanges`."""
        wanted = list(tardis_exchanges)
        for name in wanted:
            venue = tardis_venue(name)
            if ccxt_family(venue.ccxt_exchange) != ccxt_family(ccxt_id):
                raise ValueError(f"Tardis exchange {name!r} is listed by ccxt "
                                 f"{venue.ccxt_exchange!r}, not {ccxt_id!r}")
        snapshot = await self.load_markets(ccxt_id)
        defs, skipped = definitions_from_markets(
            ccxt_id, snapshot.markets, snapshot.precision_mode, tardis_exchanges=wanted,
            market_types=market_types)
        by_exchange: dict[str, dict[str, InstrumentDefinition]] = {name: {} for name in wanted}
        for d in defs:
            by_exchange[d.tardis_exchange][d.tardis_symbol] = d
        return DefinitionsSnapshot(ccxt_exchange=ccxt_id, fetched_at=snapshot.fetched_at,
                                   by_exchange=by_exchange, skipped=skipped)

    async def close(self) -> None:
        """Close the async clients' HTTP sessions (sync clients need nothing)."""
        for exchange in self._exchanges.values():
            close = getattr(exchange, "close", None)
            if close is not None and inspect.iscoroutinefunction(close):
                try:
                    await close()
                except Exception as e:  # closing must not hide the caller's own error
                    log.warning("%s: closing the ccxt client failed: %s", exchange.id, e)

    async def _space(self, ccxt_id: str) -> None:
        last = self._last_start.get(ccxt_id)
        if last is not None and self.min_interval > 0:
            wait = last + self.min_interval - time.monotonic()
            if wait > 0:
                await self._sleep(wait)
        self._last_start[ccxt_id] = time.monotonic()

    async def _load_once(self, exchange: Any) -> Any:
        if inspect.iscoroutinefunction(exchange.load_markets):
            call: Awaitable[Any] = exchange.load_markets(True)
        else:
            call = asyncio.to_thread(exchange.load_markets, True)
        if self.timeout is None:
            return await call
        return await asyncio.wait_for(call, self.timeout)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "none"
    if isinstance(error, TimeoutError):
        return "TimeoutError: no answer within the adapter's timeout"
    return f"{type(error).__name__}: {error}"
