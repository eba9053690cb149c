"""BigQuery table layout derived from `connectors.tables.TableDef` (one schema, two backends).

The Arrow schema decides the BigQuery column types (timestamp[us, UTC] -> TIMESTAMP,
string -> STRING, float64 -> FLOAT64, integers -> INT64, bool -> BOOL), `TableDef.required`
decides REQUIRED, and the dataset kind decides partitioning: live tables get HOUR partitions
on the table's partition field with a partition expiration; historical tables DAY partitions
and no expiration. Both cluster on `TableDef.cluster_fields` (exchange, symbol).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from connectors.tables import TableDef

DAY_MS = 86_400_000
DEDUP_SUFFIX = "_dedup"


def bq_type(arrow_type: pa.DataType, column: str = "?") -> str:
    """The BigQuery standard SQL type of an Arrow type; TypeError for unsupported ones."""
    t = arrow_type
    if pa.types.is_timestamp(t):
        if t.tz is None or t.tz.upper() not in ("UTC", "+00:00", "Z"):
            raise TypeError(f"column {column}: BigQuery TIMESTAMP needs a UTC Arrow timestamp, "
                            f"got {t}")
        return "TIMESTAMP"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "STRING"
    if pa.types.is_floating(t):
        return "FLOAT64"
    if pa.types.is_integer(t):
        if pa.types.is_uint64(t):
            raise TypeError(f"column {column}: uint64 does not fit BigQuery INT64")
        return "INT64"
    if pa.types.is_boolean(t):
        return "BOOL"
    if pa.types.is_date32(t):
        return "DATE"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "BYTES"
    raise TypeError(f"column {column}: Arrow type {t} has no BigQuery mapping here")


def bq_schema(table: TableDef) -> list[Any]:
    """`google.cloud.bigquery.SchemaField`s of a table, REQUIRED where the TableDef says."""
    from google.cloud import bigquery

    required = set(table.required)
    return [bigquery.SchemaField(f.name, bq_type(f.type, f.name),
                                 mode="REQUIRED" if f.name in required else "NULLABLE")
            for f in table.schema]


def partitioning(table: TableDef, live: bool, expiration_days: int) -> Any:
    """HOUR partitions with expiration (live) or DAY partitions without (historical)."""
    from google.cloud import bigquery

    if live:
        return bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.HOUR,
                                         field=table.partition_field,
                                         expiration_ms=expiration_days * DAY_MS)
    return bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                     field=table.partition_field)


def table_resource(table: TableDef, table_id: str, live: bool, expiration_days: int) -> Any:
    """A `google.cloud.bigquery.Table` ready for `create_table`."""
    from google.cloud import bigquery

    t = bigquery.Table(table_id, schema=bq_schema(table))
    t.time_partitioning = partitioning(table, live, expiration_days)
    t.clustering_fields = list(table.cluster_fields)
    kind = "live (HOUR partitions)" if live else "historical (DAY partitions)"
    t.description = (f"{table.name}: {kind}; one row per row_key in the {table.name}"
                     f"{DEDUP_SUFFIX} view (rows may repeat here after replays or retries)")
    return t


def quote_id(project: str, dataset: str, name: str) -> str:
    for part in (project, dataset, name):
        if "`" in part or not part:
            raise ValueError(f"invalid BigQuery identifier part {part!r}")
    return f"`{project}.{dataset}.{name}`"


def dedup_view_sql(table: TableDef, project: str, dataset: str) -> str:
    """The query of `<table>_dedup`: one row per row_key.

    Equal row keys imply equal partition field, exchange and symbol (all key columns hold
    them), so partitioning the window by those too changes nothing in the result but lets
    BigQuery push a filter on the partition field or the clustering columns below the window:
    a query on the view prunes partitions like a query on the table.
    """
    window = list(dict.fromkeys([table.partition_field, *table.cluster_fields, "row_key"]))
    return (f"SELECT * FROM {quote_id(project, dataset, table.name)}\n"
            f"WHERE TRUE\n"
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(window)}) = 1")
