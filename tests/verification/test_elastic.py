"""Elastic-network check of linear maps on real structures (docs/identities.md §2, §7.1)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hessid.cli import main
from hessid.maps import LinearMap
from hessid.verification.elastic import (
    builtin_structure_path,
    check_linear_map_on_structure,
    check_structure_file,
    elastic_network_matrix,
    read_pdb,
    structure_map,
)

PDBFIXER_VILLIN = Path("/work/venv/lib/python3.11/site-packages/pdbfixer/tests/data/test.pdb")


def _real_pdb() -> Path:
    """The all-atom villin 1VII shipped with pdbfixer if present, else our heavy-atom copy."""
    return PDBFIXER_VILLIN if PDBFIXER_VILLIN.is_file() else builtin_structure_path()


def test_shipped_villin_is_read_with_residues_and_masses():
    s = read_pdb(builtin_structure_path())
    assert s.n_atoms == 295 and len(s.ca_indices()) == 36 and len(s.residue_groups()) == 36
    assert set(s.elements) == {"C", "N", "O", "S"}
    assert abs(s.masses().sum() - sum({"C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06}[e]
                                      for e in s.elements)) < 1e-9
    assert builtin_structure_path().stat().st_size < 50_000


def test_tether_removes_exactly_the_six_rigid_body_zero_modes():
    structure = read_pdb(builtin_structure_path())
    pos = structure.positions[structure.ca_indices()]
    tether = 0.05
    K = elastic_network_matrix(pos, cutoff=12.0, tether=tether)
    evals = torch.linalg.eigvalsh(K - tether * torch.eye(K.shape[0], dtype=torch.float64))
    assert float(evals[:6].abs().max()) < 1e-9
    assert float(evals[6]) > 1e-4
    assert float(torch.linalg.eigvalsh(K)[0]) > 0.9 * tether


@pytest.mark.parametrize("kind,projector", [("ca", "min_norm"), ("com", "min_norm"),
                                            ("com", "bead_sum")])
def test_identity_holds_for_ca_and_com_maps_on_a_real_pdb(kind, projector):
    rows = check_structure_file(_real_pdb(), kind, projector)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert {r.quantity.split()[0] for r in rows} >= {"projector", "mean", "hessian", "neg:"}


def test_wrong_projector_fails_projector_force_and_hessian_checks():
    structure = read_pdb(builtin_structure_path())
    good = structure_map(structure, "com", "min_norm")
    wrong = SimpleNamespace(weights=good.weights, projector=1.1 * good.projector, spatial_dim=3)
    rows = {r.quantity.split()[0]: r for r in
            check_linear_map_on_structure(structure.positions, wrong, name="wrong Q")}
    assert not rows["projector"].passed
    assert not rows["mean"].passed and not rows["hessian"].passed


def test_linear_map_check_accepts_the_contract_signature():
    structure = read_pdb(builtin_structure_path())
    cg_map = LinearMap.selection(structure.ca_indices(), structure.n_atoms)
    rows = check_linear_map_on_structure(structure.positions, cg_map, 310.0, "villin")
    assert rows and all(r.passed and r.system == "villin" for r in rows)


def test_gaussian_cli_exits_zero_on_real_pdb(capsys):
    code = main(["verify", "--gaussian", "--map", "com", "--projector", "bead_sum",
                 "--pdb", str(_real_pdb())])
    assert code == 0
    assert "PASS" in capsys.readouterr().out
