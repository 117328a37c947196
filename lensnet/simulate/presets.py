"""Dataset configs: the default tree, the presets in configs/datasets/, and strict resolution + validation."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lensnet.core.config import CONFIG_DIR, load_yaml, merge
from lensnet.core.errors import LensnetError
from lensnet.data.augment import GROUPS
from lensnet.simulate.halo_models import HALO_MODEL_DEFAULTS
from lensnet.simulate.priors import is_prior_spec

if TYPE_CHECKING:
    from lensnet.simulate.scene_spec import SceneSpec
    from lensnet.simulate.survey_population import SurveySpec

PRESET_DIR = CONFIG_DIR / "datasets"

# Every valid key exists here (lensnet.core.config.merge rejects the others). Priors are a number or a one-key
# mapping ({uniform: [a, b]}, ...; see lensnet.simulate.priors). The scene is the DeepLense Model II one.
DATASET_DEFAULTS: dict = {
    "name": "custom",
    "description": "custom dataset",
    "num": 3000,
    "splits": {"train": 0.8, "val": 0.1, "test": 0.1},
    "records_per_shard": 1000,
    "kind": "substructure",  # substructure | lens_finding | lens_finding_survey | super_resolution
    # lens finding only: the share of lenses per split (None: classes alternate, balanced); survey-mode
    # evaluation sets use e.g. 0.001 (lenses evenly spaced through each split)
    "prevalence": None,
    "replica": None,  # a replica preset's name: its physics is fixed (see REPLICA_FREE)
    # the augmentation that keeps the data's symmetry (recorded in the manifest's config for trainers):
    # d4 when lenses are randomly oriented, flips ({id, flip x, flip y, rot 180}) for a fixed macro model,
    # rot180 when the source shape is fixed too (DeepLense's e2 = +0.1 changes sign under a flip)
    "symmetry": "d4",
    "classes": ["no_sub", "cdm", "axion"],  # substructure: any of these; lens_finding: [lens, non_lens]
    "image": {"size": 64, "supersampling": 2, "flux_scale": 1.0},
    "instrument": {
        "name": "Euclid",  # an ObservationConfig preset (Euclid, HST, LSST, Roman, DES, JWST, ZTF) or custom
        "bands": ["VIS"],  # one image channel per band
        "reference_band": None,  # band of the `magnitude` priors (default: the first band)
        "psf_type": "GAUSSIAN",
        "coadd_years": None,  # passed to the preset when set (Euclid, LSST, DES)
        "survey_mode": None,  # Roman only
        # total exposure time in seconds, replacing the preset's (lenstronomy recomputes the background rms
        # from it): the noise-level knob of a preset instrument; custom instruments set custom.exposure_time
        "exposure_time": None,
        # band -> lenstronomy kwargs_single_band written out in full: used instead of the installed
        # lenstronomy's ObservationConfig, so an upgrade cannot change the data (replicas pin their reference's)
        "pinned": None,
        "custom": {
            "pixel_scale": 0.05,
            "psf_fwhm": 0.087,
            "background_rms": 0.01,
            "exposure_time": 1000.0,
            "magnitude_zero_point": 25.0,
            "psf_truncation": 5,  # Gaussian PSF kernel half-width in sigmas
        },
    },
    "noise": {"enabled": True, "poisson": True, "background": True, "scheme": "lensnet"},
    # mass_to_angle: angular_diameter (lenstronomy's LensCosmo) | deeplense_luminosity (DeepLenseSim's quirk)
    "cosmology": {"H0": 70.0, "Om0": 0.3, "z_lens": 0.5, "z_source": 1.0, "mass_to_angle": "angular_diameter",
                  # null: single lens plane. Or lenstronomy's multi-plane redshift convention as a reference
                  # called it ({z_source_convention, H0, Om0, Ob0}): every profile's normalisation is then a
                  # deflection for a source at z_source_convention, ray-traced to z_source in that cosmology
                  "multi_plane": None,
                  # read only by the colossus halo-model relations (concentrations, Sheth-Tormen): Planck 2018
                  "halo_model": dict(HALO_MODEL_DEFAULTS)},
    "lens": {
        "theta_E": {"uniform": [1.0, 1.6]},
        "e1": {"uniform": [-0.2, 0.2]},
        "e2": {"uniform": [-0.2, 0.2]},
        "center_x": {"uniform": [-0.05, 0.05]},
        "center_y": {"uniform": [-0.05, 0.05]},
        "gamma1": {"uniform": [-0.08, 0.08]},
        "gamma2": {"uniform": [-0.08, 0.08]},
    },
    "source": {
        "magnitude": {"uniform": [20.0, 22.0]},
        "R_sersic": {"uniform": [0.15, 0.4]},
        "n_sersic": {"uniform": [0.7, 1.5]},
        "e1": {"uniform": [-0.2, 0.2]},
        "e2": {"uniform": [-0.2, 0.2]},
        "center_x": {"uniform": [-0.35, 0.35]},
        "center_y": {"uniform": [-0.35, 0.35]},
        "colors": {},  # band -> prior of (magnitude in band - magnitude in reference band)
    },
    "lens_light": {
        "enabled": True,
        "magnitude": {"uniform": [19.5, 21.5]},
        "R_sersic": {"uniform": [0.5, 1.2]},
        "n_sersic": {"uniform": [3.0, 5.0]},
        "e1": {"uniform": [-0.2, 0.2]},
        "e2": {"uniform": [-0.2, 0.2]},
        "colors": {},
    },
    "substructure": {  # see lensnet/simulate/substructure.py for the definitions and sources
        "engine": "lenstronomy",  # lenstronomy (each halo a lenstronomy profile; alias: native) | fast
        "profile": "TNFW",  # TNFW | POINT_MASS
        # f_sub (projected mass fraction near theta_E) | count (n_mean) | sigma_sub (pyHalo's, kpc^-2)
        "normalisation": "f_sub",
        "f_sub": {"log_uniform": [0.005, 0.05]},
        "sigma_sub": 0.025,  # normalisation: sigma_sub only (pyHalo's CDM default); a prior is allowed
        # normalisation: sigma_sub only: pyHalo's host scaling 10^(mass_scaling log10(M/1e13) + redshift_scaling
        # log10(z_lens + 0.5)) with its CDM/WDM preset values
        "host": {"log10_m200": 13.3, "mass_scaling": 0.55, "redshift_scaling": 0.37},
        "n_mean": 25.0,  # normalisation: count only
        "count": "poisson",  # poisson | fixed (normalisation: count only)
        # 1e8 here (about 26 haloes, fast under either engine); the physical presets set 1e6 with engine: fast.
        # Not changed to 1e6: every preset that does not set it (lens_finding) stores this value in its manifest.
        "m_min": 1.0e8,
        "m_max": 1.0e10,
        "slope": -1.9,
        "radius": {"uniform": [0.25, 2.0]},  # the annulus the subhaloes populate, arcsec from the lens centre
        "placement": "area",  # area (uniform surface density) | radius (uniform in radius, as DeepLense)
        "subtract_from_macro": True,  # substructure (and vortex) mass is taken out of the smooth lens
        "concentration": {"model": "diemer19", "scatter_dex": 0.1},  # diemer19 | ludlow16 (colossus) | duffy08
        # roche (pyHalo's TRUNCATION_ROCHE at the 3D radius) | tidal (Jacobi, 3D) | tidal_projected (the former
        # rule, at the projected radius) | tau = r_trunc / r_s
        "truncation": "roche",
    },
    "wdm": {  # the wdm class: the cdm population thinned by a half-mode mass (lensnet/simulate/halo_models.py)
        "log10_m_hm": {"uniform": [6.0, 10.0]},  # log10 half-mode mass, Msun, within [4, 12]
        "mass_function": "lovell2020",  # lovell2020 (pyHalo's WDM default) | shmf_lovell2020 | lovell2014
        "concentration": "bose2016",
    },
    "line_of_sight": {  # field haloes between observer and source, every class (lensnet/simulate/los.py)
        "enabled": False,
        "m_min": 1.0e7,
        "m_max": 1.0e10,
        "dz": 0.02,  # lens-plane spacing (pyHalo's default)
        "z_start": 0.01,  # first plane (pyHalo's default)
        "normalisation": 1.0,  # pyHalo's LOS_normalization
        "cone_margin": 0.5,  # arcsec beyond the image half-diagonal
        "truncation_overdensity": 50.0,  # r_trunc = r_N with N x rho_crit(z): pyHalo's TRUNCATION_R50
        "mass_sheet": True,  # take the haloes' mean convergence out of the smooth lens through theta_E
    },
    "axion": {
        "vortex_mass": 3.0e10,
        "log10_m_axion": {"uniform": [-24.0, -22.0]},
        "half_length_ref": 0.03,
        "angle": {"uniform": [0.0, math.pi]},
        "n_points": 50,
    },
    "lens_finding": {
        "confusers": {"galaxy_only": 0.3, "neighbours": 0.35, "arc_like": 0.2, "ring": 0.15},
        "neighbours": {"max_count": 3, "separation": {"uniform": [1.0, 3.5]}},
        "arc_like": {
            "separation": {"uniform": [1.0, 2.5]},
            "R_sersic": {"uniform": [0.3, 0.7]},
            "axis_ratio": {"uniform": [0.15, 0.4]},
            "brightening": {"uniform": [0.5, 2.0]},
        },
        "ring": {
            "n_knots": [4, 8],
            "radius": {"uniform": [1.0, 2.5]},
            "knot_R_sersic": {"uniform": [0.08, 0.2]},
            "brightening": {"uniform": [0.5, 2.0]},
        },
        "field_galaxies": {"mean": 0.4, "max_count": 3, "separation": {"uniform": [2.5, 6.0]}},
    },
    # kind lens_finding_survey (lensnet/simulate/survey_population.py; the presets cite every relation)
    "survey_population": {
        "snr_band": "r",
        "deflector": {
            "z": {"truncated_normal": [0.5, 0.2, 0.15, 1.0]},
            "vdf": {"sigma_star": 161.0, "alpha": 2.32, "beta": 2.67, "weight_power": 4.0,
                    "sigma_min": 180.0, "sigma_max": 400.0},
            "mag_scatter": 0.5,
            "size_scatter_dex": 0.11,
            "k_correction_per_z": 1.1,
            "axis_ratio": {"truncated_normal": [0.75, 0.15, 0.4, 1.0]},
            "n_sersic": {"uniform": [3.0, 5.0]},
            "mass_light_misalignment_deg": 10.0,
            "shear": {"truncated_normal": [0.0, 0.04, -0.15, 0.15]},
            "center": {"uniform": [-0.1, 0.1]},
            "colors": {},  # band -> [intercept, slope, scatter] of m_band - m_r against z
        },
        "source": {
            "z": {"truncated_normal": [2.0, 0.7, 0.7, 4.0]},
            "luminosity_function": {"M_star": -21.0, "alpha": -1.3, "M_bright": -23.0, "M_faint": -18.0},
            "size": {"R0_kpc": 1.5, "slope": 0.27, "z_power": -1.0, "scatter_dex": 0.2},
            "n_sersic": {"truncated_normal": [1.0, 0.5, 0.5, 3.0]},
            "axis_ratio": {"uniform": [0.3, 1.0]},
            "clumps": {"probability": 0.5, "max_count": 4, "flux_fraction": {"uniform": [0.1, 0.3]},
                       "size_fraction": 0.2},
            "position_radius": 1.0,
            "colors": {},
        },
        "selection": {"min_arc_snr": 8.0, "min_magnification": 2.0, "min_counter_image_snr": 3.0,
                      "max_tries": 10},
        "field_galaxies": {"mean": 0.5, "max_count": 3, "separation": [2.5, 6.0],
                           "z": {"uniform": [0.3, 2.0]}},
        "impostors": {
            "shares": {"elliptical": 0.2, "spiral": 0.15, "ring": 0.1, "merger": 0.1, "edge_on": 0.1,
                       "group": 0.1, "blue_neighbours": 0.15, "star": 0.1},
            "disc_colors": {},
            "spiral": {"bulge_fraction": [0.1, 0.4], "disc_R_e": [0.8, 2.5], "bulge_R_e": [0.2, 0.5],
                       "axis_ratio": [0.4, 1.0], "pitch_deg": [10.0, 30.0], "arms": [2, 3],
                       "arm_contrast": [0.5, 0.9]},
            "ring": {"radius": [0.8, 2.5], "width": [0.1, 0.3], "axis_ratio": [0.6, 1.0], "modulation": [0.0, 0.8],
                     "fainter_by": [1.0, 3.0], "blue_fraction": 0.7},
            "merger": {"separation": [0.8, 2.5], "max_features": 3, "radius": [1.0, 3.0], "width": [0.1, 0.3],
                       "opening_deg": [30.0, 120.0], "fainter_by": [1.5, 3.5]},
            "edge_on": {"separation": [0.8, 3.0], "R_e": [0.4, 1.2], "axis_ratio": [0.08, 0.2],
                        "fainter_by": [1.0, 3.5]},
            "group": {"separation": [1.5, 4.5], "max_members": 3},
            "blue_neighbours": {"separation": [0.8, 3.0], "max_count": 3, "z": {"uniform": [0.3, 1.2]}},
            "star": {"separation": [0.5, 4.0], "max_count": 2, "magnitude": [18.0, 24.0], "colors": {}},
        },
    },
    "super_resolution": {
        "factor": 2,
        "population": "no_sub",  # no_sub | cdm | axion
        "hr_psf_fwhm": 0.08,
        "hr_background_rms": 0.0,
    },
}

SYMMETRIES = (*GROUPS, "none")  # lensnet.data.augment's groups
OPEN_KEYS = ("source.colors", "lens_light.colors", "instrument.pinned",  # pinned: band -> settings
             "survey_population.deflector.colors", "survey_population.source.colors",
             "survey_population.impostors.disc_colors", "survey_population.impostors.star.colors")


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) of every configs/datasets/*.yaml."""
    out = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        data = load_yaml(path, "dataset preset")
        out.append((path.stem, " ".join(str(data.get("description", "")).split())))
    return out


def _clear_replaced_priors(base: Mapping, override: Mapping) -> dict:
    """Copy of `base` where every prior leaf that `override` sets is None, so merge() replaces it wholesale.

    Without this, {uniform: [..]} overridden by {normal: [..]} would be merged key by key (and rejected).
    """
    result = dict(base)
    for key, value in override.items():
        if key not in result:
            continue
        if is_prior_spec(result[key]):
            result[key] = None
        elif isinstance(result[key], Mapping) and isinstance(value, Mapping):
            result[key] = _clear_replaced_priors(result[key], value)
    return result


def _merge(base: dict, override: Mapping, where: str) -> dict:
    return merge(_clear_replaced_priors(base, override), override, open_keys=OPEN_KEYS, where=where)


def _is_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text or Path(text).is_file()


def _load(preset_or_path: str, seen: tuple[str, ...]) -> dict:
    """Config tree of a preset name or YAML path, following `preset:` chains."""
    if _is_path(preset_or_path):
        path = Path(preset_or_path)
        data = load_yaml(path, "dataset config")
        default_name = path.stem
    else:
        path = PRESET_DIR / f"{preset_or_path}.yaml"
        if not path.is_file():
            names = ", ".join(name for name, _ in list_presets())
            raise LensnetError(f"unknown dataset preset '{preset_or_path}'; choose one of {names} or give a YAML path")
        data = load_yaml(path, "dataset preset")
        default_name = preset_or_path
    key = str(path.resolve())
    if key in seen:
        raise LensnetError(f"dataset config {path}: `preset:` chain loops back to itself")
    parent = data.pop("preset", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise LensnetError(f"dataset config {path}: `preset` must be a preset name, got {parent!r}")
        base = _load(parent, (*seen, key))
    else:
        base = copy.deepcopy(DATASET_DEFAULTS)
    merged = _merge(base, data, where=f"dataset config {path}")
    if "name" not in data:
        merged["name"] = default_name
    return merged


# What a replica preset lets a user change; everything else is its fixed recipe. image.size crops the
# same scene (same pixel scale) around the lens, for tests and quick looks.
REPLICA_FREE = ("name", "description", "num", "splits", "records_per_shard", "classes", "image.size",
                "noise.enabled", "noise.poisson", "noise.background")


def resolve_dataset(preset_or_path: str | None, overrides: dict | None = None
                    ) -> tuple[dict, SceneSpec | SurveySpec]:
    """Preset name or YAML path (None: the defaults) + overrides -> (fully resolved config, its parsed scene).

    The scene is parsed here once; the simulator and its worker processes receive it (see SimulationSource).
    """
    config = _load(preset_or_path, ()) if preset_or_path else copy.deepcopy(DATASET_DEFAULTS)
    if overrides:
        config = _merge(config, overrides, where="dataset")
    return config, validate(config)


def resolve_dataset_config(preset_or_path: str | None, overrides: dict | None = None) -> dict:
    """Preset name or YAML path (None: the defaults) + overrides -> fully resolved, validated config."""
    return resolve_dataset(preset_or_path, overrides)[0]


def _first_difference(ours: Any, theirs: Any, where: str) -> str | None:
    """Dotted path of the first leaf where two config trees differ, skipping REPLICA_FREE."""
    if where in REPLICA_FREE:
        return None
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        for key in dict.fromkeys([*theirs, *ours]):
            found = _first_difference(ours.get(key), theirs.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if ours == theirs else where


def check_replica(config: dict) -> None:
    """A replica preset copies a published recipe: refuse any change it could not honour."""
    name = config["replica"]
    if name is None:
        return
    if not isinstance(name, str) or not (PRESET_DIR / f"{name}.yaml").is_file():
        raise LensnetError(f"replica: unknown replica preset {name!r}")
    reference = _load(name, ())
    if reference.get("replica") != name:
        raise LensnetError(f"replica: preset {name!r} is not a replica preset")
    classes = config["classes"]
    if not isinstance(classes, list) or not set(classes) <= set(reference["classes"]):
        raise LensnetError(f"classes: replica {name} has classes {reference['classes']}, got {classes!r}")
    found = _first_difference(config, reference, "")
    if found:
        expected = reference
        for part in found.split("."):
            expected = expected.get(part) if isinstance(expected, Mapping) else None
        raise LensnetError(
            f"{found}: replica {name} copies DeepLenseSim and fixes it to {expected!r}; it can change only "
            f"{', '.join(REPLICA_FREE)} (use a physical preset such as {name.replace('deeplense_', '')} instead)"
        )


def _check_int(value: Any, field: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LensnetError(f"{field}: expected an integer >= {minimum}, got {value!r}")


def validate(config: dict) -> SceneSpec | SurveySpec:
    """The parsed scene, or a LensnetError naming the first bad field (the scene parser checks the physics)."""
    from lensnet.simulate.scene_spec import parse_scene

    if not isinstance(config["name"], str) or not config["name"].strip():
        raise LensnetError(f"name: expected a non-empty string, got {config['name']!r}")
    if "/" in config["name"] or config["name"] in (".", ".."):
        raise LensnetError(f"name: '{config['name']}' cannot be a directory name")
    if config["symmetry"] not in SYMMETRIES:
        raise LensnetError(f"symmetry: expected one of {', '.join(SYMMETRIES)}, got {config['symmetry']!r}")
    if not isinstance(config["description"], str):
        raise LensnetError("description: expected a string")
    _check_int(config["num"], "num", 1)
    _check_int(config["records_per_shard"], "records_per_shard", 1)
    splits = config["splits"]
    for key, value in splits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise LensnetError(f"splits.{key}: expected a fraction in [0, 1], got {value!r}")
    if abs(sum(splits.values()) - 1.0) > 1e-6:
        raise LensnetError(f"splits: fractions must sum to 1, got {sum(splits.values()):g}")
    if splits["train"] <= 0:
        raise LensnetError("splits.train: must be > 0")
    check_replica(config)  # first: a replica's refusal says more than the physics error it would cause
    prevalence = config["prevalence"]
    if prevalence is not None:
        if config["kind"] not in ("lens_finding", "lens_finding_survey"):
            raise LensnetError("prevalence: applies to lens-finding datasets only (give null)")
        if isinstance(prevalence, bool) or not isinstance(prevalence, (int, float)) or not 0 < prevalence < 1:
            raise LensnetError(f"prevalence: expected a share of lenses in (0, 1) or null, got {prevalence!r}")
    if config["kind"] == "lens_finding_survey":
        from lensnet.simulate.survey_population import parse_survey

        return parse_survey(config)
    return parse_scene(config)
