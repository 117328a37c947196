"""`python -m lensnet.simulate`: simulate a lens dataset into sharded TFRecords + manifest.json."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from lensnet.core.config import parse_set
from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "simulate lens images into a TFRecord dataset"  # its line in `lensnet --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lensnet.simulate", description=__doc__)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--dataset", help="preset name (see --list)")
    what.add_argument("--config", help="dataset YAML file (may start from a preset with `preset: NAME`)")
    parser.add_argument("--list", action="store_true", help="list the dataset presets and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set splits.train=0.7 (repeatable)")
    parser.add_argument("--num", type=int, help="number of records (default: the preset's)")
    parser.add_argument("--out", help="output directory (default: tfrecords/<name>)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-index", type=int, default=0, help="this job's part (a Slurm array index)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of parts the job is split into")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        from lensnet.simulate.presets import list_presets

        for name, description in list_presets():
            print(f"{name:26s} {description}")
        return 0
    if not args.dataset and not args.config:
        raise LensnetError("give --dataset NAME or --config FILE (see --list)")
    from lensnet.data.writer import print_summary
    from lensnet.simulate.dataset import simulate_dataset

    summary = simulate_dataset(
        args.dataset or args.config,
        args.out,
        num=args.num,
        seed=args.seed,
        overrides=parse_set(args.set),
        workers=args.workers,
        shard_index=args.shard_index,
        num_shards=args.num_shards,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print_summary(summary)
    return 0


if __name__ == "__main__":
    cli_exit(main)
