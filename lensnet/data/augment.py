"""Batch augmentation by the symmetries of the pixel grid, vectorised and stateless.

A lens image has no preferred orientation, so the eight elements of the dihedral
group D4 (rotations by 90 degrees and reflections) are all equally likely views.
Each image of a batch draws three independent bits (transpose, flip left-right,
flip up-down) from a stateless RNG keyed by the caller's seed; the 2 x 2 x 2
combinations are exactly the eight elements of D4. Every image field of a record
(e.g. the low- and high-resolution pair of a super-resolution set) gets the same
element, so pairs stay aligned.

Mode `flips` is the subgroup {identity, flip x, flip y, rotation by 180 degrees}
(two bits, no transpose): the symmetries that a FIXED macro model with e2 = 0 and
gamma2 = 0 keeps (DeepLense's SIE e1 = 0.1 and shear gamma1 = 0.05; a quadrupole
aligned with the axes), whereas a 90-degree rotation turns it into e1 = -0.1, an
orientation that never occurs at test time. A dataset's manifest names the mode
that keeps its symmetry in config.symmetry (replicas and model_i: flips; randomly
oriented presets: d4). `flip` is the former name of `flips`.

Physical parameters are not transformed: targets that depend on orientation
(ellipticity and shear components, source position) change under these maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lensnet.core.errors import LensnetError

AUGMENTATIONS = ("d4", "flips", "flip")  # flip: the former name of flips


def normalise_augment(augment: str | None, field: str = "data.augment") -> str | None:
    """A valid augmentation name, or None for none (YAML null or the string `none`)."""
    if augment is None or augment == "none":
        return None
    if augment not in AUGMENTATIONS:
        raise LensnetError(f"{field} must be one of {', '.join(AUGMENTATIONS)}, none; unknown augmentation "
                           f"{augment!r}")
    return augment


def check_augment(augment: str | None, image_shapes: Mapping[str, Sequence[int]]) -> str | None:
    """Validate `augment` against the image fields it will touch; returns it (None = no augmentation)."""
    augment = normalise_augment(augment)
    if augment is None:
        return None
    if augment == "d4":
        for name, shape in image_shapes.items():
            if shape[0] != shape[1]:
                raise LensnetError(
                    f"augmentation 'd4' needs square images but field '{name}' is {shape[0]}x{shape[1]}; "
                    "use 'flips'"
                )
    return augment


def augment_batch(images: Mapping, method: str, seed):
    """Apply one random D4 (or `flips` group) element per record to every image field of a batch.

    `images` maps field name -> (N, H, W, C) tensor; `seed` is a stateless seed of shape [2].
    """
    import tensorflow as tf

    first = next(iter(images.values()))
    n = tf.shape(first)[0]
    bits = tf.random.stateless_uniform([n, 3], seed=seed) < 0.5
    # (N, 1, 1, 1) masks broadcast over pixels and channels.
    masks = [tf.reshape(bits[:, k], [-1, 1, 1, 1]) for k in range(3)]
    out = {}
    for name, x in images.items():
        if method == "d4":
            x = tf.where(masks[0], tf.transpose(x, [0, 2, 1, 3]), x)
        x = tf.where(masks[1], tf.reverse(x, [2]), x)
        x = tf.where(masks[2], tf.reverse(x, [1]), x)
        out[name] = x
    return out


def group_views(x, method: str) -> list:
    """Every element of the `flips` (4) or `d4` (8) group applied to a batch tensor (N, H, W, C)."""
    import tensorflow as tf

    bases = [x, tf.transpose(x, [0, 2, 1, 3])] if method == "d4" else [x]
    return [v for b in bases for v in (b, tf.reverse(b, [2]), tf.reverse(b, [1]), tf.reverse(b, [1, 2]))]


def flips_transforms(image):
    """The four images of the `flips` group of one (H, W, C) numpy array: id, flip x, flip y, rot 180."""
    return [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]


def d4_transforms(image):
    """The eight D4 images of one (H, W, C) numpy array (for tests and checks)."""
    import numpy as np

    views = []
    for base in (image, np.transpose(image, (1, 0, 2))):
        for lr in (False, True):
            for ud in (False, True):
                x = base[:, ::-1] if lr else base
                views.append(x[::-1] if ud else x)
    return views
