"""Structures for atomistic QM data: RDKit ETKDG conformers, QM geometry optimisation,
harmonic vibrational analysis and normal-mode sampling (docs/atomistic.md, "Structures").

Normal-mode sampling follows Smith, Isayev & Roitberg, "ANI-1: an extensible neural network
potential with DFT accuracy at force field computational cost", Chem. Sci. 8, 3192 (2017)
(§ "Normal mode sampling"): structures are displaced from an optimised minimum along the
harmonic normal modes of its Hessian with amplitudes set by a temperature. Two schemes:

- ``boltzmann`` (default): the classical harmonic Boltzmann distribution. With mass-weighted
  normal coordinates q_i (force constants λ_i = ω_i²), q_i ~ N(0, k_B T / λ_i) independently,
  Δx = M^{-1/2} Σ_i q_i u_i. The harmonic energy ½ Δxᵀ H Δx = ½ Σ λ_i q_i² then has mean
  (3N − 6)/2 · k_B T (equipartition; 3N − 5 for a linear molecule).
- ``ani1``: the ANI-1 recipe: c_i ~ U(0, 1) rescaled so that Σ c_i ~ U(0, 1), a random sign, and
  R_i = ±√(3 c_i N_a k_B T / K_i) along the Cartesian-normalised mode of force constant K_i;
  mean harmonic energy (3/4) N_a k_B T.

Modes softer than ``min_wavenumber`` (and any non-positive curvature of an imperfect minimum)
use the force constant of that wavenumber for their amplitude, so soft torsions do not produce
unphysically large linear displacements; this is recorded with the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from hessid.training.atomistic.frequencies import atomic_masses, rigid_body_basis
from hessid.training.data.qm import element_symbol
from hessid.training.qm.methods import MethodSpec, QMError, energy_gradient
from hessid.units import WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU, kT

__all__ = [
    "SAMPLING_SCHEMES", "Molecule", "VibrationalAnalysis", "atomic_masses", "etkdg_conformers",
    "harmonic_energy", "molecule_from_smiles", "normal_mode_samples", "optimise",
    "vibrational_analysis",
]  # fmt: skip

SAMPLING_SCHEMES = ("boltzmann", "ani1")


@dataclass(frozen=True)
class Molecule:
    """A molecule from SMILES, hydrogens explicit.

    Attributes:
        smiles: the input.  species: (N,) int64 atomic numbers (RDKit atom order, H last).
        charge: total formal charge, e.  multiplicity: radical electrons + 1.
        rdkit_mol: the RDKit ``Mol`` with explicit hydrogens (no conformers).
    """

    smiles: str
    species: np.ndarray
    charge: int
    multiplicity: int
    rdkit_mol: object


def molecule_from_smiles(smiles: str) -> Molecule:
    """Parse SMILES (RDKit), add hydrogens.

    Raises:
        ValueError: not a valid SMILES, or an element without an atomic number (one line
            naming the SMILES; RDKit's own log is silenced).
    """
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(str(smiles))
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"--smiles {smiles!r}: not a valid SMILES (RDKit could not parse it)")
    mol = Chem.AddHs(mol)
    species = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
    if (species < 1).any():
        raise ValueError(f"--smiles {smiles!r}: dummy/wildcard atoms (*) have no element")
    charge = int(Chem.GetFormalCharge(mol))
    radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    return Molecule(str(smiles), species, charge, int(radicals) + 1, mol)


def etkdg_conformers(molecule: Molecule, n: int, seed: int) -> np.ndarray:
    """``n`` conformers by ETKDG v3 (Riniker & Landrum, JCIM 55, 2562 (2015); Wang et al.,
    JCIM 60, 2044 (2020)), seeded.

    Returns:
        (C, N, 3) float64 Å, C = n (deterministic for a seed).

    Raises:
        ValueError: RDKit embeds fewer than ``n`` conformers (one line naming the SMILES).
    """
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31)
    params.numThreads = 1
    mol = Chem.Mol(molecule.rdkit_mol)
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n), params=params))
    if len(ids) < n:
        raise ValueError(f"--smiles {molecule.smiles!r}: RDKit ETKDG embedded {len(ids)} of {n} conformers")
    return np.stack([mol.GetConformer(i).GetPositions() for i in ids]).astype(np.float64)


def optimise(species: Sequence[int], coords: np.ndarray, spec: MethodSpec, fmax: float = 0.01,
             max_steps: int = 2000) -> tuple[np.ndarray, float, int]:  # fmt: skip
    """Minimise the QM energy from ``coords`` (L-BFGS on Cartesians, analytic gradients).

    Args:
        species: (N,) atomic numbers.  coords: (N, 3) Å.  spec: the method.
        fmax: convergence, largest gradient component, kcal/mol/Å (0.01 ≈ 8e-6 Hartree/Bohr).
        max_steps: iteration limit.

    Returns:
        ``(coords (N, 3) Å, energy kcal/mol, iterations)``.

    Raises:
        QMError: an energy evaluation failed, or no convergence within ``max_steps``.
    """
    n = len(species)
    x0 = np.asarray(coords, np.float64).reshape(-1)
    best: dict = {}

    def fun(x):
        e, g = energy_gradient(species, x.reshape(n, 3), spec)
        gmax = float(np.abs(g).max())
        if not best or gmax < best["gmax"]:
            best.update(x=x.copy(), e=e, gmax=gmax)
        return e, g.reshape(-1)

    res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_steps, "gtol": fmax, "ftol": 1e-15,
                                           "maxcor": 50})  # fmt: skip
    if best["gmax"] > fmax:
        raise QMError(f"optimisation did not converge: max |gradient| {best['gmax']:.3g} kcal/mol/Å > {fmax} "
                      f"after {res.nit} iterations ({res.message})")  # fmt: skip
    return best["x"].reshape(n, 3), float(best["e"]), int(res.nit)


@dataclass(frozen=True)
class VibrationalAnalysis:
    """Harmonic analysis of a Cartesian Hessian with translations and rotations projected out.

    Attributes:
        force_constants: (F,) λ_i, kcal/mol/Å²/amu (eigenvalues of the mass-weighted Hessian
            in the internal space), ascending; F = 3N − 6 (3N − 5 linear).
        modes: (F, 3N) orthonormal mass-weighted eigenvectors u_i.
        wavenumbers: (F,) cm⁻¹, sign(λ) · 108.59 · √|λ| (negative: imaginary).
        masses: (N,) amu.
    """

    force_constants: np.ndarray
    modes: np.ndarray
    wavenumbers: np.ndarray
    masses: np.ndarray

    @property
    def n_modes(self) -> int:
        return int(self.force_constants.shape[0])


def vibrational_analysis(hessian: np.ndarray, coords: np.ndarray, masses: np.ndarray) -> VibrationalAnalysis:
    """Harmonic vibrational analysis: mass-weight, project out translations and rotations,
    diagonalise (Wilson, Decius & Cross, *Molecular Vibrations*, 1955).

    K = M^{-1/2} H M^{-1/2} restricted to the orthogonal complement of the external
    (translation/rotation) space, K u_i = λ_i u_i, ν̃_i = √λ_i / (2π c).

    Args:
        hessian: (3N, 3N) kcal/mol/Å².  coords: (N, 3) Å.  masses: (N,) amu.

    Returns:
        :class:`VibrationalAnalysis`.
    """
    coords = np.asarray(coords, np.float64)
    masses = np.asarray(masses, np.float64)
    inv_sq = np.repeat(1.0 / np.sqrt(masses), 3)  # (3N,)
    k = inv_sq[:, None] * np.asarray(hessian, np.float64) * inv_sq[None, :]
    k = 0.5 * (k + k.T)
    ext = rigid_body_basis(coords, masses, tol=1e-6)  # (3N, 6) or (3N, 5) for a linear molecule
    full, _ = np.linalg.qr(np.concatenate([ext, np.eye(k.shape[0])], axis=1))
    internal = full[:, ext.shape[1] :]  # (3N, F) orthonormal complement
    lam, u = np.linalg.eigh(internal.T @ k @ internal)
    modes = (internal @ u).T  # (F, 3N)
    wn = np.sign(lam) * WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU * np.sqrt(np.abs(lam))
    return VibrationalAnalysis(lam, modes, wn, masses)


def harmonic_energy(displacements: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """½ Δxᵀ H Δx for displacements (S, N, 3) Å and H (3N, 3N) kcal/mol/Å² → (S,) kcal/mol."""
    d = np.asarray(displacements, np.float64).reshape(len(displacements), -1)  # (S, 3N)
    return 0.5 * np.einsum("si,ij,sj->s", d, hessian, d)


def normal_mode_samples(
    coords: np.ndarray,
    analysis: VibrationalAnalysis,
    temperature: float,
    rng: np.random.Generator,
    n: int = 1,
    scheme: str = "boltzmann",
    min_wavenumber: float = 100.0,
) -> np.ndarray:
    """Normal-mode samples around a minimum (Smith et al., Chem. Sci. 8, 3192 (2017)).

    ``boltzmann``: q_i ~ N(0, k_B T / λ̃_i), Δx = M^{-1/2} Σ q_i u_i, λ̃_i = max(λ_i, λ_min)
    with λ_min the force constant of ``min_wavenumber``; mean harmonic energy (F/2) k_B T when
    no mode is floored. ``ani1``: c ~ U(0,1)^F scaled to Σ c = s ~ U(0,1), random signs,
    R_i = ±√(3 c_i N k_B T / K_i) along the Cartesian-normalised mode v_i = M^{-1/2}u_i/‖·‖ with
    K_i = λ̃_i / ‖M^{-1/2}u_i‖²; mean harmonic energy (3/4) N k_B T.

    Args:
        coords: (N, 3) Å, the minimum.  analysis: its :func:`vibrational_analysis`.
        temperature: K.  rng: numpy Generator (seed it per structure for reproducibility).
        n: samples.  scheme: ``boltzmann`` | ``ani1``.  min_wavenumber: floor, cm⁻¹.

    Returns:
        (n, N, 3) float64 Å.

    Raises:
        ValueError: unknown scheme, non-positive temperature.
    """
    if scheme not in SAMPLING_SCHEMES:
        raise ValueError(f"--scheme={scheme!r}: expected one of {', '.join(SAMPLING_SCHEMES)}")
    kt = kT(temperature)
    coords = np.asarray(coords, np.float64)
    n_atoms = coords.shape[0]
    lam_min = (float(min_wavenumber) / WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU) ** 2
    lam = np.maximum(analysis.force_constants, lam_min)  # (F,)
    inv_sq = np.repeat(1.0 / np.sqrt(analysis.masses), 3)  # (3N,)
    cart = analysis.modes * inv_sq[None, :]  # (F, 3N) M^{-1/2} u_i
    f = lam.shape[0]
    if scheme == "boltzmann":
        q = rng.standard_normal((n, f)) * np.sqrt(kt / lam)  # (n, F)
        dx = q @ cart  # (n, 3N)
    else:
        norms = np.linalg.norm(cart, axis=1)  # (F,)
        v = cart / norms[:, None]
        k_cart = lam / norms**2  # K_i = v_iᵀ H v_i
        c = rng.random((n, f))
        c *= rng.random((n, 1)) / c.sum(axis=1, keepdims=True)
        sign = rng.choice((-1.0, 1.0), size=(n, f))
        r = sign * np.sqrt(3.0 * c * n_atoms * kt / k_cart)  # (n, F) Å
        dx = r @ v
    return coords[None] + dx.reshape(n, n_atoms, 3)


def describe_species(species: Sequence[int]) -> str:
    """Hill-order-free formula string, e.g. ``C2H6O`` (for messages)."""
    counts: dict[str, int] = {}
    for z in species:
        s = element_symbol(int(z))
        counts[s] = counts.get(s, 0) + 1
    return "".join(f"{s}{c if c > 1 else ''}" for s, c in counts.items())
