"""Harmonic frequencies against closed forms (diatomic, linear triatomic) and the optimiser,
with negative controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hessid.training.atomistic.frequencies import (
    CM1_PER_SQRT_KCAL_MOL_A2_DA,
    atomic_masses,
    harmonic_frequencies,
    optimise_geometry,
)
from hessid.training.qm import sampling


def _springs(x, bonds, k, r0):
    """E = Σ ½ k (|r_i − r_j| − r0)², torch float64."""
    e = 0.0
    for i, j in bonds:
        e = e + 0.5 * k * ((x[i] - x[j]).norm() - r0) ** 2
    return e


def _hessian(fn, x):
    n = x.shape[0]
    return torch.autograd.functional.hessian(lambda f: fn(f.reshape(n, 3)), x.reshape(-1))


def _rotated(x, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return torch.as_tensor(x @ q.T + 0.3)


def test_conversion_constant():
    assert abs(CM1_PER_SQRT_KCAL_MOL_A2_DA - 108.591) < 1e-3


def test_one_mass_table_standard_weights_and_unknown_element():
    """Masses agree with the standard atomic weights to their stated uncertainty (H 1.008, C
    12.011, O 15.999, Cl 35.45: within 1e-3 relative); QM sampling uses this same function; an
    atomic number no table knows is refused by name."""
    m = atomic_masses([1, 6, 8, 17])
    assert np.allclose(m, [1.008, 12.011, 15.999, 35.45], rtol=1e-3)
    assert not np.allclose(m, [1.0, 12.0, 16.0, 35.0], rtol=1e-4)  # control: integer masses differ
    assert sampling.atomic_masses is atomic_masses
    with pytest.raises(ValueError, match="atomic number 250"):
        atomic_masses([1, 250])


def test_diatomic_frequency_is_sqrt_k_over_mu():
    """H–Cl spring k = 300 kcal/mol/Å² at r0 in a random orientation: one mode, ω = √(k/μ)."""
    z = [1, 17]
    k, r0 = 300.0, 1.27
    x = _rotated(np.array([[0, 0, 0], [r0, 0, 0.0]]), 1)
    nu = harmonic_frequencies(_hessian(lambda y: _springs(y, [(0, 1)], k, r0), x), z, x.numpy())
    m = atomic_masses(z)
    mu = m[0] * m[1] / m.sum()
    assert nu.shape == (1,)
    assert abs(nu[0] - math.sqrt(k / mu) * CM1_PER_SQRT_KCAL_MOL_A2_DA) < 1e-8 * nu[0]
    # negative controls: no mass weighting (unit masses → wrong), no projection (6 values)
    assert harmonic_frequencies(_hessian(lambda y: _springs(y, [(0, 1)], k, r0), x), z, x.numpy(),
                                project=False).shape == (6,)
    wrong = math.sqrt(2 * k) * CM1_PER_SQRT_KCAL_MOL_A2_DA  # unit masses
    assert abs(nu[0] - wrong) > 1.0


def test_linear_triatomic_stretches_and_zero_bends():
    """O=C=O with two C–O springs: symmetric stretch √(k/m_O), antisymmetric
    √(k(1/m_O + 2/m_C)), two zero bends (3n − 5 = 4 modes)."""
    z = [8, 6, 8]
    k, r0 = 1000.0, 1.16
    x = _rotated(np.array([[-r0, 0, 0], [0, 0, 0], [r0, 0, 0.0]]), 2)
    nu = harmonic_frequencies(_hessian(lambda y: _springs(y, [(0, 1), (1, 2)], k, r0), x), z, x.numpy())
    mo, mc = atomic_masses([8, 6])
    c = CM1_PER_SQRT_KCAL_MOL_A2_DA
    expect = np.sort([0.0, 0.0, math.sqrt(k / mo) * c, math.sqrt(k * (1 / mo + 2 / mc)) * c])
    assert nu.shape == (4,)
    # compare ν|ν| (∝ eigenvalues): a zero mode's frequency is √(round-off · λ_max) ≈ 2e-5 cm⁻¹
    assert np.max(np.abs(nu * np.abs(nu) - expect**2)) < 1e-10 * expect.max() ** 2


def test_projection_removes_rotations_away_from_a_stationary_point():
    """At a stretched diatomic (force ≠ 0) the raw Hessian has non-zero rotational
    eigenvalues; the projected spectrum is the stretch alone, k(1/μ) still (the spring's
    Hessian along the bond is k)."""
    z = [1, 17]
    k, r0 = 300.0, 1.27
    x = _rotated(np.array([[0, 0, 0], [r0 + 0.2, 0, 0.0]]), 3)
    h = _hessian(lambda y: _springs(y, [(0, 1)], k, r0), x)
    raw = harmonic_frequencies(h, z, x.numpy(), project=False)
    assert np.sum(np.abs(raw) > 1.0) > 1  # control: rotations show up unprojected
    nu = harmonic_frequencies(h, z, x.numpy())
    m = atomic_masses(z)
    assert nu.shape == (1,)
    assert abs(nu[0] - math.sqrt(k * m.sum() / (m[0] * m[1])) * CM1_PER_SQRT_KCAL_MOL_A2_DA) < 1e-6


def test_optimiser_finds_the_spring_minimum():
    k, r0 = 300.0, 1.27

    def eg(x):
        t = torch.as_tensor(x).requires_grad_(True)
        e = _springs(t, [(0, 1), (1, 2)], k, r0) + 0.5 * ((t[0] - t[2]).norm() - 2.0) ** 2
        (g,) = torch.autograd.grad(e, t)
        return float(e.detach()), g.numpy()

    res = optimise_geometry(eg, np.array([[0, 0, 0], [1.5, 0.1, 0], [2.4, 0.9, 0.2]]), gtol=1e-6)
    assert res.converged and res.max_force <= 1e-6
    x = res.coordinates
    assert abs(np.linalg.norm(x[0] - x[1]) - r0) < 1e-4
