"""Closed-form temperature toys T1–T3 with exact i.i.d. sampling at any β (docs/thermo.md §6).

* :class:`GaussianThermoSystem` (T1, null test) — ``U = U0 + ½(r − r0)ᵀK(r − r0)``,
  ``R = M r``: A(R, β), ⟨U⟩_R, every cumulant of U, and ``Cov_R(P f, U) = 0`` in closed form.
* :class:`EntropicDoubleWell` (T2, and T3 with ``lam ≠ 0``) — CG coordinate x and m hidden
  DOFs y: ``U = V(x) + ½k(x)Σy_i² − λΣy_i``, ``V = a(x² − 1)² + hx``, ``k = k0 e^{γx}``.
  Closed forms at fixed x; populations, total mean energy and heat capacity of the whole
  system by 1-D quadrature over x.

Each toy also builds the :class:`~hessid.quadrature.QuadratureSystem` that ``hessid verify
--all`` checks (:func:`thermo_builtin_systems`).

Coordinates are flat (``spatial_dim = 1``), float64; Å, kcal/mol, β in mol/kcal, T in K.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hessid.quadrature import QuadratureSystem
from hessid.thermo import total_heat_capacity
from hessid.toy import GaussianSystem
from hessid.units import KB_KCAL_PER_MOL_K
from hessid.units import beta as beta_of_temperature

__all__ = [
    "GaussianThermoSystem",
    "EntropicDoubleWell",
    "t1_gaussian",
    "t2_double_well",
    "t3_parameter_response",
    "thermo_builtin_systems",
    "THERMO_BUILTIN_TEMPERATURES",
]

_F64 = torch.float64
#: temperatures (K) at which the built-in T systems are verified
THERMO_BUILTIN_TEMPERATURES = (200.0, 300.0, 400.0)
#: half-width of the whitened fiber coordinates of the quadrature versions; the Gaussian
#: factor e^{−β s²/2} is < e^{−40} at the ends for β ≥ 80/L² (T ≤ 500 K)
_FIBER_HALF_WIDTH = 9.0


def _t(x) -> torch.Tensor:
    return x.to(_F64) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def _check_beta(beta) -> float:
    b = float(beta)
    if not (b > 0 and math.isfinite(b)):
        raise ValueError(f"beta must be positive and finite (mol/kcal), got {beta!r}")
    return b


def _check_quadrature_betas(betas) -> None:
    low = 80.0 / _FIBER_HALF_WIDTH**2
    if betas and min(betas) < low:
        raise ValueError(f"the quadrature version resolves β ≥ {low:.3g} mol/kcal "
                         f"(T ≤ {1 / (KB_KCAL_PER_MOL_K * low):.0f} K); got β = {min(betas)!r}")


# ======================================================================== T1 Gaussian

def _bath_cumulant(m: int, n: int, beta: float) -> float:
    """κ_n of the energy of m harmonic bath coordinates at β: (n−1)! m/(2βⁿ) for n ≥ 2, (kcal/mol)^n
    (shared by T1 and T2/T3, whose conditional energy fluctuations are those of such a bath).

    Raises:
        ValueError: n < 2 (κ_1 is the mean energy), or β not a plausible inverse temperature.
    """
    if n < 2:
        raise ValueError(f"n must be ≥ 2 (κ_1 is mean_energy), got {n}")
    return math.factorial(n - 1) * m / (2 * _check_beta(beta) ** n)


class _HarmonicBath:
    """Conditional energy cumulants of a toy whose ``m`` hidden DOFs are a harmonic bath at fixed
    CG coordinate (T1, T2, T3): independent of the CG point and of λ."""

    m: int

    def energy_cumulant(self, n: int, beta: float) -> float:
        """κ_n(U|R) = (n−1)! m/(2βⁿ) for n ≥ 2, (kcal/mol)^n, at every R (and λ).

        Raises:
            ValueError: n < 2, or β not a plausible inverse temperature.
        """
        return _bath_cumulant(self.m, n, beta)

    def energy_variance(self, beta: float) -> float:
        """Var_R(U) = m/(2β²), (kcal/mol)²."""
        return self.energy_cumulant(2, beta)

    def conditional_heat_capacity(self) -> float:
        """C_R = k_B β² Var_R(U) = m k_B/2, kcal/mol/K (every R, every T)."""
        return self.m * KB_KCAL_PER_MOL_K / 2


class GaussianThermoSystem(_HarmonicBath):
    """T1: ``U = U0 + ½(r − r0)ᵀK(r − r0)``, ``R = M r`` (docs/thermo.md §6, T1).

    With ``ΔR = R − M r0``, ``C = M K⁻¹ Mᵀ`` and ``m = D − d`` hidden DOFs:
    ``A = U0 + ½ΔRᵀC⁻¹ΔR + (1/2β) ln(det K · det C) − (m/2β) ln(2π/β)``,
    ``⟨U⟩_R = U0 + ½ΔRᵀC⁻¹ΔR + m/(2β)``, ``κ_n(U|R) = (n−1)! m/(2βⁿ)`` (n ≥ 2),
    ``F = −C⁻¹ΔR`` (T-independent) and ``Cov_R(P f, U) = 0`` for every P with P Mᵀ = I.

    Args:
        K: (D, D) symmetric positive definite, kcal/mol/Å².
        r0: (D,) Å.
        M: (d, D) of full row rank, d < D.
        U0: energy offset, kcal/mol.

    Raises:
        ValueError: shapes disagree, K not symmetric positive definite, or M rank-deficient.
    """

    def __init__(self, K, r0, M, U0: float = 0.0):
        self.K, self.r0, self.M, self.U0 = _t(K), _t(r0), _t(M), float(U0)
        self._law = GaussianSystem(self.K, self.r0, self.M, 1.0)  # validates shapes and ranks
        if float(torch.linalg.eigvalsh(self.K)[0]) <= 0:
            raise ValueError("K must be positive definite (det K enters A)")
        self.d, self.D = self._law.d, self._law.D
        self.m = self.D - self.d
        self.C = self.M @ torch.linalg.solve(self.K, self.M.T)  # (d, d) Å²·mol/kcal
        self.C_inv = torch.linalg.inv(self.C)
        self._logdet = float(torch.logdet(self.K) + torch.logdet(self.C))

    def potential(self, r) -> torch.Tensor:
        """U(r), (..., D) Å → (...) kcal/mol (differentiable)."""
        x = _t(r) - self.r0
        return self.U0 + 0.5 * torch.einsum("...i,ij,...j->...", x, self.K, x)

    def forces(self, r) -> torch.Tensor:
        """f = −K(r − r0), (..., D) → (..., D) kcal/mol/Å."""
        return -(_t(r) - self.r0) @ self.K

    def cg_map(self, r) -> torch.Tensor:
        """R = M r, (..., D) → (..., d) Å."""
        return _t(r) @ self.M.T

    def _quad(self, R) -> torch.Tensor:
        dR = _t(R) - self.M @ self.r0
        return 0.5 * torch.einsum("...a,ab,...b->...", dR, self.C_inv, dR)

    def free_energy(self, R, beta: float) -> torch.Tensor:
        """A(R, β), (..., d) Å → (...) kcal/mol (absolute: δ(Mr − R) measure)."""
        b = _check_beta(beta)
        return self.U0 + self._quad(R) + self._logdet / (2 * b) - self.m / (2 * b) * math.log(2 * math.pi / b)

    def mean_energy(self, R, beta: float) -> torch.Tensor:
        """⟨U⟩_R = U0 + ½ΔRᵀC⁻¹ΔR + m/(2β), (..., d) → (...) kcal/mol."""
        return self.U0 + self._quad(R) + self.m / (2 * _check_beta(beta))

    def mean_force(self, R) -> torch.Tensor:
        """F = −C⁻¹(R − M r0), (..., d) → (..., d) kcal/mol/Å (β-independent: ∂_βF = 0)."""
        return -(_t(R) - self.M @ self.r0) @ self.C_inv

    def sample_conditional(self, R, beta: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact i.i.d. samples of the law ∝ e^{−βU} on M r = R, R (d,) → (n, D) Å."""
        return GaussianSystem(self.K, self.r0, self.M, _check_beta(beta)).sample_conditional(R, n, generator)

    def quadrature_system(self, points, beta: float, betas=(), name: str = "T1 gaussian",
                          n_nodes: int = 48) -> QuadratureSystem:
        """This system as a QuadratureSystem (D − d ≤ 3) with whitened fiber coordinates
        ``r = μ(R) + N L s`` (L Lᵀ = K_yy⁻¹, so U = U(μ) + ½|s|²), trapezoid nodes on
        [−9, 9] (spectral for this Gaussian, e^{−βs²/2} < e^{−40} at the ends for T ≤ 500 K),
        two projectors (min-norm and a general member of (P Mᵀ = I)), ``betas`` and the
        closed-form ``exact_mean_energy``.

        Raises:
            ValueError: D − d > 3, or a β in betas the nodes do not resolve.
        """
        _check_quadrature_betas(list(betas))
        if self.m > 3:
            raise ValueError(f"the quadrature engine handles D − d ≤ 3 fiber coordinates, got {self.m}")
        law = self._law
        L = torch.linalg.cholesky(law.Kyy_inv)  # (m, m)
        NL = law.N @ L  # (D, m)

        def fiber(R, s):
            return law.conditional_mean(R) + s @ NL.T

        p_min = torch.linalg.solve(self.M @ self.M.T, self.M)
        Cg = torch.linspace(-0.4, 0.5, self.d * self.D, dtype=_F64).reshape(self.d, self.D)
        p_gen = p_min + Cg @ (torch.eye(self.D, dtype=_F64) - self.M.T @ p_min)
        return QuadratureSystem(
            self.potential, self.cg_map, fiber, [(-_FIBER_HALF_WIDTH, _FIBER_HALF_WIDTH, "periodic")] * self.m,
            points, beta, projector={"min_norm": p_min, "general_C": p_gen}, name=name, n_nodes=n_nodes,
            betas=list(betas), exact_mean_energy=lambda R, b: self.mean_energy(R, b))


# ======================================================================== T2 / T3 double well
class EntropicDoubleWell(_HarmonicBath):
    """T2 entropic double well; T3 (parameter response) when ``lam ≠ 0`` (docs/thermo.md §6).

    ``U(x, y; λ) = V(x) + ½k(x)Σ_{i≤m} y_i² − λΣy_i``, ``V = a(x² − 1)² + hx``,
    ``k = k0 e^{γx}``; CG coordinate ``R = x`` (selection map, d = 1, D = m + 1). At fixed x
    the y_i are i.i.d. ``N(λ/k, 1/(βk))``, so

    ``A = V + (m/2β) ln(βk/2π) − mλ²/(2k)``,   ``⟨U⟩_x = V − mλ²/(2k) + m/(2β)``,
    ``κ_n(U|x) = (n−1)! m/(2βⁿ)`` (n ≥ 2),   ``F = −V' − mγ/(2β) − mγλ²/(2k)``,
    ``Cov_x(f_x, U) = −mγ/(2β²) = −∂_βF``,   ``∂_TF = ∇S = −m k_B γ/2``,
    ``∂_λA = −mλ/k = ⟨−Σy⟩_x``,   ``∂²_λA = −m/k = −β Var_x(Σy)``,   ``∂_λ⟨U⟩_x = −mλ/k``.

    The marginal law of x is ``p_β(x) ∝ e^{−βA(x, β)}`` (∝ e^{−βV − mγx/2} at λ = 0: k0
    drops out). Defaults are the study parameters of docs/thermo.md §6.

    Args:
        a: kcal/mol; h: kcal/mol/Å; m: number of hidden DOFs (≥ 1); gamma: 1/Å;
        k0: kcal/mol/Å²; lam: λ, kcal/mol/Å (the coupling −λΣy).

    Raises:
        ValueError: m < 1, a ≤ 0 or k0 ≤ 0.
    """

    def __init__(self, a: float = 3.0, h: float = -0.5, m: int = 4, gamma: float = 0.5, k0: float = 20.0,
                 lam: float = 0.0):
        if int(m) != m or m < 1 or not a > 0 or not k0 > 0:
            raise ValueError(f"need an integer m ≥ 1, a > 0 and k0 > 0; got m={m!r}, a={a!r}, k0={k0!r}")
        self.a, self.h, self.m, self.gamma, self.k0, self.lam = float(a), float(h), int(m), float(gamma), float(k0), float(lam)
        self.d, self.D = 1, self.m + 1

    # ---------------------------------------------------------------- potential
    def V(self, x):
        """V(x) = a(x² − 1)² + hx, kcal/mol."""
        return self.a * (x * x - 1) ** 2 + self.h * x

    def dV(self, x):
        """V'(x), kcal/mol/Å."""
        return 4 * self.a * x * (x * x - 1) + self.h

    def k(self, x):
        """k(x) = k0 e^{γx}, kcal/mol/Å² (torch or numpy input)."""
        return self.k0 * (torch.exp(self.gamma * x) if isinstance(x, torch.Tensor) else np.exp(self.gamma * x))

    def potential(self, r) -> torch.Tensor:
        """U(r), r = (x, y_1..y_m) (..., D) → (...) kcal/mol (differentiable)."""
        r = _t(r)
        x, y = r[..., 0], r[..., 1:]
        return self.V(x) + 0.5 * self.k(x) * (y * y).sum(-1) - self.lam * y.sum(-1)

    def forces(self, r) -> torch.Tensor:
        """f = −∇U, (..., D) → (..., D) kcal/mol/Å: f_x = −V' − ½k'Σy², f_y = −k y + λ."""
        r = _t(r)
        x, y = r[..., :1], r[..., 1:]
        k = self.k(x)
        fx = -self.dV(x) - 0.5 * self.gamma * k * (y * y).sum(-1, keepdim=True)
        return torch.cat([fx, -k * y + self.lam], dim=-1)

    def dU_dlambda(self, r) -> torch.Tensor:
        """∂_λU = −Σy, (..., D) → (...) kcal/mol per kcal/mol/Å (∂²_λU = 0)."""
        return -_t(r)[..., 1:].sum(-1)

    def cg_map(self, r) -> torch.Tensor:
        """R = x, (..., D) → (..., 1) Å."""
        return _t(r)[..., :1]

    # ---------------------------------------------------------------- closed forms at fixed x
    def free_energy(self, x, beta: float):
        """A(x, β, λ), (...) Å → (...) kcal/mol (absolute: dy measure)."""
        b = _check_beta(beta)
        k = self.k(x)
        log = torch.log if isinstance(k, torch.Tensor) else np.log
        return self.V(x) + self.m / (2 * b) * log(b * k / (2 * math.pi)) - self.m * self.lam**2 / (2 * k)

    def mean_energy(self, x, beta: float):
        """⟨U⟩_x = V − mλ²/(2k) + m/(2β), kcal/mol."""
        return self.V(x) - self.m * self.lam**2 / (2 * self.k(x)) + self.m / (2 * _check_beta(beta))

    def mean_force(self, x, beta: float):
        """F(x, β) = −V' − mγ/(2β) − mγλ²/(2k), kcal/mol/Å."""
        return -self.dV(x) - self.m * self.gamma / (2 * _check_beta(beta)) - self.m * self.gamma * self.lam**2 / (2 * self.k(x))

    def mean_force_beta_derivative(self, beta: float) -> float:
        """∂_βF = mγ/(2β²) = −Cov_x(f_x, U), (kcal/mol)²/Å (uniform in x)."""
        return self.m * self.gamma / (2 * _check_beta(beta) ** 2)

    def entropy_gradient(self) -> float:
        """∂_TF = ∇_x S_x = −m k_B γ/2, kcal/mol/Å/K (uniform in x, T-independent)."""
        return -self.m * KB_KCAL_PER_MOL_K * self.gamma / 2

    def lambda_derivative_free_energy(self, x):
        """∂_λA = −mλ/k(x) = ⟨∂_λU⟩_x (R4)."""
        return -self.m * self.lam / self.k(x)

    def lambda_second_derivative_free_energy(self, x):
        """∂²_λA = −m/k(x) = −β Var_x(Σy) (R4; β-independent)."""
        return -self.m / self.k(x)

    def lambda_derivative_mean_energy(self, x):
        """∂_λ⟨U⟩_x = −mλ/k(x) (R5; Cov_x(U, ∂_λU) = 0 here)."""
        return -self.m * self.lam / self.k(x)

    # ---------------------------------------------------------------- the marginal law of x
    def _x_grid(self, beta: float, panels: int = 96, order: int = 16):
        """Composite Gauss–Legendre nodes over the support of p_β (βA − min βA < 60, e^{−60}
        ≈ 1e-26 neglected), with a panel edge at x = 0. Returns numpy (x, w)."""
        b = _check_beta(beta)
        xs = np.linspace(-10.0, 10.0, 40001)
        ba = b * self.free_energy(xs, b)
        keep = xs[ba - ba.min() < 60.0]
        lo, hi = min(keep[0] - 0.05, -0.05), max(keep[-1] + 0.05, 0.05)
        if lo <= -10.0 or hi >= 10.0:
            raise ValueError("the marginal law of x is not confined to |x| < 10 Å at this β")
        half = panels // 2
        edges = np.concatenate([np.linspace(lo, 0.0, half + 1), np.linspace(0.0, hi, half + 1)[1:]])
        t, wt = np.polynomial.legendre.leggauss(order)
        a_, b_ = edges[:-1, None], edges[1:, None]
        x = (0.5 * (b_ - a_) * t + 0.5 * (b_ + a_)).ravel()
        w = (0.5 * (b_ - a_) * wt).ravel()
        return x, w

    def marginal_weights(self, beta: float, free_energy_beta: float | None = None):
        """Quadrature of the marginal law ``p(x) ∝ e^{−βA(x, β_A)}`` with β_A = free_energy_beta
        (default β; another value gives the prediction of a T-unaware model that reuses
        A(·, β_A) at β). Returns numpy (x (Q,) Å, normalised weights (Q,))."""
        b = _check_beta(beta)
        bA = b if free_energy_beta is None else _check_beta(free_energy_beta)
        x, w = self._x_grid(min(b, bA))
        logp = -b * self.free_energy(x, bA)
        p = w * np.exp(logp - logp.max())
        return x, p / p.sum()

    def population(self, beta: float, x_split: float = 0.0, free_energy_beta: float | None = None) -> float:
        """P(x < x_split) at β: exact by quadrature when x_split = 0 (a panel edge), else
        interpolated between nodes (error ≈ p(x_split)·node spacing)."""
        x, p = self.marginal_weights(beta, free_energy_beta)
        if x_split == 0.0:
            return float(p[x < 0].sum())
        return float(np.interp(x_split, x, np.cumsum(p) - 0.5 * p, left=0.0, right=1.0))

    def free_energy_difference(self, beta: float, x1: float = 1.0, x0: float = -1.0) -> float:
        """A(x1, β) − A(x0, β), kcal/mol."""
        return float(self.free_energy(np.float64(x1), beta) - self.free_energy(np.float64(x0), beta))

    def total_mean_energy(self, beta: float) -> float:
        """⟨U⟩ of the whole system, E_x⟨U⟩_x, kcal/mol."""
        x, p = self.marginal_weights(beta)
        return float(p @ self.mean_energy(x, beta))

    def total_heat_capacity(self, beta: float, return_terms: bool = False):
        """C_tot = k_B β²[Var_x(⟨U⟩_x) + E_x Var_x(U)] (docs/thermo.md, eq. (R8)), kcal/mol/K;
        with ``return_terms`` also (CG-visible, hidden) parts."""
        x, p = self.marginal_weights(beta)
        mu = torch.as_tensor(self.mean_energy(x, beta))
        var = torch.full_like(mu, self.energy_variance(beta))
        out = total_heat_capacity(mu, var, beta, weights=torch.as_tensor(p), return_terms=return_terms)
        if return_terms:
            return float(out[0]), (float(out[1][0]), float(out[1][1]))
        return float(out)

    # ---------------------------------------------------------------- exact sampling
    def sample_conditional(self, x: float, beta: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact i.i.d. samples at fixed x: y_i ~ N(λ/k, 1/(βk)); → (n, D) Å."""
        b, xv = _check_beta(beta), float(x)
        k = float(self.k(np.float64(xv)))
        y = self.lam / k + torch.randn(n, self.m, generator=generator, dtype=_F64) / math.sqrt(b * k)
        return torch.cat([torch.full((n, 1), xv, dtype=_F64), y], dim=1)

    def sample(self, beta: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact i.i.d. samples of the joint law ∝ e^{−βU}, (n, D) Å: x by rejection from a
        uniform proposal on the support of p_β (mass outside < e^{−60}), then y | x Gaussian."""
        b = _check_beta(beta)
        grid, _ = self._x_grid(b)
        lo, hi = float(grid.min()) - 0.05, float(grid.max()) + 0.05
        xs = np.linspace(lo, hi, 20001)
        logp = -b * self.free_energy(xs, b)
        # envelope: grid max + a margin above the interpolation error ½|logp''|Δx² (≤ 1e-3 here)
        log_env = float(logp.max()) + 1e-2
        out = []
        need = n
        while need > 0:
            m = max(4 * need, 1024)
            xc = lo + (hi - lo) * torch.rand(m, generator=generator, dtype=_F64)
            u = torch.rand(m, generator=generator, dtype=_F64)
            lp = -b * self.free_energy(xc, b)
            if float(lp.max()) > log_env:
                raise RuntimeError("rejection envelope violated; refine the grid")
            acc = xc[torch.log(u) < lp - log_env][:need]
            out.append(acc)
            need -= acc.shape[0]
        x = torch.cat(out)
        k = self.k(x)[:, None]
        y = self.lam / k + torch.randn(n, self.m, generator=generator, dtype=_F64) / torch.sqrt(b * k)
        return torch.cat([x[:, None], y], dim=1)

    # ---------------------------------------------------------------- quadrature version
    def quadrature_system(self, points, beta: float, betas=(), name: str = "", n_nodes: int = 48) -> QuadratureSystem:
        """This system as a QuadratureSystem (m ≤ 3) with fiber ``y = s/√k(x)`` (U is then
        ½|s|² − λΣs/√k + V in s), trapezoid nodes on [−9, 9] per hidden DOF, projectors
        ``selection`` (P = M) and ``offset`` (P = [1, 0.3, −0.2, …]), ``betas`` and the
        closed-form ``exact_mean_energy``.

        Raises:
            ValueError: m > 3, or a β in betas the nodes do not resolve.
        """
        _check_quadrature_betas(list(betas))
        if self.m > 3:
            raise ValueError(f"the quadrature engine handles ≤ 3 hidden DOFs, got m = {self.m}")

        def fiber(R, s):
            return torch.cat([R, s / torch.sqrt(self.k(R))], dim=-1)

        sel = [[1.0] + [0.0] * self.m]
        off = [[1.0] + [0.3, -0.2, 0.1][: self.m]]
        return QuadratureSystem(
            self.potential, self.cg_map, fiber, [(-_FIBER_HALF_WIDTH, _FIBER_HALF_WIDTH, "periodic")] * self.m,
            points, beta, projector={"selection": sel, "offset": off}, name=name, n_nodes=n_nodes,
            betas=list(betas), exact_mean_energy=lambda R, b: self.mean_energy(_t(R)[..., 0], b))


# ======================================================================== instances
def t1_gaussian(D: int = 5, d: int = 2, seed: int = 0, U0: float = 0.0) -> GaussianThermoSystem:
    """A T1 instance: K = AAᵀ + 0.5 I, random M (d, D), r0 from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=_F64)
    M = torch.randn(d, D, generator=g, dtype=_F64)
    r0 = 0.5 * torch.randn(D, generator=g, dtype=_F64)
    return GaussianThermoSystem(A @ A.T + 0.5 * torch.eye(D, dtype=_F64), r0, M, U0)


def t2_double_well(m: int = 4) -> EntropicDoubleWell:
    """T2 with the study parameters (a = 3, h = −0.5, γ = 0.5, k0 = 20; m hidden DOFs)."""
    return EntropicDoubleWell(m=m)


def t3_parameter_response(lam: float = 0.5, m: int = 4) -> EntropicDoubleWell:
    """T3: T2 plus −λΣy (λ in kcal/mol/Å)."""
    return EntropicDoubleWell(m=m, lam=lam)


def thermo_builtin_systems() -> list[QuadratureSystem]:
    """T1–T3 as quadrature systems for ``hessid verify --all`` (fresh objects), each with
    ``betas`` at :data:`THERMO_BUILTIN_TEMPERATURES` and a closed-form ``exact_mean_energy``.

    T1 uses D = 4, d = 2 and T2/T3 m = 2 hidden DOFs (the quadrature engine integrates ≤ 3
    fiber coordinates; the relations do not depend on m). β = β(300 K) for the identity
    checks.
    """
    b300 = beta_of_temperature(300.0)
    betas = [beta_of_temperature(T) for T in THERMO_BUILTIN_TEMPERATURES]
    return [
        t1_gaussian(D=4, d=2, seed=1, U0=0.7).quadrature_system(
            [[0.2, -0.3], [-0.6, 0.5]], b300, betas, name="T1 gaussian D=4 d=2"),
        t2_double_well(m=2).quadrature_system(
            [[-1.0], [0.1], [0.8]], b300, betas, name="T2 entropic double well m=2"),
        t3_parameter_response(lam=0.5, m=2).quadrature_system(
            [[-0.9], [0.7]], b300, betas, name="T3 parameter response m=2 lam=0.5"),
    ]
