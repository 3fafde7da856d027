"""Batched HVPs == per-probe reference == autograd Hessian @ v, float64 (docs/identities.md §5)."""

from __future__ import annotations

import pytest
import torch

from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.hessians import full_hessian, hessian_autograd, hvp_reference
from hessid.training.learning.models import CGPotential
from tests.helpers import assert_close, assert_hessian_close
from tests.training.learning.fixtures import random_cg_system


@pytest.mark.parametrize("method", ["edges", "dense", "double_backward"])
@pytest.mark.parametrize("config", [{"neighbor_embedding": False}, {"neighbor_embedding": True},
                                    {"cutoff_upper": 6.0}])  # last: pairs beyond the cutoff
def test_fast_hvp_equals_reference_and_autograd_hessian(method, config):
    model, pos, types, batch = random_cg_system(config=config)
    probes = torch.randn(3, pos.shape[0], 3, dtype=torch.float64)
    fast = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False, method=method)
    ref = hvp_reference(model, pos, types, batch, probes)
    assert_close(fast.energy, ref.energy, rtol=1e-12, what="energy")
    assert_close(fast.forces, ref.forces, rtol=1e-12, what="forces")
    assert_close(fast.hvp, ref.hvp, rtol=1e-12, what="HVP fast vs reference")
    n0 = int((batch == 0).sum())
    H = hessian_autograd(model, pos[:n0], types[:n0])  # (3n, 3n)
    hv = (H @ probes[:, :n0].reshape(3, -1).T).T.reshape(3, n0, 3)  # (k, n, 3)
    assert_close(fast.hvp[:, :n0], hv, rtol=1e-12, what="HVP fast vs autograd Hessian")
    assert float(fast.hvp.abs().max()) > 1.0  # the check is not vacuous
    forces_only = energy_forces_hvp(model, pos, types, batch, None, create_graph=False)
    assert_close(forces_only.forces, ref.forces, rtol=1e-12, what="forces (first-order jets)")
    assert forces_only.hvp is None


def test_full_hessian_by_one_hot_probes_equals_autograd():
    model, pos, types, batch = random_cg_system(sizes=(6, 4))
    hs = full_hessian(model, pos, types, batch, create_graph=False)
    start = 0
    for h, n in zip(hs, (6, 4), strict=True):
        ref = hessian_autograd(model, pos[start : start + n], types[start : start + n])
        assert_hessian_close(h, ref, rtol=1e-12)
        start += n


@pytest.mark.parametrize("method", ["edges", "dense", "double_backward"])
@pytest.mark.parametrize("neighbor_embedding", [False, True])
def test_hvp_parameter_gradient_fast_equals_reference(method, neighbor_embedding):
    model, pos, types, batch = random_cg_system(sizes=(6, 4), config={"neighbor_embedding": neighbor_embedding})
    probes = torch.randn(2, pos.shape[0], 3, dtype=torch.float64)
    target = torch.randn_like(probes)

    def grads(fn):
        model.zero_grad()
        out = fn()
        ((out.hvp - target) ** 2).sum().add(out.forces.pow(2).sum()).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.net.parameters() if p.grad is not None])

    g_fast = grads(lambda: energy_forces_hvp(model, pos, types, batch, probes, method=method))
    g_ref = grads(lambda: hvp_reference(model, pos, types, batch, probes, create_graph=True))
    assert_close(g_fast, g_ref, rtol=1e-11, what="dL/dθ")


def test_probe_chunks_and_float32_agree():
    model, pos, types, batch = random_cg_system()
    probes = torch.randn(5, pos.shape[0], 3, dtype=torch.float64)
    a = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False).hvp
    b = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False, probe_chunk=2).hvp
    assert_close(a, b, rtol=1e-13)
    e = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False, method="dense").hvp
    assert_close(e, a, rtol=1e-12, what="dense vs edge-list HVPs")
    c2 = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False, method="edges",
                           probe_chunk=2).hvp
    assert_close(c2, a, rtol=1e-13, what="edge-list HVPs in chunks of 2")
    none = energy_forces_hvp(model, pos, types, batch, probes[:0], create_graph=False)
    assert none.hvp.shape == (0, pos.shape[0], 3)
    m32 = CGPotential(model.bead_vocabulary, model.prior.params, dict(model.config.__dict__, precision="float32"))
    m32.net.load_state_dict({k: v.float() for k, v in model.net.state_dict().items()})
    c = energy_forces_hvp(m32, pos.float(), types, batch, probes.float(), create_graph=False).hvp
    assert c.dtype == torch.float32
    assert_close(c, a, dtype=torch.float32, rtol=1e-4)


def test_bad_probe_shape_raises():
    model, pos, types, batch = random_cg_system(sizes=(5,))
    with pytest.raises(ValueError, match="probes must be"):
        energy_forces_hvp(model, pos, types, batch, torch.zeros(2, 4, 3, dtype=torch.float64))


def test_bad_method_raises():
    model, pos, types, batch = random_cg_system(sizes=(5,))
    with pytest.raises(ValueError, match="method must be"):
        energy_forces_hvp(model, pos, types, batch, torch.zeros(1, 5, 3, dtype=torch.float64),
                          method="sparse")
