"""PNG thumbnails and saliency overlays, written atomically (matplotlib's image writer, no figures)."""

from __future__ import annotations

import os

import numpy as np

from lensnet.core.fileio import atomic_open


def display(image: np.ndarray) -> np.ndarray:
    """(H, W, C) raw pixels -> (H, W, 3) in [0, 1] with an arcsinh stretch between the 1st and 99.5th
    percentiles (lens arcs are faint beside the lens galaxy); 3+ channels show the first three as RGB."""
    image = np.asarray(image, dtype=np.float64)
    planes = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    finite = planes[np.isfinite(planes)]
    if not finite.size:
        return np.zeros(planes.shape)
    low, high = np.percentile(finite, [1.0, 99.5])
    scaled = np.clip((np.nan_to_num(planes, nan=low) - low) / max(high - low, 1e-12), 0, 1)
    return np.arcsinh(10 * scaled) / np.arcsinh(10)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The image in grey with the map (H, W) in [0, 1] over it in the 'inferno' colours, opaque where high."""
    from matplotlib import colormaps

    grey = display(image).mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    colour = colormaps["inferno"](np.clip(saliency, 0, 1))[..., :3]
    weight = alpha * np.clip(saliency, 0, 1)[..., None]
    return (1 - weight) * grey + weight * colour


def write_png(path: str | os.PathLike, rgb: np.ndarray, scale: int = 1) -> None:
    from matplotlib.image import imsave

    rgb = np.clip(rgb, 0, 1)
    if scale > 1:  # nearest-neighbour upscaling: a 32 px cutout is unreadable at its own size
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_open(path, "wb") as handle:
        imsave(handle, rgb, format="png")


def upscale_for(size: int, target: int = 128) -> int:
    return max(1, target // max(size, 1))
