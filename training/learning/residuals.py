"""Force residuals ``dF = P f − F(R)`` of a force-matching model: computed, stored and measured.

The cross-fitted residual of docs/training.md ("Cross-fitted residual") is written by
:func:`hessid.training.learning.crossfit.crossfit_residuals` into one numpy ``.npz`` file in its
output folder (the residuals are a property of a run, not of the dataset, so the dataset files
are not touched and no HDF5 is written here). This module holds the file format
(:func:`write_residual_file`, :func:`read_residual_file`), the trainer's lookup
(:func:`residuals_for_frames`), the fold assignment (:func:`fold_assignment`), the residuals
of a model (:func:`model_residuals`) and their second moments (:func:`residual_second_moment`),
which the ala2_v2 study compares with conditional labels.

File layout (``RESIDUAL_FORMAT``), protein i in the order of ``data.datasets``:

==================  ============  ==============================================================
key                 shape/dtype   meaning
==================  ============  ==============================================================
``format``          str           ``"hessid-crossfit-residuals/1"``
``provenance``      str (JSON)    datasets (path, name, fingerprint), folds, fold seed, block
                                  length, fold model checkpoints (path, sha256, training frame
                                  count), the fold run config, hessid version
``frame_id_i``      (M_i,) int64  frame ids with a residual (the main run's train + val frames)
``split_i``         (M_i,) int8   0: a training frame of the main run, 1: a validation frame
``fold_i``          (M_i,) int64  fold k(t) whose model (trained on every other training fold)
                                  gave the residual
``residual_i``      (M_i, n, 3)   ``P f_t − F^{(−k(t))}(R_t)`` float64, kcal/mol/Å
==================  ============  ==============================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hessid.training.learning.datasets import ProteinData
from hessid.units import beta as beta_of_temperature

__all__ = [
    "RESIDUAL_FORMAT",
    "ResidualFile",
    "ResidualMoments",
    "data_fingerprint",
    "fold_assignment",
    "model_residuals",
    "read_residual_file",
    "residual_second_moment",
    "residuals_for_frames",
    "write_residual_file",
]

RESIDUAL_FORMAT = "hessid-crossfit-residuals/1"
#: domain separation of the fold permutation's generator (``[seed, this]``) from the split's
#: ``[seed, 1]`` and the epochs' ``[seed, epoch]``
_FOLD_STREAM = 0x6B666F6C64  # "kfold"


def data_fingerprint(protein: ProteinData, frames: np.ndarray) -> str:
    """sha256 of what a residual depends on: frame ids, CG coordinates and CG forces (float64
    bytes) of ``frames`` in the given order.

    Not the file's hash: ``hessid targets`` appends Term 1 to a dataset in place, which must not
    invalidate its residuals, while any change of ``R`` or ``P f`` must.

    Args:
        protein: the dataset in memory.  frames: (M,) int row indices.

    Returns:
        hex digest.
    """
    frames = np.asarray(frames, dtype=np.int64)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(protein.frame_id[frames], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(protein.cg_coordinates[frames], dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(protein.cg_forces[frames], dtype=np.float64).tobytes())
    return h.hexdigest()


def fold_assignment(proteins: list[ProteinData], items: list[tuple[int, int]], folds: int,
                    seed: int, block: int = 1) -> np.ndarray:
    """K-fold partition of training frames, deterministic and keyed by frame id.

    Frames are ordered by (protein index, frame id), cut into blocks of ``block`` consecutive
    frames of one protein (``block = 1``: single frames), and the blocks are dealt to folds
    ``0, 1, …, K−1, 0, …`` in the order of a permutation drawn from
    ``numpy.random.default_rng([seed, 0x6B666F6C64])``: fold sizes differ by at most one block,
    and the result depends only on the set of (protein, frame id) keys, ``folds``, ``seed`` and
    ``block`` — not on the order of ``items``. Blocks longer than the correlation time of the
    force noise keep correlated neighbours of a held-out frame out of its fold model's data.

    Args:
        proteins: loaded datasets (for the frame ids).
        items: training frames ``(protein index, frame index)``.
        folds: K ≥ 2.  seed: permutation seed.  block: frames per block (≥ 1).

    Returns:
        (len(items),) int64 fold of each item, in the order of ``items``.

    Raises:
        ValueError: K < 2, ``block`` < 1, or fewer blocks than folds (a fold would be empty).
    """
    if int(folds) < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    keys = np.array([(pi, int(proteins[pi].frame_id[t])) for pi, t in items], dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # by protein, then frame id
    block_of = np.empty(len(items), dtype=np.int64)
    n_blocks, prev, run = 0, None, 0
    for pos in order:
        pi = int(keys[pos, 0])
        if pi != prev or run == block:
            n_blocks, run, prev = n_blocks + 1, 0, pi
        block_of[pos] = n_blocks - 1
        run += 1
    if n_blocks < folds:
        raise ValueError(f"{len(items)} training frames in {n_blocks} blocks of {block} cannot "
                         f"fill {folds} folds")
    perm = np.random.default_rng([int(seed), _FOLD_STREAM]).permutation(n_blocks)
    fold_of_block = np.empty(n_blocks, dtype=np.int64)
    fold_of_block[perm] = np.arange(n_blocks) % int(folds)
    return fold_of_block[block_of]


def model_residuals(potential, protein: ProteinData, frames, batch_size: int = 256) -> np.ndarray:
    """Force residuals ``dF_t = P f_t − F_θ(R_t)`` of a CG potential on frames of one dataset.

    Forces by autograd (:meth:`CGPotential.forces`, prior included) in the potential's dtype,
    the difference in float64.

    Args:
        potential: a :class:`~hessid.training.learning.models.CGPotential` (its
            ``bead_vocabulary`` must name every bead type of ``protein``).
        protein: the dataset in memory.  frames: (M,) int row indices.
        batch_size: frames per forward pass.

    Returns:
        (M, n, 3) float64, kcal/mol/Å.

    Raises:
        ValueError: a bead type of ``protein`` is not in the potential's vocabulary.
    """
    frames = np.asarray(frames, dtype=np.int64)
    vocab = list(potential.bead_vocabulary)
    missing = sorted(set(protein.vocabulary) - set(vocab))
    if missing:
        raise ValueError(f"{protein.path}: bead types {missing} are not in the model's vocabulary {vocab}")
    types = torch.as_tensor([vocab.index(protein.vocabulary[b]) for b in protein.bead_types], dtype=torch.long)
    n = protein.n_beads
    dtype = potential.dtype
    device = next(iter(potential.parameters())).device
    out = np.empty((len(frames), n, 3), dtype=np.float64)
    for start in range(0, len(frames), max(1, int(batch_size))):
        rows = frames[start : start + batch_size]
        b = len(rows)
        pos = torch.as_tensor(protein.cg_coordinates[rows], dtype=dtype, device=device).reshape(b * n, 3)
        batch = torch.arange(b, device=device).repeat_interleave(n)
        f = potential.forces(pos, types.to(device).repeat(b), batch).detach()
        out[start : start + b] = protein.cg_forces[rows] - f.reshape(b, n, 3).double().cpu().numpy()
    return out


# ----------------------------------------------------------------------------- file


@dataclass
class ResidualFile:
    """A residual file in memory (:func:`read_residual_file`).

    Attributes:
        path: the file.  provenance: its JSON provenance as a dict.
        frame_id, split, fold, residual: per protein (file order) the arrays of the module
            table: (M_i,) int64, (M_i,) int8, (M_i,) int64, (M_i, n_i, 3) float64 kcal/mol/Å.
    """

    path: Path
    provenance: dict
    frame_id: list[np.ndarray]
    split: list[np.ndarray]
    fold: list[np.ndarray]
    residual: list[np.ndarray]


def write_residual_file(path: str | Path, provenance: dict, frame_id: list[np.ndarray],
                        split: list[np.ndarray], fold: list[np.ndarray],
                        residual: list[np.ndarray]) -> Path:
    """Write a residual file (module table); via ``<path>.tmp.npz`` and a rename, so ``path`` is
    never half-written.

    Args:
        path: the ``.npz`` file.  provenance: JSON-serialisable dict.
        frame_id, split, fold, residual: per protein, as in :class:`ResidualFile`.

    Returns:
        ``path``.

    Raises:
        ValueError: per-protein arrays of different lengths.
    """
    path = Path(path)
    arrays = {"format": np.array(RESIDUAL_FORMAT), "provenance": np.array(json.dumps(provenance, sort_keys=True))}
    for i, (fid, sp, fo, r) in enumerate(zip(frame_id, split, fold, residual, strict=True)):
        if not len(fid) == len(sp) == len(fo) == len(r):
            raise ValueError(f"protein {i}: frame_id, split, fold and residual lengths differ")
        arrays[f"frame_id_{i}"] = np.asarray(fid, dtype=np.int64)
        arrays[f"split_{i}"] = np.asarray(sp, dtype=np.int8)
        arrays[f"fold_{i}"] = np.asarray(fo, dtype=np.int64)
        arrays[f"residual_{i}"] = np.asarray(r, dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    return path


def read_residual_file(path: str | Path) -> ResidualFile:
    """Read a residual file written by :func:`write_residual_file`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a residual file of this format (names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"residual file {path} does not exist (run crossfit_residuals)")
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"]) if "format" in z.files else None
            if fmt != RESIDUAL_FORMAT:
                raise ValueError(f"{path}: not a cross-fitted residual file (format {fmt!r}, "
                                 f"expected {RESIDUAL_FORMAT!r})")
            prov = json.loads(str(z["provenance"]))
            n = len(prov["datasets"])
            cols = [[z[f"{key}_{i}"] for i in range(n)] for key in ("frame_id", "split", "fold", "residual")]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable cross-fitted residual file ({exc})") from exc
    return ResidualFile(path, prov, *cols)


def residuals_for_frames(path: str | Path, proteins: list[ProteinData],
                         train_items: list[tuple[int, int]],
                         val_items: list[tuple[int, int]]) -> list[np.ndarray]:
    """The stored residuals of a run's frames, checked against the run's data and split.

    The file must hold, per protein (matched by name), residuals for exactly the run's training
    frames (``split = 0``) and validation frames (``split = 1``), and the data fingerprint
    (:func:`data_fingerprint`) of those frames must equal the stored one: a residual is only
    valid for the frames, split and data it was cross-fitted on.

    Args:
        path: the residual file (``loss.residual_file``).
        proteins: the run's datasets.  train_items, val_items: the run's split.

    Returns:
        per protein a (T, n, 3) float64 array (kcal/mol/Å), NaN on rows outside the split.

    Raises:
        FileNotFoundError: no file.
        ValueError: a protein is missing from the file, its frames or split differ, or its data
            changed (each names the file, the protein and a frame id).
    """
    rf = read_residual_file(path)
    by_name = {d["name"]: i for i, d in enumerate(rf.provenance["datasets"])}
    out = []
    for pi, p in enumerate(proteins):
        if p.name not in by_name:
            raise ValueError(f"{rf.path}: no residuals for protein {p.name!r} (file has {sorted(by_name)})")
        i = by_name[p.name]
        row_of = {int(f): t for t, f in enumerate(p.frame_id)}
        arr = np.full((p.n_frames, p.n_beads, 3), np.nan)
        for code, items in ((0, train_items), (1, val_items)):
            want = {int(p.frame_id[t]) for q, t in items if q == pi}
            have = {int(f) for f in rf.frame_id[i][rf.split[i] == code]}
            what = "training" if code == 0 else "validation"
            if want != have:
                diff = sorted(want ^ have)
                raise ValueError(
                    f"{rf.path}: protein {p.name!r}: the run's {what} frames differ from those the "
                    f"residuals were cross-fitted for ({len(want - have)} missing, {len(have - want)} "
                    f"extra, e.g. frame id {diff[0]}); rerun crossfit_residuals with this config")
        rows = np.array([row_of[int(f)] for f in rf.frame_id[i]], dtype=np.int64)
        if rf.residual[i].shape[1:] != (p.n_beads, 3):
            raise ValueError(f"{rf.path}: protein {p.name!r}: residuals {rf.residual[i].shape[1:]} "
                             f"vs {p.n_beads} beads")
        stored = rf.provenance["datasets"][i]["fingerprint"]
        if data_fingerprint(p, rows) != stored:
            raise ValueError(f"{rf.path}: protein {p.name!r}: CG coordinates/forces/frame ids of "
                             f"{p.path} differ from those the residuals were computed on")
        arr[rows] = rf.residual[i]
        out.append(arr)
    return out


# ----------------------------------------------------------------------------- moments


@dataclass
class ResidualMoments:
    """Per-frame second moments of force residuals (:func:`residual_second_moment`).

    Attributes:
        frame_id: (M,) int64.
        beta_norm2: (M,) float64 ``β ‖dF_t‖²``, kcal/mol/Å² (= mol/kcal · (kcal/mol/Å)²).
        beta_outer: (M, 3n, 3n) float64 ``β dF_t dF_tᵀ``, kcal/mol/Å², bead-major (x, y, z of
            bead 0, then bead 1, …), the layout of ``cg/hessian_block``.
    """

    frame_id: np.ndarray
    beta_norm2: np.ndarray
    beta_outer: np.ndarray

    def mean(self) -> tuple[float, float, np.ndarray]:
        """``(mean β‖dF‖², its standard error, mean β dF dFᵀ (3n, 3n))`` over frames (s.e. from
        the frame-to-frame spread with an n − 1 divisor: frames assumed independent)."""
        m = len(self.beta_norm2)
        se = float(np.std(self.beta_norm2, ddof=1) / np.sqrt(m)) if m > 1 else float("nan")
        return float(np.mean(self.beta_norm2)), se, self.beta_outer.mean(0)


def residual_second_moment(potential, protein: ProteinData, temperature: float | None = None,
                           frames=None, residuals: np.ndarray | None = None,
                           batch_size: int = 256) -> ResidualMoments:
    """Per-frame ``β ‖dF‖²`` and ``β dF dFᵀ`` of same-fit, cross-fit or any given residuals.

    With ``ε = P f − F(R)`` (F the mean force) and ``b = F(R) − F_θ(R)``, ``dF = ε + b`` and
    ``E[β dF dFᵀ | R] = β Cov(P f | R) + β E[b bᵀ | R] + β E[b εᵀ + ε bᵀ | R]``
    (docs/training.md "Cross-fitted residual"): the frame mean of ``beta_outer`` estimates
    Term 2's covariance, biased by the model error ``β b bᵀ`` (positive semidefinite) and, when
    the model trained on the frame, by the cross term (negative: the model fitted part of ε). Compare it with the
    conditional ``β Ĉov`` of held-out configurations (conditional labels) to measure the bias.

    Args:
        potential: a CG potential (dF = P f − F_θ(R), :func:`model_residuals`), or None with
            ``residuals``.
        protein: the dataset in memory.
        temperature: K (None: the dataset's).
        frames: (M,) row indices (None: all frames).
        residuals: (M, n, 3) kcal/mol/Å given residuals for ``frames`` (e.g. a cross-fitted
            file's), used instead of a potential.
        batch_size: frames per forward pass.

    Returns:
        :class:`ResidualMoments`.

    Raises:
        ValueError: neither or both of ``potential`` and ``residuals``; residual shape wrong;
            temperature not positive.
    """
    frames = np.arange(protein.n_frames) if frames is None else np.asarray(frames, dtype=np.int64)
    if (potential is None) == (residuals is None):
        raise ValueError("give exactly one of potential and residuals")
    if residuals is None:
        dF = model_residuals(potential, protein, frames, batch_size)
    else:
        dF = np.asarray(residuals, dtype=np.float64)
        if dF.shape != (len(frames), protein.n_beads, 3):
            raise ValueError(f"residuals {dF.shape} must be ({len(frames)}, {protein.n_beads}, 3)")
    beta = beta_of_temperature(protein.temperature if temperature is None else float(temperature))
    flat = dF.reshape(len(frames), -1)  # (M, 3n)
    return ResidualMoments(frame_id=np.asarray(protein.frame_id[frames], dtype=np.int64),
                           beta_norm2=beta * (flat**2).sum(-1),
                           beta_outer=beta * flat[:, :, None] * flat[:, None, :])
