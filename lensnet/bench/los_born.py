"""The line-of-sight Born approximation against multi-plane ray tracing: `python -m lensnet.bench los-born`.

lensnet renders every field halo on the main lens plane with its own Sigma_crit(z_i, z_s), evaluated on
the unlensed ray (lensnet/simulate/los.py). This benchmark draws field haloes for a model_ii scene and
renders the same macro model + haloes twice with lenstronomy: single plane (lensnet's approximation) and
full multi-plane ray tracing (haloes at their own redshifts, the SIE + shear at z_lens). Rows: per scene,
max |Born - multi-plane| / noise rms and, for scale, max |multi-plane - no field haloes| / noise rms.
"""

from __future__ import annotations

import argparse

import numpy as np

SUMMARY = "Line-of-sight haloes: lensnet's Born approximation vs lenstronomy multi-plane ray tracing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=5, help="scenes")
    parser.add_argument("--m-min", type=float, default=1e7, help="lowest field-halo mass, Msun")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planes", choices=("all", "front", "back"), default="all",
                        help="keep the field haloes in front of the lens, behind it, or all")


def run(args: argparse.Namespace) -> list[dict]:
    import lenstronomy.Util.simulation_util as sim_util
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    config = resolve_dataset_config("model_ii", {"classes": ["no_sub"], "line_of_sight": {
        "enabled": True, "m_min": args.m_min}})
    sim = build_simulator(config)
    spec, band, los = sim.spec, sim.spec.bands[0], sim.line_of_sight
    cosmo = FlatLambdaCDM(H0=spec.H0, Om0=spec.Om0)
    data = ImageData(**sim_util.data_configure_simple(spec.size, band.pixel_scale))
    numerics = {"supersampling_factor": spec.supersampling}
    source = LightModel(["SERSIC_ELLIPSE"])
    exposure = band.exposure_time.args[0]
    rng = np.random.default_rng(args.seed)
    worst: list[float] = []
    rows: list[dict] = []
    for i in range(args.num):
        theta_e = 1.0 + 0.6 * rng.random()
        macro = [{"theta_E": theta_e, "e1": 0.1, "e2": -0.05, "center_x": 0.0, "center_y": 0.0},
                 {"gamma1": 0.03, "gamma2": 0.01}]
        kwargs_source = [{"amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1,
                          "center_x": 0.05, "center_y": -0.05}]
        haloes, _, _, z = los.draw_with_redshifts(np.random.default_rng(args.seed + 1000 + i), theta_e)
        if args.planes != "all":
            keep = (z < spec.z_lens) if args.planes == "front" else (z >= spec.z_lens)
            haloes = type(haloes)("TNFW", haloes.x[keep], haloes.y[keep], rs=haloes.rs[keep],
                                  alpha_rs=haloes.alpha_rs[keep], r_trunc=haloes.r_trunc[keep])
            z = z[keep]
        n = len(haloes)
        profiles = ["SIE", "SHEAR"] + ["TNFW"] * n
        kwargs = macro + haloes.kwargs()
        single = LensModel(profiles)
        multi = LensModel(profiles, z_source=spec.z_source, lens_redshift_list=[spec.z_lens] * 2 + z.tolist(),
                          multi_plane=True, cosmo=cosmo)
        images = {}
        for name, lens, kw in (("born", single, kwargs), ("multi", multi, kwargs),
                               ("none", LensModel(["SIE", "SHEAR"]), macro)):
            model = ImageModel(data, PSF(**band.psf_kwargs), lens, source, kwargs_numerics=numerics)
            images[name] = model.image(kw, kwargs_source)
        sigma = np.sqrt(band.background_rms**2 + np.maximum(images["multi"], 0.0) / exposure)
        born = float(np.max(np.abs(images["born"] - images["multi"]) / sigma))
        effect = float(np.max(np.abs(images["multi"] - images["none"]) / sigma))
        behind = int(np.count_nonzero(z > spec.z_lens))
        worst.append(born)
        rows.append({"scene": i, "planes": args.planes, "m_min": args.m_min, "field_haloes": n,
                     "behind_lens": behind, "born_vs_multiplane_max_over_noise": round(born, 3),
                     "field_haloes_effect_max_over_noise": round(effect, 3)})
    rows.append({"scene": "median", "planes": args.planes, "m_min": args.m_min,
                 "born_vs_multiplane_max_over_noise": round(float(np.median(worst)), 3)})
    return rows

