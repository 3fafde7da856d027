"""Laws of hessid.maps: LinearMap projectors (P Mᵀ = I) and NonlinearMap's J, G, div G."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import ive

from hessid.identities import cg_hessian_linear, mean_force_linear
from hessid.maps import LinearMap, NonlinearMap, check_projector, constraint_aware_projector
from hessid.units import beta as beta_of
from tests.helpers import assert_close, relative_error
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


def _general_projector(S: torch.Tensor, seed: int) -> torch.Tensor:
    """P = (M Mᵀ)⁻¹M + C(I − Mᵀ(M Mᵀ)⁻¹M) with a seeded random C: a valid projector
    (docs/identities.md §2)."""
    n, N = S.shape
    C = torch.randn(n, N, dtype=F64, generator=torch.Generator().manual_seed(seed % 2**31))
    Q0 = torch.linalg.solve(S @ S.T, S)
    return Q0 + C @ (torch.eye(N, dtype=F64) - S.T @ Q0)


@FAST
@given(S=full_rank_maps(), seed=seeds)
def test_general_projector_family_passes_the_check(S, seed):
    """P = (M Mᵀ)⁻¹M + C(I − Mᵀ(M Mᵀ)⁻¹M) satisfies P Mᵀ = I for any C (docs/identities.md §2)."""
    S = torch.as_tensor(S)
    Q = _general_projector(S, seed)
    cg = LinearMap(S, spatial_dim=1).with_projector(Q)
    assert check_projector(cg.weights, cg.projector) < 1e-10
    Q0 = torch.linalg.solve(S @ S.T, S)  # C = 0: the min-norm member
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


# ====================================================================== constrained projector
def _components(pairs: np.ndarray, n_atoms: int) -> np.ndarray:
    """Component label of every atom, by scipy (independent of the union-find in hessid.maps)."""
    a = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms))
    return connected_components(a, directed=False)[1]


@st.composite
def constrained_maps(draw):
    """(S, Q, pairs): a selection or centre-of-mass map whose beads hold whole constraint
    components (some components unmapped), a valid unconstrained projector Q (min-norm,
    bead-sum or a random member of the family Q0 + C(I − SᵀQ0), rigid on unmapped groups),
    and the rigid pairs (trees, plus an occasional cycle as in rigid water)."""
    N = draw(st.integers(3, 10))
    rng = np.random.default_rng(draw(seeds))
    pairs = [(i, int(rng.integers(0, i))) for i in range(1, N) if rng.random() < 0.5]
    if len(pairs) >= 2 and rng.random() < 0.3:
        pairs.append((pairs[0][1], pairs[1][0]))  # may close a cycle
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    label = _components(pairs, N)
    comps = [np.flatnonzero(label == c) for c in np.unique(label)]
    n = int(rng.integers(1, len(comps) + 1))
    bead_of = np.concatenate([np.arange(n), rng.integers(-1, n, size=len(comps) - n)])
    rng.shuffle(bead_of)  # bead of each component, -1 = unmapped; every bead has one
    kind = draw(st.sampled_from(["selection", "com"]))
    S = np.zeros((n, N))
    for bead in range(n):
        atoms = np.concatenate([c for c, b in zip(comps, bead_of, strict=True) if b == bead])
        if kind == "selection":
            S[bead, rng.choice(atoms)] = 1.0
        else:
            m = rng.uniform(1.0, 16.0, size=atoms.size)
            S[bead, atoms] = m / m.sum()
    S = torch.as_tensor(S)
    Q0 = torch.linalg.solve(S @ S.T, S)
    proj = draw(st.sampled_from(["min_norm", "bead_sum", "family"]))
    if proj == "bead_sum":
        Q = (S != 0).to(F64)
    elif proj == "family":
        C = torch.as_tensor(rng.standard_normal((n, N)))
        unmapped = ~(S != 0).any(dim=0)
        for c in comps:  # an unmapped group gets equal columns (its lift C[:, c] is rigid)
            ci = torch.as_tensor(c)
            C[:, ci[unmapped[ci]]] = C[:, ci[:1]]
        Q = Q0 + C @ (torch.eye(N, dtype=F64) - S.T @ Q0)
    else:
        Q = Q0
    return S, Q, pairs


@FAST
@given(case=constrained_maps(), seed=seeds)
def test_constraint_aware_projector_keeps_QSt_identity_and_lifts_tangent_to_constraints(
    case, seed
):
    """Q' Sᵀ = I, and every lift Q'ᵀv moves both atoms of each rigid pair by the same vector
    (first-order tangent to |r_i − r_j| = const); applying it again changes nothing."""
    S, Q, pairs = case
    Qc = constraint_aware_projector(S, Q, pairs, n_atoms=S.shape[1])
    assert Qc.dtype == F64 and Qc.shape == S.shape
    assert check_projector(S, Qc) <= 1e-10
    gen = torch.Generator().manual_seed(seed % 2**31)
    v = torch.randn(5, S.shape[0], 3, dtype=F64, generator=gen)
    u = LinearMap(S, projector=Qc).embed(v)  # (5, N, 3)
    for i, j in pairs:
        assert torch.equal(Qc[:, i], Qc[:, j]), f"unequal projector columns of rigid pair ({i}, {j})"
        # the lift itself: equal up to BLAS rounding (output position changes the summation order)
        torch.testing.assert_close(u[:, i], u[:, j], rtol=0, atol=1e-13 * (1 + float(u.abs().max())),
                                   msg=f"lift breaks the constraint ({i}, {j})")
    assert_close(constraint_aware_projector(S, Qc, pairs), Qc, what="idempotent")


@FAST
@given(S=full_rank_maps(), seed=seeds)
def test_constraint_aware_projector_without_pairs_is_the_identity(S, seed):
    S = torch.as_tensor(S)
    Q = _general_projector(S, seed)  # any valid projector, signed weights
    assert torch.equal(constraint_aware_projector(S, Q, np.zeros((0, 2), dtype=np.int64)), Q)
    assert torch.equal(constraint_aware_projector(S, Q, []), Q)


def test_selection_map_with_hydrogens_gets_the_aggregated_projector():
    # atoms: 0 N, 1 H(N), 2 CA, 3 HA, 4 C, 5 O; 6 and 7 an unmapped water-like O–H pair
    cg = LinearMap.selection([0, 2, 4], n_atoms=8)
    pairs = torch.tensor([[1, 0], [2, 3], [6, 7]])
    Qc = constraint_aware_projector(cg.weights, cg.projector, pairs)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0, 0, 0],
                             [0, 0, 0, 0, 1, 0, 0, 0]], dtype=F64)  # fmt: skip
    assert torch.equal(Qc, expected)
    f = torch.randn(8, 3, dtype=F64)
    assert_close(LinearMap(cg.weights, Qc).project_forces(f)[1], f[2] + f[3], what="F_CA + F_HA")


def test_com_map_of_whole_groups_keeps_bead_sum_and_turns_min_norm_into_bead_sum():
    masses = np.array([12.0, 1.0, 1.0, 16.0, 1.0])
    groups, pairs = [[0, 1, 2], [3, 4]], [[0, 1], [0, 2], [3, 4]]
    bead_sum = LinearMap.center_of_mass(groups, masses, 5, projector="bead_sum")
    assert torch.equal(constraint_aware_projector(bead_sum.weights, bead_sum.projector, pairs),
                       bead_sum.projector)  # fmt: skip
    min_norm = LinearMap.center_of_mass(groups, masses, 5, projector="min_norm")
    assert not torch.allclose(min_norm.projector, bead_sum.projector)  # mass-proportional columns
    Qc = constraint_aware_projector(min_norm.weights, min_norm.projector, pairs)
    assert_close(Qc, bead_sum.projector, what="aggregated min-norm projector")


def test_constraint_aware_projector_rejects_bad_inputs_and_inconsistent_maps():
    cg = LinearMap.selection([0, 2], n_atoms=4)
    S, Q = cg.weights, cg.projector
    with pytest.raises(ValueError, match=r"pair 1 = \(2, 4\).*outside \[0, 4\)"):
        constraint_aware_projector(S, Q, [[0, 1], [2, 4]])
    with pytest.raises(ValueError, match=r"pair 0 = \(-1, 1\)"):
        constraint_aware_projector(S, Q, [[-1, 1]])
    with pytest.raises(ValueError, match=r"shape \(m, 2\)"):
        constraint_aware_projector(S, Q, [[0, 1, 2]])
    with pytest.raises(ValueError, match="integer"):
        constraint_aware_projector(S, Q, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="differs from weights shape"):
        constraint_aware_projector(S, Q[:, :3], [[0, 1]])
    with pytest.raises(ValueError, match="n_atoms = 5"):
        constraint_aware_projector(S, Q, [[0, 1]], n_atoms=5)
    # a rigid pair split between two beads: no rigid lift moves one bead alone
    with pytest.raises(ValueError, match=r"does not satisfy Q Sᵀ = I .*residual 5\.000e-01"):
        constraint_aware_projector(S, Q, [[0, 2]])
    # an unmapped rigid pair whose projector columns differ: its lift would stretch the bond
    Qbad = Q.clone()
    Qbad[0, 1] = 0.3
    with pytest.raises(ValueError, match=r"atoms \[1, 3\] has no mapped atom"):
        constraint_aware_projector(S, Qbad, [[1, 3]])


# ------------------------------------------------ exact mean force of a rigid X–H toy (2-D)
# Atom a (the CG site, R = r_a) carries a hydrogen h rigidly at distance d: r_h = R + d(cos θ,
# sin θ). U = ½k_a|r_a − c_a|² + ½k|r_h − c|². The constrained measure of h given a is d dθ
# (uniform in θ; the mass-metric factor of a single rigid bond is constant), so
#   A(R) = ½k_a|R − c_a|² + ½k(|R − c|² + d²) − kT ln(2π I0(x)),  x = βkdρ,  ρ = |R − c|,
#   −∇A = −k_a(R − c_a) − k(R − c) + k d g(x) e,  g = I1/I0,  e = (R − c)/ρ,
#   ∇²A = (k_a + k) I − k d [βkd g'(x) e eᵀ + (g/ρ)(I − e eᵀ)],  g'(x) = 1 − g/x − g².
# The fiber averages ⟨·⟩_R are θ-integrals evaluated with the periodic trapezoid rule on
# n_θ nodes. Its relative error for e^{x cos θ} is 2 I_{n_θ}(x)/I_0(x) to leading order:
# with x = 14.45 here that is 5e-13 at n_θ = 32, 2e-39 at 64 and 1e-292 at 256 (measured:
# force/Hessian errors 1e-12/1.5e-11 at 32 nodes, 2e-16/2e-15 at 64 and 256). At n_θ = 256
# only float64 round-off (≈1e-15 relative) remains; the tolerance 1e-11 leaves a 1000× margin.
_TOY = dict(k_a=3.0, c_a=(0.4, -0.2), k=5.0, c=(1.5, -0.5), d=1.09, R=(0.0, 0.0))
_TOY_TOL = 1e-11
_TOY_NEGATIVE = 0.1  # plain selection must be off by > 10 % (it is 68 % force, 60 % Hessian)


def _rigid_xh_toy(n_theta: int = 256):
    """Fiber samples (θ nodes) of the toy: forces (n_θ, 4), Hessians (n_θ, 4, 4), weights."""
    k_a, k, d = _TOY["k_a"], _TOY["k"], _TOY["d"]
    c_a, c, R = (torch.tensor(_TOY[key], dtype=F64) for key in ("c_a", "c", "R"))
    beta = beta_of(300.0)
    theta = 2 * math.pi * torch.arange(n_theta, dtype=F64) / n_theta
    r_h = R + d * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)  # (n_θ, 2)
    U = 0.5 * k_a * ((R - c_a) ** 2).sum() + 0.5 * k * ((r_h - c) ** 2).sum(-1)  # (n_θ,)
    w = torch.softmax(-beta * U, dim=0)  # normalised Boltzmann weights on the nodes
    f_a = (-k_a * (R - c_a)).expand(n_theta, 2)
    f = torch.cat([f_a, -k * (r_h - c)], dim=-1)  # (n_θ, 4): flat (a_x, a_y, h_x, h_y)
    H = torch.diag(torch.tensor([k_a, k_a, k, k], dtype=F64)).expand(n_theta, 4, 4)
    return f, H, w, beta


def _rigid_xh_exact():
    k_a, k, d = _TOY["k_a"], _TOY["k"], _TOY["d"]
    c_a, c, R = (np.asarray(_TOY[key]) for key in ("c_a", "c", "R"))
    beta = beta_of(300.0)
    rho = np.linalg.norm(R - c)
    e = (R - c) / rho
    x = beta * k * d * rho
    g = ive(1, x) / ive(0, x)  # I1/I0 (scaled Bessel functions: no overflow)
    force = -k_a * (R - c_a) - k * (R - c) + k * d * g * e
    dg = 1.0 - g / x - g**2
    P_par = np.outer(e, e)
    hess = (k_a + k) * np.eye(2)
    hess = hess - k * d * (beta * k * d * dg * P_par + g / rho * (np.eye(2) - P_par))
    return torch.as_tensor(force), torch.as_tensor(hess)


def test_rigid_hydrogen_toy_mean_force_and_hessian_need_the_aggregated_projector():
    """⟨P f⟩ and ⟨P∇²U Pᵀ⟩ − β Cov(P f) with the constraint-aware projector equal the exact
    −∇A and ∇²A (Bessel closed forms); the plain selection projector (⟨F_a⟩) is the negative
    control and misses by 68 % (force) and 60 % (Hessian)."""
    f, H, w, beta = _rigid_xh_toy()
    f2, _, w2, _ = _rigid_xh_toy(512)
    assert_close(mean_force_linear(f, torch.eye(2, 4, dtype=F64), w),
                 mean_force_linear(f2, torch.eye(2, 4, dtype=F64), w2), rtol=1e-14,
                 what="quadrature converged")  # fmt: skip
    exact_force, exact_hess = _rigid_xh_exact()
    sel = LinearMap.selection([0], n_atoms=2, spatial_dim=2)
    Qc = constraint_aware_projector(sel.weights, sel.projector, [[0, 1]])
    assert torch.equal(Qc, torch.tensor([[1.0, 1.0]], dtype=F64))
    good = LinearMap(sel.weights, Qc, spatial_dim=2)
    assert_close(mean_force_linear(f, good, w), exact_force, rtol=_TOY_TOL, what="⟨F_a + F_h⟩")
    assert_close(cg_hessian_linear(H, f, good, beta, w), exact_hess, rtol=_TOY_TOL, what="Hess A")
    err_f = relative_error(mean_force_linear(f, sel, w), exact_force)
    err_h = relative_error(cg_hessian_linear(H, f, sel, beta, w), exact_hess)
    assert err_f > _TOY_NEGATIVE, f"negative control ⟨F_a⟩ not detected: {err_f:.3e}"
    assert err_h > _TOY_NEGATIVE, f"negative control Hessian not detected: {err_h:.3e}"
