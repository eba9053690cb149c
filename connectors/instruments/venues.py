"""Which Tardis.dev exchange covers which ccxt markets.

Tardis splits venues by market type (binance = spot, binance-futures = USD-M, okex-swap =
OKX perpetuals, ...) while ccxt has one client per venue (or per margin family). A native
symbol such as BTCUSDT therefore means different instruments on different Tardis exchanges,
so instruments are keyed on (Tardis exchange, Tardis symbol). Tardis symbols are the venue's
native ids in upper case.

This module is pure data and functions (no ccxt import), so configuration validation can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Literal

MarketType = Literal["spot", "perpetual", "future", "option"]
MARKET_TYPES: tuple[MarketType, ...] = ("spot", "perpetual", "future", "option")
Settlement = Literal["linear", "inverse"]

# ccxt market 'type' -> our market type. ccxt 'margin' markets are spot instruments.
_CCXT_TYPES: dict[str, MarketType] = {
    "spot": "spot", "margin": "spot", "swap": "perpetual", "future": "future", "option": "option",
}


class UnmappedMarketError(LookupError):
    """A ccxt market that no supported Tardis exchange covers (or that is not an instrument)."""


class UnknownExchangeError(ValueError):
    """An exchange id that is neither a supported Tardis exchange nor a supported ccxt id."""


@dataclass(frozen=True)
class TardisVenue:
    """One Tardis exchange: the ccxt client that lists it and the markets it covers.

    `ccxt_market_types` are the values of ccxt's `options.fetchMarkets.types` that load these
    markets (None where the ccxt client has no such option or loads everything anyway).
    """

    tardis_exchange: str
    ccxt_exchange: str
    market_types: frozenset[MarketType]
    settlement: Settlement | None = None
    ccxt_market_types: tuple[str, ...] | None = None


TARDIS_VENUES: dict[str, TardisVenue] = {v.tardis_exchange: v for v in (
    TardisVenue("binance", "binance", frozenset({"spot"}), ccxt_market_types=("spot",)),
    TardisVenue("binance-futures", "binanceusdm", frozenset({"perpetual", "future"}), "linear"),
    TardisVenue("binance-delivery", "binancecoinm", frozenset({"perpetual", "future"}),
                "inverse"),
    TardisVenue("bybit", "bybit", frozenset({"perpetual", "future"}),
                ccxt_market_types=("linear", "inverse")),
    TardisVenue("bybit-spot", "bybit", frozenset({"spot"}), ccxt_market_types=("spot",)),
    TardisVenue("bybit-options", "bybit", frozenset({"option"}), ccxt_market_types=("option",)),
    TardisVenue("okex", "okx", frozenset({"spot"}), ccxt_market_types=("spot",)),
    TardisVenue("okex-swap", "okx", frozenset({"perpetual"}), ccxt_market_types=("swap",)),
    TardisVenue("okex-futures", "okx", frozenset({"future"}), ccxt_market_types=("future",)),
    TardisVenue("okex-options", "okx", frozenset({"option"}), ccxt_market_types=("option",)),
    TardisVenue("deribit", "deribit", frozenset({"spot", "perpetual", "future", "option"})),
    TardisVenue("coinbase", "coinbase", frozenset({"spot"})),
    TardisVenue("cryptofacilities", "krakenfutures", frozenset({"perpetual", "future"})),
)}
TARDIS_EXCHANGES: tuple[str, ...] = tuple(TARDIS_VENUES)

# ccxt clients that list the same venue's markets (binance's one client can load all three).
CCXT_FAMILIES: dict[str, str] = {
    "binance": "binance", "binanceusdm": "binance", "binancecoinm": "binance",
    "bybit": "bybit", "okx": "okx", "deribit": "deribit", "coinbase": "coinbase",
    "krakenfutures": "krakenfutures",
}
CCXT_EXCHANGES: tuple[str, ...] = tuple(CCXT_FAMILIES)


def tardis_venue(tardis_exchange: str) -> TardisVenue:
    """The venue record of a Tardis exchange id; raises UnknownExchangeError naming the options."""
    venue = TARDIS_VENUES.get(tardis_exchange)
    if venue is None:
        raise UnknownExchangeError(unknown_exchange_message(tardis_exchange))
    return venue


def unknown_exchange_message(name: str) -> str:
    """A readable 'unknown exchange' message with suggestions (ccxt ids map to Tardis ids)."""
    if name in CCXT_FAMILIES:
        family = CCXT_FAMILIES[name]
        covering = [v.tardis_exchange for v in TARDIS_VENUES.values()
                    if CCXT_FAMILIES[v.ccxt_exchange] == family]
        return (f"{name!r} is a ccxt exchange id; use the Tardis exchange id(s) "
                f"{', '.join(covering)}")
    close = get_close_matches(name, TARDIS_EXCHANGES, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown Tardis exchange {name!r}{hint}; supported: {', '.join(TARDIS_EXCHANGES)}")


def ccxt_family(ccxt_exchange: str) -> str:
    """The venue family of a ccxt id (binanceusdm -> binance); raises for unsupported ids."""
    family = CCXT_FAMILIES.get(ccxt_exchange)
    if family is None:
        raise UnknownExchangeError(
            f"ccxt exchange {ccxt_exchange!r} is not supported for instrument sync; "
            f"supported: {', '.join(CCXT_EXCHANGES)}")
    return family


def market_type_of(market: Mapping[str, Any]) -> MarketType:
    """spot | perpetual | future | option for a ccxt market; raises for combos and indexes."""
    symbol = market.get("symbol")
    ccxt_type = market.get("type")
    if market.get("index") or not isinstance(symbol, str) or "/" not in symbol:
        raise UnmappedMarketError(
            f"ccxt market {symbol!r} (type {ccxt_type!r}) is not a single instrument "
            "(a combo or an index), so it has no instrument definition")
    mtype = _CCXT_TYPES.get(str(ccxt_type))
    if mtype is None:
        raise UnmappedMarketError(f"ccxt market {symbol!r} has unsupported type {ccxt_type!r}")
    return mtype


def settlement_of(market: Mapping[str, Any]) -> Settlement | None:
    """'linear' or 'inverse' for a derivative (None for spot or when ccxt does not say)."""
    if market.get("linear"):
        return "linear"
    if market.get("inverse"):
        return "inverse"
    return None


def tardis_exchange_for(ccxt_exchange: str, market: Mapping[str, Any]) -> str:
    """The Tardis exchange that records this ccxt market; UnmappedMarketError says why not."""
    family = ccxt_family(ccxt_exchange)
    mtype = market_type_of(market)
    settle = settlement_of(market)
    for venue in TARDIS_VENUES.values():
        if CCXT_FAMILIES[venue.ccxt_exchange] != family or mtype not in venue.market_types:
            continue
        if venue.settlement is not None and venue.settlement != settle:
            continue
        return venue.tardis_exchange
    covered = [f"{v.tardis_exchange} ({', '.join(sorted(v.market_types))}"
               + (f", {v.settlement})" if v.settlement else ")")
               for v in TARDIS_VENUES.values() if CCXT_FAMILIES[v.ccxt_exchange] == family]
    raise UnmappedMarketError(
        f"{ccxt_exchange} {mtype}{' ' + settle if settle else ''} market {market.get('symbol')!r} "
        f"({market.get('id')!r}) has no Tardis.dev exchange; Tardis covers this venue as "
        f"{'; '.join(covered)}")


def tardis_symbol_for(venue_symbol: str) -> str:
    """Tardis symbols are the venue's native ids in upper case."""
    return venue_symbol.upper()


def ccxt_exchanges_for(tardis_exchanges: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """Group Tardis exchanges by the ccxt client that loads them: {ccxt id: [tardis ids]}."""
    grouped: dict[str, list[str]] = {}
    for name in tardis_exchanges:
        venue = tardis_venue(name)
        grouped.setdefault(venue.ccxt_exchange, []).append(name)
    return grouped


def ccxt_fetch_types(tardis_exchanges: list[str] | tuple[str, ...]) -> list[str] | None:
    """Merged `options.fetchMarkets.types` for Tardis exchanges sharing one ccxt client."""
    merged: list[str] = []
    for name in tardis_exchanges:
        types = tardis_venue(name).ccxt_market_types
        if types is None:
            return None
        merged.extend(t for t in types if t not in merged)
    return merged
