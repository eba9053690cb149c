"""Run the real ccxt library offline against recorded exchange responses.

ccxt sends every REST call through `exchange.fetch(url, method, headers, body)`. `RecordedFetch`
replaces that method on one exchange instance with a lookup in a table of recorded bodies
(../shared/data/ccxt/recorded) and raises `UnknownRecordedURL` for any URL it does not know,
so ccxt's own parsing runs unchanged and nothing ever reaches the network.

The bodies are copied into memory per exchange, so a test can edit them (list, delist or change
an instrument) before the next `load_markets(reload=True)`.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.conftest import shared_file

CCXT_VERSION = "4.5.90"

# ccxt id -> {request key: (recorded file, envelope patch)}. Request keys are
# "METHOD host/path?sorted&query". The envelope patches follow PROVENANCE.md: they touch the
# response envelope only, never the instrument records.


def _bybit_category(category: str, *, empty: bool = False) -> Callable[[Any], Any]:
    """Add the `result.category` the recordings lack; `empty` answers "no such instruments"
    (the pre-launch listing ccxt also asks for, which was not recorded) in the same envelope."""

    def patch(body: Any) -> Any:
        body["result"]["category"] = category
        if empty:
            body["result"]["list"] = []
            body["result"]["nextPageCursor"] = ""
        return body

    return patch


_ROUTES: dict[str, dict[str, tuple[str, Callable[[Any], Any] | None]]] = {
    "binance": {
        "GET api.binance.com/api/v3/exchangeInfo": (
            "binance/http_spot_market_exchange_info.json", None),
        "GET fapi.binance.com/fapi/v1/exchangeInfo": (
            "binance/http_futures_market_exchange_info.json", None),
    },
    "binanceusdm": {
        "GET fapi.binance.com/fapi/v1/exchangeInfo": (
            "binance/http_futures_market_exchange_info.json", None),
    },
    "bybit": {
        "GET api.bybit.com/v5/market/instruments-info?category=spot": (
            "bybit/http_get_instruments_spot.json", _bybit_category("spot")),
        "GET api.bybit.com/v5/market/instruments-info?category=linear&limit=1000": (
            "bybit/http_get_instruments_linear.json", _bybit_category("linear")),
        "GET api.bybit.com/v5/market/instruments-info?category=linear&limit=1000"
        "&status=PreLaunch": (
            "bybit/http_get_instruments_linear.json", _bybit_category("linear", empty=True)),
        "GET api.bybit.com/v5/market/instruments-info?category=inverse&limit=1000": (
            "bybit/http_get_instruments_inverse.json", _bybit_category("inverse")),
        "GET api.bybit.com/v5/market/instruments-info?category=inverse&limit=1000"
        "&status=PreLaunch": (
            "bybit/http_get_instruments_inverse.json", _bybit_category("inverse", empty=True)),
        "GET api.bybit.com/v5/market/instruments-info?baseCoin=ETH&category=option": (
            "bybit/http_get_instruments_option.json", _bybit_category("option")),
    },
    "okx": {
        "GET www.okx.com/api/v5/public/instruments?instType=SPOT": (
            "okx/http_get_instruments_spot.json", None),
        "GET www.okx.com/api/v5/public/instruments?instType=SWAP": (
            "okx/http_get_instruments_swap.json", None),
        "GET www.okx.com/api/v5/public/instruments?instType=FUTURES": (
            "okx/http_get_instruments_futures.json", None),
        "GET www.okx.com/api/v5/public/instruments?instType=OPTION&uly=BTC-USD": (
            "okx/http_get_instruments_option.json", None),
    },
    "deribit": {
        "GET www.deribit.com/api/v2/public/get_instruments": (
            "deribit/http_get_instruments.json", None),
    },
    "coinbase": {
        "GET api.coinbase.com/api/v3/brokerage/market/products": (
            "coinbase/http_products.json", None),
        "GET api.coinbase.com/api/v3/brokerage/market/products?product_type=FUTURE": (
            "coinbase/http_products_future.json", None),
    },
    "krakenfutures": {
        "GET futures.kraken.com/derivatives/api/v3/instruments": (
            "kraken/http_futures_instruments.json", None),
    },
}

# Constructor settings that keep each exchange on its recorded endpoints: the markets types,
# option underlyings and currency endpoints the recordings cover.
EXCHANGE_CONFIG: dict[str, dict[str, Any]] = {
    "binance": {"options": {"fetchMarkets": {"types": ["spot", "linear"]}}},
    "binanceusdm": {},
    "bybit": {"options": {"fetchMarkets": {"types": ["spot", "linear", "inverse", "option"],
                                           "options": ["ETH"]}}},
    "okx": {"options": {"defaultUnderlying": ["BTC-USD"]}},
    "deribit": {},
    "coinbase": {},
    "krakenfutures": {},
}
# Currency endpoints are not recorded; these exchanges would call them from load_markets.
NO_CURRENCIES = ("deribit", "coinbase")

RECORDED_EXCHANGES = tuple(_ROUTES)


class UnknownRecordedURL(AssertionError):
    """ccxt asked for a URL that has no recorded response (the test must not go online)."""


def request_key(url: str, method: str = "GET") -> str:
    """'METHOD host/path?sorted query' for a URL, so query order does not matter."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query)))
    return f"{method.upper()} {parts.netloc}{parts.path}" + (f"?{query}" if query else "")


def recorded_bodies(exchange_id: str) -> dict[str, Any]:
    """Fresh, editable copies of the recorded response bodies for one ccxt exchange id."""
    if exchange_id not in _ROUTES:
        raise KeyError(f"no recorded responses for ccxt exchange {exchange_id!r}; "
                       f"recorded: {', '.join(RECORDED_EXCHANGES)}")
    bodies: dict[str, Any] = {}
    for key, (relative, patch) in _ROUTES[exchange_id].items():
        body = json.loads(shared_file(f"ccxt/recorded/{relative}").read_text())
        bodies[key] = patch(body) if patch else body
    return bodies


def parsed_expected(exchange_id: str) -> dict[str, Any]:
    """What ccxt 4.5.90 parsed from the recordings: {'precisionMode', 'markets', ...}."""
    path = shared_file(f"ccxt/ccxt-{CCXT_VERSION}-parsed/ccxt-{CCXT_VERSION}-{exchange_id}"
                       "-markets.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


class InOrder:
    """Answers for one request given in turn (the last one repeats): response bodies, or
    exceptions to raise, as when an exchange changes its listing or goes down between syncs."""

    def __init__(self, *answers: Any) -> None:
        if not answers:
            raise ValueError("InOrder needs at least one answer")
        self.answers = list(answers)
        self.served = 0

    def next(self) -> Any:
        answer = self.answers[min(self.served, len(self.answers) - 1)]
        self.served += 1
        return answer


class RecordedFetch:
    """A stand-in for `exchange.fetch` that answers from recorded bodies, loudly offline.

    `bodies` maps request keys to a body, an exception instance (raised), or `InOrder`; it may be
    edited between calls. `calls` lists every request key asked for; `fail_with` makes every
    call raise; `delay` (seconds) makes every answer slow.
    """

    def __init__(self, bodies: dict[str, Any]) -> None:
        self.bodies = bodies
        self.calls: list[str] = []
        self.fail_with: BaseException | None = None
        self.delay = 0.0

    def answer(self, url: str, method: str = "GET", headers: Any = None,
               body: Any = None) -> Any:
        key = request_key(url, method)
        self.calls.append(key)
        if self.fail_with is not None:
            raise self.fail_with
        if key not in self.bodies:
            raise UnknownRecordedURL(
                f"no recorded response for {key!r} (body={body!r}); known: {sorted(self.bodies)}")
        answer = self.bodies[key]
        if isinstance(answer, InOrder):
            answer = answer.next()
        if isinstance(answer, BaseException):
            raise answer
        return copy.deepcopy(answer)

    def install(self, exchange: Any) -> RecordedFetch:
        """Replace `exchange.fetch` (sync or async ccxt) with this recorder."""
        async def fetch_async(url: str, method: str = "GET", headers: Any = None,
                              body: Any = None) -> Any:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self.answer(url, method, headers, body)

        def fetch_sync(url: str, method: str = "GET", headers: Any = None,
                       body: Any = None) -> Any:
            if self.delay:
                time.sleep(self.delay)
            return self.answer(url, method, headers, body)

        is_async = inspect.iscoroutinefunction(type(exchange).fetch)
        exchange.fetch = fetch_async if is_async else fetch_sync
        return self

    @staticmethod
    def uninstall(exchange: Any) -> None:
        """Give the exchange back its real `fetch` (the network stack)."""
        exchange.__dict__.pop("fetch", None)


def recorded_exchange(exchange_id: str, *, use_async: bool = True,
                      bodies: dict[str, Any] | None = None,
                      rate_limit_ms: int | None = 1) -> tuple[Any, RecordedFetch]:
    """A real ccxt exchange (async by default) whose fetch answers from the recordings.

    ccxt's request throttle stays on, but at `rate_limit_ms` per request instead of the
    venue's (50-100 ms, up to a second per market load), since nothing goes to the venue;
    None keeps the venue's.
    """
    if use_async:
        import ccxt.async_support as ccxt_module
    else:
        import ccxt as ccxt_module  # type: ignore[no-redef]
    config = copy.deepcopy(EXCHANGE_CONFIG[exchange_id])
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    exchange = getattr(ccxt_module, exchange_id)(config)
    if exchange_id in NO_CURRENCIES:
        exchange.has["fetchCurrencies"] = False
    recorder = RecordedFetch(bodies if bodies is not None else recorded_bodies(exchange_id))
    recorder.install(exchange)
    return exchange, recorder


def make_unreachable(exchange: Any) -> None:
    """Give the exchange its real network stack back, routed through a closed local port: every
    request then fails inside ccxt exactly as an unreachable exchange does (connection refused),
    without leaving the machine."""
    from tests.redis_server import free_port

    RecordedFetch.uninstall(exchange)
    exchange.httpProxy = f"http://127.0.0.1:{free_port()}"


COINM_URL = "GET dapi.binance.com/dapi/v1/exchangeInfo"


def coinm_bodies_from_usdm() -> dict[str, Any]:
    """Binance COIN-M (binance-delivery) exchangeInfo, derived in memory from the recorded USD-M
    body, since no COIN-M response is recorded: the USD-M records of BTCUSDT (perpetual) and
    BTCUSDT_220325 (quarterly) re-margined in BTC as COIN-M lists them (BTCUSD_PERP,
    BTCUSD_220325, quote USD, margin BTC, contractSize 100, `contractStatus`)."""
    body = recorded_bodies("binanceusdm")["GET fapi.binance.com/fapi/v1/exchangeInfo"]
    body["futuresType"] = "COIN_MARGINED"
    records = []
    for record in body["symbols"]:
        if record["symbol"] not in ("BTCUSDT", "BTCUSDT_220325"):
            continue
        suffix = "PERP" if record["contractType"] == "PERPETUAL" else record["symbol"][-6:]
        record = dict(record, symbol=f"BTCUSD_{suffix}", pair="BTCUSD", quoteAsset="USD",
                      marginAsset="BTC", contractSize=100,
                      contractStatus=record.pop("status", "TRADING"))
        records.append(record)
    body["symbols"] = records
    return {COINM_URL: body}


OKX_SWAP = "GET www.okx.com/api/v5/public/instruments?instType=SWAP"


def next_listing(body: dict[str, Any]) -> dict[str, Any]:
    """The recorded OKX swap listing an hour later: SOL-USDT-SWAP listed (a copy of the
    ETH-USDT-SWAP record, renamed), BTC-USDT-SWAP delisted, BTC-USD-SWAP's tick 0.1 -> 0.5."""
    body = copy.deepcopy(body)
    records = {r["instId"]: r for r in body["data"]}
    sol = dict(records["ETH-USDT-SWAP"], instId="SOL-USDT-SWAP", instFamily="SOL-USDT",
               uly="SOL-USDT", ctValCcy="SOL", ctVal="1", listTime="1733000000000")
    records["BTC-USD-SWAP"]["tickSz"] = "0.5"
    del records["BTC-USDT-SWAP"]
    body["data"] = [*records.values(), sol]
    return body
