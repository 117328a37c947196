"""Rendering: lenstronomy ImageModels on one pixel grid (Renderer) and Sersic light from magnitudes."""

from __future__ import annotations

from typing import Any

import numpy as np

from lensnet.simulate.instruments import Band
from lensnet.simulate.priors import Prior
from lensnet.simulate.scene_spec import LightSpec
from lensnet.simulate.substructure import Haloes


class Renderer:
    """lenstronomy ImageModels on one pixel grid with one PSF, built once per (lens layout, light count).

    engine lenstronomy: every halo is a profile of the ImageModel's LensModel (one model per layout; the
    most recently used are kept up to MAX_LAYOUTS models and MAX_PROFILES haloes in all, since realistic
    populations change their count in every image). engine fast:
    one macro-only ImageModel; the haloes' deflections on its evaluation grid come from
    lensnet.simulate.fast_lensing and are subtracted from the macro model's ray-shooting.
    `deflection_scale` multiplies every deflection (lenstronomy's multi-plane redshift convention for
    profiles on one plane, lensnet.simulate.scene_spec.deflection_scale); 1 renders lenstronomy's own image.
    """

    MAX_LAYOUTS = 64
    MAX_PROFILES = 50_000

    def __init__(self, size: int, pixel_scale: float, psf_kwargs: dict, supersampling: int,
                 engine: str = "lenstronomy", deflection_scale: float = 1.0) -> None:
        import lenstronomy.Util.simulation_util as sim_util
        from lenstronomy.Data.imaging_data import ImageData

        self._data = ImageData(**sim_util.data_configure_simple(size, pixel_scale))
        self._psf_kwargs = psf_kwargs
        self._numerics = {"supersampling_factor": supersampling}
        self._models: dict[tuple, Any] = {}
        self.engine = engine
        self.deflection_scale = float(deflection_scale)
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
        fast = self.engine == "fast" and any(len(h) for h in haloes)
        layout = () if fast else tuple((h.profile, len(h)) for h in haloes if len(h))
        model = self.model(layout, n_light)
        if not fast and self.deflection_scale == 1.0:
            kwargs = list(kwargs_macro)
            for group in haloes:
                kwargs += group.kwargs()
            return model.image(kwargs, [kwargs_source], light)
        # ImageModel.image's own steps (ray-shoot the evaluation grid, source light, resize + convolve), with
        # the haloes' deflections from the fast engine and/or every deflection scaled
        numerics = model.ImageNumerics
        x, y = numerics.coordinates_evaluate
        if fast:
            ax, ay = self.grid(x, y).deflections(haloes)
            bx, by = model.LensModel.ray_shooting(x, y, kwargs_macro)
            ax, ay = x - bx + ax, y - by + ay
        else:
            kwargs = list(kwargs_macro)
            for group in haloes:
                kwargs += group.kwargs()
            bx, by = model.LensModel.ray_shooting(x, y, kwargs)
            ax, ay = x - bx, y - by
        scale = self.deflection_scale
        flux = model.SourceModel.surface_brightness(x - scale * ax, y - scale * ay, [kwargs_source])
        if light is not None:
            flux = flux + model.LensLightModel.surface_brightness(x, y, light)
        return numerics.re_size_convolve(flux, unconvolved=False)


class SersicLight:
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


def light_items(spec: LightSpec, bands: tuple[Band, ...], ref: str) -> list[tuple[str, Prior]]:
    """Block items of a light component; colours are drawn as `<prefix>_color_<band>`."""
    items = [(f"{spec.prefix}_mag", spec.magnitude)]
    items += [(f"{spec.prefix}_color_{b.name}", spec.colors[b.name]) for b in bands if b.name != ref]
    items += [(f"{spec.prefix}_{k}", p) for k, p in spec.shape.items()]
    return items


def mag_params(prefix: str, bands: tuple[Band, ...], ref: str) -> list[str]:
    return [f"{prefix}_mag"] + [f"{prefix}_mag_{b.name}" for b in bands if b.name != ref]


