"""Dark-matter populations: sigma_sub, WDM thinning, colossus concentrations, line-of-sight haloes, errors."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.simulate.presets import DATASET_DEFAULTS, resolve_dataset_config
from lensnet.simulate.scenes import build_simulator
from lensnet.simulate.substructure import SubhaloPopulation, parse_subhalo_config, parse_wdm_config

Z_LENS, Z_SOURCE, H0, OM0 = 0.5, 1.0, 70.0, 0.3


def lens_cosmo():
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    return LensCosmo(Z_LENS, Z_SOURCE, cosmo=FlatLambdaCDM(H0=H0, Om0=OM0))


def population(**overrides) -> SubhaloPopulation:
    section = copy.deepcopy(DATASET_DEFAULTS["substructure"])
    section.update(overrides)
    return SubhaloPopulation(parse_subhalo_config(section), lens_cosmo(), Z_LENS, H0 / 100.0, om0=OM0)


def wdm_spec(log10_m_hm: float, **overrides):
    section = copy.deepcopy(DATASET_DEFAULTS["wdm"])
    section.update(log10_m_hm=log10_m_hm, **overrides)
    return parse_wdm_config(section)


def test_wdm_is_the_cdm_draw_thinned_by_the_suppression_formula() -> None:
    pop = population(profile="POINT_MASS", normalisation="count", n_mean=3000.0, m_min=1e6, m_max=1e10)
    wdm = wdm_spec(8.0)
    edges = np.logspace(6, 10, 9)
    cdm_counts = np.zeros(8)
    wdm_counts = np.zeros(8)
    expected = np.zeros(8)  # sum over the CDM haloes of their keep probability
    variance = np.zeros(8)
    for seed in range(30):
        cdm, cdm_summary, _ = pop.draw(np.random.default_rng(seed), 0.0, 0.0, 1.2)
        thin, summary, _ = pop.draw(np.random.default_rng(seed), 0.0, 0.0, 1.2, wdm)
        assert np.isin(thin.x, cdm.x).all() and len(thin) < len(cdm)  # a subset of the same-seed CDM haloes
        assert summary[-1] == 8.0 and summary[0] == len(thin)
        m_cdm = pop.mass_in_theta_e(1.0) * cdm.theta_e**2  # point-mass Einstein radius -> mass
        m_wdm = pop.mass_in_theta_e(1.0) * thin.theta_e**2
        s = (1.0 + 1.95 * (1e8 / m_cdm) ** 0.8) ** -1.0  # pyHalo's LOVELL2020 constants, written out
        cdm_counts += np.histogram(m_cdm, edges)[0]
        wdm_counts += np.histogram(m_wdm, edges)[0]
        expected += np.histogram(m_cdm, edges, weights=s)[0]
        variance += np.histogram(m_cdm, edges, weights=s * (1 - s))[0]
    assert np.all(np.abs(wdm_counts - expected) <= 4 * np.sqrt(variance) + 1)
    # against the mass function itself: CDM count per bin x the dN/dm-weighted mean suppression in the bin
    m = np.logspace(6, 10, 4001)
    dndm = m**-1.9
    for i in range(8):
        inside = (m >= edges[i]) & (m <= edges[i + 1])
        mean_s = np.trapezoid((dndm * (1.0 + 1.95 * (1e8 / m) ** 0.8) ** -1.0)[inside], m[inside]) / np.trapezoid(
            dndm[inside], m[inside])
        assert abs(wdm_counts[i] - cdm_counts[i] * mean_s) <= 4 * math.sqrt(cdm_counts[i] * mean_s) + 2
    assert wdm_counts[0] / cdm_counts[0] < 0.05 and wdm_counts[-1] / cdm_counts[-1] > 0.8


def test_wdm_lowers_tnfw_concentrations_as_bose2016() -> None:
    common = {"normalisation": "count", "n_mean": 300.0, "m_min": 1e6, "m_max": 1e10, "truncation": 10.0,
              "concentration": {"model": "diemer19", "scatter_dex": 0.0}}
    tnfw = population(**common)
    points = population(profile="POINT_MASS", **common)  # no scatter: the same rng calls, so the same haloes
    wdm = wdm_spec(9.0)
    cdm, _, _ = tnfw.draw(np.random.default_rng(3), 0.0, 0.0, 1.2)
    thin, _, _ = tnfw.draw(np.random.default_rng(3), 0.0, 0.0, 1.2, wdm)
    masses, _, _ = points.draw(np.random.default_rng(3), 0.0, 0.0, 1.2, wdm)
    assert np.array_equal(masses.x, thin.x)
    m = points.mass_in_theta_e(1.0) * masses.theta_e**2
    keep = np.isin(cdm.x, thin.x)
    c_cdm = tnfw.median_concentration(m)
    c_wdm = np.maximum(c_cdm * (1.0 + 60.0 * 1e9 / m) ** -0.17, 1.2)
    # rs = K m^(1/3) / c: the rs ratio is the inverse concentration ratio
    assert np.allclose(cdm.rs[keep] / thin.rs, c_wdm / c_cdm, rtol=1e-9)
    assert (c_wdm / c_cdm).min() < 0.5


def test_sigma_sub_gives_pyhalos_mean_count() -> None:
    from astropy.cosmology import FlatLambdaCDM
    from scipy.integrate import quad

    pop = population(profile="POINT_MASS", normalisation="sigma_sub", sigma_sub=0.025, m_min=1e7, m_max=1e10)
    kpc_per_arcsec = FlatLambdaCDM(H0=H0, Om0=OM0).kpc_proper_per_arcmin(Z_LENS).value / 60.0
    area = math.pi * (2.0**2 - 0.25**2) * kpc_per_arcsec**2
    host = 10 ** (0.55 * math.log10(10**13.3 / 1e13) + 0.37 * math.log10(Z_LENS + 0.5))
    integral = quad(lambda lnm: (math.exp(lnm) / 1e8) ** -1.9 * math.exp(lnm) / 1e8, math.log(1e7), math.log(1e10))[0]
    expected = 0.025 * host * area * integral
    assert pop.expected_count_sigma_sub(0.025) == pytest.approx(expected, rel=1e-3)
    counts = [pop.draw(np.random.default_rng(s), 0.0, 0.0, 1.2)[1][0] for s in range(200)]
    assert abs(np.mean(counts) - expected) <= 4 * math.sqrt(expected / 200)
    assert pop.param_names[-2:] == ("sigma_sub", "sigma_sub_drawn")


@pytest.mark.parametrize("model", ["diemer19", "ludlow16"])
def test_colossus_table_matches_a_direct_colossus_call(model: str) -> None:
    pop = population(concentration={"model": model, "scatter_dex": 0.0}, m_min=1e6, m_max=1e10)
    from colossus.halo.concentration import concentration

    m = np.logspace(6, 10, 41) * 1.037  # off the table's nodes
    m = m[m <= 1e10]
    direct = np.array([concentration(mi * 0.7, "200c", Z_LENS, model=model) for mi in m])
    assert np.max(np.abs(pop.median_concentration(m) / direct - 1.0)) < 0.01


def test_colossus_writes_nothing_and_needs_no_home(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, HOME=str(blocker / "home"))  # under a regular file: nothing can be created there
    code = ("from lensnet.simulate.halo_models import use_colossus, colossus_concentration, sheth_tormen_dndm;"
            "use_colossus(70.0, 0.3, {'Ob0': 0.049, 'sigma8': 0.81, 'ns': 0.965});"
            "print(float(colossus_concentration([1e8], 0.5, 'diemer19', 0.7)[0]),"
            "      float(sheth_tormen_dndm([1e8], 0.5, 0.7)[0]))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path.cwd(),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(float(v) > 0 for v in done.stdout.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_line_of_sight_mean_count_matches_the_integral() -> None:
    from astropy.cosmology import FlatLambdaCDM
    from colossus.lss.mass_function import massFunction
    from scipy.integrate import quad

    from lensnet.simulate.los import LineOfSight, parse_los_config

    section = dict(DATASET_DEFAULTS["line_of_sight"], enabled=True, m_min=1e8, m_max=1e10, dz=0.05)
    spec = parse_los_config(section, Z_LENS, Z_SOURCE)
    cone = 3.0
    halo_model = DATASET_DEFAULTS["cosmology"]["halo_model"]
    los = LineOfSight(spec, Z_LENS, Z_SOURCE, H0, OM0, cone, "diemer19", 0.1, halo_model)
    cosmo = FlatLambdaCDM(H0=H0, Om0=OM0)
    d_s = cosmo.angular_diameter_distance(Z_SOURCE).value
    d_ls = cosmo.angular_diameter_distance(Z_LENS, Z_SOURCE).value

    def solid_angle(z: float) -> float:
        scale = 1.0
        if z > Z_LENS:
            scale = 1 - 0.95 * d_s / d_ls * cosmo.angular_diameter_distance(Z_LENS, z).value / \
                cosmo.angular_diameter_distance(z).value
        return math.pi * (cone * scale * math.pi / 648000) ** 2

    planes = list(np.arange(0.01, Z_LENS - 1e-9, 0.05)) + list(np.arange(Z_LENS, Z_SOURCE - 1e-9, 0.05))
    expected = 0.0
    for k, z in enumerate(planes):
        z_end = planes[k + 1] if k + 1 < len(planes) else Z_SOURCE
        volume = quad(lambda zz: cosmo.differential_comoving_volume(zz).value * solid_angle(zz), z, z_end)[0]
        density = quad(lambda lnm, z=z: massFunction(math.exp(lnm) * 0.7, z, q_out="dndlnM", model="sheth99")
                       * 0.7**3, math.log(1e8), math.log(1e10))[0]
        expected += volume * density
    assert los.expected_count() == pytest.approx(expected, rel=0.01)
    counts = [los.draw(np.random.default_rng(s), 1.2)[1][0] for s in range(300)]
    assert abs(np.mean(counts) - expected) <= 4 * math.sqrt(expected / 300)
    haloes, (n, m_total), _ = los.draw(np.random.default_rng(0), 1.2)
    assert len(haloes) == n and np.all(haloes.r_trunc > haloes.rs) and np.all(np.hypot(haloes.x, haloes.y) <= cone)
    # masses follow the Sheth-Tormen shape: most haloes sit in the lowest decade
    assert 1e8 * n <= m_total <= 1e10 * n


def small_config(**overrides) -> dict:
    base = {"classes": ["no_sub", "cdm", "wdm"], "image": {"size": 16},
            "substructure": {"profile": "TNFW", "m_min": 1e7},
            "line_of_sight": {"enabled": True, "m_min": 1e8}}
    base.update(overrides)
    return resolve_dataset_config("model_ii", base)


def test_same_seed_same_haloes_and_paired_classes() -> None:
    sim = build_simulator(small_config())
    assert {"n_los", "m_los_total", "log10_m_hm"} <= sim.class_specific_params  # wdm thins the field haloes
    paired = build_simulator(small_config(classes=["no_sub", "cdm"]))
    assert {"n_los", "m_los_total"} <= set(paired.param_names) - paired.class_specific_params
    first = sim._draw_scene(2, np.random.default_rng(5))
    again = sim._draw_scene(2, np.random.default_rng(5))
    for a, b in zip(first.haloes, again.haloes, strict=True):
        for name in ("x", "y", "rs", "alpha_rs", "r_trunc"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    no_sub = sim._draw_scene(0, np.random.default_rng(5))
    cdm = sim._draw_scene(1, np.random.default_rng(5))
    wdm = first
    assert len(no_sub.haloes) == 1 and len(cdm.haloes) == 2 and len(wdm.haloes) == 2
    assert np.array_equal(no_sub.haloes[0].x, cdm.haloes[1].x)  # one line of sight for every class of a seed
    assert np.isin(wdm.haloes[0].x, cdm.haloes[0].x).all()  # wdm subhaloes: a subset of the cdm ones
    assert np.isin(wdm.haloes[1].x, cdm.haloes[1].x).all()  # and so are its field haloes
    assert math.isnan(cdm.params["log10_m_hm"]) and 6.0 <= wdm.params["log10_m_hm"] <= 10.0
    assert math.isnan(no_sub.params["log10_m_hm"]) and no_sub.params["n_subhalo"] == 0.0
    assert no_sub.params["n_los"] == cdm.params["n_los"] > 0
    image, params = sim.simulate(2, np.random.default_rng(5))
    image2, _ = sim.simulate(2, np.random.default_rng(5))
    assert np.array_equal(image["image"], image2["image"]) and np.isfinite(image["image"]).all()


@pytest.mark.slow
def test_population_parameters_are_regression_targets(tmp_path: Path) -> None:
    from lensnet.data import open_dataset
    from lensnet.simulate.dataset import simulate_dataset
    from lensnet.tasks.base import get_task_class

    config = small_config(substructure={"profile": "POINT_MASS", "m_min": 1e8})
    path = tmp_path / "pop.yaml"
    from lensnet.core.config import dump_yaml

    path.write_text(dump_yaml(config))
    simulate_dataset(str(path), tmp_path / "data", num=30, seed=1, progress=False)
    info = open_dataset(tmp_path / "data")
    stats = info.manifest["param_stats"]["train"]
    for target in ("n_subhalo", "m_sub_total", "f_sub", "log10_m_hm", "n_los", "m_los_total"):
        assert target in info.param_names
        cls = get_task_class("regression")
        task = cls(cls.Config(target=target))
        task.setup(info)
        assert task.target == target
    assert 0 < stats["log10_m_hm"]["finite"] < stats["n_los"]["finite"]  # NaN outside the wdm class


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (["substructure.m_min=1e10", "substructure.m_max=1e8"], "substructure.m_min"),
        (["substructure.f_sub=-0.01"], "substructure.f_sub"),
        (["substructure.normalisation=sigma_sub", "substructure.sigma_sub=-0.1"], "substructure.sigma_sub"),
        (["classes=[no_sub,wdm]", "wdm.log10_m_hm=20"], "wdm.log10_m_hm"),
        (["line_of_sight.enabled=true", "line_of_sight.dz=0"], "line_of_sight.dz"),
        (["line_of_sight.m_min=1e10"], "line_of_sight.m_min"),
        (["cosmology.z_source=0.4"], "cosmology.z_source"),
    ],
)
def test_bad_population_parameters_are_one_error_line(capsys, tmp_path: Path, sets: list[str], field: str) -> None:
    from lensnet.simulate.__main__ import main

    out = tmp_path / "out"
    argv = ["--dataset", "model_ii", "--num", "3", "--out", str(out), "--seed", "0"]
    for item in sets:
        argv += ["--set", item]
    code = run_cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not out.exists()


def test_bad_population_parameter_through_python_m(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lensnet.simulate", "--dataset", "model_ii", "--num", "3", "--out", str(out),
         "--set", "substructure.f_sub=-0.01", "--seed", "0"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: substructure.f_sub") and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_detectability_knob_m_hm() -> None:
    from lensnet.core.errors import LensnetError
    from lensnet.studies.detectability import StudySpec, dataset_config

    spec = StudySpec(name="hm", knob="m_hm", grid=[7.0, 9.0], dataset="model_ii", num=30, model="cnn_small",
                     epochs=1, data_set=["classes=[no_sub,cdm,wdm]"])
    config = dataset_config(spec, 7.0)
    assert config["wdm"]["log10_m_hm"] == 7.0 and config["classes"] == ["no_sub", "cdm", "wdm"]
    with pytest.raises(LensnetError, match="wdm.log10_m_hm"):
        dataset_config(spec, 20.0)
    spec.data_set = []
    with pytest.raises(LensnetError, match="knob m_hm changes the wdm class"):
        dataset_config(spec, 7.0)


def test_line_of_sight_mass_sheet_alone_leaves_subhalo_mass_in_the_lens() -> None:
    config = small_config(classes=["no_sub", "cdm"], substructure={"profile": "POINT_MASS", "m_min": 1e8,
                                                                   "subtract_from_macro": False})
    sim = build_simulator(config)
    no_sub = sim._draw_scene(0, np.random.default_rng(2)).params
    cdm = sim._draw_scene(1, np.random.default_rng(2)).params
    assert cdm["n_subhalo"] > 0 and no_sub["n_los"] == cdm["n_los"] > 0
    # the same line of sight leaves the smooth lens in both classes; the subhaloes (subtract_from_macro
    # false) do not
    assert cdm["theta_E_smooth"] == no_sub["theta_E_smooth"] < cdm["theta_E"]
    config["line_of_sight"]["mass_sheet"] = False
    assert "theta_E_smooth" not in build_simulator(config).param_names
