"""The sidecar flow (dataflows/instruments.py) end to end: real ccxt offline -> Bytewax ->
registry (memory and real Redis) and the log."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from connectors.instruments.ccxt_adapter import CCXTAdapter
from connectors.instruments.events import InstrumentChange, SyncStatus
from connectors.instruments.provider import LiveInstrumentProvider
from connectors.instruments.registry import (
    START_ID,
    MemoryRegistry,
    RedisRegistry,
    RegistryError,
)
from dataflows.config import StreamingConfig, config_from_dict
from dataflows.instruments import RegistrySink, build_flow
from tests.connectors.instruments.recorded import (
    OKX_SWAP,
    InOrder,
    RecordedFetch,
    next_listing,
    recorded_bodies,
    recorded_exchange,
)
from tests.redis_server import RedisServer

Event = InstrumentChange | SyncStatus


def config(**instruments: Any) -> StreamingConfig:
    settings: dict[str, Any] = {"exchanges": ["okex-swap", "binance-futures"],
                                "refresh_interval": "1s", "ttl": "1m", "max_refreshes": 2}
    settings.update(instruments)
    return config_from_dict({"mode": "live-instruments-sync", "instruments": settings})


def factory(recorders: dict[str, RecordedFetch],
            edit: Callable[[str, RecordedFetch], None] | None = None,
            **adapter_kwargs: Any) -> Callable[[str], CCXTAdapter]:
    """An adapter_factory whose ccxt clients answer from the recordings (`edit` may queue the
    next syncs' answers); the recorders are kept for the test to inspect. The recordings are
    read here, so a missing data folder skips the test before the flow starts."""
    bodies = {ccxt_id: recorded_bodies(ccxt_id) for ccxt_id in ("okx", "binanceusdm",
                                                                 "deribit")}

    def make(ccxt_id: str) -> CCXTAdapter:
        exchange, recorder = recorded_exchange(ccxt_id, bodies=bodies[ccxt_id])
        if edit is not None:
            edit(ccxt_id, recorder)
        recorders[ccxt_id] = recorder
        settings: dict[str, Any] = {"min_interval": 0, "retry_initial_delay": 0.01,
                                    "retry_max_delay": 0.02, "max_retries": 1}
        settings.update(adapter_kwargs)
        return CCXTAdapter([exchange], **settings)

    return make


def okx_relists(ccxt_id: str, recorder: RecordedFetch) -> None:
    if ccxt_id == "okx":
        body = recorder.bodies[OKX_SWAP]
        recorder.bodies[OKX_SWAP] = InOrder(body, next_listing(body))


def okx_relisted(ccxt_id: str, recorder: RecordedFetch) -> None:
    """OKX answers with the second listing from the start (a restart after the change)."""
    if ccxt_id == "okx":
        recorder.bodies[OKX_SWAP] = next_listing(recorder.bodies[OKX_SWAP])


def summary(events: list[Event]) -> list[tuple[str, str, str | None]]:
    return [(e.exchange, e.kind, getattr(e, "symbol", None)) for e in events]


@pytest.mark.shared_data
def test_two_syncs_end_to_end_into_redis(redis_url: str, redis_prefix: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(registry="redis", redis_url=redis_url, key_prefix=redis_prefix)
    recorders: dict[str, RecordedFetch] = {}
    caplog.set_level(logging.INFO, logger="dataflows.instruments")
    run_main(build_flow(cfg, factory(recorders, okx_relists)))

    assert len(recorders["okx"].calls) == 2 * 4 and len(recorders["binanceusdm"].calls) == 2
    registry = RedisRegistry(redis_url, prefix=redis_prefix)
    try:
        events = [e for _, e in registry.read_events(START_ID)]
        per_exchange = {ex: [x for x in summary(events) if x[0] == ex]
                        for ex in ("okex-swap", "binance-futures")}
        assert per_exchange["okex-swap"] == [
            ("okex-swap", "added", "BTC-USD-SWAP"), ("okex-swap", "added", "BTC-USDT-SWAP"),
            ("okex-swap", "added", "ETH-USDT-SWAP"), ("okex-swap", "status", None),
            ("okex-swap", "added", "SOL-USDT-SWAP"), ("okex-swap", "changed", "BTC-USD-SWAP"),
            ("okex-swap", "delisted", "BTC-USDT-SWAP"), ("okex-swap", "status", None)]
        assert per_exchange["binance-futures"] == [
            ("binance-futures", "added", "BTCUSDT"), ("binance-futures", "added",
                                                      "BTCUSDT_220325"),
            ("binance-futures", "added", "ETHUSDT"), ("binance-futures", "status", None),
            ("binance-futures", "status", None)]
        defs = registry.load("okex-swap")
        assert sorted(defs) == ["BTC-USD-SWAP", "ETH-USDT-SWAP", "SOL-USDT-SWAP"]
        assert defs["BTC-USD-SWAP"].tick_size == Decimal("0.5")
        okx_status = registry.status("okex-swap")
        assert okx_status is not None and okx_status.ok
        assert (okx_status.added, okx_status.changed, okx_status.delisted) == (1, 1, 1)
    finally:
        registry.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "dataflows.instruments"]
    assert ("okex-swap BTC-USD-SWAP changed: price_precision 0.1 -> 0.5, tick_size 0.1 -> 0.5"
            in logged)
    assert "okex-swap BTC-USDT-SWAP delisted (BTC/USDT:USDT, perpetual)" in logged
    assert "okex-swap: synced 3 instruments (+1 ~1 -1)" in logged

    # a provider fed by the same registry serves what the flow published
    async def read() -> None:
        async with LiveInstrumentProvider(registry=RedisRegistry(redis_url, prefix=redis_prefix),
                                          poll_interval=0.05) as provider:
            assert provider.exchanges == ["binance-futures", "okex-swap"]
            assert provider.get_instrument("okx", "SOL/USDT:USDT").venue_symbol == \
                "SOL-USDT-SWAP"
            assert provider.get_instrument("binance-futures", "BTCUSDT").stale is False

    asyncio.run(read())

    # a restart against the same registry announces nothing again: only the sync statuses
    mark = RedisRegistry(redis_url, prefix=redis_prefix).last_event_id()
    run_main(build_flow(config(registry="redis", redis_url=redis_url, key_prefix=redis_prefix,
                               max_refreshes=1), factory({}, okx_relisted)))
    again = RedisRegistry(redis_url, prefix=redis_prefix).read_events(mark)
    assert sorted(summary([e for _, e in again])) == [("binance-futures", "status", None),
                                                      ("okex-swap", "status", None)]


@pytest.mark.shared_data
def test_a_failing_exchange_keeps_its_definitions(caplog: pytest.LogCaptureFixture) -> None:
    """Second sync: okx unreachable. Nothing is delisted; the status says why; the log warns."""

    def okx_goes_down(ccxt_id: str, recorder: RecordedFetch) -> None:
        if ccxt_id == "okx":
            recorder.bodies[OKX_SWAP] = InOrder(
                recorder.bodies[OKX_SWAP],
                ccxt.ExchangeNotAvailable("okx GET https://www.okx.com/api/v5/public/"
                                          "instruments?instType=SWAP 503 Service Unavailable"))

    registry = MemoryRegistry()
    caplog.set_level(logging.INFO, logger="dataflows.instruments")
    run_main(build_flow(config(exchanges=["okex-swap"]), factory({}, okx_goes_down,
                                                                  max_retries=1), registry))
    events = registry.events()
    assert [e.kind for e in events] == ["added"] * 3 + ["status", "status"]
    failed = events[-1]
    assert isinstance(failed, SyncStatus) and not failed.ok
    assert failed.instruments == 3 and failed.last_success == events[3].at
    assert failed.error is not None and failed.error.startswith(
        "okx: exchange unreachable after 2 attempts")
    assert "503 Service Unavailable" in failed.error
    assert len(registry.load("okex-swap")) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "dataflows.instruments"]
    assert any(w.startswith("okex-swap: sync failed, serving 3 cached definitions (stale")
               for w in warnings)


@pytest.mark.shared_data
def test_a_slow_exchange_does_not_hold_up_the_others() -> None:
    """Each ccxt client syncs on its own loop thread; Bytewax keeps polling the others."""

    def slow_okx(ccxt_id: str, recorder: RecordedFetch) -> None:
        if ccxt_id == "okx":
            recorder.delay = 0.5

    registry = MemoryRegistry()
    run_main(build_flow(config(exchanges=["okex-swap", "deribit"], max_refreshes=1),
                        factory({}, slow_okx), registry))
    statuses = [e.exchange for e in registry.events() if isinstance(e, SyncStatus)]
    assert statuses == ["deribit", "okex-swap"]


def test_module_flow_reads_streaming_config(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "streaming.yaml"
    good.write_text("mode: live-instruments-sync\ninstruments:\n  exchanges: [deribit, okex]\n")
    monkeypatch.setenv("STREAMING_CONFIG", str(good))
    module = importlib.import_module("dataflows.instruments")
    flow = module.flow  # built without touching the network
    assert isinstance(flow, Dataflow) and flow.flow_id == "instruments"

    bad = tmp_path / "bad.yaml"
    bad.write_text("instruments:\n  exchanges: [okx]\n  refresh_interval: 1h\n")
    monkeypatch.setenv("STREAMING_CONFIG", str(bad))
    with pytest.raises(SystemExit) as info:
        _ = module.flow
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "instruments.exchanges: 'okx' is a ccxt exchange id; use the Tardis exchange id(s) " \
           "okex, okex-swap, okex-futures, okex-options" in err
    assert "Traceback" not in err


def test_build_flow_validates() -> None:
    with pytest.raises(TypeError, match="needs a StreamingConfig, got dict"):
        build_flow({"instruments": {}})  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="adapter_factory must be callable"):
        build_flow(config(), "binance")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="registry must be an InstrumentRegistry"):
        build_flow(config(), None, "redis")  # type: ignore[arg-type]


def test_the_registry_sink_rides_out_a_redis_restart() -> None:
    """A real redis-server stopped under the sink and started again on the same port."""
    try:
        server = RedisServer().start()
    except RuntimeError as e:  # no redis-server binary (REDIS_URL alone cannot be restarted)
        pytest.skip(str(e))
    status = SyncStatus(exchange="deribit", at=datetime(2025, 1, 1, tzinfo=UTC), ok=True,
                        instruments=0)
    registry = RedisRegistry(server.url, prefix="sink-test", socket_timeout=0.5)
    try:
        part = RegistrySink(registry, retries=6, delay=0.1).build("registry", 0, 1)
        server.stop()
        restart = threading.Timer(0.3, server.start)
        restart.start()
        part.write_batch([status])
        restart.join()
        assert registry.status("deribit") == status
        server.stop()
        impatient = RegistrySink(registry, retries=1, delay=0.01).build("registry", 0, 1)
        with pytest.raises(RegistryError, match="publishing events failed"):
            impatient.write_batch([status])
    finally:
        registry.close()
        server.close()
