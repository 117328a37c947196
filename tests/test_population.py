"""Hierarchical combination of per-lens posteriors (lensnet.studies.population) on the conjugate toy problem,
where the population posterior is known exactly: it recovers the population mean with the right width, and
its intervals cover the truth as often as they claim. Priors' densities integrate to one."""

from __future__ import annotations

import numpy as np
import pytest

from lensnet.core.errors import LensnetError
from lensnet.simulate.priors import parse_prior
from lensnet.studies.population import (
    check_population,
    draw_population,
    forecast,
    hyper_posterior,
    lens_log_likelihoods,
    mean_grid,
)

K = 15.9  # the toy's data precision sum(g^2) / sigma^2 (tests/test_posterior.py TOY): posterior std 0.243


def toy_posteriors(n: int, mean: float, width: float, rng: np.random.Generator, s: int = 512):
    """n lenses A ~ N(mean, width); each one's exact posterior samples under the interim prior N(1, 1)."""
    amplitude = mean + width * rng.standard_normal(n)
    x = amplitude + rng.standard_normal(n) / np.sqrt(K)  # the sufficient statistic of each image
    post_mean, post_std = (1.0 + K * x) / (1.0 + K), (1.0 + K) ** -0.5
    return amplitude, x, post_mean[:, None] + post_std * rng.standard_normal((n, s))


def test_recovers_the_population_mean_with_the_exact_width() -> None:
    """x_i ~ N(mu, tau^2 + 1/K) exactly, so p(mu | x) = N(mean(x), (tau^2 + 1/K) / N) under a flat prior."""
    prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
    rng = np.random.default_rng(0)
    _, x, samples = toy_posteriors(300, 1.5, 0.3, rng)
    means = mean_grid(prior, 800, samples, len(samples))
    post = hyper_posterior(lens_log_likelihoods(samples, prior, means, 0.3).sum(axis=0), means, 1.5)
    exact_mean, exact_std = x.mean(), np.sqrt((0.3**2 + 1 / K) / len(x))
    assert abs(post["mean"] - exact_mean) < 0.15 * exact_std
    assert post["std"] == pytest.approx(exact_std, rel=0.1)
    assert post["covered95"]


def test_intervals_cover_as_claimed_over_repeats() -> None:
    prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
    rng = np.random.default_rng(1)
    truth, _, samples = toy_posteriors(10000, 1.0, 1.0, rng, s=128)  # lenses drawn from the interim prior
    pool = draw_population(truth, prior, 0.6, 0.4, seed=3)
    assert abs(truth[pool].mean() - 0.6) < 0.04 and abs(truth[pool].std() - 0.4) < 0.04
    means = mean_grid(prior, 400, samples[pool], 10)
    rows = forecast(lens_log_likelihoods(samples[pool], prior, means, 0.4), means, 0.6, [10, 30], 120, seed=0)
    for row in rows:
        assert row["repeats"] == 120
        assert abs(row["coverage_68"] - 0.68) < 0.1 and abs(row["coverage_95"] - 0.95) < 0.06
    expected = np.sqrt((0.4**2 + 1 / K) / np.array([10, 30]))
    np.testing.assert_allclose([r["posterior_std"] for r in rows], expected, rtol=0.15)


def test_repeats_share_no_lens() -> None:
    """Repeats that share lenses are one draw, not many: 50 draws of 1,000 from a pool of 1,110 all sat at the
    pool's realised mean (the toy bench's 68% coverage 0.00 at N = 1000, 1.00 with exact posteriors). A pool of
    250 holds two disjoint draws of 100; the rows say so, and each repeat's posterior is that of its own lenses."""
    prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
    _, _, samples = toy_posteriors(250, 1.3, 0.4, np.random.default_rng(4), s=64)
    means = mean_grid(prior, 200, samples, 10)
    lens_ll = lens_log_likelihoods(samples, prior, means, 0.4)
    rows = forecast(lens_ll, means, 1.3, [10, 100, 250], 50, seed=0)
    assert [r["repeats"] for r in rows] == [25, 2, 1]
    whole = hyper_posterior(lens_ll.sum(axis=0), means, 1.3)  # N = the pool: one draw, whatever the repeats
    assert rows[2]["posterior_std"] == pytest.approx(whole["std"])
    assert rows[2]["coverage_68"] == float(whole["covered68"])


def test_exact_posteriors_show_no_tilt() -> None:
    """Exact posteriors average to the interim prior: the consistency check must not call its noise at the grid's
    edges (few lenses carry the mean there) a tilt. It did: bias_dominates_above_n 15 on 3,000 toy lenses, which
    marked every forecast row from N = 30 `tilt_dominated` for a correct NPE."""
    from lensnet.studies.population import interim_consistency

    prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
    truth, _, samples = toy_posteriors(3000, 1.0, 1.0, np.random.default_rng(5), s=128)
    pool = draw_population(truth, prior, 1.3, 0.4, seed=0)
    means = mean_grid(prior, 300, samples[pool], 10)
    check = interim_consistency(lens_log_likelihoods(samples, prior, means, 0.4), means)
    assert not check["failed"]
    assert check["bias_dominates_above_n"] is None or check["bias_dominates_above_n"] > 1000, check


def test_a_posterior_mean_error_where_the_population_lives_is_measured_and_flagged() -> None:
    """The toy NPE's per-lens means were off by +0.02 (0.09 posterior std) at A in [1, 2] and about 0 on average
    over the prior: SBC, coverage and the interim consistency passed, and 1,000 lenses of a population at 1.31
    summed it into a 2-std bias. The check weighs truth - mean by the population at the posterior mean: zero for
    exact posteriors, the error (and the shift it causes) for a biased one, and rows narrower than the shift lose
    their detection."""
    from lensnet.studies.population import flag_mean_error, mean_error_check

    prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
    truth, _, samples = toy_posteriors(6000, 1.0, 1.0, np.random.default_rng(6), s=64)
    exact = mean_error_check(truth, samples, prior, 1.3, 0.4, contraction=K / (1 + K))
    assert not exact["significant"] and abs(exact["shift"]) < 3 * exact["shift_standard_error"], exact
    bump = 0.05 * np.exp(-0.5 * ((samples.mean(axis=1) - 1.5) / 0.5) ** 2)  # an error that depends on A
    biased = mean_error_check(truth, samples + bump[:, None], prior, 1.3, 0.4, contraction=K / (1 + K))
    assert biased["significant"] and 0.02 < biased["shift"] < 0.06, biased
    rows = [{"n_lenses": n, "posterior_std": std, "detection_sigma": 5.0} for n, std in ((10, 0.15), (1000, 0.015))]
    dominated, unverified = flag_mean_error(rows, biased)
    assert dominated == [1000] and rows[1]["detection_sigma"] is None and rows[0]["detection_sigma"] == 5.0
    assert unverified == ([1000] if 0.015 < 2 * biased["shift_standard_error"] else [])
    assert flag_mean_error(rows, exact)[0] == []
    # a weakly informative posterior (contraction 0.05, as f_sub on model_ii): -error / contraction is no shift
    # of the population mean (its posterior mean is mostly the prior's); the interim consistency covers it
    weak = mean_error_check(truth, samples + bump[:, None], prior, 1.3, 0.4, contraction=0.05)
    assert weak["shift"] is None and flag_mean_error(rows, weak) == ([], [])


def test_population_outside_the_prior_is_refused() -> None:
    prior = parse_prior({"uniform": [0.005, 0.05]}, "f_sub")
    check_population(prior, 0.02, 0.005, "f_sub")
    with pytest.raises(LensnetError, match="outside"):
        check_population(prior, 0.08, 0.005, "f_sub")
    with pytest.raises(LensnetError, match="width"):
        check_population(prior, 0.02, 0.0, "f_sub")


LOG_UNIFORM = {"log_uniform": [0.005, 0.05]}  # model_ii's prior of f_sub


def identity_flow_samples(n: int, spec: dict, s: int = 512) -> np.ndarray:
    """(n, s) what an uninformative flow returns through the prior transform: the stored base points mapped to
    physical units, the same for every lens (the posterior equals the prior)."""
    from lensnet.tasks.posterior import base_draws, flow_transform, from_flow_space

    z = base_draws(s, 2, seed=0)[:, 0]
    one = np.asarray(from_flow_space(z, flow_transform(spec, 0.0, 1.0)), dtype=np.float64)
    return np.broadcast_to(one, (n, s))


def test_a_posterior_equal_to_the_prior_gives_a_population_posterior_that_does_not_narrow() -> None:
    """Images that carry no information: each lens's posterior is the interim prior, so the population posterior
    must stay as wide as the grid at every N (no spurious constraint), hold the truth, pass the per-lens checks
    and state no detection."""
    from lensnet.studies.population import per_lens_checks

    prior = parse_prior(LOG_UNIFORM, "f_sub")
    truth = np.random.default_rng(2).random(2000)
    truth = 0.005 * 10.0 ** truth  # log-uniform draws on [0.005, 0.05]
    samples = identity_flow_samples(len(truth), LOG_UNIFORM, s=256)
    assert samples.min() >= 0.005 and samples.max() <= 0.05
    pool = draw_population(truth, prior, 0.02, 0.01, seed=0)
    means = mean_grid(prior, 200, samples[pool], 10)
    lens_ll = lens_log_likelihoods(samples, prior, means, 0.01)
    checks = per_lens_checks(truth, samples, prior, lens_ll, means)
    assert checks["passed"], checks["failures"]
    rows = forecast(lens_ll[pool], means, 0.02, [10, 100, 500], 30, seed=0, floor=0.005)
    flat = (means[-1] - means[0]) / np.sqrt(12)
    for row in rows:
        assert row["posterior_std"] == pytest.approx(flat, rel=0.05), row
        assert row["coverage_68"] > 0.9 and row["detection_sigma"] is None


def test_a_flow_whose_posteriors_do_not_average_to_the_prior_fails_the_checks() -> None:
    """The failure measured on model_ii (304 steps): for every image the flow returns about a normal with the
    prior's mean and std (contraction ~0, 12% of the mass outside [0.005, 0.05]). Its per-lens likelihoods of
    the population mean are all tilted the same way, so the combination narrows with N around a wrong value;
    the checks must name it."""
    from lensnet.studies.population import debiased, flag_tilted, lens_ess, per_lens_checks

    prior = parse_prior(LOG_UNIFORM, "f_sub")
    rng = np.random.default_rng(3)
    truth = 0.005 * 10.0 ** rng.random(1500)
    samples = 0.0196 + 0.0124 * rng.standard_normal((len(truth), 256))
    pool = draw_population(truth, prior, 0.02, 0.01, seed=0)
    means = mean_grid(prior, 200, samples[pool], 10)
    lens_ll = lens_log_likelihoods(samples, prior, means, 0.01)
    rows = forecast(lens_ll[pool], means, 0.02, [10, 100], 30, seed=0)
    assert rows[1]["posterior_std"] < 0.5 * rows[0]["posterior_std"] and rows[1]["coverage_68"] < 0.3  # the trap
    checks = per_lens_checks(truth, samples, prior, lens_ll, means)
    assert not checks["passed"]
    assert any("outside the interim prior's support" in f for f in checks["failures"])
    assert any("average to" in f for f in checks["failures"]) and checks["interim_consistency"]["failed"]
    assert checks["interim_consistency"]["bias_dominates_above_n"] < 10
    assert flag_tilted(rows, checks["interim_consistency"]["bias_dominates_above_n"]) == [10, 100]
    assert rows[1]["tilt_dominated"] and rows[1]["detection_sigma"] is None
    ess = lens_ess(samples[pool], prior, 0.02, 0.01)
    assert ess.shape == (len(pool),) and np.all((ess > 0) & (ess <= 256))
    # --debias divides the shared tilt out: the population posterior of these uninformative lenses stays wide
    rows = forecast(debiased(lens_ll[pool], lens_ll), means, 0.02, [10, 100], 30, seed=0)
    flat = (means[-1] - means[0]) / np.sqrt(12)
    assert rows[1]["posterior_std"] > 0.7 * flat and rows[1]["coverage_68"] > 0.8, rows


def test_bench_held_out_count_must_be_positive(tmp_path, capsys) -> None:
    from lensnet.bench.__main__ import main
    from lensnet.core.errors import run_cli

    assert run_cli(main, ["posterior", "--held-out-num", "0", "--runs-dir", str(tmp_path / "b")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--held-out-num" in lines[0]
    assert not (tmp_path / "b").exists()
