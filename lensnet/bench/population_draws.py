"""Cost of the population draws alone (no rendering): `python -m lensnet.bench population-draws`.

Times SubstructureSimulator.draw_scene (macro priors, noise normals, subhaloes, field haloes) per image for
model_ii with TNFW subhaloes down to m_min = 1e6 Msun at f_sub 1-2% and with ~5,700 haloes (count), for
cdm and wdm, with and without the line of sight, on one core. The draws must not be the bottleneck of a
>= 10 images/s engine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SUMMARY = "Cost of the dark-matter population draws alone (CDM, WDM, line of sight), per image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num", type=int, default=200, help="draws per case")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    rows: list[dict] = []
    f_sub = {"profile": "TNFW", "m_min": 1e6, "f_sub": {"uniform": [0.01, 0.02]}}
    count = {"profile": "TNFW", "m_min": 1e6, "normalisation": "count", "n_mean": 5700.0}
    for label, sub, los in (("f_sub 1-2%", f_sub, False), ("f_sub 1-2%", f_sub, True), ("n_mean 5700", count, False)):
        config = resolve_dataset_config("model_ii", {
            "classes": ["no_sub", "cdm", "wdm"],
            "substructure": sub,
            "line_of_sight": {"enabled": los, "m_min": 1e6},
        })
        t0 = time.perf_counter()
        sim = build_simulator(config)
        build = time.perf_counter() - t0
        for index, name in ((1, "cdm"), (2, "wdm")):
            haloes = []
            t0 = time.perf_counter()
            for i in range(args.num):
                drawn = sim.draw_scene(index, np.random.default_rng(args.seed + i))
                haloes.append([len(h) for h in drawn.haloes])
            seconds = (time.perf_counter() - t0) / args.num
            counts = np.array(haloes).mean(axis=0).round(0).tolist()
            rows.append({"population": label, "line_of_sight": los, "class": name,
                         "ms_per_draw": round(1e3 * seconds, 3), "mean_haloes_per_group": counts,
                         "simulator_build_s": round(build, 2)})
    return rows

