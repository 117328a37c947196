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
Repeating the draw R times per N gives the forecast: the hyper-posterior's width and how often its 68% and
95% intervals hold mu*. Everything lands in runs/studies/<name>/: population.json, forecast.csv,
forecast.png.
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
from lensnet.simulate.priors import Prior, log_density, parse_prior

DEFAULT_SIZES = (10, 30, 100, 300, 1000)
NORMAL_GRID_REACH = 5.0  # a normal interim prior's grid of mu spans its mean +- this many sigma


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
             seed: int) -> list[dict]:
    """Per N: the hyper-posterior's mean width and bias, and the coverage of its intervals over `repeats` draws."""
    rows = []
    for n in sizes:
        results = []
        for r in range(repeats):
            chosen = np.random.default_rng([seed, n, r]).choice(len(lens_ll), size=n, replace=False)
            results.append(hyper_posterior(lens_ll[chosen].sum(axis=0), means, truth_mean))
        mean = np.array([p["mean"] for p in results])
        std = np.array([p["std"] for p in results])
        rows.append({"n_lenses": int(n), "repeats": int(repeats), "posterior_std": float(np.mean(std)),
                     "bias_over_std": float(np.mean((mean - truth_mean) / std)),
                     "mean_over_std": float(np.mean(mean / std)),
                     "coverage_68": float(np.mean([p["covered68"] for p in results])),
                     "coverage_95": float(np.mean([p["covered95"] for p in results]))})
    return rows


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
        band = 1.96 * math.sqrt(level / 100 * (1 - level / 100) / spec.repeats)
        right.axhspan(level / 100 - band, level / 100 + band, color=color, alpha=0.15, lw=0)
        right.semilogx(n, [r[f"coverage_{level}"] for r in rows], "o-", color=color, label=f"{level}% interval")
    right.set(xlabel="lenses N", ylabel=f"fraction of {spec.repeats} repeats holding the truth", ylim=(0, 1.05),
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
    lens_ll = lens_log_likelihoods(samples[pool], prior, means, spec.width)
    usable = np.any(np.isfinite(lens_ll), axis=1)  # a lens whose every sample left the prior's support has none
    rows = forecast(lens_ll[usable], means, spec.mean, [min(n, int(usable.sum())) for n in sizes], spec.repeats,
                    spec.seed)
    overlap = [r["n_lenses"] for r in rows if r["n_lenses"] > len(pool) / 3]
    spacing = float(means[1] - means[0])
    coarse = [r["n_lenses"] for r in rows if r["posterior_std"] < 3 * spacing]
    result = {"spec": {**asdict(spec), "sizes": sizes}, "interim_prior": prior.to_yaml(),
              "population": {"family": "normal, truncated to the interim prior's support", "mean": spec.mean,
                             "width": spec.width, "inferred": "mean (width known)"},
              "held_out": {"dataset": str(info.path), "split": spec.split, "scored": int(len(truth)),
                           "population_pool": int(len(pool)), "unusable": int((~usable).sum())},
              "grid": {"points": int(len(means)), "lo": float(means[0]), "hi": float(means[-1]), "spacing": spacing},
              "rows": rows,
              "notes": ([f"N = {overlap}: repeats share lenses (N > a third of the pool of {len(pool)}), so their "
                         "coverages are not independent"] if overlap else [])
                       + ([f"N = {coarse}: the population posterior is narrower than 3 grid spacings ({spacing:.3g});"
                           " raise --grid"] if coarse else [])}
    out_dir = Path(out_dir)
    write_json(out_dir / "population.json", result)
    write_text(out_dir / "forecast.csv", table_csv(rows))
    plot(rows, spec, out_dir / "forecast.png")
    return result
