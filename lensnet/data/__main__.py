"""`python -m lensnet.data COMMAND DIR`: inspect datasets.

  check DIR [--audit]   verify every shard (presence, sha256, record checksums, counts, schema, finite
                        images, pixel statistics) and print a summary; --audit reruns the class audit
  info DIR              print the summary from the manifest alone (fast, verifies nothing)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lensnet.core.errors import cli_exit

SUMMARY = "check or describe a dataset"  # its line in `lensnet --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lensnet.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="verify a dataset and print its summary")
    check.add_argument("directory", type=Path, metavar="DIR")
    check.add_argument("--audit", action="store_true",
                       help="recompute the two-sample class audit from the records; exit 2 if a shared "
                            "parameter separates the classes")
    check.add_argument("--no-progress", action="store_true")
    info = sub.add_parser("info", help="print a dataset's summary from its manifest")
    info.add_argument("directory", type=Path, metavar="DIR")
    for p in (check, info):
        p.add_argument("--seed", type=int, default=0, help="accepted like every lensnet command; checking draws "
                                                            "no random numbers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lensnet.data.check import format_summary, main_check
    from lensnet.data.pipeline import open_dataset

    if args.command == "info":
        print(format_summary(open_dataset(args.directory)))
        return 0
    return main_check(args.directory, audit=args.audit, progress=not args.no_progress)


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
