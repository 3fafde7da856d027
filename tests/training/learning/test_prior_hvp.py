"""Closed-form prior gradient and HVPs (``PriorModel.energy_gradient_hvp``) against autograd
in float64, for pooled and per-class priors, with negative controls."""

from __future__ import annotations

import pytest
import torch

from hessid.training.data.synthetic import compact_chain
from hessid.training.learning.priors import PriorFit, PriorModel
from tests.helpers import assert_close, relative_error


def _prior(per_class: bool, n_fourier: int = 3) -> PriorModel:
    data = [compact_chain(8, 60, seed=3, noise=0.3)]
    types = [torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])] if per_class else None
    fit = PriorFit(n_fourier=n_fourier, min_samples=20).fit(data, bead_types=types)
    return fit.fetch_model(dtype=torch.float64)


def _batch(sizes=(7, 5, 4), seed=0):
    xs = [torch.as_tensor(compact_chain(n, 1, seed=seed + i, noise=0.3)[0]) for i, n in enumerate(sizes)]
    pos = torch.cat(xs).double()  # (A, 3)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    types = torch.cat([torch.arange(n) % 3 for n in sizes])
    return pos, batch, types


def _autograd(prior, pos, batch, types, probes):
    """Energy, gradient and Hessian · v of each structure by autograd (full Hessian)."""
    x = pos.clone().requires_grad_(True)
    e = prior(x, batch, types)
    (g,) = torch.autograd.grad(e.sum(), x)
    H = torch.autograd.functional.hessian(lambda y: prior(y.reshape(-1, 3), batch, types).sum(),
                                          pos.reshape(-1))  # (3A, 3A), block-diagonal
    hv = (probes.reshape(probes.shape[0], -1) @ H.T).reshape(probes.shape)  # (k, A, 3)
    return e.detach(), g, hv


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("n_fourier", [3, 0])
def test_closed_form_prior_hvp_equals_autograd_hessian(per_class, n_fourier):
    prior = _prior(per_class, n_fourier)
    pos, batch, types = _batch()
    probes = torch.randn(5, pos.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e, g, hv = prior.energy_gradient_hvp(pos, batch, types, probes)
    e_ref, g_ref, hv_ref = _autograd(prior, pos, batch, types, probes)
    assert_close(e, e_ref, rtol=1e-12, what="prior energy")
    assert_close(g, g_ref, rtol=1e-10, what="prior gradient")
    assert_close(hv, hv_ref, rtol=1e-10, what="prior HVP")
    assert float(hv_ref.abs().max()) > 1.0  # not vacuous
    e2, g2, none = prior.energy_gradient_hvp(pos, batch, types)
    assert none is None and torch.equal(g2, g) and torch.equal(e2, e)
    # negative control: a probe perturbed by 1e-6 (relative) is detected at this tolerance
    _, _, bad = prior.energy_gradient_hvp(pos, batch, types, probes * (1 + 1e-6))
    assert relative_error(bad, hv_ref) > 1e-8


@pytest.mark.parametrize("term", ["bond_k", "angle_k", "dihedral_cos", "repulsion_epsilon"])
def test_each_prior_term_contributes_its_curvature(term):
    """Negative control per term: scaling one term's strength by 1 + 1e-6 changes the HVP by
    more than the tolerance, so every term is in the closed form (none dropped)."""
    prior = _prior(False)
    pos, batch, types = _batch()
    probes = torch.randn(3, pos.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, _, hv = prior.energy_gradient_hvp(pos, batch, types, probes)
    other = _prior(False)
    with torch.no_grad():
        getattr(other, term).mul_(1 + 1e-4)
        if term in ("bond_k", "angle_k"):
            getattr(other, term + "_c").mul_(1 + 1e-4)
        if term == "dihedral_cos":
            other.dihedral_cos_c.mul_(1 + 1e-4)
    _, _, hv2 = other.energy_gradient_hvp(pos, batch, types, probes)
    _, _, hv_ref = _autograd(other, pos, batch, types, probes)
    assert_close(hv2, hv_ref, rtol=1e-10, what=f"{term} scaled")
    assert relative_error(hv, hv_ref) > 1e-8, term


def test_closed_form_prior_at_near_straight_and_planar_geometries():
    """Angles near 180° and dihedrals near 0/π (sin θ, x or y small): still exact in float64."""
    prior = _prior(False)
    pos = torch.tensor([[0.0, 0.0, 0.0], [3.8, 0.0, 0.0], [7.6, 0.3, 0.0], [11.3, 1.2, 0.01],
                        [12.0, 4.8, 0.02]], dtype=torch.float64)
    batch = torch.zeros(5, dtype=torch.long)
    probes = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, g, hv = prior.energy_gradient_hvp(pos, batch, None, probes)
    _, g_ref, hv_ref = _autograd(prior, pos, batch, None, probes)
    assert_close(g, g_ref, rtol=1e-10, what="gradient")
    assert_close(hv, hv_ref, rtol=1e-10, what="HVP")  # measured 2.5e-15 (angle 175.5°)
