"""``hessid qm build`` / ``import`` / ``validate``: real GFN2-xTB data for water, resume
byte-identical, failures recorded, bad input → exit 2 with one line, import round trip."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hessid.cli import main
from hessid.training.data.qm import open_qm_dataset, validate_qm_dataset
from hessid.training.qm.build import DEFAULT_SEED, BuildInterrupted, build_qm_dataset
from hessid.training.qm.sampling import atomic_masses, vibrational_analysis

SMALL = {"configs": 6, "conformers": 2, "chunk": 2, "workers": 0}


def test_build_writes_real_gfn2_data_per_the_contract(tmp_path):
    res = build_qm_dataset("O", "water", root=tmp_path, **SMALL)
    assert (res.computed, res.failed, res.skipped) == (6, 0, 0)
    ds = open_qm_dataset("water", root=tmp_path)
    assert ds.path == tmp_path / "water" / "water.h5"
    np.testing.assert_array_equal(ds.species, [8, 1, 1])
    assert ds.done.all() and ds.has_hessians
    np.testing.assert_array_equal(ds.subset, [0, 0, 0, 0, 1, 1])  # round(0.25 · 6) = 2 far
    np.testing.assert_array_equal(ds.conformer, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.hessians, ds.hessians.transpose(0, 2, 1))
    assert ds.attrs["method"] == "gfn2-xtb" and ds.attrs["seed"] == DEFAULT_SEED
    assert ds.attrs["temperature_near"] == 300.0 and ds.attrs["temperature_far"] == 1000.0
    assert ds.attrs["versions"]["tblite"] and ds.attrs["convergence"]["fd_step_angstrom"] == 5e-4
    assert ds.attrs["hessian_method"] == "central_difference"
    # forces = −gradient: a small step along the forces lowers the energy (per structure)
    assert np.all(np.linalg.norm(ds.forces, axis=(1, 2)) > 0.1)
    # sampled structures sit above their minimum by about (3N−6)/2 kT on average
    assert (ds.energies > ds.minima.energies[ds.conformer]).all()
    va = vibrational_analysis(ds.minima.hessians[0], ds.minima.coordinates[0], atomic_masses(ds.species))
    assert va.n_modes == 3


def test_interrupted_then_resumed_build_is_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_qm_dataset("O", "water", root=a, **SMALL)
    with pytest.raises(BuildInterrupted):
        build_qm_dataset("O", "water", root=b, interrupt_after_chunks=1, **SMALL)
    partial = open_qm_dataset("water", root=b)
    assert partial.done.sum() == 2 and np.isnan(partial.energies[2:]).all()
    res = build_qm_dataset("O", "water", root=b, resume=True, **SMALL)
    assert (res.computed, res.skipped) == (4, 2)
    assert (a / "water" / "water.h5").read_bytes() == (b / "water" / "water.h5").read_bytes()
    again = build_qm_dataset("O", "water", root=b, resume=True, **SMALL)  # nothing left to do
    assert (again.computed, again.skipped) == (0, 6)


def test_resume_with_other_settings_is_refused(tmp_path):
    build_qm_dataset("O", "water", root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match=r"--resume with different settings \(temperature: file has 300.0, now 350.0\)"):
        build_qm_dataset("O", "water", root=tmp_path, resume=True, temperature=350.0, **SMALL)
    with pytest.raises(FileExistsError, match="--resume to continue"):
        build_qm_dataset("O", "water", root=tmp_path, **SMALL)


def test_scf_failures_are_recorded_not_dropped(tmp_path, capsys):
    """Labels with a 1-cycle SCF limit fail for every structure: recorded with the message,
    exit 1, validate reports them; --resume --retry-failed with a normal limit fixes them."""
    argv = ["qm", "build", "--smiles", "O", "--name", "w", "--configs", "3", "--conformers", "1",
            "--root", str(tmp_path), "--no-progress"]  # fmt: skip
    assert main([*argv, "--max-iter", "1"]) == 1
    err = capsys.readouterr().err
    assert "3 structure(s) failed" in err
    ds = open_qm_dataset("w", root=tmp_path)
    assert ds.failed.all() and not ds.done.any() and ds.n_structures == 3
    assert ds.error[0] == "GFN2-xTB: SCF not converged in 1 cycles"
    assert validate_qm_dataset(ds.path)["n_failed"] == 3
    assert main(["qm", "validate", "w", "--root", str(tmp_path), "--strict"]) == 1
    capsys.readouterr()
    # the SCF limit belongs to the labels' settings: changing it is a different build
    assert main([*argv, "--max-iter", "1", "--resume", "--retry-failed"]) == 1
    with h5py.File(ds.path, "r+") as h5:  # fixed by hand for the control: same settings, retry
        h5.attrs["sampling"] = h5.attrs["sampling"].replace('"max_iter": 1', '"max_iter": 250')
    assert main([*argv, "--resume", "--retry-failed"]) == 0
    ds = open_qm_dataset("w", root=tmp_path)
    assert ds.done.all() and not ds.failed.any() and ds.error == ("", "", "")


@pytest.mark.parametrize(("args", "message"), [
    (["--smiles", "C1CC", "--name", "x"], "--smiles 'C1CC': not a valid SMILES"),
    (["--smiles", "[U]", "--name", "x"], "element U (Z=92) is not supported by GFN2-xTB"),
    (["--smiles", "CI", "--name", "x", "--method", "dft"], "element I has no 6-31g(d) basis in PySCF"),
    (["--smiles", "O", "--name", "../x"], "--name='../x'"),
    (["--smiles", "O", "--name", "x", "--configs", "0"], "--configs=0"),
    (["--smiles", "O", "--name", "x", "--far-fraction", "2"], "--far-fraction=2"),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, capsys, args, message):
    code = main(["qm", "build", *args, "--configs", "2", "--root", str(tmp_path), "--no-progress"]
                if "--configs" not in args else ["qm", "build", *args, "--root", str(tmp_path)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def _write_pyani(path, n_structures=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_structures, 9, 9))
    with h5py.File(path, "w") as h5:
        g = h5.create_group("ds/water")
        g["species"] = np.array([b"O", b"H", b"H"])
        g["coordinates"] = rng.normal(size=(n_structures, 3, 3))
        g["energies"] = rng.normal(size=n_structures)
        g["forces"] = rng.normal(size=(n_structures, 3, 3))
        g["hessian"] = a + a.transpose(0, 2, 1)
    return a + a.transpose(0, 2, 1)


def test_cli_import_declares_units_and_round_trips(tmp_path, capsys):
    src = tmp_path / "ani.h5"
    h = _write_pyani(src)
    assert main(["qm", "import", str(src), "--name", "imp", "--root", str(tmp_path),
                 "--hessian-unit", "hartree/bohr**2"]) == 0  # fmt: skip
    ds = open_qm_dataset("imp", root=tmp_path)
    np.testing.assert_allclose(ds.hessians, h * 627.5094740631 / 0.529177210903**2, rtol=1e-13)
    assert ds.attrs["source"]["energy_unit"] == "hartree"
    assert main(["qm", "validate", "imp", "--root", str(tmp_path)]) == 0
    assert '"n_done": 3' in capsys.readouterr().out
    assert main(["qm", "import", str(src), "--name", "imp2", "--root", str(tmp_path),
                 "--force-unit", "hartree/parsec"]) == 2  # fmt: skip
    assert "unknown length unit 'parsec'" in capsys.readouterr().err
    assert not (tmp_path / "imp2").exists()


def test_validate_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["qm", "validate", "nope", "--root", str(tmp_path)]) == 2
    assert "no such dataset file" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_build_is_byte_identical_to_in_process(tmp_path):
    """Two spawn workers (the executor pattern of `hessid targets`) write the same file as the
    in-process run: results are committed in structure order, whatever finishes first."""
    build_qm_dataset("O", "water", root=tmp_path / "serial", **SMALL)
    res = build_qm_dataset("O", "water", root=tmp_path / "pool", **{**SMALL, "workers": 2, "threads": 1})
    assert res.workers == 2 and res.computed == 6
    assert (tmp_path / "serial/water/water.h5").read_bytes() == (tmp_path / "pool/water/water.h5").read_bytes()


def test_qm_build_offers_the_unified_flags_and_print_config_round_trips(tmp_path, capsys, monkeypatch):
    assert main(["qm", "build", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--smiles", "--name", "--method", "--configs", "--seed", "--temperature", "--resume",
                 "--overwrite", "--no-progress", "--config", "--print-config", "--workers", "-v"):
        assert flag in text, flag
    monkeypatch.chdir(tmp_path)
    argv = ["qm", "build", "--smiles", "CCO", "--name", "eth", "--configs", "5", "--method", "dft"]
    assert main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(printed)
    assert main(["qm", "build", "--config", "c.yaml", "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert list(tmp_path.iterdir()) == [tmp_path / "c.yaml"]


def test_dft_build_stores_analytic_hessians_with_provenance(tmp_path):
    """Tier 2 end to end on water at HF/STO-3G (the cheapest PySCF level; structures from
    GFN2-xTB): analytic Hessians, symmetric, method/basis/program recorded."""
    res = build_qm_dataset("O", "w", root=tmp_path, method="dft", xc="hf", basis="sto-3g", configs=2,
                           conformers=1, threads=1)  # fmt: skip
    assert res.computed == 2
    ds = open_qm_dataset("w", root=tmp_path)
    assert ds.attrs["method"] == "hf/sto-3g" and ds.attrs["basis"] == "sto-3g" and ds.attrs["program"] == "pyscf"
    assert ds.attrs["hessian_method"] == "analytic" and ds.attrs["minima_method"] == "gfn2-xtb"
    assert ds.attrs["versions"]["pyscf"] and ds.attrs["convergence"]["conv_tol_hartree"] == 1e-10
    np.testing.assert_array_equal(ds.hessians, ds.hessians.transpose(0, 2, 1))
    assert -47_100 < ds.energies.mean() < -47_000  # HF/STO-3G water ≈ −74.96 Hartree = −47 037 kcal/mol


@pytest.mark.slow
def test_dask_scheduler_build_is_byte_identical_to_in_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    build_qm_dataset("O", "water", root=tmp_path / "serial", **SMALL)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster:  # fmt: skip
        res = build_qm_dataset("O", "water", root=tmp_path / "dask", scheduler=cluster.scheduler_address, **SMALL)
    assert res.computed == 6 and res.workers == 1
    assert (tmp_path / "serial/water/water.h5").read_bytes() == (tmp_path / "dask/water/water.h5").read_bytes()
