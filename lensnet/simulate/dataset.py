"""Simulate a dataset preset into sharded TFRecords + manifest.json (the library under `lensnet simulate`)."""

from __future__ import annotations

import os
from pathlib import Path

from lensnet.core.errors import LensnetError
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
    from lensnet.simulate.presets import resolve_dataset
    from lensnet.simulate.source import SimulationSource

    if seed < 0:
        raise LensnetError(f"--seed must be >= 0, got {seed}")
    config, spec = resolve_dataset(dataset, overrides or {})
    if num is not None:
        config["num"] = int(num)
    if config["num"] < 1:
        raise LensnetError(f"--num must be >= 1, got {config['num']}")
    out = Path(out) if out is not None else Path("tfrecords") / config["name"]
    plans = plan_shards(split_counts(config["num"], config["splits"]), int(config["records_per_shard"]))
    source = SimulationSource(config, seed, spec)
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
