"""A small synthetic protein and a small CG training module shared by the learning tests."""

from __future__ import annotations

from pathlib import Path

import torch

from hessid.training.data.synthetic import compact_chain, write_synthetic_dataset
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import load_protein
from hessid.training.learning.models import CGPotential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.priors import PriorFit

#: a tiny float64 CGSchNet (fast; not a useful model)
TINY = {"embedding_dimension": 6, "num_layers": 1, "num_rbf": 4, "precision": "float64"}
#: beads of :func:`synthetic_protein`
N_BEADS = 5


def synthetic_protein(folder: Path):
    """``folder/p.h5``: a synthetic dataset of :data:`N_BEADS` beads, 6 frames (seed 2) with full
    Hessian blocks, loaded with :func:`~hessid.training.learning.datasets.load_protein`."""
    path = write_synthetic_dataset(folder / "p.h5", n_beads=N_BEADS, n_frames=6, seed=2,
                                   full_block=True, name="p")
    return load_protein(path)


def tiny_module(protein, **loss) -> CGTrainingModule:
    """A :class:`CGTrainingModule` of a :data:`TINY` potential (seeded) with the protein's fitted
    prior and its network weights scaled ×3 (curvature comparable to the prior's); loss
    ``fm_hvp`` with ``cov_weight`` 1, no normalisation, ``lambda_force`` 0, updated by ``loss``."""
    loss = dict({"mode": "fm_hvp", "cov_weight": 1.0, "normalise": False, "lambda_force": 0.0}, **loss)
    cfg = TrainConfig.from_dict({"model": TINY, "loss": loss})
    torch.manual_seed(0)
    prior = PriorFit().fit([protein.cg_coordinates]).fetch_model()
    pot = CGPotential(protein.vocabulary, prior, cfg.model)
    with torch.no_grad():  # curvature of the net comparable to the prior's
        for prm in pot.net.parameters():
            prm.mul_(3.0)
    return CGTrainingModule(pot, cfg, {})


#: a small float64 CGSchNet for exact HVP tests
SMALL = {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 6, "precision": "float64"}


def random_cg_system(sizes=(7, 5), seed=0, dtype=torch.float64, config=None, prior=True):
    """A batch of compact random Cα chains of ``sizes`` beads and a :data:`SMALL` CGPotential
    (+ a fitted prior unless ``prior=False``) whose weights are scaled ×3 so the network's
    curvature is comparable to the prior's. Returns (model, positions (A, 3) Å, types (A,),
    batch (A,))."""
    torch.manual_seed(seed)
    xs = [torch.as_tensor(compact_chain(n, 1, seed=seed + i, noise=0.2)[0]) for i, n in enumerate(sizes)]
    pos = torch.cat(xs).to(dtype)  # (A, 3)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    types = torch.randint(0, 3, (pos.shape[0],))
    cfg = dict(SMALL, **(config or {}))
    cfg["precision"] = "float64" if dtype == torch.float64 else "float32"
    p = PriorFit().fit([compact_chain(8, 40, seed=9, noise=0.3)]).fetch_model() if prior else None
    model = CGPotential(["ALA", "GLY", "TRP"], p, cfg)
    # make the network's curvature comparable to the prior's (untrained nets are flat)
    with torch.no_grad():
        for prm in model.net.parameters():
            prm.mul_(3.0)
    return model, pos, types, batch
