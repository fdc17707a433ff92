"""Benchmarks: python -m bench.NAME --help."""
