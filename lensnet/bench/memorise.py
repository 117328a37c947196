"""Can a backbone memorise a small set of lens-like images? The first check of an optimisation recipe.

A model and recipe that cannot drive the training loss of 128 images with random labels to ~0 in a
few hundred steps will not learn a real data set either: the failure is in the initialisation or
the optimiser, not in the data. `memorise` trains backbone -> default pooling -> Dense head (as the
classification tasks build it) on `lens_like_images` with AdamW, excluding norms, biases, tokens
and position embeddings from weight decay as lensnet.training does, and reports the mean training
loss of the last pass. `python -m lensnet.bench memorise` runs it per model; `--set` varies a
builder option to measure one candidate cause at a time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

SUMMARY = "Can each model memorise 128 lens-like images with random labels (training loss after fixed steps)"


def lens_like_images(num: int, size: int, seed: int) -> np.ndarray:
    """`num` (size, size, 1) float32 images standardised per image, as lensnet's pipeline does: an
    elliptical ring of random radius, width and brightness along it, a lens-galaxy blob and noise."""
    rng = np.random.default_rng(seed)
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    y, x = np.meshgrid(c, c, indexing="ij")
    out = np.empty((num, size, size, 1), "float32")
    for i in range(num):
        q, phi = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        xr, yr = x * np.cos(phi) + y * np.sin(phi), -x * np.sin(phi) + y * np.cos(phi)
        r = np.hypot(xr * np.sqrt(q), yr / np.sqrt(q))
        theta = np.arctan2(yr, xr)
        ring = np.exp(-0.5 * ((r - rng.uniform(0.3, 0.7)) / rng.uniform(0.04, 0.12)) ** 2)
        ring *= 1 + rng.uniform(0, 1) * np.cos(theta - rng.uniform(0, 2 * np.pi))
        blob = rng.uniform(0, 2) * np.exp(-0.5 * (np.hypot(x, y) / 0.15) ** 2)
        image = ring + blob + rng.normal(0, 0.1, size=(size, size))
        out[i, ..., 0] = (image - image.mean()) / image.std()
    return out


def memorise(model: str, *, size: int = 32, num: int = 128, classes: int = 3, epochs: int = 5,
             steps_per_epoch: int = 20, batch_size: int = 32, seed: int = 0, overrides: dict | None = None,
             train: dict | None = None, reinit: Sequence[str] = ()) -> dict[str, Any]:
    """Train `model` to memorise `num` lens-like images with random labels; return the losses.

    The optimiser is lensnet.fit's: `make_optimizer` on fit's `train` defaults, then the model's
    registry `train_defaults` (its recipe), then `train`; `epochs` x `steps_per_epoch` steps as
    fit's `train.steps_per_epoch` counts them. `reinit` re-initialises parts of the backbone
    (`lensnet.models.layers.timm_initialise`), a diagnostic. Returns {"model", "params",
    "initial_loss", "loss_after_step1", "final_loss" and "final_accuracy" (the trained weights on
    all `num` images, inference mode), "final_loss_training_mode" (the same in training mode),
    "seconds"}.
    """
    import keras

    from lensnet.models import create_model, pool_features
    from lensnet.models.layers import timm_initialise
    from lensnet.models.registry import train_defaults
    from lensnet.training.config import FIT_DEFAULTS
    from lensnet.training.optim import make_optimizer, peak_learning_rate

    keras.utils.set_random_seed(seed)
    images = lens_like_images(num, size, seed)
    labels = np.random.default_rng(seed + 1).integers(0, classes, size=num)
    backbone = create_model(model, (size, size, 1), **(overrides or {}))
    if reinit:
        timm_initialise(backbone, reinit, seed=seed)
    inputs = keras.Input((size, size, 1))
    logits = keras.layers.Dense(classes, name="logits")(pool_features(backbone, backbone(inputs)))
    net = keras.Model(inputs, logits)
    recipe = {**FIT_DEFAULTS["train"], **train_defaults(model), **(train or {}), "epochs": epochs}
    net.compile(optimizer=make_optimizer(recipe, steps_per_epoch),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    steps = epochs * steps_per_epoch
    per_pass = num // batch_size
    rng = np.random.default_rng(seed + 2)
    order = np.concatenate([rng.permutation(num) for _ in range(steps // per_pass + 1)])
    initial = float(net.evaluate(images, labels, batch_size=num, verbose=0)[0])
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        net.train_on_batch(images[idx], labels[idx])
        if step == 0:
            after_first = float(net.evaluate(images, labels, batch_size=num, verbose=0)[0])
    seconds = time.perf_counter() - start
    # in inference mode over all the images: the training loss of the weights the run ends with
    final_loss, final_accuracy = net.evaluate(images, labels, batch_size=num, verbose=0)
    # the same weights in training mode (batch statistics, dropout, stochastic depth): a model that fits
    # here but not above has inference-mode statistics that lag behind its weights
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_mode_loss = float(loss_fn(labels, net(images, training=True)))
    return {
        "model": model, "params": int(backbone.count_params()), "initial_loss": round(initial, 4),
        "loss_after_step1": round(after_first, 4), "final_loss": round(float(final_loss), 4),
        "final_accuracy": round(float(final_accuracy), 4),
        "final_loss_training_mode": round(train_mode_loss, 4), "seconds": round(seconds, 1),
        "warmup_epochs": recipe["warmup_epochs"], "learning_rate": peak_learning_rate(recipe),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="cnn_small,vit_tiny,deit_tiny,swin_tiny,cvt_tiny,cct_2")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reinit", default="", help="comma-separated parts to re-initialise timm-style after "
                        "building (lensnet.models.layers.INIT_PARTS): a diagnostic of initialisation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="builder override for every model (YAML value), e.g. --set num_layers=4")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="train setting over fit's defaults and the model's recipe, e.g. --train warmup_epochs=0")


def run(args: argparse.Namespace) -> list[dict]:
    import keras

    from lensnet.bench.train import model_names
    from lensnet.core.config import parse_set

    rows = []
    for name in model_names(args.models):
        row = memorise(name, size=args.size, num=args.num, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                       batch_size=args.batch_size, seed=args.seed, overrides=parse_set(args.set),
                       train=parse_set(args.train), reinit=[p for p in args.reinit.split(",") if p])
        rows.append({**row, "overrides": ",".join(args.set), "train": ",".join(args.train), "reinit": args.reinit})
        print(rows[-1], flush=True)
        keras.backend.clear_session()
    return rows
