"""LiveInstrumentProvider: lookups in every scheme, subscriptions, TTL and stale serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from connectors import CCXTAdapter, InstrumentDefinition, LiveInstrumentProvider
from connectors.instruments.events import InstrumentChange, SyncStatus, diff_snapshot
from connectors.instruments.mapper import UnknownInstrumentError
from connectors.instruments.provider import (
    InstrumentsUnavailableError,
    StaleInstrumentError,
)
from connectors.instruments.registry import MemoryRegistry
from connectors.instruments.venues import UnknownExchangeError
from tests.connectors.instruments.recorded import (
    OKX_SWAP,
    InOrder,
    RecordedFetch,
    make_unreachable,
    next_listing,
    recorded_bodies,
)

pytestmark = pytest.mark.shared_data

MakeAdapter = Callable[..., tuple[CCXTAdapter, dict[str, Any], dict[str, Any]]]
Event = InstrumentChange | SyncStatus


class Clock:
    """A settable UTC clock for TTL tests."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_lookups_in_every_scheme(make_adapter: MakeAdapter) -> None:
    adapter, _, _ = make_adapter("okx", "deribit", "binanceusdm")

    async def go() -> None:
        async with LiveInstrumentProvider(
                adapter=adapter, exchanges=["okex-swap", "okex-options", "deribit",
                                            "binance-futures"]) as provider:
            by_tardis = provider.get_instrument("binance-futures", "BTCUSDT")
            by_ccxt = provider.get_instrument("binanceusdm", "BTC/USDT:USDT")
            by_ccxt_symbol_on_tardis = provider.get_instrument("binance-futures",
                                                               "BTC/USDT:USDT")
            assert by_tardis == by_ccxt == by_ccxt_symbol_on_tardis
            assert by_tardis.tick_size == Decimal("0.1") and by_tardis.stale is False
            assert by_tardis.synced_at is not None
            assert provider.get_instrument("okx", "BTC-USD-SWAP").contract_size == 100
            assert provider.get_instrument("deribit", "btc-perpetual").venue_symbol == \
                "BTC-PERPETUAL"

            options = provider.list_instruments(type="option")
            assert [d.tardis_symbol for d in options] == [
                "BTC-27DEC24-100000-C", "BTC-USD-241217-92000-C", "BTC-USD-241217-92000-P",
                "BTC-USD-241217-94000-C", "BTC-USD-241217-94000-P"]
            assert len(provider.list_instruments("okx")) == 7
            assert [d.key for d in provider.list_instruments("deribit", type="future")] == [
                ("deribit", "BTC-27DEC24")]
            assert {d.quote for d in provider.list_instruments(quote="USDT")} == {"USDT"}
            health = provider.status("okex-swap")
            assert (health.instruments, health.stale, health.error) == (3, False, None)
            with pytest.raises(UnknownInstrumentError, match="did you mean BTC-USD-SWAP"):
                provider.get_instrument("okex-swap", "BTC-USD-SWAPP")
            with pytest.raises(ValueError, match="type must be one of"):
                provider.list_instruments(type="swap")

    asyncio.run(go())


def test_refresh_notifies_subscribers_of_changes(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("okx")
    bodies = recorders["okx"].bodies
    bodies[OKX_SWAP] = InOrder(bodies[OKX_SWAP], next_listing(bodies[OKX_SWAP]))
    seen: list[Event] = []
    seen_async: list[str] = []

    async def on_change(event: Event) -> None:
        seen_async.append(event.kind)

    async def go() -> list[Event]:
        provider = LiveInstrumentProvider(adapter=adapter, exchanges=["okex-swap"])
        provider.subscribe(seen.append)
        provider.subscribe(on_change, kinds=["delisted"])
        stream = provider.changes(kinds=["added", "changed", "delisted"])
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        await provider.start()
        assert (await first).kind == "added"
        seen.clear()
        events = await provider.refresh()
        await stream.aclose()
        assert provider.get_instrument("okex-swap", "BTC-USD-SWAP").tick_size == Decimal("0.5")
        with pytest.raises(UnknownInstrumentError):
            provider.get_instrument("okex-swap", "BTC-USDT-SWAP")
        assert provider.get_instrument("okx", "SOL/USDT:USDT").base == "SOL"
        await provider.stop()
        return events

    events = asyncio.run(go())
    assert [(e.kind, getattr(e, "symbol", None)) for e in events] == [
        ("added", "SOL-USDT-SWAP"), ("changed", "BTC-USD-SWAP"), ("delisted", "BTC-USDT-SWAP"),
        ("status", None)]
    assert seen == events
    assert seen_async == ["delisted"]
    status = events[-1]
    assert isinstance(status, SyncStatus)
    assert (status.ok, status.instruments, status.added, status.changed, status.delisted) == (
        True, 3, 1, 1, 1)


def test_ttl_marks_definitions_stale(make_adapter: MakeAdapter) -> None:
    adapter, _, _ = make_adapter("deribit")
    clock = Clock()

    async def go() -> None:
        provider = LiveInstrumentProvider(adapter=adapter, exchanges=["deribit"],
                                          refresh_interval=60, ttl=120, clock=clock)
        await provider.start()
        synced = clock.now
        assert provider.get_instrument("deribit", "BTC-PERPETUAL").stale is False
        clock.now += timedelta(seconds=121)
        d = provider.get_instrument("deribit", "BTC-PERPETUAL")
        assert d.stale is True and d.synced_at == synced
        health = provider.status("deribit")
        assert health.stale and "last synced 121s ago" in str(health.reason)
        assert "older than the TTL of 120s" in str(health.reason)
        with pytest.raises(StaleInstrumentError, match="deribit BTC-PERPETUAL: cached "
                           "definition is stale .last synced 121s ago"):
            provider.get_instrument("deribit", "BTC-PERPETUAL", allow_stale=False)
        assert all(d.stale for d in provider.list_instruments("deribit"))
        await provider.refresh()
        fresh = provider.get_instrument("deribit", "BTC-PERPETUAL", allow_stale=False)
        assert fresh.stale is False and fresh.synced_at == clock.now
        await provider.stop()

    asyncio.run(go())


def test_unreachable_exchange_keeps_serving_cached_definitions_marked_stale(
        make_adapter: MakeAdapter) -> None:
    adapter, exchanges, _ = make_adapter("okx", max_retries=1)
    statuses: list[Event] = []

    async def go() -> None:
        provider = LiveInstrumentProvider(adapter=adapter, exchanges=["okex-swap", "okex"])
        await provider.start()
        provider.subscribe(statuses.append)
        before = provider.list_instruments("okex-swap")
        make_unreachable(exchanges["okx"])  # the real network stack, connection refused
        events = await provider.refresh()
        assert [e.kind for e in events] == ["status", "status"]  # nothing delisted
        d = provider.get_instrument("okex-swap", "BTC-USD-SWAP")
        assert d.stale is True and d.tick_size == Decimal("0.1")
        assert [x.key for x in provider.list_instruments("okex-swap")] == [x.key for x in before]
        health = provider.status("okex-swap")
        assert health.stale and health.instruments == 3
        assert health.error is not None
        assert health.error.startswith("okx: exchange unreachable after 2 attempts")
        with pytest.raises(StaleInstrumentError, match="last refresh failed: okx: exchange "
                           "unreachable"):
            provider.get_instrument("okex-swap", "BTC-USD-SWAP", allow_stale=False)
        # the exchange comes back: fresh again
        exchanges["okx"].httpProxy = None
        RecordedFetch(recorded_bodies("okx")).install(exchanges["okx"])
        await provider.refresh()
        assert provider.get_instrument("okex-swap", "BTC-USD-SWAP").stale is False
        await provider.stop()

    asyncio.run(go())
    failed = [e for e in statuses if isinstance(e, SyncStatus) and not e.ok]
    assert {e.exchange for e in failed} == {"okex-swap", "okex"}
    assert all(e.last_success is not None and e.instruments > 0 for e in failed)


def test_an_exchange_that_never_loaded_says_why(make_adapter: MakeAdapter) -> None:
    adapter, exchanges, _ = make_adapter("coinbase", max_retries=0)
    make_unreachable(exchanges["coinbase"])

    async def go() -> None:
        async with LiveInstrumentProvider(adapter=adapter, exchanges=["coinbase"]) as provider:
            with pytest.raises(InstrumentsUnavailableError, match=r"coinbase: no instrument "
                               r"definitions are cached \(last refresh failed: coinbase: "
                               r"exchange unreachable after 1 attempt in"):
                provider.get_instrument("coinbase", "BTC-USD")

    asyncio.run(go())


def test_the_background_task_refreshes_on_schedule(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("krakenfutures")

    async def go() -> None:
        async with LiveInstrumentProvider(adapter=adapter, refresh_interval=0.05, ttl=1.0,
                                          exchanges=["cryptofacilities"]):
            await asyncio.sleep(0.4)

    asyncio.run(go())
    assert len(recorders["krakenfutures"].calls) >= 4


def test_the_provider_can_follow_a_registry(make_adapter: MakeAdapter) -> None:
    """Fed by what the sidecar publishes: initial state, then the event log."""
    adapter, _, recorders = make_adapter("okx")
    registry = MemoryRegistry()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    snap = asyncio.run(adapter.load_definitions("okx", tardis_exchanges=["okex-swap"]))
    first = snap.by_exchange["okex-swap"]
    registry.publish([*diff_snapshot("okex-swap", {}, first, t0),
                      SyncStatus(exchange="okex-swap", at=t0, ok=True, instruments=3,
                                 last_success=t0)])
    recorders["okx"].bodies[OKX_SWAP] = next_listing(recorders["okx"].bodies[OKX_SWAP])
    second = asyncio.run(adapter.load_definitions(
        "okx", tardis_exchanges=["okex-swap"])).by_exchange["okex-swap"]
    clock = Clock()
    clock.now = t0 + timedelta(seconds=30)

    async def go() -> None:
        provider = LiveInstrumentProvider(registry=registry, poll_interval=0.05, clock=clock)
        received: list[Event] = []
        provider.subscribe(received.append)
        await provider.start()
        assert provider.exchanges == ["okex-swap"]
        assert provider.get_instrument("okex-swap", "BTC-USDT-SWAP").stale is False
        t1 = t0 + timedelta(hours=1)
        registry.publish([*diff_snapshot("okex-swap", first, second, t1),
                          SyncStatus(exchange="okex-swap", at=t1, ok=False, instruments=3,
                                     last_success=t0, error="okx: exchange unreachable")])
        for _ in range(100):
            if len(received) == 4:
                break
            await asyncio.sleep(0.02)
        assert [e.kind for e in received] == ["added", "changed", "delisted", "status"]
        assert provider.get_instrument("okex-swap", "BTC-USD-SWAP").tick_size == Decimal("0.5")
        d = provider.get_instrument("okex-swap", "SOL-USDT-SWAP")
        assert d.stale is True and d.synced_at == t0  # the sidecar's last sync failed
        with pytest.raises(RuntimeError, match="needs a ccxt adapter"):
            await provider.refresh()
        await provider.stop()

    asyncio.run(go())


def test_constructor_validates(make_adapter: MakeAdapter) -> None:
    adapter, _, _ = make_adapter("okx")
    with pytest.raises(ValueError, match="exactly one source"):
        LiveInstrumentProvider()
    with pytest.raises(ValueError, match="exactly one source"):
        LiveInstrumentProvider(adapter=adapter, registry=MemoryRegistry())
    with pytest.raises(TypeError, match="adapter must be a CCXTAdapter"):
        LiveInstrumentProvider(adapter="okx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ttl \(10s\) must be at least refresh_interval"):
        LiveInstrumentProvider(adapter=adapter, refresh_interval=60, ttl=10)
    with pytest.raises(ValueError, match="need ccxt 'deribit', which the adapter does not have"):
        LiveInstrumentProvider(adapter=adapter, exchanges=["deribit"])
    with pytest.raises(UnknownExchangeError, match="did you mean okex-swap"):
        LiveInstrumentProvider(adapter=adapter, exchanges=["okex-swp"])
    with pytest.raises(ValueError, match="market_types must be a non-empty subset"):
        LiveInstrumentProvider(adapter=adapter, market_types=["swap"])
    provider = LiveInstrumentProvider(adapter=adapter)
    assert provider.exchanges == ["okex", "okex-swap", "okex-futures", "okex-options"]


def test_public_names_come_from_connectors() -> None:
    import connectors

    assert connectors.InstrumentDefinition is InstrumentDefinition
    assert connectors.LiveInstrumentProvider is LiveInstrumentProvider
    assert connectors.InstrumentMapper.__module__ == "connectors.instruments.mapper"
    assert connectors.CCXTAdapter.__module__ == "connectors.instruments.ccxt_adapter"


def test_one_ccxt_client_feeding_three_tardis_exchanges(make_adapter: MakeAdapter) -> None:
    """ccxt bybit lists spot, derivatives and options; Tardis splits them in three, and
    BTCUSDT is both a bybit (linear perpetual) and a bybit-spot symbol."""
    adapter, _, _ = make_adapter("bybit")

    async def go() -> list[Event]:
        async with LiveInstrumentProvider(adapter=adapter, exchanges=[
                "bybit", "bybit-spot", "bybit-options"]) as provider:
            assert {e: provider.status(e).instruments for e in provider.exchanges} == {
                "bybit": 3, "bybit-spot": 2, "bybit-options": 1}
            assert {d.type for d in provider.list_instruments("bybit")} == {"perpetual"}
            assert provider.get_instrument("bybit", "BTCUSDT").ccxt_symbol == "BTC/USDT:USDT"
            assert provider.get_instrument("bybit-spot", "BTCUSDT").ccxt_symbol == "BTC/USDT"
            assert len(provider.list_instruments()) == 6
            return await provider.refresh()

    again = asyncio.run(go())
    assert [(e.kind, e.exchange) for e in again] == [
        ("status", "bybit"), ("status", "bybit-spot"), ("status", "bybit-options")]
