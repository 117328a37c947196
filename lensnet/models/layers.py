"""Layers and shape checks shared by several families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

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
