"""Tuners at one budget: random, bayesian, hyperband, PBT, regularised evolution, random + median pruning.

Every tuner searches the same space on the same dataset with the same seed for about the same
number of training epochs (`--budget`: each search stops starting trials once its trials have
trained that many epochs; the table says what each actually trained). Each search is one
`python -m lensnet.tune` process (the command users run, timed end to end). The table gives the
best validation objective, the best after half the budget, epochs spent, trials and wall time;
the trace column is `epochs spent:best so far` after each trial, in the order the trials were handed out.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lensnet.core.errors import LensnetError

SUMMARY = "Tuners (random, bayesian, hyperband, pbt, evolution, + median pruning) at one budget of training epochs"

SPACE = """\
train.learning_rate: {log_uniform: [3.0e-4, 1.0e-2]}
model.args.filters: {choice: [[8, 16], [16, 32], [32, 64]]}
model.args.dropout_rate: {uniform: [0.0, 0.4]}
data.augment: {choice: [d4, null]}
"""
TUNERS = ("random", "bayesian", "hyperband", "pbt", "evolution", "random+median")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: a synthetic 3-class 32x32 set made here)")
    parser.add_argument("--task", default="substructure", help="task of --data (default substructure)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="base config override for every trial, e.g. task.positive_class=lens")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--space", help="search-space YAML (default: lr, filters, dropout, augment of cnn_small)")
    parser.add_argument("--tuners", default=",".join(TUNERS), help=f"comma-separated subset of {', '.join(TUNERS)}")
    parser.add_argument("--budget", type=int, default=18, help="training epochs per tuner (default 18)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (pbt: per round; default 3)")
    parser.add_argument("--population", type=int, default=3, help="pbt and evolution population (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", help="keep the tuning directories under this folder")
    parser.add_argument("--seed", type=int, default=0)


def tuner_options(name: str, budget: int, epochs: int, population: int) -> list[str]:
    """The lensnet.tune options that spend about `budget` epochs with `name`.

    Every tuner but PBT stops at the epoch budget (`--epoch-budget`): no trial starts once the
    trials have trained `budget` epochs, so Hyperband's short trials and pruning's early stops buy
    more trials, and the last trial may end past the budget by less than its length. PBT's
    population x rounds x epochs is fixed at the start: as many rounds as fit in the budget.
    """
    spend = ["--epoch-budget", str(budget)]
    if name == "random":
        return ["--tuner", "random", *spend]
    if name == "random+median":
        return ["--tuner", "random", "--prune", "median", "--prune-grace", "1", "--prune-min-peers", "2", *spend]
    if name == "bayesian":
        return ["--tuner", "bayesian", "--initial-points", str(max(2, budget // epochs // 3)), *spend]
    if name == "hyperband":
        # brackets of 1 .. 3 x epochs epochs, factor 3, repeated (iterations) until the budget is spent
        return ["--tuner", "hyperband", "--max-epochs", str(3 * epochs), "--factor", "3",
                "--hyperband-iterations", str(max(1, budget)), *spend]
    if name == "pbt":
        return ["--tuner", "pbt", "--population", str(population),
                "--rounds", str(max(1, budget // (population * epochs)))]
    if name == "evolution":
        return ["--tuner", "evolution", "--population", str(population),
                "--sample-size", str(max(1, population - 1)), *spend]
    raise LensnetError(f"unknown tuner {name!r}; valid: {', '.join(TUNERS)}")


def _epochs_trained(table: list[dict]) -> dict[str, int]:
    """Epochs each trial trained itself (a warm-started trial's inherited epochs belong to its parent)."""
    epochs = {row["trial_id"]: int(row["epochs"] or 0) for row in table}
    return {tid: n - (epochs.get(row["warm_start_from"], 0) if row["warm_start_from"] else 0)
            for tid, n, row in ((r["trial_id"], epochs[r["trial_id"]], r) for r in table)}


def summarise(name: str, directory: Path, objective: str, direction: str, seconds: float, budget: int) -> dict:
    with open(directory / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    trained = _epochs_trained(table)
    spent, best, trace = 0, None, []
    better = max if direction == "max" else min
    best_half = None
    for row in table:  # trial order is the order the oracle handed them out
        spent += trained[row["trial_id"]]
        if row["status"] == "COMPLETED" and row[objective]:
            value = float(row[objective])
            best = value if best is None else better(best, value)
        trace.append(f"{spent}:{'-' if best is None else format(best, '.4f')}")
        if spent <= budget / 2:
            best_half = best
    return {"tuner": name, "trials": len(table), "epochs": spent,
            "pruned": sum(1 for r in table if r.get("pruned_at")), f"best_{objective}": best,
            "best_at_half_budget": best_half, "wall_s": round(seconds, 1), "trace": " ".join(trace)}


def run(args: argparse.Namespace) -> list[dict]:
    names = [n.strip() for n in args.tuners.split(",") if n.strip()]
    for name in names:
        tuner_options(name, args.budget, args.epochs, args.population)  # unknown names fail before any search
    rows = []
    with tempfile.TemporaryDirectory(prefix="lensnet-bench-tune-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = Path(args.data) if args.data else _synthetic(work / "data", args.seed)
        space = Path(args.space) if args.space else work / "space.yaml"
        if not args.space:
            space.write_text(SPACE)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                             os.environ.get("PYTHONPATH", "")])}
        for name in names:
            directory = work / name.replace("+", "-")
            command = [sys.executable, "-m", "lensnet.tune", "--task", args.task, "--data", str(data),
                       "--model", args.model, "--space", str(space), "--epochs", str(args.epochs),
                       "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--directory", str(directory),
                       "--overwrite", "--no-progress", "--set", "train.warmup_epochs=0",
                       *(a for kv in args.set for a in ("--set", kv)),
                       *tuner_options(name, args.budget, args.epochs, args.population)]
            print(f"bench tune: {name}: {' '.join(command[2:])}", flush=True)
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise LensnetError(f"bench tune: the {name} search failed: {tail}")
            objective = next(line for line in done.stdout.splitlines() if line.startswith("search: "))
            metric, direction = objective.split("objective ")[1].split(";")[0].rstrip(")").split(" (")
            rows.append(summarise(name, directory, metric, direction, seconds, args.budget))
            print(f"  best {rows[-1][f'best_{metric}']} after {rows[-1]['epochs']} epochs, {seconds:.0f} s", flush=True)
    return rows


def _synthetic(path: Path, seed: int) -> Path:
    from lensnet.data.synthetic import write_synthetic

    if not (path / "manifest.json").is_file():
        write_synthetic(path, 480, image_shape=(32, 32, 1), num_classes=3, seed=seed, records_per_shard=160)
    return path
