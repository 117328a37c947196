"""Physics of the simulator: presets, records, determinism, substructure, noise, config errors (small images)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from lensnet.core.errors import LensnetError
from lensnet.simulate.presets import DATASET_DEFAULTS, list_presets, resolve_dataset_config
from lensnet.simulate.scene_spec import CONFUSER_TYPES
from lensnet.simulate.scenes import build_simulator

PRESETS = ["model_i", "model_ii", "model_iii", "lens_finding", "super_resolution", "deeplense_model_i",
           "deeplense_model_ii", "deeplense_model_iii"]
SMALL = {"image": {"size": 24, "supersampling": 1}}
QUIET = {"noise": {"poisson": False, "background": False}}


def small(preset: str, **extra: dict) -> dict:
    overrides = {**SMALL, **extra}
    return resolve_dataset_config(preset, overrides)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_presets_listed_with_descriptions() -> None:
    presets = dict(list_presets())
    assert set(PRESETS) <= set(presets)
    assert all(presets[name] for name in PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_records_have_shapes_finite_images_and_every_param(preset: str) -> None:
    config = small(preset)
    sim = build_simulator(config)
    assert config["name"] == preset
    for key in ("name", "description", "num", "splits", "records_per_shard"):
        assert key in config
    labels = range(len(sim.class_names)) if sim.class_names else [0]
    for label in labels:
        for seed in range(2):
            images, params = sim.simulate(label, rng(seed))
            assert set(images) == set(sim.image_shapes)
            for name, shape in sim.image_shapes.items():
                assert images[name].shape == shape and images[name].dtype == np.float32
                assert np.all(np.isfinite(images[name]))
            assert list(params) == sim.param_names
            assert all(isinstance(v, float) for v in params.values())
    if preset == "super_resolution":
        assert sim.image_shapes == {"image": (24, 24, 1), "image_hr": (48, 48, 1)}
        assert sim.class_names == []
    if preset == "lens_finding":
        assert sim.image_shapes["image"] == (24, 24, 3)
        assert sim.class_names == ["lens", "non_lens"]


def test_model_i_keeps_the_deeplense_reference_scene_and_draws_exposure() -> None:
    sim = build_simulator(small("model_i"))
    exposures = []
    for seed in range(20):
        _, p = sim.simulate(0, rng(seed))
        assert (p["theta_E"], p["e1"], p["e2"], p["gamma1"]) == (1.28, 0.1, 0.0, 0.05)
        assert (p["source_R_sersic"], p["source_n_sersic"], p["source_e1"], p["source_e2"]) == (0.25, 1.0, -0.1, 0.1)
        assert abs(p["source_center_x"]) <= 0.35 and abs(p["source_center_y"]) <= 0.35
        exposures.append(p["exposure_time"])
    assert 10**3 <= min(exposures) < max(exposures) <= 10**3.5


def test_not_applicable_params_are_nan_and_applicable_ones_are_not() -> None:
    sim = build_simulator(small("model_ii"))
    shared = [n for n in sim.param_names if n not in sim.class_specific_params]
    axion = ["log10_m_axion", "vortex_mass", "vortex_angle", "vortex_half_length"]
    for seed in range(5):
        _, no_sub = sim.simulate(0, rng(seed))
        _, cdm = sim.simulate(1, rng(seed))
        _, ax = sim.simulate(2, rng(seed))
        for p in (no_sub, cdm, ax):
            assert all(math.isfinite(p[n]) for n in shared)
        assert no_sub["n_subhalo"] == 0 and no_sub["f_sub"] == 0
        assert all(math.isnan(no_sub[n]) and math.isnan(cdm[n]) for n in axion)
        assert all(math.isfinite(ax[n]) for n in axion)
        assert cdm["n_subhalo"] >= 0 and math.isfinite(cdm["f_sub"])
    assert {"n_subhalo", "m_sub_total", "m_sub_lensing", "f_sub", "f_sub_drawn", "theta_E_smooth",
            *axion} == sim.class_specific_params

    finder = build_simulator(small("lens_finding"))
    lens_only = ["theta_E", "e1", "source_mag", "source_mag_g", "source_R_sersic"]
    seen = set()
    for seed in range(12):
        _, lens = finder.simulate(0, rng(seed))
        _, other = finder.simulate(1, rng(seed))
        assert math.isnan(lens["confuser_type"]) and all(math.isfinite(lens[n]) for n in lens_only)
        assert all(math.isnan(other[n]) for n in lens_only)
        assert other["confuser_type"] in range(len(CONFUSER_TYPES))
        seen.add(other["confuser_type"])
        for p in (lens, other):
            assert math.isfinite(p["lens_light_mag_g"]) and math.isfinite(p["n_field_galaxies"])
    assert len(seen) >= 3
    assert "confuser_type" in finder.class_specific_params


def test_colours_make_a_red_lens_and_a_blue_source() -> None:
    finder = build_simulator(small("lens_finding"))
    for seed in range(10):
        _, p = finder.simulate(0, rng(seed))
        assert p["lens_light_mag_g"] - p["lens_light_mag"] > 1.0  # g - r of an early type at z ~ 0.5
        assert p["source_mag_g"] - p["source_mag"] < 0.6


def test_same_seed_same_bytes_other_seed_differs_and_pickle_rebuilds() -> None:
    sim = build_simulator(small("model_ii"))
    copy = pickle.loads(pickle.dumps(sim))
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    for label in range(3):
        a, pa = sim.simulate(label, rng(7))
        b, pb = copy.simulate(label, rng(7))
        c, _ = sim.simulate(label, rng(8))
        assert a["image"].tobytes() == b["image"].tobytes()
        np.testing.assert_array_equal(list(pa.values()), list(pb.values()))  # NaN == NaN here
        assert a["image"].tobytes() != c["image"].tobytes()
    assert np.array_equal(np.random.get_state()[1], state), "the global numpy random state was touched"


def test_classes_share_the_macro_draw_for_one_seed() -> None:
    sim = build_simulator(small("model_ii", **QUIET))
    shared = [n for n in sim.param_names if n not in sim.class_specific_params]
    params = [sim.simulate(label, rng(3))[1] for label in range(3)]
    assert all([p[n] for n in shared] == [params[0][n] for n in shared] for p in params)


def test_poisson_subhalo_count_is_drawn_and_rendered() -> None:
    config = small("model_ii", substructure={"profile": "POINT_MASS", "normalisation": "count", "n_mean": 6.0})
    sim = build_simulator(config)
    counts = []
    for seed in range(200):
        drawn = sim._draw_scene(1, rng(seed))
        counts.append(drawn.params["n_subhalo"])
        assert sum(len(h) for h in drawn.haloes) == drawn.params["n_subhalo"]  # every drawn subhalo is rendered
    counts = np.array(counts)
    assert len(set(counts)) > 5
    assert abs(counts.mean() - 6.0) < 0.6 and abs(counts.var() - 6.0) < 2.0  # Poisson: mean == variance


@pytest.mark.parametrize("profile", ["POINT_MASS", "TNFW"])
def test_substructure_perturbation_grows_with_subhalo_mass(profile: str) -> None:
    def mean_difference(m_min: float) -> float:
        sub = {"profile": profile, "normalisation": "count", "n_mean": 8.0, "m_min": m_min, "m_max": 1.01 * m_min,
               "subtract_from_macro": False}
        sim = build_simulator(small("model_ii", substructure=sub, **QUIET))
        total = 0.0
        for seed in range(6):
            smooth = sim.simulate(0, rng(seed))[0]["image"]
            lumpy, p = sim.simulate(1, rng(seed))
            assert p["m_sub_total"] == pytest.approx(p["n_subhalo"] * m_min, rel=0.02)
            total += float(np.abs(lumpy["image"] - smooth).mean())
        return total

    diffs = [mean_difference(m) for m in (1e7, 1e8, 1e9, 1e10)]
    assert diffs[0] > 0
    assert all(b > 1.5 * a for a, b in zip(diffs, diffs[1:])), diffs


def test_realised_f_sub_is_annulus_mass_over_einstein_mass() -> None:
    """Normalisation count: f_sub = realised lensing mass in [theta_E/2, 3 theta_E/2] over pi Sigma_crit theta_E^2."""
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    sim = build_simulator(small("model_ii", substructure={"normalisation": "count", "profile": "POINT_MASS"}))
    lens_cosmo = LensCosmo(0.5, 1.0, cosmo=FlatLambdaCDM(H0=70, Om0=0.3))
    drawn = sim.draw_scene(1, rng(4))
    (haloes,) = drawn.haloes
    theta_e = drawn.params["theta_E"]
    r = np.hypot(haloes.x - drawn.kwargs_lens[0]["center_x"], haloes.y - drawn.kwargs_lens[0]["center_y"])
    inside = (r >= 0.5 * theta_e) & (r <= 1.5 * theta_e)
    assert drawn.params["f_sub"] == pytest.approx((haloes.theta_e[inside] ** 2).sum() / theta_e**2, rel=1e-6)
    assert drawn.params["m_sub_lensing"] == pytest.approx(
        math.pi * lens_cosmo.sigma_crit_angle * (haloes.theta_e**2).sum(), rel=1e-6)


def test_nfw_units_match_lenscosmo_and_truncation_is_positive() -> None:
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    from lensnet.simulate.substructure import SubhaloPopulation, parse_subhalo_config

    lens_cosmo = LensCosmo(0.5, 1.0, cosmo=FlatLambdaCDM(H0=70, Om0=0.3))
    pop = SubhaloPopulation(parse_subhalo_config(DATASET_DEFAULTS["substructure"]), lens_cosmo, 0.5, 0.7)
    m, c = np.array([1e6, 3e7, 1e10]), np.array([25.0, 12.0, 6.0])
    ours = pop.nfw_angles(m, c)
    theirs = lens_cosmo.nfw_physical2angle(m, c)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-10)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-10)
    for seed in range(20):
        kwargs = pop.draw(rng(seed), 0.0, 0.0, 1.3)[0].kwargs()
        assert all(k["r_trunc"] > 0 and k["Rs"] > 0 and k["alpha_Rs"] > 0 for k in kwargs)


def test_power_law_mass_function_by_inverse_cdf() -> None:
    from lensnet.simulate.substructure import power_law_masses

    m = power_law_masses(rng(0).random(200_000), 1e6, 1e10, -1.9)
    assert m.min() >= 1e6 and m.max() <= 1e10
    p = -0.9  # slope + 1
    expected = (1e8**p - 1e10**p) / (1e6**p - 1e10**p)  # analytic fraction above 1e8
    assert np.mean(m > 1e8) == pytest.approx(expected, rel=0.05)


def test_noise_is_added_exactly_once() -> None:
    custom = {"name": "custom", "bands": ["x"], "custom": {"exposure_time": 400.0, "background_rms": 0.05,
                                                           "pixel_scale": 0.1, "psf_fwhm": 0.15}}
    config = small("model_ii", instrument=custom)
    sim = build_simulator(config)
    z2 = []
    for seed in range(8):
        image = sim.simulate(0, rng(seed))[0]["image"][..., 0].astype(np.float64)
        model = sim.noiseless(0, rng(seed))[..., 0]
        variance = 0.05**2 + np.maximum(model, 0) / 400.0
        z2.append(((image - model) ** 2 / variance).ravel())
    z2 = np.concatenate(z2)
    assert z2.mean() == pytest.approx(1.0, abs=0.08)  # 0 if never added, 2 if added twice

    quiet = build_simulator(small("model_ii", instrument=custom, **QUIET))
    image = quiet.simulate(2, rng(1))[0]["image"]
    np.testing.assert_array_equal(image, quiet.noiseless(2, rng(1)).astype(np.float32))


def test_euclid_noise_uses_lenstronomy_background_and_exposure() -> None:
    from lenstronomy.SimulationAPI.observation_api import SingleBand
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

    band = build_simulator(small("model_ii")).spec.bands[0]
    reference = SingleBand(**Euclid(band="VIS", psf_type="GAUSSIAN").kwargs_single_band())
    assert band.background_rms == pytest.approx(reference.background_noise)
    assert band.exposure_time.args[0] == pytest.approx(reference.exposure_time)
    assert band.pixel_scale == 0.101 and band.psf_fwhm == 0.16


def test_preset_exposure_time_override_sets_the_noise_through_lenstronomy() -> None:
    from lenstronomy.SimulationAPI.observation_api import SingleBand
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

    kwargs = Euclid(band="VIS", psf_type="GAUSSIAN").kwargs_single_band()
    kwargs["exposure_time"] = 200.0 / kwargs["num_exposures"]
    reference = SingleBand(**kwargs)
    band = build_simulator(small("model_ii", instrument={"exposure_time": 200.0})).spec.bands[0]
    assert band.exposure_time.args[0] == pytest.approx(200.0)
    assert band.background_rms == pytest.approx(reference.background_noise)
    default = build_simulator(small("model_ii")).spec.bands[0]
    assert band.background_rms > 2 * default.background_rms  # a shorter exposure is noisier per e-/s
    with pytest.raises(LensnetError, match="instrument.exposure_time must be a positive number"):
        build_simulator(small("model_ii", instrument={"exposure_time": 0}))


def test_hst_preset_does_not_depend_on_module_state() -> None:
    from lenstronomy.SimulationAPI.ObservationConfig import HST

    before = dict(HST.TDLMC_F160W_band_obs)
    build_simulator(small("model_iii"))
    with pytest.raises(LensnetError, match="seeing"):
        resolve_dataset_config("model_iii", {"instrument": {"bands": ["TDLMC_F160W"]}})
    assert HST.TDLMC_F160W_band_obs == before
    band = build_simulator(small("model_iii")).spec.bands[0]
    assert (band.pixel_scale, band.psf_fwhm, band.psf_kwargs["psf_type"]) == (0.08, 0.08, "GAUSSIAN")


def test_axion_mass_range_and_vortex_length() -> None:
    sim = build_simulator(small("model_ii"))
    masses = []
    for seed in range(60):
        drawn = sim._draw_scene(2, rng(seed))
        p = drawn.params
        masses.append(p["log10_m_axion"])
        assert p["vortex_half_length"] == pytest.approx(0.03 * 10 ** (-22 - p["log10_m_axion"]))
        xs = [k["center_x"] for k in [k for h in drawn.haloes for k in h.kwargs()]]
        ys = [k["center_y"] for k in [k for h in drawn.haloes for k in h.kwargs()]]
        extent = math.hypot(xs[-1] - xs[0], ys[-1] - ys[0])
        assert extent == pytest.approx(2 * p["vortex_half_length"], rel=1e-9)
        assert len(xs) == 50
    assert -24 <= min(masses) < -23.5 and -22.5 < max(masses) <= -22


def test_super_resolution_hr_matches_lr_brightness() -> None:
    sim = build_simulator(small("super_resolution", **QUIET))
    images, _ = sim.simulate(0, rng(2))
    lr, hr = images["image"][..., 0], images["image_hr"][..., 0]
    binned = hr.reshape(24, 2, 24, 2).mean(axis=(1, 3))
    assert binned.sum() == pytest.approx(lr.sum(), rel=0.05)  # same flux scale, different PSF


def test_prior_overrides_replace_distributions_and_presets_chain(tmp_path) -> None:
    config = resolve_dataset_config("model_ii", {"lens": {"theta_E": {"normal": [1.3, 0.01]}, "e1": 0.05}})
    assert config["lens"]["theta_E"] == {"normal": [1.3, 0.01]} and config["lens"]["e1"] == 0.05
    with pytest.raises(LensnetError, match="lens.theta_E"):  # a normal that can reach theta_E <= 0
        resolve_dataset_config("model_ii", {"lens": {"theta_E": {"normal": [0.5, 0.1]}}})
    path = tmp_path / "mine.yaml"
    path.write_text("preset: model_iii\nlens:\n  theta_E: {truncated_normal: [1.3, 0.1, 1.0, 1.6]}\n")
    mine = resolve_dataset_config(str(path), SMALL)
    assert mine["name"] == "mine" and mine["instrument"]["name"] == "HST"
    _, p = build_simulator(mine).simulate(0, rng(0))
    assert 1.0 <= p["theta_E"] <= 1.6


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lens": {"theta_e": 1.0}}, "lens.theta_e"),
        ({"bogus": 1}, "bogus"),
        ({"lens": {"theta_E": {"uniform": [1.6, 1.0]}}}, "lens.theta_E"),
        ({"source": {"R_sersic": {"uniform": [-0.2, 0.3]}}}, "source.R_sersic"),
        ({"source": {"R_sersic": {"gaussian": [0.2, 0.1]}}}, "source.R_sersic"),
        ({"instrument": {"name": "Hubble"}}, "instrument.name"),
        ({"instrument": {"bands": ["Q"]}}, "band 'Q'"),
        ({"splits": {"train": 0.9}}, "splits"),
        ({"classes": ["no_sub", "sidm"]}, "classes"),
        ({"substructure": {"engine": "pyhalo"}}, "substructure.engine"),
        ({"substructure": {"profile": "NFW_X"}}, "substructure.profile"),
        ({"substructure": {"m_min": 1e10, "m_max": 1e6}}, "substructure.m_min"),
        ({"image": {"size": 0}}, "image.size"),
        ({"cosmology": {"z_source": 0.3}}, "cosmology.z_source"),
    ],
)
def test_bad_configs_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(LensnetError, match=field.replace(".", r"\.")):
        resolve_dataset_config("model_ii", overrides)


def test_lens_finding_config_errors() -> None:
    with pytest.raises(LensnetError, match="lens_finding.confusers"):
        resolve_dataset_config("lens_finding", {"lens_finding": {"confusers": {"ring": 0.5}}})
    with pytest.raises(LensnetError, match="source.colors.i"):
        resolve_dataset_config("lens_finding", {"source": {"colors": {"i": {"uniform": [0.3, 0.1]}}}})
    with pytest.raises(LensnetError, match="unknown dataset preset"):
        resolve_dataset_config("model_iv")


def test_bytes_are_identical_in_another_process() -> None:
    import hashlib
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import hashlib, numpy as np\n"
        "from lensnet.simulate.presets import resolve_dataset_config\n"
        "from lensnet.simulate.scenes import build_simulator\n"
        "sim = build_simulator(resolve_dataset_config('model_ii', {'image': {'size': 24, 'supersampling': 1}}))\n"
        "h = hashlib.sha256()\n"
        "for label in range(3):\n"
        "    h.update(sim.simulate(label, np.random.default_rng([9, label]))[0]['image'].tobytes())\n"
        "print(h.hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    sim = build_simulator(small("model_ii"))
    digest = hashlib.sha256()
    for label in range(3):
        digest.update(sim.simulate(label, np.random.default_rng([9, label]))[0]["image"].tobytes())
    assert out.stdout.strip() == digest.hexdigest()


# ---- DeepLense replicas ---------------------------------------------------------------------------------
REPLICAS = ["deeplense_model_i", "deeplense_model_ii", "deeplense_model_iii"]


def deeplense_theta(mass: float) -> float:
    """DeepLenseSim's mass_to_radius, written out independently: LUMINOSITY distances, D_LS = D_S - D_L."""
    from astropy import units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    d_l = cosmo.luminosity_distance(0.5).to(u.m)
    d_s = cosmo.luminosity_distance(1.0).to(u.m)
    return float(np.sqrt(4 * G * mass * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)).decompose().value * 206265)


def test_replicas_listed_and_fixed_macro_model() -> None:
    presets = dict(list_presets())
    for name in REPLICAS:
        assert "REPLICA" in presets[name]
        config = resolve_dataset_config(name)
        assert config["symmetry"] == "rot180" and config["replica"] == name
        sim = build_simulator(resolve_dataset_config(name, {"image": {"size": 16}}))
        drawn = sim._draw_scene(0, rng(0))
        assert drawn.kwargs_lens[0] == {"theta_E": pytest.approx(deeplense_theta(1e12)), "e1": 0.1, "e2": 0.0,
                                        "center_x": 0.0, "center_y": 0.0}
        assert drawn.kwargs_lens[1] == {"gamma1": 0.05, "gamma2": 0.0}
        assert sim.class_names == ["no_sub", "cdm", "axion"]
    assert deeplense_theta(1e12) == pytest.approx(1.2815, abs=1e-4)


def test_replica_subhalo_recipe_is_the_code_not_the_docstring() -> None:
    """25 point masses, p(m) ~ m^-0.9 on [1e6, 1e10], luminosity-distance angles, uniform in radius 0.25-2"."""
    from scipy.stats import kstest

    sim = build_simulator(resolve_dataset_config("deeplense_model_ii", {"image": {"size": 16}}))
    unit = deeplense_theta(1.0) ** 2  # theta^2 per solar mass
    masses, radii, totals = [], [], []
    for seed in range(240):
        drawn = sim._draw_scene(1, rng(seed))
        subs = [k for h in drawn.haloes for k in h.kwargs()]
        assert len(subs) == 25 and drawn.params["n_subhalo"] == 25  # never the Poisson draw
        m = np.array([k["theta_E"] ** 2 / unit for k in subs])
        assert drawn.params["m_sub_total"] == pytest.approx(m.sum(), rel=1e-9)
        masses.append(m)
        radii += [math.hypot(k["center_x"], k["center_y"]) for k in subs]
        totals.append(m.sum())
    m = np.concatenate(masses)
    assert m.min() >= 1e6 * (1 - 1e-9) and m.max() <= 1e10 * (1 + 1e-9)

    def cdf(slope: float):
        p = slope + 1
        return lambda x: (np.asarray(x) ** p - 1e6**p) / (1e10**p - 1e6**p)

    assert kstest(m, cdf(-0.9)).pvalue > 1e-3
    assert kstest(m, cdf(-1.9)).pvalue < 1e-12  # the docstring's slope is not what runs
    # E[sum] = 25 <m> with <m> = (0.1 / 1.1) (1e10^1.1 - 1e6^1.1) / (1e10^0.1 - 1e6^0.1) = 1.51e9
    mean_mass = (0.1 / 1.1) * (1e10**1.1 - 1e6**1.1) / (1e10**0.1 - 1e6**0.1)
    assert np.mean(totals) == pytest.approx(25 * mean_mass, rel=0.1)
    assert np.mean(m > 1e9) * 25 == pytest.approx(8.5, abs=0.7)
    assert kstest(radii, "uniform", args=(0.25, 1.75)).pvalue > 1e-3  # uniform in RADIUS


def test_replica_vortex_is_100_point_masses_over_plus_minus_3e_24_over_m_a() -> None:
    sim = build_simulator(resolve_dataset_config("deeplense_model_i", {"image": {"size": 16}}))
    theta_point = deeplense_theta(3e10 / 100)
    angles, log_m = [], []
    for seed in range(50):
        drawn = sim._draw_scene(2, rng(seed))
        p = drawn.params
        points = [k for h in drawn.haloes for k in h.kwargs()]
        assert len(points) == 100
        assert all(k["theta_E"] == pytest.approx(theta_point, rel=1e-9) for k in points)
        half = 3e-24 / 10 ** p["log10_m_axion"]
        assert p["vortex_half_length"] == pytest.approx(half, rel=1e-9)
        ends = [(points[i]["center_x"], points[i]["center_y"]) for i in (0, -1)]
        assert math.hypot(*ends[0]) == pytest.approx(half, rel=1e-9)
        assert ends[0] == pytest.approx((-ends[1][0], -ends[1][1]), abs=1e-12)  # through the lens centre
        angles.append(p["vortex_angle"])
        log_m.append(p["log10_m_axion"])
    assert max(angles) > math.pi  # angle U(0, 2 pi)
    assert -24 <= min(log_m) < -23.5 and -22.5 < max(log_m) <= -22


def test_replicas_ii_iii_render_noiseless_doubled_and_i_noisy_counts() -> None:
    for name in ("deeplense_model_ii", "deeplense_model_iii"):
        sim = build_simulator(resolve_dataset_config(name, {"image": {"size": 24}}))
        for label in range(3):
            image = sim.simulate(label, rng(5))[0]["image"]
            np.testing.assert_array_equal(image, (2.0 * sim.noiseless(label, rng(5))).astype(np.float32))
        noisy = build_simulator(resolve_dataset_config(name, {"image": {"size": 24}, "noise": {"enabled": True}}))
        assert not np.allclose(noisy.simulate(0, rng(5))[0]["image"], 2.0 * noisy.noiseless(0, rng(5)))

    sim = build_simulator(resolve_dataset_config("deeplense_model_i", {"image": {"size": 40}}))
    ratios = []
    for seed in range(30):
        images, p = sim.simulate(0, rng(seed))
        counts = images["image"][..., 0].astype(np.float64)
        model = sim.noiseless(0, rng(seed))[..., 0]
        t = p["exposure_time"]
        assert np.all(counts == np.round(counts)) and counts.min() >= 0  # Poisson counts
        bright = model > 0.05
        # shot noise applied twice: Var = 2 t model + (t sigma_bkg)^2, not t model + ...
        var = 2 * t * model[bright] + (t * 0.01) ** 2
        ratios.append(np.mean((counts[bright] - t * model[bright]) ** 2 / var))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lens": {"theta_E": 1.5}}, "lens.theta_E"),
        ({"substructure": {"slope": -1.9}}, "substructure.slope"),
        ({"substructure": {"count": "poisson"}}, "substructure.count"),
        ({"cosmology": {"mass_to_angle": "angular_diameter"}}, "cosmology.mass_to_angle"),
        ({"axion": {"n_points": 50}}, "axion.n_points"),
        ({"symmetry": "d4"}, "symmetry"),
        ({"classes": ["no_sub", "sidm"]}, "classes"),
    ],
)
def test_replica_refuses_what_it_cannot_honour(overrides: dict, field: str) -> None:
    with pytest.raises(LensnetError, match=field.replace(".", r"\.")) as info:
        resolve_dataset_config("deeplense_model_ii", overrides)
    assert "\n" not in str(info.value)


def test_replica_accepts_its_free_options() -> None:
    config = resolve_dataset_config("deeplense_model_ii", {"noise": {"enabled": True}, "image": {"size": 32},
                                                           "classes": ["no_sub", "cdm"], "num": 10})
    assert config["noise"]["enabled"] and config["image"]["size"] == 32


# ---- physical presets: substructure by mass fraction ------------------------------------------------------


def test_subhalo_count_follows_f_sub() -> None:
    """Counts scale with the request and are Poisson; the realised label's median is tested in test_labels.py."""
    sims = {f: build_simulator(small("model_ii", substructure={"f_sub": f, "m_min": 1e8})) for f in (0.01, 0.04)}
    counts = {f: [sim._draw_scene(1, rng(seed)).params["n_subhalo"] for seed in range(300)] for f, sim in sims.items()}
    assert 3.0 < np.mean(counts[0.04]) / np.mean(counts[0.01]) < 6.0  # above 4: the median sits below the mean
    for c in counts.values():
        assert np.var(c) >= 0.8 * np.mean(c)  # Poisson at a theta_E-dependent mean: at least Poisson scatter
    drawn = [sims[0.04]._draw_scene(1, rng(seed)).params for seed in range(5)]
    assert all(p["f_sub_drawn"] == 0.04 for p in drawn)


def test_physical_preset_effective_einstein_radius_does_not_separate_classes() -> None:
    """Mass taken out of the smooth lens: ring size and flux look alike in every class (KS, small sample)."""
    from scipy.stats import ks_2samp

    from lensnet.data.audit import IMAGE_STATISTICS, image_statistics

    def stats(config: dict) -> list[np.ndarray]:
        sim = build_simulator(config)
        # the same 60 macro scenes per class (paired seeds) make the comparison sharp
        return [image_statistics(np.stack([sim.simulate(label, rng(seed))[0]["image"] for seed in range(60)]))
                for label in range(3)]

    lumpy = {"f_sub": 0.05, "m_min": 1e9}  # the strongest substructure of the prior, heaviest haloes
    physical = stats(small("model_ii", image={"size": 32, "supersampling": 1}, substructure=lumpy, **QUIET))
    added = stats(small("model_ii", image={"size": 32, "supersampling": 1},
                        substructure={**lumpy, "subtract_from_macro": False}, **QUIET))
    ring = IMAGE_STATISTICS.index("ring_radius")
    for label in (1, 2):
        for k in range(len(IMAGE_STATISTICS)):
            assert ks_2samp(physical[0][:, k], physical[label][:, k]).pvalue > 1e-3
        # paired: with the mass added, the ring of the same scene grows; with it subtracted, it does not
        grow_added = np.median(added[label][:, ring] - added[0][:, ring])
        grow_physical = np.median(physical[label][:, ring] - physical[0][:, ring])
        assert grow_added > 3 * abs(grow_physical) and grow_added > 0.05


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"m_min": 1e10, "m_max": 1e10}, "substructure.m_min"),
        ({"f_sub": {"uniform": [0.5, 1.2]}}, "substructure.f_sub"),
        ({"f_sub": -0.01}, "substructure.f_sub"),
        ({"f_sub": 1.0}, "substructure.f_sub"),
        ({"m_min": -5.0}, "substructure.m_min"),
        ({"normalisation": "mass"}, "substructure.normalisation"),
        ({"placement": "ring"}, "substructure.placement"),
        ({"radius": {"normal": [1.0, 0.3]}}, "substructure.radius"),
    ],
)
def test_bad_population_parameters_are_one_line_errors(overrides: dict, field: str) -> None:
    with pytest.raises(LensnetError, match=field.replace(".", r"\.")) as info:
        resolve_dataset_config("model_ii", {"substructure": overrides})
    assert "\n" not in str(info.value)


# ---- the augmentation a fixed macro model keeps -----------------------------------------------------------


def test_replica_macro_model_keeps_flips_but_not_quarter_turns() -> None:
    from lenstronomy.LensModel.lens_model import LensModel

    kwargs = build_simulator(resolve_dataset_config("deeplense_model_ii", {"image": {"size": 16}})) \
        ._draw_scene(0, rng(0)).kwargs_lens[:2]
    lens = LensModel(["SIE", "SHEAR"])
    x, y = rng(1).uniform(-2, 2, (2, 200))
    psi = lens.potential(x, y, kwargs)
    for fx, fy in ((-x, y), (x, -y), (-x, -y)):  # flip x, flip y, rotation by 180 degrees
        np.testing.assert_allclose(lens.potential(fx, fy, kwargs), psi, rtol=1e-9, atol=1e-12)
    assert np.max(np.abs(lens.potential(-y, x, kwargs) - psi)) > 1e-2  # a quarter turn changes the lens


def test_flips_augmentation_is_the_four_element_group_and_none_is_accepted() -> None:
    import tensorflow as tf

    from lensnet.data.augment import augment_batch, check_augment, flips_transforms, normalise_augment
    from lensnet.training.config import resolve_fit_config

    image = rng(0).standard_normal((12, 12, 1)).astype(np.float32)
    batch = tf.constant(np.repeat(image[None], 64, axis=0))
    out = augment_batch({"image": batch}, "flips", tf.constant([5, 6], tf.int64))["image"].numpy()
    again = augment_batch({"image": batch}, "flips", tf.constant([5, 6], tf.int64))["image"].numpy()
    np.testing.assert_array_equal(out, again)  # stateless: the seed decides
    views = flips_transforms(image)
    used = {next(k for k, v in enumerate(views) if np.array_equal(v, o)) for o in out}  # never a transpose
    assert used == {0, 1, 2, 3}
    assert check_augment("flips", {"image": (16, 12, 1)}) == "flips"  # no square needed
    assert check_augment("none", {"image": (16, 16, 1)}) is None and normalise_augment(None) is None
    with pytest.raises(LensnetError, match="data.augment"):
        normalise_augment("rot90")
    for value in ("none", None):
        assert resolve_fit_config("substructure", overrides={"data": {"augment": value}})["data"]["augment"] is None
    assert resolve_fit_config("substructure", overrides={"data": {"augment": "flips"}})["data"]["augment"] == "flips"


def test_replica_signal_is_far_stronger_than_the_physical_preset() -> None:
    from lensnet.core.errors import run_cli
    from lensnet.simulate.strength import measure
    from lensnet.strength import main

    tiny = {"image": {"size": 32}}
    replica = measure("deeplense_model_ii", 12, 0, tiny)
    physical = measure("model_ii", 12, 0, {"image": {"size": 32, "supersampling": 1}})
    assert "chi2" not in replica["no_sub"] and replica["cdm"]["images_per_s"] > 0
    # measured 5.9e3 vs 2.0e3 at 32 px: the corrected replica (multi-plane deflections 0.63x, Euclid zero
    # point 24.0) is far weaker than the single-plane one was (1.0e5), yet still stronger than model_ii
    assert replica["cdm"]["chi2"][1] > 2 * physical["cdm"]["chi2"][1] > 0
    assert run_cli(main, ["--dataset", "model_ii", "--num", "0"]) == 2


@pytest.mark.parametrize("label", [0, 1, 2])
def test_rot180_maps_a_replica_scene_onto_one_it_draws_and_a_flip_does_not(label: int) -> None:
    """A 180-degree rotation of a replica image is the image of the scene with every position negated, which the
    replica's priors draw (symmetric source-position prior, uniform subhalo angles, a vortex through the centre);
    a flip is the image of a scene whose source has e2 = -0.1, which the replica never draws (e2 fixed at +0.1)."""
    import dataclasses

    sim = build_simulator(resolve_dataset_config("deeplense_model_ii", {"image": {"size": 32}}))
    assert sim.config["symmetry"] == "rot180"
    source_e2 = sim.config["source"]["e2"]
    assert source_e2 == 0.1
    d = sim.draw_scene(label, rng(7))
    renderer = sim.renderers[0]

    def render(sign_x: float, sign_y: float, e2: float) -> np.ndarray:
        lens = [{**d.kwargs_lens[0], "center_x": sign_x * d.kwargs_lens[0]["center_x"],
                 "center_y": sign_y * d.kwargs_lens[0]["center_y"]}, dict(d.kwargs_lens[1])]
        source = {**d.kwargs_source[0], "e2": e2, "center_x": sign_x * d.kwargs_source[0]["center_x"],
                  "center_y": sign_y * d.kwargs_source[0]["center_y"]}
        haloes = tuple(dataclasses.replace(h, x=sign_x * h.x, y=sign_y * h.y) for h in d.haloes)
        return renderer.image(lens, haloes, source, d.kwargs_light[0])

    image = render(1.0, 1.0, source_e2)
    peak = float(np.abs(image).max())
    assert d.kwargs_lens[0]["e2"] == 0 and d.kwargs_lens[1]["gamma2"] == 0  # the lens keeps every flip
    # rotation by 180 degrees: positions negated, every ellipticity and shear component unchanged
    np.testing.assert_allclose(image[::-1, ::-1], render(-1.0, -1.0, source_e2), atol=1e-4 * peak)
    # flip x: positions mirrored AND the source's e2 negated, a source the replica does not draw
    np.testing.assert_allclose(image[:, ::-1], render(-1.0, 1.0, -source_e2), atol=1e-4 * peak)
    assert np.abs(image[:, ::-1] - render(-1.0, 1.0, source_e2)).max() > 0.05 * peak


def test_rot180_augmentation_is_the_two_element_group() -> None:
    import tensorflow as tf

    from lensnet.data.augment import AUGMENTATIONS, augment_batch, check_augment, group_transforms

    assert "rot180" in AUGMENTATIONS
    image = rng(0).standard_normal((12, 10, 1)).astype(np.float32)
    batch = tf.constant(np.repeat(image[None], 64, axis=0))
    out = augment_batch({"image": batch}, "rot180", tf.constant([5, 6], tf.int64))["image"].numpy()
    views = group_transforms(image, "rot180")
    assert len(views) == 2 and np.array_equal(views[1], image[::-1, ::-1])
    used = [next(k for k, v in enumerate(views) if np.array_equal(v, o)) for o in out]
    assert set(used) == {0, 1}
    assert check_augment("rot180", {"image": (16, 12, 1)}) == "rot180"  # no square needed
    for name in ("deeplense_model_i", "deeplense_model_ii", "deeplense_model_iii"):
        assert resolve_dataset_config(name)["symmetry"] == "rot180"
