"""Transfer from pretrained weights saved locally (`--set model.weights=PATH`; nothing is downloaded).

PATH is a `.weights.h5` file (Keras `save_weights` of a backbone) or a keras-hub preset directory
(`config.json` + `model.weights.h5`, as `save_to_preset` writes it, e.g. a ViT backbone's preset).
The weights are matched by their place in the model (the variable paths Keras writes in the
`.weights.h5` file): a preset's backbone is the keras-hub model inside a lensnet backbone, so its
paths are the lensnet paths without their first component. A file whose variables do not match
the model's ("weights for another architecture") is a one-line error.

Shapes that depend on the input are adapted, every other shape must match:
- input channels (a convolution kernel (kh, kw, C_in, C_out) whose C_in differs): to 1 channel the
  kernel is summed over its input channels (a grey image seen as C identical channels gives the same
  response); to C channels from another count, the channels are repeated cyclically and scaled by
  C_src / C (timm's rule), so an image of C identical channels gives the same response (exactly when
  C is a multiple of C_src, on average otherwise; 1 -> 3 channels divides the kernel by 3);
- position embeddings (a ViT `position_embedding` (N, D), a DeiT (1, N, D) weight) whose token count
  differs (another image or patch grid):
  the prefix (class/distillation) tokens are kept and the patch tokens' square grid is resized
  bilinearly to the model's patch grid (as timm and keras-hub do for ViT fine-tuning).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

PRESET_WEIGHTS = "model.weights.h5"


def _datasets(path: str | os.PathLike) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _resolve(path: str | os.PathLike, name: str) -> Path:
    where = Path(os.fspath(path))
    if where.is_dir():
        if not (where / "config.json").is_file() or not (where / PRESET_WEIGHTS).is_file():
            raise LensnetError(f"weights for model {name!r}: {where} is not a keras-hub preset directory "
                               f"(config.json and {PRESET_WEIGHTS})")
        return where / PRESET_WEIGHTS
    if not where.is_file():
        raise LensnetError(f"weights for model {name!r} must be a local .weights.h5 file or keras-hub preset "
                           f"directory (nothing is downloaded); not found: {where}")
    return where


def adapt_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A conv kernel (kh, kw, C_src, C_out) for `channels` input channels (rule in the module doc)."""
    source = kernel.shape[2]
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = np.resize(np.arange(source), channels)
    return kernel[:, :, repeats, :] * (source / channels)


def interpolate_positions(table: np.ndarray, tokens: int, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """A position table (..., N_src, D) resized to `tokens` = prefix + grid[0] * grid[1] positions."""
    import tensorflow as tf

    lead = table.shape[:-2]
    table2 = table.reshape(table.shape[-2], table.shape[-1])
    n = table2.shape[0] - prefix
    side = math.isqrt(max(n, 0))
    if side * side != n or grid[0] * grid[1] + prefix != tokens:
        raise LensnetError(f"cannot interpolate {table2.shape[0]} position embeddings ({prefix} prefix + a "
                           f"non-square grid) to {tokens}")
    patches = table2[prefix:].reshape(1, side, side, -1)
    resized = tf.image.resize(patches, grid, method="bilinear").numpy().reshape(grid[0] * grid[1], -1)
    out = np.concatenate([table2[:prefix], resized.astype(table.dtype)], axis=0)
    return out.reshape(*lead, tokens, table.shape[-1])


def _adapt(key: str, source: np.ndarray, target: np.ndarray, prefix: int, grid: tuple[int, int] | None,
           name: str, path: Path) -> np.ndarray:
    if source.shape == target.shape:
        return source
    if source.ndim == 4 and target.ndim == 4 and source.shape[:2] + source.shape[3:] == target.shape[:2] + \
            target.shape[3:]:
        return adapt_channels(source, target.shape[2])
    # a position table: a named (N, D) embedding (ViT) or an unnamed (1, N, D) weight (DeiT)
    table = (source.ndim == 2 and "position" in key) or (source.ndim == 3 and source.shape[0] == 1)
    if table and source.ndim == target.ndim and source.shape[-1] == target.shape[-1] and grid is not None:
        return interpolate_positions(source, target.shape[-2], prefix, grid)
    raise LensnetError(f"weights {path} are for another architecture than model {name!r}: {key} has shape "
                       f"{tuple(source.shape)}, the model {tuple(target.shape)}")


def load_pretrained(model: Any, name: str, weights: str | os.PathLike) -> None:
    """Load the local weights at `weights` into the backbone `model`, adapting channels and positions."""
    path = _resolve(weights, name)
    try:
        source = _datasets(path)
    except OSError as exc:
        raise LensnetError(f"cannot read weights {path}: {' '.join(str(exc).split())[:200]}") from None
    with tempfile.TemporaryDirectory(prefix="lensnet-weights-") as tmp:
        mine = os.path.join(tmp, "model.weights.h5")
        model.save_weights(mine)
        target = _datasets(mine)
        prefix_path = _common_root(source, target)
        if prefix_path is None:
            raise LensnetError(f"weights {path} are for another architecture than model {name!r}: their "
                               f"{len(source)} variables do not match the model's {len(target)}")
        grid = tuple(getattr(model, "patch_grid", ())) or None
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        import h5py

        with h5py.File(mine, "r+") as handle:
            for key, array in source.items():
                full = prefix_path + key
                value = _adapt(key, array, target[full], prefix, grid, name, path)
                del handle[full]
                handle[full] = value.astype(target[full].dtype)
        try:
            model.load_weights(mine)
        except (ValueError, OSError) as exc:
            raise LensnetError(f"cannot load weights {path} into model {name!r}: "
                               f"{' '.join(str(exc).split())[:300]}") from None


def _common_root(source: dict, target: dict) -> str | None:
    """The path prefix under which the source's variables are exactly (a subtree of) the target's."""
    if set(source) == set(target):
        return ""
    first = next(iter(target), "")
    parts = first.split("/")
    for i in range(1, len(parts)):
        root = "/".join(parts[:i]) + "/"
        under = {k[len(root):] for k in target if k.startswith(root)}
        if under and under == set(source):
            return root
    return None
