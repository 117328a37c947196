"""Lens-finding scenes: lenses vs confusers (non-lenses) with the same lens-galaxy light and noise."""

from __future__ import annotations

import math

import numpy as np

from lensnet.simulate.priors import Prior, PriorBlock, inverse_cdf
from lensnet.simulate.rendering import Renderer, light_items, mag_params
from lensnet.simulate.scene_spec import LENS_LIGHT_SHAPE, SOURCE_SHAPE, SceneSpec
from lensnet.simulate.simulator import Simulator


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
        self._renderers = [Renderer(spec.size, b.pixel_scale, b.psf_kwargs, spec.supersampling,
                                    deflection_scale=spec.deflection_scale) for b in bands]
        lens = spec.lens
        common = [("center_x", lens["center_x"]), ("center_y", lens["center_y"])]
        common += light_items(spec.lens_light, bands, self._ref)
        if self._exposure_drawn:
            common.append(("exposure_time", bands[0].exposure_time))
        lensing = [(k, lens[k]) for k in ("theta_E", "e1", "e2", "gamma1", "gamma2")]
        lensing += light_items(spec.source, bands, self._ref)
        self._common = PriorBlock(common)
        self._lensing = PriorBlock(lensing)
        self._galaxy = PriorBlock(light_items(spec.source, bands, self._ref))
        self._cumulative = np.cumsum(lf.fractions)[:-1].tolist()
        nc = len(self._band_order)
        self._nc = nc

        stored = ["center_x", "center_y"] + mag_params("lens_light", bands, self._ref)
        stored += [f"lens_light_{k}" for k in LENS_LIGHT_SHAPE]
        if self._exposure_drawn:
            stored.append("exposure_time")
        lens_only = ["theta_E", "e1", "e2", "gamma1", "gamma2"] + mag_params("source", bands, self._ref)
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
