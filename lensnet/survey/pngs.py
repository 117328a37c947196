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


def noise_sigma(image: np.ndarray) -> float:
    """The sky noise of an image (H, W, C): 1.4826 x the median absolute deviation of its finite pixels."""
    finite = np.asarray(image, np.float64)[np.isfinite(image)]
    if not finite.size:
        return 1.0
    mad = float(np.median(np.abs(finite - np.median(finite))))
    return 1.4826 * mad if mad > 0 else float(np.std(finite)) or 1.0


def lupton_rgb(image: np.ndarray, scales: tuple[float, ...] | None = None, stretch: float | None = None,
               q: float = 8.0) -> np.ndarray:
    """(H, W, C) -> (H, W, 3) in [0, 1] as Lupton et al. (2004, PASP 116, 133) make colour images: bands
    reddest first as R, G, B (i, r, g from g, r, i planes), each times its scale, then one asinh stretch of
    their mean intensity I: colour = band * asinh(q I / stretch) / (q I), so a colour survives saturation.
    `stretch` defaults to 5 x the sky noise. One band: grey."""
    image = np.nan_to_num(np.asarray(image, np.float64))
    planes = image[..., 2::-1] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    if scales is not None:
        planes = planes * np.asarray(scales, np.float64)[::-1][: planes.shape[-1]]
    stretch = stretch or 5.0 * noise_sigma(planes)
    planes = np.clip(planes, 0, None)
    intensity = planes.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(intensity > 0, np.arcsinh(q * intensity / stretch) / (q * intensity), 0.0)
    rgb = planes * factor
    peak = np.maximum(rgb.max(axis=-1, keepdims=True), 1.0)  # a saturated pixel keeps its hue
    return np.clip(rgb / peak, 0, 1)


def north_up(image: np.ndarray, cd: np.ndarray | None) -> np.ndarray:
    """(H, W, ...) resampled (nearest pixel) so that north is up and east left, from the 2x2 matrix `cd`
    (pixel offsets (x, y) -> (east, north) offsets, any unit); unchanged without one. Array row 0 is drawn at
    the top, so a standard WCS (east to -x, north to +y) is a vertical flip."""
    if cd is None:
        return image
    cd = np.asarray(cd, np.float64)
    h, w = image.shape[:2]
    scale = np.sqrt(abs(np.linalg.det(cd)))
    v, u = np.mgrid[:h, :w].astype(np.float64)
    offsets = np.stack([-(u - (w - 1) / 2) * scale, -(v - (h - 1) / 2) * scale])  # (east, north) of each pixel
    dx, dy = np.tensordot(np.linalg.inv(cd), offsets, axes=1)
    x = np.clip(np.rint(dx + (w - 1) / 2), 0, w - 1).astype(int)
    y = np.clip(np.rint(dy + (h - 1) / 2), 0, h - 1).astype(int)
    return image[y, x]
