"""The published DeepLense tables, reproduced on lensnet's replica presets, plus the domain-shift question.

For each replica preset (deeplense_model_i/ii/iii: the DeepLenseSim recipe as its code runs) the
benchmark simulates one dataset, trains a substructure classifier and an axion-mass regressor
on a separate axion-only dataset (`--reg-num` images of the same preset, `classes=[axion]`, as the
DeepLense regression sets are) through lensnet.fit, and prints the test figures beside the
published ones. With --cross it also trains on the Model II replica and scores lensnet's physical
model_ii, and the reverse.

Published figures (as cited in lensnet issue 8, from the DeepLense / ML4SCI reports):
classification accuracy of a CvT (91.54 / 99.41 / 99.04 % on Models I / II / III; per-class AUC
on II 0.9987 / 0.9990 / 1.0), ResNet-18 validation accuracy (94.48 / 99.13 / 99.09 %); axion-mass
MAE on log10 m_a (0.27 / 0.22 / 0.13).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

PUBLISHED = {
    "deeplense_model_i": {"cvt_accuracy": 0.9154, "resnet18_val_accuracy": 0.9448, "axion_mae": 0.27},
    "deeplense_model_ii": {"cvt_accuracy": 0.9941, "resnet18_val_accuracy": 0.9913, "axion_mae": 0.22,
                           "cvt_auc": {"no_sub": 0.9987, "cdm": 0.9990, "axion": 1.0}},
    "deeplense_model_iii": {"cvt_accuracy": 0.9904, "resnet18_val_accuracy": 0.9909, "axion_mae": 0.13},
}
SOURCE = "DeepLense/ML4SCI reports as cited in lensnet issue 8"
CROSS = (("deeplense_model_ii", "model_ii"), ("model_ii", "deeplense_model_ii"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", default="deeplense_model_ii,deeplense_model_iii,deeplense_model_i",
                        help="comma-separated replica presets")
    parser.add_argument("--num", type=int, default=6000, help="images per preset (80/10/10 split, classes balanced)")
    parser.add_argument("--model", default="cnn_small", help="registry model for the classifier and the regressor")
    parser.add_argument("--epochs", type=int, default=20, help="classifier epochs (0: skip the classifier)")
    parser.add_argument("--reg-epochs", type=int, default=20, help="axion-mass regressor epochs (0: skip)")
    parser.add_argument("--reg-num", type=int, default=None,
                        help="images in the axion-only regression dataset (default: --num)")
    parser.add_argument("--reg-model", default=None, help="registry model for the regressor (default: --model)")
    parser.add_argument("--runs-dir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tta", action="store_true",
                        help="also score the classifier with test-time augmentation over the preset's symmetry group")
    parser.add_argument("--cross", action="store_true", help="also train on one Model II and score the other")
    parser.add_argument("--data-dir", default="tfrecords", help="where the benchmark datasets are simulated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra fit overrides")


def _dataset(preset: str, args: argparse.Namespace, axion_only: bool = False) -> str:
    from lensnet.simulate.dataset import simulate_dataset

    num = (args.reg_num or args.num) if axion_only else args.num
    path = Path(args.data_dir) / f"bench-{preset}{'-axion' if axion_only else ''}-{num}-seed{args.seed}"
    simulate_dataset(preset, path, num=num, seed=args.seed, workers=os.cpu_count() or 1, progress=False,
                     overrides={"classes": ["axion"]} if axion_only else None)
    return str(path)


def bench_fit(task: str, data: str, runs: Path, name: str, epochs: int, args: argparse.Namespace,
              model: str | None = None, **task_options):
    """One lensnet.fit run of a benchmark: its model, batch size, learning rate, seed and --set overrides."""
    from lensnet.core.config import deep_update, parse_set
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import run_fit

    overrides = deep_update({
        "task": dict(task_options),
        "model": {"name": model or args.model},
        "data": {"path": data, "batch_size": args.batch_size},
        "train": {"epochs": epochs, "learning_rate": args.lr},
        "run": {"dir": str(runs), "name": name, "seed": args.seed, "verbose": 2},
    }, parse_set(args.set))
    return run_fit(resolve_fit_config(task, overrides=overrides), progress=False)


def _train_images(data: str) -> int:
    from lensnet.data import open_dataset

    return int(open_dataset(data).counts["train"])


def _tta_scores(run_dir: Path, data: str) -> dict:
    """Accuracy and macro AUC with the predictions averaged over the dataset's symmetry group (rot180, flips, d4)."""
    from lensnet.data import open_dataset
    from lensnet.data.augment import GROUPS
    from lensnet.training.evaluation import evaluate_run
    from lensnet.training.trainer import dataset_symmetry

    group = dataset_symmetry(open_dataset(data))
    if group not in GROUPS:
        return {}
    metrics, _ = evaluate_run(run_dir, data, "test", tta=group)
    return {"tta": group, "accuracy_tta": metrics.get("accuracy"), "macro_auc_tta": metrics.get("macro_roc_auc")}


def run(args: argparse.Namespace) -> list[dict]:
    import keras

    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="lensnet-bench-deeplense-"))
    rows: list[dict] = []
    classifiers: dict[str, Path] = {}
    datasets: dict[str, str] = {}
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        published = PUBLISHED.get(preset, {})
        if args.epochs:
            data = datasets[preset] = _dataset(preset, args)
            result = bench_fit("substructure", data, runs, f"{preset}-cls", args.epochs, args)
            classifiers[preset] = result.run_dir
            m = result.metrics
            auc = m.get("per_class_roc_auc") or {}
            rows.append({
                "preset": preset, "task": "classification", "model": args.model,
                "train_images": _train_images(data), "epochs": args.epochs, "wall_s": round(result.seconds, 1),
                "accuracy": m.get("accuracy"), "macro_auc": m.get("macro_roc_auc"),
                **{f"auc_{k}": v for k, v in auc.items()},
                **(_tta_scores(result.run_dir, data) if args.tta else {}),
                "published_cvt_accuracy": published.get("cvt_accuracy"),
                "published_resnet18_val_accuracy": published.get("resnet18_val_accuracy"),
                **{f"published_cvt_auc_{k}": v for k, v in (published.get("cvt_auc") or {}).items()},
                "source": SOURCE,
            })
            print(rows[-1], flush=True)
            keras.backend.clear_session()
        if args.reg_epochs:
            reg_data = _dataset(preset, args, axion_only=True)
            reg_model = args.reg_model or args.model
            result = bench_fit("regression", reg_data, runs, f"{preset}-reg", args.reg_epochs, args, model=reg_model,
                          target="log10_m_axion")
            rows.append({
                "preset": preset, "task": "axion_mass_regression", "model": reg_model,
                "train_images": _train_images(reg_data), "epochs": args.reg_epochs, "wall_s": round(result.seconds, 1),
                "mae_log10_m_axion": result.metrics.get("mae"), "rmse": result.metrics.get("rmse"),
                "r2": result.metrics.get("r2"), "n_axion_test": result.metrics.get("n"),
                "published_axion_mae": published.get("axion_mae"), "source": SOURCE,
            })
            print(rows[-1], flush=True)
            keras.backend.clear_session()
    if args.cross:
        rows += _cross(args, runs, classifiers, datasets)
    return rows


def _cross(args: argparse.Namespace, runs: Path, classifiers: dict, datasets: dict) -> list[dict]:
    """Train on one Model II, score on the other (classes matched by name)."""
    from lensnet.training.evaluation import evaluate_run

    rows = []
    for train_on, test_on in CROSS:
        for name in (train_on, test_on):
            if name not in datasets:
                datasets[name] = _dataset(name, args)
        if train_on not in classifiers:
            classifiers[train_on] = bench_fit("substructure", datasets[train_on], runs, f"{train_on}-cls",
                                         args.epochs, args).run_dir
        m, _ = evaluate_run(classifiers[train_on], datasets[test_on], "test", out=runs / f"{train_on}-on-{test_on}")
        rows.append({"preset": f"{train_on} -> {test_on}", "task": "cross-domain classification",
                     "model": args.model, "epochs": args.epochs, "accuracy": m.get("accuracy"),
                     "macro_auc": m.get("macro_roc_auc"),
                     **{f"auc_{k}": v for k, v in (m.get("per_class_roc_auc") or {}).items()}})
        print(rows[-1], flush=True)
    return rows
