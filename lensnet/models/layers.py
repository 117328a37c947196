"""Layers and shape checks shared by several families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lensnet.core.errors import LensnetError


def as_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise LensnetError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def auto_patch_size(image_shape: tuple[int, int, int], preferred: int, model: str, min_grid: int = 2) -> int:
    """The patch size used when the user gives none.

    `preferred` if it divides both sides, else the smallest common divisor of
    height and width above it (150 px with preferred 8 -> 10), so that the image
    splits into whole patches without cropping or padding. At least `min_grid`
    patches per side must remain.
    """
    h, w = image_shape[:2]
    for p in range(preferred, min(h, w) // min_grid + 1):
        if h % p == 0 and w % p == 0:
            return p
    for p in range(preferred - 1, 0, -1):
        if h % p == 0 and w % p == 0 and min(h, w) // p >= min_grid:
            return p
    raise LensnetError(
        f"model {model!r} cannot split input_shape {tuple(image_shape)} into patches: "
        f"no patch size divides both {h} and {w}; give patch_size explicitly or resize the images"
    )


def check_patch_size(image_shape: tuple[int, int, int], patch: tuple[int, int], model: str) -> None:
    h, w = image_shape[:2]
    if h % patch[0] or w % patch[1] or h < patch[0] or w < patch[1]:
        raise LensnetError(
            f"model {model!r}: patch_size {patch[0]}x{patch[1]} does not divide input_shape "
            f"{tuple(image_shape)}; use a patch size dividing {h} and {w}, or patch_size=None "
            "to choose one automatically"
        )


def check_min_size(image_shape: tuple[int, int, int], stride: int, model: str) -> None:
    """Reject images smaller than the network's total downsampling."""
    h, w = image_shape[:2]
    if h < stride or w < stride:
        raise LensnetError(
            f"model {model!r} downsamples by {stride}, so input_shape {tuple(image_shape)} is too "
            f"small: height and width must be at least {stride}"
        )


def check_lengths(model: str, **lists: Sequence[Any]) -> int:
    """All per-stage lists must have one entry per stage."""
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        listed = ", ".join(f"{k} ({n})" for k, n in lengths.items())
        raise LensnetError(f"model {model!r}: per-stage options need the same non-zero length: {listed}")
    return next(iter(lengths.values()))


def check_heads(model: str, dim: int, heads: int, what: str = "hidden_dim") -> None:
    if heads < 1 or dim % heads:
        raise LensnetError(f"model {model!r}: {what} {dim} must be divisible by num_heads {heads}")


# Index tensors that keras-hub layers compute eagerly at construction time.
_EAGER_INDEX_ATTRS = ("position_ids", "relative_position_index")


def freeze_index_tensors(model: keras.Layer) -> keras.Layer:
    """Turn keras-hub's eagerly built index tensors into numpy arrays.

    keras-hub's ViT patch embedding (`position_ids`) and Swin window attention
    (`relative_position_index`) keep integer index tensors created eagerly at
    construction. A `tf.function` captures such tensors as extra graph inputs,
    which `model.export(format="onnx")` (tf2onnx) then leaves as dangling,
    unfed ONNX inputs. As numpy arrays they are traced as constants instead.
    Values are unchanged and they are not weights, so saving is unaffected.
    """
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for attr in _EAGER_INDEX_ATTRS:
            value = layer.__dict__.get(attr)
            if value is not None and hasattr(value, "numpy"):
                object.__setattr__(layer, attr, np.asarray(value.numpy()))
    return model


def trunc_normal(stddev: float = 0.02) -> keras.initializers.Initializer:
    """The initialiser of timm/DeiT/BEiT for dense kernels, tokens and position embeddings."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


@keras.saving.register_keras_serializable(package="lensnet")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block, timm style: x + MHA(LN(x)), then x + MLP(LN(x)) with exact GELU;
    dense kernels truncated-normal(0.02) (or `kernel_initializer`), biases zero.

    Args:
        hidden_dim: token width D.
        num_heads: attention heads; must divide `hidden_dim`.
        mlp_dim: hidden width of the MLP.
        dropout_rate: dropout after attention and in the MLP.
        attention_dropout: dropout on attention weights.
        layer_norm_epsilon: of both LayerNormalizations.
        kernel_initializer: a Keras initializer name for the dense kernels, or None for timm's
            truncated-normal(0.02) (calibrated for widths of several hundred: at 64 it starts the
            blocks near the identity; issue 22, lensnet.models.cct).
    """

    def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int, dropout_rate: float = 0.0,
                 attention_dropout: float = 0.0, layer_norm_epsilon: float = 1e-6,
                 kernel_initializer: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_dim, self.num_heads, self.mlp_dim = int(hidden_dim), int(num_heads), int(mlp_dim)
        self.dropout_rate, self.attention_dropout = float(dropout_rate), float(attention_dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = kernel_initializer
        kernel = trunc_normal() if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        dense = {"kernel_initializer": kernel, "bias_initializer": "zeros", "dtype": self.dtype_policy}
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                                                     name="norm1")
        self.attention = keras.layers.MultiHeadAttention(self.num_heads, self.hidden_dim // self.num_heads,
                                                         dropout=self.attention_dropout, name="attention", **dense)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                                                     name="norm2")
        self.fc1 = keras.layers.Dense(self.mlp_dim, activation="gelu", name="fc1", **dense)
        self.fc2 = keras.layers.Dense(self.hidden_dim, name="fc2", **dense)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy, name="dropout")

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.norm1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.mlp_dim))

    def call(self, inputs: Any, training: bool | None = None, return_attention_scores: bool = False) -> Any:
        y = self.norm1(inputs)
        attended = self.attention(y, y, training=training, return_attention_scores=return_attention_scores)
        if return_attention_scores:
            attended, scores = attended
        x = inputs + self.dropout(attended, training=training)
        y = self.fc2(self.dropout(self.fc1(self.norm2(x)), training=training))
        x = x + self.dropout(y, training=training)
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                       "dropout_rate": self.dropout_rate, "attention_dropout": self.attention_dropout,
                       "layer_norm_epsilon": self.layer_norm_epsilon, "kernel_initializer": self.kernel_initializer})
        return config


@keras.saving.register_keras_serializable(package="lensnet")
class ShiftedPatches(keras.layers.Layer):
    """Shifted patch tokenisation (Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets"),
    the part before the linear projection: the image and its four diagonal shifts by half a patch
    (left-up, right-up, left-down, right-down, zero-filled) stacked on the channel axis, then each
    patch's (ph * pw * 5C) vector layer-normalised with a learned scale and offset. The output keeps
    the image layout (H, W, 5C), so the backbone's patch-embedding convolution (kernel = stride =
    patch) is SPT's linear projection and every token sees a neighbourhood twice the patch.

    Args:
        patch_size: int or (int, int), the backbone's patch size.
        epsilon: of the per-patch layer normalisation.
    """

    def __init__(self, patch_size: int | Sequence[int], epsilon: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = as_pair(patch_size, "patch_size")
        self.epsilon = float(epsilon)

    def build(self, input_shape: Sequence[int | None]) -> None:
        h, w, c = (int(d) for d in input_shape[1:])
        ph, pw = self.patch_size
        self.image_shape = (h, w, c)
        # one scale and offset per element of a patch's vector, as LayerNorm(patch_dim) in the paper
        shape = (1, 1, ph, 1, pw, 5 * c)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")

    def call(self, images: Any) -> Any:
        h, w, c = self.image_shape
        ph, pw = self.patch_size
        sh, sw = ph // 2, pw // 2
        padded = ops.pad(images, [[0, 0], [sh, sh], [sw, sw], [0, 0]])
        shifted = [padded[:, dy: dy + h, dx: dx + w, :] for dy in (0, 2 * sh) for dx in (0, 2 * sw)]
        x = ops.cast(ops.concatenate([images, *shifted], axis=-1), "float32")
        x = ops.reshape(x, (-1, h // ph, ph, w // pw, pw, 5 * c))
        mean = ops.mean(x, axis=(2, 4, 5), keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=(2, 4, 5), keepdims=True)
        x = (x - mean) * ops.rsqrt(var + self.epsilon)
        x = x * ops.cast(self.gamma, "float32") + ops.cast(self.beta, "float32")
        return ops.cast(ops.reshape(x, (-1, h, w, 5 * c)), self.compute_dtype)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], 5 * int(input_shape[-1]))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"patch_size": list(self.patch_size), "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="lensnet")
class ConvStem(keras.layers.Layer):
    """The convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"):
    log2(patch) 3x3 stride-2 convolutions, each with BatchNormalization and ReLU, widths doubling up to
    half the token width, in place of the patchify convolution. The output is the token grid
    (H / patch, W / patch, hidden_dim / 2); the backbone's patch embedding at patch 1 is the paper's
    final 1x1 convolution to the token width.

    Args:
        patch_size: int or (int, int), a square power of two: the downsampling to the token grid.
        hidden_dim: the token width; the stem ends at hidden_dim / 2 channels.
        bn_momentum: of the BatchNormalization moving statistics.
    """

    def __init__(self, patch_size: int | Sequence[int], hidden_dim: int, bn_momentum: float = 0.9,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patch_size = as_pair(patch_size, "patch_size")
        self.hidden_dim = int(hidden_dim)
        self.bn_momentum = float(bn_momentum)
        p = self.patch_size[0]
        steps = p.bit_length() - 1
        if self.patch_size[0] != self.patch_size[1] or p < 2 or p != 1 << steps:
            raise LensnetError(f"tokenizer 'conv' needs a square power-of-two patch_size, got "
                               f"{self.patch_size[0]}x{self.patch_size[1]}; give patch_size=4 or 8, or "
                               "tokenizer='patch'")
        widths = [max(1, self.hidden_dim // 2 ** (steps - i)) for i in range(steps)]
        self.convs = [keras.layers.Conv2D(w, 3, strides=2, padding="same", use_bias=False, dtype=self.dtype_policy,
                                          name=f"conv{i}") for i, w in enumerate(widths)]
        self.norms = [keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=1e-5,
                                                      dtype=self.dtype_policy, name=f"bn{i}")
                      for i in range(steps)]

    def build(self, input_shape: Sequence[int | None]) -> None:
        shape = tuple(input_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)

    def call(self, images: Any, training: bool | None = None) -> Any:
        x = images
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))
        return x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"patch_size": list(self.patch_size), "hidden_dim": self.hidden_dim,
                       "bn_momentum": self.bn_momentum})
        return config


TOKENIZERS = ("patch", "shifted", "conv")


def patch_tokenizer(tokenizer: str, image_shape: tuple[int, int, int], patch: tuple[int, int], hidden_dim: int,
                    epsilon: float, bn_momentum: float, dtype: Any, model: str
                    ) -> tuple[keras.layers.Layer | None, tuple[int, int, int], tuple[int, int]]:
    """A ViT/DeiT's tokenizer before keras-hub's patch embedding: (layer or None, the image shape and the
    patch size the keras-hub backbone is then built for).

    "patch": none, keras-hub's patchify convolution; "shifted": `ShiftedPatches` (5C channels, same
    patch); "conv": `ConvStem` (the token grid itself, embedded at patch 1).
    """
    if tokenizer == "patch":
        return None, image_shape, patch
    if tokenizer == "shifted":
        layer, embed_patch = ShiftedPatches(patch, epsilon=epsilon, dtype=dtype, name="tokenizer"), patch
    elif tokenizer == "conv":
        layer = ConvStem(patch, hidden_dim, bn_momentum=bn_momentum, dtype=dtype, name="tokenizer")
        embed_patch = (1, 1)
    else:
        raise LensnetError(f"model {model!r}: tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    embed_shape = tuple(int(d) for d in layer.compute_output_shape((None, *image_shape))[1:])
    return layer, embed_shape, embed_patch


def tokenizer_input(backbone: keras.Model, images: Any, training: bool | None = None) -> Any:
    """What a ViT/DeiT backbone's keras-hub patch embedding sees: `images` through its tokenizer layer
    if it has one (for code that calls the backbone's inner layers directly)."""
    try:
        layer = backbone.get_layer("tokenizer")
    except ValueError:
        return images
    return layer(images, training=training)


# What `timm_initialise` may re-initialise, one candidate cause of a transformer that does not train each.
INIT_PARTS = ("dense", "patch", "tokens")


def timm_initialise(model: keras.Layer, parts: Sequence[str] = INIT_PARTS, seed: int | None = None) -> None:
    """Re-initialise a built keras-hub transformer (ViT, DeiT) as timm/DeiT initialise theirs.

    - "dense": every Dense / EinsumDense kernel (MLP, attention q/k/v/output) truncated-normal(0.02),
      biases zero. keras-hub leaves them Glorot-uniform, and for MultiHeadAttention's 3-D kernels Keras
      counts the fans over the head axes, so q/k/v start ~0.01-0.03 and the output projection and
      MLP 0.05-0.08: larger residual updates than timm's;
    - "patch": the patch-embedding convolution LeCun-normal (timm's "jax" mode), so that patch tokens
      of per-image standardised images start with unit variance, and its bias zero;
    - "tokens": class/distillation tokens and position embeddings truncated-normal(0.02).
    """
    unknown = sorted(set(parts) - set(INIT_PARTS))
    if unknown:
        raise LensnetError(f"unknown initialisation part(s) {unknown}; valid: {', '.join(INIT_PARTS)}")
    rng = np.random.default_rng(seed)

    def normal(shape: Sequence[int], std: float) -> np.ndarray:
        # truncated at 2 standard deviations, as timm's trunc_normal_ (redrawn, not clipped)
        values = rng.normal(0.0, std, size=tuple(shape))
        bad = np.abs(values) > 2 * std
        while bad.any():
            values[bad] = rng.normal(0.0, std, size=int(bad.sum()))
            bad = np.abs(values) > 2 * std
        return values.astype("float32")

    for layer in model._flatten_layers(include_self=True, recursive=True):
        if "patch" in parts and isinstance(layer, keras.layers.Conv2D) and "patch" in layer.name:
            kernel = layer.kernel
            fan_in = int(np.prod(kernel.shape[:-1]))
            kernel.assign(normal(kernel.shape, 1.0 / np.sqrt(fan_in)))
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
        elif "dense" in parts and isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            layer.kernel.assign(normal(layer.kernel.shape, 0.02))
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    if "tokens" in parts:
        for variable in model.weights:
            # "embeddings": ViT's position embedding is a keras Embedding layer
            if variable.name in ("class_token", "distillation_token", "position_embedding", "embeddings"):
                variable.assign(normal(variable.shape, 0.02))
