"""Layers and shape checks shared by several families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from lensnet.core.errors import LensnetError


def as_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise LensnetError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def auto_patch_size(image_shape: tuple[int, int, int], preferred: int, model: str, min_grid: int = 2) -> int:
    """The patch size used when the user gives none.

    `preferred` if it divides both sides, else the smallest common divisor of
    height and width above it (150 px with preferred 8 -> 10), so that the image
    splits into whole patches without cropping or padding. At least `min_grid`
    patches per side must remain.
    """
    h, w = image_shape[:2]
    for p in range(preferred, min(h, w) // min_grid + 1):
        if h % p == 0 and w % p == 0:
            return p
    for p in range(preferred - 1, 0, -1):
        if h % p == 0 and w % p == 0 and min(h, w) // p >= min_grid:
            return p
    raise LensnetError(
        f"model {model!r} cannot split input_shape {tuple(image_shape)} into patches: "
        f"no patch size divides both {h} and {w}; give patch_size explicitly or resize the images"
    )


def check_patch_size(image_shape: tuple[int, int, int], patch: tuple[int, int], model: str) -> None:
    h, w = image_shape[:2]
    if h % patch[0] or w % patch[1] or h < patch[0] or w < patch[1]:
        raise LensnetError(
            f"model {model!r}: patch_size {patch[0]}x{patch[1]} does not divide input_shape "
            f"{tuple(image_shape)}; use a patch size dividing {h} and {w}, or patch_size=None "
            "to choose one automatically"
        )


def check_min_size(image_shape: tuple[int, int, int], stride: int, model: str) -> None:
    """Reject images smaller than the network's total downsampling."""
    h, w = image_shape[:2]
    if h < stride or w < stride:
        raise LensnetError(
            f"model {model!r} downsamples by {stride}, so input_shape {tuple(image_shape)} is too "
            f"small: height and width must be at least {stride}"
        )


def check_lengths(model: str, **lists: Sequence[Any]) -> int:
    """All per-stage lists must have one entry per stage."""
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        listed = ", ".join(f"{k} ({n})" for k, n in lengths.items())
        raise LensnetError(f"model {model!r}: per-stage options need the same non-zero length: {listed}")
    return next(iter(lengths.values()))


def check_heads(model: str, dim: int, heads: int, what: str = "hidden_dim") -> None:
    if heads < 1 or dim % heads:
        raise LensnetError(f"model {model!r}: {what} {dim} must be divisible by num_heads {heads}")


# Index tensors that keras-hub layers compute eagerly at construction time.
_EAGER_INDEX_ATTRS = ("position_ids", "relative_position_index")


def freeze_index_tensors(model: keras.Layer) -> keras.Layer:
    """Turn keras-hub's eagerly built index tensors into numpy arrays.

    keras-hub's ViT patch embedding (`position_ids`) and Swin window attention
    (`relative_position_index`) keep integer index tensors created eagerly at
    construction. A `tf.function` captures such tensors as extra graph inputs,
    which `model.export(format="onnx")` (tf2onnx) then leaves as dangling,
    unfed ONNX inputs. As numpy arrays they are traced as constants instead.
    Values are unchanged and they are not weights, so saving is unaffected.
    """
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for attr in _EAGER_INDEX_ATTRS:
            value = layer.__dict__.get(attr)
            if value is not None and hasattr(value, "numpy"):
                object.__setattr__(layer, attr, np.asarray(value.numpy()))
    return model
