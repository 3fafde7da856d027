"""Trainer: probe/target consistency, verification gate, resume determinism, CLI, outputs."""

from __future__ import annotations

import csv
import logging

import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from hessid.training.cli.train import build_parser
from hessid.training.data.schema import DatasetError
from hessid.training.data.synthetic import spring_network, write_synthetic_dataset
from hessid.training.learning import module as module_lib
from hessid.training.learning.configs import PriorConfig, TrainConfig, load_config
from hessid.training.learning.datasets import FrameStream, collate_frames, load_protein
from hessid.training.learning.gate import VerificationGateError, run_verification_gate
from hessid.training.learning.models import CGPotential, load_potential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.trainer import train

TINY_MODEL = {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "precision": "float64"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    a = write_synthetic_dataset(root / "a" / "a.h5", n_beads=6, n_frames=10, seed=0, name="protA")
    b = write_synthetic_dataset(root / "b" / "b.h5", n_beads=5, n_frames=8, seed=1,
                                frame_id_offset=100, name="protB")
    return [a, b]


def _config(tmp_path, datasets, **over):
    cfg = {
        "name": "run", "output_dir": str(tmp_path / "runs"), "seed": 3,
        "data": {"datasets": [str(p) for p in datasets], "batch_size": 4, "val_fraction": 0.2},
        "model": TINY_MODEL,
        "loss": {"mode": "fm_hvp", "cov_weight": 1.0, "lambda_hvp": 0.5},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 2},
        "trainer": {"max_steps": 7, "val_every_steps": 3, "checkpoint_every_steps": 2,
                    "progress_bar": False},
        "hvp_start_step": 1, "cov_ramp_steps": 2,
    }
    for key, value in over.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return TrainConfig.from_dict(cfg)


def test_online_probes_are_the_probes_of_the_stored_term1(datasets):
    """Term 1 in the file (exact Q∇²H Qᵀ v) == Q∇²H Qᵀ applied to the online-drawn probes."""
    proteins = [load_protein(p) for p in datasets]
    items = [(0, 3), (1, 0), (0, 7), (1, 5)]
    data = collate_frames(proteins, items, [np.arange(3)] * 2, torch.float64, need_probes=True)
    offsets = np.cumsum([0] + [proteins[pi].n_beads for pi, _ in items])
    for b, (pi, t) in enumerate(items):
        p = proteins[pi]
        with h5py.File(p.path) as h5:
            energy = spring_network(h5["synthetic/reference"][()])
            r = torch.as_tensor(h5["coordinates"][t : t + 1]).requires_grad_(True)
        Q = torch.as_tensor(p.projector)
        (g,) = torch.autograd.grad(energy(r).sum(), r, create_graph=True)
        v = data["probes"][:, offsets[b] : offsets[b + 1]]  # (k, n, 3) online
        for m in range(v.shape[0]):
            (hu,) = torch.autograd.grad(g, r, grad_outputs=(Q.T @ v[m])[None], retain_graph=True)
            expected = Q @ hu[0]  # (n, 3)
            got = data["term1"][m, offsets[b] : offsets[b + 1]]
            assert torch.allclose(got, expected, rtol=1e-12, atol=1e-10), (pi, t, m)
    assert data["probe_scale"].tolist() == [1.0] * 4


def test_stream_is_rank_count_independent_and_resumable():
    items = [(0, i) for i in range(12)]

    class _T:
        def __init__(self, rank, world, step):
            self.global_rank, self.world_size, self.global_step = rank, world, step

    class _M:
        _trainer = None

    def batches(world, step=0):
        out = []
        for rank in range(world):
            m = _M()
            m._trainer = _T(rank, world, step)
            out.append(list(FrameStream(items, 4, 0, lambda x: x, True, m)))
        return [sorted(sum((o[i] for o in out), [])) for i in range(len(out[0]))]

    one, two = batches(1), batches(2)
    assert one == two and len(one) == 3
    assert batches(1, step=4) == batches(1, step=3)[1:]  # step 4 = epoch 1, batch 1
    assert batches(1, step=3) != batches(1)  # a new epoch reshuffles
    s = FrameStream(items, 4, 0, lambda x: x, True)
    assert s.global_batch(4) != s.global_batch(1)  # a new epoch reshuffles


def test_verification_gate_refuses_a_broken_projector(tmp_path, datasets):
    broken = write_synthetic_dataset(tmp_path / "bad.h5", n_beads=5, n_frames=4, broken_projector=True)
    with pytest.raises(VerificationGateError, match=r"(?s)Q S\^T = I.*Term1 - beta Cov.*--skip-verification"):
        run_verification_gate([load_protein(broken)])
    cfg = _config(tmp_path, [datasets[0], broken])
    with pytest.raises(VerificationGateError):
        train(cfg)
    assert not (tmp_path / "runs" / "run" / "model.pt").exists()
    with pytest.warns(UserWarning, match="VERIFICATION GATE SKIPPED"):
        report = run_verification_gate([load_protein(broken)], skip=True)
    assert report["skipped"]
    good = run_verification_gate([load_protein(datasets[0])])
    assert good["passed"] and good["proteins"]["protA"]


class _Kill(Exception):
    pass


def _killer(at_step):
    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == at_step:
                raise _Kill(f"simulated kill at step {at_step}")

    return Kill()


def test_resume_after_kill_gives_identical_parameters(tmp_path, datasets):
    full = train(_config(tmp_path / "full", datasets))
    assert full.global_step == 7
    killed_cfg = _config(tmp_path / "killed", datasets)
    with pytest.raises(_Kill):
        train(killed_cfg, callbacks=[_killer(5)])  # last checkpoint: step 4 (mid-epoch)
    resumed = train(_config(tmp_path / "killed", datasets), resume=True)
    assert resumed.global_step == 7
    a, b = load_potential(full.model), load_potential(resumed.model)
    for (name, pa), pb in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    with open(full.metrics_csv) as fh:
        rows_full = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    with open(resumed.metrics_csv) as fh:
        rows_res = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    assert [r["total"] for r in rows_full] == [r["total"] for r in rows_res]
    assert full.metrics_csv.read_text() == resumed.metrics_csv.read_text()  # val rows too
    assert {"fm", "hvp", "gamma", "lr"} <= set(rows_full[0])
    assert rows_full[-1]["hvp"] != "" and float(rows_full[-1]["gamma"]) == 1.0
    assert full.plot is not None and full.plot.exists()
    meta = a.metadata
    assert meta["verification"]["passed"] and meta["global_step"] == 7


def test_split_by_protein_and_fm_mode(tmp_path, datasets):
    cfg = _config(tmp_path, datasets, loss={"mode": "fm", "cov_weight": 0.0},
                  data={"split": "protein", "val_proteins": ["protB"]},
                  trainer={"max_steps": 3, "early_stopping_patience": 1})
    res = train(cfg)
    model = load_potential(res.model)
    assert model.metadata["n_val_frames"] == 8 and model.metadata["n_train_frames"] == 10
    assert res.best_val_fm is not None and np.isfinite(res.best_val_fm)
    assert model.bead_vocabulary == ["ALA", "GLY", "TRP"]


def test_train_log_holds_its_own_run_only(tmp_path, datasets):
    """Two trainings in one process (a study's worker, jobs = 1): each ``train.log`` records its own
    run and none of the other's, and no file handler is left on the ``hessid`` logger (the old
    trainer appended every later run's lines to every earlier run's log)."""
    level = logging.getLogger("hessid").level
    first = train(_config(tmp_path / "a", datasets, trainer={"max_steps": 2}))
    second = train(_config(tmp_path / "b", datasets, trainer={"max_steps": 2}))
    logs = [(r.run_dir / "train.log").read_text() for r in (first, second)]
    for mine, other, text in ((first, second, logs[0]), (second, first, logs[1])):
        assert f"wrote {mine.model}" in text
        assert str(other.run_dir) not in text
    assert not [h for h in logging.getLogger("hessid").handlers if isinstance(h, logging.FileHandler)]
    assert logging.getLogger("hessid").level == level  # the logger's level is restored


def test_log_every_n_steps_thins_the_training_rows_not_the_training(tmp_path, datasets):
    """trainer.log_every_n_steps = 3 over 7 steps: training rows at steps 3 and 6 only,
    validation rows unchanged, and the same final weights as logging every step (logging reads
    values, it changes nothing); 0 is refused."""
    every = train(_config(tmp_path / "a", datasets))
    thin = train(_config(tmp_path / "b", datasets, trainer={"log_every_n_steps": 3}))
    def rows(res):
        with open(res.metrics_csv) as fh:
            return list(csv.DictReader(fh))
    train_steps = [int(r["step"]) for r in rows(thin) if r["split"] == "train"]
    assert train_steps == [3, 6]
    assert [int(r["step"]) for r in rows(every) if r["split"] == "train"] == list(range(1, 8))
    assert [r for r in rows(thin) if r["split"] == "val"] == [r for r in rows(every) if r["split"] == "val"]
    thin_rows = {int(r["step"]): r for r in rows(thin) if r["split"] == "train"}
    every_rows = {int(r["step"]): r for r in rows(every) if r["split"] == "train"}
    assert thin_rows[6] == every_rows[6]
    a, b = load_potential(every.model), load_potential(thin.model)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="log_every_n_steps"):
        _config(tmp_path, datasets, trainer={"log_every_n_steps": 0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_a_frame_without_a_finite_positive_temperature_is_named_at_load(tmp_path, bad):
    """β = 1/(k_B T) enters Term 2 and the prior: load_protein refuses a frame whose stored
    temperature is not finite and positive, naming the file, the dataset and the frame
    (control: the same file with every temperature valid loads)."""
    path = write_synthetic_dataset(tmp_path / "t.h5", n_beads=4, n_frames=5)
    temps = np.full(5, 300.0)
    with h5py.File(path, "a") as f:
        f["temperature"] = temps
    assert load_protein(path).temperatures.tolist() == temps.tolist()
    temps[3] = bad
    with h5py.File(path, "a") as f:
        f["temperature"][...] = temps
    with pytest.raises(DatasetError, match=r"t\.h5: dataset 'temperature', frame 3: temperature"):
        load_protein(path)


def test_hvp_method_is_used_and_every_exact_path_trains_alike(tmp_path, datasets, monkeypatch):
    """trainer.hvp_method reaches energy_forces_hvp (spy), and edges / dense give the same
    training losses to float64 round-off (all paths are exact); an unknown path is refused."""
    seen = []
    real = module_lib.energy_forces_hvp

    def spy(*args, **kwargs):
        seen.append(kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module_lib, "energy_forces_hvp", spy)
    totals = {}
    for method in ("edges", "dense"):
        seen.clear()
        res = train(_config(tmp_path / method, datasets, trainer={"hvp_method": method}))
        assert set(seen) == {method}
        with open(res.metrics_csv) as fh:
            totals[method] = [float(r["total"]) for r in csv.DictReader(fh) if r["split"] == "train"]
    assert len(totals["edges"]) == 7
    # the paths differ by float64 rounding (~1e-13 relative per HVP); 7 AdamW steps amplify it
    # far less than 1e4-fold
    np.testing.assert_allclose(totals["dense"], totals["edges"], rtol=1e-9)
    with pytest.raises(ValueError, match="trainer.hvp_method"):
        _config(tmp_path, datasets, trainer={"hvp_method": "sparse"})


def test_full_hessian_mode_trains(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "h.h5", n_beads=4, n_frames=6, full_block=True)
    cfg = _config(tmp_path, [ds], loss={"mode": "fm_hessian", "cov_weight": 1.0},
                  trainer={"max_steps": 3})
    res = train(cfg)
    with open(res.metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    assert len(rows) == 3 and rows[-1]["hessian"] != "" and np.isfinite(float(rows[-1]["hessian"]))


def test_yaml_config_and_overrides(tmp_path, datasets):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "a.h5").touch()  # relative paths: working directory, then the YAML's folder
    (tmp_path / "run.yaml").write_text(
        "name: y\ndata:\n  datasets: [a/a.h5]\nloss:\n  mode: fm_hvp\n  cov_weight: 0\n")
    cfg = load_config(tmp_path / "run.yaml", ["loss.cov_weight=1", "trainer.max_steps=5"])
    assert cfg.loss.cov_weight == 1 and cfg.trainer.max_steps == 5
    assert cfg.data.datasets == [str(tmp_path / "a" / "a.h5")]
    with pytest.raises(ValueError, match="unknown keys in `optim`"):
        load_config(None, ["optim.learning_rate=1"])


def test_cli_registers_train(tmp_path, datasets):
    (tmp_path / "x.yaml").write_text("name: x\n")
    args = build_parser().parse_args(["--config", str(tmp_path / "x.yaml"), "--devices", "2",
                                      "--num-nodes", "1", "--skip-verification",
                                      "--set", "loss.cov_weight=1"])
    assert args.trainer.devices == 2 and args.skip_verification and args.loss.cov_weight == 1


def test_prior_section_is_typed_and_keeps_its_yaml_keys():
    cfg = TrainConfig.from_dict({"prior": {"n_fourier": 2}})
    assert cfg.prior == PriorConfig(enabled=True, n_fourier=2, repulsion_scale=1.0)
    assert cfg.to_dict()["prior"] == {"enabled": True, "n_fourier": 2, "repulsion_scale": 1.0}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # what checkpoints store reads back
    with pytest.raises(ValueError, match="unknown keys in `prior`"):
        TrainConfig.from_dict({"prior": {"n_fourrier": 2}})


def test_training_module_is_public_and_computes_every_term(datasets):
    """``CGTrainingModule(potential, cfg, run_info)``: the loss terms of one batch, with a θ-graph."""
    cfg = TrainConfig.from_dict({"model": TINY_MODEL,
                                 "loss": {"mode": "fm_hvp", "cov_weight": 1.0, "normalise": False}})
    proteins = [load_protein(datasets[0])]
    pot = CGPotential(proteins[0].vocabulary, None, cfg.model)
    module = CGTrainingModule(pot, cfg, {})
    data = collate_frames(proteins, [(0, 0), (0, 1)], [np.arange(len(proteins[0].vocabulary))],
                          pot.dtype, need_probes=True)
    terms = module.compute_losses(data, 10**9)
    assert {"fm", "hvp", "total", "gamma"} <= set(terms) and float(terms["gamma"]) == 1.0
    assert torch.isfinite(terms["total"]) and terms["total"].requires_grad
    assert torch.allclose(terms["total"], terms["fm"] + terms["hvp"])  # λ = 1, no normalisation
    assert CGTrainingModule(pot, cfg).run_info == {}


def test_a_dataset_without_temperature_is_refused_not_defaulted(tmp_path):
    """β enters Term 2 and the prior: a file without ``temperature`` is an error (no silent 300 K)."""
    path = write_synthetic_dataset(tmp_path / "t" / "t.h5", n_beads=4, n_frames=3, seed=0, name="noT")
    assert load_protein(path).temperature == 300.0  # control: the attribute is read when present
    with h5py.File(path, "a") as h5:
        del h5.attrs["temperature"]
    with pytest.raises(DatasetError, match="no 'temperature' attribute"):
        load_protein(path)
