"""Training loop of the atomistic mode (docs/atomistic_learning.md, "Training").

``train(TrainConfig)`` writes ``OUT/NAME/``: ``checkpoints/last.ckpt`` (weights, optimiser,
step, epoch, position in the epoch, partial epoch sums, metrics so far), ``metrics.csv`` (one
row per epoch: training loss parts, validation errors, process time), ``split.json`` (the
structures of every role) and ``model.pt`` (:func:`~hessid.training.atomistic.model.load_potential`).

Determinism: weights are initialised from ``seed``; the batch order of epoch e is
``numpy.random.default_rng([seed, e]).permutation``; fresh probes are keyed by the step. So
``--resume`` from any checkpoint continues the same run: the final weights equal those of
an uninterrupted run (tested bit for bit in float64 on one thread).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hessid.training.atomistic.evaluation import error_metrics
from hessid.training.atomistic.frames import (
    Split,
    collate,
    fit_reference_energies,
    split_structures,
    target_scales,
)
from hessid.training.atomistic.losses import LossConfig, TargetScales
from hessid.training.atomistic.model import AtomisticPotential, ModelConfig
from hessid.training.atomistic.objective import batch_loss
from hessid.training.data.qm import open_qm_dataset

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "TrainResult", "load_datasets", "prepare", "resolve_device", "train"]

log = logging.getLogger("hessid.training.atomistic")

CHECKPOINT_KIND = "hessid.atomistic_checkpoint"


@dataclass
class DataConfig:
    """Which structures train, validate and test.

    Attributes:
        datasets: QM dataset names (ROOT/NAME/NAME.h5) or paths, one molecule each.
        root: folder holding the dataset folders.
        n_train: training structures (pooled over datasets).
        n_val: validation structures.
        n_test: held-out structures per subset (near, far), drawn first.
        split_seed: seed of the split (fixed test set for any n_train).
        train_subsets: subsets training may draw from (0 near, 1 far).
        subset_seed: reorders the training pool after the test and validation draw (None:
            ``split_seed``'s order): other training subsets, the same test set.
    """

    datasets: list[str] = field(default_factory=list)
    root: str = "."
    n_train: int = 100
    n_val: int = 20
    n_test: int = 50
    split_seed: int = 0
    train_subsets: list[int] = field(default_factory=lambda: [0, 1])
    subset_seed: int | None = None


@dataclass
class OptimConfig:
    """Adam.

    Attributes:
        lr: learning rate.
        lr_decay: learning-rate factor per epoch (1: constant).
        batch_size: structures per step.
        max_epochs: epochs.
        max_steps: stop after this many steps (None: max_epochs only).
        weight_decay: Adam L2 penalty.
    """

    lr: float = 1e-3
    lr_decay: float = 1.0
    batch_size: int = 8
    max_epochs: int = 100
    max_steps: int | None = None
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    """A training run of ``hessid qm train``.

    Attributes:
        name: run name: writes OUT/NAME/.
        output_dir: folder of runs.
        seed: weight-initialisation and batch-order seed.
        model: TensorNet settings.
        loss: loss mode, form, weights and probes.
        data: datasets and split.
        optim: optimiser and schedule.
        checkpoint_every: steps between checkpoints (and at every epoch end).
        validate_every: epochs between validation rows (the last epoch always).
        progress: progress bar.
        device: ``"cpu"`` (default), ``"cuda"``/``"cuda:N"``, or ``"auto"`` (CUDA when
            available). Not part of the run key: a run may resume on another device (same
            numbers up to rounding). ``cpu_s`` in metrics.csv is the process time of the steps,
            meaningful on CPU only.
    """

    name: str = "qm"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint_every: int = 100
    validate_every: int = 1
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self):
        for name, cls in (("model", ModelConfig), ("loss", LossConfig), ("data", DataConfig),
                          ("optim", OptimConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
        if self.optim.batch_size < 1 or self.optim.max_epochs < 1 or not self.optim.lr > 0:
            raise ValueError("optim: batch_size, max_epochs must be >= 1 and lr > 0")
        if self.checkpoint_every < 1 or self.validate_every < 1:
            raise ValueError("checkpoint_every and validate_every must be >= 1")
        if not self.data.datasets:
            raise ValueError("data.datasets: give at least one QM dataset")
        resolve_device(self.device)  # refuse a bad or unavailable device before any work

    def run_key(self) -> dict:
        """What must not change between a run and its resume (everything but the stopping
        criteria, checkpoint cadence and the progress bar)."""
        d = asdict(self)
        for key in ("max_epochs", "max_steps"):
            d["optim"].pop(key)
        for key in ("checkpoint_every", "progress", "validate_every", "device"):
            d.pop(key)
        if d["data"].get("subset_seed") is None:  # checkpoints written before the field existed
            d["data"].pop("subset_seed")
        return d


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ValueError: not a device string torch knows, or CUDA asked for where there is none
            (one line naming the option).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device (cpu, cuda, cuda:N, auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device "
                         "(torch.cuda.is_available() is False)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {device!r}: only cpu and cuda are supported")
    return dev


@dataclass(frozen=True)
class TrainResult:
    """Attributes:
        run_dir: OUT/NAME.  model: model.pt.  metrics_csv: metrics.csv.
        global_step: steps done.  epoch: epochs done.  last: the last metrics row.
    """

    run_dir: Path
    model: Path
    metrics_csv: Path
    global_step: int
    epoch: int
    last: dict


def load_datasets(data: DataConfig) -> list:
    """Open every dataset of ``data`` (validated)."""
    return [open_qm_dataset(p, root=data.root) for p in data.datasets]


def prepare(cfg: TrainConfig, datasets: list) -> tuple[AtomisticPotential, Split, TargetScales]:
    """The initial model (reference energies and output scale fitted on the training split),
    the split and the target scales.

    Raises:
        ValueError: a Hessian loss mode on datasets without Hessians (names them).
    """
    split = split_structures(datasets, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test,
                             cfg.data.split_seed, cfg.data.train_subsets, cfg.data.subset_seed)
    needs_h = cfg.loss.mode != "ef"
    if needs_h:
        missing = [ds.name for ds in datasets if ds.hessians is None]
        if missing:
            raise ValueError(f"loss.mode={cfg.loss.mode} needs Hessians; datasets without: {missing}")
    model = AtomisticPotential(cfg.model, seed=cfg.seed)
    ref = fit_reference_energies(datasets, split.train, cfg.model.max_z)
    scales = target_scales(datasets, split.train, ref, needs_h)
    model.set_reference(torch.as_tensor(ref), math.sqrt(scales.force))  # s = RMS force × 1 Å
    return model, split, scales


def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def train(cfg: TrainConfig, resume: bool = False, datasets: list | None = None) -> TrainResult:
    """Train (or resume) a run.

    Args:
        cfg: the run.
        resume: continue from ``OUT/NAME/checkpoints/last.ckpt`` (same run key required).
        datasets: already opened datasets (default: :func:`load_datasets`).

    Returns:
        :class:`TrainResult`.

    Raises:
        FileExistsError: the run folder holds a checkpoint and ``resume`` is False.
        FileNotFoundError: ``resume`` without a checkpoint.
        ValueError: bad config, a checkpoint of another run, too few structures, or
            Hessian losses on E-F-only data.
    """
    run_dir = Path(cfg.output_dir) / cfg.name
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{run_dir}: a run exists (use --resume, or another --name)")
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume")
    datasets = load_datasets(cfg.data) if datasets is None else datasets
    model, split, scales = prepare(cfg, datasets)
    device = resolve_device(cfg.device)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step, epoch, pos, rows = 0, 0, 0, []
    sums: dict[str, float] = {}
    cpu = 0.0
    if resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("kind") != CHECKPOINT_KIND or state.get("run_key") != json.loads(json.dumps(cfg.run_key())):
            raise ValueError(f"{ckpt_path}: checkpoint of a different run configuration "
                             "(only optim.max_epochs/max_steps, checkpoint_every, validate_every "
                             "and progress may change on --resume)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, epoch, pos, rows, sums, cpu = (state[k] for k in ("step", "epoch", "pos", "rows", "sums", "cpu"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "split.json").write_text(json.dumps(asdict(split)))
    needs_h = cfg.loss.mode != "ef"
    n_batches = math.ceil(len(split.train) / cfg.optim.batch_size)
    total = cfg.optim.max_epochs * n_batches
    if cfg.optim.max_steps is not None:
        total = min(total, cfg.optim.max_steps)

    def checkpoint():
        _save_checkpoint(ckpt_path, {
            "kind": CHECKPOINT_KIND, "run_key": json.loads(json.dumps(cfg.run_key())),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "epoch": epoch, "pos": pos, "rows": rows, "sums": sums, "cpu": cpu})

    bar = _progress(total, step, cfg.progress)
    try:
        while epoch < cfg.optim.max_epochs and step < total:
            for group in opt.param_groups:
                group["lr"] = cfg.optim.lr * cfg.optim.lr_decay**epoch
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(split.train))
            while pos < n_batches and step < total:
                refs = [split.train[i] for i in order[pos * cfg.optim.batch_size:(pos + 1) * cfg.optim.batch_size]]
                t0 = time.process_time()
                batch = collate(datasets, refs, model.dtype, needs_h).to(device)
                loss, parts = batch_loss(model, batch, cfg.loss, scales, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                cpu += time.process_time() - t0
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value
                sums["batches"] = sums.get("batches", 0.0) + 1
                step += 1
                pos += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.4g}", epoch=epoch)
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
            if pos < n_batches:  # stopped by max_steps inside the epoch
                break
            row = {"epoch": epoch, "step": step, "cpu_s": cpu,
                   **{f"train_{k}": v / sums["batches"] for k, v in sums.items() if k != "batches"}}
            if (epoch + 1) % cfg.validate_every == 0 or epoch + 1 == cfg.optim.max_epochs:
                val = error_metrics(model, datasets, split.val, hessians=needs_h)
                row.update({f"val_{k}": v for k, v in val.items()})
            rows.append(row)
            epoch, pos, sums = epoch + 1, 0, {}
            checkpoint()
    finally:
        if bar is not None:
            bar.close()
    checkpoint()
    metrics_csv = run_dir / "metrics.csv"
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("epoch", "step", "cpu_s"), k))
    with metrics_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    model_path = model.save(run_dir / "model.pt", metadata={
        "config": asdict(cfg), "step": step, "epoch": epoch, "target_scales": asdict(scales),
        "datasets": [str(Path(getattr(ds, "path", ds.name)).resolve()) for ds in datasets]})
    return TrainResult(run_dir, model_path, metrics_csv, step, epoch, rows[-1] if rows else {})
