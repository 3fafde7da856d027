"""In-memory atomistic datasets and small models for the atomistic tests (no files, no QM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hessid.training.atomistic.model import AtomisticPotential
from hessid.training.data.qm import QMDataset

SMALL = dict(embedding_dimension=16, num_layers=1, num_rbf=8, cutoff_upper=4.0, max_z=10)


def small_model(precision: str = "float64", seed: int = 0, **over) -> AtomisticPotential:
    return AtomisticPotential({**SMALL, "precision": precision, **over}, seed=seed)


def random_molecule(n: int, seed: int, spacing: float = 1.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Atomic numbers (n,) in {1, 6, 7, 8} and positions (n, 3) Å with no two atoms closer
    than ~0.7 Å (a jittered line folded in 3-D)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n,), generator=g)]
    base = torch.stack([torch.arange(n) * spacing, (torch.arange(n) % 2) * 0.8,
                        (torch.arange(n) % 3) * 0.5], 1).double()
    return z, base + 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64)


def fake_dataset(name: str, n_atoms: int, n_structures: int, seed: int, id_offset: int = 0,
                 hessians: bool = True) -> QMDataset:
    """An in-memory :class:`~hessid.training.data.qm.QMDataset` (path ``fake.h5``, no file) of
    a quadratic 'QM' energy around a random geometry, so energies, forces and Hessians are
    consistent (E = ½ xᵀKx, F = −Kx, H = K); the second half of the structures is the far
    subset (3× the displacement); every structure done, none failed."""
    z, x0 = random_molecule(n_atoms, seed)
    rng = np.random.default_rng(seed)
    d = 3 * n_atoms
    a = rng.normal(size=(d, d))
    K = a @ a.T / d * 50.0  # kcal/mol/Å²
    disp = rng.normal(scale=0.05, size=(n_structures, d))
    disp[n_structures // 2:] *= 3.0  # the far half
    coords = x0.numpy()[None] + disp.reshape(n_structures, n_atoms, 3)
    energies = -1000.0 * n_atoms + 0.5 * np.einsum("ti,ij,tj->t", disp, K, disp)
    forces = -(disp @ K).reshape(n_structures, n_atoms, 3)
    subset = (np.arange(n_structures) >= n_structures // 2).astype(np.int8)
    return QMDataset(name, Path("fake.h5"), {}, z.numpy().astype(np.int64), coords, energies, forces,
                     np.repeat(K[None], n_structures, 0) if hessians else None,
                     np.arange(n_structures, dtype=np.int64) + id_offset, subset,
                     np.ones(n_structures, bool), np.zeros(n_structures, bool),
                     error=("",) * n_structures)
