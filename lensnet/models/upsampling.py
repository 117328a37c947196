"""What every super-resolution model shares: the base class, pixel shuffle, the upsampler, bicubic.

A super-resolution model (registry kind "super_resolution") maps float32 images (H, W, C), normalised
by the task, to images (scale*H, scale*W, C) in the same normalised units. Like a Backbone it is a
functional model built in `__init__` from its constructor arguments, all stored and returned by
`get_config()`, so `from_config` rebuilds the same graph and a `.keras` file reloads under
safe_mode. The upsampler is EDSR's: a convolution to C*r^2 channels, then a pixel shuffle
(`depth_to_space`, Shi et al. 2016) per factor r of the scale (x4 = two x2 steps); it exports to
ONNX as DepthToSpace.

`residual="bicubic"` (every trained family) adds the bicubic upsampling of the input to the network's
output, so the network learns the detail bicubic misses and starts from the bicubic baseline; that
speeds up short CPU runs and is stated beside every figure (SwinIR and EDSR learn the full image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.core.errors import LensnetError

SCALES = (2, 3, 4, 8)
RESIDUALS = ("bicubic", None)


def check_scale(scale: Any, model: str) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise LensnetError(f"model {model!r}: scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    return scale


def check_residual(residual: Any, model: str) -> str | None:
    if residual not in RESIDUALS:
        raise LensnetError(f"model {model!r}: residual must be 'bicubic' or null, got {residual!r}")
    return residual


def scale_steps(scale: int) -> list[int]:
    """Pixel-shuffle factors whose product is `scale` (x4 = x2, x2; x8 = x2, x2, x2)."""
    steps, rest = [], scale
    for factor in (2, 3):
        while rest % factor == 0:
            steps.append(factor)
            rest //= factor
    return steps


@keras.saving.register_keras_serializable(package="lensnet")
class PixelShuffle(keras.layers.Layer):
    """(N, H, W, C*r^2) -> (N, r*H, r*W, C): sub-pixel convolution's rearrangement (tf depth_to_space)."""

    def __init__(self, factor: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        return tf.nn.depth_to_space(inputs, self.factor)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple:
        n, h, w, c = input_shape
        r = self.factor
        return (n, None if h is None else h * r, None if w is None else w * r, c // (r * r))

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


def upsampler(x: Any, scale: int, filters: int, dtype: Any, name: str = "upsample") -> Any:
    """conv(filters * r^2) -> pixel shuffle(r), for each factor r of `scale`."""
    for i, r in enumerate(scale_steps(scale)):
        x = keras.layers.Conv2D(filters * r * r, 3, padding="same", dtype=dtype, name=f"{name}{i}_conv")(x)
        x = PixelShuffle(r, dtype=dtype, name=f"{name}{i}_shuffle")(x)
    return x


def bicubic(x: Any, image_shape: Sequence[int], scale: int, dtype: Any, name: str = "bicubic") -> Any:
    """Bicubic upsampling by `scale` (TF ResizeBicubic, half-pixel centres, Keys a = -0.5)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    return keras.layers.Resizing(h * scale, w * scale, interpolation="bicubic", dtype=dtype, name=name)(x)


@keras.saving.register_keras_serializable(package="lensnet")
class SuperResolutionModel(keras.Model):
    """Base class of super-resolution models: images (H, W, C) -> (scale*H, scale*W, C).

    Subclasses build their graph, call `super().__init__(inputs=..., outputs=..., scale=...)` and store
    every constructor argument for `get_config`.
    """

    def __init__(self, *args: Any, scale: int = 2, dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)
        self.scale = int(scale)
        (h, w, c), (oh, ow, oc) = self.input.shape[1:], self.output.shape[1:]
        if (oh, ow, oc) != (h * self.scale, w * self.scale, c):
            raise ValueError(f"a x{self.scale} model cannot map {(h, w, c)} to {(oh, ow, oc)}")

    def feature_info(self) -> dict[str, Any]:
        """What `python -m lensnet.models --input-shape` prints beside the parameter count."""
        return {"feature_kind": "image", "feature_shape": [None, *(int(d) for d in self.output.shape[1:])],
                "scale": self.scale}

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy), "scale": self.scale}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SuperResolutionModel:
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def output_conv(x: Any, channels: int, dtype: Any, residual: str | None, name: str = "output_conv") -> Any:
    """The last 3x3 convolution back to the image's channels. On top of a bicubic residual it starts at
    zero, so an untrained model IS bicubic and training moves it away only where that lowers the loss."""
    initializer = "zeros" if residual == "bicubic" else "glorot_uniform"
    return keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=initializer, dtype=dtype, name=name)(x)


def add_residual(x: Any, inputs: Any, residual: str | None, image_shape: Sequence[int], scale: int,
                 dtype: Any) -> Any:
    if residual == "bicubic":
        x = keras.layers.Add(dtype=dtype, name="plus_bicubic")([x, bicubic(inputs, image_shape, scale, dtype)])
    return keras.layers.Activation("linear", dtype="float32", name="sr_image")(x)


def reconstruct(x: Any, inputs: Any, image_shape: Sequence[int], scale: int, filters: int, residual: str | None,
                dtype: Any) -> Any:
    """The common tail of every trained family: upsampler -> conv to the image's channels (+ bicubic)."""
    x = output_conv(upsampler(x, scale, filters, dtype), image_shape[-1], dtype, residual)
    return add_residual(x, inputs, residual, image_shape, scale, dtype)
