"""Priors by Boltzmann inversion recover known parameters (spec: CGSchNet priors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hessid.training.priors import PriorFit, PriorModel, PriorParameters, chain_indices

from hessid.units import kT


def _chains_with_known_bonds(r0=3.8, k_bond=40.0, T=300.0, n=6, frames=4000, seed=0):
    """Chains whose bond lengths follow exp(−β ½k(r−r0)²) r² (sampled by rejection)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(kT(T) / k_bond)
    out = np.zeros((frames, n, 3))
    for i in range(1, n):
        r = r0 + sigma * rng.standard_normal(3 * frames)
        accept = rng.random(r.size) < (r / r.max()) ** 2  # Jacobian r²
        r = r[accept][:frames]
        direction = rng.standard_normal((frames, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        out[:, i] = out[:, i - 1] + r[:, None] * direction
    return out


def test_bond_force_constant_and_length_recovered():
    data = _chains_with_known_bonds()
    p = PriorFit(temperature=300.0).fit([data]).fetch_model().params
    assert abs(p.bond_r0 - 3.8) < 0.02
    assert abs(p.bond_k - 40.0) / 40.0 < 0.1
    assert p.repulsion_sigma > 0 and p.repulsion_epsilon == pytest.approx(kT(300.0), rel=1e-6)


def test_dihedral_fourier_fit_recovers_potential_shape():
    rng = np.random.default_rng(1)
    beta = 1 / kT(300.0)
    phi = rng.uniform(-math.pi, math.pi, 400000)
    u = 0.8 * np.cos(phi) - 0.5 * np.sin(2 * phi)
    phi = phi[rng.random(phi.size) < np.exp(-beta * (u - u.min()))]
    a, b = PriorFit(n_fourier=3)._fit_fourier(phi, kT(300.0))
    assert np.allclose(a, [0.8, 0.0, 0.0], atol=0.06) and np.allclose(b, [0.0, -0.5, 0.0], atol=0.06)


def test_prior_energy_is_sum_of_terms_and_forces_are_minus_gradient():
    params = PriorParameters(bond_k=30.0, bond_r0=3.8, angle_k=5.0, angle_theta0=1.9,
                             dihedral_cos=(0.3,), dihedral_sin=(-0.2,), repulsion_sigma=4.0)
    prior = PriorModel(params, dtype=torch.float64)
    pos = torch.as_tensor(_chains_with_known_bonds(frames=2, n=6)).reshape(-1, 3)
    batch = torch.arange(2).repeat_interleave(6)
    terms = prior.energy_terms(pos, batch)
    assert torch.allclose(prior(pos, batch), sum(terms.values()))
    idx = chain_indices(batch)
    assert idx["bonds"].shape == (10, 2) and idx["dihedrals"].shape == (6, 4)
    assert idx["pairs"].shape == (2 * 6, 2)  # |i-j| >= 3 in a 6-chain: 3+2+1
    x = pos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior(x, batch).sum(), x)
    assert torch.allclose(prior.forces(pos, batch), -g)
    r = (pos[1] - pos[0]).norm()
    assert float(terms["bond"][0]) >= 0.5 * 30.0 * float((r - 3.8) ** 2) - 1e-12


def test_fit_errors():
    with pytest.raises(ValueError, match="before fit"):
        PriorFit().fetch_model()
    with pytest.raises(ValueError, match="expected CG coordinates"):
        PriorFit().fit([np.zeros((3, 2, 3))])
    with pytest.raises(ValueError, match="temperature"):
        PriorFit(temperature=-1)
    with pytest.raises(ValueError, match="unknown prior parameter"):
        PriorParameters.from_dict({"bond": 1})
