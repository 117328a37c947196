"""CvT, the Convolutional vision Transformer (Wu et al. 2021, "CvT: Introducing Convolutions to
Vision Transformers"), the family of the best published DeepLense classifier.

Three differences from ViT, all as in the paper:
- each stage starts with a convolutional token embedding (a strided Conv2D + LayerNorm), so the
  token grid shrinks and the width grows from stage to stage, as in a CNN;
- queries, keys and values are convolutional projections: the tokens go back to their grid, a
  depthwise 3x3 convolution + BatchNorm (stride 1 for q, stride 2 for k and v, which cuts the
  attention cost by 4) and then a linear projection;
- there is no position embedding (the convolutions carry position).
A class token joins in the last stage only and is the default pooling ("cls"), as in the paper;
with `use_class_token=False` the last stage's patch tokens are mean-pooled ("avg").

keras-hub has no CvT, so the blocks are written here from Keras layers (every op exports to
ONNX). The MLP uses exact GELU, as keras-hub's ViT. Stochastic depth is not implemented.

The projections' BatchNormalization uses momentum 0.9 (PyTorch's 0.1, as the paper's code), not
Keras' default 0.99 (issue 22). With 0.99 the moving statistics stay near their initial values for
hundreds of steps, so a short fit is scored in inference mode with statistics that do not belong to
its weights: in the memorisation test (tests/test_memorise.py: 128 random-label 32 px images, 100
steps; widths 32-64-64) the trained weights reached loss 0.0014 in training mode and 1.153 in
inference mode; with momentum 0.9 both are 0.0014 (accuracy 1.0). lensnet's CNNs had the same fix
(issue 8); CvT had kept the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lensnet.core.errors import LensnetError
from lensnet.models.backbone import Backbone, float32_features, image_input
from lensnet.models.layers import check_lengths
from lensnet.models.pooling import valid_modes
from lensnet.models.registry import TRANSFORMER_RECIPE, register_model


@keras.saving.register_keras_serializable(package="lensnet")
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to a sequence (batch, N, D) -> (batch, 1 + N, D)."""

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.token = self.add_weight(shape=(1, 1, int(input_shape[-1])), initializer="zeros", name="token")

    def call(self, inputs: Any) -> Any:
        token = ops.cast(self.token, inputs.dtype)
        return ops.concatenate([ops.tile(token, [ops.shape(inputs)[0], 1, 1]), inputs], axis=1)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@keras.saving.register_keras_serializable(package="lensnet")
class ConvAttention(keras.layers.Layer):
    """Multi-head attention with CvT's convolutional projections of q, k and v.

    Args:
        hidden_dim: token width D (in and out).
        num_heads: attention heads; must divide `hidden_dim`.
        grid: (h, w) of the patch tokens, which follow `num_prefix_tokens` prefix tokens.
        num_prefix_tokens: class token(s) at the front; they skip the convolutions, as in CvT.
        kernel_size: of the depthwise projections.
        kv_stride: stride of the key/value projections (q keeps stride 1).
        qkv_bias: bias in the linear q/k/v projections.
        attention_dropout: dropout on the attention weights.
        bn_momentum: of the projections' BatchNormalization moving statistics.
    """

    def __init__(self, hidden_dim: int, num_heads: int, grid: Sequence[int], num_prefix_tokens: int = 0,
                 kernel_size: int = 3, kv_stride: int = 2, qkv_bias: bool = True, attention_dropout: float = 0.0,
                 bn_momentum: float = 0.9, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_dim, self.num_heads = int(hidden_dim), int(num_heads)
        self.grid = tuple(int(g) for g in grid)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.kernel_size, self.kv_stride = int(kernel_size), int(kv_stride)
        self.qkv_bias, self.attention_dropout = bool(qkv_bias), float(attention_dropout)
        self.bn_momentum = float(bn_momentum)
        self.head_dim = self.hidden_dim // self.num_heads
        self.convs, self.norms, self.projections = {}, {}, {}
        for part, stride in (("q", 1), ("k", self.kv_stride), ("v", self.kv_stride)):
            self.convs[part] = keras.layers.DepthwiseConv2D(self.kernel_size, strides=stride, padding="same",
                                                            use_bias=False, dtype=self.dtype_policy,
                                                            name=f"{part}_conv")
            self.norms[part] = keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=1e-5,
                                                               dtype=self.dtype_policy,
                                                               name=f"{part}_bn")
            self.projections[part] = keras.layers.Dense(self.hidden_dim, use_bias=self.qkv_bias,
                                                        dtype=self.dtype_policy, name=f"{part}_proj")
        self.output_projection = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy, name="out_proj")
        self.dropout = keras.layers.Dropout(self.attention_dropout, dtype=self.dtype_policy)

    def build(self, input_shape: Sequence[int | None]) -> None:
        h, w = self.grid
        for part in ("q", "k", "v"):
            stride = 1 if part == "q" else self.kv_stride
            self.convs[part].build((None, h, w, self.hidden_dim))
            hs, ws = -(-h // stride), -(-w // stride)
            self.norms[part].build((None, hs, ws, self.hidden_dim))
            self.projections[part].build((None, None, self.hidden_dim))
        self.output_projection.build((None, None, self.hidden_dim))

    def _project(self, part: str, prefix: Any, patches: Any, training: Any) -> Any:
        x = self.norms[part](self.convs[part](patches), training=training)
        x = ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.hidden_dim))
        if prefix is not None:
            x = ops.concatenate([prefix, x], axis=1)
        x = self.projections[part](x)
        # (batch, tokens, heads, head_dim) -> (batch, heads, tokens, head_dim)
        return ops.transpose(ops.reshape(x, (-1, x.shape[1], self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def attention_weights(self, inputs: Any, training: Any = None) -> tuple[Any, Any]:
        """(weights (batch, heads, N, N_kv), values (batch, heads, N_kv, head_dim)) of one call."""
        p = self.num_prefix_tokens
        prefix = inputs[:, :p, :] if p else None
        patches = ops.reshape(inputs[:, p:, :], (-1, *self.grid, self.hidden_dim))
        q, k, v = (self._project(part, prefix, patches, training) for part in ("q", "k", "v"))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * ops.cast(self.head_dim ** -0.5, q.dtype)
        weights = ops.softmax(ops.cast(scores, "float32"), axis=-1)  # softmax in float32 under mixed precision
        return ops.cast(weights, q.dtype), v

    def call(self, inputs: Any, training: Any = None) -> Any:
        weights, v = self.attention_weights(inputs, training)
        x = ops.matmul(self.dropout(weights, training=training), v)
        x = ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, x.shape[2], self.hidden_dim))
        return self.output_projection(x)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "grid": list(self.grid),
                       "num_prefix_tokens": self.num_prefix_tokens, "kernel_size": self.kernel_size,
                       "kv_stride": self.kv_stride, "qkv_bias": self.qkv_bias,
                       "attention_dropout": self.attention_dropout, "bn_momentum": self.bn_momentum})
        return config


def _block(x: Any, prefix: str, dim: int, heads: int, grid: tuple[int, int], num_prefix: int, mlp_ratio: float,
           dropout: float, attention_dropout: float, qkv_bias: bool, eps: float, bn_momentum: float,
           dtype: Any) -> Any:
    """One pre-norm CvT transformer block: x + ConvAttention(LN(x)), then x + MLP(LN(x))."""
    y = keras.layers.LayerNormalization(epsilon=eps, dtype=dtype, name=f"{prefix}_ln1")(x)
    y = ConvAttention(dim, heads, grid, num_prefix, qkv_bias=qkv_bias, attention_dropout=attention_dropout,
                      bn_momentum=bn_momentum, dtype=dtype, name=f"{prefix}_attention")(y)
    y = keras.layers.Dropout(dropout, dtype=dtype, name=f"{prefix}_drop1")(y)
    x = keras.layers.Add(dtype=dtype, name=f"{prefix}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=eps, dtype=dtype, name=f"{prefix}_ln2")(x)
    y = keras.layers.Dense(int(dim * mlp_ratio), dtype=dtype, name=f"{prefix}_mlp1")(y)
    y = keras.layers.Activation("gelu", dtype=dtype, name=f"{prefix}_gelu")(y)  # Keras' gelu: exact (erf)
    y = keras.layers.Dense(dim, dtype=dtype, name=f"{prefix}_mlp2")(y)
    y = keras.layers.Dropout(dropout, dtype=dtype, name=f"{prefix}_drop2")(y)
    return keras.layers.Add(dtype=dtype, name=f"{prefix}_add2")([x, y])


@keras.saving.register_keras_serializable(package="lensnet")
class CvTBackbone(Backbone):
    """CvT feature extractor: the last stage's tokens (batch, 1 + h*w, D) after a final LayerNorm,
    class token first (with `use_class_token`), then the patch tokens row by row.

    Args:
        image_shape: (height, width, channels) of the input images.
        embed_dims: token width of each stage.
        depths: transformer blocks per stage.
        num_heads: attention heads per stage; each must divide its stage's width.
        patch_sizes: kernel of each stage's convolutional token embedding.
        patch_strides: stride of each stage's token embedding (the grid shrinks by it).
        mlp_ratio: MLP width over block width.
        qkv_bias: bias in the linear q/k/v projections.
        dropout_rate: dropout after attention and MLP.
        attention_dropout: dropout on the attention weights.
        layer_norm_epsilon: of every LayerNormalization.
        bn_momentum: of the BatchNormalization in every convolutional projection.
        use_class_token: a class token in the last stage (CvT); without it, pooling "avg".
        pooling: default pooling (`"cls"` with a class token, else `"avg"`/`"tokens_avg"`/`"max"`).
        name: model name.
        dtype: dtype policy.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        embed_dims: Sequence[int] = (64, 192, 384),
        depths: Sequence[int] = (1, 2, 10),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout_rate: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        bn_momentum: float = 0.9,
        use_class_token: bool = True,
        pooling: str | None = None,
        name: str = "cvt",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        embed_dims, depths, num_heads, patch_sizes, patch_strides = (
            tuple(int(v) for v in values) for values in (embed_dims, depths, num_heads, patch_sizes, patch_strides))
        num_stages = check_lengths(name, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                                   patch_sizes=patch_sizes, patch_strides=patch_strides)
        if min(embed_dims + depths + patch_sizes + patch_strides) < 1:
            raise LensnetError(f"model {name!r}: embed_dims, depths, patch_sizes and patch_strides must be positive")
        for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
            if heads < 1 or dim % heads:
                raise LensnetError(f"model {name!r}: stage {i} width {dim} must be divisible by its num_heads {heads}")
        use_class_token = bool(use_class_token)
        pooling = pooling or ("cls" if use_class_token else "avg")
        allowed = valid_modes("tokens", int(use_class_token))
        if pooling not in allowed:
            raise ValueError(f"pooling must be one of {allowed} (use_class_token={use_class_token}), got {pooling!r}")
        h, w = image_shape[:2]
        for stride in patch_strides:
            h, w = -(-h // stride), -(-w // stride)  # "same" padding
        if h < 1 or w < 1:
            raise LensnetError(f"model {name!r} cannot take input_shape {image_shape}: the stages' strides "
                               f"{list(patch_strides)} leave no tokens")

        # === Functional model ===
        inputs = image_input(image_shape)
        x = inputs
        grid = image_shape[:2]
        for s in range(num_stages):
            # Convolutional token embedding on the previous stage's token map.
            x = keras.layers.Conv2D(embed_dims[s], patch_sizes[s], strides=patch_strides[s], padding="same",
                                    dtype=dtype, name=f"stage{s}_embed")(x)
            grid = (int(x.shape[1]), int(x.shape[2]))
            x = keras.layers.Reshape((grid[0] * grid[1], embed_dims[s]), dtype=dtype, name=f"stage{s}_tokens")(x)
            x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name=f"stage{s}_embed_ln")(x)
            last = s == num_stages - 1
            prefix = int(use_class_token and last)
            if prefix:
                x = ClassToken(dtype=dtype, name="class_token")(x)
            for b in range(depths[s]):
                x = _block(x, f"stage{s}_block{b}", embed_dims[s], num_heads[s], grid, prefix, mlp_ratio,
                           dropout_rate, attention_dropout, qkv_bias, layer_norm_epsilon, bn_momentum, dtype)
            if not last:
                x = keras.layers.Reshape((*grid, embed_dims[s]), dtype=dtype, name=f"stage{s}_map")(x)
        x = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name="final_ln")(x)
        outputs = float32_features(x)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name,
            dtype=dtype,
            feature_kind="tokens",
            num_prefix_tokens=int(use_class_token),
            patch_grid=grid,
            default_pooling=pooling,
            **kwargs,
        )

        # === Config ===
        self.image_shape = image_shape
        self.embed_dims = embed_dims
        self.depths = depths
        self.num_heads = num_heads
        self.patch_sizes = patch_sizes
        self.patch_strides = patch_strides
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.bn_momentum = bn_momentum
        self.use_class_token = use_class_token
        self.pooling = pooling

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "image_shape": list(self.image_shape),
                "embed_dims": list(self.embed_dims),
                "depths": list(self.depths),
                "num_heads": list(self.num_heads),
                "patch_sizes": list(self.patch_sizes),
                "patch_strides": list(self.patch_strides),
                "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias,
                "dropout_rate": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "bn_momentum": self.bn_momentum,
                "use_class_token": self.use_class_token,
                "pooling": self.pooling,
            }
        )
        return config


_CVT_COMMON = {
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "dropout_rate": 0.0,
    "attention_dropout": 0.0,
    "layer_norm_epsilon": 1e-5,
    "bn_momentum": 0.9,
    "use_class_token": True,
    "pooling": None,
}


@register_model(
    "cvt_13",
    family="cvt",
    train_defaults=TRANSFORMER_RECIPE,
    description="CvT-13 (Wu et al. 2021; widths 64/192/384, depths 1/2/10, heads 1/3/6, ~20M params; "
    "class token in the last stage)",
    defaults={**_CVT_COMMON, "embed_dims": [64, 192, 384], "depths": [1, 2, 10], "num_heads": [1, 3, 6],
              "patch_sizes": [7, 3, 3], "patch_strides": [4, 2, 2]},
)
def cvt_13(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return CvTBackbone(input_shape, name="cvt_13", **kwargs)


@register_model(
    "cvt_tiny",
    family="cvt",
    train_defaults=TRANSFORMER_RECIPE,
    description="CvT for 64 px cutouts (widths 64/128/192, depths 1/1/3, strides 2/2/2: 32, 16, 8 tokens a side, "
    "~1.9M params)",
    defaults={**_CVT_COMMON, "embed_dims": [64, 128, 192], "depths": [1, 1, 3], "num_heads": [1, 2, 3],
              "patch_sizes": [5, 3, 3], "patch_strides": [2, 2, 2]},
)
def cvt_tiny(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return CvTBackbone(input_shape, name="cvt_tiny", **kwargs)
