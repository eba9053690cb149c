"""The CCXT sidecar flow (`live-instruments-sync`): instrument definitions kept current.

    python -m bytewax.run dataflows.instruments        # ./streaming.yaml or STREAMING_CONFIG

Flow shape:
    InstrumentSyncSource (one partition per ccxt client; `load_markets(reload=True)` every
    instruments.refresh_interval, run by the async ccxt client on the partition's own event-loop
    thread, so `next_batch` never waits on the network)
      -> one snapshot per Tardis exchange (the definitions, or the error)
      -> key by Tardis exchange -> diff against the previous snapshot (stateful; the first
         one against what the registry already holds, so a restart does not re-announce
         every instrument)
      -> events: added / changed / delisted + one status per exchange and sync
      -> registry (memory | Redis: definitions, status, events stream) and the log.

A failed sync (exchange unreachable after the adapter's retries) never delists anything: the
previous definitions stay and a status event with `ok: false` and the error goes out, so
consumers serve them marked stale.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.instruments.ccxt_adapter import CCXTAdapter, InstrumentSyncError
from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.events import (
    InstrumentChange,
    SnapshotRejected,
    SyncStatus,
    diff_snapshot,
)
from connectors.instruments.registry import (
    InstrumentRegistry,
    MemoryRegistry,
    RedisRegistry,
    RegistryError,
    latest_success,
)
from connectors.instruments.venues import ccxt_exchanges_for
from dataflows.config import ConfigError, InstrumentsConfig, StreamingConfig, load_config

log = logging.getLogger("dataflows.instruments")

Event = InstrumentChange | SyncStatus
AdapterFactory = Callable[[str], CCXTAdapter]
POLL_SECONDS = 0.02  # how often a partition looks at an in-flight sync


@dataclass(frozen=True)
class TardisSnapshot:
    """One sync's outcome for one Tardis exchange: its definitions, or the error."""

    exchange: str
    at: datetime
    definitions: dict[str, InstrumentDefinition] | None
    error: str | None = None


class _LoopThread:
    """An asyncio event loop on a daemon thread; coroutines are submitted to it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class _PartitionState:
    """Resume state: how many syncs this partition has completed."""

    syncs: int = 0


class _SyncPartition(StatefulSourcePartition[TardisSnapshot, _PartitionState]):
    """Syncs one ccxt client's Tardis exchanges on a schedule, without blocking Bytewax."""

    def __init__(self, ccxt_id: str, tardis: list[str], adapter: CCXTAdapter,
                 market_types: list[str], interval: timedelta, max_syncs: int | None,
                 state: _PartitionState) -> None:
        self.ccxt_id = ccxt_id
        self.tardis = tardis
        self.adapter = adapter
        self.market_types = market_types
        self.interval = interval
        self.max_syncs = max_syncs
        self.state = state
        self._runner = _LoopThread(f"ccxt-{ccxt_id}")
        self._future: concurrent.futures.Future[Any] | None = None
        self._next_at = datetime.now(UTC)

    def _finished(self) -> bool:
        return self.max_syncs is not None and self.state.syncs >= self.max_syncs

    def next_batch(self) -> list[TardisSnapshot]:
        if self._future is None:
            if self._finished():
                raise StopIteration
            if datetime.now(UTC) >= self._next_at:
                self._future = self._runner.submit(self.adapter.load_definitions(
                    self.ccxt_id, tardis_exchanges=self.tardis, market_types=self.market_types))
            return []
        if not self._future.done():
            return []
        future, self._future = self._future, None
        now = datetime.now(UTC)
        self._next_at = now + self.interval
        self.state.syncs += 1
        try:
            snap = future.result()
        except InstrumentSyncError as e:  # unreachable / failing exchange: report, keep going
            return [TardisSnapshot(exchange=t, at=now, definitions=None, error=str(e))
                    for t in self.tardis]
        # any other exception is a bug and stops the flow with its traceback
        if snap.skipped:
            log.debug("%s: %d markets not synced (other Tardis exchanges, types or "
                      "unsupported)", self.ccxt_id, len(snap.skipped))
        return [TardisSnapshot(exchange=t, at=snap.fetched_at,
                               definitions=snap.by_exchange.get(t, {})) for t in self.tardis]

    def next_awake(self) -> datetime | None:
        if self._future is not None:
            return datetime.now(UTC) + timedelta(seconds=POLL_SECONDS)
        if self._finished():
            return None
        return self._next_at

    def snapshot(self) -> _PartitionState:
        return _PartitionState(syncs=self.state.syncs)

    def close(self) -> None:
        try:
            if self._future is not None:
                self._future.cancel()
            self._runner.submit(self.adapter.close()).result(timeout=10)
        except Exception as e:  # closing must not mask how the flow ended
            log.warning("%s: closing the ccxt client failed: %s", self.ccxt_id, e)
        finally:
            self._runner.stop()


class InstrumentSyncSource(FixedPartitionedSource[TardisSnapshot, _PartitionState]):
    """One partition per ccxt client, each syncing its Tardis exchanges every `interval`."""

    def __init__(self, groups: dict[str, list[str]], adapter_factory: AdapterFactory, *,
                 market_types: Iterable[str], interval: timedelta,
                 max_syncs: int | None = None) -> None:
        if not groups:
            raise ValueError("InstrumentSyncSource needs at least one exchange")
        if interval <= timedelta(0):
            raise ValueError(f"interval must be positive, got {interval}")
        if max_syncs is not None and max_syncs < 1:
            raise ValueError(f"max_syncs must be >= 1 or None, got {max_syncs}")
        self.groups = groups
        self.adapter_factory = adapter_factory
        self.market_types = list(market_types)
        self.interval = interval
        self.max_syncs = max_syncs

    def list_parts(self) -> list[str]:
        return list(self.groups)

    def build_part(self, step_id: str, for_part: str,
                   resume_state: _PartitionState | None) -> _SyncPartition:
        adapter = self.adapter_factory(for_part)
        if not isinstance(adapter, CCXTAdapter):
            raise TypeError(f"adapter_factory({for_part!r}) returned {type(adapter).__name__}, "
                            "not a CCXTAdapter")
        if for_part not in adapter.exchange_ids:
            raise ValueError(f"adapter_factory({for_part!r}) returned an adapter without that "
                             f"ccxt exchange (it has {', '.join(adapter.exchange_ids)})")
        return _SyncPartition(for_part, self.groups[for_part], adapter, self.market_types,
                              self.interval, self.max_syncs, resume_state or _PartitionState())


@dataclass
class DiffState:
    """What the diff step remembers per Tardis exchange."""

    definitions: dict[str, InstrumentDefinition] = field(default_factory=dict)
    last_success: datetime | None = None


class SnapshotDiffer:
    """The stateful diff: snapshot -> (new state, events). The first snapshot of an exchange is
    compared with what the registry holds."""

    def __init__(self, registry: InstrumentRegistry, max_delisted_fraction: float) -> None:
        self.registry = registry
        self.max_delisted_fraction = max_delisted_fraction

    def baseline(self, exchange: str) -> DiffState:
        status = self.registry.status(exchange)
        return DiffState(definitions=self.registry.load(exchange),
                         last_success=latest_success(status))

    def __call__(self, state: DiffState | None,
                 snap: TardisSnapshot) -> tuple[DiffState, list[Event]]:
        if state is None:
            state = self.baseline(snap.exchange)
        error = snap.error
        changes: list[InstrumentChange] = []
        if snap.definitions is not None:
            try:
                changes = diff_snapshot(snap.exchange, state.definitions, snap.definitions,
                                        snap.at,
                                        max_delisted_fraction=self.max_delisted_fraction)
            except SnapshotRejected as e:
                error = str(e)
        if error is not None:
            status = SyncStatus(exchange=snap.exchange, at=snap.at, ok=False,
                                instruments=len(state.definitions),
                                last_success=state.last_success, error=error)
            return state, [status]
        assert snap.definitions is not None
        new_state = DiffState(definitions=dict(snap.definitions), last_success=snap.at)
        status = SyncStatus.succeeded(snap.exchange, snap.at, len(snap.definitions), changes)
        return new_state, [*changes, status]


class _RegistryPartition(StatelessSinkPartition[Event]):
    def __init__(self, registry: InstrumentRegistry, retries: int, delay: float) -> None:
        self.registry = registry
        self.retries = retries
        self.delay = delay

    def write_batch(self, items: list[Event]) -> None:
        """Publish, retrying a registry outage with backoff before giving up (the flow then
        stops with the error). A retry after a lost reply may repeat events in the log;
        applying an event twice is harmless."""
        for attempt in range(self.retries + 1):
            try:
                self.registry.publish(items)
                return
            except RegistryError as e:
                if attempt == self.retries:
                    raise
                wait = min(30.0, self.delay * 2 ** attempt)
                log.warning("%s; retrying in %.1fs", e, wait)
                time.sleep(wait)


class RegistrySink(DynamicSink[Event]):
    """Publishes events to an `InstrumentRegistry` (one atomic publish per batch)."""

    def __init__(self, registry: InstrumentRegistry, *, retries: int = 5,
                 delay: float = 1.0) -> None:
        if retries < 0 or delay < 0:
            raise ValueError("retries and delay must be >= 0")
        self.registry = registry
        self.retries = retries
        self.delay = delay

    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> _RegistryPartition:
        return _RegistryPartition(self.registry, self.retries, self.delay)


def log_event(step_id: str, event: Event) -> None:
    """Changes at INFO, failed syncs at WARNING."""
    if isinstance(event, SyncStatus) and not event.ok:
        log.warning("%s", event.describe())
    else:
        log.info("%s", event.describe())


def make_registry(cfg: InstrumentsConfig) -> InstrumentRegistry:
    """The registry named by the config (REDIS_URL overrides instruments.redis_url)."""
    if cfg.registry == "redis":
        url = os.environ.get("REDIS_URL") or cfg.redis_url
        return RedisRegistry(url, prefix=cfg.key_prefix, events_maxlen=cfg.events_maxlen)
    return MemoryRegistry(events_maxlen=cfg.events_maxlen)


def default_adapter_factory(cfg: InstrumentsConfig) -> AdapterFactory:
    """Async ccxt clients built from the config (rate limited, retried, timed out)."""

    def factory(ccxt_id: str) -> CCXTAdapter:
        return CCXTAdapter.create(
            [ccxt_id], tardis_exchanges=cfg.exchanges, ccxt_config=cfg.ccxt_options,
            timeout=cfg.request_timeout / 1e6, max_retries=cfg.max_retries,
            retry_initial_delay=cfg.retry_initial_delay / 1e6,
            retry_max_delay=cfg.retry_max_delay / 1e6)

    return factory


def build_flow(config: StreamingConfig, adapter_factory: AdapterFactory | None = None,
               registry: InstrumentRegistry | None = None) -> Dataflow:
    """The sidecar flow for `config.instruments`.

    `adapter_factory(ccxt_id)` returns the `CCXTAdapter` a partition uses (default: async ccxt
    clients from the config); `registry` replaces the one the config names (tests pass a
    `MemoryRegistry` to read it back).
    """
    if not isinstance(config, StreamingConfig):
        raise TypeError(f"build_flow needs a StreamingConfig, got {type(config).__name__}")
    if adapter_factory is not None and not callable(adapter_factory):
        raise TypeError("adapter_factory must be callable: ccxt id -> CCXTAdapter")
    if registry is not None and not isinstance(registry, InstrumentRegistry):
        raise TypeError(f"registry must be an InstrumentRegistry, got {type(registry).__name__}")
    cfg = config.instruments
    registry = registry if registry is not None else make_registry(cfg)
    factory = adapter_factory or default_adapter_factory(cfg)
    source = InstrumentSyncSource(
        ccxt_exchanges_for(cfg.exchanges), factory, market_types=cfg.market_types,
        interval=timedelta(microseconds=cfg.refresh_interval), max_syncs=cfg.max_refreshes)

    flow = Dataflow("instruments")
    snapshots = op.input("ccxt", flow, source)
    keyed = op.key_on("by_exchange", snapshots, lambda s: s.exchange)
    diffs = op.stateful_map("diff", keyed,
                            SnapshotDiffer(registry, cfg.max_delisted_fraction))
    events = op.flat_map("events", diffs, lambda kv: kv[1])
    events = op.inspect("log", events, log_event)
    op.output("registry", events, RegistrySink(registry))
    return flow


def get_flow(config_path: str | None = None) -> Dataflow:
    """Factory for `python -m bytewax.run "dataflows.instruments:get_flow('streaming.yaml')"`;
    a bad configuration stops with its message instead of a traceback."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path)
        flow = build_flow(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from dataflows.main import start_health_endpoint

    start_health_endpoint(cfg, check_throughput=False)
    return flow


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run dataflows.instruments` looks up `flow`: built on first access, so
    # importing this module (tests, dataflows.main) reads no file.
    if name == "flow":
        return get_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
