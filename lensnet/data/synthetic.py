"""A tiny synthetic RecordSource for tests and benchmarks: no physics, instant, learnable.

Class k draws a ring of radius proportional to k+1 plus noise, so classifiers
can learn it in a few steps; two float parameters (`radius`, and `amplitude`
which is NaN for class 0) exercise regression and NaN masking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensnet.data.schema import Schema
from lensnet.data.writer import (
    RecordBatch,
    ShardPlan,
    WriteSummary,
    image_stats,
    plan_shards,
    split_counts,
    write_dataset,
)


class SyntheticSource:
    def __init__(self, image_shape: tuple[int, int, int] = (16, 16, 1), num_classes: int = 2, seed: int = 0,
                 noise: float = 0.3) -> None:
        self.image_shape = tuple(image_shape)
        self.class_names = [f"class{k}" for k in range(num_classes)]
        self.seed = seed
        self.noise = noise
        self.schema = Schema.standard({"image": self.image_shape}, ["radius", "amplitude"])
        self.class_specific_params = {"radius", "amplitude"}

    def setup(self) -> None:
        pass

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch:
        h, w, c = self.image_shape
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
        serialized, labels, params, images = [], [], [], []
        for index in range(start, stop):
            label = (index - plan.split_start) % len(self.class_names)
            rng = np.random.default_rng([self.seed, index])
            radius = (label + 1) * min(h, w) / (2.5 * len(self.class_names)) + rng.uniform(-0.5, 0.5)
            amplitude = rng.uniform(0.5, 1.5) if label else np.nan
            ring = np.exp(-0.5 * ((r - radius) / 1.0) ** 2) * (1.0 if np.isnan(amplitude) else amplitude)
            image = ring[..., None].repeat(c, -1) + self.noise * rng.standard_normal((h, w, c))
            image = image.astype(np.float32)
            record = {"id": f"synthetic/{index}", "seed": index, "label": label,
                      "class_name": self.class_names[label], "image": image,
                      "radius": radius, "amplitude": amplitude}
            serialized.append(self.schema.encode(record))
            labels.append(label)
            params.append([radius, amplitude])
            images.append(image)
        return RecordBatch(serialized, np.asarray(labels, np.int64), np.asarray(params, np.float64),
                           {"image": image_stats(np.stack(images))})


def write_synthetic(out: str | Path, num: int = 64, *, image_shape: tuple[int, int, int] = (16, 16, 1),
                    num_classes: int = 2, seed: int = 0, records_per_shard: int = 16,
                    splits: dict[str, float] | None = None, workers: int = 1, progress: bool = False,
                    **kwargs) -> WriteSummary:
    """Write a small synthetic dataset (for tests and benchmarks of the stages after simulation)."""
    source = SyntheticSource(image_shape, num_classes, seed)
    plans = plan_shards(split_counts(num, splits or {"train": 0.5, "val": 0.25, "test": 0.25}), records_per_shard)
    base = {"name": "synthetic", "kind": "synthetic", "config": {"image_shape": list(image_shape),
            "num_classes": num_classes, "num": num}, "seed": seed}
    return write_dataset(out, source, plans, base, workers=workers, progress=progress, **kwargs)


BLOBS_GENERATOR = "lensnet.data.synthetic.blobs"  # the manifest's `generator`: data.source simulate rebuilds it


class BlobSource:
    """A toy simulator with an analytic posterior: a Gaussian blob of amplitude A plus Gaussian pixel noise.

    A ~ N(prior_mean, prior_std^2) (stored as `amplitude`); image = A g + sigma n, with g a fixed,
    centred Gaussian profile of width `blob_width` px and n standard normal per pixel. The posterior of
    A is Gaussian with precision 1/prior_std^2 + sum(g^2)/sigma^2 and mean (prior_mean/prior_std^2 +
    sum(g d)/sigma^2) / precision (`analytic_posterior`): what tests of posterior estimation compare with.
    """

    def __init__(self, image_shape: tuple[int, int, int] = (16, 16, 1), prior_mean: float = 1.0,
                 prior_std: float = 1.0, noise: float = 1.0, blob_width: float = 2.5, seed: int = 0) -> None:
        self.image_shape = tuple(image_shape)
        self.prior_mean, self.prior_std, self.noise = float(prior_mean), float(prior_std), float(noise)
        self.blob_width, self.seed = float(blob_width), int(seed)
        self.class_names = ["blob"]
        self.schema = Schema.standard({"image": self.image_shape}, ["amplitude"])
        self.class_specific_params: set[str] = set()

    def config(self) -> dict:
        """What the manifest records: enough for `from_config` to rebuild this simulator."""
        return {"image_shape": list(self.image_shape), "noise": self.noise, "blob_width": self.blob_width,
                "amplitude": {"normal": [self.prior_mean, self.prior_std]}}

    @classmethod
    def from_config(cls, config: dict, seed: int) -> BlobSource:
        """The simulator that wrote a dataset, from its manifest's config and seed (`config`'s inverse)."""
        prior_mean, prior_std = config["amplitude"]["normal"]
        return cls(tuple(config["image_shape"]), prior_mean, prior_std, config["noise"], config["blob_width"], seed)

    def setup(self) -> None:
        pass

    def profile(self) -> np.ndarray:
        """g (H, W, C): the blob of unit amplitude."""
        h, w, c = self.image_shape
        yy, xx = np.mgrid[:h, :w]
        r2 = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
        return np.repeat(np.exp(-0.5 * r2 / self.blob_width**2)[..., None], c, axis=-1)

    def analytic_posterior(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of A given each image (N, H, W, C), exactly."""
        g = self.profile()
        precision = 1.0 / self.prior_std**2 + float(np.sum(g**2)) / self.noise**2
        data = np.sum(np.asarray(images, np.float64) * g, axis=(1, 2, 3)) / self.noise**2
        return (self.prior_mean / self.prior_std**2 + data) / precision, np.full(len(images), precision**-0.5)

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch:
        g = self.profile()
        serialized, params, images = [], [], []
        for index in range(start, stop):
            rng = np.random.default_rng([self.seed, index])
            amplitude = self.prior_mean + self.prior_std * rng.standard_normal()
            image = (amplitude * g + self.noise * rng.standard_normal(g.shape)).astype(np.float32)
            record = {"id": f"blob/{index}", "seed": index, "label": 0, "class_name": "blob", "image": image,
                      "amplitude": amplitude}
            serialized.append(self.schema.encode(record))
            params.append([amplitude])
            images.append(image)
        return RecordBatch(serialized, np.zeros(len(params), np.int64), np.asarray(params, np.float64),
                           {"image": image_stats(np.stack(images))})


def write_blobs(out: str | Path, num: int = 256, *, seed: int = 0, splits: dict[str, float] | None = None,
                records_per_shard: int = 256, progress: bool = False, **source_args) -> WriteSummary:
    """Write a toy `BlobSource` dataset; its manifest's config states the prior of `amplitude`."""
    source = BlobSource(seed=seed, **source_args)
    plans = plan_shards(split_counts(num, splits or {"train": 0.8, "val": 0.1, "test": 0.1}), records_per_shard)
    base = {"name": "blobs", "kind": "synthetic", "generator": BLOBS_GENERATOR,
            "config": {**source.config(), "num": num}, "seed": seed}
    return write_dataset(out, source, plans, base, progress=progress)
