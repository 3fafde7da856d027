"""Quadrature engine: exact against closed forms (docs/identities.md §1, §7.1, §7.3)."""

import math

import pytest
import torch

from hessid.quadrature import (
    BETA_300K,
    QuadratureSystem,
    builtin_systems,
    fd6_gradient_and_hessian,
    isotropic_radius_system,
)
from tests.helpers import assert_close

DT = torch.float64


def _gaussian_system(projector=None, exact_hessian=None):
    """H = ½(r−r0)ᵀK(r−r0) in 2-D, R = m·r: A = ½ (R − m·r0)² / S with S = m K⁻¹ mᵀ."""
    K = torch.tensor([[2.0, 0.6], [0.6, 1.5]], dtype=DT)
    r0 = torch.tensor([0.3, -0.2], dtype=DT)
    m = torch.tensor([0.8, 0.5], dtype=DT)
    n = torch.tensor([-0.5, 0.8], dtype=DT) / m.norm()

    def potential(r):
        x = r - r0
        return 0.5 * torch.einsum("...i,ij,...j->...", x, K, x)

    sys_ = QuadratureSystem(potential, lambda r: (r * m).sum(-1, keepdim=True),
                            lambda R, s: R * m / (m @ m) + s * n, [(-6.0, 6.0)],
                            [[-0.4], [0.7]], BETA_300K, projector=projector,
                            exact_hessian=exact_hessian, name="gaussian")
    S = float(m @ torch.linalg.solve(K, m))
    return sys_, S, float(m @ r0)


def test_quadrature_pmf_of_gaussian_matches_closed_form():
    system, S, c = _gaussian_system()
    for R in system.points:
        F, H = system.exact_force_and_hessian(R)
        assert_close(F, torch.tensor([-(float(R) - c) / S], dtype=DT), rtol=1e-10)
        assert_close(H, torch.tensor([[1.0 / S]], dtype=DT), rtol=1e-10)
    a0, a1 = (system.free_energy(R) for R in system.points)
    expected = 0.5 * ((0.7 - c) ** 2 - (-0.4 - c) ** 2) / S
    assert abs(float(a1 - a0) - expected) < 1e-12


@pytest.mark.parametrize("dim", [2, 3])
def test_isotropic_radius_pmf_has_entropic_log_term(dim):
    """A = U(ρ) − (D−1)β⁻¹ ln ρ: F = −U' + (D−1)/(βρ), 𝓗 = U'' + (D−1)/(βρ²)."""
    system = isotropic_radius_system(dim)
    b = system.beta
    for R in system.points:
        rho = float(R)
        F = -(2 * rho - 0.4 + 0.4 * rho**3) + (dim - 1) / (b * rho)
        H = 2 + 1.2 * rho**2 + (dim - 1) / (b * rho**2)
        F_q, H_q = system.exact_force_and_hessian(R)
        assert abs(float(F_q) / F - 1) < 1e-8
        assert abs(float(H_q) / H - 1) < 1e-8


def test_dropping_the_fiber_jacobian_shifts_radius_pmf_by_log_rho():
    """Without ρ in the δ-measure, Z → Z/ρ, so A → A + β⁻¹ ln ρ (the missing-ρ bug)."""
    system = isotropic_radius_system(2)
    R = torch.tensor([[0.5], [1.7]], dtype=DT)
    a = -system.log_partition(R) / system.beta
    a_wrong = -system.log_partition(R, jacobian=False) / system.beta
    assert_close(a_wrong - a, torch.log(R[:, 0]) / system.beta, rtol=1e-12)


def test_closed_form_hessian_replaces_finite_differences():
    system, S, _ = _gaussian_system(exact_hessian=lambda R: torch.full((1, 1), 7.0, dtype=DT))
    assert float(system.exact_hessian(system.points[0])) == 7.0


def test_fd6_stencil_is_exact_for_polynomials_of_degree_six():
    def f(x):  # (B, 2) → (B,)
        return x[:, 0] ** 6 + 2 * x[:, 0] ** 3 * x[:, 1] ** 2 - x[:, 1] ** 4
    x = torch.tensor([0.4, -0.7], dtype=DT)
    g, H = fd6_gradient_and_hessian(f, x, 0.05)
    gx = 6 * 0.4**5 + 6 * 0.4**2 * 0.49
    gy = 4 * 0.4**3 * (-0.7) - 4 * (-0.7) ** 3
    Hxx = 30 * 0.4**4 + 12 * 0.4 * 0.49
    Hxy = 12 * 0.4**2 * (-0.7)
    Hyy = 4 * 0.4**3 - 12 * 0.49
    assert_close(g, torch.tensor([gx, gy], dtype=DT), rtol=1e-11)
    assert_close(H, torch.tensor([[Hxx, Hxy], [Hxy, Hyy]], dtype=DT), rtol=1e-10)


def test_periodic_fiber_coordinates_use_equal_trapezoid_weights():
    system = isotropic_radius_system(2)
    s, w = system.nodes(16)
    assert torch.allclose(w, torch.full((16,), 2 * math.pi / 16, dtype=DT))
    assert float(s.max()) < 2 * math.pi


def test_conditional_weights_are_normalised_and_on_the_level_set():
    for system in builtin_systems():
        for R in system.points:
            r, w = system.conditional_samples(R)
            assert abs(float(w.sum()) - 1) < 1e-13 and bool((w >= 0).all())
            assert float((system.cg_map(r) - R).abs().max()) < 1e-12


def test_builtin_systems_satisfy_the_fiber_and_projector_protocol():
    for system in builtin_systems():
        system.validate()


def test_fiber_off_the_level_set_is_refused_naming_the_point():
    system = QuadratureSystem(lambda r: (r**2).sum(-1), lambda r: r[..., :1],
                              lambda R, s: torch.cat([1.01 * R, s], -1), [(-3.0, 3.0)],
                              [[0.0], [0.5]], 1.0, name="broken")
    with pytest.raises(ValueError, match=r"point 1 R = \[0.5\]: max residual 5\.0"):
        system.validate()


def test_projector_violating_p_mt_identity_is_refused():
    system = QuadratureSystem(lambda r: (r**2).sum(-1), lambda r: r[..., :1],
                              lambda R, s: torch.cat([R, s], -1), [(-3.0, 3.0)], [[0.5]], 1.0,
                              projector=[[0.9, 0.3]])
    with pytest.raises(ValueError, match="violates P Mᵀ = I"):
        system.validate()


def test_malformed_bounds_are_rejected():
    with pytest.raises(ValueError, match="hi > lo"):
        QuadratureSystem(None, None, None, [(1.0, 0.0)], [[0.0]], 1.0)
    with pytest.raises(ValueError, match="at most 3"):
        QuadratureSystem(None, None, None, [(0.0, 1.0)] * 4, [[0.0]], 1.0)
