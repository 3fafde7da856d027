"""TensorNet energy model: library equality, exact HVPs and Hessians (float64), negative controls."""

from __future__ import annotations

import pytest
import torch
import torchmdnet.models.tensornet as tn

from hessid.training.atomistic.model import (
    AtomisticPotential,
    hessian_autograd,
    load_potential,
    one_hot_hessian_probes,
)
from hessid.training.atomistic.tensornet import layer_norm as tn_layer_norm
from tests.helpers import relative_error
from tests.training.atomistic.fixtures import random_molecule, small_model


def _batch(sizes, seed=0):
    zs, xs, bs = [], [], []
    for b, n in enumerate(sizes):
        z, x = random_molecule(n, seed + b)
        zs.append(z)
        xs.append(x + 20.0 * b)  # far apart: the pair graph never links molecules anyway
        bs.append(torch.full((n,), b))
    return torch.cat(zs), torch.cat(xs), torch.cat(bs)


def test_plain_torch_forward_equals_torchmdnet_reference_path(monkeypatch):
    """The library's own non-warp TensorNet path (forced) gives our energies to round-off."""
    model = small_model(num_layers=2, embedding_dimension=8)
    z, x, b = _batch([5, 7])
    for name in ("compose_tensor", "decompose_tensor", "tensor_matmul_o3", "tensor_matmul_so3"):
        monkeypatch.setattr(tn, name, getattr(tn, "_" + name))
    for mod in model.net.modules():
        if hasattr(mod, "opt"):
            monkeypatch.setattr(mod, "opt", False)
    ref = model.net(z, x, b)[0][:, 0]
    assert relative_error(model(z, x, b).detach(), ref.detach()) < 1e-12


def test_energy_is_invariant_under_rotation_and_translation():
    model = small_model()
    z, x = random_molecule(6, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        e0 = model(z, x)
        moved = model(z, x @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    assert relative_error(moved, e0) < 1e-12


@pytest.mark.parametrize(("method", "chunk"), [("batched", 8), ("batched", 2), ("loop", 8)])
def test_hvps_equal_autograd_hessian_times_probes(method, chunk):
    """H_θ v by the one-pass path (all k = 3 probes in one batched pass, or chunks of 2 and 1)
    equals (autograd Hessian) v to 1e-10 in float64 on random molecules of mixed sizes; each
    molecule's HVP sees only its own block."""
    model = small_model()
    sizes = [4, 6, 3]
    z, x, b = _batch(sizes, seed=5)
    k = 3
    v = torch.randn(k, x.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = model.energy_forces_hvp(z, x, b, v, method=method, probe_chunk=chunk)
    start = 0
    for n in sizes:
        sl = slice(start, start + n)
        H = hessian_autograd(model, z[sl], x[sl])
        expect = (v[:, sl].reshape(k, -1) @ H.T).reshape(k, n, 3)
        assert relative_error(out.hvp[:, sl], expect) < 1e-10
        start += n
    # forces are −∇E: compare with autograd of the energy
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(z, xx, b).sum(), xx)
    assert relative_error(out.forces, -g) < 1e-12


def test_empty_probe_set_and_bad_chunk():
    """k = 0 probes give an empty HVP; a probe chunk below 1 is refused."""
    model = small_model()
    z, x = random_molecule(4, 1)
    assert model.energy_forces_hvp(z, x, None, torch.zeros(0, 4, 3, dtype=torch.float64)).hvp.shape == (0, 4, 3)
    with pytest.raises(ValueError, match="probe_chunk"):
        model.energy_forces_hvp(z, x, None, torch.zeros(1, 4, 3, dtype=torch.float64), probe_chunk=0)


def test_hvp_of_a_different_geometry_is_detected():
    """Negative control: the same comparison with one atom displaced by 1e-3 Å fails 1e-10
    (a rigid translation would not: the energy is translation invariant)."""
    model = small_model()
    z, x = random_molecule(5, 9)
    v = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    moved = x.clone()
    moved[0, 0] += 1e-3
    H = hessian_autograd(model, z, moved)
    hv = model.energy_forces_hvp(z, x, None, v).hvp
    assert relative_error(hv, (v.reshape(2, -1) @ H.T).reshape(2, 5, 3)) > 1e-6


def test_batched_hessians_equal_per_molecule_autograd_hessians_and_padding_is_inert():
    """One-hot probes padded to 3·n_max give each molecule's own Hessian exactly (the padded
    probe rows of a smaller molecule are zero on it and dropped); cutting the blocks one atom
    off (a wrong layout) is detected."""
    model = small_model()
    sizes = [3, 5, 4]
    z, x, b = _batch(sizes, seed=11)
    _, hess = model.hessians(z, x, b)
    start = 0
    for n, h in zip(sizes, hess, strict=True):
        ref = hessian_autograd(model, z[start:start + n], x[start:start + n])
        assert relative_error(h, ref) < 1e-10
        assert relative_error(h, h.T) < 1e-12
        start += n
    probes, blocks = one_hot_hessian_probes(b)
    hv = model.energy_forces_hvp(z, x, b, probes).hvp
    shifted = blocks(torch.roll(hv, 1, dims=1))  # control: off-by-one atom layout
    assert relative_error(shifted[0], hess[0]) > 1e-3


def test_hvp_is_differentiable_in_the_weights():
    """The θ-gradient of an HVP loss equals a central difference in one weight (float64)."""
    model = small_model()
    z, x = random_molecule(4, 2)
    v = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def loss():
        return (model.energy_forces_hvp(z, x, None, v, create_graph=True).hvp ** 2).sum()

    p = next(q for q in model.parameters() if q.ndim == 2)
    (g,) = torch.autograd.grad(loss(), p)
    d = torch.randn_like(p)
    h = 1e-5
    with torch.no_grad():
        p += h * d
        lp = loss()
        p -= 2 * h * d
        lm = loss()
        p += h * d
    fd = (lp - lm) / (2 * h)
    assert abs(float((g * d).sum()) - float(fd)) <= 1e-6 * abs(float(fd))


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    model.set_reference(torch.arange(10, dtype=torch.float64), 3.0)
    path = model.save(tmp_path / "m.pt")
    again = load_potential(path)
    z, x = random_molecule(4, 1)
    assert torch.equal(again.total_energy(z, x), model.total_energy(z, x))
    assert isinstance(again, AtomisticPotential)
    with pytest.raises(ValueError, match="not a hessid atomistic"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_potential(tmp_path / "bad.pt")


def test_bad_atomic_number_is_refused():
    model = small_model()
    with pytest.raises(ValueError, match="atomic numbers"):
        model(torch.tensor([1, 99]), torch.zeros(2, 3, dtype=torch.float64))


def _third_order_gradcheck(norm_fn) -> bool:
    """gradcheck of θ ↦ ‖H_x v‖² for E = Σ norm(x ⊙ θ)³ (a third derivative)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, dtype=torch.float64, generator=gen)
    v = torch.randn(5, dtype=torch.float64, generator=gen)
    w = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)

    def loss(w):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((norm_fn(xx * w) ** 3).sum(), xx, create_graph=True)
        (hv,) = torch.autograd.grad(g, xx, v, create_graph=True)
        return (hv**2).sum()

    return torch.autograd.gradcheck(loss, (w,), raise_exception=False)


def test_elementary_layer_norm_has_correct_third_derivatives():
    """Our layer_norm equals torch's and passes a third-order gradcheck; torch's fused
    LayerNorm (the reason it is written out) fails the same check on this torch build."""
    ln = torch.nn.LayerNorm(5, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, dtype=torch.float64)
    assert relative_error(tn_layer_norm(x, ln).detach(), ln(x).detach()) < 1e-14
    assert _third_order_gradcheck(lambda y: tn_layer_norm(y, ln))
    if _third_order_gradcheck(ln):
        pytest.skip("this torch's fused LayerNorm has correct third derivatives (control moot)")
