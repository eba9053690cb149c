"""Fixtures: real ccxt run offline on the recorded responses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from connectors.instruments.ccxt_adapter import CCXTAdapter
from tests.connectors.instruments.recorded import (
    RECORDED_EXCHANGES,
    RecordedFetch,
    recorded_exchange,
)


def load_recorded(exchange_id: str) -> tuple[dict[str, Any], int]:
    """(markets, precisionMode) that real async ccxt parses from the recordings."""

    async def run() -> tuple[dict[str, Any], int]:
        exchange, recorder = recorded_exchange(exchange_id)
        try:
            markets = await exchange.load_markets(True)
        finally:
            await exchange.close()
        assert recorder.calls, "ccxt made no request: the recordings were not used"
        return dict(markets), int(exchange.precisionMode)

    return asyncio.run(run())


@pytest.fixture(scope="session")
def ccxt_markets() -> dict[str, tuple[dict[str, Any], int]]:
    """{ccxt id: (markets, precisionMode)} for every recorded exchange."""
    return {ex: load_recorded(ex) for ex in RECORDED_EXCHANGES}


@pytest.fixture
def make_adapter() -> Callable[..., tuple[CCXTAdapter, dict[str, Any], dict[str, RecordedFetch]]]:
    """make_adapter('okx', ...) -> (adapter over recorded async clients, {id: exchange},
    {id: recorder}); retries are fast so failure tests stay quick."""

    def make(*ids: str, bodies: dict[str, dict[str, Any]] | None = None,
             **kwargs: Any) -> tuple[CCXTAdapter, dict[str, Any], dict[str, RecordedFetch]]:
        exchanges, recorders = {}, {}
        for ccxt_id in ids:
            ex, rec = recorded_exchange(ccxt_id, bodies=(bodies or {}).get(ccxt_id))
            exchanges[ccxt_id], recorders[ccxt_id] = ex, rec
        settings: dict[str, Any] = {"retry_initial_delay": 0.01, "retry_max_delay": 0.02,
                                    "min_interval": 0.0, "max_retries": 2}
        settings.update(kwargs)
        return CCXTAdapter(list(exchanges.values()), **settings), exchanges, recorders

    return make
