"""BigQueryWriter against a real BigQuery API emulator (bqemulator: REST + Storage Write gRPC).

Where the emulator differs from BigQuery the test says so:
- it does not enforce REQUIRED on writes, so the REQUIRED test shows the writer's own check
  keeps such rows out (and returns them with a reason) before anything is sent;
- it ignores insertId on insert_all, so the raw table doubles on a replay through either API
  (BigQuery would drop some insert_all repeats on its own, best effort, within about a
  minute); the `_dedup` view is what keeps one row per row_key on both;
- it does not expire partitions, so live-table rows are written with recent timestamps
  (real BigQuery drops rows older than the 30-day partition expiration).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from connectors.bigquery.schema import DAY_MS
from connectors.bigquery.writer import BigQueryWriter
from connectors.tables import TICK_TABLES, candle_table, conform
from dataflows.config import BigQueryConfig
from tests.connectors.bigquery.conftest import fast_config
from tests.connectors.bigquery.rows import HIST_BASE_US, candle_rows, normalized, tick_rows

CANDLES_1M = candle_table("1m", (5, 10, 20))
MakeWriter = Callable[..., BigQueryWriter]


def recent_base_us() -> int:
    """The start of the hour two hours ago: recent enough for a live (expiring) table."""
    now = int(time.time()) // 3600 * 3600
    return (now - 2 * 3600) * 1_000_000


def read_back(w: BigQueryWriter, name: str) -> pa.Table:
    return w.query(f"SELECT * FROM `{w.table_id(name)}`")


def count(w: BigQueryWriter, table_id: str) -> int:
    return int(w.query(f"SELECT COUNT(*) AS n FROM `{table_id}`").column("n")[0].as_py())


@pytest.mark.parametrize("live", [True, False], ids=["live", "historical"])
def test_created_tables_have_partitioning_expiration_and_clustering(
        make_writer: MakeWriter, live: bool) -> None:
    """Default dataset names; checked through get_table as a user would see them."""
    w = make_writer(BigQueryConfig.model_validate({"retry_initial_backoff": "50ms"}), live=live)
    assert w.dataset == ("market_data_streaming_live" if live else "market_data_streaming")
    for tdef in (CANDLES_1M, TICK_TABLES["ticks_trades"]):
        w.ensure_table(tdef)
        w.ensure_table(tdef)  # idempotent
        t = w.client.get_table(w.table_id(tdef))
        tp = t.time_partitioning
        assert tp.type_ == ("HOUR" if live else "DAY")
        assert tp.field == ("timestamp_out" if tdef is CANDLES_1M else "timestamp")
        assert tp.expiration_ms == (30 * DAY_MS if live else None)
        assert t.clustering_fields == ["exchange", "symbol"]
        modes = {f.name: f.mode for f in t.schema}
        assert [f.name for f in t.schema] == tdef.schema.names
        assert all(modes[c] == "REQUIRED" for c in tdef.required)
        assert sum(m == "REQUIRED" for m in modes.values()) == len(tdef.required)
        types = {f.name: f.field_type for f in t.schema}
        assert types["timestamp"] == "TIMESTAMP" and types["exchange"] == "STRING"
        view = w.client.get_table(w.dedup_view_id(tdef))
        assert view.table_type == "VIEW"
    ds = w.client.get_dataset(f"{w.project}.{w.dataset}")
    assert ds.default_partition_expiration_ms == (30 * DAY_MS if live else None)


@pytest.mark.parametrize("name", sorted(TICK_TABLES))
def test_each_tick_table_round_trips_through_storage_write(make_writer: MakeWriter,
                                                           name: str) -> None:
    """Arrow rows through the Storage Write API default stream, read back by query."""
    tdef = TICK_TABLES[name]
    w = make_writer(live=True)
    rows = tick_rows(tdef, 7, base_us=recent_base_us())
    result = w.write(tdef, rows)
    assert result.written == 7 and result.rejected is None
    assert result.details["api"] == "storage" and result.details["requests"] == 1
    assert normalized(read_back(w, name), tdef) == normalized(rows, tdef)


@pytest.mark.parametrize("live", [True, False], ids=["live", "historical"])
def test_candles_with_features_round_trip(make_writer: MakeWriter, live: bool) -> None:
    w = make_writer(live=live)
    rows = candle_rows(30, base_us=recent_base_us() if live else HIST_BASE_US)
    result = w.write(CANDLES_1M, rows)
    assert result.written == 30 and result.rejected is None
    back = read_back(w, "candles_1m")
    assert normalized(back, CANDLES_1M) == normalized(rows, CANDLES_1M)
    # Features are null until their period is reached, then set.
    first = min(back.to_pylist(), key=lambda r: r["timestamp"])
    assert first["sma_20"] is None and first["sma_5"] is None


@pytest.mark.parametrize("name", ["ticks_trades", "ticks_derivative_ticker", "candles_1m"])
def test_insert_all_fallback_round_trips(make_writer: MakeWriter, name: str) -> None:
    """The legacy streaming API path, NaN and nulls included, equal values on read back."""
    tdef = CANDLES_1M if name == "candles_1m" else TICK_TABLES[name]
    w = make_writer(write_api="insert_all", insert_all_max_rows=4)
    rows = candle_rows(10) if tdef is CANDLES_1M else tick_rows(tdef, 10)
    result = w.write(tdef, rows)
    assert result.written == 10 and result.rejected is None
    assert result.details["api"] == "insert_all" and result.details["requests"] == 3
    assert normalized(read_back(w, name), tdef) == normalized(rows, tdef)


@pytest.mark.parametrize("api", ["storage", "insert_all"])
def test_replayed_batch_is_not_doubled_in_dedup_view(make_writer: MakeWriter, api: str) -> None:
    tdef = TICK_TABLES["ticks_trades"]
    w = make_writer(write_api=api)
    rows = tick_rows(tdef, 12)
    assert w.write(tdef, rows).written == 12
    # A replay of the same batch, and a retry overlapping it with 4 new rows.
    assert w.write(tdef, rows).written == 12
    more = tick_rows(tdef, 16)
    assert w.write(tdef, more.slice(8)).written == 8
    # The emulator ignores insertId, so the raw table holds every copy (see module doc).
    assert count(w, w.table_id(tdef)) == 32
    assert count(w, w.dedup_view_id(tdef)) == 16
    dedup = w.query(f"SELECT * FROM `{w.dedup_view_id(tdef)}`")
    assert normalized(dedup, tdef) == normalized(more, tdef)


def test_dedup_view_filters_like_the_table(make_writer: MakeWriter) -> None:
    """A partition + cluster filter on the view gives the same rows as on the table."""
    w = make_writer()
    rows = candle_rows(120)
    w.write(CANDLES_1M, rows)
    w.write(CANDLES_1M, rows.slice(0, 60))
    where = ("WHERE symbol = 'BTCUSDT' AND timestamp_out >= TIMESTAMP '2024-05-01 01:00:00+00' "
             "ORDER BY timestamp")
    on_view = w.query(f"SELECT * FROM `{w.dedup_view_id(CANDLES_1M)}` {where}")
    assert on_view.num_rows == 61
    assert normalized(on_view, CANDLES_1M) == normalized(
        rows.filter(pa.compute.greater_equal(
            rows.column("timestamp_out"),
            pa.scalar(datetime(2024, 5, 1, 1, tzinfo=UTC), rows.schema.field(
                "timestamp_out").type))), CANDLES_1M)


def test_analytics_query_latest_hour_of_1m_candles(make_writer: MakeWriter) -> None:
    """The README's query: the latest hour of 1m candles with features for one symbol."""
    w = make_writer(live=True)
    now_us = int(time.time()) * 1_000_000
    rows = candle_rows(180, base_us=now_us - 3 * 3600 * 1_000_000)
    other = candle_rows(180, base_us=now_us - 3 * 3600 * 1_000_000, symbol="ETHUSDT")
    w.write(CANDLES_1M, rows)
    w.write(CANDLES_1M, other)
    w.write(CANDLES_1M, rows.slice(150))  # a replayed tail
    sql = f"""
        SELECT timestamp, timestamp_out, open, high, low, close, volume, vwap,
               sma_5, ema_10, rsi_20, price_volatility_20
        FROM `{w.dedup_view_id(CANDLES_1M)}`
        WHERE exchange = @exchange AND symbol = @symbol
          AND timestamp_out > TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 HOUR)
        ORDER BY timestamp"""
    from google.cloud import bigquery

    got = w.query(sql, query_parameters=[
        bigquery.ScalarQueryParameter("exchange", "STRING", "binance"),
        bigquery.ScalarQueryParameter("symbol", "STRING", "BTCUSDT")])
    cutoff = int(time.time()) * 1_000_000 - 3600 * 1_000_000
    out_us = rows.column("timestamp_out").cast(pa.int64()).to_pylist()
    expected = [i for i, t in enumerate(out_us) if t > cutoff and t <= now_us + 60_000_000]
    # Wall time moves while the test runs: allow the boundary candle either way.
    assert abs(got.num_rows - len(expected)) <= 1 and got.num_rows >= 59
    ts = got.column("timestamp").to_pylist()
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert got.column("sma_5").null_count == 0


def test_required_nulls_rejected_before_sending(make_writer: MakeWriter) -> None:
    """The emulator accepts nulls in REQUIRED columns (BigQuery would fail the whole request);
    the writer's own check rejects such rows with a reason and writes the others."""
    tdef = TICK_TABLES["ticks_trades"]
    w = make_writer()
    rows = tick_rows(tdef, 6)
    price = rows.column("price").to_pylist()
    side = rows.column("side").to_pylist()
    price[1] = None
    price[4] = None
    side[4] = None
    bad = rows.set_column(rows.schema.get_field_index("price"), "price",
                          pa.array(price, pa.float64()))
    bad = bad.set_column(bad.schema.get_field_index("side"), "side", pa.array(side))
    result = w.write(tdef, bad)
    assert result.written == 4
    assert result.rejected is not None and result.rejected.num_rows == 2
    assert result.rejected.column_names == [*tdef.schema.names, "reason"]
    assert result.rejected.column("reason").to_pylist() == [
        "REQUIRED column is null: price", "REQUIRED column is null: side, price"]
    assert result.details["rejected_required"] == 2
    back = read_back(w, tdef.name)
    assert sorted(back.column("row_key").to_pylist()) == sorted(
        k for i, k in enumerate(rows.column("row_key").to_pylist()) if i not in (1, 4))
    # A batch with no valid row sends nothing at all.
    only_bad = w.write(tdef, bad.take([1, 4]))
    assert only_bad.written == 0 and only_bad.details["requests"] == 0
    assert only_bad.rejected is not None and only_bad.rejected.num_rows == 2


def test_required_nulls_rejected_on_insert_all_too(make_writer: MakeWriter) -> None:
    w = make_writer(write_api="insert_all")
    rows = candle_rows(5)
    close = rows.column("close").to_pylist()
    close[0] = None
    bad = rows.set_column(rows.schema.get_field_index("close"), "close",
                          pa.array(close, pa.float64()))
    result = w.write(CANDLES_1M, bad)
    assert result.written == 4
    assert result.rejected is not None
    assert result.rejected.column("reason").to_pylist() == ["REQUIRED column is null: close"]
    assert count(w, w.table_id(CANDLES_1M)) == 4


def test_large_batch_is_split_under_the_request_cap(make_writer: MakeWriter) -> None:
    w = make_writer(max_request_bytes=65_536)
    rows = candle_rows(3000)
    result = w.write(CANDLES_1M, rows)
    assert result.written == 3000
    requests, sent = result.details["requests"], result.details["bytes"]
    assert isinstance(requests, int) and requests > 5
    assert isinstance(sent, int) and sent > 65_536
    assert count(w, w.table_id(CANDLES_1M)) == 3000


def test_unconformed_rows_are_conformed(make_writer: MakeWriter) -> None:
    """Rows missing nullable columns and the row_key still land, with keys computed."""
    tdef = TICK_TABLES["ticks_trades"]
    w = make_writer()
    full = tick_rows(tdef, 3)
    partial = full.drop_columns(["id", "row_key"])
    assert w.write(tdef, partial).written == 3
    back = normalized(read_back(w, tdef.name), tdef)
    assert [r["id"] for r in back] == [None, None, None]
    assert [r["row_key"] for r in back] == sorted(
        conform(partial, tdef).column("row_key").to_pylist())


def test_schema_evolution_adds_columns(make_writer: MakeWriter) -> None:
    """New feature periods add NULLABLE columns to an existing table (a schema patch, one
    metadata update). The emulator records the patch in its catalog but does not alter its
    storage, so this checks the table's schema and not a write of the new columns."""
    cfg = fast_config()
    w = make_writer(cfg)
    old = candle_table("1m", (5, 10))
    assert w.write(old, candle_rows(25, periods=(5, 10))).written == 25
    w2 = make_writer(cfg)
    w2.ensure_table(CANDLES_1M)
    t = w2.client.get_table(w2.table_id(CANDLES_1M))
    # BigQuery appends new columns; writes match columns by name.
    assert [f.name for f in t.schema][:len(old.schema)] == old.schema.names
    assert sorted(f.name for f in t.schema) == sorted(CANDLES_1M.schema.names)
    added = [f for f in t.schema if f.name not in old.schema.names]
    assert [f.name for f in added] == ["sma_20", "ema_20", "rsi_20", "price_volatility_20"]
    assert {(f.mode, f.field_type) for f in added} == {("NULLABLE", "FLOAT64")}
    w2.ensure_table(CANDLES_1M)  # nothing left to add
    assert len(w2.client.get_table(w2.table_id(CANDLES_1M)).schema) == len(t.schema)


def test_conflicting_column_type_is_refused(make_writer: MakeWriter) -> None:
    from google.cloud import bigquery

    w = make_writer()
    w.ensure_dataset()
    tdef = TICK_TABLES["ticks_gaps"]
    t = bigquery.Table(w.table_id(tdef), schema=[
        bigquery.SchemaField("exchange", "STRING"), bigquery.SchemaField("symbol", "STRING"),
        bigquery.SchemaField("timestamp", "STRING")])
    w.client.create_table(t)
    with pytest.raises(ValueError, match="column timestamp is STRING"):
        w.ensure_table(tdef)


def test_writer_validates_and_closes(bq_env: Any) -> None:
    with pytest.raises(TypeError):
        BigQueryWriter("persist.bigquery", live=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_live"):
        BigQueryWriter(fast_config(), live="auto")  # type: ignore[arg-type]
    w = BigQueryWriter(fast_config(), live=False)
    assert "test-project" in repr(w)
    assert w.write(TICK_TABLES["ticks_trades"],
                   TICK_TABLES["ticks_trades"].schema.empty_table()).written == 0
    w.close()
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(TICK_TABLES["ticks_trades"], tick_rows(TICK_TABLES["ticks_trades"], 1))
