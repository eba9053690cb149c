"""Wire format of served candles and the candle_with_features dict."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest

from connectors.serve.codec import decode_candle, encode_candles, encode_many
from features.columns import feature_columns
from operators.candles.schema import CANDLE_COLUMNS
from tests.connectors.serve.candles import PERIODS, candles, entry_ids


def test_round_trip_keeps_every_value_and_nests_the_features() -> None:
    cb = candles(0, 25)
    ids, payloads = encode_candles(cb.batch)
    assert ids == entry_ids(0, 25)
    rows = cb.batch.to_pylist()
    for id_, payload, row in zip(ids, payloads, rows, strict=True):
        got = decode_candle(id_, payload)
        assert got["stream_id"] == id_
        assert [k for k in got if k not in ("hft_features", "stream_id")] == list(CANDLE_COLUMNS)
        for col in CANDLE_COLUMNS:
            want = row[col]
            if isinstance(want, datetime):
                assert got[col] == want and got[col].tzinfo is not None
            else:
                assert got[col] == want, col
        feats = got["hft_features"]
        assert list(feats) == [*feature_columns(PERIODS), "vwap", "trade_count"]
        assert all(feats[c] == row[c] for c in feature_columns(PERIODS))
        assert feats["vwap"] == row["vwap"] and feats["trade_count"] == row["trade_count"]
    assert decode_candle(ids[0], payloads[0])["hft_features"]["sma_5"] is None   # warm-up
    assert decode_candle(ids[12], payloads[12])["vwap"] is None                   # filled


def test_wire_json_has_flat_columns_and_iso_utc_timestamps() -> None:
    _, payloads = encode_candles(candles(0, 1).batch)
    row = orjson.loads(payloads[0])
    assert row["timestamp"] == "2024-03-01T00:00:00.000000Z"
    assert row["open_timestamp"] == "2024-03-01T00:00:00.001234Z"
    assert "sma_5" in row and "hft_features" not in row
    iso = decode_candle("1-0", payloads[0], timestamps="iso")
    assert iso["timestamp"] == "2024-03-01T00:00:00.000000Z"
    assert decode_candle("1-0", payloads[0])["timestamp"] == datetime(2024, 3, 1, tzinfo=UTC)


def test_nanosecond_and_nan_inputs_are_normalized() -> None:
    batch = pa.RecordBatch.from_pydict({
        "timestamp": pa.array([1_709_251_200_000_000_789], pa.timestamp("ns", tz="UTC")),
        "close": [float("nan")],
        "trade_count": pa.array([None], pa.int64()),
    })
    ids, payloads = encode_candles(batch)
    assert ids == ["1709251200000-0"]
    assert orjson.loads(payloads[0]) == {
        "timestamp": "2024-03-01T00:00:00.000000Z", "close": None, "trade_count": None}


@pytest.mark.parametrize("batch", [
    pa.RecordBatch.from_pydict({"close": [1.0]}),
    pa.RecordBatch.from_pydict({"timestamp": [1_709_251_200_000_000]}),
    pa.RecordBatch.from_pydict({"timestamp": pa.array([None], pa.timestamp("us", tz="UTC"))}),
    pa.RecordBatch.from_pydict({"timestamp": pa.array([0], pa.timestamp("us", tz="UTC"))}),
])
def test_rows_without_a_usable_start_are_refused(batch: pa.RecordBatch) -> None:
    with pytest.raises(ValueError):
        encode_candles(batch)


def test_small_batches_encode_row_by_row_to_the_same_json() -> None:
    # > 8 rows go column by column, <= 8 row by row: both must write the same bytes
    batch = candles(0, 40).batch
    assert batch.num_rows > 8
    ids, payloads = encode_candles(batch)
    for i in range(batch.num_rows):
        one_ids, one = encode_candles(batch.slice(i, 1))
        assert (one_ids, one) == ([ids[i]], [payloads[i]])
    # with NaN features and null vwap/timestamps (filled rows) among them
    assert any(orjson.loads(p)["vwap"] is None for p in payloads)
    nan = batch.set_column(batch.schema.get_field_index("sma_5"), "sma_5",
                           pa.array([float("nan")] * batch.num_rows))
    assert encode_candles(nan.slice(0, 3))[1] == encode_candles(nan)[1][:3]


def test_encode_many_equals_each_batch_encoded_alone() -> None:
    """A close point's batches are encoded together; each gets exactly its own rows' bytes,
    and a bad batch among them gets its error while the others are still encoded."""
    good = [candles(i, n, symbol=f"S{i}", timeframe=tf).batch
            for i, (n, tf) in enumerate([(1, "1m"), (3, "15s"), (1, "5m"), (12, "1h"), (1, "1m")])]
    other_schema = good[1].select(["timestamp", "close"])
    bad = pa.RecordBatch.from_pydict(
        {"timestamp": pa.array([None], pa.timestamp("us", tz="UTC"))}).cast(
        pa.schema([pa.field("timestamp", pa.timestamp("us", tz="UTC"))]))
    bad_same_schema = good[0].set_column(
        good[0].schema.get_field_index("timestamp"), good[0].schema.field("timestamp"),
        pa.array([None], pa.timestamp("us", tz="UTC")))
    batches = [good[0], good[1], other_schema, bad_same_schema, good[2], good[3], bad, good[4]]
    out = encode_many(batches)
    assert len(out) == len(batches)
    for b, got in zip(batches, out, strict=True):
        if b is bad or b is bad_same_schema:
            assert isinstance(got, ValueError)
        else:
            assert got == encode_candles(b)
    assert encode_many([]) == []
