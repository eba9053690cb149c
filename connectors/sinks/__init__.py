"""Sinks: stdout JSON lines, local Parquet, dead letters (Redis and BigQuery live beside)."""
