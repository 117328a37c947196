"""Base class of every lensnet backbone."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="lensnet")
class Backbone(keras.Model):
    """A functional model from images (H, W, C) to pooled features (batch, D).

    Subclasses build their graph in `__init__` and call
    `super().__init__(inputs=..., outputs=..., dtype=dtype, name=name)`, keras-hub
    style. They store every constructor argument and return it from
    `get_config()`, so `from_config` rebuilds the exact same graph (and a saved
    `.keras` file reloads under `safe_mode=True`) without serialising the graph
    itself or the internals of any wrapped keras-hub backbone.
    """

    def __init__(self, *args: Any, dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

    @property
    def feature_dim(self) -> int:
        """D, the length of the feature vector."""
        return int(self.output.shape[-1])

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
