"""Structures from a sequence (PeptideBuilder + pdbfixer) and from PDB files."""

from __future__ import annotations

import openmm.unit as u
import pytest
from openmm.app import PDBxFile

from hessid.training.data.structures import (
    build_from_sequence,
    build_structure,
    load_pdb,
    structure_from_pdb_text,
)


@pytest.fixture(scope="module")
def tripeptide():
    return build_from_sequence("AAA")


def test_sequence_build_adds_hydrogens_and_zwitterionic_termini(tripeptide):
    top = tripeptide.topology
    assert [r.name for r in top.residues()] == ["ALA", "ALA", "ALA"]
    names = [a.name for a in top.atoms()]
    assert "OXT" in names and {"H", "H2", "H3"} <= set(names)  # NH3+ / COO- at pH 7
    assert tripeptide.n_atoms == 33  # 3 Ala (10 atoms each) + 2 extra N-term H + OXT
    assert tripeptide.positions.shape == (33, 3)
    # Å, bonded geometry sane: N–CA about 1.46 Å
    atoms = {(a.residue.index, a.name): a.index for a in top.atoms()}
    d = tripeptide.positions[atoms[(1, "N")]] - tripeptide.positions[atoms[(1, "CA")]]
    assert 1.3 < float((d**2).sum() ** 0.5) < 1.6


def test_non_amino_acid_letter_is_refused():
    with pytest.raises(ValueError, match="not one-letter codes"):
        build_from_sequence("AXZ")
    with pytest.raises(ValueError, match="empty"):
        build_from_sequence("  ")


def test_pdb_roundtrip_keeps_atoms_and_positions(tripeptide):
    again = structure_from_pdb_text(tripeptide.to_pdb())
    assert again.n_atoms == tripeptide.n_atoms
    assert abs(again.positions - tripeptide.positions).max() < 1e-3  # PDB has 3 decimals (Å)


def _with_water_and_ion(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    extra = [
        "HETATM 9001  O   HOH W   1      10.000  10.000  10.000  1.00  0.00           O",
        "HETATM 9002  H1  HOH W   1      10.957  10.000  10.000  1.00  0.00           H",
        "HETATM 9003  H2  HOH W   1       9.760  10.927  10.000  1.00  0.00           H",
        "HETATM 9004 NA    NA I   2      -8.000  -8.000  -8.000  1.00  0.00          NA",
    ]
    return "\n".join(lines + extra + ["END"]) + "\n"


def test_load_pdb_strips_or_keeps_waters_and_ions(tripeptide, tmp_path):
    path = tmp_path / "solvated.pdb"
    path.write_text(_with_water_and_ion(tripeptide.to_pdb()))
    stripped = load_pdb(path)
    assert {r.name for r in stripped.topology.residues()} == {"ALA"}
    assert stripped.n_atoms == tripeptide.n_atoms
    kept = load_pdb(path, keep_water=True, keep_ions=True)
    assert {"HOH", "NA"} <= {r.name for r in kept.topology.residues()}
    water_only = load_pdb(path, keep_water=True)
    names = {r.name for r in water_only.topology.residues()}
    assert "HOH" in names and "NA" not in names


def test_build_structure_writes_name_folder_and_needs_one_source(tmp_path):
    path = build_structure("di", sequence="AG", out_dir=tmp_path)
    assert path == tmp_path / "di" / "di.pdb" and path.exists()
    with pytest.raises(ValueError, match="exactly one"):
        build_structure("x", out_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        build_structure("x", pdb=tmp_path / "missing.pdb", out_dir=tmp_path)


def test_mmcif_file_is_read_like_pdb_with_waters_stripped_or_kept(tripeptide, tmp_path):
    """``load_pdb`` reads PDBx/mmCIF (by suffix) with OpenMM's PDBxFile: same atoms and
    positions as the PDB route, same water/ion flags."""
    solvated = structure_from_pdb_text(_with_water_and_ion(tripeptide.to_pdb()))
    path = tmp_path / "solvated.cif"
    with open(path, "w") as fh:
        PDBxFile.writeFile(solvated.topology, solvated.positions_nm() * u.nanometer, fh,
                           keepIds=True)  # fmt: skip
    stripped = load_pdb(path, fix=False)
    assert [r.name for r in stripped.topology.residues()] == ["ALA", "ALA", "ALA"]
    assert abs(stripped.positions - tripeptide.positions).max() < 1e-3
    kept = load_pdb(path, keep_water=True, fix=False)
    assert [r.name for r in kept.topology.residues()][-1] == "HOH"
    assert "NA" not in {r.name for r in kept.topology.residues()}
    assert load_pdb(path).n_atoms == tripeptide.n_atoms  # pdbfixer route: nothing to add
