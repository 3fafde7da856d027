"""The dataset contract: schema constants, format version, and the typed reader open_dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hessid.probes import ProbeSpec, draw_probes
from hessid.training.data import schema as sc
from hessid.training.data.cg_map import write_cg
from hessid.training.data.io import copy_frames, validate_dataset, write_dataset
from hessid.training.data.reader import load_cg, load_dataset, open_dataset
from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.data.targets import load_probes

#: two alanines, backbone atoms only (N, CA, C): enough for the Cα map, no OpenMM run needed
PDB = """\
ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00           N
ATOM      2  CA  ALA A   1       1.458   0.000   0.000  1.00  0.00           C
ATOM      3  C   ALA A   1       2.009   1.420   0.000  1.00  0.00           C
ATOM      4  N   ALA A   2       3.332   1.536   0.000  1.00  0.00           N
ATOM      5  CA  ALA A   2       3.970   2.845   0.000  1.00  0.00           C
ATOM      6  C   ALA A   2       5.486   2.691   0.000  1.00  0.00           C
END
"""
T, N = 5, 6


def _aa_file(path, **kw):
    rng = np.random.default_rng(0)
    return write_dataset(path, PDB, rng.standard_normal((T, N, 3)), rng.standard_normal((T, N, 3)),
                         time=0.5 * np.arange(1, T + 1), potential_energy=rng.standard_normal(T),
                         attrs={"name": "toy", "temperature": 310.0}, **kw)


@pytest.fixture()
def aa_file(tmp_path):
    return _aa_file(tmp_path / "toy" / "toy.h5")


# ----------------------------------------------------------------------------- format version


def test_new_files_carry_the_format_version_and_files_without_it_read_as_version_1(aa_file):
    with h5py.File(aa_file, "r") as h5:
        # 2: per-dataset probe key; 3: per-frame temperature (multi-temperature files)
        assert int(h5.attrs["format_version"]) == sc.FORMAT_VERSION == 3
    with open_dataset(aa_file) as ds:
        assert ds.format_version == 3
    with h5py.File(aa_file, "r+") as h5:  # a file written before the attribute existed
        del h5.attrs["format_version"]
    assert validate_dataset(aa_file)["n_frames"] == T
    with open_dataset(aa_file) as ds:
        assert ds.format_version == 1
        assert ds.coordinates().shape == (T, N, 3)


def test_a_newer_format_version_is_refused_naming_file_and_version(aa_file):
    with h5py.File(aa_file, "r+") as h5:
        h5.attrs["format_version"] = 99
    with pytest.raises(sc.DatasetError, match=r"toy\.h5: format version 99 is not readable"):
        open_dataset(aa_file)
    with pytest.raises(sc.DatasetError, match="format version 99"):
        validate_dataset(aa_file)


# ----------------------------------------------------------------------------- schema


def test_written_files_match_the_schema_dtypes_and_units(aa_file):
    write_cg(aa_file)
    with h5py.File(aa_file, "r") as h5:
        for spec in sc.AA_ARRAYS + sc.CG_ARRAYS:
            if spec.key not in h5:
                assert not spec.required, spec.key
                continue
            ds = h5[spec.key]
            assert len(ds.shape) == len(spec.shape), spec.key
            if spec.dtype != "str":
                assert ds.dtype == np.dtype(spec.dtype), spec.key
            if spec.unit is not None and spec.key in (sc.COORDINATES, sc.FORCES, sc.CG_COORDINATES,
                                                      sc.CG_FORCES):
                assert ds.attrs[sc.ATTR_UNIT] == spec.unit, spec.key
        for attr, unit in sc.ROOT_UNITS.items():
            assert h5.attrs[attr] == unit
        assert all(key in h5 for key in sc.AA_REQUIRED)


# ----------------------------------------------------------------------------- reader


def test_open_dataset_accepts_a_name_a_folder_or_a_path(aa_file):
    root = aa_file.parent.parent
    for arg, kw in (("toy", {"root": root}), (aa_file.parent, {}), (aa_file, {}), (str(aa_file), {})):
        with open_dataset(arg, **kw) as ds:
            assert ds.path == aa_file and ds.name == "toy"


def test_reader_serves_aa_arrays_attributes_and_frame_selections(aa_file):
    ref = load_dataset(aa_file)
    with open_dataset(aa_file, validate=True) as ds:
        assert ds.n_frames == T and ds.n_atoms == N and ds.temperature == 310.0
        assert ds.topology_text == PDB and ds.topology().getNumAtoms() == N
        assert ds.constraints is None and ds.forcefield_hash is None
        np.testing.assert_array_equal(ds.coordinates(), ref.coordinates)
        np.testing.assert_array_equal(ds.forces(), ref.forces)
        np.testing.assert_array_equal(ds.time(), ref.time)
        np.testing.assert_array_equal(ds.potential_energy(), ref.potential_energy)
        assert ds.frame_id().dtype == np.int64 and ds.box() is None
        np.testing.assert_array_equal(ds.coordinates([3, 1, 1, -1]), ref.coordinates[[3, 1, 1, -1]])
        np.testing.assert_array_equal(ds.forces(slice(1, 3)), ref.forces[1:3])
        mask = np.array([True, False, True, False, False])
        np.testing.assert_array_equal(ds.time(mask), ref.time[mask])
        assert ds.coordinates([]).shape == (0, N, 3)
        np.testing.assert_array_equal(ds.coordinates(2), ref.coordinates[2])
        assert ds.attrs["name"] == "toy" and ds.attr("missing", 7) == 7
    with pytest.raises(sc.DatasetError, match=r"toy\.h5: the dataset is closed"):
        ds.coordinates()  # closed with the context


def test_reader_serves_the_cg_group(aa_file):
    cg = write_cg(aa_file)
    with open_dataset(aa_file) as ds:
        g = ds.cg
        assert g.n_beads == 2 and g.n_frames == T
        np.testing.assert_array_equal(g.weights, cg.weights)
        np.testing.assert_array_equal(g.projector, cg.projector)
        np.testing.assert_array_equal(g.coordinates(), cg.coordinates)
        np.testing.assert_array_equal(g.forces([4, 0]), cg.forces[[4, 0]])
        np.testing.assert_array_equal(g.bead_types, [0, 0])
        np.testing.assert_array_equal(g.bonds, [[0, 1]])
        assert g.vocabulary[0] == "ALA" and g.residue_names == ["ALA", "ALA"]
        assert g.map_kind == "ca" and g.projector_constraints == "none"
        np.testing.assert_array_equal(g.linear_map().weights.numpy(), cg.weights)


def test_reader_exposes_term1_with_its_probe_spec_and_regenerated_probes(tmp_path):
    path = write_synthetic_dataset(tmp_path / "s.h5", n_beads=4, n_frames=6, probe_kind="rademacher",
                                   n_probes=3, probe_seed=11, frame_id_offset=100, full_block=True)
    with open_dataset(path) as ds:
        t1 = ds.term1
        assert t1.probe_spec == ProbeSpec("rademacher", 11, 3) and t1.n_probes == 3
        assert t1.done().all() and t1.done([0, 2]).shape == (2,)
        probes = t1.probes()
        want = draw_probes("rademacher", 11, np.arange(100, 106), 3, 12).numpy().reshape(6, 3, 4, 3)
        np.testing.assert_array_equal(probes, want)
        np.testing.assert_array_equal(t1.probes([5, 0]), want[[5, 0]])
        assert t1.values().shape == (6, 3, 4, 3)
        # Term 1 = block · v for the exact synthetic targets
        block = ds.hessian_block.values()
        np.testing.assert_allclose(np.einsum("tab,tkb->tka", block, want.reshape(6, 3, 12)),
                                   t1.values().reshape(6, 3, 12), rtol=1e-10, atol=1e-10)
        assert ds.hessian_block.done().all()
    np.testing.assert_array_equal(load_probes(path, [1, 3]), want[[1, 3]])
    assert load_cg(path).probe_spec() == ProbeSpec("rademacher", 11, 3)


def test_vocabulary_of_older_files_is_found_on_the_group_or_the_root(tmp_path):
    path = write_synthetic_dataset(tmp_path / "v.h5", n_beads=3, n_frames=2)
    with h5py.File(path, "r+") as h5:
        del h5["cg/bead_types"].attrs["bead_vocabulary"]
        h5["cg"].attrs["bead_vocabulary"] = '["X", "Y", "Z"]'
    with open_dataset(path) as ds:
        assert ds.cg.vocabulary == ["X", "Y", "Z"]
    with h5py.File(path, "r+") as h5:
        del h5["cg"].attrs["bead_vocabulary"]
    with open_dataset(path) as ds:
        assert ds.cg.vocabulary == [] and ds.cg.residue_names is None


# ----------------------------------------------------------------------------- errors


def test_missing_file_is_a_dataset_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(sc.DatasetNotFoundError, match=r"nope\.h5: no such dataset file") as info:
        open_dataset(tmp_path / "nope.h5")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match=r"ghost/ghost\.h5"):
        open_dataset("ghost", root=tmp_path)


def test_non_datasets_are_refused_in_one_line(tmp_path):
    text = tmp_path / "t.h5"
    text.write_text("not hdf5")
    with pytest.raises(sc.NotADatasetError, match=r"t\.h5: not a hessid dataset \(not a readable HDF5"):
        open_dataset(text)
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as h5:
        h5["something"] = np.zeros(3)
    with pytest.raises(sc.NotADatasetError, match=r"o\.h5: not a hessid dataset \(no 'coordinates'"):
        open_dataset(other)


def test_missing_parts_name_the_file_and_what_to_run(aa_file):
    with open_dataset(aa_file) as ds:
        assert not ds.has_cg and not ds.has_term1
        with pytest.raises(sc.NotMappedError, match=r"toy\.h5: dataset 'cg': missing: the dataset is not CG-mapped"):
            ds.cg  # noqa: B018
        with pytest.raises(sc.NotMappedError):
            ds.term1  # noqa: B018
        with pytest.raises(sc.DatasetError, match=r"dataset 'box': missing"):
            ds.read(sc.BOX)
    write_cg(aa_file)
    with open_dataset(aa_file) as ds:
        with pytest.raises(sc.NoTargetsError, match=r"toy\.h5: dataset 'cg/hvp_term1': missing: no Term-1 targets"):
            ds.term1  # noqa: B018
        with pytest.raises(sc.NoHessianBlockError, match=r"'cg/hessian_block': missing"):
            ds.hessian_block  # noqa: B018
    with pytest.raises(sc.NoTargetsError):
        load_probes(aa_file)


def test_term1_without_probe_attributes_names_them(tmp_path):
    path = write_synthetic_dataset(tmp_path / "p.h5", n_beads=3, n_frames=2)
    with h5py.File(path, "r+") as h5:
        del h5["cg/hvp_term1"].attrs["probe_seed"]
    with open_dataset(path) as ds, pytest.raises(sc.DatasetError, match=r"'cg/hvp_term1': .*probe_seed"):
        ds.term1.probe_spec  # noqa: B018


# ----------------------------------------------------------------------------- copy_frames


def test_copy_frames_concatenates_chosen_rows_and_keeps_the_map(tmp_path):
    a, b = _aa_file(tmp_path / "a.h5"), _aa_file(tmp_path / "b.h5")
    write_cg(a)
    write_cg(b)
    out = copy_frames([(a, np.array([0, 3])), (b, np.array([1]))], tmp_path / "pool" / "pool.h5",
                      frame_id=np.array([0, 3, 10_000_001]), time=np.array([0.5, 2.0, 9.0]),
                      extra_datasets={"draw_rank": np.array([2, 0, 1])}, extra_attrs={"pool_seed": 5})
    ref_a, ref_b = load_dataset(a), load_dataset(b)
    with open_dataset(out, validate=True) as ds:
        np.testing.assert_array_equal(ds.coordinates(), np.concatenate([ref_a.coordinates[[0, 3]],
                                                                        ref_b.coordinates[[1]]]))
        np.testing.assert_array_equal(ds.cg.forces()[2], ref_b.cg.forces[1])
        np.testing.assert_array_equal(ds.cg.weights, ref_a.cg.weights)
        np.testing.assert_array_equal(ds.frame_id(), [0, 3, 10_000_001])
        np.testing.assert_array_equal(ds.read("draw_rank"), [2, 0, 1])
        assert ds.attr("pool_seed") == 5 and ds.topology_text == PDB
