"""A fit of M2 on exact T2 samples at 250/300/350 K recovers the conditional heat capacity
C = m k_B/2 = 2 k_B and the entropy gradient ∇S = −m k_B γ/2 (spec thermo.md §7)."""

from __future__ import annotations

import math

import torch

from hessid.thermo_toys import t2_double_well
from hessid.training.learning.thermal_losses import estimate_noise_floors
from hessid.training.learning.thermal_models import ThermalPotential
from hessid.training.learning.thermal_toy import fit_full_batch, model_thermodynamics, toy_batch
from hessid.units import KB_KCAL_PER_MOL_K
from hessid.units import beta as beta_of_temperature

TEMPS = (250.0, 300.0, 350.0)
N = 1500


def _slope_sd(var_of_t) -> float:
    """SD of the least-squares slope in T of per-temperature means over TEMPS with N frames
    each and per-frame variance var_of_t(T): weights (T − T̄)/Σ(T − T̄)² = ∓1/100, 0, 1/100 K⁻¹."""
    tbar = sum(TEMPS) / 3
    sxx = sum((t - tbar) ** 2 for t in TEMPS)
    return math.sqrt(sum(((t - tbar) / sxx) ** 2 * var_of_t(t) / N for t in TEMPS))


def test_m2_fit_recovers_heat_capacity_and_entropy_gradient():
    system = t2_double_well()
    data = toy_batch(system, TEMPS, N, seed=4)
    floors = estimate_noise_floors(data["positions"][:, :1].numpy(), data["forces"].numpy(),
                                   data["temperature"].numpy(), data["potential_energy"].numpy())
    torch.manual_seed(4)
    model = ThermalPotential(["bead"], None, {"precision": "float64"},
                             {"form": "M2", "backbone": "mlp", "mlp_dims": 1, "hidden": 16, "mlp_layers": 2},
                             n_beads=1)
    fit_full_batch(model, data, floors, 1.0, 200, method="lbfgs")
    got = model_thermodynamics(model, 300.0, n=801)
    # statistical SD of what the data pin down: the T-slope of ⟨U⟩ (Var_x U = m/(2β²)) and of
    # the mean force (Var_x f_x = mγ²/(2β²)); 4 SD ≈ 30 % at N = 1500 — network bias is
    # not budgeted, the study (docs/results/thermo.md) shows it below the statistical error
    sd_c = _slope_sd(lambda t: system.m / (2 * beta_of_temperature(t) ** 2))
    sd_s = _slope_sd(lambda t: system.m * system.gamma**2 / (2 * beta_of_temperature(t) ** 2))
    c_exact = system.m * KB_KCAL_PER_MOL_K / 2
    assert abs(got["heat_capacity_channel"] - c_exact) < 4 * sd_c, (got["heat_capacity_channel"], c_exact, sd_c)
    assert abs(got["entropy_gradient"] - system.entropy_gradient()) < 4 * sd_s
    # negative control: a T-unaware reading (no heat capacity, no thermal force) is far outside
    assert abs(0.0 - c_exact) > 4 * sd_c and abs(0.0 - system.entropy_gradient()) > 4 * sd_s
