"""``trainer.compile`` (``derivatives.set_compile``): the compiled edge-list kernel gives the
eager results, and its forces-only branch (hand-written reverse) equals autograd forces."""

from __future__ import annotations

import pytest
import torch

from hessid.training.learning.derivatives import (
    EnergyForcesHVP,
    energy_forces_hvp,
    filter_jets,
    pair_list,
    set_compile,
)
from hessid.training.learning.edge_hvp import edge_energy_forces_hvp
from hessid.training.learning.hessians import hvp_reference
from tests.helpers import assert_close, relative_error
from tests.training.learning.fixtures import random_cg_system


def _grads(model, fn):
    model.zero_grad()
    out = fn()
    loss = (out.forces**2).sum()
    if out.hvp is not None:
        loss = loss + (out.hvp**2).sum()
    loss.backward()
    return out, torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                           for p in model.net.parameters()])


def test_forces_only_edge_reverse_equals_autograd_forces_and_gradient():
    """The forces-only branch of the compiled mode (the edge list's hand-written reverse with
    order-1 jets), run eagerly: autograd forces and θ-gradient to float64 rounding."""
    model, pos, types, batch = random_cg_system(sizes=(6, 4), config={"neighbor_embedding": True})
    rep = model.net.representation_model
    i, j = pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper)

    def edge_fm():
        jets = filter_jets(rep, (pos[i] - pos[j]).norm(dim=-1), order=1)  # (P, 2, L', F)
        e, g, hv = edge_energy_forces_hvp(model.net, pos, types, batch, 2, i, j, jets, None)
        return EnergyForcesHVP(energy=e, forces=-g, hvp=hv)

    def autograd_fm():
        out = energy_forces_hvp(model, pos, types, batch, None)  # prior included: remove it
        pe, pg = model.prior(pos, batch, types), -model.prior.forces(pos, batch, types)
        return EnergyForcesHVP(energy=out.energy - pe, forces=out.forces + pg, hvp=None)

    a, ga = _grads(model, edge_fm)
    b, gb = _grads(model, autograd_fm)
    assert_close(a.forces, b.forces, rtol=1e-12, what="forces")
    assert_close(a.energy, b.energy, rtol=1e-12, what="energy")
    assert_close(ga, gb, rtol=1e-10, what="dL/dθ")
    assert float(gb.abs().max()) > 0


@pytest.mark.slow  # two compilations: ~1–4 min on a 2-core machine
def test_compiled_kernel_equals_eager_for_forces_and_hvps():
    model, pos, types, batch = random_cg_system(sizes=(6, 4), config={"embedding_dimension": 8,
                                                             "num_layers": 1})
    probes = torch.randn(3, pos.shape[0], 3, dtype=torch.float64)
    eager_fm, g_fm = _grads(model, lambda: energy_forces_hvp(model, pos, types, batch, None))
    eager_hv, g_hv = _grads(model, lambda: energy_forces_hvp(model, pos, types, batch, probes,
                                                             method="edges"))
    previous = set_compile(True)
    try:
        comp_fm, c_fm = _grads(model, lambda: energy_forces_hvp(model, pos, types, batch, None))
        comp_hv, c_hv = _grads(model, lambda: energy_forces_hvp(model, pos, types, batch, probes,
                                                                method="edges"))
    finally:
        assert set_compile(previous) is True
    # the forces-only branch is the edge list's hand-written reverse (not autograd's): same
    # forces and θ-gradient to float64 rounding
    assert_close(comp_fm.forces, eager_fm.forces, rtol=1e-12, what="compiled FM forces")
    assert_close(c_fm, g_fm, rtol=1e-10, what="compiled FM dL/dθ")
    assert_close(comp_hv.hvp, eager_hv.hvp, rtol=1e-12, what="compiled HVP")
    assert_close(c_hv, g_hv, rtol=1e-10, what="compiled HVP dL/dθ")
    ref = hvp_reference(model, pos, types, batch, probes)
    assert_close(comp_hv.hvp, ref.hvp, rtol=1e-10, what="compiled HVP vs reference")
    # negative control: a perturbed probe is detected
    assert relative_error(comp_hv.hvp * (1 + 1e-6), ref.hvp) > 1e-8


def test_set_compile_returns_the_previous_setting():
    assert set_compile(False) is False
    assert set_compile(True) is False
    assert set_compile(False) is True
