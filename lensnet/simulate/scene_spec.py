"""Scene specs: the physics sections of a resolved dataset config, validated once into a frozen SceneSpec.

Errors name the config field (`lens.theta_E: ...`). The simulators (lensnet.simulate.simulator and the
scene modules) read only the SceneSpec, never the raw sections they validate here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lensnet.core.config import check_keys
from lensnet.core.errors import LensnetError
from lensnet.simulate.instruments import Band, resolve_bands
from lensnet.simulate.los import LosSpec, parse_los_config
from lensnet.simulate.priors import Prior, parse_prior
from lensnet.simulate.substructure import (
    AxionSpec,
    SubhaloSpec,
    WdmSpec,
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
    # every lens deflection times this: 1, or lenstronomy's multi-plane convention (cosmology.multi_plane)
    deflection_scale: float = 1.0


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


MULTI_PLANE_KEYS = ("z_source_convention", "H0", "Om0", "Ob0")


def deflection_scale(z_lens: float, z_source: float, z_convention: float, H0: float, Om0: float, Ob0: float) -> float:
    """Lensing efficiency D_ls/D_s of the source over that of a source at z_convention (flat LambdaCDM).

    lenstronomy's multi-plane LensModel reads every profile's normalisation (theta_E, gamma, alpha_Rs) as
    the deflection of a source at `z_source_convention` and ray-traces to `z_source`: with all profiles on
    one plane that is the single-plane deflection times this ratio (a POINT_MASS theta_E times its root).
    """
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=H0, Om0=Om0, Ob0=Ob0)

    def efficiency(z: float) -> float:
        return float(cosmo.angular_diameter_distance(z_lens, z).value / cosmo.angular_diameter_distance(z).value)

    return efficiency(z_source) / efficiency(z_convention)


def _multi_plane(section: Any, z_lens: float, z_source: float) -> float:
    """cosmology.multi_plane (None: single plane) -> the deflection scale of every lens profile."""
    where = "cosmology.multi_plane"
    if section is None:
        return 1.0
    section = check_keys(section, MULTI_PLANE_KEYS, where, "a redshift convention")
    z_conv = _number(section["z_source_convention"], f"{where}.z_source_convention", 1e-4, 20.0)
    if not z_conv > z_lens:
        raise LensnetError(f"{where}.z_source_convention: must exceed z_lens ({z_lens:g}), got {z_conv:g}")
    om0 = _number(section["Om0"], f"{where}.Om0", 1e-3, 1.0)
    ob0 = _number(section["Ob0"], f"{where}.Ob0", 0.0, 1.0)
    if not ob0 < om0:
        raise LensnetError(f"{where}.Ob0: must be below Om0 ({om0:g}), got {ob0:g}")
    return deflection_scale(z_lens, z_source, z_conv, _number(section["H0"], f"{where}.H0", 1.0, 1000.0), om0, ob0)


def parse_scene(config: dict) -> SceneSpec:
    """Validate the physics sections of a resolved config (errors name the field) and return the scene."""
    kind = config["kind"]
    if kind not in KINDS:
        raise LensnetError(f"kind: unknown kind '{kind}'; choose one of {', '.join(KINDS)}, lens_finding_survey")
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
    if kind == "lens_finding" and cosmo["multi_plane"] is not None:  # its renderer draws lenses its own way
        raise LensnetError("cosmology.multi_plane: a redshift convention applies to substructure and super_resolution "
                           "datasets")
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
        deflection_scale=_multi_plane(cosmo["multi_plane"], z_lens, z_source),
        axion=parse_axion_config(config["axion"]) if "axion" in uses else None,
        lens_finding=_lens_finding(config["lens_finding"]) if kind == "lens_finding" else None,
        super_resolution=sr,
    )
