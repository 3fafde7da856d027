"""Probes of atomistic HVP training (docs/atomistic_learning.md, "Probes").

A molecule with n atoms has probes in R^d, d = 3n (flat index 3·i + α). They are drawn by
:func:`hessid.probes.draw_probes` (Philox keyed by (seed, structure id), counter key below),
so a probe depends only on (kind, seed, structure id, key, k, d): never on batch order,
batch composition or dtype.

Kinds (``probe_kind``): ``one_hot`` (a random column e_i, i uniform, with replacement),
``random`` = ``unit_sphere`` (normalised Gaussian, PHL's "random" probe), ``gaussian``
(N(0, I_d)); ``orthonormal`` and ``rademacher`` are accepted too. Regimes:

* ``fresh``: new probes every optimisation step, counter key = step + 1;
* ``fixed``: one set per structure for the whole run, counter key 0 (seeded by structure id).

Scale c(kind, d) (:func:`hessid.probes.probe_scale`): ``E_v[c ‖Δ v‖²] = ‖Δ‖²_F`` for any
d×d matrix Δ: c = 1 for Gaussian, c = d for one-hot and unit-sphere probes (for them
``E‖Δ v‖² = ‖Δ‖²_F / d``). The losses multiply each molecule's squared HVP residuals by its
own c(d_b), which is what keeps a batch of molecules of different sizes unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from hessid.probes import PROBE_KINDS, draw_probes, probe_scale

__all__ = ["PROBE_ALIASES", "AtomisticProbeSpec", "molecule_probes", "probe_kind"]

#: user-facing probe names → :data:`hessid.probes.PROBE_KINDS`
PROBE_ALIASES = {"random": "unit_sphere", **{k: k for k in PROBE_KINDS}}


def probe_kind(name: str) -> str:
    """The :mod:`hessid.probes` kind of a probe name (``random`` → ``unit_sphere``).

    Raises:
        ValueError: unknown name.
    """
    if name not in PROBE_ALIASES:
        raise ValueError(f"probe kind {name!r} is not one of {sorted(PROBE_ALIASES)}")
    return PROBE_ALIASES[name]


@dataclass(frozen=True)
class AtomisticProbeSpec:
    """What fixes the probes of a run.

    Attributes:
        kind: ``one_hot``, ``random`` (unit sphere), ``gaussian`` (or another hessid kind).
        n_probes: k ≥ 1 probes per molecule and step.
        regime: ``fresh`` (redrawn every step) or ``fixed`` (one set per structure).
        seed: probe seed in [0, 2**64).
    """

    kind: str = "random"
    n_probes: int = 1
    regime: Literal["fresh", "fixed"] = "fresh"
    seed: int = 0

    def __post_init__(self):
        probe_kind(self.kind)
        if self.n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {self.n_probes}")
        if self.regime not in ("fresh", "fixed"):
            raise ValueError(f"probe regime must be 'fresh' or 'fixed', got {self.regime!r}")

    def key(self, step: int) -> int:
        """Counter key of the draw at optimisation ``step`` (0 for fixed probes)."""
        return 0 if self.regime == "fixed" else int(step) + 1


def molecule_probes(spec: AtomisticProbeSpec, structure_ids: torch.Tensor, batch: torch.Tensor,
                    step: int = 0, dtype: torch.dtype = torch.float64
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k probes of every molecule of a graph batch and their scales.

    Args:
        spec: kind, k, regime, seed.
        structure_ids: (B,) int64 stable structure ids (the dataset's ``structure_id``).
        batch: (A,) int64 molecule index, non-decreasing.
        step: optimisation step (used by the ``fresh`` regime).
        dtype: of the result.

    Returns:
        ``probes`` (k, A, 3), dimensionless, each molecule's probe on its own atoms (zero
        elsewhere); ``scale`` (B,) float64, c(kind, 3 n_b).
    """
    kind = probe_kind(spec.kind)
    counts = torch.bincount(batch, minlength=structure_ids.shape[0])  # (B,)
    k = spec.n_probes
    out = torch.zeros(k, batch.shape[0], 3, dtype=dtype, device=batch.device)
    scale = torch.empty(structure_ids.shape[0], dtype=torch.float64)
    key = spec.key(step)
    for n in torch.unique(counts).tolist():
        mols = torch.nonzero(counts == n).reshape(-1)
        atoms = torch.nonzero(counts[batch] == n).reshape(-1)  # molecule by molecule
        v = draw_probes(kind, spec.seed, structure_ids[mols].cpu(), k, 3 * n, key=key)  # (B_n, k, 3n)
        out[:, atoms] = v.transpose(0, 1).reshape(k, -1, 3).to(dtype=dtype, device=batch.device)
        scale[mols.cpu()] = probe_scale(kind, 3 * n)
    return out, scale
