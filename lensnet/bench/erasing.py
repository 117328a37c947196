"""Iterative erasing against none and random erasing at one budget: test macro AUC on clean images
and on images with a random 10% of their area erased (robustness).

Each mode trains through lensnet.fit (task substructure) with the same dataset, model, seed,
epochs and schedule (`train.erasing.mode` none | random | attention, `every`, `fraction`). The
robustness score erases `--mask-fraction` of an 8x8 grid of cells per test image (a fixed seed,
the same cells for every mode) with the image's background level, after normalisation. Each AUC has a
95% bootstrap interval over the test images, and each mode's clean and masked AUC the paired bootstrap
interval of its difference from the `none` mode (the same resamples for both models).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SUMMARY = "Iterative erasing vs none vs random erasing: AUC clean and with 10% of each test image erased"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--modes", default="none,random,attention")
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--mask-fraction", type=float, default=0.1, help="erased share of each test image")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test images (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")


class MaskedModel:
    """`model` on images whose random `fraction` of an 8x8 cell grid is erased (fixed seed)."""

    def __init__(self, model, fraction: float = 0.1, seed: int = 0) -> None:
        self.model, self.fraction, self.seed = model, fraction, seed

    def __call__(self, images, training: bool = False):
        import tensorflow as tf

        from lensnet.training.erasing import erase, patch_mask

        scores = tf.random.stateless_uniform([tf.shape(images)[0], 8, 8], seed=[self.seed, 10])
        return self.model(erase(images, patch_mask(scores, self.fraction)), training=False)


def run(args: argparse.Namespace) -> list[dict]:
    import keras

    from lensnet.bench.common import auc_difference
    from lensnet.core.config import deep_update, parse_set
    from lensnet.studies.detectability import predictions_on_test
    from lensnet.tasks.scores import macro_auc_with_interval
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import run_fit

    runs = Path(tempfile.mkdtemp(prefix="lensnet-bench-erasing-"))
    masked_key = f"macro_auc_masked{int(100 * args.mask_fraction)}"
    rows, scored = [], {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        overrides = deep_update({
            "model": {"name": args.model},
            "data": {"path": args.data, "batch_size": args.batch_size},
            "train": {"epochs": args.epochs, "learning_rate": args.lr,
                      "erasing": {"mode": mode, "every": args.every, "fraction": args.fraction}},
            "run": {"dir": str(runs), "name": mode, "seed": args.seed, "verbose": 2},
        }, parse_set(args.set))
        result = run_fit(resolve_fit_config("substructure", overrides=overrides), progress=False)
        scored[mode] = {
            "clean": predictions_on_test(result.run_dir, args.data),
            "masked": predictions_on_test(result.run_dir, args.data,
                                       lambda model: MaskedModel(model, args.mask_fraction, args.seed)),
        }
        row = {"mode": mode, "model": args.model, "epochs": args.epochs, "every": args.every,
               "fraction": args.fraction, "accuracy": result.metrics.get("accuracy"),
               # the checkpoint scored is the best on (clean) validation: an erasing run whose validation falls
               # once erasing starts is scored at the epoch before it
               "best_epoch": result.info.best_epoch}
        for view, key in (("clean", "macro_auc"), ("masked", masked_key)):
            found = macro_auc_with_interval(*scored[mode][view][:2], args.bootstrap, args.seed)
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = found["macro_roc_auc"], found["low"], found["high"]
            if mode != "none" and "none" in scored:
                found = auc_difference(scored["none"][view], scored[mode][view], args.bootstrap, args.seed)
                row[f"{key}_minus_none"], row[f"{key}_diff_lo"], row[f"{key}_diff_hi"] = (
                    found["difference"], found["low"], found["high"])
        row.update(wall_s=round(result.seconds, 1), run=str(result.run_dir))
        rows.append(row)
        print(rows[-1], flush=True)
        keras.backend.clear_session()
    return rows
