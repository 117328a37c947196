"""`python -m lensnet.bench NAME [options]`: run a benchmark, save JSON under bench/results/, print a table."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from lensnet.bench.common import save_results
from lensnet.core.errors import cli_exit
from lensnet.core.plugins import declared_modules
from lensnet.core.tables import format_table

SUMMARY = "run a benchmark"  # its line in `lensnet --help`



def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m lensnet.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    # every module of lensnet.bench that declares a SUMMARY is a benchmark (lensnet.core.plugins): NAME is its file
    # name with - for _, and it defines add_arguments(parser) and run(args) -> list[dict]; others are helpers
    modules = {}
    for short, (module_name, summary) in declared_modules("lensnet.bench", "SUMMARY", skip=("__main__",)).items():
        name = short.replace("_", "-")
        modules[name] = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=summary.replace("%", "%%"), description=summary.replace("%", "%%"))
        modules[name].add_arguments(sp)
    args = parser.parse_args(argv)
    rows = modules[args.name].run(args)
    options = {k: v for k, v in vars(args).items() if k != "name"}
    command = "python -m lensnet.bench " + shlex.join(argv)
    path = save_results(args.name, rows, options, command)
    print(format_table(rows))
    print(f"\nresults: {path}\ncommand: {command}")
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
