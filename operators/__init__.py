"""Bytewax operators: data-type router, candle builder, derived data types, features step."""
