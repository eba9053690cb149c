"""The local Parquet writer: date partitions, and when checkpoints wait for writes."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from hypothesis import given
from hypothesis import strategies as st

import connectors.sinks.parquet as parquet
from connectors.sinks.parquet import ParquetWriter, _by_date
from connectors.tables import candle_table

_DAY_US = 86_400_000_000


def _reference(rows: pa.Table, field: str) -> dict[str, list[int]]:
    """Row indices per date, by formatting every row (what the writer must match)."""
    day = pc.strftime(rows.column(field), format="%Y-%m-%d").to_pylist()
    out: dict[str, list[int]] = {}
    for i, d in enumerate(day):
        out.setdefault("__HIVE_DEFAULT_PARTITION__" if d is None else d, []).append(i)
    return out


@given(st.lists(st.one_of(st.none(), st.integers(-3 * _DAY_US, 40_000 * _DAY_US)),
                min_size=1, max_size=40),
       st.sampled_from(["us", "ns", "ms"]))
def test_rows_split_by_utc_date_like_strftime(values, unit):
    scale = {"us": 1, "ns": 1000, "ms": 1}[unit]
    if unit == "ms":
        values = [None if v is None else v // 1000 for v in values]
    ts = pa.array([None if v is None else v * scale for v in values], pa.int64()).cast(
        pa.timestamp(unit, tz="UTC"))
    rows = pa.table({"t": ts, "i": pa.array(range(len(values)), pa.int64())})
    parts = _by_date(rows, "t")
    got = {d: part.column("i").to_pylist() for d, part in parts}
    assert sum(len(part) for _, part in parts) == len(values)  # no row lost
    assert got == _reference(rows, "t")


def test_a_write_spanning_days_lands_in_each_date_folder(tmp_path):
    table = candle_table("1m", (5,))
    start = 1_700_000_000_000_000 - 1_700_000_000_000_000 % _DAY_US + _DAY_US - 120_000_000
    starts = [start + i * 60_000_000 for i in range(4)]  # two minutes each side of midnight
    rows = pa.table({f.name: pa.nulls(4, f.type) for f in table.schema}, schema=table.schema)
    ts = pa.array(starts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    rows = rows.set_column(rows.schema.get_field_index(table.partition_field),
                           table.partition_field, ts)
    writer = ParquetWriter(tmp_path)
    writer.ensure_table(table)
    writer.write(table, rows)
    writer.close()
    folders = sorted(p.name for p in (tmp_path / table.name).iterdir())
    assert folders == ["date=2023-11-14", "date=2023-11-15"]
    back = ds.dataset(tmp_path / table.name, format="parquet", partitioning="hive").to_table()
    assert sorted(back.column(table.partition_field).cast(pa.int64()).to_pylist()) == starts


def _rows(table, n=3):
    rows = pa.table({f.name: pa.nulls(n, f.type) for f in table.schema}, schema=table.schema)
    ts = pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))
    return rows.set_column(rows.schema.get_field_index(table.partition_field),
                           table.partition_field, ts)


def _slow_writes(monkeypatch, gate):
    real = parquet.pq.write_table

    def write_table(*args, **kwargs):
        assert gate.wait(10), "the test never released the write"
        return real(*args, **kwargs)

    monkeypatch.setattr(parquet.pq, "write_table", write_table)


def test_checkpoint_waits_for_writes_only_when_snapshots_are_used(tmp_path, monkeypatch):
    table = candle_table("1m", (5,))
    gate = threading.Event()
    _slow_writes(monkeypatch, gate)
    # without a recovery store: the position is returned while the write is still held
    quick = ParquetWriter(tmp_path / "a", wait_at_checkpoint=False)
    quick.ensure_table(table)
    quick.write(table, _rows(table))
    assert quick.checkpoint(table)[1] == 1
    assert not list((tmp_path / "a" / table.name).rglob("*.parquet"))  # not on disk yet
    gate.set()
    quick.close()  # waits for it
    assert len(list((tmp_path / "a" / table.name).rglob("*.parquet"))) == 1
    # with one (the default), the position only covers files on disk
    durable = ParquetWriter(tmp_path / "b")
    durable.ensure_table(table)
    durable.write(table, _rows(table))
    assert durable.checkpoint(table)[1] == 1
    assert len(list((tmp_path / "b" / table.name).rglob("*.parquet"))) == 1
    durable.close()


def test_a_failed_write_still_raises_at_close_without_waiting_checkpoints(tmp_path,
                                                                           monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(parquet.pq, "write_table", broken)
    table = candle_table("1m", (5,))
    writer = ParquetWriter(tmp_path, wait_at_checkpoint=False)
    writer.ensure_table(table)
    writer.write(table, _rows(table))
    writer.checkpoint(table)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
