"""RCAN-lite (Zhang et al. 2018): residual groups of residual channel-attention blocks, pixel-shuffle upsampling.

Channel attention re-weights feature channels by a gate computed from their global average (a
squeeze-and-excitation block without batch norm). RCAN proper has 10 groups of 20 blocks at 64
filters (~16M parameters); the lite default is 3 groups of 4 blocks at 32 filters for CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.models.backbone import image_input
from lensnet.models.edsr import conv
from lensnet.models.registry import register_model
from lensnet.models.upsampling import SuperResolutionModel, check_residual, check_scale, reconstruct


def channel_attention(x: Any, filters: int, reduction: int, dtype: Any, name: str) -> Any:
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True, dtype=dtype, name=f"{name}_squeeze")(x)
    gate = keras.layers.Conv2D(max(1, filters // reduction), 1, activation="relu", dtype=dtype,
                               name=f"{name}_down")(gate)
    gate = keras.layers.Conv2D(filters, 1, activation="sigmoid", dtype=dtype, name=f"{name}_up")(gate)
    return keras.layers.Multiply(dtype=dtype, name=f"{name}_scale")([x, gate])


@keras.saving.register_keras_serializable(package="lensnet")
class RCAN(SuperResolutionModel):
    """head conv -> groups of (blocks of conv-ReLU-conv-channel attention + skip, conv, + skip) -> conv,
    + head -> upsampler -> conv.

    Args:
        image_shape: (height, width, channels) of the low-resolution input.
        scale: upsampling factor (2, 3, 4 or 8).
        filters: width of every convolution.
        num_groups: residual groups.
        num_blocks: residual channel-attention blocks per group.
        reduction: channel reduction inside the attention gate.
        residual: "bicubic" adds the bicubic upsampling of the input to the output; None: as published.
        name: model name.
        dtype: dtype policy.
    """

    def __init__(self, image_shape: Sequence[int], scale: int = 2, filters: int = 32, num_groups: int = 3,
                 num_blocks: int = 4, reduction: int = 8, residual: str | None = "bicubic", name: str = "rcan",
                 dtype: Any = None, **kwargs: Any) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        scale = check_scale(scale, name)
        residual = check_residual(residual, name)
        if min(filters, num_groups, num_blocks, reduction) < 1:
            raise ValueError("filters, num_groups, num_blocks and reduction must be positive")

        # === Functional model ===
        inputs = image_input(image_shape)
        head = conv(inputs, filters, dtype, "head")
        x = head
        for g in range(num_groups):
            group_in = x
            for b in range(num_blocks):
                name_ = f"group{g}_block{b}"
                y = conv(x, filters, dtype, f"{name_}_conv0", activation="relu")
                y = conv(y, filters, dtype, f"{name_}_conv1")
                y = channel_attention(y, filters, reduction, dtype, f"{name_}_ca")
                x = keras.layers.Add(dtype=dtype, name=f"{name_}_add")([x, y])
            x = conv(x, filters, dtype, f"group{g}_conv")
            x = keras.layers.Add(dtype=dtype, name=f"group{g}_add")([x, group_in])
        x = conv(x, filters, dtype, "body_conv")
        x = keras.layers.Add(dtype=dtype, name="global_skip")([x, head])
        outputs = reconstruct(x, inputs, image_shape, scale, filters, residual, dtype)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, scale=scale, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.filters = int(filters)
        self.num_groups = int(num_groups)
        self.num_blocks = int(num_blocks)
        self.reduction = int(reduction)
        self.residual = residual

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "image_shape": list(self.image_shape), "filters": self.filters,
                "num_groups": self.num_groups, "num_blocks": self.num_blocks, "reduction": self.reduction,
                "residual": self.residual}


@register_model("rcan", family="rcan", kind="super_resolution",
                description="RCAN-lite (3 groups x 4 channel-attention blocks, 32 filters, pixel shuffle)",
                defaults={"scale": 2, "filters": 32, "num_groups": 3, "num_blocks": 4, "reduction": 8,
                          "residual": "bicubic"})
def rcan(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return RCAN(input_shape, name="rcan", **kwargs)
