"""A small plain CNN: the fast default for lens finding on CPU and in tests; returns a feature map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import check_min_size
from lensnet.models.pooling import valid_modes
from lensnet.models.registry import register_model


@keras.saving.register_keras_serializable(package="lensnet")
class SmallCNNBackbone(Backbone):
    """Stages of (conv3x3-BN-ReLU) x `convs_per_stage`, 2x2 max pooling between
    stages. Returns the last stage's feature map (batch, h, w, filters[-1]);
    `pyramid_outputs` holds every stage's output as "stage0", "stage1", ...

    Args:
        image_shape: (height, width, channels) of the input images.
        filters: filters of each stage; one stage per entry.
        convs_per_stage: conv-BN-ReLU units per stage.
        stem_stride: stride of the very first convolution. 2 quarters the cost
            of the first stage on large cutouts.
        pooling: the default pooling of the features, `"avg"` or `"max"` (see
            `lensnet.models.pooling`). Max pooling suits lens finding, where the
            arc covers a small part of the cutout.
        dropout_rate: spatial dropout after each stage (0 disables it).
        bn_momentum: momentum of the BatchNormalization moving statistics. 0.9
            (PyTorch's 0.1) follows fast-changing weights within a few tens of
            steps; Keras's 0.99 lags behind short epochs (lensnet issue 8).
        name: model name.
        dtype: dtype policy of the layers.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        filters: Sequence[int] = (16, 32, 64, 128),
        convs_per_stage: int = 2,
        stem_stride: int = 1,
        pooling: str = "avg",
        dropout_rate: float = 0.0,
        bn_momentum: float = 0.9,
        name: str = "cnn_small",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        filters = tuple(int(f) for f in filters)
        if not filters or min(filters) < 1 or convs_per_stage < 1 or stem_stride < 1:
            raise ValueError("filters, convs_per_stage and stem_stride must be positive")
        if pooling not in valid_modes("map"):
            raise ValueError(f"pooling must be one of {valid_modes('map')}, got {pooling!r}")
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
        check_min_size(image_shape, stem_stride * 2 ** (len(filters) - 1), name)

        # === Functional model ===
        inputs = image_input(image_shape)
        x = inputs
        pyramid = {}
        for s, f in enumerate(filters):
            if s > 0:
                x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"stage{s}_pool")(x)
            for c in range(convs_per_stage):
                stride = stem_stride if (s == 0 and c == 0) else 1
                x = keras.layers.Conv2D(
                    f,
                    3,
                    strides=stride,
                    padding="same",
                    use_bias=False,
                    dtype=dtype,
                    name=f"stage{s}_conv{c}",
                )(x)
                x = keras.layers.BatchNormalization(momentum=bn_momentum, dtype=dtype, name=f"stage{s}_bn{c}")(x)
                x = keras.layers.Activation("relu", dtype=dtype, name=f"stage{s}_relu{c}")(x)
            if dropout_rate > 0:
                x = keras.layers.SpatialDropout2D(dropout_rate, dtype=dtype, name=f"stage{s}_drop")(x)
            pyramid[f"stage{s}"] = x
        outputs = float32_features(x)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name,
            dtype=dtype,
            feature_kind="map",
            default_pooling=pooling,
            pyramid_outputs=pyramid,
            **kwargs,
        )

        # === Config ===
        self.image_shape = image_shape
        self.filters = filters
        self.convs_per_stage = convs_per_stage
        self.stem_stride = stem_stride
        self.pooling = pooling
        self.dropout_rate = dropout_rate
        self.bn_momentum = bn_momentum

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "image_shape": list(self.image_shape),
                "filters": list(self.filters),
                "convs_per_stage": self.convs_per_stage,
                "stem_stride": self.stem_stride,
                "pooling": self.pooling,
                "dropout_rate": self.dropout_rate,
                "bn_momentum": self.bn_momentum,
            }
        )
        return config


@register_model(
    "cnn_small",
    family="cnn",
    description="Small plain CNN (4 stages of 2x conv-BN-ReLU, 16-128 filters, ~0.29M params): fast CPU default",
    defaults={
        "filters": [16, 32, 64, 128],
        "convs_per_stage": 2,
        "stem_stride": 1,
        "pooling": "avg",
        "dropout_rate": 0.0,
        "bn_momentum": 0.9,
    },
)
def cnn_small(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return SmallCNNBackbone(input_shape, name="cnn_small", **kwargs)
