"""The ``thermal`` training mode end to end: per-frame β and potential energy in batches, floors
from the training frames, a short run through ``train()`` and the checkpoint back through
``load_potential``; mixed-temperature files refused by the β-independent modes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import (
    collate_frames,
    load_protein,
    split_frames,
    thermal_noise_floors,
)
from hessid.training.learning.models import load_potential
from hessid.training.learning.thermal_models import ThermalPotential
from hessid.training.learning.trainer import train
from hessid.units import beta as beta_of_temperature

TINY_MODEL = {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "precision": "float64"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("thermal")
    a = write_synthetic_dataset(root / "a" / "a.h5", n_beads=5, n_frames=12, seed=0, name="cold", temperature=300.0)
    b = write_synthetic_dataset(root / "b" / "b.h5", n_beads=5, n_frames=12, seed=0, name="hot", temperature=350.0,
                                frame_id_offset=100)
    return [a, b]


def _mixed(p):
    """A file's frames relabelled half at 300 K and half at 350 K (the multi-temperature contract)."""
    temps = np.where(np.arange(p.n_frames) % 2 == 0, 300.0, 350.0)
    return dataclasses.replace(p, temperatures=temps, temperature=float(temps.mean()), mixed_temperature=True)


def test_batches_carry_each_frames_beta_and_potential_energy(datasets):
    p = _mixed(load_protein(datasets[0]))
    data = collate_frames([p], [(0, 0), (0, 1), (0, 2)], [np.arange(len(p.vocabulary))], torch.float64, False)
    expected = torch.tensor([beta_of_temperature(t) for t in (300.0, 350.0, 300.0)], dtype=torch.float64)
    assert torch.equal(data["beta"], expected)
    assert torch.equal(data["potential_energy"], torch.as_tensor(p.potential_energy[:3]))
    floors = thermal_noise_floors([p], [(0, t) for t in range(p.n_frames)])
    assert floors.temperatures == (300.0, 350.0) and all(f > 0 for f in floors.force + floors.energy)


def test_mixed_temperature_file_is_refused_unless_thermal(datasets):
    p = _mixed(load_protein(datasets[0]))
    with pytest.raises(ValueError, match="several temperatures"):
        split_frames([p], TrainConfig.from_dict({"loss": {"mode": "fm"}}), need_term1=False)
    train_items, _ = split_frames([p], TrainConfig.from_dict({"loss": {"mode": "thermal"}}), need_term1=False)
    assert train_items


@pytest.mark.parametrize("form", ["M2", "M0"])
def test_thermal_run_trains_and_checkpoint_loads_as_temperature_aware(datasets, tmp_path, form):
    cfg = TrainConfig.from_dict({
        "name": f"thermal_{form}", "output_dir": str(tmp_path / "runs"), "seed": 1, "skip_verification": True,
        "data": {"datasets": [str(p) for p in datasets], "batch_size": 6, "val_fraction": 0.2},
        "model": TINY_MODEL, "loss": {"mode": "thermal"},
        "thermal": {"form": form, "hidden": 8, "energy_weight": 0.0 if form == "M0" else 1.0},
        "optim": {"lr": 3e-3}, "trainer": {"max_steps": 4, "val_every_steps": 2, "checkpoint_every_steps": 2,
                                          "progress_bar": False},
    })
    result = train(cfg)
    model = load_potential(result.model)
    assert isinstance(model, ThermalPotential) and model.temperature_aware == (form != "M0")
    saved = model.metadata["config"]["thermal"]
    assert set(saved["force_floors"]) == {300.0, 350.0}  # estimated from the training frames
    assert (saved["energy_floors"] is None) == (form == "M0")
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    cols = rows[0].split(",")
    train_rows = [dict(zip(cols, r.split(","), strict=True)) for r in rows[1:] if ",train," in r]
    assert train_rows and all(float(r["fm"]) > 0 for r in train_rows)
    assert all((r["energy"] != "") == (form != "M0") for r in train_rows)  # L_U only for the T-aware form
    pos = torch.as_tensor(load_protein(datasets[0]).cg_coordinates[0])
    view = model.at_temperature(320.0)
    assert view.forces(pos, torch.zeros(5, dtype=torch.long)).shape == (5, 3)


def test_energy_matching_of_the_t_unaware_control_is_refused(datasets, tmp_path):
    cfg = TrainConfig.from_dict({
        "name": "refused", "output_dir": str(tmp_path / "runs"), "skip_verification": True,
        "data": {"datasets": [str(p) for p in datasets], "batch_size": 6},
        "model": TINY_MODEL, "loss": {"mode": "thermal"}, "thermal": {"form": "M0", "energy_weight": 1.0},
        "trainer": {"max_steps": 2, "progress_bar": False},
    })
    with pytest.raises(ValueError, match="refused"):
        train(cfg)


def test_validation_file_at_a_held_out_temperature_is_scored(datasets, tmp_path):
    held = write_synthetic_dataset(tmp_path / "c" / "c.h5", n_beads=5, n_frames=6, seed=0, name="held",
                                   temperature=400.0, frame_id_offset=200)
    cfg = TrainConfig.from_dict({
        "name": "held_out", "output_dir": str(tmp_path / "runs"), "seed": 1, "skip_verification": True,
        "data": {"datasets": [str(p) for p in datasets], "val_datasets": [str(held)], "batch_size": 6},
        "model": TINY_MODEL, "loss": {"mode": "thermal"}, "thermal": {"form": "M1", "hidden": 8},
        "trainer": {"max_steps": 2, "val_every_steps": 2, "progress_bar": False},
    })
    result = train(cfg)
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert any(",val," in r for r in rows)  # floors at 400 K scaled from 350 K, not refused
