"""The DeepLense replicas are DeepLense's data: proven by executing DeepLenseSim's call path.

tests/reference/deeplense_callpath.py calls lenstronomy exactly as mwt5345/DeepLenseSim `deeplense/lens.py`
does (simple_sim for Model I, simple_sim_2's SimAPI for Models II/III, with its redshift lists, cosmology,
z_source_convention, numerics and magnitude2amplitude) under lenstronomy 1.9.2, the version DeepLenseSim pins,
in its own virtualenv (tests/reference/setup.sh; .ci/run builds it). Scenes are drawn by lensnet and rendered by
both; the images must agree to 1e-4 of the peak. The same comparison must FAIL when lensnet drops the
multi-plane redshift convention, takes the installed lenstronomy's zero point, or supersamples.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lensnet.simulate.presets import resolve_dataset_config
from lensnet.simulate.scenes import build_simulator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "reference" / "deeplense_callpath.py"
TOLERANCE = 1e-4  # of the reference image's peak
MODELS = {"deeplense_model_i": "I", "deeplense_model_ii": "II", "deeplense_model_iii": "III"}


@pytest.fixture(scope="module")
def reference_python() -> str:
    venv = Path(os.environ.get("LENSNET_REFERENCE_VENV", ROOT / ".ci" / "reference-venv"))
    python = venv / "bin" / "python"
    if not python.is_file():
        message = f"no reference virtualenv at {venv}: run `bash tests/reference/setup.sh` (lenstronomy 1.9.2)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI builds it in .ci/run and never skips this test
        pytest.skip(message)
    return str(python)


def _scenes(config: dict, per_class: int, seed: int) -> tuple[list[dict], np.ndarray]:
    """lensnet's noiseless images of `per_class` scenes per class and the same scenes as DeepLenseSim inputs."""
    sim = build_simulator(config)
    model = MODELS[config["replica"]]
    scenes, ours = [], []
    for label in range(len(config["classes"])):
        for k in range(per_class):
            drawn = sim.draw_scene(label, np.random.default_rng([seed, label, k]))
            profiles = ["SIE", "SHEAR"]
            kwargs_lens = [dict(kw) for kw in drawn.kwargs_lens]
            for group in drawn.haloes:
                profiles += [group.profile] * len(group)
                kwargs_lens += group.kwargs()
            source = dict(drawn.kwargs_source[0])
            if model != "I":  # make_source_light_mag: the magnitude, turned into an amplitude by SimAPI
                del source["amp"]
                source["magnitude"] = drawn.params["source_mag"]
            scenes.append({"lens_model_list": profiles, "kwargs_lens": kwargs_lens, "kwargs_source": [source]})
            image = sim.noiseless(label, np.random.default_rng([seed, label, k]))[..., 0]
            ours.append(image if model == "I" else image * config["image"]["flux_scale"])
    return scenes, np.asarray(ours)


def _reference(python: str, model: str, scenes: list[dict], tmp_path: Path) -> np.ndarray:
    job, out = tmp_path / f"scenes-{model}.json", tmp_path / f"reference-{model}.npy"
    job.write_text(json.dumps({"model": model, "scenes": scenes}, default=float))
    subprocess.run([python, str(SCRIPT), str(job), str(out)], check=True, capture_output=True, timeout=600)
    return np.load(out, allow_pickle=False)


def _worst(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(ours, reference))


@pytest.mark.parametrize("preset", list(MODELS))
def test_replica_renders_what_deeplensesim_renders(preset: str, reference_python: str, tmp_path: Path) -> None:
    config = resolve_dataset_config(preset)
    scenes, ours = _scenes(config, per_class=2, seed=7)
    reference = _reference(reference_python, MODELS[preset], scenes, tmp_path)
    assert _worst(ours, reference) < TOLERANCE


def _mutated(preset: str, change: str) -> dict:
    """The replica's resolved config with one thing DeepLense did not do (bypassing the replica lock)."""
    config = copy.deepcopy(resolve_dataset_config(preset))
    if change == "single_plane":
        config["cosmology"]["multi_plane"] = None
    elif change == "installed_zero_point":  # what lenstronomy 1.14.2's Euclid VIS preset says
        config["instrument"]["pinned"] = None
    elif change == "supersampling":
        config["image"]["supersampling"] = 2
    elif change == "psf_truncation_3":  # DeepLense's kwargs_psf value, which lenstronomy 1.9.2 ignored
        config["instrument"]["custom"]["psf_truncation"] = 3
    return config


@pytest.mark.parametrize(("preset", "change"), [
    ("deeplense_model_ii", "single_plane"),
    ("deeplense_model_ii", "installed_zero_point"),
    ("deeplense_model_ii", "supersampling"),
    ("deeplense_model_iii", "single_plane"),
    ("deeplense_model_i", "psf_truncation_3"),
])
def test_the_call_path_comparison_fails_on_what_the_replica_once_missed(
        preset: str, change: str, reference_python: str, tmp_path: Path) -> None:
    scenes, _ = _scenes(resolve_dataset_config(preset), per_class=1, seed=3)
    reference = _reference(reference_python, MODELS[preset], scenes, tmp_path)
    _, wrong = _scenes(_mutated(preset, change), per_class=1, seed=3)
    assert _worst(wrong, reference) > TOLERANCE  # the call-path test above would fail


def test_multi_plane_scale_is_lensing_efficiency_ratio() -> None:
    """0.6335x: a z = 1 source lensed by profiles normalised for z = 2.5 (pyHalo's Planck 2018 cosmology)."""
    from lensnet.simulate.scene_spec import deflection_scale

    scale = deflection_scale(0.5, 1.0, 2.5, 67.5, 0.309, 0.049)
    assert scale == pytest.approx(0.6335, abs=2e-4)
    assert deflection_scale(0.5, 2.5, 2.5, 67.5, 0.309, 0.049) == pytest.approx(1.0)
    ring = resolve_dataset_config("deeplense_model_ii")
    assert build_simulator(ring).renderers[0].deflection_scale == pytest.approx(scale)
