"""Rao–Blackwellised HVP-matching loss (docs/variance_reduction.md, part 1).

The per-frame HVP loss of docs/identities.md §5 with the covariance target ``h(v) = T1 v − γβ dF (dF·v)``,

    ℓ = (c/k) Σ_j ‖H_θ v_j − T1 v_j + γβ dF (dF·v_j)‖²,                              (1)

contains the probe-noisy cross term ``2γβ (c/k) Σ_j (dF·v_j) dFᵀ (H_θ − T1) v_j``. Replacing its
θ-dependent part by its probe expectation (probes with ``E[v vᵀ] = I/c``) gives

    L_RB = (c/k) Σ_j ‖(H_θ − T1) v_j‖² + 2γβ dFᵀ H_θ dF,                             (2)

whose θ-gradient has the same probe expectation as the gradient of (1) for every probe kind of
:mod:`hessid.probes` (proof in docs/variance_reduction.md). It needs one extra model HVP,
along the detached residual ``dF``. Its value differs from the probe expectation of (1) by the
θ-independent ``γ²β²‖dF‖⁴ − 2γβ dFᵀ T1 dF``, so it may be negative; with fixed probes and
k < d it is not bounded below in H_θ (the caveat is stated and tested).

Shapes: B frames, k probes per frame, d = 3n CG coordinates (trailing (n, 3) axes are
flattened). Units: H_θ v and T1 v in kcal/mol/Å² (× unit of v, dimensionless here), dF in
kcal/mol/Å, β in mol/kcal, γ dimensionless; every loss is in (kcal/mol/Å²)².
"""

from __future__ import annotations

import numpy as np
import torch

from hessid.probes import PROBE_KINDS, trace_estimator_variances

__all__ = [
    "per_frame_hvp_loss",
    "rao_blackwell_hvp_loss",
    "expected_hvp_losses",
    "hvp_gradient_probe_variance",
]


# ====================================================================== validation
def _check_gamma(gamma) -> float:
    g = float(gamma)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"gamma (cov_weight) must lie in [0, 1], got {gamma!r}")
    return g


def _per_frame(x, B: int, like: torch.Tensor, name: str, positive: bool, check_values: bool = True) -> torch.Tensor:
    """A scalar or (B,) quantity as a (B,) tensor in the dtype/device of ``like``; with
    ``check_values`` its entries are checked finite and positive (non-negative), which reads
    them on the host (a device sync on GPUs)."""
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"{name} must be a scalar or have shape ({B},), got {tuple(t.shape)}")
    if not check_values:
        return t
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite entries")
    bad = (t <= 0) if positive else (t < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}, got {t.tolist()}")
    return t


def _flat_probe_axis(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape (B, k, d) or (B, k, n, 3), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], -1)  # (B, k, d)


def _flat_frame_axis(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (B, d) or (B, n, 3), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)  # (B, d)


def _check_pair(model_hvp: torch.Tensor, term1_hvp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if model_hvp.shape != term1_hvp.shape:
        raise ValueError(
            f"model HVPs {tuple(model_hvp.shape)} and Term-1 HVPs {tuple(term1_hvp.shape)} differ"
        )
    return _flat_probe_axis(model_hvp, "model_hvp"), _flat_probe_axis(term1_hvp, "term1_hvp")


# ====================================================================== losses
def per_frame_hvp_loss(
    model_hvp: torch.Tensor,
    term1_hvp: torch.Tensor,
    force_residual: torch.Tensor,
    probes: torch.Tensor,
    beta,
    gamma: float,
    scale,
) -> torch.Tensor:
    """Current (per-frame estimator) HVP loss of every frame, equation (1) (docs/identities.md §5).

    ``ℓ_t = (c_t/k) Σ_j ‖H_θ v_tj − (T1 v_tj − γ β_t dF_t (dF_t·v_tj))‖²``, dF detached.
    The same number as ``scale · mean_j ‖H_θ v − hessid.identities.hvp_target_linear(...)‖²``.

    Args:
        model_hvp: H_θ v, (B, k, d) or (B, k, n, 3), kcal/mol/Å², with the θ-graph.
        term1_hvp: T1 v = P ∇²H Pᵀ v (precomputed), same shape, kcal/mol/Å² (no graph used).
        force_residual: dF = P f − F_θ, (B, d) or (B, n, 3), kcal/mol/Å (detached here).
        probes: v, same shape as model_hvp, dimensionless.
        beta: 1/(k_B T), mol/kcal, scalar or (B,).
        gamma: γ ∈ [0, 1], weight of the covariance term (0 = FM+AA, 1 = FM+AA+Cov).
        scale: probe scale c (:func:`hessid.probes.probe_scale`), scalar or (B,).

    Returns:
        (B,) per-frame losses, (kcal/mol/Å²)².

    Raises:
        ValueError: shapes disagree, γ outside [0, 1], beta or scale not positive.
    """
    Hv, T1v = _check_pair(model_hvp, term1_hvp)
    B, k, d = Hv.shape
    if probes.shape != model_hvp.shape:
        raise ValueError(f"probes {tuple(probes.shape)} differ from model HVPs {tuple(model_hvp.shape)}")
    dF = _flat_frame_axis(force_residual, "force_residual").detach()
    if dF.shape != (B, d):
        raise ValueError(f"force_residual must have {B} frames of {d} components, got {tuple(force_residual.shape)}")
    g = _check_gamma(gamma)
    beta_b = _per_frame(beta, B, Hv, "beta", positive=True)
    c = _per_frame(scale, B, Hv, "scale", positive=True)
    v = _flat_probe_axis(probes, "probes").to(Hv.dtype)
    dot = torch.einsum("bkd,bd->bk", v, dF)  # (B, k)  dF·v
    target = T1v.detach() - (g * beta_b)[:, None, None] * dot[..., None] * dF[:, None, :]  # (B, k, d)
    sq = ((Hv - target) ** 2).sum(-1)  # (B, k)
    return c * sq.mean(-1)  # (B,)


def rao_blackwell_hvp_loss(
    model_hvp: torch.Tensor,
    term1_hvp: torch.Tensor,
    model_hvp_residual: torch.Tensor,
    force_residual: torch.Tensor,
    beta,
    gamma: float,
    scale,
    validate: bool = True,
) -> torch.Tensor:
    """Rao–Blackwellised HVP loss of every frame, equation (2) (docs/variance_reduction.md).

    ``L_t = (c_t/k) Σ_j ‖H_θ v_tj − T1 v_tj‖² + 2 γ β_t dF_tᵀ H_θ dF_t``, dF detached.

    For probes with ``E[v vᵀ] = I/c`` (every kind in :data:`hessid.probes.PROBE_KINDS`) the
    probe expectation of ``∇_θ L_t`` equals that of ``∇_θ ℓ_t`` (:func:`per_frame_hvp_loss`),
    and both expected losses have the same minimiser ``H_θ = T1 − γβ dF dFᵀ``. The values
    differ by a θ-independent ``γ²β²‖dF‖⁴ − 2γβ dFᵀT1 dF`` in expectation; ``L_t`` can be
    negative. With γ = 0 it equals ``ℓ_t`` exactly.

    Args:
        model_hvp: H_θ v, (B, k, d) or (B, k, n, 3), kcal/mol/Å², with the θ-graph.
        term1_hvp: T1 v, same shape, kcal/mol/Å².
        model_hvp_residual: H_θ dF, the model HVP along the detached residual, (B, d) or
            (B, n, 3), kcal/mol/Å² × kcal/mol/Å = (kcal/mol)²/Å³, with the θ-graph.
        force_residual: dF = P f − F_θ, (B, d) or (B, n, 3), kcal/mol/Å (detached here).
        beta: mol/kcal, scalar or (B,).
        gamma: γ ∈ [0, 1].
        scale: probe scale c, scalar or (B,).
        validate: check that β and c are finite and positive (reads their values on the
            host: a device sync on GPUs). A caller that built them on the host and checked them
            there (the trainer's batch collation) passes False; shapes are always checked.

    Returns:
        (B,) per-frame losses, (kcal/mol/Å²)² (β dFᵀ H dF has these units too).

    Raises:
        ValueError: shapes disagree, γ outside [0, 1], beta or scale not positive (with
            ``validate``).
    """
    Hv, T1v = _check_pair(model_hvp, term1_hvp)
    B, k, d = Hv.shape
    dF = _flat_frame_axis(force_residual, "force_residual").detach()
    HdF = _flat_frame_axis(model_hvp_residual, "model_hvp_residual")
    if dF.shape != (B, d) or HdF.shape != (B, d):
        raise ValueError(
            f"force_residual {tuple(force_residual.shape)} and model_hvp_residual "
            f"{tuple(model_hvp_residual.shape)} must hold {B} frames of {d} components"
        )
    g = _check_gamma(gamma)
    beta_b = _per_frame(beta, B, Hv, "beta", positive=True, check_values=validate)
    c = _per_frame(scale, B, Hv, "scale", positive=True, check_values=validate)
    sq = ((Hv - T1v.detach()) ** 2).sum(-1)  # (B, k)
    cross = (dF.to(HdF.dtype) * HdF).sum(-1)  # (B,)  dFᵀ H_θ dF
    return c * sq.mean(-1) + 2.0 * g * beta_b * cross  # (B,)


def expected_hvp_losses(
    model_hessian: torch.Tensor,
    term1: torch.Tensor,
    force_residual: torch.Tensor,
    beta,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe expectations of the two losses, in closed form from dense matrices.

    With ``A = H_θ − T1`` and ``w = dF`` (detached), for any probes with ``E[v vᵀ] = I/c``:

    * ``E ℓ = ‖A + γβ w wᵀ‖_F² = ‖A‖_F² + 2γβ wᵀAw + γ²β²‖w‖⁴``
    * ``E L_RB = ‖A‖_F² + 2γβ wᵀ H_θ w``

    (docs/variance_reduction.md, eq. (3)–(4)). Differentiable in ``model_hessian``.

    Args:
        model_hessian: H_θ, (B, d, d), kcal/mol/Å² (any graph is kept).
        term1: T1 = P ∇²H Pᵀ of each frame, (B, d, d), kcal/mol/Å².
        force_residual: dF, (B, d), kcal/mol/Å.
        beta: mol/kcal, scalar or (B,).
        gamma: γ ∈ [0, 1].

    Returns:
        (E ℓ, E L_RB), each (B,), (kcal/mol/Å²)².

    Raises:
        ValueError: shapes disagree, γ outside [0, 1] or beta not positive.
    """
    if model_hessian.ndim != 3 or term1.shape != model_hessian.shape or model_hessian.shape[1] != model_hessian.shape[2]:
        raise ValueError(
            f"model_hessian and term1 must be (B, d, d) of the same shape, got "
            f"{tuple(model_hessian.shape)} and {tuple(term1.shape)}"
        )
    B, d, _ = model_hessian.shape
    w = _flat_frame_axis(force_residual, "force_residual").detach().to(model_hessian.dtype)
    if w.shape != (B, d):
        raise ValueError(f"force_residual must have shape ({B}, {d}), got {tuple(force_residual.shape)}")
    s = _check_gamma(gamma) * _per_frame(beta, B, model_hessian, "beta", positive=True)  # (B,)
    A = model_hessian - term1.detach()
    wwT = torch.einsum("ba,bc->bac", w, w)  # (B, d, d)
    current = ((A + s[:, None, None] * wwT) ** 2).sum((-1, -2))
    rb = (A**2).sum((-1, -2)) + 2.0 * s * torch.einsum("ba,bac,bc->b", w, model_hessian, w)
    return current, rb


def hvp_gradient_probe_variance(kind: str, residual, hessian_derivatives, k: int = 1) -> np.ndarray:
    """Exact probe variance of each θ-gradient component of an HVP loss, for one frame.

    Both losses have a probe-dependent part ``(c/k) Σ_j ‖R v_j‖²`` whose residual matrix
    ``R`` depends on θ only through H_θ (``∂R/∂θ_p = E_p = ∂H_θ/∂θ_p``):
    ``R = H_θ − T1 + γβ dF dFᵀ`` for (1), ``R = H_θ − T1`` for (2) (whose second term is
    probe-free). Then ``∂_p = (c/k) Σ_j v_jᵀ (2 Rᵀ E_p) v_j`` is a trace estimator of
    ``2 Rᵀ E_p`` and its variance is the docs/identities.md §6 trace-estimator variance
    (:func:`hessid.probes.trace_estimator_variance`; exact, no sampling).

    Args:
        kind: probe kind (:data:`hessid.probes.PROBE_KINDS`).
        residual: R, (d, d), kcal/mol/Å².
        hessian_derivatives: E_p = ∂H_θ/∂θ_p, (m, d, d), kcal/mol/Å² per unit of θ_p.
        k: probes per frame.

    Returns:
        (m,) float64 variances, (kcal/mol/Å²)⁴ per unit of θ_p squared.

    Raises:
        ValueError: unknown kind, shapes disagree, k < 1 or k > d for orthonormal probes.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind {kind!r} is not one of {PROBE_KINDS}")
    R = np.asarray(torch.as_tensor(residual, dtype=torch.float64).cpu())
    E = np.asarray(torch.as_tensor(hessian_derivatives, dtype=torch.float64).cpu())
    if R.ndim != 2 or R.shape[0] != R.shape[1] or E.ndim != 3 or E.shape[1:] != R.shape:
        raise ValueError(
            f"residual must be (d, d) and hessian_derivatives (m, d, d), got {R.shape} and {E.shape}"
        )
    return trace_estimator_variances(kind, 2.0 * np.matmul(R.T, E), int(k))  # (m, d, d)
