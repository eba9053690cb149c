"""k8s/monitoring: the alert rules and the Grafana dashboard use only metrics /metrics
exposes, carry the thresholds of streaming.yaml's defaults, and are what the generator
writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from connectors.monitoring import MonitoringServer, source_status
from connectors.monitoring.health import HealthSettings
from connectors.monitoring.rules import (
    alert_rules,
    dashboard,
    main,
    prom_duration,
    render_dashboard,
    render_rules,
)
from connectors.serve.memory import MemoryServeSink
from dataflows.config import config_from_dict
from operators import metrics
from tests.connectors.monitoring.helpers import get

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "k8s" / "monitoring" / "alert-rules.yaml"
DASHBOARD = ROOT / "k8s" / "monitoring" / "grafana-dashboard.json"

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, label names, strings,
    ranges and Grafana variables left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)              # strings
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                         # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if m.group() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(m.group())
    return names


def rule_exprs() -> list[str]:
    data = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in data["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p["targets"]]


def exposed_sample_names(text: str) -> set[str]:
    """Every sample name /metrics offers, series present or not (from HELP/TYPE too)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("_sum", "_count", ""), "untyped": ("",)}
    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


@pytest.fixture
def exposed() -> set[str]:
    """The /metrics of a real server with a serve sink and a live source registered."""
    MemoryServeSink(key_prefix="rules-test").build("flow.serve_candles", 0, 1)
    source_status("tardis-machine", live=True).connected()
    metrics.ROWS_IN.inc(1, data_type="trades")
    with MonitoringServer(port=0) as server:
        return exposed_sample_names(get(server.url + "/metrics").body.decode())


def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (instance, le) '
                        '(rate(processing_latency_seconds_bucket{instance=~"$instance"}[60s])))'
                        ' > 1') == {"processing_latency_seconds_bucket"}
    assert metric_names("(sum by (instance) (rate(ticks_in_total[60s])) or on (instance) "
                        "(0 * tick_sources_active)) < 10 and on (instance) "
                        "tick_sources_active > 0") == {"ticks_in_total", "tick_sources_active"}


def test_every_metric_in_the_alert_rules_and_dashboard_is_exposed(exposed: set[str]) -> None:
    used: dict[str, set[str]] = {}
    for source, exprs in (("alert-rules.yaml", rule_exprs()),
                          ("grafana-dashboard.json", dashboard_exprs())):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(source)
    assert {"ticks_in_total", "rows_rejected_total", "processing_latency_seconds_bucket",
            "sink_errors_total", "bytewax_serve_written_rows_total", "source_connected",
            "health_status"} <= set(used)
    missing = {n: sorted(s) for n, s in used.items() if n not in exposed}
    assert not missing, f"used but not exposed by /metrics: {missing}"


def test_rule_file_shape_and_default_thresholds() -> None:
    data = yaml.safe_load(RULES.read_text())
    assert list(data) == ["groups"] and len(data["groups"]) == 1
    rules = data["groups"][0]["rules"]
    by_name: dict[str, dict[str, Any]] = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules)
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        if "for" in r:
            assert re.fullmatch(r"\d+(ms|s|m|h)", r["for"])
    # the seed's thresholds, as streaming.yaml's defaults set them
    assert by_name["MarketDataInputErrorRateHigh"]["expr"].endswith("> 0.05")
    assert by_name["MarketDataSinkErrorRateHigh"]["expr"].endswith("> 0.05")
    assert by_name["MarketDataProcessingLatencyHigh"]["expr"].startswith(
        "histogram_quantile(0.95,")
    assert by_name["MarketDataProcessingLatencyHigh"]["expr"].endswith("> 1")
    assert "< 10 and" in by_name["MarketDataThroughputLow"]["expr"]
    assert all("[60s]" in r["expr"] for n, r in by_name.items() if "Rate" in n or "Latency" in n)
    assert by_name["MarketDataHealthFailing"]["labels"]["severity"] == "critical"
    assert "MarketDataEventLagHigh" not in by_name        # max_event_lag is off by default


def test_committed_files_are_what_the_defaults_generate() -> None:
    st = HealthSettings.from_config(config_from_dict({}).monitoring)
    assert yaml.safe_load(RULES.read_text()) == alert_rules(st)
    assert json.loads(DASHBOARD.read_text()) == dashboard(st)
    assert RULES.read_text() == render_rules(st)
    assert DASHBOARD.read_text() == render_dashboard(st)


def test_generator_follows_the_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "streaming.yaml"
    cfg.write_text("monitoring:\n  window: 2m\n  max_error_rate: 0.01\n"
                   "  max_processing_latency: 500ms\n  min_throughput: 0\n"
                   "  max_event_lag: 2s\n")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    rules = {r["alert"]: r for r in
             yaml.safe_load((tmp_path / "out" / "alert-rules.yaml").read_text())
             ["groups"][0]["rules"]}
    assert rules["MarketDataInputErrorRateHigh"]["expr"].endswith("> 0.01")
    assert "[120s]" in rules["MarketDataInputErrorRateHigh"]["expr"]
    assert rules["MarketDataInputErrorRateHigh"]["for"] == "120s"
    assert rules["MarketDataProcessingLatencyHigh"]["expr"].endswith("> 0.5")
    assert rules["MarketDataEventLagHigh"]["expr"].endswith("> 2")
    assert "MarketDataThroughputLow" not in rules             # min_throughput 0: off
    dash = json.loads((tmp_path / "out" / "grafana-dashboard.json").read_text())
    lat = next(p for p in dash["panels"] if p["title"].startswith("Processing latency"))
    assert lat["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitoring:\n  max_error_rate: 2\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2


def test_dashboard_shape() -> None:
    data = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)) and data["uid"]
    assert {v["name"] for v in data["templating"]["list"]} == {"datasource", "instance"}
    titles = " | ".join(p["title"] for p in data["panels"])
    for figure in ("Health status", "Throughput", "Error rates", "Processing latency",
                   "Candles out", "Rejected and late", "Buffered rows", "Sources"):
        assert figure in titles
    for p in data["panels"]:
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
        assert p["datasource"]["uid"] == "${datasource}"


def test_expressions_parse_as_promql() -> None:
    promql = pytest.importorskip("promql_parser")
    for expr in rule_exprs():
        promql.parse(expr)
    for expr in dashboard_exprs():
        promql.parse(expr)


def test_prom_duration() -> None:
    assert (prom_duration(60), prom_duration(0.5), prom_duration(1.25)) == (
        "60s", "500ms", "1250ms")
    with pytest.raises(ValueError):
        prom_duration(0)
