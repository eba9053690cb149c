"""Change detection across two syncs of real ccxt over recorded (then edited) responses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from connectors.instruments.ccxt_adapter import CCXTAdapter
from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.events import (
    InstrumentChange,
    SnapshotRejected,
    SyncStatus,
    diff_snapshot,
    event_from_json,
    event_to_json,
)
from tests.connectors.instruments.recorded import OKX_SWAP, InOrder, next_listing

pytestmark = pytest.mark.shared_data

T0 = datetime(2024, 12, 1, tzinfo=UTC)
T1 = datetime(2024, 12, 1, 1, tzinfo=UTC)
MakeAdapter = Callable[..., tuple[CCXTAdapter, dict[str, Any], dict[str, Any]]]


def two_syncs(make_adapter: MakeAdapter) -> tuple[dict[str, InstrumentDefinition],
                                                  dict[str, InstrumentDefinition]]:
    adapter, _, recorders = make_adapter("okx")
    bodies = recorders["okx"].bodies
    bodies[OKX_SWAP] = InOrder(bodies[OKX_SWAP], next_listing(bodies[OKX_SWAP]))

    async def go() -> tuple[Any, Any]:
        try:
            first = await adapter.load_definitions("okx", tardis_exchanges=["okex-swap"])
            second = await adapter.load_definitions("okx", tardis_exchanges=["okex-swap"])
            return first, second
        finally:
            await adapter.close()

    first, second = asyncio.run(go())
    return first.by_exchange["okex-swap"], second.by_exchange["okex-swap"]


def test_one_added_one_delisted_one_changed(make_adapter: MakeAdapter) -> None:
    before, after = two_syncs(make_adapter)
    events = diff_snapshot("okex-swap", before, after, T1)
    assert [(e.kind, e.symbol) for e in events] == [
        ("added", "SOL-USDT-SWAP"), ("changed", "BTC-USD-SWAP"), ("delisted", "BTC-USDT-SWAP")]
    added, changed, delisted = events
    assert added.definition.ccxt_symbol == "SOL/USDT:USDT"
    assert added.definition.contract_size == Decimal("1")
    assert changed.changes == {"tick_size": ("0.1", "0.5"), "price_precision": ("0.1", "0.5")}
    assert changed.definition.tick_size == Decimal("0.5")
    assert delisted.definition == before["BTC-USDT-SWAP"]  # the last known definition
    assert changed.describe() == ("okex-swap BTC-USD-SWAP changed: price_precision 0.1 -> 0.5, "
                                  "tick_size 0.1 -> 0.5")


def test_an_unchanged_listing_yields_no_events(make_adapter: MakeAdapter) -> None:
    before, _ = two_syncs(make_adapter)
    assert diff_snapshot("okex-swap", before, dict(before), T1) == []
    assert [e.kind for e in diff_snapshot("okex-swap", {}, before, T0)] == ["added"] * 3


def test_a_mass_delisting_is_rejected_as_suspicious(make_adapter: MakeAdapter) -> None:
    before, _ = two_syncs(make_adapter)
    one_left = {"BTC-USD-SWAP": before["BTC-USD-SWAP"]}
    with pytest.raises(SnapshotRejected, match="drops 2 of 3 instruments"):
        diff_snapshot("okex-swap", before, one_left, T1, max_delisted_fraction=0.5)
    assert len(diff_snapshot("okex-swap", before, one_left, T1, max_delisted_fraction=1.0)) == 2
    with pytest.raises(ValueError, match="within"):
        diff_snapshot("okex-swap", before, one_left, T1, max_delisted_fraction=1.5)


def test_events_round_trip_through_json(make_adapter: MakeAdapter) -> None:
    before, after = two_syncs(make_adapter)
    events: list[InstrumentChange | SyncStatus] = [
        *diff_snapshot("okex-swap", before, after, T1),
        SyncStatus(exchange="okex-swap", at=T1, ok=False, instruments=3, last_success=T0,
                   error="okx: exchange unreachable")]
    for event in events:
        assert event_from_json(event_to_json(event)) == event
    assert "unreachable" in events[-1].describe() and "stale" in events[-1].describe()
