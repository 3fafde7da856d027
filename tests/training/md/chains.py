"""Small CG systems shared by the MD tests: a straight Cα chain and two test potentials."""

from __future__ import annotations

import torch

from hessid.training.data.synthetic import HarmonicChainPotential


class Tether(torch.nn.Module):
    """U = ½ k Σ |r|² per structure (each bead an independent 3-D oscillator)."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, positions, bead_types, batch):
        n = int(batch[-1]) + 1
        return positions.new_zeros(n).index_add(0, batch, 0.5 * self.k * (positions**2).sum(-1))


class NaNBeyond(torch.nn.Module):
    """Harmonic chain whose energy is NaN for a structure whose first bead has x > 50 Å."""

    def __init__(self):
        super().__init__()
        self.chain = HarmonicChainPotential()

    def forward(self, positions, bead_types, batch):
        e = self.chain(positions, bead_types, batch)
        first = torch.ones_like(batch, dtype=torch.bool)
        first[1:] = batch[1:] != batch[:-1]
        bad = torch.zeros_like(e, dtype=torch.bool).index_put((batch[first],), positions[first, 0] > 50.0)
        return torch.where(bad, torch.nan, e)


def straight_chain(n, bond=3.8):
    x = torch.zeros(n, 3, dtype=torch.float64)  # (n, 3)
    x[:, 0] = bond * torch.arange(n)
    x[:, 1] = 0.3 * (torch.arange(n) % 2)  # a zigzag, so angles are not degenerate
    return x
