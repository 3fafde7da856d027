"""Units and constants (docs/identities.md §0)."""

import pytest

from hessid import units


def test_beta_at_300_kelvin_matches_the_spec():
    assert units.kT(300.0) == pytest.approx(0.596161, abs=1e-6)
    assert units.beta(300.0) == pytest.approx(1.677399, abs=1e-6)
    # the same β in kJ/mol, via the kJ Boltzmann constant
    assert 1.0 / (units.KB_KJ_PER_MOL_K * 300.0) == pytest.approx(0.400908, abs=1e-6)
    assert units.KB_KJ_PER_MOL_K / units.KB_KCAL_PER_MOL_K == pytest.approx(units.KJ_PER_KCAL, rel=1e-7)


def test_openmm_conversions_match_the_documented_factors_and_round_trip():
    assert units.force_kj_nm_to_kcal_angstrom(41.84) == pytest.approx(1.0)
    assert units.hessian_kj_nm2_to_kcal_angstrom2(418.4) == pytest.approx(1.0)
    assert units.length_nm_to_angstrom(0.1) == pytest.approx(1.0)
    assert units.energy_kj_to_kcal(4.184) == pytest.approx(1.0)
    for there, back in [
        (units.force_kj_nm_to_kcal_angstrom, units.force_kcal_angstrom_to_kj_nm),
        (units.hessian_kj_nm2_to_kcal_angstrom2, units.hessian_kcal_angstrom2_to_kj_nm2),
        (units.length_nm_to_angstrom, units.length_angstrom_to_nm),
        (units.energy_kj_to_kcal, units.energy_kcal_to_kj),
    ]:
        assert back(there(3.7)) == pytest.approx(3.7, rel=1e-15)


def test_hessian_conversion_is_force_conversion_per_length():
    """A Hessian is force per length: ÷41.84 then ÷(10 Å/nm)."""
    h = 123.0
    assert units.hessian_kj_nm2_to_kcal_angstrom2(h) == pytest.approx(
        units.force_kj_nm_to_kcal_angstrom(h) / units.ANGSTROM_PER_NM
    )


def test_non_positive_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        units.beta(0.0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -300.0])
def test_non_finite_temperature_is_refused(bad):
    """β must be finite and positive wherever it is used (the trainer's RB loss skips its own
    value checks on that guarantee): an infinite temperature (β = 0) is refused too."""
    with pytest.raises(ValueError, match="positive and finite"):
        units.beta(bad)
