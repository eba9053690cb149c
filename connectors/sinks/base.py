"""The interface every persist backend implements (BigQuery, local Parquet).

A `TableWriter` writes already-conformed Arrow tables (see `connectors.tables.conform`) to
one table at a time. Batching by size and time, retries of the whole sink and the Bytewax
plumbing live in `connectors.sinks.persist`, so a backend only says how to create a table
and how to write rows to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from connectors.tables import TableDef


@dataclass(frozen=True)
class WriteResult:
    """What a write did: rows stored, and rows refused with a reason for each.

    `rejected` has the table's columns plus a string column `reason`; it goes to the
    dead-letter output, so nothing is dropped silently.
    """

    written: int
    rejected: pa.Table | None = None
    details: dict[str, object] = field(default_factory=dict)


class TableWriter(Protocol):
    """A persist backend."""

    def ensure_table(self, table: TableDef) -> None:
        """Create the table (and its dataset or directory) if missing; idempotent."""

    def write(self, table: TableDef, rows: pa.Table) -> WriteResult:
        """Write rows conformed to `table.schema`; retry transient errors internally."""

    def close(self) -> None:
        """Flush and release clients and files."""
