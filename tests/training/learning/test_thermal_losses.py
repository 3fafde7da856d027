"""Thermal losses: the exact T2 free energy sits on the noise floor (excess 0 within Monte-Carlo
error) and the T-unaware one does not; floors estimated by nearest neighbours match the exact
ones; L_U is refused for β-independent models; the λ term on T3."""

from __future__ import annotations

import math

import pytest
import torch

from hessid.thermo_toys import t2_double_well, t3_parameter_response
from hessid.training.learning.models import CGPotential
from hessid.training.learning.thermal_losses import (
    NoiseFloors,
    estimate_noise_floors,
    lambda_loss,
    thermal_loss,
)
from hessid.training.learning.thermal_models import ThermalPotential, temperature_of_beta
from hessid.training.learning.thermal_toy import exact_floors, toy_batch
from hessid.units import beta as beta_of_temperature

TEMPS = (200.0, 300.0, 400.0)
N = 3000  # per temperature
#: per-frame scaled squared residual of T2 at the exact A: (χ²_m − m)²/Var, variance
#: E(χ²−m)⁴/Var² − 1 = 3 + 12/m − 1 = 5 at m = 4 (for forces and energies alike)
Z_VAR = 5.0


class _ExactT2(torch.nn.Module):
    """The exact T2 free energy as a model; ``beta_A`` fixed → the T-unaware control."""

    temperature_aware = True

    def __init__(self, beta_A=None):
        super().__init__()
        self.system, self.beta_A = t2_double_well(), beta_A

    def _check(self, pos, types, batch, beta):
        beta = torch.as_tensor(beta, dtype=pos.dtype)
        return batch, beta.expand(pos.shape[0]) if beta.ndim == 0 else beta, pos.shape[0]

    def free_energy(self, pos, types, batch, beta):
        b = beta if self.beta_A is None else torch.full_like(beta, self.beta_A)
        k = self.system.k(pos[:, 0])
        return self.system.V(pos[:, 0]) + self.system.m / (2 * b) * torch.log(b * k / (2 * math.pi))

    evaluate = ThermalPotential.evaluate


@pytest.fixture(scope="module")
def data():
    return toy_batch(t2_double_well(), TEMPS, N, seed=11)


def _z(value, n):
    return (float(value) - 1.0) / math.sqrt(Z_VAR / n)


def test_exact_free_energy_sits_on_the_noise_floor(data):
    floors = exact_floors(t2_double_well(), TEMPS)
    terms = thermal_loss(_ExactT2(), data, floors, energy_weight=1.0, create_graph=False)
    assert abs(_z(terms["force_scaled"], 3 * N)) < 4
    assert abs(_z(terms["energy_scaled"], 3 * N)) < 4
    for t, row in terms["per_temperature"].items():
        assert abs(_z(row["force_scaled"], N)) < 4, t
        assert abs(_z(row["energy_scaled"], N)) < 4, t


def test_t_unaware_free_energy_has_force_excess_off_its_temperature(data):
    floors = exact_floors(t2_double_well(), TEMPS)
    terms = thermal_loss(_ExactT2(beta_A=beta_of_temperature(300.0)), data, floors, energy_weight=1.0,
                         create_graph=False)
    # force bias δ = mγ/2 (1/β − 1/β_300) = ∓0.199 kcal/mol/Å at 200/400 K on a floor
    # Var f_x = mγ²/(2β²): predicted excess δ²/Var = 0.50 (200 K) and 0.125 (400 K)
    system = t2_double_well()
    for t in (200.0, 400.0):
        b = beta_of_temperature(t)
        delta = system.m * system.gamma / 2 * (1 / b - 1 / beta_of_temperature(300.0))
        predicted = delta**2 / (system.m * system.gamma**2 / (2 * b * b))
        excess = terms["per_temperature"][t]["force_scaled"] - 1
        # residual (χ² − m)c + δ: the variance of its scaled square grows by 4δ²/Var (cross term)
        se = math.sqrt((Z_VAR + 4 * predicted) / N)
        assert abs(excess - predicted) < 4 * se, (t, excess, predicted)
        assert excess > 4 * math.sqrt(Z_VAR / N) or t == 400.0  # 200 K: clearly off the floor
    assert abs(_z(terms["per_temperature"][300.0]["force_scaled"], N)) < 4  # right at its own T


def test_nearest_neighbour_floors_match_exact_floors(data):
    est = estimate_noise_floors(data["positions"][:, :1].numpy(), data["forces"].numpy(),
                                data["temperature"].numpy(), data["potential_energy"].numpy())
    exact = exact_floors(t2_double_well(), TEMPS)
    # ŝ = ½ mean (y_i − y_j)²: variance of ½(y_i − y_j)²/s is (E d⁴/4 − s²)/s² with d = y_i − y_j
    # the difference of two centred χ²_4-type residuals: ≈ 3.5 → relative SE √(3.5/N) ≈ 3.4 %
    se = math.sqrt(3.5 / N)
    for f_est, f_ex, e_est, e_ex in zip(est.force, exact.force, est.energy, exact.energy, strict=True):
        assert abs(f_est / f_ex - 1) < 4 * se
        assert abs(e_est / e_ex - 1) < 4 * se
    # negative control: pooling temperatures mixes floors that differ by (T/T')²
    pooled = estimate_noise_floors(data["positions"][:, :1].numpy(), data["forces"].numpy(),
                                   torch.full((3 * N,), 300.0).numpy(), data["potential_energy"].numpy())
    assert abs(pooled.energy[0] / exact.energy[1] - 1) > 4 * se


def test_energy_matching_is_refused_for_beta_independent_models(data):
    floors = exact_floors(t2_double_well(), TEMPS)
    m0 = ThermalPotential(["b"], None, {"precision": "float64"}, {"form": "M0", "backbone": "mlp", "mlp_dims": 1,
                                                                   "hidden": 4, "mlp_layers": 1}, n_beads=1)
    with pytest.raises(ValueError, match="refused") as err:
        thermal_loss(m0, data, floors, energy_weight=1.0)
    assert "\n" not in str(err.value)
    plain = CGPotential(["b"], None, {"precision": "float64", "embedding_dimension": 4, "num_layers": 1,
                                       "num_rbf": 2})
    with pytest.raises(ValueError, match="refused"):
        thermal_loss(plain, data, floors, energy_weight=0.5)
    # forces only is fine for M0
    assert torch.isfinite(thermal_loss(m0, data, floors, energy_weight=0.0)["total"])


def test_floor_lookup_names_a_missing_temperature():
    floors = NoiseFloors((300.0,), (1.0,), (1.0,))
    with pytest.raises(ValueError, match="350"):
        floors.lookup(torch.tensor([beta_of_temperature(350.0)], dtype=torch.float64))
    got, _ = floors.lookup(torch.tensor([beta_of_temperature(300.0)], dtype=torch.float64))
    assert float(got) == 1.0
    # held-out temperatures (validation): T² scaling, exact for T2's floors mγ²/(6β²), m/(2β²)
    exact = exact_floors(t2_double_well(), (300.0, 400.0))
    held = NoiseFloors((300.0,), exact.force[:1], exact.energy[:1])
    f, e = held.lookup(torch.tensor([beta_of_temperature(400.0)], dtype=torch.float64), scale_missing=True)
    assert float(f) == pytest.approx(exact.force[1], rel=1e-12) and float(e) == pytest.approx(exact.energy[1], rel=1e-12)
    assert float(temperature_of_beta(torch.tensor(beta_of_temperature(300.0)))) == pytest.approx(300.0, rel=1e-12)


def test_lambda_term_on_t3_sits_on_its_floor():
    system = t3_parameter_response(lam=0.5)
    b = beta_of_temperature(300.0)
    g = torch.Generator().manual_seed(5)
    r = system.sample(b, 8000, generator=g)
    x = r[:, 0]
    pred = system.lambda_derivative_free_energy(x)  # −mλ/k
    floor = system.m / (b * system.k(x))  # Var_x(Σy) = m/(βk), per frame
    # ∂_λU = −Σy is Gaussian given x: (res²/floor) ~ χ²_1, variance 2
    out = lambda_loss(pred, system.dU_dlambda(r), floor)
    assert abs(float(out["lambda_scaled"]) - 1) < 4 * math.sqrt(2 / 8000)
    wrong = lambda_loss(-pred, system.dU_dlambda(r), floor)  # sign error: caught
    assert float(wrong["lambda_excess"]) > 4 * math.sqrt(2 / 8000)
