"""Laws of hessid.thermo (docs/thermo.md (R2)–(R8)): exact on discrete ensembles (sympy
derivatives of the cumulant generating function, exhaustive enumeration for unbiasedness),
each with a negative control that must fail."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid import thermo
from hessid.units import KB_KCAL_PER_MOL_K
from tests.helpers import assert_close, relative_error

F64 = torch.float64
FAST = settings(max_examples=10, deadline=None)

# a discrete "fiber": energies U_i (kcal/mol) with a base measure μ_i (the δ-measure weights)
energies_st = st.lists(st.integers(-6, 6), min_size=3, max_size=5, unique=True)
measure_st = st.lists(st.integers(1, 5), min_size=5, max_size=5)
betas = st.sampled_from([sp.Rational(1, 2), sp.Rational(6, 5), sp.Rational(5, 3), sp.Rational(5, 2)])


def _boltzmann(U, mu, beta) -> torch.Tensor:
    logw = torch.log(torch.tensor(mu, dtype=F64)) - float(beta) * torch.tensor(U, dtype=F64)
    return torch.softmax(logw, dim=0)


def _beta_A(U, mu):
    """βA(β) = −ln Σ μ_i e^{−βU_i} as a sympy expression in β."""
    b = sp.Symbol("beta", positive=True)
    return b, -sp.log(sum(m * sp.exp(-b * u) for u, m in zip(U, mu, strict=False)))


# ============================================================== (R2), (R3)
@FAST
@given(U=energies_st, mu=measure_st, beta=betas)
def test_beta_derivatives_of_beta_free_energy_are_signed_energy_cumulants(U, mu, beta):
    # exact derivatives of βA = −ln Σ μ_i e^{−βU_i} at 40 digits (mpmath, independent of the
    # moment formulas inside the estimators)
    w = _boltzmann(U, mu[: len(U)], beta)
    E = torch.tensor(U, dtype=F64)
    with mpmath.workdps(40):
        def bA(b):
            return -mpmath.log(mpmath.fsum(m * mpmath.exp(-b * u) for u, m in zip(U, mu, strict=False)))

        derivs = [float(mpmath.diff(bA, mpmath.mpf(beta.p) / beta.q, n)) for n in (1, 2, 3, 4)]
    for n, exact in zip((1, 2, 3, 4), derivs, strict=True):
        got = float(thermo.beta_free_energy_derivative(E, n, w))
        assert abs(got - exact) <= 1e-10 * (1 + abs(exact)), (n, got, exact)
        if n in (2, 4) and abs(exact) > 1e-6:
            # negative control: the cumulant without the (−1)^{n+1} sign
            assert abs(float(thermo.energy_cumulant(E, n, w)) - exact) > 1e-3 * abs(exact)


@FAST
@given(U=energies_st, mu=measure_st, beta=betas)
def test_mean_energy_equals_beta_derivative_of_beta_free_energy(U, mu, beta):
    b, bA = _beta_A(U, mu)
    f = sp.lambdify(b, bA, "mpmath")
    E, w = torch.tensor(U, dtype=F64), _boltzmann(U, mu[: len(U)], beta)
    fd = thermo.fd_beta_derivative(lambda x: torch.tensor(float(f(x)), dtype=F64), float(beta))
    # error on the shift-invariant scale max(|⟨U⟩|, sd_R U) (⟨U⟩ itself can be ≈ 0); FD error ≈ 1e-11
    mean = thermo.mean_energy(E, w)
    scale = max(abs(float(mean)), math.sqrt(float(thermo.energy_variance(E, w))))
    assert abs(float(mean - fd)) <= 1e-9 * scale, "⟨U⟩ = ∂_β(βA)"
    # negative control: A itself (the T-unaware answer) misses T S_R = ⟨U⟩ − A; wherever that
    # term is not negligible (it vanishes when one ground state dominates), A fails the check
    A = float(f(beta)) / float(beta)
    TS = float(sp.diff(bA, b).subs(b, beta)) - A
    if abs(TS) > 1e-6 * (1 + abs(A)):
        assert relative_error(torch.tensor(A, dtype=F64), fd) > 1e-7


def test_variance_is_minus_second_beta_derivative_and_heat_capacity_is_kb_beta2_var():
    U, mu, beta = [0, 1, 3, -2], [1, 2, 1, 3], sp.Rational(5, 3)
    b, bA = _beta_A(U, mu)
    f = sp.lambdify(b, bA, "mpmath")
    E, w = torch.tensor(U, dtype=F64), _boltzmann(U, mu, beta)
    fd2 = thermo.fd_beta_derivative(lambda x: torch.tensor(float(f(x)), dtype=F64), float(beta), n=2)
    var = thermo.energy_variance(E, w)
    assert_close(var, -fd2, rtol=1e-9, what="Var = −∂²_β(βA)")
    C = thermo.conditional_heat_capacity(E, float(beta), w)
    assert_close(C, KB_KCAL_PER_MOL_K * float(beta) ** 2 * var)
    # negative control: a temperature passed where β is expected
    T = 1.0 / (KB_KCAL_PER_MOL_K * float(beta))
    assert relative_error(thermo.conditional_heat_capacity(E, T, w), C) > 1.0


def test_weighted_cumulants_are_the_plug_in_cumulants_of_the_weighted_law():
    # κ_n = n-th derivative of ln E e^{tU} at t = 0 (sympy), weights = the law itself
    U, p = [0, 1, 4], [sp.Rational(1, 5), sp.Rational(1, 2), sp.Rational(3, 10)]
    t = sp.Symbol("t")
    K = sp.log(sum(pi * sp.exp(t * u) for u, pi in zip(U, p, strict=True)))
    got = thermo.energy_cumulants(torch.tensor(U, dtype=F64), 4, torch.tensor([float(x) for x in p], dtype=F64))
    exact = [float(sp.diff(K, t, n).subs(t, 0)) for n in (1, 2, 3, 4)]
    assert_close(got, torch.tensor(exact, dtype=F64), rtol=1e-12, what="κ_1..κ_4")


# ============================================================== unbiasedness by enumeration
def _expectation_over_tuples(atoms, probs, S, fn):
    """E[fn(sample)] over all S-tuples of i.i.d. draws from a discrete law (exact)."""
    total = 0.0
    for idx in itertools.product(range(len(atoms)), repeat=S):
        pr = math.prod(probs[i] for i in idx)
        total = total + pr * fn(torch.tensor([atoms[i] for i in idx], dtype=F64))
    return total


@settings(max_examples=4, deadline=None)
@given(atoms=st.lists(st.integers(-3, 4), min_size=3, max_size=3, unique=True),
       raw=st.lists(st.integers(1, 6), min_size=3, max_size=3))
def test_k_statistics_are_unbiased_for_the_cumulants(atoms, raw):
    probs = [r / sum(raw) for r in raw]
    p = torch.tensor(probs, dtype=F64)
    exact = thermo.energy_cumulants(torch.tensor(atoms, dtype=F64), 4, p)  # population cumulants
    S = 5
    mean_k = _expectation_over_tuples(atoms, probs, S, lambda x: thermo.energy_cumulants(x, 4))
    assert_close(mean_k, exact, rtol=1e-10, what="E[k_n] = κ_n")
    # negative control: the plug-in variance (uniform weights) is biased by (S − 1)/S
    uniform = torch.full((S,), 1.0 / S, dtype=F64)
    mean_m2 = _expectation_over_tuples(atoms, probs, S, lambda x: thermo.energy_variance(x, uniform))
    assert_close(mean_m2, exact[1] * (S - 1) / S, rtol=1e-10)
    assert relative_error(mean_m2, exact[1]) > 0.1


def test_unweighted_covariances_are_unbiased_and_plug_in_ones_are_not():
    # joint law of (P f, U) on 3 atoms, d = 1 (forces (S, 1) with P = [[1]])
    atoms = [(1.0, 0.0), (-2.0, 1.0), (0.5, 3.0)]
    probs = [0.3, 0.5, 0.2]
    f = torch.tensor([a[0] for a in atoms], dtype=F64)
    u = torch.tensor([a[1] for a in atoms], dtype=F64)
    p = torch.tensor(probs, dtype=F64)
    exact = (p * (f - p @ f) * (u - p @ u)).sum()
    S, P = 4, torch.ones(1, 1, dtype=F64)
    total = plug = 0.0
    for idx in itertools.product(range(3), repeat=S):
        pr = math.prod(probs[i] for i in idx)
        fx, ux = f[list(idx)][:, None], u[list(idx)]
        total = total + pr * thermo.covariance_projected_force_energy(fx, ux, P)
        plug = plug + pr * thermo.covariance_projected_force_energy(fx, ux, P, torch.full((S,), 1 / S, dtype=F64))
    assert_close(total, exact[None], rtol=1e-12, what="E[Cov_unbiased] = Cov")
    assert relative_error(plug, exact[None]) > 0.2  # negative control: (S−1)/S bias


# ============================================================== (R6) on a discrete fiber
def test_mean_force_beta_derivative_is_minus_cov_and_entropy_gradient_is_kb_beta2_cov():
    """Linear map R = x with y on 3 discrete levels: Z(x, β) = Σ_i μ_i e^{−βU(x, y_i)}
    (sympy in x and β), forces f = −∂U/∂(x, y), P = [1, 0]. (A projector with a y-component
    needs the integration by parts over a continuous y that a discrete fiber lacks; the
    quadrature checks of hessid verify cover those.)"""
    x, b = sp.symbols("x beta")
    ys, mu = [-1, 0, 2], [1, 2, 1]
    c = 0

    def Uxy(xx, yy):
        return xx**2 + sp.Rational(1, 2) * xx * yy + yy**2 + sp.Rational(1, 10) * xx**2 * yy**2

    bA = -sp.log(sum(m * sp.exp(-b * Uxy(x, y)) for y, m in zip(ys, mu, strict=True)))
    F = sp.diff(bA, x) / b * -1  # F = −∂_x A
    x0, b0 = sp.Rational(2, 5), sp.Rational(3, 2)
    dbF = float(sp.diff(F, b).subs({x: x0, b: b0}))
    dxU = float(sp.diff(bA, b).diff(x).subs({x: x0, b: b0}))  # ∇_x⟨U⟩ = ∂_x ∂_β(βA)
    U = torch.tensor([float(Uxy(x0, y)) for y in ys], dtype=F64)
    forces = torch.tensor([[-float(sp.diff(Uxy(x, sp.Symbol("y")), x).subs({x: x0, sp.Symbol("y"): y})),
                            -float(sp.diff(Uxy(x0, sp.Symbol("y")), sp.Symbol("y")).subs(sp.Symbol("y"), y))]
                           for y in ys], dtype=F64)
    P = torch.tensor([[1.0, float(c)]], dtype=F64)
    w = _boltzmann([float(Uxy(x0, y)) for y in ys], mu, b0)
    got = thermo.mean_force_beta_derivative(forces, U, P, w)
    assert_close(got, torch.tensor([dbF], dtype=F64), rtol=1e-12, what="∂_βF = −Cov(Pf, U)")
    assert relative_error(-got, torch.tensor([dbF], dtype=F64)) > 1.0  # negative control: wrong sign of Cov
    bf = float(b0)
    assert_close(thermo.entropy_gradient(forces, U, P, bf, w), -KB_KCAL_PER_MOL_K * bf**2 * got,
                 what="∂_TF = −k_Bβ² ∂_βF")
    grad = thermo.mean_energy_gradient(forces, U, P, bf, w)
    assert_close(grad, torch.tensor([dxU], dtype=F64), rtol=1e-12, what="∇⟨U⟩ = −F + βCov")
    T = 1.0 / (KB_KCAL_PER_MOL_K * bf)
    assert relative_error(thermo.mean_energy_gradient(forces, U, P, T, w), torch.tensor([dxU], dtype=F64)) > 1.0


# ============================================================== (R4), (R5)
@FAST
@given(a=st.lists(st.integers(-3, 3), min_size=3, max_size=3), bl=st.lists(st.integers(-3, 3), min_size=3, max_size=3),
       cl=st.lists(st.integers(0, 2), min_size=3, max_size=3), beta=betas)
def test_lambda_derivatives_of_free_energy_are_mean_and_minus_beta_variance(a, bl, cl, beta):
    """(R4), (R5) on a 3-state fiber with U_i(λ) = a_i + b_i λ + c_i λ²/2; exact partial
    derivatives of A(λ, β) = −β⁻¹ ln Σ e^{−βU_i(λ)} at 40 digits (mpmath)."""
    l0, bf = 1.0 / 3.0, float(beta)

    def Ui(i, lam):
        return a[i] + bl[i] * lam + cl[i] * lam**2 / 2

    with mpmath.workdps(40):
        def A(lam, b):
            return -mpmath.log(mpmath.fsum(mpmath.exp(-b * Ui(i, lam)) for i in range(3))) / b

        def bA(lam, b):
            return b * A(lam, b)

        def b_dA(lam, b):
            return b * mpmath.diff(lambda x: A(x, b), lam)

        lm, bm = mpmath.mpf(1) / 3, mpmath.mpf(beta.p) / beta.q
        dA = float(mpmath.diff(A, (lm, bm), (1, 0)))
        d2A = float(mpmath.diff(A, (lm, bm), (2, 0)))
        dmeanU = float(mpmath.diff(bA, (lm, bm), (1, 1)))  # ∂_λ⟨U⟩ = ∂_λ∂_β(βA)
        mixed = float(mpmath.diff(lambda b: b_dA(lm, b), bm))  # ∂_β(β ∂_λA)
    E = torch.tensor([Ui(i, l0) for i in range(3)], dtype=F64)
    dU = torch.tensor([bl[i] + cl[i] * l0 for i in range(3)], dtype=F64)
    d2U = torch.tensor([float(cl[i]) for i in range(3)], dtype=F64)
    w = torch.softmax(-bf * E, dim=0)
    assert abs(float(thermo.lambda_derivative_free_energy(dU, w)) - dA) < 1e-10 * (1 + abs(dA))
    got2 = float(thermo.lambda_second_derivative_free_energy(dU, d2U, bf, w))
    assert abs(got2 - d2A) < 1e-10 * (1 + abs(d2A))
    got5 = float(thermo.lambda_derivative_mean_energy(E, dU, bf, w))
    assert abs(got5 - dmeanU) < 1e-10 * (1 + abs(dmeanU)) and abs(mixed - dmeanU) < 1e-10 * (1 + abs(dmeanU))
    # negative controls: +β Var in (R4), +β Cov in (R5), where those terms are present
    var = float(thermo.energy_variance(dU, w))
    if var > 1e-6:
        assert abs((got2 + 2 * bf * var) - d2A) > 1e-6
    beta_cov = float(thermo.lambda_derivative_free_energy(dU, w)) - got5
    if abs(beta_cov) > 1e-6:
        assert abs((got5 + 2 * beta_cov) - dmeanU) > 1e-6


def test_lambda_second_derivative_matches_a_gaussian_fiber_with_lambda_dependent_stiffness():
    """U = ½(1 + λ)k y² (one hidden DOF): A = (1/2β) ln(β(1+λ)k/2π), ∂²_λA = −1/(2β(1+λ)²),
    by exact samples (z-test); Cov(U, ∂_λU) ≠ 0 here, so (R5) has a live covariance term."""
    g = torch.Generator().manual_seed(3)
    k, lam, beta, n = 2.0, 0.4, 1.3, 200_000
    y = torch.randn(n, generator=g, dtype=F64) / math.sqrt(beta * (1 + lam) * k)
    E, dU = 0.5 * (1 + lam) * k * y**2, 0.5 * k * y**2
    d2A = -1.0 / (2 * beta * (1 + lam) ** 2)
    est = thermo.lambda_second_derivative_free_energy(dU, 0.0, beta, None)
    batches = torch.stack([thermo.lambda_second_derivative_free_energy(dU[i::20], 0.0, beta) for i in range(20)])
    se = float(batches.std()) / math.sqrt(20)
    assert abs(float(est) - d2A) < 5 * se
    # (R5): ∂_λ⟨U⟩ = ∂_λ(1/(2β)) = 0 while ⟨∂_λU⟩ = 1/(2β(1+λ)) ≠ 0 → the covariance matters
    r5 = thermo.lambda_derivative_mean_energy(E, dU, beta)
    b5 = torch.stack([thermo.lambda_derivative_mean_energy(E[i::20], dU[i::20], beta) for i in range(20)])
    assert abs(float(r5)) < 5 * float(b5.std()) / math.sqrt(20)
    no_cov = float(thermo.lambda_derivative_free_energy(dU))
    assert abs(no_cov) > 50 * float(b5.std()) / math.sqrt(20)  # negative control: dropping −βCov


# ============================================================== (R7), (R8)
def test_npt_relations_on_a_discrete_ensemble():
    b, p = sp.symbols("beta p")
    U, V = [0, 1, 2], [10, 12, 9]
    bG = -sp.log(sum(sp.exp(-b * (u + p * v)) for u, v in zip(U, V, strict=True)))
    at = {b: sp.Rational(3, 2), p: sp.Rational(1, 20)}
    w = torch.softmax(torch.tensor([-float(at[b] * (u + at[p] * v)) for u, v in zip(U, V, strict=True)],
                                   dtype=F64), 0)
    Ut, Vt = torch.tensor(U, dtype=F64), torch.tensor(V, dtype=F64)
    H = thermo.npt_mean_enthalpy(Ut, Vt, float(at[p]), w)
    assert abs(float(H) - float(sp.diff(bG, b).subs(at))) < 1e-12
    dG = float(sp.diff(bG / b, p).subs(at))
    assert abs(float(thermo.npt_pressure_derivative(Vt, w)) - dG) < 1e-12
    assert abs(float(thermo.mean_energy(Ut, w)) - float(sp.diff(bG, b).subs(at))) > 0.1  # pV term matters
    assert thermo.KCAL_PER_MOL_A3_PER_BAR == pytest.approx(1.4393e-5, rel=1e-4)


def test_total_heat_capacity_is_the_law_of_total_variance():
    rng = np.random.default_rng(0)
    U = torch.as_tensor(rng.normal(size=(4, 3)))  # U[j, i]: CG point j, fiber state i
    prob = torch.as_tensor(rng.dirichlet(np.ones(12)).reshape(4, 3))
    beta = 1.7
    pR = prob.sum(1)
    wi = prob / pR[:, None]
    mu = (wi * U).sum(1)
    var = (wi * (U - mu[:, None]) ** 2).sum(1)
    total_var = (prob * (U - (prob * U).sum()) ** 2).sum()
    C, (vis, hid) = thermo.total_heat_capacity(mu, var, beta, pR, return_terms=True)
    assert_close(C, KB_KCAL_PER_MOL_K * beta**2 * total_var, what="C_tot = k_Bβ² Var(U)")
    assert relative_error(vis, C) > 0.05 and relative_error(hid, C) > 0.05  # neither term alone


# ============================================================== errors
def test_bad_inputs_are_refused_with_a_message():
    E = torch.arange(4, dtype=F64)
    with pytest.raises(ValueError, match="need at least 5 samples"):
        thermo.energy_cumulants(E, 4)
    with pytest.raises(ValueError, match="order must be 1, 2, 3 or 4"):
        thermo.energy_cumulants(E, 5)
    with pytest.raises(ValueError, match="normalised"):
        thermo.mean_energy(E, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="beta must be positive"):
        thermo.conditional_heat_capacity(E, -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        thermo.mean_energy(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="projector must be"):
        thermo.covariance_projected_force_energy(torch.zeros(4, 3), E, torch.ones(1, 2))
    with pytest.raises(ValueError, match="forces must be"):
        thermo.mean_force_beta_derivative(torch.zeros(3, 2), E, torch.ones(1, 2))
    with pytest.raises(ValueError, match="rel_step"):
        thermo.fd_beta_derivative(lambda b: torch.tensor(b, dtype=F64), 1.0, rel_step=0.5)
    with pytest.raises(ValueError, match="must return float64"):
        thermo.fd_beta_derivative(lambda b: torch.tensor(b), 1.0)
