"""Multi-temperature AA datasets (issue 14 item 3): ``hessid data simulate NAME --temperature T``
at several temperatures into one file, per-frame temperature and β, resume, old layouts,
validation and the refusal of a mixed file by single-temperature consumers."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from hessid.cli import main
from hessid.training.data import io as data
from hessid.training.data import reader
from hessid.training.data import schema as sc
from hessid.training.data.aa_md import (
    INTEGRATOR,
    MDConfig,
    SimulationInterrupted,
    segment_seed,
    simulate,
)
from hessid.training.data.cg_map import write_cg
from hessid.training.data.deep_check import deep_validate
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import compute_targets
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import load_protein, split_frames  # the training reader
from hessid.units import beta
from tests.training.data.crash import simulate_until_sigkill

#: vacuum AAA, 6 frames per segment in chunks of 3 (about 1 s per segment)
MD = dict(steps=60, stride=10, platform="CPU", threads=1, chunk_frames=3, solvent="vacuum", seed=3)
PER_FRAME = ("coordinates", "forces", "potential_energy", "time", "frame_id", "temperature")


def _copy_pdb(src_root, dst_root, name="aaa"):
    (dst_root / name).mkdir(parents=True, exist_ok=True)
    shutil.copy(src_root / "aaa" / "aaa.pdb", dst_root / name / f"{name}.pdb")


def _arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][()] for k in PER_FRAME if k in h5}


def _interrupt_350_segment(src_root, dst_root) -> None:
    """In ``dst_root``: the 300 K run of ``aaa``, then a 350 K segment interrupted after its first
    chunk (asserts it was)."""
    _copy_pdb(src_root, dst_root)
    simulate("aaa", MDConfig(**MD), root=dst_root, progress=False)
    with pytest.raises(SimulationInterrupted):
        simulate("aaa", MDConfig(**{**MD, "temperature": 350.0}), root=dst_root, progress=False,
                 interrupt_after_chunks=1)  # fmt: skip


@pytest.fixture(scope="module")
def two_temperatures(tmp_path_factory):
    """AAA in vacuum at 300 K (creates the file) then 350 K (appended), 6 + 6 frames."""
    root = tmp_path_factory.mktemp("mt")
    build_structure("aaa", sequence="AAA", out_dir=root)
    simulate("aaa", MDConfig(**MD), root=root, progress=False)
    path = simulate("aaa", MDConfig(**{**MD, "temperature": 350.0}), root=root, progress=False)
    return root, path


def test_a_second_temperature_appends_a_segment_with_per_frame_temperature_and_energy(two_temperatures):
    _, path = two_temperatures
    summary = data.validate_dataset(path)
    assert summary["n_frames"] == 12 and summary["frames_per_temperature"] == {"300 K": 6, "350 K": 6}
    with reader.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.temperatures(), [300.0] * 6 + [350.0] * 6)
        assert ds.temperature is None and ds.is_multi_temperature  # mixed: no single temperature
        assert ds.temperature_values == (300.0, 350.0)
        assert ds.format_version == sc.FORMAT_VERSION == 3
        np.testing.assert_array_equal(ds.frame_id(), np.arange(12))  # global, unique
        np.testing.assert_allclose(ds.time(), np.tile(np.arange(1, 7) * 0.02, 2))  # restarts per segment
        energy = ds.potential_energy()
        assert energy.dtype == np.float64 and energy.shape == (12,) and np.isfinite(energy).all()
        segs = ds.segments
        assert [s["temperature"] for s in segs] == [300.0, 350.0]
        assert [s["seed"] for s in segs] == [3, segment_seed(3, 350.0)]  # the creating one keeps --seed
        assert {s["integrator"] for s in segs} == {INTEGRATOR} == {"LangevinMiddleIntegrator"}
        assert [s["checkpoint"] for s in segs] == ["aaa.chk", "aaa.350K.chk"]
        assert all(s["md_config"]["seed"] == 3 for s in segs)  # the base seed
    with h5py.File(path, "r") as h5:
        assert "temperature" not in h5.attrs  # the root temperature is gone once two are held
        assert h5["temperature"].attrs["unit"] == "K" and h5["temperature"].dtype == np.float64
        assert h5["potential_energy"].attrs["unit"] == "kcal/mol"
    assert (path.parent / "aaa.350K.chk").exists()


def test_segment_seeds_are_deterministic_distinct_and_never_zero():
    seeds = {segment_seed(3, t) for t in (250.0, 300.0, 350.0, 350.0000001)}
    assert len(seeds) == 3 and 0 not in seeds  # 350 and 350 + 1e-7 are the same temperature
    assert segment_seed(3, 350.0) == segment_seed(3, 350.0) != segment_seed(4, 350.0)


def test_a_later_segment_is_the_single_temperature_run_with_its_derived_seed(two_temperatures, tmp_path):
    """The 350 K segment of the 300 → 350 file is bit-identical to a file created at 350 K with
    --seed segment_seed(3, 350): each segment starts from NAME.pdb, independent of the others."""
    root, path = two_temperatures
    _copy_pdb(root, tmp_path)
    alone = simulate("aaa", MDConfig(**{**MD, "temperature": 350.0, "seed": segment_seed(3, 350.0)}),
                     root=tmp_path, progress=False)  # fmt: skip
    mixed, single = _arrays(path), _arrays(alone)
    for key in ("coordinates", "forces", "potential_energy", "time"):
        np.testing.assert_array_equal(mixed[key][6:], single[key])


def test_an_interrupted_new_segment_resumes_bit_identically(two_temperatures, tmp_path):
    """Kill the 350 K segment after one chunk, leave a frame flushed after its checkpoint (a kill
    between commit and checkpoint), resume: every array equals the uninterrupted file's."""
    root, ref = two_temperatures
    _interrupt_350_segment(root, tmp_path)
    path = tmp_path / "aaa" / "aaa.h5"
    with h5py.File(path, "r+") as h5:
        assert h5["coordinates"].shape[0] == 9
        data.append_frames(h5, h5["coordinates"][-1:], h5["forces"][-1:], [99.0], [99],
                           h5["potential_energy"][-1:], temperature=350.0)  # fmt: skip
    with pytest.raises(FileExistsError, match="--resume"):  # a held temperature needs --resume
        simulate("aaa", MDConfig(**{**MD, "temperature": 350.0}), root=tmp_path, progress=False)
    simulate("aaa", MDConfig(**{**MD, "temperature": 350.0}), root=tmp_path, resume=True, progress=False)
    a, b = _arrays(ref), _arrays(path)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key])


@pytest.mark.parametrize(("point", "nth"), [("after_provenance", 1), ("after_flush", 2)])
def test_a_sigkill_while_adding_a_segment_leaves_a_file_that_completes_bit_identically(
        two_temperatures, tmp_path, point, nth):
    """A real SIGKILL (no ``finally``) while the 350 K segment is added: inside the guarded write of
    its record (the file is rolled back to the 300 K file: the same command adds the segment), or
    after its 2nd chunk reached the file but before its checkpoint (``--resume`` cuts the extra
    frames). Either way the finished file equals the uninterrupted one."""
    root, ref = two_temperatures
    _copy_pdb(root, tmp_path)
    simulate("aaa", MDConfig(**MD), root=tmp_path, progress=False)
    md350 = {**MD, "temperature": 350.0}
    simulate_until_sigkill(point, nth, md350, tmp_path)
    path = tmp_path / "aaa" / "aaa.h5"
    assert data.backup_path(path).exists()  # both points lie inside a guarded write
    simulate("aaa", MDConfig(**md350), root=tmp_path, resume=point == "after_flush", progress=False)
    a, b = _arrays(ref), _arrays(path)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key])
    with reader.open_dataset(path) as ds:
        assert [s["temperature"] for s in ds.segments] == [300.0, 350.0]


def test_resume_without_a_temperature_continues_the_segment_of_the_last_frame(two_temperatures, tmp_path):
    root, ref = two_temperatures
    _interrupt_350_segment(root, tmp_path)
    simulate("aaa", None, root=tmp_path, resume=True, progress=False)  # config=None: the stored settings
    np.testing.assert_array_equal(_arrays(tmp_path / "aaa" / "aaa.h5")["coordinates"], _arrays(ref)["coordinates"])


def test_extending_an_earlier_segment_appends_its_frames_and_continues_its_trajectory(two_temperatures, tmp_path):
    """--resume --temperature 300 --steps 90 after the 350 K segment: 3 more 300 K frames at the
    end of the file (ids 12–14, time continuing), and the 300 K frames equal a single 300 K run
    of 90 steps bit for bit."""
    root, ref = two_temperatures
    _copy_pdb(root, tmp_path)
    shutil.copy(ref, tmp_path / "aaa" / "aaa.h5")
    for chk in ("aaa.chk", "aaa.350K.chk"):
        shutil.copy(ref.parent / chk, tmp_path / "aaa" / chk)
    path = simulate("aaa", MDConfig(**{**MD, "steps": 90}), root=tmp_path, resume=True, progress=False)
    other = tmp_path / "single"
    _copy_pdb(root, other)
    single = _arrays(simulate("aaa", MDConfig(**{**MD, "steps": 90}), root=other, progress=False))
    got = _arrays(path)
    np.testing.assert_array_equal(got["temperature"], [300.0] * 6 + [350.0] * 6 + [300.0] * 3)
    np.testing.assert_array_equal(got["frame_id"], np.arange(15))
    at300 = got["temperature"] == 300.0
    for key in ("coordinates", "forces", "potential_energy", "time"):
        np.testing.assert_array_equal(got[key][at300], single[key])
    with reader.open_dataset(path) as ds:
        assert ds.segments[0]["steps"] == 90 and ds.segments[1]["steps"] == 60
    assert data.validate_dataset(path)["n_frames"] == 15


@pytest.mark.parametrize(("change", "words"), [
    ({"solvent": "obc2"}, "solvent='obc2'"),
    ({"constraints": "none"}, "constraints='none'"),
    ({"forcefield": "amber99sbildn.xml"}, "forcefield='amber99sbildn.xml'"),
    ({"stride": 20}, "stride=20"),
    ({"seed": 11}, "seed=11"),
])
def test_a_new_segment_with_another_system_or_dynamics_is_refused_in_one_line(two_temperatures, tmp_path,
                                                                              change, words):
    root, ref = two_temperatures
    _copy_pdb(root, tmp_path)
    shutil.copy(ref, tmp_path / "aaa" / "aaa.h5")
    before = _arrays(tmp_path / "aaa" / "aaa.h5")
    with pytest.raises(ValueError, match="a new temperature segment with " + words.replace("(", r"\(")) as exc:
        simulate("aaa", MDConfig(**{**MD, "temperature": 400.0, **change}), root=tmp_path, progress=False)
    assert "\n" not in str(exc.value)
    after = _arrays(tmp_path / "aaa" / "aaa.h5")  # nothing written
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "aaa" / "aaa.400K.chk").exists()


def test_a_new_segment_from_a_structure_with_another_potential_is_refused(two_temperatures, tmp_path):
    """Negative control of the force-field hash check: NAME.pdb replaced by another peptide."""
    root, ref = two_temperatures
    (tmp_path / "aaa").mkdir()
    shutil.copy(ref, tmp_path / "aaa" / "aaa.h5")
    build_structure("other", sequence="AAA", out_dir=tmp_path, phi=-60.0, psi=-45.0)
    shutil.copy(tmp_path / "other" / "other.pdb", tmp_path / "aaa" / "aaa.pdb")  # same atoms: allowed
    simulate("aaa", MDConfig(**{**MD, "temperature": 400.0, "steps": 10}), root=tmp_path, progress=False)
    build_structure("gly", sequence="GAA", out_dir=tmp_path)
    shutil.copy(tmp_path / "gly" / "gly.pdb", tmp_path / "aaa" / "aaa.pdb")
    with pytest.raises(ValueError, match="same system"):
        simulate("aaa", MDConfig(**{**MD, "temperature": 450.0, "steps": 10}), root=tmp_path, progress=False)


# ----------------------------------------------------------------------------- old layouts


def _to_version_2(path) -> None:
    """Rewrite a single-temperature file into the layout of format version 2 (no per-frame
    temperature, no segments; the root temperature)."""
    with h5py.File(path, "r+") as h5:
        temps = h5["temperature"][()]
        del h5["temperature"]
        del h5.attrs["segments"]
        h5.attrs["format_version"] = 2
        h5.attrs["temperature"] = float(temps[0])


def test_a_version_2_file_reads_at_its_one_temperature_and_is_upgraded_when_a_segment_is_added(
        two_temperatures, tmp_path):
    root, _ = two_temperatures
    _copy_pdb(root, tmp_path)
    path = simulate("aaa", MDConfig(**MD), root=tmp_path, progress=False)
    _to_version_2(path)
    assert data.validate_dataset(path)["n_frames"] == 6
    with reader.open_dataset(path) as ds:
        assert ds.format_version == 2 and ds.temperature == 300.0 and not ds.is_multi_temperature
        np.testing.assert_array_equal(ds.temperatures(), np.full(6, 300.0))
        np.testing.assert_array_equal(ds.temperatures([4, 1]), [300.0, 300.0])
        assert ds.temperatures(2).shape == () and ds.temperatures(slice(0, 2)).shape == (2,)
        assert ds.segments[0]["temperature"] == 300.0 and ds.segments[0]["seed"] == 3
    simulate("aaa", MDConfig(**{**MD, "temperature": 350.0}), root=tmp_path, progress=False)
    with reader.open_dataset(path) as ds:
        assert ds.format_version == 3
        np.testing.assert_array_equal(ds.temperatures(), [300.0] * 6 + [350.0] * 6)
        assert [s["temperature"] for s in ds.segments] == [300.0, 350.0]
    assert data.validate_dataset(path)["n_frames"] == 12


def test_a_killed_version_2_run_resumes_bit_identically_and_is_upgraded(two_temperatures, tmp_path):
    root, ref = two_temperatures
    _copy_pdb(root, tmp_path)
    with pytest.raises(SimulationInterrupted):
        simulate("aaa", MDConfig(**MD), root=tmp_path, progress=False, interrupt_after_chunks=1)
    path = tmp_path / "aaa" / "aaa.h5"
    _to_version_2(path)
    simulate("aaa", MDConfig(**MD), root=tmp_path, resume=True, progress=False)
    a, b = _arrays(ref), _arrays(path)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key][:6])
    with reader.open_dataset(path) as ds:
        assert ds.format_version == 3 and ds.temperature == 300.0 and len(ds.segments) == 1


def test_a_version_1_import_without_per_frame_temperature_reads_its_root_temperature(tmp_path):
    pdb = "ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n"
    path = data.write_dataset(tmp_path / "x" / "x.h5", pdb, np.zeros((4, 1, 3)), np.zeros((4, 1, 3)),
                              attrs={"temperature": 310.0})  # fmt: skip
    with h5py.File(path, "r+") as h5:
        del h5["temperature"]
        del h5.attrs["format_version"]
    with reader.open_dataset(path) as ds:
        assert ds.format_version == 1
        np.testing.assert_array_equal(ds.temperatures(), np.full(4, 310.0))
        np.testing.assert_allclose(ds.betas(), np.full(4, beta(310.0)), rtol=1e-15)
    none = data.write_dataset(tmp_path / "y" / "y.h5", pdb, np.zeros((2, 1, 3)), np.zeros((2, 1, 3)))
    with reader.open_dataset(none) as ds, pytest.raises(sc.DatasetError, match="y.h5.*no root 'temperature'"):
        ds.temperatures()


def test_copied_frames_keep_each_frames_temperature_across_sources_of_both_layouts(two_temperatures, tmp_path):
    root, mixed = two_temperatures
    _copy_pdb(root, tmp_path)
    old = simulate("aaa", MDConfig(**{**MD, "steps": 30}), root=tmp_path, progress=False)
    _to_version_2(old)  # 3 frames at 300 K, no per-frame temperature
    pool = data.copy_frames([(old, np.array([0, 2])), (mixed, np.array([7, 1]))], tmp_path / "p" / "p.h5",
                            frame_id=np.arange(4), time=np.arange(4.0))  # fmt: skip
    with reader.open_dataset(pool) as ds:
        np.testing.assert_array_equal(ds.temperatures(), [300.0, 300.0, 350.0, 300.0])
        assert ds.temperature is None and "temperature" not in ds.attrs
    one = data.copy_frames([(mixed, np.array([6, 8]))], tmp_path / "q" / "q.h5")
    with reader.open_dataset(one) as ds:  # one temperature: the root attribute is that one
        assert ds.temperature == 350.0 and ds.attrs["temperature"] == 350.0
    assert data.validate_dataset(one)["frames_per_temperature"] == {"350 K": 2}


# ----------------------------------------------------------------------------- β per frame


def test_per_frame_beta_is_one_over_kT_of_each_frames_own_temperature(two_temperatures):
    _, path = two_temperatures
    with reader.open_dataset(path) as ds:
        b, t = ds.betas(), ds.temperatures()
        np.testing.assert_allclose(b, [beta(float(x)) for x in t], rtol=1e-15)
        np.testing.assert_allclose(ds.betas([11, 0]), [beta(350.0), beta(300.0)], rtol=1e-15)
        # negative control: one β for the whole file (the single-temperature reading) is wrong
        # on the frames of the other segment by the temperature ratio
        assert not np.allclose(b, beta(300.0), rtol=1e-3)
        np.testing.assert_allclose(b[6:] / beta(300.0), 300.0 / 350.0, rtol=1e-15)
        ds_aa = reader.load_dataset(path)
        np.testing.assert_array_equal(ds_aa.temperatures, t)


# ----------------------------------------------------------------------------- validation


def _corrupt_temperature_nan(h5):
    h5["temperature"][7] = np.nan


def _corrupt_temperature_zero(h5):
    h5["temperature"][2] = 0.0  # not a thermostat set-point


def _corrupt_root_contradicts(h5):
    h5.attrs["temperature"] = 300.0  # a mixed file with a root temperature


def _corrupt_time_within_segment(h5):
    h5["time"][8] = h5["time"][7]


def _corrupt_temperature_shape(h5):
    h5["temperature"].resize(11, axis=0)


@pytest.mark.parametrize(("corrupt", "frame", "words"), [
    (_corrupt_temperature_nan, 7, "nan K is not a temperature"),
    (_corrupt_temperature_zero, 2, "0.0 K is not a temperature"),
    (_corrupt_root_contradicts, 6, "350 K but the root attribute temperature is 300 K"),
    (_corrupt_time_within_segment, 8, "within the 350 K frames"),
    (_corrupt_temperature_shape, None, "shape (11,), expected (12,)"),
])
def test_bad_per_frame_temperature_or_time_is_refused_naming_file_and_frame(two_temperatures, tmp_path,
                                                                            corrupt, frame, words):
    _, ref = two_temperatures
    path = tmp_path / "bad.h5"
    shutil.copy(ref, path)
    data.validate_dataset(path)  # the copy is valid
    with h5py.File(path, "r+") as h5:
        corrupt(h5)
    with pytest.raises(sc.DatasetError) as exc:
        data.validate_dataset(path)
    msg = str(exc.value)
    assert "bad.h5" in msg and words in msg and "\n" not in msg
    if frame is not None:
        assert f"frame {frame}" in msg


# ----------------------------------------------------------------------------- consumers


def test_map_and_deep_validate_handle_a_mixed_file(two_temperatures, tmp_path):
    _, ref = two_temperatures
    path = tmp_path / "m" / "m.h5"
    path.parent.mkdir()
    shutil.copy(ref, path)
    for chk in ("aaa.chk", "aaa.350K.chk"):
        shutil.copy(ref.parent / chk, path.parent / chk)
    write_cg(path)
    rows = {r.name: r for r in deep_validate(path, n_force_frames=2)}
    assert not [r for r in rows.values() if r.failed], rows
    assert rows["simulation complete (300 K)"].status == "PASS"
    assert rows["simulation complete (350 K)"].status == "PASS"
    assert "energies" in rows["potential energies recomputed with OpenMM"].detail
    compute_targets(path, n_probes=1, platform="CPU", threads=1, progress=False)  # Term 1: no β
    with reader.open_dataset(path) as ds:
        assert ds.cg.coordinates().shape == (12, 3, 3) and ds.term1.done().all()
    # negative controls: energies stored in kJ/mol at one segment's end; a segment cut short
    with h5py.File(path, "r+") as h5:
        h5["potential_energy"][11] *= 4.184
    rows = {r.name: r for r in deep_validate(path, n_force_frames=1)}
    assert rows["potential energies recomputed with OpenMM"].failed
    assert "frame 11" in rows["potential energies recomputed with OpenMM"].detail
    with h5py.File(path, "r+") as h5:
        h5["potential_energy"][11] /= 4.184
        del h5["cg"]
        data.truncate_frames(h5, 10)
    rows = {r.name: r for r in deep_validate(path, n_force_frames=1)}
    assert rows["simulation complete (350 K)"].status == "INCOMPLETE"
    assert "--resume --temperature 350" in rows["simulation complete (350 K)"].detail
    assert rows["simulation complete (300 K)"].status == "PASS"


def test_a_mixed_file_is_refused_by_single_temperature_consumers_naming_the_file(two_temperatures, tmp_path):
    _, ref = two_temperatures
    path = tmp_path / "m" / "m.h5"
    path.parent.mkdir()
    shutil.copy(ref, path)
    write_cg(path)
    with reader.open_dataset(path) as ds, pytest.raises(sc.DatasetError, match=r"m\.h5: holds frames at 2 "
                                                        r"temperatures \(300, 350 K\)"):  # fmt: skip
        ds.single_temperature()
    mixed = load_protein(path)  # the training reader keeps per-frame temperatures ...
    assert mixed.mixed_temperature and sorted(set(mixed.temperatures)) == [300.0, 350.0]
    with pytest.raises(ValueError, match=r"m\.h5: frames at several temperatures"):  # ... FM refuses them
        split_frames([mixed], TrainConfig.from_dict({"loss": {"mode": "fm"}}), need_term1=False)
    # negative control: a single-temperature file passes both
    root = tmp_path / "single"
    _copy_pdb(two_temperatures[0], root)
    one = simulate("aaa", MDConfig(**{**MD, "steps": 30}), root=root, progress=False)
    write_cg(one)
    with reader.open_dataset(one) as ds:
        assert ds.single_temperature() == 300.0
    assert load_protein(one).temperature == 300.0


# ----------------------------------------------------------------------------- CLI


def test_cli_adds_a_temperature_and_refuses_a_changed_system_in_one_line(two_temperatures, tmp_path,
                                                                         monkeypatch, capsys):
    root, _ = two_temperatures
    _copy_pdb(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["data", "simulate", "aaa", "--steps", "30", "--stride", "10", "--solvent", "vacuum",
            "--platform", "CPU", "--threads", "1", "--seed", "3", "--no-progress", "-q"]
    assert main(base) == 0
    assert main([*base, "--temperature", "400"]) == 0
    assert main(["data", "simulate", "aaa", "--temperature", "450", "--steps", "20", "--no-progress", "-q"]) == 0
    with reader.open_dataset("aaa") as ds:
        np.testing.assert_array_equal(ds.temperatures(), [300.0] * 3 + [400.0] * 3 + [450.0] * 2)
        assert ds.segments[2]["md_config"]["solvent"] == "vacuum"  # inherited, not the CLI default
    capsys.readouterr()
    assert main([*base, "--temperature", "500", "--solvent", "obc2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "solvent='obc2'" in err and "aaa.h5" in err
    assert main(base) == 2  # 300 K is held: --resume needed
    assert "--resume" in capsys.readouterr().err
    assert main(["data", "validate", "aaa"]) == 0
    seg = json.loads(h5py.File(tmp_path / "aaa" / "aaa.h5", "r").attrs["segments"])
    assert [s["temperature"] for s in seg] == [300.0, 400.0, 450.0]
