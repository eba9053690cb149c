"""InstrumentMapper: VENUE -> CCXT -> Tardis -> VENUE over real ccxt markets."""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from connectors.instruments.ccxt_adapter import definitions_from_markets
from connectors.instruments.definition import InstrumentDefinition
from connectors.instruments.mapper import (
    AmbiguousInstrumentError,
    InstrumentMapper,
    UnknownInstrumentError,
)
from connectors.instruments.venues import (
    TARDIS_VENUES,
    UnknownExchangeError,
    UnmappedMarketError,
    tardis_exchange_for,
)
from tests.connectors.instruments.recorded import (
    RECORDED_EXCHANGES,
    RecordedFetch,
    coinm_bodies_from_usdm,
)

pytestmark = pytest.mark.shared_data

# (Tardis exchange, market type) -> one instrument in all three schemes:
# (native id, ccxt exchange, ccxt symbol, Tardis symbol).
EXPECTED: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("binance", "spot"): ("BTCUSDT", "binance", "BTC/USDT", "BTCUSDT"),
    ("binance-futures", "perpetual"): ("BTCUSDT", "binanceusdm", "BTC/USDT:USDT", "BTCUSDT"),
    ("binance-futures", "future"): ("BTCUSDT_220325", "binanceusdm", "BTC/USDT:USDT-220325",
                                    "BTCUSDT_220325"),
    ("binance-delivery", "perpetual"): ("BTCUSD_PERP", "binancecoinm", "BTC/USD:BTC",
                                        "BTCUSD_PERP"),
    ("binance-delivery", "future"): ("BTCUSD_220325", "binancecoinm", "BTC/USD:BTC-220325",
                                     "BTCUSD_220325"),
    ("bybit", "perpetual"): ("BTCUSD", "bybit", "BTC/USD:BTC", "BTCUSD"),
    ("bybit-spot", "spot"): ("BTCUSDT", "bybit", "BTC/USDT", "BTCUSDT"),
    ("bybit-options", "option"): ("ETH-26JUN26-16000-P", "bybit",
                                  "ETH/USDC:USDC-260528-16000-P", "ETH-26JUN26-16000-P"),
    ("okex", "spot"): ("BTC-USD", "okx", "BTC/USD", "BTC-USD"),
    ("okex-swap", "perpetual"): ("BTC-USD-SWAP", "okx", "BTC/USD:BTC", "BTC-USD-SWAP"),
    ("okex-futures", "future"): ("BTC-USD-241220", "okx", "BTC/USD:BTC-241220",
                                 "BTC-USD-241220"),
    ("okex-options", "option"): ("BTC-USD-241217-92000-C", "okx", "BTC/USD:BTC-241217-92000-C",
                                 "BTC-USD-241217-92000-C"),
    ("deribit", "perpetual"): ("BTC-PERPETUAL", "deribit", "BTC/USD:BTC", "BTC-PERPETUAL"),
    ("deribit", "future"): ("BTC-27DEC24", "deribit", "BTC/USD:BTC-241227", "BTC-27DEC24"),
    ("deribit", "option"): ("BTC-27DEC24-100000-C", "deribit", "BTC/USD:BTC-241227-100000-C",
                            "BTC-27DEC24-100000-C"),
    ("coinbase", "spot"): ("BTC-USD", "coinbase", "BTC/USD", "BTC-USD"),
    ("cryptofacilities", "perpetual"): ("PF_AAPLxUSD", "krakenfutures", "AAPLX/USD:USD",
                                        "PF_AAPLXUSD"),
}


def coinm_definitions() -> list[InstrumentDefinition]:
    """binance-delivery through real ccxt binancecoinm (body derived from the USD-M one)."""

    async def run() -> tuple[dict[str, Any], int]:
        exchange = ccxt_async.binancecoinm()
        RecordedFetch(coinm_bodies_from_usdm()).install(exchange)
        try:
            return dict(await exchange.load_markets(True)), int(exchange.precisionMode)
        finally:
            await exchange.close()

    markets, mode = asyncio.run(run())
    return definitions_from_markets("binancecoinm", markets, mode)[0]


@pytest.fixture(scope="module")
def all_definitions(ccxt_markets: dict[str, tuple[dict[str, Any], int]]
                    ) -> list[InstrumentDefinition]:
    """Every Tardis-covered instrument of every recording (binance's client loads spot and
    USD-M; binanceusdm loads USD-M again: the same Tardis keys, a later one wins)."""
    defs: list[InstrumentDefinition] = []
    for ccxt_id in RECORDED_EXCHANGES:
        markets, mode = ccxt_markets[ccxt_id]
        defs.extend(definitions_from_markets(ccxt_id, markets, mode)[0])
    return defs + coinm_definitions()


@pytest.fixture(scope="module")
def mapper(all_definitions: list[InstrumentDefinition]) -> InstrumentMapper:
    return InstrumentMapper(all_definitions)


def test_every_recorded_exchange_and_market_type_is_covered(
        all_definitions: list[InstrumentDefinition]) -> None:
    present = {(d.tardis_exchange, d.type) for d in all_definitions}
    assert present == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_round_trip_venue_ccxt_tardis_venue(mapper: InstrumentMapper,
                                            key: tuple[str, str]) -> None:
    tardis_exchange, _type = key
    venue, ccxt_exchange, ccxt_symbol, tardis_symbol = EXPECTED[key]
    got_ccxt = mapper.venue_to_ccxt(tardis_exchange, venue)
    assert got_ccxt == (ccxt_exchange, ccxt_symbol)
    got_tardis = mapper.ccxt_to_tardis(*got_ccxt)
    assert got_tardis == (tardis_exchange, tardis_symbol)
    assert mapper.tardis_to_venue(*got_tardis) == venue
    # and the other directions
    assert mapper.tardis_to_ccxt(tardis_exchange, tardis_symbol) == (ccxt_exchange, ccxt_symbol)
    assert mapper.venue_to_tardis(tardis_exchange, venue) == (tardis_exchange, tardis_symbol)
    assert mapper.ccxt_to_venue(ccxt_exchange, ccxt_symbol) == (tardis_exchange, venue)


def test_round_trip_holds_for_every_instrument(mapper: InstrumentMapper,
                                               all_definitions: list[InstrumentDefinition]
                                               ) -> None:
    for d in all_definitions:
        ccxt_name = mapper.venue_to_ccxt(d.tardis_exchange, d.venue_symbol)
        tardis_name = mapper.ccxt_to_tardis(*ccxt_name)
        assert mapper.tardis_to_venue(*tardis_name) == d.venue_symbol
        assert tardis_name == d.key


def test_the_same_native_id_on_two_market_types_stays_apart(mapper: InstrumentMapper) -> None:
    assert mapper.venue_to_ccxt("binance", "BTCUSDT")[1] == "BTC/USDT"
    assert mapper.venue_to_ccxt("binance-futures", "BTCUSDT")[1] == "BTC/USDT:USDT"
    assert mapper.venue_to_ccxt("bybit-spot", "BTCUSDT")[1] == "BTC/USDT"
    assert mapper.venue_to_ccxt("bybit", "BTCUSDT")[1] == "BTC/USDT:USDT"
    # BTC/USD:BTC is a ccxt symbol on four venues; the ccxt exchange tells them apart
    assert mapper.ccxt_to_tardis("okx", "BTC/USD:BTC") == ("okex-swap", "BTC-USD-SWAP")
    assert mapper.ccxt_to_tardis("deribit", "BTC/USD:BTC") == ("deribit", "BTC-PERPETUAL")
    assert mapper.ccxt_to_tardis("bybit", "BTC/USD:BTC") == ("bybit", "BTCUSD")
    assert mapper.ccxt_to_tardis("binancecoinm", "BTC/USD:BTC") == ("binance-delivery",
                                                                     "BTCUSD_PERP")


def test_tardis_symbols_match_case_insensitively(mapper: InstrumentMapper) -> None:
    assert mapper.tardis_to_venue("cryptofacilities", "pf_aaplxusd") == "PF_AAPLxUSD"


def test_binance_family_ids_find_each_others_markets(mapper: InstrumentMapper) -> None:
    assert mapper.ccxt_to_tardis("binance", "BTC/USD:BTC-220325") == ("binance-delivery",
                                                                       "BTCUSD_220325")


def test_resolve_accepts_any_scheme(mapper: InstrumentMapper) -> None:
    want = ("okex-swap", "BTC-USD-SWAP")
    assert mapper.resolve("okex-swap", "BTC-USD-SWAP").key == want  # Tardis / native
    assert mapper.resolve("okex-swap", "btc-usd-swap").key == want  # Tardis, any case
    assert mapper.resolve("okex-swap", "BTC/USD:BTC").key == want  # ccxt symbol, Tardis id
    assert mapper.resolve("okx", "BTC/USD:BTC").key == want  # ccxt
    assert mapper.resolve("okx", "BTC-USD-SWAP").key == want  # native id, ccxt id
    assert mapper.resolve("binance", "BTCUSDT").key == ("binance", "BTCUSDT")  # Tardis wins
    assert mapper.resolve("binanceusdm", "BTCUSDT").key == ("binance-futures", "BTCUSDT")


def test_ambiguous_native_id_names_the_candidates(mapper: InstrumentMapper) -> None:
    with pytest.raises(AmbiguousInstrumentError,
                       match=r"binance/BTCUSDT, binance-futures/BTCUSDT"):
        mapper.resolve("binancecoinm", "BTCUSDT")


def test_unknown_names_raise_clear_errors(mapper: InstrumentMapper) -> None:
    with pytest.raises(UnknownInstrumentError, match=r"unknown Tardis symbol 'BTCUSDTT' on "
                       r"'binance-futures' \(3 instruments loaded\); did you mean BTCUSDT"):
        mapper.by_tardis("binance-futures", "BTCUSDTT")
    with pytest.raises(UnknownInstrumentError, match="unknown ccxt symbol 'BTC/USD:USD'"):
        mapper.ccxt_to_tardis("coinbase", "BTC/USD:USD")  # CDE futures: no Tardis dataset
    with pytest.raises(UnknownExchangeError, match="'okx' is a ccxt exchange id; use the "
                       "Tardis exchange id"):
        mapper.tardis_to_venue("okx", "BTC-USD")
    with pytest.raises(UnknownExchangeError, match="did you mean deribit"):
        mapper.resolve("deribitt", "BTC-PERPETUAL")
    with pytest.raises(UnknownInstrumentError, match="no instruments of 'okex-options' "
                       "are loaded"):
        InstrumentMapper().resolve("okex-options", "BTC-USD-241217-92000-C")
    with pytest.raises(TypeError, match="non-empty strings"):
        mapper.resolve("okx", "")


def test_markets_without_a_tardis_exchange_say_so(
        ccxt_markets: dict[str, tuple[dict[str, Any], int]]) -> None:
    markets, _ = ccxt_markets["coinbase"]
    with pytest.raises(UnmappedMarketError, match=r"Tardis covers this venue as coinbase "
                       r"\(spot\)"):
        tardis_exchange_for("coinbase", markets["BTC/USD:USD-260424"])
    with pytest.raises(UnknownExchangeError, match="'kraken' is not supported"):
        tardis_exchange_for("kraken", markets["BTC/USD"])


def test_maintenance_keeps_the_indexes_consistent(
        all_definitions: list[InstrumentDefinition]) -> None:
    m = InstrumentMapper(all_definitions)
    okx_swaps = [d for d in all_definitions if d.tardis_exchange == "okex-swap"]
    assert len(m.definitions("okex-swap")) == len(okx_swaps) == 3
    removed = m.remove("okex-swap", "BTC-USD-SWAP")
    assert removed is not None and removed.venue_symbol == "BTC-USD-SWAP"
    with pytest.raises(UnknownInstrumentError):
        m.venue_to_ccxt("okex-swap", "BTC-USD-SWAP")
    with pytest.raises(UnknownInstrumentError):
        m.ccxt_to_tardis("okx", "BTC/USD:BTC")
    m.replace_exchange("okex-swap", okx_swaps[:1])
    assert [d.key for d in m.definitions("okex-swap")] == [okx_swaps[0].key]
    with pytest.raises(ValueError, match="does not belong to 'okex'"):
        m.replace_exchange("okex", okx_swaps)
    assert len(m.definitions("okx")) == len(
        [d for d in m.definitions() if d.ccxt_exchange == "okx"])


def test_every_tardis_venue_names_a_supported_ccxt_client() -> None:
    import ccxt

    for venue in TARDIS_VENUES.values():
        assert hasattr(ccxt, venue.ccxt_exchange), venue


def test_a_mapper_straight_from_ccxt_markets(
        ccxt_markets: dict[str, tuple[dict[str, Any], int]]) -> None:
    markets, mode = ccxt_markets["coinbase"]
    m = InstrumentMapper.from_ccxt_markets("coinbase", markets, mode)
    assert [d.key for d in m.definitions()] == [("coinbase", "BTC-USD"), ("coinbase", "BTC-USDC")]
    assert len(m) == 2  # the two CDE derivatives have no Tardis exchange
