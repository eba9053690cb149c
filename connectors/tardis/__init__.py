"""Tardis.dev ingestion: CSV dataset replay and the tardis-machine WebSocket."""
