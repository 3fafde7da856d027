"""Atomistic energy model: torchmd-net TensorNet with atomic numbers as types
(docs/atomistic_learning.md, "Model").

``E_θ(R) = s · Σ_i ε_θ(i; R) + Σ_i e_ref[Z_i]``  (kcal/mol per molecule, R in Å)

``ε_θ`` is TensorNet's per-atom output (``TorchMD_Net`` built by
:func:`torchmdnet.models.model.create_model` with ``model="tensornet"`` and the ``Scalar``
head), evaluated with :func:`~hessid.training.atomistic.tensornet.tensornet_features`
(plain torch, so every derivative below is exact autograd); ``e_ref`` (kcal/mol per element)
and ``s`` (kcal/mol) are fixed buffers set from the training data
(:meth:`AtomisticPotential.set_reference`). Forces ``F = −∇_R E`` by autograd.

Hessian-vector products ``H_θ v = ∇_R (v · ∇_R E)`` for k probes at once
(:meth:`AtomisticPotential.energy_forces_hvp`): one forward, one backward with the graph
kept, then batched double backwards (``torch.autograd.grad(..., is_grads_batched=True)``,
autograd's vmap over the cotangents, at most :data:`PROBE_CHUNK` probes per pass). Chosen
over ``torch.func.jvp`` of ``grad`` because it
keeps the ordinary θ-graph for the loss's backward with no functional re-write of the module
and measured no slower here (docs/atomistic_learning.md); ``method="loop"`` (one double
backward per probe) is the slow, obvious reference, and :func:`hessian_autograd` the full
autograd Hessian both are tested against in float64.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torchmdnet.models.model import create_model

from hessid import __version__ as HESSID_VERSION
from hessid.training.atomistic.tensornet import tensornet_features

__all__ = [
    "CHECKPOINT_FORMAT",
    "AtomisticPotential",
    "EnergyForcesHVP",
    "ModelConfig",
    "hessian_autograd",
    "load_potential",
    "one_hot_hessian_probes",
]

CHECKPOINT_FORMAT = "hessid.atomistic_potential"
CHECKPOINT_FORMAT_VERSION = 1
UNITS = {"length": "angstrom", "energy": "kcal/mol", "force": "kcal/mol/angstrom",
         "hessian": "kcal/mol/angstrom^2"}


@dataclass
class ModelConfig:
    """TensorNet hyper-parameters (torchmd-net names).

    Attributes:
        embedding_dimension: hidden channels F.
        num_layers: interaction layers.
        num_rbf: radial basis functions.
        rbf_type: ``expnorm`` or ``gauss``.
        activation: ``silu`` or ``tanh`` (smooth: the Hessian needs second derivatives).
        cutoff_upper: Å.
        max_z: atomic numbers must be below this.
        equivariance_invariance_group: ``O(3)`` or ``SO(3)``.
        precision: ``float32`` (default) or ``float64`` (exact tests, evaluation).
    """

    embedding_dimension: int = 64
    num_layers: int = 2
    num_rbf: int = 32
    rbf_type: Literal["expnorm", "gauss"] = "expnorm"
    activation: Literal["silu", "tanh"] = "silu"
    cutoff_upper: float = 5.0
    max_z: int = 36
    equivariance_invariance_group: Literal["O(3)", "SO(3)"] = "O(3)"
    precision: Literal["float32", "float64"] = "float32"

    def __post_init__(self):
        if self.embedding_dimension < 1 or self.num_layers < 0 or self.num_rbf < 1:
            raise ValueError("model: embedding_dimension, num_rbf must be >= 1 and num_layers >= 0")
        if not self.cutoff_upper > 0:
            raise ValueError(f"model.cutoff_upper must be > 0 Å, got {self.cutoff_upper}")
        if self.precision not in ("float32", "float64"):
            raise ValueError(f"model.precision must be float32 or float64, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "float64" else torch.float32

    def torchmdnet_args(self) -> dict:
        """Arguments of :func:`torchmdnet.models.model.create_model`."""
        return dict(
            model="tensornet", embedding_dimension=self.embedding_dimension,
            num_layers=self.num_layers, num_rbf=self.num_rbf, rbf_type=self.rbf_type,
            trainable_rbf=False, activation=self.activation, cutoff_lower=0.0,
            cutoff_upper=self.cutoff_upper, max_z=self.max_z, max_num_neighbors=64,
            equivariance_invariance_group=self.equivariance_invariance_group,
            static_shapes=False, precision=64 if self.precision == "float64" else 32,
            derivative=False, atom_filter=-1, prior_model=None, output_model="Scalar",
            reduce_op="sum", output_mlp_num_layers=0, aggr="add")


#: most probes per batched double backward (measured, docs/atomistic_learning.md "HVPs")
PROBE_CHUNK = 8


@dataclass
class EnergyForcesHVP:
    """Output of :meth:`AtomisticPotential.energy_forces_hvp`.

    Attributes:
        energy: (B,) kcal/mol.
        forces: (A, 3) kcal/mol/Å, ``−∇_R E``.
        hvp: (k, A, 3) kcal/mol/Å², ``H_θ v_m`` (per molecule: molecules are independent, so
            a probe spanning the batch gives each molecule's own HVP); None without probes.
    """

    energy: torch.Tensor
    forces: torch.Tensor
    hvp: torch.Tensor | None


def _check_graph(species: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor | None,
                 max_z: int) -> torch.Tensor:
    if positions.ndim != 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must be (A, 3), got {tuple(positions.shape)}")
    if species.shape != positions.shape[:1]:
        raise ValueError(f"species {tuple(species.shape)} must be (A,) for positions "
                         f"{tuple(positions.shape)}")
    if species.numel() and (int(species.min()) < 1 or int(species.max()) >= max_z):
        raise ValueError(f"atomic numbers must lie in [1, {max_z}), got "
                         f"{int(species.min())}..{int(species.max())}")
    if batch is None:
        return torch.zeros_like(species)
    if batch.shape != species.shape or (batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any())):
        raise ValueError("batch must be (A,) and non-decreasing")
    return batch


class AtomisticPotential(torch.nn.Module):
    """TensorNet energy of molecules in graph layout (docs/atomistic_learning.md).

    Args:
        config: :class:`ModelConfig` or dict of its fields.
        seed: seed of the weight initialisation (None: torch's global generator).
    """

    def __init__(self, config: ModelConfig | dict | None = None, seed: int | None = None):
        super().__init__()
        self.config = config if isinstance(config, ModelConfig) else ModelConfig(**(config or {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if seed is None:
                self.net = create_model(self.config.torchmdnet_args())
            else:
                with torch.random.fork_rng():
                    torch.manual_seed(int(seed))
                    self.net = create_model(self.config.torchmdnet_args())
        dtype = self.config.dtype
        self.net.to(dtype)
        self.register_buffer("reference_energy", torch.zeros(self.config.max_z, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones((), dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.config.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights live (``model.to(device)`` moves them)."""
        return self.energy_scale.device

    def set_reference(self, reference_energy: torch.Tensor, energy_scale: float) -> None:
        """Fix the per-element reference energies (kcal/mol, (max_z,)) and the output scale s
        (kcal/mol) that multiplies the network's atomic energies."""
        ref = torch.as_tensor(reference_energy, dtype=torch.float64)
        if ref.shape != (self.config.max_z,):
            raise ValueError(f"reference_energy must be ({self.config.max_z},), got {tuple(ref.shape)}")
        if not energy_scale > 0:
            raise ValueError(f"energy_scale must be > 0 kcal/mol, got {energy_scale}")
        self.reference_energy.copy_(ref)
        self.energy_scale.fill_(float(energy_scale))

    def forward(self, species: torch.Tensor, positions: torch.Tensor,
                batch: torch.Tensor | None = None, n_molecules: int | None = None) -> torch.Tensor:
        """Energy per molecule.

        Args:
            species: (A,) int64 atomic numbers.  positions: (A, 3) Å (model dtype).
            batch: (A,) int64 molecule index, non-decreasing (None: one molecule).
            n_molecules: B (default ``batch.max() + 1``).

        Returns:
            (B,) kcal/mol, in the model dtype (the reference energies are added in float64,
            then cast: absolute energies of ~10⁵ kcal/mol lose digits in float32, so losses
            compare energies after subtracting :meth:`reference` per molecule).

        Raises:
            ValueError: bad shapes or atomic numbers outside [1, max_z).
        """
        batch = _check_graph(species, positions, batch, self.config.max_z)
        n_mol = int(batch.max()) + 1 if n_molecules is None and batch.numel() else int(n_molecules or 0)
        feats = tensornet_features(self.net.representation_model, species, positions, batch)
        atomic = self.net.output_model.pre_reduce(feats, None, species, positions, batch)[:, 0]  # (A,)
        e = torch.zeros(n_mol, dtype=atomic.dtype, device=atomic.device).index_add(0, batch, atomic)
        return self.energy_scale * e

    def reference(self, species: torch.Tensor, batch: torch.Tensor | None = None,
                  n_molecules: int | None = None) -> torch.Tensor:
        """``Σ_i e_ref[Z_i]`` per molecule, (B,) float64 kcal/mol (add to :meth:`forward`)."""
        batch = torch.zeros_like(species) if batch is None else batch
        n_mol = int(batch.max()) + 1 if n_molecules is None else int(n_molecules)
        return torch.zeros(n_mol, dtype=torch.float64, device=species.device).index_add(
            0, batch, self.reference_energy[species])

    def total_energy(self, species, positions, batch=None) -> torch.Tensor:
        """:meth:`forward` + :meth:`reference`, (B,) float64 kcal/mol."""
        return self(species, positions, batch).to(torch.float64) + self.reference(species, batch)

    def energy_forces_hvp(self, species: torch.Tensor, positions: torch.Tensor,
                          batch: torch.Tensor | None = None, probes: torch.Tensor | None = None,
                          create_graph: bool = False, method: Literal["batched", "loop"] = "batched",
                          n_molecules: int | None = None, probe_chunk: int = PROBE_CHUNK) -> EnergyForcesHVP:
        """Energy (without the reference), forces and k HVPs in one pass.

        ``H_θ v = ∇_R (v · ∇_R E_θ)``: forward, ``g = ∇_R E`` with the graph kept, then
        ``∇_R (g · v_m)`` for all m by batched double backwards of at most ``probe_chunk`` probes
        each (``method="batched"``) or one per probe (``"loop"``, the reference).

        Args:
            species, positions, batch: as :meth:`forward` (positions are detached first).
            probes: (k, A, 3) directions (zero outside a probe's molecule or not), or None.
            create_graph: keep the θ-graph of energy, forces and HVPs (training).
            method: ``"batched"`` or ``"loop"``.
            n_molecules: B, when known (saves a host sync).
            probe_chunk: most probes per batched double backward (``"batched"``). One vmapped
                pass over all 45 one-hot probes of a toluene batch cost 3× four passes of ≤ 8
                (docs/atomistic_learning.md, "HVPs"); the result is the same to rounding.

        Returns:
            :class:`EnergyForcesHVP`.

        Raises:
            ValueError: probes not (k, A, 3), an unknown method, or probe_chunk < 1.
        """
        if probe_chunk < 1:
            raise ValueError(f"probe_chunk must be >= 1, got {probe_chunk}")
        x = positions.detach().to(self.dtype).requires_grad_(True)
        with torch.enable_grad():
            energy = self(species, x, batch, n_molecules)
            need_graph = create_graph or probes is not None
            (g,) = torch.autograd.grad(energy.sum(), x, create_graph=need_graph)
            hv = None
            if probes is not None:
                if probes.ndim != 3 or probes.shape[1:] != x.shape:
                    raise ValueError(f"probes must be (k, A, 3) for {x.shape[0]} atoms, got "
                                     f"{tuple(probes.shape)}")
                v = probes.to(x.dtype)
                if method == "batched":
                    hv = torch.cat([torch.autograd.grad(g, x, grad_outputs=v[i:i + probe_chunk],
                                                        is_grads_batched=True, create_graph=create_graph,
                                                        retain_graph=True)[0]
                                    for i in range(0, v.shape[0], probe_chunk)]) if v.shape[0] else torch.zeros_like(v)
                elif method == "loop":
                    hv = torch.stack([torch.autograd.grad(g, x, grad_outputs=vm, retain_graph=True,
                                                          create_graph=create_graph)[0] for vm in v])
                else:
                    raise ValueError(f"method must be 'batched' or 'loop', got {method!r}")
        if not create_graph:
            energy, g = energy.detach(), g.detach()
            hv = None if hv is None else hv.detach()
        return EnergyForcesHVP(energy=energy, forces=-g, hvp=hv)

    def hessians(self, species: torch.Tensor, positions: torch.Tensor,
                 batch: torch.Tensor | None = None, create_graph: bool = False
                 ) -> tuple[EnergyForcesHVP, list[torch.Tensor]]:
        """Every molecule's full Hessian from 3·n_max one-hot probes (batched passes of
        :data:`PROBE_CHUNK`): probe m puts a 1 at local coordinate m of every molecule at once.

        Returns:
            (energy/forces output, list of B tensors (3n_b, 3n_b) kcal/mol/Å²).
        """
        batch = _check_graph(species, positions, batch, self.config.max_z)
        probes, blocks = one_hot_hessian_probes(batch, positions.dtype)
        out = self.energy_forces_hvp(species, positions, batch, probes, create_graph=create_graph)
        return out, blocks(out.hvp)

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write weights, buffers, config, units and versions to one file (atomic replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
                   "config": asdict(self.config), "state_dict": self.state_dict(),
                   "units": UNITS, "hessid_version": HESSID_VERSION, "metadata": metadata or {}}
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path


def load_potential(path: str | Path) -> AtomisticPotential:
    """Read a file written by :meth:`AtomisticPotential.save`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an atomistic potential, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a hessid atomistic potential")
    if int(payload.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path}: format version {payload['format_version']} is newer than "
                         f"this hessid reads ({CHECKPOINT_FORMAT_VERSION})")
    model = AtomisticPotential(payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.metadata = payload.get("metadata", {})
    return model


def one_hot_hessian_probes(batch: torch.Tensor, dtype: torch.dtype = torch.float64):
    """Probes (3 n_max, A, 3) whose HVPs are every molecule's Hessian columns, and the function
    that cuts the HVPs (3 n_max, A, 3) into the B Hessians (3n_b, 3n_b).

    Args:
        batch: (A,) int64 molecule index, non-decreasing.
    """
    counts = torch.bincount(batch)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.shape[0], device=batch.device) - starts[batch]  # (A,)
    dim = 3 * int(counts.max())
    probes = torch.zeros(dim, batch.shape[0], 3, dtype=dtype, device=batch.device)
    flat_local = 3 * local[:, None] + torch.arange(3, device=batch.device)  # (A, 3)
    probes.view(dim, -1).scatter_(0, flat_local.reshape(1, -1), 1.0)

    def blocks(hv: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s0, n in zip(starts.tolist(), counts.tolist(), strict=True):
            out.append(hv[: 3 * n, s0:s0 + n].reshape(3 * n, 3 * n).T)  # column m = H e_m
        return out

    return probes, blocks


def hessian_autograd(model: AtomisticPotential, species: torch.Tensor,
                     positions: torch.Tensor) -> torch.Tensor:
    """Full Hessian of one molecule by plain autograd (reference; 3n backward passes).

    Args:
        model: the potential.  species: (n,).  positions: (n, 3) Å.

    Returns:
        (3n, 3n) kcal/mol/Å², flat index 3·i + α.
    """
    n = positions.shape[0]

    def energy(flat):
        return model(species, flat.reshape(n, 3)).sum()

    return torch.autograd.functional.hessian(energy, positions.detach().to(model.dtype).reshape(-1))
