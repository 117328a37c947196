"""How closely `substructure.engine: fast` reproduces lenstronomy's own sum over the same haloes.

For one scene (a seed draws the same macro model, source and haloes whatever the engine):
deflection  RMS over the supersampled evaluation grid of |alpha_fast - alpha_lenstronomy|, over the RMS
            of |alpha_lenstronomy| (the haloes' deflection alone, without the macro model); and the
            maximum of that difference over the same RMS
image       max over pixels of |M_fast - M_lenstronomy| / sigma, M the noiseless model images in
            e-/s and sigma^2 = background_rms^2 + max(M, 0) / exposure the noise of the preset's instrument
            (measured against that noise also for presets saved noiseless)
"""

from __future__ import annotations

import copy

import numpy as np


def engine_agreement(config: dict, label: int, seeds: list[int]) -> dict[str, float]:
    """Worst case over `seeds` of the deflection and image agreement of the fast and lenstronomy engines."""
    from lenstronomy.LensModel.lens_model import LensModel

    from lensnet.simulate.scenes import build_simulator

    sims = {}
    for engine in ("fast", "lenstronomy"):
        cfg = copy.deepcopy(config)
        cfg["substructure"]["engine"] = engine
        sims[engine] = build_simulator(cfg)
    fast, slow = sims["fast"], sims["lenstronomy"]
    out = {"deflection_rms_rel": 0.0, "deflection_max_rel": 0.0, "image_max_over_noise": 0.0, "haloes": 0.0}
    bkg2 = [b.background_rms**2 for b in fast.spec.bands]
    for seed in seeds:
        drawn = fast.draw_scene(label, np.random.default_rng(seed))
        haloes = [h for h in drawn.haloes if len(h)]
        out["haloes"] = max(out["haloes"], float(sum(len(h) for h in haloes)))
        if haloes:
            renderer = fast.renderers[0]
            x, y = renderer.model((), 0).ImageNumerics.coordinates_evaluate
            ax, ay = renderer.grid(x, y).deflections(haloes)
            kwargs = [k for h in haloes for k in h.kwargs()]
            bx, by = LensModel([h.profile for h in haloes for _ in range(len(h))]).alpha(x, y, kwargs)
            rms = float(np.sqrt(np.mean(bx**2 + by**2)))
            diff = np.hypot(ax - bx, ay - by)
            out["deflection_rms_rel"] = max(out["deflection_rms_rel"], float(np.sqrt(np.mean(diff**2))) / rms)
            out["deflection_max_rel"] = max(out["deflection_max_rel"], float(diff.max()) / rms)
        m_fast, exposures = fast.noiseless_with_exposures(label, np.random.default_rng(seed))
        m_slow, _ = slow.noiseless_with_exposures(label, np.random.default_rng(seed))
        for b in range(m_fast.shape[-1]):
            sigma = np.sqrt(bkg2[b] + np.maximum(m_slow[..., b], 0.0) / exposures[b])
            worst = float(np.max(np.abs(m_fast[..., b] - m_slow[..., b]) / sigma))
            out["image_max_over_noise"] = max(out["image_max_over_noise"], worst)
    return out
