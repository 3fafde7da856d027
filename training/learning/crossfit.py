"""Cross-fitted force residuals for Term 2 (docs/training.md "Cross-fitted residual").

``crossfit_residuals(cfg, K, out_dir)`` splits the training frames of the run ``cfg`` into K
folds (:func:`~hessid.training.learning.residuals.fold_assignment`), trains K force-matching
models with the public trainer, model k on every fold but k (same architecture, prior,
optimiser and early stopping on the run's validation frames as ``cfg``), and stores for
every training frame t the residual ``dF_t = P f_t − F^{(−k(t))}(R_t)`` of the model that did
not see it (validation frames: the model of a fold they are dealt to, which never saw them
either). The main run then reads them with ``loss.residual: crossfit`` and
``loss.residual_file: <out_dir>/crossfit_residuals.npz``.

Outputs in ``out_dir``: ``folds/fold<k>/`` (each fold's training run: ``model.pt``,
checkpoints, ``metrics.csv``; ``done.json`` once finished), ``crossfit_residuals.npz`` (the
file format of :mod:`hessid.training.learning.residuals`). Resumable per fold: a finished
fold (``done.json``) is not retrained, an interrupted one continues from its
``last.ckpt`` (the trainer's bit-identical resume), so a resumed call writes the same residuals.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hessid import __version__ as HESSID_VERSION
from hessid.training.learning.configs import LossConfig, TrainConfig
from hessid.training.learning.datasets import load_protein, split_items
from hessid.training.learning.models import load_potential
from hessid.training.learning.residuals import (
    data_fingerprint,
    fold_assignment,
    model_residuals,
    write_residual_file,
)
from hessid.training.learning.trainer import train

log = logging.getLogger(__name__)

__all__ = ["RESIDUAL_FILE_NAME", "crossfit_residuals", "fold_config"]

#: name of the residual file in ``out_dir``
RESIDUAL_FILE_NAME = "crossfit_residuals.npz"


def fold_config(cfg: TrainConfig, fold: int, out_dir: str | Path) -> TrainConfig:
    """The config of fold model ``fold``: ``cfg`` with FM only and its own run folder.

    Kept from ``cfg``: seed, data (split settings, batch size), model, prior, optim, trainer
    (steps, validation, early stopping, devices), ``lambda_force``, ``normalise``,
    ``skip_verification``. Changed: ``name = fold<k>``, ``output_dir = out_dir/folds``, the
    loss is plain FM (``LossConfig(mode="fm")``; no energy term, normalisations recomputed on
    the fold's frames), ``hvp_start_step = cov_ramp_steps = 0``.

    Args:
        cfg: the main run's config (not modified).  fold: k.  out_dir: crossfit folder.

    Returns:
        a new :class:`TrainConfig`.
    """
    fc = copy.deepcopy(cfg)
    fc.name = f"fold{int(fold)}"
    fc.output_dir = str(Path(out_dir) / "folds")
    fc.loss = LossConfig(mode="fm", lambda_force=cfg.loss.lambda_force, normalise=cfg.loss.normalise)
    fc.hvp_start_step = 0
    fc.cov_ramp_steps = 0
    return fc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def crossfit_residuals(cfg: TrainConfig, folds: int, out_dir: str | Path, fold_seed: int | None = None,
                       block: int = 1, callbacks: list | None = None, batch_size: int = 256,
                       progress: bool = True) -> Path:
    """Train K fold force-matching models and store every frame's out-of-fold residual.

    Double machine learning's cross-fitting (Chernozhukov et al. 2018, "Double/debiased machine
    learning", Econometrics J. 21, C1): with ``ε_t = P f_t − F(R_t)`` and the model error
    ``b = F − F̂``, ``dF = ε + b`` and ``E[dF dFᵀ | R] = Cov(P f | R) + E[b bᵀ] + E[b εᵀ + ε bᵀ]``;
    the cross term is the over-fitting bias of a model that trained on frame t (negative: it
    fitted part of ε_t), and it vanishes when F̂ is independent of ε_t, i.e. when frame t was
    held out (docs/training.md "Cross-fitted residual"). What remains, ``E[b bᵀ]``, is positive
    semidefinite and measured by the fold models' held-out FM loss.

    The run's split is that of ``cfg`` (``data.split``, ``val_fraction``, seed, and the frames
    its loss can use: with ``mode: fm_hvp`` only frames with Term 1), so the file matches the
    main run exactly (the trainer checks frames and data fingerprints when it loads it).

    Args:
        cfg: the main run's config (its ``loss.residual`` may already be ``"crossfit"``).
        folds: K ≥ 2 (each fold model trains on (K−1)/K of the training frames).
        out_dir: folder for the fold runs and the residual file (created).
        fold_seed: seed of the fold permutation (None: ``cfg.seed``).
        block: consecutive frames (by frame id) kept in one fold (1: frames dealt singly).
        callbacks: extra Lightning callbacks passed to every fold's training.
        batch_size: frames per forward pass of the residual computation.
        progress: tqdm bar over the folds.

    Returns:
        the residual file ``out_dir/crossfit_residuals.npz``.

    Raises:
        ValueError: K < 2, too few frames for K folds, invalid config or data (as
            :func:`~hessid.training.learning.trainer.train`).
        FileNotFoundError: a dataset is missing.
        VerificationGateError: a fold run's verification gate refused (nothing trained).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed if fold_seed is None else fold_seed)
    proteins = [load_protein(p, cfg.data.max_frames) for p in cfg.data.datasets]
    proteins += [load_protein(p) for p in cfg.data.val_datasets]  # the trainer's order: train files, then val
    train_items, val_items = split_items(proteins, len(cfg.data.datasets), cfg, cfg.loss.mode == "fm_hvp",
                                          cfg.loss.mode == "fm_hessian")
    fold_of = fold_assignment(proteins, train_items, folds, seed, block)
    val_fold = np.arange(len(val_items), dtype=np.int64) % int(folds)  # any fold model is held out
    checkpoints = []
    for k in tqdm(range(int(folds)), desc="cross-fit folds", disable=not progress):
        fc = fold_config(cfg, k, out_dir)
        run_dir = Path(fc.output_dir) / fc.name
        done = run_dir / "done.json"
        fold_train = [it for it, f in zip(train_items, fold_of, strict=True) if f != k]
        if not done.exists():
            resume = (run_dir / "checkpoints" / "last.ckpt").exists()
            log.info("cross-fit fold %d/%d: training on %d frames%s", k + 1, folds, len(fold_train),
                     " (resumed)" if resume else "")
            res = train(fc, resume=resume, callbacks=callbacks, frames=(fold_train, val_items))
            done.write_text(json.dumps({"global_step": res.global_step, "best_val_fm": res.best_val_fm,
                                        "n_train_frames": len(fold_train)}, indent=1))
        checkpoints.append({"fold": k, "model": str(run_dir / "model.pt"),
                            "sha256": _sha256(run_dir / "model.pt"), "n_train_frames": len(fold_train),
                            **json.loads(done.read_text())})

    frame_id, split, fold, residual, datasets = [], [], [], [], []
    models = [load_potential(c["model"]) for c in checkpoints]
    for pi, p in enumerate(proteins):
        rows = [(t, 0, int(f)) for (q, t), f in zip(train_items, fold_of, strict=True) if q == pi]
        rows += [(t, 1, int(f)) for (q, t), f in zip(val_items, val_fold, strict=True) if q == pi]
        rows.sort()
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        fs = np.array([r[2] for r in rows], dtype=np.int64)
        r = np.empty((len(ts), p.n_beads, 3))
        for k, model in enumerate(models):
            sel = fs == k
            if sel.any():
                r[sel] = model_residuals(model, p, ts[sel], batch_size)
        frame_id.append(p.frame_id[ts])
        split.append(np.array([x[1] for x in rows], dtype=np.int8))
        fold.append(fs)
        residual.append(r)
        datasets.append({"path": str(p.path), "name": p.name, "n_frames": len(ts),
                         "fingerprint": data_fingerprint(p, ts)})
    provenance = {"datasets": datasets, "folds": int(folds), "fold_seed": seed, "block": int(block),
                  "checkpoints": checkpoints, "fold_config": fold_config(cfg, 0, out_dir).to_dict(),
                  "hessid_version": HESSID_VERSION,
                  "definition": "residual = P f - F^(-k)(R), kcal/mol/A, F^(-k) the FM model "
                                "trained on every fold but k"}
    path = write_residual_file(out_dir / RESIDUAL_FILE_NAME, provenance, frame_id, split, fold, residual)
    log.info("wrote %s (%d folds, %d training + %d validation frames)", path, folds,
             len(train_items), len(val_items))
    return path
