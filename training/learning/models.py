"""CG potentials: TorchMD-Net CGSchNet (``graph-network``) plus fitted priors.

``U_θ(R) = U_prior(R) + U_net(R)`` in kcal/mol for bead positions R in Å. The network is
TorchMD-Net's ``TorchMD_GN`` representation (SchNet-type continuous-filter convolutions) with
the ``Scalar`` output head, built by :func:`torchmdnet.models.model.create_model`; beads are
embedded by residue type (index into the bead vocabulary). Forces ``F_θ = −∂U_θ/∂R`` and
Hessian-vector products come from autograd (:meth:`CGPotential.forward`) or from the exact
edge-factored path of :mod:`hessid.training.learning.derivatives` (same numbers, much cheaper HVPs).

One checkpoint file (:meth:`CGPotential.save`, :func:`load_potential`) holds the weights, the
prior parameters, the bead vocabulary, the units, the model config and the hessid version.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torchmdnet.models.model import create_model

from hessid import __version__ as HESSID_VERSION
from hessid.training.learning.checkpoint import checkpoint_prior, load_weights, save_checkpoint
from hessid.training.learning.configs import ModelConfig, TrainConfig
from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.layout import check_graph_batch
from hessid.training.learning.priors import PriorModel, PriorParameters, as_prior_model
from hessid.training.learning.thermal_models import THERMAL_CHECKPOINT_FORMAT, ThermalPotential

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CGPotential",
    "PriorOnlyPotential",
    "build_potential",
    "load_potential",
]

CHECKPOINT_FORMAT = "hessid.cg_potential"
#: Bump when the checkpoint layout changes incompatibly; readers accept ≤ this version.
#: 1: first release; 2: priors per bead-type class (format-1 files, pooled priors, still load).
CHECKPOINT_FORMAT_VERSION = 2
UNITS = {"length": "angstrom", "energy": "kcal/mol", "force": "kcal/mol/angstrom"}

class CGPotential(torch.nn.Module):
    """CG potential ``U_θ = U_prior + U_net`` (kcal/mol) on graph-batched bead positions (Å).

    Args:
        bead_vocabulary: residue-type names; ``bead_types`` index into it.
        prior: fitted :class:`~hessid.training.learning.priors.PriorModel` (or None: network only).
        config: :class:`ModelConfig` or dict of its fields.

    Raises:
        ValueError: empty vocabulary or invalid config.
    """

    def __init__(self, bead_vocabulary: list[str], prior: PriorModel | PriorParameters | None = None,
                 config: ModelConfig | dict | None = None):
        super().__init__()
        if not bead_vocabulary:
            raise ValueError("bead_vocabulary must hold at least one residue type")
        self.config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.bead_vocabulary = list(bead_vocabulary)
        dtype = self.config.dtype
        self.net = create_model(self.config.torchmdnet_args(len(self.bead_vocabulary)))
        self.prior = as_prior_model(prior, dtype)
        self.metadata: dict = {}

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights and prior (``config.precision``)."""
        return self.config.dtype

    def _check(self, positions: torch.Tensor, bead_types: torch.Tensor, batch: torch.Tensor | None):
        return check_graph_batch(positions, bead_types, batch, len(self.bead_vocabulary))

    def network_energy(self, positions: torch.Tensor, bead_types: torch.Tensor,
                       batch: torch.Tensor | None = None) -> torch.Tensor:
        """Network part only, (B,) kcal/mol (TorchMD-Net forward; the prior is excluded)."""
        batch = self._check(positions, bead_types, batch)
        counts = torch.bincount(batch)
        if int(counts.max()) > self.config.max_num_neighbors:
            raise ValueError(f"a structure has {int(counts.max())} beads > max_num_neighbors="
                             f"{self.config.max_num_neighbors}; raise it so no pair is dropped")
        energy, _ = self.net(bead_types.long(), positions, batch)
        return energy.reshape(-1)  # (B,)

    def forward(self, positions: torch.Tensor, bead_types: torch.Tensor,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        """Energy ``U_θ(R)`` of each structure.

        Args:
            positions: bead positions (A, 3), Å, of B structures flattened graph-style.
            bead_types: residue-type index of each bead (A,) int64.
            batch: structure index of each bead (A,) int64, non-decreasing; None = one structure.

        Returns:
            (B,) kcal/mol, prior included.

        Raises:
            ValueError: shapes disagree, a type is outside the vocabulary, or a structure has
                more beads than ``max_num_neighbors``.
        """
        batch = self._check(positions, bead_types, batch)
        energy = self.network_energy(positions, bead_types, batch)
        if self.prior is not None:
            energy = energy + self.prior(positions, batch, bead_types)
        return energy

    def energy(self, positions, bead_types, batch=None) -> torch.Tensor:
        """Alias of :meth:`forward`, (B,) kcal/mol."""
        return self.forward(positions, bead_types, batch)

    def forces(self, positions: torch.Tensor, bead_types: torch.Tensor,
               batch: torch.Tensor | None = None, create_graph: bool = False) -> torch.Tensor:
        """Forces ``F_θ = −∂U_θ/∂R``, (A, 3) kcal/mol/Å, by autograd."""
        x = positions if positions.requires_grad else positions.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x, bead_types, batch).sum(), x,
                                       create_graph=create_graph)
        return -g

    def hessian_vector_product(self, positions, bead_types, batch, probes, create_graph=False):
        """Exact ``H_θ v`` for each probe (fast edge-factored path, docs/identities.md §5).

        Args:
            positions: (A, 3) Å; bead_types, batch: (A,) int64.
            probes: (k, A, 3) probe vectors (dimensionless).

        Returns:
            (k, A, 3) kcal/mol/Å². See :func:`hessid.training.learning.derivatives.energy_forces_hvp`.
        """
        return energy_forces_hvp(self, positions, bead_types, batch, probes,
                                 create_graph=create_graph).hvp

    # ------------------------------------------------------------------ checkpoint

    def checkpoint_dict(self, extra: dict | None = None) -> dict:
        """Everything :func:`load_potential` needs, as plain Python + tensors."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "hessid_version": HESSID_VERSION,
            "config": asdict(self.config),
            "bead_vocabulary": list(self.bead_vocabulary),
            "units": dict(UNITS),
            "prior": None if self.prior is None else self.prior.params.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "metadata": dict(self.metadata, **(extra or {})),
        }

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write one checkpoint file (weights, prior, vocabulary, units, config, version).

        Args:
            path: destination file (``.pt``).
            extra: JSON-like metadata stored under ``metadata`` (e.g. the verification result).

        Returns:
            the path written.
        """
        return save_checkpoint(self.checkpoint_dict(extra), path)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, source: str = "<dict>") -> CGPotential:
        """Rebuild a potential from :meth:`checkpoint_dict` output (see :func:`load_potential`)."""
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source} is not a hessid CG potential checkpoint "
                             f"(format={ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
        fv = int(ckpt.get("format_version", 0))
        written_by = ckpt.get("hessid_version", "unknown")
        if fv > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{source} was written by hessid {written_by} with checkpoint format {fv}; this "
                f"hessid {HESSID_VERSION} reads formats <= {CHECKPOINT_FORMAT_VERSION}. "
                "Upgrade hessid to load it.")
        if fv < 1:
            raise ValueError(f"{source}: checkpoint format {fv} predates format 1 and cannot be read")
        if written_by != HESSID_VERSION:
            warnings.warn(f"{source} was written by hessid {written_by}, loading with "
                          f"{HESSID_VERSION} (checkpoint format {fv})", stacklevel=3)
        prior = checkpoint_prior(ckpt, UNITS, source)
        model = cls(ckpt["bead_vocabulary"], prior, ModelConfig.from_dict(ckpt["config"]))
        load_weights(model.net, ckpt["state_dict"], source)
        model.metadata = dict(ckpt.get("metadata") or {})
        return model


class PriorOnlyPotential(torch.nn.Module):
    """The prior of a CG potential alone, ``U_prior(R)`` kcal/mol, the network left out — the
    standard diagnostic of what the prior by itself samples (e.g. alanine dipeptide's φ/ψ)
    before a discrepancy of the full model is blamed on the network. Same call interface as
    :class:`CGPotential` (``(A, 3) Å, (A,), (A,) → (B,) kcal/mol``), so :func:`simulate
    <hessid.training.md.simulation.simulate>` runs it unchanged.

    Args:
        potential: a :class:`CGPotential` or a temperature-aware
            :class:`~hessid.training.learning.thermal_models.ThermalPotential` (its prior is
            temperature-independent, so the prior-only model is temperature-unaware).

    Attributes:
        prior: the potential's :class:`~hessid.training.learning.priors.PriorModel` (shared).
        bead_vocabulary: the potential's bead vocabulary.
        metadata: the potential's metadata plus ``{"prior_only": True}``.

    Raises:
        ValueError: the potential has no prior (a prior-only run would be free diffusion).
    """

    def __init__(self, potential: CGPotential | ThermalPotential):
        super().__init__()
        if getattr(potential, "prior", None) is None:
            raise ValueError("the model has no prior: a prior-only simulation would be free diffusion")
        self.prior = potential.prior
        self.bead_vocabulary = list(potential.bead_vocabulary)
        self.metadata = {**dict(getattr(potential, "metadata", None) or {}), "prior_only": True}

    def forward(self, positions: torch.Tensor, bead_types: torch.Tensor,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        """Prior energy of each structure, (B,) kcal/mol (positions (A, 3) Å, bead_types (A,)
        int64, batch (A,) int64 or None = one structure).

        Raises:
            ValueError: shapes disagree or a type is outside the vocabulary.
        """
        batch = check_graph_batch(positions, bead_types, batch, len(self.bead_vocabulary))
        return self.prior(positions, batch, bead_types)


def build_potential(vocabulary: list[str], prior: PriorModel | None, cfg: TrainConfig,
                    n_beads: int | None = None) -> CGPotential | ThermalPotential:
    """The potential a run trains: a :class:`ThermalPotential` (``cfg.thermal``) when
    ``loss.mode == "thermal"``, else a :class:`CGPotential`.

    Args:
        vocabulary: bead vocabulary; prior: fitted prior or None; cfg: the run config;
        n_beads: beads per structure (the thermal mlp backbone only).
    """
    if cfg.loss.mode == "thermal":
        return ThermalPotential(vocabulary, prior, cfg.model, cfg.thermal, n_beads=n_beads)
    return CGPotential(vocabulary, prior, cfg.model)


def load_potential(path: str | Path, map_location: str | torch.device = "cpu") -> CGPotential | ThermalPotential:
    """Load a :class:`CGPotential` from one checkpoint file written by :meth:`CGPotential.save`.

    Also accepts a trainer checkpoint (Lightning ``.ckpt``) holding a ``hessid_potential`` entry.

    Args:
        path: checkpoint file.
        map_location: device for the weights.

    Returns:
        the potential in eval mode, with ``metadata`` (e.g. ``verification``) restored: a
        :class:`CGPotential`, or a temperature-aware
        :class:`~hessid.training.learning.thermal_models.ThermalPotential` (``temperature_aware``;
        ``at_temperature(T)`` gives the fixed-β view MD uses) for a thermal checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a hessid checkpoint, or written by a newer incompatible format
            (the message names both versions).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if isinstance(ckpt, dict) and "hessid_potential" in ckpt:
        ckpt = ckpt["hessid_potential"]
    if isinstance(ckpt, dict) and ckpt.get("format") == THERMAL_CHECKPOINT_FORMAT:
        return ThermalPotential.from_checkpoint_dict(ckpt, source=str(path)).to(map_location).eval()
    model = CGPotential.from_checkpoint_dict(ckpt, source=str(path))
    return model.to(map_location).eval()
