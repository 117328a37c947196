"""Image normalisation as a JSON-able spec plus pure TF ops, shared by tf.data and the exported model.

The spec is what a trained model remembers: the exporter stores it and puts
`apply_normalisation` into the serving signature, so a served model sees pixels
exactly as training did. Methods:

- ``standard``: per-image, per-channel standardisation (zero mean, unit std); robust when a model
  trained on one instrument is applied to another, whose absolute flux scale differs.
- ``minmax``: per-image, per-channel scaling to [0, 1] (the DeepLense convention).
- ``dataset``: the training split's per-channel mean / std from the manifest (keeps absolute flux).
- ``none``: pixels unchanged.
- ``asinh``: per image and channel, a compressive stretch relative to the sky noise, then ``standard``:
  x -> asinh((x - median) / (beta * sigma)), sigma the noise estimated robustly from the median absolute
  difference of horizontally neighbouring pixels (smooth galaxy light cancels in a difference; an arc at a
  few sigma per pixel keeps a visible share of the range next to a lens galaxy's core at thousands of
  sigma, where ``standard``, a linear map, leaves it a tiny fraction of the core's value). Linear
  within +-beta sigma of the sky, logarithmic above (Lupton et al. 1999, 2004). Invariant, like
  ``standard``, to a positive scaling or an offset of each channel. The medians are taken with
  ``tf.math.top_k``, which exports to ONNX TopK. ``bands: joint`` stretches all bands of a pixel by one
  factor, asinh(I) / I with I the bands' mean of (x - median) / (beta * sigma), which keeps their ratios
  (colours), as Lupton et al. (2004) do for colour images (the default); ``separate`` stretches each alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lensnet.core.errors import LensnetError

if TYPE_CHECKING:
    import tensorflow as tf

    from lensnet.data.pipeline import DatasetInfo

METHODS = ("standard", "minmax", "dataset", "none", "asinh")
# The fields a spec of each method may hold (anything else is a typo, refused by check_spec).
_FIELDS = {
    "standard": {"method"}, "minmax": {"method"}, "none": {"method"}, "asinh": {"method", "beta", "bands"},
    "dataset": {"method", "mean", "std", "field", "split"},
}
# A constant image (or channel) has std 0; flooring it maps the image to zeros instead of NaN.
_STD_FLOOR = 1e-12
# Defaults, from cnn_small on lens_finding_survey (docs/lens_finding.md, "Input normalisation"): bands joint
# with beta 3 had the best validation AUC (0.961) and survey figures of the three asinh runs (separate: beta
# 3 0.952, beta 10 0.954; standard 0.958).
# beta: the softening in units of the sky-noise sigma (linear within +-beta sigma of the sky).
ASINH_BETA = 3.0
# joint: one stretch factor per pixel from the mean of the bands' sky-noise-scaled values, so the bands'
# ratios (colours) survive (Lupton et al. 2004); separate: each band stretched alone.
ASINH_BANDS = ("joint", "separate")
# median |a - b| of two independent N(0, sigma^2) pixels is 0.6745 * sqrt(2) * sigma
_MAD_DIFF_TO_SIGMA = 1.0 / (0.6744897501960817 * math.sqrt(2.0))


def normalisation_spec(method: str | Mapping, info: DatasetInfo, field: str = "image") -> dict:
    """The JSON-able spec of `method` for image field `field` of the dataset `info`."""
    if isinstance(method, Mapping):
        return check_spec(method)
    if method not in METHODS:
        raise LensnetError(f"unknown normalisation '{method}'; choose one of {', '.join(METHODS)}")
    if method == "asinh":
        return {"method": "asinh", "beta": ASINH_BETA, "bands": ASINH_BANDS[0]}
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
    unknown = sorted(set(spec) - _FIELDS[method])
    if unknown:
        raise LensnetError(f"normalisation spec '{method}': unknown field(s) {', '.join(map(str, unknown))}; "
                           f"allowed: {', '.join(sorted(_FIELDS[method]))}")
    if method == "asinh":
        beta = spec.get("beta", ASINH_BETA)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise LensnetError(f"normalisation spec 'asinh': beta must be a finite number > 0, got {beta!r}")
        spec["beta"] = float(beta)
        spec.setdefault("bands", ASINH_BANDS[0])
        if spec["bands"] not in ASINH_BANDS:
            raise LensnetError(f"normalisation spec 'asinh': bands must be one of {', '.join(ASINH_BANDS)}, "
                               f"got {spec['bands']!r}")
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
    if method == "asinh":
        stretched = _asinh_stretch(images, check_spec(spec))[0]
        mean, variance = tf.nn.moments(stretched, axes=[-3, -2], keepdims=True)
        return (stretched - mean) / tf.maximum(tf.sqrt(variance), _STD_FLOOR)
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
    if method == "asinh":
        spec = check_spec(spec)
        stretched, sky, softening = _asinh_stretch(images, spec)
        mean, variance = tf.nn.moments(stretched, axes=[-3, -2], keepdims=True)
        stretched = outputs * tf.maximum(tf.sqrt(variance), _STD_FLOOR) + mean
        if spec["bands"] == "joint":  # the bands' mean is asinh(I): I = sinh of it, and each band is u F(I)
            scaled = stretched / _joint_factor(tf.sinh(tf.reduce_mean(stretched, axis=-1, keepdims=True)))
        else:
            scaled = tf.sinh(stretched)
        return scaled * softening + sky
    if method == "dataset":
        spec = check_spec(spec)
        mean = tf.constant(spec["mean"], outputs.dtype)
        std = tf.constant([max(s, _STD_FLOOR) for s in spec["std"]], outputs.dtype)
        return outputs * std + mean
    raise LensnetError(f"normalisation spec: unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _median_last(values: tf.Tensor) -> tf.Tensor:
    """Median over the (static) last axis, the mean of the two middle values when their count is even, keepdims.

    The upper half by an unsorted top_k (a selection, twice as fast as sorting on CPU; one ONNX TopK), then
    its smallest one or two values.
    """
    import tensorflow as tf

    n = values.shape[-1]
    upper = tf.math.top_k(values, k=n // 2 + 1, sorted=False).values
    if n % 2:
        return tf.reduce_min(upper, axis=-1, keepdims=True)
    return tf.reduce_mean(-tf.math.top_k(-upper, k=2, sorted=False).values, axis=-1, keepdims=True)


def _joint_factor(intensity: tf.Tensor) -> tf.Tensor:
    """asinh(I) / I, 1 at I = 0 (its limit)."""
    import tensorflow as tf

    small = tf.abs(intensity) < 1e-6
    return tf.where(small, tf.ones_like(intensity), tf.asinh(intensity) / tf.where(small, 1.0, intensity))


def _asinh_stretch(images: tf.Tensor, spec: Mapping) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(the stretched images, sky, softening), the last two shaped (..., 1, 1, C); u = (x - sky) / softening.

    sky is the channel's median pixel, softening = beta * sigma with sigma the median absolute difference
    of horizontal neighbours over 0.6745 sqrt 2 (a difference cancels the smooth galaxy light, which a MAD
    of the pixels would count as noise); where that is zero (more than half the pixels equal, e.g. masked)
    the channel's std stands in, floored like `standard`'s. bands separate: asinh(u) per band; joint:
    u asinh(I) / I with I the bands' mean of u at the pixel.
    """
    import tensorflow as tf

    height, width = images.shape[-3], images.shape[-2]
    if height is None or width is None:
        raise LensnetError("normalisation 'asinh' needs images of a known height and width")
    channels_first = tf.experimental.numpy.moveaxis(images, -1, -3)  # (..., C, H, W)
    leading = tf.shape(channels_first)[:-2]
    flat = tf.reshape(channels_first, tf.concat([leading, [height * width]], axis=0))
    sky = _median_last(flat)
    diffs = tf.abs(channels_first[..., :, 1:] - channels_first[..., :, :-1])
    sigma = _median_last(tf.reshape(diffs, tf.concat([leading, [height * (width - 1)]], axis=0))) * _MAD_DIFF_TO_SIGMA
    std = tf.math.reduce_std(flat, axis=-1, keepdims=True)
    sigma = tf.maximum(tf.where(sigma > _STD_FLOOR, sigma, std), _STD_FLOOR)
    # (..., C, 1) -> (..., 1, 1, C)
    sky, softening = (tf.expand_dims(tf.experimental.numpy.moveaxis(v, -2, -1), -3)
                      for v in (sky, spec["beta"] * sigma))
    scaled = (images - sky) / softening
    if spec["bands"] == "joint":
        return scaled * _joint_factor(tf.reduce_mean(scaled, axis=-1, keepdims=True)), sky, softening
    return tf.asinh(scaled), sky, softening
