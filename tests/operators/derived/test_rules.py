"""streaming.yaml `derived:`: the rules and thresholds of the derived types, validated."""

from __future__ import annotations

import pytest

from dataflows.config import ConfigError, config_from_dict, load_config

S = 1_000_000


def test_defaults():
    d = config_from_dict({}).derived
    assert d.liquidations.derives_for("coinbase") and d.liquidations.derives_for("kraken")
    assert not d.liquidations.derives_for("binance-futures")
    assert not d.liquidations.derives_for("bitmex")
    assert (d.liquidations.multiplier, d.liquidations.halflife, d.liquidations.warmup,
            d.liquidations.min_notional, d.liquidations.group_fills) == (20.0, 1000, 200,
                                                                         10_000.0, True)
    assert d.gaps.trade_id_exchanges == ["binance", "binance-us", "binance-futures",
                                         "binance-delivery"]
    assert d.gaps.max_silence == {"trades": 600 * S, "quotes": 600 * S,
                                  "book_snapshots": 600 * S, "derivative_ticker": 120 * S}


def test_yaml_keys_merge_and_parse_durations(tmp_path):
    f = tmp_path / "streaming.yaml"
    f.write_text(
        "derived:\n"
        "  liquidations: {native_exchanges: [bitmex], multiplier: 15, min_notional: 0}\n"
        "  gaps: {min_missing_ids: 3, max_silence: {trades: 90s, quotes: 0}}\n")
    d = load_config(f).derived
    assert d.liquidations.native_exchanges == ["bitmex"]
    assert d.liquidations.derives_for("binance-futures")
    assert d.liquidations.multiplier == 15 and d.liquidations.halflife == 1000
    assert d.gaps.min_missing_ids == 3
    # keys not given keep their default; 0 switches a data type's time gaps off
    assert d.gaps.max_silence == {"trades": 90 * S, "quotes": 0, "book_snapshots": 600 * S,
                                  "derivative_ticker": 120 * S}


@pytest.mark.parametrize(("derived", "message"), [
    ({"liquidations": {"multiplier": 1}}, "derived.liquidations.multiplier"),
    ({"liquidations": {"halflife": 0}}, "derived.liquidations.halflife"),
    ({"liquidations": {"warmup": 0}}, "derived.liquidations.warmup"),
    ({"liquidations": {"min_notional": -5}}, "derived.liquidations.min_notional"),
    ({"liquidations": {"native_exchanges": ["bitmex", "bitmex"]}}, "listed twice"),
    ({"liquidations": {"thresold": 3}}, "unknown key"),
    ({"gaps": {"min_missing_ids": 0}}, "derived.gaps.min_missing_ids"),
    ({"gaps": {"max_silence": {"funding_rates": "1m"}}}, "unknown data type 'funding_rates'"),
    ({"gaps": {"max_silence": {"trades": "soon"}}}, "derived.gaps.max_silence.trades"),
    ({"gaps": {"trade_id_exchanges": [""]}}, "an exchange name is empty"),
])
def test_bad_values_name_the_key(derived, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict({"derived": derived})
