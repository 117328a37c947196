"""`python -m lensnet.simulate`: simulate a lens dataset into sharded TFRecords + manifest.json."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from lensnet.core.config import parse_set
from lensnet.core.errors import LensnetError, cli_exit
from lensnet.core.runinfo import package_versions
from lensnet.data.writer import WriteSummary, plan_shards, split_counts, write_dataset


def simulate_dataset(
    dataset: str | None,
    out: str | os.PathLike | None = None,
    *,
    num: int | None = None,
    seed: int = 0,
    overrides: dict | None = None,
    workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> WriteSummary:
    """Simulate preset `dataset` (a name or a YAML path) into `out` (default tfrecords/<name>)."""
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.source import SimulationSource

    if seed < 0:
        raise LensnetError(f"--seed must be >= 0, got {seed}")
    config = resolve_dataset_config(dataset, overrides or {})
    if num is not None:
        config["num"] = int(num)
    if config["num"] < 1:
        raise LensnetError(f"--num must be >= 1, got {config['num']}")
    out = Path(out) if out is not None else Path("tfrecords") / config["name"]
    plans = plan_shards(split_counts(config["num"], config["splits"]), int(config["records_per_shard"]))
    source = SimulationSource(config, seed)
    manifest_base = {
        "name": config["name"],
        "kind": "simulated",
        "generator": "lensnet.simulate",
        "config": config,
        "seed": seed,
        "versions": {k: v for k, v in package_versions().items() if k in ("lensnet", "lenstronomy", "numpy")},
    }
    return write_dataset(
        out, source, plans, manifest_base,
        workers=workers, shard_index=shard_index, num_shards=num_shards,
        overwrite=overwrite, progress=progress, describe=f"simulating {config['name']}",
    )


def print_summary(summary: WriteSummary) -> None:
    out = summary.out
    if summary.written:
        rate = summary.images_per_second
        print(f"wrote {len(summary.written)} shard(s), {summary.records_written} records, to {out} "
              f"in {summary.seconds:.1f} s ({rate:.0f} records/s, {summary.setup_seconds:.1f} s start-up)")
    if summary.skipped:
        print(f"kept {len(summary.skipped)} complete shard(s) from an earlier run")
    if summary.manifest is not None:
        print(f"dataset complete: {summary.manifest}")
    else:
        print(f"this part is done; {summary.pending_shards} shard(s) of other parts are still missing "
              f"(the manifest is written by whichever part finishes last)")


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
            print(f"{name:18s} {description}")
        return 0
    if not args.dataset and not args.config:
        raise LensnetError("give --dataset NAME or --config FILE (see --list)")
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
