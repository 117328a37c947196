"""Image-quality figures of super-resolution: PSNR and SSIM on a STATED data range, per image.

PSNR = 10 log10(R^2 / MSE) and SSIM (Wang et al. 2004) with the standard Gaussian window
(11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03, C1 = (K1 R)^2, C2 = (K2 R)^2, computed on the
'valid' part of the image (no padding) and averaged over the SSIM map and the channels, as
`tf.image.ssim` does. Both depend on the data range R, which published super-resolution figures
often leave implicit (uint8 255 on one paper, 1.0 on another, the image's max on a third), so
R is always an argument here and every table records which one was used:

- ``per_image``: R = max - min of each ground-truth (HR) image, in its physical units;
- a positive number: one fixed R for every image (record it in the run).

One implementation in TF serves the training metrics, the SSIM loss term and the test scores
(`score_images` runs it over NumPy arrays in chunks); the tests compare it with
`tf.image.psnr` / `tf.image.ssim` and a NumPy PSNR on fixed arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

WINDOW = 11  # Gaussian SSIM window side
SIGMA = 1.5  # its standard deviation, in pixels
K1, K2 = 0.01, 0.03
_RANGE_FLOOR = 1e-12  # a constant HR image has range 0: floor it instead of dividing by zero


def check_data_range(value: Any, where: str = "task.data_range") -> str | float:
    """`per_image` or a positive number; anything else is a one-line error naming `where`."""
    if value == "per_image":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number <= 0 or isinstance(value, bool):
        raise LensnetError(f"{where} must be 'per_image' or a positive number, got {value!r}")
    return number


def describe_range(data_range: str | float) -> str:
    """How the range was chosen, in words (stored beside every PSNR/SSIM figure)."""
    if data_range == "per_image":
        return "per_image: max - min of each HR image, in the HR pixels' units"
    return f"fixed: {float(data_range):g}, in the HR pixels' units"


def ranges(reference: Any, data_range: str | float) -> Any:
    """TF: the data range of each image of `reference` (N, H, W, C) as a (N,) float32 tensor."""
    import tensorflow as tf

    reference = tf.cast(reference, tf.float32)
    if data_range == "per_image":
        span = tf.reduce_max(reference, axis=[1, 2, 3]) - tf.reduce_min(reference, axis=[1, 2, 3])
        return tf.maximum(span, _RANGE_FLOOR)
    return tf.fill(tf.shape(reference)[:1], tf.constant(float(data_range), tf.float32))


def psnr(target: Any, prediction: Any, data_range: Any) -> Any:
    """TF: PSNR in dB per image; `data_range` is a scalar or (N,). Identical images give +inf."""
    import tensorflow as tf

    target, prediction = tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)
    mse = tf.reduce_mean(tf.square(prediction - target), axis=[1, 2, 3])
    r = tf.cast(data_range, tf.float32)
    return 10.0 * (tf.math.log(tf.square(r)) - tf.math.log(mse)) / tf.math.log(10.0)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """The normalised (size, size) Gaussian SSIM window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def ssim(target: Any, prediction: Any, data_range: Any) -> Any:
    """TF: SSIM per image (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid window positions,
    mean over the map and channels); `data_range` is a scalar or (N,). Images need sides >= 11."""
    import tensorflow as tf

    target, prediction = tf.cast(target, tf.float32), tf.cast(prediction, tf.float32)
    channels = target.shape[-1]
    if channels is None:
        raise LensnetError("ssim needs images with a known number of channels")
    kernel = tf.constant(np.tile(gaussian_window()[:, :, None, None], (1, 1, channels, 1)), tf.float32)

    def blur(x: Any) -> Any:
        return tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")

    r = tf.reshape(tf.cast(data_range, tf.float32), [-1, 1, 1, 1])
    c1, c2 = tf.square(K1 * r), tf.square(K2 * r)
    mu_t, mu_p = blur(target), blur(prediction)
    var_t = blur(target * target) - mu_t * mu_t
    var_p = blur(prediction * prediction) - mu_p * mu_p
    cov = blur(target * prediction) - mu_t * mu_p
    luminance = (2.0 * mu_t * mu_p + c1) / (mu_t * mu_t + mu_p * mu_p + c1)
    structure = (2.0 * cov + c2) / (var_t + var_p + c2)
    return tf.reduce_mean(luminance * structure, axis=[1, 2, 3])


def check_ssim_size(shape: Sequence[int], what: str) -> None:
    if min(int(shape[0]), int(shape[1])) < WINDOW:
        raise LensnetError(f"{what}: SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got "
                           f"{shape[0]}x{shape[1]}")


def per_image(target: np.ndarray, prediction: np.ndarray, data_range: str | float,
              chunk: int = 256) -> dict[str, np.ndarray]:
    """NumPy in, NumPy out: {"psnr", "ssim", "data_range"} per image, computed in chunks."""
    target = np.asarray(target, dtype=np.float32)
    prediction = np.asarray(prediction, dtype=np.float32)
    if target.shape != prediction.shape or target.ndim != 4:
        raise LensnetError(f"image quality needs two (N, H, W, C) arrays of one shape, got {target.shape} "
                           f"and {prediction.shape}")
    check_ssim_size(target.shape[1:3], "image quality")
    out: dict[str, list] = {"psnr": [], "ssim": [], "data_range": []}
    for start in range(0, len(target), chunk):
        t, p = target[start:start + chunk], prediction[start:start + chunk]
        r = ranges(t, data_range)
        out["psnr"].append(np.asarray(psnr(t, p, r), np.float64))
        out["ssim"].append(np.asarray(ssim(t, p, r), np.float64))
        out["data_range"].append(np.asarray(r, np.float64))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def mean_interval(values: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Mean of finite per-image values, its 95% percentile-bootstrap interval, median and count.

    Infinite PSNRs (a prediction identical to its target) are counted apart, never averaged."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    out: dict = {"n": int(finite.size), "n_infinite": int(values.size - finite.size)}
    if not finite.size:
        out.update(mean=None, ci95=None, median=None)
        return out
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, finite.size, size=(bootstrap, finite.size))].mean(axis=1)
    out["mean"] = float(finite.mean())
    out["ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    out["median"] = float(np.median(finite))
    return out


def quality_table(target: np.ndarray, predictions: dict[str, np.ndarray], data_range: str | float,
                  labels: np.ndarray | None = None, class_names: Sequence[str] = (), seed: int = 0) -> dict:
    """PSNR / SSIM of each named prediction (e.g. "model", "bicubic") against `target`, in one table:
    mean, 95% interval, median per figure; per class when `labels` and `class_names` are given;
    and the per-image values of every row (so a later reader can recompute anything)."""
    table: dict = {"data_range": describe_range(data_range), "window": f"gaussian {WINDOW}x{WINDOW}, sigma {SIGMA}",
                   "k1": K1, "k2": K2, "rows": {}}
    for name, prediction in predictions.items():
        values = per_image(target, prediction, data_range)
        row = {metric: mean_interval(values[metric], seed=seed) for metric in ("psnr", "ssim")}
        row["per_image"] = {k: [float(v) for v in values[k]] for k in ("psnr", "ssim")}
        if labels is not None and len(class_names):
            row["per_class"] = {
                cls: {metric: mean_interval(values[metric][labels == k], seed=seed) for metric in ("psnr", "ssim")}
                for k, cls in enumerate(class_names) if np.any(labels == k)
            }
        table["rows"][name] = row
        table["per_image_data_range"] = [float(v) for v in values["data_range"]]  # the same for every row
    return table
