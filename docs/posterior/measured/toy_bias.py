"""Why the toy's population posterior was biased at large N (issue 24): one candidate at a time.

Not a lensnet command: the record of the measurement quoted in docs/posterior.md. Input: an .npz with the
held-out toy lenses scored by a run (y_true (L, 1), y_pred (L, S, 1) NPE samples, images (L, 16, 16, 1) raw):

    PYTHONPATH=. python docs/posterior/measured/toy_bias.py held.npz --mean 1.3099 --width 0.3969

The SAME combination code (lensnet.studies.population) on the SAME pool of lenses, with per-lens posteriors
(a) exact (BlobSource.analytic_posterior; sampled as the NPE is, 512 Sobol base points, or random), (b) the NPE's
re-centred on the exact mean, and the exact ones shifted by the NPE's mean error, (c) fewer samples and the
training split's realised prior in the reweighting, (d) a 4x finer grid. Repeats as the study draws them.
"""
import argparse

import numpy as np

from lensnet.data.synthetic import BlobSource
from lensnet.simulate.priors import parse_prior
from lensnet.studies.population import draw_population, forecast, lens_log_likelihoods, mean_error_check, mean_grid
from lensnet.tasks.posterior import base_draws

parser = argparse.ArgumentParser()
parser.add_argument("npz")
parser.add_argument("--mean", type=float, required=True)
parser.add_argument("--width", type=float, required=True)
parser.add_argument("--train-prior", default="1.0122342879955095,0.9922228881026177")
parser.add_argument("--sizes", default="10,30,100,300,1000")
parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
args = parser.parse_args()
d = np.load(args.npz)
truth, npe = d["y_true"][:, 0].astype(np.float64), d["y_pred"][:, :, 0].astype(np.float64)
exact_mean, exact_std = BlobSource(noise=3.0, blob_width=8.0).analytic_posterior(d["images"])
sigma = exact_std[0]
prior = parse_prior({"normal": [1.0, 1.0]}, "amplitude")
mu, tau, sizes = args.mean, args.width, [int(n) for n in args.sizes.split(",")]
pool = draw_population(truth, prior, mu, tau, 0)
print(f"{len(truth)} lenses, pool {len(pool)}: mean A {truth[pool].mean():.4f}")
z = base_draws(512, 2, seed=0)[:, 0].astype(np.float64)
exact = exact_mean[:, None] + exact_std[:, None] * z
err = npe.mean(1) - exact_mean
rng = np.random.default_rng(9)
train_prior = parse_prior({"normal": [float(v) for v in args.train_prior.split(",")]}, "amplitude")
variants = {
    "npe": (npe, prior, 1000), "exact": (exact, prior, 1000),
    "exact_random512": (exact_mean[:, None] + exact_std[:, None] * rng.standard_normal(npe.shape), prior, 1000),
    "exact_random64": (exact_mean[:, None] + exact_std[:, None] * rng.standard_normal((len(npe), 64)), prior, 1000),
    "npe_recentred": (npe - err[:, None], prior, 1000), "exact_plus_npe_error": (exact + err[:, None], prior, 1000),
    "npe_train_prior": (npe, train_prior, 1000), "npe_grid4000": (npe, prior, 4000)}
only = [v for v in args.only.split(",") if v]
print("variant: per N, bias/std, 68% / 95% coverage (repeats)")
for name, (samples, reweight, grid) in variants.items():
    if only and name not in only:
        continue
    means = mean_grid(prior, grid, samples[pool], min(sizes))
    rows = forecast(lens_log_likelihoods(samples[pool], reweight, means, tau), means, mu, sizes, 50, 0)
    print(f"{name:22s}", " | ".join(f"{r['n_lenses']}: {r['bias_over_std']:+.2f} {r['coverage_68']:.2f} "
                                    f"{r['coverage_95']:.2f} ({r['repeats']})" for r in rows), flush=True)
print(f"pool: NPE mean - exact mean {err[pool].mean():+.4f} +- {err[pool].std() / np.sqrt(len(pool)):.4f} "
      f"({err[pool].mean() / sigma:+.3f} posterior std)")
print("bin of A: lenses, NPE mean - exact mean (posterior std), its standard error, NPE std / exact std")
edges = [-np.inf, -0.5, 0, 0.5, 1.0, 1.5, 2.0, 2.5, np.inf]
for lo, hi in zip(edges[:-1], edges[1:]):
    k = (truth >= lo) & (truth < hi)
    se = err[k].std() / np.sqrt(k.sum())
    print(f"  [{lo:5.1f}, {hi:5.1f}) {k.sum():6d} {err[k].mean() / sigma:+.3f} {se / sigma:.3f} "
          f"{npe[k].std(1).mean() / sigma:.3f}")
contraction = 1 - sigma**2
for name, samples in (("NPE", npe), ("exact", exact)):
    check = mean_error_check(truth, samples, prior, mu, tau, contraction)
    print(f"mean_error_check {name}:", {k: round(v, 5) if isinstance(v, float) else v for k, v in check.items()})
