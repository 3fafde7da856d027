"""E-F, E-F-HVP and E-F-H losses of atomistic curvature training
(docs/atomistic_learning.md, "Losses"; Projected Hessian Learning, Rodriguez et al. 2026).

A batch holds B molecules (n_b atoms, d_b = 3 n_b) in graph layout. Residuals
``ΔE_b = E_θ − E``, ``ΔF_b = F_θ − F``, ``Δ_b = H_θ − H`` (d_b × d_b). MSE forms:

    L_E   = (1/B) Σ_b ΔE_b²
    L_F   = Σ_b ‖ΔF_b‖² / Σ_b d_b                         (per force component)
    L_H   = Σ_b ‖Δ_b‖²_F / Σ_b d_b²                        (per Hessian element)
    L_HVP = Σ_b (c_b/k) Σ_j ‖Δ_b v_bj‖² / Σ_b d_b²         (c_b = probe_scale(kind, d_b))

Unbiasedness: conditional on the batch, ``E_v[c_b ‖Δ_b v‖²] = ‖Δ_b‖²_F`` for each molecule
(:mod:`hessid.training.atomistic.probes`), the denominators do not depend on the probes, so
``E_v[L_HVP] = L_H`` exactly, whatever the mix of sizes; so are the θ-gradients (the loss
is linear in the per-molecule terms). Without the per-molecule c_b, unit-sphere or one-hot
probes weight molecule b by 1/d_b: biased towards small molecules (tested).

Each term is optionally divided by its target's second moment on the training set
(:class:`TargetScales`: Var E, mean F component², mean H element²), so the weights compare
dimensionless numbers. ``form="rmse_sum"`` is hippynn's
``RMSE_E + w_F RMSE_F + w_H RMSE_HVP`` (defaults 1, 0.30, 0.09; RMSE_HVP over raw HVP
components, no probe scale), only to reproduce PHL's example: a square root of a minibatch
average is not unbiased for anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from hessid.training.atomistic.probes import AtomisticProbeSpec

__all__ = [
    "HIPPYNN_WEIGHTS",
    "LOSS_MODES",
    "LossConfig",
    "TargetScales",
    "energy_mse",
    "force_mse",
    "hessian_mse",
    "hvp_mse",
    "hvp_rmse_raw",
]

LOSS_MODES = ("ef", "ef_hvp", "ef_h")
#: hippynn's PHL example weights (energy, force, HVP) of the RMSE sum
HIPPYNN_WEIGHTS = (1.0, 0.30, 0.09)


@dataclass
class LossConfig:
    """The training loss.

    Attributes:
        mode: ``ef`` (energies + forces), ``ef_hvp`` (+ HVPs along probes), ``ef_h`` (+ full
            Hessians).
        form: ``mse`` (normalised MSE sum, unbiased for the full-Hessian loss) or ``rmse_sum``
            (hippynn's RMSE_E + w_F RMSE_F + w_H RMSE_HVP; reproduction only).
        energy_weight: w_E (None: 1).
        force_weight: w_F (None: 1 for mse, 0.30 for rmse_sum).
        curvature_weight: w_H of the HVP or Hessian term (None: 1 for mse, 0.09 for rmse_sum).
        normalise: divide each MSE term by its target second moment on the training set.
        probe_kind: ``one_hot``, ``random`` (unit sphere) or ``gaussian``.
        n_probes: k probes per molecule and step.
        probe_regime: ``fresh`` (redrawn every step) or ``fixed`` (per structure id).
        probe_seed: seed of the probes.
    """

    mode: Literal["ef", "ef_hvp", "ef_h"] = "ef"
    form: Literal["mse", "rmse_sum"] = "mse"
    energy_weight: float | None = None
    force_weight: float | None = None
    curvature_weight: float | None = None
    normalise: bool = True
    probe_kind: str = "random"
    n_probes: int = 1
    probe_regime: Literal["fresh", "fixed"] = "fresh"
    probe_seed: int = 0

    def __post_init__(self):
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss.mode must be one of {LOSS_MODES}, got {self.mode!r}")
        if self.form not in ("mse", "rmse_sum"):
            raise ValueError(f"loss.form must be 'mse' or 'rmse_sum', got {self.form!r}")
        for name in ("energy_weight", "force_weight", "curvature_weight"):
            w = getattr(self, name)
            if w is not None and not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"loss.{name} must be >= 0, got {w}")
        self.probe_spec()  # validates kind, k, regime

    def weights(self) -> tuple[float, float, float]:
        """(w_E, w_F, w_H) with the form's defaults filled in."""
        defaults = HIPPYNN_WEIGHTS if self.form == "rmse_sum" else (1.0, 1.0, 1.0)
        given = (self.energy_weight, self.force_weight, self.curvature_weight)
        return tuple(d if g is None else float(g) for g, d in zip(given, defaults, strict=True))

    def probe_spec(self) -> AtomisticProbeSpec:
        return AtomisticProbeSpec(self.probe_kind, self.n_probes, self.probe_regime, self.probe_seed)


@dataclass(frozen=True)
class TargetScales:
    """Second moments of the training targets (the MSE normalisers).

    Attributes:
        energy: Var of the reference-subtracted energies, (kcal/mol)².
        force: mean squared force component, (kcal/mol/Å)².
        hessian: mean squared Hessian element, (kcal/mol/Å²)² (1 when no Hessians).
    """

    energy: float = 1.0
    force: float = 1.0
    hessian: float = 1.0


def _per_molecule(values: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """Σ over each molecule's atoms: values (..., A) → (..., B)."""
    out = torch.zeros(values.shape[:-1] + (n_molecules,), dtype=values.dtype, device=values.device)
    return out.index_add(values.ndim - 1, batch, values)


def energy_mse(model_energy: torch.Tensor, target_energy: torch.Tensor) -> torch.Tensor:
    """``L_E = (1/B) Σ_b (E_θ − E)²``; (B,) kcal/mol each → scalar (kcal/mol)².

    Raises:
        ValueError: the two energy tensors differ in shape.
    """
    if model_energy.shape != target_energy.shape:
        raise ValueError(f"energies {tuple(model_energy.shape)} vs {tuple(target_energy.shape)}")
    return ((model_energy - target_energy.to(model_energy.dtype)) ** 2).mean()


def force_mse(model_forces: torch.Tensor, target_forces: torch.Tensor) -> torch.Tensor:
    """``L_F = Σ_b ‖ΔF_b‖² / Σ_b 3 n_b``: mean over all force components of the batch.

    Args:
        model_forces, target_forces: (A, 3) kcal/mol/Å.

    Returns:
        scalar, (kcal/mol/Å)².

    Raises:
        ValueError: the two force tensors differ in shape.
    """
    if model_forces.shape != target_forces.shape:
        raise ValueError(f"forces {tuple(model_forces.shape)} vs {tuple(target_forces.shape)}")
    return ((model_forces - target_forces.to(model_forces.dtype)) ** 2).mean()


def hessian_mse(model_hessians: list[torch.Tensor], target_hessians: list[torch.Tensor]) -> torch.Tensor:
    """``L_H = Σ_b ‖H_θ,b − H_b‖²_F / Σ_b d_b²``: mean over all Hessian elements of the batch.

    Args:
        model_hessians, target_hessians: B tensors (d_b, d_b) kcal/mol/Å².

    Returns:
        scalar, (kcal/mol/Å²)².

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    if len(model_hessians) != len(target_hessians) or not model_hessians:
        raise ValueError("need one target Hessian per model Hessian (and at least one)")
    total = sum(((h - t.to(h.dtype)) ** 2).sum() for h, t in zip(model_hessians, target_hessians, strict=True))
    return total / sum(h.numel() for h in model_hessians)


def hvp_mse(model_hvp: torch.Tensor, target_hvp: torch.Tensor, scale: torch.Tensor,
            batch: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    """``L_HVP = Σ_b (c_b/k) Σ_j ‖H_θ v_bj − H_b v_bj‖² / Σ_b d_b²``, with
    ``E_v[L_HVP] = L_H`` (module docstring).

    Args:
        model_hvp: (k, A, 3) kcal/mol/Å², ``H_θ v``.
        target_hvp: (k, A, 3), ``H v`` of the reference Hessians (same probes).
        scale: (B,) c_b = probe_scale(kind, 3 n_b).
        batch: (A,) molecule index.  n_atoms: (B,) n_b.

    Returns:
        scalar, (kcal/mol/Å²)².

    Raises:
        ValueError: model HVPs and targets differ in shape.
    """
    if model_hvp.shape != target_hvp.shape:
        raise ValueError(f"HVPs {tuple(model_hvp.shape)} vs targets {tuple(target_hvp.shape)}")
    sq = ((model_hvp - target_hvp.to(model_hvp.dtype)) ** 2).sum(-1)  # (k, A)
    per_mol = _per_molecule(sq, batch, n_atoms.shape[0]).mean(0)  # (B,)  (1/k) Σ_j ‖Δ v_j‖²
    d = 3 * n_atoms.to(per_mol.dtype)
    return (scale.to(device=per_mol.device, dtype=per_mol.dtype) * per_mol).sum() / (d**2).sum()


def hvp_rmse_raw(model_hvp: torch.Tensor, target_hvp: torch.Tensor) -> torch.Tensor:
    """hippynn's RMSE over raw HVP components (no probe scale): ``sqrt(mean ‖Δ v‖²/3 per atom)``.

    Args:
        model_hvp, target_hvp: (k, A, 3) kcal/mol/Å².

    Returns:
        scalar, kcal/mol/Å².
    """
    return torch.sqrt(((model_hvp - target_hvp.to(model_hvp.dtype)) ** 2).mean())
