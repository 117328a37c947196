"""What the substructure labels hold: `python -m lensnet.bench subhalo-labels`.

Per population (profile x truncation rule, model_ii's cosmology, f_sub requested as a constant, theta_E drawn
as model_ii draws it): the truncation radius over r_s per halo (median and 16-84%), the lensing mass over
M200 of the whole population (mass-weighted), and the realised f_sub (lensing mass in
[theta_E/2, 3 theta_E/2] over pi Sigma_crit theta_E^2) over the requested one (median and 16-84%). Draws only,
no rendering.
"""

from __future__ import annotations

import argparse

import numpy as np

SUMMARY = "Truncation r_t/r_s, lensing mass / M200 and realised / requested f_sub per truncation rule"

RULES = ("roche", "tidal", "tidal_projected")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=300, help="populations per row")
    parser.add_argument("--f-sub", type=float, default=0.01, help="requested f_sub")
    parser.add_argument("--m-min", type=float, default=1e6, help="lowest subhalo mass, Msun")
    parser.add_argument("--concentration", default="diemer19", help="diemer19 | ludlow16 | duffy08")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.core.errors import LensnetError
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    if args.num < 2:
        raise LensnetError(f"--num: need at least 2 populations, got {args.num}")
    rows = []
    for profile, rule in [("POINT_MASS", "-")] + [("TNFW", r) for r in RULES]:
        sub = {"profile": profile, "f_sub": args.f_sub, "m_min": args.m_min,
               "concentration": {"model": args.concentration, "scatter_dex": 0.1}}
        if profile == "TNFW":
            sub["truncation"] = rule
        sim = build_simulator(resolve_dataset_config("model_ii", {"image": {"size": 16, "supersampling": 1},
                                                                  "classes": ["no_sub", "cdm"],
                                                                  "substructure": sub}))
        pop = sim._cdm
        theta_prior = sim.spec.lens["theta_E"].support()
        taus, ratios, lensing, total = [], [], 0.0, 0.0
        rng = np.random.default_rng(args.seed)
        for _ in range(args.num):
            theta_e = float(rng.uniform(*theta_prior))
            haloes, summary, _ = pop.draw(rng, 0.0, 0.0, theta_e)
            p = dict(zip(pop.param_names, summary))
            ratios.append(p["f_sub"] / p["f_sub_drawn"])
            lensing += p["m_sub_lensing"]
            total += p["m_sub_total"]
            if profile == "TNFW" and len(haloes):
                taus.append(haloes.r_trunc / haloes.rs)
        row = {"profile": profile, "truncation": rule, "populations": args.num, "f_sub_requested": args.f_sub,
               "realised_over_requested": float(np.median(ratios)),
               "realised_p16": float(np.percentile(ratios, 16)), "realised_p84": float(np.percentile(ratios, 84)),
               "lensing_over_m200": lensing / total if total else float("nan")}
        if taus:
            tau = np.concatenate(taus)
            row.update(tau_median=float(np.median(tau)), tau_p16=float(np.percentile(tau, 16)),
                       tau_p84=float(np.percentile(tau, 84)))
        rows.append(row)
    return rows
