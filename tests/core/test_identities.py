"""Laws of hessid.identities: mean force, CG Hessian, HVP targets (docs/identities.md §2, §3, §5).

Ground truths are independent of the identities under test:
* Gaussian + linear map: closed form (M K⁻¹ Mᵀ)⁻¹ (or its Schur complement), with
  moment-matched fiber points that make every conditional average exact;
* nonlinear maps: A(R) = −β⁻¹ ln Σ_k c_k J(R, s_k) e^{−βH(r(R, s_k))} from a quadrature over a
  parametrisation of the fiber (periodic trapezoid on a circle: spectrally accurate; trapezoid
  on a line for a super-Gaussian integrand), differentiated in R by autograd — no G, no div G;
* bijective maps: the closed form A = H(r*) + β⁻¹ ln|det J| (hessid.toy).
Agreement is at round-off (≈1e-15); tolerances are 1e-10 relative. Monte Carlo tests use the
exact per-frame variance of the target (GaussianSystem.hvp_target_moments), |z| < 5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid import identities as I
from hessid.maps import LinearMap, NonlinearMap
from hessid.toy import (
    GaussianSystem,
    IsotropicRadiusSystem,
    SeparableSystem,
    anharmonic_2d,
    polar_system,
    shear_system,
)
from tests.helpers import assert_close, assert_symmetric, assert_unbiased, relative_error
from tests.strategies import gaussian_systems, seeds

F64 = torch.float64
FAST = settings(max_examples=12, deadline=None)
DETECT = 1e-4  # a wrong formula must miss the truth by more than this (relative)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % 2**31)


# ====================================================================== weighted averages
def test_weighted_mean_and_covariance_agree_with_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    w = rng.uniform(size=50)
    w /= w.sum()
    cov = I.weighted_covariance(torch.tensor(x), torch.tensor(y), torch.tensor(w))
    expected = np.cov(x.T, y.T, aweights=w, bias=True)[:3, 3:]
    assert_close(cov, expected, what="weighted cross-covariance")
    assert_close(I.weighted_mean(torch.tensor(x), torch.tensor(w)), w @ x, what="weighted mean")
    assert_close(I.weighted_covariance(torch.tensor(x)), np.cov(x.T, bias=True), what="uniform weights")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.tensor([0.5, 0.6, -0.1]), "weights must be non-negative"),
        (torch.tensor([0.5, 0.5, 0.1]), "weights must be normalised"),
        (torch.tensor([0.5, 0.5]), r"weights must have shape \(3,\)"),
        (torch.tensor([0.5, float("nan"), 0.5]), "weights contains non-finite"),
    ],
)
def test_invalid_weights_are_rejected_naming_the_argument(weights, message):
    x = torch.ones(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=message):
        I.weighted_mean(x, weights.to(F64))


def test_weights_normalised_within_1e_minus_12_per_sample_are_accepted():
    x = torch.ones(4, dtype=F64)
    I.weighted_mean(x, torch.full((4,), 0.25, dtype=F64) + 1e-13)


def test_nonpositive_beta_is_rejected():
    with pytest.raises(ValueError, match="beta"):
        I.cg_hessian_linear(torch.zeros(2, 3, 3, dtype=F64), torch.zeros(2, 3, dtype=F64), torch.eye(3, dtype=F64)[:1], 0.0)


# ====================================================================== Gaussian + linear map
def _projectors(g: GaussianSystem, seed: int) -> dict[str, torch.Tensor]:
    """Three valid projectors: minimum norm, K-metric (Term 2 ≡ 0) and a random family member."""
    M = g.M
    P0 = torch.linalg.solve(M @ M.T, M)
    C = torch.randn(M.shape[0], M.shape[1], dtype=F64, generator=_gen(seed))
    return {
        "min_norm": P0,
        "metric": g.metric_projector(),
        "random": P0 + C @ (torch.eye(M.shape[1], dtype=F64) - M.T @ P0),
    }


def _linear_hessian(g: GaussianSystem, R, P, return_terms=False):
    x, w = g.moment_matched_samples(R)
    return I.cg_hessian_linear(g.hessians(len(x)), g.forces(x), P, g.beta, w, return_terms=return_terms)


@FAST
@given(case=gaussian_systems(with_seed=True))
def test_gaussian_cg_hessian_is_inverse_of_M_Kinv_Mt_for_three_projectors(case):
    g, R, seed = case
    exact = torch.linalg.inv(g.M @ torch.linalg.solve(g.K, g.M.T))
    for name, P in _projectors(g, seed).items():
        total, (term1, term2) = _linear_hessian(g, R, P, return_terms=True)
        assert_close(total, exact, what=f"Term1 − β Cov = S⁻¹ ({name})")
        assert_close(term1, g.term1(P), what=f"Term 1 = P K Pᵀ ({name})")
        # Term 2 vanishes for the metric projector: compare on the scale of the Hessian
        assert float((term2 + g.beta * g.cov_projected_force(P)).abs().max()) <= 1e-10 * float(term1.abs().max())
        x, w = g.moment_matched_samples(R)
        assert_close(I.mean_force_linear(g.forces(x), P, w), g.exact_mean_force(R), what=f"mean force ({name})")


@FAST
@given(case=gaussian_systems(with_seed=True))
def test_total_hessian_is_independent_of_projector_while_the_split_is_not(case):
    g, R, seed = case
    results = {k: _linear_hessian(g, R, P, return_terms=True) for k, P in _projectors(g, seed).items()}
    ref_total, (ref_t1, _) = results["min_norm"]
    scale = float(ref_total.abs().max())
    for total, _ in results.values():
        assert_close(total, ref_total, what="total Hessian across projectors")
    metric_t1, metric_t2 = results["metric"][1]
    assert float(metric_t2.abs().max()) <= 1e-12 * scale  # the K-metric projector has no Term 2
    assert float((metric_t1 - ref_t1).abs().max()) > 1e-6 * scale  # ... so its Term 1 differs


@FAST
@given(case=gaussian_systems(with_seed=True))
def test_averaged_linear_cg_hessian_and_its_terms_are_symmetric(case):
    g, R, seed = case
    total, (t1, t2) = _linear_hessian(g, R, _projectors(g, seed)["random"], return_terms=True)
    for m in (total, t1, t2):
        assert_symmetric(m)


def _chain_laplacian(N: int, seed: int) -> torch.Tensor:
    """Translation-invariant K: nearest- and next-nearest-neighbour springs on a 1-D chain."""
    rng = np.random.default_rng(seed)
    K = np.zeros((N, N))
    for i in range(N - 1):
        for j, k in ((i + 1, rng.uniform(1, 5)), (i + 2, rng.uniform(0.1, 1))):
            if j < N:
                K[[i, j], [i, j]] += k
                K[i, j] -= k
                K[j, i] -= k
    return torch.as_tensor(K)


@FAST
@given(seed=seeds, N=st.integers(4, 7), kind=st.sampled_from(["selection", "row_stochastic"]))
def test_translation_zero_mode_appears_only_in_the_sum_of_the_terms(seed, N, kind):
    """H(r + c1) = H(r) and S 1 = 1  ⇒  Hess A · 1_n = 0; Term 1 and Term 2 alone are not zero on 1_n."""
    K = _chain_laplacian(N, seed)
    rng = np.random.default_rng(seed)
    if kind == "selection":
        cg = LinearMap.selection([0, N // 2, N - 1], n_atoms=N, spatial_dim=1)
    else:
        S = rng.uniform(0.0, 1.0, size=(2, N))
        cg = LinearMap.from_matrix(S / S.sum(1, keepdims=True), spatial_dim=1)
    g = GaussianSystem(K, torch.as_tensor(rng.standard_normal(N)), cg.matrix(), beta=1.7)
    R = torch.as_tensor(rng.standard_normal(cg.n_beads))
    total, (t1, t2) = _linear_hessian(g, R, cg, return_terms=True)
    ones = torch.ones(cg.n_beads, dtype=F64)
    scale = float(t1.abs().max())
    assert float((total @ ones).abs().max()) < 1e-12 * scale
    # Negative controls: each term alone fails the zero-mode check above by at least four orders
    # of magnitude. Not "O(1)": for random row-stochastic weights |Term 1 · 1| / max|Term 1|
    # goes down to 1.6e-4 (worst of 24 000 drawn cases), so a 1e-3 bound was a flaky test.
    assert float((t1 @ ones).abs().max()) > 1e-8 * scale
    assert float((t2 @ ones).abs().max()) > 1e-8 * scale
    assert_close(total, g.exact_hessian(), rtol=1e-10, what="Hessian with a zero mode")


@pytest.fixture(scope="module")
def gaussian_case():
    g_ = _gen(7)
    D, d = 6, 2
    A = torch.randn(D, D, dtype=F64, generator=g_)
    K = A @ A.T + 2.0 * torch.eye(D, dtype=F64)
    M = torch.randn(d, D, dtype=F64, generator=g_)
    g = GaussianSystem(K, torch.randn(D, dtype=F64, generator=g_), M, beta=1.677399)
    R = torch.randn(d, dtype=F64, generator=g_)
    P = _projectors(g, 3)["random"]
    return g, R, P


def test_term2_sign_flip_is_detected(gaussian_case):
    g, R, P = gaussian_case
    total, (t1, t2) = _linear_hessian(g, R, P, return_terms=True)
    exact = g.exact_hessian()
    assert relative_error(total, exact) < 1e-10
    assert relative_error(t1 - t2, exact) > DETECT


def test_term1_only_is_detected(gaussian_case):
    g, R, P = gaussian_case
    total, (t1, _) = _linear_hessian(g, R, P, return_terms=True)
    assert relative_error(total, g.exact_hessian()) < 1e-10
    assert relative_error(t1, g.exact_hessian()) > DETECT


def _mc_targets(g: GaussianSystem, R, P, v, bias, n, seed):
    x = g.sample_conditional(R, n, generator=_gen(seed))  # (n, D)
    model_force = g.exact_mean_force(R) - bias
    dF = g.forces(x) @ P.T - model_force  # (n, d)
    probes = v.expand(n, 1, -1)  # (n, 1, d)
    term1 = I.term1_linear_exact(g.hessians(n), P, probes)
    return I.hvp_target_linear(term1, dF, probes, g.beta)[:, 0]  # (n, d)


def test_per_frame_hvp_target_is_unbiased_for_the_exact_model_force(gaussian_case):
    g, R, P = gaussian_case
    v = torch.tensor([0.6, -0.8], dtype=F64)
    h = _mc_targets(g, R, P, v, torch.zeros(2, dtype=F64), n=20000, seed=11)
    mean, var = g.hvp_target_moments(P, v)
    assert_close(mean, g.exact_hessian() @ v, what="E[h] = Hess A v (closed form)")
    for a in range(2):
        assert_unbiased(h[:, a].numpy(), float(mean[a]), float(var[a]))


def test_per_frame_hvp_target_carries_minus_beta_b_bT_bias_for_a_wrong_model_force(gaussian_case):
    g, R, P = gaussian_case
    v = torch.tensor([0.6, -0.8], dtype=F64)
    b = 2.0 * torch.sqrt(torch.diagonal(g.cov_projected_force(P))) * torch.tensor([1.0, 0.7], dtype=F64)
    h = _mc_targets(g, R, P, v, b, n=20000, seed=12)
    mean, var = g.hvp_target_moments(P, v, bias=b)
    assert_close(mean, g.exact_hessian() @ v - g.beta * b * (b @ v), what="E[h] = (Hess A − β b bᵀ) v")
    for a in range(2):
        assert_unbiased(h[:, a].numpy(), float(mean[a]), float(var[a]))
    # ... and the bias is visible: the unbiased mean Hess A v fails the same z-test
    unbiased = g.exact_hessian() @ v
    z = (h.mean(0) - unbiased) / torch.sqrt(var / h.shape[0])
    assert float(z.abs().max()) > 10


def test_hvp_target_matches_a_per_probe_loop_and_accepts_bead_shapes():
    gen = _gen(5)
    B, k, n = 3, 4, 2
    term1 = torch.randn(B, k, n, 3, dtype=F64, generator=gen)
    dF = torch.randn(B, n, 3, dtype=F64, generator=gen)
    v = torch.randn(B, k, n, 3, dtype=F64, generator=gen)
    h = I.hvp_target_linear(term1, dF, v, beta=1.3, cov_weight=0.4)
    for bb in range(B):
        for m in range(k):
            ref = term1[bb, m] - 0.4 * 1.3 * dF[bb] * float((dF[bb] * v[bb, m]).sum())
            assert_close(h[bb, m], ref, what="batched vs loop")
    assert torch.equal(I.hvp_target_linear(term1, dF, v, beta=1.3, cov_weight=0.0), term1)


def test_hvp_target_residual_is_detached_and_gamma_is_validated():
    term1 = torch.zeros(1, 1, 2, dtype=F64)
    dF = torch.ones(1, 2, dtype=F64, requires_grad=True)
    v = torch.ones(1, 1, 2, dtype=F64)
    assert not I.hvp_target_linear(term1, dF, v, beta=1.0).requires_grad
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="cov_weight"):
            I.hvp_target_linear(term1, dF, v, beta=1.0, cov_weight=bad)
    with pytest.raises(ValueError, match="force_residual"):
        I.hvp_target_linear(term1, torch.ones(1, 3, dtype=F64), v, beta=1.0)


def test_term1_linear_exact_matches_projected_hessian_times_probe():
    gen = _gen(9)
    cg = LinearMap.center_of_geometry([[0, 1], [2, 3]], n_atoms=4, projector="bead_sum")
    A = torch.randn(2, 12, 12, dtype=F64, generator=gen)
    hess = A + A.transpose(1, 2)
    v = torch.randn(2, 3, 6, dtype=F64, generator=gen)
    t1 = I.term1_linear_exact(hess, cg, v)
    for b in range(2):
        for m in range(3):
            u = cg.embed(v[b, m].reshape(2, 3)).reshape(-1)  # Pᵀ v
            ref = cg.project_forces((hess[b] @ u).reshape(4, 3)).reshape(-1)
            assert_close(t1[b, m], ref, what="P ∇²H Pᵀ v")


def test_separable_system_stein_identity_cancels_the_c_dependence():
    """H = U(x) + V(y), R = x, P = [1, c]: Term1 = U'' + c²⟨V''⟩, β Cov = c²⟨V''⟩
    (docs/identities.md §7.2)."""
    sys = SeparableSystem(kx=1.0, lam=0.5, ky=2.0, mu=0.3, beta=1.4)
    R = 0.7
    L = 12.0 / math.sqrt(sys.beta * sys.ky)
    nodes, gl = np.polynomial.legendre.leggauss(120)
    y = torch.as_tensor(L * nodes)
    logw = torch.log(torch.as_tensor(gl)) - sys.beta * sys.v_potential(y)
    w = torch.softmax(logw, 0)
    x = torch.stack([torch.full_like(y, R), y], -1)  # (S, 2)
    forces = torch.stack([torch.full_like(y, -(sys.kx * R + sys.lam * R**3)), -(sys.ky * y + sys.mu * y**3)], -1)
    hess = torch.zeros(len(y), 2, 2, dtype=F64)
    hess[:, 0, 0] = sys.exact_hessian(R)
    hess[:, 1, 1] = sys.ky + 3 * sys.mu * y**2
    for c in (0.0, 0.8, -1.7):
        P = torch.tensor([[1.0, c]], dtype=F64)
        total, (t1, t2) = I.cg_hessian_linear(hess, forces, P, sys.beta, w, return_terms=True)
        assert_close(total[0, 0], sys.exact_hessian(R), what=f"Hess A = U'' (c={c})")
        assert_close(t1[0, 0], sys.term1(R, c), what=f"Term 1 (c={c})")
        assert abs(float(-t2[0, 0]) - sys.beta * sys.cov_projected_force(R, c)) <= 1e-10 * float(t1[0, 0])
        assert_close(I.mean_force_linear(forces, P, w)[0], sys.exact_mean_force(R), what="mean force")
    assert x.shape == (len(y), 2)


# ====================================================================== nonlinear maps
def _grad_H(potential, x):
    xx = x.detach().clone().requires_grad_(True)
    return -torch.autograd.grad(potential(xx).sum(), xx)[0]


def _cylindrical(r):
    return torch.stack([torch.sqrt(r[:, 0] ** 2 + r[:, 1] ** 2), r[:, 2]], -1)  # (B, 2)


def _radius(r):
    return torch.linalg.vector_norm(r, dim=-1, keepdim=True)  # (B, 1)


SHEAR3 = (0.3, 0.2, 0.25)


def _shear3(r):
    a, b, c = SHEAR3
    return torch.stack([r[:, 0] + a * r[:, 1] ** 2 + b * r[:, 2] ** 2, r[:, 1] + c * r[:, 2] ** 2], -1)


def anharmonic_3d(r):
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    return (
        0.5 * x**2 + 0.8 * y**2 + 0.6 * z**2 + 0.3 * x * y + 0.2 * y * z + 0.1 * x**3
        + 0.05 * (x**4 + y**4 + z**4) + 0.1 * x * z**2
    )


class Fiber:
    """Fiber quadrature: r = param(R, s_k) with measure exp(logjac(R, s_k)) · c_k (ground truth)."""

    def __init__(self, name, cg_map, potential, param, logjac, nodes, node_weights, R, beta=1.3):
        self.name, self.cg_map, self.potential = name, cg_map, potential
        self.param, self.logjac, self.nodes, self.node_weights = param, logjac, nodes, node_weights
        self.R, self.beta = R, beta

    def _log_weights(self, R, with_jacobian=True):
        r = self.param(R, self.nodes)  # (S, D)
        logw = torch.log(self.node_weights) - self.beta * self.potential(r)
        if with_jacobian:
            logw = logw + self.logjac(R, self.nodes)
        return r, logw

    def exact(self, with_jacobian=True):
        """(F, Hess A) from autograd of A(R) = −β⁻¹ ln Z(R)."""
        R = self.R.clone().requires_grad_(True)
        A = -torch.logsumexp(self._log_weights(R, with_jacobian)[1], 0) / self.beta
        (g,) = torch.autograd.grad(A, R, create_graph=True)
        hess = torch.stack([torch.autograd.grad(g[a], R, retain_graph=True)[0] for a in range(len(R))])
        return -g.detach(), hess.detach()

    def samples(self):
        r, logw = self._log_weights(self.R)
        return r.detach(), torch.softmax(logw, 0).detach()


def _circle(n):
    return 2 * math.pi * torch.arange(n, dtype=F64) / n, torch.full((n,), 2 * math.pi / n, dtype=F64)


def _line(n, half_width):
    return torch.linspace(-half_width, half_width, n, dtype=F64), torch.full((n,), 2 * half_width / (n - 1), dtype=F64)


def _make_fibers():
    theta, c_theta = _circle(64)
    z, c_z = _line(129, 4.0)
    a, b, c = SHEAR3

    def radius_param(R, t):
        return R[0] * torch.stack([torch.cos(t), torch.sin(t)], -1)

    def cyl_param(R, t):
        return torch.stack([R[0] * torch.cos(t), R[0] * torch.sin(t), R[1].expand(len(t))], -1)

    def shear_param(R, s):
        y = R[1] - c * s**2
        return torch.stack([R[0] - a * y**2 - b * s**2, y, s], -1)

    def log_rho(R, t):
        return torch.log(R[0]).expand(len(t))

    def unit(R, s):
        return torch.zeros_like(s)

    return [
        Fiber("anisotropic radius (ρ dθ)", NonlinearMap(_radius), anharmonic_2d, radius_param, log_rho, theta, c_theta, torch.tensor([1.3], dtype=F64)),
        Fiber("cylindrical (ρ, z)", NonlinearMap(_cylindrical), anharmonic_3d, cyl_param, log_rho, theta, c_theta, torch.tensor([1.2, 0.4], dtype=F64)),
        Fiber("cylindrical, mass metric", NonlinearMap(_cylindrical, metric="inverse_mass", masses=[1.0, 3.0, 2.0]), anharmonic_3d, cyl_param, log_rho, theta, c_theta, torch.tensor([1.2, 0.4], dtype=F64)),
        Fiber("3-D→2-D shear (dz)", NonlinearMap(_shear3), anharmonic_3d, shear_param, unit, z, c_z, torch.tensor([0.5, -0.3], dtype=F64)),
        Fiber("3-D→2-D shear, mass metric", NonlinearMap(_shear3, metric="inverse_mass", masses=[2.0, 1.0, 5.0]), anharmonic_3d, shear_param, unit, z, c_z, torch.tensor([0.5, -0.3], dtype=F64)),
    ]


FIBERS = _make_fibers()
FIBER_IDS = [f.name for f in FIBERS]


@pytest.fixture(scope="module", params=FIBERS, ids=FIBER_IDS)
def fiber(request):
    f = request.param
    x, w = f.samples()
    F, hess = f.exact()
    return f, x, w, F, hess


def test_nonlinear_mean_force_matches_quadrature_free_energy(fiber):
    f, x, w, F, _ = fiber
    mf = I.mean_force_nonlinear(f.cg_map, x, _grad_H(f.potential, x), f.beta, w)
    assert_close(mf, F, what=f"F = ⟨G f + β⁻¹ div G⟩ ({f.name})")


@pytest.mark.parametrize("form", I.NONLINEAR_HESSIAN_FORMS)
def test_nonlinear_hessian_matches_quadrature_free_energy_in_every_form(fiber, form):
    f, x, w, _, hess = fiber
    h = I.cg_hessian_nonlinear(f.cg_map, f.potential, x, f.beta, w, form=form)
    assert_close(h, hess, what=f"Hess A, {form} form ({f.name})")
    assert_symmetric(h)


def test_dropping_div_G_is_detected(fiber):
    f, x, w, F, hess = fiber
    Gf = torch.einsum("sai,si->sa", f.cg_map.projector(x), _grad_H(f.potential, x))
    assert relative_error(I.weighted_mean(Gf, w), F) > DETECT
    total, terms = I.cg_hessian_nonlinear(f.cg_map, f.potential, x, f.beta, w, form="split", return_terms=True)
    assert relative_error(total, hess) < 1e-10
    no_div = total - terms["divergence_covariance"] - terms["curvature_divergence"]  # L = G f
    assert relative_error(no_div, hess) > DETECT


def test_linear_formula_applied_to_a_nonlinear_map_is_detected(fiber):
    f, x, w, _, hess = fiber
    _, terms = I.cg_hessian_nonlinear(f.cg_map, f.potential, x, f.beta, w, form="split", return_terms=True)
    assert relative_error(terms["linear_form"], hess) > DETECT


@pytest.mark.parametrize("f", [f for f in FIBERS if "shear" in f.name], ids=lambda f: f.name)
def test_dropping_the_G_dG_f_curvature_term_is_detected(f):
    """(For radial maps r̂·∇r̂ = 0, so the term vanishes there; the shears need it.)"""
    x, w = f.samples()
    _, hess = f.exact()
    total, terms = I.cg_hessian_nonlinear(f.cg_map, f.potential, x, f.beta, w, form="split", return_terms=True)
    assert relative_error(total - terms["curvature_force"], hess) > DETECT


@pytest.mark.parametrize("fib", [f for f in FIBERS if "ρ" in f.name], ids=lambda f: f.name)
def test_missing_fiber_jacobian_rho_in_the_measure_is_detected(fib):
    """Z(R) = ∫ e^{−βH} ρ dθ: a reference without ρ disagrees with the (correct) identity."""
    x, w = fib.samples()
    mf = I.mean_force_nonlinear(fib.cg_map, x, _grad_H(fib.potential, x), fib.beta, w)
    h = I.cg_hessian_nonlinear(fib.cg_map, fib.potential, x, fib.beta, w)
    F_wrong, hess_wrong = fib.exact(with_jacobian=False)
    F_right, hess_right = fib.exact()
    assert relative_error(mf, F_right) < 1e-10 and relative_error(h, hess_right) < 1e-10
    assert relative_error(mf, F_wrong) > DETECT
    assert relative_error(h, hess_wrong) > DETECT


@pytest.mark.parametrize("form", I.NONLINEAR_TARGET_FORMS)
def test_nonlinear_hvp_target_averages_to_hessian_times_probe(fiber, form):
    f, x, w, F, hess = fiber
    d = len(F)
    v = torch.linspace(0.5, -0.7, d, dtype=F64)
    probes = v.expand(len(x), 1, d)
    h = I.hvp_target_nonlinear(f.cg_map, f.potential, x, F.expand(len(x), d), probes, f.beta, form=form)[:, 0]
    assert_close(I.weighted_mean(h, w), hess @ v, what=f"E[h] = Hess A v ({form}, {f.name})")
    b = 0.3 * torch.ones(d, dtype=F64)  # model force off by b → bias −β b (b·v)
    hb = I.hvp_target_nonlinear(f.cg_map, f.potential, x, (F - b).expand(len(x), d), probes, f.beta, form=form)[:, 0]
    assert_close(I.weighted_mean(hb, w), hess @ v - f.beta * b * (b @ v), what="E[h] with bias")


def test_per_frame_nonlinear_term1_is_asymmetric_but_its_average_is_symmetric():
    """Shear: −G (∂L/∂r)ᵀ is not symmetric per frame (docs/identities.md §3), vjp ≠ jvp per
    frame."""
    f = FIBERS[3]
    x, w = f.samples()
    eye = torch.eye(2, dtype=F64).expand(len(x), 2, 2)
    zero = torch.zeros(len(x), 2, dtype=F64)
    t_vjp = I.hvp_target_nonlinear(f.cg_map, f.potential, x, zero, eye, f.beta, cov_weight=0.0, form="vjp")
    t_jvp = I.hvp_target_nonlinear(f.cg_map, f.potential, x, zero, eye, f.beta, cov_weight=0.0, form="jvp")
    # rows k of t are T1(e_k): the per-frame matrices are transposes of each other
    assert_close(t_vjp, t_jvp.transpose(1, 2), what="vjp form = transpose of jvp form")
    heavy = w > 1e-3 * w.max()
    asym = (t_vjp - t_vjp.transpose(1, 2))[heavy].abs().amax(dim=(1, 2)) / t_vjp[heavy].abs().amax(dim=(1, 2))
    assert float(asym.max()) > 1e-2
    assert_symmetric(I.weighted_mean(t_vjp, w))


def test_isotropic_radius_closed_form_in_three_dimensions():
    sys = IsotropicRadiusSystem(dim=3, beta=1.3)
    for rho in (0.8, 1.5, 2.2):
        x, w = sys.fiber_samples(rho, 16, generator=_gen(1))
        mf = I.mean_force_nonlinear(sys.cg_map, x, _grad_H(sys.potential, x), sys.beta, w)
        assert_close(mf[0], sys.exact_mean_force(rho), what="F = −U' + 2/(βρ)")
        for form in I.NONLINEAR_HESSIAN_FORMS:
            h = I.cg_hessian_nonlinear(sys.cg_map, sys.potential, x, sys.beta, w, form=form)
            assert_close(h[0, 0], sys.exact_hessian(rho), what=f"Hess A = U'' + 2/(βρ²) ({form})")


@st.composite
def bijective_cases(draw):
    beta = draw(st.floats(0.5, 2.0))
    if draw(st.booleans()):
        sys = polar_system(beta=beta)
        R = torch.tensor([draw(st.floats(0.5, 2.0)), draw(st.floats(-2.5, 2.5))], dtype=F64)
    else:
        sys = shear_system(a=draw(st.floats(-0.8, 0.8)), beta=beta)
        R = torch.tensor([draw(st.floats(-1.5, 1.5)), draw(st.floats(-1.5, 1.5))], dtype=F64)
    return sys, R


@FAST
@given(case=bijective_cases())
def test_bijective_maps_reduce_to_the_chain_rule_in_every_form(case):
    sys, R = case
    x, w = sys.fiber_samples(R)
    F = sys.exact_mean_force(R[None])[0]
    hess = sys.exact_hessian(R[None])[0]
    mf = I.mean_force_nonlinear(sys.cg_map, x, _grad_H(sys.potential, x), sys.beta, w)
    assert_close(mf, F, what=f"F ({sys.name})")
    for form in I.NONLINEAR_HESSIAN_FORMS:
        assert_close(I.cg_hessian_nonlinear(sys.cg_map, sys.potential, x, sys.beta, w, form=form), hess, what=f"Hess A ({sys.name}, {form})")


def test_nonlinear_formulas_reduce_to_the_linear_ones_for_a_linear_map(gaussian_case):
    g, R, _ = gaussian_case
    cg = NonlinearMap(lambda r: r @ g.M.T)
    x, w = g.moment_matched_samples(R)
    P = torch.linalg.solve(g.M @ g.M.T, g.M)
    lin = I.cg_hessian_linear(g.hessians(len(x)), g.forces(x), P, g.beta, w)
    for form in I.NONLINEAR_HESSIAN_FORMS:
        assert_close(I.cg_hessian_nonlinear(cg, g.potential, x, g.beta, w, form=form), lin, what=form)
    assert_close(I.mean_force_nonlinear(cg, x, g.forces(x), g.beta, w), g.exact_mean_force(R), what="F")


def test_unknown_forms_are_rejected():
    sys = polar_system()
    x, w = sys.fiber_samples(torch.tensor([1.0, 0.3], dtype=F64))
    with pytest.raises(ValueError, match="form"):
        I.cg_hessian_nonlinear(sys.cg_map, sys.potential, x, 1.0, w, form="expanded")
    with pytest.raises(ValueError, match="form"):
        I.hvp_target_nonlinear(sys.cg_map, sys.potential, x, torch.zeros(1, 2, dtype=F64), torch.zeros(1, 1, 2, dtype=F64), 1.0, form="fd")
    with pytest.raises(ValueError, match="return_terms"):
        I.cg_hessian_nonlinear(sys.cg_map, sys.potential, x, 1.0, w, return_terms=True)
