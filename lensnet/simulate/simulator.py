"""The Simulator base: what every scene shares (band magnitudes, the one place noise enters an image).

See lensnet.simulate.scenes for the draw order and the noise model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lensnet.simulate.rendering import SersicLight
from lensnet.simulate.scene_spec import SceneSpec
from lensnet.simulate.substructure import Haloes


class Drawn(NamedTuple):
    params: dict[str, float]
    kwargs_lens: list[dict]  # the macro model: SIE, SHEAR
    haloes: tuple[Haloes, ...]  # substructure (subhaloes, vortex points), rendered by the scene's engine
    kwargs_source: list[dict]  # one per band
    kwargs_light: list  # one per band (None without lens light)
    z: np.ndarray  # noise normals (bands, H, W)
    exposures: list  # total exposure time per band, seconds


class Simulator:
    """Base: see build_simulator. Pickles as (config, spec); lenstronomy objects are rebuilt on unpickling."""

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
        self._light = SersicLight(bands)
        self._n_bands = len(bands)
        self._band_order = [i for i, b in enumerate(bands) if b.name != self._ref]  # colour slots -> band index
        exposure = [b.exposure_time for b in bands]
        self._exposure_drawn = any(not p.is_constant for p in exposure)
        self._exposures = [p.args[0] if p.is_constant else None for p in exposure]
        self._bkg2 = [(b.background_rms**2 if spec.background else 0.0) for b in bands]

    def __reduce__(self) -> tuple:
        # the config and its already parsed spec travel to worker processes; lenstronomy objects are rebuilt there
        return type(self), (self.config, self.spec)

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
