"""Pooling as a shared head: backbone features (map or tokens) -> one vector per image.

Backbones return features, not vectors (see `lensnet.models.backbone.Backbone`);
a task that wants a vector calls

    pooled = pool_features(backbone, backbone(inputs))          # (batch, D)

which pools with the backbone's `default_pooling`, or with an explicit `mode`:

- `"avg"` / `"max"`: mean / max over the spatial positions (the map's h x w, or
  the patch tokens of a token sequence; prefix tokens are left out);
- `"cls"`: the first prefix token (ViT's class token, DeiT's class token);
- `"prefix_mean"`: the mean of the prefix tokens (DeiT's class and
  distillation tokens, as DeiT does at inference);
- `"tokens_avg"`: the mean of the patch tokens (the same as `"avg"`, named for
  token backbones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lensnet.core.errors import LensnetError

POOLING_MODES = ("avg", "max", "cls", "prefix_mean", "tokens_avg")


def valid_modes(feature_kind: str, num_prefix_tokens: int = 0) -> tuple[str, ...]:
    """The pooling modes that make sense for features of this kind."""
    if feature_kind == "map":
        return ("avg", "max")
    if num_prefix_tokens < 1:
        return ("avg", "max", "tokens_avg")
    return POOLING_MODES


@keras.saving.register_keras_serializable(package="lensnet")
class FeaturePooling(keras.layers.Layer):
    """Pools a feature map (batch, h, w, C) or tokens (batch, N, D) into (batch, D).

    Args:
        mode: one of `POOLING_MODES` (see the module doc).
        num_prefix_tokens: class/distillation tokens at the front of a token
            sequence; ignored for maps.
    """

    def __init__(self, mode: str = "avg", num_prefix_tokens: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
        if mode in ("cls", "prefix_mean") and num_prefix_tokens < 1:
            raise ValueError(f"pooling mode {mode!r} needs at least one prefix (class) token")
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, inputs: Any) -> Any:
        # Static slices and reductions only: no Python logic on the batch dimension,
        # so the layer traces with batch None and exports to ONNX as Slice + Reduce*.
        if len(inputs.shape) == 4:
            if self.mode not in ("avg", "max"):
                raise ValueError(f"pooling mode {self.mode!r} needs tokens, got a feature map")
            positions, axis = inputs, (1, 2)
        elif self.mode == "cls":
            return inputs[:, 0, :]
        elif self.mode == "prefix_mean":
            return ops.mean(inputs[:, : self.num_prefix_tokens, :], axis=1)
        else:
            positions, axis = inputs[:, self.num_prefix_tokens :, :], 1
        if self.mode == "max":
            return ops.max(positions, axis=axis)
        return ops.mean(positions, axis=axis)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config


def pool_features(backbone: keras.Model, features: Any, mode: str | None = None, name: str | None = None) -> Any:
    """`backbone(inputs)` -> (batch, D) float32, pooled with `mode` or the backbone's `default_pooling`.

    Works on symbolic tensors (building a functional task model) and on eager
    ones. A model without lensnet's metadata is read from the rank of its
    features: 4 is a map, 3 tokens without prefix tokens, 2 already pooled (returned
    as is when no mode is asked for).
    """
    rank = len(features.shape)
    kind = getattr(backbone, "feature_kind", None) or {4: "map", 3: "tokens"}.get(rank)
    if kind is None:
        if mode is None and rank == 2:
            return features
        raise LensnetError(f"cannot pool features of shape {tuple(features.shape)} from model {backbone.name!r}")
    if rank != (4 if kind == "map" else 3):
        raise LensnetError(
            f"model {backbone.name!r} gives {kind} features, but pool_features got shape {tuple(features.shape)}"
        )
    prefix = int(getattr(backbone, "num_prefix_tokens", 0)) if kind == "tokens" else 0
    mode = mode or getattr(backbone, "default_pooling", None) or "avg"
    allowed = valid_modes(kind, prefix)
    if mode not in allowed:
        raise LensnetError(
            f"pooling {mode!r} does not apply to model {backbone.name!r} ({kind} features, {prefix} prefix "
            f"token(s)); valid: {', '.join(allowed)}"
        )
    # float32 whatever the global policy: pooled features keep the backbone's float32 output.
    return FeaturePooling(mode, num_prefix_tokens=prefix, dtype="float32", name=name)(features)
