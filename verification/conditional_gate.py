"""The training gate's exact check: `hessid.identities` run on the elastic network's conditional law.

For a dataset's structure (frame 0, N atoms) an elastic network (:func:`hessid.verification.
elastic.elastic_network_matrix`) is a Gaussian AA model ``H = ½ (r − r₀)ᵀ K (r − r₀)``. Rigid
groups (the HBond constraints of the data: every hydrogen moves with its heavy atom) restrict
it to ``r = r₀ + B u`` (:func:`hessid.verification.projector_checks.rigid_group_basis`), with
``K_u = BᵀKB`` and ``M_u = MB``; without constraints ``B = I``. At the CG point
``R = M r₀ + δ`` the conditional law of u is Gaussian (docs/identities.md, eq. (7.1)):

    μ_u = K_u⁻¹ M_uᵀ 𝓗 δ,     Σ_u = β⁻¹ (K_u⁻¹ − K_u⁻¹ M_uᵀ 𝓗 M_u K_u⁻¹),     𝓗 = (M_u K_u⁻¹ M_uᵀ)⁻¹

**Conditional samples.** :func:`conditional_sigma_points` draws the symmetric sigma-point rule
``u = μ_u ± √m c_j`` (weights ``1/(2m)``), where ``Σ_u = C Cᵀ`` with ``C = β^{−1/2} L⁻ᵀ V``
(``K_u = L Lᵀ``, V an orthonormal basis of the null space of ``(L⁻¹M_uᵀ)ᵀ``, m its rank
``D_u − d``). Every sample lies on the fiber ``M r = R`` and the rule reproduces the mean and
covariance of the law exactly — all the linear identity sees, since the forces ``f = −K(r − r₀)``
(as an MD engine reports them: no constraint forces) are linear in r. So the estimators of
:mod:`hessid.identities`, evaluated on these weighted samples with the dataset's projector
``P = Q ⊗ I₃``, must reproduce the exact answers to rounding:

* ``F = ⟨P f⟩`` (:func:`~hessid.identities.mean_force_linear`) vs ``−𝓗 δ``;
* ``𝓗 = Term 1 − β Cov(P f)``: Term 1 as the data pipeline computes it, HVPs of the AA Hessian
  along ``Pᵀv`` (:func:`~hessid.identities.term1_linear_exact`), the covariance by
  :func:`~hessid.identities.weighted_covariance` on the samples;
* the per-frame HVP target of training (:func:`~hessid.identities.hvp_target_linear`,
  docs/identities.md, eq. (5.2), with the exact mean force as model force) averaged over the
  samples vs ``𝓗 v`` for 4 seeded Gaussian probes.

Both hold iff ``Q Sᵀ = I`` *and* Q's columns are equal within every rigid group (its lift
``Pᵀv`` then moves each group as one body); a projector that breaks a group (the plain
selection projector on HBond data) gives Term 1 and the mean force of the wrong ensemble.
Negative controls: Term 2 with its sign flipped and Term 1 alone must be detected.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hessid import identities
from hessid.optimal_projector import rigid_group_labels
from hessid.units import beta as beta_of_temperature
from hessid.verification.elastic import elastic_network_matrix
from hessid.verification.projector_checks import rigid_group_basis
from hessid.verification.results import (
    DETECTION_THRESHOLD,
    DTYPE,
    ELASTIC_TOL,
    PROJECTOR_TOL,
    CheckResult,
    linear_negative_control_errors,
    relative_error,
)

__all__ = ["GROUP_TOL", "FIBER_TOL", "N_PROBES", "conditional_sigma_points", "check_projector_on_conditional_law"]

#: equal Q columns within a rigid group: max |Q_Ii − Q_Ij| over the group, relative to max |Q|
#: (the constraint-aware projector writes one value per group; only rounding may differ)
GROUP_TOL = 1e-12
#: samples on the fiber: max |M r − R| / max(|δ|, 1 Å) (rounding of the Cholesky solves)
FIBER_TOL = 1e-9
#: seeded Gaussian probes of the HVP-target row
N_PROBES = 4


def conditional_sigma_points(K, M, beta: float, displacement, B=None) -> dict:
    """Weighted samples of the Gaussian conditional law at ``R = M r₀ + δ`` (module docstring).

    Args:
        K: (D, D) SPD AA Hessian, kcal/mol/Å².
        M: (d, D) linear map.
        beta: mol/kcal.
        displacement: δ = R − M r₀, (d,), Å.
        B: (D, D_u) rigid-group basis (full column rank), or None (unconstrained).

    Returns:
        dict: ``dr`` (2m, D) = r − r₀ of the samples, Å; ``weights`` (2m,) = 1/(2m);
        ``exact_hessian`` 𝓗 (d, d) kcal/mol/Å²; ``exact_mean_force`` −𝓗δ (d,) kcal/mol/Å.

    Raises:
        torch.linalg.LinAlgError: K_u not positive definite or M_u rank-deficient.
    """
    K, M = torch.as_tensor(K, dtype=DTYPE), torch.as_tensor(M, dtype=DTYPE)
    delta = torch.as_tensor(displacement, dtype=DTYPE)
    Bt = torch.eye(K.shape[0], dtype=DTYPE) if B is None else torch.as_tensor(B, dtype=DTYPE)
    Ku = Bt.T @ K @ Bt
    L = torch.linalg.cholesky(0.5 * (Ku + Ku.T))
    W = torch.linalg.solve_triangular(L, (M @ Bt).T.contiguous(), upper=False)  # (D_u, d) L⁻¹M_uᵀ
    d = W.shape[1]
    H = torch.linalg.inv(W.T @ W)
    H = 0.5 * (H + H.T)
    mu = torch.linalg.solve_triangular(L.T, (W @ (H @ delta))[:, None], upper=True)[:, 0]  # (D_u,)
    V = torch.linalg.qr(W, mode="complete").Q[:, d:]  # (D_u, m) ⟂ range(W)
    C = torch.linalg.solve_triangular(L.T, V, upper=True) / math.sqrt(beta)  # (D_u, m)
    m = C.shape[1]
    u = mu + math.sqrt(m) * torch.cat([C.T, -C.T])  # (2m, D_u)
    return {"dr": u @ Bt.T, "weights": torch.full((2 * m,), 1.0 / (2 * m), dtype=DTYPE),
            "exact_hessian": H, "exact_mean_force": -H @ delta}


def check_projector_on_conditional_law(positions, S, Q, temperature: float = 300.0, rigid_pairs=None,
                                       name: str = "", seed: int = 0) -> list[CheckResult]:
    """The gate's rows for one dataset (module docstring).

    Args:
        positions: (N, 3) Å, the reference structure r₀ (the dataset's frame 0).
        S, Q: (n, N) map weights and force projector as stored.
        temperature: K.
        rigid_pairs: (m, 2) atom pairs held rigid (HBond constraints), or None.
        name: system label.
        seed: seed of δ (|δ| ~ 0.3 Å per CG coordinate) and of the probes.

    Returns:
        list of :class:`~hessid.verification.results.CheckResult` (closed forms: PASS/FAIL).

    Raises:
        ValueError: shapes inconsistent (names the arrays).
    """
    pos = np.asarray(positions, dtype=np.float64)
    S = torch.as_tensor(np.asarray(S), dtype=DTYPE)
    Q = torch.as_tensor(np.asarray(Q), dtype=DTYPE)
    if S.ndim != 2 or Q.shape != S.shape or pos.shape != (S.shape[1], 3):
        raise ValueError(f"{name}: weights {tuple(S.shape)}, projector {tuple(Q.shape)} and frame-0 "
                         f"positions {pos.shape} must be (n, N), (n, N), (N, 3)")
    n, N = S.shape
    beta = beta_of_temperature(temperature)
    I3 = torch.eye(3, dtype=DTYPE)
    M, P = torch.kron(S, I3), torch.kron(Q, I3)
    d = 3 * n
    gen = torch.Generator().manual_seed(seed)
    delta = 0.3 * torch.randn(d, generator=gen, dtype=DTYPE)
    probes = torch.randn(N_PROBES, d, generator=gen, dtype=DTYPE)
    K = elastic_network_matrix(pos)
    pairs = None if rigid_pairs is None else np.asarray(rigid_pairs, dtype=np.int64).reshape(-1, 2)
    labels = rigid_group_labels(N, constrained_pairs=pairs) if pairs is not None and len(pairs) else None
    label = f"{'HBond rigid groups' if labels is not None else 'unconstrained'}, n={n}"
    rows: list[CheckResult] = []

    def row(quantity, err, tol, detail="", negative=False):
        ok = err > tol if negative else err <= tol
        rows.append(CheckResult(name, label, quantity, float(err), tol, bool(ok), detail, negative))

    res = float((Q @ S.T - torch.eye(n, dtype=DTYPE)).abs().max())
    row("projector Q S^T = I (abs residual)", res, PROJECTOR_TOL)
    B = None
    if labels is not None:
        sizes = np.bincount(labels)
        spread = max((float((Q[:, labels == g] - Q[:, labels == g][:, :1]).abs().max())
                      for g in np.flatnonzero(sizes > 1)), default=0.0)  # fmt: skip
        row("equal Q columns within rigid groups (max abs diff / max|Q|)",
            spread / max(float(Q.abs().max()), 1e-300), GROUP_TOL,
            f"{int((sizes > 1).sum())} groups of >= 2 atoms")
        B = rigid_group_basis(labels)
    law = conditional_sigma_points(K, M, beta, delta, B)
    dr, w, H_ex, F_ex = law["dr"], law["weights"], law["exact_hessian"], law["exact_mean_force"]
    fib = float((dr @ M.T - delta).abs().max()) / max(float(delta.abs().max()), 1.0)
    row("conditional samples on the fiber M r = R (rel residual)", fib, FIBER_TOL,
        f"{dr.shape[0]} sigma points of the conditional Gaussian")
    forces = -(dr @ K)  # (S, D) f = −K(r − r₀), K symmetric
    F = identities.mean_force_linear(forces, P, w)
    row("mean force <Q f> (identities on the conditional law) vs -H (R - M r0)", relative_error(F, F_ex),
        ELASTIC_TOL)
    eye = torch.eye(d, dtype=DTYPE)
    term1 = identities.term1_linear_exact(K[None], P, eye[None])[0]  # (d, d) P K Pᵀ, as HVPs along Pᵀv
    pf = forces @ P.T  # (S, d)
    term2 = -beta * identities.weighted_covariance(pf, weights=w)
    row("hessian Term1 - beta Cov(Q f) (identities on the conditional law) vs exact",
        relative_error(term1 + term2, H_ex), ELASTIC_TOL,
        f"|Term1|max={float(term1.abs().max()):.3g}, |Term2|max={float(term2.abs().max()):.3g}")
    S_ = pf.shape[0]
    t1v = (probes @ term1.T)[None].expand(S_, N_PROBES, d)  # Term1(v) per sample (constant)
    h = identities.hvp_target_linear(t1v, pf - F, probes[None].expand(S_, N_PROBES, d), beta)
    row("HVP target <h(v)> (eq. 5.2, exact model force) vs H v",
        relative_error(torch.einsum("s,skd->kd", w, h), probes @ H_ex.T), ELASTIC_TOL, f"{N_PROBES} probes")
    for qty, e in linear_negative_control_errors(term1, term2, H_ex):
        row(qty, e, DETECTION_THRESHOLD, negative=True)
    return rows
