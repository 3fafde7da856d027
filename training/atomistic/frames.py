"""Structures of atomistic QM datasets as training batches, splits and target statistics
(docs/atomistic_learning.md, "Data").

Datasets are :class:`hessid.training.data.qm.QMDataset` objects (one molecule each; any
object with the same array attributes works, e.g. an in-memory test fixture). A structure
is addressed by ``(dataset index, structure index)``; only ``done`` structures are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from hessid.training.atomistic.losses import TargetScales

__all__ = [
    "AtomisticBatch",
    "FrameRef",
    "Split",
    "collate",
    "fit_reference_energies",
    "split_structures",
    "target_scales",
]

#: (dataset index, structure index within the dataset)
FrameRef = tuple[int, int]


@dataclass
class AtomisticBatch:
    """B molecules in graph layout (A atoms in all).

    Attributes:
        species: (A,) int64 atomic numbers.  positions: (A, 3) Å.
        batch: (A,) int64 molecule index (non-decreasing).  n_atoms: (B,) int64.
        energy: (B,) float64 kcal/mol (absolute).  forces: (A, 3) kcal/mol/Å.
        hessians: B tensors (3n_b, 3n_b) kcal/mol/Å², or None.
        structure_id: (B,) int64.  subset: (B,) int64 (0 near, 1 far).
    """

    species: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    n_atoms: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    hessians: list[torch.Tensor] | None
    structure_id: torch.Tensor
    subset: torch.Tensor

    @property
    def n_molecules(self) -> int:
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str) -> AtomisticBatch:
        """The same batch with every tensor (Hessians included) on ``device``; dtypes kept."""

        def move(v):
            if isinstance(v, list):
                return [h.to(device) for h in v]
            return None if v is None else v.to(device)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def hessian_times(self, probes: torch.Tensor) -> torch.Tensor:
        """Reference HVPs ``H_b v`` for probes (k, A, 3) in graph layout → (k, A, 3)."""
        if self.hessians is None:
            raise ValueError("this batch has no reference Hessians")
        k = probes.shape[0]
        out = torch.empty_like(probes)
        start = 0
        for h, n in zip(self.hessians, self.n_atoms.tolist(), strict=True):
            v = probes[:, start:start + n].reshape(k, 3 * n)  # (k, 3n)
            out[:, start:start + n] = (v @ h.to(probes.dtype).T).reshape(k, n, 3)
            start += n
        return out


def collate(datasets: Sequence, refs: Sequence[FrameRef], dtype: torch.dtype = torch.float32,
            hessians: bool = True) -> AtomisticBatch:
    """Stack structures into a graph batch.

    Args:
        datasets: QMDataset-like objects.
        refs: (dataset index, structure index) pairs, in batch order.
        dtype: of positions, forces and Hessians (energies stay float64).
        hessians: include the reference Hessians (refused when a dataset has none).

    Raises:
        ValueError: empty refs, or Hessians asked of a dataset without them.
    """
    if not refs:
        raise ValueError("an empty batch")
    species, pos, forces, hess, batch, n_atoms, energy, sid, subset = ([] for _ in range(9))
    for b, (d, t) in enumerate(refs):
        ds = datasets[d]
        n = int(ds.species.shape[0])
        species.append(torch.as_tensor(np.asarray(ds.species), dtype=torch.long))
        pos.append(torch.as_tensor(ds.coordinates[t], dtype=dtype))
        forces.append(torch.as_tensor(ds.forces[t], dtype=dtype))
        if hessians:
            if ds.hessians is None:
                raise ValueError(f"dataset {ds.name!r} has no Hessians (an E-F set): use loss.mode=ef")
            hess.append(torch.as_tensor(ds.hessians[t], dtype=dtype))
        batch.append(torch.full((n,), b, dtype=torch.long))
        n_atoms.append(n)
        energy.append(float(ds.energies[t]))
        sid.append(int(ds.structure_id[t]))
        subset.append(int(ds.subset[t]))
    return AtomisticBatch(
        species=torch.cat(species), positions=torch.cat(pos), batch=torch.cat(batch),
        n_atoms=torch.tensor(n_atoms, dtype=torch.long),
        energy=torch.tensor(energy, dtype=torch.float64), forces=torch.cat(forces),
        hessians=hess if hessians else None, structure_id=torch.tensor(sid, dtype=torch.long),
        subset=torch.tensor(subset, dtype=torch.long))


@dataclass(frozen=True)
class Split:
    """Structures per role (lists of :data:`FrameRef`).

    Attributes:
        train, val: training and validation structures.
        test_near, test_far: held-out structures of subset 0 and subset 1.
    """

    train: list
    val: list
    test_near: list
    test_far: list


def split_structures(datasets: Sequence, n_train: int, n_val: int, n_test: int, seed: int = 0,
                     train_subsets: Sequence[int] = (0, 1), subset_seed: int | None = None) -> Split:
    """Held-out, validation and training structures, drawn without overlap.

    The test sets (``n_test`` of subset 0 and of subset 1, pooled over datasets) are drawn
    first and depend only on ``seed`` and ``n_test``; then ``n_val``, then the first
    ``n_train`` of one permutation of the rest whose subset is in ``train_subsets``. So
    training sets of increasing ``n_train`` are nested and share their test set
    (learning curves).

    ``subset_seed`` (None: the pool keeps the order of ``seed``'s permutation) reorders the
    training pool by ``numpy.random.default_rng(subset_seed).permutation`` after the test and
    validation structures are drawn: replicate training subsets that share one test and
    validation set (the PHL study's replicates); still nested in ``n_train``.

    Raises:
        ValueError: not enough done structures, or negative sizes.
    """
    if min(n_train, n_val, n_test) < 0 or n_train < 1:
        raise ValueError(f"need n_train >= 1 and n_val, n_test >= 0, got {n_train}, {n_val}, {n_test}")
    refs = [(d, int(t)) for d, ds in enumerate(datasets) for t in np.flatnonzero(np.asarray(ds.done))]
    sub = np.array([int(datasets[d].subset[t]) for d, t in refs], dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(refs))
    taken = np.zeros(len(refs), bool)
    tests = []
    for s in (0, 1):
        pick = [i for i in order if sub[i] == s][:n_test]
        taken[pick] = True
        tests.append([refs[i] for i in pick])
    rest = [i for i in order if not taken[i]]
    val = rest[:n_val]
    pool = [i for i in rest[n_val:] if sub[i] in set(train_subsets)]
    if subset_seed is not None:
        pool = [pool[j] for j in np.random.default_rng(subset_seed).permutation(len(pool))]
    if len(pool) < n_train:
        raise ValueError(f"only {len(pool)} done structures of subsets {list(train_subsets)} remain "
                         f"for training after {n_test} test per subset and {n_val} validation; "
                         f"n_train={n_train}")
    return Split(train=[refs[i] for i in pool[:n_train]], val=[refs[i] for i in val],
                 test_near=tests[0], test_far=tests[1])


def fit_reference_energies(datasets: Sequence, refs: Sequence[FrameRef], max_z: int) -> np.ndarray:
    """Per-element reference energies e_ref (kcal/mol): least squares of the energies on
    element counts over ``refs`` (minimum-norm solution when compositions are collinear,
    e.g. one molecule: then ``Σ e_ref[Z_i]`` is its mean energy).

    Returns:
        (max_z,) float64.
    """
    counts = np.zeros((len(refs), max_z))
    energies = np.empty(len(refs))
    for r, (d, t) in enumerate(refs):
        counts[r] = np.bincount(np.asarray(datasets[d].species), minlength=max_z)[:max_z]
        energies[r] = datasets[d].energies[t]
    used = counts.any(0)
    coef, *_ = np.linalg.lstsq(counts[:, used], energies, rcond=None)
    out = np.zeros(max_z)
    out[used] = coef
    return out


def target_scales(datasets: Sequence, refs: Sequence[FrameRef], reference_energy: np.ndarray,
                  hessians: bool) -> TargetScales:
    """Second moments of the training targets: Var of the reference-subtracted energies, mean
    squared force component, mean squared Hessian element (floors at 1e-12 so a constant
    target cannot divide by zero)."""
    res, f2, nf, h2, nh = [], 0.0, 0, 0.0, 0
    for d, t in refs:
        ds = datasets[d]
        res.append(float(ds.energies[t]) - float(reference_energy[np.asarray(ds.species)].sum()))
        f2 += float(np.sum(np.asarray(ds.forces[t]) ** 2))
        nf += ds.forces[t].size
        if hessians and ds.hessians is not None:
            h2 += float(np.sum(np.asarray(ds.hessians[t]) ** 2))
            nh += ds.hessians[t].size
    res = np.asarray(res)
    return TargetScales(energy=max(float(np.mean((res - res.mean()) ** 2)), 1e-12),
                        force=max(f2 / max(nf, 1), 1e-12),
                        hessian=max(h2 / nh, 1e-12) if nh else 1.0)
