"""Laws of hessid.toy: the closed forms of docs/identities.md §7 items 1–4 are self-consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid import toy
from hessid.toy import (
    GaussianSystem,
    IsotropicRadiusSystem,
    SeparableSystem,
    polar_system,
    shear_system,
)
from tests.helpers import assert_close, assert_symmetric, assert_unbiased
from tests.strategies import gaussian_systems

F64 = torch.float64
FAST = settings(max_examples=12, deadline=None)


@FAST
@given(case=gaussian_systems())
def test_gaussian_conditional_law_matches_the_closed_forms(case):
    g, R = case
    K, M, r0, beta = g.K, g.M, g.r0, g.beta
    Kinv = torch.linalg.inv(K)
    S = M @ Kinv @ M.T
    mu = r0 + Kinv @ M.T @ torch.linalg.solve(S, R - M @ r0)
    sigma = (Kinv - Kinv @ M.T @ torch.linalg.solve(S, M @ Kinv)) / beta
    assert_close(g.conditional_mean(R), mu, what="μ(R)")
    assert_close(g.conditional_cov(), sigma, rtol=1e-9, what="Σ")
    assert_close(M @ g.conditional_mean(R), R, what="M μ = R")
    assert float((M @ g.conditional_cov()).abs().max()) < 1e-12 * float(sigma.abs().max())
    assert_close(g.exact_hessian(), torch.linalg.inv(S), what="Schur complement = (M K⁻¹ Mᵀ)⁻¹")


@FAST
@given(case=gaussian_systems())
def test_gaussian_free_energy_gradient_is_minus_the_exact_mean_force(case):
    g, R = case
    RR = R.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(g.free_energy(RR), RR)
    assert_close(-grad, g.exact_mean_force(R), what="F = −∇A")


@FAST
@given(case=gaussian_systems())
def test_moment_matched_samples_have_the_exact_conditional_moments(case):
    g, R = case
    x, w = g.moment_matched_samples(R)
    assert_close(x @ g.M.T, R.expand(len(x), -1), what="samples lie on the fiber")
    assert_close(w @ x, g.conditional_mean(R), what="weighted mean")
    xc = x - w @ x
    assert_close((w[:, None] * xc).T @ xc, g.conditional_cov(), rtol=1e-9, what="weighted covariance")


def test_gaussian_samples_are_on_the_fiber_with_the_conditional_moments():
    gen = torch.Generator().manual_seed(3)
    D, d = 5, 2
    A = torch.randn(D, D, dtype=F64, generator=gen)
    g = GaussianSystem(A @ A.T + torch.eye(D, dtype=F64), torch.randn(D, dtype=F64, generator=gen), torch.randn(d, D, dtype=F64, generator=gen), beta=0.8)
    R = torch.tensor([0.3, -1.0], dtype=F64)
    x = g.sample_conditional(R, 20000, generator=gen)
    assert_close(x @ g.M.T, R.expand(len(x), -1), what="M r = R")
    mu, sigma = g.conditional_mean(R), g.conditional_cov()
    for i in range(D):
        assert_unbiased(x[:, i].numpy(), float(mu[i]), float(sigma[i, i]))
    # second moments: Var((x_i − μ_i)²) = 2 Σ_ii² for a Gaussian
    for i in range(D):
        assert_unbiased(((x[:, i] - mu[i]) ** 2).numpy(), float(sigma[i, i]), 2 * float(sigma[i, i]) ** 2)


def test_metric_projector_removes_the_force_covariance():
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(4, 4, dtype=F64, generator=gen)
    g = GaussianSystem(A @ A.T + torch.eye(4, dtype=F64), torch.zeros(4, dtype=F64), torch.randn(2, 4, dtype=F64, generator=gen), beta=1.2)
    P = g.metric_projector()
    assert_close(P @ g.M.T, torch.eye(2, dtype=F64), what="P Mᵀ = I")
    assert float(g.cov_projected_force(P).abs().max()) < 1e-13
    assert_close(g.term1(P), g.exact_hessian(), what="Term 1 alone is exact for the K-metric P")


def test_hvp_target_moments_match_monte_carlo_including_the_variance():
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(4, 4, dtype=F64, generator=gen)
    g = GaussianSystem(A @ A.T + torch.eye(4, dtype=F64), torch.zeros(4, dtype=F64), torch.randn(2, 4, dtype=F64, generator=gen), beta=1.5)
    P = torch.linalg.solve(g.M @ g.M.T, g.M)
    v, b = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.4, -0.2], dtype=F64)
    R = torch.tensor([0.2, 0.1], dtype=F64)
    x = g.sample_conditional(R, 40000, generator=gen)
    dF = g.forces(x) @ P.T - (g.exact_mean_force(R) - b)
    h = g.term1(P) @ v - g.beta * dF * (dF @ v)[:, None]  # (n, d)
    mean, var = g.hvp_target_moments(P, v, bias=b)
    for a in range(2):
        assert_unbiased(h[:, a].numpy(), float(mean[a]), float(var[a]))
        # the variance itself: E[(h − mean)²] = var, checked within 4 % (its own z-scale here)
        assert abs(float(((h[:, a] - mean[a]) ** 2).mean()) / float(var[a]) - 1) < 0.04


def test_translation_invariant_K_is_allowed_when_positive_on_the_fiber():
    K = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 1.0]], dtype=F64)  # K 1 = 0
    M = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)  # selection of atoms 1 and 3
    g = GaussianSystem(K, torch.zeros(3, dtype=F64), M, beta=1.0)
    # eliminating the middle atom of two unit springs in series gives one spring of 1/2
    assert_close(g.exact_hessian(), torch.tensor([[0.5, -0.5], [-0.5, 0.5]], dtype=F64), what="Hess A")
    with pytest.raises(ValueError, match="not positive definite on null"):
        # the free direction of atom 2 is a fiber direction: improper conditional law
        GaussianSystem(torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=F64)), torch.zeros(3, dtype=F64), M[:1], beta=1.0)


def test_gaussian_input_validation():
    K = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="full row rank"):
        GaussianSystem(K, torch.zeros(3, dtype=F64), torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]], dtype=F64), 1.0)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianSystem(torch.triu(torch.ones(3, 3, dtype=F64)), torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)[:1], 1.0)
    with pytest.raises(ValueError, match="beta"):
        GaussianSystem(K, torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)[:1], -1.0)


# ====================================================================== separable
def test_separable_mean_curvature_obeys_stein_and_the_harmonic_limit():
    harmonic = SeparableSystem(mu=0.0, ky=2.5, beta=0.7)
    assert harmonic.mean_v_curvature() == 2.5
    sys = SeparableSystem(ky=2.0, mu=0.3, beta=1.4)
    # Stein: β⟨V'²⟩ = ⟨V''⟩, by Gauss–Legendre on a wide interval
    y, c = np.polynomial.legendre.leggauss(200)
    y = 6.0 * y
    p = c * np.exp(-sys.beta * sys.v_potential(y))
    p /= p.sum()
    v1, v2 = sys.ky * y + sys.mu * y**3, sys.ky + 3 * sys.mu * y**2
    assert math.isclose(sys.mean_v_curvature(), p @ v2, rel_tol=1e-10)
    assert math.isclose(sys.beta * (p @ v1**2), p @ v2, rel_tol=1e-10)
    assert math.isclose(sys.term1(0.4, 1.3) - sys.beta * sys.cov_projected_force(0.4, 1.3), sys.exact_hessian(0.4), rel_tol=1e-12)


# ====================================================================== isotropic radius
@pytest.mark.parametrize("dim", [2, 3, 4])
def test_isotropic_radius_free_energy_is_U_minus_entropy_and_derivatives_agree(dim):
    sys = IsotropicRadiusSystem(dim=dim, beta=1.3)
    rho = torch.tensor(1.1, dtype=F64, requires_grad=True)
    A = sys.radial_potential(rho) - (dim - 1) / sys.beta * torch.log(rho)
    (g,) = torch.autograd.grad(A, rho, create_graph=True)
    (h,) = torch.autograd.grad(g, rho)
    assert math.isclose(-float(g.detach()), sys.exact_mean_force(1.1), rel_tol=1e-13)
    assert math.isclose(float(h), sys.exact_hessian(1.1), rel_tol=1e-13)
    assert math.isclose(float(A.detach()), float(sys.free_energy(1.1)), rel_tol=1e-13)


def test_isotropic_radius_free_energy_matches_direct_shell_integral_in_2d():
    """Z(ρ) = 2πρ e^{−βU(ρ)} ⇒ A(ρ₁) − A(ρ₀) from the marginal density of |r|."""
    sys = IsotropicRadiusSystem(dim=2, beta=1.3)
    for rho in (0.7, 1.9):
        x, _ = sys.fiber_samples(rho, 32)
        assert_close(torch.linalg.vector_norm(x, dim=-1), torch.full((32,), rho, dtype=F64), what="on the circle")
        Z = 2 * math.pi * rho * math.exp(-sys.beta * sys.radial_potential(rho))
        assert math.isclose(-math.log(Z) / sys.beta + math.log(2 * math.pi) / sys.beta, sys.free_energy(rho), rel_tol=1e-13)


# ====================================================================== bijective
@FAST
@given(rho=st.floats(0.4, 2.5), theta=st.floats(-2.8, 2.8), a=st.floats(-1.0, 1.0))
def test_bijective_log_det_and_inverse_are_consistent_with_the_forward_map(rho, theta, a):
    for sys, R in ((polar_system(), torch.tensor([[rho, theta]], dtype=F64)), (shear_system(a=a), torch.tensor([[theta, rho]], dtype=F64))):
        x, w = sys.fiber_samples(R[0])
        assert float(w) == 1.0
        assert_close(sys.forward(x), R, what=f"ξ(ξ⁻¹(R)) = R ({sys.name})")
        J = sys.cg_map.jacobian(x)
        assert math.isclose(math.log(abs(float(torch.linalg.det(J[0])))), float(sys.log_abs_det_jacobian(R)), abs_tol=1e-13)


def test_bijective_hessian_is_symmetric_and_is_the_hessian_of_the_closed_form():
    sys = polar_system(beta=0.9)
    R = torch.tensor([[1.2, 0.4]], dtype=F64)
    h = sys.exact_hessian(R)[0]
    assert_symmetric(h)
    eps = 1e-4
    fd = torch.stack(
        [(sys.exact_mean_force(R + eps * e) - sys.exact_mean_force(R - eps * e))[0] / (-2 * eps) for e in torch.eye(2, dtype=F64)[:, None]]
    )
    assert_close(h, fd, rtol=1e-7, what="Hess A vs central difference of F (O(ε²) ≈ 1e-8)")


def test_unknown_toy_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        toy.NoSuchSystem  # noqa: B018
