"""InstrumentDefinition: field mapping from real ccxt markets, tick sizes per precision mode."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import ccxt
import pytest
from ccxt.base import decimal_to_precision as dtp

from connectors.instruments.definition import (
    DECIMAL_PLACES,
    SIGNIFICANT_DIGITS,
    TICK_SIZE,
    DefinitionError,
    InstrumentDefinition,
    derive_increments,
    increment_at,
    increment_from_precision,
)
from connectors.instruments.venues import UnmappedMarketError
from tests.connectors.instruments.recorded import RECORDED_EXCHANGES, parsed_expected

pytestmark = pytest.mark.shared_data


def dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def test_precision_mode_constants_are_ccxts() -> None:
    assert (TICK_SIZE, DECIMAL_PLACES, SIGNIFICANT_DIGITS) == (
        dtp.TICK_SIZE, dtp.DECIMAL_PLACES, dtp.SIGNIFICANT_DIGITS)


@pytest.mark.parametrize("exchange_id", RECORDED_EXCHANGES)
def test_real_ccxt_reproduces_the_parsed_golden_output(
        exchange_id: str, ccxt_markets: dict[str, tuple[dict[str, Any], int]]) -> None:
    """The offline harness runs ccxt 4.5.90 for real: same markets as the golden files."""
    markets, mode = ccxt_markets[exchange_id]
    expected = parsed_expected(exchange_id)
    assert ccxt.__version__ == expected["ccxt_version"]
    assert mode == expected["precisionMode"] == TICK_SIZE
    assert json.loads(json.dumps(markets)) == expected["markets"]


@pytest.mark.parametrize("exchange_id", RECORDED_EXCHANGES)
def test_field_mapping_matches_the_parsed_markets(exchange_id: str) -> None:
    """Every field of every Tardis-covered market equals what ccxt 4.5.90 parsed (TICK_SIZE)."""
    expected = parsed_expected(exchange_id)
    mapped = 0
    for symbol, m in expected["markets"].items():
        try:
            d = InstrumentDefinition.from_ccxt_market(
                m, ccxt_exchange=exchange_id, precision_mode=expected["precisionMode"])
        except UnmappedMarketError:
            continue
        mapped += 1
        assert d.ccxt_symbol == symbol and d.venue_symbol == m["id"]
        assert d.tardis_symbol == m["id"].upper()
        assert d.ccxt_exchange == exchange_id
        assert d.type == {"spot": "spot", "swap": "perpetual", "future": "future",
                          "option": "option"}[m["type"]]
        assert (d.base, d.quote) == (m["base"], m["quote"])
        assert d.precision_mode == "TICK_SIZE"
        assert d.tick_size == d.price_precision == dec(m["precision"]["price"])
        assert d.amount_step == d.amount_precision == dec(m["precision"]["amount"])
        assert d.min_size == dec(m["limits"]["amount"]["min"])
        assert d.max_size == dec(m["limits"]["amount"]["max"])
        assert d.min_notional == dec(m["limits"]["cost"]["min"])
        assert (d.maker_fee, d.taker_fee) == (dec(m["maker"]), dec(m["taker"]))
        assert d.active == m["active"]
        assert ms(d.listing_time) == m["created"]
        if m["type"] == "spot":
            assert (d.settle, d.linear, d.inverse, d.contract_size) == (None,) * 4
        else:
            assert d.settle == m["settle"]
            assert (d.linear, d.inverse) == (bool(m["linear"]), bool(m["inverse"]))
            assert d.contract_size == dec(m["contractSize"])
        if m["type"] in ("future", "option"):
            assert ms(d.expiry) == m["expiry"]
        else:
            assert d.expiry is None  # deribit gives perpetuals the year 3000; not an expiry
        assert d.strike == dec(m["strike"])
        assert d.option_type == m["optionType"]
    assert mapped > 0


def test_known_values(ccxt_markets: dict[str, tuple[dict[str, Any], int]]) -> None:
    """A few instruments spelled out, so a reader sees what the mapping produces."""
    def get(ccxt_id: str, symbol: str) -> InstrumentDefinition:
        markets, mode = ccxt_markets[ccxt_id]
        return InstrumentDefinition.from_ccxt_market(markets[symbol], ccxt_exchange=ccxt_id,
                                                     precision_mode=mode)

    swap = get("okx", "BTC/USD:BTC")
    assert swap.key == ("okex-swap", "BTC-USD-SWAP")
    assert (swap.type, swap.inverse, swap.settle) == ("perpetual", True, "BTC")
    assert swap.contract_size == Decimal("100") and swap.tick_size == Decimal("0.1")

    quarterly = get("binanceusdm", "BTC/USDT:USDT-220325")
    assert quarterly.key == ("binance-futures", "BTCUSDT_220325")
    assert quarterly.expiry == datetime(2022, 3, 25, 8, tzinfo=UTC)
    assert quarterly.min_notional == Decimal("10") and quarterly.linear is True

    call = get("deribit", "BTC/USD:BTC-241227-100000-C")
    assert call.key == ("deribit", "BTC-27DEC24-100000-C")
    assert (call.option_type, call.strike, call.tick_size) == ("call", Decimal("100000"),
                                                               Decimal("0.0005"))
    assert call.maker_fee == call.taker_fee == Decimal("0.0003")

    pepe = get("krakenfutures", "PEPE/USD:USD")
    assert pepe.tick_size == Decimal("1E-10")  # exact, not 1.0000000000000001e-10
    assert pepe.amount_step == Decimal("1000")

    aapl = get("krakenfutures", "AAPLX/USD:USD")
    assert (aapl.venue_symbol, aapl.tardis_symbol) == ("PF_AAPLxUSD", "PF_AAPLXUSD")


def power_of_ten_ticks() -> list[tuple[str, str, dict[str, Any]]]:
    """Parsed markets whose price and amount ticks are powers of ten up to 1 (what ccxt's
    precision_from_string turns into decimal places); 0.5 or 5 ticks have no such form."""
    out = []
    for exchange_id in RECORDED_EXCHANGES:
        for symbol, m in parsed_expected(exchange_id)["markets"].items():
            ticks = [dec(m["precision"]["price"]), dec(m["precision"]["amount"])]
            if all(t is not None and t <= 1 and t.normalize().as_tuple().digits == (1,)
                   for t in ticks):
                out.append((exchange_id, symbol, m))
    return out


def test_decimal_places_mode_gives_the_same_ticks() -> None:
    """DECIMAL_PLACES: the parsed TICK_SIZE precisions converted to decimal places by ccxt's own
    precision_from_string; the derived ticks equal the parsed ones, and prices ccxt truncates
    to that many places are whole multiples of the tick."""
    exchange = ccxt.Exchange()
    cases = power_of_ten_ticks()
    checked = 0
    for exchange_id, _symbol, m in cases:
        places = copy.deepcopy(m)
        for field in ("price", "amount"):
            tick = dtp.number_to_string(m["precision"][field])
            places["precision"][field] = int(exchange.precision_from_string(tick))
        try:
            d = InstrumentDefinition.from_ccxt_market(places, ccxt_exchange=exchange_id,
                                                      precision_mode=DECIMAL_PLACES)
        except UnmappedMarketError:
            continue
        checked += 1
        assert d.precision_mode == "DECIMAL_PLACES"
        assert d.price_precision == places["precision"]["price"]
        assert d.tick_size == dec(m["precision"]["price"])
        assert d.amount_step == dec(m["precision"]["amount"])
        assert d.tick_size is not None
        price = "12345.678901234"
        truncated = Decimal(dtp.decimal_to_precision(
            price, dtp.TRUNCATE, places["precision"]["price"], dtp.DECIMAL_PLACES))
        assert truncated % d.tick_size == 0
        assert Decimal(price) - truncated < d.tick_size
    assert checked >= 10


def test_negative_decimal_places_are_tens() -> None:
    """DECIMAL_PLACES may be negative (-3: whole thousands), as ccxt's rounding allows."""
    assert increment_from_precision(Decimal(-3), "DECIMAL_PLACES") == Decimal(1000)
    assert dtp.decimal_to_precision("12345", dtp.TRUNCATE, -3, dtp.DECIMAL_PLACES) == "12000"
    with pytest.raises(DefinitionError, match="decimal places must be an integer"):
        increment_from_precision(Decimal("2.5"), "DECIMAL_PLACES")


@pytest.mark.parametrize("price", ["61234.567", "1.23456789", "0.000123456", "99999.4",
                                   "250"])
def test_significant_digits_tick_follows_the_price(price: str) -> None:
    """SIGNIFICANT_DIGITS (bitfinex, real ccxt): there is no fixed tick; the increment at a
    price is the step of its last significant digit, as bitfinex's own price_to_precision
    rounds. Bitfinex counts amounts in decimal places (a ccxt special case): fixed step."""
    exchange = ccxt.bitfinex()
    assert exchange.precisionMode == SIGNIFICANT_DIGITS
    exchange.set_markets([bitfinex_market()])
    market = exchange.markets["BTC/USD"]
    price_precision, _, tick_size, amount_step = derive_increments(
        market, exchange.precisionMode, "bitfinex")
    assert (price_precision, tick_size, amount_step) == (5, None, Decimal("1E-8"))
    assert price_precision is not None and amount_step is not None
    tick = increment_at(Decimal(price), int(price_precision))
    rounded = Decimal(exchange.price_to_precision("BTC/USD", price))
    assert rounded % tick == 0
    assert rounded == Decimal(price).quantize(tick, rounding=ROUND_HALF_UP)
    assert len(rounded.normalize().as_tuple().digits) <= 5
    assert Decimal(exchange.amount_to_precision("BTC/USD", "0.123456789")) % amount_step == 0


def test_significant_digits_definition_has_a_price_dependent_tick() -> None:
    """A definition in SIGNIFICANT_DIGITS mode: `tick_size` None, `tick_size_at` per price."""
    market = copy.deepcopy(parsed_expected("deribit")["markets"]["BTC/USD:BTC"])
    market["precision"] = {"price": 5, "amount": 3}
    d = InstrumentDefinition.from_ccxt_market(market, ccxt_exchange="deribit",
                                              precision_mode=SIGNIFICANT_DIGITS)
    assert d.precision_mode == "SIGNIFICANT_DIGITS"
    assert (d.tick_size, d.amount_step, d.price_significant_digits) == (None, None, 5)
    assert d.tick_size_at("61234.5") == Decimal("1")
    assert d.tick_size_at(0.0123456) == Decimal("0.000001")
    with pytest.raises(ValueError, match="needs a positive price"):
        d.tick_size_at("0")
    fixed = InstrumentDefinition.from_ccxt_market(
        parsed_expected("deribit")["markets"]["BTC/USD:BTC"], ccxt_exchange="deribit")
    assert fixed.tick_size_at("61234.5") == fixed.tick_size == Decimal("0.5")


def bitfinex_market() -> dict[str, Any]:
    """A bitfinex-shaped market (ccxt's structure, bitfinex's precision: 5 significant price
    digits, 8 amount decimals), taken from the parsed binance BTC/USDT market."""
    return dict(parse_btc_usdt_spot(), id="tBTCUSD", symbol="BTC/USD", quote="USD",
                quoteId="USD", precision={"price": 5, "amount": 8})


def parse_btc_usdt_spot() -> dict[str, Any]:
    market: dict[str, Any] = copy.deepcopy(parsed_expected("binance")["markets"]["BTC/USDT"])
    market.pop("info")
    return market


def test_json_round_trip_keeps_content_only() -> None:
    m = parsed_expected("okx")["markets"]["BTC/USD:BTC-241217-92000-C"]
    d = InstrumentDefinition.from_ccxt_market(m, ccxt_exchange="okx", precision_mode=TICK_SIZE)
    stale = d.model_copy(update={"stale": True, "synced_at": datetime(2024, 1, 1, tzinfo=UTC)})
    back = InstrumentDefinition.from_json(stale.to_json())
    assert back == d and back.stale is False and back.synced_at is None
    assert json.loads(d.to_json())["strike"] == "92000.0"


def test_unmapped_and_malformed_markets_have_clear_errors() -> None:
    coinbase = parsed_expected("coinbase")["markets"]
    with pytest.raises(UnmappedMarketError, match=r"coinbase perpetual linear market "
                       r"'BTC/USD:USD' \('BIP-20DEC30-CDE'\) has no Tardis.dev exchange"):
        InstrumentDefinition.from_ccxt_market(coinbase["BTC/USD:USD"], ccxt_exchange="coinbase")
    combo = parsed_expected("deribit")["markets"]["BTC-COMBO-1"]
    with pytest.raises(UnmappedMarketError, match="not a single instrument"):
        InstrumentDefinition.from_ccxt_market(combo, ccxt_exchange="deribit")
    good = parse_btc_usdt_spot()
    with pytest.raises(DefinitionError, match="has no native id"):
        InstrumentDefinition.from_ccxt_market(dict(good, id=None), ccxt_exchange="binance")
    with pytest.raises(DefinitionError, match="unknown ccxt precisionMode 7"):
        InstrumentDefinition.from_ccxt_market(good, ccxt_exchange="binance", precision_mode=7)
    with pytest.raises(DefinitionError, match=r"'BTC/USDT': precision.price: expected a number"):
        InstrumentDefinition.from_ccxt_market(dict(good, precision={"price": "abc"}),
                                              ccxt_exchange="binance")
    with pytest.raises(DefinitionError, match="a tick size must be positive"):
        InstrumentDefinition.from_ccxt_market(dict(good, precision={"price": 0}),
                                              ccxt_exchange="binance")
    with pytest.raises(DefinitionError, match="expected a ccxt market dict"):
        InstrumentDefinition.from_ccxt_market(["not", "a", "market"],  # type: ignore[arg-type]
                                              ccxt_exchange="binance")
    option = parsed_expected("okx")["markets"]["BTC/USD:BTC-241217-92000-C"]
    with pytest.raises(DefinitionError, match="an option needs a strike"):
        InstrumentDefinition.from_ccxt_market(dict(option, strike=None), ccxt_exchange="okx")
