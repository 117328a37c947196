"""Does super-resolution recover what a downstream model needs? (lensnet issue 11)

One DeepLense-style pair dataset (`super_resolution_deeplense` by default: axion scenes rendered
through an LR and an HR instrument) is simulated. A super-resolution model is trained on its pairs
through `lensnet.fit --task super_resolution`. An axion-mass regressor (log10 m_a) is trained on
the HR training images only, then scored on the test split three ways: on the HR images, on the
bicubic-upsampled LR images and on the super-resolved LR images. Each image row also carries
PSNR/SSIM against HR (per-image data range, lensnet.tasks.image_quality).

Published anchor (DeepLense, as quoted in lensnet issue 11; computed on their data and ranges, so
context, not a target): regression MSE 0.2121 on HR, 0.2441 on interpolated LR, 0.2200 after RDN
super-resolution.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SUMMARY = "Axion-mass regressor trained on HR, scored on HR / bicubic LR / super-resolved LR"

PUBLISHED_MSE = {"HR": 0.2121, "bicubic LR": 0.2441, "SR LR": 0.2200}
SOURCE = "DeepLense regression MSE as quoted in lensnet issue 11 (RDN super-resolution)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="super_resolution_deeplense", help="pair preset to simulate")
    parser.add_argument("--num", type=int, default=1200, help="pairs (80/10/10 split)")
    parser.add_argument("--lr-size", type=int, default=32, help="LR side in pixels (HR = scale x this); "
                        "the preset's own is 75")
    parser.add_argument("--sr-model", default="edsr", help="super-resolution model from the registry")
    parser.add_argument("--sr-epochs", type=int, default=10)
    parser.add_argument("--reg-model", default="cnn_small", help="backbone of the axion-mass regressor")
    parser.add_argument("--reg-epochs", type=int, default=15)
    parser.add_argument("--target", default="log10_m_axion", help="parameter regressed (stored in every record)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default="tfrecords", help="where the pair dataset is simulated")
    parser.add_argument("--runs-dir", default=None, help="keep the SR run here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides of the super-resolution fit")


def _dataset(args: argparse.Namespace) -> Path:
    from lensnet.simulate.dataset import simulate_dataset

    path = Path(args.data_dir) / f"bench-{args.dataset}-{args.num}-lr{args.lr_size}-seed{args.seed}"
    simulate_dataset(args.dataset, path, num=args.num, seed=args.seed, workers=os.cpu_count() or 1, progress=False,
                     overrides={"image": {"size": args.lr_size}})
    return path


def _arrays(path: Path, split: str, target: str) -> dict[str, np.ndarray]:
    from lensnet.data import load

    parts = list(load(path, split, batch_size=256, fields=["image", "image_hr", target], normalise="none"))
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in ("image", "image_hr", target)}


def _train_regressor(args: argparse.Namespace, train: dict, val: dict) -> tuple:
    """A plain Keras regressor on HR images (per-image standardised, flips), best validation epoch kept."""
    import keras
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(args.seed)
    hr_shape = train["image_hr"].shape[1:]
    y = train[args.target].astype(np.float64)
    mean, std = float(y.mean()), float(y.std())
    backbone = create_model(args.reg_model, hr_shape, kind="backbone")
    inputs = keras.Input(hr_shape, name="images")
    x = keras.layers.Lambda(lambda t: apply_normalisation(t, {"method": "standard"}), name="standardise")(inputs)
    z = keras.layers.Dense(1, name="z")(pool_features(backbone, backbone(x)))
    model = keras.Model(inputs, z)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")

    def stream(images: np.ndarray, target: np.ndarray, training: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((images, ((target - mean) / std).astype(np.float32)[:, None]))
        if training:
            ds = ds.shuffle(len(images), seed=args.seed).map(
                lambda im, t: (tf.image.random_flip_up_down(tf.image.random_flip_left_right(im)), t))
        return ds.batch(args.batch_size)

    best = keras.callbacks.ModelCheckpoint(str(Path(tempfile.mkdtemp()) / "best.weights.h5"), save_best_only=True,
                                           save_weights_only=True, monitor="val_loss")
    model.fit(stream(train["image_hr"], y, True), validation_data=stream(val["image_hr"], val[args.target], False),
              epochs=args.reg_epochs, verbose=2, callbacks=[best])
    model.load_weights(best.filepath)
    return model, mean, std


def run(args: argparse.Namespace) -> list[dict]:
    import keras
    import tensorflow as tf

    from lensnet.bench.deeplense import bench_fit
    from lensnet.tasks import image_quality as iq
    from lensnet.tasks.checkpoints import load_model

    t0 = time.perf_counter()
    data = _dataset(args)
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="lensnet-bench-sr-"))
    fit_args = argparse.Namespace(model=args.sr_model, batch_size=args.batch_size, lr=5e-4, seed=args.seed,
                                  set=args.set)
    sr_run = bench_fit("super_resolution", str(data), runs, f"sr-{args.sr_model}", args.sr_epochs, fit_args)
    keras.backend.clear_session()
    sr_model = load_model(sr_run.run_dir)
    train, val, test = (_arrays(data, split, args.target) for split in ("train", "val", "test"))
    hr = test["image_hr"]
    inputs = {
        "HR": hr,
        "bicubic LR": tf.image.resize(test["image"], hr.shape[1:3], method="bicubic").numpy(),
        "SR LR": np.concatenate([sr_model(test["image"][i:i + 64]).numpy() for i in range(0, len(hr), 64)]),
    }
    t1 = time.perf_counter()
    regressor, mean, std = _train_regressor(args, train, val)
    truth = test[args.target].astype(np.float64)
    rows = []
    for name, images in inputs.items():
        pred = regressor.predict(images, batch_size=128, verbose=0)[:, 0] * std + mean
        err = pred - truth
        row = {"input": name if name != "SR LR" else f"SR LR ({args.sr_model})", "n_test": int(len(truth)),
               f"mse_{args.target}": float(np.mean(err**2)), f"mae_{args.target}": float(np.mean(np.abs(err))),
               "published_mse": PUBLISHED_MSE[name], "psnr_vs_hr": None, "ssim_vs_hr": None}
        if name != "HR":
            quality = iq.per_image(hr, images, "per_image")
            row["psnr_vs_hr"] = iq.mean_interval(quality["psnr"])["mean"]
            row["ssim_vs_hr"] = iq.mean_interval(quality["ssim"])["mean"]
        rows.append(row)
    for row in rows:
        row.update({"sr_epochs": args.sr_epochs, "reg_model": args.reg_model, "reg_epochs": args.reg_epochs,
                    "train_pairs": int(len(train["image"])), "lr_shape": "x".join(map(str, test["image"].shape[1:])),
                    "sr_wall_s": round(sr_run.seconds, 1), "reg_wall_s": round(time.perf_counter() - t1, 1),
                    "total_wall_s": round(time.perf_counter() - t0, 1), "sr_run": str(sr_run.run_dir),
                    "source": SOURCE})
    return rows
