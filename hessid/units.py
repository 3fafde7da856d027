"""Physical constants and unit conversions (docs/identities.md §0, "Units").

hessid works in kcal/mol, Å, K and ps. OpenMM works in kJ/mol and nm; every crossing of
that boundary goes through the functions here, whose names say both unit systems.
"""

from __future__ import annotations

import math

#: Boltzmann constant, kcal/mol/K (CODATA 2018 R / 4184).
KB_KCAL_PER_MOL_K = 0.0019872041
#: Boltzmann constant, kJ/mol/K.
KB_KJ_PER_MOL_K = 0.0083144626
#: kJ per kcal (thermochemical calorie).
KJ_PER_KCAL = 4.184
#: Å per nm.
ANGSTROM_PER_NM = 10.0


def kT(temperature: float) -> float:
    """Thermal energy k_B T in kcal/mol for ``temperature`` in K.

    Raises:
        ValueError: temperature is not a finite positive number.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite (K), got {temperature!r}")
    return KB_KCAL_PER_MOL_K * float(temperature)


def beta(temperature: float) -> float:
    """Inverse temperature β = 1/(k_B T) in mol/kcal for ``temperature`` in K
    (docs/identities.md §0, "Units").

    ``beta(300.0) == 1.677399...`` mol/kcal.

    Raises:
        ValueError: temperature is not a finite positive number (so β is finite and > 0).
    """
    return 1.0 / kT(temperature)


def energy_kj_to_kcal(x):
    """Energy kJ/mol → kcal/mol (divide by 4.184). Works on floats, arrays and tensors."""
    return x / KJ_PER_KCAL


def energy_kcal_to_kj(x):
    """Energy kcal/mol → kJ/mol (multiply by 4.184)."""
    return x * KJ_PER_KCAL


def length_nm_to_angstrom(x):
    """Length nm → Å (multiply by 10)."""
    return x * ANGSTROM_PER_NM


def length_angstrom_to_nm(x):
    """Length Å → nm (divide by 10)."""
    return x / ANGSTROM_PER_NM


def force_kj_nm_to_kcal_angstrom(x):
    """Force kJ/mol/nm → kcal/mol/Å (divide by 41.84)."""
    return x / (KJ_PER_KCAL * ANGSTROM_PER_NM)


def force_kcal_angstrom_to_kj_nm(x):
    """Force kcal/mol/Å → kJ/mol/nm (multiply by 41.84)."""
    return x * (KJ_PER_KCAL * ANGSTROM_PER_NM)


def hessian_kj_nm2_to_kcal_angstrom2(x):
    """Hessian (or HVP per unit displacement) kJ/mol/nm² → kcal/mol/Å² (divide by 418.4)."""
    return x / (KJ_PER_KCAL * ANGSTROM_PER_NM**2)


def hessian_kcal_angstrom2_to_kj_nm2(x):
    """Hessian kcal/mol/Å² → kJ/mol/nm² (multiply by 418.4)."""
    return x * (KJ_PER_KCAL * ANGSTROM_PER_NM**2)


# ----------------------------------------------------------------------------- atomic units
# Quantum-chemistry programs (tblite, PySCF) work in Hartree and Bohr; hessid converts at the
# boundary (hessid.training.qm) with the functions below. CODATA 2018 values.

#: kcal/mol per Hartree: E_h N_A / 4184 J = 4.3597447222071e-18 J × 6.02214076e23 / 4184.
HARTREE_KCAL_PER_MOL = 627.5094740631
#: Å per Bohr (CODATA 2018 Bohr radius a_0 = 0.529177210903 Å).
BOHR_ANGSTROM = 0.529177210903
#: kcal/mol per eV: e N_A / 4184 J = 96.48533212 kJ/mol / 4.184.
EV_KCAL_PER_MOL = 23.06054783061903


def energy_hartree_to_kcal(x):
    """Energy Hartree → kcal/mol (multiply by 627.509474). Floats, arrays and tensors."""
    return x * HARTREE_KCAL_PER_MOL


def energy_kcal_to_hartree(x):
    """Energy kcal/mol → Hartree (divide by 627.509474)."""
    return x / HARTREE_KCAL_PER_MOL


def length_bohr_to_angstrom(x):
    """Length Bohr → Å (multiply by 0.529177210903)."""
    return x * BOHR_ANGSTROM


def length_angstrom_to_bohr(x):
    """Length Å → Bohr (divide by 0.529177210903)."""
    return x / BOHR_ANGSTROM


def force_hartree_bohr_to_kcal_angstrom(x):
    """Force (or gradient) Hartree/Bohr → kcal/mol/Å (multiply by 627.509474 / 0.529177211
    = 1185.821)."""
    return x * (HARTREE_KCAL_PER_MOL / BOHR_ANGSTROM)


def force_kcal_angstrom_to_hartree_bohr(x):
    """Force kcal/mol/Å → Hartree/Bohr (divide by 1185.821)."""
    return x / (HARTREE_KCAL_PER_MOL / BOHR_ANGSTROM)


def hessian_hartree_bohr2_to_kcal_angstrom2(x):
    """Hessian Hartree/Bohr² → kcal/mol/Å² (multiply by 627.509474 / 0.529177211² = 2240.877)."""
    return x * (HARTREE_KCAL_PER_MOL / BOHR_ANGSTROM**2)


def hessian_kcal_angstrom2_to_hartree_bohr2(x):
    """Hessian kcal/mol/Å² → Hartree/Bohr² (divide by 2240.877)."""
    return x / (HARTREE_KCAL_PER_MOL / BOHR_ANGSTROM**2)

#: harmonic wavenumber (cm⁻¹) of a mass-weighted force constant of 1 kcal/mol/Å²/amu:
#: √(4184 J / (1e-20 m² · 1e-3 kg)) / (2π c), c = 2.99792458e10 cm/s  (≈ 108.59 cm⁻¹)
WAVENUMBER_PER_SQRT_KCAL_MOL_ANGSTROM2_AMU = (
    (4184.0 / (1e-20 * 1e-3)) ** 0.5 / (2.0 * 3.141592653589793 * 2.99792458e10)
)
