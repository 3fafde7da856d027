"""Autograd Hessians of a CG potential: the full per-structure Hessian used by the
full-Hessian loss, and the plain-autograd references the fast HVP paths are tested against
(docs/identities.md §5, model side).
"""

from __future__ import annotations

import torch

from hessid.training.learning.derivatives import EnergyForcesHVP, energy_forces_hvp

__all__ = ["full_hessian", "hessian_autograd", "hvp_reference"]


def hvp_reference(potential, positions: torch.Tensor, bead_types: torch.Tensor,
                  batch: torch.Tensor | None, probes: torch.Tensor,
                  create_graph: bool = False) -> EnergyForcesHVP:
    """Slow, obvious HVPs: TorchMD-Net forward, ``g = ∇_R U`` with a graph, one double backward
    ``∇_R(g·v)`` per probe (docs/identities.md §5). The benchmark's "naive per-probe loop".

    Args/Returns: as :func:`energy_forces_hvp` (probes (k, A, 3) required).
    """
    x = positions.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = potential(x, bead_types, batch)
        (g,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
        hv = torch.stack([
            torch.autograd.grad(g, x, grad_outputs=v.to(x.dtype), retain_graph=True,
                                create_graph=create_graph)[0]
            for v in probes
        ])  # (k, A, 3)
    if not create_graph:
        energy, g, hv = energy.detach(), g.detach(), hv.detach()
    return EnergyForcesHVP(energy=energy, forces=-g, hvp=hv)


def hessian_autograd(potential, positions: torch.Tensor, bead_types: torch.Tensor) -> torch.Tensor:
    """Full Hessian ``∇²_R U_θ`` of one structure by plain autograd (reference; O(n) passes).

    Args:
        potential: CGPotential.  positions: (n, 3) Å.  bead_types: (n,) int64.

    Returns:
        (3n, 3n) kcal/mol/Å², flat index 3·i + α.
    """
    n = positions.shape[0]

    def energy(flat):
        return potential(flat.reshape(n, 3), bead_types, None).sum()

    return torch.autograd.functional.hessian(energy, positions.detach().reshape(-1))


def full_hessian(potential, positions: torch.Tensor, bead_types: torch.Tensor,
                 batch: torch.Tensor | None = None, create_graph: bool = True,
                 probe_chunk: int | None = None) -> list[torch.Tensor]:
    """Per-structure Hessians ``∇²_R U_θ`` by the fast path with one-hot probes.

    Structures are independent, so probe m puts a 1 at local coordinate m of every structure
    at once: 3·n_max probes give every Hessian of the batch (full-Hessian matching, small
    systems).

    Args:
        potential, positions (A, 3) Å, bead_types (A,), batch (A,): as :func:`energy_forces_hvp`.
        create_graph: keep the θ-graph for training.

    Returns:
        list of B tensors (3n_b, 3n_b), kcal/mol/Å².
    """
    batch = potential._check(positions, bead_types, batch)
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(positions.shape[0], device=positions.device) - starts[batch]  # (A,)
    dim = 3 * int(counts.max())
    probes = torch.zeros(dim, positions.shape[0], 3, dtype=positions.dtype, device=positions.device)
    flat_local = (3 * local[:, None] + torch.arange(3, device=positions.device))  # (A, 3)
    probes.view(dim, -1).scatter_(0, flat_local.reshape(1, -1), 1.0)
    hv = energy_forces_hvp(potential, positions, bead_types, batch, probes,
                           create_graph=create_graph, probe_chunk=probe_chunk).hvp  # (dim, A, 3)
    out = []
    for s0, n in zip(starts.tolist(), counts.tolist(), strict=True):
        block = hv[: 3 * n, s0 : s0 + n].reshape(3 * n, 3 * n)  # (3n, 3n): row = probe
        out.append(block.T)  # H e_m is column m
    return out
