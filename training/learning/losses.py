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

Target normalisation: Cα Term-1 blocks are ~10³ kcal/mol/Å², far above an untrained model's
curvature, while forces are ~10 kcal/mol/Å. Each term is divided by the mean squared norm of
its targets over the training set (``force_norm``, ``hvp_norm``, ``hessian_norm``), so every
term starts near 1 for a model with small outputs and λ_F, λ_H weigh comparable numbers.
"""

from __future__ import annotations

import torch

__all__ = [
    "energy_loss",
    "force_matching_loss",
    "hessian_loss",
    "hessian_targets",
    "hvp_loss",
    "hvp_targets",
    "per_frame_sum",
]


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
