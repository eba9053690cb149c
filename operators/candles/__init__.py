"""Multi-timeframe candles: bar accumulation, close policy, and the keyed Bytewax step."""
