"""Locality self-attention (Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets") and
keras-hub's ViT encoder built with it.

Two changes to dot-product attention, both aimed at the flat attention a ViT learns from little data:
each token's attention to itself is masked (the diagonal of the score matrix), so a token must gather
from the others; and the softmax temperature is learned (one per block; stored as the log of a factor
on the usual 1/sqrt(d_k), so it starts as plain attention and weight decay pulls it back there).
Everything else is keras-hub's ViT block, weight for weight, so the block walks of lensnet.models.tokens
and the keras-hub weight names are unchanged. keras-hub builds its MultiHeadAttention inside
`ViTEncoderBlock.build`, hence the two `build` methods below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops
from keras_hub.src.models.vit.vit_layers import MLP, ViTEncoder, ViTEncoderBlock, ViTPatchingAndEmbedding

ATTENTIONS = ("global", "locality")


@keras.saving.register_keras_serializable(package="lensnet")
class LocalitySelfAttention(keras.layers.MultiHeadAttention):
    """Self-attention with the diagonal masked and a learned temperature (Lee et al. 2021).

    Overrides `_compute_attention`, the hook Keras documents for custom attention; the scores are computed
    explicitly (not by `ops.dot_product_attention`, whose scale is a Python float, not a weight)."""

    def build(self, query_shape: Sequence[int | None], value_shape: Sequence[int | None],
              key_shape: Sequence[int | None] | None = None) -> None:
        super().build(query_shape, value_shape, key_shape)
        self.temperature = self.add_weight(shape=(), initializer="zeros", name="temperature")

    def _compute_attention(self, query: Any, key: Any, value: Any, attention_mask: Any = None,
                           training: bool | None = None, return_attention_scores: bool = False,
                           use_causal_mask: bool = False) -> tuple[Any, Any]:
        length = ops.shape(query)[1]
        off_diagonal = ops.logical_not(ops.eye(length, dtype="bool"))
        mask = off_diagonal if attention_mask is None else ops.logical_and(ops.cast(attention_mask, "bool"),
                                                                          off_diagonal)
        scale = ops.exp(ops.cast(self.temperature, query.dtype)) * ops.cast(self._inverse_sqrt_key_dim, query.dtype)
        scores = ops.einsum(self._dot_product_equation, key, ops.multiply(query, scale))
        scores = self._masked_softmax(scores, mask)
        dropped = self._dropout_layer(scores, training=training) if self._dropout > 0.0 else scores
        return ops.einsum(self._combine_equation, dropped, value), scores


@keras.saving.register_keras_serializable(package="lensnet")
class LocalityViTEncoderBlock(ViTEncoderBlock):
    """keras-hub's `ViTEncoderBlock` with `LocalitySelfAttention` for its MultiHeadAttention."""

    def build(self, input_shape: Sequence[int | None]) -> None:
        policy = self.dtype_policy
        self.layer_norm_1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="ln_1",
                                                            dtype=policy)
        self.layer_norm_1.build(input_shape)
        self.mha = LocalitySelfAttention(num_heads=self.num_heads, key_dim=self.key_dim, use_bias=self.use_mha_bias,
                                         dropout=self.attention_dropout, name="mha", dtype=policy)
        self.mha.build(input_shape, input_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy, name="dropout")
        self.layer_norm_2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="ln_2",
                                                            dtype=policy)
        self.layer_norm_2.build((None, None, self.hidden_dim))
        self.mlp = MLP(hidden_dim=self.hidden_dim, mlp_dim=self.mlp_dim, use_bias=self.use_mlp_bias,
                       dropout_rate=self.dropout_rate, name="mlp", dtype=policy)
        self.mlp.build((None, None, self.hidden_dim))
        self.built = True


@keras.saving.register_keras_serializable(package="lensnet")
class LocalityViTEncoder(ViTEncoder):
    """keras-hub's `ViTEncoder` made of `LocalityViTEncoderBlock`s."""

    def build(self, input_shape: Sequence[int | None]) -> None:
        policy = self.dtype_policy
        self.encoder_layers = []
        for i in range(self.num_layers):
            block = LocalityViTEncoderBlock(
                num_heads=self.num_heads, hidden_dim=self.hidden_dim, mlp_dim=self.mlp_dim,
                dropout_rate=self.dropout_rate, use_mha_bias=self.use_mha_bias, use_mlp_bias=self.use_mlp_bias,
                attention_dropout=self.attention_dropout, layer_norm_epsilon=self.layer_norm_epsilon,
                dtype=policy, name=f"transformer_block_{i + 1}",
            )
            block.build((None, None, self.hidden_dim))
            self.encoder_layers.append(block)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy, name="dropout")
        self.layer_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy, name="ln")
        self.layer_norm.build((None, None, self.hidden_dim))
        self.built = True


def locality_vit(image_shape: tuple[int, int, int], patch_size: tuple[int, int], num_layers: int, num_heads: int,
                 hidden_dim: int, mlp_dim: int, dropout_rate: float, attention_dropout: float,
                 layer_norm_epsilon: float, use_class_token: bool, dtype: Any, name: str = "vit") -> keras.Model:
    """keras-hub's ViTBackbone graph (same layer names) with the locality encoder."""
    inputs = keras.layers.Input(shape=image_shape, name="images")
    tokens = ViTPatchingAndEmbedding(
        image_size=image_shape[:2], patch_size=patch_size, hidden_dim=hidden_dim, num_channels=image_shape[-1],
        use_class_token=use_class_token, dtype=dtype, name="vit_patching_and_embedding",
    )(inputs)
    outputs = LocalityViTEncoder(
        num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim,
        dropout_rate=dropout_rate, attention_dropout=attention_dropout, layer_norm_epsilon=layer_norm_epsilon,
        dtype=dtype, name="vit_encoder",
    )(tokens)
    return keras.Model(inputs, outputs, name=name)
