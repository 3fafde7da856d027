"""The trainer: CGSchNet + priors fitted by FM, FM+AA or FM+AA+Cov (spec §5), with Lightning.

``train(config)`` (or ``hessid train --config run.yaml``) does, in order:

1. read every dataset file (contract layout, docs/architecture.md) and merge bead vocabularies;
2. **verification gate**: for each protein, the core's exact check of its CG map and projector
   on the Gaussian elastic-network model of its frame-0 structure
   (:func:`hessid.verification.elastic.check_linear_map_on_structure`); any failure refuses to
   train (:class:`VerificationGateError`, saying which check failed and by how much) unless
   ``skip_verification`` (loud warning). The result goes to ``verification.json``, the log and
   every checkpoint;
3. split frames (by frame or by protein), fit the priors on the training frames, compute the
   target normalisations, build the model;
4. train with Lightning (AdamW, LR schedule, gradient clipping, early stopping on the
   validation FM loss, DDP over ``devices × num_nodes``), checkpointing every N steps;
   ``resume=True`` continues from ``checkpoints/last.ckpt`` with the same data order;
5. write ``model.pt`` (:func:`hessid.training.learning.models.load_potential`), ``metrics.csv`` (every
   loss term of every step and validation) and ``loss_curves.png``.

Data order and probes do not depend on the number of ranks: global step s uses the global
batch ``order(seed, epoch)[s·b:(s+1)·b]``; rank r of w takes its frames ``r::w``; each rank
regenerates its frames' probes from their frame ids with the dataset's stored probe spec
(``draw_probes(kind, seed, [frame_id], k, 3n)``, the probes the stored Term 1 used).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from hessid.training.learning.configs import dataclass_from_dict
from hessid.training.learning.losses import (
    LossConfig,
    energy_loss,
    force_matching_loss,
    hessian_loss,
    hessian_targets,
    hvp_loss,
    hvp_targets,
)
from hessid.training.learning.models import CGPotential, ModelConfig

from hessid.units import beta as beta_of_temperature

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "OptimConfig",
    "ProteinData",
    "TrainConfig",
    "TrainResult",
    "TrainerConfig",
    "VerificationGateError",
    "collate_frames",
    "load_config",
    "load_protein",
    "run_verification_gate",
    "train",
]


# ----------------------------------------------------------------------------- config


def _from_dict(cls, d, section):
    return dataclass_from_dict(cls, d, f"unknown keys in `{section}`:")


@dataclass
class DataConfig:
    """``data:`` section.

    Attributes:
        datasets: dataset files (one HDF5 per protein); relative paths are looked up in the
            working directory, then next to the YAML file.
        split: ``"frames"`` (random frames of every protein go to validation) or
            ``"protein"`` (whole proteins named in ``val_proteins`` go to validation).
        val_fraction: fraction of frames held out with ``split: frames`` (0–1).
        val_proteins: protein names (root attr ``name``) held out with ``split: protein``.
        batch_size: frames per optimizer step, over all ranks (must divide by the rank count).
        max_frames: use at most this many frames per protein (first ones; None = all).
    """

    datasets: list = field(default_factory=list)
    split: str = "frames"
    val_fraction: float = 0.1
    val_proteins: list = field(default_factory=list)
    batch_size: int = 16
    max_frames: int | None = None


@dataclass
class OptimConfig:
    """``optim:`` section.

    Attributes:
        lr: peak learning rate of AdamW (1/step units of θ).
        weight_decay: AdamW decoupled weight decay.
        schedule: ``"constant"``, ``"cosine"`` (to ``min_lr_ratio·lr`` at ``max_steps``) or
            ``"exponential"`` (``gamma_per_1000`` per 1000 steps).
        warmup_steps: linear LR warm-up steps.
        min_lr_ratio: final LR / peak LR for ``cosine``.
        gamma_per_1000: decay factor per 1000 steps for ``exponential``.
        grad_clip: gradient-norm clip (0 = off).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    gamma_per_1000: float = 0.5
    grad_clip: float = 10.0


@dataclass
class TrainerConfig:
    """``trainer:`` section.

    Attributes:
        max_steps: optimizer steps.
        val_every_steps: validate every this many steps.
        checkpoint_every_steps: write ``checkpoints/last.ckpt`` every this many steps.
        early_stopping_patience: stop after this many validations without a better val FM
            loss (0 = off).
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``.
        devices: devices per node (DDP when > 1).
        num_nodes: nodes (DDP when > 1).
        progress_bar: show Lightning's progress bar.
        hvp_probe_chunk: probes per batched double backward (memory bound; None = all k).
    """

    max_steps: int = 1000
    val_every_steps: int = 100
    checkpoint_every_steps: int = 100
    early_stopping_patience: int = 10
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    progress_bar: bool = True
    hvp_probe_chunk: int | None = None


@dataclass
class TrainConfig:
    """A training run (YAML file; documented key by key in docs/training.md).

    Attributes:
        name: run name; outputs go to ``<output_dir>/<name>/``.
        output_dir: parent of run directories.
        seed: seeds model init, data order and split.
        skip_verification: skip the verification gate (loudly).
        hvp_start_step: train FM only before this step (then switch on the HVP/Hessian term).
        cov_ramp_steps: ramp γ linearly from 0 to ``loss.cov_weight`` over this many steps
            after ``hvp_start_step`` (the Term-2 estimate uses the model force, poor early).
        prior: ``{enabled, n_fourier, repulsion_scale}`` for :class:`PriorFit`.
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    skip_verification: bool = False
    hvp_start_step: int = 0
    cov_ramp_steps: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prior: dict = field(default_factory=lambda: {"enabled": True, "n_fourier": 3,
                                                 "repulsion_scale": 1.0})

    @classmethod
    def from_dict(cls, d: dict | None, base_dir: str | Path | None = None) -> TrainConfig:
        """Build from nested dicts; unknown keys raise ``ValueError`` naming the section.

        Relative dataset paths missing from the working directory are looked up in ``base_dir``
        (the YAML file's folder).
        """
        d = dict(d or {})
        sections = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig}
        kwargs = {}
        for key, value in d.items():
            if key in sections:
                kwargs[key] = _from_dict(sections[key], value, key)
            elif key == "model":
                kwargs[key] = ModelConfig.from_dict(value)
            elif key == "loss":
                kwargs[key] = LossConfig.from_dict(value)
            elif key == "prior":
                kwargs[key] = dict({"enabled": True, "n_fourier": 3, "repulsion_scale": 1.0}, **value)
            elif key in cls.__dataclass_fields__:
                kwargs[key] = value
            else:
                raise ValueError(f"unknown top-level config key {key!r}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}")
        cfg = cls(**kwargs)
        if base_dir is not None:  # relative paths: the working directory first, then the YAML's
            cfg.data.datasets = [
                str(Path(base_dir) / p) if not Path(p).is_absolute() and not Path(p).exists()
                and (Path(base_dir) / p).exists() else str(p) for p in cfg.data.datasets]
        if cfg.data.split not in ("frames", "protein"):
            raise ValueError(f"data.split must be 'frames' or 'protein', got {cfg.data.split!r}")
        if cfg.optim.schedule not in ("constant", "cosine", "exponential"):
            raise ValueError(f"optim.schedule must be constant/cosine/exponential, got "
                             f"{cfg.optim.schedule!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (values parsed as YAML).

    Args:
        path: YAML file (None: defaults).
        overrides: e.g. ``["loss.cov_weight=1", "trainer.max_steps=50"]``.

    Returns:
        :class:`TrainConfig`.

    Raises:
        ValueError: a malformed override or an unknown key.
    """
    import yaml

    raw: dict = {}
    base = None
    if path is not None:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
        base = Path(path).parent
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return TrainConfig.from_dict(raw, base_dir=base)


# ----------------------------------------------------------------------------- data


@dataclass
class ProteinData:
    """One protein's dataset file in memory (what training needs; hessid units).

    Attributes:
        name, path: protein name (root attr ``name`` or file stem) and file.
        temperature: K.  frame_id: (T,) int64.
        cg_coordinates: (T, n, 3) Å.  cg_forces: (T, n, 3) kcal/mol/Å (P f).
        bead_types: (n,) int64 in the file's vocabulary; ``vocabulary`` its names.
        weights, projector: (n, N) S and Q.  aa_frame0: (N, 3) Å (for the gate).
        term1: (T, k, n, 3) kcal/mol/Å² or None; ``term1_attrs``; ``term1_done`` (T,) bool.
        hessian_block: (T, 3n, 3n) kcal/mol/Å² or None; ``hessian_done`` (T,) bool.
        potential_energy: (T,) or None.
    """

    name: str
    path: Path
    temperature: float
    frame_id: np.ndarray
    cg_coordinates: np.ndarray
    cg_forces: np.ndarray
    bead_types: np.ndarray
    vocabulary: list
    weights: np.ndarray
    projector: np.ndarray
    aa_frame0: np.ndarray
    term1: np.ndarray | None = None
    term1_attrs: dict = field(default_factory=dict)
    term1_done: np.ndarray | None = None
    hessian_block: np.ndarray | None = None
    hessian_done: np.ndarray | None = None
    potential_energy: np.ndarray | None = None

    @property
    def n_beads(self) -> int:
        return int(self.cg_coordinates.shape[1])

    @property
    def n_frames(self) -> int:
        return int(self.cg_coordinates.shape[0])

    def probe_spec(self) -> tuple[str, int, int]:
        """(kind, seed, k) of the stored Term 1; ``ValueError`` if there is none."""
        a = self.term1_attrs
        if self.term1 is None or not {"probe_kind", "probe_seed", "n_probes"} <= set(a):
            raise ValueError(f"{self.path}: no cg/hvp_term1 with probe_kind/probe_seed/n_probes "
                             "attributes (run `hessid targets`)")
        kind = a["probe_kind"]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        return kind, int(a["probe_seed"]), int(a["n_probes"])


def load_protein(path: str | Path, max_frames: int | None = None) -> ProteinData:
    """Read the parts of a dataset file that training needs (contract layout).

    Raises:
        FileNotFoundError: no file.
        ValueError: no ``cg/`` group, or shapes inconsistent (names the file and dataset).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    sl = slice(None, max_frames)
    with h5py.File(path, "r") as h5:
        if "cg" not in h5:
            raise ValueError(f"{path}: no cg/ group (run `hessid data map` / `hessid targets`)")
        cg = h5["cg"]
        vocab = cg["bead_types"].attrs.get("bead_vocabulary", cg.attrs.get("bead_vocabulary",
                                                                           h5.attrs.get("bead_vocabulary", "[]")))
        vocab = json.loads(vocab.decode() if isinstance(vocab, bytes) else vocab)
        name = h5.attrs.get("name", path.stem)
        name = name.decode() if isinstance(name, bytes) else str(name)
        p = ProteinData(
            name=name or path.stem, path=path, temperature=float(h5.attrs.get("temperature", 300.0)),
            frame_id=h5["frame_id"][sl].astype(np.int64),
            cg_coordinates=cg["coordinates"][sl], cg_forces=cg["forces"][sl],
            bead_types=cg["bead_types"][()].astype(np.int64), vocabulary=list(vocab),
            weights=cg["weights"][()], projector=cg["projector"][()],
            aa_frame0=h5["coordinates"][0],
            potential_energy=h5["potential_energy"][sl] if "potential_energy" in h5 else None,
        )
        if "hvp_term1" in cg:
            p.term1 = cg["hvp_term1"][sl]
            p.term1_attrs = dict(cg["hvp_term1"].attrs)
            done = cg["hvp_term1_done"][sl].astype(bool) if "hvp_term1_done" in cg else None
            p.term1_done = done if done is not None else np.ones(p.term1.shape[0], bool)
        if "hessian_block" in cg:
            p.hessian_block = cg["hessian_block"][sl]
            p.hessian_done = (cg["hessian_block_done"][sl].astype(bool) if "hessian_block_done" in cg
                              else np.ones(p.hessian_block.shape[0], bool))
    n = p.n_beads
    if p.cg_forces.shape != p.cg_coordinates.shape or p.bead_types.shape != (n,):
        raise ValueError(f"{path}: cg/forces {p.cg_forces.shape}, cg/coordinates "
                         f"{p.cg_coordinates.shape}, cg/bead_types {p.bead_types.shape} disagree")
    if p.term1 is not None and p.term1.shape[2:] != (n, 3):
        raise ValueError(f"{path}: cg/hvp_term1 {p.term1.shape} is not (T, k, {n}, 3)")
    if not p.vocabulary:
        p.vocabulary = [f"type{i}" for i in range(int(p.bead_types.max()) + 1)]
    return p


# ----------------------------------------------------------------------------- gate


class VerificationGateError(RuntimeError):
    """The configured CG map / projector failed the exact check; training refused."""


def run_verification_gate(proteins: list[ProteinData], skip: bool = False) -> dict:
    """Verify each protein's CG map and projector before training (the design card's
    "GPU training once identities pass").

    Calls :func:`hessid.verification.elastic.check_linear_map_on_structure` on the frame-0 AA
    structure (N, 3) Å with the dataset's ``LinearMap`` (S, Q) at the dataset temperature:
    ``Q Sᵀ = I``, the mean force and the CG Hessian ``Term1 − β Cov(P f)`` against the exact
    ``(M K⁻¹ Mᵀ)⁻¹`` of the elastic network (spec §2, §7.1), plus negative controls.

    Args:
        proteins: loaded datasets.
        skip: do not check; return ``{"skipped": True}`` after a loud warning.

    Returns:
        ``{"passed": bool, "skipped": bool, "proteins": {name: [CheckResult as dict, ...]}}``.

    Raises:
        VerificationGateError: a check failed or could not run (names protein, check, error,
            tolerance; says how to skip).
    """
    if skip:
        msg = ("VERIFICATION GATE SKIPPED (--skip-verification): the CG map and projector of "
               f"{[p.name for p in proteins]} were NOT checked; HVP targets may be wrong")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        return {"passed": None, "skipped": True, "proteins": {}}
    try:
        from hessid.verification.elastic import check_linear_map_on_structure
    except ImportError as exc:  # pragma: no cover - the verification layer ships with hessid
        raise VerificationGateError(f"cannot run the verification gate ({exc}); pass "
                                    "--skip-verification to train anyway") from exc

    class _Map:  # duck-typed LinearMap (a broken Q must reach the check, not fail at init)
        def __init__(self, S, Q):
            self.weights = torch.as_tensor(S, dtype=torch.float64)
            self.projector = torch.as_tensor(Q, dtype=torch.float64)
            self.spatial_dim = 3
            self.n_beads, self.n_atoms = self.weights.shape

    report: dict = {"passed": True, "skipped": False, "proteins": {}}
    failures = []
    for p in proteins:
        try:
            rows = check_linear_map_on_structure(p.aa_frame0, _Map(p.weights, p.projector),
                                                 temperature=p.temperature, name=p.name)
        except Exception as exc:  # noqa: BLE001 - any failure to verify refuses training
            failures.append(f"{p.name}: the check could not run: {exc}")
            report["proteins"][p.name] = [{"error": str(exc)}]
            continue
        report["proteins"][p.name] = [
            {k: (v if isinstance(v, (str, bool, int, float, type(None))) else str(v))
             for k, v in asdict(r).items()} for r in rows]
        for r in rows:
            log.info("verification %s: %s: %.3e (tol %.1e) %s", p.name, r.quantity,
                     r.max_rel_error, r.tolerance, "ok" if r.passed else "FAILED")
            if not r.passed:
                failures.append(f"{p.name}: {r.quantity}: error {r.max_rel_error:.3e} vs "
                                f"tolerance {r.tolerance:.1e}")
    if failures:
        report["passed"] = False
        raise VerificationGateError(
            "verification gate failed; refusing to train:\n  " + "\n  ".join(failures)
            + "\nFix the CG map/projector of the dataset (hessid data map), or pass "
              "--skip-verification to train anyway.")
    return report


# ----------------------------------------------------------------------------- batches


def collate_frames(proteins: list[ProteinData], items: list[tuple[int, int]],
                   type_maps: list[np.ndarray], dtype: torch.dtype, need_probes: bool,
                   need_hessian: bool = False) -> dict:
    """Graph-batch frames ``(protein index, frame index)`` with targets and online probes.

    Probes are regenerated from frame ids with each protein's stored probe spec:
    ``draw_probes(kind, seed, [frame_id], k, 3n)`` reshaped (k, n, 3) — the probes its Term 1
    used (spec §5; never stored).

    Returns:
        dict of tensors: ``positions`` (A, 3) Å, ``bead_types`` (A,), ``batch`` (A,),
        ``forces`` (A, 3) kcal/mol/Å, ``frame_id`` (B,), ``beta`` (B,) mol/kcal, and with
        probes ``probes``/``term1`` (k, A, 3) and ``probe_scale`` (B,); with Hessians
        ``hessian_blocks`` (list of (3n, 3n)); ``energy`` (B,) when every frame has one.

    Raises:
        ValueError: proteins in one batch stored different k.
    """
    from hessid.probes import draw_probes, probe_scale

    pos, types, batch, forces, fid, beta, probes, term1, scale, hess, energy = ([] for _ in range(11))
    ks = set()
    for b, (pi, t) in enumerate(items):
        p = proteins[pi]
        n = p.n_beads
        pos.append(torch.as_tensor(p.cg_coordinates[t]))
        forces.append(torch.as_tensor(p.cg_forces[t]))
        types.append(torch.as_tensor(type_maps[pi][p.bead_types]))
        batch.append(torch.full((n,), b, dtype=torch.long))
        fid.append(int(p.frame_id[t]))
        beta.append(beta_of_temperature(p.temperature))
        if p.potential_energy is not None:
            energy.append(float(p.potential_energy[t]))
        if need_probes:
            kind, seed, k = p.probe_spec()
            ks.add(k)
            v = draw_probes(kind, seed, [int(p.frame_id[t])], k, 3 * n)  # (1, k, 3n)
            probes.append(v.reshape(k, n, 3))  # (k, n, 3)
            term1.append(torch.as_tensor(p.term1[t]))  # (k, n, 3)
            stored = p.term1_attrs.get("probe_scale")
            c = probe_scale(kind, 3 * n)
            if stored is not None and not math.isclose(float(stored), c, rel_tol=1e-12):
                raise ValueError(f"{p.path}: stored probe_scale {stored} != probe_scale({kind!r}, "
                                 f"{3 * n}) = {c}")
            scale.append(c)
        if need_hessian:
            if p.hessian_block is None:
                raise ValueError(f"{p.path}: mode fm_hessian needs cg/hessian_block")
            hess.append(torch.as_tensor(p.hessian_block[t], dtype=dtype))
    if len(ks) > 1:
        raise ValueError(f"proteins in one batch stored different probe counts {sorted(ks)}")
    out = {
        "positions": torch.cat(pos).to(dtype), "bead_types": torch.cat(types).long(),
        "batch": torch.cat(batch), "forces": torch.cat(forces).to(dtype),
        "frame_id": torch.tensor(fid, dtype=torch.long), "beta": torch.tensor(beta, dtype=dtype),
    }
    if len(energy) == len(items):
        out["energy"] = torch.tensor(energy, dtype=dtype)
    if need_probes:
        out["probes"] = torch.cat(probes, 1).to(dtype)  # (k, A, 3)
        out["term1"] = torch.cat(term1, 1).to(dtype)  # (k, A, 3)
        out["probe_scale"] = torch.tensor(scale, dtype=dtype)
    if need_hessian:
        out["hessian_blocks"] = hess
    return out


class FrameStream:
    """Deterministic, resumable, rank-sharded batches of frames (a Lightning train/val loader).

    Global step s of epoch e = s // L (L batches per epoch) uses the global batch
    ``perm(seed, e)[(s % L)·b : (s % L + 1)·b]``; rank r of w keeps items ``r::w``. Iteration
    starts at the owning trainer's ``global_step``, so a resumed run sees the same batches.
    """

    def __init__(self, items, batch_size, seed, collate, shuffle, module=None):
        self.items = list(items)
        self.batch_size = max(1, min(int(batch_size), len(self.items)))
        self.seed = int(seed)
        self.collate = collate
        self.shuffle = shuffle
        self.module = module
        if shuffle:
            self.n_batches = len(self.items) // self.batch_size  # drop_last: equal rank shares
        else:
            self.n_batches = math.ceil(len(self.items) / self.batch_size)

    def _rank_world(self):
        trainer = getattr(self.module, "_trainer", None) if self.module is not None else None
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def __len__(self) -> int:
        return self.n_batches

    def order(self, epoch: int) -> list:
        if not self.shuffle:
            return self.items
        perm = np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.items))
        return [self.items[i] for i in perm]

    def global_batch(self, step: int) -> list:
        epoch, pos = divmod(int(step), self.n_batches)
        order = self.order(epoch)
        return order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def __iter__(self):
        rank, world = self._rank_world()
        if self.shuffle and self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the "
                             f"number of ranks ({world}) so results do not depend on it")
        if self.shuffle:
            trainer = self.module._trainer
            start = int(trainer.global_step)
            first = start - start % self.n_batches
            for step in range(start, first + self.n_batches):
                yield self.collate(self.global_batch(step)[rank::world])
        else:
            # every rank sees a share of every validation batch, so no rank is left without a
            # validation metric (early stopping and sync_dist need one on each rank); a batch
            # smaller than the rank count repeats its last frame on the ranks it cannot fill
            for pos in range(self.n_batches):
                batch = self.items[pos * self.batch_size : (pos + 1) * self.batch_size]
                yield self.collate(batch[rank::world] or batch[-1:])

    # Lightning's resumable-loader protocol: the position is derived from global_step
    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError("resuming with a different data seed changes the data order")


# ----------------------------------------------------------------------------- module


def _lr_lambda(cfg: OptimConfig, max_steps: int):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "exponential":
            return warm * cfg.gamma_per_1000 ** (step / 1000.0)
        frac = min(1.0, step / max(1, max_steps))
        return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    return f


def _make_module(potential: CGPotential, cfg: TrainConfig, run_info: dict):
    import lightning.pytorch as pl
    from hessid.training.learning.derivatives import energy_forces_hvp, full_hessian

    class CGTrainingModule(pl.LightningModule):
        """LightningModule around a CGPotential: losses of spec §5, AdamW + schedule."""

        def __init__(self):
            super().__init__()
            self.potential = potential
            self.cfg = cfg
            self.run_info = run_info

        def gamma(self, step: int) -> float:
            target = float(self.cfg.loss.cov_weight)
            if self.cfg.cov_ramp_steps <= 0:
                return target
            return target * min(1.0, max(0, step - self.cfg.hvp_start_step) / self.cfg.cov_ramp_steps)

        def compute_losses(self, data: dict, step: int) -> dict:
            lc = self.cfg.loss
            n_graphs = int(data["frame_id"].shape[0])
            curvature = lc.mode != "fm" and step >= self.cfg.hvp_start_step
            use_hvp = curvature and lc.mode == "fm_hvp"
            out = energy_forces_hvp(self.potential, data["positions"], data["bead_types"],
                                    data["batch"], data["probes"] if use_hvp else None,
                                    create_graph=True,
                                    probe_chunk=self.cfg.trainer.hvp_probe_chunk)
            terms = {"fm": force_matching_loss(out.forces, data["forces"], data["batch"], n_graphs)}
            total = lc.lambda_force * terms["fm"] / lc.norm("force")
            gamma = self.gamma(step)
            if use_hvp:
                h = hvp_targets(data["term1"], data["forces"] - out.forces, data["probes"],
                                data["beta"], gamma, data["batch"], n_graphs)
                terms["hvp"] = hvp_loss(out.hvp, h, data["batch"], n_graphs, data["probe_scale"])
                total = total + lc.lambda_hvp * terms["hvp"] / lc.norm("hvp")
            elif curvature:  # full-Hessian matching
                hs = full_hessian(self.potential, data["positions"], data["bead_types"],
                                  data["batch"], probe_chunk=self.cfg.trainer.hvp_probe_chunk)
                counts = torch.bincount(data["batch"]).tolist()
                residual = torch.split(data["forces"] - out.forces.detach(), counts)
                tg = hessian_targets(data["hessian_blocks"], list(residual), data["beta"], gamma)
                terms["hessian"] = hessian_loss(hs, tg)
                total = total + lc.lambda_hvp * terms["hessian"] / lc.norm("hessian")
            if lc.lambda_energy > 0 and "energy" in data:
                terms["energy"] = energy_loss(out.energy, data["energy"])
                total = total + lc.lambda_energy * terms["energy"] / lc.norm("energy")
            terms["total"] = total
            terms["gamma"] = torch.tensor(gamma)
            return terms

        def training_step(self, data, batch_idx):
            terms = self.compute_losses(data, int(self.global_step))
            bs = int(data["frame_id"].shape[0])
            for k, v in terms.items():
                self.log(f"train/{k}", v.detach(), batch_size=bs, prog_bar=k in ("fm", "hvp"))
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
            return terms["total"]

        def validation_step(self, data, batch_idx):
            with torch.enable_grad():
                terms = self.compute_losses(data, int(self.global_step))
            bs = int(data["frame_id"].shape[0])
            for k, v in terms.items():
                if k != "gamma":
                    self.log(f"val/{k}", v.detach(), batch_size=bs, sync_dist=True,
                             prog_bar=k == "fm")

        def configure_optimizers(self):
            oc = self.cfg.optim
            opt = torch.optim.AdamW(self.potential.parameters(), lr=oc.lr,
                                    weight_decay=oc.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(oc, self.cfg.trainer.max_steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def on_save_checkpoint(self, checkpoint):
            checkpoint["hessid_potential"] = self.potential.checkpoint_dict(
                extra=dict(self.run_info, config=self.cfg.to_dict()))

    return CGTrainingModule()


class _CSVMetrics:
    """Lightning callback: one CSV row per training step and per validation (every term)."""

    COLUMNS = ["step", "split", "total", "fm", "hvp", "hessian", "energy", "gamma", "lr"]

    def __new__(cls, path: Path):
        import lightning.pytorch as pl

        class CSVMetrics(pl.Callback):
            def __init__(self):
                self.path = path

            def _write(self, row: dict):
                new = not self.path.exists()
                with open(self.path, "a", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=cls.COLUMNS)
                    if new:
                        w.writeheader()
                    w.writerow({k: row.get(k, "") for k in cls.COLUMNS})

            def on_train_start(self, trainer, module):
                # a resumed run drops rows logged after the checkpoint it resumes from
                if self.path.exists() and trainer.is_global_zero:
                    with open(self.path) as fh:
                        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= trainer.global_step]
                    with open(self.path, "w", newline="") as fh:
                        w = csv.DictWriter(fh, fieldnames=cls.COLUMNS)
                        w.writeheader()
                        w.writerows(rows)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if not trainer.is_global_zero:
                    return
                m = trainer.callback_metrics
                row = {"step": trainer.global_step, "split": "train"}
                for k in cls.COLUMNS[2:]:
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

        return CSVMetrics()


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Plot every loss term of ``metrics.csv`` against the step (log scale) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(metrics_csv).exists():
        return None
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
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
    plt.close(fig)
    return Path(out_png)


# ----------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    """What :func:`train` wrote.

    Attributes:
        run_dir: ``<output_dir>/<name>``.  model: ``model.pt``.  metrics_csv: ``metrics.csv``.
        plot: ``loss_curves.png`` (None without rows).  verification: the gate's report.
        global_step: optimizer steps done.  best_val_fm: best validation FM loss
            ((kcal/mol/Å)² per frame) or None.
    """

    run_dir: Path
    model: Path
    metrics_csv: Path
    plot: Path | None
    verification: dict
    global_step: int
    best_val_fm: float | None


def _split(proteins: list[ProteinData], cfg: TrainConfig, need_term1: bool,
           need_hessian: bool = False):
    train_items, val_items = [], []
    rng = np.random.default_rng([cfg.seed, 1])
    for pi, p in enumerate(proteins):
        ok = np.ones(p.n_frames, bool)
        if need_term1:
            if p.term1 is None:
                raise ValueError(f"{p.path}: loss mode fm_hvp needs cg/hvp_term1 (run `hessid targets`)")
            ok &= p.term1_done
            if (~ok).any():
                log.info("%s: %d frames without Term 1 are not used", p.name, int((~ok).sum()))
        if need_hessian:
            if p.hessian_block is None:
                raise ValueError(f"{p.path}: loss mode fm_hessian needs cg/hessian_block "
                                 "(`hessid targets --full-block`)")
            ok &= p.hessian_done
        frames = np.flatnonzero(ok)
        if cfg.data.split == "protein":
            (val_items if p.name in cfg.data.val_proteins else train_items).extend((pi, int(t)) for t in frames)
        else:
            perm = rng.permutation(frames)
            n_val = int(round(cfg.data.val_fraction * len(frames)))
            val_items.extend((pi, int(t)) for t in sorted(perm[:n_val]))
            train_items.extend((pi, int(t)) for t in sorted(perm[n_val:]))
    if cfg.data.split == "protein":
        unknown = set(cfg.data.val_proteins) - {p.name for p in proteins}
        if unknown:
            raise ValueError(f"data.val_proteins names unknown proteins {sorted(unknown)}")
    if not train_items:
        raise ValueError("no training frames after the split")
    return train_items, val_items


def _normalisations(proteins, items, need_term1, need_hessian) -> dict:
    from hessid.probes import probe_scale

    fn, hn, hs, en = [], [], [], []
    for pi, t in items:
        p = proteins[pi]
        fn.append(float((p.cg_forces[t] ** 2).sum()))
        if need_term1:
            kind = p.probe_spec()[0]
            hn.append(probe_scale(kind, 3 * p.n_beads) * float((p.term1[t] ** 2).sum(-1).sum(-1).mean()))
        if need_hessian and p.hessian_block is not None:
            hs.append(float((p.hessian_block[t] ** 2).sum()))
        if p.potential_energy is not None:
            en.append(float(p.potential_energy[t]))
    out = {"force_norm": float(np.mean(fn))}
    if hn:
        out["hvp_norm"] = float(np.mean(hn))
    if hs:
        out["hessian_norm"] = float(np.mean(hs))
    if en:
        out["energy_norm"] = float(np.var(en)) or 1.0
    return out


def train(config: TrainConfig | dict | str | Path, resume: bool = False,
          skip_verification: bool | None = None, callbacks: list | None = None) -> TrainResult:
    """Train a CG potential (FM / FM+AA / FM+AA+Cov / full Hessian; spec §5).

    Args:
        config: :class:`TrainConfig`, a dict of its sections, or a YAML path.
        resume: continue from ``<run_dir>/checkpoints/last.ckpt`` (same data order, same
            result as an uninterrupted run).
        skip_verification: override ``config.skip_verification``.
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`TrainResult`.

    Raises:
        VerificationGateError: the gate failed (nothing trained).
        FileNotFoundError: a dataset file, or ``last.ckpt`` with ``resume``, is missing.
        ValueError: invalid config or data.
    """
    import lightning.pytorch as pl
    from hessid.training.learning.priors import PriorFit
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    cfg = config
    if skip_verification is not None:
        cfg.skip_verification = bool(skip_verification)
    if not cfg.data.datasets:
        raise ValueError("data.datasets is empty: list the dataset files to train on")
    run_dir = Path(cfg.output_dir) / cfg.name
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint {last}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _add_file_log(run_dir / "train.log")

    proteins = [load_protein(p, cfg.data.max_frames) for p in cfg.data.datasets]
    names = [p.name for p in proteins]
    if len(set(names)) != len(names):
        raise ValueError(f"protein names must be unique, got {names}")
    verification = run_verification_gate(proteins, skip=cfg.skip_verification)
    (run_dir / "verification.json").write_text(json.dumps(verification, indent=1))
    log.info("verification gate: %s", "SKIPPED" if verification["skipped"] else "passed")

    vocabulary: list[str] = []
    for p in proteins:
        for name in p.vocabulary:
            if name not in vocabulary:
                vocabulary.append(name)
    type_maps = [np.array([vocabulary.index(v) for v in p.vocabulary], dtype=np.int64) for p in proteins]

    need_term1 = cfg.loss.mode == "fm_hvp"
    need_hessian = cfg.loss.mode == "fm_hessian"
    train_items, val_items = _split(proteins, cfg, need_term1, need_hessian)
    norms = _normalisations(proteins, train_items, need_term1, need_hessian)
    for key, value in norms.items():
        if getattr(cfg.loss, key) is None:
            setattr(cfg.loss, key, value)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    prior = None
    if cfg.prior.get("enabled", True):
        by_protein: dict[int, list[int]] = {}
        for pi, t in train_items:
            by_protein.setdefault(pi, []).append(t)
        temps = {proteins[pi].temperature for pi in by_protein}
        prior = PriorFit(temperature=float(np.mean(sorted(temps))),
                         n_fourier=int(cfg.prior.get("n_fourier", 3)),
                         repulsion_scale=float(cfg.prior.get("repulsion_scale", 1.0)),
                         ).fit([proteins[pi].cg_coordinates[ts] for pi, ts in by_protein.items()],
                               bead_types=[type_maps[pi][proteins[pi].bead_types] for pi in by_protein],
                               ).fetch_model()
    max_beads = max(p.n_beads for p in proteins)
    if cfg.model.max_num_neighbors < max_beads:
        raise ValueError(f"model.max_num_neighbors={cfg.model.max_num_neighbors} < {max_beads} "
                         "beads: raise it so no pair inside the cutoff is dropped")
    potential = CGPotential(vocabulary, prior, cfg.model)
    run_info = {"verification": verification, "proteins": names,
                "n_train_frames": len(train_items), "n_val_frames": len(val_items),
                "loss": cfg.loss.to_dict()}
    module = _make_module(potential, cfg, run_info)
    dtype = potential.dtype

    def collate(items):
        return collate_frames(proteins, items, type_maps, dtype, need_term1, need_hessian)

    train_stream = FrameStream(train_items, cfg.data.batch_size, cfg.seed, collate, True, module)
    val_stream = FrameStream(val_items, cfg.data.batch_size, cfg.seed, collate, False, module) if val_items else None

    tc = cfg.trainer
    cbs = [_CSVMetrics(run_dir / "metrics.csv"),
           ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=tc.checkpoint_every_steps,
                           save_last=True, save_top_k=1, auto_insert_metric_name=False)]
    if val_stream is not None and tc.early_stopping_patience > 0:
        cbs.append(EarlyStopping(monitor="val/fm", patience=tc.early_stopping_patience, mode="min",
                                 check_on_train_epoch_end=False))
    cbs.extend(callbacks or [])
    strategy = "auto"
    if tc.devices * tc.num_nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    trainer = pl.Trainer(
        accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes, strategy=strategy,
        max_steps=tc.max_steps, max_epochs=-1, val_check_interval=tc.val_every_steps if val_stream else None,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if val_stream else 0,
        num_sanity_val_steps=0, gradient_clip_val=cfg.optim.grad_clip or None,
        callbacks=cbs, logger=False, enable_progress_bar=tc.progress_bar,
        enable_model_summary=False, inference_mode=False, deterministic=False,
        log_every_n_steps=1, default_root_dir=str(run_dir), use_distributed_sampler=False,
    )
    trainer.fit(module, train_dataloaders=train_stream, val_dataloaders=val_stream,
                ckpt_path=str(last) if resume else None)

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
                       best_val_fm=best)


def _add_file_log(path: Path) -> None:
    root = logging.getLogger("hessid")
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
