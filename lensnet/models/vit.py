"""Vision Transformer on keras-hub's ViTBackbone.

Widths follow DeiT (tiny 192/3 heads, small 384/6 heads, 12 layers, MLP 4x),
the usual from-scratch ViT sizes. Patches are smaller than ImageNet's 16 px
because lens cutouts are 64-150 px: patch 8 on 64 px gives an 8x8 token grid.
The keras-hub MLP uses exact GELU (TF `Erf`/`Erfc`): see lensnet.export.

Why lensnet's ViT and DeiT did not learn lens images (issue 22), measured with the memorisation
test (`python -m lensnet.bench memorise`, tests/test_memorise.py: 128 lens-like 32 px images with
random labels, batch 32, 100 AdamW steps; ViT 64 wide, 4 blocks, 2 heads, patch 4, i.e. 64 tokens;
final training loss, < 0.1 passes; cnn_small: 0.04). One candidate at a time, on lensnet.fit's
optimiser (learning rate 1e-3, weight decay 1e-4):

    recipe                                                        loss after step 1   final loss
    fit's old defaults: cosine, no warm-up, decay on everything   1.54 -> 3.91        0.97 (acc 0.57)
    constant lr 1e-3                                              1.54 -> 3.91        0.92
      + no decay on norms, biases, tokens, position embeddings    1.54 -> 3.91        0.74
      + timm init: dense kernels truncated-normal(0.02)           1.27 -> 5.22        1.09
      + timm init: patch embedding LeCun-normal                   2.15 -> 3.24        0.92
      + timm init: tokens/position embeddings TN(0.02)            1.73 -> 3.21        0.70
      + no class token, mean of patch tokens (Beyer et al.)       1.34 -> 3.26        0.35
    constant lr 3e-4                                              1.54 -> 2.25        0.32
    cosine + 20 warm-up steps (20% of the run)                    1.54 -> 1.39        0.04 (acc 1.0)
    cosine + 4 warm-up steps                                      1.54 -> 2.04        0.77

The cause is the first full-size AdamW steps: Adam's first updates move every weight by about
the learning rate whatever its gradient, which throws a pre-norm transformer (whose LayerNorms
then amplify the changed residual stream) to a loss twice its initial one, from where it does not
recover in the budget. Initialisation (keras-hub's Glorot-uniform against timm's truncated normal)
and weight decay on norms/tokens are not the cause at this budget. The fix is the transformers'
training recipe, a linear warm-up over the first epoch (`TRANSFORMER_RECIPE` in the registry, which
lensnet.fit applies over its own defaults), with weight decay off for norms, biases, tokens and
position embeddings (lensnet.training.optim.NO_DECAY) as in timm/DeiT. With it this ViT ends the test at
0.039 (without: 1.04).

On the Model II replica the task presets already warm up for 1-2 epochs, and the 12-block vit_tiny still sat at
the label prior for two epochs at the substructure preset's 1e-3. The learning rate was the remaining cause:
ViT and DeiT train at 0.1x the task's rate (`train.learning_rate_scale` from PLAIN_TRANSFORMER_RECIPE).
vit_tiny at the budget where cnn_small reaches 0.99 (14,400 images, 3 epochs): macro AUC 0.868 at 1e-3,
0.927 at 3e-4, 0.935 at 1e-4 (docs/transformers.md, "The plain transformers' learning rate"); still short of 0.98.

The tokenizer is an option (`tokenizer`, lensnet.models.layers.patch_tokenizer), measured at the same budget
(docs/transformers.md, "Tokenizers"): shifted patch tokenisation (Lee et al. 2021) 0.953 at 1e-4, +0.018
(+0.010, +0.025) over the patchify ViT on the same test images; the convolutional stem of Xiao et al. 2021
0.953 at 1e-4 and 0.964 at 3e-4 (+0.029 (+0.021, +0.038)), 0.963 at 1e-3 (the stem makes the rate matter
little). Neither reaches 0.98; the default stays the published patchify ViT. Patch 4 instead of 8 at 64 px
(conv stem, 3e-4; CCT's 16x16 grid) is worse at that budget: 0.949, -0.016 (-0.024, -0.008), at well over 2.5x the
time, so the default patch stays 8.

Locality self-attention (Lee et al. 2021; `attention="locality"`, lensnet.models.locality) is the other half
of their small-data recipe. Over the best ViT at that budget (conv stem, 3e-4, warm-up 0.5 epoch, batch 32,
4 blocks: 0.970) it changes nothing: 0.970, -0.000 (-0.003, +0.002) on the same test images
(docs/transformers.md, "Locality self-attention"); the default stays keras-hub's global attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import keras_hub

from lensnet.core.errors import LensnetError
from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import (
    as_pair,
    auto_patch_size,
    check_heads,
    check_patch_size,
    freeze_index_tensors,
    patch_tokenizer,
)
from lensnet.models.locality import ATTENTIONS, locality_vit
from lensnet.models.pooling import valid_modes
from lensnet.models.registry import PLAIN_TRANSFORMER_RECIPE, register_model

DEFAULT_PATCH = 8


def resolve_patch_size(
    image_shape: tuple[int, int, int], patch_size: int | Sequence[int] | str | None, model: str
) -> tuple[int, int]:
    """`None` (or "auto") picks 8, or if 8 does not divide the image the next larger
    common divisor of height and width (150 px -> 10); an explicit size must divide."""
    if patch_size is None or patch_size == "auto":
        p = auto_patch_size(image_shape, DEFAULT_PATCH, model)
        return (p, p)
    patch = as_pair(patch_size, "patch_size")
    check_patch_size(image_shape, patch, model)
    return patch


@keras.saving.register_keras_serializable(package="lensnet")
class ViTBackbone(Backbone):
    """ViT feature extractor: keras-hub ViTBackbone's tokens (batch, 1 + h*w, D),
    the class token first (with `use_class_token`), then the patch tokens row by row.

    Args:
        image_shape: (height, width, channels) of the input images.
        patch_size: int, (int, int), or None/"auto" (see `resolve_patch_size`).
        hidden_dim: token width.
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: hidden width of each block's MLP.
        dropout_rate: dropout in the blocks.
        attention_dropout: dropout on attention weights.
        layer_norm_epsilon: of every LayerNormalization.
        tokenizer: how patches become tokens (`lensnet.models.layers.patch_tokenizer`): `"patch"`,
            keras-hub's linear patch embedding (the original ViT); `"shifted"`, shifted patch
            tokenisation (Lee et al. 2021): each patch with its four half-patch diagonal shifts,
            layer-normalised, then the linear embedding; `"conv"`, the convolutional stem of
            Xiao et al. 2021 (3x3 stride-2 convolutions with BatchNorm and ReLU, then a 1x1 embedding).
        bn_momentum: of the conv stem's BatchNormalization (unused by the other tokenizers).
        use_class_token: prepend a learned class token, as the original ViT.
            Without it (with pooling `"tokens_avg"`), the plain-ViT recipe of
            Beyer et al. 2022, "Better plain ViT baselines".
        pooling: the default pooling of the tokens (see `lensnet.models.pooling`):
            `"cls"` (the class token), `"tokens_avg"`/`"avg"`, `"max"`, `"prefix_mean"`.
        attention: `"global"`, keras-hub's multi-head self-attention; `"locality"`, locality
            self-attention (Lee et al. 2021: the diagonal masked, a learned temperature;
            lensnet.models.locality).
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
        mlp_dim: int = 768,
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-6,
        tokenizer: str = "patch",
        bn_momentum: float = 0.9,
        use_class_token: bool = True,
        pooling: str = "cls",
        attention: str = "global",
        name: str = "vit",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        patch = resolve_patch_size(image_shape, patch_size, name)
        check_heads(name, hidden_dim, num_heads)
        use_class_token = bool(use_class_token)
        allowed = valid_modes("tokens", int(use_class_token))
        if pooling not in allowed:
            raise ValueError(f"pooling must be one of {allowed} (use_class_token={use_class_token}), got {pooling!r}")
        if attention not in ATTENTIONS:
            raise LensnetError(f"model {name!r}: attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")

        # === Functional model ===
        inputs = image_input(image_shape)
        front, embed_shape, embed_patch = patch_tokenizer(tokenizer, image_shape, patch, hidden_dim,
                                                          layer_norm_epsilon, bn_momentum, dtype, name)
        tokenised = inputs if front is None else front(inputs)
        encoder = keras_hub.models.ViTBackbone if attention == "global" else locality_vit
        tokens = freeze_index_tensors(
            encoder(
                image_shape=embed_shape,
                patch_size=embed_patch,
                num_layers=num_layers,
                num_heads=num_heads,
                hidden_dim=hidden_dim,
                mlp_dim=mlp_dim,
                dropout_rate=dropout_rate,
                attention_dropout=attention_dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                use_class_token=use_class_token,
                dtype=dtype,
                name="vit",
            )
        )(tokenised)
        outputs = float32_features(tokens)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name,
            dtype=dtype,
            feature_kind="tokens",
            num_prefix_tokens=int(use_class_token),
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
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.tokenizer = tokenizer
        self.bn_momentum = float(bn_momentum)
        self.use_class_token = use_class_token
        self.pooling = pooling
        self.attention = attention

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "image_shape": list(self.image_shape),
                # Resolved, so a reload never depends on the automatic choice.
                "patch_size": list(self.patch_size),
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "tokenizer": self.tokenizer,
                "bn_momentum": self.bn_momentum,
                "use_class_token": self.use_class_token,
                "pooling": self.pooling,
                "attention": self.attention,
            }
        )
        return config


_VIT_COMMON = {
    "patch_size": None,
    "num_layers": 12,
    "dropout_rate": 0.0,
    "attention_dropout": 0.0,
    "layer_norm_epsilon": 1e-6,
    "tokenizer": "patch",
    "bn_momentum": 0.9,
    "use_class_token": True,
    "pooling": "cls",
    "attention": "global",
}


@register_model(
    "vit_tiny",
    family="vit",
    train_defaults=PLAIN_TRANSFORMER_RECIPE,
    description="ViT-Tiny (keras-hub; 192 wide, 3 heads, 12 layers, ~5.4M params; patch 8 at 64 px)",
    defaults={**_VIT_COMMON, "hidden_dim": 192, "num_heads": 3, "mlp_dim": 768},
)
def vit_tiny(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return ViTBackbone(input_shape, name="vit_tiny", **kwargs)


@register_model(
    "vit_small",
    family="vit",
    train_defaults=PLAIN_TRANSFORMER_RECIPE,
    description="ViT-Small (keras-hub; 384 wide, 6 heads, 12 layers, ~21.3M params; patch 8 at 64 px)",
    defaults={**_VIT_COMMON, "hidden_dim": 384, "num_heads": 6, "mlp_dim": 1536},
)
def vit_small(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return ViTBackbone(input_shape, name="vit_small", **kwargs)
