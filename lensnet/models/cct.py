"""CCT, the Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the big data paradigm
with compact transformers"): the anchor on DeepLense Model III (99.48%, ML4SCI DeepLense,
Transformers_Classification_DeepLense_Kartik_Sachdev).

Three differences from ViT, as in the paper:
- a convolutional tokenizer (conv - ReLU - 3x3 max pool with stride 2, `tokenizer_layers` times)
  instead of non-overlapping patches, so tokens overlap and carry local structure;
- no class token: *sequence pooling* weighs the output tokens by a learned softmax attention
  (one Dense(1) score per token) and sums them;
- a learnable position embedding on the token grid (truncated-normal 0.02).
Blocks are pre-norm transformer blocks (`lensnet.models.layers.TransformerBlock`).

Two departures from the paper in the registry's cct_2 / cct_7 (issue 22; the constructor's defaults
are the paper's, so `tokenizer_norm=False, dense_initializer=None` is the paper's CCT and a CCT saved
before these options existed loads unchanged):
- `tokenizer_norm`: a BatchNormalization (momentum 0.9) after each tokenizer pool, so the tokens
  entering the blocks are centred;
- `dense_initializer="glorot_uniform"` for the blocks' dense kernels, as keras-hub's ViT and DeiT,
  instead of the paper's (timm's) truncated-normal(0.02).

Feature contract: tokens (batch, 1 + h*w, D) whose prefix token is the sequence-pooled vector, so
the default pooling "cls" is CCT's own head input and the patch tokens stay available (maps,
Grad-CAM, "avg" pooling).

Why (issue 22). tests/test_memorise.py trains the 64-wide, 2-block row (tokenizer 32 filters, 8x8
tokens at 32 px) on 128 random-label images for 100 steps of batch 32 (pass: final training loss
< 0.1). The paper's CCT sits at the label prior (1.054; the labels' entropy is 1.10) for ~200 steps,
then falls (0.004 after 500). Its pooled features barely differ between images at initialisation
(spread / norm 0.14, the ViT class token's 0.44): the ReLU/max-pool tokens share a large positive
part, the blocks start near the identity (truncated-normal 0.02 is calibrated for widths of several
hundred) and the near-uniform sequence pooling averages what is left. One candidate at a time on the
paper's CCT (rows marked * from a scratch script that patched the one thing named and called
`lensnet.bench.memorise.memorise`; the rest `python -m lensnet.bench memorise`):

    the paper's CCT, registry recipe (lr 1e-3, 1 warm-up epoch)         1.054
    lr 3e-4 / 3e-3 / 1e-2*; no warm-up; constant lr                      1.076 / 1.050 / 1.073; 1.063; 1.050
    the ViT row's size (4 blocks, MLP 768, 487k parameters)              1.058
    as registered then (128 wide, tokenizer 64) / 4 blocks, MLP 4x       1.066 / 1.047
    pooling "avg" (no sequence pooling) / "max"                          1.054 / 0.844
    position embedding TN(0.2) (the reference code's) / sine* / none*    1.025 / 1.048 / 1.054
    the reference code's block (LayerNorm on the residual stream)        1.053
    one tokenizer layer (16x16 tokens) / MLP ratio 4                     1.081 / 1.053
    tokenizer without ReLU* / a linear 4x4 patch embedding instead*      1.053 / 1.047
    no transformer blocks at all* (tokenizer, norm, pooling, head)       1.055
    sequence-pooling score kernel N(0, 1) instead of TN(0.02)*           0.326
    diagnostic: BatchNorm on the pooled features before the head*        0.206
    Glorot-uniform block kernels alone                                   0.941
    tokenizer BatchNorm alone                                            0.453
    **both (the registry's CCT)**                                        0.074 (seeds 1, 2: 0.071, 0.041)
    the registry's CCT at the ViT row's size / with MLP ratio 4           0.009 / 0.037

On the Model II replica (1,600 training images, 5 epochs of 25 steps, batch 64, seed 0; macro AUC
with a 95% bootstrap interval over 200 test images; docs/transformers.md) cct_2 goes from 0.644
(0.591-0.694; training loss at the prior for four epochs) to 0.797 (0.752-0.845) with the tokenizer
BatchNorm and 0.920 (0.889-0.946) with both (seed 1: paper 0.653, both 0.846; cnn_small 0.930 on
the same data); cct_7: paper 0.709, both 0.928. On the ViT test row, timm's TN(0.02)
instead of keras-hub's Glorot also leaves the ViT at the prior (1.091): at small widths the small
initialisation is a plateau of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lensnet.core.errors import LensnetError
from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import TransformerBlock, check_heads, trunc_normal
from lensnet.models.pooling import valid_modes
from lensnet.models.registry import TRANSFORMER_RECIPE, register_model


@keras.saving.register_keras_serializable(package="lensnet")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned (1, N, D) position embedding, truncated-normal(0.02) initialised."""

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.embedding = self.add_weight(shape=(1, int(input_shape[1]), int(input_shape[2])),
                                         initializer=trunc_normal(), name="position_embedding")

    def call(self, inputs: Any) -> Any:
        return inputs + ops.cast(self.embedding, inputs.dtype)


@keras.saving.register_keras_serializable(package="lensnet")
class SequencePooling(keras.layers.Layer):
    """CCT's sequence pooling, returned as a prefix token: (batch, N, D) -> (batch, 1 + N, D), where
    token 0 is sum_i softmax(w . x_i + b) x_i."""

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.score = keras.layers.Dense(1, kernel_initializer=trunc_normal(), dtype=self.dtype_policy,
                                        name="score")
        self.score.build(input_shape)

    def call(self, inputs: Any) -> Any:
        weights = ops.softmax(self.score(inputs), axis=1)  # (batch, N, 1)
        pooled = ops.sum(weights * inputs, axis=1, keepdims=True)
        return ops.concatenate([pooled, inputs], axis=1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package="lensnet")
class CCTBackbone(Backbone):
    """CCT feature extractor: (batch, 1 + h*w, D), the sequence-pooled token first.

    Args:
        image_shape: (height, width, channels).
        hidden_dim: token width D (the last tokenizer convolution's filters).
        num_layers: transformer blocks.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_ratio: MLP hidden width / D.
        tokenizer_layers: conv - ReLU - max pool units of the tokenizer; each halves the grid.
        tokenizer_kernel: kernel size of the tokenizer convolutions (stride 1, "same").
        tokenizer_filters: filters of the tokenizer convolutions before the last (which has
            `hidden_dim`); the paper uses 64.
        tokenizer_norm: a BatchNormalization after each tokenizer pool, so the tokens start
            centred; not in the paper. Off here (so configs saved before it existed load as they
            were), on in the registry's cct_2 / cct_7 (see the module doc for the numbers).
        bn_momentum: of that BatchNormalization's moving statistics (0.9, as lensnet's CNNs).
        dense_initializer: Keras initializer name of the blocks' dense kernels, or None for the
            paper's (timm's) truncated-normal(0.02); the registry's cct_2 / cct_7 use "glorot_uniform",
            as keras-hub's ViT and DeiT (see the module doc).
        dropout_rate: dropout in the blocks.
        attention_dropout: dropout on attention weights.
        pooling: default pooling: "cls" (the sequence-pooled token), "tokens_avg"/"avg", "max".
        name: model name.
        dtype: dtype policy.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        hidden_dim: int = 256,
        num_layers: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        tokenizer_layers: int = 2,
        tokenizer_kernel: int = 3,
        tokenizer_filters: int = 64,
        tokenizer_norm: bool = False,
        bn_momentum: float = 0.9,
        dense_initializer: str | None = None,
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.0,
        pooling: str = "cls",
        name: str = "cct",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        check_heads(name, hidden_dim, num_heads)
        if tokenizer_layers < 1 or num_layers < 1:
            raise LensnetError(f"model {name!r}: tokenizer_layers and num_layers must be at least 1")
        factor = 2 ** tokenizer_layers
        if image_shape[0] % factor or image_shape[1] % factor:
            raise LensnetError(
                f"model {name!r}: {tokenizer_layers} tokenizer layers halve the grid {tokenizer_layers} times, so "
                f"height and width must be divisible by {factor}; input_shape {image_shape} is not"
            )
        if dense_initializer is not None:
            keras.initializers.get(dense_initializer)  # an unknown name is a ValueError here, not in a block
        if not 0.0 <= bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
        if pooling not in valid_modes("tokens", 1):
            raise ValueError(f"pooling must be one of {valid_modes('tokens', 1)}, got {pooling!r}")
        grid = (image_shape[0] // factor, image_shape[1] // factor)

        # === Functional model ===
        inputs = image_input(image_shape)
        x = inputs
        for i in range(tokenizer_layers):
            filters = hidden_dim if i == tokenizer_layers - 1 else tokenizer_filters
            x = keras.layers.Conv2D(filters, tokenizer_kernel, padding="same", use_bias=False,
                                    kernel_initializer="he_normal", dtype=dtype, name=f"tokenizer_conv{i}")(x)
            x = keras.layers.Activation("relu", dtype=dtype, name=f"tokenizer_relu{i}")(x)
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", dtype=dtype, name=f"tokenizer_pool{i}")(x)
            if tokenizer_norm:
                x = keras.layers.BatchNormalization(momentum=bn_momentum, dtype=dtype, name=f"tokenizer_bn{i}")(x)
        x = keras.layers.Reshape((grid[0] * grid[1], hidden_dim), dtype=dtype, name="tokens")(x)
        x = PositionEmbedding(dtype=dtype, name="position_embedding")(x)
        x = keras.layers.Dropout(dropout_rate, dtype=dtype, name="embedding_dropout")(x)
        for i in range(num_layers):
            x = TransformerBlock(hidden_dim, num_heads, int(hidden_dim * mlp_ratio), dropout_rate=dropout_rate,
                                 attention_dropout=attention_dropout, kernel_initializer=dense_initializer,
                                 dtype=dtype, name=f"block{i}")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, name="norm")(x)
        x = SequencePooling(dtype=dtype, name="sequence_pooling")(x)
        outputs = float32_features(x)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, feature_kind="tokens",
                         num_prefix_tokens=1, patch_grid=grid, default_pooling=pooling, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.tokenizer_layers = tokenizer_layers
        self.tokenizer_kernel = tokenizer_kernel
        self.tokenizer_filters = tokenizer_filters
        self.tokenizer_norm = bool(tokenizer_norm)
        self.bn_momentum = float(bn_momentum)
        self.dense_initializer = dense_initializer
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.pooling = pooling

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "image_shape": list(self.image_shape),
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "tokenizer_layers": self.tokenizer_layers,
            "tokenizer_kernel": self.tokenizer_kernel,
            "tokenizer_filters": self.tokenizer_filters,
            "tokenizer_norm": self.tokenizer_norm,
            "bn_momentum": self.bn_momentum,
            "dense_initializer": self.dense_initializer,
            "dropout_rate": self.dropout_rate,
            "attention_dropout": self.attention_dropout,
            "pooling": self.pooling,
        })
        return config


_CCT_COMMON = {"tokenizer_kernel": 3, "tokenizer_filters": 64, "tokenizer_norm": True, "bn_momentum": 0.9,
               "dense_initializer": "glorot_uniform",
               "dropout_rate": 0.0, "attention_dropout": 0.0, "pooling": "cls"}


@register_model(
    "cct_7",
    family="cct",
    train_defaults=TRANSFORMER_RECIPE,
    description="CCT-7/3x2 (conv tokenizer 2x conv3-pool-BN, 256 wide, 4 heads, 7 layers, sequence pooling, "
                "~3.9M params; 16x16 tokens at 64 px)",
    defaults={**_CCT_COMMON, "hidden_dim": 256, "num_layers": 7, "num_heads": 4, "mlp_ratio": 2.0,
              "tokenizer_layers": 2},
)
def cct_7(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return CCTBackbone(input_shape, name="cct_7", **kwargs)


@register_model(
    "cct_2",
    family="cct",
    train_defaults=TRANSFORMER_RECIPE,
    description="CCT-2/3x2 (conv tokenizer 2x conv3-pool-BN, 128 wide, 2 heads, 2 layers, sequence pooling, "
                "~0.3M params): the small CPU variant",
    defaults={**_CCT_COMMON, "hidden_dim": 128, "num_layers": 2, "num_heads": 2, "mlp_ratio": 1.0,
              "tokenizer_layers": 2},
)
def cct_2(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return CCTBackbone(input_shape, name="cct_2", **kwargs)
