"""Batch augmentation by the symmetries of the pixel grid, vectorised and stateless.

A lens image has no preferred orientation, so the eight elements of the dihedral
group D4 (rotations by 90 degrees and reflections) are all equally likely views.
Each image of a batch draws independent bits (for d4: transpose, flip left-right,
flip up-down) from a stateless RNG keyed by the caller's seed; the 2 x 2 x 2
combinations are exactly the eight elements of D4. Every image field of a record
(e.g. the low- and high-resolution pair of a super-resolution set) gets the same
element, so pairs stay aligned.

GROUPS is the registry: a group is the list of its random bits, each bit the grid operations applied
when it is set (their products are the group's elements).

- `d4`: the 8 elements; randomly oriented presets.
- `flips`: {identity, flip x, flip y, rotation by 180 degrees}: the symmetries of a FIXED lens model with
  e2 = 0 and gamma2 = 0 (a quadrupole aligned with the axes); a 90-degree rotation turns e1 = 0.1 into
  e1 = -0.1, an orientation that never occurs at test time. `flip` is its former name.
- `rot180`: {identity, rotation by 180 degrees}: the EXACT symmetry of a DeepLense replica scene. Its lens
  (SIE e1 0.1, e2 0, shear gamma1 0.05) keeps all of `flips`, but its source has a fixed e2 = +0.1 that a
  flip turns into -0.1 (a source orientation no replica image holds), whereas a rotation by 180 degrees
  keeps every ellipticity and shear component and sends the source position (x, y) to (-x, -y), which the
  replica's symmetric prior U(-0.35, 0.35)" draws alike (tests/test_physics.py shows both). The replica
  presets record it as config.symmetry, so `augment: auto` uses it.

A dataset's manifest names the group that keeps its symmetry in config.symmetry.
Physical parameters are not transformed: targets that depend on orientation
(ellipticity and shear components, source position) change under these maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product

from lensnet.core.errors import LensnetError

# name -> random bits, each the operations (in order) applied when the bit is set
GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "d4": (("transpose",), ("flip_x",), ("flip_y",)),
    "flips": (("flip_x",), ("flip_y",)),
    "rot180": (("flip_x", "flip_y"),),
}
ALIASES = {"flip": "flips"}  # former names
AUGMENTATIONS = (*GROUPS, *ALIASES)
SQUARE_ONLY = ("transpose",)  # operations that need square images


def group_of(method: str) -> tuple[tuple[str, ...], ...]:
    """The bits of a group by name (aliases resolved)."""
    return GROUPS[ALIASES.get(method, method)]


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
    if any(op in SQUARE_ONLY for bit in group_of(augment) for op in bit):
        for name, shape in image_shapes.items():
            if shape[0] != shape[1]:
                raise LensnetError(
                    f"augmentation '{augment}' needs square images but field '{name}' is {shape[0]}x{shape[1]}; "
                    "use 'flips' or 'rot180'"
                )
    return augment


def _apply_tf(x, op: str):
    import tensorflow as tf

    if op == "transpose":
        return tf.transpose(x, [0, 2, 1, 3])
    return tf.reverse(x, [2] if op == "flip_x" else [1])


def _apply_np(image, op: str):
    import numpy as np

    if op == "transpose":
        return np.transpose(image, (1, 0, 2))
    return image[:, ::-1] if op == "flip_x" else image[::-1]


def augment_batch(images: Mapping, method: str, seed):
    """Apply one random element of the group `method` per record to every image field of a batch.

    `images` maps field name -> (N, H, W, C) tensor; `seed` is a stateless seed of shape [2]. d4 and flips
    draw their bits as before rot180 was added (three bits, used in order), so their augmentations are unchanged.
    """
    import tensorflow as tf

    bits_of = group_of(method)
    first = next(iter(images.values()))
    n = tf.shape(first)[0]
    bits = tf.random.stateless_uniform([n, 3], seed=seed) < 0.5
    # (N, 1, 1, 1) masks broadcast over pixels and channels; d4 uses bits 0-2, flips 1-2, rot180 bit 1
    offset = 3 - len(bits_of) if len(bits_of) > 1 else 1
    masks = [tf.reshape(bits[:, offset + k], [-1, 1, 1, 1]) for k in range(len(bits_of))]
    out = {}
    for name, x in images.items():
        for mask, ops in zip(masks, bits_of):
            y = x
            for op in ops:
                y = _apply_tf(y, op)
            x = tf.where(mask, y, x)
        out[name] = x
    return out


_VIEW_ORDER = {"transpose": 0, "flip_y": 1, "flip_x": 2}  # listing order of views: flip x varies fastest


def _views(x, method: str, apply) -> list:
    bits = group_of(method)
    order = sorted(range(len(bits)), key=lambda i: _VIEW_ORDER[bits[i][0]])
    views = []
    for chosen in product((False, True), repeat=len(bits)):
        on = dict(zip(order, chosen))
        v = x
        for i, ops in enumerate(bits):  # operations in the group's order: transpose before flips
            if on[i]:
                for op in ops:
                    v = apply(v, op)
        views.append(v)
    return views


def group_views(x, method: str) -> list:
    """Every element of the group `method` applied to a batch tensor (N, H, W, C)."""
    return _views(x, method, _apply_tf)


def group_transforms(image, method: str) -> list:
    """Every element of the group `method` applied to one (H, W, C) numpy array (for tests and checks)."""
    return _views(image, method, _apply_np)


def flips_transforms(image):
    """The four images of the `flips` group of one (H, W, C) numpy array: id, flip x, flip y, rot 180."""
    return [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]


def d4_transforms(image):
    """The eight D4 images of one (H, W, C) numpy array, written out (an independent reference for tests)."""
    import numpy as np

    views = []
    for base in (image, np.transpose(image, (1, 0, 2))):
        for lr in (False, True):
            for ud in (False, True):
                x = base[:, ::-1] if lr else base
                views.append(x[::-1] if ud else x)
    return views
