"""Benchmarks: `python -m lensnet.bench NAME` writes bench/results/NAME-<time>.json and prints a table.

Layer: above every library package, below the commands. May import any lensnet package, never a command
module. A benchmark is one module declaring SUMMARY, add_arguments(parser) and run(args) -> rows; `__main__.py`
is the command.
"""
