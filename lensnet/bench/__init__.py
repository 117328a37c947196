"""Benchmarks: `python -m lensnet.bench NAME` writes bench/results/NAME-<time>.json and prints a table."""
