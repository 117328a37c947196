"""Classifier accuracy on a fixed simulated set: one row per model.

Every model trains with the same dataset, seed, epochs, optimizer and schedule through
lensnet.fit (--task substructure, or lens_finding) and is scored on the same test split, so rows
compare models and successive runs track progress. The dataset is simulated once into
tfrecords/bench-<dataset>-<num>-seed<seed> and reused.

Lens finding (--task lens_finding) adds the survey metrics (lensnet.tasks.survey_metrics: TPR at FPR
1e-3/1e-4 with the number of negatives, purity at 50%/90% completeness at a stated prevalence, recall at
zero false positives, per-bin recall and per-subtype FPR, each with a bootstrap interval), measured on
--eval-data, or on a survey-mode set simulated with --eval-num records at --eval-prevalence.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

SUMMARY = "Classifier accuracy / macro AUC per model (model_ii-style set), or lens-finding survey metrics"
TASKS = ("substructure", "lens_finding")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, default="substructure")
    parser.add_argument("--models", default="cnn_small,resnet18,effnetv2_b0,vit_tiny,deit_tiny,swin_tiny,cvt_tiny",
                        help="comma-separated registry names, or 'all'")
    parser.add_argument("--dataset", default="model_ii", help="dataset preset to simulate")
    parser.add_argument("--data", help="use this dataset directory instead of simulating one")
    parser.add_argument("--num", type=int, default=3000, help="records to simulate (80/10/10 split)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="classification: bootstrap resamples of the test images for the macro-AUC "
                             "interval (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--eval-data", help="lens finding: score every model on this dataset's test split too")
    parser.add_argument("--eval-num", type=int, default=0,
                        help="lens finding: simulate a survey-mode test set of this many records (seed + 1)")
    parser.add_argument("--eval-prevalence", type=float, default=0.001,
                        help="share of lenses in the simulated survey-mode set (purity is stated at "
                             "task.survey_prevalence, 0.001 by default, whatever this is)")


def run(args: argparse.Namespace) -> list[dict]:
    import os

    import keras

    from lensnet.bench.train import model_names
    from lensnet.core.config import deep_update, parse_set
    from lensnet.simulate.dataset import simulate_dataset
    from lensnet.tasks.checkpoints import load_model
    from lensnet.tasks.survey_metrics import format_survey, survey_cells
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import run_fit

    data = args.data
    if not data:
        data = f"tfrecords/bench-{args.dataset}-{args.num}-seed{args.seed}"
        simulate_dataset(args.dataset, data, num=args.num, seed=args.seed, workers=os.cpu_count() or 1,
                         progress=False)
    eval_data = args.eval_data
    if args.task == "lens_finding" and not eval_data and args.eval_num:
        eval_data = f"tfrecords/bench-{args.dataset}-eval-{args.eval_num}-p{args.eval_prevalence:g}-seed{args.seed + 1}"
        simulate_dataset(args.dataset, eval_data, num=args.eval_num, seed=args.seed + 1,
                         overrides={"prevalence": args.eval_prevalence,
                                    "splits": {"train": 1e-9, "val": 0.0, "test": 1.0 - 1e-9}},
                         workers=os.cpu_count() or 1, progress=False)
    runs = Path(tempfile.mkdtemp(prefix="lensnet-bench-accuracy-"))
    rows = []
    for name in model_names(args.models):
        overrides = deep_update({
            "model": {"name": name},
            "data": {"path": data, "batch_size": args.batch_size},
            "train": {"epochs": args.epochs, "learning_rate": args.lr},
            "run": {"dir": str(runs), "name": name, "seed": args.seed, "verbose": 2},
        }, parse_set(args.set))
        config = resolve_fit_config(args.task, overrides=overrides)
        result = run_fit(config, progress=False)

        best = load_model(result.run_dir)
        params = best.count_params()
        interval = (test_interval(best, config, result, args.bootstrap, args.seed)
                    if args.bootstrap and args.task != "lens_finding" else None)
        with open(result.run_dir / "history.csv") as handle:
            history = list(csv.DictReader(handle))
        rate = max(float(r["train_images_per_second"]) for r in history)
        m = result.metrics
        if args.task == "lens_finding":
            row = {"model": name, "params": params, "epochs": args.epochs, "roc_auc": m.get("roc_auc"),
                   "best_epoch": result.info.best_epoch, "wall_s": round(result.seconds, 1),
                   "train_img_s": round(rate, 1)}
            scored = m
            if eval_data:
                from lensnet.training.evaluation import evaluate_run

                scored, _ = evaluate_run(result.run_dir, eval_data, "test", batch_size=256, n_images=0)
                row["eval_data"] = str(eval_data)
                row["eval_roc_auc"] = scored.get("roc_auc")
            row.update(survey_cells(scored["survey"]))
            row["survey"] = scored["survey"]  # the full figures (bins, subtypes, notes) for the JSON
            print("\n".join(format_survey(scored["survey"])), flush=True)
            rows.append(row)
        else:
            rows.append({
                "model": name, "params": params, "epochs": args.epochs,
                "macro_auc": m.get("macro_roc_auc"),
                "auc_lo": interval[0] if interval else None, "auc_hi": interval[1] if interval else None,
                "accuracy": m.get("accuracy"),
                **{f"auc_{k}": v for k, v in (m.get("per_class_roc_auc") or {}).items()},
                "best_epoch": result.info.best_epoch, "wall_s": round(result.seconds, 1),
                "train_img_s": round(rate, 1),
            })
        print({k: v for k, v in rows[-1].items() if k != "survey"}, flush=True)
        keras.backend.clear_session()
    return rows


def test_interval(model, config: dict, result, bootstrap: int, seed: int) -> tuple[float, float] | None:
    """95% bootstrap interval of the macro AUC over the test images the run was scored on."""
    from lensnet.data import open_dataset
    from lensnet.tasks.base import task_from_config
    from lensnet.tasks.scores import macro_auc_interval
    from lensnet.training.evaluation import predict_split

    info = open_dataset(config["data"]["path"])
    task = task_from_config(config, info, state=result.info.task_state)
    scored = predict_split(model, task, info, config["data"]["test_split"], result.info.normalisation,
                           progress=False)
    return macro_auc_interval(scored["y_true"], scored["y_pred"], bootstrap, seed)
