"""`InstrumentDefinition`: one tradable instrument, normalized from a ccxt market.

Numbers are `Decimal` (exact: a tick of 0.1 stays 0.1), times are UTC datetimes. The tick size is
derived from ccxt's `precision.price` according to the exchange's `precisionMode`:

- TICK_SIZE (4): the precision is the increment itself (0.01 -> tick 0.01);
- DECIMAL_PLACES (2): the precision counts decimals (2 -> tick 0.01);
- SIGNIFICANT_DIGITS (3): the precision counts significant digits, so the increment depends on
  the price; `tick_size` is None and `tick_size_at(price)` gives it (5 digits at 61234 -> 1).

The amount step (lot size) is derived the same way. A few exchanges count amounts in decimal
places although their mode is SIGNIFICANT_DIGITS (ccxt special-cases them in
`amount_to_precision`); `AMOUNT_PRECISION_MODE` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.instruments.venues import (
    MarketType,
    market_type_of,
    settlement_of,
    tardis_exchange_for,
    tardis_symbol_for,
)

# ccxt.base.decimal_to_precision constants (checked against ccxt in the tests).
DECIMAL_PLACES = 2
SIGNIFICANT_DIGITS = 3
TICK_SIZE = 4
PrecisionMode = Literal["TICK_SIZE", "DECIMAL_PLACES", "SIGNIFICANT_DIGITS"]
PRECISION_MODES: dict[int, PrecisionMode] = {
    TICK_SIZE: "TICK_SIZE", DECIMAL_PLACES: "DECIMAL_PLACES",
    SIGNIFICANT_DIGITS: "SIGNIFICANT_DIGITS",
}
# Exchanges whose amounts are counted in decimal places whatever their precisionMode
# (ccxt 4.5.90: bitfinex.amount_to_precision, bithumb.amount_to_precision).
AMOUNT_PRECISION_MODE: dict[str, PrecisionMode] = {
    "bitfinex": "DECIMAL_PLACES", "bithumb": "DECIMAL_PLACES",
}

# Fields that describe the instrument; a difference in any of them is a "changed" event.
# `synced_at` and `stale` describe the cache entry, not the instrument.
CONTENT_FIELDS: tuple[str, ...] = (
    "tardis_exchange", "tardis_symbol", "venue_symbol", "ccxt_exchange", "ccxt_symbol", "type",
    "base", "quote", "settle", "linear", "inverse", "contract_size", "precision_mode",
    "price_precision", "amount_precision", "tick_size", "amount_step", "min_size", "max_size",
    "min_notional", "maker_fee", "taker_fee", "expiry", "strike", "option_type", "active",
    "listing_time",
)


class DefinitionError(ValueError):
    """A ccxt market that cannot be turned into an instrument definition; says which and why."""


def to_decimal(value: Any, what: str = "value") -> Decimal | None:
    """ccxt numbers (float, int, numeric string or None) as exact Decimals; floats keep their
    shortest repr (1e-05 -> 0.00001)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DefinitionError(f"{what}: expected a number, got {value!r}")
    try:
        result = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise DefinitionError(f"{what}: expected a number, got {value!r}") from None
    if not result.is_finite():
        raise DefinitionError(f"{what}: expected a finite number, got {value!r}")
    return result


def ms_to_datetime(value: Any, what: str = "timestamp") -> datetime | None:
    """Milliseconds since the Unix epoch (ccxt's convention) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        ms = int(value)
    except (TypeError, ValueError):
        raise DefinitionError(f"{what}: expected milliseconds since the epoch, got {value!r}")\
            from None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def increment_from_precision(precision: Decimal | None, mode: PrecisionMode) -> Decimal | None:
    """The fixed increment a precision stands for: the tick itself (TICK_SIZE), 10^-n
    (DECIMAL_PLACES), or None (SIGNIFICANT_DIGITS: it depends on the price)."""
    if precision is None:
        return None
    if mode == "TICK_SIZE":
        if precision <= 0:
            raise DefinitionError(f"a tick size must be positive, got {precision}")
        return precision
    if mode == "DECIMAL_PLACES":
        if precision != precision.to_integral_value():
            raise DefinitionError(f"decimal places must be an integer, got {precision}")
        return Decimal(1).scaleb(-int(precision))
    return None


def increment_at(value: Decimal, significant_digits: int) -> Decimal:
    """The increment of `significant_digits` significant digits at `value` (5 at 61234 -> 1)."""
    if value <= 0:
        raise ValueError(f"the increment at a price needs a positive price, got {value}")
    if significant_digits < 1:
        raise ValueError(f"significant digits must be >= 1, got {significant_digits}")
    return Decimal(1).scaleb(value.adjusted() - significant_digits + 1)


class InstrumentDefinition(BaseModel):
    """One instrument: names in the three schemes, contract terms, precision, limits, fees.

    Keyed on (tardis_exchange, tardis_symbol). `synced_at` (when the exchange last confirmed it)
    and `stale` (that confirmation is older than the TTL or the last refresh failed) are set by
    the cache that serves it and are not part of the instrument's content.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tardis_exchange: str = Field(min_length=1)
    tardis_symbol: str = Field(min_length=1)
    venue_symbol: str = Field(min_length=1, description="the exchange's native id")
    ccxt_exchange: str = Field(min_length=1)
    ccxt_symbol: str = Field(min_length=1)
    type: MarketType
    base: str
    quote: str
    settle: str | None = None
    linear: bool | None = None
    inverse: bool | None = None
    contract_size: Decimal | None = None
    precision_mode: PrecisionMode = "TICK_SIZE"
    price_precision: Decimal | None = Field(default=None, description="ccxt precision.price")
    amount_precision: Decimal | None = Field(default=None, description="ccxt precision.amount")
    tick_size: Decimal | None = Field(default=None, description="price increment")
    amount_step: Decimal | None = Field(default=None, description="amount (lot) increment")
    min_size: Decimal | None = None
    max_size: Decimal | None = None
    min_notional: Decimal | None = None
    maker_fee: Decimal | None = None
    taker_fee: Decimal | None = None
    expiry: datetime | None = None
    strike: Decimal | None = None
    option_type: Literal["call", "put"] | None = None
    active: bool | None = None
    listing_time: datetime | None = None
    synced_at: datetime | None = None
    stale: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> InstrumentDefinition:
        if self.linear and self.inverse:
            raise ValueError(f"{self.key}: cannot be both linear and inverse")
        if self.type == "option" and (self.strike is None or self.option_type is None):
            raise ValueError(f"{self.key}: an option needs a strike and an option type")
        if self.type != "option" and (self.strike is not None or self.option_type is not None):
            raise ValueError(f"{self.key}: only options have a strike and an option type")
        if self.type in ("perpetual", "spot") and self.expiry is not None:
            raise ValueError(f"{self.key}: a {self.type} instrument has no expiry")
        for name in ("tick_size", "amount_step", "contract_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{self.key}: {name} must be positive, got {value}")
        return self

    @property
    def key(self) -> tuple[str, str]:
        """(Tardis exchange, Tardis symbol): unique across market types."""
        return (self.tardis_exchange, self.tardis_symbol)

    @property
    def price_significant_digits(self) -> int | None:
        """Significant digits of a price, in SIGNIFICANT_DIGITS mode (else None)."""
        if self.precision_mode != "SIGNIFICANT_DIGITS" or self.price_precision is None:
            return None
        return int(self.price_precision)

    def tick_size_at(self, price: Decimal | float | str) -> Decimal:
        """The price increment at `price`: `tick_size`, or in SIGNIFICANT_DIGITS mode the
        increment of the last significant digit at that price."""
        if self.tick_size is not None:
            return self.tick_size
        digits = self.price_significant_digits
        if digits is None:
            raise ValueError(f"{self.key}: ccxt gives no price precision for this instrument")
        value = to_decimal(price, "price")
        assert value is not None
        return increment_at(value, digits)

    def content(self) -> dict[str, Any]:
        """The instrument's content (no cache metadata), JSON-compatible."""
        return self.model_dump(mode="json", include=set(CONTENT_FIELDS))

    def to_json(self) -> str:
        """Compact JSON of the content (what the registry stores)."""
        return self.model_dump_json(include=set(CONTENT_FIELDS))

    @classmethod
    def from_json(cls, text: str | bytes) -> InstrumentDefinition:
        return cls.model_validate_json(text)

    @classmethod
    def from_ccxt_market(cls, market: Mapping[str, Any], *, ccxt_exchange: str,
                         precision_mode: int | str = TICK_SIZE) -> InstrumentDefinition:
        """Build from one entry of ccxt's `exchange.markets`.

        Raises `UnmappedMarketError` when no Tardis exchange covers the market and
        `DefinitionError` when the market is malformed; both name the market.
        """
        if not isinstance(market, Mapping):
            raise DefinitionError(f"{ccxt_exchange}: expected a ccxt market dict, got "
                                  f"{type(market).__name__}")
        mode = _precision_mode(precision_mode)
        venue_symbol = market.get("id")
        where = f"{ccxt_exchange} market {market.get('symbol')!r}"
        if not isinstance(venue_symbol, str) or not venue_symbol:
            raise DefinitionError(f"{where}: has no native id")
        tardis_exchange = tardis_exchange_for(ccxt_exchange, market)
        mtype = market_type_of(market)
        settle = settlement_of(market) if mtype != "spot" else None
        limits = market.get("limits") or {}
        price_precision, amount_precision, tick_size, amount_step = derive_increments(
            market, mode, ccxt_exchange)
        option_type = market.get("optionType")
        try:
            return cls(
                tardis_exchange=tardis_exchange,
                tardis_symbol=tardis_symbol_for(venue_symbol),
                venue_symbol=venue_symbol,
                ccxt_exchange=ccxt_exchange,
                ccxt_symbol=market["symbol"],
                type=mtype,
                base=market.get("base") or "",
                quote=market.get("quote") or "",
                settle=market.get("settle") if mtype != "spot" else None,
                linear=(settle == "linear") if settle else None,
                inverse=(settle == "inverse") if settle else None,
                contract_size=(to_decimal(market.get("contractSize"), f"{where}: contractSize")
                               if mtype != "spot" else None),
                precision_mode=mode,
                price_precision=price_precision,
                amount_precision=amount_precision,
                tick_size=tick_size,
                amount_step=amount_step,
                min_size=to_decimal(_limit(limits, "amount", "min"), f"{where}: min amount"),
                max_size=to_decimal(_limit(limits, "amount", "max"), f"{where}: max amount"),
                min_notional=to_decimal(_limit(limits, "cost", "min"), f"{where}: min cost"),
                maker_fee=to_decimal(market.get("maker"), f"{where}: maker"),
                taker_fee=to_decimal(market.get("taker"), f"{where}: taker"),
                expiry=(ms_to_datetime(market.get("expiry"), f"{where}: expiry")
                        if mtype in ("future", "option") else None),
                strike=(to_decimal(market.get("strike"), f"{where}: strike")
                        if mtype == "option" else None),
                option_type=option_type if mtype == "option" else None,
                active=market.get("active"),
                listing_time=ms_to_datetime(market.get("created"), f"{where}: created"),
            )
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            raise DefinitionError(f"{where}: {_first_error(e)}") from None


def derive_increments(market: Mapping[str, Any], precision_mode: int | str,
                      ccxt_exchange: str) -> tuple[Decimal | None, Decimal | None,
                                                   Decimal | None, Decimal | None]:
    """(price precision, amount precision, tick size, amount step) of a ccxt market under the
    exchange's precisionMode (and its amount exception, see AMOUNT_PRECISION_MODE)."""
    mode = _precision_mode(precision_mode)
    where = f"{ccxt_exchange} market {market.get('symbol')!r}"
    precision = market.get("precision") or {}
    price_precision = to_decimal(precision.get("price"), f"{where}: precision.price")
    amount_precision = to_decimal(precision.get("amount"), f"{where}: precision.amount")
    try:
        tick_size = increment_from_precision(price_precision, mode)
        amount_step = increment_from_precision(
            amount_precision, AMOUNT_PRECISION_MODE.get(ccxt_exchange, mode))
    except DefinitionError as e:
        raise DefinitionError(f"{where}: {e}") from None
    return price_precision, amount_precision, tick_size, amount_step


def _limit(limits: Mapping[str, Any], name: str, bound: str) -> Any:
    entry = limits.get(name) or {}
    return entry.get(bound) if isinstance(entry, Mapping) else None


def _precision_mode(mode: int | str) -> PrecisionMode:
    if isinstance(mode, str) and mode in PRECISION_MODES.values():
        return mode  # type: ignore[return-value]
    if isinstance(mode, int) and mode in PRECISION_MODES:
        return PRECISION_MODES[mode]
    raise DefinitionError(
        f"unknown ccxt precisionMode {mode!r}; expected TICK_SIZE (4), DECIMAL_PLACES (2) or "
        "SIGNIFICANT_DIGITS (3)")


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", err)).removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(err)
