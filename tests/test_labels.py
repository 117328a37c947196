"""Substructure labels that mean lensing mass: 3D depths, the Roche truncation, realised vs drawn f_sub/sigma_sub."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from lensnet.core.errors import LensnetError
from lensnet.simulate.presets import DATASET_DEFAULTS, resolve_dataset_config
from lensnet.simulate.scenes import build_simulator
from lensnet.simulate.substructure import SubhaloPopulation, parse_subhalo_config, tnfw_mass_fraction

Z_LENS, Z_SOURCE, H0, OM0 = 0.5, 1.0, 70.0, 0.3


def lens_cosmo():
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(Z_LENS, Z_SOURCE, cosmo=FlatLambdaCDM(H0=H0, Om0=OM0))


def population(**overrides) -> SubhaloPopulation:
    section = copy.deepcopy(DATASET_DEFAULTS["substructure"])
    section.update(overrides)
    return SubhaloPopulation(parse_subhalo_config(section), lens_cosmo(), Z_LENS, H0 / 100.0, om0=OM0,
                             theta_e_range=(1.0, 1.6))


def realised_over_drawn(pop: SubhaloPopulation, draws: int) -> np.ndarray:
    """realised f_sub / f_sub_drawn over populations with theta_E drawn as the physical presets draw it."""
    names = pop.param_names
    ratios = []
    for seed in range(draws):
        rng = np.random.default_rng([5, seed])
        theta_e = 1.0 + 0.6 * rng.random()
        summary = dict(zip(names, pop.draw(rng, 0.0, 0.0, theta_e)[1]))
        ratios.append(summary["f_sub"] / summary["f_sub_drawn"])
    return np.array(ratios)


@pytest.mark.parametrize(
    ("profile", "f_sub", "m_min"),
    [("POINT_MASS", 0.01, 1e6), ("POINT_MASS", {"log_uniform": [0.005, 0.05]}, 1e8), ("TNFW", 0.01, 1e7),
     ("TNFW", {"log_uniform": [0.005, 0.05]}, 1e7)],
)
def test_realised_f_sub_median_hits_the_request(profile: str, f_sub, m_min: float) -> None:
    pop = population(profile=profile, f_sub=f_sub, m_min=m_min, concentration={"model": "duffy08", "scatter_dex": 0.1})
    ratio = realised_over_drawn(pop, 500)
    assert abs(np.median(ratio) - 1.0) < 0.10, np.percentile(ratio, [16, 50, 84])


def test_realised_f_sub_is_the_lensing_mass_in_the_annulus_over_the_einstein_mass() -> None:
    pop = population(profile="POINT_MASS", f_sub=0.02, m_min=1e8)
    theta_e = 1.3
    haloes, summary, _ = pop.draw(np.random.default_rng(3), 0.0, 0.0, theta_e)
    p = dict(zip(pop.param_names, summary))
    r = np.hypot(haloes.x, haloes.y)
    mass = math.pi * haloes.theta_e**2 * pop.sigma_crit  # a point mass of Einstein radius t lenses as pi t^2 Sigma_crit
    inside = (r >= 0.5 * theta_e) & (r <= 1.5 * theta_e)
    assert 0 < inside.sum() < len(r)
    assert p["f_sub"] == pytest.approx(mass[inside].sum() / (math.pi * theta_e**2 * pop.sigma_crit), rel=1e-9)
    assert p["m_sub_lensing"] == pytest.approx(mass.sum(), rel=1e-9)
    assert p["f_sub_drawn"] == 0.02


def test_sigma_sub_realised_median_hits_the_drawn_value() -> None:
    pop = population(profile="POINT_MASS", normalisation="sigma_sub", sigma_sub={"uniform": [0.01, 0.05]},
                     m_min=1e7)
    assert pop.param_names[-2:] == ("sigma_sub", "sigma_sub_drawn")
    rows = [dict(zip(pop.param_names, pop.draw(np.random.default_rng(s), 0.0, 0.0, 1.2)[1])) for s in range(300)]
    ratio = np.array([p["sigma_sub"] / p["sigma_sub_drawn"] for p in rows])
    assert abs(np.median(ratio) - 1.0) < 0.10
    assert np.std(ratio) > 0.01  # realised, not a copy of the drawn value


def test_tnfw_lensing_mass_matches_lenstronomys_deflection() -> None:
    """m_sub_lensing of a TNFW population is what lenstronomy's TNFW deflects with (far-field alpha R pi Sigma_crit)."""
    from lenstronomy.LensModel.Profiles.tnfw import TNFW

    pop = population(normalisation="count", n_mean=20.0, m_min=1e8, concentration={"model": "duffy08",
                                                                                    "scatter_dex": 0.1})
    haloes, summary, _ = pop.draw(np.random.default_rng(1), 0.0, 0.0, 1.3)
    p = dict(zip(pop.param_names, summary))
    far = 1e3 * haloes.r_trunc
    alpha = np.array([TNFW().derivatives(f, 0.0, a, b, t)[0]
                      for f, a, b, t in zip(far, haloes.rs, haloes.alpha_rs, haloes.r_trunc)])
    assert p["m_sub_lensing"] == pytest.approx(float((math.pi * pop.sigma_crit * far * alpha).sum()), rel=0.01)


def test_roche_truncation_is_far_looser_than_the_former_projected_rule() -> None:
    """The former rule (Jacobi at the projected R) truncated at ~0.8 r_s; the Roche rule at r3d near 3 r_s."""
    rules = {}
    for rule in ("roche", "tidal_projected"):
        pop = population(normalisation="count", n_mean=400.0, m_min=1e7, truncation=rule,
                         concentration={"model": "duffy08", "scatter_dex": 0.0})
        haloes, summary, _ = pop.draw(np.random.default_rng(2), 0.0, 0.0, 1.3)
        rules[rule] = (np.median(haloes.r_trunc / haloes.rs), dict(zip(pop.param_names, summary)))
    tau_roche, p = rules["roche"]
    tau_old, p_old = rules["tidal_projected"]
    assert 0.5 < tau_old < 1.1  # the measured ~0.78 of the former rule
    assert tau_roche > 2.0
    assert p["m_sub_lensing"] / p["m_sub_total"] > 3 * p_old["m_sub_lensing"] / p_old["m_sub_total"]


def test_roche_rule_and_depths_by_formula() -> None:
    from lensnet.simulate.substructure import truncation_roche

    pop = population(normalisation="count", n_mean=10.0, m_min=1e7, truncation="roche")
    k = pop.kpc_per_arcsec
    r3d_kpc = np.array([5.0, 50.0])
    rt = truncation_roche(pop, np.array([1e7, 8e7]), r3d_kpc / k, r3d_kpc / k, np.ones(2), 1.3) * k
    np.testing.assert_allclose(rt, [1.4 * 0.1 ** (2 / 3), 1.4 * 2.0], rtol=1e-12)
    # depths follow the host's NFW density along the line of sight: compare the CDF with a direct integral
    from scipy.integrate import quad

    depth = pop._depth
    big_r = 8.0  # kpc
    z = depth.depth(np.full(20000, big_r), np.random.default_rng(0).random(20000))
    zmax = math.sqrt(depth.r200**2 - big_r**2)

    def rho(zz: float) -> float:
        x = math.hypot(big_r, zz) / depth.rs
        return 1.0 / (x * (1 + x) ** 2)

    total = quad(rho, 0, zmax, limit=200)[0]
    for q in (5.0, 20.0, 80.0):
        assert np.mean(z <= q) == pytest.approx(quad(rho, 0, q, limit=200)[0] / total, abs=0.015)
    assert z.min() >= 0 and z.max() <= zmax


def test_record_fields_name_realised_and_drawn_labels() -> None:
    sim = build_simulator(resolve_dataset_config("model_ii", {"image": {"size": 16, "supersampling": 1}}))
    assert {"f_sub", "f_sub_drawn", "m_sub_lensing"} <= sim.class_specific_params
    _, no_sub = sim.simulate(0, np.random.default_rng(0))
    _, cdm = sim.simulate(1, np.random.default_rng(0))
    assert no_sub["f_sub"] == no_sub["f_sub_drawn"] == 0
    assert cdm["f_sub"] != cdm["f_sub_drawn"] and cdm["f_sub_drawn"] > 0
    replica = build_simulator(resolve_dataset_config("deeplense_model_i", {"image": {"size": 16}}))
    assert "f_sub_drawn" not in replica.param_names and "f_sub" in replica.param_names  # count: realised only


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"truncation": "jacobi"}, "substructure.truncation"), ({"truncation": -1.0}, "substructure.truncation"),
     ({"host": {"log10_m200": 20.0}}, "substructure.host.log10_m200")],
)
def test_bad_truncation_and_host_are_one_line_errors(overrides: dict, field: str) -> None:
    with pytest.raises(LensnetError, match=field.replace(".", r"\.")) as info:
        build_simulator(resolve_dataset_config("model_ii", {"substructure": {"profile": "TNFW", **overrides}}))
    assert "\n" not in str(info.value)


def test_tnfw_mass_fraction_is_monotone_in_tau() -> None:
    tau = np.array([0.5, 1.0, 3.0, 10.0, 100.0])
    f = tnfw_mass_fraction(np.full(5, 10.0), tau)
    assert np.all(np.diff(f) > 0) and f[-1] > 0.9


def test_schema_defines_every_substructure_label_field() -> None:
    from lensnet.data.schema import SUBSTRUCTURE_LABELS
    from lensnet.simulate.substructure import CDM_PARAMS, F_SUB_PARAMS, SIGMA_SUB_PARAMS

    assert set(CDM_PARAMS + F_SUB_PARAMS + SIGMA_SUB_PARAMS) == set(SUBSTRUCTURE_LABELS)
    assert "REALISED" in SUBSTRUCTURE_LABELS["f_sub"] and "requested" in SUBSTRUCTURE_LABELS["f_sub_drawn"]


def test_replica_label_measures_the_rendered_multi_plane_deflections() -> None:
    """deeplense_model_ii renders every deflection x s (lenstronomy's multi-plane convention): a subhalo of Einstein
    radius t lenses as s pi t^2 Sigma_crit and the ring sits at s theta_E, so the realised f_sub uses both."""
    sim = build_simulator(resolve_dataset_config("deeplense_model_ii", {"image": {"size": 16}}))
    s = sim.spec.deflection_scale
    assert 0.5 < s < 0.8  # ~0.63: the z = 1 source read for z = 2.5
    d = sim.draw_scene(1, np.random.default_rng(2))
    (haloes,) = d.haloes
    theta = s * d.params["theta_E"]
    r = np.hypot(haloes.x, haloes.y)
    inside = (r >= 0.5 * theta) & (r <= 1.5 * theta)
    assert 0 < inside.sum() < len(r)
    assert d.params["f_sub"] == pytest.approx(s * (haloes.theta_e[inside] ** 2).sum() / theta**2, rel=1e-9)


def test_replica_flux_bench_pairs_scenes(tmp_path, capsys, monkeypatch) -> None:
    import argparse

    from lensnet.bench import replica_flux

    parser = argparse.ArgumentParser()
    replica_flux.add_arguments(parser)
    rows = replica_flux.run(parser.parse_args(["--num", "4", "--set", "image.size=16"]))
    by_class = {r["class"]: r for r in rows}
    assert by_class["no_sub"]["flux_vs_no_sub"] == 1.0 and by_class["no_sub"]["ring_shift_px"] == 0.0
    assert by_class["axion"]["flux_vs_no_sub"] != 1.0 and by_class["axion"]["scenes"] == 4


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("lensnet.simulate.__main__",
         ["--dataset", "model_ii", "--num", "3", "--set", "substructure.truncation=jacobi"], "substructure.truncation"),
        ("lensnet.simulate.__main__", ["--dataset", "model_ii", "--num", "3", "--set", "symmetry=rot90"], "symmetry"),
        ("lensnet.bench.__main__", ["replica-flux", "--num", "1"], "--num"),
        ("lensnet.bench.__main__", ["replica-flux", "--dataset", "lens_finding", "--num", "2"], "dataset"),
    ],
)
def test_bad_new_options_are_one_error_line_exit_2(tmp_path, capsys, module: str, argv: list, message: str) -> None:
    import importlib

    from lensnet.core.errors import run_cli

    main = importlib.import_module(module).main
    out = tmp_path / "x"
    extra = ["--out", str(out), "--workers", "1", "--no-progress"] if module.startswith("lensnet.simulate") else []
    code = run_cli(main, argv + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert not out.exists()
