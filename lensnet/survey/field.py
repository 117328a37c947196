"""A synthetic survey field (`python -m lensnet.survey synth`): g, r, i images of a patch of sky with a TAN
WCS, galaxies at survey density, stars, injected strong lenses, masked (NaN) edges and a chip gap, and the
truth catalogue, so that `lensnet.pipeline` and `lensnet.dashboard` can be tried and scored end to end.

What is drawn (every number is a `FieldSpec` field, so a run's field.json says exactly what was made):
- galaxies: i magnitudes from a number-count slope d log N / dm = 0.33 (deep optical counts rise by roughly
  this; e.g. HSC-SSP and CFHTLS i-band counts), `density` per arcmin^2 brighter than `mag_max`; 30%
  early-type (de Vaucouleurs n = 4, red: g-r 0.9, r-i 0.45), 70% late-type (exponential discs, blue: g-r
  0.45, r-i 0.2), 0.1 mag colour scatter; half-light radius shrinking with magnitude (0.6" at i = 21,
  x 10^(-0.1 (i - 21)), lognormal scatter 0.25 dex) and axis ratios 0.3-1;
- stars: `star_density` per arcmin^2, i from 16 to 24, stellar colours; point sources;
- lenses: a Poisson number with mean `lens_rate` x the number of galaxies; each a red early-type deflector
  (i 18.5-21) with an SIE + external shear lensing a blue Sersic source (i 22.5-24.5 unlensed, g-i -0.2,
  0.1"-0.3"),
  theta_E 0.8"-2.5", rendered by lenstronomy through the lensnet simulator's renderer
  (lensnet.simulate.rendering); its magnification is measured as lensed / unlensed source flux;
- the seeing (Gaussian PSF, `fwhm_arcsec`) and Gaussian sky noise for a 5-sigma point-source depth
  `depth_i` (and per band), in flux units with zero point 27 (m = 27 - 2.5 log10 F, HSC coadds' convention);
- masks: `edge_px` NaN columns on the left and rows at the top (the field's dither edge) and a `gap_px` wide
  NaN chip gap; no lens is placed within a tile of a mask or the border.
Files (each written to a temporary name and renamed): field.fits (a (3, H, W) float32 cube, planes g, r, i,
BANDS = 'g,r,i' in the header, celestial TAN WCS at `pixel_scale`), truth.csv (one row per object: id, kind
galaxy | star | lens, ra, dec, x, y (0-based pixels), mags, is_lens, theta_e_arcsec, source_mag_i,
magnification, file) and field.json (the spec, the seed, the counts).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError

BANDS = ("g", "r", "i")
ZERO_POINT = 27.0
TRUTH_COLUMNS = ["id", "kind", "ra", "dec", "x", "y", "mag_g", "mag_r", "mag_i", "is_lens", "theta_e_arcsec",
                 "source_mag_i", "magnification", "file"]


@dataclass
class FieldSpec:
    size: int = 2048  # pixels per side
    pixel_scale: float = 0.2  # arcsec / pixel (LSST-like)
    ra: float = 150.1  # field centre (deg)
    dec: float = 2.2
    density: float = 50.0  # galaxies per arcmin^2 with i < mag_max
    mag_min: float = 18.0
    mag_max: float = 25.0
    star_density: float = 2.0  # stars per arcmin^2
    lens_rate: float = 0.005  # lenses per galaxy (mean)
    fwhm_arcsec: float = 0.7
    depth_i: float = 25.5  # 5-sigma point-source depth; g and r are 0.3 and 0.2 mag deeper
    edge_px: int = 40
    gap_px: int = 8
    tile: int = 64  # lenses keep this far from masks and borders

    def check(self) -> None:
        rules = {"size": (self.size >= 4 * self.tile, f"at least 4 x --tile ({4 * self.tile})"),
                 "pixel_scale": (self.pixel_scale > 0, "positive"), "density": (self.density >= 0, ">= 0"),
                 "star_density": (self.star_density >= 0, ">= 0"), "lens_rate": (0 <= self.lens_rate <= 1, "in [0, 1]"),
                 "fwhm_arcsec": (self.fwhm_arcsec > 0, "positive"),
                 "mag_max": (self.mag_max > self.mag_min, "greater than --mag-min"),
                 "edge_px": (0 <= self.edge_px < self.size // 4, "in [0, size / 4)"),
                 "gap_px": (0 <= self.gap_px < self.size // 4, "in [0, size / 4)"),
                 "tile": (self.tile >= 8, "at least 8"), "dec": (-90 < self.dec < 90, "in (-90, 90)")}
        for name, (ok, rule) in rules.items():
            if not ok:
                raise LensnetError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be {rule}")

    @property
    def area_arcmin2(self) -> float:
        return (self.size * self.pixel_scale / 60.0) ** 2


@dataclass
class Field:
    images: np.ndarray  # (3, H, W) float32, planes g, r, i, NaN where masked
    truth: list[dict]
    header: object
    spec: FieldSpec
    seed: int


def _sersic_b(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)  # Ciotti & Bertin (1999)


def _sersic_stamp(flux: float, r_e_px: float, n: float, q: float, phi: float, dx: float, dy: float) -> np.ndarray:
    """A Sersic profile summing to `flux`, centred (dx, dy) px off the stamp's central pixel."""
    half = int(min(max(math.ceil(5 * r_e_px), 5), 80))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    xx, yy = xx - dx, yy - dy
    c, s = math.cos(phi), math.sin(phi)
    u, v = c * xx + s * yy, -s * xx + c * yy
    r = np.sqrt(u**2 * q + v**2 / q) / max(r_e_px, 0.3)
    profile = np.exp(-_sersic_b(n) * (np.power(r, 1.0 / n) - 1.0))
    return (flux * profile / profile.sum()).astype(np.float32)


def _add(image: np.ndarray, stamp: np.ndarray, x: int, y: int) -> None:
    """Add `stamp` centred on pixel (x, y), clipped at the image's edges."""
    half = stamp.shape[0] // 2
    h, w = image.shape
    y0, x0, y1, x1 = max(y - half, 0), max(x - half, 0), min(y + half + 1, h), min(x + half + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    image[y0:y1, x0:x1] += stamp[y0 - (y - half):y1 - (y - half), x0 - (x - half):x1 - (x - half)]


def _flux(mag: float) -> float:
    return 10.0 ** (-0.4 * (mag - ZERO_POINT))


def _magnitudes(rng: np.random.Generator, count: int, lo: float, hi: float, slope: float = 0.33) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10^(slope m) between lo and hi (inverse CDF)."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.random(count) * (b - a)) / slope


class _LensRenderer:
    """Lensed-source stamps through the lensnet simulator's lenstronomy renderer (no PSF: the field is
    convolved once at the end)."""

    def __init__(self, size: int, pixel_scale: float) -> None:
        from lensnet.simulate.rendering import Renderer

        self.size = size
        self.renderer = Renderer(size, pixel_scale, {"psf_type": "NONE"}, 3)

    def arcs(self, theta_e: float, e1: float, e2: float, g1: float, g2: float,
             source: dict) -> tuple[np.ndarray, float]:
        """(lensed source image normalised to an unlensed flux of 1, magnification)."""
        lens = [{"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
                {"gamma1": g1, "gamma2": g2}]
        lensed = self.renderer.image(lens, (), {"amp": 1.0, **source}, None)
        unlensed = self.renderer.image([{**lens[0], "theta_E": 0.0}, {"gamma1": 0.0, "gamma2": 0.0}], (),
                                       {"amp": 1.0, **source}, None)
        total = float(unlensed.sum())
        return lensed / total, float(lensed.sum()) / total


def make_field(spec: FieldSpec, seed: int, file_name: str = "field.fits", progress: bool | None = None) -> Field:
    from scipy.ndimage import gaussian_filter

    from lensnet.core.progress import Progress
    from lensnet.survey.synthetic import survey_header

    spec.check()
    rng = np.random.default_rng(seed)
    n = spec.size
    header = survey_header(n, n, spec.ra, spec.dec, spec.pixel_scale)
    images = np.zeros((3, n, n), np.float32)
    truth: list[dict] = []
    n_gal = int(rng.poisson(spec.density * spec.area_arcmin2))
    n_star = int(rng.poisson(spec.star_density * spec.area_arcmin2))
    n_lens = int(rng.poisson(spec.lens_rate * n_gal))
    with Progress(n_gal + n_star + n_lens, "synth", "object", enabled=progress) as bar:
        mags = _magnitudes(rng, n_gal, spec.mag_min, spec.mag_max)
        for k, mag_i in enumerate(mags):
            early = rng.random() < 0.3
            gr, ri = (0.9, 0.45) if early else (0.45, 0.2)
            gr, ri = gr + 0.1 * rng.standard_normal(), ri + 0.1 * rng.standard_normal()
            band_mags = (mag_i + ri + gr, mag_i + ri, mag_i)
            r_e = 0.6 * 10 ** (-0.1 * (mag_i - 21.0) + 0.25 * rng.standard_normal()) / spec.pixel_scale
            n_s, q, phi = (4.0 if early else 1.0), float(rng.uniform(0.3, 1.0)), float(rng.uniform(0, math.pi))
            x, y = rng.uniform(0, n, 2)
            xi, yi = int(x), int(y)
            shape = _sersic_stamp(1.0, r_e, n_s, q, phi, x - xi - 0.5, y - yi - 0.5)
            for b, m in enumerate(band_mags):
                _add(images[b], shape * _flux(m), xi, yi)
            truth.append(_row(f"g{k:05d}", "galaxy", x - 0.5, y - 0.5, band_mags))
            bar.update(1)
        for k in range(n_star):
            mag_i = float(rng.uniform(16.0, 24.0))
            ri = float(rng.uniform(0.0, 1.2))
            band_mags = (mag_i + ri + 1.1 * ri + 0.4, mag_i + ri, mag_i)
            x, y = rng.integers(0, n, 2)
            for b, m in enumerate(band_mags):
                images[b, y, x] += _flux(m)
            truth.append(_row(f"s{k:05d}", "star", float(x), float(y), band_mags))
            bar.update(1)
        renderer = _LensRenderer(65, spec.pixel_scale) if n_lens else None
        placed: list[tuple[int, int]] = []
        margin = spec.edge_px + spec.tile
        gap_x = _gap_x(spec)
        for k in range(n_lens):
            for _ in range(1000):
                x, y = (int(v) for v in rng.integers(margin, n - margin, 2))
                if abs(x - gap_x) > spec.tile and all(math.hypot(x - a, y - b) > spec.tile for a, b in placed):
                    break
            placed.append((x, y))
            theta_e = float(rng.uniform(0.8, 2.5))
            mag_i = float(rng.uniform(18.5, 21.0))
            band_mags = (mag_i + 1.35 + 0.1 * rng.standard_normal(), mag_i + 0.45, mag_i)
            r_e = float(rng.uniform(0.6, 1.5)) / spec.pixel_scale
            q, phi = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, math.pi))
            light = _sersic_stamp(1.0, r_e, 4.0, q, phi, 0.0, 0.0)
            source_mag = float(rng.uniform(22.5, 24.5))
            source_mags = (source_mag - 0.2, source_mag - 0.1, source_mag)  # blue: star-forming
            offset = theta_e * float(rng.uniform(0.05, 0.4))
            angle = float(rng.uniform(0, 2 * math.pi))
            source = {"R_sersic": float(rng.uniform(0.1, 0.3)), "n_sersic": 1.0,
                      "e1": float(rng.uniform(-0.2, 0.2)), "e2": float(rng.uniform(-0.2, 0.2)),
                      "center_x": offset * math.cos(angle), "center_y": offset * math.sin(angle)}
            e1, e2, g1, g2 = (float(v) for v in rng.uniform([-0.1, -0.1, -0.03, -0.03], [0.1, 0.1, 0.03, 0.03]))
            arcs, magnification = renderer.arcs(theta_e, e1, e2, g1, g2, source)
            for b in range(3):
                _add(images[b], light * _flux(band_mags[b]), x, y)
                _add(images[b], (arcs * _flux(source_mags[b])).astype(np.float32), x, y)
            row = _row(f"l{k:05d}", "lens", float(x), float(y), band_mags)
            row.update(is_lens=1, theta_e_arcsec=round(theta_e, 4), source_mag_i=round(source_mag, 3),
                       magnification=round(magnification, 3))
            truth.append(row)
            bar.update(1)
    sigma_psf = spec.fwhm_arcsec / spec.pixel_scale / 2.3548
    noise_area = 4 * math.pi * sigma_psf**2
    for b, depth in enumerate((spec.depth_i + 0.3, spec.depth_i + 0.2, spec.depth_i)):
        images[b] = gaussian_filter(images[b], sigma_psf, mode="constant")
        images[b] += (_flux(depth) / (5 * math.sqrt(noise_area)) * rng.standard_normal((n, n))).astype(np.float32)
    _mask(images, spec)
    _sky(truth, header, file_name)
    return Field(images, truth, header, spec, seed)


def _gap_x(spec: FieldSpec) -> int:
    return int(0.6 * spec.size)


def _mask(images: np.ndarray, spec: FieldSpec) -> None:
    if spec.edge_px:
        images[:, :, :spec.edge_px] = np.nan  # left columns
        images[:, -spec.edge_px:, :] = np.nan  # top rows (FITS row 0 is the bottom)
    if spec.gap_px:
        x = _gap_x(spec)
        images[:, :, x - spec.gap_px // 2:x + (spec.gap_px + 1) // 2] = np.nan


def _row(oid: str, kind: str, x: float, y: float, mags: tuple) -> dict:
    return {"id": oid, "kind": kind, "x": round(x, 3), "y": round(y, 3), "mag_g": round(mags[0], 3),
            "mag_r": round(mags[1], 3), "mag_i": round(mags[2], 3), "is_lens": 0, "theta_e_arcsec": "",
            "source_mag_i": "", "magnification": ""}


def _sky(truth: list[dict], header: object, file_name: str) -> None:
    from astropy.wcs import WCS

    wcs = WCS(header)
    ra, dec = wcs.pixel_to_world_values(np.array([r["x"] for r in truth], float),
                                        np.array([r["y"] for r in truth], float))
    for row, a, d in zip(truth, np.atleast_1d(ra), np.atleast_1d(dec)):
        row.update(ra=f"{float(a):.7f}", dec=f"{float(d):.7f}", file=file_name)


def write_field(field: Field, out: str | Path) -> dict:
    """field.fits, truth.csv and field.json in `out`, each written atomically; returns the summary."""
    from astropy.io import fits

    from lensnet.core.fileio import atomic_open, write_json, write_text

    out = Path(out)
    header = field.header.copy()
    header["BANDS"] = (",".join(BANDS), "planes of the cube, first to last")
    header["BUNIT"] = ("flux", f"m = {ZERO_POINT:g} - 2.5 log10(flux)")
    header["MAGZERO"] = ZERO_POINT
    with atomic_open(out / "field.fits", "wb") as handle:
        fits.PrimaryHDU(field.images, header=header).writeto(handle)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(field.truth)
    write_text(out / "truth.csv", buffer.getvalue())
    counts = {kind: sum(r["kind"] == kind for r in field.truth) for kind in ("galaxy", "star", "lens")}
    summary = {"format": "lensnet-synthetic-field", "seed": field.seed, "spec": asdict(field.spec),
               "bands": list(BANDS), "zero_point": ZERO_POINT, "counts": counts,
               "area_arcmin2": round(field.spec.area_arcmin2, 3),
               "files": {"image": "field.fits", "truth": "truth.csv"}}
    write_json(out / "field.json", summary)
    return summary


def read_truth(path: str | Path) -> list[dict]:
    """The rows of a truth catalogue (truth.csv); a missing or damaged file is one error line."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LensnetError(f"truth catalogue {path}: cannot read ({type(exc).__name__})") from None
    needed = {"x", "y", "is_lens", "file"}
    if rows and not needed <= set(rows[0]):
        raise LensnetError(f"truth catalogue {path}: needs columns {', '.join(sorted(needed))}")
    try:
        for row in rows:
            row["x"], row["y"], row["is_lens"] = float(row["x"]), float(row["y"]), int(row["is_lens"])
    except ValueError:
        raise LensnetError(f"truth catalogue {path}: x, y and is_lens must be numbers") from None
    return rows


def match_lenses(truth: list[dict], candidates: list[dict]) -> tuple[list[bool], list[bool]]:
    """(per truth lens: found by a candidate, per candidate: holds a truth lens). A candidate holds a lens when
    its pixel box (x0, y0, x1, y1) in the same file holds the lens's centre."""
    lenses = [t for t in truth if t["is_lens"]]
    found = [False] * len(lenses)
    right = [False] * len(candidates)
    for c, row in enumerate(candidates):
        try:
            x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        except (KeyError, ValueError):
            continue
        unit = Path(str(row.get("unit", row.get("source", "")))).name
        for t, lens in enumerate(lenses):
            if Path(lens["file"]).name == unit and x0 <= lens["x"] < x1 and y0 <= lens["y"] < y1:
                found[t] = right[c] = True
    return found, right
