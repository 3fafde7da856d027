"""CG Langevin dynamics: integrator laws, units, resume, failure handling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hessid.training.md.simulation import (
    ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU,
    STATUS_BOND_OUT_OF_RANGE,
    STATUS_NONFINITE,
    DCDFile,
    HarmonicChainPotential,
    LangevinBAOAB,
    energy_and_forces,
    simulate,
)

from hessid.units import KB_KCAL_PER_MOL_K
from tests.helpers import assert_unbiased

md = pytest.importorskip("mdtraj")


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


def test_acceleration_unit_is_418_4_angstrom_per_ps2():
    # 1 kcal/mol/Å on 1 amu, from SI: 4184 J/mol / (1e-10 m · 1e-3 kg/mol), 1 m/s² = 1e-14 Å/ps²
    si = 4184.0 / (1e-10 * 1e-3)
    assert math.isclose(si * 1e10 / 1e24, ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU, rel_tol=1e-12)


def test_frictionless_oscillator_has_the_period_implied_by_the_unit_conversion():
    # ω = √(k·418.4/m) /ps: after half a period x(0) = 1 Å has become −1 Å. A wrong
    # kcal/mol/Å/amu → Å/ps² factor would change the period (equilibrium tests cannot see it).
    k, m = 10.0, 12.0
    omega = math.sqrt(k * ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU / m)  # 1/ps
    h = 0.5  # fs
    n_half = round(math.pi / omega / (h * 1e-3))
    integ = LangevinBAOAB(timestep=h, temperature=300.0, friction=0.0, masses=m,
                          bead_types=torch.zeros(1, dtype=torch.long), bond_range=None)
    x0 = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)  # (1, 1, 3)
    state = integ.init(x0, Tether(k), velocities=torch.zeros_like(x0))
    for _ in range(n_half):
        state = integ.step(state, Tether(k))
    assert abs(float(state.positions[0, 0, 0]) + 1.0) < 5e-3


def test_batched_forces_equal_per_structure_loop_and_finite_differences():
    torch.manual_seed(0)
    pot = HarmonicChainPotential(bond_k=50.0, angle_k=5.0)
    x = straight_chain(6).expand(3, 6, 3) + 0.3 * torch.randn(3, 6, 3, dtype=torch.float64)  # (R, n, 3)
    types = torch.zeros(6, dtype=torch.long)
    e, f = energy_and_forces(pot, x, types)
    for r in range(3):
        e_r, f_r = energy_and_forces(pot, x[r : r + 1], types)
        torch.testing.assert_close(e[r : r + 1], e_r, rtol=1e-13, atol=0)
        torch.testing.assert_close(f[r : r + 1], f_r, rtol=1e-12, atol=1e-12)
    h = 1e-5
    d = torch.zeros_like(x)
    d[1, 2, 0] = h
    fd = -(energy_and_forces(pot, x + d, types)[0] - energy_and_forces(pot, x - d, types)[0])[1] / (2 * h)
    assert abs(float(fd) - float(f[1, 2, 0])) < 1e-6 * max(1.0, abs(float(fd)))


def _tether_run(timestep_fs, n_steps, friction, seed=1, n_rep=256, n_beads=2, k=10.0, mass=12.0):
    """Replica-averaged ⟨x²⟩ and kinetic temperature, started in exact equilibrium."""
    T = 300.0
    kT = KB_KCAL_PER_MOL_K * T
    integ = LangevinBAOAB(timestep=timestep_fs, temperature=T, friction=friction, masses=mass,
                          bead_types=torch.zeros(n_beads, dtype=torch.long), bond_range=None)
    g = torch.Generator().manual_seed(seed)
    x0 = math.sqrt(kT / k) * torch.randn(n_rep, n_beads, 3, generator=g, dtype=torch.float64)
    pot = Tether(k)
    state = integ.init(x0, pot, seed=seed)
    x2 = torch.zeros(n_rep, dtype=torch.float64)
    temp = torch.zeros(n_rep, dtype=torch.float64)
    for _ in range(n_steps):
        state = integ.step(state, pot)
        x2 += (state.positions**2).mean((1, 2))
        temp += integ.kinetic_temperature(state)
    return x2 / n_steps, temp / n_steps, kT / k, T


def test_baoab_position_variance_is_exact_boltzmann_even_at_large_timestep():
    # k = 10 kcal/mol/Å², m = 12 amu → ω = √(k·418.4/m) = 18.7/ps; h = 50 fs gives ωh ≈ 0.93,
    # where BAOAB's configurational sampling of a harmonic well is still exact. Replicas are
    # independent, so their time-averaged ⟨x²⟩ are i.i.d. samples for a z-test.
    x2, _, exact, _ = _tether_run(timestep_fs=50.0, n_steps=400, friction=5.0)
    assert_unbiased(x2.numpy(), exact, float(x2.var()), z_max=4.5)
    # negative control: the same run at a wrong temperature would be detected
    z_wrong = (float(x2.mean()) - 1.05 * exact) / math.sqrt(float(x2.var()) / len(x2))
    assert abs(z_wrong) > 4.5


def test_kinetic_temperature_matches_thermostat_temperature():
    # small ωh = 0.037 (h = 2 fs): BAOAB's full-step velocity bias ∝ (ωh)²/4 ≈ 3e-4, negligible
    _, temp, _, T = _tether_run(timestep_fs=2.0, n_steps=600, friction=10.0, n_rep=128)
    assert_unbiased(temp.numpy(), T, float(temp.var()), z_max=4.5)


def test_trajectory_loads_in_mdtraj_in_nm_with_provenance(tmp_path):
    x0 = straight_chain(5)
    res = simulate(HarmonicChainPotential(), tmp_path / "run", n_steps=40, save_interval=10,
                   start_positions=x0, n_replicas=2, dtype=torch.float64, progress=False,
                   provenance={"model": "harmonic"})
    traj = md.load(str(res.trajectories[1]), top=str(res.topology))
    assert traj.n_frames == 4 and traj.n_atoms == 5
    bonds = np.linalg.norm(np.diff(traj.xyz, axis=1), axis=-1)  # (F, 4) nm
    assert 0.3 < bonds.mean() < 0.46  # 3.8 Å bonds read back as ≈ 0.38 nm
    meta = json.loads((tmp_path / "run" / "simulation.json").read_text())
    assert meta["frame_interval_ps"] == pytest.approx(10 * 2.0e-3)
    assert meta["units"]["time"] == "ps" and meta["provenance"] == {"model": "harmonic"}
    assert meta["frames_per_replica"] == [4, 4] and meta["failures"] == []


def test_start_frames_are_drawn_from_reference_with_the_seed(tmp_path):
    rng = np.random.default_rng(0)
    ref = np.stack([straight_chain(4).numpy() + 0.1 * rng.normal(size=(4, 3)) for _ in range(30)])
    kw = dict(n_steps=10, save_interval=10, reference=ref, n_replicas=3, progress=False)
    simulate(HarmonicChainPotential(), tmp_path / "a", seed=7, **kw)
    simulate(HarmonicChainPotential(), tmp_path / "b", seed=7, **kw)
    simulate(HarmonicChainPotential(), tmp_path / "c", seed=8, **kw)
    idx = [json.loads((tmp_path / d / "simulation.json").read_text())["start"]["reference_frames"]
           for d in "abc"]
    assert idx[0] == idx[1] != idx[2]
    assert len(set(idx[0])) == 3


def test_resume_after_a_kill_gives_bit_identical_trajectories(tmp_path):
    x0 = straight_chain(6)
    kw = dict(n_steps=300, save_interval=20, checkpoint_interval=100, start_positions=x0,
              n_replicas=3, dtype=torch.float64, progress=False, seed=3)
    full = simulate(HarmonicChainPotential(), tmp_path / "full", **kw)

    class Killer(HarmonicChainPotential):
        calls = 0

        def forward(self, *a):
            Killer.calls += 1
            if Killer.calls > 231:  # init + 230 steps: dies after the checkpoint at step 200
                raise KeyboardInterrupt
            return super().forward(*a)

    with pytest.raises(KeyboardInterrupt):
        simulate(Killer(), tmp_path / "killed", **kw)
    # make things worse: frames and log rows written after the checkpoint must be discarded
    DCDFile(tmp_path / "killed" / "replica_000.dcd", 6).append(np.ones((2, 6, 3)))
    with open(tmp_path / "killed" / "state.csv", "a") as f:
        f.write("260,0.52,0,1.0,300,running\n")
    with pytest.raises(FileExistsError):
        simulate(HarmonicChainPotential(), tmp_path / "killed", **kw)
    resumed = simulate(HarmonicChainPotential(), tmp_path / "killed", resume=True, **kw)
    assert resumed.frames == full.frames == [15, 15, 15]
    for a, b in zip(full.trajectories, resumed.trajectories, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "full" / "state.csv").read_text() == (tmp_path / "killed" / "state.csv").read_text()
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["state"]
    cb = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["state"]
    for key in ("positions", "velocities", "rng_state"):
        assert torch.equal(ca[key], cb[key])
    with pytest.raises(ValueError, match="different settings"):
        simulate(HarmonicChainPotential(), tmp_path / "killed", resume=True, **{**kw, "seed": 4})


def test_blown_up_replica_is_stopped_and_reported_while_others_continue(tmp_path):
    n = 6
    x0 = straight_chain(n).expand(4, n, 3).clone()  # (R, n, 3)
    x0[3, 0, 0] = 100.0  # replica 3: energy NaN from the first force call on (NaNBeyond)
    integ = LangevinBAOAB(timestep=2.0, temperature=300.0, friction=1.0, masses=12.0,
                          bead_types=torch.zeros(n, dtype=torch.long))
    pot = NaNBeyond()
    v0 = torch.zeros_like(x0)
    v0[1, -1] = torch.tensor([3000.0, 0.0, 0.0], dtype=torch.float64)  # replica 1: tears a bond
    state = integ.init(x0, pot, seed=0, velocities=v0)
    assert state.status.tolist() == [0, 0, 0, STATUS_NONFINITE]
    before = None
    for _ in range(50):
        if state.status[1] == 0:
            before = state.positions[1].clone()
        state = integ.step(state, pot)
    assert state.status.tolist() == [0, STATUS_BOND_OUT_OF_RANGE, 0, STATUS_NONFINITE]
    assert 0 < int(state.failed_step[1]) < 50 and int(state.failed_step[3]) == 0
    torch.testing.assert_close(state.positions[1], before)  # frozen at its last valid state
    assert torch.isfinite(state.positions[[0, 2]]).all()

    res = simulate(pot, tmp_path / "run", n_steps=100, save_interval=10, start_positions=x0,
                   dtype=torch.float64, progress=False, seed=0)
    reasons = {f["replica"]: f["reason"] for f in res.failures}
    assert set(reasons) == {3} and "non-finite" in reasons[3]
    assert res.frames == [10, 10, 10, 0]
    meta = json.loads((tmp_path / "run" / "simulation.json").read_text())
    assert meta["failures"] == res.failures


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        LangevinBAOAB(timestep=-1.0, temperature=300.0, friction=1.0, masses=12.0,
                      bead_types=torch.zeros(3, dtype=torch.long))
    integ = LangevinBAOAB(timestep=1.0, temperature=300.0, friction=1.0, masses=12.0,
                          bead_types=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be"):
        integ.init(torch.zeros(2, 4, 3), HarmonicChainPotential())
