"""Laws of hessid.maps: LinearMap projectors (P Mᵀ = I) and NonlinearMap's J, G, div G."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid.maps import LinearMap, NonlinearMap, check_projector
from tests.helpers import assert_close
from tests.strategies import full_rank_maps, seeds

F64 = torch.float64
FAST = settings(max_examples=15, deadline=None)


# ====================================================================== LinearMap
def test_selection_map_uses_the_map_as_projector_and_picks_atoms():
    cg = LinearMap.selection([1, 3], n_atoms=4, spatial_dim=3)
    assert torch.equal(cg.projector, cg.weights)
    r = torch.arange(12, dtype=F64).reshape(4, 3)
    assert torch.equal(cg.map_coordinates(r), r[[1, 3]])
    v = torch.ones(2, 3, dtype=F64)
    u = cg.embed(v)
    assert torch.equal(u[[1, 3]], v) and torch.equal(u[[0, 2]], torch.zeros(2, 3, dtype=F64))


def test_selection_rejects_repeated_or_out_of_range_indices():
    with pytest.raises(ValueError, match="distinct"):
        LinearMap.selection([0, 0], n_atoms=3)
    with pytest.raises(ValueError, match="lie in"):
        LinearMap.selection([0, 3], n_atoms=3)


def test_center_of_mass_maps_to_mass_weighted_average_and_both_projectors_are_valid():
    masses = np.array([12.0, 1.0, 16.0, 14.0, 1.0])
    groups = [[0, 1], [2, 3, 4]]
    r = torch.randn(7, 5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for kind in ("min_norm", "bead_sum"):
        cg = LinearMap.center_of_mass(groups, masses, n_atoms=5, projector=kind)
        com = cg.map_coordinates(r)  # (7, 2, 3)
        expected0 = (r[:, 0] * 12 + r[:, 1] * 1) / 13
        assert_close(com[:, 0], expected0, what="COM of bead 0")
        assert check_projector(cg.weights, cg.projector) < 1e-14
    bead_sum = LinearMap.center_of_mass(groups, masses, 5, projector="bead_sum")
    f = torch.randn(5, 3, dtype=F64)
    assert_close(bead_sum.project_forces(f)[1], f[2] + f[3] + f[4], what="bead-sum force")


def test_bead_sum_projector_of_overlapping_groups_is_rejected_with_its_residual():
    with pytest.raises(ValueError, match=r"max \|Q Sᵀ − I\| = 5\.000e-01"):
        LinearMap.center_of_geometry([[0, 1], [1, 2]], n_atoms=3, projector="bead_sum")


def test_invalid_user_projector_is_rejected_stating_the_residual():
    S = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=F64)
    Q = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)  # (Q Sᵀ)_10 = 0 but _01 = 0.5
    with pytest.raises(ValueError, match=r"residual|max \|Q Sᵀ − I\|") as err:
        LinearMap(S, projector=Q)
    assert "5.000e-01" in str(err.value)
    with pytest.raises(ValueError, match="unknown projector kind"):
        LinearMap(S, projector="nearest")


def test_rank_deficient_weights_are_rejected_with_smallest_singular_value():
    S = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="smallest singular value"):
        LinearMap(S, spatial_dim=1)


@FAST
@given(S=full_rank_maps(), sd=st.integers(1, 3), seed=seeds)
def test_flat_matrices_agree_with_the_atom_by_cartesian_actions(S, sd, seed):
    cg = LinearMap.from_matrix(S, spatial_dim=sd)
    n, N = cg.n_beads, cg.n_atoms
    M, P = cg.matrix(), cg.projector_matrix()
    assert_close(P @ M.T, torch.eye(n * sd, dtype=F64), what="P Mᵀ = I")
    g = torch.Generator().manual_seed(seed % 2**31)
    r = torch.randn(4, N, sd, dtype=F64, generator=g)
    assert_close(cg.map_coordinates(r).reshape(4, -1), r.reshape(4, -1) @ M.T, what="R = M r")
    assert_close(cg.project_forces(r).reshape(4, -1), r.reshape(4, -1) @ P.T, what="P f")
    v = torch.randn(4, n, sd, dtype=F64, generator=g)
    assert_close(cg.embed(v).reshape(4, -1), v.reshape(4, -1) @ P, what="Pᵀ v")
    A = torch.randn(4, N * sd, N * sd, dtype=F64, generator=g)
    assert_close(cg.project_hessian(A), P @ A @ P.T, what="P H Pᵀ")


@FAST
@given(S=full_rank_maps(), seed=seeds)
def test_general_projector_family_passes_the_check(S, seed):
    """P = (M Mᵀ)⁻¹M + C(I − Mᵀ(M Mᵀ)⁻¹M) satisfies P Mᵀ = I for any C (spec §2)."""
    S = torch.as_tensor(S)
    n, N = S.shape
    C = torch.randn(n, N, dtype=F64, generator=torch.Generator().manual_seed(seed % 2**31))
    Q0 = torch.linalg.solve(S @ S.T, S)
    Q = Q0 + C @ (torch.eye(N, dtype=F64) - S.T @ Q0)
    cg = LinearMap(S, spatial_dim=1).with_projector(Q)
    assert check_projector(cg.weights, cg.projector) < 1e-10
    assert_close(cg.with_projector("min_norm").projector, Q0, what="min-norm projector")


def test_wrong_trailing_shapes_are_rejected():
    cg = LinearMap.selection([0, 2], n_atoms=3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        cg.map_coordinates(torch.zeros(9, dtype=F64))
    with pytest.raises(ValueError, match="hessian"):
        cg.project_hessian(torch.zeros(6, 6, dtype=F64))


# ====================================================================== NonlinearMap
def _polar(r):
    return torch.stack([torch.sqrt(r[:, 0] ** 2 + r[:, 1] ** 2), torch.atan2(r[:, 1], r[:, 0])], dim=-1)


def _radius(r):
    return torch.linalg.vector_norm(r, dim=-1, keepdim=True)


def test_polar_jacobian_and_projector_match_closed_form():
    r = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=F64)
    cg = NonlinearMap(_polar)
    J = cg.jacobian(r)
    rho2 = (r**2).sum(-1)
    rho = rho2.sqrt()
    J_exact = torch.stack(
        [torch.stack([r[:, 0] / rho, r[:, 1] / rho], -1), torch.stack([-r[:, 1] / rho2, r[:, 0] / rho2], -1)],
        dim=1,
    )
    assert_close(J, J_exact, what="polar Jacobian")
    G = cg.projector(r)
    assert_close(G, torch.linalg.inv(J_exact).transpose(-1, -2), what="G = J⁻ᵀ for a bijective map")
    # div of the rows of J⁻ᵀ: row ρ is (x, y)/ρ → div = 1/ρ; row θ is (−y, x) → div = 0
    assert_close(cg.divergence(r), torch.stack([1 / rho, torch.zeros_like(rho)], -1), what="div G")


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_radius_divergence_is_d_minus_one_over_rho(dim):
    r = torch.randn(6, dim, dtype=F64, generator=torch.Generator().manual_seed(dim))
    G, div = NonlinearMap(_radius).projector_and_divergence(r)
    rho = r.norm(dim=-1)
    assert_close(G[:, 0], r / rho[:, None], what="G = r̂")
    assert_close(div[:, 0], (dim - 1) / rho, what="div G = (D−1)/ρ")


def test_shear_divergence_vanishes_and_G_J_transpose_is_identity():
    a = 0.7

    def shear(r):
        return torch.stack([r[:, 0] + a * r[:, 1] ** 2, r[:, 1]], -1)

    r = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    cg = NonlinearMap(shear)
    G, div = cg.projector_and_divergence(r)
    assert_close(G @ cg.jacobian(r).transpose(-1, -2), torch.eye(2, dtype=F64).expand(5, 2, 2), what="G Jᵀ")
    assert float(div.abs().max()) < 1e-14


def test_inverse_mass_metric_gives_another_valid_projector():
    def cyl(r):  # (ρ, z) of a 3-D point
        return torch.stack([torch.sqrt(r[:, 0] ** 2 + r[:, 1] ** 2), r[:, 2]], -1)

    r = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    masses = [1.0, 4.0, 9.0]
    G_id = NonlinearMap(cyl).projector(r)
    cg = NonlinearMap(cyl, metric="inverse_mass", masses=masses)
    G_m = cg.projector(r)
    J = cg.jacobian(r)
    assert_close(G_m @ J.transpose(-1, -2), torch.eye(2, dtype=F64).expand(4, 2, 2), what="G Jᵀ (mass metric)")
    assert float((G_m - G_id).abs().max()) > 1e-2  # a genuinely different member of the family
    with pytest.raises(ValueError, match="requires masses"):
        NonlinearMap(cyl, metric="inverse_mass")


def test_linear_function_as_nonlinear_map_gives_min_norm_projector_and_zero_divergence():
    S = torch.tensor([[0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=F64)
    cg = NonlinearMap(lambda r: r @ S.T)
    r = torch.randn(3, 4, dtype=F64)
    G, div = cg.projector_and_divergence(r)
    assert_close(G, LinearMap(S, spatial_dim=1).projector.expand(3, 2, 4), what="G = (S Sᵀ)⁻¹ S")
    assert float(div.abs().max()) == 0.0


def test_rank_deficient_jacobian_names_the_frame_and_smallest_singular_value():
    def fold(r):  # J = [[2x, 0], [0, 1]] is singular where x = 0
        return torch.stack([r[:, 0] ** 2, r[:, 1]], -1)

    r = torch.tensor([[1.0, 0.2], [0.5, 1.0], [0.0, 0.3]], dtype=F64)
    with pytest.raises(ValueError, match=r"rank-deficient at frame 2: smallest singular value 0\.000e\+00"):
        NonlinearMap(fold).projector(r)


def test_create_graph_lets_G_be_differentiated_again():
    """∂G/∂r from the kept graph agrees with a central difference of G (second derivatives of ξ)."""
    cg = NonlinearMap(_polar)
    r = torch.tensor([[0.8, -0.6]], dtype=F64, requires_grad=True)
    G = cg.projector(r, create_graph=True)
    (dG00,) = torch.autograd.grad(G[0, 0, 0], r)
    eps = 1e-5
    fd = []
    for i in range(2):
        e = torch.zeros(1, 2, dtype=F64)
        e[0, i] = eps
        fd.append((cg.projector(r.detach() + e)[0, 0, 0] - cg.projector(r.detach() - e)[0, 0, 0]) / (2 * eps))
    assert_close(dG00[0], torch.stack(fd), rtol=1e-8, what="∂G/∂r vs central difference (O(ε²)≈1e-10)")


def test_batched_divergence_matches_a_per_frame_loop():
    def curvy(r):
        x, y, z = r[:, 0], r[:, 1], r[:, 2]
        return torch.stack([x + 0.3 * y**2 + 0.2 * torch.sin(z), y * torch.exp(0.1 * z)], -1)

    r = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    cg = NonlinearMap(curvy)
    G, div = cg.projector_and_divergence(r)
    for b in range(5):
        Gb, divb = cg.projector_and_divergence(r[b : b + 1])
        assert_close(Gb[0], G[b], what="G per frame")
        assert_close(divb[0], div[b], what="div G per frame")


def test_local_mean_force_of_radius_in_3d_has_the_entropic_two_kT_over_r():
    r = torch.tensor([[0.0, 0.0, 2.0]], dtype=F64)
    beta = 1.6773985
    L = NonlinearMap(_radius).local_mean_force(r, torch.zeros_like(r), beta)
    assert math.isclose(float(L), 2.0 / (beta * 2.0), rel_tol=1e-14)
