"""Amortised posteriors end to end: train `--task posterior`, report its calibration per parameter, then
forecast population inference over N held-out lenses.

The dataset is `--data DIR`, or `--dataset` simulated with `--num` records (`blobs`: the toy simulator
with an analytic posterior, lensnet.data.synthetic.BlobSource; any other name: a lensnet.simulate
preset). Rows: one `calibration` row per target (SBC KS p, coverage at 50/68/95%, contraction,
z-scores, posterior-mean RMSE), then one `forecast` row per N of `lensnet.study population` for
`--population-target` (default: the first target) with a population N(--mean, --width), N = 10, 30, 100,
300, 1000 capped at the held-out lenses that population draws (the toy's: --held-out-num simulated lenses;
the repeats of an N share no lens, so a row may hold fewer than --repeats). With the toy, each calibration
row also holds the analytic posterior's width and the learned / analytic ratio. `--stream` trains on fresh
simulations (data.source simulate) for the same optimizer steps as the written training split gives;
every calibration row states the run's source, optimizer steps and distinct training images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

SUMMARY = "Amortised posterior (--task posterior): per-parameter calibration, contraction, population forecast"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: simulate --dataset with --num records)")
    parser.add_argument("--dataset", default="blobs", help="blobs (toy with an analytic posterior) or a preset")
    parser.add_argument("--num", type=int, default=4096, help="records to simulate")
    parser.add_argument("--targets", default="amplitude", help="comma-separated targets (task.targets)")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--population-target", help="target of the population forecast (default: the first)")
    parser.add_argument("--mean", type=float, help="population mean (default: the training mean + 0.3 std)")
    parser.add_argument("--width", type=float, help="population width (default: 0.4 training std)")
    parser.add_argument("--held-out", help="dataset of the population's lenses (default: the run's test split)")
    parser.add_argument("--held-out-num", type=int, default=20000,
                        help="toy (blobs): lenses of the simulated held-out set the populations are drawn from; "
                             "repeats of N share no lens, so N = 1000 needs ~2,600 per repeat (the default: 7)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", help="where the run and the study go (default: a temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fit config overrides")
    parser.add_argument("--stream", action="store_true",
                        help="train on fresh simulations that never repeat (data.source=simulate: the dataset's own "
                             "simulator, lensnet.simulate or the toy), train.steps_per_epoch = the written training "
                             "split's batches, so the optimizer steps equal those of the fixed set")
    parser.add_argument("--stream-rate", type=int, default=0, metavar="BATCHES",
                        help="only measure data.source simulate: images/s of this many batches of the dataset's "
                             "simulator streamed into tf.data, with 1 and 2 worker processes (needs --data DIR "
                             "written by lensnet.simulate)")


TOY = {"noise": 3.0, "blob_width": 8.0}  # the toy of tests/test_posterior.py: posterior std 0.243, prior std 1


def _dataset(args: argparse.Namespace, root: Path) -> tuple[Path, Path | None]:
    """(training dataset, held-out population dataset or None)."""
    if args.data:
        return Path(args.data), Path(args.held_out) if args.held_out else None
    data = root / "data"
    if args.dataset == "blobs":
        from lensnet.data.synthetic import write_blobs

        if not (data / "manifest.json").is_file():
            write_blobs(data, args.num, seed=args.seed, **TOY)
        held = root / f"held_out_{args.held_out_num}"
        if not (held / "manifest.json").is_file():
            write_blobs(held, args.held_out_num, seed=args.seed + 1000, splits={"test": 1.0}, **TOY)
        return data, Path(args.held_out) if args.held_out else held
    from lensnet.simulate.dataset import simulate_dataset

    if not (data / "manifest.json").is_file():
        simulate_dataset(args.dataset, data, num=args.num, seed=args.seed, workers=os.cpu_count() or 1,
                         progress=False)
    return data, Path(args.held_out) if args.held_out else None


def _analytic_widths(run_dir: Path, data: Path) -> tuple[float, float]:
    """The toy's analytic posterior std and the learned mean std over the test split."""
    from lensnet.artifacts.runs import read_run
    from lensnet.data import load, open_dataset
    from lensnet.data.synthetic import BlobSource
    from lensnet.tasks.checkpoints import load_model

    info, model = open_dataset(data), load_model(run_dir)
    normalisation = read_run(run_dir).normalisation
    raw, learned = [], []
    for plain, normalised in zip(load(info, "test", batch_size=128, fields=("image",), shuffle=False, augment=None,
                                      normalise="none"),
                                 load(info, "test", batch_size=128, fields=("image",), shuffle=False, augment=None,
                                      normalise=normalisation)):
        raw.append(plain["image"].numpy())
        learned.append(np.asarray(model(normalised["image"]))[..., 0].std(axis=1))
    _, std = BlobSource(**TOY).analytic_posterior(np.concatenate(raw))
    return float(std[0]), float(np.mean(np.concatenate(learned)))


def _training_budget(run_dir: Path, info: Any) -> dict:
    """What the run trained on, from its resolved config: source, optimizer steps, distinct training images."""
    from lensnet.core.config import load_yaml
    from lensnet.training.data import batches_per_epoch

    config = load_yaml(run_dir / "config.yaml", "run config")
    data, train = config["data"], config["train"]
    batch_size = int(data["batch_size"])
    per_epoch = train["steps_per_epoch"] or batches_per_epoch(info, data["train_split"], batch_size)
    steps = int(train["epochs"]) * int(per_epoch)
    # a fixed set's distinct images are its training split (or the part of it the steps reach)
    distinct = steps * batch_size if data.get("source") == "simulate" else min(
        steps * batch_size, info.counts[data["train_split"]])
    return {"source": data.get("source", "records"), "train_steps": steps, "train_images": distinct}


def stream_rates(data: Path, batches: int, batch_size: int) -> list[dict]:
    """Images/s of the simulated training stream (decoded, normalised tf.data batches), 1 and 2 workers."""
    import time

    from lensnet.data import open_dataset
    from lensnet.simulate.stream import simulated_dataset

    info = open_dataset(data)
    rows = []
    for workers in (1, 2):
        dataset = simulated_dataset(info, start=None, batch_size=batch_size, first_batch=0, workers=workers,
                                    fields=("image",), normalise="dataset")
        iterator = iter(dataset)
        next(iterator)  # the pool's start-up and the simulator's set-up are not the steady rate
        t0 = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - t0
        rows.append({"kind": "stream", "dataset": info.name, "workers": workers, "batches": batches,
                     "batch_size": batch_size, "images_per_second": batches * batch_size / seconds})
        del iterator, dataset
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.core.config import parse_set
    from lensnet.data import open_dataset
    from lensnet.studies.population import PopulationSpec, run_population
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import batches_per_epoch
    from lensnet.training.trainer import run_fit

    if args.stream_rate:
        if not args.data:
            raise LensnetError("--stream-rate needs --data DIR (a dataset written by lensnet.simulate)")
        return stream_rates(Path(args.data), args.stream_rate, args.batch_size)
    if args.held_out_num < 1:
        raise LensnetError(f"--held-out-num must be a positive number of lenses, got {args.held_out_num}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise LensnetError("--targets names no parameter")
    root = Path(args.runs_dir or tempfile.mkdtemp(prefix="lensnet-bench-posterior-"))
    data, held_out = _dataset(args, root)
    info = open_dataset(data)
    # the same optimizer steps as one pass over the written training split per epoch, on images never repeated
    stream = ["data.source=simulate", f"train.steps_per_epoch={batches_per_epoch(info, 'train', args.batch_size)}"]
    overrides = parse_set([f"data.path={data}", f"model.name={args.model}", f"train.epochs={args.epochs}",
                           f"data.batch_size={args.batch_size}", f"train.learning_rate={args.lr}",
                           f"run.seed={args.seed}", f"run.dir={root / 'runs'}", "run.name=posterior",
                           f"task.targets=[{','.join(targets)}]", "train.warmup_epochs=0",
                           *(stream if args.stream else ()), *args.set])
    run_dir = root / "runs" / "posterior"
    if (run_dir / "metrics.json").is_file():  # a rerun with the same --runs-dir reuses the finished run
        metrics = json.loads((run_dir / "metrics.json").read_text())
    else:
        metrics = run_fit(resolve_fit_config("posterior", overrides=overrides), progress=False).metrics
    budget = _training_budget(run_dir, info)
    rows: list[dict] = []
    for name, entry in metrics["parameters"].items():
        row = {"kind": "calibration", "parameter": name, "n_lenses": metrics["n"], **budget,
               **{k: entry[k] for k in ("sbc_ks_p", "coverage_50", "coverage_68", "coverage_95", "contraction",
                                        "z_mean", "z_std", "posterior_mean_rmse", "posterior_std_mean")}}
        if args.dataset == "blobs" and not args.data and name == "amplitude":
            analytic, learned = _analytic_widths(run_dir, data)
            row.update(analytic_std=analytic, learned_over_analytic_std=learned / analytic)
        rows.append(row)
    target = args.population_target or targets[0]
    state = json.loads((run_dir / "run.json").read_text())["task_state"]
    k = state["targets"].index(target)
    mean = args.mean if args.mean is not None else state["mean"][k] + 0.3 * state["std"][k]
    width = args.width if args.width is not None else 0.4 * state["std"][k]
    spec = PopulationSpec(run=str(run_dir), target=target, mean=mean, width=width,
                          data=str(held_out) if held_out else None, sizes=None, repeats=args.repeats,
                          seed=args.seed)
    result = run_population(spec, root / "study", print, progress=False)
    for row in result["rows"]:  # N = 10, 30, 100, 300, 1000, capped at the lenses the population draws
        rows.append({"kind": "forecast", "parameter": target, "population_mean": mean, "population_width": width,
                     **row})
    print(f"run: {run_dir}\nstudy: {root / 'study'} (pool of {result['held_out']['population_pool']} lenses)")
    for warning in metrics.get("warnings") or ():
        print(f"warning: {warning}")
    for note in result["notes"]:
        print(f"note: {note}")
    for failure in result["per_lens"]["failures"]:
        print(f"warning: population study, per-lens calibration of {target}: {failure}")
    checks = result["per_lens"]
    rows.append({"kind": "per_lens_checks", "parameter": target, "n_lenses": checks["lenses"],
                 "passed": checks["passed"], "samples_outside_support": checks["samples_outside_support"],
                 "mean_likelihood_worst": checks["interim_consistency"]["mean_likelihood"],
                 "bias_dominates_above_n": checks["interim_consistency"]["bias_dominates_above_n"],
                 "ess_median": checks["ess_at_true_mean"]["median"], "ess_p10": checks["ess_at_true_mean"]["p10"],
                 "mean_error": checks["mean_error"]["error"], "mean_error_se": checks["mean_error"]["standard_error"],
                 "mean_shift": checks["mean_error"]["shift"]})
    return rows
