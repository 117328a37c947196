"""Simulation speed on one core: lensnet's Simulator against a plain lenstronomy loop of the same scene.

Both sides draw the model_ii scene (SIE + shear, Sersic source, Sersic lens light, Euclid VIS, 64x64,
supersampling 2) from the same priors and add the same noise; the `cdm` case adds the same TNFW subhalo
population (Poisson count, power-law masses, Duffy+08 concentrations, tidal truncation). The plain loop is
what a careful user writes: ImageModel built once (rebuilt per image only when the subhalo count changes
the lens model), kwargs updated per image, LensCosmo for the NFW units, numpy noise from a Generator.
Chunks of the two loops alternate so that machine noise hits both alike. Encoding costs belong to the
writer and are not timed here; the multi-worker measurement is the writer's.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

CHUNK = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=300, help="images per case and side (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-image generators")


class PlainLoop:
    """The model_ii scene written directly against lenstronomy."""

    def __init__(self, config: dict, substructure: bool) -> None:
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.Cosmo.lens_cosmo import LensCosmo
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.SimulationAPI.observation_api import SingleBand
        from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid
        from lenstronomy.Util import simulation_util

        self._LensModel, self._ImageModel = LensModel, ImageModel
        band = SingleBand(**Euclid(band="VIS", psf_type="GAUSSIAN").kwargs_single_band())
        self.exposure = band.exposure_time
        self.background = band.background_noise
        self.zero_point = band._magnitude_zero_point
        size = config["image"]["size"]
        self.shape = (size, size)
        self.data = ImageData(**simulation_util.data_configure_simple(size, band.pixel_scale))
        self.psf = PSF(**band.kwargs_psf)
        self.numerics = {"supersampling_factor": config["image"]["supersampling"]}
        self.source = LightModel(["SERSIC_ELLIPSE"])
        self.lens_light = LightModel(["SERSIC_ELLIPSE"])
        self.image_model = ImageModel(
            self.data, self.psf, LensModel(["SIE", "SHEAR"]), self.source, self.lens_light,
            kwargs_numerics=self.numerics,
        )
        self.lens_cosmo = LensCosmo(0.5, 1.0, cosmo=FlatLambdaCDM(H0=70.0, Om0=0.3))
        self.sigma_crit = self.lens_cosmo.sigma_crit_angle
        self.substructure = substructure
        self.cfg = config

    def _amp(self, light_model: object, kwargs: dict, magnitude: float) -> float:
        norm = light_model.total_flux([kwargs], norm=True)[0]
        return 10.0 ** (-0.4 * (magnitude - self.zero_point)) / norm

    def simulate(self, rng: np.random.Generator) -> np.ndarray:
        u = rng.uniform
        theta_e = u(1.0, 1.6)
        cx, cy = u(-0.05, 0.05), u(-0.05, 0.05)
        kwargs_lens = [
            {"theta_E": theta_e, "e1": u(-0.2, 0.2), "e2": u(-0.2, 0.2), "center_x": cx, "center_y": cy},
            {"gamma1": u(-0.08, 0.08), "gamma2": u(-0.08, 0.08)},
        ]
        mag = u(20.0, 22.0)
        src = {"R_sersic": u(0.15, 0.4), "n_sersic": u(0.7, 1.5), "e1": u(-0.2, 0.2), "e2": u(-0.2, 0.2),
               "center_x": cx + u(-0.35, 0.35), "center_y": cy + u(-0.35, 0.35)}
        src["amp"] = self._amp(self.source, src, mag)
        mag = u(19.5, 21.5)
        light = {"R_sersic": u(0.5, 1.2), "n_sersic": u(3.0, 5.0), "e1": u(-0.2, 0.2), "e2": u(-0.2, 0.2),
                 "center_x": cx, "center_y": cy}
        light["amp"] = self._amp(self.lens_light, light, mag)
        image_model = self.image_model
        if self.substructure:
            kwargs_lens = kwargs_lens + self._subhalos(rng, cx, cy, theta_e)
            lens_model = self._LensModel(["SIE", "SHEAR"] + ["TNFW"] * (len(kwargs_lens) - 2))
            image_model = self._ImageModel(
                self.data, self.psf, lens_model, self.source, self.lens_light, kwargs_numerics=self.numerics
            )
        model = image_model.image(kwargs_lens, [src], [light])
        noise = rng.normal(size=self.shape) * self.background
        noise += rng.normal(size=self.shape) * np.sqrt(np.maximum(model, 0.0) / self.exposure)
        return (model + noise).astype(np.float32)

    def _subhalos(self, rng: np.random.Generator, cx: float, cy: float, theta_e: float) -> list[dict]:
        sub = self.cfg["substructure"]
        n = rng.poisson(sub["n_mean"])
        p = sub["slope"] + 1.0
        lo, hi = sub["m_min"] ** p, sub["m_max"] ** p
        m = (lo + (hi - lo) * rng.random(n)) ** (1.0 / p)
        r = rng.uniform(0.25, 2.0, n)
        phi = rng.uniform(0.0, 2.0 * math.pi, n)
        c = 5.71 * (m / (2e12 / 0.7)) ** -0.084 * 1.5**-0.47 * 10.0 ** (0.1 * rng.normal(size=n))
        rs, alpha = self.lens_cosmo.nfw_physical2angle(m, c)
        r_trunc = np.maximum(r * np.cbrt(m / (3.0 * 2.0 * self.sigma_crit * theta_e * r)), 1e-4)
        x, y = cx + r * np.cos(phi), cy + r * np.sin(phi)
        return [
            {"Rs": rs[i], "alpha_Rs": alpha[i], "r_trunc": r_trunc[i], "center_x": x[i], "center_y": y[i]}
            for i in range(n)
        ]


def _interleaved(lensnet_fn, plain_fn, num: int, seed: int) -> tuple[float, float]:
    """Total seconds of each side over `num` images, alternating chunks; per-image rngs are built untimed."""
    t_lensnet = t_plain = 0.0
    for start in range(0, num, CHUNK):
        stop = min(num, start + CHUNK)
        rngs = [np.random.default_rng([seed, i]) for i in range(start, stop)]
        t0 = time.perf_counter()
        for rng in rngs:
            lensnet_fn(rng)
        t_lensnet += time.perf_counter() - t0
        rngs = [np.random.default_rng([seed, i]) for i in range(start, stop)]
        t0 = time.perf_counter()
        for rng in rngs:
            plain_fn(rng)
        t_plain += time.perf_counter() - t0
    return t_lensnet, t_plain


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    num, seed = int(args.num), int(args.seed)
    config = resolve_dataset_config("model_ii")
    simulator = build_simulator(config)
    rows = []
    for case, label, substructure in (("model_ii no_sub", 0, False), ("model_ii cdm", 1, True)):
        plain = PlainLoop(config, substructure)

        def lensnet_fn(rng: np.random.Generator, label: int = label) -> None:
            simulator.simulate(label, rng)

        warm = max(10, num // 10)  # builds lenstronomy caches and the per-count ImageModels of both sides
        _interleaved(lensnet_fn, plain.simulate, warm, seed + 1)
        t_lensnet, t_plain = _interleaved(lensnet_fn, plain.simulate, num, seed)
        rows.append({
            "case": case,
            "num": num,
            "lensnet_img_s": round(num / t_lensnet, 1),
            "plain_img_s": round(num / t_plain, 1),
            "ratio": round(t_plain / t_lensnet, 3),
        })
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    for row in run(parser.parse_args()):
        print(row)
