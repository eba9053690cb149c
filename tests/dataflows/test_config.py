"""streaming.yaml validation: good files load, bad ones name the key and the problem."""

from pathlib import Path

import pytest

from dataflows.config import ConfigError, load_config, parse_duration_us

ROOT = Path(__file__).resolve().parents[2]


def test_default_file_loads():
    cfg = load_config(ROOT / "streaming.yaml")
    assert cfg.candles.timeframes == ["15s", "1m", "5m", "15m", "1h", "4h", "1d"]
    assert cfg.features.periods == [5, 10, 20]
    assert cfg.outputs_for_mode() == ["persist"]
    assert cfg.persist.backend == "parquet"


def test_env_var_selects_file(tmp_path, monkeypatch):
    p = tmp_path / "other.yaml"
    p.write_text("candles: {timeframes: [1m]}\n")
    monkeypatch.setenv("STREAMING_CONFIG", str(p))
    assert load_config().candles.timeframes == ["1m"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("candles: {timeframes: [15s, 7x]}", "candles.timeframes: "),
        ("candles: {timeframez: [1m]}", "candles.timeframez: unknown key"),
        ("mode: streaming-everything", "mode: "),
        ("features: {periods: [1]}", "features.periods: periods must be between 2 and 1000"),
        ("candles: {allowed_lateness: -3}", "candles.allowed_lateness: a duration cannot be"),
        ("data_types: {tradez: {enabled: true}}", "data_types: unknown data type 'tradez'"),
        ("data_types: {trades: {enabled: maybe}}", "data_types.trades.enabled"),
        ("source: {files: {from_date: 2020-02-23, to_date: 2020-02-22}}",
         "source.files: from_date is after to_date"),
        ("candles: [1, 2", "not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
    ],
)
def test_bad_file_names_key_and_problem(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert expected in msg, msg
    assert str(p) in msg
    assert "Traceback" not in msg and "pydantic" not in msg


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("text", "us"), [("15s", 15_000_000), ("1m", 60_000_000),
                                          ("500ms", 500_000), ("1d", 86_400_000_000),
                                          (2, 2_000_000)])
def test_durations(text, us):
    assert parse_duration_us(text) == us
