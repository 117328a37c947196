"""EDSR (Lim et al. 2017): residual blocks without batch normalisation, a global skip, pixel-shuffle upsampling.

Batch norm is left out because it normalises away the absolute contrast super-resolution must keep;
residual scaling (`res_scale`, 0.1 in EDSR's wide model) keeps deep stacks stable instead. The
default here is EDSR-baseline shrunk for CPU (32 filters, 8 blocks, ~0.2M parameters at x2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.models.backbone import image_input
from lensnet.models.registry import register_model
from lensnet.models.upsampling import SuperResolutionModel, check_residual, check_scale, reconstruct


def conv(x: Any, filters: int, dtype: Any, name: str, activation: str | None = None) -> Any:
    return keras.layers.Conv2D(filters, 3, padding="same", activation=activation, dtype=dtype, name=name)(x)


@keras.saving.register_keras_serializable(package="lensnet")
class EDSR(SuperResolutionModel):
    """head conv -> `num_blocks` x (conv-ReLU-conv, x res_scale, + skip) -> conv, + head -> upsampler -> conv.

    Args:
        image_shape: (height, width, channels) of the low-resolution input.
        scale: upsampling factor (2, 3, 4 or 8).
        filters: width of every convolution.
        num_blocks: residual blocks.
        res_scale: factor on each block's residual branch.
        residual: "bicubic" adds the bicubic upsampling of the input to the output; None: EDSR as published.
        name: model name.
        dtype: dtype policy.
    """

    def __init__(self, image_shape: Sequence[int], scale: int = 2, filters: int = 32, num_blocks: int = 8,
                 res_scale: float = 1.0, residual: str | None = "bicubic", name: str = "edsr", dtype: Any = None,
                 **kwargs: Any) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        scale = check_scale(scale, name)
        residual = check_residual(residual, name)
        if filters < 1 or num_blocks < 1:
            raise ValueError("filters and num_blocks must be positive")

        # === Functional model ===
        inputs = image_input(image_shape)
        head = conv(inputs, filters, dtype, "head")
        x = head
        for b in range(num_blocks):
            y = conv(x, filters, dtype, f"block{b}_conv0", activation="relu")
            y = conv(y, filters, dtype, f"block{b}_conv1")
            if res_scale != 1.0:
                y = keras.layers.Rescaling(float(res_scale), dtype=dtype, name=f"block{b}_scale")(y)
            x = keras.layers.Add(dtype=dtype, name=f"block{b}_add")([x, y])
        x = conv(x, filters, dtype, "body_conv")
        x = keras.layers.Add(dtype=dtype, name="global_skip")([x, head])
        outputs = reconstruct(x, inputs, image_shape, scale, filters, residual, dtype)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, scale=scale, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.filters = int(filters)
        self.num_blocks = int(num_blocks)
        self.res_scale = float(res_scale)
        self.residual = residual

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "image_shape": list(self.image_shape), "filters": self.filters,
                "num_blocks": self.num_blocks, "res_scale": self.res_scale, "residual": self.residual}


@register_model("edsr", family="edsr", kind="super_resolution",
                description="EDSR-baseline for CPU (32 filters, 8 res blocks without BN, pixel shuffle)",
                defaults={"scale": 2, "filters": 32, "num_blocks": 8, "res_scale": 1.0, "residual": "bicubic"})
def edsr(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return EDSR(input_shape, name="edsr", **kwargs)
