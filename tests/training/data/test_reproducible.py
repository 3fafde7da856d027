"""Reproducible AA data (issue 12 item 6, data side): a fixed non-zero default seed stored in
every file, ``--deterministic`` runs that are bit-identical, builds that do not depend on the
caller's random state."""

from __future__ import annotations

import json
import random

import h5py
import numpy as np

from hessid.cli import main
from hessid.training.data.aa_md import DEFAULT_SEED, MDConfig, choose_platform, simulate
from hessid.training.data.structures import DEFAULT_BUILD_SEED, build_structure

ARRAYS = ("coordinates", "forces", "potential_energy", "time", "frame_id")


def _arrays(path) -> dict[str, bytes]:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][()].tobytes() for k in ARRAYS}


def test_default_seed_is_fixed_non_zero():
    assert MDConfig().seed != 0 and DEFAULT_BUILD_SEED != 0


def test_the_library_never_passes_seed_0_to_openmm(tmp_path):
    build_structure("z", sequence="AG", out_dir=tmp_path)
    path = simulate("z", MDConfig(steps=0, seed=0, solvent="vacuum", platform="CPU", threads=1, minimize=False),
                    root=tmp_path, progress=False)  # fmt: skip
    with h5py.File(path, "r") as h5:
        assert int(h5.attrs["seed"]) == DEFAULT_SEED == MDConfig().seed


def test_deterministic_platform_settings():
    plat, props = choose_platform(None, deterministic=True)
    assert plat.getName() == "CPU" and props == {"Threads": "1", "DeterministicForces": "true"}
    plat, props = choose_platform("CPU", threads=4, deterministic=True)
    assert props["Threads"] == "1"
    assert choose_platform("Reference", deterministic=True)[1] == {}


def test_two_deterministic_default_seed_runs_are_bit_identical(tmp_path, monkeypatch):
    """Two ``data simulate --deterministic`` runs with the default seed (minimisation, 300
    steps, vacuum) store the same bytes, and the seed and platform settings."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "build", "--name", "ag", "--sequence", "AG", "-q"]) == 0
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.pdb").write_bytes((tmp_path / "ag" / "ag.pdb").read_bytes())
        assert main(["data", "simulate", name, "--steps", "300", "--stride", "100", "--solvent", "vacuum",
                     "--deterministic",
                     "--no-progress", "-q"]) == 0
    one, two = tmp_path / "one" / "one.h5", tmp_path / "two" / "two.h5"
    assert _arrays(one) == _arrays(two)
    with h5py.File(one, "r") as h5:
        assert int(h5.attrs["seed"]) == MDConfig().seed
        assert json.loads(h5.attrs["platform_properties"]) == {"DeterministicForces": "true", "Threads": "1"}
        assert json.loads(h5.attrs["md_config"])["deterministic"] is True
        assert h5["coordinates"].shape[0] == 3
        # not a trivially static run: the frames differ from each other
        assert np.abs(h5["coordinates"][2] - h5["coordinates"][0]).max() > 0.05


def test_a_build_does_not_depend_on_the_callers_random_state(tmp_path):
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002 - the global state a caller might have
    a = build_structure("a", sequence="GYDP", out_dir=tmp_path).read_text()
    random.seed(2)
    np.random.seed(2)  # noqa: NPY002
    b = build_structure("b", sequence="GYDP", out_dir=tmp_path).read_text()
    assert a == b
