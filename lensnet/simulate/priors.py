"""Config-driven priors: a YAML value is a number (constant) or a one-key mapping naming a distribution.

    theta_E: 1.28                                  constant
    theta_E: {uniform: [1.0, 1.6]}                 U(a, b)
    R_sersic: {log_uniform: [0.1, 0.5]}            log-uniform between a > 0 and b
    exposure_time: {log10_uniform: [3, 3.5]}       10 ** U(a, b)
    e1: {normal: [0.0, 0.1]}                       N(mu, sigma)
    e1: {truncated_normal: [0.0, 0.1, -0.3, 0.3]}  N(mu, sigma) restricted to [lo, hi]

`PriorBlock` draws a whole ordered set of priors from ONE `rng.random(k)` call
(inverse-CDF transforms of the same uniforms), so per-record sampling costs a
few microseconds and the draw order never depends on which priors are constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from lensnet.core.errors import LensnetError

NORMAL_REACH = 8.3  # largest |z| a clipped uniform can reach through ndtri (8.22)
U_CLIP = 1e-16

# name -> number of arguments
DISTRIBUTIONS: dict[str, int] = {
    "uniform": 2,
    "log_uniform": 2,
    "log10_uniform": 2,
    "normal": 2,
    "truncated_normal": 4,
}


@dataclass(frozen=True)
class Prior:
    kind: str  # "constant" or a DISTRIBUTIONS key
    args: tuple[float, ...]

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def support(self) -> tuple[float, float]:
        """Smallest interval holding every possible draw (used to validate physical domains)."""
        a = self.args
        if self.kind == "constant":
            return a[0], a[0]
        if self.kind in ("uniform", "log_uniform"):
            return a[0], a[1]
        if self.kind == "log10_uniform":
            return 10.0 ** a[0], 10.0 ** a[1]
        if self.kind == "truncated_normal":
            return a[2], a[3]
        # normal: uniforms are clipped to [1e-16, 1 - 1e-16] before the inverse CDF, so |z| <= 8.23
        return a[0] - NORMAL_REACH * a[1], a[0] + NORMAL_REACH * a[1]

    def to_yaml(self) -> Any:
        return self.args[0] if self.is_constant else {self.kind: list(self.args)}


def is_prior_spec(value: Any) -> bool:
    """True for a distribution mapping such as {uniform: [0, 1]} (what config merging replaces wholesale)."""
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LensnetError(f"{field}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise LensnetError(f"{field}: expected a finite number, got {value!r}")
    return value


def parse_prior(spec: Any, field: str, domain: tuple[float, float] | None = None) -> Prior:
    """Validate one YAML prior; `domain` (lo, hi) is the physically allowed closed interval of every draw."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise LensnetError(
                f"{field}: a distribution is a one-key mapping such as {{uniform: [a, b]}}, got {dict(spec)!r}"
            )
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            raise LensnetError(
                f"{field}: unknown distribution '{kind}'; choose one of {', '.join(DISTRIBUTIONS)} or give a number"
            )
        nargs = DISTRIBUTIONS[kind]
        if not isinstance(args, Sequence) or isinstance(args, str) or len(args) != nargs:
            raise LensnetError(f"{field}: {kind} takes a list of {nargs} numbers, got {args!r}")
        values = tuple(_number(v, f"{field}.{kind}") for v in args)
        prior = Prior(kind, values)
        _check_arguments(prior, field)
    else:
        prior = Prior("constant", (_number(spec, field),))
    if domain is not None:
        lo, hi = prior.support()
        if lo < domain[0] or hi > domain[1]:
            raise LensnetError(
                f"{field}: draws must lie in [{domain[0]:g}, {domain[1]:g}], but {prior.to_yaml()!r} allows "
                f"[{lo:g}, {hi:g}] (use a bounded distribution such as uniform or truncated_normal)"
            )
    return prior


def _check_arguments(prior: Prior, field: str) -> None:
    kind, a = prior.kind, prior.args
    if kind in ("uniform", "log_uniform", "log10_uniform") and not a[1] > a[0]:
        raise LensnetError(
            f"{field}: {kind} range [{a[0]:g}, {a[1]:g}] is empty (need a < b; give a number for a constant)"
        )
    if kind == "log_uniform" and a[0] <= 0:
        raise LensnetError(f"{field}: log_uniform bounds must be positive, got [{a[0]:g}, {a[1]:g}]")
    if kind in ("normal", "truncated_normal") and not a[1] > 0:
        raise LensnetError(f"{field}: {kind} sigma must be positive, got {a[1]:g}")
    if kind == "truncated_normal" and not a[3] > a[2]:
        raise LensnetError(f"{field}: truncated_normal bounds [{a[2]:g}, {a[3]:g}] are empty (need lo < hi)")


class PriorBlock:
    """An ordered set of named priors drawn together: `sample(rng)` -> float64 array in `names` order."""

    def __init__(self, items: Sequence[tuple[str, Prior]]) -> None:
        self.names = [name for name, _ in items]
        priors = [prior for _, prior in items]
        self.size = len(priors)
        lo = np.zeros(self.size)
        width = np.zeros(self.size)
        normal, truncated, power10, log_uniform = [], [], [], []
        self._trunc_args = []
        for i, p in enumerate(priors):
            a = p.args
            if p.kind == "constant":
                lo[i] = a[0]
            elif p.kind in ("uniform", "log10_uniform"):
                lo[i], width[i] = a[0], a[1] - a[0]
                if p.kind == "log10_uniform":
                    power10.append(i)
            elif p.kind == "log_uniform":
                lo[i], width[i] = math.log10(a[0]), math.log10(a[1]) - math.log10(a[0])
                log_uniform.append(i)
            elif p.kind == "normal":
                normal.append(i)
                lo[i], width[i] = a[0], a[1]
            elif p.kind == "truncated_normal":
                truncated.append(i)
                mu, sigma, t_lo, t_hi = a
                c_lo, c_hi = ndtr((t_lo - mu) / sigma), ndtr((t_hi - mu) / sigma)
                self._trunc_args.append((mu, sigma, c_lo, c_hi - c_lo, t_lo, t_hi))
        self._lo, self._width = lo, width
        self._linear = np.array([i for i in range(self.size) if i not in set(normal + truncated)], dtype=int)
        self._all_linear = len(self._linear) == self.size
        self._normal = np.array(normal, dtype=int)
        self._truncated = truncated
        self._power10 = np.array(sorted(power10 + log_uniform), dtype=int)

    def transform(self, u: np.ndarray) -> np.ndarray:
        if self._all_linear:
            out = self._lo + self._width * u
        else:
            out = np.empty(self.size)
            idx = self._linear
            out[idx] = self._lo[idx] + self._width[idx] * u[idx]
            if len(self._normal):
                idx = self._normal
                # u == 0 is possible (rng.random is [0, 1)) and would give -inf
                out[idx] = self._lo[idx] + self._width[idx] * ndtri(np.clip(u[idx], U_CLIP, 1.0 - U_CLIP))
            for i, (mu, sigma, c_lo, c_width, t_lo, t_hi) in zip(self._truncated, self._trunc_args):
                # clip guards the float round-off at the ends of the inverse CDF
                out[i] = min(max(mu + sigma * float(ndtri(c_lo + c_width * u[i])), t_lo), t_hi)
        if len(self._power10):
            out[self._power10] = 10.0 ** out[self._power10]
        return out

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.transform(rng.random(self.size))


def inverse_cdf(prior: Prior, u: np.ndarray) -> np.ndarray:
    """Vectorised draws of ONE prior from an array of uniforms (e.g. the radii of all subhaloes)."""
    a = prior.args
    if prior.kind == "constant":
        return np.full(np.shape(u), a[0])
    if prior.kind == "uniform":
        return a[0] + (a[1] - a[0]) * u
    if prior.kind == "log10_uniform":
        return 10.0 ** (a[0] + (a[1] - a[0]) * u)
    if prior.kind == "log_uniform":
        lo, hi = math.log10(a[0]), math.log10(a[1])
        return 10.0 ** (lo + (hi - lo) * u)
    if prior.kind == "normal":
        return a[0] + a[1] * ndtri(np.clip(u, U_CLIP, 1.0 - U_CLIP))
    mu, sigma, t_lo, t_hi = a
    c_lo, c_hi = ndtr((t_lo - mu) / sigma), ndtr((t_hi - mu) / sigma)
    return np.clip(mu + sigma * ndtri(c_lo + (c_hi - c_lo) * u), t_lo, t_hi)


def log_density(prior: Prior, x: np.ndarray) -> np.ndarray:
    """log p(x) of one non-constant prior, -inf outside its support (importance weights of population
    inference divide by it: lensnet.studies.population)."""
    x = np.asarray(x, dtype=np.float64)
    a = prior.args
    with np.errstate(divide="ignore", invalid="ignore"):
        if prior.kind == "uniform":
            out = np.full(x.shape, -math.log(a[1] - a[0]))
            lo, hi = a
        elif prior.kind in ("log_uniform", "log10_uniform"):
            lo, hi = prior.support()
            out = -np.log(x) - math.log(math.log(hi / lo))  # p(x) = 1 / (x ln(hi / lo))
        elif prior.kind == "normal":
            return -0.5 * ((x - a[0]) / a[1]) ** 2 - math.log(a[1] * math.sqrt(2 * math.pi))
        elif prior.kind == "truncated_normal":
            mu, sigma, lo, hi = a
            mass = ndtr((hi - mu) / sigma) - ndtr((lo - mu) / sigma)
            out = -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi) * mass)
        else:
            raise LensnetError(f"a constant prior ({a[0]:g}) has no density")
        return np.where((x >= lo) & (x <= hi), out, -np.inf)
