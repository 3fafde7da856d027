"""The identity for the variance-minimising projector Q* (docs/variance_reduction.md §2).

Every projector Q with ``Q Sᵀ = I`` (and, under rigid constraints, equal coefficients within
every rigid group) gives the exact mean force ``F = ⟨Q f⟩`` and CG Hessian
``𝓗 = ⟨P∇²HPᵀ⟩ − β Cov(P f)`` (docs/identities.md, eqs. (2.2), (2.3), (2.6)). These checks
prove it for the Q* that :func:`hessid.optimal_projector.optimal_projector` fits:

* **quadrature toys** (the linear systems of :func:`hessid.quadrature.builtin_systems`): Q* is
  fitted on the toy's own weighted quadrature samples (force second moment pooled over its CG
  points), then the identity with Q* is compared with the quadrature PMF at every point;
  ``E‖Q*f‖²`` must not exceed that of any of the system's own projectors.
* **elastic network** of the shipped villin structure (Cα map, residue-neighbour mask ±1),
  unconstrained and with rigid groups (every residue's CA–CB and C–O pairs move as one body:
  the linear-response analogue of HBond constraints, ``r = r₀ + B u``). Q* is fitted on the
  exact force second moment of the ensemble; identity vs the closed form ``(M_u K_u⁻¹ M_uᵀ)⁻¹``
  with ``K_u = BᵀKB``, ``M_u = MB``; ``tr Cov(Q*f)`` must not exceed the reference
  projector's.

Negative controls (must be detected, error > :data:`DETECTION_THRESHOLD`): an infeasible Q*
(row 0 scaled by 1.01, so ``(Q Sᵀ)₀₀ = 1.01``); under rigid groups, a Q* fitted *without*
them (``Q Sᵀ = I`` holds but its lift breaks the groups) and the plain selection projector.

**FAIL or UNRESOLVED.** The Q* rows of a quadrature toy are self-certified by the mechanism
every quadrature row uses (:func:`hessid.verification.results.refine`): resolution estimate
from 2× nodes, FD h vs h/2 and the edge density; automatic refinement to 2× and 4× nodes; a
row FAILs only when its error exceeds 10× the estimate, else it is UNRESOLVED with advice. A
failing row's detail gives the given projectors' error on the same nodes: when they pass, Q*
itself is at fault (infeasible, or a lift that breaks a constraint); when they fail too, the
identity or the exact reference is broken. The elastic network is a closed form (no
resolution parameter): PASS or FAIL.
"""

from __future__ import annotations

import numpy as np
import torch

from hessid import identities
from hessid.maps import LinearMap, constraint_aware_projector
from hessid.optimal_projector import optimal_projector, residue_neighbour_mask, rigid_group_labels
from hessid.quadrature import (
    QuadratureSystem,
    builtin_systems,
    potential_forces,
    potential_hessians,
)
from hessid.units import beta as beta_of_temperature
from hessid.verification.elastic import (
    builtin_structure_path,
    elastic_network_matrix,
    read_pdb,
)
from hessid.verification.results import (
    DETECTION_THRESHOLD,
    DTYPE,
    ELASTIC_TOL,
    PROJECTOR_TOL,
    QUADRATURE_TOL,
    CheckResult,
    Item,
    RowAggregator,
    linear_negative_control_errors,
    refine,
    relative_error,
)

__all__ = [
    "INFEASIBLE_SCALE",
    "check_quadrature_system_optimal",
    "check_elastic_optimal",
    "constrained_gaussian_identity",
    "rigid_group_basis",
    "run_projector_checks",
]

#: the infeasible negative control scales row 0 of Q* by this ((Q Sᵀ)₀₀ = 1.01)
INFEASIBLE_SCALE = 1.01
#: objective rows: J(Q*) may exceed a reference by this relative amount (ridge 1e-8 + rounding)
OBJECTIVE_SLACK = 1e-6


def _pooled_second_moment(system: QuadratureSystem) -> torch.Tensor:
    """(D, D) force second moment over the quadrature samples of all points, each point's
    weights summing to 1 and the points weighted equally (1-D coordinates: no component sum)."""
    C = torch.zeros(system.D, system.D, dtype=DTYPE)
    for R in system.points:
        samples, w = system.conditional_samples(R)
        f = potential_forces(system.potential, samples)  # (S, D)
        C += torch.einsum("s,si,sj->ij", w, f, f)
    return C / len(system.points)


def _linear_identity(system, forces, hessians, weights, P):
    F = identities.mean_force_linear(forces, P, weights)
    H, (term1, term2) = identities.cg_hessian_linear(hessians, forces, P, system.beta, weights,
                                                     return_terms=True)
    return F, H, term1, term2


def _samples(system, R, n_nodes=None):
    samples, w = system.conditional_samples(R, n_nodes=n_nodes)
    return potential_forces(system.potential, samples), potential_hessians(system.potential, samples), w


def check_quadrature_system_optimal(system: QuadratureSystem, ridge: float = 1e-8) -> list[CheckResult]:
    """Identity with Q* vs the quadrature PMF for one linear system (module docstring).

    Args:
        system: a linear :class:`~hessid.quadrature.QuadratureSystem` with projectors.
        ridge: ridge of the fit (relative to tr(C)/D).

    Returns:
        list of CheckResult (system label ``<name>``, map ``P=optimal``), self-certified
        (module docstring).

    Raises:
        ValueError: the system is not linear or has no projectors.
    """
    M = system.linear_map_matrix()
    if M is None or not system.projectors:
        raise ValueError(f"{system.name}: Q* checks need a linear map with projectors")
    agg = RowAggregator(system.name or "user system")
    label = "P=optimal"
    eye = torch.eye(M.shape[0], dtype=DTYPE)
    C = _pooled_second_moment(system)
    Q = optimal_projector(M, second_moment=C, ridge=ridge)  # (d, D)
    res = float((Q @ M.T - eye).abs().max())
    agg.add(Item(label, "projector Q* M^T = I (abs residual)", res, QUADRATURE_TOL, kind=None), "all points")
    j_opt = float(torch.einsum("ai,ij,aj->", Q, C, Q))
    j_refs = {k: float(torch.einsum("ai,ij,aj->", P, C, P)) for k, P in system.projectors.items()}
    j_min = min(j_refs.values())
    agg.add(Item(label, "E|Q* f|^2 <= E|P f|^2 of the given projectors (rel excess)",
                 max(0.0, (j_opt - j_min) / j_min), OBJECTIVE_SLACK, kind=None,
                 detail=f"J(Q*)={j_opt:.4g}, " + ", ".join(f"J({k})={v:.4g}" for k, v in j_refs.items())),
            "all points")
    bad = Q.clone()
    bad[0] *= INFEASIBLE_SCALE

    def evaluate(level, R, ref):
        grad, H_fd = ref["fd"]
        F_ex = -grad
        H_ex = level.exact_hessian(R) if level.closed_form_hessian is not None else H_fd
        f, h, w = _samples(level, R)
        F, H, term1, term2 = _linear_identity(level, f, h, w, Q)
        ref_f = ref_h = 0.0
        for P in level.projectors.values():
            Fp, Hp, _, _ = _linear_identity(level, f, h, w, P)
            ref_f = max(ref_f, relative_error(Fp, F_ex))
            ref_h = max(ref_h, relative_error(Hp, H_ex))
        Fb, Hb, _, _ = _linear_identity(level, f, h, w, bad)
        return [
            Item(label, "mean force <Q* f>", relative_error(F, F_ex), QUADRATURE_TOL, kind="force",
                 detail=f"given projectors: {ref_f:.1e}"),
            Item(label, "hessian <Q* ddH Q*^T> - beta Cov(Q* f)", relative_error(H, H_ex), QUADRATURE_TOL,
                 detail=f"given projectors: {ref_h:.1e}; tr Term2 = {float(torch.trace(term2)):.4g}"),
            Item(label, "neg: infeasible Q* ((Q M^T)_00 = 1.01) mean force detected", relative_error(Fb, F_ex),
                 DETECTION_THRESHOLD, negative=True, kind="force"),
            Item(label, "neg: infeasible Q* ((Q M^T)_00 = 1.01) hessian detected", relative_error(Hb, H_ex),
                 DETECTION_THRESHOLD, negative=True),
        ]

    for R in system.points:
        for item in refine(system, R, evaluate):
            agg.add(item, f"R={[round(float(x), 6) for x in R]}")
    return agg.results()


# ----------------------------------------------------------------------------- elastic network


def rigid_group_basis(labels: np.ndarray) -> torch.Tensor:
    """B (3N, 3g): column block g moves every atom of rigid group g by the same vector.

    Args:
        labels: (N,) group label 0..g−1 of every atom.

    Returns:
        (3N, 3g) float64 0/1 matrix, flat index 3i + α.
    """
    labels = np.asarray(labels)
    N, g = labels.size, int(labels.max()) + 1
    G = torch.zeros(N, g, dtype=DTYPE)
    G[torch.arange(N), torch.as_tensor(labels)] = 1.0
    return torch.kron(G, torch.eye(3, dtype=DTYPE))


class _ConstrainedGaussian:
    """The P-independent parts of :func:`constrained_gaussian_identity`, factorised once:
    ``K_u = L Lᵀ`` (Cholesky) and ``W = L⁻¹ M_uᵀ``, so that for ``A = PKB`` and ``Y = L⁻¹ Aᵀ``
    ``A K_u⁻¹ Aᵀ = YᵀY``, ``M_u K_u⁻¹ Aᵀ = WᵀY`` and ``⟨P f⟩ = −YᵀW 𝓗 δ``."""

    def __init__(self, K, B, M, beta: float) -> None:
        K, M = (torch.as_tensor(t, dtype=DTYPE) for t in (K, M))
        Bt = None if B is None else torch.as_tensor(B, dtype=DTYPE)
        self.K, self.beta = K, float(beta)
        self.KB = K if Bt is None else K @ Bt  # (D, D_u)
        Ku = self.KB if Bt is None else Bt.T @ self.KB
        Mu = M if Bt is None else M @ Bt
        self.L = torch.linalg.cholesky(0.5 * (Ku + Ku.T))
        self.W = torch.linalg.solve_triangular(self.L, Mu.T.contiguous(), upper=False)  # (D_u, d)
        S = self.W.T @ self.W  # M_u K_u⁻¹ M_uᵀ
        self.H_ex = torch.linalg.inv(0.5 * (S + S.T))

    def force_covariance_trace(self) -> torch.Tensor:
        """(N, N) ``Σ_α Cov(f)[3i+α, 3j+α]`` of the unconditional ensemble, Cov f = β⁻¹ KB K_u⁻¹ BᵀK."""
        X = torch.linalg.solve_triangular(self.L, self.KB.T.contiguous(), upper=False)  # (D_u, D)
        return _component_trace(X.T @ X) / self.beta

    def identity(self, P, displacement=None) -> dict:
        P = torch.as_tensor(P, dtype=DTYPE)
        d = self.H_ex.shape[0]
        delta = torch.zeros(d, dtype=DTYPE) if displacement is None else torch.as_tensor(displacement, dtype=DTYPE)
        A = P @ self.KB  # (d, D_u): P f = −A u
        Y = torch.linalg.solve_triangular(self.L, A.T.contiguous(), upper=False)  # (D_u, d)
        WY = self.W.T @ Y  # M_u K_u⁻¹ Aᵀ, (d, d)
        cov = (Y.T @ Y - WY.T @ self.H_ex @ WY) / self.beta
        term1 = P @ (self.K @ P.T)
        term2 = -self.beta * cov
        return {"exact_hessian": self.H_ex, "term1": term1, "term2": term2, "hessian": term1 + term2,
                "exact_mean_force": -self.H_ex @ delta, "mean_force": -(WY.T @ (self.H_ex @ delta))}


def constrained_gaussian_identity(K, B, M, P, beta: float, displacement=None) -> dict:
    """Exact CG quantities and the identity's terms for a Gaussian AA model restricted to
    ``r = r₀ + B u`` (rigid groups), with atom forces ``f = −K(r − r₀)`` as an MD engine reports
    them (no constraint forces) and Term 1 ``P K Pᵀ`` as the FD of those forces along Pᵀv.

    With ``K_u = BᵀKB`` and ``M_u = MB`` the CG Hessian is ``(M_u K_u⁻¹ M_uᵀ)⁻¹`` and the mean
    force ``−𝓗 δ``; the identity uses ``Cov(P f) = (PKB) Σ_u (PKB)ᵀ`` with
    ``Σ_u = β⁻¹(K_u⁻¹ − K_u⁻¹M_uᵀ 𝓗 M_u K_u⁻¹)`` and ``⟨P f⟩ = −PKB μ_u``. It is exact iff
    ``P Mᵀ = I`` and P's columns are equal within every group (then ``P = Z Bᵀ``).

    Args:
        K: (D, D) SPD, kcal/mol/Å².  B: (D, D_u) full column rank, or None (no constraints,
            B = I).  M, P: (d, D).  beta: mol/kcal.  displacement: R − M r₀, (d,), Å (zero if
            None).

    Returns:
        dict of float64 tensors as :func:`hessid.verification.elastic.gaussian_identity`:
        ``exact_hessian``, ``term1``, ``term2``, ``hessian``, ``exact_mean_force``, ``mean_force``.
    """
    return _ConstrainedGaussian(K, B, M, beta).identity(P, displacement)


def _component_trace(X: torch.Tensor) -> torch.Tensor:
    """(3N, 3N) → (N, N) ``Σ_α X[3i+α, 3j+α]`` (a second moment summed over components)."""
    N = X.shape[0] // 3
    return torch.einsum("iaja->ij", X.reshape(N, 3, N, 3))


def _residue_indices(structure) -> np.ndarray:
    """(N,) residue ordinal of every atom; different chains kept > 10 apart."""
    out, seen, chain_offset, last_chain = [], {}, 0, None
    for key in structure.residues:
        if key[0] != last_chain and last_chain is not None:
            chain_offset += 10
        last_chain = key[0]
        if key not in seen:
            seen[key] = len(seen) + chain_offset
        out.append(seen[key])
    return np.asarray(out, dtype=np.int64)


def _rigid_pairs(structure) -> np.ndarray:
    """(m, 2) CA–CB and C–O pairs of every residue (the rigid groups of the constrained check)."""
    by_res: dict = {}
    for i, (key, name) in enumerate(zip(structure.residues, structure.names, strict=True)):
        by_res.setdefault(key, {})[name] = i
    pairs = [(a[x], a[y]) for a in by_res.values() for x, y in (("CA", "CB"), ("C", "O")) if x in a and y in a]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _tr_cov(out: dict, beta: float) -> float:
    return float(torch.trace(-out["term2"])) / beta


def check_elastic_optimal(pdb=None, temperature: float = 300.0, neighbours: int = 1,
                          seed: int = 0) -> list[CheckResult]:
    """Identity with Q* on the elastic network of a structure, without and with rigid groups
    (module docstring).

    Args:
        pdb: PDB file; the shipped villin (1VII, heavy atoms) if None.
        temperature: K.
        neighbours: residue-neighbour mask of the fit (residues on either side).
        seed: seed of the random CG displacement (as :func:`hessid.verification.elastic.check_linear_map_on_structure`).

    Returns:
        list of CheckResult.

    Raises:
        FileNotFoundError, ValueError: unreadable PDB, no Cα atoms.
    """
    path = builtin_structure_path() if pdb is None else pdb
    structure = read_pdb(path)
    pos = structure.positions
    N = structure.n_atoms
    ca = structure.ca_indices()
    if not ca:
        raise ValueError(f"{path}: no CA atoms")
    beta = beta_of_temperature(temperature)
    S = LinearMap.selection(ca, N).weights  # (n, N)
    n = S.shape[0]
    res = _residue_indices(structure)
    mask = residue_neighbour_mask(res[ca], res, neighbours)
    K = elastic_network_matrix(pos)
    I3 = torch.eye(3, dtype=DTYPE)
    M = torch.kron(S, I3)
    gen = torch.Generator().manual_seed(seed)
    delta = 0.3 * torch.randn(3 * n, generator=gen, dtype=DTYPE)  # the draw of check_linear_map_on_structure
    system = f"ENM {getattr(path, 'name', path)} ({N} atoms) Q*"
    out: list[CheckResult] = []

    # -- unconstrained: unconditional force covariance β⁻¹K, Q* with the residue mask
    C = _component_trace(K) / beta  # unconditional Cov f = β⁻¹ K
    Q = optimal_projector(S, second_moment=C, mask=mask)
    label = f"ca/optimal nb={neighbours}"
    free = _ConstrainedGaussian(K, None, M, beta)
    g_opt = free.identity(torch.kron(Q, I3), delta)
    g_ref = free.identity(M, delta)  # the selection projector P = M
    resid = float((Q @ S.T - torch.eye(n, dtype=DTYPE)).abs().max())
    out.append(CheckResult(system, label, "projector Q* S^T = I (abs residual)", resid, PROJECTOR_TOL, resid <= PROJECTOR_TOL))
    out.extend(_identity_rows(system, label, g_opt, g_ref, "selection projector"))
    for qty, e in linear_negative_control_errors(g_opt["term1"], g_opt["term2"], g_opt["exact_hessian"]):
        out.append(CheckResult(system, label, qty, e, DETECTION_THRESHOLD, e > DETECTION_THRESHOLD, negative_control=True))
    out.extend(_cov_and_infeasible_rows(system, label, free, Q, g_ref, delta, "selection", _tr_cov(g_opt, beta)))

    # -- rigid groups: CA–CB and C–O of every residue move as one body (r = r₀ + B u)
    pairs = _rigid_pairs(structure)
    labels = rigid_group_labels(N, constrained_pairs=pairs)
    B = rigid_group_basis(labels)  # (3N, 3g)
    rigid = _ConstrainedGaussian(K, B, M, beta)
    Cc = rigid.force_covariance_trace()
    Qc = optimal_projector(S, second_moment=Cc, constrained_pairs=pairs, mask=mask)
    Q_ca = constraint_aware_projector(S, S, pairs, n_atoms=N)
    label = f"ca/optimal nb={neighbours} + rigid CA-CB, C-O"
    g = rigid.identity(torch.kron(Qc, I3), delta)
    g_ca = rigid.identity(torch.kron(Q_ca, I3), delta)
    resid = float((Qc @ S.T - torch.eye(n, dtype=DTYPE)).abs().max())
    out.append(CheckResult(system, label, "projector Q* S^T = I (abs residual)", resid, PROJECTOR_TOL, resid <= PROJECTOR_TOL))
    spread = max(float((Qc[:, labels == k] - Qc[:, labels == k][:, :1]).abs().max())
                 for k in np.flatnonzero(np.bincount(labels) > 1))  # fmt: skip
    out.append(CheckResult(system, label, "equal Q* columns within rigid groups (max abs diff)", spread, 0.0,
                           spread == 0.0, f"{int((np.bincount(labels) > 1).sum())} groups of >= 2 atoms"))  # fmt: skip
    out.extend(_identity_rows(system, label, g, g_ca, "constraint-aware projector"))
    out.extend(_cov_and_infeasible_rows(system, label, rigid, Qc, g_ca, delta, "constraint-aware", _tr_cov(g, beta)))
    # negative controls: feasible for Q Sᵀ = I but the lift breaks the rigid groups
    Q_free = optimal_projector(S, second_moment=Cc, mask=mask)  # fitted ignoring the groups
    for name, Qw in (("Q* fitted without rigid groups", Q_free), ("selection projector (groups ignored)", S)):
        gw = rigid.identity(torch.kron(Qw, I3), delta)
        for a, b, what in (("mean_force", "exact_mean_force", "mean force"), ("hessian", "exact_hessian", "hessian")):
            e = relative_error(gw[a], gw[b])
            out.append(CheckResult(system, label, f"neg: {name} {what} detected", e, DETECTION_THRESHOLD,
                                   e > DETECTION_THRESHOLD, negative_control=True))  # fmt: skip
    return out


def _identity_rows(system, label, g: dict, g_ref: dict, ref_name: str) -> list[CheckResult]:
    """Mean force and Hessian with Q* vs the closed form; a failure is classified against the
    reference projector's error on the same model."""
    rows = []
    for a, b, qty in (("mean_force", "exact_mean_force", "mean force <Q* f> vs -H (R - M r0)"),
                      ("hessian", "exact_hessian", "hessian Term1 - beta Cov(Q* f) vs (M_u K_u^-1 M_u^T)^-1")):
        e, e_ref = relative_error(g[a], g[b]), relative_error(g_ref[a], g_ref[b])
        detail = f"{ref_name}: {e_ref:.1e}"
        if a == "hessian":
            detail += f"; |Term1|max={float(g['term1'].abs().max()):.3g}, |Term2|max={float(g['term2'].abs().max()):.3g}"
        if e > ELASTIC_TOL:
            detail += ("; FAIL: wrong (the reference projector fails too: the identity or the closed form is "
                       "broken)" if e_ref > ELASTIC_TOL else "; FAIL: wrong (Q* is at fault)")
        rows.append(CheckResult(system, label, qty, e, ELASTIC_TOL, e <= ELASTIC_TOL, detail))
    return rows


def _cov_and_infeasible_rows(system, label, model: _ConstrainedGaussian, Q, g_ref: dict, delta, ref_name,
                             tr_opt) -> list[CheckResult]:
    """tr Cov(Q* f) ≤ tr Cov(P_ref f), and the infeasible-Q* negative controls."""
    tr_ref = _tr_cov(g_ref, model.beta)
    excess = max(0.0, (tr_opt - tr_ref) / tr_ref)
    rows = [CheckResult(system, label, f"tr Cov(Q* f) <= tr Cov(P f), P {ref_name} (rel excess)", excess,
                        OBJECTIVE_SLACK, excess <= OBJECTIVE_SLACK,
                        f"tr Cov(Q* f) = {tr_opt:.4g}, {ref_name}: {tr_ref:.4g} (kcal/mol/A)^2")]  # fmt: skip
    bad = Q.clone()
    bad[0] *= INFEASIBLE_SCALE
    gb = model.identity(torch.kron(bad, torch.eye(3, dtype=DTYPE)), delta)
    for a, b, what in (("mean_force", "exact_mean_force", "mean force"), ("hessian", "exact_hessian", "hessian")):
        e = relative_error(gb[a], gb[b])
        rows.append(CheckResult(system, label, f"neg: infeasible Q* ((Q S^T)_00 = 1.01) {what} detected", e,
                                DETECTION_THRESHOLD, e > DETECTION_THRESHOLD, negative_control=True))  # fmt: skip
    return rows


def run_projector_checks(include_elastic: bool = True) -> list[CheckResult]:
    """The Q* checks of ``hessid verify --all``: every linear built-in quadrature system and
    (``include_elastic``) the villin elastic network without and with rigid groups.

    Returns:
        list of CheckResult.
    """
    out: list[CheckResult] = []
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: the thread pool only adds contention
    try:
        for system in builtin_systems():
            if system.projectors and system.linear_map_matrix() is not None:
                out.extend(check_quadrature_system_optimal(system))
        if include_elastic:
            out.extend(check_elastic_optimal())
    finally:
        torch.set_num_threads(n)
    return out
