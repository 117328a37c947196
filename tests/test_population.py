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
    truth, _, samples = toy_posteriors(5000, 1.0, 1.0, rng, s=256)  # lenses drawn from the interim prior
    pool = draw_population(truth, prior, 0.6, 0.4, seed=3)
    assert abs(truth[pool].mean() - 0.6) < 0.04 and abs(truth[pool].std() - 0.4) < 0.04
    means = mean_grid(prior, 400, samples[pool], 10)
    rows = forecast(lens_log_likelihoods(samples[pool], prior, means, 0.4), means, 0.6, [10, 100], 200, seed=0)
    for row in rows:
        assert abs(row["coverage_68"] - 0.68) < 0.1 and abs(row["coverage_95"] - 0.95) < 0.06
    expected = np.sqrt((0.4**2 + 1 / K) / np.array([10, 100]))
    np.testing.assert_allclose([r["posterior_std"] for r in rows], expected, rtol=0.15)


def test_population_outside_the_prior_is_refused() -> None:
    prior = parse_prior({"uniform": [0.005, 0.05]}, "f_sub")
    check_population(prior, 0.02, 0.005, "f_sub")
    with pytest.raises(LensnetError, match="outside"):
        check_population(prior, 0.08, 0.005, "f_sub")
    with pytest.raises(LensnetError, match="width"):
        check_population(prior, 0.02, 0.0, "f_sub")
