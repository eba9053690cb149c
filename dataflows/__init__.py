"""Flow factories: main (mode -> flow), replay (CLI), instruments (CCXT sidecar)."""
