"""`python -m lensnet.bench pipeline`: images/s of the tf.data reader vs the training speed of the fastest model.

The reader must never be what a training run waits for: it has to deliver at least
5,000 images/s (64x64) and at least 10x the images/s at which `cnn_small` trains
(plain `model.fit` on in-memory arrays, measured in the same run). Reader stages
(parse only; + normalise; + D4 augmentation) are timed in alternation so machine
noise hits them alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SUMMARY = "tf.data reader images/s (parse, normalise, augment, batch)"

MIN_RATE = 5000.0
MODEL_FACTOR = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="dataset directory to read (default: a synthetic set in a temp dir)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num", type=int, default=20000, help="records of the synthetic set")
    parser.add_argument("--size", type=int, default=64, help="image size of the synthetic set")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="batch sizes")
    parser.add_argument("--images", type=int, default=8192, help="images per timed unit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=2048, help="images per timed model.fit epoch")
    parser.add_argument("--skip-train", action="store_true", help="do not measure the cnn_small training speed")
    parser.add_argument("--seed", type=int, default=0)


def _train_rate(shape: tuple[int, int, int], num_classes: int, images: int, seed: int) -> float:
    """Images/s of plain model.fit of cnn_small + Dense head on in-memory arrays (batch 64, after warm-up)."""
    import keras

    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(seed)
    backbone = create_model("cnn_small", shape)
    outputs = keras.layers.Dense(num_classes)(pool_features(backbone, backbone.output))
    model = keras.Model(backbone.input, outputs)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((images, *shape)).astype(np.float32)
    y = rng.integers(0, num_classes, images)
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)  # build and trace
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return images / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.bench.common import interleaved_rates
    from lensnet.data import load, open_dataset

    with tempfile.TemporaryDirectory(prefix="lensnet-bench-pipeline-") as tmp:
        directory = args.data
        if directory is None:
            from lensnet.data.synthetic import write_synthetic

            directory = Path(tmp) / "synthetic"
            print(f"writing {args.num} synthetic {args.size}x{args.size} records to {directory} ...")
            write_synthetic(directory, args.num, image_shape=(args.size, args.size, 1), seed=args.seed,
                            records_per_shard=1000, splits={"train": 1.0}, progress=True)
        info = open_dataset(directory)
        shape = tuple(info.image_shape)
        stages = {
            "parse": {"normalise": "none", "augment": None},
            "parse+normalise": {"normalise": "standard", "augment": None},
            "parse+normalise+d4": {"normalise": "standard", "augment": "d4"},
        }
        cases = {}
        for batch in args.batch:
            for stage, options in stages.items():
                dataset = load(info, args.split, batch_size=batch, fields=("image", "label"), repeat=True,
                               seed=args.seed, **options)
                iterator = iter(dataset)
                steps = max(1, args.images // batch)
                for _ in range(max(4, steps // 4)):  # warm-up: tracing, autotune, read-ahead
                    next(iterator)

                def unit(iterator=iterator, steps=steps) -> int:
                    n = 0
                    for _ in range(steps):
                        n += int(next(iterator)["image"].shape[0])
                    return n

                cases[(stage, batch)] = unit
        rates = interleaved_rates(cases, rounds=args.rounds)

        rows = []
        target = MIN_RATE
        if not args.skip_train:
            train = _train_rate(shape, max(info.num_classes, 2), args.train_images, args.seed)
            target = max(MIN_RATE, MODEL_FACTOR * train)
            rows.append({"stage": "train cnn_small (model.fit, in memory)", "batch": 64, "img_s": train,
                         "target": None, "meets": None})
        for (stage, batch), rate in rates.items():
            rows.append({"stage": stage, "batch": batch, "img_s": rate, "target": target, "meets": rate >= target})
        rows.append({"stage": f"(image shape {shape}, {info.counts.get(args.split, 0)} records, "
                              f"target = max({MIN_RATE:.0f}, {MODEL_FACTOR:.0f} x training img/s))",
                     "batch": None, "img_s": None, "target": None, "meets": None})
        return rows
