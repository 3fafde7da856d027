"""Reproducibility of the run commands: a fixed, non-zero default seed stored in the outputs, and
``--deterministic`` runs of CG MD and training that repeat bit for bit."""

from __future__ import annotations

import json
import os

import torch

from hessid.cli import main
from hessid.training.cli.demo import build_parser as demo_parser
from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.md.simulation import DEFAULT_SEED
from tests.training.cli.helpers import GOOD_YAML


def _simulate(out, *extra) -> int:
    return main(["simulate", "--model", "harmonic", "--reference", "toy", "--out", os.fspath(out),
                 "--steps", "40", "--stride", "10", "--replicas", "2", "--no-progress", "-q",
                 *extra])


def test_default_seed_is_fixed_nonzero_and_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(tmp_path / "toy" / "toy.h5", n_beads=5, n_frames=12, seed=0)
    assert DEFAULT_SEED != 0
    assert _simulate(tmp_path / "a") == 0 and _simulate(tmp_path / "b") == 0
    meta = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert meta["seed"] == meta["config"]["seed"] == DEFAULT_SEED
    assert f"seed: {DEFAULT_SEED}" in (tmp_path / "a" / "hessid-simulate.yaml").read_text()
    for name in ("replica_000.dcd", "replica_001.dcd", "state.csv"):  # two default runs agree
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # negative control: another seed gives another trajectory
    assert _simulate(tmp_path / "c", "--seed", "7") == 0
    assert ((tmp_path / "c" / "replica_000.dcd").read_bytes()
            != (tmp_path / "a" / "replica_000.dcd").read_bytes())
    assert demo_parser().parse_args([]).seed == DEFAULT_SEED


def test_deterministic_cg_md_and_training_repeat_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(tmp_path / "toy" / "toy.h5", n_beads=5, n_frames=12, seed=0)
    (tmp_path / "ok.yaml").write_text(GOOD_YAML.replace("max_steps: 1", "max_steps: 3"))
    threads = torch.get_num_threads()
    for run in ("a", "b"):
        assert _simulate(tmp_path / f"sim_{run}", "--deterministic", "--threads", "2") == 0
        assert main(["train", "--config", "ok.yaml", "--out", os.fspath(tmp_path / run),
                     "--deterministic", "-q"]) == 0
        assert torch.get_num_threads() == threads  # restored after the run
        assert not torch.are_deterministic_algorithms_enabled()
    meta = json.loads((tmp_path / "sim_a" / "simulation.json").read_text())
    assert meta["deterministic"] is True
    for name in ("replica_000.dcd", "replica_001.dcd", "state.csv"):
        assert (tmp_path / "sim_a" / name).read_bytes() == (tmp_path / "sim_b" / name).read_bytes()
    weights = [torch.load(tmp_path / r / "ok" / "model.pt", weights_only=False)["state_dict"]
               for r in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert ((tmp_path / "a" / "ok" / "metrics.csv").read_bytes()
            == (tmp_path / "b" / "ok" / "metrics.csv").read_bytes())
