"""Coarse-graining maps and their force projectors (docs/identities.md §2, §3).

:class:`LinearMap` is a linear map ``R = M r`` with bead weights ``S`` (n_beads × n_atoms)
acting per Cartesian component, ``M = S ⊗ I_sd``, together with a force projector
``P = Q ⊗ I_sd`` that satisfies ``P Mᵀ = I`` (equivalently ``Q Sᵀ = I_n``). The projector
is checked at construction.

:class:`NonlinearMap` wraps any differentiable torch function ``ξ: (B, D) → (B, d)`` and
provides, by autograd, its Jacobian ``J``, the projector field ``G = (J W Jᵀ)⁻¹ J W`` and the
row divergence ``(div G)_a = Σ_i ∂G_ai/∂r_i`` that the nonlinear mean force needs.

Units: coordinates in Å, forces in kcal/mol/Å, Hessians in kcal/mol/Å². Weights, projectors
and ``G`` are dimensionless for maps whose output is a position (Å); for other collective
variables ``G`` carries the inverse unit of ``J``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "LinearMap",
    "NonlinearMap",
    "check_projector",
    "constraint_aware_projector",
    "grad_rows",
    "PROJECTOR_KINDS",
]

#: projector kinds understood by :meth:`LinearMap.with_projector` and the constructors
PROJECTOR_KINDS = ("min_norm", "bead_sum")

#: default tolerance on ``max |Q Sᵀ − I|`` (dimensionless)
PROJECTOR_TOL = 1e-10

#: default relative tolerance on singular values (smallest/largest) for full row rank
RANK_RTOL = 1e-10


def _as_float64_matrix(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(dtype=torch.float64, device="cpu")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_beads, n_atoms) matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite entries")
    return t


def check_projector(weights, projector, tol: float = PROJECTOR_TOL) -> float:
    """Check that a force projector is valid for a linear map: ``Q Sᵀ = I_n``
    (docs/identities.md, eq. (2.4)).

    With ``M = S ⊗ I_sd`` and ``P = Q ⊗ I_sd`` this is ``P Mᵀ = I_d``.

    Args:
        weights: bead weights S, (n, N), dimensionless.
        projector: force projector Q, (n, N), dimensionless.
        tol: largest accepted ``max |Q Sᵀ − I|``.

    Returns:
        The residual ``max |Q Sᵀ − I|`` (float).

    Raises:
        ValueError: the shapes differ, or the residual exceeds ``tol`` (the message states it).
    """
    S = _as_float64_matrix(weights, "weights")
    Q = _as_float64_matrix(projector, "projector")
    if S.shape != Q.shape:
        raise ValueError(
            f"projector shape {tuple(Q.shape)} differs from weights shape {tuple(S.shape)}"
        )
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    residual = float((Q @ S.T - eye).abs().max())
    if not residual <= tol:
        raise ValueError(
            f"invalid force projector: max |Q Sᵀ − I| = {residual:.3e} exceeds tolerance "
            f"{tol:.1e} (a projector must satisfy P Mᵀ = I, docs/identities.md §2)"
        )
    return residual


def _constraint_groups(pairs: np.ndarray, n_atoms: int) -> np.ndarray:
    """Connected-component label (smallest atom index of the component) of every atom, (N,)."""
    parent = np.arange(n_atoms)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n_atoms)], dtype=np.int64)


def _as_pairs(constrained_pairs, n_atoms: int) -> np.ndarray:
    raw = constrained_pairs
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    pairs = np.asarray(raw)
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"constrained_pairs must have shape (m, 2), got {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(
            f"constrained_pairs must hold integer atom indices, got dtype {pairs.dtype}"
        )
    bad = np.flatnonzero(((pairs < 0) | (pairs >= n_atoms)).any(axis=1))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"constrained pair {k} = ({int(pairs[k, 0])}, {int(pairs[k, 1])}) has an atom index "
            f"outside [0, {n_atoms})"
        )
    return pairs.astype(np.int64)


def constraint_aware_projector(
    weights, projector, constrained_pairs, n_atoms: int | None = None
) -> torch.Tensor:
    """Force projector of a linear map for an AA system with holonomic (rigid-bond) constraints.

    With rigid bonds (e.g. OpenMM ``constraints=HBonds``) the AA configurations lie on the
    constraint manifold, and a projector is valid only if its lift ``Pᵀv = Qᵀv`` is tangent to
    that manifold: every atom of a connected component of the constraint graph must move by
    the same vector (a rigid translation of the component). For a hydrogen h rigidly bonded
    to a CG site a, ``A(R) = −kT ln ∫ e^{−βU(R, R + d·u, y)} d²u dy``, so the mean force is
    ``⟨F_a + F_h⟩`` (not ``⟨F_a⟩``) and the CG Hessian is ``⟨Lᵀ∇²U L⟩ − β Cov(Lᵀ F)`` with the
    lift L moving h together with a.

    Construction: groups g are the connected components of the graph with edges
    ``constrained_pairs`` (atoms in no pair are singletons). With ``w_i = Σ_J S_Ji`` (total
    map weight of atom i) and ``W_g = Σ_{i∈g} w_i``, every atom of a group with mapped atoms
    gets the column ``c_g = Σ_{i∈g} w_i Q[:, i] / W_g``. When each group lies within one bead
    (selection maps, centre-of-mass maps of whole residues) this keeps ``Q Sᵀ = I``; for a
    selection map it puts ``Q'[bead of a, h] = 1`` on every atom h constrained to a; for a
    bead-sum projector of such a map it changes nothing. A group with no mapped atom keeps
    its columns if they are already equal (its lift is rigid, e.g. all zero); singletons are
    always kept.

    Source: docs/identities.md, eq. (2.6): the projector condition Q Sᵀ = I (2.1), extended to
    holonomic constraints: the lift Pᵀv must be tangent to the constraint manifold (mean force
    ⟨F_a + F_h⟩ for a hydrogen h rigidly bonded to a CG site a; Krämer et al., JCTC 2023, force
    aggregation).

    Args:
        weights: bead weights S, (n, N), dimensionless.
        projector: a valid force projector Q for S (unconstrained), (n, N), dimensionless.
        constrained_pairs: (m, 2) integer atom indices of the rigid pairs (m may be 0).
        n_atoms: N, checked against the matrices when given.

    Returns:
        Q', (n, N) float64 tensor, dimensionless, with ``Q' Sᵀ = I`` and equal columns within
        every constraint group.

    Raises:
        ValueError: S and Q are not 2-D matrices of the same shape; ``n_atoms`` differs from
            N; ``constrained_pairs`` is not an (m, 2) integer array or a pair has an index
            outside [0, N) (the pair is named); a group without mapped atoms has unequal
            projector columns, or a group with mapped atoms has total weight ``W_g ≤ 0``
            (inconsistent map); the result fails ``Q' Sᵀ = I`` (e.g. a constraint group split
            between beads; pass an explicit projector).
    """
    S = _as_float64_matrix(weights, "weights")
    Q = _as_float64_matrix(projector, "projector")
    if S.shape != Q.shape:
        raise ValueError(
            f"projector shape {tuple(Q.shape)} differs from weights shape {tuple(S.shape)}"
        )
    N = S.shape[1]
    if n_atoms is not None and int(n_atoms) != N:
        raise ValueError(f"n_atoms = {n_atoms} but the weights have {N} atom columns")
    pairs = _as_pairs(constrained_pairs, N)
    label = _constraint_groups(pairs, N)  # (N,)
    w = S.sum(dim=0)  # (N,) total map weight of each atom
    mapped = (S != 0).any(dim=0)  # (N,)
    out = Q.clone()
    roots, counts = np.unique(label, return_counts=True)
    for root in roots[counts > 1]:
        idx = torch.as_tensor(np.flatnonzero(label == root), dtype=torch.long)
        cols = Q[:, idx]  # (n, |g|)
        if not bool(mapped[idx].any()):
            if not bool((cols == cols[:, :1]).all()):
                raise ValueError(
                    f"constraint group of atoms {idx.tolist()} has no mapped atom but unequal "
                    f"projector columns (its lift would break the constraints): inconsistent map; "
                    f"pass an explicit projector"
                )
            continue
        W = float(w[idx].sum())
        if not W > 0:
            raise ValueError(
                f"constraint group of atoms {idx.tolist()} has mapped atoms but total map weight "
                f"W_g = {W:.3e} <= 0: cannot aggregate its projector columns; pass an explicit "
                f"projector"
            )
        c = cols @ w[idx] / W  # (n,)
        out[:, idx] = c[:, None]
    residual = check_projector(S, out, tol=math.inf)  # the residual, judged below
    if not residual <= PROJECTOR_TOL:
        raise ValueError(
            f"the constraint-aware projector does not satisfy Q Sᵀ = I for this map (residual "
            f"{residual:.3e}; a constraint group is probably split between beads); pass an "
            f"explicit projector"
        )
    return out


def _check_full_row_rank(S: torch.Tensor, name: str = "weights") -> None:
    n, N = S.shape
    if n > N:
        raise ValueError(f"{name} has more beads ({n}) than atoms ({N}); the map cannot be onto")
    s = torch.linalg.svdvals(S)
    if not (s[-1] > RANK_RTOL * s[0]):
        raise ValueError(
            f"{name} is not of full row rank: smallest singular value {float(s[-1]):.3e} "
            f"(largest {float(s[0]):.3e}); no projector with Q Sᵀ = I exists"
        )


def _resolve_projector(S: torch.Tensor, projector) -> torch.Tensor:
    if projector is None or (isinstance(projector, str) and projector == "min_norm"):
        return torch.linalg.solve(S @ S.T, S)  # (n, N)  (S Sᵀ)⁻¹ S
    if isinstance(projector, str):
        if projector == "bead_sum":
            return (S != 0).to(torch.float64)  # (n, N)  1 for every atom of the bead
        raise ValueError(f"unknown projector kind {projector!r}; expected one of {PROJECTOR_KINDS}")
    return _as_float64_matrix(projector, "projector")


class LinearMap:
    """Linear CG map ``R = M r`` with ``M = S ⊗ I_sd`` and force projector ``P = Q ⊗ I_sd``.

    docs/identities.md, eq. (2.4) (atom × Cartesian form). Each bead position is
    ``R_I = Σ_i S_Ii r_i``; the projected force is ``(P f)_I = Σ_i Q_Ii f_i``. Any Q with
    ``Q Sᵀ = I`` gives the same mean force and CG Hessian; the Term-1 / Term-2 split depends on Q.

    Args:
        weights: S, (n_beads, n_atoms), dimensionless, full row rank.
        projector: None or ``"min_norm"`` (``(S Sᵀ)⁻¹ S``), ``"bead_sum"`` (1 on every atom of
            a bead: valid for non-overlapping centre-of-mass/geometry groups), or a matrix Q
            (n_beads, n_atoms).
        spatial_dim: number of Cartesian components per atom (3; 1 for plain toy matrices).

    Raises:
        ValueError: S is not a full-row-rank 2-D matrix, the projector kind is unknown, or
            ``max |Q Sᵀ − I|`` exceeds 1e-10 (the message states the residual).
    """

    def __init__(self, weights, projector=None, spatial_dim: int = 3):
        if int(spatial_dim) != spatial_dim or spatial_dim < 1:
            raise ValueError(f"spatial_dim must be a positive integer, got {spatial_dim!r}")
        S = _as_float64_matrix(weights, "weights")
        _check_full_row_rank(S)
        Q = _resolve_projector(S, projector)
        check_projector(S, Q)
        self._S = S.contiguous()
        self._Q = Q.contiguous()
        self.spatial_dim = int(spatial_dim)

    # ------------------------------------------------------------------ properties
    @property
    def weights(self) -> torch.Tensor:
        """S, (n_beads, n_atoms), float64."""
        return self._S

    @property
    def projector(self) -> torch.Tensor:
        """Q, (n_beads, n_atoms), float64, with ``Q Sᵀ = I``."""
        return self._Q

    @property
    def n_beads(self) -> int:
        """n, the number of CG beads."""
        return self._S.shape[0]

    @property
    def n_atoms(self) -> int:
        """N, the number of AA atoms."""
        return self._S.shape[1]

    def __repr__(self) -> str:
        return (
            f"LinearMap(n_beads={self.n_beads}, n_atoms={self.n_atoms}, "
            f"spatial_dim={self.spatial_dim})"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def selection(cls, indices: Sequence[int], n_atoms: int, spatial_dim: int = 3) -> LinearMap:
        """Selection map (e.g. Cα atoms): bead I is atom ``indices[I]``; ``P = M``
        (docs/identities.md, eq. (2.1)).

        Raises:
            ValueError: an index is out of range or repeated.
        """
        idx = [int(i) for i in indices]
        if any(i < 0 or i >= n_atoms for i in idx):
            raise ValueError(f"selection indices must lie in [0, {n_atoms}), got {idx}")
        if len(set(idx)) != len(idx):
            raise ValueError(f"selection indices must be distinct, got {idx}")
        S = torch.zeros(len(idx), n_atoms, dtype=torch.float64)
        S[torch.arange(len(idx)), torch.tensor(idx, dtype=torch.long)] = 1.0
        return cls(S, projector=S.clone(), spatial_dim=spatial_dim)

    @classmethod
    def center_of_mass(
        cls,
        groups: Sequence[Sequence[int]],
        masses,
        n_atoms: int,
        projector="min_norm",
        spatial_dim: int = 3,
    ) -> LinearMap:
        """Centre-of-mass map: ``S_Ii = m_i / Σ_{j∈I} m_j`` for atoms i of group I.

        Args:
            groups: atom indices of each bead.
            masses: atomic masses, (n_atoms,), g/mol (only ratios matter).
            n_atoms: N.
            projector: ``"min_norm"``, ``"bead_sum"`` (non-overlapping groups) or a matrix.
            spatial_dim: Cartesian components per atom.

        Raises:
            ValueError: empty group, index out of range, non-positive mass, invalid projector.
        """
        m = torch.as_tensor(np.asarray(masses, dtype=np.float64))
        if m.shape != (n_atoms,):
            raise ValueError(f"masses must have shape ({n_atoms},), got {tuple(m.shape)}")
        if not (m > 0).all():
            raise ValueError("masses must be positive")
        S = torch.zeros(len(groups), n_atoms, dtype=torch.float64)
        for I, group in enumerate(groups):
            g = [int(i) for i in group]
            if not g:
                raise ValueError(f"group {I} is empty")
            if any(i < 0 or i >= n_atoms for i in g):
                raise ValueError(f"group {I} has indices outside [0, {n_atoms}): {g}")
            gi = torch.tensor(g, dtype=torch.long)
            S[I, gi] = m[gi] / m[gi].sum()
        return cls(S, projector=projector, spatial_dim=spatial_dim)

    @classmethod
    def center_of_geometry(
        cls,
        groups: Sequence[Sequence[int]],
        n_atoms: int,
        projector="min_norm",
        spatial_dim: int = 3,
    ) -> LinearMap:
        """Centre-of-geometry map (equal masses); see :meth:`center_of_mass`."""
        return cls.center_of_mass(
            groups, np.ones(n_atoms), n_atoms, projector=projector, spatial_dim=spatial_dim
        )

    @classmethod
    def from_matrix(cls, S, projector=None, spatial_dim: int = 3) -> LinearMap:
        """Arbitrary bead-weight matrix S (n, N) with an optional projector (kind or matrix)."""
        return cls(S, projector=projector, spatial_dim=spatial_dim)

    def with_projector(self, kind_or_matrix) -> LinearMap:
        """The same map with another force projector (``"min_norm"``, ``"bead_sum"`` or Q)."""
        return LinearMap(self._S, projector=kind_or_matrix, spatial_dim=self.spatial_dim)

    # ------------------------------------------------------------------ flat matrices
    def matrix(self) -> torch.Tensor:
        """M = S ⊗ I_sd, (n·sd, N·sd), float64 (flat index ``sd·i + α``)."""
        return torch.kron(self._S, torch.eye(self.spatial_dim, dtype=torch.float64))

    def projector_matrix(self) -> torch.Tensor:
        """P = Q ⊗ I_sd, (n·sd, N·sd), float64, with ``P Mᵀ = I``."""
        return torch.kron(self._Q, torch.eye(self.spatial_dim, dtype=torch.float64))

    # ------------------------------------------------------------------ actions
    def _check_atoms(self, x: torch.Tensor, n: int, what: str) -> None:
        if x.ndim < 2 or x.shape[-2:] != (n, self.spatial_dim):
            raise ValueError(
                f"{what} must have shape (..., {n}, {self.spatial_dim}), got {tuple(x.shape)}"
            )

    def map_coordinates(self, r: torch.Tensor) -> torch.Tensor:
        """Bead coordinates ``R = S r``: (..., N, sd) Å → (..., n, sd) Å.

        Raises:
            ValueError: trailing shape is not (N, sd).
        """
        self._check_atoms(r, self.n_atoms, "r")
        S = self._S.to(dtype=r.dtype, device=r.device)
        return torch.einsum("nN,...Nk->...nk", S, r)  # (..., n, sd)

    def project_forces(self, f: torch.Tensor) -> torch.Tensor:
        """Projected forces ``P f = Q f``: (..., N, sd) kcal/mol/Å → (..., n, sd) kcal/mol/Å.

        Raises:
            ValueError: trailing shape is not (N, sd).
        """
        self._check_atoms(f, self.n_atoms, "f")
        Q = self._Q.to(dtype=f.dtype, device=f.device)
        return torch.einsum("nN,...Nk->...nk", Q, f)  # (..., n, sd)

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """AA displacement ``Pᵀ v = Qᵀ v`` of a CG vector (Term-1 probe embedding,
        docs/identities.md, eq. (5.3)).

        (..., n, sd) → (..., N, sd); units of v (Å for a displacement).

        Raises:
            ValueError: trailing shape is not (n, sd).
        """
        self._check_atoms(v, self.n_beads, "v")
        Q = self._Q.to(dtype=v.dtype, device=v.device)
        return torch.einsum("nN,...nk->...Nk", Q, v)  # (..., N, sd)

    def project_hessian(self, hessian: torch.Tensor) -> torch.Tensor:
        """Projected AA Hessian ``P ∇²H Pᵀ`` (Term 1 integrand, docs/identities.md, eq. (2.3)).

        Args:
            hessian: (..., N·sd, N·sd), kcal/mol/Å², flat index ``sd·i + α``.

        Returns:
            (..., n·sd, n·sd), kcal/mol/Å².

        Raises:
            ValueError: trailing shape is not (N·sd, N·sd).
        """
        N, n, sd = self.n_atoms, self.n_beads, self.spatial_dim
        if hessian.ndim < 2 or hessian.shape[-2:] != (N * sd, N * sd):
            raise ValueError(
                f"hessian must have shape (..., {N * sd}, {N * sd}), got {tuple(hessian.shape)}"
            )
        Q = self._Q.to(dtype=hessian.dtype, device=hessian.device)
        batch = hessian.shape[:-2]
        h = hessian.reshape(*batch, N, sd, N, sd)  # (..., N, sd, N, sd)
        out = torch.einsum("Ii,...iajb,Jj->...IaJb", Q, h, Q)  # (..., n, sd, n, sd)
        return out.reshape(*batch, n * sd, n * sd)  # (..., n·sd, n·sd)


# ====================================================================== nonlinear maps
def grad_rows(y: torch.Tensor, r: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-frame Jacobian ``J[b, a, :] = ∂y[b, a] / ∂r[b]`` by one backward pass per column.

    Frames must be independent (``y[b]`` depends on ``r[b]`` only), so the gradient of
    ``Σ_b y[b, a]`` w.r.t. ``r`` is row a of every frame's Jacobian at once. Columns that do not
    depend on ``r`` (or a ``y`` without a graph) give zeros.

    Args:
        y: (B, m) tensor computed from ``r``; units of y.
        r: (B, D) tensor with ``requires_grad``; units of r.
        create_graph: keep the graph of the result (for second derivatives).

    Returns:
        (B, m, D) tensor, dtype and device of ``r``, units of y per unit of r.

    Raises:
        RuntimeError: (from autograd) ``r`` does not require grad while ``y`` has a graph.
    """
    B, m = y.shape
    rows = []
    for a in range(m):
        if y.requires_grad:
            (g,) = torch.autograd.grad(
                y[:, a].sum(), r, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
        else:
            g = None
        rows.append(torch.zeros_like(r) if g is None else g)
    if not rows:
        return r.new_zeros(B, 0, r.shape[-1])
    return torch.stack(rows, dim=1)  # (B, m, D)


def _with_grad(r: torch.Tensor) -> torch.Tensor:
    return r if r.requires_grad else r.detach().requires_grad_(True)


class NonlinearMap:
    """Nonlinear CG map ``R = ξ(r)`` with the projector field G of docs/identities.md §3.

    ``G = (J W Jᵀ)⁻¹ J W`` with ``W = I`` (``metric="identity"``, G = (J⁺)ᵀ) or
    ``W = diag(1/m)`` (``metric="inverse_mass"``, Blue-Moon choice); ``G Jᵀ = I_d``.

    Args:
        fn: differentiable torch function, flat coordinates (B, D) Å → (B, d). Frames must be
            independent (row b of the output depends on row b of the input only).
        metric: ``"identity"`` or ``"inverse_mass"``.
        masses: atomic masses for ``"inverse_mass"``: (D,) per flat coordinate or (N,) per atom
            (repeated over the D/N Cartesian components, flat index ``sd·i + α``), g/mol.
        rank_rtol: J is rank-deficient at a frame when its smallest singular value is at most
            ``rank_rtol`` × its largest.

    Raises:
        ValueError: unknown metric, or masses missing / non-positive for ``"inverse_mass"``.

    Derivatives are taken by autograd. Pass ``r`` with ``requires_grad=True`` and
    ``create_graph=True`` to differentiate the results (J, G, div G, L) w.r.t. ``r`` again.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        metric: str = "identity",
        masses=None,
        rank_rtol: float = RANK_RTOL,
    ):
        if metric not in ("identity", "inverse_mass"):
            raise ValueError(f"metric must be 'identity' or 'inverse_mass', got {metric!r}")
        if metric == "inverse_mass":
            if masses is None:
                raise ValueError("metric='inverse_mass' requires masses")
            masses = torch.as_tensor(np.asarray(masses, dtype=np.float64)).reshape(-1)
            if not (masses > 0).all():
                raise ValueError("masses must be positive")
        self.fn = fn
        self.metric = metric
        self.masses = masses
        self.rank_rtol = float(rank_rtol)

    def __repr__(self) -> str:
        return f"NonlinearMap(fn={getattr(self.fn, '__name__', self.fn)!r}, metric={self.metric!r})"

    def _metric_diagonal(self, r: torch.Tensor) -> torch.Tensor | None:
        """Diagonal of W, (D,), or None for the identity."""
        if self.metric == "identity":
            return None
        D = r.shape[-1]
        m = self.masses.to(dtype=r.dtype, device=r.device)
        if m.numel() == D:
            return 1.0 / m
        if D % m.numel() == 0:
            return 1.0 / m.repeat_interleave(D // m.numel())  # (D,)
        raise ValueError(f"masses of length {m.numel()} do not fit D = {D} coordinates")

    def _check_input(self, r: torch.Tensor) -> None:
        if not isinstance(r, torch.Tensor) or r.ndim != 2:
            raise ValueError(f"r must be a (B, D) tensor of flat coordinates, got {getattr(r, 'shape', r)}")

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """CG coordinates ξ(r): (B, D) → (B, d).

        Raises:
            ValueError: r is not 2-D, or fn does not return (B, d).
        """
        self._check_input(r)
        R = self.fn(r)
        if R.ndim != 2 or R.shape[0] != r.shape[0]:
            raise ValueError(f"map function must return (B, d), got {tuple(R.shape)}")
        return R

    def jacobian(self, r: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Jacobian ``J_ai = ∂ξ_a/∂r_i`` by autograd, (B, D) → (B, d, D).

        Args:
            r: flat coordinates (B, D), Å.
            create_graph: keep the graph so that J can be differentiated w.r.t. r (which must
                then have ``requires_grad=True``).
        """
        self._check_input(r)
        with torch.enable_grad():
            rr = _with_grad(r)
            R = self(rr)
            return grad_rows(R, rr, create_graph)  # (B, d, D)

    def _projector_from_jacobian(self, J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        s = torch.linalg.svdvals(J.detach())  # (B, d)
        bad = ~(s[:, -1] > self.rank_rtol * s[:, 0])
        if bool(bad.any()):
            b = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"Jacobian of the CG map is rank-deficient at frame {b}: smallest singular value "
                f"{float(s[b, -1]):.3e} (singular values {s[b].tolist()}); G = (J W Jᵀ)⁻¹ J W is "
                f"undefined there (docs/identities.md §3 needs rank J = d on the level set)"
            )
        w = self._metric_diagonal(r)
        JW = J if w is None else J * w  # (B, d, D)
        JWJt = JW @ J.transpose(-1, -2)  # (B, d, d)
        return torch.linalg.solve(JWJt, JW)  # (B, d, D)

    def projector(self, r: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Projector field ``G = (J W Jᵀ)⁻¹ J W`` with ``G Jᵀ = I``
        (docs/identities.md, eq. (3.1)), (B, D) → (B, d, D).

        Units: inverse of the unit of J (dimensionless when ξ is a position).

        Raises:
            ValueError: J is rank-deficient at a frame (names the frame and its smallest
                singular value).
        """
        self._check_input(r)
        with torch.enable_grad():
            rr = _with_grad(r)
            J = self.jacobian(rr, create_graph=create_graph)
            return self._projector_from_jacobian(J, rr)

    def projector_and_divergence(
        self, r: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """G (B, d, D) and its row divergence ``(div G)_a = Σ_i ∂G_ai/∂r_i`` (B, d)
        (docs/identities.md, eq. (3.2)).

        Units of div G: unit of G per Å. Cost: d·D backward passes.

        Raises:
            ValueError: J is rank-deficient at a frame.
        """
        self._check_input(r)
        with torch.enable_grad():
            rr = _with_grad(r)
            J = self.jacobian(rr, create_graph=True)
            G = self._projector_from_jacobian(J, rr)  # (B, d, D)
            B, d, D = G.shape
            div = torch.zeros(B, d, dtype=G.dtype, device=G.device)
            if G.requires_grad:
                for i in range(D):
                    dGi = grad_rows(G[:, :, i], rr, create_graph)  # (B, d, D)
                    div = div + dGi[:, :, i]
            if not create_graph:
                G = G.detach()
                div = div.detach()
            return G, div

    def divergence(self, r: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Row divergence of G, ``(div G)_a = Σ_i ∂_i G_ai``, (B, D) → (B, d)
        (docs/identities.md, eq. (3.2)).

        Raises:
            ValueError: J is rank-deficient at a frame.
        """
        return self.projector_and_divergence(r, create_graph=create_graph)[1]

    def local_mean_force(
        self, r: torch.Tensor, forces: torch.Tensor, beta: float, create_graph: bool = False
    ) -> torch.Tensor:
        """Local mean force ``L = G f + β⁻¹ div G`` (docs/identities.md, eq. (3.2)), kcal/mol/Å for
        positional ξ.

        Args:
            r: flat coordinates (B, D), Å.
            forces: AA forces f = −∇H at r, (B, D), kcal/mol/Å.
            beta: 1/(k_B T), mol/kcal.
            create_graph: keep the graph (r must require grad) for a further derivative.

        Returns:
            (B, d).

        Raises:
            ValueError: shapes disagree, beta is not positive, or J is rank-deficient.
        """
        if not beta > 0:
            raise ValueError(f"beta must be positive (mol/kcal), got {beta!r}")
        if forces.shape != r.shape:
            raise ValueError(f"forces shape {tuple(forces.shape)} differs from r shape {tuple(r.shape)}")
        G, div = self.projector_and_divergence(r, create_graph=create_graph)
        return torch.einsum("bai,bi->ba", G, forces) + div / beta  # (B, d)
