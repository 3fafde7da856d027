"""BAOAB Langevin integrator for batches of CG replicas: state, step, forces.

Functional integrator in the jax-md / OpenMM style:

- :class:`LangevinState` — a small frozen dataclass (positions, velocities, forces, energy,
  step, RNG state, per-replica status);
- :class:`LangevinBAOAB` — the integrator's parameters with ``init(...)`` and a pure
  ``step(state, potential) -> state`` (BAOAB splitting, Leimkuhler & Matthews 2013);
- :func:`baoab_langevin` — the same integrator as a pair of functions ``(init, step)`` with the
  potential bound, as jax-md's ``simulate.nvt_langevin`` returns them;
- :func:`energy_and_forces` — one batched potential call for R replicas, forces by autograd.

Units: positions Å, velocities Å/ps, forces kcal/mol/Å, energies kcal/mol, masses amu,
time ps (timestep given in fs), temperature K, friction 1/ps. The one conversion inside the
physics is ``1 kcal/mol/Å/amu = 418.4 Å/ps²`` (and ``1 kcal/mol/amu = 418.4 Å²/ps²``):
4184 J/mol / (1e-10 m · 1e-3 kg/mol) = 4.184e16 m/s² and 1 m/s² = 1e-14 Å/ps².

Potentials follow the ``CGPotential`` contract of docs/architecture.md:
``potential(positions (A, 3) Å, bead_types (A,), batch (A,)) -> energy (B,) kcal/mol``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from hessid.units import KB_KCAL_PER_MOL_K

__all__ = [
    "ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU",
    "STABILITY_OMEGA_DT",
    "DEFAULT_BOND_RANGE",
    "STATUS_BOND_OUT_OF_RANGE",
    "STATUS_NAMES",
    "STATUS_NONFINITE",
    "STATUS_RUNNING",
    "LangevinBAOAB",
    "LangevinFunctions",
    "LangevinState",
    "baoab_langevin",
    "check_timestep",
    "consecutive_bonds",
    "energy_and_forces",
    "stiffest_bond",
]

#: Acceleration of 1 kcal/mol/Å acting on 1 amu, in Å/ps² (also kcal/mol/amu in Å²/ps²).
ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU = 418.4

#: Replica status codes held in :attr:`LangevinState.status`.
STATUS_RUNNING = 0
STATUS_NONFINITE = 1
STATUS_BOND_OUT_OF_RANGE = 2
STATUS_NAMES = {0: "running", 1: "non-finite positions/velocities/forces/energy",
                2: "CG bond outside the allowed range"}

#: BAOAB, like velocity Verlet, is unstable for a harmonic mode of angular frequency ω when
#: ω·h ≥ 2 (h the timestep): :func:`check_timestep` refuses a timestep beyond it.
STABILITY_OMEGA_DT = 2.0

#: Default sane range of consecutive Cα–Cα distances, Å (the blow-up check of docs/evaluation.md).
DEFAULT_BOND_RANGE = (2.0, 6.0)


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


def stiffest_bond(potential) -> float | None:
    """The largest harmonic bond constant of a potential's prior, kcal/mol/Å².

    Knows :class:`~hessid.training.learning.models.CGPotential` (its prior's pooled and
    per-class ``bond_k``) and potentials with a ``bond_k`` attribute (the harmonic chain).

    Returns:
        k (float), or None when the potential has no known bond term (then no check is made).
    """
    params = getattr(getattr(potential, "prior", None), "params", None)
    if params is not None and hasattr(params, "bond_k"):
        return float(max([params.bond_k, *(k for _, k, _ in getattr(params, "bond_classes", ()))]))
    k = getattr(potential, "bond_k", None)
    return None if k is None else float(k)


def check_timestep(timestep: float, masses, bond_k: float | None) -> float | None:
    """Refuse a timestep at which the stiffest bond cannot be integrated stably.

    A chain of beads of mass ≥ m joined by harmonic springs of constant ≤ k has normal-mode
    frequencies ω ≤ 2√(k/m) (Gershgorin's bound on the mass-weighted bond Hessian, reached by a
    long straight chain; units: ω² = 418.4·k/m ps⁻² with k in kcal/mol/Å², m in amu). BAOAB
    blows up for ω·h ≥ 2 (:data:`STABILITY_OMEGA_DT`), so ``timestep`` is refused when
    2√(k/m)·h > 2. Angle terms and the network only add stiffness, so a refused step never works.

    Args:
        timestep: h, fs.
        masses: bead masses, amu (float or (n,)); the lightest bead is used.
        bond_k: the stiffest bond, kcal/mol/Å² (:func:`stiffest_bond`); None: nothing checked.

    Returns:
        ω_max·h (None when ``bond_k`` is None).

    Raises:
        ValueError: one line with k, m, ω_max, the period, ω_max·h and the largest stable
            timestep.
    """
    if bond_k is None or not bond_k > 0:
        return None
    m = float(torch.as_tensor(masses, dtype=torch.float64).min())
    omega = 2.0 * math.sqrt(ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU * bond_k / m)  # 1/ps
    omega_h = omega * timestep * 1e-3
    if omega_h > STABILITY_OMEGA_DT:
        raise ValueError(
            f"timestep {timestep:g} fs is beyond the stability limit of this model: its stiffest "
            f"prior bond (k = {bond_k:.4g} kcal/mol/Å²) between beads of {m:.4g} amu vibrates at up "
            f"to ω = 2√(k/m) = {omega:.4g}/ps (period {2e3 * math.pi / omega:.3g} fs), and BAOAB "
            f"needs ω·dt < {STABILITY_OMEGA_DT:g} (here {omega_h:.3g}): use a timestep below "
            f"{1e3 * STABILITY_OMEGA_DT / omega:.3g} fs (a tenth of the period, "
            f"{2e2 * math.pi / omega:.2g} fs, is accurate)")
    return omega_h


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
# Functional form (jax-md style): the potential bound, two pure functions
# ----------------------------------------------------------------------------------------


class LangevinFunctions(NamedTuple):
    """BAOAB Langevin as ``(init, step)`` with the potential bound (jax-md's ``init_fn, apply_fn``).

    Attributes:
        init: ``init(positions (R, n, 3) Å, seed=0, velocities=None) -> LangevinState``
            (:meth:`LangevinBAOAB.init`).
        step: ``step(state) -> state`` one step later (:meth:`LangevinBAOAB.step`); pure.
    """

    init: Callable[..., LangevinState]
    step: Callable[[LangevinState], LangevinState]


def baoab_langevin(potential, *, timestep: float, temperature: float, friction: float,
                   masses: torch.Tensor | float, bead_types: torch.Tensor,
                   bonds: torch.Tensor | None = None,
                   bond_range: tuple[float, float] | None = DEFAULT_BOND_RANGE) -> LangevinFunctions:
    """BAOAB Langevin dynamics (Leimkuhler & Matthews 2013) as a pair of functions.

    The functional counterpart of :class:`LangevinBAOAB` (same arguments, same numbers bit for
    bit), shaped like jax-md's ``simulate.nvt_langevin``::

        init, step = baoab_langevin(potential, timestep=2.0, temperature=300.0, friction=1.0,
                                    masses=12.0, bead_types=types)
        state = init(positions, seed=0)
        for _ in range(n_steps):
            state = step(state)

    Args:
        potential: ``CGPotential``-like callable, ``(A, 3) Å, (A,), (A,) -> (B,) kcal/mol``.
        timestep: h in fs. temperature: K. friction: γ in 1/ps.
        masses: bead masses in amu, a float or (n,).
        bead_types: (n,) long, passed to the potential.
        bonds: (n_bonds, 2) long bead pairs checked against ``bond_range``; None → (i, i+1).
        bond_range: (min, max) Å, or None to skip the bond check.

    Returns:
        :class:`LangevinFunctions` ``(init, step)``.

    Raises:
        ValueError: as :class:`LangevinBAOAB` (non-positive timestep, temperature or masses,
            negative friction).
    """
    integrator = LangevinBAOAB(timestep=timestep, temperature=temperature, friction=friction,
                               masses=masses, bead_types=bead_types, bonds=bonds, bond_range=bond_range)

    def init(positions: torch.Tensor, seed: int = 0,
             velocities: torch.Tensor | None = None) -> LangevinState:
        return integrator.init(positions, potential, seed=seed, velocities=velocities)

    def step(state: LangevinState) -> LangevinState:
        return integrator.step(state, potential)

    return LangevinFunctions(init=init, step=step)
