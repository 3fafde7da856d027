"""Model-Hessian check: a model's fast Hessian-vector products against its autograd Hessian
(docs/atomistic_learning.md, "Model-Hessian check").

Generic over the model: the caller passes a float64 energy function of flat coordinates and
the HVP implementation under test. Verification does not import the training layer; a
training module builds the model and calls :func:`check_model_hvp`
(``hessid.training.atomistic.check``), and ``hessid verify --model-hessian`` imports that
module by name only when asked (:data:`MODEL_HESSIAN_PROVIDER`), the way :mod:`hessid.cli`
imports commands, so ``hessid verify`` keeps working with only the core installed.

Rows (each a :class:`~hessid.verification.results.CheckResult`):

* ``HVP vs autograd Hessian``: ``max|H v − (∇²E) v| / max|(∇²E) v|`` ≤ 1e-10 (float64
  round-off of one forward and two backward passes is ~1e-14 here);
* ``Hessian symmetry``: ``‖∇²E − ∇²Eᵀ‖_max / ‖∇²E‖_max`` ≤ 1e-10;
* negative controls that must exceed the tolerance: the HVP of a geometry with one
  coordinate moved by 1e-3 Å (a model HVP evaluated at the wrong point), a central-difference
  HVP of the gradient with step 1e-3 Å (error O(h²) ≈ 1e-7: the tolerance resolves it), and
  the HVP with the force sign convention (``−H v``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessid.verification.results import CheckResult, relative_error

__all__ = ["MODEL_HESSIAN_PROVIDER", "MODEL_HESSIAN_TOLERANCE", "check_model_hvp"]

#: ``module:function`` returning the model-Hessian rows of ``hessid verify --model-hessian``
#: (imported by name: verification never imports the training layer)
MODEL_HESSIAN_PROVIDER = "hessid.training.atomistic.check:model_hessian_checks"
#: relative tolerance of the exact rows (float64)
MODEL_HESSIAN_TOLERANCE = 1e-10
_CONTROL_STEP = 1e-3  # Å


def check_model_hvp(energy: Callable[[torch.Tensor], torch.Tensor],
                    hvp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    coordinates: torch.Tensor, probes: torch.Tensor, system: str,
                    method: str = "", tolerance: float = MODEL_HESSIAN_TOLERANCE) -> list[CheckResult]:
    """Compare a model's HVPs with its autograd Hessian at one geometry, with controls.

    Args:
        energy: flat coordinates (D,) float64 Å → scalar energy (kcal/mol), differentiable twice.
        hvp: (coordinates (D,), probes (k, D)) → (k, D) HVPs, the implementation under test.
        coordinates: (D,) float64 Å.
        probes: (k, D) float64 directions.
        system: row label (molecule).
        method: row map label (the HVP path).
        tolerance: relative tolerance of the exact rows.

    Returns:
        list of CheckResult: 2 exact rows and 3 negative controls.

    Raises:
        ValueError: shapes disagree or inputs are not float64.
    """
    x = coordinates.detach()
    if x.dtype != torch.float64 or probes.dtype != torch.float64:
        raise ValueError("the model-Hessian check runs in float64")
    if x.ndim != 1 or probes.ndim != 2 or probes.shape[1] != x.shape[0]:
        raise ValueError(f"coordinates (D,) and probes (k, D) expected, got {tuple(x.shape)}, "
                         f"{tuple(probes.shape)}")
    H = torch.autograd.functional.hessian(energy, x)  # (D, D)
    ref = probes @ H.T  # (k, D)
    fast = hvp(x, probes)
    label = method or "hvp"
    rows = [
        CheckResult(system, label, "HVP vs autograd Hessian", relative_error(fast, ref), tolerance,
                    relative_error(fast, ref) <= tolerance, f"k={probes.shape[0]}, D={x.shape[0]}"),
        CheckResult(system, label, "Hessian symmetry", relative_error(H, H.T), tolerance,
                    relative_error(H, H.T) <= tolerance),
    ]
    moved = x.clone()
    moved[0] += _CONTROL_STEP
    wrong_point = hvp(moved, probes)

    def grad(y):
        y = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(y), y)
        return g

    fd = torch.stack([(grad(x + _CONTROL_STEP * v) - grad(x - _CONTROL_STEP * v)) / (2 * _CONTROL_STEP)
                      for v in probes])
    for quantity, value in (("neg: HVP at a geometry moved 1e-3 Å", wrong_point),
                            ("neg: central-difference HVP, h = 1e-3 Å", fd),
                            ("neg: force sign convention (−H v)", -fast)):
        err = relative_error(value, ref)
        rows.append(CheckResult(system, label, quantity, err, tolerance, err > tolerance,
                                negative_control=True))
    return rows
