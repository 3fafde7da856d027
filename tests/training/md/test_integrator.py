"""CG Langevin integrator: BAOAB laws, units, batched forces, functional form."""

from __future__ import annotations

import math

import pytest
import torch

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.md.integrator import (
    ACCELERATION_A_PS2_PER_KCAL_MOL_A_AMU,
    LangevinBAOAB,
    baoab_langevin,
    energy_and_forces,
)
from hessid.units import KB_KCAL_PER_MOL_K
from tests.helpers import assert_unbiased
from tests.training.md.chains import Tether, straight_chain


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


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        LangevinBAOAB(timestep=-1.0, temperature=300.0, friction=1.0, masses=12.0,
                      bead_types=torch.zeros(3, dtype=torch.long))
    integ = LangevinBAOAB(timestep=1.0, temperature=300.0, friction=1.0, masses=12.0,
                          bead_types=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positions must be"):
        integ.init(torch.zeros(2, 4, 3), HarmonicChainPotential())


def test_functional_init_step_pair_reproduces_the_class_bit_for_bit():
    pot = HarmonicChainPotential()
    kw = dict(timestep=2.0, temperature=300.0, friction=1.0, masses=12.0,
              bead_types=torch.zeros(5, dtype=torch.long))
    x0 = straight_chain(5).expand(3, 5, 3).clone()  # (R, n, 3)
    integ = LangevinBAOAB(**kw)
    init, step = baoab_langevin(pot, **kw)
    a, b = integ.init(x0, pot, seed=4), init(x0, seed=4)
    for _ in range(25):
        a, b = integ.step(a, pot), step(b)
    assert a.step == b.step == 25
    for key in ("positions", "velocities", "forces", "potential_energy", "rng_state", "status"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    with pytest.raises(ValueError):
        baoab_langevin(pot, **{**kw, "timestep": 0.0})
