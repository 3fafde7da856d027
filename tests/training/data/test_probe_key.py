"""The per-dataset probe key (issue 12 item 3): two datasets of the same size do not share
probes; files written before the key (no ``probe_key``, format version 1) keep their probes;
training regenerates exactly the probes behind a stored Term 1."""

from __future__ import annotations

import h5py
import numpy as np
import openmm
import pytest

from hessid.probes import ProbeSpec, draw_probes
from hessid.training.data.aa_md import MDConfig, create_system, simulate
from hessid.training.data.reader import open_dataset
from hessid.training.data.schema import FORMAT_VERSION, format_version_of
from hessid.training.data.structures import build_structure
from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.data.targets import TargetsInterrupted, compute_targets, term1_fd
from hessid.training.learning.datasets import load_protein
from hessid.units import length_angstrom_to_nm


def _version1_philox(seed: int, frame_id: int, k: int, dim: int) -> np.ndarray:
    """The generator of format-version-1 files, written out: Philox keyed by (seed, frame id),
    default counter."""
    rng = np.random.Generator(np.random.Philox(key=np.array([seed, frame_id], dtype=np.uint64)))
    return rng.standard_normal((k, dim))


def test_key_zero_is_the_version_1_stream_and_other_keys_differ():
    old = np.stack([_version1_philox(7, f, 3, 12) for f in (0, 5)])
    np.testing.assert_array_equal(draw_probes("gaussian", 7, [0, 5], 3, 12).numpy(), old)
    a = draw_probes("gaussian", 7, [0, 5], 3, 12, key=1).numpy()
    b = draw_probes("gaussian", 7, [0, 5], 3, 12, key=2).numpy()
    assert np.abs(a - old).min() > 0 and np.abs(a - b).min() > 0  # no shared numbers
    np.testing.assert_array_equal(a, draw_probes("gaussian", 7, [0, 5], 3, 12, key=1).numpy())
    spec = ProbeSpec("rademacher", 3, 2, key=99)
    assert ProbeSpec.from_attrs(spec.to_attrs(dim=6)) == spec
    assert ProbeSpec.from_attrs({"probe_kind": "gaussian", "probe_seed": 1, "n_probes": 2}).key == 0
    with pytest.raises(ValueError, match="probe key"):
        ProbeSpec(key=-1)


def test_a_version_1_file_without_a_key_is_read_with_its_old_probes(tmp_path):
    path = write_synthetic_dataset(tmp_path / "old.h5", n_beads=4, n_frames=5, n_probes=3,
                                   probe_seed=11, full_block=True)  # fmt: skip
    with h5py.File(path, "r+") as h5:  # as written by hessid before the key: version 1, no probe_key
        h5.attrs["format_version"] = 1
        if "probe_key" in h5["cg/hvp_term1"].attrs:
            del h5["cg/hvp_term1"].attrs["probe_key"]
    with open_dataset(path) as ds:
        assert ds.format_version == 1 and ds.term1.probe_spec.key == 0
        probes = ds.term1.probes().reshape(5, 3, 12)
        old = np.stack([_version1_philox(11, f, 3, 12) for f in ds.frame_id()])
        np.testing.assert_array_equal(probes, old)
        # the stored Term 1 is block · v with those probes: the old key reproduces the old targets
        np.testing.assert_allclose(np.einsum("tab,tkb->tka", ds.hessian_block.values(), probes),
                                   ds.term1.values().reshape(5, 3, 12), rtol=1e-10, atol=1e-10)
    assert format_version_of({"format_version": FORMAT_VERSION}) == 3
    assert format_version_of({"format_version": 2}) == 2  # older layouts stay readable


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two 2-frame vacuum runs of the AG dipeptide (same size, same frame ids, other seeds)
    with Term 1 (k = 2, Reference platform)."""
    root = tmp_path_factory.mktemp("keys")
    paths = []
    for name, seed in (("a", 5), ("b", 6)):
        build_structure(name, sequence="AG", out_dir=root)
        p = simulate(name, MDConfig(steps=20, stride=10, solvent="vacuum", platform="CPU", threads=1,
                                    seed=seed, minimize=False), root=root, progress=False)  # fmt: skip
        compute_targets(p, n_probes=2, workers=0, platform="Reference", progress=False)
        paths.append(p)
    return paths


def test_two_datasets_of_the_same_size_get_different_keys_and_probes(two_runs):
    a, b = (open_dataset(p) for p in two_runs)
    with a, b:
        assert a.format_version == FORMAT_VERSION
        assert (a.frame_id() == b.frame_id()).all() and a.term1.values().shape == b.term1.values().shape
        ka, kb = a.term1.probe_spec.key, b.term1.probe_spec.key
        assert ka != kb and ka > 0 and kb > 0
        assert np.abs(a.term1.probes() - b.term1.probes()).min() > 0


def test_training_regenerates_the_probes_of_the_stored_term1(two_runs):
    """Term 1 recomputed from the probes training draws (ProteinData's spec, frame ids) equals
    the stored values bit for bit (same System, Reference platform, same ε)."""
    path = two_runs[0]
    p = load_protein(path)
    spec = p.probe_spec()
    v = spec.draw(p.frame_id, 3 * p.n_beads).numpy().reshape(-1, spec.n_probes, p.n_beads, 3)
    with open_dataset(path) as ds:
        system = create_system(ds.topology(), "amber14-all.xml", "vacuum", "HBonds")
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        eps = float(ds.term1.attrs["epsilon_nm"])
        for t in range(ds.n_frames):
            got = term1_fd(context, length_angstrom_to_nm(ds.coordinates(t)), p.projector, v[t], eps)
            np.testing.assert_array_equal(got, p.term1[t])
        # negative control: the key-0 probes (what a shared stream would give) do not reproduce it
        v0 = ProbeSpec(spec.kind, spec.seed, spec.n_probes).draw(p.frame_id[:1], 3 * p.n_beads).numpy()
        got0 = term1_fd(context, length_angstrom_to_nm(ds.coordinates(0)), p.projector,
                        v0.reshape(spec.n_probes, p.n_beads, 3), eps)
        assert np.abs(got0 - p.term1[0]).max() > 1e-3 * np.abs(p.term1[0]).max()


def test_resuming_targets_written_before_keys_keeps_key_0(two_runs, tmp_path):
    """A run interrupted before keys existed (no probe_key) resumes with key 0 and ends equal to
    an uninterrupted key-0 run."""
    src = two_runs[1]
    full = tmp_path / "full.h5"
    part = tmp_path / "part.h5"
    for dst in (full, part):
        dst.write_bytes(src.read_bytes())
    kw = dict(n_probes=2, workers=0, platform="Reference", progress=False, chunk_frames=1)
    compute_targets(full, overwrite=True, probe_key=0, **kw)
    with pytest.raises(TargetsInterrupted):
        compute_targets(part, overwrite=True, interrupt_after_chunks=1, probe_key=0, **kw)
    with h5py.File(part, "r+") as h5:
        del h5["cg/hvp_term1"].attrs["probe_key"]
    compute_targets(part, resume=True, **kw)
    with open_dataset(full) as f, open_dataset(part) as g:
        assert g.term1.probe_spec.key == 0
        np.testing.assert_array_equal(f.term1.values(), g.term1.values())
