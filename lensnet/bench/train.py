"""Training throughput through lensnet.fit beside plain `model.fit` on in-memory arrays, per model.

Both sides train the same task model (backbone + head), batch size, optimizer, loss and
metrics on the same images, in the same process, alternating. lensnet's side is the full
trainer (`run_fit`: TFRecord pipeline with parsing, normalisation and D4 augmentation,
callbacks, checkpoints); the plain side is `model.fit(x, y)` on NumPy arrays. Throughput is
images over the time from the first to the last training step of an epoch (validation and
checkpointing excluded on both sides), median over the epochs after the first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

SUMMARY = "Training throughput through lensnet.fit vs plain model.fit, per model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="all", help="comma-separated registry names (default: all)")
    parser.add_argument("--num", type=int, default=1280, help="synthetic records (80%% train)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side and round (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of plain and lensnet runs")
    parser.add_argument("--seed", type=int, default=0)


def model_names(spec: str) -> list[str]:
    from lensnet.models import list_models

    names = [m["name"] for m in list_models() if m["kind"] == "backbone"]  # the classifiers it trains
    return names if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]


def _median_rate(history: list[float]) -> float:
    steady = history[1:] or history
    return float(statistics.median(steady))


def _plain_rate(config: dict, info, images: np.ndarray, labels: np.ndarray) -> float:
    import keras

    from lensnet.core.runinfo import seed_everything
    from lensnet.tasks import task_from_config
    from lensnet.training.callbacks import ThroughputMeter
    from lensnet.training.model import build_task_model
    from lensnet.training.optim import make_optimizer

    seed_everything(int(config["run"]["seed"]))
    task = task_from_config(config, info)
    batch = int(config["data"]["batch_size"])
    # the plain side: the task's inference network, compiled and fitted the stock Keras way
    model = build_task_model(task, config, info).inference_model()
    model.compile(optimizer=make_optimizer(config["train"], -(-len(images) // batch)),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=task.metrics())
    y = keras.utils.to_categorical(labels, len(info.class_names))
    meter = ThroughputMeter(len(images))
    history = model.fit(images, y, batch_size=batch, epochs=int(config["train"]["epochs"]), verbose=0,
                        callbacks=[meter], shuffle=True)
    return _median_rate(history.history["train_images_per_second"])


def _lensnet_rate(config: dict) -> float:
    import csv

    from lensnet.training.trainer import run_fit

    result = run_fit(config, progress=False)
    with open(result.run_dir / "history.csv") as handle:
        rates = [float(row["train_images_per_second"]) for row in csv.DictReader(handle)]
    return _median_rate(rates)


def run(args: argparse.Namespace) -> list[dict]:
    import keras

    from lensnet.data import load, open_dataset
    from lensnet.data.synthetic import write_synthetic
    from lensnet.training.config import resolve_fit_config

    root = Path(tempfile.mkdtemp(prefix="lensnet-bench-train-"))
    shape = (args.image_size, args.image_size, args.channels)
    write_synthetic(root / "data", args.num, image_shape=shape, num_classes=2, seed=args.seed,
                    records_per_shard=256, splits={"train": 0.8, "val": 0.1, "test": 0.1})
    info = open_dataset(root / "data")
    arrays = [b for b in load(info, "train", batch_size=4096, fields=("image", "label"), shuffle=False)]
    images = np.concatenate([b["image"].numpy() for b in arrays])
    labels = np.concatenate([b["label"].numpy() for b in arrays])

    rows = []
    for name in model_names(args.models):
        plain, ours = [], []
        for round_ in range(args.rounds):
            config = resolve_fit_config("substructure", overrides={
                "model": {"name": name},
                "data": {"path": str(root / "data"), "batch_size": args.batch_size},
                "train": {"epochs": args.epochs, "warmup_epochs": 0},
                "run": {"dir": str(root / "runs"), "name": f"{name}-{round_}", "seed": args.seed, "verbose": 0,
                        "tensorboard_images": 0},
            })
            plain.append(_plain_rate(config, info, images, labels))
            ours.append(_lensnet_rate(config))
            keras.backend.clear_session()
        plain_rate, our_rate = max(plain), max(ours)
        ratio = our_rate / plain_rate
        rows.append({"model": name, "batch": args.batch_size, "input": "x".join(map(str, shape)),
                     "plain_img_s": round(plain_rate, 1), "lensnet_img_s": round(our_rate, 1),
                     "ratio": round(ratio, 3), "target": 0.9, "meets": ratio >= 0.9})
        print(rows[-1], flush=True)
    return rows
