"""Simulation speed on one core: lensnet's Simulator against a plain lenstronomy loop of the same scene.

Both sides draw the model_ii scene (SIE + shear, Sersic source, Sersic lens light, Euclid VIS, 64x64,
supersampling 2) from the same priors and add the same noise; the `cdm` case adds the same TNFW subhalo
population (Poisson count, power-law masses, Duffy+08 concentrations as the plain loop has them, tidal
truncation). The engine rows render TNFW populations (default concentrations: diemer19 through colossus)
with `substructure.engine: fast` and with lenstronomy's own profiles on the same haloes. The plain loop is
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

SUMMARY = "Simulation images/s per core vs a plain lenstronomy loop; 1 vs 2 workers"

CHUNK = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=300,
                        help="images per case and side (default 300; 0 skips the plain-loop comparison)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-image generators")
    parser.add_argument("--workers-num", type=int, default=3000,
                        help="records written with 1 and with 2 workers (0 skips the writer measurement)")
    parser.add_argument("--engine-num", type=int, default=40,
                        help="images per CDM population with the fast engine (0 skips the engine rows)")
    parser.add_argument("--engine-slow-num", type=int, default=3,
                        help="images per CDM population with the lenstronomy engine (the same haloes)")
    parser.add_argument("--log-mlow", default="6,7,8", help="lowest subhalo masses of the engine rows, log10 Msun")
    parser.add_argument("--los-mlow", default="7",
                        help="lowest field-halo masses (log10 Msun) of engine rows with the line of sight on, "
                             "added to subhaloes down to 1e8 ('' for none)")
    parser.add_argument("--memory-num", type=int, default=0,
                        help="records simulated with the fast engine while resident memory is sampled (0 skips)")


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
            profile = self.cfg["substructure"]["profile"]
            lens_model = self._LensModel(["SIE", "SHEAR"] + [profile] * (len(kwargs_lens) - 2))
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
        if sub["profile"] == "POINT_MASS":
            theta = np.sqrt(m / (math.pi * self.sigma_crit))
            return [{"theta_E": theta[i], "center_x": x[i], "center_y": y[i]} for i in range(n)]
        return [
            {"Rs": rs[i], "alpha_Rs": alpha[i], "r_trunc": r_trunc[i], "center_x": x[i], "center_y": y[i]}
            for i in range(n)
        ]


def _interleaved(lensnet_fn, plain_fn, num: int, seed: int) -> tuple[float, float]:
    """Total seconds of each side over records 0..num, alternating chunks of CHUNK records.

    lensnet_fn(start, stop) produces finished records (draw, render, noise, encode, statistics);
    plain_fn(rng) renders one image; its per-image generators are built untimed.
    """
    t_lensnet = t_plain = 0.0
    for start in range(0, num, CHUNK):
        stop = min(num, start + CHUNK)
        t0 = time.perf_counter()
        lensnet_fn(start, stop)
        t_lensnet += time.perf_counter() - t0
        rngs = [np.random.default_rng([seed, i]) for i in range(start, stop)]
        t0 = time.perf_counter()
        for rng in rngs:
            plain_fn(rng)
        t_plain += time.perf_counter() - t0
    return t_lensnet, t_plain


def _workers_rows(num: int, seed: int) -> list[dict]:
    """Steady-state records/s of the whole writer (workers ready, shards written) with 1 and 2 workers."""
    import shutil
    import tempfile

    from lensnet.simulate.dataset import simulate_dataset

    rates = {}
    root = tempfile.mkdtemp(prefix="lensnet-bench-sim-")
    try:
        for workers in (1, 2, 1, 2):  # twice each, alternating: take the better of the two
            out = f"{root}/w{workers}-{len(rates)}"
            summary = simulate_dataset("model_ii", out, num=num, seed=seed, workers=workers, progress=False,
                                       overrides={"records_per_shard": 250})
            rates[workers] = max(rates.get(workers, 0.0), summary.images_per_second)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [{"case": f"writer model_ii, {w} worker(s)", "num": num, "lensnet_img_s": round(rates[w], 1),
             "ratio": round(rates[w] / rates[1], 3), "target": 1.7 if w == 2 else None,
             "meets": (rates[w] / rates[1] >= 1.7) if w == 2 else None} for w in (1, 2)]


# pyHalo's CDM subhaloes at log_mlow = 6 (~5,700 per image, slope -1.9): the count above m_min scales as m_min^-0.9
ENGINE_HALOES_AT_1E6 = 5700.0
ANCHORS = {6: "pyHalo+lenstronomy 0.43 img/s/core, paltas 0.18-0.28", 7: "pyHalo+lenstronomy 1.45 img/s/core"}


def engine_config(log_mlow: float, engine: str, los_mlow: float | None = None) -> dict:
    """model_ii with a TNFW CDM population down to 10^log_mlow Msun, pyHalo-like counts over a 3" radius,
    and line-of-sight haloes down to 10^los_mlow Msun when given."""
    from lensnet.simulate.presets import resolve_dataset_config

    n_mean = ENGINE_HALOES_AT_1E6 * 10.0 ** (-0.9 * (log_mlow - 6.0))
    overrides: dict = {"substructure": {
        "engine": engine, "profile": "TNFW", "normalisation": "count", "n_mean": n_mean, "m_min": 10.0**log_mlow,
        "radius": {"uniform": [0.05, 3.0]}}}
    if los_mlow is not None:
        overrides["line_of_sight"] = {"enabled": True, "m_min": 10.0**los_mlow}
    config = resolve_dataset_config("model_ii", overrides)
    config["classes"] = ["cdm"]
    return config


def _rate(sim: object, num: int, seed: int) -> float:
    """Images/s of Simulator.simulate (draw, render, noise) over `num` images after one warm-up image."""
    sim.simulate(0, np.random.default_rng([seed, 10**6]))
    t0 = time.perf_counter()
    for i in range(num):
        sim.simulate(0, np.random.default_rng([seed, i]))
    return num / (time.perf_counter() - t0)


def _engine_rows(cases: list[tuple[float, float | None]], num: int, slow_num: int, seed: int) -> list[dict]:
    """Fast vs lenstronomy engine on the same haloes (same seeds): speed and agreement."""
    from lensnet.simulate.engine_check import engine_agreement
    from lensnet.simulate.scenes import build_simulator

    rows = []
    for log_mlow, los_mlow in cases:
        fast = build_simulator(engine_config(log_mlow, "fast", los_mlow))
        slow = build_simulator(engine_config(log_mlow, "lenstronomy", los_mlow))
        counts = [sum(len(h) for h in fast.draw_scene(0, np.random.default_rng([seed, i])).haloes)
                  for i in range(num)]
        fast_rate = _rate(fast, num, seed)
        slow_rate = _rate(slow, slow_num, seed) if slow_num else math.nan
        agreement = engine_agreement(engine_config(log_mlow, "fast", los_mlow), 0,
                                     [seed * 1000 + i for i in range(3)])
        los = f" + line of sight log_mlow={los_mlow:g}" if los_mlow is not None else ""
        rows.append({
            "case": f"cdm TNFW log_mlow={log_mlow:g}{los}", "haloes_mean": round(float(np.mean(counts))),
            "fast_img_s": round(fast_rate, 2), "lenstronomy_img_s": round(slow_rate, 3),
            "speedup": round(fast_rate / slow_rate, 1), "deflection_err_rms": round(agreement["deflection_rms_rel"], 5),
            "image_max_diff_over_noise": round(agreement["image_max_over_noise"], 4),
            "target": 10.0 if (log_mlow == 6 and not los) else None,
            "meets": (fast_rate >= 10.0 and agreement["deflection_rms_rel"] <= 0.01
                      and agreement["image_max_over_noise"] <= 0.1) if (log_mlow == 6 and not los) else None,
            "anchor": None if los else ANCHORS.get(int(log_mlow)),
        })
    return rows


def resident_mb() -> float:
    """Resident set size of this process, MB (Linux /proc)."""
    import os

    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_row(num: int, seed: int, log_mlow: float = 7.0) -> dict:
    """Resident memory after a warm-up (5% of the records, at least 50) and at the end of `num` records."""
    from lensnet.simulate.scenes import build_simulator

    sim = build_simulator(engine_config(log_mlow, "fast"))
    warm = max(50, num // 20)
    start = math.nan
    for i in range(num):
        sim.simulate(0, np.random.default_rng([seed, i]))
        if i + 1 == warm:
            start = resident_mb()
    end = resident_mb()
    return {"case": f"memory: {num} records, fast engine, log_mlow={log_mlow:g}",
            "rss_after_warmup_mb": round(start, 1),
            "rss_end_mb": round(end, 1), "growth": round(end / start - 1.0, 4), "target": 0.05,
            "meets": end / start - 1.0 <= 0.05}


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.data.writer import ShardPlan
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.source import SimulationSource

    num, seed = int(args.num), int(args.seed)
    rows = []
    cases = (("model_ii no_sub", 0, {}), ("model_ii cdm (point masses, preset)", 1, {}),
             ("model_ii cdm (TNFW)", 1, {"substructure": {"profile": "TNFW", "concentration": {"model": "duffy08"}}}))
    if num:  # 0 skips the comparison with a plain lenstronomy loop
        for case, label, overrides in cases:
            config = resolve_dataset_config("model_ii", overrides)
            config["classes"] = [config["classes"][label]]  # every record of this case gets the same class
            source = SimulationSource(config, seed)
            source.setup()
            plan = ShardPlan("train", 0, 1, 0, 10**9, 0)
            plain = PlainLoop(config, substructure=label == 1)

            def lensnet_fn(start: int, stop: int, source: SimulationSource = source, plan: ShardPlan = plan) -> None:
                source.records(plan, start, stop)

            warm = max(10, num // 10)  # builds lenstronomy caches and the per-count ImageModels of both sides
            _interleaved(lensnet_fn, plain.simulate, warm, seed + 1)
            t_lensnet, t_plain = _interleaved(lensnet_fn, plain.simulate, num, seed)
            ratio = t_plain / t_lensnet
            rows.append({"case": case, "num": num, "lensnet_img_s": round(num / t_lensnet, 1),
                         "plain_img_s": round(num / t_plain, 1), "ratio": round(ratio, 3), "target": 0.9,
                         "meets": ratio >= 0.9})
    if args.workers_num:
        rows += _workers_rows(int(args.workers_num), seed)
    if args.engine_num:
        cases: list[tuple[float, float | None]] = [(float(v), None) for v in str(args.log_mlow).split(",") if v.strip()]
        cases += [(8.0, float(v)) for v in str(args.los_mlow).split(",") if v.strip()]
        rows += _engine_rows(cases, int(args.engine_num), int(args.engine_slow_num), seed)
    if args.memory_num:
        rows.append(_memory_row(int(args.memory_num), seed))
    return rows

