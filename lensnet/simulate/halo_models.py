"""Halo-model relations for the substructure populations: colossus tables built once, WDM suppressions.

colossus (Diemer 2018) gives the concentration-mass relations (diemer19: Diemer & Joyce 2019;
ludlow16: Ludlow et al. 2016) and the Sheth & Tormen (1999) halo mass function. Every colossus call
happens when a simulator is built: the tables are then interpolated per image (numpy only), so a
draw never calls colossus. colossus keeps a cache in ~/.colossus by default; here every persistence
is switched off (module settings, the cosmology and the concentration module's own storage user), so
it works with a read-only or absent HOME, writes nothing and downloads nothing (colossus never
downloads: its power spectrum is the Eisenstein & Hu 1998 fit).

The colossus cosmology is flat ΛCDM with the dataset's H0 and Om0 (the lensing distances use the same
two numbers) plus `cosmology.halo_model` (Ob0, sigma8, ns: Planck 2018, pyHalo's defaults), which
only these relations read.

WDM (pyHalo's conventions, read in dangilman/pyHalo at commit f8a4b37)
    mass function  n_WDM / n_CDM = (1 + a (m_hm / m)^b)^c  (pyHalo's WDMPowerLaw turnover; m_hm the
                   half-mode mass). Named constant sets as pyHalo's preset_mass_function_models has them:
                   lovell2020 (a, b, c) = (1.95, 0.8, -1.0): the default of pyHalo's WDM preset for
                   subhaloes AND field haloes (`mass_function_model_subhalos='LOVELL2020'`; Lovell 2020
                   fitted these to field haloes); shmf_lovell2020 (36.15, 2.5, -0.2): Lovell 2020's
                   subhalo fit (α m_hm/m)^β with α = 4.2, β = 2.5 written as a = α^β; lovell2014
                   (1.0, 1.0, -1.3).
    concentration  c_WDM = c_CDM (1 + 60 m_hm / m)^-0.17, floored at 1.2 (pyHalo's BOSE2016 preset:
                   ConcentrationWDMPolynomial, c_scale 60, c_power -0.17, c_power_inner 1, no redshift
                   evolution; Bose et al. 2016), applied to the CDM concentration after its scatter,
                   as pyHalo does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

COLOSSUS_CONCENTRATIONS = ("diemer19", "ludlow16")
WDM_MASS_FUNCTIONS = {
    "lovell2020": (1.95, 0.8, -1.0),
    "shmf_lovell2020": (36.15, 2.5, -0.2),
    "lovell2014": (1.0, 1.0, -1.3),
}
WDM_CONCENTRATIONS = {"bose2016": (60.0, 1.0, -0.17)}  # (c_scale, c_power_inner, c_power)
CONCENTRATION_FLOOR = 1.2  # pyHalo's universal minimum concentration
LOG10_M_HM_RANGE = (4.0, 12.0)  # half-mode masses lensing can probe, Msun; outside is a config error
TABLE_PER_DEX = 20  # log-log interpolation nodes per decade of mass (< 1e-3 relative error)
HALO_MODEL_DEFAULTS = {"Ob0": 0.049, "sigma8": 0.81, "ns": 0.965}  # Planck 2018, as pyHalo's CosmoDefaults


def use_colossus(H0: float, Om0: float, halo_model: dict) -> Any:
    """Make colossus's current cosmology the dataset's (flat ΛCDM), with every disk cache off."""
    from colossus import settings

    settings.PERSISTENCE = ""
    from colossus.cosmology import cosmology
    from colossus.halo import concentration as colossus_concentration
    from colossus.utils import storage

    # the concentration module builds its storage user with a hard-coded 'rw' (a ~/.colossus cache)
    if getattr(colossus_concentration.storageUser, "persistence_write", True) or getattr(
            colossus_concentration.storageUser, "persistence_read", True):
        colossus_concentration.storageUser = storage.StorageUser(
            "halo.concentration", "", lambda: "concentration", lambda: "concentration", None)
    params = {"flat": True, "H0": float(H0), "Om0": float(Om0), "Ob0": float(halo_model["Ob0"]),
              "sigma8": float(halo_model["sigma8"]), "ns": float(halo_model["ns"])}
    if not 0 < params["Ob0"] < params["Om0"]:
        raise LensnetError(f"cosmology.halo_model.Ob0: must lie in (0, Om0 = {Om0:g}), got {params['Ob0']:g}")
    return cosmology.setCosmology("lensnet", params=params, persistence="")


def colossus_concentration(m200c: np.ndarray, z: float, model: str, h: float) -> np.ndarray:
    """Median c200c of haloes of M200c `m200c` (Msun) at redshift z, by a direct colossus call."""
    from colossus.halo.concentration import concentration

    with warnings.catch_warnings():  # masses below a model's calibrated range are extrapolated, as pyHalo does
        warnings.simplefilter("ignore")
        c = concentration(np.asarray(m200c, dtype=float) * h, "200c", float(z), model=model)
    return np.asarray(c, dtype=float)


class ConcentrationTable:
    """log10 c - log10 M tables (one row per redshift), built once by colossus, interpolated per halo."""

    def __init__(self, model: str, m_min: float, m_max: float, redshifts: np.ndarray, h: float) -> None:
        lo, hi = math.log10(m_min) - 0.05, math.log10(m_max) + 0.05
        n = max(4, int(math.ceil((hi - lo) * TABLE_PER_DEX)) + 1)
        self.log_m = np.linspace(lo, hi, n)
        self.redshifts = np.atleast_1d(np.asarray(redshifts, dtype=float))
        masses = 10.0 ** self.log_m
        with np.errstate(invalid="ignore", divide="ignore"):
            self.log_c = np.stack([np.log10(colossus_concentration(masses, z, model, h)) for z in self.redshifts])
        if not np.all(np.isfinite(self.log_c)):
            raise LensnetError(
                f"substructure.concentration.model: colossus {model} gives no concentration for some masses in "
                f"[{m_min:.3g}, {m_max:.3g}] Msun at z in [{self.redshifts.min():g}, {self.redshifts.max():g}]; "
                "choose another model or mass range")
        self._step = self.log_m[1] - self.log_m[0]

    def __call__(self, m: np.ndarray, row: np.ndarray | int = 0) -> np.ndarray:
        """Median concentration of masses m, each at the redshift of table row `row` (linear in log-log)."""
        t = np.clip((np.log10(m) - self.log_m[0]) / self._step, 0.0, len(self.log_m) - 1.000001)
        i = t.astype(np.int64)
        f = t - i
        return 10.0 ** (self.log_c[row, i] * (1.0 - f) + self.log_c[row, i + 1] * f)


def sheth_tormen_dndm(m: np.ndarray, z: float, h: float) -> np.ndarray:
    """Sheth & Tormen (1999) dn/dM in comoving Mpc^-3 Msun^-1 (colossus 'sheth99'; masses read as M200c, as pyHalo)."""
    from colossus.lss.mass_function import massFunction

    m = np.asarray(m, dtype=float)
    dndlnm = massFunction(m * h, float(z), q_out="dndlnM", model="sheth99")  # (Mpc/h)^-3
    return np.asarray(dndlnm, dtype=float) * h**3 / m


@dataclass(frozen=True)
class WdmModel:
    """The suppressions of a half-mode mass m_hm; see the module docstring for the constants."""

    mass_function: str = "lovell2020"
    concentration: str = "bose2016"

    def mass_suppression(self, m: np.ndarray, m_hm: float) -> np.ndarray:
        """n_WDM / n_CDM at mass m: the probability a CDM halo of mass m is kept."""
        a, b, c = WDM_MASS_FUNCTIONS[self.mass_function]
        return (1.0 + a * (m_hm / m) ** b) ** c

    def concentration_suppression(self, m: np.ndarray, m_hm: float) -> np.ndarray:
        scale, inner, power = WDM_CONCENTRATIONS[self.concentration]
        return (1.0 + scale * (m_hm / m) ** inner) ** power


class HostDepth:
    """Line-of-sight depths of subhaloes in an NFW host: |z| given R from rho_host(sqrt(R² + z²)), R² + z² < r200².

    pyHalo gives every subhalo a 3D radius drawn from its host's NFW profile out to r200 (dangilman/pyHalo
    492d543, Rendering/SpatialDistributions/nfw.py ProjectedNFW.draw: r3d drawn independently of the projected
    radius); here the depth is drawn conditioned on the projected radius R, so r3d = sqrt(R² + z²) >= R always.
    The host is M200c `m200` with concentration `c200`; the inverse CDFs are tabulated once on a grid of R
    (physical kpc) and interpolated per halo (bilinear in R and the uniform u).
    """

    N_R = 33
    N_U = 513
    N_Z = 4097

    def __init__(self, m200: float, c200: float, rho_crit: float, r_min: float, r_max: float) -> None:
        """rho_crit in Msun/kpc³ at the host's redshift; [r_min, r_max] the projected radii (kpc) to tabulate."""
        self.r200 = (3.0 * m200 / (4.0 * math.pi * 200.0 * rho_crit)) ** (1.0 / 3.0)
        self.rs = self.r200 / c200
        if not 0 < r_min <= r_max < self.r200:
            raise LensnetError(f"substructure.radius: projected radii [{r_min:.3g}, {r_max:.3g}] kpc must lie inside "
                               f"the host's r200 = {self.r200:.3g} kpc")
        self._r = np.linspace(r_min, r_max, self.N_R)
        self._u = np.linspace(0.0, 1.0, self.N_U)
        s = np.linspace(0.0, 1.0, self.N_Z) ** 3  # dense near z = 0, where the density peaks
        rows = []
        for big_r in self._r:
            z = s * math.sqrt(self.r200**2 - big_r**2)
            x = np.sqrt(big_r**2 + z**2) / self.rs
            rho = 1.0 / (x * (1.0 + x) ** 2)
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(z))])
            rows.append(np.interp(self._u, cdf / cdf[-1], z))
        self._z = np.stack(rows)

    def depth(self, r_kpc: np.ndarray, u: np.ndarray) -> np.ndarray:
        """|z| (kpc) for projected radii r_kpc and uniforms u (same shapes)."""
        step = self._r[1] - self._r[0] if self.N_R > 1 and self._r[-1] > self._r[0] else 1.0
        t = np.clip((np.asarray(r_kpc) - self._r[0]) / step, 0.0, self.N_R - 1.000001)
        i = t.astype(np.int64)
        fi = t - i
        k = np.clip(np.asarray(u) * (self.N_U - 1), 0.0, self.N_U - 1.000001)
        j = k.astype(np.int64)
        fj = k - j
        z = self._z
        lo = z[i, j] * (1.0 - fj) + z[i, j + 1] * fj
        hi = z[i + 1, j] * (1.0 - fj) + z[i + 1, j + 1] * fj
        return lo * (1.0 - fi) + hi * fi
