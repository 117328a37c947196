"""Inside a plain transformer backbone (ViT, DeiT): the tokens after a chosen block, the attention
maps of every block, and attention rollout.

keras-hub runs all encoder blocks inside one `ViTEncoder` / `DeiTEncoder` layer, so a block's
tokens are not a tensor of the functional graph. These functions call the backbone's own layers
(its weights, no copy) block by block: for feature distillation (match a block's tokens) and for
attention-guided erasing (which patches does the class token look at).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lensnet.core.errors import LensnetError
from lensnet.models.layers import tokenizer_input

TRANSFORMER_FAMILIES = ("vit", "deit")  # inner keras-hub model names of lensnet's ViT and DeiT backbones


def _parts(backbone: Any) -> tuple[str, Any, Any]:
    """(family, patch embedding layer, encoder layer) of a lensnet ViT or DeiT backbone."""
    for family in TRANSFORMER_FAMILIES:
        try:
            inner = backbone.get_layer(family)
        except ValueError:
            continue
        return family, inner.get_layer(f"{family}_patching_and_embedding"), inner.get_layer(f"{family}_encoder")
    raise LensnetError(f"model {backbone.name!r} is not a ViT or DeiT backbone: it has no transformer blocks "
                       "to read tokens or attention from")


def num_blocks(backbone: Any) -> int:
    """Transformer blocks of a ViT or DeiT backbone."""
    return len(_parts(backbone)[2].encoder_layers)


def _run_block(family: str, block: Any, x: Any, scores: bool) -> tuple[Any, Any]:
    if family == "deit":
        return block(x, return_attention_scores=scores)
    if not scores:
        return block(x), None
    # keras-hub's ViTEncoderBlock cannot return its attention: the same computation, layer by layer
    y = block.layer_norm_1(x)
    y, weights = block.mha(y, y, return_attention_scores=True)
    x = block.dropout(y) + x
    return x + block.mlp(block.layer_norm_2(x)), weights


def block_index(backbone: Any, block: int) -> int:
    """The non-negative index of transformer block `block` (negative counts from the end), checked."""
    count = num_blocks(backbone)
    index = block if block >= 0 else count + block
    if not 0 <= index < count:
        raise LensnetError(f"model {backbone.name!r} has {count} blocks; block {block} does not exist")
    return index


def walk_blocks(backbone: Any, images: Any, block: int = -1, scores: bool = False) -> tuple[Any, list[Any]]:
    """Run the backbone's blocks up to and including `block`: (tokens (batch, N, D) after it, the
    attention weights (batch, heads, N, N) of blocks 0..block if `scores`, else []).

    One walk serves token matching, attention matching and rollout, so a distillation step that
    needs both a block's tokens and its attention runs the blocks once.
    """
    family, embed, encoder = _parts(backbone)
    index = block_index(backbone, block)
    x = embed(tokenizer_input(backbone, images))
    maps = []
    for layer in encoder.encoder_layers[: index + 1]:
        x, weights = _run_block(family, layer, x, scores)
        if scores:
            maps.append(weights)
    return x, maps


def block_tokens(backbone: Any, images: Any, block: int = -1) -> Any:
    """Tokens (batch, N, D) after transformer block `block` (negative counts from the end; -1 is
    the last block, before the final LayerNorm)."""
    return walk_blocks(backbone, images, block)[0]


def attention_maps(backbone: Any, images: Any, block: int = -1) -> list[Any]:
    """The attention weights (batch, heads, N, N) of blocks 0..`block` (default every block)."""
    return walk_blocks(backbone, images, block, scores=True)[1]


def attention_rollout(backbone: Any, images: Any) -> Any:
    """Attention rollout of a lensnet ViT/DeiT backbone on `images`: (batch, h, w) saliency of each patch."""
    return rollout(attention_maps(backbone, images), int(backbone.num_prefix_tokens), tuple(backbone.patch_grid))


def rollout(maps: Sequence[Any], num_prefix_tokens: int, grid: tuple[int, int]) -> Any:
    """Attention rollout (Abnar & Zuidema 2020) of every block's attention weights (batch, heads, N, N).

    Per block, heads averaged, plus the identity for the residual path, rows renormalised; the
    product over blocks gives how much each output token draws on each input token. A patch's
    saliency is what the prefix (class) tokens draw from it, or, without prefix tokens, what all
    tokens draw from it on average. Returns (batch, h, w) on the patch `grid`.
    """
    n = int(maps[0].shape[-1])
    eye = ops.eye(n, dtype="float32")
    result = None
    for weights in maps:
        a = ops.mean(ops.cast(weights, "float32"), axis=1) + eye
        a = a / ops.sum(a, axis=-1, keepdims=True)
        result = a if result is None else ops.matmul(a, result)
    prefix = int(num_prefix_tokens)
    rows = result[:, :prefix, prefix:] if prefix else result[:, :, :]
    saliency = ops.mean(rows, axis=1)
    h, w = grid
    return ops.reshape(saliency, (-1, h, w))


def is_plain_transformer(backbone: keras.Model) -> bool:
    try:
        _parts(backbone)
    except LensnetError:
        return False
    return True
