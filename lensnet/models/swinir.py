"""SwinIR-style super-resolution transformer (Liang et al. 2021), sized for lens cutouts on a CPU.

shallow 3x3 conv -> residual Swin transformer groups (RSTB: Swin blocks with windows alternately
shifted by half a window, a 3x3 conv, a skip), all at the LOW resolution -> LayerNorm, conv, + shallow
features -> conv + LeakyReLU -> pixel-shuffle upsampler -> conv.

The Swin blocks are keras-hub's own (`SwinTransformerBlock`, the ones inside keras-hub's
SwinTransformerBackbone that lensnet's `swin_tiny` wraps): lensnet's swin.py wraps the whole
backbone, whose patch merging halves the resolution, which super-resolution must not do; so the
blocks are used directly, with their relative-position index frozen for ONNX as in swin.py.
keras-hub silently pads an image its window does not tile (and then shifts with a wrong mask), so
a side the window does not divide is refused here. Exact GELU, as swin_tiny (lensnet's ONNX
converter handles its Erfc).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
from keras_hub.src.models.swin_transformer.swin_transformer_layers import SwinTransformerBlock

from lensnet.core.errors import LensnetError
from lensnet.models.backbone import image_input
from lensnet.models.edsr import conv
from lensnet.models.layers import check_heads, check_lengths, freeze_index_tensors
from lensnet.models.registry import register_model
from lensnet.models.upsampling import SuperResolutionModel, check_residual, check_scale, reconstruct

# keras-hub passes the shifted-window attention mask as `mask=`, which Keras mistakes for a Keras mask.
warnings.filterwarnings("ignore", message="Layer 'attn' \\(of type WindowAttention\\) was passed an input with a mask")


@keras.saving.register_keras_serializable(package="lensnet")
class SwinIR(SuperResolutionModel):
    """SwinIR for classical super-resolution at the low resolution, pixel-shuffle upsampler.

    Args:
        image_shape: (height, width, channels) of the low-resolution input; height and width must be
            multiples of `window_size`.
        scale: upsampling factor (2, 3, 4 or 8).
        embed_dim: token width (SwinIR: 180; lite default 32).
        depths: Swin blocks per residual group (SwinIR: 6 groups of 6).
        num_heads: attention heads per group; each must divide embed_dim.
        window_size: attention window side in LR pixels (SwinIR: 8); odd blocks shift by window_size // 2.
        mlp_ratio: MLP width over token width.
        upsample_filters: width of the conv before the upsampler (SwinIR: 64).
        drop_path: stochastic depth rate, growing linearly over all blocks.
        residual: "bicubic" adds the bicubic upsampling of the input to the output; None: as published.
        name: model name.
        dtype: dtype policy.
    """

    def __init__(self, image_shape: Sequence[int], scale: int = 2, embed_dim: int = 32,
                 depths: Sequence[int] = (2, 2), num_heads: Sequence[int] = (4, 4), window_size: int = 8,
                 mlp_ratio: float = 2.0, upsample_filters: int = 32, drop_path: float = 0.0,
                 residual: str | None = "bicubic", name: str = "swinir", dtype: Any = None, **kwargs: Any) -> None:
        image_shape = tuple(int(d) for d in image_shape)
        depths, num_heads = tuple(int(d) for d in depths), tuple(int(n) for n in num_heads)
        scale = check_scale(scale, name)
        residual = check_residual(residual, name)
        check_lengths(name, depths=depths, num_heads=num_heads)
        if min(depths) < 1 or embed_dim < 1 or window_size < 1 or upsample_filters < 1:
            raise ValueError("depths, embed_dim, window_size and upsample_filters must be positive")
        for heads in num_heads:
            check_heads(name, embed_dim, heads, "embed_dim")
        h, w, channels = image_shape
        if h % window_size or w % window_size:
            raise LensnetError(f"model {name!r}: window_size {window_size} does not divide the low-resolution "
                               f"image {h}x{w}; use a window dividing both sides (e.g. "
                               f"{', '.join(str(d) for d in range(2, min(h, w) + 1) if h % d == 0 and w % d == 0)})")

        # === Functional model ===
        inputs = image_input(image_shape)
        shallow = conv(inputs, embed_dim, dtype, "shallow_conv")
        x = keras.layers.Reshape((h * w, embed_dim), dtype=dtype, name="to_tokens")(shallow)
        x = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="embed_norm")(x)
        total, done = sum(depths), 0
        for g, (depth, heads) in enumerate(zip(depths, num_heads)):
            group_in = x
            for b in range(depth):
                rate = drop_path * (done / max(total - 1, 1))
                block = SwinTransformerBlock(
                    dim=embed_dim, input_resolution=(h, w), num_heads=heads, window_size=window_size,
                    shift_size=0 if b % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio, drop_path=rate,
                    dtype=dtype, name=f"group{g}_block{b}")
                x = freeze_index_tensors(block)(x)
                done += 1
            y = keras.layers.Reshape((h, w, embed_dim), dtype=dtype, name=f"group{g}_to_map")(x)
            y = conv(y, embed_dim, dtype, f"group{g}_conv")
            y = keras.layers.Reshape((h * w, embed_dim), dtype=dtype, name=f"group{g}_to_tokens")(y)
            x = keras.layers.Add(dtype=dtype, name=f"group{g}_add")([y, group_in])
        x = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="body_norm")(x)
        x = keras.layers.Reshape((h, w, embed_dim), dtype=dtype, name="to_map")(x)
        x = conv(x, embed_dim, dtype, "body_conv")
        x = keras.layers.Add(dtype=dtype, name="global_skip")([x, shallow])
        x = conv(x, upsample_filters, dtype, "before_upsample")
        x = keras.layers.LeakyReLU(0.01, dtype=dtype, name="before_upsample_act")(x)
        outputs = reconstruct(x, inputs, image_shape, scale, upsample_filters, residual, dtype)
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, scale=scale, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.embed_dim = int(embed_dim)
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.upsample_filters = int(upsample_filters)
        self.drop_path = float(drop_path)
        self.residual = residual

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "image_shape": list(self.image_shape), "embed_dim": self.embed_dim,
                "depths": list(self.depths), "num_heads": list(self.num_heads), "window_size": self.window_size,
                "mlp_ratio": self.mlp_ratio, "upsample_filters": self.upsample_filters,
                "drop_path": self.drop_path, "residual": self.residual}


@register_model("swinir", family="swinir", kind="super_resolution",
                description="SwinIR-lite (2 residual Swin groups of 2 blocks, 32 wide, window 8 at LR, pixel shuffle)",
                defaults={"scale": 2, "embed_dim": 32, "depths": [2, 2], "num_heads": [4, 4], "window_size": 8,
                          "mlp_ratio": 2.0, "upsample_filters": 32, "drop_path": 0.0, "residual": "bicubic"})
def swinir(input_shape: tuple[int, int, int], **kwargs: Any) -> keras.Model:
    return SwinIR(input_shape, name="swinir", **kwargs)
