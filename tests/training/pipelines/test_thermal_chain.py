"""The temperature-aware chain a user runs, through the CLI only: AA data at two temperatures
into one file (``data simulate --temperature``), the Cα map, ``train`` with ``loss.mode:
thermal`` and ``simulate --temperature`` at a third temperature through the model's fixed-β
view (issue 14 items 3–6 together)."""

from __future__ import annotations

import json

import numpy as np
import yaml

from hessid.cli import main
from hessid.training.data import reader
from hessid.training.learning.models import load_potential

MD = ["--steps", "40", "--stride", "10", "--solvent", "vacuum", "--platform", "CPU", "--threads", "1",
      "--seed", "3", "--no-progress", "-q"]


def test_two_temperature_data_trains_a_thermal_model_that_simulates_at_a_third(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "build", "--name", "aaa", "--sequence", "AAAA", "-q"]) == 0
    assert main(["data", "simulate", "aaa", *MD]) == 0
    assert main(["data", "simulate", "aaa", *MD, "--temperature", "400"]) == 0
    assert main(["data", "map", "aaa", "-q"]) == 0
    with reader.open_dataset("aaa") as ds:
        assert ds.temperature is None
        np.testing.assert_array_equal(ds.temperatures(), [300.0] * 4 + [400.0] * 4)
    cfg = {"name": "m2", "output_dir": "runs", "seed": 1,
           "data": {"datasets": ["aaa"], "batch_size": 4, "val_fraction": 0.25},
           "model": {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4},
           "loss": {"mode": "thermal"}, "thermal": {"form": "M2", "hidden": 8},
           "trainer": {"max_steps": 3, "val_every_steps": 3, "checkpoint_every_steps": 3, "progress_bar": False}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", "train.yaml", "-q"]) == 0
    model_path = tmp_path / "runs" / "m2" / "model.pt"
    assert load_potential(model_path).temperature_aware
    # a FM-only mode refuses the mixed file (negative control of the chain)
    (tmp_path / "fm.yaml").write_text(yaml.safe_dump({**cfg, "name": "fm", "loss": {"mode": "fm"}}))
    assert main(["train", "--config", "fm.yaml", "-q"]) == 2
    argv = ["simulate", "--model", str(model_path), "--reference", "aaa", "--out", "sim", "--steps", "20",
            "--replicas", "2", "--no-progress", "-q"]
    assert main(argv) == 2  # a mixed reference needs --temperature
    assert main([*argv, "--temperature", "350"]) == 0
    info = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert info["model_temperature"]["temperature_aware"] is True
    assert info["model_temperature"]["temperature"] == 350.0
    # 350 K is equidistant from 300 and 400 K: starts come from the 300 K frames (0–3) only
    assert info["start"]["start_temperature"] == 300.0
    assert all(i < 4 for i in info["start"]["reference_frames"])
