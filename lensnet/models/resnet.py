"""ResNet (v1, basic blocks): ResNet-18 is the DeepLense baseline.

A faithful functional re-implementation rather than keras-hub's ResNetBackbone,
because keras-hub pins the first stage to 64 filters, which rules out the
narrow variants the tests and quick CPU runs need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import check_lengths, check_min_size
from lensnet.models.registry import register_model

STEMS = ("imagenet", "cifar")


def _conv_bn(
    x: Any, filters: int, kernel: int, stride: int, name: str, dtype: Any, momentum: float, relu: bool = True
) -> Any:
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        dtype=dtype,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=momentum, dtype=dtype, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.Activation("relu", dtype=dtype, name=f"{name}_relu")(x)
    return x


def _basic_block(x: Any, filters: int, stride: int, name: str, dtype: Any, momentum: float) -> Any:
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_0", dtype, momentum, relu=False)
    x = _conv_bn(x, filters, 3, stride, f"{name}_1", dtype, momentum)
    x = _conv_bn(x, filters, 3, 1, f"{name}_2", dtype, momentum, relu=False)
    x = keras.layers.Add(dtype=dtype, name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", dtype=dtype, name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="lensnet")
class ResNetBackbone(Backbone):
    """ResNet v1 with basic blocks; returns the last stage's feature map
    (batch, h, w, stage_filters[-1]), every stage's output in `pyramid_outputs`
    ("stage0", ...), and pools by `"avg"` by default.

    Args:
        image_shape: (height, width, channels) of the input images.
        stage_filters: filters of each stage.
        stage_blocks: basic blocks per stage ([2, 2, 2, 2] is ResNet-18,
            [3, 4, 6, 3] ResNet-34). The first stage keeps the resolution, each
            later one halves it.
        stem: `"imagenet"` (7x7 stride-2 conv + 3x3 stride-2 max pool, as in
            torchvision and the DeepLense baseline) or `"cifar"` (one 3x3 stride-1
            conv, no pool: 16x more compute, keeps detail on small cutouts).
        stem_filters: filters of the stem convolution.
        bn_momentum: momentum of every BatchNormalization's moving statistics
            (0.9, as PyTorch's 0.1: see lensnet issue 8).
        name: model name.
        dtype: dtype policy of the layers.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        stage_filters: Sequence[int] = (64, 128, 256, 512),
        stage_blocks: Sequence[int] = (2, 2, 2, 2),
        stem: str = "imagenet",
        stem_filters: int = 64,
        bn_momentum: float = 0.9,
        name: str = "resnet",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        stage_filters = tuple(int(f) for f in stage_filters)
        stage_blocks = tuple(int(b) for b in stage_blocks)
        num_stages = check_lengths(name, stage_filters=stage_filters, stage_blocks=stage_blocks)
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if min(stage_filters) < 1 or min(stage_blocks) < 1 or stem_filters < 1:
            raise ValueError("stage_filters, stage_blocks and stem_filters must be positive")
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
        stem_stride = 4 if stem == "imagenet" else 1
        check_min_size(image_shape, stem_stride * 2 ** (num_stages - 1), name)

        # === Functional model ===
        inputs = image_input(image_shape)
        if stem == "imagenet":
            x = _conv_bn(inputs, stem_filters, 7, 2, "stem", dtype, bn_momentum)
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", dtype=dtype, name="stem_pool")(x)
        else:
            x = _conv_bn(inputs, stem_filters, 3, 1, "stem", dtype, bn_momentum)
        pyramid = {}
        for s, (filters, blocks) in enumerate(zip(stage_filters, stage_blocks)):
            for b in range(blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                x = _basic_block(x, filters, stride, f"stage{s}_block{b}", dtype, bn_momentum)
            pyramid[f"stage{s}"] = x
        outputs = float32_features(x)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name,
            dtype=dtype,
            feature_kind="map",
            default_pooling="avg",
            pyramid_outputs=pyramid,
            **kwargs,
        )

        # === Config ===
        self.image_shape = image_shape
        self.stage_filters = stage_filters
        self.stage_blocks = stage_blocks
        self.stem = stem
        self.stem_filters = stem_filters
        self.bn_momentum = bn_momentum

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "image_shape": list(self.image_shape),
                "stage_filters": list(self.stage_filters),
                "stage_blocks": list(self.stage_blocks),
                "stem": self.stem,
                "stem_filters": self.stem_filters,
                "bn_momentum": self.bn_momentum,
            }
        )
        return config


_RESNET_DEFAULTS = {
    "stage_filters": [64, 128, 256, 512],
    "stem": "imagenet",
    "stem_filters": 64,
    "bn_momentum": 0.9,
}


@register_model(
    "resnet18",
    family="resnet",
    description="ResNet-18 (basic blocks [2,2,2,2], ~11.2M params): the DeepLense baseline",
    defaults={**_RESNET_DEFAULTS, "stage_blocks": [2, 2, 2, 2]},
)
def resnet18(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return ResNetBackbone(input_shape, name="resnet18", **kwargs)


@register_model(
    "resnet34",
    family="resnet",
    description="ResNet-34 (basic blocks [3,4,6,3], ~21.3M params)",
    defaults={**_RESNET_DEFAULTS, "stage_blocks": [3, 4, 6, 3]},
)
def resnet34(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return ResNetBackbone(input_shape, name="resnet34", **kwargs)
