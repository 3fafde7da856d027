"""The LightningModule of a training run: :class:`CGTrainingModule` (losses, optimizer,
LR schedule, checkpoint contents)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from hessid.training.learning.configs import OptimConfig, TrainConfig
from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.hessians import full_hessian
from hessid.training.learning.losses import (
    energy_loss,
    force_matching_loss,
    hessian_loss,
    hessian_targets,
    hvp_loss,
    hvp_targets,
    project_out_bonds,
    rao_blackwell_hvp_loss_graph,
)
from hessid.training.learning.models import CGPotential
from hessid.training.learning.thermal_losses import NoiseFloors, thermal_loss
from hessid.training.learning.thermal_models import ThermalPotential

__all__ = ["CGTrainingModule"]


def _lr_lambda(cfg: OptimConfig, max_steps: int):
    """LR factor of each step: linear warm-up times constant, ``gamma_per_1000^(s/1000)`` or
    cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "exponential":
            return warm * cfg.gamma_per_1000 ** (step / 1000.0)
        frac = min(1.0, step / max(1, max_steps))
        return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    return f


class CGTrainingModule(pl.LightningModule):
    """LightningModule around a :class:`CGPotential`: the losses of docs/identities.md §5, AdamW + LR schedule.

    The loss of a batch (:meth:`compute_losses`) is
    ``λ_F L_FM / force_norm + λ_H L_curv / curv_norm + λ_E L_E / energy_norm`` where the
    curvature term ``L_curv`` is the HVP loss (``loss.mode = "fm_hvp"``, targets
    ``Term1 − γ β dF (dF·v)``; ``loss.hvp_estimator`` ``"frame"`` or ``"rao_blackwell"``,
    optionally with the bond directions projected out of the residual,
    ``loss.hvp_project_bonds``) or the full-Hessian loss (``"fm_hessian"``), switched on from
    ``hvp_start_step`` with γ ramped over ``cov_ramp_steps`` (:meth:`gamma`). Term 2's
    residual dF is the detached online ``P f − F_θ`` of the same forward pass, or with
    ``loss.residual = "crossfit"`` the batch's stored ``residual`` (fixed, cross-fitted;
    docs/training.md "Cross-fitted residual").

    Args:
        potential: the potential to train (its parameters are the optimised ones).
        cfg: the run config (``loss``, ``optim``, ``trainer.max_steps``,
            ``trainer.hvp_probe_chunk``, ``hvp_start_step``, ``cov_ramp_steps``).
        run_info: JSON-like metadata stored with the potential in every Lightning checkpoint
            (under ``hessid_potential``; None: none).
    """

    def __init__(self, potential: CGPotential | ThermalPotential, cfg: TrainConfig, run_info: dict | None = None):
        super().__init__()
        self.potential = potential
        self.cfg = cfg
        self.run_info = {} if run_info is None else run_info

    def gamma(self, step: int) -> float:
        """γ at optimizer step ``step``: ``loss.cov_weight``, ramped linearly from 0 over
        ``cov_ramp_steps`` steps after ``hvp_start_step`` when ``cov_ramp_steps > 0``."""
        target = float(self.cfg.loss.cov_weight)
        if self.cfg.cov_ramp_steps <= 0:
            return target
        return target * min(1.0, max(0, step - self.cfg.hvp_start_step) / self.cfg.cov_ramp_steps)

    def compute_losses(self, data: dict, step: int, fm_only: bool = False) -> dict:
        """Every loss term of one batch at optimizer step ``step``.

        Args:
            data: a batch of :func:`~hessid.training.learning.datasets.collate_frames`.
            step: optimizer step (selects FM only before ``hvp_start_step`` and γ).
            fm_only: the FM term only (validation files without curvature targets).

        Returns:
            scalar tensors ``fm`` ((kcal/mol/Å)²), ``hvp`` or ``hessian`` ((kcal/mol/Å²)²) when
            the curvature term is on (with ``"rao_blackwell"`` the value of L_RB, which may be
            negative and is not comparable to the ``"frame"`` value, docs/variance_reduction.md
            §1.4), ``energy`` ((kcal/mol)²) when used, ``total`` (the
            normalised weighted sum, with a θ-graph) and ``gamma``.
        """
        lc = self.cfg.loss
        if lc.mode == "thermal":
            return self.thermal_losses(data, validation_file=fm_only)
        n_graphs = int(data["frame_id"].shape[0])
        curvature = lc.mode != "fm" and step >= self.cfg.hvp_start_step and not fm_only
        use_hvp = curvature and lc.mode == "fm_hvp"
        use_rb = use_hvp and lc.hvp_estimator == "rao_blackwell"
        batch = data["batch"]
        stored = None  # the fixed cross-fitted dF (loss.residual = "crossfit")
        if curvature and lc.residual == "crossfit":
            stored = data.get("residual")
            if stored is None:
                raise ValueError("loss.residual=crossfit: the batch has no 'residual' (collate "
                                 "with the residuals of loss.residual_file)")
            stored = stored.detach()

        def project(x):  # P⊥ on the HVP residual (loss.hvp_project_bonds), else identity
            return project_out_bonds(x, data["positions"], batch) if lc.hvp_project_bonds else x

        probes = data["probes"] if use_hvp else None
        if use_rb and stored is not None:  # H_θ along the stored dF: one more fixed tangent
            probes = torch.cat([probes, project(stored)[None].to(probes.dtype)])
        out = energy_forces_hvp(self.potential, data["positions"], data["bead_types"],
                                batch, probes,
                                create_graph=True,
                                probe_chunk=self.cfg.trainer.hvp_probe_chunk,
                                method=self.cfg.trainer.hvp_method,
                                residual_target=data["forces"] if use_rb and stored is None else None,
                                residual_transform=project if lc.hvp_project_bonds else None)
        if use_rb and stored is not None:
            out.hvp, out.hvp_residual, out.force_residual = out.hvp[:-1], out.hvp[-1], stored
        terms = {"fm": force_matching_loss(out.forces, data["forces"], batch, n_graphs)}
        total = lc.lambda_force * terms["fm"] / lc.norm("force")
        gamma = self.gamma(step)
        if use_rb:
            terms["hvp"] = rao_blackwell_hvp_loss_graph(
                project(out.hvp), project(data["term1"]), out.hvp_residual, out.force_residual,
                data["beta"], gamma, batch, n_graphs, data["probe_scale"],
                stabiliser=lc.rb_stabiliser, residual_direction=project(out.force_residual),
                validate=False)  # β, c finite and > 0 by construction (collate_frames)
            total = total + lc.lambda_hvp * terms["hvp"] / lc.norm("hvp")
        elif use_hvp:
            dF = stored if stored is not None else data["forces"] - out.forces
            h = hvp_targets(data["term1"], dF, data["probes"],
                            data["beta"], gamma, batch, n_graphs)
            terms["hvp"] = hvp_loss(project(out.hvp), project(h), batch, n_graphs,
                                    data["probe_scale"])
            total = total + lc.lambda_hvp * terms["hvp"] / lc.norm("hvp")
        elif curvature:  # full-Hessian matching
            hs = full_hessian(self.potential, data["positions"], data["bead_types"],
                              data["batch"], probe_chunk=self.cfg.trainer.hvp_probe_chunk)
            counts = torch.bincount(data["batch"]).tolist()
            dF = stored if stored is not None else data["forces"] - out.forces.detach()
            residual = torch.split(dF, counts)
            tg = hessian_targets(data["hessian_blocks"], list(residual), data["beta"], gamma)
            terms["hessian"] = hessian_loss(hs, tg)
            total = total + lc.lambda_hvp * terms["hessian"] / lc.norm("hessian")
        if lc.lambda_energy > 0 and "energy" in data:
            terms["energy"] = energy_loss(out.energy, data["energy"])
            total = total + lc.lambda_energy * terms["energy"] / lc.norm("energy")
        terms["total"] = total
        terms["gamma"] = torch.tensor(gamma)
        return terms

    def thermal_losses(self, data: dict, validation_file: bool = False) -> dict:
        """``loss.mode = "thermal"``: ``L_F/s_F + w_U L_U/s_U`` per frame temperature
        (:func:`~hessid.training.learning.thermal_losses.thermal_loss`, floors and w_U from the
        ``thermal`` section). For a validation file (``data.val_datasets``, possibly at a held-out
        temperature) floors at untabulated temperatures are scaled by T² from the nearest one
        and L_U is skipped when the file has no potential energies.

        Returns:
            scalar tensors ``fm`` (raw L_F, (kcal/mol/Å)² per component), ``fm_excess``, with
            w_U > 0 ``energy`` ((kcal/mol)²) and ``energy_excess``; ``total``; ``gamma`` (0).

        Raises:
            ValueError: floors not set (the trainer estimates them), L_U for a β-independent
                model, no potential energies.
        """
        tc = self.cfg.thermal
        if tc.force_floors is None or (tc.energy_weight > 0 and tc.energy_floors is None):
            raise ValueError("thermal.force_floors/energy_floors are not set (the trainer estimates "
                             "them from the training frames)")
        floors = NoiseFloors.from_dicts(tc.force_floors, tc.energy_floors if tc.energy_weight > 0 else None)
        w_u = tc.energy_weight if ("potential_energy" in data or not validation_file) else 0.0
        t = thermal_loss(self.potential, data, floors, energy_weight=w_u, per_temperature=False,
                         scale_missing=validation_file)
        out = {"fm": t["force"], "fm_excess": t["force_excess"], "total": t["total"],
               "gamma": torch.tensor(0.0)}
        if "energy" in t:
            out["energy"], out["energy_excess"] = t["energy"], t["energy_excess"]
        return out

    def training_step(self, data, batch_idx):
        """Log every term as ``train/<term>`` and the LR as ``lr`` (on steps whose count after
        this step is a multiple of ``trainer.log_every_n_steps``); return ``total``."""
        terms = self.compute_losses(data, int(self.global_step))
        if (int(self.global_step) + 1) % self.cfg.trainer.log_every_n_steps:
            return terms["total"]
        bs = int(data["frame_id"].shape[0])
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), batch_size=bs, prog_bar=k in ("fm", "hvp"))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return terms["total"]

    def validation_step(self, data, batch_idx):
        """Log every term but γ as ``val/<term>`` (averaged over ranks)."""
        with torch.enable_grad():
            terms = self.compute_losses(data, int(self.global_step), fm_only=bool(data.get("fm_only", False)))
        bs = int(data["frame_id"].shape[0])
        for k, v in terms.items():
            if k != "gamma":
                self.log(f"val/{k}", v.detach(), batch_size=bs, sync_dist=True,
                         prog_bar=k == "fm")

    def configure_optimizers(self):
        """AdamW (``optim.lr``, ``optim.weight_decay``) with the per-step LR schedule."""
        oc = self.cfg.optim
        opt = torch.optim.AdamW(self.potential.parameters(), lr=oc.lr,
                                weight_decay=oc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(oc, self.cfg.trainer.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        """Store the potential (:meth:`CGPotential.checkpoint_dict`, with ``run_info`` and the
        config) under ``hessid_potential``, so :func:`load_potential` reads Lightning checkpoints."""
        checkpoint["hessid_potential"] = self.potential.checkpoint_dict(
            extra=dict(self.run_info, config=self.cfg.to_dict()))
