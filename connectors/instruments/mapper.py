"""`InstrumentMapper`: VENUE <-> CCXT <-> Tardis symbol conversions.

Three naming schemes meet here:
- VENUE: the exchange's native id (BTCUSDT, BTC-USD-SWAP, PF_AAPLxUSD), unique only within one
  market type of one venue (binance spot and USD-M both have BTCUSDT);
- CCXT: (ccxt exchange id, unified symbol) such as ("binanceusdm", "BTC/USDT:USDT");
- Tardis: (Tardis exchange id, symbol) such as ("binance-futures", "BTCUSDT").

Venue and Tardis symbols are therefore keyed on the Tardis exchange, which separates market
types. The mapper is built from instrument definitions (loaded from ccxt or from the registry),
because the reverse conversions (PF_AAPLXUSD -> PF_AAPLxUSD, a Tardis symbol -> ccxt's unified
symbol with its expiry date) cannot be computed from a string alone. Unknown symbols raise
`UnknownInstrumentError` with suggestions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from difflib import get_close_matches
from typing import Any

from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.venues import (
    CCXT_FAMILIES,
    TARDIS_VENUES,
    UnknownExchangeError,
    unknown_exchange_message,
)


class UnknownInstrumentError(KeyError):
    """No instrument with this name on this exchange (the message says what was looked up)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else "unknown instrument"


class AmbiguousInstrumentError(LookupError):
    """A name that matches several instruments (a native id on a ccxt id spanning markets)."""


class InstrumentMapper:
    """Conversions between the three schemes over a set of instrument definitions.

    Thread-safe: the provider updates it from its refresh task while callers read.
    """

    def __init__(self, definitions: Iterable[InstrumentDefinition] = ()) -> None:
        self._lock = threading.RLock()
        self._by_tardis: dict[tuple[str, str], InstrumentDefinition] = {}
        self._by_venue: dict[tuple[str, str], InstrumentDefinition] = {}
        self._by_ccxt: dict[tuple[str, str], InstrumentDefinition] = {}
        self.update(definitions)

    @classmethod
    def from_ccxt_markets(cls, ccxt_exchange: str, markets: Mapping[str, Mapping[str, Any]],
                          precision_mode: int | str) -> InstrumentMapper:
        """A mapper over the Tardis-covered markets of one ccxt `exchange.markets`."""
        from connectors.instruments.ccxt_adapter import definitions_from_markets

        defs, _skipped = definitions_from_markets(ccxt_exchange, markets, precision_mode)
        return cls(defs)

    # -- maintenance ----------------------------------------------------------------------

    def add(self, definition: InstrumentDefinition) -> None:
        """Add or replace one definition."""
        if not isinstance(definition, InstrumentDefinition):
            raise TypeError(f"expected an InstrumentDefinition, got {type(definition).__name__}")
        with self._lock:
            old = self._by_tardis.get(definition.key)
            if old is not None:
                self._unindex(old)
            self._by_tardis[definition.key] = definition
            self._by_venue[(definition.tardis_exchange, definition.venue_symbol)] = definition
            self._by_ccxt[(definition.ccxt_exchange, definition.ccxt_symbol)] = definition

    def update(self, definitions: Iterable[InstrumentDefinition]) -> None:
        for definition in definitions:
            self.add(definition)

    def remove(self, tardis_exchange: str, tardis_symbol: str) -> InstrumentDefinition | None:
        """Remove one instrument; returns it (None if it was not there)."""
        with self._lock:
            old = self._by_tardis.pop((tardis_exchange, tardis_symbol), None)
            if old is not None:
                self._unindex(old)
            return old

    def replace_exchange(self, tardis_exchange: str,
                         definitions: Iterable[InstrumentDefinition]) -> None:
        """Make `definitions` the whole listing of one Tardis exchange."""
        defs = list(definitions)
        for d in defs:
            if d.tardis_exchange != tardis_exchange:
                raise ValueError(f"{d.key} does not belong to {tardis_exchange!r}")
        with self._lock:
            for key in [k for k in self._by_tardis if k[0] == tardis_exchange]:
                self.remove(*key)
            self.update(defs)

    def _unindex(self, d: InstrumentDefinition) -> None:
        self._by_tardis.pop(d.key, None)
        if self._by_venue.get((d.tardis_exchange, d.venue_symbol)) is d:
            del self._by_venue[(d.tardis_exchange, d.venue_symbol)]
        if self._by_ccxt.get((d.ccxt_exchange, d.ccxt_symbol)) is d:
            del self._by_ccxt[(d.ccxt_exchange, d.ccxt_symbol)]

    # -- queries ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_tardis)

    def definitions(self, exchange: str | None = None) -> list[InstrumentDefinition]:
        """All definitions, or those of one exchange, sorted by key. A Tardis id (binance,
        bybit, deribit, coinbase are Tardis ids too) selects exactly that Tardis exchange;
        a ccxt-only id (okx, binanceusdm) selects what that ccxt venue lists."""
        with self._lock:
            items = list(self._by_tardis.values())
        if exchange is not None:
            tardis, ccxt_ids = self._exchange_scope(exchange)
            if tardis is not None:
                items = [d for d in items if d.tardis_exchange == tardis]
            else:
                items = [d for d in items if d.ccxt_exchange in ccxt_ids]
        return sorted(items, key=lambda d: d.key)

    def by_tardis(self, tardis_exchange: str, tardis_symbol: str) -> InstrumentDefinition:
        """The definition of a Tardis (exchange, symbol); symbols are matched in upper case."""
        self._check_tardis_exchange(tardis_exchange)
        with self._lock:
            found = self._by_tardis.get((tardis_exchange, tardis_symbol.upper()))
        if found is None:
            raise self._unknown(tardis_exchange, tardis_symbol, "Tardis")
        return found

    def by_venue(self, tardis_exchange: str, venue_symbol: str) -> InstrumentDefinition:
        """The definition of a native id on a Tardis exchange (which fixes the market type)."""
        self._check_tardis_exchange(tardis_exchange)
        with self._lock:
            found = self._by_venue.get((tardis_exchange, venue_symbol))
        if found is None:
            raise self._unknown(tardis_exchange, venue_symbol, "venue")
        return found

    def by_ccxt(self, ccxt_exchange: str, ccxt_symbol: str) -> InstrumentDefinition:
        """The definition of a ccxt (exchange, unified symbol); binance, binanceusdm and
        binancecoinm are one venue, so any of them finds the others' markets."""
        family = CCXT_FAMILIES.get(ccxt_exchange)
        if family is None:
            raise UnknownExchangeError(
                f"unknown ccxt exchange {ccxt_exchange!r}; supported: {', '.join(CCXT_FAMILIES)}")
        with self._lock:
            found = self._by_ccxt.get((ccxt_exchange, ccxt_symbol))
            if found is None:
                for other, fam in CCXT_FAMILIES.items():
                    if fam == family and (other, ccxt_symbol) in self._by_ccxt:
                        found = self._by_ccxt[(other, ccxt_symbol)]
                        break
        if found is None:
            raise self._unknown(ccxt_exchange, ccxt_symbol, "ccxt")
        return found

    # -- conversions -----------------------------------------------------------------------

    def venue_to_ccxt(self, tardis_exchange: str, venue_symbol: str) -> tuple[str, str]:
        """(Tardis exchange, native id) -> (ccxt exchange, unified symbol)."""
        d = self.by_venue(tardis_exchange, venue_symbol)
        return (d.ccxt_exchange, d.ccxt_symbol)

    def ccxt_to_tardis(self, ccxt_exchange: str, ccxt_symbol: str) -> tuple[str, str]:
        """(ccxt exchange, unified symbol) -> (Tardis exchange, Tardis symbol)."""
        return self.by_ccxt(ccxt_exchange, ccxt_symbol).key

    def tardis_to_venue(self, tardis_exchange: str, tardis_symbol: str) -> str:
        """(Tardis exchange, Tardis symbol) -> native id (PF_AAPLXUSD -> PF_AAPLxUSD)."""
        return self.by_tardis(tardis_exchange, tardis_symbol).venue_symbol

    def venue_to_tardis(self, tardis_exchange: str, venue_symbol: str) -> tuple[str, str]:
        return self.by_venue(tardis_exchange, venue_symbol).key

    def tardis_to_ccxt(self, tardis_exchange: str, tardis_symbol: str) -> tuple[str, str]:
        d = self.by_tardis(tardis_exchange, tardis_symbol)
        return (d.ccxt_exchange, d.ccxt_symbol)

    def ccxt_to_venue(self, ccxt_exchange: str, ccxt_symbol: str) -> tuple[str, str]:
        """(ccxt exchange, unified symbol) -> (Tardis exchange, native id)."""
        d = self.by_ccxt(ccxt_exchange, ccxt_symbol)
        return (d.tardis_exchange, d.venue_symbol)

    def resolve(self, exchange: str, symbol: str) -> InstrumentDefinition:
        """Find an instrument by any scheme: `exchange` is a Tardis or a ccxt id, `symbol` a
        Tardis symbol, a native id or a ccxt unified symbol.

        Tardis names win (binance + BTCUSDT is binance spot); a native id given with a ccxt id
        that spans several market types raises AmbiguousInstrumentError naming the candidates.
        """
        if not isinstance(exchange, str) or not isinstance(symbol, str) or not symbol:
            raise TypeError(f"exchange and symbol must be non-empty strings, got "
                            f"{exchange!r}, {symbol!r}")
        tardis, ccxt_ids = self._exchange_scope(exchange)
        with self._lock:
            if tardis is not None:
                for index, key in ((self._by_tardis, (tardis, symbol.upper())),
                                   (self._by_venue, (tardis, symbol))):
                    if key in index:
                        return index[key]
                family = CCXT_FAMILIES[TARDIS_VENUES[tardis].ccxt_exchange]
                for ccxt_id, fam in CCXT_FAMILIES.items():
                    d = self._by_ccxt.get((ccxt_id, symbol)) if fam == family else None
                    if d is not None and d.tardis_exchange == tardis:
                        return d
            for ccxt_id in ccxt_ids:
                if (ccxt_id, symbol) in self._by_ccxt:
                    return self._by_ccxt[(ccxt_id, symbol)]
            if ccxt_ids:
                candidates = [d for d in self._by_tardis.values() if d.ccxt_exchange in ccxt_ids
                              and (d.venue_symbol == symbol
                                   or d.tardis_symbol == symbol.upper())]
                exact = [d for d in candidates if d.ccxt_exchange == exchange]
                matches = exact or candidates
                if len(matches) == 1:
                    return matches[0]
                if len(matches) > 1:
                    keys = ", ".join(f"{d.tardis_exchange}/{d.tardis_symbol}"
                                     for d in sorted(matches, key=lambda d: d.key))
                    raise AmbiguousInstrumentError(
                        f"{symbol!r} on ccxt {exchange!r} matches {len(matches)} instruments "
                        f"({keys}); pass the Tardis exchange or the ccxt unified symbol")
        raise self._unknown(exchange, symbol, "Tardis, venue or ccxt")

    # -- helpers ----------------------------------------------------------------------------

    def _exchange_scope(self, exchange: str) -> tuple[str | None, tuple[str, ...]]:
        """(Tardis id or None, ccxt ids) an exchange name refers to; raises if it is neither."""
        tardis = exchange if exchange in TARDIS_VENUES else None
        family = CCXT_FAMILIES.get(exchange)
        ccxt_ids: tuple[str, ...] = ()
        if family is not None:
            ccxt_ids = (exchange,) + tuple(o for o, f in CCXT_FAMILIES.items()
                                           if f == family and o != exchange)
        if tardis is None and not ccxt_ids:
            raise UnknownExchangeError(unknown_exchange_message(exchange))
        return tardis, ccxt_ids

    def _check_tardis_exchange(self, tardis_exchange: str) -> None:
        if tardis_exchange not in TARDIS_VENUES:
            raise UnknownExchangeError(unknown_exchange_message(tardis_exchange))

    def _unknown(self, exchange: str, symbol: str, scheme: str) -> UnknownInstrumentError:
        with self._lock:
            tardis, ccxt_ids = (exchange if exchange in TARDIS_VENUES else None,
                                {o for o, f in CCXT_FAMILIES.items()
                                 if f == CCXT_FAMILIES.get(exchange)})
            scoped = [d for d in self._by_tardis.values()
                      if d.tardis_exchange == tardis or d.ccxt_exchange in ccxt_ids]
        names = [n for d in scoped for n in (d.tardis_symbol, d.venue_symbol, d.ccxt_symbol)]
        if not names:
            return UnknownInstrumentError(
                f"unknown {scheme} symbol {symbol!r} on {exchange!r}: no instruments of "
                f"{exchange!r} are loaded (is it in instruments.exchanges and synced?)")
        close = get_close_matches(symbol, sorted(set(names)), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return UnknownInstrumentError(
            f"unknown {scheme} symbol {symbol!r} on {exchange!r} "
            f"({len(scoped)} instruments loaded){hint}")
