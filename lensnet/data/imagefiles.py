"""One reader (and writer) of image files: `.npy` arrays and FITS HDUs.

`lensnet.convert`'s importers and `lensnet.predict` both read through here, so the same
file gets the same answer everywhere:

- `.npy`: read with `allow_pickle=False`; a file holding pickled Python objects (the DeepLense
  axion files store `[image, axion_mass]` object arrays) is refused unless the caller passes
  `trust_pickle=True`, the user's explicit statement that the file is safe (unpickling can run code).
- FITS: the HDU named or numbered by `hdu`, else the first HDU holding 2-D or more image data;
  astropy applies BSCALE/BZERO; truncated or corrupt files are errors, not warnings.
- shapes: one image (H, W), (H, W, C), (C, H, W), or a stack with a leading N (predict only);
  leading degenerate axes of FITS cubes are dropped.
- pixels: real numbers only; NaN or Inf pixels are an error naming the file (predict may skip).

Every problem is a one-line LensnetError that starts with the file's path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import atomic_open

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
LAYOUTS = ("auto", "hwc", "chw")
WRITE_FORMATS = ("npy", "fits")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def file_format(path: str | os.PathLike) -> str:
    """"npy", "fits", or "" for a name that is neither."""
    name = Path(path).name.lower()
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    return ""


# ---- reading -----------------------------------------------------------------------------------------


def _unpack_object(obj: object, path: Path) -> tuple[np.ndarray, float | None]:
    """A pickled DeepLense record -> (image, scalar or None)."""
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return obj, None
    if isinstance(obj, np.ndarray):
        items = list(obj.ravel())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        raise LensnetError(f"{path}: holds a pickled {type(obj).__name__}, not an image array")
    images, scalars = [], []
    for item in items:
        if np.ndim(item) >= 2:
            images.append(np.asarray(item))
        elif np.ndim(item) == 0 and isinstance(np.asarray(item).item(), (int, float, np.number)):
            scalars.append(float(np.asarray(item).item()))
        else:
            raise LensnetError(f"{path}: object array holds a {type(item).__name__} that is neither image nor number")
    if len(images) != 1 or len(scalars) > 1:
        raise LensnetError(
            f"{path}: object array holds {len(images)} image(s) and {len(scalars)} number(s); "
            "expected one image and at most one number (e.g. [image, axion_mass])"
        )
    return images[0], (scalars[0] if scalars else None)


def read_npy(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[np.ndarray, float | None]:
    """(image array as stored, scalar or None); pickled files only with `trust_pickle`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise LensnetError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != b"\x93NUMPY":  # np.load would try to unpickle it: say what it is instead
        raise LensnetError(f"{path}: not a .npy file (no NumPy header)")
    try:
        obj = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise LensnetError(f"{path}: not a readable .npy file ({_one_line(exc)})") from None
        if not trust_pickle:
            raise LensnetError(
                f"{path}: holds pickled Python objects (e.g. a DeepLense [image, axion_mass] array); unpickling "
                "can run arbitrary code, so it is refused: pass --trust-pickle if you trust these files"
            ) from None
        try:
            obj = np.load(path, allow_pickle=True)  # only with trust_pickle: the user vouches for these files
        except Exception as exc:  # noqa: BLE001  (a corrupt pickle can raise anything)
            raise LensnetError(f"{path}: cannot unpickle ({type(exc).__name__}: {_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001  (truncated headers raise EOFError, OSError, ...)
        raise LensnetError(f"{path}: not a readable .npy file ({type(exc).__name__}: {_one_line(exc)})") from None
    return _unpack_object(obj, path)


def npy_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape from a .npy header alone (no pixels read, never unpickles); None if unreadable."""
    try:
        return tuple(np.load(path, allow_pickle=False, mmap_mode="r").shape)
    except (ValueError, OSError, EOFError):
        return None


def _image_hdu(hdul: Any, hdu: int | str | None, path: Path) -> Any:
    """The HDU `hdu` of an open FITS file, or the first one with 2-D or more image data."""
    if hdu is None:
        chosen = next((h for h in hdul if h.is_image and h.data is not None and h.data.ndim >= 2), None)
        if chosen is None:
            raise LensnetError(f"{path}: no HDU holds image data")
        return chosen
    try:
        chosen = hdul[hdu]
    except (KeyError, IndexError):
        names = ", ".join(f"{i}:{h.name}" for i, h in enumerate(hdul))
        raise LensnetError(f"{path}: no HDU {hdu!r}; HDUs: {names}") from None
    if not chosen.is_image or chosen.data is None:
        raise LensnetError(f"{path}: HDU {hdu!r} holds no image data")
    return chosen


def read_fits_header(path: str | os.PathLike, hdu: int | str | None = None) -> Any:
    """The header (astropy.io.fits.Header) of the HDU `read_fits` reads, or None if the file cannot be read."""
    try:
        return read_fits_hdu(path, hdu)[1]
    except LensnetError:  # the pixels were read already; a header we cannot get is just not kept
        return None


# Keys that describe the stored array's encoding or its place in the file, not the sky: never copied
_ARRAY_KEYS = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK")
_SCALE_KEYS = ("PIXSCALE", "PIXSCAL1", "PIXSCAL2", "SECPIX", "SECPIX1", "SECPIX2")  # arcsec per pixel


def rescaled_header(header: Any, factor: float, note: str = "") -> Any:
    """A copy of a FITS header for an image of the same sky with `factor` times more pixels per side.

    The pixel scale is divided by `factor` (CDELTi, CDi_j, and the PIXSCALE-like keys), and CRPIXi
    moves so the reference pixel stays on the same sky position (pixel edges at 0.5 map to 0.5);
    keys that describe the stored array itself are dropped (astropy writes them for the new data).
    """
    from astropy.io import fits

    out = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in _ARRAY_KEYS or key.startswith("NAXIS") or key in ("", "COMMENT", "HISTORY"):
            continue
        value = card.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key.startswith("CDELT") or (key.startswith("CD") and "_" in key) or key in _SCALE_KEYS:
                value = value / factor
            elif key.startswith("CRPIX"):
                value = (value - 0.5) * factor + 0.5
        out.append((key, value, card.comment))
    out.add_history(note or f"lensnet: pixel scale divided by {factor:g} (super-resolution)")
    return out


def read_fits(path: str | os.PathLike, hdu: int | str | None = None) -> np.ndarray:
    """The image data of one HDU (default: the first HDU with 2-D or more data), as float64."""
    return read_fits_hdu(path, hdu)[0]


def read_fits_hdu(path: str | os.PathLike, hdu: int | str | None = None) -> tuple[np.ndarray, Any]:
    """(image data as float64, header) of one HDU, chosen as `read_fits` chooses it (the header carries the WCS)."""
    from astropy.io import fits

    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                chosen = _image_hdu(hdul, hdu, path)
                data = np.array(chosen.data, dtype=np.float64)  # copied out before the file closes
                header = chosen.header.copy()
        for warning in caught:
            text = str(warning.message)
            if "truncated" in text.lower() or "corrupt" in text.lower():
                raise LensnetError(f"{path}: {' '.join(text.split())}")
    except LensnetError:
        raise
    except Exception as exc:  # noqa: BLE001  (astropy raises OSError, ValueError, TypeError... on bad files)
        raise LensnetError(f"{path}: cannot read FITS ({type(exc).__name__}: {_one_line(exc)})") from None
    return data, header


def read_image_file(
    path: str | os.PathLike, *, hdu: int | str | None = None, trust_pickle: bool = False
) -> tuple[np.ndarray, float | None]:
    """(array as stored, scalar or None) of a .npy or FITS file, chosen by its name."""
    kind = file_format(path)
    if kind == "fits":
        return read_fits(path, hdu), None
    if kind == "npy":
        return read_npy(path, trust_pickle)
    raise LensnetError(f"{path}: not a .npy or FITS file ({', '.join(NPY_SUFFIXES + FITS_SUFFIXES)})")


# ---- pixel and shape rules ---------------------------------------------------------------------------


def _check_numeric(array: np.ndarray, source: str | os.PathLike) -> None:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise LensnetError(f"{source}: image has dtype {array.dtype}; expected real numbers")


def _drop_degenerate(array: np.ndarray, keep: int) -> np.ndarray:
    """FITS cubes often carry leading axes of length 1: drop them down to `keep` dimensions."""
    while array.ndim > keep and array.shape[0] == 1:
        array = array[0]
    return array


def nonfinite_pixels(image: np.ndarray) -> int:
    return int(np.size(image) - np.isfinite(image).sum())


def check_finite(image: np.ndarray, source: str | os.PathLike) -> None:
    """NaN or Inf pixels are an error naming `source` (overflow to float32 counts as Inf)."""
    bad = nonfinite_pixels(image)
    if bad:
        raise LensnetError(f"{source}: image has {bad} NaN or Inf pixel(s)")


def to_hwc(array: np.ndarray, layout: str, path: str | os.PathLike, allow_nonfinite: bool = False) -> np.ndarray:
    """One image (H, W), (1, H, W), (H, W, C) or (C, H, W) -> finite float32 (H, W, C).

    `allow_nonfinite`: keep NaN/Inf pixels (survey tiles have blank edges; the caller fills them)."""
    array = _drop_degenerate(np.asarray(array), 3)
    _check_numeric(array, path)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        first, last = array.shape[0], array.shape[-1]
        if layout == "auto":
            if last == 1 or (last < first and last <= 16):
                layout = "hwc"
            elif first == 1 or (first < last and first <= 16):
                layout = "chw"
            else:
                raise LensnetError(
                    f"{path}: cannot tell the channel axis of an image of shape {array.shape}; "
                    "pass --layout hwc or --layout chw"
                )
        if layout == "chw":
            array = np.moveaxis(array, 0, -1)
    else:
        raise LensnetError(
            f"{path}: image has shape {array.shape}; expected (H, W), (1, H, W), (H, W, C) or (C, H, W)"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf, refused just below
        image = np.ascontiguousarray(array, dtype=np.float32)
    if not allow_nonfinite:
        check_finite(image, path)
    return image


def is_stack(shape: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    """Whether an array of `shape` is a stack of images (leading N) for a model taking `expected`."""
    h, w, c = expected
    return tuple(shape) not in {(h, w, c), (c, h, w), (h, w)}


def as_image_batch(array: Any, expected: tuple[int, int, int], source: str | os.PathLike) -> np.ndarray:
    """Shape `array` into a float32 batch (N, H, W, C) for a model taking (H, W, C) images.

    Accepted: one image (H, W, C), channel-first (C, H, W), or (H, W) when C is 1; or a stack of
    them with a leading N. Anything else is a LensnetError naming `source` and the expected shape.
    Pixels are not checked here: a stack may hold a few bad images that the caller skips.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise LensnetError(f"{source}: expected numeric pixels, got dtype {array.dtype}")
    array = _drop_degenerate(array, 4)
    h, w, c = expected
    shape = array.shape
    batch: np.ndarray | None = None
    if shape == (h, w, c):
        batch = array[None]
    elif len(shape) == 4 and shape[1:] == (h, w, c):
        batch = array
    elif shape == (c, h, w):
        batch = np.moveaxis(array, 0, -1)[None]
    elif len(shape) == 4 and shape[1:] == (c, h, w):
        batch = np.moveaxis(array, 1, -1)
    elif c == 1 and shape == (h, w):
        batch = array[None, :, :, None]
    elif c == 1 and len(shape) == 3 and shape[1:] == (h, w):
        batch = array[..., None]
    if batch is None:
        raise LensnetError(
            f"{source}: image shape {shape} does not fit the model, which takes images of shape {expected} "
            f"(H, W, C), or a stack (N, {h}, {w}, {c})"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: the caller's finite check sees it
        return np.ascontiguousarray(batch, dtype=np.float32)


# ---- writing -----------------------------------------------------------------------------------------


def write_image(path: str | os.PathLike, image: np.ndarray, fmt: str, header: Any = None) -> Path:
    """Write one image (H, W, C) float32 as .npy, or as FITS (a (C, H, W) cube, a 2-D image when C is 1,
    with `header`'s cards when given), atomically; returns the path written (the format's suffix is added)."""
    image = np.asarray(image, dtype=np.float32)
    if fmt not in WRITE_FORMATS:
        raise LensnetError(f"unknown image format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    path = Path(f"{os.fspath(path)}.{fmt}")
    if fmt == "npy":
        with atomic_open(path, "wb") as handle:
            np.save(handle, image, allow_pickle=False)
        return path
    from astropy.io import fits

    cube = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else np.moveaxis(image, -1, 0)
    with atomic_open(path, "wb") as handle:
        fits.PrimaryHDU(cube, header=header).writeto(handle)
    return path
