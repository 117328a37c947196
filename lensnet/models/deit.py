"""DeiT on keras-hub's DeiTBackbone.

DeiT is ViT with a second, distillation token. The backbone returns every token,
class and distillation tokens first, so a task can give the distillation token
its own head (trained against a teacher); by default a task pools the class
token ("cls"), and "prefix_mean" averages both, as DeiT does at inference.
Its MLP uses exact GELU.

Like ViT it needs a learning-rate warm-up to train at lensnet's default learning rate (issue 22,
numbers in lensnet.models.vit's docstring). Beyond that, DeiT has no defect of its own in the
memorisation test (tests/test_memorise.py: 128 random-label 32 px images, 100 steps, 64 wide, 4
blocks, patch 4; final training loss, < 0.1 passes), measured at equal sizes against the ViT:

    MLP width    ViT (class token)    DeiT (class + distillation tokens, class head)
    128          -                    0.113 (accuracy 0.977)
    256          0.135 (0.992)        0.096 (0.992)
    768          0.039 (1.0)          0.013 (1.0)

The earlier "DeiT does not memorise" (0.113) compared a DeiT with a 128-wide MLP against a ViT with a
768-wide one; at equal size the distillation token does not hurt. At the usual 4x MLP both end near
the bar in 100 steps: the memorisation speed of these small plain transformers depends on the MLP width.
On the Model II replica, at the budget where cnn_small reaches 0.99 (14,400 images, 3 epochs), the full
deit_tiny reaches macro AUC 0.885 at the substructure preset's 1e-3, 0.947 at 0.3x and 0.955 at the recipe's
0.1x (1e-4; a 4-block DeiT 0.775 -> 0.946), see lensnet.models.registry.PLAIN_TRANSFORMER_RECIPE and
docs/transformers.md. The tokenizer options of lensnet.models.vit at 1e-4: shifted patches 0.954 (-0.001
(-0.006, +0.005) against the patchify DeiT on the same test images), the convolutional stem 0.960 (+0.005
(-0.001, +0.012)); the conv stem at 3e-4 0.964 (+0.010 (+0.004, +0.015)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import keras_hub

from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import check_heads, patch_tokenizer
from lensnet.models.pooling import valid_modes
from lensnet.models.registry import PLAIN_TRANSFORMER_RECIPE, register_model
from lensnet.models.vit import resolve_patch_size


@keras.saving.register_keras_serializable(package="lensnet")
class DeiTBackbone(Backbone):
    """DeiT feature extractor: keras-hub DeiTBackbone's tokens (batch, 2 + h*w, D):
    class token, distillation token, then the patch tokens row by row.

    Args:
        image_shape: (height, width, channels) of the input images.
        patch_size: int, (int, int) or None (automatic, as for ViT).
        hidden_dim: token width.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        intermediate_dim: hidden width of each block's MLP.
        dropout_rate: dropout in the blocks.
        attention_dropout: dropout on attention weights.
        layer_norm_epsilon: of every LayerNormalization.
        tokenizer: `"patch"` (DeiT's linear patch embedding), `"shifted"` or `"conv"`, as for
            `lensnet.models.vit.ViTBackbone`.
        bn_momentum: of the conv stem's BatchNormalization.
        pooling: the default pooling (see `lensnet.models.pooling`): `"cls"`
            (the class token), `"prefix_mean"` (mean of class and distillation
            tokens), `"tokens_avg"`/`"avg"` or `"max"` (over the patch tokens).
        name: model name.
        dtype: dtype policy.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        patch_size: int | Sequence[int] | str | None = None,
        hidden_dim: int = 192,
        num_layers: int = 12,
        num_heads: int = 3,
        intermediate_dim: int = 768,
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-6,
        tokenizer: str = "patch",
        bn_momentum: float = 0.9,
        pooling: str = "cls",
        name: str = "deit",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        patch = resolve_patch_size(image_shape, patch_size, name)
        check_heads(name, hidden_dim, num_heads)
        if pooling not in valid_modes("tokens", 2):
            raise ValueError(f"pooling must be one of {valid_modes('tokens', 2)}, got {pooling!r}")

        # === Functional model ===
        inputs = image_input(image_shape)
        front, embed_shape, embed_patch = patch_tokenizer(tokenizer, image_shape, patch, hidden_dim,
                                                          layer_norm_epsilon, bn_momentum, dtype, name)
        tokenised = inputs if front is None else front(inputs)
        tokens = keras_hub.models.DeiTBackbone(
            image_shape=embed_shape,
            patch_size=embed_patch,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout_rate=dropout_rate,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="deit",
        )(tokenised)
        outputs = float32_features(tokens)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name,
            dtype=dtype,
            feature_kind="tokens",
            num_prefix_tokens=2,  # class and distillation
            patch_grid=(image_shape[0] // patch[0], image_shape[1] // patch[1]),
            default_pooling=pooling,
            **kwargs,
        )

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = patch
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.tokenizer = tokenizer
        self.bn_momentum = float(bn_momentum)
        self.pooling = pooling

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "image_shape": list(self.image_shape),
                "patch_size": list(self.patch_size),
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "tokenizer": self.tokenizer,
                "bn_momentum": self.bn_momentum,
                "pooling": self.pooling,
            }
        )
        return config


@register_model(
    "deit_tiny",
    family="deit",
    train_defaults=PLAIN_TRANSFORMER_RECIPE,
    description="DeiT-Tiny (keras-hub; 192 wide, 3 heads, 12 layers, class + distillation tokens, ~5.4M params)",
    defaults={
        "patch_size": None,
        "hidden_dim": 192,
        "num_layers": 12,
        "num_heads": 3,
        "intermediate_dim": 768,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
        "layer_norm_epsilon": 1e-6,
        "tokenizer": "patch",
        "bn_momentum": 0.9,
        "pooling": "cls",
    },
)
def deit_tiny(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return DeiTBackbone(input_shape, name="deit_tiny", **kwargs)
