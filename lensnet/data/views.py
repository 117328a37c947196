"""Random views of lens images for self-supervised learning (SimCLR, BYOL): vectorised and stateless.

ImageNet recipes (random resized crops, RGB colour jitter, grey-scale) change what a lens image
means: a crop cuts the arcs, colour jitter mixes bands whose ratios are physics. A lens view
instead changes only what the sky and the telescope would change:

- optionally a random square crop (area fraction uniform in [`crop`, `crop_max`]) resized back to
  the image size: SimCLR's main view, and DINO's global and local crops (it cuts arcs: the views
  study measures whether that costs the substructure signal);
- a symmetry of the pixel grid (`d4`, or the `flips` subgroup of a fixed macro model: see
  lensnet.data.augment, whose `augment_batch` is reused here);
- a small integer shift (up to `shift` pixels; the border pixels, sky, fill the gap);
- a PSF-like gaussian blur of random width (sigma uniform in [0, `blur`] pixels);
- a flux scale (log-uniform in [1/`flux`, `flux`]);
- a new noise draw: gaussian with a standard deviation of `noise` x the image's own std.

Every operation acts on all channels alike, so 1-band and 3-band images are both correct, and
no channel is ever mixed with another. All randomness comes from one stateless seed (shape [2])
per batch, drawn row by row ([N, ...] tensors), so a row's view is a function of (run seed,
epoch, step, row): a resumed run and every worker of a multi-worker run make the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.data.augment import AUGMENTATIONS


@dataclass(frozen=True)
class ViewOptions:
    symmetry: str | None = "d4"  # a lensnet.data.augment group (d4 | flips | rot180) or None
    shift: int = 2  # max integer shift, pixels
    blur: float = 1.0  # max gaussian sigma, pixels (0 = no blur)
    flux: float = 1.25  # flux scale range [1/flux, flux] (1 = no scaling)
    noise: float = 0.1  # std of the re-drawn noise, as a fraction of the image std (0 = none)
    crop: float = 1.0  # smallest area fraction of the random crop (1 = no crop)
    crop_max: float = 1.0  # largest area fraction of the random crop

    def check(self, where: str = "task") -> None:
        if self.symmetry is not None and self.symmetry not in AUGMENTATIONS:
            raise LensnetError(f"{where}.symmetry must be one of {', '.join(AUGMENTATIONS)} or none, "
                               f"got {self.symmetry!r}")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise LensnetError(f"{where}.view_shift must be an integer >= 0, got {self.shift!r}")
        for key, value, low in (("view_blur", self.blur, 0.0), ("view_noise", self.noise, 0.0),
                                ("view_flux", self.flux, 1.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low \
                    or not math.isfinite(value):
                raise LensnetError(f"{where}.{key} must be a number >= {low}, got {value!r}")
        if not isinstance(self.crop, (int, float)) or not 0 < self.crop <= self.crop_max <= 1:
            raise LensnetError(f"{where}.view_crop must be in (0, 1], got {self.crop!r}")


# The task's view settings (lensnet.tasks.pretrain, `task.view_*`) when left at null: per dataset preset, as
# measured by `python -m lensnet.study views` (docs/ssl.md); a dataset of another name takes GENERIC_VIEWS.
GENERIC_VIEWS: dict[str, float] = {"view_shift": 2, "view_crop": 1.0, "view_blur": 0.0, "view_flux": 1.25,
                                   "view_noise": 0.0}
# deeplense_model_ii: rot180 + shift 4. The corrected replica's view study ranks a crop first by its linear probe
# (0.79-0.80 against 0.737), but pretraining at scale with the crop loses the 10%-label gain of fine-tuning
# (0.652 and 0.634 against 0.700 and 0.729 without it, two seeds; docs/ssl.md): the end-to-end measurement decides.
PRESET_VIEWS: dict[str, dict[str, float]] = {"deeplense_model_ii": {"view_shift": 4, "view_flux": 1.0}}


def preset_views(dataset_name: str | None) -> dict[str, float]:
    """The default view settings of a dataset (its manifest name: the preset it was simulated from)."""
    return {**GENERIC_VIEWS, **PRESET_VIEWS.get(str(dataset_name), {})}


def _gather_shifted(x: Any, offsets: Any, axis: int) -> Any:
    """x (N, H, W, C) with row n shifted by offsets[n] pixels along `axis` (1 or 2), border pixels repeated."""
    import tensorflow as tf

    size = tf.shape(x)[axis]
    index = tf.clip_by_value(tf.range(size)[None, :] - offsets[:, None], 0, size - 1)  # (N, size)
    return tf.gather(x, index, axis=axis, batch_dims=1)


def _blur_axis(x: Any, sigma: Any, radius: int, axis: int) -> Any:
    """One separable pass of a per-row gaussian of width `sigma` (N,), truncated at `radius` pixels."""
    import tensorflow as tf

    taps = tf.range(-radius, radius + 1, dtype=tf.float32)  # (K,)
    s = tf.maximum(sigma, 1e-3)[:, None]
    weights = tf.exp(-0.5 * tf.square(taps[None, :] / s))
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # (N, K); sigma ~ 0 -> a delta
    out = tf.zeros_like(x)
    for k in range(2 * radius + 1):
        shifted = _gather_shifted(x, tf.fill(tf.shape(sigma), k - radius), axis)
        out += weights[:, k][:, None, None, None] * shifted
    return out


def resized_crops(x: Any, seed: Any, low: float, high: float) -> Any:
    """A random square crop of every image (area fraction uniform in [low, high], anywhere inside the
    image), resized bilinearly back to the image size; from the stateless `seed`."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    seeds = [tf.random.experimental.stateless_fold_in(seed, k) for k in range(3)]
    side = tf.sqrt(tf.random.stateless_uniform([n], seeds[0], float(low), float(high)))
    y0 = tf.random.stateless_uniform([n], seeds[1]) * (1.0 - side)
    x0 = tf.random.stateless_uniform([n], seeds[2]) * (1.0 - side)
    boxes = tf.stack([y0, x0, y0 + side, x0 + side], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(n), tf.shape(x)[1:3])


def lens_views(images: Any, seed: Any, options: ViewOptions) -> Any:
    """One random lens view of every image of a batch (N, H, W, C), from the stateless `seed` (shape [2])."""
    import tensorflow as tf

    from lensnet.data.augment import augment_batch

    x = tf.convert_to_tensor(images, tf.float32)
    n = tf.shape(x)[0]
    seeds = [tf.random.experimental.stateless_fold_in(seed, k) for k in range(6)]
    if options.crop < 1:
        x = resized_crops(x, seeds[5], options.crop, options.crop_max)
    if options.symmetry:
        x = augment_batch({"image": x}, options.symmetry, seeds[0])["image"]
    if options.shift:
        offsets = tf.random.stateless_uniform([n, 2], seeds[1], minval=-options.shift, maxval=options.shift + 1,
                                              dtype=tf.int32)
        x = _gather_shifted(_gather_shifted(x, offsets[:, 0], 1), offsets[:, 1], 2)
    if options.blur > 0:
        sigma = tf.random.stateless_uniform([n], seeds[2], 0.0, float(options.blur))
        radius = max(1, math.ceil(3 * options.blur))
        x = _blur_axis(_blur_axis(x, sigma, radius, 1), sigma, radius, 2)
    if options.flux > 1:
        log_f = math.log(options.flux)
        scale = tf.exp(tf.random.stateless_uniform([n], seeds[3], -log_f, log_f))
        x = x * scale[:, None, None, None]
    if options.noise > 0:
        std = tf.math.reduce_std(x, axis=[1, 2, 3], keepdims=True)
        x = x + options.noise * std * tf.random.stateless_normal(tf.shape(x), seeds[4])
    return x
