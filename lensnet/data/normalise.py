"""Image normalisation as a JSON-able spec plus pure TF ops, shared by tf.data and the exported model.

The spec is what a trained model remembers: the exporter stores it and puts
`apply_normalisation` into the serving signature, so a served model sees pixels
exactly as training did. Methods:

- ``standard``: per-image, per-channel standardisation (zero mean, unit std); robust when a model
  trained on one instrument is applied to another, whose absolute flux scale differs.
- ``minmax``: per-image, per-channel scaling to [0, 1] (the DeepLense convention).
- ``dataset``: the training split's per-channel mean / std from the manifest (keeps absolute flux).
- ``none``: pixels unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lensnet.core.errors import LensnetError

if TYPE_CHECKING:
    import tensorflow as tf

    from lensnet.data.pipeline import DatasetInfo

METHODS = ("standard", "minmax", "dataset", "none")
# A constant image (or channel) has std 0; flooring it maps the image to zeros instead of NaN.
_STD_FLOOR = 1e-12


def normalisation_spec(method: str | Mapping, info: DatasetInfo, field: str = "image") -> dict:
    """The JSON-able spec of `method` for image field `field` of the dataset `info`."""
    if isinstance(method, Mapping):
        return check_spec(method)
    if method not in METHODS:
        raise LensnetError(f"unknown normalisation '{method}'; choose one of {', '.join(METHODS)}")
    if method != "dataset":
        return {"method": method}
    stats = info.pixel_stats.get(field)
    if not stats:
        raise LensnetError(f"dataset {info.path}: manifest has no pixel statistics for field '{field}'")
    return check_spec({
        "method": "dataset",
        "mean": [float(v) for v in stats["mean"]],
        "std": [float(v) for v in stats["std"]],
        "field": field,
        "split": stats.get("split", "train"),
    })


def check_spec(spec: Mapping) -> dict:
    """Validate a spec (e.g. read back from a run's config); returns a plain dict copy."""
    spec = dict(spec)
    method = spec.get("method")
    if method not in METHODS:
        raise LensnetError(f"normalisation spec: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "dataset":
        mean, std = spec.get("mean"), spec.get("std")
        if not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)) or len(mean) != len(std):
            raise LensnetError("normalisation spec 'dataset' needs lists 'mean' and 'std' of one value per channel")
        if not mean or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*mean, *std]):
            raise LensnetError("normalisation spec 'dataset': 'mean' and 'std' must be finite numbers")
        spec["mean"], spec["std"] = [float(v) for v in mean], [float(v) for v in std]
    return spec


def apply_normalisation(images: Any, spec: Mapping) -> tf.Tensor:
    """Normalise images (..., H, W, C) by `spec`; pure TF, usable in tf.data and in a tf.function."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        images = tf.cast(images, tf.float32)
    method = spec["method"]
    if method == "none":
        return images
    if method == "standard":
        mean, variance = tf.nn.moments(images, axes=[-3, -2], keepdims=True)
        return (images - mean) / tf.maximum(tf.sqrt(variance), _STD_FLOOR)
    if method == "minmax":
        low = tf.reduce_min(images, axis=[-3, -2], keepdims=True)
        high = tf.reduce_max(images, axis=[-3, -2], keepdims=True)
        return tf.math.divide_no_nan(images - low, high - low)
    if method == "dataset":
        spec = check_spec(spec)
        channels = images.shape[-1]
        if channels is not None and channels != len(spec["mean"]):
            raise LensnetError(
                f"normalisation spec 'dataset' has {len(spec['mean'])} channel(s), images have {channels}"
            )
        mean = tf.constant(spec["mean"], images.dtype)
        std = tf.constant([max(s, _STD_FLOOR) for s in spec["std"]], images.dtype)
        return (images - mean) / std
    raise LensnetError(f"normalisation spec: unknown method {method!r}; choose one of {', '.join(METHODS)}")


def invert_normalisation(outputs: Any, spec: Mapping, images: Any) -> tf.Tensor:
    """Map a model's output image from normalised units back to the units of the raw input `images`.

    The inverse of `apply_normalisation(images, spec)` applied to another image: per-image methods
    (standard, minmax) use the statistics of the raw input, per channel, so an image-to-image model
    fed raw pixels returns pixels in the same units. Pure TF (it runs inside the exported function).
    """
    import tensorflow as tf

    outputs = tf.convert_to_tensor(outputs)
    images = tf.cast(tf.convert_to_tensor(images), outputs.dtype)
    method = spec["method"]
    if method == "none":
        return outputs
    if method == "standard":
        mean, variance = tf.nn.moments(images, axes=[-3, -2], keepdims=True)
        return outputs * tf.maximum(tf.sqrt(variance), _STD_FLOOR) + mean
    if method == "minmax":
        low = tf.reduce_min(images, axis=[-3, -2], keepdims=True)
        high = tf.reduce_max(images, axis=[-3, -2], keepdims=True)
        return outputs * (high - low) + low
    if method == "dataset":
        spec = check_spec(spec)
        mean = tf.constant(spec["mean"], outputs.dtype)
        std = tf.constant([max(s, _STD_FLOOR) for s in spec["std"]], outputs.dtype)
        return outputs * std + mean
    raise LensnetError(f"normalisation spec: unknown method {method!r}; choose one of {', '.join(METHODS)}")
