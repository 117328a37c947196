"""Lens scenes: a validated config -> a Simulator that turns (label, rng) into images + parameters.

Every scene is an SIE + external shear lens (lenstronomy), an elliptical Sersic
source and an optional elliptical Sersic lens light, rendered per band with the
band's PSF on lenstronomy ImageModels that are built once per Simulator (and per
lens-model layout, e.g. per subhalo count) and reused with new kwargs.

Per record the draw order is fixed: all scalar priors (one rng.random call),
then the noise normals, then anything class-specific (subhaloes, vortex,
confusers). So every class draws macro model, source, lens light and noise in the
same way from the same distributions, and one seed gives the same macro scene
and noise realization whatever the class (paired simulations).

Noise is added exactly once: image = model + z sqrt(σ_bkg² + max(model, 0) / t),
z ~ N(0, 1) per pixel: Gaussian background plus the Gaussian approximation of
Poisson noise (as lenstronomy's own noise functions), drawn from the record's rng.
Images are in e-/s per pixel. Replicas of DeepLenseSim may choose its noise instead
(noise.scheme: deeplense_model_i, see `_add_noise`), and image.flux_scale multiplies the
stored image (DeepLense Models II/III save `image_model + image_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.simulate.instruments import Band, resolve_bands
from lensnet.simulate.los import LOS_PARAMS, LineOfSight, LosSpec, parse_los_config
from lensnet.simulate.priors import Prior, PriorBlock, inverse_cdf, parse_prior
from lensnet.simulate.substructure import (
    AXION_PARAMS,
    WDM_PARAMS,
    AxionSpec,
    AxionVortex,
    Haloes,
    SubhaloPopulation,
    SubhaloSpec,
    WdmSpec,
    deeplense_mass_factor,
    parse_axion_config,
    parse_engine,
    parse_subhalo_config,
    parse_wdm_config,
)

KINDS = ("substructure", "lens_finding", "super_resolution")
SUBSTRUCTURE_CLASSES = ("no_sub", "cdm", "axion", "wdm")
LENS_FINDING_CLASSES = ("lens", "non_lens")
CONFUSER_TYPES = ("galaxy_only", "neighbours", "arc_like", "ring")  # confuser_type stores the index

INF = math.inf
MACRO_DOMAINS = {
    "theta_E": (0.01, 10.0),
    "e1": (-0.5, 0.5),
    "e2": (-0.5, 0.5),
    "center_x": (-10.0, 10.0),
    "center_y": (-10.0, 10.0),
    "gamma1": (-0.5, 0.5),
    "gamma2": (-0.5, 0.5),
}
LIGHT_DOMAINS = {
    "magnitude": (-10.0, 40.0),
    "R_sersic": (1e-3, 20.0),
    "n_sersic": (0.3, 8.0),
    "e1": (-0.5, 0.5),
    "e2": (-0.5, 0.5),
    "center_x": (-10.0, 10.0),
    "center_y": (-10.0, 10.0),
}
NOISE_SCHEMES = ("lensnet", "deeplense_model_i")
MASS_TO_ANGLE = ("angular_diameter", "deeplense_luminosity")
SOURCE_SHAPE = ("R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y")
LENS_LIGHT_SHAPE = ("R_sersic", "n_sersic", "e1", "e2")


# ----------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class LightSpec:
    prefix: str  # "source" | "lens_light"
    magnitude: Prior  # reference band
    colors: dict[str, Prior]  # non-reference band -> magnitude offset
    shape: dict[str, Prior]  # R_sersic, n_sersic, e1, e2 [, center_x, center_y]


@dataclass(frozen=True)
class LensFindingSpec:
    fractions: tuple[float, ...]  # in CONFUSER_TYPES order
    neighbours_max: int
    neighbour_separation: Prior
    arc_separation: Prior
    arc_R_sersic: Prior
    arc_axis_ratio: Prior
    arc_brightening: Prior
    ring_knots: tuple[int, int]
    ring_radius: Prior
    knot_R_sersic: Prior
    ring_brightening: Prior
    field_mean: float
    field_max: int
    field_separation: Prior


@dataclass(frozen=True)
class SuperResolutionSpec:
    factor: int
    population: str
    hr_psf_fwhm: float
    hr_background_rms: float


@dataclass(frozen=True)
class SceneSpec:
    kind: str
    class_names: tuple[str, ...]
    size: int
    supersampling: int
    bands: tuple[Band, ...]
    poisson: bool
    background: bool
    z_lens: float
    z_source: float
    H0: float
    Om0: float
    lens: dict[str, Prior]
    source: LightSpec
    lens_light: LightSpec | None
    subhalos: SubhaloSpec | None
    axion: AxionSpec | None
    lens_finding: LensFindingSpec | None
    super_resolution: SuperResolutionSpec | None
    noise_enabled: bool = True
    noise_scheme: str = "lensnet"
    flux_scale: float = 1.0
    mass_to_angle: str = "angular_diameter"
    engine: str = "lenstronomy"  # renderer of the substructure haloes (lensnet.simulate.fast_lensing: fast)
    wdm: WdmSpec | None = None  # the wdm class: CDM subhaloes thinned by a half-mode mass
    line_of_sight: LosSpec | None = None  # field haloes along the ray, every class (None: disabled)
    halo_model: dict | None = None  # cosmology.halo_model: colossus's Ob0, sigma8, ns


def _int(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LensnetError(f"{field}: expected an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, field: str, lo: float = -INF, hi: float = INF) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise LensnetError(f"{field}: expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise LensnetError(f"{field}: expected true or false, got {value!r}")
    return value


def _light(section: dict, prefix: str, shape_keys: tuple[str, ...], bands: tuple[Band, ...], ref: str) -> LightSpec:
    colors_cfg = section["colors"] or {}
    if not isinstance(colors_cfg, dict):
        raise LensnetError(f"{prefix}.colors: expected a mapping band -> prior")
    names = [b.name for b in bands]
    for band in colors_cfg:
        if band not in names or band == ref:
            raise LensnetError(
                f"{prefix}.colors.{band}: not a non-reference band of this instrument "
                f"(bands {names}, reference {ref})"
            )
    colors = {}
    for band in names:
        if band == ref:
            continue
        if band not in colors_cfg:
            raise LensnetError(f"{prefix}.colors.{band}: missing (magnitude offset of band {band} from {ref})")
        colors[band] = parse_prior(colors_cfg[band], f"{prefix}.colors.{band}", (-10.0, 10.0))
    return LightSpec(
        prefix=prefix,
        magnitude=parse_prior(section["magnitude"], f"{prefix}.magnitude", LIGHT_DOMAINS["magnitude"]),
        colors=colors,
        shape={k: parse_prior(section[k], f"{prefix}.{k}", LIGHT_DOMAINS[k]) for k in shape_keys},
    )


def _lens_finding(section: dict) -> LensFindingSpec:
    where = "lens_finding"
    fractions_cfg = section["confusers"]
    fractions = tuple(_number(fractions_cfg[k], f"{where}.confusers.{k}", 0.0, 1.0) for k in CONFUSER_TYPES)
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise LensnetError(f"{where}.confusers: fractions must sum to 1, got {sum(fractions):g}")
    knots = section["ring"]["n_knots"]
    if not (isinstance(knots, list) and len(knots) == 2):
        raise LensnetError(f"{where}.ring.n_knots: expected [min, max], got {knots!r}")
    k_lo, k_hi = (_int(k, f"{where}.ring.n_knots", 1) for k in knots)
    if k_hi < k_lo:
        raise LensnetError(f"{where}.ring.n_knots: empty range {knots}")
    pos = (1e-3, 100.0)
    neighbours, arc, ring = section["neighbours"], section["arc_like"], section["ring"]
    field = section["field_galaxies"]
    return LensFindingSpec(
        fractions=fractions,
        neighbours_max=_int(neighbours["max_count"], f"{where}.neighbours.max_count", 1),
        neighbour_separation=parse_prior(neighbours["separation"], f"{where}.neighbours.separation", pos),
        arc_separation=parse_prior(arc["separation"], f"{where}.arc_like.separation", pos),
        arc_R_sersic=parse_prior(arc["R_sersic"], f"{where}.arc_like.R_sersic", LIGHT_DOMAINS["R_sersic"]),
        arc_axis_ratio=parse_prior(arc["axis_ratio"], f"{where}.arc_like.axis_ratio", (0.05, 1.0)),
        arc_brightening=parse_prior(arc["brightening"], f"{where}.arc_like.brightening", (-10.0, 10.0)),
        ring_knots=(k_lo, k_hi),
        ring_radius=parse_prior(ring["radius"], f"{where}.ring.radius", pos),
        knot_R_sersic=parse_prior(ring["knot_R_sersic"], f"{where}.ring.knot_R_sersic", LIGHT_DOMAINS["R_sersic"]),
        ring_brightening=parse_prior(ring["brightening"], f"{where}.ring.brightening", (-10.0, 10.0)),
        field_mean=_number(field["mean"], f"{where}.field_galaxies.mean", 0.0, 100.0),
        field_max=_int(field["max_count"], f"{where}.field_galaxies.max_count", 0),
        field_separation=parse_prior(field["separation"], f"{where}.field_galaxies.separation", pos),
    )


def _super_resolution(section: dict, bands: tuple[Band, ...]) -> SuperResolutionSpec:
    where = "super_resolution"
    population = section["population"]
    if population not in SUBSTRUCTURE_CLASSES:
        raise LensnetError(
            f"{where}.population: unknown '{population}'; choose one of {', '.join(SUBSTRUCTURE_CLASSES)}"
        )
    if len(bands) != 1:
        raise LensnetError("instrument.bands: super_resolution uses exactly one band")
    return SuperResolutionSpec(
        factor=_int(section["factor"], f"{where}.factor", 2),
        population=population,
        hr_psf_fwhm=_number(section["hr_psf_fwhm"], f"{where}.hr_psf_fwhm", 1e-4, 10.0),
        hr_background_rms=_number(section["hr_background_rms"], f"{where}.hr_background_rms", 0.0),
    )


def _noise_scheme(scheme: str, kind: str) -> str:
    if scheme != "lensnet" and kind != "substructure":
        raise LensnetError(f"noise.scheme: {scheme} applies to substructure datasets only")
    return scheme


def _halo_model(section: dict, om0: float) -> dict:
    """cosmology.halo_model: the parameters only the colossus relations read (lensnet.simulate.halo_models)."""
    out = {k: _number(section[k], f"cosmology.halo_model.{k}", 1e-6, 10.0) for k in ("Ob0", "sigma8", "ns")}
    if isinstance(om0, (int, float)) and not out["Ob0"] < om0:
        raise LensnetError(f"cosmology.halo_model.Ob0: must be below Om0 ({om0:g}), got {out['Ob0']:g}")
    return out


def parse_scene(config: dict) -> SceneSpec:
    """Validate the physics sections of a resolved config (errors name the field) and return the scene."""
    kind = config["kind"]
    if kind not in KINDS:
        raise LensnetError(f"kind: unknown kind '{kind}'; choose one of {', '.join(KINDS)}")
    classes = config["classes"]
    if kind == "substructure":
        if not isinstance(classes, list) or not classes or len(set(classes)) != len(classes):
            raise LensnetError(f"classes: expected a non-empty list of distinct names, got {classes!r}")
        for name in classes:
            if name not in SUBSTRUCTURE_CLASSES:
                raise LensnetError(f"classes: unknown class '{name}'; choose from {', '.join(SUBSTRUCTURE_CLASSES)}")
    elif kind == "lens_finding":
        if classes != list(LENS_FINDING_CLASSES):
            raise LensnetError(f"classes: lens_finding has classes {list(LENS_FINDING_CLASSES)}, got {classes!r}")
    elif classes not in (None, []):
        raise LensnetError(f"classes: super_resolution has no classes (give []), got {classes!r}")
    image = config["image"]
    size = _int(image["size"], "image.size", 4)
    supersampling = _int(image["supersampling"], "image.supersampling", 1)
    bands = tuple(resolve_bands(config["instrument"]))
    ref = config["instrument"]["reference_band"] or bands[0].name
    if ref not in [b.name for b in bands]:
        raise LensnetError(f"instrument.reference_band: '{ref}' is not one of the bands {[b.name for b in bands]}")
    noise = config["noise"]
    if noise["scheme"] not in NOISE_SCHEMES:
        raise LensnetError(
            f"noise.scheme: unknown scheme {noise['scheme']!r}; choose one of {', '.join(NOISE_SCHEMES)}"
        )
    cosmo = config["cosmology"]
    if cosmo["mass_to_angle"] not in MASS_TO_ANGLE:
        raise LensnetError(
            f"cosmology.mass_to_angle: unknown {cosmo['mass_to_angle']!r}; choose one of {', '.join(MASS_TO_ANGLE)}"
        )
    z_lens = _number(cosmo["z_lens"], "cosmology.z_lens", 1e-4, 20.0)
    z_source = _number(cosmo["z_source"], "cosmology.z_source", 1e-4, 20.0)
    if not z_source > z_lens:
        raise LensnetError(f"cosmology.z_source: must exceed z_lens ({z_lens:g}), got {z_source:g}")
    lens = {k: parse_prior(config["lens"][k], f"lens.{k}", dom) for k, dom in MACRO_DOMAINS.items()}
    lens_light_cfg = config["lens_light"]
    has_lens_light = _bool(lens_light_cfg["enabled"], "lens_light.enabled")
    if kind == "lens_finding" and not has_lens_light:
        raise LensnetError("lens_light.enabled: lens_finding needs the lens galaxy light (confusers are made of it)")
    if kind == "lens_finding" and config["line_of_sight"]["enabled"] is True:
        raise LensnetError("line_of_sight.enabled: field haloes apply to substructure and super_resolution datasets")
    uses = set(classes or [])
    if kind == "super_resolution":
        sr = _super_resolution(config["super_resolution"], bands)
        uses = {sr.population}
    else:
        sr = None
    return SceneSpec(
        kind=kind,
        class_names=tuple(classes or ()),
        size=size,
        supersampling=supersampling,
        bands=bands,
        poisson=_bool(noise["poisson"], "noise.poisson"),
        background=_bool(noise["background"], "noise.background"),
        noise_enabled=_bool(noise["enabled"], "noise.enabled"),
        noise_scheme=_noise_scheme(noise["scheme"], kind),
        flux_scale=_number(image["flux_scale"], "image.flux_scale", 1e-12),
        mass_to_angle=cosmo["mass_to_angle"],
        z_lens=z_lens,
        z_source=z_source,
        H0=_number(cosmo["H0"], "cosmology.H0", 1.0, 1000.0),
        Om0=_number(cosmo["Om0"], "cosmology.Om0", 0.0, 1.0),
        lens=lens,
        source=_light(config["source"], "source", SOURCE_SHAPE, bands, ref),
        lens_light=_light(lens_light_cfg, "lens_light", LENS_LIGHT_SHAPE, bands, ref) if has_lens_light else None,
        subhalos=parse_subhalo_config(config["substructure"]) if uses & {"cdm", "wdm"} else None,
        engine=parse_engine(config["substructure"]),
        wdm=parse_wdm_config(config["wdm"]) if "wdm" in uses else None,
        line_of_sight=parse_los_config(config["line_of_sight"], z_lens, z_source) if kind != "lens_finding" else None,
        halo_model=_halo_model(cosmo["halo_model"], cosmo["Om0"]),
        axion=parse_axion_config(config["axion"]) if "axion" in uses else None,
        lens_finding=_lens_finding(config["lens_finding"]) if kind == "lens_finding" else None,
        super_resolution=sr,
    )


# ----------------------------------------------------------------------------------------------- rendering


class _Renderer:
    """lenstronomy ImageModels on one pixel grid with one PSF, built once per (lens layout, light count).

    engine lenstronomy: every halo is a profile of the ImageModel's LensModel (one model per layout; the
    most recently used are kept up to MAX_LAYOUTS models and MAX_PROFILES haloes in all, since realistic
    populations change their count in every image). engine fast:
    one macro-only ImageModel; the haloes' deflections on its evaluation grid come from
    lensnet.simulate.fast_lensing and are subtracted from the macro model's ray-shooting.
    """

    MAX_LAYOUTS = 64
    MAX_PROFILES = 50_000

    def __init__(self, size: int, pixel_scale: float, psf_kwargs: dict, supersampling: int,
                 engine: str = "lenstronomy") -> None:
        import lenstronomy.Util.simulation_util as sim_util
        from lenstronomy.Data.imaging_data import ImageData

        self._data = ImageData(**sim_util.data_configure_simple(size, pixel_scale))
        self._psf_kwargs = psf_kwargs
        self._numerics = {"supersampling_factor": supersampling}
        self._models: dict[tuple, Any] = {}
        self.engine = engine
        self._grid = None

    def model(self, layout: tuple[tuple[str, int], ...], n_light: int) -> Any:
        key = (layout, n_light)
        found = self._models.pop(key, None)
        if found is None:
            from lenstronomy.Data.psf import PSF
            from lenstronomy.ImSim.image_model import ImageModel
            from lenstronomy.LensModel.lens_model import LensModel
            from lenstronomy.LightModel.light_model import LightModel

            profiles = [profile for profile, n in layout for _ in range(n)]
            found = ImageModel(
                self._data,
                PSF(**self._psf_kwargs),
                LensModel(["SIE", "SHEAR"] + profiles),
                LightModel(["SERSIC_ELLIPSE"]),
                LightModel(["SERSIC_ELLIPSE"] * n_light),
                kwargs_numerics=self._numerics,
            )
        self._models[key] = found  # most recently used last
        while len(self._models) > 1 and (len(self._models) > self.MAX_LAYOUTS or sum(
                n for layout_key, _ in self._models for _, n in layout_key) > self.MAX_PROFILES):
            self._models.pop(next(iter(self._models)))
        return found

    def grid(self, x: np.ndarray, y: np.ndarray) -> Any:
        """The fast engine's DeflectionGrid on this renderer's evaluation points (built once)."""
        if self._grid is None:
            from lensnet.simulate.fast_lensing import DeflectionGrid

            self._grid = DeflectionGrid(x, y)
        return self._grid

    def image(self, kwargs_macro: list[dict], haloes: tuple[Haloes, ...], kwargs_source: dict,
              kwargs_light: dict | None) -> np.ndarray:
        """Noiseless model image (e-/s per pixel) of the macro lens plus `haloes`."""
        light = [kwargs_light] if kwargs_light is not None else None
        n_light = 0 if light is None else 1
        if self.engine != "fast" or not any(len(h) for h in haloes):
            layout = tuple((h.profile, len(h)) for h in haloes if len(h))
            kwargs = list(kwargs_macro)
            for group in haloes:
                kwargs += group.kwargs()
            return self.model(layout, n_light).image(kwargs, [kwargs_source], light)
        model = self.model((), n_light)
        numerics = model.ImageNumerics
        x, y = numerics.coordinates_evaluate
        ax, ay = self.grid(x, y).deflections(haloes)
        bx, by = model.LensModel.ray_shooting(x, y, kwargs_macro)
        flux = model.SourceModel.surface_brightness(bx - ax, by - ay, [kwargs_source])
        if light is not None:
            flux = flux + model.LensLightModel.surface_brightness(x, y, light)
        return numerics.re_size_convolve(flux, unconvolved=False)


class _Light:
    """Turns drawn magnitudes + shapes into per-band lenstronomy SERSIC_ELLIPSE kwargs (amp from magnitude)."""

    def __init__(self, bands: tuple[Band, ...]) -> None:
        from lenstronomy.LightModel.Profiles.sersic import SersicElliptic

        self._flux_norm = SersicElliptic().total_flux
        self._zero_points = [b.magnitude_zero_point for b in bands]

    def kwargs(
        self, mags: list[float], r: float, n: float, e1: float, e2: float, cx: float, cy: float
    ) -> list[dict]:
        """One dict per band; `mags` are the per-band magnitudes in band order."""
        norm = self._flux_norm(1.0, r, n, e1, e2)
        return [
            {"amp": 10.0 ** (-0.4 * (m - zp)) / norm, "R_sersic": r, "n_sersic": n, "e1": e1, "e2": e2,
             "center_x": cx, "center_y": cy}
            for m, zp in zip(mags, self._zero_points)
        ]


def _light_items(spec: LightSpec, bands: tuple[Band, ...], ref: str) -> list[tuple[str, Prior]]:
    """Block items of a light component; colours are drawn as `<prefix>_color_<band>`."""
    items = [(f"{spec.prefix}_mag", spec.magnitude)]
    items += [(f"{spec.prefix}_color_{b.name}", spec.colors[b.name]) for b in bands if b.name != ref]
    items += [(f"{spec.prefix}_{k}", p) for k, p in spec.shape.items()]
    return items


def _mag_params(prefix: str, bands: tuple[Band, ...], ref: str) -> list[str]:
    return [f"{prefix}_mag"] + [f"{prefix}_mag_{b.name}" for b in bands if b.name != ref]


# ----------------------------------------------------------------------------------------------- simulators


class _Drawn(NamedTuple):
    params: dict[str, float]
    kwargs_lens: list[dict]  # the macro model: SIE, SHEAR
    haloes: tuple[Haloes, ...]  # substructure (subhaloes, vortex points), rendered by the scene's engine
    kwargs_source: list[dict]  # one per band
    kwargs_light: list  # one per band (None without lens light)
    z: np.ndarray  # noise normals (bands, H, W)
    exposures: list  # total exposure time per band, seconds


class Simulator:
    """Base: see build_simulator. Pickles as its config (lenstronomy objects are rebuilt on unpickling)."""

    class_names: list[str]
    image_shapes: dict[str, tuple[int, int, int]]
    param_names: list[str]
    class_specific_params: set[str]

    def __init__(self, config: dict, spec: SceneSpec) -> None:
        self.config = config
        self.spec = spec
        self.class_names = list(spec.class_names)
        bands = spec.bands
        self._ref = config["instrument"]["reference_band"] or bands[0].name
        self._light = _Light(bands)
        self._n_bands = len(bands)
        self._band_order = [i for i, b in enumerate(bands) if b.name != self._ref]  # colour slots -> band index
        exposure = [b.exposure_time for b in bands]
        self._exposure_drawn = any(not p.is_constant for p in exposure)
        self._exposures = [p.args[0] if p.is_constant else None for p in exposure]
        self._bkg2 = [(b.background_rms**2 if spec.background else 0.0) for b in bands]

    def __reduce__(self) -> tuple:
        return build_simulator, (self.config,)

    def simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        raise NotImplementedError

    # shared helpers -------------------------------------------------------------------------------

    def _band_mags(self, ref_mag: float, colors: list[float]) -> list[float]:
        mags = [ref_mag] * self._n_bands
        for slot, band in enumerate(self._band_order):
            mags[band] = ref_mag + colors[slot]
        return mags

    def _store_mags(self, params: dict, prefix: str, mags: list[float]) -> None:
        for band in self._band_order:
            params[f"{prefix}_mag_{self.spec.bands[band].name}"] = mags[band]

    def _add_noise(
        self, model: np.ndarray, z: np.ndarray, band: int, exposure: float, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The one place noise enters an image (z ~ N(0, 1) drawn before any class-specific draw).

        Scheme deeplense_model_i copies DeepLenseSim's simple_sim as it runs: lenstronomy's Gaussian Poisson
        and background realisations are added in e-/s, the sum is multiplied by the exposure time and then
        drawn AGAIN as a Poisson count (`np.random.poisson(exp_time * (model + poisson + bkg))`): the stored
        image is in counts and its shot noise is applied twice. z then holds two normals per pixel.
        """
        spec = self.spec
        if spec.noise_scheme == "deeplense_model_i":
            if not spec.noise_enabled:
                return model * exposure * spec.flux_scale
            image = model
            if spec.poisson:
                image = image + z[0] * np.sqrt(np.abs(model) / exposure)
            if spec.background:
                image = image + z[1] * math.sqrt(self._bkg2[band])
            if spec.poisson:
                image = rng.poisson(np.clip(exposure * image, 0.0, None)).astype(np.float64)
            else:
                image = exposure * image
            return image * spec.flux_scale
        if not spec.noise_enabled:
            return model * spec.flux_scale
        return self._gaussian_noise(model, z, band, exposure) * spec.flux_scale

    def _gaussian_noise(self, model: np.ndarray, z: np.ndarray, band: int, exposure: float) -> np.ndarray:
        variance = self._bkg2[band]
        if self.spec.poisson:
            variance = variance + np.maximum(model, 0.0) / exposure
        elif variance == 0.0:
            return model
        return model + z * np.sqrt(variance)


class SubstructureSimulator(Simulator):
    """no_sub / cdm / axion lenses that differ only by their substructure (DeepLense Models I-III)."""

    def __init__(self, config: dict, spec: SceneSpec, populations: tuple[str, ...] | None = None) -> None:
        super().__init__(config, spec)
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.Cosmo.lens_cosmo import LensCosmo

        bands = spec.bands
        lens_cosmo = LensCosmo(spec.z_lens, spec.z_source, cosmo=FlatLambdaCDM(H0=spec.H0, Om0=spec.Om0))
        self._populations = list(populations or spec.class_names)
        h = spec.H0 / 100.0
        factor = 1.0
        if spec.mass_to_angle == "deeplense_luminosity":
            factor = deeplense_mass_factor(spec.H0, spec.Om0, spec.z_lens, spec.z_source, lens_cosmo)
        self.mass_factor = factor
        self._sigma_crit = float(lens_cosmo.sigma_crit_angle)
        halo_model = spec.halo_model
        self._cdm = (SubhaloPopulation(spec.subhalos, lens_cosmo, spec.z_lens, h, factor, spec.Om0, halo_model,
                                       spec.lens["theta_E"].support()) if spec.subhalos else None)
        self._axion = AxionVortex(spec.axion, lens_cosmo, factor) if spec.axion else None
        self._wdm = spec.wdm
        self._los = None
        if spec.line_of_sight is not None:
            sub = config["substructure"]
            cone = spec.size * max(b.pixel_scale for b in bands) / math.sqrt(2.0) + spec.line_of_sight.cone_margin
            self._los = LineOfSight(spec.line_of_sight, spec.z_lens, spec.z_source, spec.H0, spec.Om0, cone,
                                    sub["concentration"]["model"], float(sub["concentration"]["scatter_dex"]),
                                    halo_model, factor)
        # substructure is part of the lens mass: the smooth SIE gives up what the subhaloes or vortex add
        self._subtract_sub = bool(spec.subhalos and spec.subhalos.subtract_from_macro) or bool(
            config["substructure"]["subtract_from_macro"] and spec.axion)
        self._subtract = self._subtract_sub or bool(self._los and self._los.spec.mass_sheet)
        self._renderers = [_Renderer(spec.size, b.pixel_scale, b.psf_kwargs, spec.supersampling, spec.engine)
                           for b in bands]

        items = [(k, p) for k, p in spec.lens.items()] + _light_items(spec.source, bands, self._ref)
        if spec.lens_light:
            items += _light_items(spec.lens_light, bands, self._ref)
        if self._exposure_drawn:
            items.append(("exposure_time", bands[0].exposure_time))  # custom instrument: one band
        self._block = PriorBlock(items)
        n_colors = len(self._band_order)
        names = self._block.names
        self._i_source = names.index("source_mag")
        self._i_lens_light = names.index("lens_light_mag") if spec.lens_light else -1
        self._n_colors = n_colors

        stored = [k for k in spec.lens]
        stored += _mag_params("source", bands, self._ref) + [f"source_{k}" for k in SOURCE_SHAPE]
        if spec.lens_light:
            stored += _mag_params("lens_light", bands, self._ref) + [f"lens_light_{k}" for k in LENS_LIGHT_SHAPE]
        if self._exposure_drawn:
            stored.append("exposure_time")
        specific: list[str] = []
        if self._cdm is not None:
            specific += self._cdm.param_names
        if "wdm" in self._populations:
            specific += WDM_PARAMS
        if "axion" in self._populations:
            specific += AXION_PARAMS
        if self._subtract:
            specific.append("theta_E_smooth")
        if self._los is not None:  # one distribution in every class, unless wdm thins its field haloes too
            if "wdm" in self._populations:
                specific += LOS_PARAMS
            else:
                stored += LOS_PARAMS
        self.param_names = stored + specific
        self.class_specific_params = set(specific)
        self._template = dict.fromkeys(self.param_names, math.nan)
        self._keep = [k for k, name in enumerate(names) if name in self._template]
        self._keep_names = [names[k] for k in self._keep]
        # no subhaloes: zero counts, masses and amplitudes (f_sub, sigma_sub), not "not applicable"
        self._zero_cdm = dict.fromkeys(self._cdm.param_names, 0.0) if self._cdm is not None else {}
        self.image_shapes = {"image": (spec.size, spec.size, len(bands))}
        two = (2,) if spec.noise_scheme == "deeplense_model_i" else ()
        self._noise_shape = (len(bands), *two, spec.size, spec.size)

    def _draw_scene(self, label: int, rng: np.random.Generator) -> _Drawn:
        """Macro/source/lens light (+exposure), noise normals, then the class's substructure."""
        v = self._block.sample(rng).tolist()
        z = rng.standard_normal(self._noise_shape)
        theta_e, e1, e2, cx, cy, g1, g2 = v[:7]
        kwargs_lens = [
            {"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy},
            {"gamma1": g1, "gamma2": g2},
        ]
        params = self._template.copy()
        params.update(zip(self._keep_names, [v[k] for k in self._keep]))
        nc = self._n_colors
        i = self._i_source
        mags = self._band_mags(v[i], v[i + 1 : i + 1 + nc])
        sr, sn, se1, se2, sx, sy = v[i + 1 + nc : i + 7 + nc]
        # the source centre is an offset from the lens centre
        kwargs_source = self._light.kwargs(mags, sr, sn, se1, se2, cx + sx, cy + sy)
        self._store_mags(params, "source", mags)
        kwargs_light: list = [None] * self._n_bands
        if self._i_lens_light >= 0:
            i = self._i_lens_light
            mags = self._band_mags(v[i], v[i + 1 : i + 1 + nc])
            r, n, le1, le2 = v[i + 1 + nc : i + 5 + nc]
            kwargs_light = self._light.kwargs(mags, r, n, le1, le2, cx, cy)
            self._store_mags(params, "lens_light", mags)
        exposures = [params["exposure_time"]] if self._exposure_drawn else self._exposures

        population = self._populations[label]
        # the field haloes draw from their own stream, seeded here for every class: the same line of sight
        # for every class of a seed, whatever the class-specific draws below consume
        los_rng = np.random.default_rng(int(rng.integers(2**63))) if self._los is not None else None
        haloes: tuple[Haloes, ...] = ()
        enclosed = 0.0
        log10_m_hm = math.nan
        if population in ("cdm", "wdm"):
            wdm = self._wdm if population == "wdm" else None
            group, summary, enclosed = self._cdm.draw(rng, cx, cy, theta_e, wdm)
            haloes = (group,)
            names = self._cdm.param_names + (WDM_PARAMS if wdm else ())
            params.update(zip(names, summary))
            log10_m_hm = params.get("log10_m_hm", math.nan)
        else:
            params.update(self._zero_cdm)
            if population == "axion":
                group, summary, enclosed = self._axion.draw(rng, cx, cy, theta_e)
                haloes = (group,)
                params.update(zip(AXION_PARAMS, summary))
        if not self._subtract_sub:
            enclosed = 0.0
        if self._los is not None:
            wdm_model = self._wdm.model if population == "wdm" else None
            group, summary, los_enclosed = self._los.draw(los_rng, theta_e, wdm_model, log10_m_hm)
            haloes = (*haloes, group)
            params.update(zip(LOS_PARAMS, summary))
            if self._los.spec.mass_sheet:
                enclosed += los_enclosed
        if self._subtract:
            # mean convergence inside the drawn theta_E stays 1: an SIS of Einstein radius t holds
            # pi Sigma_crit t theta inside theta, so t = theta_E - M_x(<theta_E) / (pi Sigma_crit theta_E)
            smooth = max(theta_e - enclosed / (math.pi * self._sigma_crit * theta_e), 0.05 * theta_e)
            kwargs_lens[0]["theta_E"] = smooth
            params["theta_E_smooth"] = smooth
        return _Drawn(params, kwargs_lens, haloes, kwargs_source, kwargs_light, z, exposures)

    def draw_scene(self, label: int, rng: np.random.Generator) -> _Drawn:
        """Everything one record draws (parameters, macro model, haloes, noise normals), without rendering."""
        return self._draw_scene(label, rng)

    @property
    def line_of_sight(self) -> Any:
        """The scene's LineOfSight population (None when line_of_sight is off)."""
        return self._los

    @property
    def renderers(self) -> list:
        """One renderer per band."""
        return self._renderers

    def _render(self, renderers: list, d: _Drawn) -> list[np.ndarray]:
        return [renderer.image(d.kwargs_lens, d.haloes, d.kwargs_source[b], d.kwargs_light[b])
                for b, renderer in enumerate(renderers)]

    def simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        d = self._draw_scene(label, rng)
        models = self._render(self._renderers, d)
        channels = [self._add_noise(m, d.z[b], b, d.exposures[b], rng) for b, m in enumerate(models)]
        return {"image": np.stack(channels, axis=-1).astype(np.float32)}, d.params

    def noiseless(self, label: int, rng: np.random.Generator) -> np.ndarray:
        """The model image `simulate` adds noise to, for the same rng state (for tests and checks)."""
        return self.noiseless_with_exposures(label, rng)[0]

    def noiseless_with_exposures(self, label: int, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
        """(noiseless (H, W, bands) model in e-/s, exposure time per band) for the same rng state."""
        drawn = self._draw_scene(label, rng)
        return np.stack(self._render(self._renderers, drawn), axis=-1), list(drawn.exposures)


class SuperResolutionSimulator(SubstructureSimulator):
    """One scene rendered twice: LR with the instrument's PSF and noise, HR at pixel/factor with a sharper PSF.

    HR pixels are given in e-/s per LR-pixel area (multiplied by factor²) so both images share one brightness
    scale: the mean of HR over factor x factor blocks equals LR before PSF and noise.
    """

    def __init__(self, config: dict, spec: SceneSpec) -> None:
        sr = spec.super_resolution
        super().__init__(config, spec, populations=(sr.population,))
        band = spec.bands[0]
        hr_psf = {"psf_type": "GAUSSIAN", "fwhm": sr.hr_psf_fwhm, "truncation": 5}
        self._hr = [_Renderer(spec.size * sr.factor, band.pixel_scale / sr.factor, hr_psf, spec.supersampling,
                              spec.engine)]
        self._hr_scale = float(sr.factor**2)
        self._hr_rms = sr.hr_background_rms
        hr = spec.size * sr.factor
        self._hr_shape = (hr, hr)
        self.image_shapes = {"image": (spec.size, spec.size, 1), "image_hr": (hr, hr, 1)}
        self.class_specific_params = set()

    def simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        d = self._draw_scene(0, rng)
        (lr,) = self._render(self._renderers, d)
        (hr,) = self._render(self._hr, d)
        lr = self._add_noise(lr, d.z[0], 0, d.exposures[0])
        hr = hr * self._hr_scale
        if self._hr_rms > 0:
            hr = hr + self._hr_rms * rng.standard_normal(self._hr_shape)
        return {"image": lr[..., None].astype(np.float32), "image_hr": hr[..., None].astype(np.float32)}, d.params


class LensFindingSimulator(Simulator):
    """Lenses vs non-lenses with the same lens-galaxy light, field galaxies and noise distributions.

    Non-lenses are confusers (`confuser_type` = index in CONFUSER_TYPES): the galaxy alone; the galaxy with
    1..max unlensed neighbours drawn from the source-galaxy priors (blue, same sizes and magnitudes); an
    arc-like blue companion (an elongated source-like galaxy, tangentially oriented at Einstein-radius-like
    separations and brightened like a magnified arc); a ring of blue star-forming knots around the galaxy.
    Field galaxies (Poisson count, source-like, at large separations) are drawn the same way for both classes.
    """

    def __init__(self, config: dict, spec: SceneSpec) -> None:
        super().__init__(config, spec)
        lf = spec.lens_finding
        bands = spec.bands
        self._lf = lf
        self._renderers = [_Renderer(spec.size, b.pixel_scale, b.psf_kwargs, spec.supersampling) for b in bands]
        lens = spec.lens
        common = [("center_x", lens["center_x"]), ("center_y", lens["center_y"])]
        common += _light_items(spec.lens_light, bands, self._ref)
        if self._exposure_drawn:
            common.append(("exposure_time", bands[0].exposure_time))
        lensing = [(k, lens[k]) for k in ("theta_E", "e1", "e2", "gamma1", "gamma2")]
        lensing += _light_items(spec.source, bands, self._ref)
        self._common = PriorBlock(common)
        self._lensing = PriorBlock(lensing)
        self._galaxy = PriorBlock(_light_items(spec.source, bands, self._ref))
        self._cumulative = np.cumsum(lf.fractions)[:-1].tolist()
        nc = len(self._band_order)
        self._nc = nc

        stored = ["center_x", "center_y"] + _mag_params("lens_light", bands, self._ref)
        stored += [f"lens_light_{k}" for k in LENS_LIGHT_SHAPE]
        if self._exposure_drawn:
            stored.append("exposure_time")
        lens_only = ["theta_E", "e1", "e2", "gamma1", "gamma2"] + _mag_params("source", bands, self._ref)
        lens_only += [f"source_{k}" for k in SOURCE_SHAPE]
        confuser = ["confuser_type", "n_companions", "companion_mag", "companion_separation"]
        self.param_names = stored + lens_only + ["n_field_galaxies"] + confuser
        self.class_specific_params = set(lens_only + confuser)
        self._template = dict.fromkeys(self.param_names, math.nan)
        self._common_keep = [k for k, name in enumerate(self._common.names) if name in self._template]
        self._lensing_keep = [k for k, name in enumerate(self._lensing.names) if name in self._template]
        self.image_shapes = {"image": (spec.size, spec.size, len(bands))}
        self._noise_shape = (len(bands), spec.size, spec.size)

    def _galaxy_kwargs(
        self, v: list[float], x: float, y: float, dmag: float = 0.0, shape: tuple | None = None
    ) -> tuple[list[dict], float]:
        """Per-band kwargs of a source-like galaxy drawn as `v` (galaxy block order) placed at (x, y)."""
        nc = self._nc
        mag = v[0] - dmag
        r, n, e1, e2 = shape if shape is not None else v[1 + nc : 5 + nc]
        return self._light.kwargs(self._band_mags(mag, v[1 : 1 + nc]), r, n, e1, e2, x, y), mag

    def _around(self, rng: np.random.Generator, prior: Prior, cx: float, cy: float) -> tuple[float, ...]:
        sep = float(inverse_cdf(prior, rng.random()))
        phi = 2.0 * math.pi * rng.random()
        return cx + sep * math.cos(phi), cy + sep * math.sin(phi), sep, phi

    def _confuser(self, rng: np.random.Generator, cx: float, cy: float, params: dict) -> list[list[dict]]:
        lf = self._lf
        kind = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        lights, mags, seps = [], [], []
        if kind == 1:  # unlensed neighbours from the source population
            for _ in range(int(rng.integers(1, lf.neighbours_max + 1))):
                x, y, sep, _ = self._around(rng, lf.neighbour_separation, cx, cy)
                kw, mag = self._galaxy_kwargs(self._galaxy.sample(rng).tolist(), x, y)
                lights.append(kw)
                mags.append(mag)
                seps.append(sep)
        elif kind == 2:  # one elongated, tangential, brightened blue galaxy: a single straight "arc"
            x, y, sep, phi = self._around(rng, lf.arc_separation, cx, cy)
            r, q, dmag = (float(inverse_cdf(p, rng.random())) for p in
                          (lf.arc_R_sersic, lf.arc_axis_ratio, lf.arc_brightening))
            v = self._galaxy.sample(rng).tolist()
            ell = (1.0 - q) / (1.0 + q)
            e1, e2 = ell * math.cos(2.0 * (phi + math.pi / 2)), ell * math.sin(2.0 * (phi + math.pi / 2))
            kw, mag = self._galaxy_kwargs(v, x, y, dmag, (r, v[2 + self._nc], e1, e2))
            lights.append(kw)
            mags.append(mag)
            seps.append(sep)
        elif kind == 3:  # a ring of blue star-forming knots sharing one colour and radius
            k = int(rng.integers(lf.ring_knots[0], lf.ring_knots[1] + 1))
            radius = float(inverse_cdf(lf.ring_radius, rng.random()))
            dmag = float(inverse_cdf(lf.ring_brightening, rng.random()))
            v = self._galaxy.sample(rng).tolist()
            total = v[0] - dmag
            knot_mag = total + 2.5 * math.log10(k)
            v[0] = knot_mag
            knot_r = inverse_cdf(lf.knot_R_sersic, rng.random(k)).tolist()
            angles = (2.0 * math.pi * rng.random(k)).tolist()
            for r, phi in zip(knot_r, angles):
                x, y = cx + radius * math.cos(phi), cy + radius * math.sin(phi)
                kw, _ = self._galaxy_kwargs(v, x, y, 0.0, (r, 1.0, 0.0, 0.0))
                lights.append(kw)
            mags.append(total)
            seps.append(radius)
        params["confuser_type"] = float(kind)
        params["n_companions"] = float(len(lights))
        if mags:
            params["companion_mag"] = -2.5 * math.log10(sum(10.0 ** (-0.4 * m) for m in mags))
            params["companion_separation"] = sum(seps) / len(seps)
        return lights

    def simulate(self, label: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        c = self._common.sample(rng).tolist()
        lz = self._lensing.sample(rng).tolist()  # drawn for both classes so one seed pairs lens and non-lens
        z = rng.standard_normal(self._noise_shape)
        params = self._template.copy()
        params.update((self._common.names[k], c[k]) for k in self._common_keep)
        nc = self._nc
        cx, cy = c[0], c[1]
        mags = self._band_mags(c[2], c[3 : 3 + nc])
        r, n, e1, e2 = c[3 + nc : 7 + nc]
        self._store_mags(params, "lens_light", mags)
        lights = [self._light.kwargs(mags, r, n, e1, e2, cx, cy)]
        exposures = [params["exposure_time"]] if self._exposure_drawn else self._exposures

        n_field = min(int(rng.poisson(self._lf.field_mean)), self._lf.field_max)
        for _ in range(n_field):
            x, y, _, _ = self._around(rng, self._lf.field_separation, cx, cy)
            lights.append(self._galaxy_kwargs(self._galaxy.sample(rng).tolist(), x, y)[0])
        params["n_field_galaxies"] = float(n_field)

        is_lens = label == 0
        theta_e, le1, le2, g1, g2 = lz[:5]
        kwargs_lens = [
            {"theta_E": theta_e, "e1": le1, "e2": le2, "center_x": cx, "center_y": cy},
            {"gamma1": g1, "gamma2": g2},
        ]
        s_mags = self._band_mags(lz[5], lz[6 : 6 + nc])
        # source centre is relative to the lens centre
        sr, sn, se1, se2, sx, sy = lz[6 + nc : 12 + nc]
        kwargs_source = self._light.kwargs(s_mags, sr, sn, se1, se2, cx + sx, cy + sy)
        if is_lens:
            params.update((self._lensing.names[k], lz[k]) for k in self._lensing_keep)
            self._store_mags(params, "source", s_mags)
        else:
            lights += self._confuser(rng, cx, cy, params)

        channels = []
        for b, renderer in enumerate(self._renderers):
            model = renderer.model((), len(lights))
            image = model.image(kwargs_lens, [kwargs_source[b]], [light[b] for light in lights], source_add=is_lens)
            channels.append(self._add_noise(image, z[b], b, exposures[b]))
        return {"image": np.stack(channels, axis=-1).astype(np.float32)}, params


def build_simulator(config: dict) -> Simulator:
    """Simulator for a config as returned by lensnet.simulate.presets.resolve_dataset_config."""
    spec = parse_scene(config)
    if spec.kind == "substructure":
        return SubstructureSimulator(config, spec)
    if spec.kind == "super_resolution":
        return SuperResolutionSimulator(config, spec)
    return LensFindingSimulator(config, spec)
