"""Benchmark scripts (run them as `python benchmarks/NAME.py`); shared helpers in bench_common.py."""
