"""The instrument registry: one contract, in memory and against a real Redis server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

from connectors.instruments.ccxt_adapter import CCXTAdapter
from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.events import InstrumentChange, SyncStatus, diff_snapshot
from connectors.instruments.provider import LiveInstrumentProvider
from connectors.instruments.registry import (
    START_ID,
    InstrumentRegistry,
    MemoryRegistry,
    RedisRegistry,
    RegistryError,
)
from tests.connectors.instruments.recorded import next_listing, recorded_exchange
from tests.redis_server import free_port

Event = InstrumentChange | SyncStatus
T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


@pytest.fixture(scope="module")
def listings() -> tuple[dict[str, InstrumentDefinition], dict[str, InstrumentDefinition]]:
    """okex-swap before and after (one added, one changed, one delisted), via real ccxt."""
    exchange, recorder = recorded_exchange("okx")
    adapter = CCXTAdapter([exchange], min_interval=0)

    async def go() -> tuple[Any, Any]:
        first = await adapter.load_definitions("okx", tardis_exchanges=["okex-swap"])
        key = "GET www.okx.com/api/v5/public/instruments?instType=SWAP"
        recorder.bodies[key] = next_listing(recorder.bodies[key])
        second = await adapter.load_definitions("okx", tardis_exchanges=["okex-swap"])
        return first.by_exchange["okex-swap"], second.by_exchange["okex-swap"]

    return asyncio.run(go())


@pytest.fixture(params=["memory", "redis"])
def registry(request: pytest.FixtureRequest, redis_url: str,
             redis_prefix: str) -> Iterator[InstrumentRegistry]:
    reg: InstrumentRegistry = (MemoryRegistry() if request.param == "memory"
                               else RedisRegistry(redis_url, prefix=redis_prefix))
    yield reg
    reg.close()


def status(at: datetime, ok: bool = True, n: int = 3, error: str | None = None) -> SyncStatus:
    return SyncStatus(exchange="okex-swap", at=at, ok=ok, instruments=n,
                      last_success=at if ok else T0, error=error)


@pytest.mark.shared_data
def test_publish_load_and_follow(registry: InstrumentRegistry, listings: Any) -> None:
    before, after = listings
    assert registry.load("okex-swap") == {} and registry.status("okex-swap") is None
    assert registry.last_event_id() == START_ID
    first: list[Event] = [*diff_snapshot("okex-swap", {}, before, T0), status(T0)]
    registry.publish(first)
    assert registry.load("okex-swap") == before
    assert registry.status("okex-swap") == first[-1]
    assert registry.exchanges() == ["okex-swap"]
    log = registry.read_events(START_ID)
    assert [e for _, e in log] == first
    mark = registry.last_event_id()
    assert mark == log[-1][0]

    second: list[Event] = [*diff_snapshot("okex-swap", before, after, T1), status(T1)]
    registry.publish(second)
    assert registry.load("okex-swap") == after
    assert registry.load("okex-swap")["BTC-USD-SWAP"].tick_size == Decimal("0.5")
    assert [e for _, e in registry.read_events(mark)] == second
    assert registry.read_events(registry.last_event_id(), block=0.05) == []

    failed = status(T1 + timedelta(hours=1), ok=False, error="okx: exchange unreachable")
    registry.publish([failed])
    assert registry.load("okex-swap") == after  # a failed sync changes no definition
    assert registry.status("okex-swap") == failed


def test_a_blocking_read_wakes_up_on_publish(registry: InstrumentRegistry) -> None:
    mark = registry.last_event_id()
    publisher = threading.Timer(0.1, registry.publish, args=([status(T0)],))
    publisher.start()
    started = time.monotonic()
    got = registry.read_events(mark, block=5.0)
    # the read returns once the event is in; the publisher may still be reading its reply,
    # so let it finish before the fixture closes the client they share
    publisher.join(5.0)
    assert [e for _, e in got] == [status(T0)]
    assert time.monotonic() - started < 4.0


@pytest.mark.shared_data
def test_redis_layout(redis_url: str, redis_prefix: str, listings: Any) -> None:
    before, _ = listings
    reg = RedisRegistry(redis_url, prefix=redis_prefix, events_maxlen=5)
    reg.publish([*diff_snapshot("okex-swap", {}, before, T0), status(T0)])
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        defs_key = f"{{{redis_prefix}}}:defs:okex-swap"
        assert reg.defs_key("okex-swap") == defs_key
        stored = client.hgetall(defs_key)
        assert sorted(stored) == sorted(before)
        assert json.loads(stored["BTC-USD-SWAP"])["ccxt_symbol"] == "BTC/USD:BTC"
        assert "stale" not in json.loads(stored["BTC-USD-SWAP"])  # content only
        assert json.loads(client.hget(f"{{{redis_prefix}}}:status", "okex-swap"))["ok"] is True
        entries = client.xrange(f"{{{redis_prefix}}}:events")
        assert [json.loads(f["e"])["kind"] for _, f in entries] == ["added"] * 3 + ["status"]
        for i in range(50):  # the event log stays bounded
            reg.publish([status(T0 + timedelta(seconds=i))])
        assert client.xlen(f"{{{redis_prefix}}}:events") < 50
    finally:
        client.close()
        reg.close()


def test_a_batch_is_checked_before_anything_is_written(registry: InstrumentRegistry) -> None:
    with pytest.raises(TypeError, match="must be InstrumentChange or SyncStatus, got dict"):
        registry.publish([status(T0), {"kind": "added"}])  # type: ignore[list-item]
    assert registry.status("okex-swap") is None and registry.last_event_id() == START_ID


def test_unreachable_redis_fails_clearly_without_the_password() -> None:
    reg = RedisRegistry(f"redis://trader:s3cret@127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with pytest.raises(RegistryError) as info:
        reg.load("okex-swap")
    message = str(info.value)
    assert message.startswith("instrument registry at redis://trader:***@127.0.0.1:")
    assert "reading definitions failed: ConnectionError" in message
    assert "s3cret" not in message and "s3cret" not in repr(reg)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="expected a redis://"):
        RedisRegistry("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="without braces"):
        RedisRegistry(prefix="a{b}")
    with pytest.raises(ValueError, match="events_maxlen must be a positive integer"):
        MemoryRegistry(events_maxlen=0)


@pytest.mark.shared_data
def test_provider_follows_the_redis_registry(redis_url: str, redis_prefix: str,
                                             listings: Any) -> None:
    before, after = listings
    writer = RedisRegistry(redis_url, prefix=redis_prefix)
    writer.publish([*diff_snapshot("okex-swap", {}, before, T0), status(T0)])

    async def go() -> None:
        reader = RedisRegistry(redis_url, prefix=redis_prefix)
        provider = LiveInstrumentProvider(registry=reader, exchanges=["okex-swap"],
                                          poll_interval=0.05, clock=lambda: T1)
        await provider.start()
        assert len(provider.list_instruments("okex-swap")) == 3
        writer.publish([*diff_snapshot("okex-swap", before, after, T1), status(T1)])
        for _ in range(200):
            if "SOL-USDT-SWAP" in {d.tardis_symbol for d in provider.list_instruments()}:
                break
            await asyncio.sleep(0.02)
        assert sorted(d.tardis_symbol for d in provider.list_instruments()) == sorted(after)
        got = provider.get_instrument("okx", "BTC/USD:BTC")
        assert got.tick_size == Decimal("0.5") and got.stale is False
        await provider.stop()
        reader.close()

    asyncio.run(go())
    writer.close()
