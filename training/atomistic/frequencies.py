"""Harmonic vibrational analysis and geometry optimisation on a model energy
(docs/atomistic_learning.md, "Evaluation").

Frequencies: the mass-weighted Hessian ``M^{-1/2} H M^{-1/2}`` restricted to the
orthogonal complement of the rigid-body directions (3 translations ``√m_i e_α`` and 3
rotations ``√m_i (e_α × (r_i − r_com))``, 2 for a linear molecule), whose eigenvalues λ give
``ν̃ = sign(λ) √|λ| · 108.59 cm⁻¹`` for H in kcal/mol/Å² and masses in Da
(:data:`hessid.units.WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU`, the one constant that
hessid's QM sampling uses too). Masses: OpenMM's element table, one source for the whole
atomistic mode (:func:`atomic_masses`). Negative
values mean imaginary frequencies. Restricting to the complement (rather than dropping the
six smallest eigenvalues) is exact at any geometry, stationary or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from openmm import unit
from openmm.app.element import Element

from hessid.units import WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU

__all__ = [
    "CM1_PER_SQRT_KCAL_MOL_A2_DA",
    "OptimisedGeometry",
    "atomic_masses",
    "harmonic_frequencies",
    "optimise_geometry",
    "rigid_body_basis",
]

#: cm⁻¹ per √(kcal/mol/Å²/Da) (≈ 108.59); an alias of the core constant
CM1_PER_SQRT_KCAL_MOL_A2_DA = WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU


def atomic_masses(species) -> np.ndarray:
    """Masses (n,) float64 in Da (amu) of atomic numbers (n,), from OpenMM's element table
    (``openmm.app.element``; every element; the one mass table of hessid's atomistic mode:
    normal-mode sampling and vibrational frequencies use it alike).

    Raises:
        ValueError: an atomic number OpenMM does not know (names it).
    """
    z = np.asarray(species, dtype=np.int64).reshape(-1)
    out = np.empty(z.shape[0], dtype=np.float64)
    for i, a in enumerate(z.tolist()):
        try:
            out[i] = Element.getByAtomicNumber(a).mass.value_in_unit(unit.dalton)
        except KeyError:
            raise ValueError(f"no atomic mass known for atomic number {a}") from None
    return out


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
        species: (n,) atomic numbers (masses from :func:`atomic_masses`).
        coordinates: (n, 3) Å (the rigid-body directions are built here).
        project: remove translations/rotations (False: all 3n eigenvalues, the negative control).

    Returns:
        (3n − r,) float64 cm⁻¹, ascending; negative = imaginary.

    Raises:
        ValueError: shapes disagree or an unknown element.
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
