"""Training losses: force matching, HVP matching, full-Hessian matching (docs/identities.md §5).

All tensors are graph-batched (TorchMD-Net layout): beads of B frames flattened to A rows,
``batch`` (A,) gives each bead's frame. Probes and HVPs carry a leading probe axis k:
(k, A, 3). The E-F / E-F-HVP (one-hot or random probes) / E-F-H comparison of Projected
Hessian Learning is a :class:`~hessid.training.learning.configs.LossConfig`, not a code path:

============  ==========================================================
E-F           ``mode="fm"`` (``lambda_energy > 0`` adds energies)
E-F-HVP       ``mode="fm_hvp"``, ``probe_kind="one_hot"`` or ``"gaussian"``…
E-F-H         ``mode="fm_hessian"`` (exact Hessian targets, small systems)
FM+AA         ``mode="fm_hvp"``, ``cov_weight=0``
FM+AA+Cov     ``mode="fm_hvp"``, ``cov_weight=1``
============  ==========================================================

Two HVP estimators (``LossConfig.hvp_estimator``, docs/variance_reduction.md): ``"frame"``
(:func:`hvp_loss` on :func:`hvp_targets`, the per-frame target of docs/identities.md §5) and
``"rao_blackwell"`` (:func:`rao_blackwell_hvp_loss_graph`: the probe-noisy rank-one cross term
replaced by its probe expectation, plus a zero-mean stabiliser that bounds it below).

Target normalisation: Cα Term-1 blocks are ~10³ kcal/mol/Å², far above an untrained model's
curvature, while forces are ~10 kcal/mol/Å. Each term is divided by its value for a model with
zero outputs, averaged over the training set (``force_norm`` = mean ‖P f‖², ``hvp_norm`` =
mean c·mean_k ‖h(v_k)‖² with Term 2 at the run's γ, :func:`hvp_target_norms`; ``hessian_norm``
likewise, :func:`hessian_target_norms`), so every term starts near 1 for a model with small
outputs and λ_F, λ_H weigh comparable numbers whatever γ.
"""

from __future__ import annotations

import torch

from hessid.hvp_loss import per_frame_hvp_loss, rao_blackwell_hvp_loss
from hessid.training.learning.layout import batch_layout

__all__ = [
    "DEFAULT_RB_STABILISER",
    "bond_directions",
    "energy_loss",
    "force_matching_loss",
    "hessian_loss",
    "hessian_target_norms",
    "hessian_targets",
    "hvp_loss",
    "hvp_target_norms",
    "hvp_targets",
    "per_frame_sum",
    "project_out_bonds",
    "rao_blackwell_hvp_loss_graph",
]

#: α of the zero-mean stabiliser of :func:`rao_blackwell_hvp_loss_graph` (docs/training.md,
#: "Rao–Blackwellised HVP loss"): any α in (0, 1) bounds the loss below; 1/2 costs ~2 % of the
#: probe-variance reduction on the documented chignolin-like instance.
DEFAULT_RB_STABILISER = 0.5


def per_frame_sum(values: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Sum a per-bead quantity over the beads of each frame.

    Args:
        values: (..., A) per-bead values.
        batch: (A,) int64 frame index.
        n_graphs: B.

    Returns:
        (..., B).
    """
    out = torch.zeros(values.shape[:-1] + (n_graphs,), dtype=values.dtype, device=values.device)
    return out.index_add(values.ndim - 1, batch, values)


def force_matching_loss(model_forces: torch.Tensor, target_forces: torch.Tensor,
                        batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Force matching, docs/identities.md §5: ``L_FM = (1/T) Σ_t ‖P f(r_t) − F_θ(R_t)‖²``.

    Args:
        model_forces: F_θ, (A, 3) kcal/mol/Å (with a θ-graph).
        target_forces: P f, (A, 3) kcal/mol/Å.
        batch: (A,) frame index.  n_graphs: T (frames in the batch).

    Returns:
        scalar, (kcal/mol/Å)².

    Raises:
        ValueError: shapes disagree.
    """
    if model_forces.shape != target_forces.shape:
        raise ValueError(f"forces {tuple(model_forces.shape)} vs targets "
                         f"{tuple(target_forces.shape)}")
    sq = ((target_forces - model_forces) ** 2).sum(-1)  # (A,)
    return per_frame_sum(sq, batch, n_graphs).mean()


def hvp_targets(term1: torch.Tensor, force_residual: torch.Tensor, probes: torch.Tensor,
                beta: torch.Tensor | float, cov_weight: float, batch: torch.Tensor,
                n_graphs: int) -> torch.Tensor:
    """HVP targets, docs/identities.md §5: ``h(v) = Term1(v) − γ β dF (dF·v)``, graph layout.

    The same formula as :func:`hessid.identities.hvp_target_linear` (tested equal) for frames
    of different bead counts batched as graphs; ``dF = P f − F_θ`` is detached here.

    Args:
        term1: ``P ∇²H Pᵀ v``, (k, A, 3) kcal/mol/Å².
        force_residual: dF, (A, 3) kcal/mol/Å.
        probes: v, (k, A, 3).
        beta: 1/(k_B T) in mol/kcal, a float or (B,) per frame.
        cov_weight: γ ∈ [0, 1].
        batch: (A,) frame index.  n_graphs: B.

    Returns:
        (k, A, 3) kcal/mol/Å².

    Raises:
        ValueError: shapes disagree or γ outside [0, 1].
    """
    if term1.shape != probes.shape or term1.shape[1:] != force_residual.shape:
        raise ValueError(f"term1 {tuple(term1.shape)}, probes {tuple(probes.shape)} and "
                         f"force_residual {tuple(force_residual.shape)} disagree")
    if not 0.0 <= cov_weight <= 1.0:
        raise ValueError(f"cov_weight must lie in [0, 1], got {cov_weight}")
    if cov_weight == 0.0:
        return term1
    dF = force_residual.detach()
    dot = per_frame_sum((probes * dF).sum(-1), batch, n_graphs)  # (k, B)  dF·v
    beta_b = torch.as_tensor(beta, dtype=term1.dtype, device=term1.device).expand(n_graphs)
    coef = (cov_weight * beta_b * dot)[:, batch]  # (k, A)
    return term1 - coef[..., None] * dF  # (k, A, 3)


def hvp_loss(model_hvp: torch.Tensor, targets: torch.Tensor, batch: torch.Tensor,
             n_graphs: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """HVP matching, docs/identities.md §5: ``L_HVP = (1/T) Σ_t (1/k) Σ_m c_t ‖H_θ v_tm − h_t(v_tm)‖²``.

    ``c_t = probe_scale(kind, 3 n_t)`` (docs/identities.md §6) makes each frame's term an unbiased estimate
    of ``‖H_θ − E[T|R]‖_F²`` plus a θ-independent variance (1 for Gaussian/Rademacher, d for
    unit-sphere and one-hot probes).

    Args:
        model_hvp: ``H_θ v`` with a θ-graph, (k, A, 3) kcal/mol/Å².
        targets: h(v), (k, A, 3) kcal/mol/Å² (no graph).
        batch: (A,) frame index.  n_graphs: T.
        scale: c_t, float or (B,).

    Returns:
        scalar, (kcal/mol/Å²)².

    Raises:
        ValueError: model HVPs and targets differ in shape.
    """
    if model_hvp.shape != targets.shape:
        raise ValueError(f"model HVPs {tuple(model_hvp.shape)} vs targets {tuple(targets.shape)}")
    sq = ((model_hvp - targets.detach()) ** 2).sum(-1)  # (k, A)
    per_frame = per_frame_sum(sq, batch, n_graphs).mean(0)  # (B,)
    scale = torch.as_tensor(scale, dtype=per_frame.dtype, device=per_frame.device)
    return (scale * per_frame).mean()


def hessian_targets(term1_blocks: list[torch.Tensor], force_residuals: list[torch.Tensor],
                    beta: torch.Tensor | float, cov_weight: float) -> list[torch.Tensor]:
    """Full per-frame Hessian targets ``T = P∇²H Pᵀ − γ β dF dFᵀ`` (docs/identities.md §5, matrix form).

    Args:
        term1_blocks: B tensors (3n_t, 3n_t) kcal/mol/Å² (``cg/hessian_block``).
        force_residuals: B tensors (n_t, 3) kcal/mol/Å (detached here).
        beta: float or (B,) mol/kcal.  cov_weight: γ.

    Returns:
        list of B tensors (3n_t, 3n_t).
    """
    beta_b = torch.as_tensor(beta, dtype=torch.float64).expand(len(term1_blocks))
    out = []
    for t1, dF, b in zip(term1_blocks, force_residuals, beta_b, strict=True):
        f = dF.detach().reshape(-1).to(t1.dtype)  # (3n,)
        out.append(t1 - cov_weight * float(b) * torch.outer(f, f))
    return out


def hessian_loss(model_hessians: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Full-Hessian matching: ``L_H = (1/T) Σ_t ‖H_θ(R_t) − T_t‖_F²`` (the k = 3n, exact limit
    of :func:`hvp_loss` with orthonormal probes, docs/identities.md §6).

    Args:
        model_hessians: B tensors (3n_t, 3n_t) with a θ-graph.
        targets: B tensors of the same shapes.

    Returns:
        scalar, (kcal/mol/Å²)².

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    if len(model_hessians) != len(targets) or not targets:
        raise ValueError("need one target per model Hessian (and at least one)")
    return torch.stack([((h - t.detach()) ** 2).sum() for h, t in zip(model_hessians, targets, strict=True)]).mean()


def energy_loss(model_energy: torch.Tensor, target_energy: torch.Tensor) -> torch.Tensor:
    """Energy matching up to a constant: mean of ``(ΔU − mean ΔU)²`` over the batch's frames.

    Args:
        model_energy, target_energy: (B,) kcal/mol.

    Returns:
        scalar, (kcal/mol)².
    """
    diff = model_energy - target_energy.to(model_energy.dtype)
    return ((diff - diff.mean()) ** 2).mean()


# ----------------------------------------------------------------------------- Rao–Blackwell


def _frames_by_size(batch: torch.Tensor, n_graphs: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Group the frames of a graph batch by bead count (from the cached host layout, no sync
    after the batch's first read: :func:`~hessid.training.learning.layout.batch_layout`).

    Returns:
        list of ``(frames (B_g,), atoms (B_g·n,), n)``: frame indices, the row indices of their
        beads in batch order (frame by frame, so ``atoms`` reshapes to (B_g, n)), bead count.
    """
    layout = batch_layout(batch)
    if layout.n_graphs != n_graphs:
        raise ValueError(f"batch has {layout.n_graphs} frames, n_graphs = {n_graphs}")
    return layout.size_groups()


def rao_blackwell_hvp_loss_graph(model_hvp: torch.Tensor, term1: torch.Tensor,
                                 model_hvp_residual: torch.Tensor, force_residual: torch.Tensor,
                                 beta: torch.Tensor | float, cov_weight: float,
                                 batch: torch.Tensor, n_graphs: int,
                                 scale: torch.Tensor | float = 1.0,
                                 stabiliser: float = DEFAULT_RB_STABILISER,
                                 residual_direction: torch.Tensor | None = None,
                                 validate: bool = True) -> torch.Tensor:
    """Rao–Blackwellised HVP loss of a graph batch (docs/variance_reduction.md eq. (2)), stabilised.

    Per frame t (probes v_tj, j ≤ k, ``A = H_θ − T1``, ``w = dF_t`` detached, ``z`` the
    direction of the extra HVP — ``w`` itself, or ``P⊥ w`` with the bond projection —
    and ``ẑ = z/‖z‖``):

        L_t = (c_t/k) Σ_j ‖A v_tj‖² + 2 γ β_t wᵀ H_θ z                  (hessid.hvp_loss)
              + α [ ‖H_θ ẑ‖² − (c_t/k) Σ_j (ẑᵀ H_θ v_tj)² ]             (stabiliser, γ > 0)

    and the result is ``mean_t L_t``. The first line is
    :func:`hessid.hvp_loss.rao_blackwell_hvp_loss`: its θ-gradient has the probe expectation
    of the per-frame loss's (:func:`hvp_loss` on :func:`hvp_targets`) for any probes with
    ``E[v vᵀ] = I/c``. The stabiliser has probe expectation zero for every θ (``H_θ``
    symmetric: ``E[c (ẑᵀ H v)²] = ‖H ẑ‖²``), so it changes neither that expectation nor the
    expected value; for a complete orthonormal or one-hot basis (``(c/k) Σ v vᵀ = I``) it is
    exactly zero. It exists because with the fixed probes of a dataset and k < d the first
    line is unbounded below along directions no probe of the frame sees
    (docs/variance_reduction.md §1.6); with 0 < α < 1,

        L_t ≥ −(α/(1−α)) (c_t/k) Σ_j (ẑᵀ T1 v_tj)² − γ²β_t²‖w‖²‖z‖²/α,

    a θ-independent bound (docs/training.md). α = 0 gives plain ``L_RB``.

    Bond projection (``z = P⊥ w``): pass ``model_hvp = P⊥ H_θ v``, ``term1 = P⊥ T1 v``
    (:func:`project_out_bonds`) and ``model_hvp_residual = H_θ z``; the loss is then the
    Rao–Blackwellisation of ``(c/k) Σ_j ‖P⊥ (H_θ v_j − h(v_j))‖²`` (its cross term
    ``2γβ (c/k) Σ_j (wᵀv_j) wᵀ P⊥ H_θ v_j`` has expectation ``2γβ zᵀ H_θ w``), and the bound
    holds because ``ẑ`` lies in the range of ``P⊥``.

    Frames of different bead counts are grouped by size and passed to the core function as
    (B_g, k, n, 3) stacks.

    Args:
        model_hvp: ``H_θ v``, (k, A, 3) kcal/mol/Å², with the θ-graph.
        term1: ``T1 v`` (k, A, 3) kcal/mol/Å² (no graph used).
        model_hvp_residual: ``H_θ z``, (A, 3) (kcal/mol)²/Å³, with the θ-graph
            (:func:`~hessid.training.learning.derivatives.energy_forces_hvp` with
            ``residual_target``).
        force_residual: w = dF = P f − F_θ, (A, 3) kcal/mol/Å (detached here).
        beta: 1/(k_B T), mol/kcal, float or (B,).
        cov_weight: γ ∈ [0, 1].
        batch: (A,) int64 frame index, non-decreasing.  n_graphs: B.
        scale: probe scale c_t, float or (B,).
        stabiliser: α ∈ [0, 1).
        residual_direction: z, (A, 3), the vector ``model_hvp_residual`` was taken along;
            None: ``force_residual``.
        validate: check β and c finite and positive in the core function (host reads; the
            trainer passes False: :func:`~hessid.training.learning.datasets.collate_frames`
            builds β with :func:`hessid.units.beta`, which refuses any temperature that is not
            finite and positive, and c with :func:`hessid.probes.probe_scale`, 1 or d).

    Returns:
        scalar, (kcal/mol/Å²)². May be negative (a value, not a squared error;
        docs/variance_reduction.md §1.4).

    Raises:
        ValueError: shapes disagree, γ outside [0, 1], β or c not positive, α outside [0, 1).
    """
    if model_hvp.shape != term1.shape or model_hvp.shape[1:] != force_residual.shape \
            or model_hvp_residual.shape != force_residual.shape:
        raise ValueError(f"model_hvp {tuple(model_hvp.shape)}, term1 {tuple(term1.shape)}, "
                         f"model_hvp_residual {tuple(model_hvp_residual.shape)} and "
                         f"force_residual {tuple(force_residual.shape)} disagree")
    if residual_direction is not None and residual_direction.shape != force_residual.shape:
        raise ValueError(f"residual_direction {tuple(residual_direction.shape)} must have the "
                         f"shape of force_residual {tuple(force_residual.shape)}")
    if not 0.0 <= stabiliser < 1.0:
        raise ValueError(f"stabiliser must lie in [0, 1), got {stabiliser}")
    dt, dev = model_hvp.dtype, model_hvp.device
    beta_b = torch.as_tensor(beta, dtype=dt, device=dev).expand(n_graphs)
    scale_b = torch.as_tensor(scale, dtype=dt, device=dev).expand(n_graphs)
    dF = force_residual.detach().to(dt)
    zdir = dF if residual_direction is None else residual_direction.detach().to(dt)
    k = model_hvp.shape[0]
    per_frame = torch.zeros(n_graphs, dtype=dt, device=dev)
    for frames, atoms, n in _frames_by_size(batch, n_graphs):
        Bg = frames.shape[0]
        Hv = model_hvp[:, atoms].reshape(k, Bg, n * 3).transpose(0, 1)  # (B_g, k, d)
        T1v = term1[:, atoms].reshape(k, Bg, n * 3).transpose(0, 1).to(dt)  # (B_g, k, d)
        HdF = model_hvp_residual[atoms].reshape(Bg, n * 3)  # (B_g, d)
        w = dF[atoms].reshape(Bg, n * 3)  # (B_g, d)
        c = scale_b[frames]
        loss = rao_blackwell_hvp_loss(Hv, T1v, HdF, w, beta_b[frames], cov_weight, c, validate=validate)  # (B_g,)
        if stabiliser > 0 and cov_weight > 0:
            z = zdir[atoms].reshape(Bg, n * 3)  # (B_g, d)
            norm = z.norm(dim=-1)  # (B_g,)
            inv = torch.where(norm > 0, 1.0 / torch.where(norm > 0, norm, 1.0), 0.0)
            q = torch.einsum("bkd,bd->bk", Hv, z) * inv[:, None]  # (B_g, k)  ẑᵀ H v_j
            exact = (HdF**2).sum(-1) * inv**2  # ‖H ẑ‖²
            loss = loss + stabiliser * (exact - c * (q**2).mean(-1))
        per_frame = per_frame.index_copy(0, frames, loss)
    return per_frame.mean()


# ----------------------------------------------------------------------------- normalisation


def hvp_target_norms(term1: torch.Tensor, forces: torch.Tensor, probes: torch.Tensor,
                     beta: torch.Tensor | float, cov_weight: float,
                     scale: torch.Tensor | float,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame HVP loss of a model with zero outputs: ``c · mean_k ‖h(v_k)‖²`` (the ``hvp_norm``
    summand), with Term 2 evaluated on the data: ``h(v) = T1 v − γ β P f (P f · v)``.

    A zero model has ``F_θ = 0``, so ``dF = P f``: the same convention as ``force_norm =
    mean ‖P f‖²`` (the FM loss of a zero model). The probe expectation is
    ``‖T1 − γβ P f P fᵀ‖_F² = ‖T1‖_F² − 2γβ P fᵀ T1 P f + γ²β²‖P f‖⁴``; with γ = 0 it is the
    Term-1-only norm. Computed by :func:`hessid.hvp_loss.per_frame_hvp_loss` with zero HVPs;
    with ``positions``, the loss of the bond-projected residual ``c · mean_k ‖P⊥ h(v_k)‖²``
    (``hvp_project_bonds``, :func:`project_out_bonds`).

    Args:
        term1: ``T1 v``, (B, k, n, 3) kcal/mol/Å².
        forces: P f, (B, n, 3) kcal/mol/Å.
        probes: v, (B, k, n, 3) (the probes ``term1`` was computed along).
        beta: mol/kcal, float or (B,).  cov_weight: γ ∈ [0, 1].
        scale: probe scale c, float or (B,).
        positions: None, or the frames' CG positions (B, n, 3) Å for the bond projection.

    Returns:
        (B,) float64, (kcal/mol/Å²)².

    Raises:
        ValueError: shapes disagree, γ outside [0, 1], β or c not positive.
    """
    t1 = torch.as_tensor(term1, dtype=torch.float64)
    if positions is not None:
        R = torch.as_tensor(positions, dtype=torch.float64)
        B, k, n = t1.shape[:3]
        v = torch.as_tensor(probes, dtype=torch.float64).reshape(B, k, 3 * n)
        w = torch.as_tensor(forces, dtype=torch.float64).reshape(B, 3 * n)
        if not 0.0 <= cov_weight <= 1.0:
            raise ValueError(f"cov_weight must lie in [0, 1], got {cov_weight}")
        s = cov_weight * torch.as_tensor(beta, dtype=torch.float64).expand(B)
        h = t1.reshape(B, k, 3 * n) - (s[:, None] * (v @ w[:, :, None])[..., 0])[..., None] * w[:, None]
        c = torch.as_tensor(scale, dtype=torch.float64).expand(B)
        return c * (_project_dense(h, R) ** 2).sum(-1).mean(-1)
    return per_frame_hvp_loss(torch.zeros_like(t1), t1, torch.as_tensor(forces, dtype=torch.float64),
                              torch.as_tensor(probes, dtype=torch.float64), beta, cov_weight, scale)


def hessian_target_norms(blocks: torch.Tensor, forces: torch.Tensor, beta: torch.Tensor | float,
                         cov_weight: float) -> torch.Tensor:
    """Per-frame full-Hessian loss of a zero model: ``‖T1 − γ β P f P fᵀ‖_F²`` (the
    ``hessian_norm`` summand; as :func:`hvp_target_norms`, exact instead of probed).

    Args:
        blocks: T1, (B, 3n, 3n) kcal/mol/Å².  forces: P f, (B, n, 3) kcal/mol/Å.
        beta: mol/kcal, float or (B,).  cov_weight: γ ∈ [0, 1].

    Returns:
        (B,) float64, (kcal/mol/Å²)².

    Raises:
        ValueError: γ outside [0, 1].
    """
    if not 0.0 <= cov_weight <= 1.0:
        raise ValueError(f"cov_weight must lie in [0, 1], got {cov_weight}")
    t1 = torch.as_tensor(blocks, dtype=torch.float64)
    w = torch.as_tensor(forces, dtype=torch.float64).reshape(t1.shape[0], -1)
    s = cov_weight * torch.as_tensor(beta, dtype=torch.float64).expand(t1.shape[0])
    return ((t1 - s[:, None, None] * w[:, :, None] * w[:, None, :]) ** 2).sum((-1, -2))


# ----------------------------------------------------------------------------- bond projection


def _bond_basis(R: torch.Tensor) -> torch.Tensor:
    """Bond-stretch directions of single chains: R (B, n, 3) → (B, n−1, 3n), row a the unit
    vector that stretches bond (a, a+1): ``(−u_a at bead a, +u_a at bead a+1)/√2``."""
    B, n, _ = R.shape
    u = R[:, 1:] - R[:, :-1]  # (B, n−1, 3)
    u = u / u.norm(dim=-1, keepdim=True)
    basis = R.new_zeros(B, max(n - 1, 0), n, 3)
    a = torch.arange(n - 1, device=R.device)
    basis[:, a, a] = -u / 2**0.5
    basis[:, a, a + 1] = u / 2**0.5
    return basis.reshape(B, max(n - 1, 0), 3 * n)


def _project_dense(x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``P⊥ x`` per frame: x (B, m, 3n) (any graph kept), R (B, n, 3) → (B, m, 3n)."""
    b = _bond_basis(R.detach().to(x.dtype))  # (B, nb, d)
    if b.shape[1] == 0:
        return x
    gram = b @ b.transpose(1, 2)  # (B, nb, nb), tridiagonal, positive definite
    coef = torch.linalg.solve(gram, b @ x.transpose(1, 2))  # (B, nb, m)
    return x - (b.transpose(1, 2) @ coef).transpose(1, 2)


def bond_directions(positions: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Unit bond-stretch directions of graph-batched single chains, in the 3n-space of each frame.

    Bond (i, i+1) of a frame (the chain bonds of
    :func:`~hessid.training.learning.priors.chain_indices`, the dataset's ``cg/bonds``) with
    ``u = (R_{i+1} − R_i)/|R_{i+1} − R_i|`` has direction ``b = (−u at bead i, +u at bead
    i+1)/√2``: moving along b changes that bond length at first order and no other.

    Args:
        positions: (A, 3) Å.  batch: (A,) int64 frame index, non-decreasing.

    Returns:
        (nb, A, 3), dimensionless unit vectors, zero outside their frame; nb = Σ_t (n_t − 1).
    """
    pos = positions.detach()
    i = torch.nonzero(batch[1:] == batch[:-1]).reshape(-1)  # (nb,) bonds (i, i+1), same frame
    u = pos[i + 1] - pos[i]
    u = u / (u.norm(dim=-1, keepdim=True) * 2**0.5)  # (nb, 3)
    out = pos.new_zeros(i.shape[0], *pos.shape)  # (nb, A, 3)
    rows = torch.arange(i.shape[0], device=pos.device)
    out[rows, i], out[rows, i + 1] = -u, u
    return out


def project_out_bonds(x: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Project the bond-stretch directions out of per-bead vectors: ``P⊥ x`` per frame.

    ``P⊥ = I − B (BᵀB)⁻¹ Bᵀ`` with B (3n, n−1) the bond directions of the frame
    (:func:`bond_directions`; adjacent bonds share a bead, so they are independent but not
    orthogonal and the Gram matrix is solved). ``P⊥`` is the orthogonal projector onto the
    complement of the bond-stretch subspace: ``P⊥ b = 0`` for every bond direction and
    ``P⊥ y = y`` for y orthogonal to all of them. Used on the HVP residual
    ``(H_θ − target) v`` (``LossConfig.hvp_project_bonds``): the stiff bond curvature, which the
    prior fits, then carries no weight in the HVP loss. Positions are detached (the projector
    is a constant of the frame); ``x`` keeps its graph.

    Args:
        x: (..., A, 3), any unit (e.g. kcal/mol/Å²).
        positions: (A, 3) Å.  batch: (A,) int64 frame index, non-decreasing.

    Returns:
        (..., A, 3), the unit of x.

    Raises:
        ValueError: x's trailing shape is not positions' shape.
    """
    if x.shape[-2:] != positions.shape:
        raise ValueError(f"x {tuple(x.shape)} must end with positions' shape {tuple(positions.shape)}")
    lead = x.shape[:-2]
    flat = x.reshape(-1, *positions.shape)  # (m, A, 3)
    m = flat.shape[0]
    out = torch.zeros_like(flat)
    for frames, atoms, n in _frames_by_size(batch, batch_layout(batch).n_graphs):
        Bg = frames.shape[0]
        R = positions[atoms].reshape(Bg, n, 3)
        xs = flat[:, atoms].reshape(m, Bg, n * 3).transpose(0, 1)  # (B_g, m, d)
        ps = _project_dense(xs, R).transpose(0, 1).reshape(m, Bg * n, 3)
        out = out.index_copy(1, atoms, ps)
    return out.reshape(*lead, *positions.shape)
