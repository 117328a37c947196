"""Instruments: lenstronomy `SimulationAPI.ObservationConfig` presets by name and band, or a `custom` one.

Every number of a preset (pixel scale, PSF FWHM, zero point, exposure, sky, read
noise) comes from lenstronomy; lenstronomy's `SingleBand` turns them into the
background rms and the total exposure time. Images are in electrons per second
per pixel (lenstronomy's `data_count_unit="e-"`), so a source of magnitude m has
a total of 10 ** (-0.4 (m - zero_point)) e-/s.

Several ObservationConfig classes (HST, Roman, DES) write into their
module-level dictionaries when given a psf_type, survey mode or coadd length.
We snapshot those dictionaries the first time a module is used, restore them
around every call and deep-copy the result, so a band's settings never depend
on what was asked before in the same process.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any

from lensnet.core.config import check_keys
from lensnet.core.errors import LensnetError
from lensnet.simulate.priors import Prior, parse_prior

OBSERVATION_PRESETS = ("Euclid", "HST", "LSST", "Roman", "DES", "JWST", "ZTF")
PSF_TYPES = ("GAUSSIAN", "PIXEL")
POSITIVE = (1e-12, float("inf"))

_PRISTINE: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Band:
    name: str
    pixel_scale: float  # arcsec per pixel
    psf_kwargs: dict  # keyword arguments of lenstronomy.Data.psf.PSF
    psf_fwhm: float | None  # arcsec, None for a pixelated PSF
    magnitude_zero_point: float  # magnitude of 1 e-/s
    background_rms: float  # e-/s per pixel (sky + read noise, or the custom value)
    exposure_time: Prior  # total seconds (all exposures); only `custom` may draw it


def _module_dicts(module: Any) -> dict[str, dict]:
    return {k: v for k, v in vars(module).items() if isinstance(v, dict) and not k.startswith("_")}


def _restore(live: dict[str, dict], pristine: dict[str, dict]) -> None:
    for key, value in pristine.items():
        live[key].clear()
        live[key].update(copy.deepcopy(value))


def observation_kwargs(name: str, band: str, psf_type: str = "GAUSSIAN", **options: Any) -> dict:
    """`kwargs_single_band()` of an ObservationConfig preset, deep-copied and independent of module state."""
    if name not in OBSERVATION_PRESETS:
        raise LensnetError(
            f"instrument.name: unknown instrument '{name}'; choose custom or one of {', '.join(OBSERVATION_PRESETS)}"
        )
    module = importlib.import_module(f"lenstronomy.SimulationAPI.ObservationConfig.{name}")
    live = _module_dicts(module)
    pristine = _PRISTINE.setdefault(name, copy.deepcopy(live))
    options = {k: v for k, v in options.items() if v is not None}
    _restore(live, pristine)
    try:
        preset = getattr(module, name)(band=band, psf_type=psf_type, **options)
        kwargs = copy.deepcopy(preset.kwargs_single_band())
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise LensnetError(f"instrument: lenstronomy {name} preset refuses band '{band}' ({exc})") from None
    finally:
        _restore(live, pristine)
    kwargs["psf_type"] = psf_type  # never trust what a previous call left in the module
    return kwargs


# what lenstronomy's ObservationConfig presets return (kwargs_single_band), all a pinned band must write out
SINGLE_BAND_KEYS = ("pixel_scale", "seeing", "psf_type", "magnitude_zero_point", "exposure_time", "num_exposures",
                    "sky_brightness", "read_noise", "ccd_gain")


def pinned_kwargs(pinned: Any, band: str, psf_type: str) -> dict:
    """instrument.pinned[band]: a full kwargs_single_band, validated (errors name the key)."""
    where = f"instrument.pinned.{band}"
    if not isinstance(pinned, dict) or band not in pinned:
        raise LensnetError(f"{where}: missing; a pinned instrument writes out every band it lists")
    kwargs = check_keys(pinned[band], SINGLE_BAND_KEYS, where, "a pinned band")
    for key in SINGLE_BAND_KEYS:
        if key != "psf_type" and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], (int, float))):
            raise LensnetError(f"{where}.{key}: expected a number, got {kwargs[key]!r}")
    if kwargs["psf_type"] != psf_type:
        raise LensnetError(f"{where}.psf_type: pinned {kwargs['psf_type']!r} but instrument.psf_type is {psf_type!r}")
    return dict(kwargs)


def _preset_band(name: str, band: str, psf_type: str, options: dict, exposure_time: float | None = None,
                 pinned: dict | None = None) -> Band:
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    if pinned is None:
        kwargs = observation_kwargs(name, band, psf_type, **options)
    else:
        kwargs = pinned_kwargs(pinned, band, psf_type)
    if exposure_time is not None:  # the same number of exposures, each scaled to the requested total
        kwargs["exposure_time"] = float(exposure_time) / int(kwargs.get("num_exposures") or 1)
    if psf_type == "PIXEL" and kwargs.get("kernel_point_source") is None:
        raise LensnetError(f"instrument.psf_type: {name} {band} has no pixelated PSF in lenstronomy; use GAUSSIAN")
    try:
        single = SingleBand(**kwargs, data_count_unit="e-")
        background_rms = float(single.background_noise)
        exposure = float(single.exposure_time)
        psf_kwargs = dict(single.kwargs_psf)
    except (ValueError, TypeError) as exc:
        raise LensnetError(f"instrument: lenstronomy {name} {band} is incomplete ({exc})") from None
    fwhm = kwargs.get("seeing") if psf_type == "GAUSSIAN" else None
    if psf_type == "GAUSSIAN" and not fwhm:
        raise LensnetError(f"instrument.psf_type: {name} {band} has no seeing for a GAUSSIAN PSF in lenstronomy")
    return Band(
        name=band,
        pixel_scale=float(kwargs["pixel_scale"]),
        psf_kwargs=psf_kwargs,
        psf_fwhm=None if fwhm is None else float(fwhm),
        magnitude_zero_point=float(kwargs["magnitude_zero_point"]),
        background_rms=background_rms,
        exposure_time=Prior("constant", (exposure,)),
    )


def _custom_band(band: str, custom: dict) -> Band:
    where = "instrument.custom"
    pixel_scale = parse_prior(custom["pixel_scale"], f"{where}.pixel_scale", POSITIVE)
    fwhm = parse_prior(custom["psf_fwhm"], f"{where}.psf_fwhm", POSITIVE)
    rms = parse_prior(custom["background_rms"], f"{where}.background_rms", (0.0, float("inf")))
    zero_point = parse_prior(custom["magnitude_zero_point"], f"{where}.magnitude_zero_point")
    truncation = custom["psf_truncation"]
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not truncation > 0:
        raise LensnetError(f"{where}.psf_truncation: expected a number of sigmas > 0, got {truncation!r}")
    for field, prior in (("pixel_scale", pixel_scale), ("psf_fwhm", fwhm), ("background_rms", rms),
                         ("magnitude_zero_point", zero_point)):
        if not prior.is_constant:
            raise LensnetError(f"{where}.{field} must be a number (only exposure_time may be drawn)")
    return Band(
        name=band,
        pixel_scale=pixel_scale.args[0],
        psf_kwargs={"psf_type": "GAUSSIAN", "fwhm": fwhm.args[0], "truncation": truncation},
        psf_fwhm=fwhm.args[0],
        magnitude_zero_point=zero_point.args[0],
        background_rms=rms.args[0],
        exposure_time=parse_prior(custom["exposure_time"], f"{where}.exposure_time", POSITIVE),
    )


def resolve_bands(instrument: dict) -> list[Band]:
    """Bands of the `instrument` config section, in channel order (validated; errors name the field)."""
    name = instrument["name"]
    bands = instrument["bands"]
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) and b for b in bands):
        raise LensnetError(f"instrument.bands: expected a non-empty list of band names, got {bands!r}")
    if len(set(bands)) != len(bands):
        raise LensnetError(f"instrument.bands: repeated band in {bands}")
    if name == "custom":
        if len(bands) != 1:
            raise LensnetError("instrument.bands: the custom instrument has exactly one band")
        return [_custom_band(bands[0], instrument["custom"])]
    psf_type = instrument["psf_type"]
    if psf_type not in PSF_TYPES:
        raise LensnetError(f"instrument.psf_type: unknown PSF type '{psf_type}'; choose one of {', '.join(PSF_TYPES)}")
    options = {"coadd_years": instrument.get("coadd_years"), "survey_mode": instrument.get("survey_mode")}
    if options["survey_mode"] is not None and name != "Roman":
        raise LensnetError("instrument.survey_mode: only the Roman preset has survey modes")
    exposure_time = instrument.get("exposure_time")
    if exposure_time is not None and (isinstance(exposure_time, bool) or not isinstance(exposure_time, (int, float))
                                      or not 0 < float(exposure_time) < float("inf")):
        raise LensnetError(f"instrument.exposure_time must be a positive number of seconds, got {exposure_time!r}")
    pinned = instrument.get("pinned")
    if pinned is not None:
        if name not in OBSERVATION_PRESETS:
            raise LensnetError(f"instrument.name: unknown instrument '{name}'; choose custom or one of "
                               f"{', '.join(OBSERVATION_PRESETS)}")
        if not isinstance(pinned, dict):
            raise LensnetError(f"instrument.pinned: expected null or a mapping band -> settings, got {pinned!r}")
    return [_preset_band(name, band, psf_type, options, exposure_time, pinned) for band in bands]
