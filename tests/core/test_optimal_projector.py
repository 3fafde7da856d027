"""Laws of hessid.optimal_projector: the variance-minimising force projector
(docs/variance_reduction.md, part 2).

Ground truths are independent of the solver under test:
* feasibility by definition (Q Sᵀ = I to 1e-12, columns bit-equal within rigid groups, zeros off
  the mask);
* optimality by the Pythagorean law of an equality-constrained quadratic minimum: for every
  feasible direction Δ (Δ Sᵀ = 0, constant on groups, zero off the mask),
  J(Q* + Δ) = J(Q*) + J(Δ) ≥ J(Q*) (ridge 0);
* the Gaussian toy (hessid.toy.GaussianSystem) with its exact moments: the CG Hessian identity
  and the mean force hold for P = Q* ⊗ I; without constraints the optimum on the exact
  conditional covariance is the K-metric projector, whose Term 2 vanishes (docs/identities.md §2);
* a two-atom system whose optimum is known in closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid.identities import weighted_mean
from hessid.maps import LinearMap, check_projector, constraint_aware_projector
from hessid.optimal_projector import (
    force_second_moment,
    optimal_projector,
    projected_force_second_moment,
    residue_neighbour_mask,
    rigid_group_labels,
)
from hessid.toy import GaussianSystem
from tests.helpers import assert_close, relative_error
from tests.strategies import seeds

F64 = torch.float64
FAST = settings(max_examples=12, deadline=None)
DETECT = 1e-4


# ====================================================================== a small "protein"
def _protein(seed: int, n_res: int, kind: str):
    """n_res residues of 2–5 atoms in sequence; bead = residue. ``kind``: "selection" (first
    atom of each residue, like Cα) or "com". Rigid groups: (first atom, one other atom) in
    about half of the residues and an (other, other) pair elsewhere — all within a residue.
    Forces: T = 300 frames of correlated Gaussian forces, (T, N, 3)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=n_res)
    atom_res = np.repeat(np.arange(n_res), sizes)
    N = int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    S = np.zeros((n_res, N))
    for I, (a, s) in enumerate(zip(starts, sizes, strict=True)):
        if kind == "selection":
            S[I, a] = 1.0
        else:
            m = rng.uniform(1.0, 16.0, size=s)
            S[I, a : a + s] = m / m.sum()
    groups = []
    for a, s in zip(starts, sizes, strict=True):
        if s >= 2 and rng.uniform() < 0.5:
            groups.append([a, a + 1])
        elif s >= 3:
            groups.append([a + 1, a + 2])
    L = rng.standard_normal((N, N)) / np.sqrt(N) + np.eye(N)
    forces = np.einsum("ij,tjc->tic", L, rng.standard_normal((300, N, 3))) * 5.0
    return S, groups, atom_res, forces


def _feasible_direction(S, labels, allowed_groups, rng) -> np.ndarray:
    """A random Δ (n, N) with Δ Sᵀ = 0, constant on rigid groups, zero off the allowed groups."""
    n, N = S.shape
    g = int(labels.max()) + 1
    Gfull = np.zeros((N, g))
    Gfull[np.arange(N), labels] = 1.0
    out = np.zeros((n, N))
    for I in range(n):
        G = Gfull[:, allowed_groups[I]]
        Z = scipy.linalg.null_space(S @ G)
        out[I] = G @ Z @ rng.standard_normal(Z.shape[1])
    return out


def _allowed_groups(mask, labels):
    g = int(labels.max()) + 1
    return np.stack([mask[:, labels == k].all(axis=1) for k in range(g)], axis=1)


# ====================================================================== feasibility
@given(seed=seeds, n_res=st.integers(2, 6), kind=st.sampled_from(["selection", "com"]),
       neighbours=st.sampled_from([None, 0, 1]))
@FAST
def test_optimal_projector_satisfies_q_st_identity_groups_and_mask(seed, n_res, kind, neighbours):
    S, groups, atom_res, forces = _protein(seed, n_res, kind)
    mask = None if neighbours is None else residue_neighbour_mask(np.arange(n_res), atom_res, neighbours)
    Q = optimal_projector(S, forces, constraint_groups=groups, mask=mask).numpy()
    assert np.abs(Q @ S.T - np.eye(n_res)).max() <= 1e-12
    for grp in groups:
        assert np.array_equal(Q[:, grp], np.repeat(Q[:, grp[:1]], len(grp), axis=1)), grp
    if mask is not None:
        assert np.all(Q[~mask] == 0.0)
    assert check_projector(S, Q, tol=1e-12) <= 1e-12


def test_forces_and_their_second_moment_give_the_same_projector():
    S, groups, _, forces = _protein(3, 4, "com")
    a = optimal_projector(S, forces, constraint_groups=groups)
    b = optimal_projector(S, second_moment=force_second_moment(forces), constraint_groups=groups)
    assert torch.equal(a, b)
    one_component = forces[:, :, :1]
    assert torch.equal(optimal_projector(S, one_component[:, :, 0]), optimal_projector(S, one_component))


def test_groups_as_pairs_or_index_arrays_give_the_same_projector():
    S, groups, _, forces = _protein(4, 5, "selection")
    pairs = np.array([[g[0], g[1]] for g in groups])
    a = optimal_projector(S, forces, constraint_groups=groups)
    b = optimal_projector(S, forces, constrained_pairs=pairs)
    assert torch.equal(a, b)


# ====================================================================== optimality
@given(seed=seeds, n_res=st.integers(2, 5), kind=st.sampled_from(["selection", "com"]),
       neighbours=st.sampled_from([None, 1]))
@FAST
def test_kkt_solution_beats_random_feasible_perturbations_by_exactly_their_own_cost(seed, n_res, kind, neighbours):
    S, groups, atom_res, forces = _protein(seed, n_res, kind)
    N = S.shape[1]
    mask = np.ones((n_res, N), bool) if neighbours is None else residue_neighbour_mask(np.arange(n_res), atom_res, neighbours)
    C = force_second_moment(forces)
    Q = optimal_projector(S, second_moment=C, constraint_groups=groups, mask=mask, ridge=0.0).numpy()
    labels = rigid_group_labels(N, groups)
    rng = np.random.default_rng(seed)
    J0 = projected_force_second_moment(Q, C).sum()
    for scale in (1e-3, 1e-1, 1.0):
        D = scale * _feasible_direction(S, labels, _allowed_groups(mask, labels), rng)
        J = projected_force_second_moment(Q + D, C).sum()
        JD = projected_force_second_moment(D, C).sum()
        assert J >= J0
        assert abs(J - (J0 + JD)) <= 1e-10 * J  # Pythagoras: the cross term 2 Δᵀ C q* vanishes


@given(seed=seeds, n_res=st.integers(2, 6), kind=st.sampled_from(["selection", "com"]))
@FAST
def test_optimal_projector_has_no_larger_second_moment_than_the_standard_projectors(seed, n_res, kind):
    S, groups, _, forces = _protein(seed, n_res, kind)
    C = force_second_moment(forces)
    J_opt = projected_force_second_moment(optimal_projector(S, second_moment=C, ridge=0.0), C).sum()
    lm = LinearMap(S)
    for Q in (lm.projector, lm.with_projector("bead_sum").projector):  # min-norm (= selection), bead sum
        assert J_opt <= projected_force_second_moment(Q, C).sum() * (1 + 1e-12)
    # with rigid groups: no worse than the constraint-aware projector (also feasible)
    pairs = np.array([[g[0], g[1]] for g in groups]).reshape(-1, 2)
    Q_ca = constraint_aware_projector(S, lm.projector, pairs)
    J_grp = projected_force_second_moment(optimal_projector(S, second_moment=C, constrained_pairs=pairs, ridge=0.0), C).sum()
    assert J_opt <= J_grp * (1 + 1e-12)
    assert J_grp <= projected_force_second_moment(Q_ca, C).sum() * (1 + 1e-12)


def test_two_atom_control_variate_removes_all_variance():
    """H = ½ rᵀKr, K = [[a, b], [b, e]], R = x (selection). Given x, f_y-noise is the only
    noise; P = [1, c] has Var(P f) = (b + c e)²/(βe): selection (c = 0) gives b²/(βe), the
    optimum c = −b/e gives 0."""
    a, b, e, beta = 3.0, -1.2, 2.0, 1.677399
    system = GaussianSystem(np.array([[a, b], [b, e]]), np.zeros(2), np.array([[1.0, 0.0]]), beta)
    cov_f = (system.K @ system.conditional_cov() @ system.K).numpy()  # exact Cov_R(f), (2, 2)
    Q = optimal_projector(np.array([[1.0, 0.0]]), second_moment=cov_f, ridge=0.0).numpy()
    np.testing.assert_allclose(Q, [[1.0, -b / e]], rtol=1e-13)
    assert projected_force_second_moment(Q, cov_f).sum() <= 1e-13 * b * b / (beta * e)
    np.testing.assert_allclose(projected_force_second_moment([[1.0, 0.0]], cov_f), [b * b / (beta * e)], rtol=1e-13)


def test_large_ridge_shrinks_to_the_minimum_norm_projector():
    S, _, _, forces = _protein(8, 4, "com")
    Q = optimal_projector(S, forces, ridge=1e10)
    assert_close(Q, LinearMap(S).projector, rtol=1e-8, what="ridge → ∞ limit")


# ====================================================================== Gaussian toy identities
def _gaussian(seed: int, n: int, N: int, sd: int, beta: float = 1.677399):
    rng = np.random.default_rng(seed)
    S = np.abs(rng.standard_normal((n, N))) * (rng.uniform(size=(n, N)) < 0.6)
    S[np.arange(n), rng.permutation(N)[:n]] += 1.0  # full row rank
    S /= S.sum(axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((N * sd, N * sd)))
    K = (q * np.exp(rng.uniform(0.0, np.log(30.0), N * sd))) @ q.T
    lm = LinearMap(S, spatial_dim=sd)
    system = GaussianSystem(K, rng.standard_normal(N * sd), lm.matrix(), beta)
    R = torch.as_tensor(rng.standard_normal(n * sd))
    return S, lm, system, R


def _component_summed(cov: torch.Tensor, N: int, sd: int) -> np.ndarray:
    """C_ij = Σ_α cov[iα, jα] for a (N·sd, N·sd) covariance (flat index sd·i + α)."""
    return torch.einsum("iajb->ij", cov.reshape(N, sd, N, sd) * torch.eye(sd, dtype=F64)[None, :, None, :]).numpy()


@pytest.mark.parametrize("sd", [1, 3])
@given(seed=seeds)
@FAST
def test_hessian_identity_and_mean_force_hold_exactly_with_the_optimal_projector(sd, seed):
    n, N = 2, 5
    S, lm, system, R = _gaussian(seed, n, N, sd)
    C = _component_summed(system.K @ system.conditional_cov() @ system.K, N, sd)  # exact Cov_R(f)
    Q = optimal_projector(S, second_moment=C, ridge=0.0)
    P = lm.with_projector(Q).projector_matrix()
    hess = system.term1(P) - system.beta * system.cov_projected_force(P)
    assert_close(hess, system.exact_hessian(), what="P K Pᵀ − β Cov(P f) with P = Q*")
    samples, weights = system.moment_matched_samples(R)
    mean_force = weighted_mean(system.forces(samples) @ P.T, weights)
    assert_close(mean_force, system.exact_mean_force(R), what="⟨P f⟩_R with P = Q*")
    # optimal: smaller conditional variance and hence smaller mean Term 1 than the min-norm P
    P_mn = lm.projector_matrix()
    var_opt, var_mn = (float(torch.trace(system.cov_projected_force(p))) for p in (P, P_mn))
    assert var_opt <= var_mn * (1 + 1e-12)
    assert float(torch.trace(system.term1(P))) <= float(torch.trace(system.term1(P_mn))) * (1 + 1e-12)


@given(seed=seeds)
@FAST
def test_unconstrained_optimum_on_the_exact_covariance_is_the_metric_projector(seed):
    """spatial_dim = 1, no groups or mask: Cov_R(Q* f) = 0, Q* = (M K⁻¹ Mᵀ)⁻¹ M K⁻¹ (docs/identities.md §2)."""
    S, lm, system, _ = _gaussian(seed, 2, 5, 1)
    C = (system.K @ system.conditional_cov() @ system.K).numpy()
    Q = optimal_projector(S, second_moment=C, ridge=0.0)
    assert_close(Q, system.metric_projector(), what="Q* vs metric projector")
    cov = system.cov_projected_force(Q)
    assert float(cov.abs().max()) <= 1e-10 * float(system.cov_projected_force(lm.projector).abs().max())


@given(seed=seeds)
@FAST
def test_projector_fitted_on_sampled_frames_keeps_the_identity(seed):
    """Q* fitted on finite samples of the conditional law (forces path) is still a valid
    projector: the identity holds exactly with the toy's exact moments."""
    S, lm, system, R = _gaussian(seed, 2, 5, 3)
    gen = torch.Generator().manual_seed(seed % 2**31)
    forces = system.forces(system.sample_conditional(R, 200, generator=gen)).reshape(200, 5, 3)
    P = lm.with_projector(optimal_projector(S, forces)).projector_matrix()
    hess = system.term1(P) - system.beta * system.cov_projected_force(P)
    assert_close(hess, system.exact_hessian(), what="identity with a sampled-fit Q*")


# ====================================================================== negative control
@pytest.mark.parametrize("sd", [1, 3])
def test_a_projector_violating_q_st_identity_breaks_the_mean_force_and_is_refused(sd):
    n, N = 2, 5
    S, lm, system, R = _gaussian(21, n, N, sd)
    C = _component_summed(system.K @ system.conditional_cov() @ system.K, N, sd)
    Q = optimal_projector(S, second_moment=C, ridge=0.0)
    bad = Q.clone()
    bad[0] *= 1.01  # (Q Sᵀ)_00 = 1.01
    with pytest.raises(ValueError, match="invalid force projector"):
        check_projector(S, bad)
    P_bad = torch.kron(bad, torch.eye(sd, dtype=F64))
    samples, weights = system.moment_matched_samples(R)
    mean_force = weighted_mean(system.forces(samples) @ P_bad.T, weights)
    assert relative_error(mean_force, system.exact_mean_force(R)) > DETECT
    hess = system.term1(P_bad) - system.beta * system.cov_projected_force(P_bad)
    assert relative_error(hess, system.exact_hessian()) > DETECT


# ====================================================================== helpers and errors
def test_rigid_group_labels_merge_groups_and_pairs_transitively():
    labels = rigid_group_labels(7, constraint_groups=[[0, 2]], constrained_pairs=np.array([[2, 5], [3, 4]]))
    assert labels.tolist() == [0, 1, 0, 2, 2, 0, 3]


def test_residue_neighbour_mask_allows_own_and_adjacent_residues():
    mask = residue_neighbour_mask([0, 1, 2], [0, 0, 1, 2, 2], neighbours=1)
    assert mask.tolist() == [[True, True, True, False, False], [True, True, True, True, True],
                             [False, False, True, True, True]]


def test_invalid_inputs_are_refused():
    S, groups, atom_res, forces = _protein(1, 3, "selection")
    N = S.shape[1]
    with pytest.raises(ValueError, match="exactly one"):
        optimal_projector(S)
    with pytest.raises(ValueError, match="exactly one"):
        optimal_projector(S, forces, second_moment=np.eye(N))
    with pytest.raises(ValueError, match="ridge"):
        optimal_projector(S, forces, ridge=-1.0)
    with pytest.raises(ValueError, match="forces must have shape"):
        optimal_projector(S, forces[:, :-1])
    with pytest.raises(ValueError, match="singular"):
        optimal_projector(S, forces[:1, :, :1], ridge=0.0)  # one frame, one component: rank 1
    assert optimal_projector(S, forces[:1, :, :1]).shape == S.shape  # the default ridge copes
    mask = np.ones((3, N), bool)
    mask[0, 0] = False  # bead 0 may not use its own (selected) atom
    with pytest.raises(ValueError, match="bead 0"):
        optimal_projector(S, forces, mask=mask)
    first = [int(np.flatnonzero(S[I])[0]) for I in range(3)]
    with pytest.raises(ValueError, match="bead 0"):  # a rigid group spanning two selected atoms
        optimal_projector(S, forces, constraint_groups=[[first[0], first[1]]])
    split = np.ones((3, N), bool)
    split[1, first[0] + 1] = False
    with pytest.raises(ValueError, match="part of the rigid group"):
        optimal_projector(S, forces, constraint_groups=[[first[0], first[0] + 1]], mask=split)
    with pytest.raises(ValueError, match="positive semidefinite"):
        optimal_projector(S, second_moment=-np.eye(N))
    with pytest.raises(ValueError, match="outside"):
        rigid_group_labels(3, constraint_groups=[[0, 5]])
