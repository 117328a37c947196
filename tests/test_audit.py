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


def test_image_statistics_of_known_images() -> None:
    from lensnet.data.audit import IMAGE_STATISTICS, image_statistics

    h = w = 41
    y, x = np.mgrid[:h, :w] - 20.0
    r = np.hypot(x, y)
    ring = np.exp(-0.5 * ((r - 10.0) / 0.5) ** 2)
    ellipse = np.exp(-0.5 * ((x / 5.0) ** 2 + (y / 2.0) ** 2))
    stats = image_statistics(np.stack([ring, 2 * ring, ellipse])[..., None])
    col = {name: stats[:, i] for i, name in enumerate(IMAGE_STATISTICS)}
    assert col["ring_radius"][0] == pytest.approx(10.0, abs=0.1) and col["ring_radius"][1] == col["ring_radius"][0]
    assert col["total_flux"][1] == pytest.approx(2 * col["total_flux"][0])
    assert col["q_xx"][0] == pytest.approx(col["q_yy"][0]) and abs(col["q_xy"][0]) < 1e-9
    assert col["q_xx"][2] == pytest.approx(25.0, rel=0.02) and col["q_yy"][2] == pytest.approx(4.0, rel=0.02)


def test_image_audit_flags_a_ring_shortcut_and_replicas_report_it() -> None:
    from lensnet.data.audit import audit_images, combined_ok, image_separation_note

    rng = np.random.default_rng(0)
    n = 300
    labels = np.arange(n) % 2
    stats = rng.normal(size=(n, 5))
    stats[:, 1] += 0.8 * labels  # class 1's ring is larger
    simulated = {"generator": "lensnet.simulate", "config": {"kind": "substructure", "replica": None}}
    replica = {"generator": "lensnet.simulate", "config": {"kind": "substructure", "replica": "deeplense_model_ii"}}
    assert image_separation_note(simulated) is None
    assert "deeplense_model_ii" in image_separation_note(replica)
    assert "reported" in image_separation_note({"generator": "lensnet.convert", "config": {}})

    failed = audit_images(stats, labels, ["no_sub", "cdm"], expected=image_separation_note(simulated))
    assert failed["separating"] == ["ring_radius"] and "expected" not in failed
    assert failed["medians"]["ring_radius"]["cdm"] > failed["medians"]["ring_radius"]["no_sub"]
    assert not combined_ok({"ok": True, "params_ok": True, "images": failed})
    reported = audit_images(stats, labels, ["no_sub", "cdm"], expected=image_separation_note(replica))
    assert reported["separating"] == ["ring_radius"] and "DeepLenseSim" in reported["expected"]
    assert combined_ok({"ok": True, "params_ok": True, "images": reported})
    assert not combined_ok({"ok": False, "params_ok": False, "images": reported})  # parameters still gate


# ---- power: what a pass can mean -----------------------------------------------------------------------------


def test_minimum_detectable_shift_has_the_power_it_claims() -> None:
    from scipy.stats import ks_2samp

    from lensnet.data.audit import minimum_detectable_shift

    alpha = 0.01
    mde = minimum_detectable_shift(40, 40, alpha)
    assert minimum_detectable_shift(400, 400, alpha) < mde < minimum_detectable_shift(15, 15, alpha)
    gen = np.random.default_rng(123)  # independent of the function's own draws, scipy's exact KS p-values

    def power(shift: float) -> float:
        return float(np.mean([ks_2samp(gen.normal(size=40), gen.normal(size=40) + shift).pvalue < alpha
                              for _ in range(400)]))

    assert power(mde) >= 0.72  # claimed 0.8 (asymptotic critical value: a little conservative)
    assert power(0.6 * mde) < 0.6
    assert minimum_detectable_shift(5, 5, 1e-4) == float("inf")  # no shift can be detected at all


def test_small_audit_says_not_seen_and_warns_large_audit_says_no() -> None:
    from lensnet.data.audit import audit_images
    from lensnet.data.check import format_audit

    gen = np.random.default_rng(1)
    for per_class, underpowered in ((30, True), (3000, False)):
        labels = np.repeat([0, 1, 2], per_class)
        stats = gen.normal(size=(3 * per_class, 6))
        result = audit_images(stats, labels, ["no_sub", "cdm", "axion"])
        power = result["power"]
        assert power["underpowered"] is underpowered and power["n_per_class"]["cdm"] == per_class
        assert (power["warning"] is not None) is underpowered
        assert result["params"]["ring_radius"]["mde"] == pytest.approx(power["mde_sd"], rel=0.25)  # unit-sd data
        text = format_audit({"params": {}, "images": result})
        verdicts = [line.split()[-1] for line in text.splitlines() if line.startswith(("ring_radius", "total_flux"))]
        assert verdicts == (["seen"] * 3 if underpowered else ["no"] * 3), text  # "not seen" ends with "seen"
        assert ("warning: underpowered" in text) is underpowered


def test_ring_statistic_without_lens_light_ignores_a_bright_lens_galaxy() -> None:
    from lensnet.data.audit import IMAGE_STATISTICS, image_statistics

    y, x = np.mgrid[:41, :41] - 20.0
    r = np.hypot(x, y)
    ring = np.exp(-0.5 * ((r - 10.0) / 1.0) ** 2)
    galaxy = 20.0 * np.exp(-7.67 * ((r / 6.0) ** 0.25 - 1.0))  # de Vaucouleurs, R_e 6 px, never rising outward
    stats = image_statistics(np.stack([ring, ring + galaxy, galaxy])[..., None])
    col = {name: stats[:, i] for i, name in enumerate(IMAGE_STATISTICS)}
    assert col["ring_radius"][1] < 0.8 * col["ring_radius"][0]  # lens light drags the plain statistic inward
    assert col["ring_radius_no_lens_light"][0] == pytest.approx(10.0, abs=0.3)
    assert col["ring_radius_no_lens_light"][1] == pytest.approx(10.0, abs=0.5)
    assert col["ring_radius_no_lens_light"][2] == 0.0  # nothing rises above a galaxy alone


def test_check_audit_on_90_replica_images_says_it_could_not_see(tmp_path, capsys) -> None:
    from lensnet.core.errors import run_cli
    from lensnet.data.__main__ import main as data_main
    from lensnet.simulate.__main__ import main as simulate_main

    out = tmp_path / "replica"
    assert run_cli(simulate_main, ["--dataset", "deeplense_model_ii", "--num", "90", "--out", str(out), "--workers",
                                   "1", "--set", "image.size=32", "--no-progress", "--seed", "0"]) == 0
    capsys.readouterr()
    assert run_cli(data_main, ["check", str(out), "--audit", "--no-progress"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line.startswith(("ring_radius", "total_flux", "source_"))]
    assert len(rows) >= 4 and all(row[-1] in ("seen", "YES") for row in rows), text  # "not seen", never "no"
    assert "warning: underpowered" in text and "ring_radius_no_lens_light" in text
