"""CCXTAdapter: real ccxt (sync and async) offline, retries, spacing, clear failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import ccxt
import pytest

from connectors.instruments.ccxt_adapter import (
    CCXTAdapter,
    ExchangeUnavailableError,
    InstrumentSyncError,
)
from connectors.instruments.venues import UnknownExchangeError
from tests.connectors.instruments.recorded import (
    InOrder,
    make_unreachable,
    recorded_exchange,
)

pytestmark = pytest.mark.shared_data

OKX_SWAP = "GET www.okx.com/api/v5/public/instruments?instType=SWAP"
USDM = "GET fapi.binance.com/fapi/v1/exchangeInfo"
MakeAdapter = Callable[..., tuple[CCXTAdapter, dict[str, Any], dict[str, Any]]]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_load_definitions_groups_by_tardis_exchange(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("okx")

    async def go() -> Any:
        try:
            return await adapter.load_definitions(
                "okx", tardis_exchanges=["okex-swap", "okex-options"])
        finally:
            await adapter.close()

    snap = run(go())
    assert sorted(snap.by_exchange) == ["okex-options", "okex-swap"]
    assert sorted(snap.by_exchange["okex-swap"]) == ["BTC-USD-SWAP", "BTC-USDT-SWAP",
                                                     "ETH-USDT-SWAP"]
    assert len(snap.by_exchange["okex-options"]) == 4
    # spot and futures markets were loaded by ccxt but belong to other Tardis exchanges
    assert len(snap.skipped) == 5 + 6
    assert len(recorders["okx"].calls) == 4


def test_market_type_filter(make_adapter: MakeAdapter) -> None:
    adapter, _, _ = make_adapter("deribit")
    snap = run(adapter.load_definitions("deribit", tardis_exchanges=["deribit"],
                                        market_types=["option"]))
    assert list(snap.by_exchange["deribit"]) == ["BTC-27DEC24-100000-C"]


def test_a_sync_ccxt_client_runs_off_the_event_loop() -> None:
    """A sync client's blocking load runs in a worker thread: the loop keeps ticking."""
    exchange, recorder = recorded_exchange("binanceusdm", use_async=False)
    recorder.delay = 0.3
    adapter = CCXTAdapter([exchange], min_interval=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def go() -> Any:
        task = asyncio.create_task(ticker())
        snap = await adapter.load_definitions("binanceusdm", tardis_exchanges=["binance-futures"])
        task.cancel()
        return snap

    snap = run(go())
    assert len(snap.by_exchange["binance-futures"]) == 3
    assert ticks >= 10


def test_transient_failures_are_retried(make_adapter: MakeAdapter) -> None:
    adapter, exchanges, recorders = make_adapter("binanceusdm", max_retries=3)
    body = recorders["binanceusdm"].bodies[USDM]
    recorders["binanceusdm"].bodies[USDM] = InOrder(
        ccxt.RequestTimeout("binanceusdm GET https://fapi.binance.com/fapi/v1/exchangeInfo"),
        ccxt.DDoSProtection("binanceusdm 429 Too Many Requests"), body)
    snap = run(adapter.load_markets("binanceusdm"))
    assert len(snap.markets) == 3
    assert recorders["binanceusdm"].calls == [USDM] * 3
    assert exchanges["binanceusdm"].enableRateLimit is True


def test_unreachable_exchange_fails_clearly_after_the_retries(make_adapter: MakeAdapter) -> None:
    """The real ccxt network stack against a closed local port: connection refused."""
    adapter, exchanges, _ = make_adapter("binanceusdm", max_retries=2)
    make_unreachable(exchanges["binanceusdm"])

    async def go() -> None:
        try:
            await adapter.load_markets("binanceusdm")
        finally:
            await adapter.close()

    with pytest.raises(ExchangeUnavailableError) as info:
        run(go())
    err = info.value
    assert err.exchange == "binanceusdm" and err.attempts == 3
    assert isinstance(err.last_error, ccxt.NetworkError)
    assert str(err).startswith("binanceusdm: exchange unreachable after 3 attempts in ")
    assert "ExchangeNotAvailable" in str(err) and "fapi.binance.com" in str(err)


def test_errors_a_retry_cannot_fix_fail_at_once(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("okx", max_retries=5)
    recorders["okx"].fail_with = ccxt.AuthenticationError("okx 50113 Invalid Sign")
    with pytest.raises(InstrumentSyncError, match="okx: loading markets failed with an error "
                       "a retry cannot fix: AuthenticationError: okx 50113") as info:
        run(adapter.load_markets("okx"))
    assert not isinstance(info.value, ExchangeUnavailableError)
    assert len(recorders["okx"].calls) == 1


def test_a_hanging_exchange_times_out(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("krakenfutures", max_retries=1, timeout=0.05)
    recorders["krakenfutures"].delay = 3.0  # two waited-out attempts would take 6 s
    started = time.monotonic()
    with pytest.raises(ExchangeUnavailableError, match="after 2 attempts.*TimeoutError: no "
                       "answer within the adapter's timeout"):
        run(adapter.load_markets("krakenfutures"))
    assert time.monotonic() - started < 0.9


def test_bugs_are_not_mistaken_for_outages(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("okx")
    recorders["okx"].fail_with = KeyError("a bug")
    with pytest.raises(KeyError, match="a bug"):
        run(adapter.load_markets("okx"))


def test_loads_are_spaced_by_min_interval(make_adapter: MakeAdapter) -> None:
    adapter, _, recorders = make_adapter("coinbase", min_interval=0.25)

    async def twice() -> float:
        await adapter.load_markets("coinbase")
        started = time.monotonic()
        await adapter.load_markets("coinbase")
        return time.monotonic() - started

    assert run(twice()) >= 0.2
    assert len(recorders["coinbase"].calls) == 4


def test_backoff_doubles_and_is_capped() -> None:
    exchange, _ = recorded_exchange("deribit")
    adapter = CCXTAdapter([exchange], retry_initial_delay=1.0, retry_max_delay=5.0, jitter=0.0)
    assert [adapter.backoff_delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittery = CCXTAdapter([exchange], retry_initial_delay=1.0, jitter=0.5)
    assert all(1.0 <= jittery.backoff_delay(1) <= 1.5 for _ in range(50))


def test_constructor_validates() -> None:
    exchange, _ = recorded_exchange("deribit")
    with pytest.raises(ValueError, match="at least one ccxt exchange"):
        CCXTAdapter([])
    with pytest.raises(TypeError, match="expected a ccxt exchange instance, got str"):
        CCXTAdapter(["deribit"])
    with pytest.raises(ValueError, match="does not match the instance's id 'deribit'"):
        CCXTAdapter({"okx": exchange})
    with pytest.raises(ValueError, match="two instances of ccxt exchange 'deribit'"):
        CCXTAdapter([exchange, recorded_exchange("deribit")[0]])
    with pytest.raises(UnknownExchangeError, match="'kraken' is not supported"):
        CCXTAdapter([ccxt.kraken()])
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        CCXTAdapter([exchange], max_retries=-1)
    with pytest.raises(ValueError, match="retry_max_delay must be >= retry_initial_delay"):
        CCXTAdapter([exchange], retry_initial_delay=5, retry_max_delay=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        CCXTAdapter([exchange], timeout=0)
    adapter = CCXTAdapter([exchange])
    with pytest.raises(KeyError, match="no ccxt exchange 'okx'; it has deribit"):
        adapter.exchange("okx")
    with pytest.raises(ValueError, match="listed by ccxt 'okx', not 'deribit'"):
        run(adapter.load_definitions("deribit", tardis_exchanges=["okex-swap"]))


def test_create_narrows_ccxt_to_the_needed_markets() -> None:
    adapter = CCXTAdapter.create(["okx", "bybit"], tardis_exchanges=["okex-swap", "bybit-spot",
                                                                     "bybit-options"],
                                 ccxt_config={"okx": {"options": {"defaultUnderlying":
                                                                  ["BTC-USD"]}}},
                                 timeout=5.0)
    try:
        okx, bybit = adapter.exchange("okx"), adapter.exchange("bybit")
        assert okx.options["fetchMarkets"]["types"] == ["swap"]
        assert okx.options["defaultUnderlying"] == ["BTC-USD"]
        assert bybit.options["fetchMarkets"]["types"] == ["spot", "option"]
        assert okx.timeout == 5000 and okx.enableRateLimit
        assert okx.has["fetchCurrencies"] is False  # one request per sync, not two
    finally:
        run(adapter.close())
