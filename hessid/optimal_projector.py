"""Variance-minimising force projector (docs/variance_reduction.md, part 2).

For a linear map with bead weights S (n, N), every projector Q with ``Q Sᵀ = I`` gives the same
mean force ``⟨Q f⟩_R`` and the same CG Hessian (docs/identities.md §2); the projected force ``Q f`` of a
single frame, and hence the Term-2 estimator ``β dF dFᵀ`` and Term 1, depend on Q. This module
fits the member of the family with the smallest mean squared projected force,

    Q* = argmin_Q  Σ_I q_Iᵀ C q_I     subject to  Q Sᵀ = I,
                                                  Q_Ii = Q_Ij for i, j in one rigid group,
                                                  Q_Ii = 0 outside an allowed-atom mask,

with ``C_ij = (1/T) Σ_t Σ_α f_tiα f_tjα`` the (N, N) force second moment (summed over
Cartesian components) and ``q_I`` row I of Q. Because ``⟨Q f⟩_R`` is the same for every
feasible Q, ``E‖Q f‖² = E‖F(R)‖² + E tr Cov_R(Q f)`` and minimising the second moment
minimises the frame-averaged conditional variance of the projected force: a Stein control
variate (cf. the optimal force maps of aggforce, Krämer et al., JCTC 2023). The rows decouple
into n small equality-constrained quadratic programs solved exactly (KKT / null-space method,
scipy); see :func:`optimal_projector`.

Units: forces in kcal/mol/Å, C in (kcal/mol/Å)², S and Q dimensionless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import torch

from hessid.maps import PROJECTOR_TOL, check_projector

__all__ = [
    "DEFAULT_RIDGE",
    "force_second_moment",
    "projected_force_second_moment",
    "rigid_group_labels",
    "residue_neighbour_mask",
    "optimal_projector",
]

#: default ridge, relative to the mean diagonal tr(C)/N of the force second moment
DEFAULT_RIDGE = 1e-8

#: a reduced Hessian whose smallest eigenvalue is below this × its largest is singular
_SINGULAR_RTOL = 1e-13


def _as_numpy(x, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite entries")
    return a


def force_second_moment(forces) -> np.ndarray:
    """Force second moment ``C_ij = (1/T) Σ_t Σ_α f_tiα f_tjα`` (summed over components).

    The objective of :func:`optimal_projector` is ``Σ_I q_Iᵀ C q_I = (1/T) Σ_t ‖Q f_t‖²``.

    Args:
        forces: AA forces, (T, N, sd) or (T, N) (sd = 1), kcal/mol/Å.

    Returns:
        (N, N) float64 symmetric positive semidefinite, (kcal/mol/Å)².

    Raises:
        ValueError: not 2-D/3-D, no frames, or non-finite entries.
    """
    f = _as_numpy(forces, "forces")
    if f.ndim == 2:
        f = f[:, :, None]
    if f.ndim != 3 or f.shape[0] < 1:
        raise ValueError(f"forces must have shape (T, N, sd) or (T, N) with T >= 1, got {f.shape}")
    T = f.shape[0]
    C = np.einsum("tia,tja->ij", f, f) / T  # (N, N)
    return 0.5 * (C + C.T)


def projected_force_second_moment(projector, second_moment) -> np.ndarray:
    """Per-bead objective ``q_Iᵀ C q_I`` (= (1/T) Σ_t ‖(Q f_t)_I‖² for C of those frames).

    Args:
        projector: Q, (n, N), dimensionless.
        second_moment: C, (N, N), (kcal/mol/Å)² (e.g. :func:`force_second_moment`, or a
            conditional covariance summed over components).

    Returns:
        (n,) float64, (kcal/mol/Å)²; their sum is the objective.

    Raises:
        ValueError: shapes disagree.
    """
    Q = _as_numpy(projector, "projector", 2)
    C = _as_numpy(second_moment, "second_moment", 2)
    if C.shape != (Q.shape[1], Q.shape[1]):
        raise ValueError(f"second_moment must be ({Q.shape[1]}, {Q.shape[1]}), got {C.shape}")
    return np.einsum("Ii,ij,Ij->I", Q, C, Q)


def rigid_group_labels(n_atoms: int, constraint_groups=None, constrained_pairs=None) -> np.ndarray:
    """Label of the rigid group of every atom (connected components of the constraint graph).

    Atoms in one group (directly or through a chain of groups/pairs) get equal projector
    coefficients; atoms in no group are singletons. Labels are 0..g−1, numbered by the first
    atom of each group.

    Args:
        n_atoms: N.
        constraint_groups: sequence of integer atom-index arrays (each one rigid group), or None.
        constrained_pairs: (m, 2) integer atom indices of rigid pairs (e.g. HBond
            constraints, as for :func:`hessid.maps.constraint_aware_projector`), or None.

    Returns:
        (N,) int64 labels.

    Raises:
        ValueError: an index is not an integer in [0, N), or pairs are not (m, 2).
    """
    edges = []

    def check(idx: np.ndarray, what: str) -> np.ndarray:
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{what} must hold integer atom indices, got dtype {idx.dtype}")
        bad = (idx < 0) | (idx >= n_atoms)
        if np.any(bad):
            raise ValueError(f"{what} has atom index {int(idx[bad][0])} outside [0, {n_atoms})")
        return idx.astype(np.int64)

    for gi, group in enumerate(constraint_groups or ()):
        idx = check(np.asarray(group).reshape(-1), f"constraint group {gi}")
        edges.extend((int(idx[0]), int(j)) for j in idx[1:])
    if constrained_pairs is not None:
        pairs = np.asarray(constrained_pairs.detach().cpu() if isinstance(constrained_pairs, torch.Tensor) else constrained_pairs)
        if pairs.size:
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise ValueError(f"constrained_pairs must have shape (m, 2), got {pairs.shape}")
            pairs = check(pairs, "constrained_pairs")
            edges.extend((int(i), int(j)) for i, j in pairs)
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    graph = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_atoms, n_atoms))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # renumber by first atom so labels are deterministic
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[labels].astype(np.int64)


def residue_neighbour_mask(bead_residues, atom_residues, neighbours: int = 1) -> np.ndarray:
    """Allowed atoms per bead: those of the bead's residue and of ``neighbours`` residues on
    either side in sequence, ``|res(atom) − res(bead)| ≤ neighbours``.

    Args:
        bead_residues: (n,) integer residue index of each bead.
        atom_residues: (N,) integer residue index of each atom (offset the indices of
            different chains so that chains are more than ``neighbours`` apart).
        neighbours: residues on either side (≥ 0).

    Returns:
        (n, N) bool mask.

    Raises:
        ValueError: non-integer indices or negative ``neighbours``.
    """
    b = np.asarray(bead_residues).reshape(-1)
    a = np.asarray(atom_residues).reshape(-1)
    for name, x in (("bead_residues", b), ("atom_residues", a)):
        if x.size and not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must hold integer residue indices, got dtype {x.dtype}")
    if int(neighbours) != neighbours or neighbours < 0:
        raise ValueError(f"neighbours must be a non-negative integer, got {neighbours!r}")
    return np.abs(a[None, :].astype(np.int64) - b[:, None].astype(np.int64)) <= int(neighbours)


def _group_mask(mask: np.ndarray, labels: np.ndarray, g: int) -> np.ndarray:
    """(n, g) allowed groups; a group must be wholly allowed or wholly forbidden per bead."""
    n = mask.shape[0]
    out = np.zeros((n, g), dtype=bool)
    for gid in range(g):
        cols = mask[:, labels == gid]  # (n, |g|)
        allowed, forbidden = cols.all(axis=1), (~cols).all(axis=1)
        split = ~(allowed | forbidden)
        if np.any(split):
            I = int(np.flatnonzero(split)[0])
            raise ValueError(
                f"the mask of bead {I} allows only part of the rigid group of atoms "
                f"{np.flatnonzero(labels == gid).tolist()}; allow or forbid whole groups"
            )
        out[:, gid] = allowed
    return out


def optimal_projector(
    weights,
    forces=None,
    *,
    second_moment=None,
    constraint_groups: Sequence | None = None,
    constrained_pairs=None,
    mask=None,
    ridge: float = DEFAULT_RIDGE,
    tol: float = PROJECTOR_TOL,
) -> torch.Tensor:
    """Force projector of minimum mean squared projected force (docs/variance_reduction.md §2).

    Solves, for every bead I independently (the objective and constraints separate by rows),

        min_q  qᵀ (C + ρ I) q   s.t.  S q = e_I,  q constant on rigid groups,  q = 0 off mask_I,

    with ``ρ = ridge · tr(C)/N``. Writing ``q = G z`` (G: (N, g_I) indicator columns of the
    groups allowed for bead I) turns the group and mask constraints into a change of variables;
    with ``A = S G`` (n, g_I) and ``Ĉ = Gᵀ(C + ρI)G`` the KKT system is

        [2Ĉ  Aᵀ] [z]   [0  ]
        [A   0 ] [λ] = [e_I],

    solved by the null-space method: ``z = z₀ + Z y`` with ``A z₀ = e_I`` (least squares, its
    residual checked) and Z an orthonormal basis of null(A), then ``(Zᵀ Ĉ Z) y = −Zᵀ Ĉ z₀``
    (Cholesky). This is the unique KKT point when ``Zᵀ Ĉ Z`` is positive definite.

    Args:
        weights: bead weights S, (n, N), dimensionless, full row rank.
        forces: AA forces of held-out frames, (T, N, sd) or (T, N), kcal/mol/Å; or None when
            ``second_moment`` is given.
        second_moment: C, (N, N) symmetric PSD, (kcal/mol/Å)², instead of ``forces`` (e.g. an
            exact or conditional-sampling covariance summed over Cartesian components).
        constraint_groups: integer atom-index arrays of rigid groups (equal coefficients).
        constrained_pairs: (m, 2) rigid atom pairs (merged with ``constraint_groups``).
        mask: (n, N) bool, atoms each bead may use (e.g. :func:`residue_neighbour_mask`); None
            allows all. Must allow or forbid whole rigid groups.
        ridge: ρ relative to tr(C)/N (≥ 0). The default 1e-8 only regularises a rank-deficient
            C (fewer frames·components than free coefficients, or exactly dependent forces)
            and moves a well-determined Q* by ~1e-8 relative; larger values (1e-3–1e-1) shrink
            Q* toward the minimum-‖Q‖_F feasible projector when few frames are available.
            ``ridge = 0`` gives the exact minimiser and raises if it is not unique.
        tol: largest accepted ``max |Q Sᵀ − I|`` (:func:`hessid.maps.check_projector`).

    Returns:
        Q*, (n, N) float64 tensor, dimensionless, with ``Q* Sᵀ = I``, columns exactly equal
        within every rigid group, and zeros outside the mask.

    Raises:
        ValueError: neither or both of ``forces``/``second_moment``; shapes disagree; C not
            symmetric PSD or zero; ``ridge < 0``; a mask splits a rigid group; bead I has no
            feasible row (e.g. the mask excludes its atoms, or a rigid group spans two beads
            of a selection map — the message names the bead); the reduced Hessian is singular
            (pass ``ridge > 0``); or the result fails :func:`hessid.maps.check_projector`.
    """
    S = _as_numpy(weights, "weights", 2)
    n, N = S.shape
    if (forces is None) == (second_moment is None):
        raise ValueError("pass exactly one of forces (T, N, sd) and second_moment (N, N)")
    if forces is not None:
        f = _as_numpy(forces, "forces")
        if f.ndim not in (2, 3) or f.shape[1] != N:
            raise ValueError(f"forces must have shape (T, {N}, sd) or (T, {N}), got {f.shape}")
        C = force_second_moment(f)
    else:
        C = _as_numpy(second_moment, "second_moment", 2)
        if C.shape != (N, N):
            raise ValueError(f"second_moment must be ({N}, {N}), got {C.shape}")
        scale = max(float(np.abs(C).max()), 1e-300)
        if float(np.abs(C - C.T).max()) > 1e-12 * scale:
            raise ValueError("second_moment must be symmetric")
        C = 0.5 * (C + C.T)
        lam_min = float(np.linalg.eigvalsh(C)[0])
        if lam_min < -1e-12 * scale * N:
            raise ValueError(f"second_moment must be positive semidefinite (smallest eigenvalue {lam_min:.3e})")
    if not float(ridge) >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    mean_diag = float(np.trace(C)) / N
    if not mean_diag > 0:
        raise ValueError("the force second moment is zero: no forces to fit the projector to")
    rho = float(ridge) * mean_diag

    labels = rigid_group_labels(N, constraint_groups, constrained_pairs)
    g = int(labels.max()) + 1
    Gfull = np.zeros((N, g))
    Gfull[np.arange(N), labels] = 1.0  # (N, g) group indicators
    if mask is None:
        allowed_groups = np.ones((n, g), dtype=bool)
    else:
        m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if m.shape != (n, N) or m.dtype != bool:
            raise ValueError(f"mask must be a bool array of shape ({n}, {N}), got {m.dtype} {m.shape}")
        allowed_groups = _group_mask(m, labels, g)

    Q = np.zeros((n, N))
    Creg = C + rho * np.eye(N)
    for I in range(n):
        G = Gfull[:, allowed_groups[I]]  # (N, g_I)
        A = S @ G  # (n, g_I)
        e = np.zeros(n)
        e[I] = 1.0
        if G.shape[1] == 0:
            raise ValueError(f"bead {I}: the mask allows no atom")
        z0 = scipy.linalg.lstsq(A, e)[0]
        infeasible = float(np.abs(A @ z0 - e).max())
        if infeasible > tol:
            raise ValueError(
                f"bead {I}: no projector row satisfies Q Sᵀ = I with the allowed atoms and rigid "
                f"groups (least-squares residual {infeasible:.3e}); widen the mask or check that "
                f"no rigid group spans atoms that only other beads may carry"
            )
        Z = scipy.linalg.null_space(A)  # (g_I, r) orthonormal
        z = z0
        if Z.shape[1]:
            Chat = G.T @ Creg @ G  # (g_I, g_I)
            Hred = Z.T @ Chat @ Z  # (r, r)
            Hred = 0.5 * (Hred + Hred.T)
            ev = np.linalg.eigvalsh(Hred)
            if not ev[0] > _SINGULAR_RTOL * max(float(ev[-1]), 1e-300):
                raise ValueError(
                    f"bead {I}: the force second moment is singular on the feasible set "
                    f"(reduced eigenvalues {ev[0]:.3e} … {ev[-1]:.3e}); the minimiser is not "
                    f"unique: pass ridge > 0 or more frames"
                )
            y = scipy.linalg.cho_solve(scipy.linalg.cho_factor(Hred), -Z.T @ Chat @ z0)
            z = z0 + Z @ y
        Q[I] = G @ z
    Qt = torch.from_numpy(Q)
    check_projector(torch.from_numpy(S), Qt, tol=tol)
    return Qt
