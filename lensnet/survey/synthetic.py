"""A synthetic survey image with injected lenses, and a lens finder that needs no training, for the
pipeline's tests and its benchmark (`python -m lensnet.bench pipeline-e2e`).

The image is Gaussian sky noise (sigma 1) with a TAN WCS (0.2"/px); each injected lens is a galaxy (a
Gaussian blob) inside an Einstein ring, `amplitude` times the noise at its brightest. The "peak finder"
is a tiny Keras model: the tile's brightest pixel (global max pooling of the raw pixels) through a
sigmoid centred on `level`, so a tile holding a lens scores near 1 and pure noise near 0. It is a
stand-in for a trained finder, so the benchmark measures the pipeline, not a model's quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def survey_header(height: int, width: int, ra: float = 150.1, dec: float = 2.2, scale_arcsec: float = 0.2) -> Any:
    """A FITS header with a TAN WCS centred on (ra, dec)."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [width / 2 + 0.5, height / 2 + 0.5]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    return wcs.to_header()


def lens_stamp(size: int, amplitude: float, radius: float = 5.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    ring = np.exp(-0.5 * ((r - radius) / 0.8) ** 2)
    galaxy = np.exp(-0.5 * (r / 1.5) ** 2)
    return (amplitude * np.maximum(ring, galaxy)).astype(np.float32)


def survey_image(height: int, width: int, positions: list[tuple[int, int]], seed: int = 0,
                 amplitude: float = 12.0, blank_columns: int = 0) -> np.ndarray:
    """(H, W) sky noise with a lens centred on each (x, y); the first `blank_columns` are NaN (a tile edge)."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((height, width)).astype(np.float32)
    stamp = lens_stamp(17, amplitude)
    half = stamp.shape[0] // 2
    for x, y in positions:
        y0, x0 = max(y - half, 0), max(x - half, 0)
        y1, x1 = min(y + half + 1, height), min(x + half + 1, width)
        image[y0:y1, x0:x1] += stamp[y0 - (y - half):y1 - (y - half), x0 - (x - half):x1 - (x - half)]
    if blank_columns:
        image[:, :blank_columns] = np.nan
    return image


def lens_positions(height: int, width: int, count: int, seed: int = 0, margin: int = 12,
                   spacing: int = 40) -> list[tuple[int, int]]:
    """`count` (x, y) positions at least `spacing` px apart and `margin` px from the edges."""
    rng = np.random.default_rng(seed + 1)
    found: list[tuple[int, int]] = []
    for _ in range(1000 * max(count, 1)):
        if len(found) == count:
            break
        x, y = int(rng.integers(margin, width - margin)), int(rng.integers(margin, height - margin))
        if all(np.hypot(x - a, y - b) >= spacing for a, b in found):
            found.append((x, y))
    return found


def write_survey_fits(path: str | Path, image: np.ndarray, header: Any) -> Path:
    from astropy.io import fits

    from lensnet.core.fileio import atomic_open

    with atomic_open(path, "wb") as handle:
        fits.PrimaryHDU(image, header=header).writeto(handle)
    return Path(path)


def peak_finder_run(run_dir: str | Path, size: int = 32, level: float = 6.0, sharpness: float = 2.0,
                    channels: int = 1) -> Path:
    """A run directory (as lensnet.fit leaves it) of the peak finder, ready for lensnet.export. With several
    channels the score is the sigmoid of the mean of the channels' peaks."""
    import keras

    from lensnet.artifacts.outputs import OutputSpec
    from lensnet.artifacts.runs import RunInfo, write_run

    inputs = keras.Input((size, size, channels), name="images")
    peak = keras.layers.GlobalMaxPooling2D(name="peak")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(peak)
    model = keras.Model(inputs, outputs, name="peak_finder")
    weights = np.full((channels, 1), sharpness / channels, "float32")
    model.get_layer("head").set_weights([weights, np.array([-sharpness * level], "float32")])
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "checkpoints" / "best.keras")
    spec = OutputSpec("probabilities", "probabilities", columns=("p_lens",), class_names=("non_lens", "lens"),
                      positive_class="lens")
    write_run(run_dir, RunInfo(
        task="lens_finding", model="peak_finder", input_shape=[size, size, channels], normalisation={"method": "none"},
        dataset={"path": "synthetic", "name": "peak-finder", "checksum": "0" * 64}, seed=0, status="finished",
        epochs_done=0, best_epoch=0, output=spec.to_json(),
    ))
    return run_dir


def recall_precision(boxes: np.ndarray, truths: list[tuple[int, int]], reach: int = 6) -> tuple[float, float, int]:
    """(recall, precision, lenses found): a lens is found when a box holds its centre; a box is right when
    it holds a lens's centre or its ring (a centre within `reach` px of the box: a tile seeing part of a
    ring saw that lens)."""
    boxes = np.asarray(boxes).reshape(-1, 4)

    def holds(box: np.ndarray, x: int, y: int, pad: int = 0) -> bool:
        return box[0] - pad <= x < box[2] + pad and box[1] - pad <= y < box[3] + pad

    found = sum(any(holds(b, x, y) for b in boxes) for x, y in truths)
    right = sum(any(holds(b, x, y, reach) for x, y in truths) for b in boxes)
    recall = found / len(truths) if truths else float("nan")
    precision = right / len(boxes) if len(boxes) else float("nan")
    return recall, precision, found
