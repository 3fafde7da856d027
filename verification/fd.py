"""Finite-difference cross-checks with measured convergence order (docs/identities.md §5, §7.5).

Two jobs:

* Term 1 of the per-frame HVP target is computed in the data pipeline by central differences of AA
  forces, ``∇²H u ≈ −[f(r + εu) − f(r − εu)]/(2ε)`` (docs/identities.md, eq. (5.3), error O(ε²)).
  :func:`central_difference_hvp` is that formula; :func:`hvp_convergence` compares it with the
  autograd HVP over a ladder of steps and fits the convergence order (2 for central differences).
* The exact ground truth of ``hessid verify`` is the quadrature free energy differentiated by
  6th-order central differences; :func:`fd6_gradient_and_hessian` (re-exported from the core)
  and :func:`fd6_convergence` measure that stencil's order (6) on any smooth function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from hessid.quadrature import fd6_gradient_and_hessian, potential_forces

__all__ = [
    "central_difference_hvp",
    "autograd_hvp",
    "convergence_order",
    "hvp_convergence",
    "fd6_gradient_and_hessian",
    "fd6_convergence",
]

DTYPE = torch.float64


def central_difference_hvp(
    force_fn: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor, u: torch.Tensor, eps: float
) -> torch.Tensor:
    """Term-1 HVP from AA forces by central differences (docs/identities.md, eq. (5.3)).

    ``∇²H u ≈ −[f(r + εu) − f(r − εu)] / (2ε)``, error ``O(ε² |∂³f|)``.

    Args:
        force_fn: AA forces f = −∇H, (B, D) Å → (B, D) kcal/mol/Å.
        r: configurations, (B, D) or (D,), Å, float64.
        u: displacement directions, same shape as r, dimensionless (or Å per unit ε).
        eps: step, Å (> 0).

    Returns:
        ∇²H u, same shape as r, kcal/mol/Å² (× unit of u).

    Raises:
        ValueError: eps is not positive or shapes differ.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    r = torch.as_tensor(r, dtype=DTYPE)
    u = torch.as_tensor(u, dtype=DTYPE)
    if r.shape != u.shape:
        raise ValueError(f"r {tuple(r.shape)} and u {tuple(u.shape)} must have the same shape")
    squeeze = r.dim() == 1
    r2, u2 = (r[None], u[None]) if squeeze else (r, u)
    out = -(force_fn(r2 + eps * u2) - force_fn(r2 - eps * u2)) / (2.0 * eps)
    return out[0] if squeeze else out


def autograd_hvp(potential: Callable, r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Exact ∇²H u by double backprop (reference for :func:`central_difference_hvp`).

    Args:
        potential: H, (B, D) → (B,), kcal/mol.
        r, u: (B, D) or (D,), float64.

    Returns:
        ∇²H u, shape of r, kcal/mol/Å² (× unit of u).
    """
    r = torch.as_tensor(r, dtype=DTYPE)
    u = torch.as_tensor(u, dtype=DTYPE)
    squeeze = r.dim() == 1
    x = (r[None] if squeeze else r).detach().clone().requires_grad_(True)
    uu = u[None] if squeeze else u
    (g,) = torch.autograd.grad(potential(x).sum(), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * uu).sum(), x)
    return hv[0].detach() if squeeze else hv.detach()


def convergence_order(steps: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of ln(error) against ln(step): the measured convergence order.

    Args:
        steps: step sizes (> 0).
        errors: errors at those steps (> 0).

    Returns:
        p with error ≈ C·stepᵖ.

    Raises:
        ValueError: fewer than two points, or a non-positive step or error.
    """
    h = np.asarray(steps, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if h.shape != e.shape or h.size < 2:
        raise ValueError("need at least two (step, error) pairs of equal length")
    if not (np.all(h > 0) and np.all(e > 0)):
        raise ValueError(f"steps and errors must be positive, got {h.tolist()}, {e.tolist()}")
    return float(np.polyfit(np.log(h), np.log(e), 1)[0])


def hvp_convergence(
    potential: Callable, r: torch.Tensor, u: torch.Tensor,
    steps: Sequence[float] = (0.08, 0.04, 0.02, 0.01),
) -> dict:
    """Measured order of the central-difference HVP vs autograd (docs/identities.md, eq. (5.3)).

    Args:
        potential: H, (B, D) → (B,), kcal/mol.
        r: configuration(s), (D,) or (B, D), Å.
        u: direction(s), same shape.
        steps: ε ladder, Å; choose it where truncation (∝ ε²) dominates rounding (∝ 1/ε).

    Returns:
        dict with ``steps``, ``errors`` (max abs error, kcal/mol/Å²) and ``order`` (≈ 2).
    """
    exact = autograd_hvp(potential, r, u)

    def force_fn(x):
        return potential_forces(potential, x)

    errors = [float((central_difference_hvp(force_fn, r, u, h) - exact).abs().max())
              for h in steps]
    return {"steps": list(steps), "errors": errors, "order": convergence_order(steps, errors)}


def fd6_convergence(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
    exact_gradient: torch.Tensor, exact_hessian: torch.Tensor,
    steps: Sequence[float] = (0.2, 0.15, 0.1, 0.075),
) -> dict:
    """Measured orders of the 6th-order stencils of :func:`fd6_gradient_and_hessian`.

    Args:
        fn: batched scalar function (B, d) → (B,).
        x: point (d,).
        exact_gradient: (d,); exact_hessian: (d, d) — closed forms at x.
        steps: h ladder where truncation (∝ h⁶) dominates rounding.

    Returns:
        dict with ``steps``, ``gradient_errors``, ``hessian_errors``, ``gradient_order`` and
        ``hessian_order`` (both ≈ 6).
    """
    ge, he = [], []
    for h in steps:
        g, H = fd6_gradient_and_hessian(fn, x, h)
        ge.append(float((g - exact_gradient).abs().max()))
        he.append(float((H - exact_hessian).abs().max()))
    return {"steps": list(steps), "gradient_errors": ge, "hessian_errors": he,
            "gradient_order": convergence_order(steps, ge),
            "hessian_order": convergence_order(steps, he)}
