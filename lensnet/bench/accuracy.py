"""Classifier accuracy on a fixed model_ii-style simulated set: one row per model.

Every model trains with the same dataset, seed, epochs, optimizer and schedule through
lensnet.fit (task substructure) and is scored on the same test split, so rows compare
models and successive runs track progress. The dataset is simulated once into
tfrecords/bench-model_ii-<num>-seed<seed> and reused.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

SUMMARY = "Classifier accuracy / macro AUC on a fixed model_ii-style set, per model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="cnn_small,resnet18,effnetv2_b0,vit_tiny,deit_tiny,swin_tiny,cvt_tiny",
                        help="comma-separated registry names, or 'all'")
    parser.add_argument("--dataset", default="model_ii", help="dataset preset to simulate")
    parser.add_argument("--data", help="use this dataset directory instead of simulating one")
    parser.add_argument("--num", type=int, default=3000, help="records to simulate (80/10/10 split)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")


def run(args: argparse.Namespace) -> list[dict]:
    import os

    import keras

    from lensnet.bench.train import model_names
    from lensnet.core.config import deep_update, parse_set
    from lensnet.simulate.dataset import simulate_dataset
    from lensnet.tasks.checkpoints import load_model
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import run_fit

    data = args.data
    if not data:
        data = f"tfrecords/bench-{args.dataset}-{args.num}-seed{args.seed}"
        simulate_dataset(args.dataset, data, num=args.num, seed=args.seed, workers=os.cpu_count() or 1,
                         progress=False)
    runs = Path(tempfile.mkdtemp(prefix="lensnet-bench-accuracy-"))
    rows = []
    for name in model_names(args.models):
        overrides = deep_update({
            "model": {"name": name},
            "data": {"path": data, "batch_size": args.batch_size},
            "train": {"epochs": args.epochs, "learning_rate": args.lr},
            "run": {"dir": str(runs), "name": name, "seed": args.seed, "verbose": 2},
        }, parse_set(args.set))
        config = resolve_fit_config("substructure", overrides=overrides)
        result = run_fit(config, progress=False)

        params = load_model(result.run_dir).count_params()
        with open(result.run_dir / "history.csv") as handle:
            history = list(csv.DictReader(handle))
        rate = max(float(r["train_images_per_second"]) for r in history)
        m = result.metrics
        rows.append({
            "model": name, "params": params, "epochs": args.epochs,
            "macro_auc": m.get("macro_roc_auc"), "accuracy": m.get("accuracy"),
            **{f"auc_{k}": v for k, v in (m.get("per_class_roc_auc") or {}).items()},
            "best_epoch": result.info.best_epoch, "wall_s": round(result.seconds, 1), "train_img_s": round(rate, 1),
        })
        print(rows[-1], flush=True)
        keras.backend.clear_session()
    return rows
