"""Native dark-matter substructure on lenstronomy's own profiles (no pyHalo).

CDM subhaloes
    f_sub      THE LABEL (stored `f_sub`, every normalisation): the realised projected substructure mass
               fraction in the annulus θ_E/2 <= R <= 3θ_E/2 around the lens centre (θ_E the stored Einstein
               radius): f_sub = κ_sub / κ_macro with κ_sub the lensing mass of the subhaloes whose centres lie
               in the annulus over Σ_crit × its area (2π θ_E²), and κ_macro = 1/2 the mean convergence of an
               isothermal lens over that annulus (θ_E / (a + b) for an SIS), so
               f_sub = M_sub,lensing(annulus) / (π Σ_crit θ_E²): the subhaloes' mass in the annulus over the
               mass inside the Einstein radius (the quantity of Dalal & Kochanek 2002; Vegetti et al. 2014).
               Lensing mass: m for point masses (m × mass_factor in replicas), the truncated total mass of a
               TNFW (Baltz, Marshall & Oguri 2009), never M200. A halo counts wholly where its centre is.
               Under a replica's multi-plane convention (every deflection × s, scene_spec.deflection_scale)
               masses lens as s m and the Einstein radius is s θ_E: f_sub and m_sub_lensing use those.
    f_sub_drawn (normalisation: f_sub, the physical presets) the requested fraction, drawn per image from the
               `f_sub` prior. The count is calibrated so that the MEDIAN of the realised f_sub equals the
               request (FSubCalibration: the realised mass is a heavy-tailed compound Poisson sum whose median
               lies below its mean, 0.63x at ~70 haloes of 1e6-1e10 Msun); the haloes fill the population
               annulus `radius` (placement) at the density this sets, n ~ Poisson(λ_annulus / P(annulus)).
               Tested (tests/test_labels.py): median realised / drawn within 10% for point-mass and TNFW
               populations. A request below about one expected halo in the annulus has median 0 whatever the
               count: it falls back to matching the mean.
    count      (normalisation: count) n ~ Poisson(n_mean), or exactly round(n_mean) with count: fixed
               (DeepLense draws a Poisson count and ignores it)
    sigma_sub  (normalisation: sigma_sub; stored `sigma_sub_drawn`, and `sigma_sub` the realised value
               sigma_sub_drawn × n / E[n] from the CDM count before any WDM thinning) pyHalo's convention
               (dangilman/pyHalo f8a4b37,
               Rendering/subhalos.py normalization_sigmasub, PresetModels/cdm.py): sigma_sub is
               m0 d²N/(dm dA) at the pivot m0 = 1e8 Msun in kpc^-2 (default 0.025), scaled with the host
               halo mass and redshift as F = 10^(k1 log10(M_host / 1e13) + k2 log10(z_lens + 0.5))
               (`host`: log10_m200 13.3, mass_scaling k1 0.55, redshift_scaling k2 0.37: pyHalo's CDM and
               WDM preset values), so d²N/(dm dA) = sigma_sub F (m / m0)^slope / m0 and the mean count is
               n = sigma_sub F A [(m_max/m0)^(slope+1) - (m_min/m0)^(slope+1)] / (slope + 1), A the area
               of the `radius` annulus in physical kpc² (arcsec -> kpc through the angular diameter
               distance of the lens plane, LensCosmo.dd). Where it differs from pyHalo: pyHalo renders
               over a disk of radius cone_opening_angle / 2 (3") uniformly (CDM preset) or as a projected
               cored NFW (WDM preset), with infall-redshift concentrations, Galacticus-calibrated
               truncation and negative convergence sheets; here the same surface density fills the
               annulus uniformly, concentrations are evaluated at z_lens, truncation is `truncation`, and
               the mass goes out of the smooth lens through θ_E (subtract_from_macro). sigma_sub may be a
               prior (drawn per image; 0 in classes without subhaloes).
    masses     dN/dm ∝ m^slope on [m_min, m_max], drawn by inverse CDF
    positions  placement: area -> uniform surface density over the annulus (r = sqrt(U(a², b²)));
               placement: radius -> r from the `radius` prior (DeepLense: uniform in radius); angle U(0, 2π)
    profile    TNFW (default) or POINT_MASS (cheap)
    lensing    a mass m lenses as m (angular-diameter distances, lenstronomy's LensCosmo), or as
               `mass_factor` m when the config copies DeepLense's luminosity-distance conversion
               (cosmology.mass_to_angle: deeplense_luminosity, factor 0.593 at z 0.5 / 1.0)
    TNFW       M200c with a concentration-mass relation at z_lens (log-normal scatter in dex):
               concentration.model diemer19 (Diemer & Joyce 2019; the CDM relation under pyHalo's WDM
               preset) or ludlow16 (Ludlow et al. 2016; pyHalo's CDM default) through colossus, tabulated
               once per simulator (lensnet.simulate.halo_models) and floored at 1.2 as pyHalo does; or
               duffy08, the Duffy et al. (2008) full-sample relation
               c200 = 5.71 (M / 2e12 h^-1 Msun)^-0.084 (1 + z)^-0.47; all extrapolated below their
               calibrated range as is usual for subhalo studies;
    3D         projected position plus a line-of-sight depth |z| drawn from the host's NFW density along the
               line of sight at that projected radius (halo_models.HostDepth; host M200c = 10^host.log10_m200,
               the population's concentration relation): r3d = sqrt(R² + z²), as pyHalo gives subhaloes an
               r3d from the host's profile.
    truncation `roche` (default): pyHalo's TRUNCATION_ROCHE (ROCHE below; dangilman/pyHalo 489fb58,
               Halos/tidal_truncation.py TruncationRoche.truncation_radius) at r3d;
               `tidal`: the point-mass Jacobi radius r3d (m / (3 M_SIS(<r3d)))^(1/3), M_SIS(<r) = 2 Σ_crit θ_E r;
               `tidal_projected`: the same at the projected R (the rule before issue 20; far too tight);
               a number: r_trunc = tau r_s. A 1e-4" floor guards round-off (a zero r_trunc crashes lenstronomy).
               Measured on model_ii with TNFW (diemer19, m_min 1e6, θ_E 1.3", 100-300 populations):
               tidal_projected: r_t / r_s median 0.78 (16-84% 0.52-1.07), per-halo lensing mass / M200 median
               0.115 (0.077-0.144; 0.095 mass-weighted), and under the former label (the drawn f_sub counted in
               M200) the realised lensing f_sub in the annulus was 0.088x the label (16-84% 0.066-0.13);
               roche: r_t / r_s median 3.4 (1.9-7.6), lensing mass / M200 median 0.40 (0.28-0.67; 0.44
               mass-weighted); with the calibrated count the realised f_sub is 1.05x the request (median).

WDM subhaloes (class wdm, section `wdm`)
    The CDM realization of the same record seed, thinned: after every CDM draw (count, masses,
    positions, concentration scatter), log10_m_hm is drawn from its prior and each halo is kept with
    probability n_WDM/n_CDM(m) (the mass-function suppression of halo_models.WdmModel, as pyHalo's
    WDMPowerLaw.draw thins its CDM draw), and the kept haloes' concentrations are multiplied by the WDM
    concentration suppression (floor 1.2). So a wdm record holds a subset of the haloes the cdm record of
    the same seed holds (paired comparisons), with lower concentrations. Stored as for cdm (n_subhalo,
    m_sub_total, m_sub_lensing and the realised f_sub after thinning; f_sub_drawn is the CDM request before
    it) plus log10_m_hm (NaN in every other class).

Stored: n_subhalo, m_sub_total (sum of the drawn masses, M200c for TNFW), m_sub_lensing (sum of their
lensing masses), f_sub (realised, above), and f_sub_drawn (normalisation f_sub) or sigma_sub and
sigma_sub_drawn (normalisation sigma_sub).

Substructure is part of the lens mass (subtract_from_macro: true): the subhaloes' (and the vortex's)
mass is taken out of the smooth SIE by lowering its normalisation so that the mean convergence inside
the drawn Einstein radius stays 1 (the mass-sheet correction pyHalo applies, done through θ_E):
θ_E,smooth = θ_E - M_x(<θ_E) / (π Σ_crit θ_E), M_x(<θ) the mean enclosed mass of the subhaloes (their
lensing mass spread over the annulus as the placement distributes it) or the vortex points inside θ.
The stored theta_E is then the effective Einstein radius, drawn the same way in every class;
theta_E_smooth is stored as a class-specific parameter. For TNFW the lensing mass is the truncated
total mass (Baltz, Marshall & Oguri 2009), less than M200c.

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

from lensnet.core.errors import LensnetError
from lensnet.simulate.halo_models import (
    COLOSSUS_CONCENTRATIONS,
    CONCENTRATION_FLOOR,
    LOG10_M_HM_RANGE,
    WDM_CONCENTRATIONS,
    WDM_MASS_FUNCTIONS,
    ConcentrationTable,
    HostDepth,
    WdmModel,
)
from lensnet.simulate.priors import Prior, PriorBlock, inverse_cdf, parse_prior

SUBHALO_PROFILES = ("TNFW", "POINT_MASS")
CONCENTRATION_MODELS = ("duffy08", *COLOSSUS_CONCENTRATIONS)
# lenstronomy: each halo is a lenstronomy profile in the lens model (native is its older name);
# fast: the same haloes rendered by lensnet.simulate.fast_lensing (vectorised deflections)
ENGINES = ("lenstronomy", "native", "fast")
TRUNCATION_FLOOR = 1e-4  # arcsec

# record fields, named and defined in lensnet.data.schema.SUBSTRUCTURE_LABELS
CDM_PARAMS = ("n_subhalo", "m_sub_total", "m_sub_lensing", "f_sub")
F_SUB_PARAMS = ("f_sub_drawn",)  # normalisation f_sub: the requested fraction beside the realised f_sub
SIGMA_SUB_PARAMS = ("sigma_sub", "sigma_sub_drawn")  # normalisation sigma_sub: realised, requested
NORMALISATIONS = ("f_sub", "count", "sigma_sub")
F_SUB_ANNULUS = (0.5, 1.5)  # the realised f_sub counts the subhaloes with theta_E/2 <= R <= 3 theta_E/2
# pyHalo's TRUNCATION_ROCHE (dangilman/pyHalo 489fb58, Halos/tidal_truncation.py, TruncationRoche.truncation_radius,
# defaults RocheNorm 1.4, m_power 1/3, RocheNu 2/3; calibrated in an isothermal host, Cyr-Racine et al. 2016):
# r_t = 1.4 kpc (m / 1e7 Msun)^(1/3) (r3d / 50 kpc)^(2/3), m the subhalo's M200, r3d its 3D distance to the host
ROCHE = (1.4, 1.0 / 3.0, 2.0 / 3.0)
TRUNCATIONS = ("roche", "tidal", "tidal_projected")  # or a number tau = r_trunc / r_s
SIGMA_SUB_PIVOT = 1e8  # Msun, pyHalo's m_pivot
WDM_PARAMS = ("log10_m_hm",)
COUNTS = ("poisson", "fixed")
PLACEMENTS = ("area", "radius")
KAPPA_AT_THETA_E = 0.5  # convergence of an isothermal lens at its Einstein radius
AXION_PARAMS = ("log10_m_axion", "vortex_mass", "vortex_angle", "vortex_half_length")

# Duffy et al. 2008, Table 1, NFW, M200c, full sample 0 < z < 2
_DUFFY = (5.71, -0.084, -0.47, 2e12)


def mass_conversions(lens_cosmo: Any) -> tuple[float, float]:
    """Constants (K_R, K_a) with Rs = K_R M^(1/3) / c and alpha_Rs = K_a M^(2/3) c / mu(c), from LensCosmo."""
    m0, c0 = 1e8, 10.0
    rs, alpha = lens_cosmo.nfw_physical2angle(m0, c0)
    mu0 = math.log(1.0 + c0) - c0 / (1.0 + c0)
    return float(rs) * c0 / m0 ** (1 / 3), float(alpha) * mu0 / (c0 * m0 ** (2 / 3))


@dataclass(frozen=True)
class Haloes:
    """One group of lensing haloes of a realization, as arrays (one entry per halo, main lens plane).

    TNFW: rs, alpha_rs, r_trunc are lenstronomy's Rs, alpha_Rs, r_trunc (arcsec); POINT_MASS: theta_e.
    Every engine renders the same arrays, so a seed gives the same haloes whatever the engine.
    """

    profile: str
    x: np.ndarray
    y: np.ndarray
    rs: np.ndarray | None = None
    alpha_rs: np.ndarray | None = None
    r_trunc: np.ndarray | None = None
    theta_e: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def kwargs(self) -> list[dict]:
        """lenstronomy kwargs, one dict per halo."""
        x, y = self.x.tolist(), self.y.tolist()
        if self.profile == "POINT_MASS":
            return [{"theta_E": t, "center_x": cx, "center_y": cy} for t, cx, cy in zip(self.theta_e.tolist(), x, y)]
        return [
            {"Rs": a, "alpha_Rs": b, "r_trunc": t, "center_x": cx, "center_y": cy}
            for a, b, t, cx, cy in zip(self.rs.tolist(), self.alpha_rs.tolist(), self.r_trunc.tolist(), x, y)
        ]


@dataclass(frozen=True)
class SubhaloSpec:
    """The parsed `substructure` section. No field has a default here: every default is defined once, in
    lensnet.simulate.presets.DATASET_DEFAULTS, and parse_subhalo_config fills every field from the config."""

    profile: str
    n_mean: float
    m_min: float
    m_max: float
    slope: float
    radius: Prior
    concentration_scatter_dex: float
    truncation_tau: float | None  # None: the rule `truncation`
    normalisation: str
    f_sub: Prior | None  # normalisation f_sub only
    count: str
    placement: str
    subtract_from_macro: bool
    concentration_model: str
    sigma_sub: Prior | None  # normalisation sigma_sub only
    host: tuple[float, float, float]  # log10 M_host, mass and redshift scalings (pyHalo)
    truncation: str  # a TRUNCATIONS rule, or "tau" (truncation_tau)


@dataclass(frozen=True)
class WdmSpec:
    log10_m_hm: Prior
    model: WdmModel


def parse_wdm_config(section: dict) -> WdmSpec:
    where = "wdm"
    log10_m_hm = parse_prior(section["log10_m_hm"], f"{where}.log10_m_hm (log10 half-mode mass, Msun)",
                             LOG10_M_HM_RANGE)
    mass_function = _choice(section["mass_function"], f"{where}.mass_function", tuple(WDM_MASS_FUNCTIONS))
    concentration = _choice(section["concentration"], f"{where}.concentration", tuple(WDM_CONCENTRATIONS))
    return WdmSpec(log10_m_hm, WdmModel(mass_function, concentration))


def parse_engine(section: dict) -> str:
    """The renderer of the haloes: 'lenstronomy' (also spelled 'native') or 'fast'."""
    engine = section["engine"]
    if engine == "pyhalo":
        raise LensnetError(
            "substructure.engine: pyhalo is not available: pyHalo 1.5.x fails to import beside lenstronomy 1.14.2 "
            "(and about one CDM realization in three crashes lenstronomy with r_trunc = 0); use engine: fast"
        )
    if engine not in ENGINES:
        raise LensnetError(f"substructure.engine: unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    return "lenstronomy" if engine == "native" else engine


def parse_subhalo_config(section: dict) -> SubhaloSpec:
    where = "substructure"
    parse_engine(section)
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
    normalisation = _choice(section["normalisation"], f"{where}.normalisation", NORMALISATIONS)
    count = _choice(section["count"], f"{where}.count", COUNTS)
    placement = _choice(section["placement"], f"{where}.placement", PLACEMENTS)
    subtract = section["subtract_from_macro"]
    if not isinstance(subtract, bool):
        raise LensnetError(f"{where}.subtract_from_macro: expected true or false, got {subtract!r}")
    f_sub = sigma_sub = None
    h = section["host"]
    host = (_positive(h["log10_m200"], f"{where}.host.log10_m200"),
            _number(h["mass_scaling"], f"{where}.host.mass_scaling"),
            _number(h["redshift_scaling"], f"{where}.host.redshift_scaling"))
    if not 10.0 <= host[0] <= 15.0:
        raise LensnetError(f"{where}.host.log10_m200: a lens host halo has log10 M200/Msun in [10, 15], "
                           f"got {host[0]:g}")
    if normalisation == "sigma_sub":
        sigma_sub = parse_prior(section["sigma_sub"], f"{where}.sigma_sub")
        lo, hi = sigma_sub.support()
        if lo < 0 or not math.isfinite(hi):
            raise LensnetError(f"{where}.sigma_sub: a subhalo number density (kpc^-2) is >= 0 and finite, but "
                               f"{sigma_sub.to_yaml()!r} allows [{lo:g}, {hi:g}]")
        if count == "fixed":
            raise LensnetError(f"{where}.count: fixed needs normalisation: count (sigma_sub sets a Poisson count)")
    if normalisation == "f_sub":
        f_sub = parse_prior(section["f_sub"], f"{where}.f_sub")
        lo, hi = f_sub.support()
        if lo < 0 or hi >= 1:
            raise LensnetError(
                f"{where}.f_sub: a substructure mass fraction lies in [0, 1), but {f_sub.to_yaml()!r} allows "
                f"[{lo:g}, {hi:g}]"
            )
        if count == "fixed":
            raise LensnetError(f"{where}.count: fixed needs normalisation: count (f_sub sets a Poisson count)")
    if (placement == "area" or subtract or normalisation != "count") and radius.kind != "uniform":
        raise LensnetError(
            f"{where}.radius: placement area, f_sub/sigma_sub normalisation and subtract_from_macro need the annulus "
            f"as {{uniform: [a, b]}}, got {radius.to_yaml()!r}"
        )
    conc = section["concentration"]
    if not isinstance(conc, dict) or conc.get("model") not in CONCENTRATION_MODELS:
        raise LensnetError(
            f"{where}.concentration.model: unknown model {conc.get('model')!r}; "
            f"choose one of {', '.join(CONCENTRATION_MODELS)}"
        )
    scatter = _positive(conc["scatter_dex"], f"{where}.concentration.scatter_dex", allow_zero=True)
    trunc = section["truncation"]
    if isinstance(trunc, str):
        if trunc not in TRUNCATIONS:
            raise LensnetError(f"{where}.truncation: unknown rule {trunc!r}; choose one of {', '.join(TRUNCATIONS)} "
                               "or a number tau = r_trunc / r_s")
        rule, tau = trunc, None
    else:
        rule, tau = "tau", _positive(trunc, f"{where}.truncation (a rule or tau = r_trunc/r_s)")
    return SubhaloSpec(profile, n_mean, m_min, m_max, slope.args[0], radius, scatter, tau,
                       normalisation, f_sub, count, placement, subtract, conc["model"], sigma_sub, host, rule)


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise LensnetError(f"{field}: unknown value {value!r}; choose one of {', '.join(choices)}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LensnetError(f"{field}: expected a number, got {value!r}")
    return float(value)


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


def power_law_mean(m_min: float, m_max: float, slope: float) -> float:
    """Mean mass of dN/dm ∝ m^slope on [m_min, m_max] (slope != -1, -2)."""
    a, b = slope + 1.0, slope + 2.0
    if abs(b) < 1e-12:
        return (math.log(m_max) - math.log(m_min)) * a / (m_max**a - m_min**a)
    return (a / b) * (m_max**b - m_min**b) / (m_max**a - m_min**a)


def tnfw_mass_fraction(c200: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Total mass of a truncated NFW over M200c (Baltz, Marshall & Oguri 2009, eq. A.3; tau = r_t / r_s)."""
    mu = np.log1p(c200) - c200 / (1.0 + c200)
    t2 = tau * tau
    m_t = t2 / (t2 + 1.0) ** 2 * ((t2 - 1.0) * np.log(tau) + tau * math.pi - (t2 + 1.0))
    return m_t / mu


def deeplense_mass_factor(H0: float, Om0: float, z_lens: float, z_source: float, lens_cosmo: Any) -> float:
    """How strongly a mass lenses in DeepLenseSim relative to lenstronomy (0.593 at z 0.5 / 1.0).

    DeepLenseSim's mass_to_radius is θ = sqrt(4 G M / c² · D_LS / (D_L D_S)) with LUMINOSITY distances
    and D_LS = D_S - D_L (and 206265 arcsec per radian). A point mass of θ_E lenses as π θ_E² Σ_crit.
    """
    from astropy import units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=H0, Om0=Om0)
    d_l = cosmo.luminosity_distance(z_lens).to(u.m)
    d_s = cosmo.luminosity_distance(z_source).to(u.m)
    theta = np.sqrt(4 * G * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)).decompose().value * 206265
    return float(theta**2 * math.pi * float(lens_cosmo.sigma_crit_angle))


def duffy08_concentration(m200: np.ndarray, z: float, h: float) -> np.ndarray:
    a, b, c, pivot = _DUFFY
    return a * (m200 / (pivot / h)) ** b * (1.0 + z) ** c


def truncation_roche(pop: SubhaloPopulation, m: np.ndarray, r: np.ndarray, r3d: np.ndarray, rs: np.ndarray,
                     theta_e: float) -> np.ndarray:
    """pyHalo's TRUNCATION_ROCHE (see ROCHE) at the 3D distance r3d (arcsec at the lens plane)."""
    norm, m_power, r_power = ROCHE
    k = pop.kpc_per_arcsec
    return norm * (m / 1e7) ** m_power * (r3d * k / 50.0) ** r_power / k


def truncation_tidal(pop: SubhaloPopulation, m: np.ndarray, r: np.ndarray, r3d: np.ndarray, rs: np.ndarray,
                     theta_e: float) -> np.ndarray:
    """Point-mass Jacobi radius r3d (m / (3 M_SIS(<r3d)))^(1/3), M_SIS(<r) = 2 Σ_crit θ_E r the host's 3D mass."""
    return r3d * np.cbrt(m / (3.0 * 2.0 * pop.sigma_crit * theta_e * r3d))


def truncation_tidal_projected(pop: SubhaloPopulation, m: np.ndarray, r: np.ndarray, r3d: np.ndarray,
                               rs: np.ndarray, theta_e: float) -> np.ndarray:
    """The former rule: the Jacobi radius at the PROJECTED radius R (truncates at ~0.8 r_s; kept to reproduce)."""
    return truncation_tidal(pop, m, r, r, rs, theta_e)


TRUNCATION_RULES = {"roche": truncation_roche, "tidal": truncation_tidal, "tidal_projected": truncation_tidal_projected}
NEEDS_DEPTH = ("roche", "tidal")


class FSubCalibration:
    """The expected count in the label annulus whose realised f_sub has the requested MEDIAN.

    The realised mass in the annulus is a compound Poisson sum of per-halo lensing masses (a heavy-tailed
    power law: its median lies below its mean). g(λ) = median of that sum for N ~ Poisson(λ) is tabulated
    once by Monte Carlo (fixed seed: one config gives the same table, so the same bytes) from a pool of
    per-halo lensing masses, and inverted per image. Below λ = ln 2 the median is 0 whatever λ: requests that
    small fall back to matching the mean (λ = M / <m_lens>).
    """

    SAMPLES = 400_000  # halo draws per λ node (at least 101 sums per node)

    def __init__(self, pool: np.ndarray, lam_max: float) -> None:
        rng = np.random.default_rng(20_261_206)
        self.mean = float(pool.mean())
        hi = max(lam_max, 2.0)
        lam = np.geomspace(math.log(2.0) * 1.05, hi, max(8, int(math.ceil(12 * math.log10(hi / 0.7)))))
        medians = []
        for value in lam:
            k = int(min(2001, max(101, self.SAMPLES / value))) | 1
            counts = rng.poisson(value, k)
            owner = np.repeat(np.arange(k), counts)
            masses = pool[rng.integers(0, len(pool), int(counts.sum()))]
            medians.append(float(np.median(np.bincount(owner, weights=masses, minlength=k))))
        self.lam = lam
        self.median = np.maximum.accumulate(np.asarray(medians))

    def count(self, mass: float) -> float:
        """λ whose median annulus mass is `mass` (Msun of lensing mass)."""
        g = self.median
        if mass <= 0:
            return 0.0
        if mass < g[0] or g[0] <= 0:
            return mass / self.mean
        if mass >= g[-1]:
            return float(self.lam[-1] * mass / g[-1])
        return float(np.exp(np.interp(math.log(mass), np.log(g), np.log(self.lam))))


_CALIBRATIONS: dict[tuple, FSubCalibration] = {}


class SubhaloPopulation:
    """Draws one CDM (or, thinned, WDM) realization as a Haloes group of `profile`, plus its summary."""

    def __init__(self, spec: SubhaloSpec, lens_cosmo: Any, z_lens: float, h: float, mass_factor: float = 1.0,
                 om0: float = 0.3, halo_model: dict | None = None,
                 theta_e_range: tuple[float, float] = (1.0, 1.6), deflection_scale: float = 1.0) -> None:
        self.profile = spec.profile
        # the renderer multiplies every deflection by this (a replica's multi-plane convention): a mass m then
        # lenses as s m and the lens's Einstein radius is s theta_E; the labels measure what the image holds
        self.deflection_scale = float(deflection_scale)
        self.spec = spec
        self.mass_factor = mass_factor
        self._sigma_crit = float(lens_cosmo.sigma_crit_angle)  # Msun / arcsec^2
        self.sigma_crit = self._sigma_crit
        self.kpc_per_arcsec = float(lens_cosmo.dd) * 1e3 * math.pi / 648000.0
        self._annulus = spec.radius.support()
        a, b = self._annulus
        self._area = math.pi * (b * b - a * a)
        self._mean_mass = power_law_mean(spec.m_min, spec.m_max, spec.slope)
        self._k_rs, self._k_alpha = mass_conversions(lens_cosmo)
        self._c_norm = _DUFFY[0] * (1.0 + z_lens) ** _DUFFY[2] * (_DUFFY[3] / h) ** (-_DUFFY[1])
        self._c_slope = _DUFFY[1]
        self._c_table = None
        colossus = spec.profile == "TNFW" and spec.concentration_model in COLOSSUS_CONCENTRATIONS
        if colossus:
            from lensnet.simulate.halo_models import HALO_MODEL_DEFAULTS, use_colossus

            use_colossus(100.0 * h, om0, halo_model or HALO_MODEL_DEFAULTS)
            lo = spec.m_min * min(mass_factor, 1.0)
            hi = spec.m_max * max(mass_factor, 1.0)
            self._c_table = ConcentrationTable(spec.concentration_model, lo, hi, np.array([z_lens]), h)
        self._truncate = TRUNCATION_RULES.get(spec.truncation)
        self._depth = None
        if spec.profile == "TNFW" and spec.truncation in NEEDS_DEPTH:
            self._depth = _host_depth(spec, z_lens, h, om0, colossus, self.kpc_per_arcsec)
        self._sigma_sub_count = 0.0  # mean count per unit sigma_sub (kpc^-2)
        if spec.normalisation == "sigma_sub":
            log_m_host, k_mass, k_z = spec.host
            scaling = 10.0 ** (k_mass * (log_m_host - 13.0) + k_z * math.log10(z_lens + 0.5))
            p = spec.slope + 1.0
            integral = ((spec.m_max / SIGMA_SUB_PIVOT) ** p - (spec.m_min / SIGMA_SUB_PIVOT) ** p) / p
            self._sigma_sub_count = scaling * self._area * self.kpc_per_arcsec**2 * integral
        self.param_names = CDM_PARAMS + {"f_sub": F_SUB_PARAMS, "sigma_sub": SIGMA_SUB_PARAMS}.get(
            spec.normalisation, ())
        self._theta_e_range = (float(theta_e_range[0]), float(theta_e_range[1]))
        self._calibration = self._build_calibration() if spec.normalisation == "f_sub" else None

    def mass_in_theta_e(self, theta_e: float) -> float:
        return math.pi * theta_e * theta_e * self._sigma_crit

    def nfw_angles(self, m200: np.ndarray, c200: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Rs_angle, alpha_Rs) as lenstronomy's LensCosmo.nfw_physical2angle gives them."""
        mu = np.log1p(c200) - c200 / (1.0 + c200)
        return self._k_rs * np.cbrt(m200) / c200, self._k_alpha * np.cbrt(m200) ** 2 * c200 / mu

    def median_concentration(self, m200: np.ndarray) -> np.ndarray:
        """c200c at z_lens of the configured relation (colossus table or Duffy et al. 2008), no scatter."""
        if self._c_table is None:
            return self._c_norm * m200**self._c_slope
        return self._c_table(m200)

    def expected_count(self, f_sub: float, theta_e: float) -> float:
        """Mean subhalo count (whole population) whose realised f_sub has median f_sub (normalisation: f_sub)."""
        scale = self.deflection_scale
        inside = self.annulus_fraction(scale * theta_e)
        if inside <= 0:
            return 0.0
        return self._calibration.count(f_sub * self.mass_in_theta_e(scale * theta_e) / scale) / inside

    def expected_count_sigma_sub(self, sigma_sub: float) -> float:
        """Mean subhalo count in the annulus for pyHalo's sigma_sub (kpc^-2; normalisation: sigma_sub)."""
        return sigma_sub * self._sigma_sub_count

    def annulus_fraction(self, theta_e: float) -> float:
        """Probability that a subhalo lands in the f_sub annulus [θ_E/2, 3θ_E/2] (the placement's distribution)."""
        a, b = self._annulus
        lo, hi = max(F_SUB_ANNULUS[0] * theta_e, a), min(F_SUB_ANNULUS[1] * theta_e, b)
        if hi <= lo or b <= a:
            return 0.0
        if self.spec.placement == "area":
            return (hi * hi - lo * lo) / (b * b - a * a)
        return (hi - lo) / (b - a)

    def enclosed_mass(self, lensing_mass: float, theta: float) -> float:
        """Mean lensing mass inside radius theta of the population's distribution over the annulus."""
        a, b = self._annulus
        t = min(max(theta, a), b)
        if self.spec.placement == "area":
            return lensing_mass * (t * t - a * a) / (b * b - a * a)
        return lensing_mass * (t - a) / (b - a)

    def _radii(self, u: np.ndarray) -> np.ndarray:
        if self.spec.placement == "area":
            a, b = self._annulus
            return np.sqrt(a * a + (b * b - a * a) * u)
        return inverse_cdf(self.spec.radius, u)

    def _concentrations(self, rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
        c = self.median_concentration(m)
        if self.spec.concentration_scatter_dex > 0:
            c = c * 10.0 ** (self.spec.concentration_scatter_dex * rng.standard_normal(len(m)))
        if self._c_table is not None:
            c = np.maximum(c, CONCENTRATION_FLOOR)
        return c

    def _tnfw(self, m: np.ndarray, c: np.ndarray, r: np.ndarray, u_depth: np.ndarray | None,
              theta_e: float) -> tuple[np.ndarray, ...]:
        """(Rs, alpha_Rs, r_trunc, lensing mass) of TNFW haloes of lensing M200 m at projected radii r (arcsec)."""
        rs, alpha = self.nfw_angles(m, c)
        if self._truncate is None:
            r_trunc = self.spec.truncation_tau * rs
        else:
            r3d = r
            if self._depth is not None:
                k = self.kpc_per_arcsec
                r3d = np.hypot(r, self._depth.depth(r * k, u_depth) / k)
            r_trunc = self._truncate(self, m, r, r3d, rs, theta_e)
        r_trunc = np.maximum(r_trunc, TRUNCATION_FLOOR)
        return rs, alpha, r_trunc, m * tnfw_mass_fraction(c, r_trunc / rs)

    def _build_calibration(self) -> FSubCalibration:
        """The f_sub calibration from a pool of per-halo lensing masses in the annulus at the median θ_E."""
        spec = self.spec
        lo_e, hi_e = self._theta_e_range
        theta_ref = 0.5 * (lo_e + hi_e)
        key = (repr(spec), self.mass_factor, self._sigma_crit, self.kpc_per_arcsec, self._theta_e_range)
        found = _CALIBRATIONS.get(key)
        if found is not None:
            return found
        rng = np.random.default_rng(7)
        n = 50_000
        m = power_law_masses(rng.random(n), spec.m_min, spec.m_max, spec.slope) * self.mass_factor
        if self.profile == "TNFW":
            a, b = self._annulus
            lo = max(F_SUB_ANNULUS[0] * theta_ref, a)
            hi = max(min(F_SUB_ANNULUS[1] * theta_ref, b), lo)
            r = np.sqrt(lo * lo + (hi * hi - lo * lo) * rng.random(n))
            m = self._tnfw(m, self._concentrations(rng, m), r, rng.random(n), theta_ref)[3]
        f_max = spec.f_sub.support()[1]
        lam_max = 1.5 * f_max * self.mass_in_theta_e(hi_e) / float(m.mean())
        found = _CALIBRATIONS[key] = FSubCalibration(m, lam_max)
        return found

    def draw(
        self, rng: np.random.Generator, center_x: float, center_y: float, theta_e: float, wdm: WdmSpec | None = None
    ) -> tuple[Haloes, tuple[float, ...], float]:
        """(haloes, summary, lensing mass inside theta_e); summary in param_names (+ WDM_PARAMS with wdm) order.

        With `wdm` the CDM draw is made first, exactly as without, then thinned (see the module docstring).
        """
        spec = self.spec
        requested: tuple[float, ...] = ()
        lam = 0.0
        if spec.normalisation == "f_sub":
            f_drawn = float(inverse_cdf(spec.f_sub, rng.random()))
            n = int(rng.poisson(self.expected_count(f_drawn, theta_e)))
            requested = (f_drawn,)
        elif spec.normalisation == "sigma_sub":
            sigma_sub = float(inverse_cdf(spec.sigma_sub, rng.random()))
            lam = self.expected_count_sigma_sub(sigma_sub)
            n = int(rng.poisson(lam))
            # the realised normalisation: the drawn one scaled by the realised over the expected CDM count
            requested = (sigma_sub * n / lam if lam > 0 else 0.0, sigma_sub)
        elif spec.count == "fixed":
            n = int(round(spec.n_mean))
        else:
            n = int(rng.poisson(spec.n_mean))
        tnfw = self.profile == "TNFW"
        u = rng.random((4 if self._depth is not None else 3, n))
        m = power_law_masses(u[0], spec.m_min, spec.m_max, spec.slope)
        r = self._radii(u[1])
        phi = 2.0 * math.pi * u[2]
        u_depth = u[3] if self._depth is not None else None
        x = center_x + r * np.cos(phi)
        y = center_y + r * np.sin(phi)
        m_lens = m * self.mass_factor
        c = self._concentrations(rng, m_lens) if tnfw else None
        extra: list[float] = []
        if wdm is not None:
            log10_m_hm = float(inverse_cdf(wdm.log10_m_hm, rng.random()))
            m_hm = 10.0**log10_m_hm
            keep = rng.random(n) < wdm.model.mass_suppression(m, m_hm)
            m, m_lens, x, y, r = m[keep], m_lens[keep], x[keep], y[keep], r[keep]
            n = len(m)
            if tnfw:
                c = np.maximum(c[keep] * wdm.model.concentration_suppression(m, m_hm), CONCENTRATION_FLOOR)
                u_depth = u_depth[keep] if u_depth is not None else None
            extra.append(log10_m_hm)
        if tnfw:
            rs, alpha, r_trunc, lensing = self._tnfw(m_lens, c, r, u_depth, theta_e)
            haloes = Haloes("TNFW", x, y, rs=rs, alpha_rs=alpha, r_trunc=r_trunc)
        else:
            lensing = m_lens
            haloes = Haloes("POINT_MASS", x, y, theta_e=np.sqrt(m_lens / (math.pi * self._sigma_crit)))
        scale = self.deflection_scale
        theta_label = scale * theta_e
        in_annulus = (r >= F_SUB_ANNULUS[0] * theta_label) & (r <= F_SUB_ANNULUS[1] * theta_label)
        f_sub = scale * float(lensing[in_annulus].sum()) / self.mass_in_theta_e(theta_label)
        lensing_total = float(lensing.sum())
        summary = (float(n), float(m.sum()), scale * lensing_total, f_sub, *requested, *extra)
        return haloes, summary, self.enclosed_mass(lensing_total, theta_e)


def _host_depth(spec: SubhaloSpec, z_lens: float, h: float, om0: float, colossus: bool,
                kpc_per_arcsec: float) -> HostDepth:
    """The NFW host (M200c = 10^host.log10_m200, the population's concentration relation) the depths come from."""
    from astropy import units as u
    from astropy.cosmology import FlatLambdaCDM

    m_host = 10.0 ** spec.host[0]
    if colossus:
        from lensnet.simulate.halo_models import colossus_concentration

        c_host = float(colossus_concentration(np.array([m_host]), z_lens, spec.concentration_model, h)[0])
    else:
        c_host = float(duffy08_concentration(np.array([m_host]), z_lens, h)[0])
    rho = FlatLambdaCDM(H0=100.0 * h, Om0=om0).critical_density(z_lens).to(u.Msun / u.kpc**3).value
    a, b = spec.radius.support()
    return HostDepth(m_host, c_host, float(rho), a * kpc_per_arcsec, b * kpc_per_arcsec)


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

    def __init__(self, spec: AxionSpec, lens_cosmo: Any, mass_factor: float = 1.0) -> None:
        self.spec = spec
        self.mass_factor = mass_factor
        self._block = PriorBlock([("vortex_mass", spec.vortex_mass), ("log10_m_axion", spec.log10_m_axion),
                                  ("vortex_angle", spec.angle)])
        self._unit = np.linspace(-1.0, 1.0, spec.n_points)
        self._theta_per_sqrt_mass = 1.0 / math.sqrt(math.pi * float(lens_cosmo.sigma_crit_angle) * spec.n_points)

    def draw(
        self, rng: np.random.Generator, center_x: float, center_y: float, theta_e: float = 0.0
    ) -> tuple[Haloes, tuple[float, float, float, float], float]:
        """(haloes, (log10_m_axion, vortex_mass, vortex_angle, vortex_half_length), lensing mass inside theta_e)."""
        mass, log10_m, angle = self._block.sample(rng).tolist()
        half_length = self.spec.half_length_ref * 10.0 ** (-22.0 - log10_m)
        theta = self._theta_per_sqrt_mass * math.sqrt(mass * self.mass_factor)
        s = self._unit * half_length
        haloes = Haloes("POINT_MASS", center_x + s * math.cos(angle), center_y + s * math.sin(angle),
                        theta_e=np.full(len(s), theta))
        inside = float(np.count_nonzero(np.abs(s) < theta_e)) / self.spec.n_points
        return haloes, (log10_m, mass, angle, half_length), inside * mass * self.mass_factor
