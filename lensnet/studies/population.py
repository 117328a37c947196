"""Population inference from per-lens posteriors: how many lenses constrain a population's mean?

A posterior run (`--task posterior`) was trained on lenses whose parameters follow the dataset's prior,
the INTERIM prior p_int(theta) (the NPE prior: its YAML spec is in the run's task_state). A population
with hyper-parameters Omega draws theta ~ p(theta | Omega); given N lenses, the hierarchical posterior of
Omega (Wagner-Carena et al. 2021, 2023) reweights each lens's NPE samples from the interim prior to the
population:

    p(Omega | d_1..N) ∝ p(Omega) prod_i (1/S) sum_s p(theta_is | Omega) / p_int(theta_is)

The population here is a normal of unknown mean mu and known width tau, truncated to the interim prior's
support; mu has a flat hyper-prior on a grid inside that support, around the lenses (`mean_grid`). The N
lenses of a population are drawn from the held-out split by rejection sampling on their TRUE parameter
(accept with probability proportional to p(theta | mu*, tau) / p_int(theta)), so no new simulation is
needed and the truth mu* is known.
Repeating the draw R times per N, on disjoint sets of lenses (repeats that share lenses are not independent),
gives the forecast: the hyper-posterior's width and how often its 68% and 95% intervals hold mu*. Everything
lands in runs/studies/<name>/: population.json, forecast.csv, forecast.png.

The combination is only as good as the per-lens posteriors, and N lenses multiply any error they share:
a flow whose posterior of an uninformative image is not the interim prior (wider, another shape, mass
outside the support) gives every lens the same tilted likelihood of mu, and the population posterior
then narrows with N around a wrong value. So before stating anything the study checks, on ALL scored
held-out lenses (drawn from the interim prior), `per_lens_checks`:
- SBC (KS p >= 0.01) and coverage of 50/68/95% intervals (off by no more than the task's tolerance, or
  3 binomial std of the number of lenses);
- the share of samples outside the interim prior's support (<= 1%);
- interim consistency: for lenses drawn from p_int, E_d[q(theta | d)] = p_int(theta) for a correct NPE,
  so the mean over lenses of each lens's likelihood L_i(mu) must be 1 at every mu; where it is not, its
  logarithm is the bias every lens adds to log p(mu | d), and `bias_dominates_above_n` is the N at which
  that bias reaches one unit of log-likelihood across the grid;
- the effective sample size of each lens's importance weights at the true mean (reported).
A failed check is reported (`per_lens.failures`, printed as warnings) and no detection is stated
(`detection_sigma` empty).

`debias` (--debias) divides each lens's L_i(mu) by that mean over the held-out lenses, m(mu): exact when
the per-lens posteriors carry no information (their population posterior is then flat, as it must be),
a first-order correction when they carry little, and no change for a correct NPE (m = 1). It does not
make a failed check pass: the checks are of the uncorrected posteriors.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, ndtr

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json, write_text
from lensnet.simulate.priors import Prior, inverse_cdf, log_density, parse_prior

DEFAULT_SIZES = (10, 30, 100, 300, 1000)
SBC_MIN_P = 0.01  # per-lens SBC rank fractions: KS p below this fails the check
OUTSIDE_MAX = 0.01  # share of posterior samples outside the interim prior's support that fails the check
CONSISTENCY_MIN = 0.05  # |mean_i L_i(mu) - 1| above this (and 3 standard errors) fails the check
INFORMATIVE = 3.0  # a detection is stated only if the hyper-posterior is this many times narrower than the grid
NORMAL_GRID_REACH = 5.0  # a normal interim prior's grid of mu spans its mean +- this many sigma
# Below this contraction the posterior mean is mostly the prior's, -error / contraction no longer describes the
# shift of the population mean, and the interim consistency is the check that sees an error all lenses share.
MEAN_CHECK_MIN_CONTRACTION = 0.5


@dataclass(frozen=True)
class PopulationSpec:
    run: str  # a finished --task posterior run
    target: str  # one of the run's targets
    mean: float  # the population's true mean mu*
    width: float  # the population's width tau (known)
    data: str | None = None  # dataset of the held-out lenses (default: the run's own)
    split: str = "test"
    sizes: tuple[int, ...] | None = None  # N values; None = DEFAULT_SIZES capped at the lenses available
    repeats: int = 50
    grid: int = 1000
    seed: int = 0
    debias: bool = False  # divide every lens's likelihood by its mean over the held-out lenses (docstring)


def parse_sizes(text: str) -> tuple[int, ...]:
    """--n "10,30,100" -> (10, 30, 100)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise LensnetError(f"--n must be comma-separated lens counts, got {text!r}") from None


def interim_prior(task_state: dict, target: str) -> Prior:
    """The NPE's prior of `target`, as the run's dataset config states it."""
    entry = (task_state.get("priors") or {}).get(target) or {}
    spec = entry.get("spec")
    if spec is None:
        raise LensnetError(f"target {target!r} has no prior in the run's dataset config (a derived parameter); "
                           "population inference reweights a stated prior: choose a drawn parameter")
    prior = parse_prior(spec, f"prior of {target}")
    if prior.is_constant:
        raise LensnetError(f"target {target!r} is a constant ({spec}) in the run's dataset: nothing to infer")
    return prior


def mean_grid(prior: Prior, size: int, samples: np.ndarray | None = None, fewest: int = 1) -> np.ndarray:
    """The grid of population means: where a population of `fewest` or more of these lenses can put its mean.

    Without `samples`, the interim prior's support (a normal's: mean +- 5 sigma). With them (lens, sample),
    the pooled samples' mean +- 10 of their std / sqrt(fewest), inside that support: the hyper-posterior of
    N lenses is about std / sqrt(N) wide, so the grid resolves it at every N of a forecast.
    """
    if prior.kind == "normal":
        lo, hi = prior.args[0] - NORMAL_GRID_REACH * prior.args[1], prior.args[0] + NORMAL_GRID_REACH * prior.args[1]
    else:
        lo, hi = prior.support()
    if samples is not None:
        centre, spread = float(np.mean(samples)), float(np.std(samples))
        reach = 10.0 * spread / math.sqrt(max(int(fewest), 1))
        lo, hi = max(lo, centre - reach), min(hi, centre + reach)
    return np.linspace(lo, hi, int(size))


def check_population(prior: Prior, mean: float, width: float, target: str) -> None:
    lo, hi = prior.support()
    if not width > 0 or not math.isfinite(width):
        raise LensnetError(f"--width must be a positive number, got {width}")
    if not lo < mean < hi:
        raise LensnetError(f"--mean {mean:g} of {target} is outside [{lo:g}, {hi:g}], the range the dataset's prior "
                           f"{prior.to_yaml()} samples: its lenses cannot represent that population")


def population_log_pdf(theta: np.ndarray, means: np.ndarray, width: float, prior: Prior) -> np.ndarray:
    """log N(theta; mu, tau) truncated to the interim prior's support, for every mu in `means` (last axis)."""
    lo, hi = prior.support()
    mu = np.asarray(means, dtype=np.float64)
    log_norm = np.log(np.maximum(ndtr((hi - mu) / width) - ndtr((lo - mu) / width), 1e-300))
    theta = np.asarray(theta, dtype=np.float64)[..., None]
    out = -0.5 * ((theta - mu) / width) ** 2 - math.log(width * math.sqrt(2 * math.pi)) - log_norm
    return np.where((theta >= lo) & (theta <= hi), out, -np.inf)


def lens_log_likelihoods(samples: np.ndarray, prior: Prior, means: np.ndarray, width: float,
                         chunk: int = 32) -> np.ndarray:
    """(L, G): log (1/S) sum_s p(theta_s | mu_g, tau) / p_int(theta_s) per lens, per grid mean.

    Samples outside the interim prior's support (where the flow leaks) weigh 0. A population's
    log-likelihood is the sum of its lenses' rows.
    """
    samples = np.asarray(samples, dtype=np.float64)
    out = np.empty((len(samples), len(means)))
    for start in range(0, len(samples), chunk):
        block = samples[start:start + chunk]
        log_int = log_density(prior, block)
        ratio = population_log_pdf(block, means, width, prior) - np.where(np.isfinite(log_int), log_int, np.inf)[
            ..., None]
        out[start:start + chunk] = logsumexp(ratio, axis=1) - math.log(block.shape[1])
    return out


def lens_ess(samples: np.ndarray, prior: Prior, mean: float, width: float) -> np.ndarray:
    """(L,) effective sample size (sum w)^2 / sum w^2 of each lens's importance weights at population mean `mean`."""
    with np.errstate(invalid="ignore"):  # -inf - -inf outside the support: weight 0 below
        log_w = population_log_pdf(samples, np.array([mean]), width, prior)[..., 0] - log_density(prior, samples)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    peak = np.max(log_w, axis=1, keepdims=True)
    w = np.exp(log_w - np.where(np.isfinite(peak), peak, 0.0))
    total = w.sum(axis=1)
    return np.where(total > 0, total**2 / np.maximum((w**2).sum(axis=1), 1e-300), 0.0)


def interim_consistency(lens_ll: np.ndarray, means: np.ndarray) -> dict:
    """Mean over lenses drawn from the interim prior of L_i(mu), per grid mu: 1 everywhere for a correct NPE.

    lens_ll (L, G) from `lens_log_likelihoods` of those lenses. Returns the worst deviation, its standard
    error, and the N above which the deviation's spread over the grid (N log m(mu), counting only what lies
    beyond 3 standard errors of m) exceeds one unit of log-likelihood: populations that large are pulled by
    the per-lens error more than by their data (None: no deviation beyond the noise).
    """
    likelihood = np.exp(lens_ll)  # lens_log_likelihoods is a log-mean of ratios: finite and moderate
    m = likelihood.mean(axis=0)
    se = likelihood.std(axis=0) / math.sqrt(len(likelihood))
    k = int(np.argmax(np.abs(m - 1.0)))
    log_m = np.log(np.maximum(m, 1e-300))
    # Only the part of log m beyond 3 standard errors counts: at the grid's edges few lenses carry the mean, and
    # its noise alone (exact posteriors of the toy: 0.95 +- 0.054 at the edge) made a correct NPE look tilted.
    excess = np.sign(log_m) * np.maximum(np.abs(log_m) - 3 * se / np.maximum(m, 1e-300), 0.0)
    spread = float(np.max(excess) - np.min(excess))
    failed = bool(np.any((np.abs(m - 1.0) > CONSISTENCY_MIN) & (np.abs(m - 1.0) > 3 * se)))
    return {"lenses": int(len(likelihood)), "worst_mean": float(means[k]), "mean_likelihood": float(m[k]),
            "standard_error": float(se[k]), "log_spread": spread,
            "bias_dominates_above_n": float(1.0 / spread) if spread > 0 else None, "failed": failed}


def debiased(lens_ll: np.ndarray, reference_ll: np.ndarray) -> np.ndarray:
    """lens_ll (L, G) divided by m(mu), the mean likelihood of the `reference_ll` lenses (drawn from the interim
    prior) at each grid mu: what a lens that carries no information contributes, which is then exactly 0."""
    return lens_ll - np.log(np.maximum(np.exp(reference_ll).mean(axis=0), 1e-300))


def per_lens_checks(truth: np.ndarray, samples: np.ndarray, prior: Prior, lens_ll: np.ndarray,
                    means: np.ndarray) -> dict:
    """Calibration of the per-lens posteriors of one target on held-out lenses drawn from the interim prior.

    truth (L,), samples (L, S), lens_ll (L, G) of the same lenses. `failures` names every failed check.
    """
    from lensnet.tasks.posterior import COVERAGE_LEVELS, COVERAGE_TOLERANCE, calibration

    lo, hi = prior.support()
    prior_std = float(np.std(inverse_cdf(prior, (np.arange(4096) + 0.5) / 4096)))
    entry = calibration(truth[:, None], samples[:, :, None], np.array([prior_std]), ["target"])["target"]
    outside = float(np.mean((samples < lo) | (samples > hi)))
    consistency = interim_consistency(lens_ll, means)
    failures = []
    if entry["sbc_ks_p"] < SBC_MIN_P:
        failures.append(f"SBC ranks are not uniform (KS p = {entry['sbc_ks_p']:.2g} < {SBC_MIN_P})")
    for level in COVERAGE_LEVELS:
        got = entry[f"coverage_{round(level * 100)}"]
        allowed = max(COVERAGE_TOLERANCE, 3 * math.sqrt(level * (1 - level) / len(truth)))
        if abs(got - level) > allowed:
            failures.append(f"{round(level * 100)}% intervals cover {got:.1%} (allowed {level:.0%} +- {allowed:.3f})")
    if outside > OUTSIDE_MAX:
        failures.append(f"{outside:.1%} of the posterior samples lie outside the interim prior's support "
                        f"[{lo:g}, {hi:g}]")
    if consistency["failed"]:
        failures.append(f"the per-lens likelihoods average to {consistency['mean_likelihood']:.3g} (not 1, standard "
                        f"error {consistency['standard_error']:.2g}) at population mean {consistency['worst_mean']:.4g}"
                        ": the flow's posteriors do not average to the interim prior, and every lens adds the same "
                        "bias to the population posterior")
    return {"lenses": int(len(truth)), **{k: entry[k] for k in ("sbc_ks_p", "coverage_50", "coverage_68",
                                                                  "coverage_95", "contraction", "z_mean", "z_std")},
            "samples_outside_support": outside, "interim_consistency": consistency, "failures": failures,
            "passed": not failures}


def mean_error_check(truth: np.ndarray, samples: np.ndarray, prior: Prior, mean: float, width: float,
                     contraction: float) -> dict:
    """Are the per-lens posterior MEANS unbiased where the population lives? On lenses drawn from the interim
    prior, E[theta - m(d) | m(d)] = 0 for a correct posterior mean m(d), so any weighting by a function of m(d)
    keeps that mean 0; weighting by the population's density ratio at m(d) measures it where the population is.

    SBC, coverage and the interim consistency average over the whole prior and miss an error that depends on the
    parameter (the toy NPE: +0.09 posterior std at A in [1, 2], -0.16 above 2.5, 0.02 on average), while N
    lenses of the population sum it. Returns the weighted mean of theta - m(d) (`error`), its standard error, and
    `shift` = -error / contraction, about the bias of the population mean it causes (exact for a Gaussian
    posterior of a linear model: m = (1 - c) m_0 + c x, and the population mean is estimated from x); None
    below MEAN_CHECK_MIN_CONTRACTION.
    """
    m = samples.mean(axis=1)
    with np.errstate(invalid="ignore"):
        log_w = population_log_pdf(m, np.array([mean]), width, prior)[:, 0] - log_density(prior, m)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    if not np.any(np.isfinite(log_w)):  # no posterior mean inside the population's support: nothing to weigh
        return {"error": None, "standard_error": None, "effective_lenses": 0.0, "significant": False, "shift": None,
                "shift_standard_error": None}
    w = np.exp(log_w - np.max(log_w))
    residual = truth - m
    error = float(np.sum(w * residual) / w.sum())
    se = float(np.sqrt(np.sum(w**2 * (residual - error) ** 2)) / w.sum())
    applies = contraction >= MEAN_CHECK_MIN_CONTRACTION
    return {"error": error, "standard_error": se, "effective_lenses": float(w.sum() ** 2 / np.sum(w**2)),
            "significant": bool(abs(error) > 3 * se), "shift": -error / contraction if applies else None,
            "shift_standard_error": se / contraction if applies else None}


def flag_mean_error(rows: list[dict], check: dict) -> tuple[list[int], list[int]]:
    """Mark rows `mean_error_dominated` (no detection) where a significant per-lens mean error's shift of the
    population mean exceeds the hyper-posterior's std. Returns those N, and the N whose std is below twice the
    shift's standard error: the held-out lenses cannot check the per-lens means at that precision. Nothing for
    posteriors that contract less than MEAN_CHECK_MIN_CONTRACTION (no shift)."""
    applies = check["shift"] is not None
    for row in rows:
        row["mean_error_dominated"] = bool(applies and check["significant"] and row["posterior_std"] < abs(
            check["shift"]))
        if row["mean_error_dominated"]:
            row["detection_sigma"] = None
    return ([r["n_lenses"] for r in rows if r["mean_error_dominated"]],
            [r["n_lenses"] for r in rows if applies and r["posterior_std"] < 2 * check["shift_standard_error"]])


def hyper_posterior(log_likelihood: np.ndarray, means: np.ndarray, truth: float) -> dict:
    """Summary of the posterior of mu on its grid (flat hyper-prior): mean, std, central intervals, coverage."""
    log_post = log_likelihood - np.max(log_likelihood)
    weights = np.exp(log_post)
    weights /= weights.sum()
    mean = float(np.sum(weights * means))
    std = float(np.sqrt(np.sum(weights * (means - mean) ** 2)))
    cdf = np.cumsum(weights)
    out = {"mean": mean, "std": std}
    for level in (68, 95):
        lo = float(np.interp((1 - level / 100) / 2, cdf, means))
        hi = float(np.interp((1 + level / 100) / 2, cdf, means))
        out[f"lo{level}"], out[f"hi{level}"] = lo, hi
        out[f"covered{level}"] = bool(lo <= truth <= hi)
    return out


def draw_population(truth: np.ndarray, prior: Prior, mean: float, width: float, seed: int) -> np.ndarray:
    """Indices of held-out lenses that form a sample of the population (rejection sampling on the truth)."""
    log_accept = population_log_pdf(truth, np.array([mean]), width, prior)[:, 0] - log_density(prior, truth)
    log_accept = np.where(np.isfinite(log_accept), log_accept, -np.inf)
    log_accept -= np.max(log_accept)
    u = np.random.default_rng([seed, 7]).random(len(truth))
    return np.flatnonzero(np.log(np.maximum(u, 1e-300)) < log_accept)


def forecast(lens_ll: np.ndarray, means: np.ndarray, truth_mean: float, sizes: Sequence[int], repeats: int,
             seed: int, floor: float | None = None) -> list[dict]:
    """Per N: the hyper-posterior's mean width and bias, and the coverage of its intervals over `repeats` draws
    of n lenses that share no lens (at most len(lens_ll) // n of them).

    `detection_sigma`: (mean - floor) / std, how far the population mean sits above `floor` (the smallest
    value the interim prior allows: for f_sub the closest it comes to no substructure), when `floor` is given
    and the hyper-posterior is INFORMATIVE times narrower than a flat one over the grid; else None.
    """
    rows = []
    for n in sizes:
        # Disjoint draws: repeats that share lenses share their errors, so their coverages are not independent (50
        # draws of 1,000 from a pool of 1,110 are one draw: they all sit at the pool's realised mean). A pool
        # too small for `repeats` disjoint draws of n gives fewer repeats, and the row says how many.
        order = np.random.default_rng([seed, n]).permutation(len(lens_ll))
        results = [hyper_posterior(lens_ll[order[r * n:(r + 1) * n]].sum(axis=0), means, truth_mean)
                   for r in range(min(repeats, len(lens_ll) // n))]
        mean = np.array([p["mean"] for p in results])
        std = np.array([p["std"] for p in results])
        flat_std = (means[-1] - means[0]) / math.sqrt(12.0)
        informative = floor is not None and float(np.mean(std)) * INFORMATIVE < flat_std
        rows.append({"n_lenses": int(n), "repeats": len(results), "posterior_std": float(np.mean(std)),
                     "bias_over_std": float(np.mean((mean - truth_mean) / std)),
                     "detection_sigma": float(np.mean((mean - floor) / std)) if informative else None,
                     "coverage_68": float(np.mean([p["covered68"] for p in results])),
                     "coverage_95": float(np.mean([p["covered95"] for p in results]))})
    return rows


def flag_tilted(rows: list[dict], dominates: float | None) -> list[int]:
    """Mark forecast rows of N >= `dominates` (bias_dominates_above_n) `tilt_dominated`, without a detection: the
    tilt every per-lens likelihood shares, times N, outweighs one unit of log-likelihood. Returns their N."""
    for row in rows:
        row["tilt_dominated"] = bool(dominates is not None and row["n_lenses"] >= dominates)
        if row["tilt_dominated"]:
            row["detection_sigma"] = None
    return [r["n_lenses"] for r in rows if r["tilt_dominated"]]


def table_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot(rows: list[dict], spec: PopulationSpec, path: Path) -> Path:
    from lensnet.tasks import plots

    n = np.array([r["n_lenses"] for r in rows], dtype=float)
    fig, (left, right) = plots.plt.subplots(1, 2, figsize=(8.4, 3.4))
    std = np.array([r["posterior_std"] for r in rows])
    left.loglog(n, std, "o-", label="hyper-posterior std")
    left.loglog(n, std[0] * np.sqrt(n[0] / n), color="grey", ls="--", lw=0.8, label=r"$\propto 1/\sqrt{N}$")
    left.set(xlabel="lenses N", ylabel=f"std of the population mean of {spec.target}", title="Forecast width")
    left.legend(fontsize=8)
    for level, color in ((68, "C0"), (95, "C1")):
        band = 1.96 * np.sqrt(level / 100 * (1 - level / 100) / np.array([r["repeats"] for r in rows]))
        right.fill_between(n, level / 100 - band, level / 100 + band, color=color, alpha=0.15, lw=0)
        right.semilogx(n, [r[f"coverage_{level}"] for r in rows], "o-", color=color, label=f"{level}% interval")
    right.set(xlabel="lenses N", ylabel="fraction of independent repeats holding the truth", ylim=(0, 1.05),
              title="Calibration of the population posterior")
    right.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return plots.save(fig, path)


def run_population(spec: PopulationSpec, out_dir: Path, log: Callable[[str], None] = print,
                   progress: bool = True) -> dict:
    """Score the held-out lenses with the run, draw populations, combine, forecast; write out_dir/."""
    from lensnet.training.evaluation import open_run_on, predict_split

    if spec.repeats < 1 or spec.grid < 10:
        raise LensnetError(f"--repeats must be >= 1 and --grid >= 10, got {spec.repeats} and {spec.grid}")
    if spec.sizes is not None and (not spec.sizes or min(spec.sizes) < 1):
        raise LensnetError(f"--n must be positive lens counts, got {list(spec.sizes)}")
    run, task, info, model = open_run_on(spec.run, spec.data, spec.split)
    if run.task != "posterior":
        raise LensnetError(f"{spec.run} is a {run.task} run; population inference needs a --task posterior run")
    targets = list(run.task_state["targets"])
    if spec.target not in targets:
        raise LensnetError(f"--target {spec.target!r} is not a target of {spec.run} (targets: {', '.join(targets)})")
    prior = interim_prior(run.task_state, spec.target)
    check_population(prior, spec.mean, spec.width, spec.target)

    if spec.sizes is not None and max(spec.sizes) > info.counts[spec.split]:  # before the scoring, not after it
        raise LensnetError(f"--n {max(spec.sizes)} is larger than the {info.counts[spec.split]} lenses of the "
                           f"{spec.split} split of {info.path}")
    log(f"scoring {info.counts[spec.split]} lenses of {info.path} ({spec.split}) with {spec.run}")
    scored = predict_split(model, task, info, spec.split, run.normalisation, progress=progress)
    column = targets.index(spec.target)
    truth = np.asarray(scored["y_true"], dtype=np.float64)[:, column]
    samples = np.asarray(scored["y_pred"], dtype=np.float64)[:, :, column]
    finite = np.isfinite(truth)
    truth, samples = truth[finite], samples[finite]
    pool = draw_population(truth, prior, spec.mean, spec.width, spec.seed)
    if spec.sizes is None:
        sizes = [n for n in DEFAULT_SIZES if n <= len(pool)] or [len(pool)]
    else:
        sizes = sorted(set(int(n) for n in spec.sizes))
        if sizes[-1] > len(pool):
            raise LensnetError(f"--n {sizes[-1]} is larger than the {len(pool)} lenses of the {spec.split} split "
                               f"({len(truth)} scored) that a population N({spec.mean:g}, {spec.width:g}) draws; "
                               "give a smaller N or a larger held-out set")
    if len(pool) < 2:
        raise LensnetError(f"only {len(pool)} held-out lens(es) fit a population N({spec.mean:g}, {spec.width:g}) of "
                           f"{spec.target}: widen --width or move --mean into the bulk of the prior")
    means = mean_grid(prior, spec.grid, samples[pool], min(sizes))
    all_ll = lens_log_likelihoods(samples, prior, means, spec.width)  # every scored lens: the checks' sample
    checks = per_lens_checks(truth, samples, prior, all_ll, means)
    ess = lens_ess(samples[pool], prior, spec.mean, spec.width)
    checks["ess_at_true_mean"] = {"median": float(np.median(ess)), "p10": float(np.percentile(ess, 10)),
                                  "min": float(np.min(ess)), "of_samples": int(samples.shape[1])}
    lens_ll = all_ll[pool]
    if spec.debias:
        lens_ll = debiased(lens_ll, all_ll)
    usable = np.any(np.isfinite(lens_ll), axis=1)  # a lens whose every sample left the prior's support has none
    floor = prior.support()[0] if checks["passed"] and prior.kind != "normal" else None
    rows = forecast(lens_ll[usable], means, spec.mean, [min(n, int(usable.sum())) for n in sizes], spec.repeats,
                    spec.seed, floor)
    dominates = None if spec.debias else checks["interim_consistency"]["bias_dominates_above_n"]
    tilted = flag_tilted(rows, dominates)
    mean_check = checks["mean_error"] = mean_error_check(truth, samples, prior, spec.mean, spec.width,
                                                          checks["contraction"])
    mean_dominated, unverified = flag_mean_error(rows, mean_check)
    fewer = [f"{r['n_lenses']} ({r['repeats']})" for r in rows if r["repeats"] < spec.repeats]
    spacing = float(means[1] - means[0])
    coarse = [r["n_lenses"] for r in rows if r["posterior_std"] < 3 * spacing]
    result = {"spec": {**asdict(spec), "sizes": sizes}, "interim_prior": prior.to_yaml(),
              "population": {"family": "normal, truncated to the interim prior's support", "mean": spec.mean,
                             "width": spec.width, "inferred": "mean (width known)"},
              "held_out": {"dataset": str(info.path), "split": spec.split, "scored": int(len(truth)),
                           "population_pool": int(len(pool)), "unusable": int((~usable).sum())},
              "grid": {"points": int(len(means)), "lo": float(means[0]), "hi": float(means[-1]), "spacing": spacing},
              "per_lens": checks, "calibrated": checks["passed"],
              "rows": rows,
              "notes": ([f"N (repeats) = {', '.join(fewer)}: the pool of {len(pool)} lenses holds fewer than "
                         f"{spec.repeats} disjoint draws of N; coverage is over that many independent repeats"]
                        if fewer else [])
                       + ([f"N = {coarse}: the population posterior is narrower than 3 grid spacings ({spacing:.3g});"
                           " raise --grid"] if coarse else [])
                       + ([f"N = {tilted}: at least bias_dominates_above_n = {dominates:.3g} lenses, so the tilt all "
                           "per-lens likelihoods share outweighs the data: not trusted, no detection (--debias "
                           "divides it out)"] if tilted else [])
                       + ([f"N = {mean_dominated}: the per-lens posterior means are off by "
                           f"{mean_check['error']:.3g} (+- {mean_check['standard_error']:.2g}) where the population "
                           f"lives, which shifts its mean by about {mean_check['shift']:.3g}, more than these rows' "
                           "std: not trusted, no detection"] if mean_dominated else [])
                       + ([f"N = {unverified}: narrower than twice the {mean_check['shift_standard_error']:.2g} to "
                           f"which {len(truth)} held-out lenses check the per-lens means (a shift that small would go "
                           "unseen): more held-out lenses are needed to trust these rows"]
                          if unverified else [])
                       + ([f"no detection is stated: the per-lens posteriors of {spec.target} fail calibration on "
                           f"{checks['lenses']} held-out lenses ({'; '.join(checks['failures'])})"]
                          if not checks["passed"] else [])}
    out_dir = Path(out_dir)
    write_json(out_dir / "population.json", result)
    write_text(out_dir / "forecast.csv", table_csv(rows))
    plot(rows, spec, out_dir / "forecast.png")
    return result
