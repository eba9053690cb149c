"""Instrument definitions kept current through CCXT (the `live-instruments-sync` sidecar).

- `definition.InstrumentDefinition`: one tradable instrument, normalized from a ccxt market.
- `venues`: which Tardis.dev exchange covers which ccxt markets (no heavy imports).
- `mapper.InstrumentMapper`: VENUE <-> CCXT <-> Tardis symbol conversions.
- `ccxt_adapter.CCXTAdapter`: ccxt with rate limits, retries and clear errors.
- `events`: change events (added, changed, delisted) and sync status, and the diff that makes them.
- `registry`: where the flow publishes definitions and events (in memory or Redis).
- `provider.LiveInstrumentProvider`: the cache trading code reads from.

Importing this package is cheap: ccxt and redis are imported by the modules that need them.
"""
