"""The lens_finding_survey presets: population relations, impostors, prevalence, manifest, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import LensnetError, run_cli
from lensnet.core.fileio import sha256_file
from lensnet.data.manifest import schema_of
from lensnet.data.tfrecord import iter_records
from lensnet.simulate.__main__ import main
from lensnet.simulate.dataset import simulate_dataset
from lensnet.simulate.presets import resolve_dataset_config
from lensnet.simulate.survey_population import SUBTYPES, SurveyLensFindingSimulator, sersic_unit

TINY = {"image": {"size": 16}, "records_per_shard": 10}


@pytest.fixture(scope="module")
def simulator() -> SurveyLensFindingSimulator:
    return SurveyLensFindingSimulator(resolve_dataset_config("lens_finding_survey", {"image": {"size": 16}}))


def test_list_shows_the_survey_presets(capsys) -> None:
    assert run_cli(main, ["--list"]) == 0
    text = capsys.readouterr().out
    assert "lens_finding_survey " in text and "lens_finding_survey_space" in text


def test_theta_e_of_an_sis_and_the_vdf_draw(simulator) -> None:
    # 4 pi (sigma/c)^2 D_ls/D_s for sigma 250 km/s, with astropy's angular-diameter distances
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)
    ratio = (cosmo.angular_diameter_distance(0.5, 2.0) / cosmo.angular_diameter_distance(2.0)).value
    expected = 4 * math.pi * (250 / 299792.458) ** 2 * ratio * 206264.806
    assert simulator.theta_e(250.0, 0.5, 2.0) == pytest.approx(expected, rel=1e-5)
    assert 1.0 < expected < 1.3
    # the inverse CDF spans [sigma_min, sigma_max] and is monotonic; sigma^4 weighting moves the median up
    draws = [simulator.draw_sigma(u) for u in (0.0, 0.5, 0.999999)]
    assert draws[0] == pytest.approx(180.0) and draws[0] < draws[1] < draws[2] <= 400.0
    assert simulator.draw_sigma(0.5, weight_power=0.0) < draws[1]


def test_hyde_bernardi_light_gets_brighter_and_bigger_with_sigma(simulator) -> None:
    rng = np.random.default_rng(0)
    lo = [simulator.draw_elliptical(rng, z=0.5) for _ in range(200)]
    by_sigma = sorted(lo, key=lambda g: g["sigma"])
    low, high = by_sigma[:50], by_sigma[-50:]
    assert np.median([g["m_r"] for g in high]) < np.median([g["m_r"] for g in low]) - 0.5
    assert np.median([g["r_e"] for g in high]) > np.median([g["r_e"] for g in low])
    g_r = np.median([g["mags"][0] - g["mags"][1] for g in lo])
    assert 1.5 < g_r < 1.9  # red-sequence colour at z = 0.5 (0.75 + 1.9 z)


def test_sersic_unit_profile_holds_unit_flux() -> None:
    from scipy.integrate import quad

    x, y = np.meshgrid(np.linspace(-10, 10, 801), np.linspace(-10, 10, 801))
    assert sersic_unit(x, y, 0.8, 1.0, 0.5, 0.3).sum() * (20 / 800) ** 2 == pytest.approx(1.0, abs=0.005)
    for n in (0.7, 4.0):  # radial integral to infinity of the circular profile
        def ring(r: float, n: float = n) -> float:
            return float(sersic_unit(np.array([r]), np.array([0.0]), 0.8, n, 1.0, 0.0)[0]) * 2 * math.pi * r
        assert quad(ring, 0, np.inf, limit=200)[0] == pytest.approx(1.0, rel=1e-4)


def test_lenses_are_selected_and_store_their_arc(simulator) -> None:
    for seed in range(6):
        arrays, params = simulator.simulate(0, np.random.default_rng(seed))
        assert arrays["image"].shape == (16, 16, 3) and np.isfinite(arrays["image"]).all()
        assert params["subtype"] == "lens" and math.isnan(params["non_lens_subtype"])
        assert params["theta_E"] > 0 and params["magnification"] > 0
        if params["passes_selection"] == 1.0:
            assert params["arc_snr"] >= 8.0 and params["magnification"] >= 2.0
            assert params["counter_image_snr"] >= 3.0


def test_counter_image_snr_is_zero_for_one_image_beside_the_lens(simulator) -> None:
    # one bright image right of the lens: an arc S/N, but nothing on the far side; its mirror image adds it
    blob = np.zeros((16, 16))
    blob[7:9, 12:14] = 50.0 * simulator._bkg2[simulator.spec.snr_band] ** 0.5
    snr, counter = simulator._arc_snr_band(blob, blob, 0.0, 0.0)
    assert snr > 20.0 and counter == 0.0
    pair = blob + blob[:, ::-1]
    snr2, counter2 = simulator._arc_snr_band(pair, pair, 0.0, 0.0)
    assert counter2 == pytest.approx(snr, rel=1e-6) and snr2 == pytest.approx(snr * math.sqrt(2), rel=1e-6)
    # measured about the lens centre: a lens moved onto the blob's far side sees the blob as its own side
    assert simulator._arc_snr_band(pair, pair, 1.0, 0.0)[1] < counter2


def test_every_impostor_recipe_renders_and_is_labelled(simulator) -> None:
    seen = {}
    for seed in range(200):
        arrays, params = simulator.simulate(1, np.random.default_rng(seed))
        assert math.isnan(params["theta_E"]) and math.isnan(params["arc_snr"])
        seen[params["subtype"]] = int(params["non_lens_subtype"])
        assert np.isfinite(arrays["image"]).all()
    assert seen == {name: code for code, name in enumerate(SUBTYPES)}


def test_shares_are_configurable(tmp_path: Path) -> None:
    shares = dict.fromkeys(SUBTYPES, 0.0) | {"star": 1.0}
    sim = SurveyLensFindingSimulator(resolve_dataset_config(
        "lens_finding_survey", {"image": {"size": 16}, "survey_population": {"impostors": {"shares": shares}}}))
    assert {sim.simulate(1, np.random.default_rng(s))[1]["subtype"] for s in range(10)} == {"star"}
    with pytest.raises(LensnetError, match="survey_population.impostors.shares: shares must sum to 1"):
        resolve_dataset_config("lens_finding_survey", {"survey_population": {"impostors": {"shares": {
            "star": 0.5}}}})


def test_bad_values_name_the_field() -> None:
    with pytest.raises(LensnetError, match="prevalence"):
        resolve_dataset_config("lens_finding_survey", {"prevalence": 1.5})
    with pytest.raises(LensnetError, match="prevalence: applies to lens-finding"):
        resolve_dataset_config("model_ii", {"prevalence": 0.1})
    with pytest.raises(LensnetError, match="survey_population.snr_band"):
        resolve_dataset_config("lens_finding_survey", {"survey_population": {"snr_band": "z"}})
    with pytest.raises(LensnetError, match="survey_population.deflector.colors"):
        resolve_dataset_config("lens_finding_survey",
                               {"survey_population": {"deflector": {"colors": {"z": [0, 0, 0]}}}})
    with pytest.raises(LensnetError, match="survey_population.impostors.ring.radius"):
        resolve_dataset_config("lens_finding_survey", {"survey_population": {"impostors": {"ring": {
            "radius": [2.0, 1.0]}}}})


def test_prevalence_same_bytes_and_manifest_population(tmp_path: Path) -> None:
    overrides = {**TINY, "prevalence": 0.1, "splits": {"train": 0.5, "val": 0.0, "test": 0.5}}
    a = simulate_dataset("lens_finding_survey", tmp_path / "a", num=40, seed=5, overrides=overrides, workers=1,
                         progress=False)
    simulate_dataset("lens_finding_survey", tmp_path / "b", num=40, seed=5, overrides=overrides, workers=2,
                     progress=False)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.tfrecord"))
    assert files and all(sha256_file(tmp_path / "a" / f) == sha256_file(tmp_path / "b" / f) for f in files)
    manifest = json.loads(a.manifest.read_text())
    assert manifest["splits"]["train"]["per_class"] == {"lens": 2, "non_lens": 18}  # 1 in 10, evenly spaced
    population = manifest["population"]
    assert population["lens_count"] == 4 and population["non_lens_count"] == 36
    assert population["non_lens_subtypes"] == list(SUBTYPES)
    assert set(population["impostor_shares"]) == set(SUBTYPES)
    assert sum(population["impostor_shares"].values()) == pytest.approx(1.0)
    for name in ("arc_snr", "magnification", "theta_E"):
        assert population[name]["count"] == 4 and population[name]["q05"] <= population[name]["q95"]
    # one schema module: the subtype travels as a string field and as an integer code
    schema = schema_of(manifest)
    assert schema["subtype"].kind == "bytes" and "subtype" in schema.text_names
    assert {"arc_snr", "magnification", "theta_E", "non_lens_subtype"} <= set(schema.param_names)
    records = [schema.decode(np.array([r]), ["subtype", "non_lens_subtype", "label"])
               for r in iter_records(tmp_path / "a" / files[0])]
    for rec in records:
        subtype = rec["subtype"].numpy()[0].decode()
        code = float(rec["non_lens_subtype"].numpy()[0])
        if int(rec["label"].numpy()[0]) == 0:
            assert subtype == "lens" and math.isnan(code)
        else:
            assert subtype == SUBTYPES[int(code)]
    c = simulate_dataset("lens_finding_survey", tmp_path / "c", num=40, seed=6, overrides=overrides, workers=1,
                         progress=False)
    assert c.manifest is not None
    assert sha256_file(tmp_path / "c" / files[0]) != sha256_file(tmp_path / "a" / files[0])


def test_space_preset_is_single_band_vis() -> None:
    sim = SurveyLensFindingSimulator(resolve_dataset_config("lens_finding_survey_space", {"image": {"size": 16}}))
    arrays, params = sim.simulate(0, np.random.default_rng(0))
    assert arrays["image"].shape == (16, 16, 1)
    assert sim.spec.bands[0].name == "VIS" and sim.spec.bands[0].pixel_scale == pytest.approx(0.101)
