"""Training loop: runs each loss mode, resumes to the same weights, refuses bad input."""

from __future__ import annotations

import pytest
import torch

from hessid.training.atomistic.evaluation import error_metrics, frequency_comparison
from hessid.training.atomistic.frames import collate, split_structures
from hessid.training.atomistic.model import load_potential
from hessid.training.atomistic.trainer import TrainConfig, resolve_device, train
from tests.training.atomistic.fixtures import SMALL, fake_dataset


def _datasets():
    return [fake_dataset("a", 3, 16, seed=1), fake_dataset("b", 4, 16, seed=2, id_offset=100)]


def _cfg(tmp_path, name, mode="ef_hvp", **optim):
    return TrainConfig(
        name=name, output_dir=str(tmp_path), seed=3, progress=False, checkpoint_every=2,
        model={**SMALL, "precision": "float64"},
        loss={"mode": mode, "probe_kind": "random", "n_probes": 2, "probe_regime": "fresh"},
        data={"datasets": ["a", "b"], "n_train": 8, "n_val": 4, "n_test": 4},
        optim={"batch_size": 4, "max_epochs": 2, "lr": 1e-3, **optim})


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """4 steps straight vs 3 steps (stopping mid-epoch 2) then --resume to 4: equal weights
    and metrics. Control: a run with another seed differs."""
    torch.set_num_threads(1)
    ds = _datasets()
    full = train(_cfg(tmp_path, "full"), datasets=ds)
    train(_cfg(tmp_path, "part", max_steps=3), datasets=ds)
    resumed = train(_cfg(tmp_path, "part"), resume=True, datasets=ds)
    assert full.global_step == resumed.global_step == 4
    a, b = load_potential(full.model), load_potential(resumed.model)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    drop = {"cpu_s"}  # process time differs run to run
    assert {k: v for k, v in full.last.items() if k not in drop} == \
        {k: v for k, v in resumed.last.items() if k not in drop}
    other = _cfg(tmp_path, "other", max_steps=1)
    other.seed = 4
    c = load_potential(train(other, datasets=ds).model)
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))


@pytest.mark.parametrize("mode", ["ef", "ef_h"])
def test_modes_train_and_write_metrics(tmp_path, mode):
    ds = _datasets()
    result = train(_cfg(tmp_path, mode, mode=mode, max_steps=3), datasets=ds)
    assert result.global_step == 3 and result.model.is_file()
    assert result.metrics_csv.is_file()  # 3 steps: one epoch of 2 batches, one row: no row yet


def test_existing_run_and_changed_config_are_refused(tmp_path):
    ds = _datasets()
    train(_cfg(tmp_path, "r", max_steps=2), datasets=ds)
    with pytest.raises(FileExistsError, match="use --resume"):
        train(_cfg(tmp_path, "r", max_steps=2), datasets=ds)
    changed = _cfg(tmp_path, "r")
    changed.optim.lr = 1e-2
    with pytest.raises(ValueError, match="different run configuration"):
        train(changed, resume=True, datasets=ds)


def test_hessian_losses_on_ef_only_data_are_refused(tmp_path):
    ds = [fake_dataset("a", 3, 32, seed=1, hessians=False)]
    cfg = _cfg(tmp_path, "x")
    cfg.data.datasets = ["a"]
    with pytest.raises(ValueError, match="needs Hessians"):
        train(cfg, datasets=ds)


def test_evaluation_metrics_and_frequencies_run_on_a_trained_model(tmp_path):
    ds = _datasets()
    result = train(_cfg(tmp_path, "ev", mode="ef_h", max_steps=2), datasets=ds)
    model = load_potential(result.model)
    m = error_metrics(model, ds, [(0, 0), (1, 3)])
    assert m["n"] == 2 and m["hessian_rmse"] > 0 and m["force_mae"] <= m["force_rmse"]
    f = frequency_comparison(model, ds[0], gtol=1e-2)
    assert len(f["reference_frequencies"]) == len(f["model_frequencies"]) == 3


def test_subset_seed_changes_the_training_subset_not_the_test_and_validation_sets():
    """Replicate training subsets (the PHL study): other structures, the same test and
    validation sets, nested in n_train; None keeps the split seed's order (old behaviour)."""
    ds = _datasets()
    base = split_structures(ds, 8, 4, 4, seed=5)
    assert split_structures(ds, 8, 4, 4, seed=5, subset_seed=None) == base
    a = split_structures(ds, 8, 4, 4, seed=5, subset_seed=0)
    b = split_structures(ds, 8, 4, 4, seed=5, subset_seed=1)
    for s in (a, b):
        assert (s.test_near, s.test_far, s.val) == (base.test_near, base.test_far, base.val)
        held = set(s.test_near) | set(s.test_far) | set(s.val)
        assert not held & set(s.train)
    assert a.train != b.train  # control: the subset seed matters
    small = split_structures(ds, 4, 4, 4, seed=5, subset_seed=0)
    assert a.train[:4] == small.train  # nested


def test_batch_moves_every_tensor_to_the_device():
    """``AtomisticBatch.to`` moves every tensor, the Hessian list included, and keeps dtypes
    (checked with torch's ``meta`` device, which exists on every machine)."""
    ds = _datasets()
    b = collate(ds, [(0, 0), (1, 1)], torch.float64, hessians=True)
    m = b.to("meta")
    for name, value in vars(m).items():
        tensors = value if isinstance(value, list) else [value]
        assert all(t.device.type == "meta" for t in tensors), name
        before = getattr(b, name)
        assert [t.dtype for t in tensors] == [t.dtype for t in (before if isinstance(before, list) else [before])]
    assert b.positions.device.type == "cpu"  # the original is untouched


def test_device_option_is_checked_up_front_and_not_part_of_the_run_key(tmp_path):
    """A bad device string and CUDA without a GPU are refused when the config is made (one line
    naming the option); ``device`` may change on --resume (other settings may not)."""
    with pytest.raises(ValueError, match="is not a device"):
        TrainConfig(**{**vars(_cfg(tmp_path, "x")), "device": "gpu0"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
    ds = _datasets()
    train(_cfg(tmp_path, "r", max_steps=1), datasets=ds)
    moved = _cfg(tmp_path, "r", max_steps=2)
    moved.device = "auto"
    assert "device" not in moved.run_key()
    assert train(moved, resume=True, datasets=ds).global_step == 2
