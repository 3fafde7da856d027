"""Cross-fitted residual (docs/training.md "Cross-fitted residual"): the losses use the stored
dF exactly, the folds are a deterministic partition, no residual comes from a model that trained
on its frame, resume is exact, the trainer checks the file, config and CLI refuse bad input."""

from __future__ import annotations

import types

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from hessid.cli import main
from hessid.hvp_loss import per_frame_hvp_loss, rao_blackwell_hvp_loss
from hessid.training.cli.train import build_parser, train_config
from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.configs import LossConfig, TrainConfig
from hessid.training.learning.crossfit import crossfit_residuals
from hessid.training.learning.datasets import (
    collate_frames,
    load_protein,
    split_frames,
    target_normalisations,
)
from hessid.training.learning.hessians import full_hessian, hvp_reference
from hessid.training.learning.losses import hvp_target_norms
from hessid.training.learning.models import load_potential
from hessid.training.learning.residuals import (
    fold_assignment,
    model_residuals,
    read_residual_file,
    residual_second_moment,
    residuals_for_frames,
)
from hessid.training.learning.trainer import train
from hessid.units import beta as beta_of
from tests.helpers import assert_close, relative_error
from tests.training.learning.fixtures import N_BEADS, TINY, synthetic_protein, tiny_module


@pytest.fixture(scope="module")
def protein(tmp_path_factory):
    return synthetic_protein(tmp_path_factory.mktemp("xf"))


def _batch(protein, frames=(0, 1, 2), need_hessian=False):
    """A float64 batch with a stored residual of the size of P f but unrelated to the model."""
    g = np.random.default_rng(5)
    stored = [g.normal(scale=float(np.abs(protein.cg_forces).mean()), size=protein.cg_forces.shape)]
    return collate_frames([protein], [(0, t) for t in frames], [np.arange(len(protein.vocabulary))],
                          torch.float64, need_probes=not need_hessian, need_hessian=need_hessian,
                          residuals=stored)


def _xfit(**loss):
    return dict(loss, residual="crossfit", residual_file="unused.npz")


# ----------------------------------------------------------------------------- exact losses


@pytest.mark.parametrize("estimator", ["frame", "rao_blackwell"])
def test_crossfit_loss_is_the_formula_with_the_stored_residual(protein, estimator):
    """residual=crossfit: the module's HVP loss equals docs/variance_reduction.md eq. (1)/(2)
    (+ the stabiliser, α = 0.5) evaluated with the stored dF and reference HVPs (autograd double
    backward) in float64. Negative control: the online module on the same batch gives the
    formula with dF = P f − F_θ, which differs from the cross-fit value by far more than the
    tolerance, so an online residual used when crossfit is requested would be detected."""
    data = _batch(protein)
    frames, k = 3, data["probes"].shape[0]
    xf = tiny_module(protein, **_xfit(hvp_estimator=estimator))
    on = tiny_module(protein, hvp_estimator=estimator)
    pot = xf.potential
    args = (pot, data["positions"], data["bead_types"], data["batch"])
    Hv = hvp_reference(*args, data["probes"]).hvp  # (k, A, 3)
    forces = pot.forces(data["positions"], data["bead_types"], data["batch"])

    def formula(dF):
        shape = (k, frames, N_BEADS, 3)
        Hv_b = Hv.reshape(shape).transpose(0, 1)
        T1_b = data["term1"].reshape(shape).transpose(0, 1)
        v_b = data["probes"].reshape(shape).transpose(0, 1)
        w = dF.reshape(frames, N_BEADS, 3)
        if estimator == "frame":
            return per_frame_hvp_loss(Hv_b, T1_b, w, v_b, data["beta"], 1.0, data["probe_scale"]).mean()
        HdF = hvp_reference(*args, dF[None]).hvp[0].reshape(frames, -1)
        loss = rao_blackwell_hvp_loss(Hv_b, T1_b, HdF, w, data["beta"], 1.0, data["probe_scale"])
        wf = w.reshape(frames, -1)
        inv = 1.0 / wf.norm(dim=-1)
        q = torch.einsum("bkd,bd->bk", Hv_b.reshape(frames, k, -1), wf) * inv[:, None]
        stab = (HdF**2).sum(-1) * inv**2 - data["probe_scale"] * (q**2).mean(-1)
        return (loss + 0.5 * stab).mean()

    value = xf.compute_losses(data, 10**9)["hvp"].detach()
    expected = formula(data["residual"])
    assert_close(value, expected, rtol=1e-10, what=f"{estimator} loss with the stored dF")
    online = on.compute_losses(data, 10**9)["hvp"].detach()
    assert_close(online, formula((data["forces"] - forces).detach()), rtol=1e-10, what="online loss")
    assert relative_error(online, expected) > 1e-3, "an online residual must not pass as the stored one"
    assert torch.isfinite(value) and abs(float(expected)) > 1.0


def test_crossfit_full_hessian_target_uses_the_stored_residual(protein):
    """fm_hessian: L_H = mean ‖H_θ − (T1 − γβ dF dFᵀ)‖_F² with the stored dF (exact); the online
    value differs (negative control)."""
    data = _batch(protein, need_hessian=True)
    xf = tiny_module(protein, **_xfit(mode="fm_hessian"))
    on = tiny_module(protein, mode="fm_hessian")
    hs = full_hessian(xf.potential, data["positions"], data["bead_types"], data["batch"])
    dF = data["residual"].reshape(3, -1)
    want = torch.stack([((h - (t1 - float(b) * torch.outer(w, w))) ** 2).sum() for h, t1, w, b in
                        zip(hs, data["hessian_blocks"], dF, data["beta"], strict=True)]).mean()
    got = xf.compute_losses(data, 10**9)["hessian"].detach()
    assert_close(got, want, rtol=1e-10, what="Hessian loss with the stored dF")
    assert relative_error(on.compute_losses(data, 10**9)["hessian"].detach(), want) > 1e-3


def test_hvp_norm_with_crossfit_is_the_zero_model_loss_of_the_stored_target(protein):
    """target_normalisations(residuals=…): hvp_norm = mean c·mean_k ‖T1 v − γβ dF (dF·v)‖² with
    the stored dF (the loss of H_θ = 0 against the fixed target); differs from the P f norm."""
    items = [(0, t) for t in range(protein.n_frames)]
    stored = np.random.default_rng(1).normal(size=protein.cg_forces.shape)
    got = target_normalisations([protein], items, True, False, cov_weight=1.0, residuals=[stored])
    ref = target_normalisations([protein], items, True, False, cov_weight=1.0)
    spec = protein.probe_spec()
    v = spec.draw(protein.frame_id, 3 * N_BEADS).reshape(-1, spec.n_probes, N_BEADS, 3)
    want = hvp_target_norms(torch.as_tensor(protein.term1), torch.as_tensor(stored), v,
                            beta_of(protein.temperature), 1.0, spec.scale(3 * N_BEADS)).mean()
    assert_close(got["hvp_norm"], want, rtol=1e-12, what="hvp_norm (stored dF)")
    assert relative_error(got["hvp_norm"], ref["hvp_norm"]) > 1e-3
    assert got["force_norm"] == ref["force_norm"]


# ----------------------------------------------------------------------------- folds


def test_fold_assignment_is_a_deterministic_balanced_partition():
    prots = [types.SimpleNamespace(frame_id=np.arange(100, 137)),
             types.SimpleNamespace(frame_id=np.arange(20) * 3)]
    items = [(0, t) for t in range(37)] + [(1, t) for t in range(20)]
    folds = fold_assignment(prots, items, 4, seed=3)
    assert folds.shape == (57,) and set(folds.tolist()) == {0, 1, 2, 3}
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 1  # each frame in exactly one fold, balanced
    perm = np.random.default_rng(0).permutation(57)  # keyed by frame id, not by item order
    shuffled = fold_assignment(prots, [items[i] for i in perm], 4, seed=3)
    assert np.array_equal(shuffled, folds[perm])
    assert not np.array_equal(fold_assignment(prots, items, 4, seed=4), folds)  # seeded
    blocks = fold_assignment(prots, items, 3, seed=3, block=5)
    assert all(len(set(blocks[s : s + 5].tolist())) == 1 for s in range(0, 35, 5))
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(prots, items, 1, seed=0)
    with pytest.raises(ValueError, match="cannot fill"):
        fold_assignment(prots, items[:3], 4, seed=0)


# ----------------------------------------------------------------------------- end to end


def _config(root, datasets, **loss):
    return TrainConfig.from_dict({
        "name": "main", "output_dir": str(root / "runs"), "seed": 3,
        "data": {"datasets": [str(p) for p in datasets], "batch_size": 4, "val_fraction": 0.25},
        "model": TINY, "loss": dict({"mode": "fm_hvp", "cov_weight": 1.0}, **loss),
        "trainer": {"max_steps": 6, "val_every_steps": 3, "checkpoint_every_steps": 2,
                    "progress_bar": False}})


@pytest.fixture(scope="module")
def xfit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("xfit")
    ds = [write_synthetic_dataset(root / "a.h5", n_beads=5, n_frames=14, seed=0, name="protA"),
          write_synthetic_dataset(root / "b.h5", n_beads=4, n_frames=10, seed=1,
                                  frame_id_offset=100, name="protB")]
    cfg = _config(root, ds)
    path = crossfit_residuals(cfg, 3, root / "cf", progress=False)
    return cfg, path, root


def test_no_residual_comes_from_a_model_that_trained_on_its_frame(xfit_run):
    """The file covers exactly the main split; fold k's model trained on the training frames of
    every other fold (from its own metadata) and on none of fold k or the validation frames;
    each stored residual is P f − F^{(−k)}(R) of that model (float64, exact)."""
    cfg, path, _ = xfit_run
    rf = read_residual_file(path)
    proteins = [load_protein(p) for p in cfg.data.datasets]
    train_items, val_items = split_frames(proteins, cfg, True)
    models = [load_potential(c["model"]) for c in rf.provenance["checkpoints"]]
    assert len(models) == 3
    for i, p in enumerate(proteins):
        fid, split, fold = rf.frame_id[i], rf.split[i], rf.fold[i]
        assert sorted(fid[split == 0]) == sorted(int(p.frame_id[t]) for q, t in train_items if q == i)
        assert sorted(fid[split == 1]) == sorted(int(p.frame_id[t]) for q, t in val_items if q == i)
        for k, m in enumerate(models):
            seen = set(m.metadata["train_frame_ids"][p.name])
            assert seen == {int(f) for f, s, fo in zip(fid, split, fold, strict=True) if s == 0 and fo != k}
            mine = fid[fold == k]
            assert not seen & set(mine.tolist())  # the negative of the claim would show here
            rows = np.array([int(np.flatnonzero(p.frame_id == f)[0]) for f in mine])
            assert_close(rf.residual[i][fold == k], model_residuals(m, p, rows), rtol=1e-12,
                         what=f"fold {k} residuals")
    assert rf.provenance["folds"] == 3 and all(len(c["sha256"]) == 64 for c in rf.provenance["checkpoints"])


class _Kill(RuntimeError):
    pass


class _KillFold1(pl.Callback):
    def __init__(self):
        self.armed = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.armed and module.cfg.name == "fold1" and trainer.global_step == 3:
            self.armed = False
            raise _Kill("simulated kill in fold 1")


def test_resumed_crossfit_gives_identical_residuals(xfit_run):
    """Killed in fold 1 after its step-2 checkpoint, then called again: fold 0 is not retrained,
    fold 1 resumes, and every residual equals the uninterrupted run's bit for bit."""
    cfg, path, root = xfit_run
    out = root / "cf_killed"
    with pytest.raises(_Kill):
        crossfit_residuals(cfg, 3, out, callbacks=[_KillFold1()], progress=False)
    assert (out / "folds" / "fold0" / "done.json").exists()
    assert not (out / "folds" / "fold1" / "done.json").exists()
    mtime = (out / "folds" / "fold0" / "model.pt").stat().st_mtime_ns
    resumed = read_residual_file(crossfit_residuals(cfg, 3, out, progress=False))
    full = read_residual_file(path)
    assert (out / "folds" / "fold0" / "model.pt").stat().st_mtime_ns == mtime
    for key in ("frame_id", "split", "fold", "residual"):
        for a, b in zip(getattr(full, key), getattr(resumed, key), strict=True):
            assert np.array_equal(a, b), key


def test_trainer_reads_and_checks_the_residual_file(xfit_run, tmp_path):
    """The trainer loads the file for its split, batches carry the stored rows, a short
    crossfit run trains; a different split or changed data is refused, naming the file."""
    cfg, path, root = xfit_run
    proteins = [load_protein(p) for p in cfg.data.datasets]
    train_items, val_items = split_frames(proteins, cfg, True)
    res = residuals_for_frames(path, proteins, train_items, val_items)
    rf = read_residual_file(path)
    items = train_items[:3] + val_items[:1]
    data = collate_frames(proteins, items, [np.arange(3)] * 2, torch.float64, True, residuals=res)
    want = []
    for pi, t in items:
        row = int(np.flatnonzero(rf.frame_id[pi] == proteins[pi].frame_id[t])[0])
        want.append(rf.residual[pi][row])
    assert np.array_equal(data["residual"].numpy(), np.concatenate(want))
    run = _config(tmp_path, cfg.data.datasets, residual="crossfit", residual_file=str(path),
                  hvp_estimator="rao_blackwell")
    result = train(run)
    assert result.global_step == 6 and load_potential(result.model).metadata["loss"]["residual"] == "crossfit"
    other = _config(tmp_path, cfg.data.datasets)
    other.seed = 4  # another split
    tr, va = split_frames(proteins, other, True)
    with pytest.raises(ValueError, match="differ from those the residuals were cross-fitted for"):
        residuals_for_frames(path, proteins, tr, va)
    proteins[0].cg_forces = proteins[0].cg_forces + 1e-9
    with pytest.raises(ValueError, match="differ from those the residuals were computed on"):
        residuals_for_frames(path, proteins, train_items, val_items)


def test_residual_second_moment_matches_its_definition(xfit_run):
    cfg, path, _ = xfit_run
    p = load_protein(cfg.data.datasets[1])
    rf = read_residual_file(path)
    rows = np.array([int(np.flatnonzero(p.frame_id == f)[0]) for f in rf.frame_id[1]])
    m = residual_second_moment(None, p, frames=rows, residuals=rf.residual[1])
    flat = rf.residual[1].reshape(len(rows), -1)
    assert_close(m.beta_norm2, beta_of(p.temperature) * (flat**2).sum(-1), rtol=1e-14)
    assert_close(np.einsum("tii->t", m.beta_outer), m.beta_norm2, rtol=1e-14, what="trace")
    model = load_potential(rf.provenance["checkpoints"][0]["model"])
    same = residual_second_moment(model, p, frames=rows)
    assert_close(same.beta_norm2, beta_of(p.temperature) * (model_residuals(model, p, rows) ** 2).sum((1, 2)),
                 rtol=1e-14)
    with pytest.raises(ValueError, match="exactly one"):
        residual_second_moment(model, p, residuals=rf.residual[1])


# ----------------------------------------------------------------------------- config, CLI


def test_loss_config_validates_the_residual_option():
    assert LossConfig().residual == "online"
    for bad, match in (({"residual": "bogus"}, "loss.residual must be one of"),
                       ({"residual": "crossfit", "mode": "fm_hvp"}, "needs loss.residual_file"),
                       ({"residual_file": "x.npz"}, "only read with"),
                       ({"residual": "crossfit", "residual_file": "x.npz"}, "no effect with loss.mode=fm")):
        with pytest.raises(ValueError, match=match):
            LossConfig(**bad)


def test_cli_takes_the_residual_flags_and_refuses_bad_values(tmp_path, capsys):
    args = build_parser().parse_args(["--loss.mode", "fm_hvp", "--loss.residual", "crossfit",
                                      "--loss.residual_file", str(tmp_path / "r.npz")])
    cfg = train_config(args)
    assert cfg.loss.residual == "crossfit" and cfg.loss.residual_file == str(tmp_path / "r.npz")
    assert main(["train", "--loss.residual", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "loss.residual must be one of" in err[-1]
    ds = write_synthetic_dataset(tmp_path / "d.h5", n_beads=4, n_frames=4)
    assert main(["train", "--data.datasets", str(ds), "--loss.mode", "fm_hvp", "--loss.residual",
                 "crossfit", "--loss.residual-file", str(tmp_path / "none.npz"),
                 "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "none.npz does not exist" in capsys.readouterr().err
