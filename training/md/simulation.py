"""CG Langevin dynamics for batches of replicas (issue 5 §1; benchmark.md "Inputs").

Functional integrator in the jax-md / OpenMM style:

- :class:`LangevinState` — a small frozen dataclass (positions, velocities, forces, energy,
  step, RNG state, per-replica status);
- :class:`LangevinBAOAB` — the integrator's parameters with ``init(...)`` and a pure
  ``step(state, potential) -> state`` (BAOAB splitting, Leimkuhler & Matthews 2013);
- reporters (:class:`DCDReporter`, :class:`StateDataReporter`) observe states and write files;
  :func:`run` drives the loop, checkpoints and resumes; :func:`simulate` is what
  ``hessid simulate`` calls.

Units: positions Å, velocities Å/ps, forces kcal/mol/Å, energies kcal/mol, masses amu,
time ps (timestep given in fs), temperature K, friction 1/ps. The one conversion inside the
physics is ``1 kcal/mol/Å/amu = 418.4 Å/ps²`` (and ``1 kcal/mol/amu = 418.4 Å²/ps²``):
4184 J/mol / (1e-10 m · 1e-3 kg/mol) = 4.184e16 m/s² and 1 m/s² = 1e-14 Å/ps².

Potentials follow the ``CGPotential`` contract of docs/architecture.md:
``potential(positions (A, 3) Å, bead_types (A,), batch (A,)) -> energy (B,) kcal/mol``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hessid.units import KB_KCAL_PER_MOL_K

log = logging.getLogger(__name__)

#: Acceleration of 1 kcal/mol/Å acting on 1 amu, in Å/ps² (also kcal/mol/amu in Å²/ps²).
ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU = 418.4

#: Replica status codes held in :attr:`LangevinState.status`.
STATUS_RUNNING = 0
STATUS_NONFINITE = 1
STATUS_BOND_OUT_OF_RANGE = 2
STATUS_NAMES = {0: "running", 1: "non-finite positions/velocities/forces/energy",
                2: "Cα–Cα bond outside the allowed range"}

#: Default sane range of consecutive Cα–Cα distances, Å (benchmark.md "Inputs").
DEFAULT_BOND_RANGE = (2.0, 6.0)


# ----------------------------------------------------------------------------------------
# A small test / fallback potential with the CGPotential call signature
# ----------------------------------------------------------------------------------------


class HarmonicChainPotential(torch.nn.Module):
    """Harmonic Cα bonds and angles, ``U = Σ ½k_b(|r_{i+1}−r_i| − b0)² + Σ ½k_θ(θ_i − θ0)²``.

    A stand-in for a trained ``CGPotential`` (tests, benchmark, demo fallback). Beads of one
    structure are contiguous in the flattened graph (TorchMD-Net convention); bonds join
    consecutive beads with the same ``batch`` index, angles consecutive triples.

    Args:
        bond_k: bond force constant, kcal/mol/Å².
        bond_length: equilibrium bond b0, Å (3.8 for Cα–Cα).
        angle_k: angle force constant, kcal/mol/rad² (0 disables angles).
        angle: equilibrium angle θ0, radians.

    ``forward(positions (A, 3) Å, bead_types (A,) long, batch (A,) long) -> (B,) kcal/mol``
    with ``B = batch[-1] + 1`` (batch sorted, as the contract requires); bead types unused.
    """

    def __init__(self, bond_k: float = 100.0, bond_length: float = 3.8, angle_k: float = 10.0,
                 angle: float = 1.7):
        super().__init__()
        self.register_buffer("bond_k", torch.tensor(float(bond_k), dtype=torch.float64))
        self.register_buffer("bond_length", torch.tensor(float(bond_length), dtype=torch.float64))
        self.register_buffer("angle_k", torch.tensor(float(angle_k), dtype=torch.float64))
        self.register_buffer("angle", torch.tensor(float(angle), dtype=torch.float64))

    def forward(self, positions: torch.Tensor, bead_types: torch.Tensor,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        """Energy (B,) kcal/mol of positions (A, 3) Å, graph-style (``CGPotential`` signature)."""
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        n_structures = int(batch[-1]) + 1 if batch.numel() else 0
        dtype = positions.dtype
        energy = positions.new_zeros(n_structures)
        d = positions[1:] - positions[:-1]  # (A-1, 3)
        same = batch[1:] == batch[:-1]  # (A-1,)
        length = d.norm(dim=-1)
        e_bond = 0.5 * self.bond_k.to(dtype) * (length - self.bond_length.to(dtype)) ** 2
        energy = energy.index_add(0, batch[:-1], torch.where(same, e_bond, 0.0))
        if positions.shape[0] >= 3 and float(self.angle_k) != 0.0:
            u, v = -d[:-1], d[1:]  # (A-2, 3) vectors from the middle bead
            cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
            theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
            same3 = same[1:] & same[:-1]  # (A-2,)
            e_angle = 0.5 * self.angle_k.to(dtype) * (theta - self.angle.to(dtype)) ** 2
            energy = energy.index_add(0, batch[:-2], torch.where(same3, e_angle, 0.0))
        return energy


def _potential_dtype(potential: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    for p in potential.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def energy_and_forces(potential, positions: torch.Tensor, bead_types: torch.Tensor):
    """Energies and forces of R structures by one batched call of a CG potential.

    Args:
        potential: ``CGPotential``-like callable, ``(A, 3) Å, (A,), (A,) -> (B,) kcal/mol``.
        positions: (R, n, 3) Å, any float dtype (cast to the potential's parameter dtype).
        bead_types: (n,) long, the same for every replica.

    Returns:
        ``(energy (R,) kcal/mol, forces (R, n, 3) kcal/mol/Å)`` detached, in
        ``positions.dtype``; forces ``−∂U/∂R`` by autograd.

    Raises:
        ValueError: the potential returns a shape other than (R,).
    """
    n_rep, n_beads, _ = positions.shape
    dtype = _potential_dtype(potential, positions.dtype)
    with torch.enable_grad():
        x = positions.detach().to(dtype).reshape(n_rep * n_beads, 3).requires_grad_(True)  # (A, 3)
        types = bead_types.to(positions.device).expand(n_rep, n_beads).reshape(-1)  # (A,)
        batch = torch.arange(n_rep, device=positions.device).repeat_interleave(n_beads)  # (A,)
        energy = potential(x, types, batch)
        if energy.shape != (n_rep,):
            raise ValueError(f"potential returned shape {tuple(energy.shape)}, expected ({n_rep},)")
        (grad,) = torch.autograd.grad(energy.sum(), x)
    forces = -grad.reshape(n_rep, n_beads, 3)  # (R, n, 3)
    return energy.detach().to(positions.dtype), forces.detach().to(positions.dtype)


def consecutive_bonds(n_beads: int) -> torch.Tensor:
    """Chain bonds (i, i+1) of n beads as a (n−1, 2) long tensor."""
    i = torch.arange(max(n_beads - 1, 0))
    return torch.stack([i, i + 1], dim=1)  # (n-1, 2)


# ----------------------------------------------------------------------------------------
# State and integrator
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LangevinState:
    """State of R replicas of an n-bead CG system (immutable; ``step`` returns a new one).

    Attributes:
        positions: (R, n, 3) Å.
        velocities: (R, n, 3) Å/ps.
        forces: (R, n, 3) kcal/mol/Å, forces of ``positions`` (one force call per step).
        potential_energy: (R,) kcal/mol.
        step: number of integration steps taken.
        rng_state: ``torch.Generator.get_state()`` of the noise stream (uint8 tensor, CPU).
        status: (R,) int8, :data:`STATUS_RUNNING` or the reason the replica was stopped.
        failed_step: (R,) int64, the step at which a replica was stopped, −1 while running.
    """

    positions: torch.Tensor
    velocities: torch.Tensor
    forces: torch.Tensor
    potential_energy: torch.Tensor
    step: int
    rng_state: torch.Tensor
    status: torch.Tensor
    failed_step: torch.Tensor

    @property
    def n_replicas(self) -> int:
        return int(self.positions.shape[0])

    @property
    def active(self) -> torch.Tensor:
        """(R,) bool: replicas still being integrated."""
        return self.status == STATUS_RUNNING

    def to_dict(self) -> dict:
        """Plain dict of CPU tensors (for ``torch.save``); exact, no dtype change."""
        return {f.name: (getattr(self, f.name).cpu() if isinstance(getattr(self, f.name), torch.Tensor)
                         else getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict, device: str | torch.device = "cpu") -> LangevinState:
        """Inverse of :meth:`to_dict`; tensors moved to ``device`` (RNG state stays on CPU)."""
        kw = {}
        for f in dataclasses.fields(cls):
            v = d[f.name]
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) and f.name != "rng_state" else v
        return cls(**kw)


@dataclass(frozen=True)
class LangevinBAOAB:
    """BAOAB Langevin integrator (Leimkuhler & Matthews 2013), batched over replicas.

    One step of length h: B (v += h/2·F/m), A (x += h/2·v), O (v ← c₁v + c₂√(kT/m)ξ with
    c₁ = e^{−γh}, c₂ = √(1−c₁²)), A, then the new force and B. For a harmonic potential the
    sampled configurational distribution is exact for any stable h (tested).

    After each step every running replica is checked: non-finite positions, velocities,
    forces or energy, or any bond of ``bonds`` outside ``bond_range`` (Å), stop the replica at
    its last valid state (its status and ``failed_step`` say why and when); the others go on.
    Noise is drawn for all R replicas every step, so a failure never changes the others.

    Args:
        timestep: h in fs.
        temperature: K.
        friction: γ in 1/ps.
        masses: bead masses in amu, a float or (n,).
        bead_types: (n,) long, passed to the potential.
        bonds: (n_bonds, 2) long bead pairs checked against ``bond_range``; None → (i, i+1).
        bond_range: (min, max) Å, or None to skip the bond check.
    """

    timestep: float
    temperature: float
    friction: float
    masses: torch.Tensor | float
    bead_types: torch.Tensor
    bonds: torch.Tensor | None = None
    bond_range: tuple[float, float] | None = DEFAULT_BOND_RANGE

    def __post_init__(self):
        if not self.timestep > 0 or not self.temperature > 0 or not self.friction >= 0:
            raise ValueError("timestep (fs) and temperature (K) must be positive, friction ≥ 0")
        masses = torch.as_tensor(self.masses, dtype=torch.float64)
        if (masses <= 0).any():
            raise ValueError("bead masses must be positive (amu)")
        object.__setattr__(self, "bead_types", torch.as_tensor(self.bead_types, dtype=torch.long))
        object.__setattr__(self, "masses", masses)
        if self.bonds is None:
            object.__setattr__(self, "bonds", consecutive_bonds(self.n_beads))
        else:
            object.__setattr__(self, "bonds", torch.as_tensor(self.bonds, dtype=torch.long).reshape(-1, 2))  # (n_bonds, 2)
        object.__setattr__(self, "bonds", self.bonds.contiguous())
        # bonds (i, i+1) are checked by slicing instead of index_select (fewer kernels per step)
        object.__setattr__(self, "_chain_bonds", torch.equal(self.bonds, consecutive_bonds(self.n_beads)))
        object.__setattr__(self, "_coef_cache", {})  # (dtype, device) -> per-step constants

    @property
    def n_beads(self) -> int:
        return int(self.bead_types.shape[0])

    @property
    def timestep_ps(self) -> float:
        return self.timestep * 1e-3

    @property
    def kT(self) -> float:
        """k_B T in kcal/mol."""
        return KB_KCAL_PER_MOL_K * self.temperature

    def _masses(self, like: torch.Tensor) -> torch.Tensor:
        m = self.masses.to(device=like.device, dtype=like.dtype)
        return m.expand(self.n_beads).reshape(1, self.n_beads, 1)  # (1, n, 1)

    def _coefficients(self, like: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Per-step constants for ``like``'s dtype/device, computed once and cached.

        Returns ``(h/2 · 418.4/m (1, n, 1), c₁, c₂ √(kT · 418.4/m) (1, n, 1))``, each evaluated
        in the same operation order as the step formulas, so results are bit-identical.
        """
        key = (like.dtype, like.device)
        coef = self._coef_cache.get(key)
        if coef is None:
            h = self.timestep_ps
            inv_m = ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU / self._masses(like)  # (1, n, 1)
            c1 = math.exp(-self.friction * h)
            c2 = math.sqrt(max(1.0 - c1 * c1, 0.0))
            coef = (0.5 * h * inv_m, c1, c2 * torch.sqrt(self.kT * inv_m))
            self._coef_cache[key] = coef
        return coef

    def init(self, positions: torch.Tensor, potential, seed: int = 0,
             velocities: torch.Tensor | None = None) -> LangevinState:
        """Initial state: forces of ``positions`` and Maxwell–Boltzmann velocities.

        Args:
            positions: (R, n, 3) Å (its dtype and device are the state's).
            potential: ``CGPotential``-like callable.
            seed: seeds the noise stream (velocities and all later O-steps).
            velocities: (R, n, 3) Å/ps; drawn from N(0, kT/m) when None.

        Returns:
            :class:`LangevinState` at step 0; replicas already invalid are stopped at step 0.

        Raises:
            ValueError: positions are not (R, n, 3) with n = len(bead_types).
        """
        if positions.ndim != 3 or positions.shape[1:] != (self.n_beads, 3):
            raise ValueError(f"positions must be (R, {self.n_beads}, 3) Å, got {tuple(positions.shape)}")
        gen = torch.Generator(device=positions.device)
        gen.manual_seed(int(seed))
        if velocities is None:
            sigma = torch.sqrt(self.kT * ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU / self._masses(positions))
            velocities = sigma * torch.randn(positions.shape, generator=gen, device=positions.device,
                                             dtype=positions.dtype)
        velocities = velocities.to(positions)
        energy, forces = energy_and_forces(potential, positions, self.bead_types)
        n_rep = positions.shape[0]
        status = self._check(positions, velocities, forces, energy)
        failed = torch.where(status != STATUS_RUNNING, 0, -1).to(torch.int64)
        return LangevinState(positions=positions.detach().clone(), velocities=velocities, forces=forces,
                             potential_energy=energy, step=0, rng_state=gen.get_state(),
                             status=status.to(torch.int8), failed_step=failed.reshape(n_rep))

    def _check(self, positions, velocities, forces, energy) -> torch.Tensor:
        """(R,) int8 status of a candidate state (no host synchronisation)."""
        # all finite ⇔ Σ 0·t == 0 (0·finite = ±0; 0·±inf and 0·nan = nan): exact, and fewer
        # kernels than four isfinite(...).all() reductions
        zeros = (torch.cat([positions, velocities, forces], dim=-1).flatten(1) * 0).sum(1)  # (R,)
        finite = (zeros + energy * 0) == 0
        status = torch.where(finite, STATUS_RUNNING, STATUS_NONFINITE)
        if self.bond_range is not None and self.bonds.numel():
            if self._chain_bonds:
                d = positions[:, 1:] - positions[:, :-1]  # (R, n-1, 3)
            else:
                b = self.bonds.to(positions.device)
                # index_select: advanced indexing x[:, idx] is ~100× slower on multi-threaded CPU
                d = positions.index_select(1, b[:, 1]) - positions.index_select(1, b[:, 0])  # (R, n_bonds, 3)
            length = d.norm(dim=-1)  # (R, n_bonds)
            ok = ((length >= self.bond_range[0]) & (length <= self.bond_range[1])).all(1)
            status = torch.where(finite & ~ok, STATUS_BOND_OUT_OF_RANGE, status)
        return status.to(torch.int8)

    def step(self, state: LangevinState, potential) -> LangevinState:
        """One BAOAB step of every running replica (pure: ``state`` is not modified).

        Args:
            state: current :class:`LangevinState`.
            potential: ``CGPotential``-like callable.

        Returns:
            The state one step later. Stopped replicas keep their last valid positions and
            velocities; a replica failing in this step is stopped at its pre-step state.
        """
        h = self.timestep_ps
        x, v = state.positions, state.velocities
        # h/2 · 418.4/m (1, n, 1) Å/ps per kcal/mol/Å; c₁; c₂ √(kT/m) (1, n, 1) Å/ps
        half_h_inv_m, c1, sigma = self._coefficients(x)
        gen = torch.Generator(device=x.device)
        gen.set_state(state.rng_state)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)  # (R, n, 3)

        v = v + half_h_inv_m * state.forces  # B
        x = x + 0.5 * h * v  # A
        v = c1 * v + sigma * noise  # O
        x = x + 0.5 * h * v  # A
        energy, forces = energy_and_forces(potential, x, self.bead_types)
        v = v + half_h_inv_m * forces  # B

        candidate = self._check(x, v, forces, energy)
        running = state.status == STATUS_RUNNING
        keep = running & (candidate == STATUS_RUNNING)  # (R,)
        if x.device.type == "cpu" and bool(keep.all()):
            # every replica ran and passed (the usual step): the selects below would return
            # x, v, forces, energy and the unchanged status exactly; skip them on CPU, where
            # reading ``keep`` costs no device synchronisation
            return LangevinState(positions=x, velocities=v, forces=forces, potential_energy=energy,
                                 step=state.step + 1, rng_state=gen.get_state(), status=state.status,
                                 failed_step=state.failed_step)
        k3 = keep.reshape(-1, 1, 1)
        new_status = torch.where(running, candidate, state.status)
        failed_step = torch.where(running & ~keep, state.step + 1, state.failed_step)
        return LangevinState(
            positions=torch.where(k3, x, state.positions),
            velocities=torch.where(k3, v, state.velocities),
            forces=torch.where(k3, forces, state.forces),
            potential_energy=torch.where(keep, energy, state.potential_energy),
            step=state.step + 1,
            rng_state=gen.get_state(),
            status=new_status.to(torch.int8),
            failed_step=failed_step,
        )

    def kinetic_temperature(self, state: LangevinState) -> torch.Tensor:
        """Instantaneous kinetic temperature per replica, (R,) K: Σ m v² / (3 n k_B)."""
        m = self._masses(state.velocities)
        kinetic2 = (m * state.velocities**2).flatten(1).sum(1) / ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU
        return kinetic2 / (3 * self.n_beads * KB_KCAL_PER_MOL_K)

    def config(self) -> dict:
        """JSON-able description (units in the keys)."""
        return {"integrator": "BAOAB Langevin", "timestep_fs": self.timestep,
                "temperature_K": self.temperature, "friction_per_ps": self.friction,
                "masses_amu": self.masses.expand(self.n_beads).tolist(),
                "bead_types": self.bead_types.tolist(), "bond_range_angstrom": self.bond_range}


# ----------------------------------------------------------------------------------------
# Files: Cα topology and a DCD writer that appends and truncates
# ----------------------------------------------------------------------------------------


def ca_topology(n_beads: int, residue_names: Sequence[str] | None = None):
    """mdtraj Topology of one chain of Cα atoms with consecutive bonds.

    Args:
        n_beads: number of beads n.
        residue_names: n three-letter names; "ALA" where None or unrecognised.

    Raises:
        ValueError: residue_names has the wrong length.
    """
    import mdtraj as md

    if residue_names is not None and len(residue_names) != n_beads:
        raise ValueError(f"{len(residue_names)} residue names for {n_beads} beads")
    top = md.Topology()
    chain = top.add_chain()
    atoms = []
    for i in range(n_beads):
        name = residue_names[i] if residue_names is not None else "ALA"
        name = name.upper() if isinstance(name, str) and len(name) == 3 else "ALA"
        res = top.add_residue(name, chain, resSeq=i + 1)
        atoms.append(top.add_atom("CA", md.element.carbon, res))
    for a, b in zip(atoms[:-1], atoms[1:], strict=True):
        top.add_bond(a, b)
    return top


class DCDFile:
    """Minimal CHARMM DCD writer (float32 Å, no unit cell) with O(1) append and truncate.

    mdtraj reads it (``mdtraj.load(path, top=pdb)``, coordinates converted to nm). mdtraj's own
    DCD writer cannot append, which checkpoint/resume needs.

    Args:
        path: file path; created with a header when it does not exist.
        n_atoms: atoms per frame.
        timestep_ps: time between saved frames, ps (stored in the header as DELTA, AKMA-free).
        title: up to 80 ASCII characters of provenance.
    """

    _HEADER = 4 + 84 + 4 + 4 + 4 + 80 + 4 + 4 + 4 + 4  # bytes before the first frame

    def __init__(self, path: str | os.PathLike, n_atoms: int, timestep_ps: float = 1.0,
                 title: str = "hessid"):
        self.path = Path(path)
        self.n_atoms = int(n_atoms)
        self.frame_bytes = 3 * (8 + 4 * self.n_atoms)
        if not self.path.exists():
            with open(self.path, "wb") as f:
                f.write(self._header(0, timestep_ps, title))

    def _header(self, n_frames: int, timestep_ps: float, title: str) -> bytes:
        icntrl = [0] * 20
        icntrl[0], icntrl[1], icntrl[2], icntrl[3] = n_frames, 1, 1, n_frames
        icntrl[19] = 24  # CHARMM version
        delta_akma = float(timestep_ps) / 0.04888821  # DCD stores DELTA in AKMA time units
        head = struct.pack("<i4s9if10i", 84, b"CORD", *icntrl[:9], delta_akma, *icntrl[10:])
        head += struct.pack("<i", 84)
        t = title.encode("ascii", "replace")[:80].ljust(80)
        head += struct.pack("<ii", 84, 1) + t + struct.pack("<i", 84)
        head += struct.pack("<iii", 4, self.n_atoms, 4)
        assert len(head) == self._HEADER
        return head

    @property
    def n_frames(self) -> int:
        return (self.path.stat().st_size - self._HEADER) // self.frame_bytes

    def append(self, xyz: np.ndarray) -> None:
        """Append frames ``xyz`` (F, n_atoms, 3) Å."""
        xyz = np.asarray(xyz, dtype="<f4").reshape(-1, self.n_atoms, 3)  # (F, n, 3)
        if not len(xyz):
            return
        marker = struct.pack("<i", 4 * self.n_atoms)
        with open(self.path, "r+b") as f:
            f.seek(0, os.SEEK_END)
            for frame in xyz:
                for k in range(3):
                    f.write(marker + np.ascontiguousarray(frame[:, k]).tobytes() + marker)
            self._set_count(f, self.n_frames_from_size(f.tell()))

    def n_frames_from_size(self, size: int) -> int:
        return (size - self._HEADER) // self.frame_bytes

    def _set_count(self, f, n: int) -> None:
        f.seek(8)
        f.write(struct.pack("<i", n))
        f.seek(20)
        f.write(struct.pack("<i", n))
        f.flush()
        os.fsync(f.fileno())

    def truncate(self, n_frames: int) -> None:
        """Keep the first ``n_frames`` frames (resume after a checkpoint).

        Raises:
            ValueError: the file holds fewer frames than ``n_frames``.
        """
        have = self.n_frames
        if have < n_frames:
            raise ValueError(f"{self.path} holds {have} frames, checkpoint expects {n_frames}")
        with open(self.path, "r+b") as f:
            f.truncate(self._HEADER + n_frames * self.frame_bytes)
            self._set_count(f, n_frames)


# ----------------------------------------------------------------------------------------
# Reporters (OpenMM's idea: they observe states and write files)
# ----------------------------------------------------------------------------------------


class DCDReporter:
    """Writes every ``interval``-th state of each running replica to ``replica_XXX.dcd``.

    Frames are buffered and appended at :meth:`flush` (called at checkpoints and the end),
    so files and checkpoint agree; :meth:`restore` truncates files to a checkpoint. A stopped
    replica's file ends at its last valid saved frame. ``topology.pdb`` (Cα) sits beside them.

    Args:
        directory: output folder.
        interval: save stride in steps.
        n_replicas, n_beads: system size.
        timestep_ps: time between saved frames, ps (for the DCD header).
        topology: mdtraj Topology (Cα), written to ``topology.pdb``; generic chain if None.
    """

    def __init__(self, directory, interval: int, n_replicas: int, n_beads: int,
                 timestep_ps: float, topology=None):
        self.directory = Path(directory)
        self.interval = int(interval)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.topology = topology if topology is not None else ca_topology(n_beads)
        self.files = [DCDFile(self.directory / f"replica_{r:03d}.dcd", n_beads, timestep_ps,
                              title=f"hessid CG replica {r} | coordinates in angstrom")
                      for r in range(n_replicas)]
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self.frames_written = [f.n_frames for f in self.files]
        self._write_topology(n_beads)

    def _write_topology(self, n_beads: int) -> None:
        import mdtraj as md

        path = self.directory / "topology.pdb"
        if not path.exists():
            xyz = 0.38 * np.arange(n_beads)[:, None] * np.array([[1.0, 0.0, 0.0]])  # (n, 3) nm
            md.Trajectory(xyz[None], self.topology).save_pdb(str(path))

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        """Buffer the positions (R, n, 3) Å of every replica at this step."""
        self._buffer.append((state.positions.detach().cpu().numpy().copy(),
                             state.active.cpu().numpy().copy()))

    def flush(self) -> dict:
        if self._buffer:
            pos = np.stack([p for p, _ in self._buffer])  # (F, R, n, 3) Å
            active = np.stack([a for _, a in self._buffer])  # (F, R)
            for r, f in enumerate(self.files):
                frames = pos[active[:, r], r]  # (F_r, n, 3)
                f.append(frames)
                self.frames_written[r] += len(frames)
        self._buffer.clear()
        return {"frames_written": list(self.frames_written)}

    def restore(self, saved: dict) -> None:
        """Truncate every replica's file to the frame count saved in a checkpoint."""
        for f, n in zip(self.files, saved["frames_written"], strict=True):
            f.truncate(n)
        self.frames_written = list(saved["frames_written"])

    def close(self) -> None:
        self.flush()


class StateDataReporter:
    """CSV log per replica: step, time (ps), potential energy (kcal/mol), kinetic T (K), status.

    Args:
        path: CSV file.
        interval: report stride in steps.
    """

    FIELDS = ["step", "time_ps", "replica", "potential_energy_kcal_mol", "kinetic_temperature_K", "status"]

    def __init__(self, path, interval: int):
        self.path = Path(path)
        self.interval = int(interval)
        self._rows: list[list] = []
        self._last_step = 0
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        """Buffer one CSV row per replica: step, time (ps), replica, energy (kcal/mol), T_kin (K), status."""
        temp = integrator.kinetic_temperature(state).cpu().tolist()
        energy = state.potential_energy.cpu().tolist()
        status = state.status.cpu().tolist()
        t = state.step * integrator.timestep_ps
        self._last_step = state.step
        for r in range(state.n_replicas):
            self._rows.append([state.step, f"{t:.6g}", r, f"{energy[r]:.8g}", f"{temp[r]:.6g}",
                               STATUS_NAMES[status[r]] if status[r] else "running"])

    def flush(self) -> dict:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(self._rows)
        self._rows.clear()
        return {"last_step": self._last_step}

    def restore(self, saved: dict) -> None:
        """Drop rows written after the checkpoint (``saved["last_step"]``)."""
        step = saved.get("last_step", 0)
        self._last_step = step
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        self.flush()


# ----------------------------------------------------------------------------------------
# Driver: loop, checkpoints, resume, progress, failure reports
# ----------------------------------------------------------------------------------------


def failures(state: LangevinState) -> list[dict]:
    """Stopped replicas as ``[{"replica", "step", "reason"}]`` (empty while all run)."""
    status = state.status.cpu().tolist()
    steps = state.failed_step.cpu().tolist()
    return [{"replica": r, "step": steps[r], "reason": STATUS_NAMES[s]}
            for r, s in enumerate(status) if s != STATUS_RUNNING]


def save_checkpoint(path, state: LangevinState, reporters: dict, config: dict) -> None:
    """Atomically write ``{state, reporters, config}`` with ``torch.save`` (tmp + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state": state.to_dict(), "reporters": reporters, "config": config}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu") -> tuple[LangevinState, dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` → ``(state, reporters, config)``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return LangevinState.from_dict(ckpt["state"], device), ckpt["reporters"], ckpt["config"]


def run(integrator: LangevinBAOAB, potential, state: LangevinState, n_steps: int,
        reporters: dict | None = None, checkpoint_path=None, checkpoint_interval: int | None = None,
        config: dict | None = None, progress: bool = True) -> LangevinState:
    """Integrate until ``state.step == n_steps``, reporting, checkpointing and logging failures.

    Reporters are called after steps that are multiples of their ``interval`` (OpenMM
    convention: step 0 is not reported). At every ``checkpoint_interval`` steps and at the end
    the reporters flush and the checkpoint (state + reporter bookkeeping + ``config``) is
    written, so a killed run resumes to the same trajectory. Stops early when every replica
    has failed.

    Args:
        integrator: :class:`LangevinBAOAB`.
        potential: ``CGPotential``-like callable.
        state: start state (step 0 or a resumed checkpoint).
        n_steps: total step count to reach (not additional steps).
        reporters: ``{name: reporter}``; each has ``interval``, ``report``, ``flush``.
        checkpoint_path: where to checkpoint (None: no checkpoints).
        checkpoint_interval: steps between checkpoints (None: only at the end).
        config: JSON-able run description stored in the checkpoint.
        progress: show a tqdm bar (steps/s, running replicas).

    Returns:
        The final :class:`LangevinState`.
    """
    from tqdm.auto import tqdm

    reporters = reporters or {}
    known_failed: set[int] = {f["replica"] for f in failures(state)}
    report_steps = sorted({r.interval for r in reporters.values()} | ({checkpoint_interval} if checkpoint_interval else set()))
    check_every = min(report_steps) if report_steps else 100
    bar = tqdm(total=n_steps, initial=state.step, unit="step", disable=not progress,
               dynamic_ncols=True, desc="CG MD")
    try:
        while state.step < n_steps:
            state = integrator.step(state, potential)
            s = state.step
            bar.update(1)
            for rep in reporters.values():
                if s % rep.interval == 0:
                    rep.report(state, integrator)
            if s % check_every == 0 or s == n_steps:
                new = [f for f in failures(state) if f["replica"] not in known_failed]
                for f in new:
                    msg = f"replica {f['replica']} stopped at step {f['step']}: {f['reason']}"
                    log.warning(msg)
                    bar.write("WARNING: " + msg)
                    known_failed.add(f["replica"])
                bar.set_postfix(running=state.n_replicas - len(known_failed), refresh=False)
                if len(known_failed) == state.n_replicas:
                    bar.write("all replicas stopped; ending the run early")
                    break
            if checkpoint_path is not None and checkpoint_interval and s % checkpoint_interval == 0:
                save_checkpoint(checkpoint_path, state, {k: r.flush() for k, r in reporters.items()},
                                config or {})
    finally:
        bar.close()
    saved = {k: r.flush() for k, r in reporters.items()}
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, state, saved, config or {})
    return state


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` produced.

    Attributes:
        directory: output folder.
        trajectories: per-replica DCD paths (mdtraj-readable with ``topology``).
        topology: Cα PDB path.
        n_steps: steps integrated.
        frames: frames per replica.
        failures: stopped replicas ``[{"replica", "step", "reason"}]``.
        steps_per_second: integration speed of this invocation (steps × 1, not × replicas).
    """

    directory: Path
    trajectories: list[Path]
    topology: Path
    n_steps: int
    frames: list[int]
    failures: list[dict]
    steps_per_second: float


def load_cg_reference(path) -> dict:
    """Read the CG part of a hessid dataset HDF5 (docs/architecture.md, "Dataset file").

    Returns:
        dict with ``positions`` (T, n, 3) float64 Å, ``bead_types`` (n,) int64, ``time`` (T,) ps,
        ``temperature`` K (or None), ``residue_names`` (n,) or None, ``name``, ``path``.

    Raises:
        KeyError: the file has no ``cg/coordinates``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if "cg/coordinates" not in f:
            raise KeyError(f"{path}: no 'cg/coordinates' (not a hessid dataset)")
        pos = np.asarray(f["cg/coordinates"], dtype=np.float64)
        n = pos.shape[1]
        types = np.asarray(f["cg/bead_types"], dtype=np.int64) if "cg/bead_types" in f else np.zeros(n, np.int64)
        t = np.asarray(f["time"], dtype=np.float64) if "time" in f else None
        temp = f.attrs.get("temperature")
        vocab = f["cg/bead_types"].attrs.get("bead_vocabulary") if "cg/bead_types" in f else None
        if vocab is None:
            vocab = f["cg"].attrs.get("bead_vocabulary")
        name = f.attrs.get("name", Path(path).stem)
    residue_names = None
    if vocab is not None:
        vocab = json.loads(vocab) if isinstance(vocab, str | bytes) else list(vocab)
        residue_names = [str(vocab[i]) for i in types]
    return {"positions": pos, "bead_types": types, "time": t,
            "temperature": float(temp) if temp is not None else None,
            "residue_names": residue_names, "name": str(name), "path": str(path)}


def _versions() -> dict:
    import importlib.metadata as im

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("hessid", "torch", "numpy", "mdtraj"):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            out[pkg] = None
    return out


def simulate(potential, out_dir, *, n_steps: int, save_interval: int = 100,
             reference=None, start_positions=None, bead_types=None, n_replicas: int = 20,
             timestep: float = 2.0, temperature: float = 300.0, friction: float = 1.0,
             masses: float | Sequence[float] = 12.0, seed: int = 0, device: str = "cpu",
             dtype: torch.dtype = torch.float32, checkpoint_interval: int | None = None,
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             residue_names: Sequence[str] | None = None, bond_range=DEFAULT_BOND_RANGE,
             provenance: dict | None = None, threads: int | None = 1) -> SimulationResult:
    """Run R replicas of CG Langevin MD and write mdtraj-readable trajectories (issue 5 §1).

    Starting structures: ``start_positions`` (R, n, 3) Å or (n, 3) (copied to every replica), or
    R frames drawn without replacement (seeded by ``seed``) from ``reference`` — a hessid
    dataset HDF5 path (``cg/coordinates``) or an array (T, n, 3) Å.

    Writes into ``out_dir``: ``replica_XXX.dcd`` (Å in the file, nm once loaded by mdtraj),
    ``topology.pdb`` (Cα), ``state.csv`` (energies, kinetic temperatures),
    ``checkpoint.pt`` and ``simulation.json`` (units, parameters, start frames, seeds,
    versions, failures, steps/s). ``mdtraj.load(out/'replica_000.dcd', top=out/'topology.pdb')``.

    Args:
        potential: ``CGPotential``-like callable (kcal/mol, Å).
        out_dir: output folder.
        n_steps: total integration steps.
        save_interval: frame stride in steps.
        reference, start_positions: see above (exactly one).
        bead_types: (n,) long; from the dataset when ``reference`` is a path, else zeros.
        n_replicas: R (ignored when ``start_positions`` is (R, n, 3)).
        timestep: fs. temperature: K. friction: 1/ps. masses: amu, float or (n,).
        seed: draws start frames, velocities and noise.
        device, dtype: where and in which precision the state lives.
        checkpoint_interval: steps between checkpoints (default: 10 × save_interval); a
            multiple of ``save_interval`` is required for exact resumption.
        resume: continue from ``out_dir/checkpoint.pt`` when present (bit-identical result).
        overwrite: replace an existing run in ``out_dir``.
        progress: tqdm bar.
        residue_names: for the Cα topology (from the dataset vocabulary when available).
        bond_range: (min, max) Å for the blow-up check, or None.
        provenance: extra JSON-able provenance (model path, training run, …).
        threads: torch CPU threads during the run (restored afterwards; None: leave as is).
            CG systems of ≤ 100 beads are dominated by per-op overhead, where one thread is
            fastest (multi-threaded small ops were up to 9× slower on a loaded 2-core machine).

    Returns:
        :class:`SimulationResult`.

    Raises:
        ValueError: neither or both of ``reference``/``start_positions``, too few reference
            frames, bad shapes, or a checkpoint interval that is not a multiple of the stride.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    checkpoint_interval = checkpoint_interval or 10 * save_interval
    if checkpoint_interval % save_interval:
        raise ValueError("checkpoint_interval must be a multiple of save_interval")
    if (reference is None) == (start_positions is None):
        raise ValueError("give exactly one of reference= or start_positions=")

    start_info: dict = {}
    if reference is not None:
        if isinstance(reference, str | os.PathLike):
            ref = load_cg_reference(reference)
            frames, start_info["reference"] = ref["positions"], ref["path"]
            if bead_types is None:
                bead_types = ref["bead_types"]
            residue_names = residue_names or ref["residue_names"]
        else:
            frames = np.asarray(reference, dtype=np.float64)
        if len(frames) < n_replicas:
            raise ValueError(f"reference holds {len(frames)} frames, need {n_replicas} start frames")
        idx = np.sort(np.random.default_rng(seed).choice(len(frames), n_replicas, replace=False))
        start = torch.as_tensor(frames[idx])  # (R, n, 3)
        start_info["reference_frames"] = idx.tolist()
    else:
        start = torch.as_tensor(np.asarray(start_positions, dtype=np.float64))
        if start.ndim == 2:
            start = start.expand(n_replicas, *start.shape).clone()  # (R, n, 3)
        start_info["given"] = True
    n_rep, n_beads = start.shape[0], start.shape[1]
    if bead_types is None:
        bead_types = np.zeros(n_beads, dtype=np.int64)
    integrator = LangevinBAOAB(timestep=timestep, temperature=temperature, friction=friction,
                               masses=torch.as_tensor(masses, dtype=torch.float64),
                               bead_types=torch.as_tensor(np.asarray(bead_types)),
                               bond_range=tuple(bond_range) if bond_range is not None else None)
    config = {"n_replicas": n_rep, "n_beads": n_beads, "n_steps": n_steps, "save_interval": save_interval,
              "checkpoint_interval": checkpoint_interval, "seed": seed, "dtype": str(dtype),
              **integrator.config()}
    config_for_match = {k: v for k, v in config.items() if k != "n_steps"}

    have_run = ckpt_path.exists() or any(out.glob("replica_*.dcd"))
    if have_run and not resume:
        if not overwrite:
            raise FileExistsError(f"{out} already holds a simulation; pass resume=True or overwrite=True")
        for p in [*out.glob("replica_*.dcd"), ckpt_path, out / "state.csv", out / "simulation.json",
                  out / "topology.pdb"]:
            p.unlink(missing_ok=True)

    topology = ca_topology(n_beads, residue_names)
    reporters = {
        "trajectory": DCDReporter(out, save_interval, n_rep, n_beads, save_interval * timestep * 1e-3, topology),
        "state_data": StateDataReporter(out / "state.csv", save_interval),
    }
    potential = potential.to(device) if hasattr(potential, "to") else potential
    if resume and ckpt_path.exists():
        state, saved, old_config = load_checkpoint(ckpt_path, device)
        old_match = {k: v for k, v in old_config.items() if k != "n_steps"}
        if old_match != config_for_match:
            diff = sorted(k for k in set(old_match) | set(config_for_match)
                          if old_match.get(k) != config_for_match.get(k))
            raise ValueError(f"checkpoint in {out} was written with different settings: {diff}")
        for name, rep in reporters.items():
            rep.restore(saved.get(name, {}))
        log.info("resuming %s at step %d", out, state.step)
    else:
        if resume:
            log.info("no checkpoint in %s; starting a new run", out)
        state = integrator.init(start.to(device=device, dtype=dtype), potential, seed=seed)

    step0, t0 = state.step, time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None and str(device).startswith("cpu"):
        torch.set_num_threads(int(threads))
    try:
        state = run(integrator, potential, state, n_steps, reporters, ckpt_path, checkpoint_interval,
                    config, progress)
    finally:
        torch.set_num_threads(old_threads)
    elapsed = time.perf_counter() - t0
    speed = (state.step - step0) / elapsed if elapsed > 0 and state.step > step0 else float("nan")
    fails = failures(state)
    for f in fails:
        log.warning("replica %d stopped at step %d: %s", f["replica"], f["step"], f["reason"])
    traj = [f.path for f in reporters["trajectory"].files]
    meta = {
        "format": "DCD per replica + Cα PDB topology; load with mdtraj.load(dcd, top='topology.pdb')",
        "units": {"positions_in_files": "angstrom (mdtraj converts to nm)", "time": "ps",
                  "energy": "kcal/mol", "temperature": "K", "mass": "amu", "friction": "1/ps",
                  "timestep": "fs"},
        "frame_interval_ps": save_interval * timestep * 1e-3,
        "first_frame_step": save_interval,
        "config": config, "start": start_info,
        "frames_per_replica": reporters["trajectory"].frames_written,
        "trajectories": [p.name for p in traj], "topology": "topology.pdb",
        "failures": fails, "steps_completed": state.step,
        "steps_per_second_last_invocation": speed, "device": str(device),
        "versions": _versions(), "provenance": provenance or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    return SimulationResult(directory=out, trajectories=traj, topology=out / "topology.pdb",
                            n_steps=state.step, frames=list(reporters["trajectory"].frames_written),
                            failures=fails, steps_per_second=speed)
