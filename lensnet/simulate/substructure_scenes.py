"""Substructure scenes (no_sub / cdm / wdm / axion, DeepLense Models I-III) and super-resolution pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lensnet.simulate.los import LOS_PARAMS, LineOfSight
from lensnet.simulate.priors import PriorBlock
from lensnet.simulate.rendering import Renderer, light_items, mag_params
from lensnet.simulate.scene_spec import LENS_LIGHT_SHAPE, SOURCE_SHAPE, SceneSpec
from lensnet.simulate.simulator import Drawn, Simulator
from lensnet.simulate.substructure import (
    AXION_PARAMS,
    WDM_PARAMS,
    AxionVortex,
    Haloes,
    SubhaloPopulation,
    deeplense_mass_factor,
)


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
                                       spec.lens["theta_E"].support(), spec.deflection_scale)
                     if spec.subhalos else None)
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
        self._renderers = [Renderer(spec.size, b.pixel_scale, b.psf_kwargs, spec.supersampling, spec.engine,
                                    spec.deflection_scale)
                           for b in bands]

        items = [(k, p) for k, p in spec.lens.items()] + light_items(spec.source, bands, self._ref)
        if spec.lens_light:
            items += light_items(spec.lens_light, bands, self._ref)
        if self._exposure_drawn:
            items.append(("exposure_time", bands[0].exposure_time))  # custom instrument: one band
        self._block = PriorBlock(items)
        n_colors = len(self._band_order)
        names = self._block.names
        self._i_source = names.index("source_mag")
        self._i_lens_light = names.index("lens_light_mag") if spec.lens_light else -1
        self._n_colors = n_colors

        stored = [k for k in spec.lens]
        stored += mag_params("source", bands, self._ref) + [f"source_{k}" for k in SOURCE_SHAPE]
        if spec.lens_light:
            stored += mag_params("lens_light", bands, self._ref) + [f"lens_light_{k}" for k in LENS_LIGHT_SHAPE]
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

    def _draw_scene(self, label: int, rng: np.random.Generator) -> Drawn:
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
        return Drawn(params, kwargs_lens, haloes, kwargs_source, kwargs_light, z, exposures)

    def draw_scene(self, label: int, rng: np.random.Generator) -> Drawn:
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

    def _render(self, renderers: list, d: Drawn) -> list[np.ndarray]:
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
        self._hr = [Renderer(spec.size * sr.factor, band.pixel_scale / sr.factor, hr_psf, spec.supersampling,
                              spec.engine, spec.deflection_scale)]
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
