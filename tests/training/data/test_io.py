"""Dataset file: AA simulation (forces of saved positions, resume), validation, imports, CG map."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import mdtraj
import numpy as np
import openmm
import openmm.unit as u
import pytest

from hessid.maps import check_projector
from hessid.training.data import cg_map, importers, reader
from hessid.training.data import io as data
from hessid.training.data.aa_md import (
    MDConfig,
    SimulationInterrupted,
    create_system,
    simulate,
    system_hash,
)
from hessid.training.data.structures import build_from_sequence, build_structure
from hessid.training.data.targets import compute_targets
from tests.training.data.crash import run_until_sigkill, simulate_until_sigkill

MD = dict(steps=120, stride=10, platform="CPU", threads=1, chunk_frames=3, solvent="gbn2", seed=3)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """AAA tripeptide, GBn2, 12 frames in chunks of 3 (uninterrupted)."""
    root = tmp_path_factory.mktemp("md")
    build_structure("aaa", sequence="AAA", out_dir=root)
    path = simulate("aaa", MDConfig(**MD), root=root, progress=False)
    return root, path


def _assert_same_frames(ref_path, path, fields) -> None:
    """Assert that the datasets at ``path`` and ``ref_path`` hold the same values (bit for bit) in
    each of ``fields`` (attributes of :func:`reader.load_dataset`'s result)."""
    a, b = reader.load_dataset(ref_path), reader.load_dataset(path)
    for field in fields:
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=field)


def test_simulation_writes_layout_units_and_attributes(simulated):
    _, path = simulated
    summary = data.validate_dataset(path)
    assert summary["n_frames"] == 12 and summary["n_atoms"] == 33
    ds = reader.load_dataset(path)
    np.testing.assert_allclose(ds.time, 0.02 * np.arange(1, 13))  # ps: stride 10 × 2 fs
    np.testing.assert_array_equal(ds.frame_id, np.arange(12))
    for key in ("temperature", "forcefield", "solvent", "platform", "seed", "versions", "name"):
        assert key in ds.attrs
    assert ds.attrs["length_unit"] == "angstrom" and ds.attrs["energy_unit"] == "kcal/mol"
    assert ds.attrs["solvent"] == "gbn2" and ds.attrs["platform"] == "CPU"
    assert (path.parent / "aaa.chk").exists()


def test_hydrogen_mass_repartitioning_moves_mass_but_keeps_total_mass_and_forces(simulated):
    """HMR (``hydrogen_mass``) changes masses only: H at the given mass, total mass and the
    forces (hence Term 1 and the mapped data) unchanged; a non-positive mass is refused."""
    _, path = simulated
    ds = reader.load_dataset(path)
    plain = create_system(ds.topology, "amber14-all.xml", "gbn2", "HBonds")
    hmr = create_system(ds.topology, "amber14-all.xml", "gbn2", "HBonds", hydrogen_mass=3.0)

    def masses(system):
        return np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])

    is_h = np.array([a.element.symbol == "H" for a in ds.topology.atoms()])
    np.testing.assert_allclose(masses(hmr)[is_h], 3.0)
    assert abs(masses(hmr).sum() - masses(plain).sum()) < 1e-9 and not np.allclose(masses(hmr), masses(plain))
    forces = []
    for system in (plain, hmr):
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(ds.coordinates[0] / 10.0)  # Å → nm
        forces.append(ctx.getState(getForces=True).getForces(asNumpy=True)._value)
    np.testing.assert_array_equal(forces[0], forces[1])
    with pytest.raises(ValueError, match="hydrogen_mass"):
        create_system(ds.topology, "amber14-all.xml", "gbn2", "HBonds", hydrogen_mass=0.0)


def test_hmr_run_stores_the_hash_of_the_potential_not_of_its_masses(simulated, tmp_path):
    """forcefield_hash ties targets to the potential: an HMR run stores the hash of the System
    without repartitioned masses (what ``compute_targets`` rebuilds), not of the sampled one."""
    _, path = simulated
    build_structure("aaa", sequence="AAA", out_dir=tmp_path)
    hmr = simulate("aaa", MDConfig(**{**MD, "steps": 20, "stride": 10, "timestep": 4.0, "hydrogen_mass": 3.0}),
                   root=tmp_path, progress=False)  # fmt: skip
    ds = reader.load_dataset(hmr)
    with h5py.File(hmr) as h5, h5py.File(path) as plain:
        assert h5.attrs["forcefield_hash"] == plain.attrs["forcefield_hash"]
        assert h5.attrs["forcefield_hash"] == system_hash(create_system(ds.topology, "amber14-all.xml", "gbn2"))
        sampled = system_hash(create_system(ds.topology, "amber14-all.xml", "gbn2", hydrogen_mass=3.0))
        assert h5.attrs["forcefield_hash"] != sampled  # control: the masses do enter the hash


def test_saved_forces_are_forces_of_saved_positions(simulated):
    """Recompute f(r_t) at the stored positions: equal up to single-precision force rounding
    (CPU platform), while the forces of a neighbouring MD step differ by O(1) relative."""
    _, path = simulated
    ds = reader.load_dataset(path)
    system = create_system(ds.topology, "amber14-all.xml", "gbn2", "HBonds")
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))  # fmt: skip
    for t in (0, 7):
        ctx.setPositions(ds.coordinates[t] / 10.0)  # Å → nm
        st = ctx.getState(getForces=True, getEnergy=True)
        f = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer) / 41.84
        e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) / 4.184
        rel = np.abs(f - ds.forces[t]).max() / np.abs(f).max()
        assert rel < 1e-4, f"frame {t}: stored forces differ from f(r_t) by {rel:.2e}"
        assert abs(e - ds.potential_energy[t]) < 1e-3 * max(1.0, abs(e))
    neighbour = np.abs(ds.forces[1] - ds.forces[0]).max() / np.abs(ds.forces[0]).max()
    assert neighbour > 1e-2


def test_interrupted_simulation_resumes_without_lost_or_duplicated_frames(simulated, tmp_path):
    root, ref_path = simulated
    shutil.copy(root / "aaa" / "aaa.pdb", tmp_path / "aaa.pdb")
    (tmp_path / "aaa").mkdir()
    shutil.move(tmp_path / "aaa.pdb", tmp_path / "aaa" / "aaa.pdb")
    with pytest.raises(SimulationInterrupted):
        simulate("aaa", MDConfig(**MD), root=tmp_path, progress=False, interrupt_after_chunks=2)
    path = tmp_path / "aaa" / "aaa.h5"
    # a crash between the HDF5 flush and the checkpoint leaves extra frames: emulate one
    with h5py.File(path, "r+") as h5:
        assert h5["coordinates"].shape[0] == 6
        data.append_frames(h5, h5["coordinates"][-1:], h5["forces"][-1:], [99.0], [99],
                           h5["potential_energy"][-1:])  # fmt: skip
    with pytest.raises(FileExistsError):
        simulate("aaa", MDConfig(**MD), root=tmp_path, progress=False)
    simulate("aaa", MDConfig(**MD), root=tmp_path, resume=True, progress=False)
    # the OpenMM checkpoint restores the Langevin RNG: the continuation is bit-identical
    _assert_same_frames(ref_path, path, ("frame_id", "time", "coordinates", "forces"))


# ----------------------------------------------------------------------------- validation


@pytest.fixture()
def small_file(simulated, tmp_path):
    _, path = simulated
    out = tmp_path / "copy.h5"
    shutil.copy(path, out)
    return out


def _corrupt_nan(h5):
    f = h5["forces"][()]
    f[4, 2, 1] = np.nan
    h5["forces"][...] = f


def _corrupt_time(h5):
    t = h5["time"][()]
    t[5] = t[3]
    h5["time"][...] = t


def _corrupt_shape(h5):
    del h5["forces"]
    h5.create_dataset("forces", data=np.zeros((11, 33, 3)))


def _corrupt_atoms(h5):
    c = h5["coordinates"][()]
    del h5["coordinates"]
    h5.create_dataset("coordinates", data=c[:, :30])


def _corrupt_units(h5):
    del h5.attrs["length_unit"]


def _corrupt_frame_ids(h5):
    fid = h5["frame_id"][()]
    fid[6] = fid[2]
    h5["frame_id"][...] = fid


@pytest.mark.parametrize(
    "corrupt, dataset, frame, words",
    [
        (_corrupt_nan, "forces", 4, "NaN"),
        (_corrupt_time, "time", 5, "not strictly increasing"),
        (_corrupt_shape, "forces", None, "shape"),
        (_corrupt_atoms, "coordinates", None, "30 atoms but the topology has 33"),
        (_corrupt_units, "/", None, "missing units"),
        (_corrupt_frame_ids, "frame_id", 6, "duplicate"),
    ],
)
def test_bad_file_is_refused_with_file_dataset_and_frame(small_file, corrupt, dataset, frame, words):
    with h5py.File(small_file, "r+") as h5:
        corrupt(h5)
    with pytest.raises(data.DatasetError) as info:
        data.validate_dataset(small_file)
    msg = str(info.value)
    assert str(small_file) in msg and f"'{dataset}'" in msg and words in msg
    assert info.value.frame == frame
    if frame is not None:
        assert f"frame {frame}" in msg


def test_nan_in_cg_targets_of_finished_frames_is_refused(small_file):
    cg_map.write_cg(small_file)
    with h5py.File(small_file, "r+") as h5:
        g = h5["cg"]
        ds = g.create_dataset("hvp_term1", data=np.zeros((12, 2, 3, 3)))
        for a in ("probe_kind", "probe_seed", "epsilon_nm", "unit"):
            ds.attrs[a] = 0
        done = np.ones(12, np.uint8)
        done[8] = 0
        g.create_dataset("hvp_term1_done", data=done)
        v = ds[()]
        v[8] = np.nan  # unfinished frame: allowed (NaN fill)
        ds[...] = v
    assert data.validate_dataset(small_file)["n_probes"] == 2
    with h5py.File(small_file, "r+") as h5:
        v = h5["cg/hvp_term1"][()]
        v[3, 1] = np.inf
        h5["cg/hvp_term1"][...] = v
    with pytest.raises(data.DatasetError, match=r"'cg/hvp_term1', frame 3: contains NaN"):
        data.validate_dataset(small_file)


# ----------------------------------------------------------------------------- imports

#: the source simulation's temperature and constraints, required at import
PHYS = {"temperature": 300.0, "constraints": "HBonds"}


def test_array_import_converts_declared_units(simulated, tmp_path):
    _, path = simulated
    ds = reader.load_dataset(path)
    np.savez(tmp_path / "x.npz", coordinates=ds.coordinates / 10.0, forces=ds.forces * 41.84)
    pdb = tmp_path / "top.pdb"
    pdb.write_text(ds.topology_pdb)
    out = importers.import_arrays(tmp_path / "x.npz", tmp_path / "x.npz", pdb, tmp_path / "imp.h5",
                             length_unit="nm", force_unit="kJ/mol/nm", timestep_ps=0.02,
                             temperature=300.0, constraints="HBonds")  # fmt: skip
    got = reader.load_dataset(out)
    np.testing.assert_allclose(got.coordinates, ds.coordinates, rtol=1e-12)
    np.testing.assert_allclose(got.forces, ds.forces, rtol=1e-12)
    np.testing.assert_allclose(got.time, ds.time)


def test_import_without_units_is_an_error_never_a_guess(simulated, tmp_path):
    _, path = simulated
    ds = reader.load_dataset(path)
    src = tmp_path / "mdcath.h5"
    with h5py.File(src, "w") as h5:
        g = h5.create_group("dom/320/0")
        g.create_dataset("coords", data=ds.coordinates)
        g.create_dataset("forces", data=ds.forces)
        h5.create_dataset("topology", data=ds.topology_pdb)
    with pytest.raises(data.DatasetError, match="missing units"):
        importers.import_hdf5(src, tmp_path / "a.h5", **PHYS)
    with h5py.File(src, "r+") as h5:  # mdCATH-style unit attributes are read
        h5["dom/320/0/coords"].attrs["unit"] = "Angstrom"
        h5["dom/320/0/forces"].attrs["unit"] = "kcal/mol/Angstrom"
    got = reader.load_dataset(importers.import_hdf5(src, tmp_path / "b.h5", **PHYS))
    np.testing.assert_array_equal(got.forces, ds.forces)
    with pytest.raises(data.DatasetError, match="30 atoms but the topology has 33"):
        importers.import_arrays(ds.coordinates[:, :30], ds.forces[:, :30], path.with_suffix(".pdb"),
                           tmp_path / "c.h5", "angstrom", "kcal/mol/angstrom", **PHYS)  # fmt: skip
    bad = ds.forces.copy()
    bad[2, 0, 0] = np.inf
    with pytest.raises(data.DatasetError, match="'forces', frame 2"):
        importers.import_arrays(ds.coordinates, bad, path.with_suffix(".pdb"), tmp_path / "d.h5",
                           "angstrom", "kcal/mol/angstrom", **PHYS)  # fmt: skip


def test_trajectory_import_reads_mdtraj_lengths(simulated, tmp_path):
    _, path = simulated
    ds = reader.load_dataset(path)
    top = mdtraj.load(str(path.with_suffix(".pdb"))).topology
    traj = mdtraj.Trajectory(ds.coordinates / 10.0, top)  # nm
    traj.save_dcd(str(tmp_path / "t.dcd"))
    np.save(tmp_path / "f.npy", ds.forces)
    out = importers.import_trajectory(tmp_path / "t.dcd", tmp_path / "f.npy", tmp_path / "t.h5",
                                 force_unit="kcal/mol/angstrom", topology=path.with_suffix(".pdb"),
                                 **PHYS)  # fmt: skip
    got = reader.load_dataset(out)
    np.testing.assert_allclose(got.coordinates, ds.coordinates, atol=1e-3)  # DCD is float32


# ----------------------------------------------------------------------------- CG map


def test_ca_map_gives_projected_forces_types_and_chain_bonds(small_file):
    cg = cg_map.write_cg(small_file)
    ds = reader.load_dataset(small_file)
    ca = [a.index for a in ds.topology.atoms() if a.name == "CA"]
    ha = [a.index for a in ds.topology.atoms() if a.name == "HA"]
    np.testing.assert_array_equal(cg.coordinates, ds.coordinates[:, ca])
    # HBond-constrained data: the bead force is f_CA + f_HA (test below), not the selection's f_CA
    np.testing.assert_allclose(cg.forces, ds.forces[:, ca] + ds.forces[:, ha], rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    assert cg.vocabulary[cg.bead_types[0]] == "ALA" and cg.bead_types.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(cg.bonds, [[0, 1], [1, 2]])
    assert data.validate_dataset(small_file)["n_beads"] == 3
    with pytest.raises(data.DatasetError, match="exists"):
        cg_map.write_cg(small_file)


def test_hbond_data_gets_the_constraint_aware_projector_summing_each_ca_with_its_hydrogens(
    small_file, tmp_path
):
    """Simulated with constraints=HBonds: each Cα's projector row has weight 1 on the Cα and on
    its rigidly bonded HA (Krämer et al. 2023 force aggregation), Q' Sᵀ = I, and cg/forces =
    Q' f. Opting out, or a file without a ``constraints`` attribute (an import), keeps Q = S."""
    with h5py.File(small_file) as h5:
        assert h5.attrs["constraints"] == "HBonds"
    cg = cg_map.write_cg(small_file)
    ds = reader.load_dataset(small_file)
    top = ds.topology  # parsed anew on every access: keep one
    atoms = list(top.atoms())
    S, Q = cg.weights, cg.projector
    assert check_projector(S, Q) <= 1e-12
    for bead, row in enumerate(S):
        ca = atoms[int(np.flatnonzero(row)[0])]
        hs = [b.atom2 if b.atom1 is ca else b.atom1 for b in top.bonds() if ca in (b.atom1, b.atom2)
              and "H" in (b.atom1.element.symbol, b.atom2.element.symbol)]  # fmt: skip
        assert [h.name for h in hs] == ["HA"]  # alanine: one Hα
        expected = np.zeros(len(atoms))
        expected[[ca.index] + [h.index for h in hs]] = 1.0
        np.testing.assert_array_equal(Q[bead], expected)
    Qf = np.einsum("nN,tNc->tnc", Q, ds.forces)  # (T, n, 3)
    np.testing.assert_allclose(cg.forces, Qf, rtol=1e-12, atol=1e-12)
    with h5py.File(small_file) as h5:
        assert h5["cg"].attrs["projector_constraints"] == "HBonds"
        np.testing.assert_array_equal(h5["cg/projector"][()], Q)

    plain = cg_map.write_cg(small_file, overwrite=True, constraint_aware=False)
    np.testing.assert_array_equal(plain.projector, S)
    np.testing.assert_array_equal(plain.forces, ds.forces[:, np.flatnonzero(S.sum(axis=0))])
    with h5py.File(small_file) as h5:
        assert h5["cg"].attrs["projector_constraints"] == "none"

    pdb = tmp_path / "top.pdb"
    pdb.write_text(ds.topology_pdb)
    imported = importers.import_arrays(ds.coordinates, ds.forces, pdb, tmp_path / "imp.h5",
                                  length_unit="angstrom", force_unit="kcal/mol/angstrom",
                                  temperature=300.0, constraints="none")  # fmt: skip
    np.testing.assert_array_equal(cg_map.write_cg(imported).projector, S)


def test_write_cg_overwrite_replaces_a_stale_group_of_a_shorter_run(small_file):
    """After a simulation is extended its cg/ group has fewer frames than the file: reading
    validation names that group, and ``overwrite=True`` re-maps instead of refusing."""
    cg_map.write_cg(small_file)
    with h5py.File(small_file, "r+") as h5:
        stale = h5["cg/coordinates"][:3]
        del h5["cg/coordinates"]
        h5["cg"].create_dataset("coordinates", data=stale)  # as if mapped before an extension
    with pytest.raises(data.DatasetError, match="cg/coordinates"):
        data.validate_dataset(small_file)
    with pytest.raises(data.DatasetError, match="cg/coordinates"):
        cg_map.write_cg(small_file)  # without overwrite the file is still validated in full
    cg = cg_map.write_cg(small_file, overwrite=True)
    assert cg.coordinates.shape[0] == data.validate_dataset(small_file)["n_frames"]


def test_hbond_pairs_follow_openmms_rule(small_file):
    """Every bond with a hydrogen, and only those: each H atom of AAA is in exactly one pair."""
    ds = reader.load_dataset(small_file)
    top = ds.topology
    pairs = cg_map.hbond_pairs(top)
    atoms = list(top.atoms())
    n_h = sum(a.element.symbol == "H" for a in atoms)
    assert pairs.shape == (n_h, 2) and pairs.dtype == np.int64
    assert all("H" in (atoms[i].element.symbol, atoms[j].element.symbol) for i, j in pairs)
    assert sorted(i if atoms[i].element.symbol == "H" else j for i, j in pairs) == [
        a.index for a in atoms if a.element.symbol == "H"
    ]


# ----------------------------------------------------------------------------- crash safety


def test_sigkill_between_file_commit_and_checkpoint_resumes_bit_identically(simulated, tmp_path):
    """A real SIGKILL (no ``finally``, file left open) after chunk 3 was committed to the HDF5
    file but before its checkpoint: the file opens, holds 9 frames, the checkpoint stands for
    6; ``--resume`` cuts the 3 extra frames and reproduces the uninterrupted run exactly."""
    root, ref_path = simulated
    (tmp_path / "aaa").mkdir()
    shutil.copy(root / "aaa" / "aaa.pdb", tmp_path / "aaa" / "aaa.pdb")
    run_until_sigkill(f"""
import os, signal
from hessid.training.data import aa_md
calls, write = [0], aa_md._write_checkpoint
def checkpoint(context, path):  # call 1: start; 2, 3: chunks 1, 2; 4: chunk 3 → killed
    calls[0] += 1
    if calls[0] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    write(context, path)
aa_md._write_checkpoint = checkpoint
aa_md.simulate("aaa", aa_md.MDConfig(**{MD!r}), root={str(tmp_path)!r}, progress=False)
""")
    path = tmp_path / "aaa" / "aaa.h5"
    with h5py.File(path, "r") as h5:
        assert h5["coordinates"].shape[0] == 9 and h5.attrs["checkpoint_frames"] == 9
    simulate("aaa", MDConfig(**MD), root=tmp_path, resume=True, progress=False)
    _assert_same_frames(ref_path, path, ("frame_id", "coordinates", "forces"))


# (point, n): SIGKILL at the n-th call of that crash point = inside the 3rd chunk's append (chunks
# 1 and 2 committed: 6 frames). 6 datasets per append (no box; with the per-frame temperature of
# format version 3): the 13th ``before_resize`` is the 3rd chunk's first dataset, the 14th
# ``after_resize`` its second (coordinates resized and written, forces resized, not written).
APPEND_KILLS = [("after_backup_copy", 3), ("before_resize", 13), ("after_resize", 14),
                ("after_write", 3), ("after_flush", 3)]  # fmt: skip


@pytest.mark.parametrize(("point", "nth"), APPEND_KILLS, ids=[p for p, _ in APPEND_KILLS])
def test_sigkill_inside_an_append_resumes_bit_identically(simulated, tmp_path, point, nth):
    """A real SIGKILL at each named point of the 3rd chunk's append (from the backup copy to
    after the flush, before the checkpoint): the file opens for ``--resume`` (a torn append is
    rolled back from ``aaa.h5.bak``), resume continues, and the arrays equal the uninterrupted
    run's."""
    root, ref_path = simulated
    (tmp_path / "aaa").mkdir()
    shutil.copy(root / "aaa" / "aaa.pdb", tmp_path / "aaa" / "aaa.pdb")
    simulate_until_sigkill(point, nth, MD, tmp_path)
    path = tmp_path / "aaa" / "aaa.h5"
    # the backup exists from its rename until the append is committed (after_backup_copy: not yet)
    assert data.backup_path(path).exists() == (point != "after_backup_copy")
    h5 = data.open_for_append(path)  # restores the backup; the file of the last finished append
    with h5:
        n = {k: h5[k].shape[0] for k in ("coordinates", "forces", "time", "frame_id", "potential_energy",
                                          "temperature")}
    assert set(n.values()) == {6}, n  # after_flush too: the append is undone until end_append
    assert not data.backup_path(path).exists()
    simulate("aaa", MDConfig(**MD), root=tmp_path, resume=True, progress=False)
    _assert_same_frames(ref_path, path, ("frame_id", "coordinates", "forces", "potential_energy"))
    assert data.validate_dataset(path)["n_frames"] == 12


def test_overwrite_deletes_the_backup_of_the_replaced_run(tmp_path):
    """A backup left by a killed append of an old run must not be restored into a new run
    created with overwrite; without overwrite nothing is touched (control)."""
    path = tmp_path / "x.h5"
    pdb = "ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n"
    data.create_dataset(path, pdb, {}).close()
    bak = data.backup_path(path)
    bak.write_bytes(b"old run")
    with pytest.raises(FileExistsError):
        data.create_dataset(path, pdb, {})
    assert bak.read_bytes() == b"old run"
    data.create_dataset(path, pdb, {}, overwrite=True).close()
    assert not bak.exists() and not data.recover_append(path)


_TORN_FLUSH_CHILD = """
import os, signal, sys
import h5py, numpy as np
from hessid.training.data import io
path, nth, protect = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
with io.open_for_append(path) as h5:
    n_atoms = h5["coordinates"].shape[1]
    if protect:
        io.begin_append(h5)
class Killing:  # the file as HDF5 writes it (h5py's file-object driver): SIGKILL at write nth
    def __init__(self, f):
        self.f, self.n = f, 0
    def __getattr__(self, name):
        return getattr(self.f, name)
    def write(self, b):
        self.n += 1
        if self.n == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.f.write(b)
fo = Killing(open(path, "r+b"))
h5 = h5py.File(fo, "r+")
fo.n = 0
r = np.random.default_rng(0)
io.append_frames(h5, r.normal(size=(3, n_atoms, 3)), r.normal(size=(3, n_atoms, 3)),
                 np.arange(3.0), np.arange(6, 9), r.normal(size=3))
print("writes", fo.n, flush=True)
os._exit(3)
"""


def _frame_counts(path) -> dict | str:
    try:
        with h5py.File(path, "r") as h5:
            return {k: h5[k].shape[0] for k in ("coordinates", "forces", "time", "frame_id", "potential_energy")}
    except OSError as exc:
        return f"unreadable: {exc}"


def _contents(path) -> dict:
    """Every dataset's bytes and shape (the superblock's open-for-write flag may differ)."""
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, (obj.shape, np.asarray(obj[()]).tobytes()))
                      if isinstance(obj, h5py.Dataset) else None)  # fmt: skip
    return out


def test_sigkill_inside_hdf5_flush_is_rolled_back_and_torn_without_backup(simulated, tmp_path):
    """Kills *inside* HDF5's flush of an append (every write call of it in turn, via h5py's
    file-object driver). With the backup (``begin_append``), every kill is rolled back by
    ``recover_append`` to the committed file (every dataset's bytes). Negative control without it: some
    kill leaves a torn file (datasets of different lengths; never unreadable here)."""
    _, src = simulated
    committed = tmp_path / "committed.h5"
    with h5py.File(src, "r") as a:  # 6 frames of the simulation, appendable layout
        h5 = data.create_dataset(committed, a["topology"][()].decode(), {"temperature": 300.0},
                                 chunk_frames=3)  # fmt: skip
        with h5:
            data.append_frames(h5, a["coordinates"][:6], a["forces"][:6], a["time"][:6],
                               a["frame_id"][:6], a["potential_energy"][:6])  # fmt: skip
    good, want = committed.read_bytes(), _contents(committed)
    path = tmp_path / "x.h5"
    torn = []
    for protect in ("1", "0"):
        for nth in range(1, 200):
            path.write_bytes(good)
            proc = subprocess.run([sys.executable, "-c", _TORN_FLUSH_CHILD, str(path), str(nth), protect],
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            if "writes" in proc.stdout:  # the append finished before write nth
                break
            assert proc.returncode == -9, proc.stderr[-2000:]
            if protect == "1":
                assert data.recover_append(path), nth
                assert _contents(path) == want, nth
            else:
                counts = _frame_counts(path)
                if isinstance(counts, str) or len(set(counts.values())) > 1:
                    torn.append((nth, counts))
        assert nth > 3  # the flush made several writes, each one killed in turn
    assert torn, "negative control: no kill inside the flush tore the unprotected file"


def test_sigkill_between_target_values_and_done_flags_recomputes_only_unflagged(simulated, tmp_path):
    """Targets commit a chunk's values, then its done flags. SIGKILL in between: the frames are
    not marked done, ``--resume`` recomputes that chunk only, and the bytes equal an
    uninterrupted run (early-allocated datasets: the killed file still opens)."""
    _, src = simulated
    ref, part = tmp_path / "ref.h5", tmp_path / "part.h5"
    shutil.copy(src, ref)
    shutil.copy(src, part)
    kw = dict(n_probes=2, workers=0, chunk_frames=4, platform="CPU", threads=1, progress=False)
    compute_targets(ref, **kw)
    run_until_sigkill(f"""
import os, signal
from hessid.training.data import targets
calls, commit = [0], targets.commit
def killing_commit(h5):  # 1: datasets created; 2, 3: a chunk's values, flags; 4: next values
    commit(h5)
    calls[0] += 1
    if calls[0] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
targets.commit = killing_commit
targets.compute_targets({str(part)!r}, **{kw!r})
""")
    with h5py.File(part, "r") as h5:
        done, vals = h5["cg/hvp_term1_done"][()], h5["cg/hvp_term1"][()]
    # chunks finished together are committed in chunk order (deterministic): chunk 1 flagged,
    # chunk 2 written but unflagged
    assert done.tolist() == [1] * 4 + [0] * 8
    assert np.isfinite(vals[:8]).all() and np.isnan(vals[8:]).all()  # chunk 2 written, unflagged
    res = compute_targets(part, resume=True, **kw)
    assert res.chunks_skipped == 1 and res.chunks_computed == 2
    with h5py.File(ref) as a, h5py.File(part) as b:
        assert a["cg/hvp_term1"][()].tobytes() == b["cg/hvp_term1"][()].tobytes()


# ----------------------------------------------------------------------------- explicit solvent


def _peptide_with_crystal_water(pdb_text: str) -> str:
    """PDB text plus one water 6 Å from the peptide's first atom (chain W)."""
    lines = [ln for ln in pdb_text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    x, y, z = (float(lines[0][c : c + 8]) for c in (30, 38, 46))
    water = [(" O  ", 0.0, 0.0), (" H1 ", 0.957, 0.0), (" H2 ", -0.240, 0.927)]
    lines += [f"HETATM{9001 + i:5d} {name} HOH W   1    {x + 6 + dx:8.3f}{y + dy:8.3f}{z:8.3f}"
              f"  1.00  0.00           {name.strip()[0]}" for i, (name, dx, dy) in enumerate(water)]  # fmt: skip
    return "\n".join(lines + ["END"]) + "\n"


EXPLICIT = dict(steps=20, stride=10, platform="CPU", threads=1, chunk_frames=2, seed=1,
                solvent="explicit", padding=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    """AG dipeptide + one crystal water kept (``--keep-water``), solvated (TIP3P-FB, 1 nm
    padding, PME) and run for 2 frames. Also returns the source PDB for the stripped build."""
    root = tmp_path_factory.mktemp("explicit")
    src = root / "ag_water.pdb"
    src.write_text(_peptide_with_crystal_water(build_from_sequence("AG").to_pdb()))
    build_structure("ag", pdb=src, out_dir=root, keep_water=True)
    return src, simulate("ag", MDConfig(**EXPLICIT), root=root, progress=False)


def test_explicit_solvent_stores_constant_box_and_all_atom_forces(explicit):
    _, path = explicit
    summary = data.validate_dataset(path)
    ds = reader.load_dataset(path)
    t, n_atoms = summary["n_frames"], summary["n_atoms"]
    assert t == 2 and n_atoms == ds.topology.getNumAtoms() > 600  # peptide (22) + waters
    assert ds.coordinates.shape == ds.forces.shape == (2, n_atoms, 3)
    assert np.isfinite(ds.forces).all() and (np.abs(ds.forces).sum(axis=2) > 0).all()
    with h5py.File(path) as h5:
        box = h5["box"][()]  # (T, 3, 3) Å
        assert h5.attrs["solvent"] == "explicit"
    assert box.shape == (2, 3, 3) and (box == box[0]).all()  # NVT: no barostat
    assert np.allclose(box[0], np.diag(np.diag(box[0]))) and np.diag(box[0]).min() >= 20.0  # ≥ 2 cutoffs
    top_box = np.array(ds.topology.getPeriodicBoxVectors().value_in_unit(u.angstrom))
    np.testing.assert_allclose(top_box, box[0], atol=1e-3)  # CRYST1 of the stored topology


def test_crystal_water_is_kept_or_stripped_per_flag_and_solvent_is_stored(explicit, tmp_path):
    src, path = explicit
    stripped = build_structure("ag", pdb=src, out_dir=tmp_path)  # default: waters stripped
    assert "HOH" not in stripped.read_text() and "HOH" in path.with_suffix(".pdb").read_text()
    ds = reader.load_dataset(path)
    chains = [[r.name for r in c.residues()] for c in ds.topology.chains()]
    assert [c for c in chains if "ALA" in c] == [["ALA", "GLY"]]
    waters = [c for c in chains if c and set(c) == {"HOH"}]
    assert sum(len(c) for c in waters) > 150  # the TIP3P-FB box is stored with the peptide
    assert sorted(len(c) for c in waters)[0] == 1  # the kept crystal water keeps its own chain
    assert len(chains) == 3


def test_explicit_targets_rebuild_the_same_periodic_potential_and_map_only_the_peptide(
    explicit, tmp_path
):
    """The potential rebuilt from the stored topology + box (PME) hashes equal to the MD's
    (constraint order, which the PDB round trip changes for waters, is not part of the hash)."""
    _, src = explicit
    path = tmp_path / "ag.h5"
    shutil.copy(src, path)
    compute_targets(path, n_probes=1, workers=0, chunk_frames=2, platform="CPU", threads=1,
                    progress=False)  # fmt: skip
    cg = reader.load_cg(path)
    assert cg.hvp_term1.shape == (2, 1, 2, 3) and np.isfinite(cg.hvp_term1).all()
    with h5py.File(path) as h5:
        assert h5["cg/hvp_term1"].attrs["forcefield_hash"] == h5.attrs["forcefield_hash"]
