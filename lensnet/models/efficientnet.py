"""EfficientNetV2 on keras-hub's EfficientNetBackbone.

The per-stage arguments below reproduce keras.applications' EfficientNetV2-B0/S
layer for layer (same weight shapes and parameter counts): keras-hub's "fused"
block always adds a 1x1 projection, so a first stage with expand ratio 1 must be
its "cba" (conv-BN-act) block to match the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import keras_hub

from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import check_lengths, check_min_size
from lensnet.models.registry import register_model

BLOCK_TYPES = ("cba", "fused", "unfused")


def _ratio(value: float) -> int:
    # keras-hub multiplies filters by the ratio and hands the product to Conv2D.
    if not float(value).is_integer() or value < 1:
        raise ValueError(f"stackwise_expansion_ratios must be whole numbers >= 1, got {value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="lensnet")
class EfficientNetV2Backbone(Backbone):
    """EfficientNetV2 feature extractor: keras-hub EfficientNetBackbone's final feature map
    (batch, h, w, num_features x width), pooled by `"avg"` by default.

    No rescaling or ImageNet normalisation inside: the data pipeline normalises.
    Any channel count works since weights are never pretrained here.

    Args:
        image_shape: (height, width, channels) of the input images.
        stackwise_kernel_sizes, stackwise_num_repeats, stackwise_input_filters,
        stackwise_output_filters, stackwise_expansion_ratios,
        stackwise_squeeze_and_excite_ratios, stackwise_strides,
        stackwise_block_types: one entry per stage, as in keras-hub.
        width_coefficient: scales every filter count (rounded to multiples of 8).
        depth_coefficient: scales every stage's repeats (rounded up).
        num_features: filters of the final 1x1 conv, i.e. D before width scaling.
        drop_connect_rate: stochastic-depth rate, growing linearly to this value
            over the blocks (keras-hub calls it `dropout`).
        activation: activation of every block.
        batch_norm_momentum, batch_norm_epsilon: of every BatchNormalization
            (keras-hub's names; this family's counterpart of the others' `bn_momentum`).
        name: model name.
        dtype: dtype policy.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        stackwise_kernel_sizes: Sequence[int],
        stackwise_num_repeats: Sequence[int],
        stackwise_input_filters: Sequence[int],
        stackwise_output_filters: Sequence[int],
        stackwise_expansion_ratios: Sequence[float],
        stackwise_squeeze_and_excite_ratios: Sequence[float],
        stackwise_strides: Sequence[int],
        stackwise_block_types: Sequence[str],
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        num_features: int = 1280,
        drop_connect_rate: float = 0.2,
        activation: str = "swish",
        batch_norm_momentum: float = 0.9,
        batch_norm_epsilon: float = 1e-3,
        name: str = "efficientnetv2",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        stages = {
            "stackwise_kernel_sizes": [int(v) for v in stackwise_kernel_sizes],
            "stackwise_num_repeats": [int(v) for v in stackwise_num_repeats],
            "stackwise_input_filters": [int(v) for v in stackwise_input_filters],
            "stackwise_output_filters": [int(v) for v in stackwise_output_filters],
            "stackwise_expansion_ratios": [_ratio(v) for v in stackwise_expansion_ratios],
            "stackwise_squeeze_and_excite_ratios": [float(v) for v in stackwise_squeeze_and_excite_ratios],
            "stackwise_strides": [int(v) for v in stackwise_strides],
            "stackwise_block_types": [str(v) for v in stackwise_block_types],
        }
        num_stages = check_lengths(name, **stages)
        bad = sorted(set(stages["stackwise_block_types"]) - set(BLOCK_TYPES))
        if bad:
            raise ValueError(f"stackwise_block_types must be among {BLOCK_TYPES}, got {bad}")
        stride = 2  # the stem
        for s in stages["stackwise_strides"]:
            stride *= s
        check_min_size(image_shape, stride, name)

        # === Functional model ===
        inputs = image_input(image_shape)
        features = keras_hub.models.EfficientNetBackbone(
            **stages,
            stackwise_width_coefficients=[float(width_coefficient)] * num_stages,
            stackwise_depth_coefficients=[float(depth_coefficient)] * num_stages,
            stackwise_force_input_filters=[0] * num_stages,
            stackwise_nores_option=[False] * num_stages,
            dropout=drop_connect_rate,
            activation=activation,
            # EfficientNetV2's stem: "same"-padded stride-2 3x3 conv.
            include_stem_padding=False,
            stem_conv_padding="same",
            batch_norm_momentum=batch_norm_momentum,
            batch_norm_epsilon=batch_norm_epsilon,
            num_features=num_features,
            input_shape=image_shape,
            dtype=dtype,
            name="efficientnet",
        )
        # keras-hub's own pyramid outputs live inside its nested graph, not this one: not exposed.
        outputs = float32_features(features(inputs))
        super().__init__(
            inputs=inputs, outputs=outputs, name=name, dtype=dtype, feature_kind="map", default_pooling="avg", **kwargs
        )

        # === Config ===
        self.image_shape = image_shape
        self.stages = stages
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.num_features = num_features
        self.drop_connect_rate = drop_connect_rate
        self.activation = activation
        self.batch_norm_momentum = batch_norm_momentum
        self.batch_norm_epsilon = batch_norm_epsilon

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({k: list(v) for k, v in self.stages.items()})
        config.update(
            {
                "image_shape": list(self.image_shape),
                "width_coefficient": self.width_coefficient,
                "depth_coefficient": self.depth_coefficient,
                "num_features": self.num_features,
                "drop_connect_rate": self.drop_connect_rate,
                "activation": self.activation,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
            }
        )
        return config


# keras.applications.efficientnet_v2 DEFAULT_BLOCKS_ARGS, one list per field.
_B0_STAGES = {
    "stackwise_kernel_sizes": [3, 3, 3, 3, 3, 3],
    "stackwise_num_repeats": [1, 2, 2, 3, 5, 8],
    "stackwise_input_filters": [32, 16, 32, 48, 96, 112],
    "stackwise_output_filters": [16, 32, 48, 96, 112, 192],
    "stackwise_expansion_ratios": [1, 4, 4, 4, 6, 6],
    "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0.0, 0.25, 0.25, 0.25],
    "stackwise_strides": [1, 2, 2, 2, 1, 2],
    "stackwise_block_types": ["cba", "fused", "fused", "unfused", "unfused", "unfused"],
}
_S_STAGES = {
    "stackwise_kernel_sizes": [3, 3, 3, 3, 3, 3],
    "stackwise_num_repeats": [2, 4, 4, 6, 9, 15],
    "stackwise_input_filters": [24, 24, 48, 64, 128, 160],
    "stackwise_output_filters": [24, 48, 64, 128, 160, 256],
    "stackwise_expansion_ratios": [1, 4, 4, 4, 6, 6],
    "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0.0, 0.25, 0.25, 0.25],
    "stackwise_strides": [1, 2, 2, 2, 1, 2],
    "stackwise_block_types": ["cba", "fused", "fused", "unfused", "unfused", "unfused"],
}
_COMMON = {
    "width_coefficient": 1.0,
    "depth_coefficient": 1.0,
    "num_features": 1280,
    "drop_connect_rate": 0.2,
    "activation": "swish",
    "batch_norm_momentum": 0.9,
    "batch_norm_epsilon": 1e-3,
}


@register_model(
    "effnetv2_b0",
    family="efficientnet",
    description="EfficientNetV2-B0 (keras-hub, ~5.9M params, D=1280)",
    defaults={**_B0_STAGES, **_COMMON},
)
def effnetv2_b0(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return EfficientNetV2Backbone(input_shape, name="effnetv2_b0", **kwargs)


@register_model(
    "effnetv2_s",
    family="efficientnet",
    description="EfficientNetV2-S (keras-hub, ~20M params, D=1280)",
    defaults={**_S_STAGES, **_COMMON},
)
def effnetv2_s(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return EfficientNetV2Backbone(input_shape, name="effnetv2_s", **kwargs)
