"""Harmonic vibrational analysis and geometry optimisation on a model energy
(docs/atomistic_learning.md, "Evaluation").

Frequencies: the mass-weighted Hessian ``M^{-1/2} H M^{-1/2}`` restricted to the
orthogonal complement of the rigid-body directions (3 translations ``√m_i e_α`` and 3
rotations ``√m_i (e_α × (r_i − r_com))``, 2 for a linear molecule), whose eigenvalues λ give
``ν̃ = sign(λ) √|λ| · 108.591 cm⁻¹`` for H in kcal/mol/Å² and masses in Da
(:data:`CM1_PER_SQRT_KCAL_MOL_A2_DA`: √(4184 J / N_A / (1 Å² · 1 Da)) / (2π c)). Negative
values mean imaginary frequencies. Restricting to the complement (rather than dropping the
six smallest eigenvalues) is exact at any geometry, stationary or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

__all__ = [
    "ATOMIC_MASSES",
    "CM1_PER_SQRT_KCAL_MOL_A2_DA",
    "OptimisedGeometry",
    "atomic_masses",
    "harmonic_frequencies",
    "optimise_geometry",
    "rigid_body_basis",
]

_AVOGADRO = 6.02214076e23
_DALTON_KG = 1.66053906660e-27
_C_CM_PER_S = 2.99792458e10
#: cm⁻¹ per √(kcal/mol/Å²/Da) (≈ 108.591)
CM1_PER_SQRT_KCAL_MOL_A2_DA = math.sqrt(4184.0 / _AVOGADRO / (1e-20 * _DALTON_KG)) / (2 * math.pi * _C_CM_PER_S)

#: standard atomic weights (Da), IUPAC 2021 abridged, by atomic number
ATOMIC_MASSES = {
    1: 1.008, 2: 4.0026, 3: 6.94, 4: 9.0122, 5: 10.81, 6: 12.011, 7: 14.007, 8: 15.999,
    9: 18.998, 10: 20.180, 11: 22.990, 12: 24.305, 13: 26.982, 14: 28.085, 15: 30.974,
    16: 32.06, 17: 35.45, 18: 39.95, 35: 79.904, 53: 126.90,
}


def atomic_masses(species) -> np.ndarray:
    """Masses (n,) in Da of atomic numbers (n,).

    Raises:
        ValueError: an element without a tabulated mass (names it).
    """
    z = np.asarray(species, dtype=np.int64)
    missing = sorted({int(a) for a in z if int(a) not in ATOMIC_MASSES})
    if missing:
        raise ValueError(f"no atomic mass tabulated for atomic numbers {missing}")
    return np.array([ATOMIC_MASSES[int(a)] for a in z])


def rigid_body_basis(coordinates: np.ndarray, masses: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis of the mass-weighted rigid-body directions.

    Args:
        coordinates: (n, 3) Å.  masses: (n,) Da.
        tol: relative singular-value cut (a linear molecule has 5 directions).

    Returns:
        (3n, r) float64 with r = 6 (5 linear, 3 for one atom).
    """
    x = np.asarray(coordinates, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    n = x.shape[0]
    sq = np.sqrt(m)
    r = x - (m[:, None] * x).sum(0) / m.sum()
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = sq
        vecs.append(t.reshape(-1))
        e = np.zeros(3)
        e[a] = 1.0
        vecs.append((sq[:, None] * np.cross(e, r)).reshape(-1))
    u, s, _ = np.linalg.svd(np.stack(vecs, 1), full_matrices=False)
    return u[:, s > tol * s.max()]


def harmonic_frequencies(hessian, species, coordinates, project: bool = True) -> np.ndarray:
    """Harmonic wavenumbers of a molecule.

    Args:
        hessian: (3n, 3n) kcal/mol/Å² (symmetrised here).
        species: (n,) atomic numbers (masses from :data:`ATOMIC_MASSES`).
        coordinates: (n, 3) Å (the rigid-body directions are built here).
        project: remove translations/rotations (False: all 3n eigenvalues, the negative control).

    Returns:
        (3n − r,) float64 cm⁻¹, ascending; negative = imaginary.

    Raises:
        ValueError: shapes disagree or an untabulated element.
    """
    h = np.asarray(torch.as_tensor(hessian, dtype=torch.float64).detach().cpu())
    m = atomic_masses(species)
    x = np.asarray(coordinates, dtype=np.float64)
    d = 3 * m.shape[0]
    if h.shape != (d, d) or x.shape != (m.shape[0], 3):
        raise ValueError(f"hessian {h.shape}, coordinates {x.shape} and {m.shape[0]} atoms disagree")
    w = 1.0 / np.sqrt(np.repeat(m, 3))
    hm = 0.5 * (h + h.T) * w[:, None] * w[None, :]
    if project:
        rb = rigid_body_basis(x, m)
        q, _ = np.linalg.qr(np.concatenate([rb, np.eye(d)], 1))
        comp = q[:, rb.shape[1]:d]  # orthonormal complement of the rigid-body span
        hm = comp.T @ hm @ comp
    lam = np.linalg.eigvalsh(hm)
    return np.sign(lam) * np.sqrt(np.abs(lam)) * CM1_PER_SQRT_KCAL_MOL_A2_DA


@dataclass(frozen=True)
class OptimisedGeometry:
    """Result of :func:`optimise_geometry`.

    Attributes:
        coordinates: (n, 3) Å.  energy: kcal/mol (model energy without reference).
        max_force: largest |force component| at the end, kcal/mol/Å.
        n_iterations: L-BFGS iterations.  converged: scipy's success flag.
    """

    coordinates: np.ndarray
    energy: float
    max_force: float
    n_iterations: int
    converged: bool


def optimise_geometry(energy_and_gradient, x0: np.ndarray, gtol: float = 1e-4,
                      max_iterations: int = 2000) -> OptimisedGeometry:
    """Minimise an energy with scipy's L-BFGS-B.

    Args:
        energy_and_gradient: callable (n, 3) float64 Å → (energy kcal/mol, gradient (n, 3)).
        x0: (n, 3) Å start.
        gtol: stop when the largest gradient component is below this, kcal/mol/Å.
        max_iterations: L-BFGS iteration cap.

    Returns:
        :class:`OptimisedGeometry`.
    """
    shape = np.asarray(x0).shape

    def fun(flat):
        e, g = energy_and_gradient(flat.reshape(shape))
        return float(e), np.asarray(g, dtype=np.float64).reshape(-1)

    res = scipy.optimize.minimize(fun, np.asarray(x0, dtype=np.float64).reshape(-1), jac=True,
                                  method="L-BFGS-B",
                                  options={"gtol": gtol, "ftol": 0.0, "maxiter": max_iterations})
    e, g = fun(res.x)
    return OptimisedGeometry(res.x.reshape(shape), e, float(np.abs(g).max()), int(res.nit),
                             bool(np.abs(g).max() <= gtol))
