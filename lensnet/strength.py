"""`python -m lensnet.strength`: how strong a preset's substructure signal is, and how fast it simulates.

What it measures (paired chi² under the instrument's noise, records/s per class) is documented in
lensnet.simulate.strength, the library this command calls.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.core.config import parse_set
from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "how strong a preset's substructure signal is (paired chi^2 vs no_sub) and how fast it simulates"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lensnet.strength", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="preset name or dataset YAML")
    parser.add_argument("--num", type=int, default=100, help="scenes per class (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num < 1:
        raise LensnetError(f"--num must be >= 1, got {args.num}")
    from lensnet.simulate.strength import measure

    result = measure(args.dataset, args.num, args.seed, parse_set(args.set))
    for name, row in result.items():
        chi2 = row.get("chi2")
        text = "-" if chi2 is None else f"median {chi2[1]:.3g} (quartiles {chi2[0]:.3g}, {chi2[2]:.3g})"
        print(f"{args.dataset:20s} {name:8s} {row['images_per_s']:7.1f} images/s   chi2 vs no_sub: {text}")
    return 0


if __name__ == "__main__":
    cli_exit(main)
