"""Deflections of thousands of haloes on a regular grid at once (`substructure.engine: fast`).

lenstronomy sums its profiles one by one over every evaluation point: ~6,000 TNFW haloes on a
128 x 128 supersampled grid are ~10^8 profile evaluations per image. Here the same haloes cost one
FFT convolution plus a few hundred evaluations each, the particle-mesh scheme with an exact near
field of N-body codes (P3M, Hockney & Eastwood 1981):

far field   every halo's total lensing mass is deposited on the evaluation grid with cloud-in-cell
            weights (which keep each halo's centre of mass, so the dipole error vanishes); the
            deflection of the deposited masses at every grid point is one discrete convolution with
            the point-mass kernel, by FFT on a grid padded to twice its size (no periodic images).
near field  within R_c of a halo, the mesh's answer for that halo (its four cells' point-mass
            deflections) is replaced by the analytic deflection of its profile: TNFW as lenstronomy
            writes it (Baltz, Marshall & Oguri 2009, same clipping at 0.001 Rs) or a point mass.
edge        haloes beyond the grid's edge (line-of-sight haloes in a wider cone) are deposited on a
            mesh padded around the grid (up to one grid width); further out, a halo is evaluated
            analytically at every grid point.

What is approximated, only outside R_c: a TNFW is replaced by a point mass of its total mass
(error |w / R - alpha_TNFW(R)|, the mass it holds beyond R) and the deposit's quadrupole error is
~ w h^2 / R^3 (w = theta_E^2 of the halo's total mass, h the grid step). R_c is the radius where these
fall to `tolerance` x the RMS of the mesh's deflections (the mesh, computed first, sizes the answer; a
quarter of that for haloes truncated beyond 4 grid steps, whose errors point the same way over many
pixels), and at least `near_pixels` steps: mass-dependent, ~2 steps for a 1e6 Msun subhalo, the whole
grid for the most massive ones or for extended field haloes. `python -m lensnet.bench simulate` measures the
result against lenstronomy's sum over the same haloes (lensnet.simulate.engine_check);
tests/test_fast_lensing.py checks fixed populations.

Units: a point mass of Einstein radius theta_E deflects by theta_E^2 / R; a TNFW of total mass
M_tot lenses as a point mass of theta_E^2 = 4 rho0 Rs^3 m_t(tau) far away (rho0 as lenstronomy's
alpha2rho0, m_t the truncated mass of Baltz et al. 2009, eq. A.3, in units of 4 pi rho0 Rs^3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from lensnet.core.errors import LensnetError
from lensnet.simulate.substructure import Haloes

TNFW_S = 0.001  # lenstronomy's TNFW clips R at this fraction of Rs
POINT_R_MIN = 1e-25  # lenstronomy's POINT_MASS r_min
KIND_POINT, KIND_TNFW = 0, 1
EXTENDED_STEPS, EXTENDED_SHARE = 4.0, 0.25  # haloes truncated beyond 4 grid steps get 1/4 of the tolerance


def tnfw_rho0(rs: np.ndarray, alpha_rs: np.ndarray) -> np.ndarray:
    """lenstronomy's NFW alpha2rho0 (the normalisation ignores the truncation, as lenstronomy's does)."""
    return alpha_rs / (4.0 * rs * rs * (1.0 + math.log(0.5)))


def tnfw_total_weight(rs: np.ndarray, alpha_rs: np.ndarray, r_trunc: np.ndarray) -> np.ndarray:
    """theta_E^2 of the point mass a TNFW deflects like far away: 4 rho0 Rs^3 m_t(tau)."""
    tau = r_trunc / rs
    t2 = tau * tau
    m_t = t2 / (t2 + 1.0) ** 2 * ((t2 - 1.0) * np.log(tau) + tau * math.pi - (t2 + 1.0))
    return 4.0 * tnfw_rho0(rs, alpha_rs) * rs**3 * m_t


@njit(cache=True, fastmath=True)
def _tnfw_factor(r: float, rs: float, rho0: float, tau: float) -> float:
    """a with deflection = a * (dx, dy): lenstronomy's TNFW.tnfw_alpha."""
    r = max(r, TNFW_S * rs)
    x = max(r / rs, TNFW_S)
    if x < 1.0:
        s = math.sqrt(1.0 - x * x)
        f = math.atanh(s) / s
    elif x > 1.0:
        s = math.sqrt(x * x - 1.0)
        f = math.atan(s) / s
    else:
        f = 1.0
    t2 = tau * tau
    root = math.sqrt(t2 + x * x)
    log_l = math.log(x / (tau + root))
    g = t2 / (t2 + 1.0) ** 2 * ((t2 + 1.0 + 2.0 * (x * x - 1.0)) * f + tau * math.pi + (t2 - 1.0) * math.log(tau)
                                 + root * (-math.pi + log_l * (t2 - 1.0) / tau))
    return 4.0 * rho0 * rs * g / (x * x)


@njit(cache=True, fastmath=True)
def _exact_factor(kind: int, dx: float, dy: float, w: float, rs: float, rho0: float, tau: float) -> float:
    r = math.sqrt(dx * dx + dy * dy)
    if kind == KIND_TNFW:
        return _tnfw_factor(r, rs, rho0, tau)
    r = max(r, POINT_R_MIN)
    return w / (r * r)


@njit(cache=True)
def _deposit(x00: float, y00: float, sx: float, sy: float, n: int, hx: np.ndarray, hy: np.ndarray, w: np.ndarray,
             mesh: np.ndarray) -> np.ndarray:
    """Cloud-in-cell deposit of the haloes at least one step inside the grid; True where a halo was deposited."""
    inside = np.zeros(hx.shape[0], dtype=np.bool_)
    for k in range(hx.shape[0]):
        u = (hx[k] - x00) / sx  # fractional column
        v = (hy[k] - y00) / sy  # fractional row
        if 0.0 <= u < n - 1 and 0.0 <= v < n - 1:
            c0 = int(math.floor(u))
            r0 = int(math.floor(v))
            fu = u - c0
            fv = v - r0
            mesh[r0, c0] += (1.0 - fu) * (1.0 - fv) * w[k]
            mesh[r0, c0 + 1] += fu * (1.0 - fv) * w[k]
            mesh[r0 + 1, c0] += (1.0 - fu) * fv * w[k]
            mesh[r0 + 1, c0 + 1] += fu * fv * w[k]
            inside[k] = True
    return inside


@njit(cache=True, fastmath=True)
def _near_fields(x00: float, y00: float, sx: float, sy: float, n: int, kind: np.ndarray, hx: np.ndarray,
                 hy: np.ndarray, w: np.ndarray, rs: np.ndarray, rho0: np.ndarray, tau: np.ndarray,
                 r_cut: np.ndarray, inside: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> None:
    """Add exact-minus-mesh deflections within r_cut of deposited haloes, exact ones of the others everywhere."""
    h = abs(sx)
    for k in range(hx.shape[0]):
        u = (hx[k] - x00) / sx
        v = (hy[k] - y00) / sy
        if inside[k]:
            c0 = int(math.floor(u))
            r0 = int(math.floor(v))
            fu = u - c0
            fv = v - r0
            cw = ((r0, c0, (1.0 - fu) * (1.0 - fv)), (r0, c0 + 1, fu * (1.0 - fv)),
                  (r0 + 1, c0, (1.0 - fu) * fv), (r0 + 1, c0 + 1, fu * fv))
            rad = r_cut[k] / h
            lo_r = max(0, int(math.floor(v - rad)))
            hi_r = min(n - 1, int(math.ceil(v + rad)))
            lo_c = max(0, int(math.floor(u - rad)))
            hi_c = min(n - 1, int(math.ceil(u + rad)))
            rad2 = rad * rad
            for row in range(lo_r, hi_r + 1):
                for col in range(lo_c, hi_c + 1):
                    if (col - u) ** 2 + (row - v) ** 2 > rad2:
                        continue
                    dx = x00 + sx * col - hx[k]
                    dy = y00 + sy * row - hy[k]
                    a = _exact_factor(kind[k], dx, dy, w[k], rs[k], rho0[k], tau[k])
                    ex = a * dx
                    ey = a * dy
                    for rr, cc, wt in cw:
                        if rr == row and cc == col:
                            continue  # a cell exerts no force on itself
                        mx = sx * (col - cc)
                        my = sy * (row - rr)
                        q = wt * w[k] / (mx * mx + my * my)
                        ex -= q * mx
                        ey -= q * my
                    ax[row, col] += ex
                    ay[row, col] += ey
        else:
            for row in range(n):
                for col in range(n):
                    dx = x00 + sx * col - hx[k]
                    dy = y00 + sy * row - hy[k]
                    a = _exact_factor(kind[k], dx, dy, w[k], rs[k], rho0[k], tau[k])
                    ax[row, col] += a * dx
                    ay[row, col] += a * dy


class DeflectionGrid:
    """Deflections of Haloes groups at the points of a regular axis-aligned grid (lenstronomy's flattened order).

    x, y: the evaluation coordinates as lenstronomy's ImageNumerics.coordinates_evaluate gives them
    (supersampled pixel centres, row-major). The point-mass kernel's FFT is computed once here.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, near_pixels: float = 2.0, tolerance: float = 2e-4) -> None:
        n = int(round(math.sqrt(x.size)))
        if n * n != x.size or y.size != x.size:
            raise LensnetError(f"substructure.engine fast: needs a square evaluation grid, got {x.size} points")
        gx, gy = x.reshape(n, n), y.reshape(n, n)
        sx, sy = float(gx[0, 1] - gx[0, 0]), float(gy[1, 0] - gy[0, 0])
        regular = (np.allclose(gx, gx[0:1, :], atol=1e-9) and np.allclose(gy, gy[:, 0:1], atol=1e-9)
                   and np.allclose(np.diff(gx[0]), sx) and np.allclose(np.diff(gy[:, 0]), sy)
                   and math.isclose(abs(sx), abs(sy), rel_tol=1e-6) and sx != 0.0)
        if not regular:
            raise LensnetError("substructure.engine fast: needs a regular evaluation grid (no adaptive supersampling)")
        self.n, self.sx, self.sy = n, sx, sy
        self.x00, self.y00 = float(gx[0, 0]), float(gy[0, 0])
        self.x0c, self.y0c = float(gx.mean()), float(gy.mean())
        self.near_pixels, self.tolerance = near_pixels, tolerance
        self._kernels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _kernel(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """FFTs of the point-mass kernel (x and y) for an m x m mesh padded to 2m (computed once per m)."""
        found = self._kernels.get(m)
        if found is None:
            offsets = np.fft.fftfreq(2 * m, 1.0 / (2 * m))  # 0, 1, ..., m-1, -m, ..., -1
            dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
            kx, ky = self.sx * dc, self.sy * dr
            r2 = kx * kx + ky * ky
            r2[0, 0] = 1.0
            found = np.fft.rfft2(_zero_origin(kx / r2)), np.fft.rfft2(_zero_origin(ky / r2))
            self._kernels[m] = found
        return found

    def _pad(self, hx: np.ndarray, hy: np.ndarray) -> int:
        """Cells of mesh around the grid so that haloes beyond its edge (line of sight) are deposited too.

        0 when every halo is inside; else the overhang rounded up to a quarter of the grid, at most one grid
        (haloes further out are evaluated exactly at every grid point).
        """
        n = self.n
        u = (hx - self.x00) / self.sx
        v = (hy - self.y00) / self.sy
        over = max(float(-u.min()), float(u.max()) - (n - 1), float(-v.min()), float(v.max()) - (n - 1))
        if over < 0.0:
            return 0
        quarter = max(1, n // 4)
        return min(n, quarter * math.ceil((over + 2.0) / quarter))

    def deflections(self, groups: Sequence[Haloes]) -> tuple[np.ndarray, np.ndarray]:
        """(alpha_x, alpha_y) of every halo of every group, flattened like the grid's coordinates."""
        n = self.n
        ax = np.zeros((n, n))
        ay = np.zeros((n, n))
        arrays = [_halo_arrays(g) for g in groups if len(g)]
        if not arrays:
            return ax.ravel(), ay.ravel()
        kind, hx, hy, w, rs, rho0, tau, r_trunc = (np.concatenate(a) for a in zip(*arrays))
        pad = self._pad(hx, hy)
        m = n + 2 * pad
        mesh = np.zeros((m, m))
        inside = _deposit(self.x00 - pad * self.sx, self.y00 - pad * self.sy, self.sx, self.sy, m, hx, hy, w, mesh)
        if inside.any():
            fkx, fky = self._kernel(m)
            f = np.fft.rfft2(mesh, s=(2 * m, 2 * m))
            ax += np.fft.irfft2(f * fkx, s=(2 * m, 2 * m))[pad:pad + n, pad:pad + n]
            ay += np.fft.irfft2(f * fky, s=(2 * m, 2 * m))[pad:pad + n, pad:pad + n]
        # the far-field error allowed per halo, from the mesh's estimate of the deflections' size
        scale = float(np.sqrt(np.mean(ax * ax + ay * ay)))
        if scale == 0.0:  # only haloes outside the mesh: their deflection at the grid's centre sets the scale
            scale = float(np.max(w / np.maximum(np.hypot(hx - self.x0c, hy - self.y0c), abs(self.sx))))
        r_max = 1.5 * n * abs(self.sx)  # beyond the grid's diagonal from anywhere on it
        # extended haloes (field haloes truncated at r_50) err in step over many pixels: a 4x tighter share
        h = abs(self.sx)
        tolerance = self.tolerance * scale * np.where(r_trunc > EXTENDED_STEPS * h, EXTENDED_SHARE, 1.0)
        r_cut = _near_radii(kind, w, rs, rho0, tau, h, self.near_pixels, tolerance, r_max)
        _near_fields(self.x00, self.y00, self.sx, self.sy, n, kind, hx, hy, w, rs, rho0, tau, r_cut, inside, ax, ay)
        return ax.ravel(), ay.ravel()


def _zero_origin(kernel: np.ndarray) -> np.ndarray:
    kernel = kernel.copy()
    kernel[0, 0] = 0.0  # a cell exerts no force on itself
    return kernel


@njit(cache=True)
def _near_radii(kind: np.ndarray, w: np.ndarray, rs: np.ndarray, rho0: np.ndarray, tau: np.ndarray, h: float,
                near_pixels: float, tolerance: np.ndarray, r_max: float) -> np.ndarray:
    """Per halo, the radius beyond which the mesh's point mass is within `tolerance` of the exact deflection.

    Two errors remain outside it: the deposit's quadrupole, ~ w h^2 / R^3 (w = theta_E^2 of the total mass),
    and for a TNFW the mass it holds beyond R, |w / R - alpha_TNFW(R)| exactly (found by bisection in
    log R; it falls monotonically once R exceeds the core). At least `near_pixels` steps, at most r_max.
    `tolerance` is per halo.
    """
    out = np.empty(w.shape[0])
    lo0 = near_pixels * h
    for k in range(w.shape[0]):
        tol = tolerance[k]
        r = max(lo0, (w[k] * h * h / tol) ** (1.0 / 3.0))
        if kind[k] == KIND_TNFW and r < r_max:
            if abs(w[k] / r - _tnfw_factor(r, rs[k], rho0[k], tau[k]) * r) > tol:
                lo, hi = math.log(r), math.log(r_max)
                if abs(w[k] / r_max - _tnfw_factor(r_max, rs[k], rho0[k], tau[k]) * r_max) > tol:
                    lo = hi
                for _ in range(14):
                    if hi - lo < 0.05:
                        break
                    mid = 0.5 * (lo + hi)
                    rm = math.exp(mid)
                    if abs(w[k] / rm - _tnfw_factor(rm, rs[k], rho0[k], tau[k]) * rm) > tol:
                        lo = mid
                    else:
                        hi = mid
                r = math.exp(hi)
        out[k] = min(r, r_max)
    return out


def _halo_arrays(group: Haloes) -> tuple[np.ndarray, ...]:
    """(kind, x, y, weight theta_E^2, rs, rho0, tau, r_trunc) per halo; point masses have r_trunc 0."""
    count = len(group)
    x, y = np.asarray(group.x, float), np.asarray(group.y, float)
    if group.profile == "POINT_MASS":
        ones = np.ones(count)
        w = np.asarray(group.theta_e, float) ** 2
        return np.full(count, KIND_POINT, np.int64), x, y, w, ones, ones, ones, np.zeros(count)
    if group.profile != "TNFW":
        raise LensnetError(f"substructure.engine fast: profile {group.profile!r} is not supported (TNFW, POINT_MASS)")
    rs, alpha, r_trunc = (np.asarray(a, float) for a in (group.rs, group.alpha_rs, group.r_trunc))
    w = tnfw_total_weight(rs, alpha, r_trunc)
    return np.full(count, KIND_TNFW, np.int64), x, y, w, rs, tnfw_rho0(rs, alpha), r_trunc / rs, r_trunc
