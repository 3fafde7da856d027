"""T1–T3 of hessid.thermo_toys (docs/thermo.md §6): closed forms vs quadrature, closed forms
vs the relations (R2)–(R6), and the estimators of hessid.thermo over exact samples (z-tests),
each with a negative control."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid import thermo
from hessid.thermo_toys import (
    EntropicDoubleWell,
    t1_gaussian,
    t2_double_well,
    t3_parameter_response,
)
from hessid.units import KB_KCAL_PER_MOL_K
from hessid.units import beta as beta_of
from tests.helpers import assert_close, relative_error

F64 = torch.float64
FAST = settings(max_examples=8, deadline=None)
BETAS = [beta_of(T) for T in (200.0, 300.0, 400.0)]


def _quadrature_A(system, R, beta):
    """A(R, β) = −β⁻¹ ln Z by the quadrature version (absolute: the δ-measure Jacobian is
    included), R (B, d) → (B,)."""
    _, lm, E = system.fiber_log_measure(torch.as_tensor(R, dtype=F64))
    return -torch.logsumexp(lm - beta * E, dim=1) / beta


def _z(estimates: torch.Tensor, exact: float) -> float:
    """z-score of the mean of independent batch estimates (B,) against the exact value."""
    se = float(estimates.std()) / math.sqrt(estimates.shape[0])
    return (float(estimates.mean()) - exact) / se


# ============================================================== closed forms vs quadrature
def test_t1_closed_form_free_energy_equals_quadrature_at_every_beta():
    toy = t1_gaussian(D=4, d=2, seed=1, U0=0.7)
    R = torch.tensor([[0.2, -0.3], [-0.6, 0.5]], dtype=F64)
    system = toy.quadrature_system(R.tolist(), BETAS[1], BETAS)
    for b in BETAS:
        assert_close(_quadrature_A(system, R, b), toy.free_energy(R, b), rtol=1e-12, what="A(R, β)")
        # negative control: the (m/2β) ln(2π/β) term dropped (an R-independent but β-dependent error)
        wrong = toy.free_energy(R, b) + toy.m / (2 * b) * math.log(2 * math.pi / b)
        assert relative_error(_quadrature_A(system, R, b), wrong) > 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_t2_t3_closed_form_free_energy_equals_quadrature_at_every_beta(lam):
    toy = EntropicDoubleWell(m=2, lam=lam)
    x = torch.tensor([[-1.0], [0.1], [0.8]], dtype=F64)
    system = toy.quadrature_system(x.tolist(), BETAS[1], BETAS)
    for b in BETAS:
        assert_close(_quadrature_A(system, x, b), toy.free_energy(x[:, 0], b), rtol=1e-12, what="A(x, β)")
        # negative control: a T-unaware A (the 300 K free energy reused at β)
        if b != BETAS[1]:
            assert relative_error(_quadrature_A(system, x, b), toy.free_energy(x[:, 0], BETAS[1])) > 1e-3


def test_t3_lambda_derivative_of_quadrature_free_energy_matches_closed_forms():
    x, b, lam, h = torch.tensor([[-0.7], [0.9]], dtype=F64), BETAS[1], 0.5, 1e-3
    A = {k: _quadrature_A(EntropicDoubleWell(m=2, lam=lam + k * h).quadrature_system(x.tolist(), b), x, b)
         for k in (-2, -1, 1, 2)}
    dA = (8 * (A[1] - A[-1]) - (A[2] - A[-2])) / (12 * h)  # 4th order, error ≈ h⁴|A⁽⁵⁾|/30
    toy = EntropicDoubleWell(m=2, lam=lam)
    assert_close(dA, toy.lambda_derivative_free_energy(x[:, 0]), rtol=1e-9, what="∂_λA")
    assert relative_error(dA, -toy.lambda_derivative_free_energy(x[:, 0])) > 1  # sign


# ============================================================== closed forms vs the relations
@FAST
@given(T=st.floats(150.0, 500.0), x=st.floats(-1.5, 1.5), lam=st.floats(-1.0, 1.0), m=st.integers(1, 5))
def test_double_well_closed_forms_obey_r2_r3_r6(T, x, lam, m):
    toy, b = EntropicDoubleWell(m=m, lam=lam), beta_of(T)
    xt = torch.tensor(x, dtype=F64)
    u = thermo.fd_beta_derivative(lambda bb: bb * toy.free_energy(xt, bb), b)
    assert_close(u, toy.mean_energy(xt, b), rtol=1e-9, what="(R2) ⟨U⟩ = ∂_β(βA)")
    v = thermo.fd_beta_derivative(lambda bb: bb * toy.free_energy(xt, bb), b, n=2)
    assert_close(-v, torch.tensor(toy.energy_variance(b), dtype=F64), rtol=1e-8, what="(R3) Var = −∂²_β(βA)")
    xr = xt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(toy.free_energy(xr, b), xr)
    assert_close(-g, toy.mean_force(xt, b), rtol=1e-12, what="F = −∂_x A")
    dbF = thermo.fd_beta_derivative(lambda bb: toy.mean_force(xt, bb), b)
    assert_close(dbF, torch.tensor(toy.mean_force_beta_derivative(b), dtype=F64), rtol=1e-8, what="(R6) ∂_βF")
    dTF = -KB_KCAL_PER_MOL_K * b * b * dbF
    assert_close(dTF, torch.tensor(toy.entropy_gradient(), dtype=F64), rtol=1e-8, what="∂_TF = −m k_B γ/2")
    # negative control: the T-unaware model (A at 300 K for every T) has ∂_β(βA) = A(300 K)
    if abs(T - 300.0) > 20:
        assert relative_error(toy.free_energy(xt, beta_of(300.0)), u) > 1e-6


@FAST
@given(T=st.floats(150.0, 500.0), seed=st.integers(0, 50))
def test_gaussian_closed_forms_obey_r2_r3_and_have_no_thermal_response(T, seed):
    toy, b = t1_gaussian(D=5, d=2, seed=seed), beta_of(T)
    R = torch.tensor([0.3, -0.4], dtype=F64)
    u = thermo.fd_beta_derivative(lambda bb: bb * toy.free_energy(R, bb), b)
    assert_close(u, toy.mean_energy(R, b), rtol=1e-9, what="(R2)")
    v = thermo.fd_beta_derivative(lambda bb: bb * toy.free_energy(R, bb), b, n=2)
    assert_close(-v, torch.tensor(toy.energy_variance(b), dtype=F64), rtol=1e-8, what="(R3)")
    assert toy.conditional_heat_capacity() == pytest.approx(1.5 * KB_KCAL_PER_MOL_K)
    Rr = R.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(toy.free_energy(Rr, b), Rr)
    assert_close(-g, toy.mean_force(R), rtol=1e-12, what="F = −C⁻¹ΔR (T-independent)")


# ============================================================== estimators over exact samples
def test_t1_estimators_over_exact_samples_match_closed_forms():
    """docs/thermo.md T1 check: D = 5, d = 2, β = 1.3, 4·10⁵ exact samples at fixed R."""
    toy, b, n, nb = t1_gaussian(D=5, d=2, seed=0), 1.3, 400_000, 40
    R = torch.tensor([0.3, -0.4], dtype=F64)
    r = toy.sample_conditional(R, b, n, torch.Generator().manual_seed(11))
    assert_close(toy.cg_map(r), R.expand(n, 2), rtol=1e-12, what="samples on the fiber")
    U, f = toy.potential(r), toy.forces(r)
    P = torch.linalg.solve(toy.M @ toy.M.T, toy.M)
    batches = [slice(i, None, nb) for i in range(nb)]
    kappa = torch.stack([thermo.energy_cumulants(U[s], 4) for s in batches])  # (nb, 4)
    exact = [float(toy.mean_energy(R, b))] + [toy.energy_cumulant(k, b) for k in (2, 3, 4)]
    for k in range(4):
        assert abs(_z(kappa[:, k], exact[k])) < 5, (k, float(kappa[:, k].mean()), exact[k])
    cov = torch.stack([thermo.covariance_projected_force_energy(f[s], U[s], P) for s in batches])  # (nb, 2)
    for a in range(2):
        assert abs(_z(cov[:, a], 0.0)) < 5, "T1: Cov_R(Pf, U) = 0"
    # negative controls: the cumulant of the wrong temperature (T passed as β: κ_2 ≈ 0) and
    # the T-unaware ⟨U⟩ = A are rejected by the same z-test
    assert abs(_z(kappa[:, 1], toy.energy_cumulant(2, 1.0 / (KB_KCAL_PER_MOL_K * b)))) > 50
    assert abs(_z(kappa[:, 0], float(toy.free_energy(R, b)))) > 50


def test_t2_estimators_at_fixed_x_match_r2_r3_r6():
    toy, b, x, n, nb = t2_double_well(), beta_of(300.0), 0.4, 200_000, 40
    r = toy.sample_conditional(x, b, n, torch.Generator().manual_seed(5))
    U, f = toy.potential(r), toy.forces(r)
    P = torch.zeros(1, toy.D, dtype=F64)
    P[0, 0] = 1.0
    batches = [slice(i, None, nb) for i in range(nb)]
    mu = torch.stack([thermo.mean_energy(U[s]) for s in batches])
    C = torch.stack([thermo.conditional_heat_capacity(U[s], b) for s in batches])
    dbF = torch.stack([thermo.mean_force_beta_derivative(f[s], U[s], P)[0] for s in batches])
    dTF = torch.stack([thermo.entropy_gradient(f[s], U[s], P, b)[0] for s in batches])
    F = torch.stack([thermo.mean_energy_gradient(f[s], U[s], P, b)[0] for s in batches])
    xt = torch.tensor(x, dtype=F64)
    assert abs(_z(mu, float(toy.mean_energy(xt, b)))) < 5
    assert abs(_z(C, toy.conditional_heat_capacity())) < 5  # = 2 k_B for m = 4
    assert abs(_z(dbF, toy.mean_force_beta_derivative(b))) < 5
    assert abs(_z(dTF, toy.entropy_gradient())) < 5  # −m k_B γ/2 = −1.987e-3 kcal/mol/Å/K
    grad_u = float(-toy.dV(xt))  # ∂_x⟨U⟩ = V'(x): −F + β Cov = V' + mγ/(2β) − mγ/(2β)
    assert abs(_z(F, -grad_u)) < 5
    # negative controls: wrong sign of the covariance; T passed where β is expected
    assert abs(_z(-dbF, toy.mean_force_beta_derivative(b))) > 50
    dTF_T = torch.stack([thermo.entropy_gradient(f[s], U[s], P, 1 / (KB_KCAL_PER_MOL_K * b))[0] for s in batches])
    assert abs(_z(dTF_T, toy.entropy_gradient())) > 50


def test_t3_estimators_match_r4_r5():
    toy, b, x, n, nb = t3_parameter_response(lam=0.5), beta_of(300.0), -0.6, 200_000, 40
    r = toy.sample_conditional(x, b, n, torch.Generator().manual_seed(7))
    U, dU = toy.potential(r), toy.dU_dlambda(r)
    batches = [slice(i, None, nb) for i in range(nb)]
    d1 = torch.stack([thermo.lambda_derivative_free_energy(dU[s]) for s in batches])
    d2 = torch.stack([thermo.lambda_second_derivative_free_energy(dU[s], 0.0, b) for s in batches])
    r5 = torch.stack([thermo.lambda_derivative_mean_energy(U[s], dU[s], b) for s in batches])
    assert abs(_z(d1, toy.lambda_derivative_free_energy(x))) < 5
    assert abs(_z(d2, toy.lambda_second_derivative_free_energy(x))) < 5
    assert abs(_z(r5, toy.lambda_derivative_mean_energy(x))) < 5
    # negative control: +β Var in (R4) (the sign of the fluctuation term)
    wrong = d2 + torch.stack([2 * b * thermo.energy_variance(dU[s]) for s in batches])
    assert abs(_z(wrong, toy.lambda_second_derivative_free_energy(x))) > 50


def test_t2_joint_samples_match_populations_mean_energy_and_total_heat_capacity():
    toy, n = t2_double_well(), 200_000
    for T in (200.0, 400.0):
        b = beta_of(T)
        r = toy.sample(b, n, torch.Generator().manual_seed(int(T)))
        p = toy.population(b)
        frac = float((r[:, 0] < 0).double().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
        U = toy.potential(r)
        assert abs(float(U.mean()) - toy.total_mean_energy(b)) < 5 * float(U.std()) / math.sqrt(n)
        # C_tot = k_B β² Var(U) of the whole system (R8); se of a variance ≈ sqrt((κ4 + 2σ⁴)/n)
        C = KB_KCAL_PER_MOL_K * b * b * float(U.var())
        c4 = float(((U - U.mean()) ** 4).mean())
        se = KB_KCAL_PER_MOL_K * b * b * math.sqrt((c4 - float(U.var()) ** 2) / n)
        assert abs(C - toy.total_heat_capacity(b)) < 5 * se
        # negative control: the T-unaware population (300 K free energy reused at T)
        p_unaware = toy.population(b, free_energy_beta=beta_of(300.0))
        assert abs(frac - p_unaware) > 20 * math.sqrt(p * (1 - p) / n)


def test_t2_reference_numbers_and_trend_sign():
    """docs/thermo.md §6: the 300 K free energy reused at 200/400 K gives P(x<0) = 0.6153 and
    0.5559 (falling with T) while the exact populations rise with T."""
    toy = t2_double_well()
    b200, b300, b400 = beta_of(200.0), beta_of(300.0), beta_of(400.0)
    assert toy.population(b200, free_energy_beta=b300) == pytest.approx(0.6153, abs=5e-5)
    assert toy.population(b400, free_energy_beta=b300) == pytest.approx(0.5559, abs=5e-5)
    exact = [toy.population(b) for b in (b200, b300, b400)]
    assert exact[0] < exact[1] < exact[2]
    C, (vis, hid) = toy.total_heat_capacity(b300, return_terms=True)
    assert hid == pytest.approx(2 * KB_KCAL_PER_MOL_K, rel=1e-12) and C == pytest.approx(vis + hid)
    # C_tot = −k_B β² ∂_β E[U] (the whole-system relation) by finite differences in β
    dE = thermo.fd_beta_derivative(lambda bb: torch.tensor(toy.total_mean_energy(bb), dtype=F64), b300)
    assert C == pytest.approx(-KB_KCAL_PER_MOL_K * b300**2 * float(dE), rel=1e-8)
    assert toy.free_energy_difference(b300) == pytest.approx(
        float(toy.free_energy(np.float64(1.0), b300) - toy.free_energy(np.float64(-1.0), b300)))


def test_quadrature_versions_refuse_what_they_cannot_resolve():
    with pytest.raises(ValueError, match="≤ 3 hidden DOFs"):
        t2_double_well(m=4).quadrature_system([[0.0]], BETAS[1])
    with pytest.raises(ValueError, match="resolves β ≥"):
        t2_double_well(m=2).quadrature_system([[0.0]], BETAS[1], [0.5])
    with pytest.raises(ValueError, match="m ≥ 1"):
        EntropicDoubleWell(m=0)
