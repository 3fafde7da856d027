"""Toy systems with exact answers (docs/identities.md §7, items 1–4).

* :class:`GaussianSystem` — quadratic H with a linear map: exact CG Hessian, mean force,
  conditional law, moment-matched fiber samples and the exact moments of the per-frame HVP
  target (docs/identities.md §7.1, §5).
* :class:`SeparableSystem` — ``H = U(x) + V(y)``, ``R = x`` (docs/identities.md §7.2).
* :class:`IsotropicRadiusSystem` — ``H = U(|r|)``, ``ξ = |r|`` in D dimensions
  (docs/identities.md §7.3).
* :class:`BijectiveSystem` with :func:`polar_system` and :func:`shear_system` — bijective
  maps with ``A = H(r*) + β⁻¹ ln|det J(r*)|`` (docs/identities.md §7.4).

The quadrature engine (``QuadratureSystem``, ``builtin_systems``; docs/identities.md §7.5)
lives in :mod:`hessid.quadrature` and is re-exported here.

All systems use flat coordinates (``spatial_dim = 1``), float64, Å and kcal/mol.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.integrate
import torch

from hessid.maps import LinearMap, NonlinearMap
from hessid.quadrature import QuadratureSystem, builtin_systems

__all__ = [
    "GaussianSystem",
    "SeparableSystem",
    "IsotropicRadiusSystem",
    "BijectiveSystem",
    "polar_system",
    "shear_system",
    "radius",
    "polar",
    "shear",
    "anharmonic_2d",
    "QuadratureSystem",
    "builtin_systems",
]

_F64 = torch.float64


def _t(x, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    t = t.detach().to(dtype=_F64, device="cpu")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite entries")
    return t


def _r(x) -> torch.Tensor:
    """A float64 tensor that keeps its autograd graph (for coordinates R that may require grad)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=_F64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _check_beta(beta) -> float:
    b = float(beta)
    if not b > 0:
        raise ValueError(f"beta must be positive (mol/kcal), got {beta!r}")
    return b


# ================================================================= docs/identities.md §7.1 Gaussian
class GaussianSystem:
    """Gaussian AA system with a linear map (docs/identities.md §7.1).

    ``H(r) = ½ (r − r0)ᵀ K (r − r0)`` (kcal/mol), ``R = M r``. K may be singular (e.g.
    translation invariant) as long as it is positive definite on ``null(M)`` (the fiber
    directions); then the conditional law is proper and

    ``Hess A = K_RR − K_Ry K_yy⁻¹ K_yR``  (Schur complement in the coordinates
    ``r = M⁺ R + N y``, N an orthonormal basis of null M), which equals ``(M K⁻¹ Mᵀ)⁻¹`` when
    K is invertible. It does not depend on β.

    Args:
        K: AA Hessian (D, D), symmetric, kcal/mol/Å².
        r0: minimum (D,), Å.
        M: map matrix (d, D) of full row rank, dimensionless (or a LinearMap: its ``matrix()``).
        beta: 1/(k_B T), mol/kcal.

    Raises:
        ValueError: shapes disagree, K not symmetric, M not of full row rank, K not positive
            definite on null(M), or beta not positive.
    """

    def __init__(self, K, r0, M, beta: float):
        if isinstance(M, LinearMap):
            M = M.matrix()
        self.K = _t(K, "K")
        self.r0 = _t(r0, "r0")
        self.M = _t(M, "M")
        self.beta = _check_beta(beta)
        D = self.r0.shape[0]
        if self.K.shape != (D, D) or self.r0.ndim != 1:
            raise ValueError(f"K must be (D, D) and r0 (D,); got {tuple(self.K.shape)}, {tuple(self.r0.shape)}")
        if self.M.ndim != 2 or self.M.shape[1] != D or self.M.shape[0] >= D:
            raise ValueError(f"M must be (d, {D}) with d < {D}, got {tuple(self.M.shape)}")
        if float((self.K - self.K.T).abs().max()) > 1e-12 * float(self.K.abs().max()):
            raise ValueError("K must be symmetric")
        d = self.M.shape[0]
        U, s, Vh = torch.linalg.svd(self.M)
        if not s[-1] > 1e-10 * s[0]:
            raise ValueError(f"M is not of full row rank: smallest singular value {float(s[-1]):.3e}")
        self.d, self.D = d, D
        self.Mplus = torch.linalg.pinv(self.M)  # (D, d)  Mᵀ (M Mᵀ)⁻¹
        self.N = Vh[d:].T.contiguous()  # (D, D−d)  orthonormal basis of null M
        self.Kyy = self.N.T @ self.K @ self.N  # (D−d, D−d)
        ev = torch.linalg.eigvalsh(self.Kyy)
        if not ev[0] > 1e-12 * max(float(ev[-1]), 1e-300):
            raise ValueError(
                f"K is not positive definite on null(M) (smallest eigenvalue {float(ev[0]):.3e}); "
                f"the conditional law is improper"
            )
        self.Kyy_inv = torch.linalg.inv(self.Kyy)
        self.Kyy_inv = 0.5 * (self.Kyy_inv + self.Kyy_inv.T)

    # ---------------------------------------------------------------- energies
    def potential(self, r: torch.Tensor) -> torch.Tensor:
        """H(r), (S, D) Å → (S,) kcal/mol (differentiable)."""
        x = r - self.r0.to(r)
        return 0.5 * torch.einsum("si,ij,sj->s", x, self.K.to(r), x)

    def forces(self, r: torch.Tensor) -> torch.Tensor:
        """f = −K (r − r0), (S, D) → (S, D) kcal/mol/Å."""
        return -(r - self.r0.to(r)) @ self.K.to(r)  # K symmetric

    def hessians(self, n: int) -> torch.Tensor:
        """∇²H = K for n samples, (n, D, D) kcal/mol/Å²."""
        return self.K.expand(n, self.D, self.D)

    # ---------------------------------------------------------------- exact answers
    def exact_hessian(self) -> torch.Tensor:
        """CG Hessian (Schur complement; = (M K⁻¹ Mᵀ)⁻¹ for invertible K), (d, d) kcal/mol/Å²."""
        B = self.Mplus
        KRR = B.T @ self.K @ B
        KRy = B.T @ self.K @ self.N
        h = KRR - KRy @ self.Kyy_inv @ KRy.T
        return 0.5 * (h + h.T)

    def exact_mean_force(self, R: torch.Tensor) -> torch.Tensor:
        """F(R) = −Hess A (R − M r0), (..., d) Å → (..., d) kcal/mol/Å."""
        R = _r(R)
        return -(R - self.M @ self.r0) @ self.exact_hessian()  # symmetric

    def free_energy(self, R: torch.Tensor) -> torch.Tensor:
        """A(R) = ½ (R − M r0)ᵀ Hess A (R − M r0) (+ const), (..., d) → (...) kcal/mol."""
        x = _r(R) - self.M @ self.r0
        return 0.5 * torch.einsum("...a,ab,...b->...", x, self.exact_hessian(), x)

    def conditional_mean(self, R: torch.Tensor) -> torch.Tensor:
        """Mean of the Boltzmann law on the fiber M r = R, (..., d) → (..., D) Å.

        μ = M⁺R + N y*,  y* = −K_yy⁻¹ Nᵀ K (M⁺R − r0)   (= r0 + K⁻¹Mᵀ S⁻¹ (R − M r0),
        docs/identities.md §7.1)
        """
        R = _r(R)
        rp = R @ self.Mplus.T  # (..., D)
        y = -(rp - self.r0) @ self.K @ self.N @ self.Kyy_inv  # (..., D−d)
        return rp + y @ self.N.T  # (..., D)

    def conditional_cov(self) -> torch.Tensor:
        """Σ = β⁻¹ N K_yy⁻¹ Nᵀ (= β⁻¹(K⁻¹ − K⁻¹Mᵀ S⁻¹ M K⁻¹)), (D, D) Å², rank D − d."""
        c = self.N @ self.Kyy_inv @ self.N.T / self.beta
        return 0.5 * (c + c.T)

    def sample_conditional(self, R: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact i.i.d. samples of the conditional law at R (d,), → (n, D) Å (M r = R)."""
        R = _r(R)
        if R.shape != (self.d,):
            raise ValueError(f"R must have shape ({self.d},), got {tuple(R.shape)}")
        chol = torch.linalg.cholesky(self.Kyy_inv / self.beta)  # (D−d, D−d)
        z = torch.randn(n, self.D - self.d, generator=generator, dtype=_F64)  # (n, D−d)
        return self.conditional_mean(R) + (z @ chol.T) @ self.N.T  # (n, D)

    def moment_matched_samples(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2(D−d) weighted fiber points with exactly the conditional mean and covariance.

        Points ``μ ± √m c_k`` (c_k columns of a factor of Σ, m = D − d), weights 1/(2m). Since H is
        quadratic, every conditional average in the linear identities (docs/identities.md §2)
        depends on the first two moments only, so these points make those averages exact.

        Returns:
            samples (2m, D) Å with M r = R, weights (2m,) summing to 1.
        """
        R = _r(R)
        m = self.D - self.d
        chol = torch.linalg.cholesky(self.Kyy_inv / self.beta)  # (m, m)
        cols = (self.N @ chol).T * math.sqrt(m)  # (m, D)
        mu = self.conditional_mean(R)
        samples = torch.cat([mu + cols, mu - cols], dim=0)  # (2m, D)
        weights = torch.full((2 * m,), 1.0 / (2 * m), dtype=_F64)
        return samples, weights

    def metric_projector(self) -> torch.Tensor:
        """P = (M K⁻¹ Mᵀ)⁻¹ M K⁻¹ (needs invertible K): Term 2 vanishes identically
        (docs/identities.md §2)."""
        Kinv_Mt = torch.linalg.solve(self.K, self.M.T)  # (D, d)
        return torch.linalg.solve(self.M @ Kinv_Mt, Kinv_Mt.T)  # (d, D)

    def term1(self, P: torch.Tensor) -> torch.Tensor:
        """Term 1 = P K Pᵀ, (d, d) kcal/mol/Å² for P (d, D) with P Mᵀ = I."""
        P = _t(P, "P")
        return P @ self.K @ P.T

    def cov_projected_force(self, P: torch.Tensor) -> torch.Tensor:
        """Cov_R(P f) = P K Σ K Pᵀ, (d, d) (kcal/mol/Å)²; independent of R."""
        P = _t(P, "P")
        return P @ self.K @ self.conditional_cov() @ self.K @ P.T

    def hvp_target_moments(self, P, probe, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and per-component variance of the per-frame linear HVP target
        (docs/identities.md §5).

        Target ``h = P K Pᵀ v − β dF (dF·v)`` with ``dF = P f(r) − F_θ(R)``, r from the
        conditional law, and ``bias = b = F(R) − F_θ(R)``. Since ``P f ~ N(F, C)``,
        ``C = Cov(P f)``: ``E h = (P K Pᵀ − β C − β b bᵀ) v`` and, per component a
        (bivariate-normal product ``X = dF_a``, ``Y = dF·v``),
        ``Var h_a = β² (b_a² σ_Y² + μ_Y² C_aa + 2 b_a μ_Y (Cv)_a + C_aa σ_Y² + (Cv)_a²)``,
        ``μ_Y = b·v``, ``σ_Y² = vᵀCv``.

        Args:
            P: projector (d, D).
            probe: v, (d,).
            bias: b (d,) kcal/mol/Å; zero if None.

        Returns:
            mean (d,) and variance (d,) of h, kcal/mol/Å² × unit of v (squared for variance).
        """
        P, v = _t(P, "P"), _t(probe, "probe")
        b = torch.zeros(self.d, dtype=_F64) if bias is None else _t(bias, "bias")
        C = self.cov_projected_force(P)
        Cv = C @ v
        mean = self.term1(P) @ v - self.beta * (Cv + b * (b @ v))
        mu_y, var_y = b @ v, v @ Cv
        var = self.beta**2 * (b**2 * var_y + mu_y**2 * torch.diagonal(C) + 2 * b * mu_y * Cv + torch.diagonal(C) * var_y + Cv**2)
        return mean, var


# ================================================================ docs/identities.md §7.2 separable
class SeparableSystem:
    """Separable 2-D system ``H = U(x) + V(y)`` with the selection map ``R = x``
    (docs/identities.md §7.2).

    ``U(x) = ½ kx x² + ¼ λ x⁴``, ``V(y) = ½ ky y² + ¼ μ y⁴`` (kcal/mol, Å). Exact:
    ``F(R) = −U'(R)``, ``Hess A = U''(R)``. With the projector ``P = [1, c]`` (valid since
    ``P Mᵀ = 1``): Term 1 = ``U'' + c² ⟨V''⟩``, ``β Cov(P f) = c² ⟨V''⟩`` (Stein identity).

    Raises:
        ValueError: ky ≤ 0, μ < 0, λ < 0, or beta not positive.
    """

    def __init__(self, kx: float = 1.0, lam: float = 0.5, ky: float = 2.0, mu: float = 0.3, beta: float = 1.0):
        if not (ky > 0 and mu >= 0 and lam >= 0):
            raise ValueError("need ky > 0, mu ≥ 0 and lam ≥ 0 for a confining, convex-in-y system")
        self.kx, self.lam, self.ky, self.mu = float(kx), float(lam), float(ky), float(mu)
        self.beta = _check_beta(beta)
        self.cg_map = LinearMap.selection([0], 2, spatial_dim=1)

    def potential(self, r: torch.Tensor) -> torch.Tensor:
        """H, (S, 2) → (S,) kcal/mol."""
        x, y = r[..., 0], r[..., 1]
        return 0.5 * self.kx * x**2 + 0.25 * self.lam * x**4 + 0.5 * self.ky * y**2 + 0.25 * self.mu * y**4

    def v_potential(self, y):
        """V(y), kcal/mol."""
        return 0.5 * self.ky * y**2 + 0.25 * self.mu * y**4

    def exact_mean_force(self, R):
        """F(R) = −U'(R), kcal/mol/Å."""
        return -(self.kx * R + self.lam * R**3)

    def exact_hessian(self, R):
        """Hess A(R) = U''(R), kcal/mol/Å²."""
        return self.kx + 3.0 * self.lam * R**2

    def mean_v_curvature(self) -> float:
        """⟨V''(y)⟩ over ``e^{−βV}``, kcal/mol/Å² (1-D adaptive integral, ~1e-12 relative)."""
        if self.mu == 0.0:
            return self.ky
        scale = 1.0 / math.sqrt(self.beta * self.ky)
        lim = 40.0 * scale

        def weight(y):
            return math.exp(-self.beta * self.v_potential(y))

        num = scipy.integrate.quad(lambda y: (self.ky + 3 * self.mu * y * y) * weight(y), -lim, lim, epsabs=0, epsrel=1e-13, limit=200)[0]
        den = scipy.integrate.quad(weight, -lim, lim, epsabs=0, epsrel=1e-13, limit=200)[0]
        return num / den

    def term1(self, R, c: float):
        """Term 1 for P = [1, c]: U''(R) + c² ⟨V''⟩, kcal/mol/Å²."""
        return self.exact_hessian(R) + c * c * self.mean_v_curvature()

    def cov_projected_force(self, R, c: float):
        """Cov(P f) for P = [1, c]: c² ⟨V'²⟩ = c² β⁻¹ ⟨V''⟩, (kcal/mol/Å)²."""
        return c * c * self.mean_v_curvature() / self.beta


# =================================================================== docs/identities.md §7.3 radius
def radius(r: torch.Tensor) -> torch.Tensor:
    """ξ(r) = |r|, (B, D) Å → (B, 1) Å."""
    return torch.linalg.vector_norm(r, dim=-1, keepdim=True)  # (B, 1)


class IsotropicRadiusSystem:
    """``H = U(|r|)`` in D dimensions with ``ξ = |r|`` (docs/identities.md §7.3).

    ``U(ρ) = ½ k (ρ − ρ0)² + ¼ λ (ρ − ρ0)⁴``. Exact: ``A = U(ρ) − (D−1) β⁻¹ ln ρ``,
    ``F = −U'(ρ) + (D−1)/(βρ)``, ``Hess A = U''(ρ) + (D−1)/(βρ²)``. L is constant on spheres.

    Raises:
        ValueError: dim < 2, k ≤ 0, λ < 0, or beta not positive.
    """

    def __init__(self, dim: int = 3, k: float = 2.0, rho0: float = 1.5, lam: float = 0.5, beta: float = 1.0):
        if dim < 2 or k <= 0 or lam < 0:
            raise ValueError("need dim ≥ 2, k > 0 and lam ≥ 0")
        self.dim, self.k, self.rho0, self.lam = int(dim), float(k), float(rho0), float(lam)
        self.beta = _check_beta(beta)
        self.cg_map = NonlinearMap(radius)

    def radial_potential(self, rho):
        """U(ρ), kcal/mol."""
        x = rho - self.rho0
        return 0.5 * self.k * x**2 + 0.25 * self.lam * x**4

    def potential(self, r: torch.Tensor) -> torch.Tensor:
        """H(r) = U(|r|), (S, D) → (S,) kcal/mol."""
        return self.radial_potential(torch.linalg.vector_norm(r, dim=-1))

    def free_energy(self, rho):
        """A(ρ) = U(ρ) − (D−1) β⁻¹ ln ρ, kcal/mol."""
        return self.radial_potential(rho) - (self.dim - 1) / self.beta * np.log(rho)

    def exact_mean_force(self, rho):
        """F(ρ) = −U'(ρ) + (D−1)/(βρ), kcal/mol/Å."""
        x = rho - self.rho0
        return -(self.k * x + self.lam * x**3) + (self.dim - 1) / (self.beta * rho)

    def exact_hessian(self, rho):
        """Hess A(ρ) = U''(ρ) + (D−1)/(βρ²), kcal/mol/Å²."""
        x = rho - self.rho0
        return self.k + 3.0 * self.lam * x**2 + (self.dim - 1) / (self.beta * rho**2)

    def fiber_samples(self, rho: float, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n points on the sphere |r| = ρ with uniform weights, (n, D) Å and (n,).

        D = 2: equispaced angles; D > 2: random directions. L is constant on the sphere, so
        any normalised weights give exact conditional averages.
        """
        if self.dim == 2:
            theta = 2 * math.pi * torch.arange(n, dtype=_F64) / n
            pts = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)  # (n, 2)
        else:
            z = torch.randn(n, self.dim, generator=generator, dtype=_F64)
            pts = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)  # (n, D)
        return rho * pts, torch.full((n,), 1.0 / n, dtype=_F64)


# ================================================================ docs/identities.md §7.4 bijective
def polar(r: torch.Tensor) -> torch.Tensor:
    """ξ(x, y) = (ρ, θ), θ = atan2(y, x) ∈ (−π, π]: (B, 2) → (B, 2) (Å, rad)."""
    x, y = r[:, 0], r[:, 1]
    return torch.stack([torch.sqrt(x * x + y * y), torch.atan2(y, x)], dim=-1)  # (B, 2)


def shear(a: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Volume-preserving shear ξ(x, y) = (x + a y², y), (B, 2) → (B, 2); a in 1/Å."""

    def fn(r: torch.Tensor) -> torch.Tensor:
        x, y = r[:, 0], r[:, 1]
        return torch.stack([x + a * y * y, y], dim=-1)  # (B, 2)

    fn.__name__ = f"shear_{a:g}"
    return fn


def anharmonic_2d(r: torch.Tensor) -> torch.Tensor:
    """An anisotropic, anharmonic, confining 2-D test potential, (S, 2) Å → (S,) kcal/mol.

    H = 0.5 x² + 0.8 y² + 0.3 x y + 0.1 x³ + 0.05 (x⁴ + y⁴) + 0.2 x y² .
    """
    x, y = r[..., 0], r[..., 1]
    return 0.5 * x**2 + 0.8 * y**2 + 0.3 * x * y + 0.1 * x**3 + 0.05 * (x**4 + y**4) + 0.2 * x * y**2


class BijectiveSystem:
    """Bijective map (d = D): ``A(R) = H(r*(R)) + β⁻¹ ln|det J(r*)|`` (docs/identities.md §3, §7.4).

    The fiber of R is the single point ``r* = ξ⁻¹(R)`` (weight 1); all covariances vanish.

    Args:
        potential: H, torch callable (S, D) Å → (S,) kcal/mol.
        forward: ξ, (B, D) → (B, D).
        inverse: ξ⁻¹, (B, D) → (B, D).
        log_abs_det_jacobian: ``ln|det ∂ξ/∂r|`` at r*, as a function of R, (B, D) → (B,).
        beta: 1/(k_B T), mol/kcal.
        name: label.
    """

    def __init__(self, potential, forward, inverse, log_abs_det_jacobian, beta: float, name: str = ""):
        self.potential = potential
        self.forward = forward
        self.inverse = inverse
        self.log_abs_det_jacobian = log_abs_det_jacobian
        self.beta = _check_beta(beta)
        self.name = name
        self.cg_map = NonlinearMap(forward)

    def free_energy(self, R: torch.Tensor) -> torch.Tensor:
        """A(R), (B, D) → (B,) kcal/mol (closed form, differentiable)."""
        return self.potential(self.inverse(R)) + self.log_abs_det_jacobian(R) / self.beta

    def exact_mean_force(self, R: torch.Tensor) -> torch.Tensor:
        """F = −∇_R A, (B, D) → (B, D) kcal/mol/Å (autograd of the closed-form A)."""
        R = _r(R).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.free_energy(R).sum(), R)
        return -g

    def exact_hessian(self, R: torch.Tensor) -> torch.Tensor:
        """Hess A = ∇_R∇_R A, (B, D) → (B, D, D) (autograd of the closed-form A)."""
        R = _r(R).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.free_energy(R).sum(), R, create_graph=True)
            rows = [torch.autograd.grad(g[:, a].sum(), R, retain_graph=True)[0] for a in range(R.shape[1])]
        return torch.stack(rows, dim=1)  # (B, D, D)

    def fiber_samples(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single fiber point r* of one R (D,): samples (1, D) Å, weights (1,)."""
        R = _r(R).reshape(1, -1)  # (1, D)
        return self.inverse(R).detach(), torch.ones(1, dtype=_F64)


def polar_system(potential=anharmonic_2d, beta: float = 1.0) -> BijectiveSystem:
    """Polar map (x, y) → (ρ, θ): ``|det J| = 1/ρ`` so ``A = H(r*) − β⁻¹ ln ρ``
    (docs/identities.md §7.4)."""

    def inverse(R):
        rho, theta = R[:, 0], R[:, 1]
        return torch.stack([rho * torch.cos(theta), rho * torch.sin(theta)], dim=-1)  # (B, 2)

    def logdet(R):
        return -torch.log(R[:, 0])

    return BijectiveSystem(potential, polar, inverse, logdet, beta, name="polar")


def shear_system(a: float = 0.4, potential=anharmonic_2d, beta: float = 1.0) -> BijectiveSystem:
    """Shear (x, y) → (x + a y², y): ``det J = 1``, ``A = H(R₁ − a R₂², R₂)``, div G ≡ 0
    (docs/identities.md §7.4)."""

    def inverse(R):
        return torch.stack([R[:, 0] - a * R[:, 1] ** 2, R[:, 1]], dim=-1)  # (B, 2)

    def logdet(R):
        return torch.zeros(R.shape[0], dtype=R.dtype)

    return BijectiveSystem(potential, shear(a), inverse, logdet, beta, name=f"shear(a={a:g})")
