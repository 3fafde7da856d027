"""`hessid data map --projector optimal` end to end: Q* fitted on held-out frames with the HBond
rigid groups, its provenance on cg/, one Q* shared through --projector-from / --fit-dataset,
Term-1 targets recomputed with its lift and stale targets refused, and one-line exit-2 errors."""

from __future__ import annotations

import json
import random
import shutil

import h5py
import numpy as np
import pytest

from hessid.cli import main
from hessid.maps import LinearMap, check_projector
from hessid.optimal_projector import rigid_group_labels
from hessid.training.data import cg_map, reader
from hessid.training.data import io as data
from hessid.training.data.aa_md import MDConfig, simulate
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import compute_targets

CPU1 = dict(platform="CPU", threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """AAA tripeptide (HBond constraints), 12 frames split into two 'runs' a (0–5) and b (6–11)."""
    root = tmp_path_factory.mktemp("qstar")
    random.seed(0)  # OpenMM places hydrogens with the global RNGs: a fixed geometry
    np.random.seed(0)  # noqa: NPY002
    build_structure("aaa", sequence="AAA", out_dir=root)
    cfg = MDConfig(steps=120, stride=10, platform="CPU", threads=1, chunk_frames=6, seed=2)
    src = simulate("aaa", cfg, root=root, progress=False)
    a = data.copy_frames([(src, np.arange(6))], root / "a" / "a.h5")
    b = data.copy_frames([(src, np.arange(6, 12))], root / "b" / "b.h5")
    return root, src, a, b


def _copy(path, tmp_path, name):
    out = tmp_path / name / f"{name}.h5"
    out.parent.mkdir()
    shutil.copy(path, out)
    return out


def _cg_attrs(path) -> dict:
    with h5py.File(path) as h5:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5["cg"].attrs.items()}
    attrs["projector_provenance"] = json.loads(attrs["projector_provenance"])
    return attrs


def test_optimal_projector_is_feasible_rigid_on_hbond_groups_and_recorded(runs, tmp_path, caplog):
    _, src, _, _ = runs
    path = _copy(src, tmp_path, "x")
    cg = cg_map.write_cg(path, projector="optimal", optimal=cg_map.OptimalFit(neighbours=1))
    ds = reader.load_dataset(path)
    S, Q = cg.weights, cg.projector
    assert check_projector(S, Q) <= 1e-10
    labels = rigid_group_labels(S.shape[1], constrained_pairs=cg_map.hbond_pairs(ds.topology))
    for g in np.flatnonzero(np.bincount(labels) > 1):  # the lift moves every X–H group rigidly
        cols = Q[:, labels == g]
        assert np.array_equal(cols, np.repeat(cols[:, :1], cols.shape[1], axis=1))
    np.testing.assert_allclose(cg.forces, np.einsum("nN,tNc->tnc", Q, ds.forces), rtol=1e-12, atol=1e-12)
    a = _cg_attrs(path)
    prov = a["projector_provenance"]
    assert a["projector_kind"] == "optimal" and a["projector_constraints"] == "HBonds"
    assert a["projector_sha256"] == prov["projector_sha256"] == cg_map.projector_sha256(Q)
    # default fit frames: the last 20 % of the mapped dataset (12 frames → 3)
    assert prov["fit_frames"] == "9:12:1" and prov["fit_n_frames"] == 3 and prov["fit_frames_default"]
    assert prov["fit_dataset"] == str(path.resolve()) and prov["neighbours"] == 1
    with h5py.File(path) as h5:
        assert prov["fit_forcefield_hash"] == h5.attrs["forcefield_hash"]
    assert prov["rigid_groups"] == "HBonds" and prov["n_rigid_groups"] > 0 and prov["ridge"] == 1e-8
    assert prov["reference_kind"] == "constraint-aware" and prov["objective_mapped"]["n_frames"] == 12
    # 3 frames × 3 components for > 1 free coefficient per sample: the fit warns it will overfit
    assert prov["fit_samples_per_coefficient"] < cg_map.MIN_SAMPLES_PER_COEFFICIENT
    assert "will fit their noise" in caplog.text


def test_recorded_objectives_are_e_qf2_of_the_fit_frames_and_q_star_minimises_it(runs, tmp_path):
    _, src, _, _ = runs
    path = _copy(src, tmp_path, "w")
    q, prov = cg_map.fit_optimal_projector(path, "all", 0)  # 12 frames, residue-only rows
    ds = reader.load_dataset(path)
    ref = cg_map.write_cg(path).projector  # the constraint-aware reference

    def e_qf2(m):  # (1/T) Σ_t ‖Q f_t‖², (kcal/mol/Å)²
        return float(np.mean(np.sum(np.einsum("nN,tNc->tnc", m, ds.forces) ** 2, axis=(1, 2))))

    scale = prov["objective_reference"]  # rounding of sums of ~1e4-sized terms: 1e-12 relative
    assert prov["objective_reference"] == pytest.approx(e_qf2(ref), rel=1e-12)
    assert prov["objective_optimal"] == pytest.approx(e_qf2(q), abs=1e-10 * scale)
    assert sum(prov["objective_optimal_per_bead"]) == pytest.approx(prov["objective_optimal"], abs=1e-10 * scale)
    # the minimum over the feasible set (the optimality law itself: tests/core/test_optimal_projector.py)
    assert prov["objective_optimal"] < prov["objective_reference"]
    assert prov["fit_samples_per_coefficient"] == 36 / prov["max_free_coefficients_per_bead"]  # 12 frames × 3


def test_default_constraint_aware_map_is_unchanged_but_records_its_kind_and_hash(runs, tmp_path):
    _, src, _, _ = runs
    path = _copy(src, tmp_path, "y")
    cg = cg_map.write_cg(path)
    a = _cg_attrs(path)
    assert a["projector_kind"] == "constraint-aware" and a["projector_constraints"] == "HBonds"
    assert a["projector_sha256"] == cg_map.projector_sha256(cg.projector)
    plain = cg_map.write_cg(path, overwrite=True, constraint_aware=False)
    assert _cg_attrs(path)["projector_kind"] == "map"
    np.testing.assert_array_equal(plain.projector, plain.weights)


def test_fit_on_one_run_and_share_q_star_with_another(runs, tmp_path, monkeypatch):
    """The study's use: fit Q* on a held-out run (--fit-dataset), map other runs with the
    same Q* (bitwise), or copy it from a mapped file (--projector-from)."""
    root, _, a, b = runs
    monkeypatch.chdir(tmp_path)
    for name, path in (("a", a), ("b", b), ("c", b)):
        _copy(path, tmp_path, name)
    argv = ["data", "map", "a", "--projector", "optimal", "--fit-frames", "all", "--neighbours", "0"]
    assert main(argv) == 0
    qa = reader.load_cg("a").projector
    assert main(["data", "map", "b", "--projector", "optimal", "--fit-dataset", "a", "--neighbours", "0"]) == 0
    qb = reader.load_cg("b").projector
    assert qa.tobytes() == qb.tobytes()  # fitted on all frames of a, the default for a separate dataset
    pb = _cg_attrs("b/b.h5")["projector_provenance"]
    assert pb["fit_dataset"] == str((tmp_path / "a" / "a.h5").resolve()) and pb["fit_frames"] == "0:6:1"
    assert main(["data", "map", "c", "--projector-from", "a"]) == 0
    assert reader.load_cg("c").projector.tobytes() == qa.tobytes()
    pc = _cg_attrs("c/c.h5")
    assert pc["projector_kind"] == "optimal" and pc["projector_sha256"] == cg_map.projector_sha256(qa)
    assert pc["projector_provenance"]["copied_from"] == str((tmp_path / "a" / "a.h5").resolve())
    assert pc["projector_provenance"]["fit_n_frames"] == 6
    assert (tmp_path / "c" / "hessid-data-map.yaml").exists()


def test_projector_from_a_file_with_another_map_is_refused(runs, tmp_path, monkeypatch, capsys):
    _, src, _, _ = runs
    monkeypatch.chdir(tmp_path)
    other = _copy(src, tmp_path, "o")
    _copy(src, tmp_path, "p")
    top = reader.load_dataset(other).topology
    carbonyl = [a.index for a in top.atoms() if a.name == "C"]  # heavy atoms in no HBond group
    cg_map.write_cg(other, LinearMap.selection(carbonyl, top.getNumAtoms()), np.zeros(3, np.int64),
                    np.zeros((0, 2), np.int64), ["C"])  # fmt: skip
    assert main(["data", "map", "p", "--projector-from", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "o/o.h5: dataset 'cg/weights'" in err, err


def test_a_projector_that_breaks_a_rigid_group_or_q_s_is_refused(runs, tmp_path):
    _, src, _, _ = runs
    path = _copy(src, tmp_path, "z")
    ca = cg_map.write_cg(path)
    S = ca.weights
    with pytest.raises(data.DatasetError, match="rigid group"):
        cg_map.write_cg(path, overwrite=True, projector=S)  # the selection: HA not moved with CA
    with pytest.raises(data.DatasetError, match="Q Sᵀ = I"):
        cg_map.write_cg(path, overwrite=True, projector=1.01 * ca.projector)


BAD = [
    (["--projector", "optimal", "--fit-frames", "7:3"], "--fit-frames"),
    (["--projector", "optimal", "--fit-frames", "0,99"], "frame 99 is out of range"),
    (["--projector", "optimal", "--fit-frames", "x:"], "--fit-frames"),
    (["--projector", "optimal", "--neighbours", "-1"], "--neighbours"),
    (["--projector", "optimal", "--neighbours", "one"], "--neighbours"),
    (["--projector", "best"], "--projector='best'"),
    (["--fit-frames", "0:3"], "only with --projector optimal"),
    (["--projector-from", "a", "--neighbours", "1"], "--projector-from"),
    (["--projector", "optimal", "--fit-dataset", "missing"], "missing.h5"),
]


@pytest.mark.parametrize(("extra", "needle"), BAD)
def test_bad_map_options_exit_2_with_one_line_naming_the_argument(runs, tmp_path, monkeypatch, capsys,
                                                                  extra, needle):
    _, src, a, _ = runs
    monkeypatch.chdir(tmp_path)
    _copy(src, tmp_path, "d")
    _copy(a, tmp_path, "a")
    assert main(["data", "map", "d", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    if "--fit-frames" in needle or "out of range" in needle:
        assert "d/d.h5" in err  # names the file


def test_targets_after_remapping_with_q_star_use_its_lift_and_stale_targets_are_refused(runs, tmp_path):
    _, src, _, _ = runs
    path = _copy(src, tmp_path, "t")
    kw = dict(n_probes=1, workers=0, chunk_frames=4, progress=False, **CPU1)
    compute_targets(path, **kw)  # maps with the constraint-aware projector first
    cg_map.write_cg(path, overwrite=True, projector="optimal", optimal=cg_map.OptimalFit(neighbours=0))
    with reader.open_dataset(path) as ds:
        assert not ds.has_term1  # re-mapping dropped the targets of the old projector
    compute_targets(path, **kw)
    with h5py.File(path) as h5:
        assert h5["cg/hvp_term1"].attrs["projector_sha256"] == h5["cg"].attrs["projector_sha256"]
        assert h5["cg/hvp_term1_done"][()].all()
    # a projector changed under the stored targets: --resume refuses them
    with h5py.File(path, "r+") as h5:  # rigid groups still equal: only the hash tells
        h5["cg/projector"][...] = h5["cg/projector"][()] * (1.0 + 1e-9)
    with pytest.raises(data.DatasetError, match="projector_sha256"):
        compute_targets(path, resume=True, **kw)
