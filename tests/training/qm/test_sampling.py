"""Structures: SMILES parsing, ETKDG conformers, optimisation, vibrational analysis and
normal-mode sampling statistics (equipartition in the harmonic limit, with controls)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hessid.training.qm.methods import MethodSpec, compute
from hessid.training.qm.sampling import (
    atomic_masses,
    etkdg_conformers,
    harmonic_energy,
    molecule_from_smiles,
    normal_mode_samples,
    optimise,
    vibrational_analysis,
)
from hessid.units import kT


@pytest.fixture(scope="module")
def water_minimum():
    mol = molecule_from_smiles("O")
    spec = MethodSpec()
    x, _, _ = optimise(mol.species, etkdg_conformers(mol, 1, 3)[0], spec)
    res = compute(mol.species, x, spec)
    return mol, x, res


def test_smiles_gives_explicit_hydrogens_charge_and_multiplicity():
    eth = molecule_from_smiles("CCO")
    assert sorted(eth.species.tolist()) == [1] * 6 + [6, 6, 8]
    assert (eth.charge, eth.multiplicity) == (0, 1)
    ion = molecule_from_smiles("[NH4+]")
    assert (ion.charge, ion.multiplicity) == (1, 1)
    methyl = molecule_from_smiles("[CH3]")
    assert methyl.multiplicity == 2


@pytest.mark.parametrize("bad", ["C1CC", "not a smiles", ""])
def test_bad_smiles_is_one_line_value_error(bad):
    with pytest.raises(ValueError, match=r"^--smiles .*: not a valid SMILES") as info:
        molecule_from_smiles(bad)
    assert "\n" not in str(info.value)


def test_etkdg_conformers_are_seeded():
    mol = molecule_from_smiles("CCO")
    a, b, c = (etkdg_conformers(mol, 2, s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 9, 3) and not np.allclose(a, c)


def test_optimised_water_is_a_minimum_with_three_real_modes(water_minimum):
    mol, x, res = water_minimum
    assert np.abs(res.gradient).max() < 0.01  # fmax, kcal/mol/Å
    va = vibrational_analysis(res.hessian, x, atomic_masses(mol.species))
    assert va.n_modes == 3
    assert (va.wavenumbers > 1000).all()  # bend ≈ 1540, stretches ≈ 3650 cm⁻¹ (GFN2-xTB)


def test_wavenumbers_are_invariant_under_rotation(water_minimum):
    mol, x, res = water_minimum
    r = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    big = np.kron(np.eye(3), r)  # (9, 9) block-diagonal rotation of the flat coordinates
    masses = atomic_masses(mol.species)
    a = vibrational_analysis(res.hessian, x, masses).wavenumbers
    b = vibrational_analysis(big @ res.hessian @ big.T, x @ r.T, masses).wavenumbers
    np.testing.assert_allclose(a, b, rtol=1e-10)


def _mean_energy_z(mol, x, res, scheme, temperature, expected_kt, n=4000, min_wavenumber=100.0):
    """z-score of the mean harmonic energy against expected_kt·kT. The harmonic energy is a sum
    of F independent (kT/2)χ²₁ terms under the Boltzmann scheme: Var = F/2 (kT)²; the sample
    variance is used for the standard error (valid for both schemes)."""
    va = vibrational_analysis(res.hessian, x, atomic_masses(mol.species))
    s = normal_mode_samples(x, va, temperature, np.random.default_rng(11), n=n, scheme=scheme,
                            min_wavenumber=min_wavenumber)
    e = harmonic_energy(s - x, res.hessian) / kT(temperature)  # (n,) in units of kT
    return (e.mean() - expected_kt) / (e.std(ddof=1) / np.sqrt(n)), e


@pytest.mark.parametrize("temperature", [300.0, 1000.0])
def test_boltzmann_sampling_gives_equipartition_mean_energy(water_minimum, temperature):
    """Mean harmonic energy (3N − 6)/2 kT = 1.5 kT for water; |z| < 4."""
    mol, x, res = water_minimum
    z, e = _mean_energy_z(mol, x, res, "boltzmann", temperature, 1.5)
    assert abs(z) < 4, z
    # its variance is F/2 = 1.5 (kT)² (a χ²₃/2 law); 4000 samples: sd of the variance ≈ 0.05
    assert abs(e.var(ddof=1) - 1.5) < 0.25


def test_negative_controls_of_the_equipartition_test(water_minimum):
    """The test detects a different law: the ANI-1 recipe has mean (3/4) N kT = 2.25 kT (and
    matches that), and a floor above the bend (2000 cm⁻¹) lowers the mean below 1.5 kT."""
    mol, x, res = water_minimum
    z_ani_vs_boltzmann, _ = _mean_energy_z(mol, x, res, "ani1", 300.0, 1.5)
    assert abs(z_ani_vs_boltzmann) > 10
    z_ani, _ = _mean_energy_z(mol, x, res, "ani1", 300.0, 2.25)
    assert abs(z_ani) < 4, z_ani
    z_floor, _ = _mean_energy_z(mol, x, res, "boltzmann", 300.0, 1.5, min_wavenumber=2000.0)
    assert z_floor < -10


def test_samples_are_reproducible_per_generator_seed(water_minimum):
    mol, x, res = water_minimum
    va = vibrational_analysis(res.hessian, x, atomic_masses(mol.species))
    a = normal_mode_samples(x, va, 300.0, np.random.default_rng([1, 2]))
    b = normal_mode_samples(x, va, 300.0, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="--scheme='nms'"):
        normal_mode_samples(x, va, 300.0, np.random.default_rng(0), scheme="nms")
