"""Finite-difference helpers: measured convergence orders (docs/identities.md, eq. (5.3))."""

import pytest
import torch

from hessid.quadrature import potential_forces
from hessid.verification.fd import (
    autograd_hvp,
    central_difference_hvp,
    convergence_order,
    fd6_convergence,
    hvp_convergence,
)

DT = torch.float64


def _potential(r):
    x, y, z = r[..., 0], r[..., 1], r[..., 2]
    return 0.5 * x**2 + y**2 + 0.3 * x * y * z + 0.2 * torch.sin(x + 2 * z) + 0.1 * z**4


def test_central_difference_term1_converges_with_order_two():
    r = torch.tensor([0.3, -0.5, 0.8], dtype=DT)
    u = torch.tensor([0.6, 0.0, -0.8], dtype=DT)
    out = hvp_convergence(_potential, r, u)
    assert abs(out["order"] - 2.0) < 0.1, out


def test_central_difference_hvp_matches_autograd_for_batches():
    r = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    u = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    fd = central_difference_hvp(lambda x: potential_forces(_potential, x), r, u, 1e-4)
    assert torch.allclose(fd, autograd_hvp(_potential, r, u), atol=1e-7)


def test_sixth_order_stencil_of_free_energy_converges_with_order_six():
    def fn(x):  # (B, 2) → (B,)
        return torch.exp(0.7 * x[:, 0]) * torch.cos(x[:, 1]) + torch.sin(x[:, 0] * x[:, 1])
    x = torch.tensor([0.3, 0.5], dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x[None]).sum(), x, create_graph=True)
    H = torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(2)])
    out = fd6_convergence(fn, x.detach(), g.detach(), H.detach(), steps=(0.2, 0.15, 0.1, 0.075))
    assert abs(out["gradient_order"] - 6.0) < 0.1, out
    assert abs(out["hessian_order"] - 6.0) < 0.1, out


def test_convergence_order_rejects_nonpositive_errors():
    with pytest.raises(ValueError, match="positive"):
        convergence_order([0.1, 0.05], [1e-3, 0.0])
    assert abs(convergence_order([0.1, 0.05, 0.025], [1e-2, 2.5e-3, 6.25e-4]) - 2.0) < 1e-12
