"""Benchmark of the replay pipeline against reference implementations (see bench/RESULTS.md)."""
