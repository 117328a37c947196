"""Native dark-matter substructure on lenstronomy's own profiles (no pyHalo).

CDM subhaloes
    count      n ~ Poisson(n_mean), and exactly n haloes are rendered
    masses     dN/dm ∝ m^slope on [m_min, m_max], drawn by inverse CDF
    positions  projected radius from the lens centre from the `radius` prior, angle U(0, 2π)
    profile    TNFW (default) or POINT_MASS (cheap)
    TNFW       M200c with the Duffy et al. (2008) full-sample relation
               c200 = 5.71 (M / 2e12 h^-1 Msun)^-0.084 (1 + z)^-0.47 (log-normal scatter in dex),
               extrapolated below its calibrated range as is usual for subhalo studies;
               r_trunc = tau r_s (fixed tau) or the tidal (Jacobi) radius
               r_t = R (m / (3 M_host(<R)))^(1/3) in an SIS host with M_host(<R) = 2 Σ_crit θ_E R,
               evaluated at the projected radius R; R > 0 and m > 0 keep r_t > 0 (a zero r_trunc,
               which pyHalo can produce, crashes lenstronomy), and a 1e-4" floor guards round-off.

Stored: n_subhalo, m_sub_total (sum of the drawn masses, M200c for TNFW), and
f_sub = m_sub_total / M(<θ_E) with M(<θ_E) = π θ_E² Σ_crit the projected mass
inside the Einstein radius of the macro model.

Axion vortex (DeepLense): a mass `vortex_mass` spread evenly over `n_points`
point masses on a segment through the lens centre at a random angle, half-length
L = half_length_ref × (1e-22 eV / m_a), m_a = 10^log10_m_axion eV.

Units: lenstronomy's LensCosmo converts masses to angles (nfw_physical2angle,
sigma_crit_angle). Per-record NFW conversions use the exact scalings
Rs_angle ∝ M^(1/3)/c and alpha_Rs ∝ M^(2/3) c / (ln(1+c) - c/(1+c)), calibrated
once against LensCosmo.nfw_physical2angle (tests check the agreement), because
LensCosmo's own call costs ~0.1 ms per record in astropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensnet.errors import LensnetError
from lensnet.simulate.priors import Prior, PriorBlock, inverse_cdf, parse_prior

SUBHALO_PROFILES = ("TNFW", "POINT_MASS")
CONCENTRATION_MODELS = ("duffy08",)
ENGINES = ("native",)
TRUNCATION_FLOOR = 1e-4  # arcsec

CDM_PARAMS = ("n_subhalo", "m_sub_total", "f_sub")
AXION_PARAMS = ("log10_m_axion", "vortex_mass", "vortex_angle", "vortex_half_length")

# Duffy et al. 2008, Table 1, NFW, M200c, full sample 0 < z < 2
_DUFFY = (5.71, -0.084, -0.47, 2e12)


def _mass_conversions(lens_cosmo: Any) -> tuple[float, float]:
    """Constants (K_R, K_a) with Rs = K_R M^(1/3) / c and alpha_Rs = K_a M^(2/3) c / mu(c), from LensCosmo."""
    m0, c0 = 1e8, 10.0
    rs, alpha = lens_cosmo.nfw_physical2angle(m0, c0)
    mu0 = math.log(1.0 + c0) - c0 / (1.0 + c0)
    return float(rs) * c0 / m0 ** (1 / 3), float(alpha) * mu0 / (c0 * m0 ** (2 / 3))


@dataclass(frozen=True)
class SubhaloSpec:
    profile: str
    n_mean: float
    m_min: float
    m_max: float
    slope: float
    radius: Prior
    concentration_scatter_dex: float
    truncation_tau: float | None  # None: tidal radius


def parse_subhalo_config(section: dict) -> SubhaloSpec:
    where = "substructure"
    engine = section["engine"]
    if engine == "pyhalo":
        raise LensnetError(
            f"{where}.engine: pyhalo is not available: pyHalo 1.5.x fails to import beside lenstronomy 1.14.2 "
            "(and about one CDM realization in three crashes lenstronomy with r_trunc = 0); use engine: native"
        )
    if engine not in ENGINES:
        raise LensnetError(f"{where}.engine: unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    profile = section["profile"]
    if profile not in SUBHALO_PROFILES:
        raise LensnetError(f"{where}.profile: unknown profile '{profile}'; choose one of {', '.join(SUBHALO_PROFILES)}")
    n_mean = _positive(section["n_mean"], f"{where}.n_mean", allow_zero=True)
    m_min = _positive(section["m_min"], f"{where}.m_min")
    m_max = _positive(section["m_max"], f"{where}.m_max")
    if not m_max > m_min:
        raise LensnetError(f"{where}.m_min/m_max: empty mass range [{m_min:g}, {m_max:g}]")
    slope = parse_prior(section["slope"], f"{where}.slope")
    if not slope.is_constant or slope.args[0] == -1.0:
        raise LensnetError(f"{where}.slope: expected a number other than -1 (dN/dm ∝ m^slope)")
    radius = parse_prior(section["radius"], f"{where}.radius", (1e-3, 1e3))
    conc = section["concentration"]
    if not isinstance(conc, dict) or conc.get("model") not in CONCENTRATION_MODELS:
        raise LensnetError(
            f"{where}.concentration.model: unknown model {conc.get('model')!r}; "
            f"choose one of {', '.join(CONCENTRATION_MODELS)}"
        )
    scatter = _positive(conc["scatter_dex"], f"{where}.concentration.scatter_dex", allow_zero=True)
    trunc = section["truncation"]
    tau = None if trunc == "tidal" else _positive(trunc, f"{where}.truncation (tidal or tau = r_trunc/r_s)")
    return SubhaloSpec(profile, n_mean, m_min, m_max, slope.args[0], radius, scatter, tau)


def _positive(value: Any, field: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LensnetError(f"{field}: expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise LensnetError(f"{field}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def power_law_masses(u: np.ndarray, m_min: float, m_max: float, slope: float) -> np.ndarray:
    """Inverse CDF of dN/dm ∝ m^slope on [m_min, m_max] (slope != -1)."""
    p = slope + 1.0
    lo, hi = m_min**p, m_max**p
    return (lo + (hi - lo) * u) ** (1.0 / p)


def duffy08_concentration(m200: np.ndarray, z: float, h: float) -> np.ndarray:
    a, b, c, pivot = _DUFFY
    return a * (m200 / (pivot / h)) ** b * (1.0 + z) ** c


class SubhaloPopulation:
    """Draws one CDM realization: lenstronomy kwargs for `n` haloes of `profile`, plus its summary."""

    def __init__(self, spec: SubhaloSpec, lens_cosmo: Any, z_lens: float, h: float) -> None:
        self.profile = spec.profile
        self.spec = spec
        self._sigma_crit = float(lens_cosmo.sigma_crit_angle)  # Msun / arcsec^2
        self._k_rs, self._k_alpha = _mass_conversions(lens_cosmo)
        self._c_norm = _DUFFY[0] * (1.0 + z_lens) ** _DUFFY[2] * (_DUFFY[3] / h) ** (-_DUFFY[1])
        self._c_slope = _DUFFY[1]

    def mass_in_theta_e(self, theta_e: float) -> float:
        return math.pi * theta_e * theta_e * self._sigma_crit

    def nfw_angles(self, m200: np.ndarray, c200: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Rs_angle, alpha_Rs) as lenstronomy's LensCosmo.nfw_physical2angle gives them."""
        mu = np.log1p(c200) - c200 / (1.0 + c200)
        return self._k_rs * np.cbrt(m200) / c200, self._k_alpha * np.cbrt(m200) ** 2 * c200 / mu

    def draw(
        self, rng: np.random.Generator, center_x: float, center_y: float, theta_e: float
    ) -> tuple[list[dict], tuple[float, float, float]]:
        spec = self.spec
        n = int(rng.poisson(spec.n_mean))
        u = rng.random((3, n))
        m = power_law_masses(u[0], spec.m_min, spec.m_max, spec.slope)
        r = inverse_cdf(spec.radius, u[1])
        phi = 2.0 * math.pi * u[2]
        x = center_x + r * np.cos(phi)
        y = center_y + r * np.sin(phi)
        m_total = float(m.sum())
        summary = (float(n), m_total, m_total / self.mass_in_theta_e(theta_e))
        if self.profile == "POINT_MASS":
            theta = np.sqrt(m / (math.pi * self._sigma_crit))
            kwargs = [
                {"theta_E": t, "center_x": cx, "center_y": cy}
                for t, cx, cy in zip(theta.tolist(), x.tolist(), y.tolist())
            ]
            return kwargs, summary
        c = self._c_norm * m**self._c_slope
        if spec.concentration_scatter_dex > 0:
            c = c * 10.0 ** (spec.concentration_scatter_dex * rng.standard_normal(n))
        rs, alpha = self.nfw_angles(m, c)
        if spec.truncation_tau is None:
            host = 2.0 * self._sigma_crit * theta_e * r  # SIS 3D mass inside r, in Msun
            r_trunc = r * np.cbrt(m / (3.0 * host))
        else:
            r_trunc = spec.truncation_tau * rs
        r_trunc = np.maximum(r_trunc, TRUNCATION_FLOOR)
        kwargs = [
            {"Rs": a, "alpha_Rs": b, "r_trunc": t, "center_x": cx, "center_y": cy}
            for a, b, t, cx, cy in zip(rs.tolist(), alpha.tolist(), r_trunc.tolist(), x.tolist(), y.tolist())
        ]
        return kwargs, summary


@dataclass(frozen=True)
class AxionSpec:
    vortex_mass: Prior
    log10_m_axion: Prior
    angle: Prior
    half_length_ref: float
    n_points: int


def parse_axion_config(section: dict) -> AxionSpec:
    where = "axion"
    n_points = section["n_points"]
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise LensnetError(f"{where}.n_points: expected an integer >= 2, got {n_points!r}")
    return AxionSpec(
        vortex_mass=parse_prior(section["vortex_mass"], f"{where}.vortex_mass", (1.0, 1e14)),
        log10_m_axion=parse_prior(section["log10_m_axion"], f"{where}.log10_m_axion", (-30.0, -15.0)),
        angle=parse_prior(section["angle"], f"{where}.angle"),
        half_length_ref=_positive(section["half_length_ref"], f"{where}.half_length_ref"),
        n_points=n_points,
    )


class AxionVortex:
    """A line of point masses through the lens centre (DeepLense's vortex)."""

    def __init__(self, spec: AxionSpec, lens_cosmo: Any) -> None:
        self.spec = spec
        self._block = PriorBlock([("vortex_mass", spec.vortex_mass), ("log10_m_axion", spec.log10_m_axion),
                                  ("vortex_angle", spec.angle)])
        self._unit = np.linspace(-1.0, 1.0, spec.n_points)
        self._theta_per_sqrt_mass = 1.0 / math.sqrt(math.pi * float(lens_cosmo.sigma_crit_angle) * spec.n_points)

    def draw(
        self, rng: np.random.Generator, center_x: float, center_y: float
    ) -> tuple[list[dict], tuple[float, float, float, float]]:
        mass, log10_m, angle = self._block.sample(rng).tolist()
        half_length = self.spec.half_length_ref * 10.0 ** (-22.0 - log10_m)
        theta = self._theta_per_sqrt_mass * math.sqrt(mass)
        s = self._unit * half_length
        xs = (center_x + s * math.cos(angle)).tolist()
        ys = (center_y + s * math.sin(angle)).tolist()
        kwargs = [{"theta_E": theta, "center_x": x, "center_y": y} for x, y in zip(xs, ys)]
        return kwargs, (log10_m, mass, angle, half_length)
