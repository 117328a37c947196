"""DeepLense replicas against DeepLenseSim's own call path: `python -m lensnet.bench replica-fidelity`.

For each replica preset, scenes drawn by lensnet are rendered by lensnet and by DeepLenseSim's lenstronomy
calls (lensnet/bench/deeplense_callpath.py) executed under the lenstronomy version DeepLenseSim pins (1.9.2,
in the virtualenv `bash tests/reference/setup.sh` builds). Rows: the worst |lensnet - DeepLenseSim| / peak,
and what the replica got wrong before it was corrected: the flux-weighted ring radius and total flux of the
corrected replica next to the same scenes ray-traced single-plane with the installed lenstronomy's
instrument preset (the replica before the fix).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError

SUMMARY = "DeepLense replicas vs DeepLenseSim's call path (lenstronomy 1.9.2); ring size before/after"

CALLPATH = Path(__file__).with_name("deeplense_callpath.py")
REPLICAS = {"deeplense_model_i": "I", "deeplense_model_ii": "II", "deeplense_model_iii": "III"}
DEFAULT_VENV = Path(".ci") / "reference-venv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", default=",".join(REPLICAS), help="comma-separated replica presets")
    parser.add_argument("--per-class", type=int, default=5, help="scenes per class")
    parser.add_argument("--reference-python", default=None,
                        help="python of the lenstronomy 1.9.2 virtualenv (default: $LENSNET_REFERENCE_VENV or "
                             ".ci/reference-venv, built by `bash tests/reference/setup.sh`)")
    parser.add_argument("--seed", type=int, default=0)


def reference_python(explicit: str | None = None) -> Path | None:
    """The reference virtualenv's python, or None when it was not built."""
    if explicit:
        return Path(explicit)
    python = Path(os.environ.get("LENSNET_REFERENCE_VENV", DEFAULT_VENV)) / "bin" / "python"
    return python if python.is_file() else None


def replica_scenes(config: dict, per_class: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """lensnet's noiseless stored images (flux_scale applied for II/III) of `per_class` scenes per class, and
    the same scenes as DeepLenseSim's inputs (lens model list and kwargs; source by magnitude for II/III)."""
    from lensnet.simulate.scenes import build_simulator

    sim = build_simulator(config)
    model = REPLICAS[config["replica"]]
    scenes, images = [], []
    for label in range(len(config["classes"])):
        for k in range(per_class):
            drawn = sim.draw_scene(label, np.random.default_rng([seed, label, k]))
            profiles = ["SIE", "SHEAR"]
            kwargs_lens = [dict(kw) for kw in drawn.kwargs_lens]
            for group in drawn.haloes:
                profiles += [group.profile] * len(group)
                kwargs_lens += group.kwargs()
            source = dict(drawn.kwargs_source[0])
            if model != "I":  # make_source_light_mag: a magnitude, turned into an amplitude by SimAPI
                del source["amp"]
                source["magnitude"] = drawn.params["source_mag"]
            scenes.append({"lens_model_list": profiles, "kwargs_lens": kwargs_lens, "kwargs_source": [source]})
            image = sim.noiseless(label, np.random.default_rng([seed, label, k]))[..., 0]
            images.append(image if model == "I" else image * config["image"]["flux_scale"])
    return scenes, np.asarray(images)


def render_reference(python: Path, model: str, scenes: list[dict]) -> np.ndarray:
    """DeepLenseSim's images of `scenes` (Model I: the noiseless image_model), by executing its call path."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "scenes.json", Path(tmp) / "images.npy"
        job.write_text(json.dumps({"model": model, "scenes": scenes}, default=float))
        done = subprocess.run([str(python), str(CALLPATH), str(job), str(out)], capture_output=True, text=True,
                              timeout=1800)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise LensnetError(f"reference call path under {python} failed: {last}")
        return np.load(out, allow_pickle=False)


def worst_relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """max over images of max |ours - reference| / max |reference|."""
    if ours.shape != reference.shape:
        raise LensnetError(f"reference images have shape {reference.shape}, lensnet's {ours.shape}")
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, reference))


def before_the_fix(config: dict) -> dict:
    """The replica as it was: single plane, the installed lenstronomy's instrument preset."""
    old = copy.deepcopy(config)
    old["cosmology"]["multi_plane"] = None
    old["instrument"]["pinned"] = None
    return old


def ring_radius(images: np.ndarray, pixel_scale: float) -> np.ndarray:
    """Flux-weighted mean distance (arcsec) of each image's light from the image centre (the lens centre)."""
    n = images.shape[-1]
    c = (np.arange(n) - (n - 1) / 2.0) * pixel_scale
    r = np.hypot(*np.meshgrid(c, c))
    return (images * r).sum(axis=(1, 2)) / images.sum(axis=(1, 2))


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.simulate.presets import resolve_dataset_config
    from lensnet.simulate.scenes import build_simulator

    python = reference_python(args.reference_python)
    rows = []
    for preset in [p for p in args.presets.split(",") if p]:
        if preset not in REPLICAS:
            raise LensnetError(f"--presets: {preset!r} is not a replica; choose from {', '.join(REPLICAS)}")
        config = resolve_dataset_config(preset)
        scenes, ours = replica_scenes(config, args.per_class, args.seed)
        pixel = build_simulator(config).spec.bands[0].pixel_scale
        no_sub = ours[: args.per_class]  # label 0, no substructure
        row = {"preset": preset, "scenes": len(scenes),
               "vs_deeplensesim_max_diff_over_peak": "n/a (no reference venv)",
               "ring_radius_arcsec": round(float(ring_radius(no_sub, pixel).mean()), 4)}
        if python is not None:
            reference = render_reference(python, REPLICAS[preset], scenes)
            row["vs_deeplensesim_max_diff_over_peak"] = float(f"{worst_relative_difference(ours, reference):.3g}")
        if REPLICAS[preset] != "I":
            _, old = replica_scenes(before_the_fix(config), args.per_class, args.seed)
            row["before_fix_ring_radius_arcsec"] = round(float(ring_radius(old[: args.per_class], pixel).mean()), 4)
            row["before_fix_total_flux_ratio"] = round(float(old.sum() / ours.sum()), 3)
            if python is not None:
                row["before_fix_vs_deeplensesim"] = float(f"{worst_relative_difference(old, reference):.3g}")
        rows.append(row)
    return rows
