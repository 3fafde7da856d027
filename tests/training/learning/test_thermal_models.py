"""Temperature-aware models: u_θ = ∂_β(βA_θ) (autograd vs closed forms vs finite differences),
heat capacity and entropy, the c/β gauge and the b0 baseline, the fixed-β view, checkpoints.
Exact checks in float64, each with a negative control that must fail."""

from __future__ import annotations

import pytest
import torch

from hessid.training.data.synthetic import compact_chain
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.models import build_potential, load_potential
from hessid.training.learning.priors import PriorFit
from hessid.training.learning.thermal_losses import NoiseFloors, thermal_loss
from hessid.training.learning.thermal_models import ThermalPotential, temperature_of_beta
from hessid.units import KB_KCAL_PER_MOL_K
from tests.helpers import assert_close, relative_error

SMALL = {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "cutoff_lower": 0.0, "cutoff_upper": 6.0,
         "precision": "float64"}
BETA = torch.tensor([1.45, 1.9], dtype=torch.float64)  # ≈ 347 K and 265 K


def _model(form, backbone="schnet", prior=True):
    torch.manual_seed(3)
    p = PriorFit().fit(compact_chain(4, 30, seed=2)).fetch_model() if prior else None
    return ThermalPotential(["ALA", "GLY"], p, SMALL, {"form": form, "backbone": backbone, "hidden": 8, "rank": 3},
                            n_beads=4)


def _inputs():
    pos = torch.as_tensor(compact_chain(4, 2, seed=3)).reshape(-1, 3).double()  # (8, 3)
    return pos, torch.tensor([0, 1, 0, 1] * 2), torch.arange(2).repeat_interleave(4)


@pytest.mark.parametrize("backbone", ["schnet", "mlp"])
@pytest.mark.parametrize("form", ["M1", "M2"])
def test_autograd_mean_energy_equals_closed_form(form, backbone):
    m = _model(form, backbone)
    pos, types, batch = _inputs()
    u = m.mean_energy(pos, types, batch, BETA)
    assert_close(u, m.mean_energy_closed_form(pos, types, batch, BETA), what="u_θ")
    # negative control: the free energy itself is not the mean energy (β∂_βA ≠ 0 here)
    assert relative_error(m.free_energy(pos, types, batch, BETA).detach(), u) > 1e-3


@pytest.mark.parametrize("form", ["M1", "M2", "M3"])
def test_mean_energy_is_beta_derivative_of_beta_A_by_finite_differences(form):
    # central difference of βA in β: error h²/6 ∂³_β(βA) ≈ 1e-10 relative at h = 1e-5 (A smooth in β)
    m = _model(form, "mlp")
    pos, types, batch = _inputs()
    h = 1e-5
    with torch.no_grad():
        fd = ((BETA + h) * m.free_energy(pos, types, batch, BETA + h)
              - (BETA - h) * m.free_energy(pos, types, batch, BETA - h)) / (2 * h)
    u = m.mean_energy(pos, types, batch, BETA).detach()
    assert_close(u, fd, rtol=1e-7, what="u_θ vs FD")  # FD round-off ≈ ε|βA|/h ≈ 1e-11/1e-5
    wrong = 2 * m.free_energy(pos, types, batch, BETA).detach() - u  # A − β∂_βA, the sign error
    assert relative_error(wrong, fd) > 1e-4


def test_m2_heat_capacity_and_entropy_closed_forms():
    m = _model("M2", "mlp")
    pos, types, batch = _inputs()
    c = m.components(pos, types, batch, BETA)
    t = temperature_of_beta(BETA)
    assert_close(m.heat_capacity(pos, types, batch, BETA), KB_KCAL_PER_MOL_K * c["heat_capacity"].detach(),
                 what="C_R")
    s = KB_KCAL_PER_MOL_K * (c["entropy"] + c["heat_capacity"] * torch.log(t / m.reference_temperature)).detach()
    assert_close(m.entropy(pos, types, batch, BETA), s, what="S_R")
    m1 = _model("M1", "mlp")
    assert float(m1.heat_capacity(pos, types, batch, BETA).abs().max()) < 1e-15  # M1: no heat capacity
    assert relative_error(m.heat_capacity(pos, types, batch, BETA), torch.zeros(2)) > 0  # M2 has one


class _Shifted(torch.nn.Module):
    """A_θ + c/β (the gauge) or A_θ + c (a constant): same interface as ThermalPotential."""

    temperature_aware = True

    def __init__(self, model, c, over_beta):
        super().__init__()
        self.m, self.c, self.over_beta = model, c, over_beta

    def free_energy(self, pos, types, batch, beta):
        beta = torch.as_tensor(beta, dtype=pos.dtype)
        return self.m.free_energy(pos, types, batch, beta) + (self.c / beta if self.over_beta else self.c)

    evaluate = ThermalPotential.evaluate

    def _check(self, pos, types, batch, beta):
        return self.m._check(pos, types, batch, beta)


def _batch():
    pos, types, batch = _inputs()
    g = torch.Generator().manual_seed(0)
    return {"positions": pos, "bead_types": types, "batch": batch, "beta": BETA,
            "forces": torch.randn(8, 3, generator=g, dtype=torch.float64),
            "potential_energy": torch.randn(2, generator=g, dtype=torch.float64)}


FLOORS = NoiseFloors(tuple(float(t) for t in temperature_of_beta(BETA)), (0.5, 0.7), (2.0, 3.0))


def test_losses_and_populations_are_invariant_to_c_over_beta():
    m = _model("M2", "mlp")
    data = _batch()
    base = thermal_loss(m, data, FLOORS, create_graph=False)
    gauge = thermal_loss(_Shifted(m, 7.3, True), data, FLOORS, create_graph=False)
    for k in ("force", "energy"):
        assert_close(gauge[k], base[k], what=k)
    # Boltzmann weights at one β: A + c/β shifts βA by c for every R → same normalised law
    pos, types, batch = _inputs()
    a = m.free_energy(pos, types, batch, BETA[0]).detach()
    a2 = _Shifted(m, 7.3, True).free_energy(pos, types, batch, BETA[0]).detach()
    assert_close(torch.softmax(-BETA[0] * a2, 0), torch.softmax(-BETA[0] * a, 0), what="populations")
    # negative control: a constant c (not c/β) moves u by c, so L_U changes
    shifted = thermal_loss(_Shifted(m, 7.3, False), data, FLOORS, create_graph=False)
    assert relative_error(shifted["energy"], base["energy"]) > 1e-2


def test_constant_in_energy_labels_is_absorbed_exactly_by_b0():
    m = _model("M1", "mlp")
    data = _batch()
    base = thermal_loss(m, data, FLOORS, create_graph=False)
    with torch.no_grad():
        m.baseline += 41.0
    moved = thermal_loss(m, dict(data, potential_energy=data["potential_energy"] + 41.0), FLOORS, create_graph=False)
    assert_close(moved["energy"], base["energy"], what="L_U")
    assert_close(moved["force"], base["force"], what="L_F")
    control = thermal_loss(m, data, FLOORS, create_graph=False)  # b0 moved, labels not
    assert relative_error(control["energy"], base["energy"]) > 1.0


def test_fixed_temperature_view_has_cgpotential_interface_and_exact_hvp():
    m = _model("M2")
    pos, types, batch = _inputs()
    view = m.at_temperature(310.0)
    b = 1 / (KB_KCAL_PER_MOL_K * 310.0)
    assert_close(view(pos, types, batch).detach(), m.free_energy(pos, types, batch, b).detach(), what="A at T")
    assert_close(view.forces(pos, types, batch), m.forces(pos, types, batch, b), what="forces")
    probes = torch.randn(3, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hv = view.hessian_vector_product(pos, types, batch, probes)
    hess = torch.autograd.functional.hessian(lambda x: view(x.reshape(8, 3), types, batch).sum(),
                                             pos.reshape(-1))  # (24, 24)
    assert_close(hv.reshape(3, -1), probes.reshape(3, -1) @ hess, what="HVP")
    other = m.at_temperature(400.0)  # negative control: another temperature, other forces
    assert relative_error(other.forces(pos, types, batch), view.forces(pos, types, batch)) > 1e-6
    assert not view.temperature_aware and m.temperature_aware
    with pytest.raises(ValueError, match="temperature"):
        m.at_temperature(-3.0)


@pytest.mark.parametrize("form", ["M0", "M1", "M2", "M3"])
def test_checkpoint_round_trip_through_load_potential(form, tmp_path):
    m = _model(form)
    m.metadata = {"note": form}
    path = m.save(tmp_path / "thermal.pt")
    back = load_potential(path)
    assert isinstance(back, ThermalPotential) and back.form == form and back.metadata["note"] == form
    pos, types, batch = _inputs()
    assert_close(back.free_energy(pos, types, batch, BETA).detach(), m.free_energy(pos, types, batch, BETA).detach(),
                 what="A after reload")
    assert back.temperature_aware == (form != "M0")
    assert back.at_temperature(300.0)(pos, types, batch).shape == (2,)


def test_build_potential_dispatches_on_loss_mode():
    cfg = TrainConfig.from_dict({"model": SMALL, "loss": {"mode": "thermal"}, "thermal": {"form": "M1", "hidden": 8}})
    assert isinstance(build_potential(["ALA"], None, cfg), ThermalPotential)
    plain = build_potential(["ALA"], None, TrainConfig.from_dict({"model": SMALL}))
    assert not getattr(plain, "temperature_aware", False)


def test_bad_beta_is_refused():
    m = _model("M1", "mlp")
    pos, types, batch = _inputs()
    with pytest.raises(ValueError, match="beta"):
        m.free_energy(pos, types, batch, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        m.free_energy(pos, types, batch, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        m.forces(pos, types, batch)
    m0 = _model("M0", "mlp")  # the β-independent control keeps CGPotential's call signature
    assert_close(m0(pos, types, batch).detach(), m0.free_energy(pos, types, batch, BETA).detach(), what="M0")
