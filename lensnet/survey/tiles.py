"""Survey inputs -> tiles: cutouts of the model's size, each with its source, pixel box and sky position.

An input is a cutout file or stack (.npy / FITS) or a TFRecord dataset, read by lensnet.serving.inputs as
predict reads it (one tile per image, its box the whole image), or a FITS/.npy image larger than the model's
input (a survey tile): it is cut into tiles of the model's size that overlap by `overlap` pixels, the last
row/column shifted back to end on the image's edge, and the FITS header's WCS (astropy) gives each tile's
centre in RA/Dec.

Non-finite pixels (the blank edges of real survey images) follow `fill`: "zero", "median" (the tile's
finite median, per channel) or "error" (refused, as predict refuses them). A tile with more than
`max_blank` of its pixels non-finite is dropped, since it holds no sky to search.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.data.imagefiles import is_stack, nonfinite_pixels, read_fits_hdu, read_npy, to_hwc
from lensnet.serving.inputs import InputOptions, read_input

FILL_RULES = ("zero", "median", "error")


@dataclass
class TileSet:
    """The tiles of one unit of input (one file, or one batch of a dataset): images (N, H, W, C) and per tile
    its source name, box (x0, y0, x1, y1) in the source image's pixels (0-based, end exclusive) and RA/Dec."""

    unit: str
    sources: list[str]
    images: np.ndarray
    boxes: np.ndarray  # (N, 4) int
    radec: np.ndarray  # (N, 2) float, NaN without a WCS
    full_image: np.ndarray | None = None  # a survey image (H, W, C), for thumbnails with context
    class_names: list[str] | None = None  # the true class of each tile (dataset records)
    notes: list[str] = field(default_factory=list)
    cd: np.ndarray | None = None  # (2, 2) arcsec per pixel: (x, y) offsets -> (east, north), from the WCS
    bands: list[str] | None = None  # the planes' band names (FITS keyword BANDS, e.g. "g,r,i")
    header: Any = None  # the survey image's FITS header (its WCS), for tiles cut again

    def recentre(self, index: np.ndarray, peaks: np.ndarray, fill: str) -> None:
        """Cut tiles `index` of a survey image again centred on `peaks` (x, y) (kept inside the image), so a
        candidate shows its object in the middle, with their sources, boxes and sky positions."""
        h, w = self.images.shape[1:3]
        height, width = self.full_image.shape[:2]
        x0 = np.clip(np.rint(peaks[:, 0] - (w - 1) / 2), 0, width - w).astype(np.int64)
        y0 = np.clip(np.rint(peaks[:, 1] - (h - 1) / 2), 0, height - h).astype(np.int64)
        boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
        cut = np.stack([self.full_image[b[1]:b[3], b[0]:b[2]] for b in boxes]).astype(np.float32)
        self.images[index] = fill_nonfinite(cut, fill, self.unit)
        self.boxes[index] = boxes
        self.radec[index] = sky_positions(self.header, boxes)
        for i, b in zip(index, boxes):
            self.sources[i] = f"{self.unit}[x={b[0]},y={b[1]}]"


def tile_origins(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `size` along an axis of `length`, stepping by size - overlap; the last tile
    is shifted back to end at the edge so every pixel is covered."""
    if length < size:
        return []
    step = size - overlap
    starts = list(range(0, length - size + 1, step))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def fill_nonfinite(images: np.ndarray, rule: str, source: str) -> np.ndarray:
    """`images` (N, H, W, C) with NaN/Inf pixels replaced by the rule (see module doc)."""
    bad = ~np.isfinite(images)
    if not bad.any():
        return images
    if rule == "error":
        raise LensnetError(f"{source}: {int(bad.sum())} NaN or Inf pixel(s); --fill-nonfinite zero|median fills them")
    images = images.copy()
    if rule == "zero":
        images[bad] = 0.0
        return images
    if rule != "median":
        raise LensnetError(f"unknown --fill-nonfinite rule {rule!r}; choose one of {', '.join(FILL_RULES)}")
    for i in range(len(images)):
        for c in range(images.shape[-1]):
            plane = images[i, :, :, c]
            finite = plane[np.isfinite(plane)]
            plane[~np.isfinite(plane)] = float(np.median(finite)) if finite.size else 0.0
    return images


def sky_positions(header: Any, boxes: np.ndarray) -> np.ndarray:
    """(N, 2) RA/Dec in degrees of the boxes' centres from a FITS header's celestial WCS; NaN without one."""
    radec = np.full((len(boxes), 2), np.nan)
    if header is None or not len(boxes):
        return radec
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header).celestial
        except Exception:  # noqa: BLE001  (a malformed WCS is no sky position, not a failure)
            return radec
    if not wcs.has_celestial:
        return radec
    x, y = box_centres(boxes)
    ra, dec = wcs.pixel_to_world_values(x, y)
    return np.stack([np.asarray(ra, float), np.asarray(dec, float)], axis=1)


def local_cd(header: Any) -> np.ndarray | None:
    """The WCS's linear part at the reference pixel in arcsec per pixel ((x, y) offsets -> (east, north)), or
    None without a celestial WCS: enough to draw a cutout north up, east left with a scale bar."""
    if header is None:
        return None
    import warnings

    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header).celestial
        except Exception:  # noqa: BLE001  (a malformed WCS is no orientation, not a failure)
            return None
        if not wcs.has_celestial:
            return None
        matrix = wcs.pixel_scale_matrix * 3600.0
    return matrix if np.all(np.isfinite(matrix)) and abs(np.linalg.det(matrix)) > 0 else None


def band_names(header: Any) -> list[str] | None:
    value = header.get("BANDS") if header is not None else None
    return [b.strip() for b in str(value).split(",")] if value else None


def box_centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel coordinates of the boxes' centres (pixel i covers i-0.5 .. i+0.5, astropy's convention)."""
    boxes = np.asarray(boxes, float)
    return (boxes[:, 0] + boxes[:, 2] - 1) / 2, (boxes[:, 1] + boxes[:, 3] - 1) / 2


def _survey_image(kind: str, path: Path, expected: tuple[int, int, int],
                  options: InputOptions) -> tuple[np.ndarray, Any] | None:
    """(image (H, W, C) with NaN kept, header) if the file is one image larger than a cutout, else None."""
    if kind == "fits":
        data, header = read_fits_hdu(path, options.hdu)
    else:
        data, header = read_npy(path, options.trust_pickle)[0], None
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and tuple(data.shape[1:]) == tuple(expected[:2])):
        return None  # a cube of cutouts (N, H, W): predict's reader takes it
    return to_hwc(data, "auto", path, allow_nonfinite=True), header


def read_tiles(
    kind: str, path: Path, expected: tuple[int, int, int], options: InputOptions, overlap: int, fill: str,
    max_blank: float = 0.5,
) -> Iterator[TileSet]:
    """The tile sets of one input (see module doc); bad inputs go through `options.bad`."""
    h, w, c = expected
    if kind != "dataset":
        try:
            survey = _large_image(kind, path, expected, options)
        except LensnetError as exc:
            options.bad(str(exc))
            return
        if survey is not None:
            image, header = survey
            try:
                tiles = _cut(str(path), image, header, expected, overlap, fill, max_blank)
            except LensnetError as exc:
                options.bad(str(exc))
                return
            yield tiles
            return
    for n, chunk in enumerate(read_input(kind, path, expected, options)):
        try:
            images = fill_nonfinite(chunk.images, fill, str(path))
        except LensnetError as exc:
            options.bad(str(exc))
            return
        boxes = np.tile(np.array([[0, 0, w, h]]), (len(images), 1))
        header = _header_of(kind, path, options) if len(images) == 1 else None
        yield TileSet(f"{path}#{n}", chunk.sources, images, boxes, sky_positions(header, boxes),
                      class_names=chunk.class_names, cd=local_cd(header), bands=band_names(header))


def _header_of(kind: str, path: Path, options: InputOptions) -> Any:
    if kind != "fits":
        return None
    try:
        return read_fits_hdu(path, options.hdu)[1]
    except LensnetError:
        return None


def _large_image(kind: str, path: Path, expected: tuple[int, int, int], options: InputOptions):
    """The survey image of a file larger than one cutout, or None for a cutout or a stack of them."""
    h, w, c = expected
    if kind == "npy":
        from lensnet.data.imagefiles import npy_shape

        shape = npy_shape(path)
        if shape is None or not is_stack(shape, expected) or len(shape) == 4:
            return None
        if len(shape) == 3 and shape[0] != c and shape[-1] != c:
            return None  # a stack of 2-D cutouts
    survey = _survey_image(kind, path, expected, options)
    if survey is None:
        return None
    image, header = survey
    if image.shape[:2] == (h, w):
        return None
    if image.shape[-1] != c:
        raise LensnetError(f"{path}: image has {image.shape[-1]} channel(s); the finder takes {c}")
    if image.shape[0] < h or image.shape[1] < w:
        raise LensnetError(f"{path}: image {image.shape[:2]} is smaller than the finder's input ({h}, {w})")
    return image, header


def _cut(source: str, image: np.ndarray, header: Any, expected: tuple[int, int, int], overlap: int, fill: str,
         max_blank: float) -> TileSet:
    h, w, _ = expected
    boxes, tiles, notes = [], [], []
    for y0 in tile_origins(image.shape[0], h, overlap):
        for x0 in tile_origins(image.shape[1], w, overlap):
            tile = image[y0:y0 + h, x0:x0 + w]
            if nonfinite_pixels(tile) > max_blank * tile.size:
                notes.append(f"{source}: tile at x={x0} y={y0} is mostly blank; not searched")
                continue
            boxes.append([x0, y0, x0 + w, y0 + h])
            tiles.append(tile)
    boxes_arr = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    images = fill_nonfinite(np.stack(tiles) if tiles else np.zeros((0, *expected), np.float32), fill, source)
    sources = [f"{source}[x={b[0]},y={b[1]}]" for b in boxes_arr]
    return TileSet(source, sources, images.astype(np.float32), boxes_arr, sky_positions(header, boxes_arr),
                   full_image=image, notes=notes, cd=local_cd(header), bands=band_names(header), header=header)
