"""Run a registry ViT / DeiT backbone on a subset of its patch tokens (the MAE encoder).

MAE's encoder sees the visible patches only. keras-hub's ViT and DeiT backbones are one
functional graph (patch embedding + class tokens + position embedding, then the encoder), but
their encoder stack takes a token sequence of any length. So instead of building a second
encoder, `VisibleTokenEncoder` calls the SAME sub-layers of the registry backbone: the patch
embedding convolution, the position embeddings, the prefix tokens and the encoder, with a
gather of the kept patches in between. Every weight it uses is the backbone's own, so a model
pretrained this way loads into the registry backbone (`--init`) without any conversion.

Swin has no such path: its shifted windows need the whole patch grid, so the pretrain task
trains it SimMIM's way instead (lensnet.tasks.ssl_models.MaskedMapModel); other families are
refused here with a one-line error.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from lensnet.core.errors import LensnetError
from lensnet.models.layers import tokenizer_input

MASKABLE_FAMILIES = ("vit", "deit")


def _inner(backbone: keras.Model, kind: str) -> keras.Model:
    for layer in backbone.layers:
        if type(layer).__name__ == kind:
            return layer
    raise LensnetError(f"model {backbone.name!r} has no keras-hub {kind}")


class VisibleTokenEncoder:
    """`encode(images, keep)`: the backbone's tokens for the prefix tokens + the patches `keep` (N, K) only.

    A backbone's tokenizer (`tokenizer="shifted"` or `"conv"`) sees the whole image before the gather, so
    a visible token also draws on the edge of its masked neighbours (half a patch for shifted patches, a
    few pixels through the conv stem's 3x3 kernels); ConvMAE masks inside the stem instead. Not measured.

    Args:
        backbone: a built lensnet ViTBackbone or DeiTBackbone (not a copy: its weights are used).
    """

    def __init__(self, backbone: keras.Model) -> None:
        kind = type(backbone).__name__
        self.backbone = backbone
        if kind == "ViTBackbone":
            inner = _inner(backbone, "ViTBackbone")
            self.embedding = inner.get_layer("vit_patching_and_embedding")
            self.encoder = inner.get_layer("vit_encoder")
            self.family = "vit"
        elif kind == "DeiTBackbone":
            inner = _inner(backbone, "DeiTBackbone")
            self.embedding = inner.get_layer("deit_patching_and_embedding")
            self.encoder = inner.get_layer("deit_encoder")
            self.family = "deit"
        else:
            raise LensnetError(f"MAE needs a model of the vit, deit or swin family; {backbone.name!r} is a {kind}")
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.patch_grid = tuple(backbone.patch_grid)
        self.patch_size = tuple(backbone.patch_size)
        self.hidden_dim = int(backbone.hidden_dim)

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    def _prefix_and_positions(self, batch: Any) -> tuple[list, Any]:
        e = self.embedding
        if self.family == "vit":
            positions = e.position_embedding(e.position_ids)  # (1, prefix + N, D)
            prefix = [e.class_token] if e.use_class_token else []
        else:
            positions = e.position_embedding
            prefix = [e.class_token, e.distillation_token]
        return [ops.tile(t, (batch, 1, 1)) for t in prefix], positions

    def encode(self, images: Any, keep: Any, training: bool = False) -> Any:
        """(N, prefix + K, D) encoder outputs for the prefix tokens and the patches `keep` (N, K) int."""
        patches = self.embedding.patch_embedding(tokenizer_input(self.backbone, images, training))  # (N, gh, gw, D)
        shape = ops.shape(patches)
        patches = ops.reshape(patches, (shape[0], -1, shape[-1]))
        prefix, positions = self._prefix_and_positions(shape[0])
        p = self.num_prefix_tokens
        patches = patches + positions[:, p:, :]
        visible = ops.take_along_axis(patches, ops.expand_dims(keep, -1), axis=1)
        tokens = [t + positions[:, i: i + 1, :] for i, t in enumerate(prefix)]
        x = ops.concatenate([*tokens, visible], axis=1) if tokens else visible
        if self.family == "deit":
            x = self.embedding.dropout(x, training=training)
            return self.encoder(x, training=training)[0]
        return self.encoder(x, training=training)


def patchify(images: Any, patch_size: tuple[int, int]) -> Any:
    """(N, H, W, C) -> (N, gh*gw, ph*pw*C), patches row by row as the patch embedding orders them."""
    ph, pw = patch_size
    shape = ops.shape(images)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    x = ops.reshape(images, (n, h // ph, ph, w // pw, pw, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (n, (h // ph) * (w // pw), ph * pw * c))


def unpatchify(patches: Any, patch_size: tuple[int, int], image_shape: tuple[int, int, int]) -> Any:
    """The inverse of `patchify`."""
    ph, pw = patch_size
    h, w, c = image_shape
    n = ops.shape(patches)[0]
    x = ops.reshape(patches, (n, h // ph, w // pw, ph, pw, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (n, h, w, c))
