"""The trainer: CGSchNet + priors fitted by FM, FM+AA or FM+AA+Cov (docs/identities.md §5), with Lightning.

``train(config)`` (or ``hessid train --config run.yaml``) does, in order:

1. read every dataset file (:func:`~hessid.training.learning.datasets.load_protein`) and merge
   bead vocabularies;
2. **verification gate** (:func:`~hessid.training.learning.gate.run_verification_gate`): for
   each protein, the core's exact check of its CG map and projector on the Gaussian
   elastic-network model of its frame-0 structure; any failure refuses to train
   (:class:`~hessid.training.learning.gate.VerificationGateError`) unless
   ``skip_verification`` (loud warning). The result goes to ``verification.json``, the log and
   every checkpoint;
3. split frames (by frame or by protein), fit the priors on the training frames, compute the
   target normalisations, build the model;
4. train with Lightning (:class:`~hessid.training.learning.module.CGTrainingModule`: AdamW, LR
   schedule, gradient clipping, early stopping on the validation FM loss, DDP over
   ``devices × num_nodes``), checkpointing every N steps; ``resume=True`` continues from
   ``checkpoints/last.ckpt`` with the same data order
   (:class:`~hessid.training.learning.datasets.FrameStream`);
5. write ``model.pt`` (:func:`hessid.training.learning.models.load_potential`), ``metrics.csv``
   (every loss term of every step and validation) and ``loss_curves.png``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from matplotlib.figure import Figure

from hessid.training.learning.callbacks import PlateauStopping
from hessid.training.learning.configs import TrainConfig, load_config
from hessid.training.learning.datasets import (
    FrameStream,
    collate_frames,
    fill_thermal_floors,
    load_protein,
    merge_vocabularies,
    split_items,
    target_normalisations,
)
from hessid.training.learning.derivatives import set_compile
from hessid.training.learning.gate import run_verification_gate
from hessid.training.learning.models import build_potential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.priors import PriorFit
from hessid.training.learning.residuals import residuals_for_frames

log = logging.getLogger(__name__)

__all__ = ["METRICS_COLUMNS", "TrainResult", "plot_curves", "train"]

#: columns of ``metrics.csv``: one row per training step (``split = "train"``) and per
#: validation (``"val"``); ``step`` is the optimizer step count after the step; loss terms in
#: the units of :meth:`~hessid.training.learning.module.CGTrainingModule.compute_losses`,
#: empty when a term is off.
METRICS_COLUMNS = ["step", "split", "total", "fm", "hvp", "hessian", "energy", "gamma", "lr"]


# Own writer, not lightning's CSVLogger: its writer deletes an existing metrics.csv when it starts, so a resumed run would lose the rows before its checkpoint.
class _CSVMetrics(pl.Callback):
    """Lightning callback: one ``metrics.csv`` row per training step and per validation.

    On resume, rows logged after the checkpoint's step are dropped first, so a resumed run
    writes the same file as an uninterrupted one. Rank 0 writes.
    """

    def __init__(self, path: Path, every: int = 1):
        self.path = Path(path)
        self.every = int(every)  # a training row every this many optimizer steps

    def _write(self, row: dict):
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in METRICS_COLUMNS})

    def on_train_start(self, trainer, module):
        # a resumed run drops rows logged after the checkpoint it resumes from
        if self.path.exists() and trainer.is_global_zero:
            with open(self.path) as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= trainer.global_step]
            with open(self.path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS)
                w.writeheader()
                w.writerows(rows)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or trainer.global_step % self.every:
            return
        m = trainer.callback_metrics
        row = {"step": trainer.global_step, "split": "train"}
        for k in METRICS_COLUMNS[2:]:
            key = "lr" if k == "lr" else f"train/{k}"
            if key in m:
                row[k] = float(m[key])
        self._write(row)

    def on_validation_end(self, trainer, module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"step": trainer.global_step, "split": "val"}
        for k in ("total", "fm", "hvp", "hessian", "energy"):
            if f"val/{k}" in m:
                row[k] = float(m[f"val/{k}"])
        self._write(row)


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Plot every loss term of ``metrics.csv`` against the step (log scale) to a PNG.

    Args:
        metrics_csv: the run's ``metrics.csv`` (columns :data:`METRICS_COLUMNS`).
        out_png: the PNG to write.

    Returns:
        ``out_png``, or None when ``metrics_csv`` does not exist.
    """
    if not Path(metrics_csv).exists():
        return None
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    fig = Figure(figsize=(6.4, 4.0))  # no pyplot: no GUI backend, no global figure state
    ax = fig.subplots()
    for split, style in (("train", "-"), ("val", "o--")):
        for term in ("fm", "hvp", "hessian", "energy", "total"):
            pts = [(int(r["step"]), float(r[term])) for r in rows if r["split"] == split and r[term]]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=f"{split} {term}", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss ((kcal/mol/Å)², (kcal/mol/Å²)²; total normalised)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    return Path(out_png)


@dataclass
class TrainResult:
    """What :func:`train` wrote.

    Attributes:
        run_dir: ``<output_dir>/<name>``.  model: ``model.pt``.  metrics_csv: ``metrics.csv``.
        plot: ``loss_curves.png`` (None without rows).  verification: the gate's report.
        global_step: optimizer steps done.  best_val_fm: best validation FM loss
            ((kcal/mol/Å)² per frame) or None.
        stopping: with plateau stopping, :meth:`PlateauStopping.summary` (plateau_step,
            stopped_step, best_step, best_value, validations); else None.
    """

    run_dir: Path
    model: Path
    metrics_csv: Path
    plot: Path | None
    verification: dict
    global_step: int
    best_val_fm: float | None
    stopping: dict | None = None


def train(config: TrainConfig | dict | str | Path, resume: bool = False,
          skip_verification: bool | None = None, callbacks: list | None = None,
          frames: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None) -> TrainResult:
    """Train a CG potential (FM / FM+AA / FM+AA+Cov / full Hessian; docs/identities.md §5).

    Args:
        config: :class:`TrainConfig`, a dict of its sections, or a YAML path.
        resume: continue from ``<run_dir>/checkpoints/last.ckpt`` (same data order, same
            result as an uninterrupted run; pass the same ``frames``).
        skip_verification: override ``config.skip_verification``.
        callbacks: extra Lightning callbacks.
        frames: None (split by ``config.data``), or an explicit ``(train_items, val_items)``,
            lists of ``(dataset index, frame index)`` into ``config.data.datasets`` (the fold
            runs of :func:`~hessid.training.learning.crossfit.crossfit_residuals`); the prior
            and the normalisations are then fitted on ``train_items`` and the model's metadata
            records their frame ids (``train_frame_ids``, ``val_frame_ids``: protein name →
            list).

    Returns:
        :class:`TrainResult`.

    Raises:
        VerificationGateError: the gate failed (nothing trained).
        FileNotFoundError: a dataset file, or ``last.ckpt`` with ``resume``, is missing.
        ValueError: invalid config or data; ``frames`` out of range; with
            ``loss.residual = "crossfit"``, a residual file that does not match the run's
            frames, split or data.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    cfg = config
    if skip_verification is not None:
        cfg.skip_verification = bool(skip_verification)
    cfg.check_files()  # before anything is created
    run_dir = Path(cfg.output_dir) / cfg.name
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint {last}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _file_log(run_dir / "train.log"):
        return _fit(cfg, run_dir, resume, callbacks, frames)


def _fit(cfg: TrainConfig, run_dir: Path, resume: bool, callbacks: list | None,
         frames: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None) -> TrainResult:
    """The body of :func:`train` once the run folder exists and its ``train.log`` is attached."""
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"

    proteins = [load_protein(p, cfg.data.max_frames) for p in cfg.data.datasets]
    n_train_files = len(proteins)
    proteins += [load_protein(p) for p in cfg.data.val_datasets]  # validation files: FM only
    names = [p.name for p in proteins]
    if len(set(names)) != len(names):
        raise ValueError(f"protein names must be unique, got {names}")
    verification = run_verification_gate(proteins, skip=cfg.skip_verification)
    (run_dir / "verification.json").write_text(json.dumps(verification, indent=1))
    log.info("verification gate: %s", "SKIPPED" if verification["skipped"] else "passed")

    vocabulary, type_maps = merge_vocabularies(proteins)

    need_term1 = cfg.loss.mode == "fm_hvp"
    need_hessian = cfg.loss.mode == "fm_hessian"
    if frames is not None:
        train_items, val_items = _check_frames(proteins, frames)
    else:  # with data.val_datasets: every frame of the training files trains, the val files validate
        train_items, val_items = split_items(proteins, n_train_files, cfg, need_term1, need_hessian)
    residuals = None
    if cfg.loss.residual == "crossfit":
        residuals = residuals_for_frames(cfg.loss.residual_file, proteins, train_items, val_items)
        log.info("Term 2 uses the cross-fitted residuals of %s", cfg.loss.residual_file)
    norms = target_normalisations(
        proteins, train_items, need_term1, need_hessian,
        cov_weight=cfg.loss.cov_weight if cfg.loss.norm_includes_term2 else 0.0,
        project_bonds=need_term1 and cfg.loss.hvp_project_bonds, residuals=residuals)
    for key, value in norms.items():
        if getattr(cfg.loss, key) is None:
            setattr(cfg.loss, key, value)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    prior = None
    if cfg.prior.enabled:
        by_protein: dict[int, list[int]] = {}
        for pi, t in train_items:
            by_protein.setdefault(pi, []).append(t)
        temps = {proteins[pi].temperature for pi in by_protein}
        prior = PriorFit(temperature=float(np.mean(sorted(temps))),
                         n_fourier=int(cfg.prior.n_fourier),
                         repulsion_scale=float(cfg.prior.repulsion_scale),
                         ).fit([proteins[pi].cg_coordinates[ts] for pi, ts in by_protein.items()],
                               bead_types=[type_maps[pi][proteins[pi].bead_types] for pi in by_protein],
                               ).fetch_model()
    max_beads = max(p.n_beads for p in proteins)
    if cfg.model.max_num_neighbors < max_beads:
        raise ValueError(f"model.max_num_neighbors={cfg.model.max_num_neighbors} < {max_beads} "
                         "beads: raise it so no pair inside the cutoff is dropped")
    if cfg.loss.mode == "thermal":  # noise floors per temperature (docs/thermo.md §8)
        fill_thermal_floors(cfg, proteins, train_items)
    potential = build_potential(vocabulary, prior, cfg, n_beads=max_beads)
    run_info = {"verification": verification, "proteins": names,
                "n_train_frames": len(train_items), "n_val_frames": len(val_items),
                "loss": cfg.loss.to_dict()}
    if frames is not None:
        for key, items in (("train_frame_ids", train_items), ("val_frame_ids", val_items)):
            run_info[key] = {p.name: [int(p.frame_id[t]) for q, t in items if q == pi]
                             for pi, p in enumerate(proteins)}
    module = CGTrainingModule(potential, cfg, run_info)
    dtype = potential.dtype

    def collate(items):
        return collate_frames(proteins, items, type_maps, dtype, need_term1, need_hessian, residuals)

    train_stream = FrameStream(train_items, cfg.data.batch_size, cfg.seed, collate, True, module)
    def collate_val(items):  # validation files carry no curvature targets: FM loss only
        if not cfg.data.val_datasets:
            return collate(items)
        data = collate_frames(proteins, items, type_maps, dtype, False, False)
        return dict(data, fm_only=True)

    val_stream = FrameStream(val_items, cfg.data.batch_size, cfg.seed, collate_val, False, module) if val_items else None

    tc = cfg.trainer
    cbs = [_CSVMetrics(run_dir / "metrics.csv", tc.log_every_n_steps),
           ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=tc.checkpoint_every_steps,
                           save_last=True, save_top_k=1, auto_insert_metric_name=False)]
    if val_stream is not None and tc.early_stopping_patience > 0:
        cbs.append(EarlyStopping(monitor="val/fm", patience=tc.early_stopping_patience, mode="min",
                                 check_on_train_epoch_end=False))
    plateau = None
    if val_stream is not None and (tc.plateau_window_steps > 0 or tc.keep_best):
        plateau = PlateauStopping(tc.plateau_rel_delta, max(1, tc.plateau_window_steps), tc.plateau_budget_factor,
                                  keep_best=tc.keep_best, stop=tc.plateau_window_steps > 0)
        cbs.append(plateau)
    cbs.extend(callbacks or [])
    strategy = "auto"
    if tc.devices * tc.num_nodes > 1:
        strategy = DDPStrategy(find_unused_parameters=True)
    trainer = pl.Trainer(
        accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes, strategy=strategy,
        max_steps=tc.max_steps, max_epochs=-1, val_check_interval=tc.val_every_steps if val_stream else None,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if val_stream else 0,
        num_sanity_val_steps=0, gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=cbs, logger=False, enable_progress_bar=tc.progress_bar,
        enable_model_summary=False, inference_mode=False, deterministic=False,
        log_every_n_steps=tc.log_every_n_steps, default_root_dir=str(run_dir), use_distributed_sampler=False,
    )
    previous = set_compile(tc.compile)
    try:
        trainer.fit(module, train_dataloaders=train_stream, val_dataloaders=val_stream,
                    ckpt_path=str(last) if resume else None)
    finally:
        set_compile(previous)

    best = None
    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and cb.best_score is not None and torch.isfinite(cb.best_score):
            best = float(cb.best_score)
    model_path = run_dir / "model.pt"
    plot = None
    if trainer.is_global_zero:
        potential.save(model_path, extra=dict(run_info, config=cfg.to_dict(),
                                              global_step=int(trainer.global_step)))
        plot = plot_curves(run_dir / "metrics.csv", run_dir / "loss_curves.png")
        log.info("wrote %s (step %d)", model_path, trainer.global_step)
    return TrainResult(run_dir=run_dir, model=model_path, metrics_csv=run_dir / "metrics.csv",
                       plot=plot, verification=verification, global_step=int(trainer.global_step),
                       best_val_fm=plateau.best_value if plateau is not None and plateau.best_step is not None
                       else best, stopping=plateau.summary() if plateau is not None else None)


def _check_frames(proteins, frames) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Explicit ``(train_items, val_items)`` as sorted lists of int pairs, checked in range and
    disjoint."""
    train_items, val_items = ([(int(pi), int(t)) for pi, t in part] for part in frames)
    for pi, t in train_items + val_items:
        if not (0 <= pi < len(proteins) and 0 <= t < proteins[pi].n_frames):
            raise ValueError(f"frames: item ({pi}, {t}) is outside the loaded datasets")
    if set(train_items) & set(val_items):
        raise ValueError("frames: training and validation items overlap")
    if not train_items:
        raise ValueError("frames: no training frames")
    return sorted(train_items), sorted(val_items)


@contextlib.contextmanager
def _file_log(path: Path) -> Iterator[None]:
    """Copy the ``hessid`` log to ``path`` while the block runs. The handler is removed and closed
    on exit, so a later training in the same process (a study's worker, a test) does not append
    its lines to this run's ``train.log``; a handler for ``path`` that already exists is kept."""
    root = logging.getLogger("hessid")
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers):
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
