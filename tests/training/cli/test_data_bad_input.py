"""Bad input to ``hessid data build|import|simulate|validate`` and ``hessid targets`` (issue 12,
items 3-5): every case gives one line naming the file or option, exit 2, no traceback, and
leaves every file as it was (nothing created, nothing changed) — one parametrised table.

The base folder (built once per module, then copied per case) holds an AG dipeptide structure
``ag/ag.pdb``, a 2-frame vacuum simulation of it ``ag/ag.h5`` (HBond constraints, stride 10)
with the constraint-aware Cα map and Term 1 (k = 2), and small input files for the imports.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hessid.cli import main
from hessid.training.data.aa_md import MDConfig, simulate
from hessid.training.data.reader import load_dataset
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import compute_targets

#: the source simulation's temperature and constraints (required at import)
PHYS = ["--temperature", "300", "--constraints", "HBonds"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    pdb = build_structure("ag", sequence="AG", out_dir=root)
    simulate("ag", MDConfig(steps=20, stride=10, solvent="vacuum", platform="CPU", threads=1,
                            chunk_frames=2, minimize=False), root=root, progress=False)  # fmt: skip
    compute_targets(root / "ag" / "ag.h5", n_probes=2, workers=0, platform="Reference", progress=False)
    text = pdb.read_text()
    atoms = [ln for ln in text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    (root / "empty.pdb").write_text("")
    (root / "garbage.pdb").write_text("this is not\na PDB file at all\n")
    qq = atoms[4][:76] + "QQ" + atoms[4][78:]  # an atom whose element is QQ
    (root / "qq.pdb").write_text("\n".join([*atoms[:4], qq, *atoms[5:], "END"]) + "\n")
    ligand = "HETATM 9001  C1  LIG L   1       9.000   9.000   9.000  1.00  0.00           C"
    (root / "ligand.pdb").write_text("\n".join([*atoms, ligand, "END"]) + "\n")
    ds = load_dataset(root / "ag" / "ag.h5")
    np.save(root / "x.npy", ds.coordinates)  # (T, N, 3) Å
    np.save(root / "f.npy", ds.forces)  # kcal/mol/Å
    (root / "top.pdb").write_text(ds.topology_pdb)
    return root


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path → digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def _without_constraints(root: Path) -> None:
    with h5py.File(root / "ag" / "ag.h5", "r+") as h5:
        del h5.attrs["constraints"]


def _plain_projector(root: Path) -> None:
    assert main(["data", "map", str(root / "ag"), "--overwrite", "--no-constraint-aware", "-q"]) == 0
    with h5py.File(root / "ag" / "ag.h5", "r+") as h5:  # the map dropped the targets; keep none
        assert "hvp_term1" not in h5["cg"]


IMPORT = ["data", "import", "x.npy", "--forces", "f.npy", "--topology", "top.pdb", "--length-unit",
          "angstrom", "--force-unit", "kcal/mol/angstrom"]  # fmt: skip

#: (id, argv, expected fragment of the one-line message, preparation of the base copy)
CASES = [
    ("build-empty-pdb", ["data", "build", "--name", "e", "--pdb", "empty.pdb"],
     "empty.pdb: not a readable PDB file", None),
    ("build-garbage-pdb", ["data", "build", "--name", "g", "--pdb", "garbage.pdb"],
     "garbage.pdb: not a readable PDB file", None),
    ("build-missing-pdb", ["data", "build", "--name", "m", "--pdb", "nothere.pdb"],
     "nothere.pdb: no such structure file", None),
    ("build-unknown-element", ["data", "build", "--name", "q", "--pdb", "qq.pdb"],
     "has element 'QQ', which is not an element symbol", None),
    ("build-ligand", ["data", "build", "--name", "l", "--pdb", "ligand.pdb"],
     "residues without an amber14 template (ligands or unknown residues): LIG 1", None),
    ("build-existing-name", ["data", "build", "--name", "ag", "--sequence", "AG"],
     "ag.pdb: exists (use --overwrite", None),
    ("build-name-escapes", ["data", "build", "--name", "../escape", "--sequence", "AG"],
     "--name='../escape': a dataset name is one folder name", None),
    ("build-name-absolute", ["data", "build", "--name", "/tmp/abs", "--sequence", "AG"],
     "a dataset name is one folder name", None),
    ("build-ph", ["data", "build", "--name", "p", "--sequence", "AG", "--ph", "20"],
     "--ph=20.0: expected a pH in [0, 14]", None),
    ("build-bad-sequence", ["data", "build", "--name", "s", "--sequence", "AXZ"],
     "not one-letter codes", None),
    ("import-no-temperature", [*IMPORT, "--name", "i", "--constraints", "HBonds"],
     "--temperature is required", None),
    ("import-no-constraints", [*IMPORT, "--name", "i", "--temperature", "300"],
     "--constraints is required", None),
    ("import-bad-constraints", [*IMPORT, "--name", "i", "--temperature", "300", "--constraints", "AllBonds"],
     "--constraints='AllBonds': expected HBonds or none", None),
    ("import-temperature-range", [*IMPORT, "--name", "i", "--temperature", "-4", "--constraints", "none"],
     "--temperature=-4.0: expected K in [1, 1000]", None),
    ("import-name-escapes", [*IMPORT, "--name", "../escape", *PHYS],
     "a dataset name is one folder name", None),
    ("import-existing-name", [*IMPORT, "--name", "ag", *PHYS], "ag.h5: exists (use --overwrite", None),
    ("import-missing-source", ["data", "import", "nothere.npy", "--name", "i", "--forces", "f.npy",
                               "--topology", "top.pdb", *PHYS], "nothere.npy: no such source file", None),
    ("import-no-unit", ["data", "import", "x.npy", "--name", "i", "--forces", "f.npy", "--topology",
                        "top.pdb", "--force-unit", "kcal/mol/angstrom", *PHYS],
     "missing units: length unit not given", None),
    ("import-wrong-atoms", ["data", "import", "f.npy", "--name", "i", "--forces", "f.npy", "--topology",
                            "ligand.pdb", "--length-unit", "nm", "--force-unit", "kj/mol/nm", *PHYS],
     "atoms but the topology has", None),
    ("targets-epsilon-angstrom", ["targets", "ag", "--epsilon", "5", "--overwrite", "--workers", "0"],
     "--epsilon=5.0: expected nm in [1e-07, 0.01]", None),
    ("targets-epsilon-zero", ["targets", "ag", "--epsilon", "0", "--overwrite", "--workers", "0"],
     "--epsilon=0.0: expected nm", None),
    ("targets-probes-disk", ["targets", "ag", "--probes", "100000", "--overwrite", "--workers", "0"],
     "--probes=100000: cg/hvp_term1 would take 0.0096 GB (2 frames × 100000 probes × 2 beads × 3 float64) "
     "but ", "small_disk"),
    ("targets-probes-chunk", ["targets", "ag", "--probes", "1000000000", "--overwrite", "--workers", "0"],
     "above HDF5's 4 GiB chunk limit", None),
    ("targets-probes-zero", ["targets", "ag", "--probes", "0", "--overwrite"],
     "--probes=0: expected at least 1", None),
    ("targets-workers", ["targets", "ag", "--workers", "-1", "--overwrite"],
     "--workers=-1: expected 0", None),
    ("targets-chunk-frames", ["targets", "ag", "--chunk-frames", "0", "--overwrite"],
     "--chunk-frames=0: expected at least 1", None),
    ("targets-resume-changed-k", ["targets", "ag", "--resume", "--probes", "3", "--workers", "0",
                                  "--platform", "Reference"],
     "--resume with n_probes=3 but the stored run used 2", None),
    ("targets-exists", ["targets", "ag", "--workers", "0", "--platform", "Reference"],
     "dataset 'cg/hvp_term1' exists (use --resume or --overwrite)", None),
    ("targets-missing-dataset", ["targets", "nothere"], "nothere.h5: no such dataset file", None),
    ("targets-no-constraints-attribute", ["targets", "ag", "--overwrite", "--workers", "0",
                                          "--platform", "Reference"],
     "no 'constraints' attribute", _without_constraints),
    ("targets-projector-vs-system", ["targets", "ag", "--workers", "0", "--platform", "Reference"],
     "the projector handles constraints as 'none'", _plain_projector),
    ("targets-constraints-override", ["targets", "ag", "--overwrite", "--constraints", "none", "--workers", "0",
                                      "--platform", "Reference"],
     "the data were simulated with constraints='HBonds' but the Term-1 System would use constraints='none'", None),
    ("simulate-resume-stride", ["data", "simulate", "ag", "--resume", "--stride", "50", "--steps", "40",
                                "--platform", "CPU", "--threads", "1", "--no-progress"],
     "--resume with stride=50 but the stored run used 10", None),
    ("simulate-resume-temperature", ["data", "simulate", "ag", "--resume", "--temperature", "350",
                                     "--steps", "40", "--no-progress"],
     "--resume with temperature=350.0 but the file holds 300 K", None),
    ("simulate-exists", ["data", "simulate", "ag", "--steps", "40", "--no-progress"],
     "ag.h5: exists (use --overwrite", None),
    ("simulate-seed-zero", ["data", "simulate", "ag", "--overwrite", "--seed", "0", "--no-progress"],
     "--seed=0: expected an integer in [1, 2147483647] (OpenMM reads 0 as 'random')", None),
    ("simulate-steps", ["data", "simulate", "ag", "--overwrite", "--steps", "-5", "--no-progress"],
     "--steps=-5: expected an integer >= 0", None),
    ("simulate-chunk-frames", ["data", "simulate", "ag", "--overwrite", "--chunk-frames", "0"],
     "--chunk-frames=0: expected an integer >= 1", None),
    ("simulate-timestep", ["data", "simulate", "ag", "--overwrite", "--timestep", "200"],
     "--timestep=200.0: expected a value in [0.01, 5] fs", None),
    ("simulate-no-structure", ["data", "simulate", "nothere", "--steps", "20", "--no-progress"],
     "nothere.pdb: no structure (run `hessid data build` first)", None),
    ("validate-missing", ["data", "validate", "nothere"], "nothere.h5: no such dataset file", None),
    ("validate-not-hdf5", ["data", "validate", "garbage.pdb.h5"], "not a readable HDF5 file",
     lambda root: (root / "garbage.pdb.h5").write_text("no")),
]


@pytest.mark.parametrize(("argv", "fragment", "prepare"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_every_file_as_it_was(argv, fragment, prepare, base,
                                                                        tmp_path, monkeypatch, capsys):
    root = tmp_path / "w"
    shutil.copytree(base, root)
    if prepare == "small_disk":  # 1 MB free
        monkeypatch.setattr("hessid.training.data.targets.free_disk_bytes", lambda folder: 10**6)
    elif prepare is not None:
        prepare(root)
    monkeypatch.chdir(root)
    before = _tree(tmp_path)
    capsys.readouterr()
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert "Traceback" not in err and "np.int64" not in err and "np.float64" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before, "a refused command created or changed a file"
    assert not (tmp_path / "escape").exists()


def test_a_verbose_refusal_adds_the_traceback(base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(base)
    assert main(["data", "build", "--name", "e", "--pdb", "empty.pdb", "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err
