"""A survey-like lens-finding population: deflectors from a velocity-dispersion function, sources from a
luminosity function, non-lenses with the impostors that fool real finders (kind `lens_finding_survey`).

The relations (each cited in configs/datasets/lens_finding_survey.yaml, the values are config):
- deflector velocity dispersion from the SDSS early-type VDF of Choi, Park & Vogeley (2007),
  phi(sigma) ~ (sigma/sigma*)^alpha exp(-(sigma/sigma*)^beta) / sigma, weighted by sigma^4 (the SIS lensing
  cross-section, as Collett 2015 draws deflectors); with x = (sigma/sigma*)^beta the weighted density is a
  Gamma((alpha + w)/beta) law in x, drawn by its inverse CDF between sigma_min and sigma_max;
- theta_E of an SIS, 4 pi (sigma/c)^2 D_ls/D_s, used as the SIE's Einstein radius;
- lens light from sigma by the Hyde & Bernardi (2009) relations as LensPop (Collett 2015) uses them:
  log sigma = -2.97 - 0.37 M_r - 0.006 M_r^2 solved for M_r, log10 R_e[kpc] = 2.46 - 2.79 V + 0.84 V^2;
- sources from a Schechter luminosity function of star-forming galaxies, sizes from a size-luminosity
  relation R_e ~ L^0.27 (1+z)^-1 (Shibuya, Ouchi & Harikane 2015), clumps as extra compact knots.

Every image is rendered with cheap analytic profiles on a supersampled grid (numpy; the SIE + shear ray
shooting is lenstronomy's LensModel), a Gaussian PSF per band and the noise of the survey: model + z sqrt(
sigma_bkg^2 + model / t), in e-/s per pixel as the other lensnet presets.

arc_snr (stored per lens): in the `snr_band`, the summed arc flux over the pixels where the noiseless arc
exceeds the pixel noise (background + Poisson noise of lens light and arc), over the square root of their
summed variance (0 when no pixel does). arc_mag: the lensed source's magnitude in that band (inside the cutout).
magnification: lensed flux of the source (inside the cutout) over its unlensed total flux.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammainc, gammaincinv, gammaln

from lensnet.core.errors import LensnetError
from lensnet.simulate.instruments import Band, resolve_bands
from lensnet.simulate.priors import Prior, inverse_cdf, parse_prior

KIND = "lens_finding_survey"
CLASSES = ("lens", "non_lens")
# non-lens subtype -> the SurveyLensFindingSimulator method that draws its extra components (None: the host alone)
IMPOSTOR_RECIPES = {"elliptical": None, "spiral": "_spiral", "ring": "_ring", "merger": "_merger",
                    "edge_on": "_edge_on", "group": "_group", "blue_neighbours": "_blue_neighbours",
                    "star": "_stars"}
REPLACE_HOST = frozenset({"spiral"})  # recipes whose galaxy takes the elliptical host's place
SUBTYPES = tuple(IMPOSTOR_RECIPES)  # non_lens_subtype codes are indices into this
C_KMS = 299792.458
ARCSEC = math.pi / 180.0 / 3600.0

COMMON_PARAMS = ("z_lens", "sigma_v", "lens_light_mag", "lens_light_R_sersic", "lens_light_n_sersic",
                 "lens_light_q", "center_x", "center_y", "n_field_galaxies")
LENS_PARAMS = ("theta_E", "z_source", "e1", "e2", "gamma1", "gamma2", "source_mag", "source_R_sersic",
               "source_n_sersic", "n_clumps", "magnification", "arc_snr", "counter_image_snr", "arc_mag",
               "passes_selection", "selection_tries")
NON_LENS_PARAMS = ("non_lens_subtype", "impostor_mag", "impostor_separation", "n_impostor_components")
TEXT_FIELDS = ("subtype",)


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Colour:
    """m_band - m_r = intercept + slope z + N(0, scatter): one per image band."""

    intercept: float
    slope: float
    scatter: float


def _number(section: dict, key: str, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise LensnetError(f"{where}.{key}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _prior(section: dict, key: str, where: str, domain: tuple[float, float]) -> Prior:
    return parse_prior(section[key], f"{where}.{key}", domain)


def _colours(section: Any, where: str, bands: tuple[Band, ...]) -> tuple[Colour, ...]:
    names = [b.name for b in bands]
    if not isinstance(section, dict) or set(section) != set(names):
        got = sorted(section) if isinstance(section, dict) else section
        raise LensnetError(f"{where}: give [intercept, slope, scatter] for exactly the bands {names}, got {got!r}")
    out = []
    for name in names:
        value = section[name]
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[2] < 0):
            raise LensnetError(f"{where}.{name}: expected [intercept, slope, scatter >= 0], got {value!r}")
        out.append(Colour(*map(float, value)))
    return tuple(out)


def _range(section: dict, key: str, where: str, lo: float = 0.0) -> tuple[float, float]:
    value = section[key]
    if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
            or not lo <= value[0] <= value[1]):
        raise LensnetError(f"{where}.{key}: expected [low, high] with {lo:g} <= low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _shares(section: Any, where: str) -> np.ndarray:
    if not isinstance(section, dict) or set(section) != set(SUBTYPES):
        raise LensnetError(f"{where}: give a share for each of {', '.join(SUBTYPES)}")
    shares = np.array([_number(section, k, where, 0.0, 1.0) for k in SUBTYPES])
    if abs(shares.sum() - 1.0) > 1e-6:
        raise LensnetError(f"{where}: shares must sum to 1, got {shares.sum():g}")
    return shares


@dataclass(frozen=True)
class SurveySpec:
    size: int
    supersampling: int
    bands: tuple[Band, ...]
    snr_band: int
    H0: float
    Om0: float
    noise: bool
    cfg: dict  # the validated survey_population section (numbers read where used)
    deflector_colours: tuple[Colour, ...]
    source_colours: tuple[Colour, ...]
    disc_colours: tuple[Colour, ...]
    star_colours: tuple[Colour, ...]
    shares: np.ndarray
    priors: dict[str, Prior]


def parse_survey(config: dict) -> SurveySpec:
    """Validate a `lens_finding_survey` config (errors name the field)."""
    if config["classes"] != list(CLASSES):
        raise LensnetError(f"classes: {KIND} has classes {list(CLASSES)}, got {config['classes']!r}")
    image = config["image"]
    size, ss = image["size"], image["supersampling"]
    for key, value, lo in (("size", size, 8), ("supersampling", ss, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise LensnetError(f"image.{key}: expected an integer >= {lo}, got {value!r}")
    bands = tuple(resolve_bands(config["instrument"]))
    if any(b.psf_fwhm is None for b in bands):
        raise LensnetError(f"instrument.psf_type: {KIND} renders Gaussian PSFs; use psf_type GAUSSIAN")
    sp = config["survey_population"]
    where = "survey_population"
    names = [b.name for b in bands]
    if sp["snr_band"] not in names:
        raise LensnetError(f"{where}.snr_band: '{sp['snr_band']}' is not one of the bands {names}")
    d, s, imp = sp["deflector"], sp["source"], sp["impostors"]
    cosmo = config["cosmology"]
    priors = {
        "z_lens": _prior(d, "z", f"{where}.deflector", (0.01, 3.0)),
        "q_lens": _prior(d, "axis_ratio", f"{where}.deflector", (0.1, 1.0)),
        "n_lens": _prior(d, "n_sersic", f"{where}.deflector", (0.3, 8.0)),
        "shear": _prior(d, "shear", f"{where}.deflector", (-0.3, 0.3)),
        "center": _prior(d, "center", f"{where}.deflector", (-2.0, 2.0)),
        "z_source": _prior(s, "z", f"{where}.source", (0.05, 10.0)),
        "n_source": _prior(s, "n_sersic", f"{where}.source", (0.3, 8.0)),
        "q_source": _prior(s, "axis_ratio", f"{where}.source", (0.1, 1.0)),
        "z_neighbour": _prior(imp["blue_neighbours"], "z", f"{where}.impostors.blue_neighbours", (0.01, 10.0)),
    }
    vdf = d["vdf"]
    for key in ("sigma_star", "alpha", "beta", "sigma_min", "sigma_max"):
        _number(vdf, key, f"{where}.deflector.vdf", 1e-6)
    _number(vdf, "weight_power", f"{where}.deflector.vdf", 0.0, 10.0)
    if not vdf["sigma_max"] > vdf["sigma_min"]:
        raise LensnetError(f"{where}.deflector.vdf.sigma_max: must exceed sigma_min")
    lf = s["luminosity_function"]
    for key in ("M_star", "alpha", "M_bright", "M_faint"):
        _number(lf, key, f"{where}.source.luminosity_function")
    if not lf["M_faint"] > lf["M_bright"]:
        raise LensnetError(f"{where}.source.luminosity_function.M_faint: must be fainter (larger) than M_bright")
    sel = sp["selection"]
    _number(sel, "min_arc_snr", f"{where}.selection", 0.0)
    _number(sel, "min_magnification", f"{where}.selection", 0.0)
    _number(sel, "min_counter_image_snr", f"{where}.selection", 0.0)
    if isinstance(sel["max_tries"], bool) or not isinstance(sel["max_tries"], int) or sel["max_tries"] < 1:
        raise LensnetError(f"{where}.selection.max_tries: expected an integer >= 1, got {sel['max_tries']!r}")
    if vdf["sigma_max"] > 540.0:
        raise LensnetError(f"{where}.deflector.vdf.sigma_max: the Hyde & Bernardi M_r(sigma) relation has no "
                           f"solution above 540 km/s, got {vdf['sigma_max']!r}")
    _range(sp["field_galaxies"], "separation", f"{where}.field_galaxies")
    for key in SUBTYPES[1:]:
        for name, value in imp[key].items():
            if isinstance(value, list):
                _range(imp[key], name, f"{where}.impostors.{key}")
    return SurveySpec(
        size=size, supersampling=ss, bands=bands, snr_band=names.index(sp["snr_band"]),
        H0=_number(cosmo, "H0", "cosmology", 1.0, 1000.0), Om0=_number(cosmo, "Om0", "cosmology", 0.0, 1.0),
        noise=bool(config["noise"]["enabled"]), cfg=sp,
        deflector_colours=_colours(d["colors"], f"{where}.deflector.colors", bands),
        source_colours=_colours(s["colors"], f"{where}.source.colors", bands),
        disc_colours=_colours(imp["disc_colors"], f"{where}.impostors.disc_colors", bands),
        star_colours=_colours(imp["star"]["colors"], f"{where}.impostors.star.colors", bands),
        shares=_shares(imp["shares"], f"{where}.impostors.shares"),
        priors=priors,
    )


# ----------------------------------------------------------------------------------------------- profiles


def sersic_b(n: float) -> float:
    """b_n of the Sersic profile (Ciotti & Bertin 1999 expansion; < 1e-4 relative error for n > 0.36)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _elliptical_radius(x: np.ndarray, y: np.ndarray, q: float, phi: float) -> np.ndarray:
    """Radius of constant brightness with axis ratio q and position angle phi (circularised: area-preserving)."""
    c, s = math.cos(phi), math.sin(phi)
    xp, yp = c * x + s * y, -s * x + c * y
    return np.sqrt(q * xp * xp + yp * yp / q)


def sersic_unit(x: np.ndarray, y: np.ndarray, r_e: float, n: float, q: float, phi: float) -> np.ndarray:
    """Surface brightness (per arcsec^2) of an elliptical Sersic profile of total flux 1."""
    b = sersic_b(n)
    r = _elliptical_radius(x, y, q, phi)
    log_norm = math.log(2.0 * math.pi * n * r_e * r_e) + b - 2.0 * n * math.log(b) + float(gammaln(2.0 * n))
    return np.exp(-b * ((r / r_e) ** (1.0 / n) - 1.0) - log_norm)


def _ring_unit(x: np.ndarray, y: np.ndarray, radius: float, width: float, q: float, phi: float,
               modulation: np.ndarray, pixel_area: float) -> np.ndarray:
    """A (segment of a) Gaussian ring times an azimuthal modulation, normalised to flux 1 on the grid."""
    r = _elliptical_radius(x, y, q, phi)
    image = np.exp(-0.5 * ((r - radius) / width) ** 2) * modulation
    total = image.sum() * pixel_area
    return image / total if total > 0 else image


# ----------------------------------------------------------------------------------------------- simulator


class SurveyLensFindingSimulator:
    """(label, rng) -> (images, parameters) for the survey lens-finding population (see the module doc)."""

    def __init__(self, config: dict, spec: SurveySpec | None = None) -> None:
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.LensModel.lens_model import LensModel

        spec = spec or parse_survey(config)
        self.config, self.spec = config, spec
        self.class_names = list(CLASSES)
        self.subtype_names = list(SUBTYPES)
        n_bands = len(spec.bands)
        self.image_shapes = {"image": (spec.size, spec.size, n_bands)}
        self.param_names = list(COMMON_PARAMS) + list(LENS_PARAMS) + list(NON_LENS_PARAMS)
        self.text_fields = TEXT_FIELDS
        self.class_specific_params = set(LENS_PARAMS) | set(NON_LENS_PARAMS)
        band0 = spec.bands[0]
        if any(abs(b.pixel_scale - band0.pixel_scale) > 1e-12 for b in spec.bands):
            raise LensnetError("instrument.bands: every band must share one pixel scale")
        self._pix = band0.pixel_scale
        n = spec.size * spec.supersampling
        self._sub = self._pix / spec.supersampling
        self._sub_area = self._sub ** 2
        coords = (np.arange(n) - (n - 1) / 2.0) * self._sub
        self._x, self._y = np.meshgrid(coords, coords)
        pixels = (np.arange(spec.size) - (spec.size - 1) / 2.0) * self._pix
        self._px, self._py = np.meshgrid(pixels, pixels)  # pixel centres (arcsec), for the counter-image side
        self._psf_sigma = [b.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) for b in spec.bands]
        self._psf_bin = [self._psf_matrix(sigma) for sigma in self._psf_sigma]
        self._zp = np.array([b.magnitude_zero_point for b in spec.bands])
        self._bkg2 = np.array([b.background_rms ** 2 for b in spec.bands])
        exposures = [b.exposure_time for b in spec.bands]
        if any(not p.is_constant for p in exposures):
            raise LensnetError(f"instrument: {KIND} needs a fixed exposure time per band")
        self._t = np.array([p.args[0] for p in exposures])
        self._sie = LensModel(["SIE"])
        self._shear = LensModel(["SHEAR"])
        cosmo = FlatLambdaCDM(H0=spec.H0, Om0=spec.Om0)
        self._zgrid = np.linspace(0.0, 10.0, 4001)
        self._chi = cosmo.comoving_distance(self._zgrid).to("Mpc").value  # flat: D_ls / D_s = 1 - chi_l / chi_s
        vdf = spec.cfg["deflector"]["vdf"]
        self._vdf = (float(vdf["sigma_star"]), float(vdf["alpha"]), float(vdf["beta"]),
                     float(vdf["sigma_min"]), float(vdf["sigma_max"]), float(vdf["weight_power"]))
        lf = spec.cfg["source"]["luminosity_function"]
        self._lf = (float(lf["M_star"]), float(lf["alpha"]), float(lf["M_bright"]), float(lf["M_faint"]))
        self._lf_table = self._schechter_table()
        self._cum_shares = np.cumsum(spec.shares)[:-1]
        from threadpoolctl import ThreadpoolController

        self._threads = ThreadpoolController()

    def __reduce__(self) -> tuple:
        return SurveyLensFindingSimulator, (self.config,)

    # ---- cosmology ---------------------------------------------------------------------------

    def _chi_of(self, z: float) -> float:
        return float(np.interp(z, self._zgrid, self._chi))

    def distance_modulus(self, z: float) -> float:
        return 5.0 * math.log10((1.0 + z) * self._chi_of(z) * 1e5)  # D_L in units of 10 pc

    def kpc_to_arcsec(self, kpc: float, z: float) -> float:
        d_a = self._chi_of(z) / (1.0 + z)  # Mpc
        return kpc / (d_a * 1e3) / ARCSEC

    def theta_e(self, sigma: float, z_l: float, z_s: float) -> float:
        """SIS Einstein radius in arcsec: 4 pi (sigma/c)^2 D_ls/D_s (flat universe)."""
        ratio = max(1.0 - self._chi_of(z_l) / self._chi_of(z_s), 0.0)
        return 4.0 * math.pi * (sigma / C_KMS) ** 2 * ratio / ARCSEC

    # ---- population draws --------------------------------------------------------------------

    def draw_sigma(self, u: float, weight_power: float | None = None) -> float:
        """Inverse CDF of the (sigma^w weighted) Choi et al. VDF between sigma_min and sigma_max."""
        s_star, alpha, beta, lo, hi, w = self._vdf
        w = w if weight_power is None else weight_power
        k = (alpha + w) / beta
        c_lo, c_hi = gammainc(k, (lo / s_star) ** beta), gammainc(k, (hi / s_star) ** beta)
        x = float(gammaincinv(k, c_lo + (c_hi - c_lo) * u))
        return min(max(s_star * x ** (1.0 / beta), lo), hi)

    def _schechter_table(self) -> tuple[np.ndarray, np.ndarray]:
        m_star, alpha, bright, faint = self._lf
        grid = np.linspace(bright, faint, 2001)
        lum = 10.0 ** (-0.4 * (grid - m_star))
        pdf = lum ** (alpha + 1.0) * np.exp(-lum)  # phi(M) dM ~ L^(alpha+1) exp(-L/L*)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
        return grid, cdf / cdf[-1]

    def draw_absolute_mag(self, u: float) -> float:
        grid, cdf = self._lf_table
        return float(np.interp(u, cdf, grid))

    def _colour_mags(self, m_r: float, z: float, colours: tuple[Colour, ...], rng: np.random.Generator
                     ) -> np.ndarray:
        noise = rng.standard_normal(len(colours))
        return np.array([m_r + c.intercept + c.slope * z + c.scatter * e for c, e in zip(colours, noise)])

    def _flux(self, mags: np.ndarray) -> np.ndarray:
        return 10.0 ** (-0.4 * (mags - self._zp))  # e-/s

    def draw_elliptical(self, rng: np.random.Generator, weight_power: float | None = None,
                        z: float | None = None) -> dict:
        """An early-type galaxy: sigma from the VDF, M_r and R_e from sigma (Hyde & Bernardi 2009)."""
        d = self.spec.cfg["deflector"]
        u = rng.random(4)
        sigma = self.draw_sigma(u[0], weight_power)
        z = float(inverse_cdf(self.spec.priors["z_lens"], u[1])) if z is None else z
        v = math.log10(sigma)
        a, b, c = 0.006, 0.37, 2.97 + v
        m_abs = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) + float(d["mag_scatter"]) * rng.standard_normal()
        log_r = 2.46 - 2.79 * v + 0.84 * v * v + float(d["size_scatter_dex"]) * rng.standard_normal()
        m_r = m_abs + self.distance_modulus(z) + float(d["k_correction_per_z"]) * z
        r_e = self.kpc_to_arcsec(10.0 ** log_r, z)
        q = float(inverse_cdf(self.spec.priors["q_lens"], u[2]))
        n = float(inverse_cdf(self.spec.priors["n_lens"], u[3]))
        phi = math.pi * rng.random()
        mags = self._colour_mags(m_r, z, self.spec.deflector_colours, rng)
        return {"sigma": sigma, "z": z, "m_r": m_r, "r_e": r_e, "q": q, "n": n, "phi": phi, "mags": mags}

    def draw_star_forming(self, rng: np.random.Generator, z: float) -> dict:
        """A star-forming galaxy at z: M from the Schechter LF, R_e from the size-luminosity relation."""
        s = self.spec.cfg["source"]
        size = s["size"]
        m_star = self._lf[0]
        u = rng.random(3)
        m_abs = self.draw_absolute_mag(u[0])
        # flat f_nu spectrum: K-correction -2.5 log10(1 + z)
        m_r = m_abs + self.distance_modulus(z) - 2.5 * math.log10(1.0 + z)
        log_r = (math.log10(float(size["R0_kpc"])) + float(size["slope"]) * (-0.4) * (m_abs - m_star)
                 + float(size["z_power"]) * math.log10((1.0 + z) / 3.0)
                 + float(size["scatter_dex"]) * rng.standard_normal())
        r_e = max(self.kpc_to_arcsec(10.0 ** log_r, z), 0.02)
        n = float(inverse_cdf(self.spec.priors["n_source"], u[1]))
        q = float(inverse_cdf(self.spec.priors["q_source"], u[2]))
        phi = math.pi * rng.random()
        clumps = s["clumps"]
        n_clumps = 0
        if rng.random() < float(clumps["probability"]):
            n_clumps = int(rng.integers(1, int(clumps["max_count"]) + 1))
        frac = float(inverse_cdf(parse_prior(clumps["flux_fraction"], "clumps.flux_fraction"), rng.random()))
        clump_xy = rng.standard_normal((n_clumps, 2)) * r_e
        mags = self._colour_mags(m_r, z, self.spec.source_colours, rng)
        return {"z": z, "m_r": m_r, "r_e": r_e, "n": n, "q": q, "phi": phi, "n_clumps": n_clumps,
                "clump_fraction": frac if n_clumps else 0.0, "clump_xy": clump_xy,
                "clump_r": float(clumps["size_fraction"]) * r_e, "mags": mags}

    def star_forming_unit(self, gal: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Unit-flux surface brightness of a star-forming galaxy (smooth Sersic + clumps) at (x, y) offsets."""
        image = sersic_unit(x, y, gal["r_e"], gal["n"], gal["q"], gal["phi"])
        if gal["n_clumps"]:
            frac = gal["clump_fraction"]
            image = image * (1.0 - frac)
            each = frac / gal["n_clumps"]
            for cx, cy in gal["clump_xy"]:
                image = image + each * sersic_unit(x - cx, y - cy, gal["clump_r"], 1.0, 1.0, 0.0)
        return image

    # ---- rendering ---------------------------------------------------------------------------

    def _render(self, profiles: list[np.ndarray], fluxes: list[np.ndarray]) -> np.ndarray:
        """(bands, H, W) noiseless e-/s per pixel: sum of unit profiles x band fluxes, PSF, pixel binning."""
        spec = self.spec
        stack = np.stack(profiles)  # (C, n, n)
        per_band = np.einsum("cb,cij->bij", np.stack(fluxes), stack)
        return np.stack([self._convolve(per_band[b], b) for b in range(len(spec.bands))])

    def _convolve(self, surface: np.ndarray, band: int) -> np.ndarray:
        """Supersampled surface brightness (per arcsec^2, or already x pixel area) -> PSF-convolved pixels."""
        m = self._psf_bin[band]  # Gaussian PSF (separable) and pixel binning as one (size, n) matrix per axis
        return m @ surface @ m.T

    def _psf_matrix(self, sigma: float) -> np.ndarray:
        """(size, n) matrix M with M X M^T = the supersampled image X convolved with a Gaussian of `sigma`
        arcsec (truncated at 4 sigma, zero outside the grid), summed into pixels, times the subpixel area."""
        size, ss = self.spec.size, self.spec.supersampling
        n = size * ss
        width = sigma / self._sub
        idx = np.arange(n)
        kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / width) ** 2)
        kernel[np.abs(idx[:, None] - idx[None, :]) > math.ceil(4.0 * width)] = 0.0
        half = math.ceil(4.0 * width)
        taps = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
        kernel /= taps.sum()  # as scipy.ndimage.gaussian_filter: the full kernel sums to 1
        binning = np.kron(np.eye(size), np.ones((1, ss)))
        return binning @ kernel * self._sub

    def _point_sources(self, image: np.ndarray, points: list[tuple[float, float, np.ndarray]]) -> None:
        """Add stars (PSF-shaped, pixel-integrated by the supersampled grid) to `image` in place."""
        ss, size = self.spec.supersampling, self.spec.size
        for px, py, flux in points:
            r2 = (self._x - px) ** 2 + (self._y - py) ** 2
            for b, sigma in enumerate(self._psf_sigma):
                psf = np.exp(-0.5 * r2 / sigma**2) / (2 * math.pi * sigma**2) * self._sub_area
                image[b] += flux[b] * psf.reshape(size, ss, size, ss).sum(axis=(1, 3))

    def _noise(self, model: np.ndarray, z: np.ndarray) -> np.ndarray:
        if not self.spec.noise:
            return model
        variance = self._bkg2[:, None, None] + np.maximum(model, 0.0) / self._t[:, None, None]
        return model + z * np.sqrt(variance)

    def _arc_snr_band(self, arc: np.ndarray, total: np.ndarray, cx: float, cy: float) -> tuple[float, float]:
        """(arc S/N, counter-image S/N) in the snr band. The counter-image S/N counts only the arc pixels more
        than 90 degrees in position angle about the lens centre (cx, cy) from the arc's brightest pixel: a
        source lensed into one image beside the lens (the other one lost in the lens light) has ~0 there, and
        looks like an unlensed neighbour."""
        b = self.spec.snr_band
        var = self._bkg2[b] + np.maximum(total, 0.0) / self._t[b]
        mask = arc > np.sqrt(var)
        if not mask.any():
            return 0.0, 0.0
        angle = np.arctan2(self._py - cy, self._px - cx)
        brightest = angle.flat[int(np.argmax(arc))]
        far = mask & (np.cos(angle - brightest) < 0.0)
        counter = float(arc[far].sum() / math.sqrt(var[far].sum())) if far.any() else 0.0
        return float(arc[mask].sum() / math.sqrt(var[mask].sum())), counter

    # ---- scenes ------------------------------------------------------------------------------

    def _around(self, rng: np.random.Generator, span: tuple[float, float], cx: float, cy: float
                ) -> tuple[float, float, float]:
        sep = span[0] + (span[1] - span[0]) * rng.random()
        phi = 2.0 * math.pi * rng.random()
        return cx + sep * math.cos(phi), cy + sep * math.sin(phi), sep

    def _elliptical_component(self, gal: dict, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
        return (sersic_unit(self._x - cx, self._y - cy, gal["r_e"], gal["n"], gal["q"], gal["phi"]),
                self._flux(gal["mags"]))

    def simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
        # the small matrix products below are ~50x slower when BLAS spreads them over busy cores
        with self._threads.limit(limits=1, user_api="blas"):
            return self._simulate(label, rng)

    def _simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
        spec, cfg = self.spec, self.spec.cfg
        noise_z = rng.standard_normal((len(spec.bands), spec.size, spec.size))
        u = rng.random(2)
        cx, cy = (float(inverse_cdf(spec.priors["center"], v)) for v in u)
        host = self.draw_elliptical(rng)
        params: dict[str, Any] = dict.fromkeys(self.param_names, math.nan)
        params.update(z_lens=host["z"], sigma_v=host["sigma"], lens_light_mag=host["m_r"],
                      lens_light_R_sersic=host["r_e"], lens_light_n_sersic=host["n"], lens_light_q=host["q"],
                      center_x=cx, center_y=cy)
        profiles: list[np.ndarray] = []
        fluxes: list[np.ndarray] = []
        field = cfg["field_galaxies"]
        n_field = min(int(rng.poisson(float(field["mean"]))), int(field["max_count"]))
        span = _range(field, "separation", "field_galaxies")
        z_field = parse_prior(field["z"], "field_galaxies.z")
        for _ in range(n_field):
            x, y, _ = self._around(rng, span, cx, cy)
            gal = self.draw_star_forming(rng, float(inverse_cdf(z_field, rng.random())))
            profiles.append(self.star_forming_unit(gal, self._x - x, self._y - y))
            fluxes.append(self._flux(gal["mags"]))
        params["n_field_galaxies"] = float(n_field)
        if label == 0:
            profiles.append(self._elliptical_component(host, cx, cy)[0])
            fluxes.append(self._flux(host["mags"]))
            profiles.append(self._lens(rng, host, cx, cy, params))
            fluxes.append(self._flux(self._source_mags))
            model = self._render(profiles, fluxes)
            params["subtype"] = "lens"
        else:
            code = int(np.searchsorted(self._cum_shares, rng.random(), side="right"))
            extra = self._impostor(SUBTYPES[code], rng, host, cx, cy, params)
            params["non_lens_subtype"] = float(code)
            params["subtype"] = SUBTYPES[code]
            for profile, flux in extra:
                if flux is None:
                    continue
                profiles.append(profile)
                fluxes.append(flux)
            model = self._render(profiles, fluxes)
            stars = [(p[0], p[1], p[2]) for p, flux in extra if flux is None]
            if stars:
                self._point_sources(model, stars)
        image = self._noise(model, noise_z)
        return {"image": np.moveaxis(image, 0, -1).astype(np.float32)}, params

    def _lens(self, rng: np.random.Generator, host: dict, cx: float, cy: float, params: dict) -> np.ndarray:
        """Draw source + mass until the selection passes (or max_tries); return the lensed source's unit-flux
        surface brightness (its band magnitudes in self._source_mags). arc_snr counts the lens light's noise."""
        spec, cfg = self.spec, self.spec.cfg
        sel = cfg["selection"]
        scatter = cfg["deflector"]["mass_light_misalignment_deg"]
        phi_mass = host["phi"] + math.radians(float(scatter)) * rng.standard_normal()
        ell = (1.0 - host["q"]) / (1.0 + host["q"])
        e1, e2 = ell * math.cos(2 * phi_mass), ell * math.sin(2 * phi_mass)
        g1, g2 = (float(inverse_cdf(spec.priors["shear"], v)) for v in rng.random(2))
        radius = float(cfg["source"]["position_radius"])
        b = spec.snr_band
        # the SIE deflection is linear in theta_E: shoot once for theta_E = 1, scale for each source redshift
        x, y = self._x.ravel(), self._y.ravel()
        unit_kwargs = [{"theta_E": 1.0, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy}]
        ax, ay = self._sie.alpha(x, y, unit_kwargs)
        sx_shear, sy_shear = self._shear.alpha(x, y, [{"gamma1": g1, "gamma2": g2}])
        bx0, by0 = (x - sx_shear).reshape(self._x.shape), (y - sy_shear).reshape(self._x.shape)
        ax, ay = ax.reshape(self._x.shape), ay.reshape(self._x.shape)
        host_b = self._convolve(self._elliptical_component(host, cx, cy)[0], b) * self._flux(host["mags"])[b]
        best = None
        tries = int(sel["max_tries"])
        for attempt in range(1, tries + 1):
            z_s = -1.0
            for _ in range(100):  # the source lies behind the deflector
                z_s = float(inverse_cdf(spec.priors["z_source"], rng.random()))
                if z_s > host["z"] + 0.1:
                    break
            z_s = max(z_s, host["z"] + 0.1)
            theta = self.theta_e(host["sigma"], host["z"], z_s)
            src = self.draw_star_forming(rng, z_s)
            rho = radius * theta * math.sqrt(rng.random())
            ang = 2.0 * math.pi * rng.random()
            sx, sy = cx + rho * math.cos(ang), cy + rho * math.sin(ang)
            unit = self.star_forming_unit(src, bx0 - theta * ax - sx, by0 - theta * ay - sy)
            magnification = float(unit.sum() * self._sub_area)
            flux = self._flux(src["mags"])
            arc_b = self._convolve(unit, b) * flux[b]
            snr, counter = self._arc_snr_band(arc_b, arc_b + host_b, cx, cy)
            passes = (snr >= float(sel["min_arc_snr"]) and magnification >= float(sel["min_magnification"])
                      and counter >= float(sel["min_counter_image_snr"]))
            used = attempt
            if best is None or passes or snr > best[0]:
                best = (snr, counter, unit, theta, z_s, src, magnification, passes)
            if passes:
                break
        snr, counter, unit, theta, z_s, src, magnification, passes = best
        self._source_mags = src["mags"]
        params.update(theta_E=theta, z_source=z_s, e1=e1, e2=e2, gamma1=g1, gamma2=g2, source_mag=src["m_r"],
                      source_R_sersic=src["r_e"], source_n_sersic=src["n"], n_clumps=float(src["n_clumps"]),
                      magnification=magnification, arc_snr=snr, counter_image_snr=counter,
                      arc_mag=float(src["mags"][b] - 2.5 * math.log10(max(magnification, 1e-30))),
                      passes_selection=float(passes), selection_tries=float(used))
        return unit

    def _impostor(self, kind: str, rng: np.random.Generator, host: dict, cx: float, cy: float, params: dict
                  ) -> list[tuple[Any, np.ndarray | None]]:
        """Components (unit profile, band fluxes) of a non-lens scene; stars are ((x, y, flux), None).

        Each subtype is a recipe method (IMPOSTOR_RECIPES) returning its own components, magnitudes and
        separations; the elliptical host is kept except by the recipes that replace it (a spiral)."""
        rec = self.spec.cfg["impostors"].get(kind, {})
        recipe = IMPOSTOR_RECIPES[kind]
        parts, mags, seps = getattr(self, recipe)(rng, host, cx, cy, rec) if recipe else ([], [], [])
        params["n_impostor_components"] = float(len(parts))
        out = parts if kind in REPLACE_HOST else [self._elliptical_component(host, cx, cy), *parts]
        if mags:
            params["impostor_mag"] = -2.5 * math.log10(sum(10.0 ** (-0.4 * m) for m in mags))
            params["impostor_separation"] = float(np.mean(seps))
        return out

    def _spiral(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """A disc galaxy as bright as the drawn host: bulge + exponential disc with m logarithmic arms."""
        x, y = self._x - cx, self._y - cy
        bulge_frac = _uniform(rng, rec["bulge_fraction"])
        r_d = _uniform(rng, rec["disc_R_e"])
        q = _uniform(rng, rec["axis_ratio"])
        pa = math.pi * rng.random()
        pitch = math.radians(_uniform(rng, rec["pitch_deg"]))
        arms = int(rng.integers(rec["arms"][0], rec["arms"][1] + 1))
        contrast = _uniform(rng, rec["arm_contrast"])
        phase = 2 * math.pi * rng.random()
        c, s = math.cos(pa), math.sin(pa)
        xp, yp = c * x + s * y, (-s * x + c * y) / q  # deprojected disc plane
        r = np.hypot(xp, yp) + 1e-6
        theta = np.arctan2(yp, xp)
        wave = 0.5 * (1.0 + np.cos(arms * (theta - np.log(r / r_d) / math.tan(pitch)) + phase))
        disc = sersic_unit(x, y, r_d, 1.0, q, pa) * (1.0 - contrast + contrast * 2.0 * wave ** 4)
        disc /= disc.sum() * self._sub_area
        bulge = sersic_unit(x, y, _uniform(rng, rec["bulge_R_e"]), 4.0, min(1.0, q + 0.3), pa)
        total = host["m_r"]
        disc_mags = self._colour_mags(total - 2.5 * math.log10(1 - bulge_frac), 0.0, self.spec.disc_colours, rng)
        parts = [(disc, self._flux(disc_mags)), (bulge, self._flux(host["mags"] - 2.5 * math.log10(bulge_frac)))]
        return parts, [total], [r_d]

    def _ring(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """A Gaussian ring with 1-3 azimuthal knots around the host, blue or in the host's colours."""
        x, y = self._x - cx, self._y - cy
        radius = _uniform(rng, rec["radius"])
        width = _uniform(rng, rec["width"])
        knots = int(rng.integers(1, 4))
        phase = 2 * math.pi * rng.random()
        modulation = 1.0 + _uniform(rng, rec["modulation"]) * np.cos(knots * np.arctan2(y, x) + phase)
        unit = _ring_unit(x, y, radius, width, _uniform(rng, rec["axis_ratio"]), math.pi * rng.random(),
                          modulation, self._sub_area)
        m = host["m_r"] + _uniform(rng, rec["fainter_by"])
        blue = rng.random() < float(rec["blue_fraction"])
        ring_mags = (self._colour_mags(m, 0.0, self.spec.disc_colours, rng) if blue
                     else host["mags"] - host["m_r"] + m)
        return [(unit, self._flux(ring_mags))], [m], [radius]

    def _merger(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """An early-type companion + shells/tails: ring segments around the host in its stellar colours."""
        x, y = self._x - cx, self._y - cy
        companion = self.draw_elliptical(rng, weight_power=0.0, z=host["z"])
        px, py, sep = self._around(rng, _range(rec, "separation", "merger"), cx, cy)
        parts, mags, seps = [self._elliptical_component(companion, px, py)], [companion["m_r"]], [sep]
        for _ in range(int(rng.integers(1, int(rec["max_features"]) + 1))):
            radius = _uniform(rng, rec["radius"])
            width = _uniform(rng, rec["width"])
            centre = 2 * math.pi * rng.random()
            kappa = 1.0 / max(math.radians(_uniform(rng, rec["opening_deg"])) / 2.0, 1e-3) ** 2
            modulation = np.exp(kappa * (np.cos(np.arctan2(y, x) - centre) - 1.0))
            unit = _ring_unit(x, y, radius, width, 1.0, 0.0, modulation, self._sub_area)
            m = host["m_r"] + _uniform(rng, rec["fainter_by"])
            parts.append((unit, self._flux(host["mags"] - host["m_r"] + m + 0.1 * rng.standard_normal())))
            mags.append(m)
            seps.append(radius)
        return parts, mags, seps

    def _edge_on(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """A thin blue exponential disc near the host, randomly oriented."""
        px, py, sep = self._around(rng, _range(rec, "separation", "edge_on"), cx, cy)
        m = host["m_r"] + _uniform(rng, rec["fainter_by"])
        unit = sersic_unit(self._x - px, self._y - py, _uniform(rng, rec["R_e"]), 1.0,
                           _uniform(rng, rec["axis_ratio"]), math.pi * rng.random())
        return [(unit, self._flux(self._colour_mags(m, 0.0, self.spec.disc_colours, rng)))], [m], [sep]

    def _group(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """1..max_members early types at the host's redshift (unweighted VDF)."""
        parts, mags, seps = [], [], []
        for _ in range(int(rng.integers(1, int(rec["max_members"]) + 1))):
            member = self.draw_elliptical(rng, weight_power=0.0, z=host["z"])
            px, py, sep = self._around(rng, _range(rec, "separation", "group"), cx, cy)
            parts.append(self._elliptical_component(member, px, py))
            mags.append(member["m_r"])
            seps.append(sep)
        return parts, mags, seps

    def _blue_neighbours(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """1..max_count unlensed star-forming galaxies from the source LF at lower redshift."""
        parts, mags, seps = [], [], []
        for _ in range(int(rng.integers(1, int(rec["max_count"]) + 1))):
            gal = self.draw_star_forming(rng, float(inverse_cdf(self.spec.priors["z_neighbour"], rng.random())))
            px, py, sep = self._around(rng, _range(rec, "separation", "blue_neighbours"), cx, cy)
            parts.append((self.star_forming_unit(gal, self._x - px, self._y - py), self._flux(gal["mags"])))
            mags.append(gal["m_r"])
            seps.append(sep)
        return parts, mags, seps

    def _stars(self, rng: np.random.Generator, host: dict, cx: float, cy: float, rec: dict) -> tuple:
        """1..max_count point sources near the host ((x, y, band fluxes), None: drawn after the PSF)."""
        parts, mags, seps = [], [], []
        for _ in range(int(rng.integers(1, int(rec["max_count"]) + 1))):
            px, py, sep = self._around(rng, _range(rec, "separation", "star"), cx, cy)
            m = _uniform(rng, rec["magnitude"])
            star_mags = self._colour_mags(m, 0.0, self.spec.star_colours, rng)
            parts.append(((px, py, self._flux(star_mags)), None))
            mags.append(m)
            seps.append(sep)
        return parts, mags, seps

    # ---- manifest ------------------------------------------------------------------------------

    def summarise(self, params: dict[str, np.ndarray], labels: np.ndarray) -> dict:
        """The population as the manifest states it: arc S/N, magnification, theta_E quantiles, impostor shares."""
        return population_summary(params, labels)


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _quantiles(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {"count": 0}
    q = np.quantile(values, QUANTILES)
    return {"count": int(values.size), **{f"q{int(p * 100):02d}": float(v) for p, v in zip(QUANTILES, q)}}


def population_summary(params: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    lens = np.asarray(labels) == 0
    out: dict = {"quantiles": list(QUANTILES), "non_lens_subtypes": list(SUBTYPES)}
    for name in ("arc_snr", "counter_image_snr", "magnification", "theta_E", "arc_mag", "source_mag",
                 "lens_light_mag", "z_source"):
        if name in params:
            out[name] = _quantiles(np.asarray(params[name], dtype=np.float64)[lens])
    if "arc_snr" in params:
        snr = np.asarray(params["arc_snr"], dtype=np.float64)[lens]
        if snr.size:
            out["arc_snr_fraction_below"] = {str(t): float(np.mean(snr < t)) for t in (10, 20, 50)}
    if "passes_selection" in params and lens.any():
        out["lens_selection_pass_fraction"] = float(np.nanmean(np.asarray(params["passes_selection"])[lens]))
    if "non_lens_subtype" in params:
        codes = np.asarray(params["non_lens_subtype"], dtype=np.float64)[~lens]
        n = max(int(codes.size), 1)
        out["impostor_shares"] = {name: float(np.sum(codes == k) / n) for k, name in enumerate(SUBTYPES)}
        out["non_lens_count"] = int(codes.size)
    out["lens_count"] = int(lens.sum())
    return out


def _uniform(rng: np.random.Generator, span: list) -> float:
    return float(span[0]) + (float(span[1]) - float(span[0])) * rng.random()
