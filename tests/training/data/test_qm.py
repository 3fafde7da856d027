"""The atomistic QM dataset file: writer, reader, validator, PyANI import, unit conversions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hessid import units
from hessid.training.data import qm
from hessid.training.data.schema import DatasetError, DatasetNotFoundError, NotADatasetError

WATER = np.array([8, 1, 1])


def _random_set(t=4, n=3, seed=0):
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(t, n, 3))
    energies = rng.normal(size=t)
    forces = rng.normal(size=(t, n, 3))
    a = rng.normal(size=(t, 3 * n, 3 * n))
    hessians = a + a.transpose(0, 2, 1)
    return coords, energies, forces, hessians


def test_write_then_read_round_trip_is_exact(tmp_path):
    coords, e, f, h = _random_set()
    path = qm.write_qm_dataset(tmp_path / "w" / "w.h5", WATER, coords, e, f, h, subset=[0, 0, 1, 1],
                               attrs={"method": "test", "sampling": {"T": 300}})
    ds = qm.open_qm_dataset("w", root=tmp_path)
    assert ds.path == path and ds.n_atoms == 3 and ds.n_structures == 4 and ds.has_hessians
    np.testing.assert_array_equal(ds.coordinates, coords)
    np.testing.assert_array_equal(ds.energies, e)
    np.testing.assert_array_equal(ds.forces, f)
    np.testing.assert_array_equal(ds.hessians, h)
    np.testing.assert_array_equal(ds.species, WATER)
    assert ds.species.dtype == np.int64 and ds.structure_id.dtype == np.int64 and ds.subset.dtype == np.int8
    assert ds.done.all() and not ds.failed.any()
    assert ds.attrs["kind"] == qm.KIND and ds.attrs["sampling"] == {"T": 300}
    assert ds.attrs["units"][qm.HESSIANS] == "kcal/mol/angstrom**2"
    assert ds.select(ds.subset == 1).n_structures == 2


def test_pending_structures_are_nan_and_failures_are_recorded(tmp_path):
    coords, e, f, h = _random_set()
    path = qm.create_qm_dataset(tmp_path / "p.h5", WATER, coords)
    qm.write_qm_results(path, [2, 0], e[[2, 0]], f[[2, 0]], h[[2, 0]])
    qm.record_qm_failures(path, [3], ["SCF did not converge\n in 100 cycles"])
    ds = qm.open_qm_dataset(path)
    np.testing.assert_array_equal(ds.done, [True, False, True, False])
    np.testing.assert_array_equal(ds.failed, [False, False, False, True])
    assert ds.error[3] == "SCF did not converge in 100 cycles"
    assert np.isnan(ds.energies[1]) and np.isnan(ds.hessians[3]).all()
    np.testing.assert_array_equal(ds.hessians[2], h[2])
    summary = qm.validate_qm_dataset(path)
    assert (summary["n_done"], summary["n_failed"], summary["n_pending"]) == (2, 1, 1)
    assert ds.completed().n_structures == 2


def test_asymmetric_hessian_is_refused_and_symmetric_one_passes(tmp_path):
    coords, e, f, h = _random_set(t=2)
    good = qm.write_qm_dataset(tmp_path / "g.h5", WATER, coords, e, f, h)
    assert qm.validate_qm_dataset(good)["n_done"] == 2  # control: symmetric passes
    with h5py.File(good, "r+") as h5:
        h5[qm.HESSIANS][1, 0, 1] += 1.0
    with pytest.raises(DatasetError, match=r"g\.h5: dataset 'hessians', frame 1: not symmetric"):
        qm.validate_qm_dataset(good)


def test_write_of_bad_values_leaves_nothing_behind(tmp_path):
    coords, e, f, h = _random_set(t=2)
    e[1] = np.nan
    with pytest.raises(DatasetError, match="frame 1: non-finite"):
        qm.write_qm_dataset(tmp_path / "bad" / "bad.h5", WATER, coords, e, f, h)
    assert not (tmp_path / "bad").exists()


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        qm.open_qm_dataset("nope", root=tmp_path)
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as h5:
        h5["coordinates"] = np.zeros((1, 1, 3))
    with pytest.raises(NotADatasetError, match="o.h5.*not an atomistic QM dataset"):
        qm.open_qm_dataset(other)


@pytest.mark.parametrize(("to_kcal", "back", "factor"), [
    (units.energy_hartree_to_kcal, units.energy_kcal_to_hartree, 627.509474),
    (units.force_hartree_bohr_to_kcal_angstrom, units.force_kcal_angstrom_to_hartree_bohr, 1185.82105),
    (units.hessian_hartree_bohr2_to_kcal_angstrom2, units.hessian_kcal_angstrom2_to_hartree_bohr2, 2240.87701),
    (units.length_bohr_to_angstrom, units.length_angstrom_to_bohr, 0.529177211),
])  # fmt: skip
def test_atomic_unit_conversions_round_trip_and_match_codata(to_kcal, back, factor):
    x = np.array([1.0, -2.5, 3e-3])
    np.testing.assert_allclose(back(to_kcal(x)), x, rtol=1e-15)
    np.testing.assert_allclose(to_kcal(1.0), factor, rtol=1e-8)  # CODATA 2018 to the digits quoted


def test_importer_unit_strings():
    assert qm.unit_factor("hartree/bohr", 1) == pytest.approx(units.force_hartree_bohr_to_kcal_angstrom(1.0))
    assert qm.unit_factor("Hartree/Bohr**2", 2) == pytest.approx(units.hessian_hartree_bohr2_to_kcal_angstrom2(1.0))
    assert qm.unit_factor("kcal/mol/angstrom", 1) == 1.0
    with pytest.raises(ValueError, match="unknown length unit"):
        qm.unit_factor("hartree/parsec", 1)
    with pytest.raises(ValueError, match="expected ENERGY/LENGTH\\*\\*2"):
        qm.unit_factor("hartree/bohr", 2)


def _write_pyani(path, groups, hessian_shape="flat"):
    """A small file in the PyANI/hippynn layout: /<top>/<mol>/{species, coordinates, ...}."""
    with h5py.File(path, "w") as h5:
        for gname, (sym, coords, e, f, h) in groups.items():
            g = h5.create_group(gname)
            g["species"] = np.array([s.encode() for s in sym])
            g["coordinates"] = coords.astype(np.float32)  # PyANI files are often float32
            g["energies"] = e
            g["forces"] = f
            if h is not None:
                n = len(sym)
                g["hessian"] = h if hessian_shape == "flat" else h.reshape(-1, n, 3, n, 3)


def test_pyani_import_round_trip_converts_units(tmp_path):
    coords, e, f, h = _random_set(t=3)
    coords = coords.astype(np.float32).astype(np.float64)
    src = tmp_path / "src.h5"
    _write_pyani(src, {"data/mol0": (["O", "H", "H"], coords[:2], e[:2], f[:2], h[:2]),
                       "data/mol1": (["O", "H", "H"], coords[2:], e[2:], f[2:], h[2:])},
                 hessian_shape="5d")  # fmt: skip
    out = qm.import_pyani(src, "imp", root=tmp_path, hessian_unit="hartree/bohr**2")
    ds = qm.open_qm_dataset(out)
    np.testing.assert_array_equal(ds.species, WATER)
    np.testing.assert_array_equal(ds.coordinates, coords)
    np.testing.assert_allclose(ds.energies, e * units.HARTREE_KCAL_PER_MOL, rtol=1e-15)
    np.testing.assert_allclose(ds.forces, f * units.HARTREE_KCAL_PER_MOL, rtol=1e-15)
    np.testing.assert_allclose(ds.hessians, units.hessian_hartree_bohr2_to_kcal_angstrom2(h), rtol=1e-14)
    assert ds.attrs["source"]["hessian_unit"] == "hartree/bohr**2"
    assert ds.attrs["source"]["groups"] == ["/data/mol0", "/data/mol1"]


def test_pyani_import_refuses_mixed_molecules_and_bad_elements(tmp_path):
    coords, e, f, h = _random_set(t=1)
    src = tmp_path / "mixed.h5"
    _write_pyani(src, {"a": (["O", "H", "H"], coords, e, f, h), "b": (["C", "H", "H"], coords, e, f, h)})
    with pytest.raises(ValueError, match="different molecules.*--group"):
        qm.import_pyani(src, "m", root=tmp_path)
    out = qm.import_pyani(src, "m", root=tmp_path, group="b")
    np.testing.assert_array_equal(qm.open_qm_dataset(out).species, [6, 1, 1])
    bad = tmp_path / "bad.h5"
    _write_pyani(bad, {"a": (["O", "Xx", "H"], coords, e, f, None)})
    with pytest.raises(ValueError, match="bad.h5: group /a, key 'species': unknown element symbol 'Xx'"):
        qm.import_pyani(bad, "b", root=tmp_path)
    assert not (tmp_path / "b").exists()
