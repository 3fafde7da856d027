"""``hessid data validate --deep`` (issue 12 item 5): every check passes on a clean file and
catches its tampered copy (negative controls)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from hessid.cli import main
from hessid.training.data.aa_md import MDConfig, SimulationInterrupted, simulate
from hessid.training.data.cg_map import write_cg
from hessid.training.data.deep_check import deep_validate
from hessid.training.data.reader import load_dataset
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import TargetsInterrupted, compute_targets

CFG = dict(steps=30, stride=10, solvent="vacuum", platform="CPU", threads=1, chunk_frames=1, minimize=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """AAG tripeptide, 3 vacuum frames (HBond constraints), constraint-aware Cα map."""
    root = tmp_path_factory.mktemp("deep")
    build_structure("aag", sequence="AAG", out_dir=root)
    path = simulate("aag", MDConfig(**CFG), root=root, progress=False)
    write_cg(path)
    return path


def _copy(path, tmp_path):
    dst = tmp_path / "aag" / "aag.h5"
    dst.parent.mkdir()
    shutil.copy(path, dst)
    return dst


def _status(rows) -> dict[str, str]:
    return {r.name: r.status for r in rows}


def test_a_clean_file_passes_every_check(clean):
    rows = deep_validate(clean)
    st = _status(rows)
    assert st == {"cg/coordinates = S·coordinates": "PASS", "cg/forces = Q·forces": "PASS",
                  "AA bond lengths": "PASS", "Cα–Cα distances (cg/bonds)": "PASS",
                  "forces recomputed with OpenMM": "PASS", "potential energies recomputed with OpenMM": "PASS",
                  "simulation complete": "PASS"}, rows
    forces = next(r for r in rows if r.name.startswith("forces"))
    assert "frames [0, 1, 2]" in forces.detail


def test_stale_cg_coordinates_are_caught(clean, tmp_path):
    path = _copy(clean, tmp_path)
    with h5py.File(path, "r+") as h5:  # the AA frame moved after mapping: cg/ is stale
        h5["coordinates"][1, :, 0] += 0.01
    st = _status(deep_validate(path))
    assert st["cg/coordinates = S·coordinates"] == "FAIL" and st["cg/forces = Q·forces"] == "PASS"


def test_tampered_cg_forces_are_caught(clean, tmp_path):
    path = _copy(clean, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["cg/forces"][2] *= 1.001
    st = _status(deep_validate(path))
    assert st["cg/forces = Q·forces"] == "FAIL" and st["cg/coordinates = S·coordinates"] == "PASS"


def test_forces_of_other_positions_are_caught_by_the_openmm_recomputation(clean, tmp_path):
    path = _copy(clean, tmp_path)
    with h5py.File(path, "r+") as h5:  # frame 1 holds frame 0's forces (an off-by-one writer)
        h5["forces"][1] = h5["forces"][0]
    write_cg(path, overwrite=True)  # cg/ consistent with the tampered forces: only OpenMM can tell
    st = _status(deep_validate(path))
    assert st["forces recomputed with OpenMM"] == "FAIL" and st["cg/forces = Q·forces"] == "PASS"


def test_kj_forces_declared_as_kcal_are_caught(clean, tmp_path):
    path = _copy(clean, tmp_path)
    with h5py.File(path, "r+") as h5:
        h5["forces"][...] = h5["forces"][()] * 4.184
    write_cg(path, overwrite=True)
    assert _status(deep_validate(path))["forces recomputed with OpenMM"] == "FAIL"


def test_angstrom_data_imported_as_nm_fail_the_distance_checks(clean, tmp_path, monkeypatch, capsys):
    """The issue's case: Å coordinates imported with --length-unit nm (×10: Cα–Cα 38 Å)."""
    ds = load_dataset(clean)
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", ds.coordinates)
    np.save("f.npy", ds.forces)
    (tmp_path / "top.pdb").write_text(ds.topology_pdb)
    assert main(["data", "import", "x.npy", "--name", "wrong", "--forces", "f.npy", "--topology", "top.pdb",
                 "--length-unit", "nm", "--force-unit", "kcal/mol/angstrom", "--temperature", "300",
                 "--constraints", "HBonds", "--solvent", "vacuum", "-q"]) == 0
    assert main(["data", "map", "wrong", "-q"]) == 0
    capsys.readouterr()
    assert main(["data", "validate", "wrong", "--deep", "-q"]) == 1
    out = capsys.readouterr()
    assert "FAIL       AA bond lengths" in out.out and "Å read as nm gives ×10" in out.out
    assert "FAIL       Cα–Cα distances" in out.out
    assert "deep check(s) failed" in out.err
    # the same data declared in Å pass
    assert main(["data", "import", "x.npy", "--name", "right", "--forces", "f.npy", "--topology", "top.pdb",
                 "--length-unit", "angstrom", "--force-unit", "kcal/mol/angstrom", "--temperature", "300",
                 "--constraints", "HBonds", "--solvent", "vacuum", "-q"]) == 0
    assert main(["data", "map", "right", "-q"]) == 0
    assert main(["data", "validate", "right", "--deep", "-q"]) == 0


def test_incomplete_simulation_and_targets_are_reported(tmp_path, capsys):
    build_structure("inc", sequence="AG", out_dir=tmp_path)
    with pytest.raises(SimulationInterrupted):
        simulate("inc", MDConfig(**{**CFG, "steps": 40}), root=tmp_path, progress=False, interrupt_after_chunks=2)
    path = tmp_path / "inc" / "inc.h5"
    with pytest.raises(TargetsInterrupted):
        compute_targets(path, n_probes=1, workers=0, chunk_frames=1, platform="Reference", progress=False,
                        interrupt_after_chunks=1)
    rows = {r.name: r for r in deep_validate(path)}
    assert rows["simulation complete"].status == "INCOMPLETE"
    assert "2 of 4 frames" in rows["simulation complete"].detail and "--resume" in rows["simulation complete"].detail
    t1 = rows["Term 1 complete (cg/hvp_term1)"]
    assert t1.status == "INCOMPLETE" and "1 of 2 frames done (first missing: frame 1)" in t1.detail
    assert main(["data", "validate", str(path), "--deep", "-q"]) == 0  # reported, not a failure
    assert "INCOMPLETE" in capsys.readouterr().out
