"""One evaluation of the training loss on a batch: model pass, probes, E-F / E-F-HVP / E-F-H
terms combined per :class:`~hessid.training.atomistic.losses.LossConfig`
(docs/atomistic_learning.md, "Losses").
"""

from __future__ import annotations

import torch

from hessid.training.atomistic.frames import AtomisticBatch
from hessid.training.atomistic.losses import (
    LossConfig,
    TargetScales,
    energy_mse,
    force_mse,
    hessian_mse,
    hvp_mse,
    hvp_rmse_raw,
)
from hessid.training.atomistic.model import AtomisticPotential
from hessid.training.atomistic.probes import molecule_probes

__all__ = ["batch_loss"]


def batch_loss(model: AtomisticPotential, batch: AtomisticBatch, cfg: LossConfig,
               scales: TargetScales | None = None, step: int = 0,
               create_graph: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its parts.

    ``mse``: ``w_E L_E/σ_E² + w_F L_F/σ_F² + w_H L_{HVP or H}/σ_H²`` (σ² = 1 without
    ``normalise``); ``rmse_sum``: ``w_E √L_E + w_F √L_F + w_H RMSE_{HVP or H}``.

    Args:
        model: the potential (its dtype sets the batch's).
        batch: structures with targets (Hessians needed for ``ef_hvp`` and ``ef_h``).
        cfg: the loss.
        scales: target second moments (None: 1).
        step: optimisation step (seeds fresh probes).
        create_graph: keep the θ-graph (False: evaluation only).

    Returns:
        (scalar loss with the θ-graph when ``create_graph``, parts: ``energy_mse``,
        ``force_mse`` and, with curvature, ``hvp_mse`` or ``hessian_mse``, in target units²).

    Raises:
        ValueError: curvature asked of a batch without Hessians.
    """
    scales = scales or TargetScales()
    w_e, w_f, w_h = cfg.weights()
    target_e = (batch.energy - model.reference(batch.species, batch.batch, batch.n_molecules)).to(model.dtype)
    parts: dict[str, float] = {}
    if cfg.mode == "ef_h":
        out, hess = model.hessians(batch.species, batch.positions, batch.batch, create_graph=create_graph)
    elif cfg.mode == "ef_hvp":
        probes, c = molecule_probes(cfg.probe_spec(), batch.structure_id, batch.batch, step, model.dtype)
        out = model.energy_forces_hvp(batch.species, batch.positions, batch.batch, probes,
                                      create_graph=create_graph, n_molecules=batch.n_molecules)
    else:
        out = model.energy_forces_hvp(batch.species, batch.positions, batch.batch, None,
                                      create_graph=create_graph, n_molecules=batch.n_molecules)
    l_e = energy_mse(out.energy, target_e)
    l_f = force_mse(out.forces, batch.forces)
    parts["energy_mse"], parts["force_mse"] = float(l_e.detach()), float(l_f.detach())
    l_h = raw_h = None
    if cfg.mode == "ef_h":
        if batch.hessians is None:
            raise ValueError("loss.mode=ef_h needs reference Hessians")
        l_h = hessian_mse(hess, batch.hessians)
        raw_h = torch.sqrt(l_h)
        parts["hessian_mse"] = float(l_h.detach())
    elif cfg.mode == "ef_hvp":
        target_hvp = batch.hessian_times(probes)
        l_h = hvp_mse(out.hvp, target_hvp, c, batch.batch, batch.n_atoms)
        raw_h = hvp_rmse_raw(out.hvp, target_hvp)
        parts["hvp_mse"] = float(l_h.detach())
    if cfg.form == "rmse_sum":
        loss = w_e * torch.sqrt(l_e) + w_f * torch.sqrt(l_f)
        if raw_h is not None:
            loss = loss + w_h * raw_h
    else:
        if cfg.normalise:
            loss = w_e * l_e / scales.energy + w_f * l_f / scales.force
        else:
            loss = w_e * l_e + w_f * l_f
        if l_h is not None:
            loss = loss + w_h * l_h / (scales.hessian if cfg.normalise else 1.0)
    parts["loss"] = float(loss.detach())
    return loss, parts
