"""The timestep check of CG MD: refused beyond the stability limit of the stiffest bond."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.md.integrator import check_timestep, stiffest_bond


def test_limit_is_two_over_the_chain_bound_of_omega():
    # ω_max = 2√(418.4 k/m) ps⁻¹; limit dt = 2/ω_max: k = 100, m = 12 → 16.935 fs
    limit = 1e3 * 2 / (2 * math.sqrt(418.4 * 100 / 12))
    assert check_timestep(limit * 0.999, 12.0, 100.0) == pytest.approx(1.998, rel=1e-9)
    with pytest.raises(ValueError, match=r"use a timestep below 16.9 fs"):
        check_timestep(limit * 1.001, 12.0, 100.0)
    with pytest.raises(ValueError, match="beads of 6 amu"):  # the lightest bead counts
        check_timestep(limit * 0.9, [12.0, 6.0, 12.0], 100.0)
    assert check_timestep(1e6, 12.0, None) is None  # unknown bonds: nothing checked


def test_stiffest_bond_reads_the_prior_classes_and_the_harmonic_chain():
    params = SimpleNamespace(bond_k=170.0, bond_classes=(((0, 1), 214.0, 3.8), ((1, 2), 90.0, 3.8)))
    assert stiffest_bond(SimpleNamespace(prior=SimpleNamespace(params=params))) == 214.0
    assert stiffest_bond(HarmonicChainPotential(55.0)) == 55.0
    assert stiffest_bond(SimpleNamespace(prior=None)) is None
