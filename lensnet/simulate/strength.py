"""How strong a preset's substructure signal is, and how fast it simulates.

Signal: for paired scenes (one seed gives the same macro model, source, lens light and exposure in every
class), chi² = Σ_pixels (M_class - M_no_sub)² / σ², with M the noiseless model images in e-/s and
σ² = σ_bkg² + max(M_no_sub, 0) / t the noise of the preset's instrument added once (also for presets saved
noiseless, so that every preset is measured against the noise a real observation would carry). A chi²
of order the number of pixels or more is visible by eye; below ~10 a single image cannot show it. Printed:
median and quartiles of chi² per class, over `--num` scenes.

Speed: records per second of Simulator.simulate (one process, rendering and noise, no encoding), per class.
"""

from __future__ import annotations

import time

import numpy as np

from lensnet.core.errors import LensnetError


def measure(dataset: str, num: int, seed: int, overrides: dict | None = None) -> dict:
    """{class: {"chi2": [q25, median, q75], "images_per_s": float}} for a preset (name or YAML)."""
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    config = resolve_dataset_config(dataset, overrides or {})
    sim = build_simulator(config)
    if "no_sub" not in sim.class_names:
        raise LensnetError(f"{dataset}: signal strength needs a no_sub class, classes are {sim.class_names}")
    base = sim.class_names.index("no_sub")
    bkg2 = [b.background_rms**2 for b in sim.spec.bands]
    out: dict[str, dict] = {}
    for label in range(len(sim.class_names)):  # warm-up: lenstronomy models are built on first use
        for k in range(3):
            sim.simulate(label, np.random.default_rng([seed, num + k]))
    for label, name in enumerate(sim.class_names):
        start = time.perf_counter()
        for k in range(num):
            sim.simulate(label, np.random.default_rng([seed, k]))
        rate = num / (time.perf_counter() - start)
        chi2 = []
        if label != base:
            for k in range(num):
                lumpy, _ = sim.noiseless_with_exposures(label, np.random.default_rng([seed, k]))
                flat, exposures = sim.noiseless_with_exposures(base, np.random.default_rng([seed, k]))
                variance = np.asarray(bkg2) + np.maximum(flat, 0.0) / np.asarray(exposures)
                chi2.append(float(np.sum((lumpy - flat) ** 2 / variance)))
        out[name] = {"images_per_s": rate}
        if chi2:
            out[name]["chi2"] = np.percentile(chi2, [25, 50, 75]).tolist()
    return out
