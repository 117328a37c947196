"""Bicubic upsampling as a registry model: no weights, the baseline every super-resolution table starts from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.models.backbone import image_input
from lensnet.models.registry import register_model
from lensnet.models.upsampling import SuperResolutionModel, bicubic, check_scale


@keras.saving.register_keras_serializable(package="lensnet")
class Bicubic(SuperResolutionModel):
    """images (H, W, C) -> bicubic upsampling (scale*H, scale*W, C); no weights at all.

    Args:
        image_shape: (height, width, channels) of the low-resolution input.
        scale: upsampling factor (2, 3, 4 or 8).
        name: model name.
        dtype: dtype policy.
    """

    def __init__(self, image_shape: Sequence[int], scale: int = 2, name: str = "bicubic", dtype: Any = None,
                 **kwargs: Any) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        scale = check_scale(scale, name)
        inputs = image_input(image_shape)
        outputs = keras.layers.Activation("linear", dtype="float32", name="sr_image")(
            bicubic(inputs, image_shape, scale, dtype))
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, scale=scale, **kwargs)
        self.image_shape = image_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "image_shape": list(self.image_shape)}


@register_model("bicubic", family="bicubic", kind="super_resolution",
                description="bicubic upsampling (no weights): the super-resolution baseline", defaults={"scale": 2})
def bicubic_model(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return Bicubic(input_shape, name="bicubic", **kwargs)
