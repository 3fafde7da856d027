"""Plateau stopping (rule and trainer wiring) and separate validation files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.callbacks import PlateauStopping
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import collate_frames, load_protein, merge_vocabularies
from hessid.training.learning.models import load_potential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.trainer import train

TINY_MODEL = {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "precision": "float64"}


def _run_rule(values, every=500, **kw):
    cb = PlateauStopping(**kw)
    for i, v in enumerate(values, start=1):
        if cb.should_stop(i * every, v):
            return cb
    return cb


def test_plateau_rule_stops_after_window_and_budget():
    # improves by 10 % per validation until step 2000, then flat: last counted step 2000,
    # window 2000 → stop at 4000 (≥ 1.5 × 2000 = 3000 as well)
    vals = [1.0, 0.9, 0.81, 0.729] + [0.7289] * 10
    cb = _run_rule(vals, rel_delta=0.005, window_steps=2000, budget_factor=1.5)
    assert (cb.plateau_step, cb.stopped_step) == (2000, 4000)


def test_plateau_rule_budget_factor_delays_the_stop():
    # counted improvements until step 6000; window 2000 alone would stop at 8000, the budget 1.5 ×
    # 6000 = 9000 → first validation at or after 9000
    vals = [1.0 * 0.9**i for i in range(12)] + [0.9**11] * 20
    cb = _run_rule(vals, rel_delta=0.005, window_steps=2000, budget_factor=1.5)
    assert (cb.plateau_step, cb.stopped_step) == (6000, 9000)


def test_plateau_rule_small_improvements_do_not_reset_the_plateau():
    # 0.1 % gains are below δ = 0.5 %: they do not count, the run stops on schedule
    vals = [1.0, 0.5] + [0.5 * 0.999**i for i in range(1, 12)]
    cb = _run_rule(vals, rel_delta=0.005, window_steps=2000, budget_factor=1.5)
    assert (cb.plateau_step, cb.stopped_step) == (1000, 3000)
    # negative control: with δ = 0.05 % the same gains count and the run does not stop
    cb = _run_rule(vals, rel_delta=0.0005, window_steps=2000, budget_factor=1.5)
    assert cb.stopped_step is None


def test_plateau_rule_with_zero_delta_counts_every_new_minimum():
    vals = [1.0, 0.9, 0.8999, 0.89989] + [0.95] * 10
    cb = _run_rule(vals, rel_delta=0.0, window_steps=2000, budget_factor=1.5)
    assert (cb.plateau_step, cb.stopped_step) == (2000, 4000)
    # negative control: with δ = 0.5 % the two tiny gains do not count
    cb = _run_rule(vals, rel_delta=0.005, window_steps=2000, budget_factor=1.5)
    assert (cb.plateau_step, cb.stopped_step) == (1000, 3000)


def test_plateau_rule_off_never_stops_and_rejects_bad_parameters():
    assert _run_rule([1.0] * 50, rel_delta=0.0, window_steps=1, stop=False).stopped_step is None
    for kw in ({"rel_delta": 1.0, "window_steps": 1}, {"rel_delta": 0.1, "window_steps": 0},
               {"rel_delta": 0.1, "window_steps": 1, "budget_factor": 0.5}):
        with pytest.raises(ValueError):
            PlateauStopping(**kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    a = write_synthetic_dataset(root / "a" / "a.h5", n_beads=5, n_frames=12, seed=0, name="train_a")
    v = write_synthetic_dataset(root / "v" / "v.h5", n_beads=5, n_frames=6, seed=5, frame_id_offset=500,
                                name="held_out")
    return a, v


def _val_fm(model_path, files):
    """FM loss of a saved model on every frame of the validation file (FM only, as validation)."""
    pot = load_potential(model_path)
    proteins = [load_protein(p) for p in files]
    _, type_maps = merge_vocabularies(proteins)
    items = [(1, t) for t in range(proteins[1].n_frames)]
    data = collate_frames(proteins, items, type_maps, pot.dtype, False)
    cfg = TrainConfig.from_dict({"loss": {"mode": "fm", "normalise": False}})
    return float(CGTrainingModule(pot, cfg, {}).compute_losses(data, 0, fm_only=True)["fm"].detach())


def test_validation_files_train_on_every_frame_and_keep_the_best_weights(tmp_path, files):
    a, v = files
    cfg = TrainConfig.from_dict({
        "name": "run", "output_dir": str(tmp_path / "runs"), "seed": 1,
        "data": {"datasets": [str(a)], "val_datasets": [str(v)], "batch_size": 6},
        "model": TINY_MODEL, "loss": {"mode": "fm_hvp", "cov_weight": 1.0, "normalise": False},
        "optim": {"lr": 3e-2, "schedule": "constant"},
        "trainer": {"max_steps": 40, "val_every_steps": 4, "checkpoint_every_steps": 40, "progress_bar": False,
                    "early_stopping_patience": 0, "plateau_rel_delta": 0.02, "plateau_window_steps": 8,
                    "plateau_budget_factor": 1.5, "keep_best": True},
    })
    res = train(cfg)
    with open(res.metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    val = [(int(r["step"]), float(r["fm"])) for r in rows if r["split"] == "val"]
    assert val and all(r["hvp"] == "" for r in rows if r["split"] == "val")  # FM only on the val file
    # the stop step is the rule applied to the logged history
    cb = PlateauStopping(0.02, 8, 1.5)
    stop = next((s for s, x in val if cb.should_stop(s, x)), None)
    assert stop is not None  # the rule fired inside max_steps (lr chosen so that it does)
    assert res.stopping["stopped_step"] == stop == res.global_step
    # the saved weights are those of the best validation, not the last step's
    best_step, best = min(val, key=lambda sv: sv[1])
    assert res.stopping["best_step"] == best_step
    np.testing.assert_allclose(_val_fm(res.model, files), best, rtol=1e-10)
    assert res.best_val_fm == pytest.approx(best, rel=1e-12)
    # negative control: without keep_best the model is the last step's, whose loss differs
    assert best_step != res.global_step
    cfg.name, cfg.trainer.keep_best = "last", False
    res2 = train(cfg)
    assert abs(_val_fm(res2.model, files) - best) > 1e-3 * best


def test_validation_files_are_never_trained_on(tmp_path, files):
    a, v = files
    cfg = TrainConfig.from_dict({
        "name": "items", "output_dir": str(tmp_path / "runs"), "seed": 2,
        "data": {"datasets": [str(a)], "val_datasets": [str(v)], "batch_size": 4, "val_fraction": 0.5},
        "model": TINY_MODEL, "loss": {"mode": "fm"},
        "trainer": {"max_steps": 3, "val_every_steps": 3, "checkpoint_every_steps": 3, "progress_bar": False},
    })
    res = train(cfg)
    meta = torch.load(res.model, weights_only=False)["metadata"]
    assert (meta["n_train_frames"], meta["n_val_frames"]) == (12, 6)  # val_fraction not used
