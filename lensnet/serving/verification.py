"""The check every export passes before it is published: Keras, the reloaded SavedModel and
onnxruntime score the same raw images and must agree within the output kind's tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.exports import ExportedModel, spec_from_card
from lensnet.artifacts.outputs import OutputSpec
from lensnet.artifacts.runs import RunInfo
from lensnet.core.errors import LensnetError
from lensnet.serving.runtimes import OnnxRunner, TFRunner

DEFAULT_ATOL = 1e-4


class UnfaithfulExport(LensnetError):
    """The exported artifacts do not reproduce the Keras model."""


def keras_reference(model: Any, normalisation: dict, images: np.ndarray, spec: OutputSpec | None = None) -> np.ndarray:
    """What the run's Keras model says about raw `images` (normalised as in training), eagerly,
    post-processed as the exported function does when `spec` is given (an image mapped back to pixels)."""
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation

    outputs = tf.cast(model(apply_normalisation(images, normalisation), training=False), tf.float32)
    if spec is not None:
        outputs = spec.handler.postprocess(spec, outputs, images, normalisation)
    return np.asarray(outputs, dtype=np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; a shape mismatch or NaN in only one counts as infinitely different."""
    if a.shape != b.shape:
        return float("inf")
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    diff = np.abs(np.nan_to_num(a.astype(np.float64)) - np.nan_to_num(b.astype(np.float64)))
    return float(diff.max()) if diff.size else 0.0


def verification_images(info: RunInfo, batch: int, seed: int) -> tuple[np.ndarray, str]:
    """Raw images to compare the runtimes on: the run's dataset if it is here, else random pixels.

    An all-zero image is appended: a blank cutout is the edge case where per-image
    normalisation divides by a floored zero std, and runtimes must agree there too.
    """
    shape = tuple(info.input_shape)
    images, source = _dataset_images(info, batch, shape)
    if images is None:
        rng = np.random.default_rng(seed)
        spec = info.normalisation
        if spec.get("method") == "dataset":
            mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
        else:
            mean, std = np.zeros(shape[-1], np.float32), np.ones(shape[-1], np.float32)
        images = (mean + std * rng.standard_normal((batch, *shape))).astype(np.float32)
        source = f"random pixels (seed {seed})"
    zero = np.zeros((1, *shape), np.float32)
    return np.concatenate([images, zero]), source


def _dataset_images(info: RunInfo, batch: int, shape: tuple) -> tuple[np.ndarray | None, str]:
    path = (info.dataset or {}).get("path")
    if not path or not Path(path, "manifest.json").is_file():
        return None, ""
    try:
        from lensnet.data.pipeline import load, open_dataset

        data = open_dataset(path)
        field = "image" if "image" in data.image_names else data.image_names[0]
        for split in ("test", "val", "train"):
            if data.counts.get(split):
                ds = load(data, split, batch_size=batch, fields=[field], normalise="none", shuffle=False)
                images = next(iter(ds))[field].numpy()
                if images.shape[1:] == shape:
                    return images.astype(np.float32), f"{path} split {split}, first {len(images)} records"
                return None, ""
    except Exception:  # an unreadable dataset must not block the export: random pixels still verify
        return None, ""
    return None, ""


def verify(version_path: Path, card: dict, images: np.ndarray, reference: np.ndarray, atol: float) -> dict:
    """Score `images` with the SavedModel and onnxruntime from disk and compare with `reference`.

    The allowed difference is the output kind's tolerance for `atol` (an image: `atol` of its range).
    """
    spec = spec_from_card(card)
    tolerance = spec.handler.tolerance(spec, reference, atol)
    exported = ExportedModel(name="", version=0, path=version_path, card=card)
    results = {
        "savedmodel": TFRunner(exported)(images),
        "onnxruntime": OnnxRunner(exported)(images),
    }
    diffs = {name: max_abs_diff(reference, out) for name, out in results.items()}
    figures = {f"max_abs_diff_{name}": diff for name, diff in diffs.items()}
    worst = max(diffs, key=lambda k: diffs[k])
    if not diffs[worst] <= tolerance:
        raise UnfaithfulExport(
            f"export is not faithful: {worst} differs from Keras by {diffs[worst]:.3g} (> {tolerance:g}) "
            f"on {len(images)} images; nothing was published"
        )
    return {"atol": atol, "tolerance": tolerance, **figures}
