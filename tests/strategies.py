"""Hypothesis strategies shared by the tests: seeds, SPD matrices, full-rank maps, probes,
Gaussian toy systems."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from hessid.toy import GaussianSystem

seeds = st.integers(min_value=0, max_value=2**32 - 1)
probe_kinds = st.sampled_from(["gaussian", "rademacher", "unit_sphere", "one_hot", "orthonormal"])


@st.composite
def spd_matrices(draw, dim: int | None = None, min_dim: int = 2, max_dim: int = 6, cond: float = 50.0):
    """A random symmetric positive-definite float64 matrix with condition number ≤ cond."""
    n = dim if dim is not None else draw(st.integers(min_dim, max_dim))
    rng = np.random.default_rng(draw(seeds))
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.exp(rng.uniform(0.0, np.log(cond), size=n))
    return (q * eig) @ q.T


@st.composite
def full_rank_maps(draw, n_out: int | None = None, n_in: int | None = None):
    """A random (d, D) float64 matrix of full row rank d < D (well conditioned)."""
    D = n_in if n_in is not None else draw(st.integers(3, 7))
    d = n_out if n_out is not None else draw(st.integers(1, D - 1))
    rng = np.random.default_rng(draw(seeds))
    while True:
        m = rng.standard_normal((d, D))
        s = np.linalg.svd(m, compute_uv=False)
        if s[-1] / s[0] > 0.05:
            return m


@st.composite
def gaussian_systems(draw, with_seed: bool = False):
    """A random :class:`hessid.toy.GaussianSystem` and a CG point on it.

    D ∈ [3, 6] fine coordinates, d ∈ [1, D − 1] CG coordinates, SPD K (D, D) (condition ≤ 50),
    full-row-rank M (d, D), r0 (D,) and R (d,) standard normal, β ∈ [0.3, 3.0] mol/kcal; all
    float64 tensors (spatial_dim = 1).

    Returns:
        ``(system, R)``, or ``(system, R, seed)`` with ``with_seed`` (a further seed drawn
        last, for the test's own random draws).
    """
    D = draw(st.integers(3, 6))
    d = draw(st.integers(1, D - 1))
    K = torch.as_tensor(draw(spd_matrices(dim=D)))
    M = torch.as_tensor(draw(full_rank_maps(n_out=d, n_in=D)))
    rng = np.random.default_rng(draw(seeds))
    r0 = torch.as_tensor(rng.standard_normal(D))
    beta = draw(st.floats(0.3, 3.0))
    R = torch.as_tensor(rng.standard_normal(d))
    system = GaussianSystem(K, r0, M, beta)
    return (system, R, draw(seeds)) if with_seed else (system, R)
