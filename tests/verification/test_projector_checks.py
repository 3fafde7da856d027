"""Q* checks of `hessid verify --all`: the identity holds for the fitted Q* on the quadrature
toys and the elastic network (with and without rigid groups), every negative control is
detected, and a failure is classified as wrong or under-resolved."""

import pytest
import torch

import hessid.identities as identities
from hessid.quadrature import BETA_300K, QuadratureSystem, builtin_systems
from hessid.verification.checks import run_builtin_checks
from hessid.verification.projector_checks import (
    check_elastic_optimal,
    check_quadrature_system_optimal,
    constrained_gaussian_identity,
    rigid_group_basis,
    run_projector_checks,
)
from hessid.verification.results import DETECTION_THRESHOLD, relative_error


@pytest.fixture(scope="module")
def results():
    return run_projector_checks()


def test_every_q_star_row_passes_and_covers_every_linear_toy_and_the_elastic_network(results):
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    systems = {r.system for r in results}
    linear = [s.name for s in builtin_systems() if s.projectors]
    assert set(linear) <= systems and len(linear) == 4
    assert any(s.startswith("ENM villin") and s.endswith("Q*") for s in systems)
    quantities = {(r.map, r.quantity) for r in results}
    assert ("P=optimal", "hessian <Q* ddH Q*^T> - beta Cov(Q* f)") in quantities
    assert any("rigid" in m and q.startswith("hessian") for m, q in quantities)


def test_every_negative_control_is_detected_far_above_the_threshold(results):
    negatives = [r for r in results if r.negative_control]
    kinds = ("infeasible Q*", "Q* fitted without rigid groups", "selection projector (groups ignored)",
             "term2 sign flipped", "term1 only")
    for kind in kinds:
        rows = [r for r in negatives if kind in r.quantity]
        assert rows, kind
        # 1 % infeasibility errs by ≥ 1e-3; correct rows are ≤ 3e-12: a gap of > 8 decades
        assert all(r.max_rel_error > 100 * DETECTION_THRESHOLD for r in rows), kind


def test_q_star_does_not_increase_the_projected_force_variance(results):
    rows = [r for r in results if "<=" in r.quantity]
    assert len(rows) == 6 and all(r.max_rel_error <= 1e-6 for r in rows)


def test_verify_all_includes_the_q_star_checks():
    rows = run_builtin_checks(include_elastic=False)
    assert any(r.map == "P=optimal" for r in rows)


def _coarse_toy(n_nodes):
    def potential(r):
        x, y = r[..., 0], r[..., 1]
        return 0.5 * x**2 + 0.1 * x**4 + y**2 + 0.1 * y**4 + 0.3 * x * y + 0.1 * x**2 * y

    return QuadratureSystem(potential, lambda r: r[..., :1], lambda R, s: torch.cat([R, s], dim=-1),
                            [(-7.0, 7.0)], [[-0.7], [1.1]], BETA_300K,
                            projector={"min_norm": [[1.0, 0.0]], "offset": [[1.0, 0.7]]},
                            n_nodes=n_nodes, name=f"coarse {n_nodes}")  # fmt: skip


def test_a_too_coarse_quadrature_is_unresolved_never_fail():
    """8 nodes on (−7, 7): refinement to 4× (32) does not certify it: UNRESOLVED, not FAIL."""
    rows = check_quadrature_system_optimal(_coarse_toy(4))
    hess = next(r for r in rows if r.quantity.startswith("hessian"))
    assert hess.verdict == "UNRESOLVED" and "raise n_nodes" in hess.detail
    assert not any(r.status == "FAIL" for r in rows)


def test_a_coarse_quadrature_passes_after_automatic_refinement():
    rows = check_quadrature_system_optimal(_coarse_toy(24))
    assert all(r.status == "PASS" for r in rows), [r for r in rows if r.status != "PASS"]
    assert any("refined from n_nodes=24" in r.detail for r in rows)


def test_a_broken_identity_is_reported_as_wrong(monkeypatch):
    real = identities.cg_hessian_linear

    def broken(hessians, forces, P, beta, weights=None, return_terms=False):
        return real(hessians, forces, P, 0.99 * beta, weights, return_terms)  # 1 % off in Term 2

    monkeypatch.setattr(identities, "cg_hessian_linear", broken)
    rows = check_quadrature_system_optimal(builtin_systems()[0])
    hess = next(r for r in rows if r.quantity.startswith("hessian"))
    assert hess.verdict == "FAIL" and "wrong" in hess.detail and "given projectors" in hess.detail


def test_constrained_gaussian_is_exact_only_for_group_equal_projectors():
    """Three atoms in 3-D: atoms 0, 1 rigid (one group), atom 2 free; the map selects atom 0."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(9, 9, generator=gen, dtype=torch.float64)
    K = A @ A.T + 2 * torch.eye(9, dtype=torch.float64)
    B = rigid_group_basis([0, 0, 1])  # (9, 6)
    M = torch.kron(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    beta, delta = 1.6, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    eye3 = torch.eye(3, dtype=torch.float64)
    good = torch.kron(torch.tensor([[1.0, 1.0, 0.4]], dtype=torch.float64), eye3)  # equal within group
    bad = torch.kron(torch.tensor([[1.0, 0.0, 0.4]], dtype=torch.float64), eye3)  # P Mᵀ = I, group broken
    g = constrained_gaussian_identity(K, B, M, good, beta, delta)
    assert relative_error(g["hessian"], g["exact_hessian"]) < 1e-12
    assert relative_error(g["mean_force"], g["exact_mean_force"]) < 1e-12
    w = constrained_gaussian_identity(K, B, M, bad, beta, delta)
    assert relative_error(w["hessian"], w["exact_hessian"]) > 1e-2
    # without constraints (B = I) the usual Gaussian identity: any P with P Mᵀ = I is exact
    u = constrained_gaussian_identity(K, None, M, bad, beta, delta)
    assert relative_error(u["hessian"], u["exact_hessian"]) < 1e-12


def test_elastic_q_star_rows_name_their_reference_projector():
    rows = check_elastic_optimal()
    hess = [r for r in rows if r.quantity.startswith("hessian")]
    assert len(hess) == 2 and all(r.passed for r in hess)
    assert "selection projector" in hess[0].detail and "constraint-aware projector" in hess[1].detail
