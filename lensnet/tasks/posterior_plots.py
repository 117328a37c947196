"""Calibration figures of posterior samples: SBC rank histograms, coverage curves, z-score vs contraction,
posterior means against the truth. Inputs: truth (N, D) and samples (N, S, D), finite, one column per name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from lensnet.tasks.plots import plt


def _panels(n: int, width: float = 3.2, height: float = 2.8) -> tuple:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def rank_figure(truth: np.ndarray, samples: np.ndarray, names: Sequence[str], bins: int = 20) -> plt.Figure:
    """Histogram of SBC rank fractions per parameter, with the 99% band of a uniform histogram."""
    u = np.mean(samples < truth[:, None, :], axis=1)
    n = len(u)
    expected = n / bins
    low, high = stats.binom.ppf([0.005, 0.995], n, 1.0 / bins)
    fig, axes = _panels(len(names))
    for d, (ax, name) in enumerate(zip(axes, names)):
        ax.axhspan(low, high, color="grey", alpha=0.25, lw=0)
        ax.axhline(expected, color="grey", lw=0.8)
        ax.hist(u[:, d], bins=bins, range=(0, 1), color="C0", alpha=0.8)
        p = stats.kstest(u[:, d], "uniform").pvalue
        ax.set(title=f"{name} (KS p {p:.2g})", xlabel="rank fraction", ylabel="lenses" if d == 0 else None)
    fig.suptitle(f"SBC ranks of {n} held-out lenses (grey: 99% band of uniform)", fontsize=9)
    fig.tight_layout()
    return fig


def coverage_figure(truth: np.ndarray, samples: np.ndarray, names: Sequence[str]) -> plt.Figure:
    """Empirical coverage of central credible intervals against their level, per parameter, with a 95% band."""
    u = np.mean(samples < truth[:, None, :], axis=1)
    levels = np.linspace(0.0, 1.0, 101)
    n = len(u)
    band = 1.96 * np.sqrt(levels * (1 - levels) / max(n, 1))
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.fill_between(levels, levels - band, levels + band, color="grey", alpha=0.25, lw=0)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for d, name in enumerate(names):
        covered = [np.mean(np.abs(u[:, d] - 0.5) <= level / 2) for level in levels]
        ax.plot(levels, covered, label=name)
    for level in (0.5, 0.68, 0.95):
        ax.axvline(level, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="credible level", ylabel="fraction of truths inside", xlim=(0, 1), ylim=(0, 1),
           title=f"Expected coverage ({n} lenses)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def zscore_figure(truth: np.ndarray, samples: np.ndarray, prior_std: np.ndarray,
                  names: Sequence[str]) -> plt.Figure:
    """Posterior z-score against contraction per lens (Schad et al. 2021): good posteriors sit at
    contraction near 1 and |z| mostly below 2."""
    mean, std = samples.mean(axis=1), samples.std(axis=1)
    z = (mean - truth) / np.maximum(std, 1e-300)
    contraction = 1.0 - std**2 / prior_std**2
    fig, axes = _panels(len(names))
    for d, (ax, name) in enumerate(zip(axes, names)):
        ax.scatter(contraction[:, d], z[:, d], s=4, alpha=0.5)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=name, xlabel="posterior contraction", ylabel="posterior z-score" if d == 0 else None,
               xlim=(min(0.0, float(contraction[:, d].min())), 1.0))
    fig.tight_layout()
    return fig


def recovery_figure(truth: np.ndarray, samples: np.ndarray, names: Sequence[str], max_points: int = 300) -> plt.Figure:
    """Posterior median with its 68% interval against the truth, per parameter."""
    q16, q50, q84 = np.quantile(samples[:max_points], [0.16, 0.5, 0.84], axis=1)
    t = truth[:max_points]
    fig, axes = _panels(len(names))
    for d, (ax, name) in enumerate(zip(axes, names)):
        ax.errorbar(t[:, d], q50[:, d], yerr=[q50[:, d] - q16[:, d], q84[:, d] - q50[:, d]], fmt="o", ms=2,
                    lw=0.6, alpha=0.6)
        lo, hi = float(np.min(t[:, d])), float(np.max(t[:, d]))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set(title=name, xlabel="true", ylabel="posterior median (68%)" if d == 0 else None)
    fig.tight_layout()
    return fig
