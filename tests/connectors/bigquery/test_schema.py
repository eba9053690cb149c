"""Arrow -> BigQuery schema, partitioning resources, the dedup view, retry classification."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
import requests
from google.api_core import exceptions as gexc

from connectors.bigquery.retry import Backoff, is_transient
from connectors.bigquery.schema import (
    DAY_MS,
    bq_schema,
    bq_type,
    dedup_view_sql,
    quote_id,
    table_resource,
)
from connectors.bigquery.writer import json_rows, split_required
from connectors.tables import TICK_TABLES, candle_table
from tests.connectors.bigquery.rows import tick_rows

TS = pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize(("arrow", "bq"), [
    (TS, "TIMESTAMP"), (pa.string(), "STRING"), (pa.large_string(), "STRING"),
    (pa.float64(), "FLOAT64"), (pa.float32(), "FLOAT64"), (pa.int64(), "INT64"),
    (pa.int32(), "INT64"), (pa.bool_(), "BOOL"), (pa.date32(), "DATE"),
    (pa.binary(), "BYTES"),
])
def test_arrow_to_bigquery_types(arrow: pa.DataType, bq: str) -> None:
    assert bq_type(arrow) == bq


@pytest.mark.parametrize("arrow", [pa.timestamp("us"), pa.timestamp("us", tz="Europe/Paris"),
                                   pa.uint64(), pa.list_(pa.int64())])
def test_unsupported_arrow_types_are_named(arrow: pa.DataType) -> None:
    with pytest.raises(TypeError, match="column px"):
        bq_type(arrow, "px")


def test_every_table_maps_with_required_modes() -> None:
    for tdef in [*TICK_TABLES.values(), candle_table("15s", (5, 10, 20))]:
        fields = bq_schema(tdef)
        assert [f.name for f in fields] == tdef.schema.names
        assert {f.name for f in fields if f.mode == "REQUIRED"} == set(tdef.required)


def test_table_resources_for_both_datasets() -> None:
    tdef = candle_table("4h", (5,))
    live = table_resource(tdef, "p.d.candles_4h", live=True, expiration_days=30)
    hist = table_resource(tdef, "p.d.candles_4h", live=False, expiration_days=30)
    assert (live.time_partitioning.type_, live.time_partitioning.field,
            live.time_partitioning.expiration_ms) == ("HOUR", "timestamp_out", 30 * DAY_MS)
    assert (hist.time_partitioning.type_, hist.time_partitioning.field,
            hist.time_partitioning.expiration_ms) == ("DAY", "timestamp_out", None)
    assert live.clustering_fields == hist.clustering_fields == ["exchange", "symbol"]


def test_dedup_view_partitions_on_the_partition_and_cluster_columns() -> None:
    sql = dedup_view_sql(candle_table("1m", (5,)), "proj", "ds")
    assert "FROM `proj.ds.candles_1m`" in sql
    assert "PARTITION BY timestamp_out, exchange, symbol, row_key" in sql
    with pytest.raises(ValueError):
        quote_id("p", "d", "bad`name")


def test_split_required_names_every_null_column() -> None:
    tdef = TICK_TABLES["ticks_trades"]
    rows = tick_rows(tdef, 4)
    rows = rows.set_column(rows.schema.get_field_index("exchange"), "exchange",
                           pa.array([None, "binance", None, "binance"]))
    rows = rows.set_column(rows.schema.get_field_index("amount"), "amount",
                           pa.array([1.0, 2.0, None, 4.0]))
    ok, bad = split_required(tdef, rows)
    assert ok.num_rows == 2 and bad is not None
    assert bad.column("reason").to_pylist() == ["REQUIRED column is null: exchange",
                                                "REQUIRED column is null: exchange, amount"]
    ok, none = split_required(tdef, tick_rows(tdef, 3))
    assert ok.num_rows == 3 and none is None


def test_json_rows_for_insert_all() -> None:
    t = pa.table({"ts": pa.array([1_700_000_000_123_456, None], TS),
                  "x": [float("nan"), float("-inf")], "y": [1.5, None], "s": ["a", None]})
    assert json_rows(t) == [
        {"ts": "2023-11-14T22:13:20.123456Z", "x": "NaN", "y": 1.5, "s": "a"},
        {"ts": None, "x": "-Infinity", "y": None, "s": None}]


@pytest.mark.parametrize(("exc", "transient"), [
    (gexc.ServiceUnavailable("x"), True), (gexc.DeadlineExceeded("x"), True),
    (gexc.InternalServerError("x"), True), (gexc.TooManyRequests("x"), True),
    (gexc.ResourceExhausted("x"), True), (gexc.Aborted("x"), True),
    (gexc.BadGateway("x"), True), (gexc.GatewayTimeout("x"), True),
    (gexc.Forbidden("x", errors=[{"reason": "rateLimitExceeded"}]), True),
    (requests.exceptions.ConnectionError("refused"), True), (ConnectionResetError(), True),
    (gexc.BadRequest("x"), False), (gexc.Forbidden("x"), False), (gexc.NotFound("x"), False),
    (gexc.Unknown("x"), False), (gexc.PermissionDenied("x"), False),
    (gexc.MethodNotImplemented("x"), False), (ValueError("x"), False),
])
def test_transient_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(max_retries=10, initial_s=0.1, max_s=2.0)
    rng = random.Random(7)
    delays = [b.delay(n, rng) for n in range(10)]
    for n, d in enumerate(delays):
        cap = min(2.0, 0.1 * 2 ** n)
        assert cap / 2 <= d <= cap
    assert len(set(delays)) == len(delays)  # jittered
    for bad in ({"max_retries": -1}, {"initial_s": 0}, {"initial_s": 2, "max_s": 1}):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]
