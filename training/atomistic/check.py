"""The model-Hessian rows of ``hessid verify --model-hessian`` and ``hessid qm check-model``
for the atomistic TensorNet model (docs/atomistic_learning.md, "Model-Hessian check").

Random float64 TensorNet weights (or a trained model file), random molecules of mixed sizes;
both HVP paths (batched double backward, and the one-hot batched Hessian) are compared with
the autograd Hessian by :func:`hessid.verification.model_hessian.check_model_hvp`, with its
negative controls.
"""

from __future__ import annotations

import torch

from hessid.training.atomistic.model import AtomisticPotential, ModelConfig, load_potential
from hessid.verification.model_hessian import check_model_hvp
from hessid.verification.results import CheckResult

__all__ = ["model_hessian_checks", "random_molecule"]


def random_molecule(n_atoms: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Atomic numbers (n,) in {H, C, N, O} and positions (n, 3) float64 Å: a jittered zig-zag
    chain (no two atoms closer than ~0.7 Å)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n_atoms,), generator=g)]
    i = torch.arange(n_atoms)
    base = torch.stack([i * 1.1, (i % 2) * 0.8, (i % 3) * 0.5], 1).double()
    return z, base + 0.2 * torch.randn(n_atoms, 3, generator=g, dtype=torch.float64)


def model_hessian_checks(model_path: str | None = None, sizes: tuple[int, ...] = (3, 6),
                         n_probes: int = 2, seed: int = 0) -> list[CheckResult]:
    """Model-Hessian rows for random molecules.

    Args:
        model_path: a trained model (cast to float64); None: a small random float64 TensorNet.
        sizes: atoms of the random molecules (each checked alone).
        n_probes: Gaussian probes per molecule.
        seed: weights, molecules and probes.

    Returns:
        5 rows per molecule and HVP path (:func:`check_model_hvp`).
    """
    if model_path is None:
        model = AtomisticPotential(ModelConfig(embedding_dimension=16, num_layers=2, num_rbf=16,
                                               precision="float64"), seed=seed)
    else:
        loaded = load_potential(model_path)
        cfg = ModelConfig(**{**loaded.config.__dict__, "precision": "float64"})
        model = AtomisticPotential(cfg)
        model.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in loaded.state_dict().items()})
    rows = []
    for m, n in enumerate(sizes):
        z, x = random_molecule(n, seed + m)
        probes = torch.randn(n_probes, 3 * n, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(seed + 100 + m))

        def energy(flat, z=z, n=n):
            return model(z, flat.reshape(n, 3)).sum()

        def batched(flat, v, z=z, n=n):
            k = v.shape[0]
            return model.energy_forces_hvp(z, flat.reshape(n, 3), None, v.reshape(k, n, 3)).hvp.reshape(k, -1)

        def via_hessian(flat, v, z=z, n=n):
            _, (h,) = model.hessians(z, flat.reshape(n, 3))
            return v @ h.T

        name = f"TensorNet, {n} atoms"
        rows += check_model_hvp(energy, batched, x.reshape(-1), probes, name, "batched double backward")
        rows += check_model_hvp(energy, via_hessian, x.reshape(-1), probes, name, "one-hot Hessian")
    return rows
