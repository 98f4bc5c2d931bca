"""Benchmark scripts (run as files: python benchmarks/NAME.py); a package so
that the tests can import them."""
