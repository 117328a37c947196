"""The class-balance audit: passes on a model_ii-style simulation, flags a biased one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensnet.data.audit import audit
from lensnet.simulate.presets import resolve_dataset_config
from lensnet.simulate.scenes import build_simulator

PER_CLASS = 200
TINY = {"image": {"size": 16, "supersampling": 1}, "substructure": {"profile": "POINT_MASS"}}


def simulate(simulators: list, per_class: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """simulators[i] makes class i (index i into each simulator's class list)."""
    rows, labels = [], []
    for index in range(per_class * len(simulators)):
        label = index % len(simulators)
        _, params = simulators[label].simulate(label, np.random.default_rng([11, index]))
        rows.append(params)
        labels.append(label)
    names = list(rows[0])
    return {n: np.array([r[n] for r in rows]) for n in names}, np.array(labels)


@pytest.fixture(scope="module")
def model_ii() -> tuple:
    sim = build_simulator(resolve_dataset_config("model_ii", TINY))
    params, labels = simulate([sim] * 3, PER_CLASS)
    return sim, params, labels


def test_model_ii_classes_share_every_non_substructure_distribution(model_ii: tuple) -> None:
    sim, params, labels = model_ii
    report = audit(params, labels, sim.class_names, exclude=sim.class_specific_params)
    assert report["ok"], report["separating"]
    assert report["separating"] == []
    assert {"theta_E", "source_mag", "lens_light_R_sersic", "gamma1"} <= set(report["params"])
    assert all(report["skipped"][n] == "class-specific" for n in sim.class_specific_params)
    assert report["n_tests"] == 3 * len(report["params"])
    json.dumps(report)  # JSON-able as the manifest stores it


def test_substructure_params_would_separate_if_not_excluded(model_ii: tuple) -> None:
    sim, params, labels = model_ii
    report = audit(params, labels, sim.class_names)
    # NaN for some classes: never tested; finite everywhere but class-dependent: flagged
    assert report["skipped"]["log10_m_axion"] == "not finite in every class"
    assert "n_subhalo" in report["separating"] and not report["ok"]


def test_a_class_with_a_different_macro_prior_is_flagged() -> None:
    fair = resolve_dataset_config("model_ii", TINY)
    biased = resolve_dataset_config("model_ii", {**TINY, "lens": {"theta_E": {"uniform": [1.1, 1.7]}}})
    params, labels = simulate([build_simulator(fair), build_simulator(biased)], 150)
    report = audit(params, labels, ["no_sub", "cdm"], exclude=build_simulator(fair).class_specific_params)
    assert not report["ok"]
    assert report["separating"] == ["theta_E"]
    assert report["params"]["theta_E"]["pair"] == ["no_sub", "cdm"]


def test_fabricated_arrays() -> None:
    gen = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 300)
    params = {
        "same": gen.normal(size=900),
        "shifted": gen.normal(size=900) + 0.5 * (labels == 2),
        "constant": np.full(900, 3.0),
        "partial": np.where(labels == 0, np.nan, 1.0 + gen.random(900)),
    }
    report = audit(params, labels, ["a", "b", "c"])
    assert report["separating"] == ["shifted"]
    assert report["params"]["shifted"]["pair"] in (["a", "c"], ["b", "c"])
    assert report["params"]["same"]["separates"] is False
    assert report["skipped"] == {"constant": "constant", "partial": "not finite in every class"}
    assert report["threshold"] == pytest.approx(1e-3 / 6)
