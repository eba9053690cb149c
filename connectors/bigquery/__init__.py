"""BigQuery persist backend: `BigQueryWriter` (Storage Write API, insert_all fallback),
table layout from `connectors.tables.TableDef`, `<table>_dedup` views, and a local emulator
launcher for tests and benchmarks. See writer.py for what a write does."""

from connectors.bigquery.retry import RetriesExhausted
from connectors.bigquery.writer import BigQueryWriter

__all__ = ["BigQueryWriter", "RetriesExhausted"]
