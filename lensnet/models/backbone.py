"""Base class of every lensnet backbone: images in, features (not a pooled vector) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

FEATURE_KINDS = ("map", "tokens")


@keras.saving.register_keras_serializable(package="lensnet")
class Backbone(keras.Model):
    """A functional model from images (H, W, C) to features, keras-hub style.

    The features are either a feature map `(batch, h, w, C)` (CNNs, Swin's last
    stage) or a token sequence `(batch, N, D)` (ViT, DeiT), always float32. Tasks
    pool them with `lensnet.models.pooling.pool_features`, or use them whole
    (decoders, Grad-CAM, separate class/distillation heads).

    Metadata a task needs, set by each family through `super().__init__`:
        feature_kind: `"map"` or `"tokens"`.
        num_prefix_tokens: class/distillation tokens at the front of the
            sequence (0 for maps and for token models without them).
        patch_grid: (h, w) of the patch tokens, or of the map.
        feature_dim: C or D, the last axis of the features.
        pyramid_outputs: dict stage name -> tensor of the backbone's graph, for
            families that build their stages themselves (empty otherwise); as in
            keras-hub, `keras.Model(backbone.inputs, backbone.pyramid_outputs)`
            extracts them.
        default_pooling: the `pool_features` mode used when a task names none.

    Subclasses build their graph in `__init__` and store every constructor
    argument, returning it from `get_config()`, so `from_config` rebuilds the
    exact same graph (and a saved `.keras` file reloads under `safe_mode=True`)
    without serialising the graph itself or the internals of any wrapped
    keras-hub backbone. The metadata follows from the constructor arguments, so
    only those of them that are arguments (such as a family's `pooling`) are in
    the config.
    """

    def __init__(
        self,
        *args: Any,
        feature_kind: str = "map",
        num_prefix_tokens: int = 0,
        patch_grid: Sequence[int] | None = None,
        default_pooling: str = "avg",
        pyramid_outputs: Mapping[str, Any] | None = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        # A frozen backbone reloaded from its config: built trainable, then frozen. Keras builds the
        # layers of a model constructed with trainable=False with variables still flagged trainable,
        # which a parent model's `trainable_variables` then picks up (a resumed linear probe would
        # train its backbone, and its optimizer state would not match).
        trainable = bool(kwargs.pop("trainable", True))
        super().__init__(*args, **kwargs)
        if not trainable:
            self.trainable = False
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)
        if feature_kind not in FEATURE_KINDS:
            raise ValueError(f"feature_kind must be one of {FEATURE_KINDS}, got {feature_kind!r}")
        shape = tuple(self.output.shape)
        if len(shape) != (4 if feature_kind == "map" else 3):
            raise ValueError(f"a {feature_kind!r} backbone cannot output shape {shape}")
        if feature_kind == "map":
            num_prefix_tokens = 0
            patch_grid = shape[1:3]
        elif patch_grid is None:
            raise ValueError("a token backbone must give its patch_grid")
        self.feature_kind = feature_kind
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.patch_grid = tuple(int(d) for d in patch_grid)
        if feature_kind == "tokens" and self.num_prefix_tokens + self.patch_grid[0] * self.patch_grid[1] != shape[1]:
            raise ValueError(
                f"{self.num_prefix_tokens} prefix tokens + a {self.patch_grid} patch grid do not make {shape[1]} tokens"
            )
        self.default_pooling = default_pooling
        self.pyramid_outputs = dict(pyramid_outputs or {})

    @property
    def feature_dim(self) -> int:
        """C or D, the length of each feature vector."""
        return int(self.output.shape[-1])

    def feature_info(self) -> dict[str, Any]:
        """The metadata as plain values (for listings, run records and tests)."""
        return {
            "feature_kind": self.feature_kind,
            "feature_shape": [None if d is None else int(d) for d in self.output.shape],
            "feature_dim": self.feature_dim,
            "num_prefix_tokens": self.num_prefix_tokens,
            "patch_grid": list(self.patch_grid),
            "default_pooling": self.default_pooling,
            "pyramid_outputs": sorted(self.pyramid_outputs),
        }

    def get_config(self) -> dict[str, Any]:
        # Not chained to keras.Model: a functional model's config is its graph,
        # which is not what the constructor takes.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Backbone:
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def image_input(image_shape: tuple[int, int, int]) -> keras.KerasTensor:
    # Always float32: the data pipeline feeds float32 and mixed precision casts
    # inside the first layer, which keeps the exported signature float32.
    return keras.Input(shape=tuple(image_shape), dtype="float32", name="images")


def float32_features(x: keras.KerasTensor) -> keras.KerasTensor:
    """Final identity layer pinned to float32 so features are float32 under mixed precision."""
    return keras.layers.Activation("linear", dtype="float32", name="features")(x)


def find_backbone(model: keras.Layer) -> Backbone | None:
    """The (first) registry backbone inside a task model or an inference network, at any depth."""
    if isinstance(model, Backbone):
        return model
    for attr in ("network", "layers"):
        children = getattr(model, attr, None)
        if children is None:
            continue
        for child in children if isinstance(children, (list, tuple)) else [children]:
            found = find_backbone(child)
            if found is not None:
                return found
    return None
