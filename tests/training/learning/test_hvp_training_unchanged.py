"""Training results of the ci demo's training configuration are unchanged by the HVP-path
optimisations (issue 15): same per-step losses for a fixed seed as recorded on main 3d8da36.

The configuration is the ``ci`` scale of ``hessid demo`` (``training/pipelines/demo.py``:
CGSchNet 16 channels × 2 layers, float32, batch 16, cosine LR 1e-3, HVP term from step
``steps // 10``, γ ramped over ``steps // 5``), on a synthetic 10-bead dataset (the demo's
chignolin has 10 Cα beads; its AA MD is too slow for a unit test) with k = 2 Gaussian
probes, 12 steps. The reference values were printed by ``_losses`` on main 3d8da36 before any
change (``python -m tests.training.learning.test_hvp_training_unchanged``).

Tolerance: float32. One step's losses differ between implementations by float32 rounding
(~1e-7 relative: the closed-form prior HVP and the double backward sum in different orders);
AdamW moves θ by ~lr per step whatever the rounding of the gradient, so the differences stay
at that level: measured 1.3e-7 (FM) and 2.8e-7 (HVP) relative after 12 steps. 1e-5 leaves a
factor 30. Negative control: the same run with the prior's HVP dropped from the model HVP (a
real change of the training signal) moves the HVP losses by far more than that.
"""

from __future__ import annotations

import csv

import pytest

from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning import derivatives
from hessid.training.learning.trainer import train
from tests.helpers import relative_error

STEPS = 12

#: metrics.csv "train" rows (fm, hvp) per step, main 3d8da36, per estimator
REFERENCE = {
    "frame": [
        (426.6546936035156, 0.0),
        (407.31243896484375, 20730.78125),
        (349.11212158203125, 109345.28125),
        (486.5039367675781, 1107150.625),
        (439.80828857421875, 1076589.625),
        (387.518310546875, 538977.3125),
        (433.58843994140625, 993437.25),
        (371.5605163574219, 478895.3125),
        (393.3538818359375, 553000.9375),
        (448.671875, 1122522.0),
        (389.828369140625, 642482.3125),
        (399.67950439453125, 692295.875),
    ],
    "rao_blackwell": [
        (426.6546936035156, 0.0),
        (407.31243896484375, 20730.783203125),
        (349.11212158203125, 23428.48828125),
        (486.5039367675781, 23036.3671875),
        (439.8084411621094, 26457.583984375),
        (387.517333984375, 23856.97265625),
        (433.5882568359375, 25514.828125),
        (371.56103515625, 23808.9765625),
        (393.35595703125, 27342.546875),
        (448.667724609375, 24231.017578125),
        (389.8268127441406, 24355.7109375),
        (399.6788024902344, 27558.58203125),
    ],
}


def _losses(root, estimator: str) -> list[tuple[float, float]]:
    data = write_synthetic_dataset(
        root / "d" / "d.h5", n_beads=10, n_frames=40, seed=4, n_probes=2, name="chain10"
    )
    cfg = {
        "name": f"run_{estimator}",
        "output_dir": str(root / "runs"),
        "seed": 0,
        "hvp_start_step": STEPS // 10,
        "cov_ramp_steps": STEPS // 5,
        "data": {"datasets": [str(data)], "split": "frames", "val_fraction": 0.1, "batch_size": 16},
        "model": {"embedding_dimension": 16, "num_layers": 2, "precision": "float32"},
        "loss": {"mode": "fm_hvp", "cov_weight": 1.0, "hvp_estimator": estimator},
        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 1},
        "trainer": {
            "max_steps": STEPS,
            "val_every_steps": 10,
            "checkpoint_every_steps": 100,
            "early_stopping_patience": 0,
            "progress_bar": False,
        },
    }
    result = train(cfg)
    with open(result.metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    return [(float(r["fm"]), float(r["hvp"]) if r["hvp"] else 0.0) for r in rows]


@pytest.mark.parametrize("estimator", ["frame", "rao_blackwell"])
def test_ci_demo_training_losses_are_unchanged_for_a_fixed_seed(tmp_path, estimator):
    got = _losses(tmp_path, estimator)
    ref = REFERENCE[estimator]
    assert len(got) == len(ref) == STEPS
    for col, name in ((0, "fm"), (1, "hvp")):  # per column: the HVP loss is 10³× the FM loss
        err = relative_error([g[col] for g in got], [r[col] for r in ref])
        assert err < 1e-5, (name, err, got, ref)


def test_a_changed_training_signal_is_detected(tmp_path, monkeypatch):
    """Negative control: without the prior's curvature in H_θ v the recorded losses differ."""
    real = derivatives._prior_terms

    def no_prior_hvp(*args, **kwargs):
        e, g, hv = real(*args, **kwargs)
        return e, g, 0.0 * hv

    monkeypatch.setattr(derivatives, "_prior_terms", no_prior_hvp)
    got = _losses(tmp_path, "frame")
    err = relative_error([g[1] for g in got], [r[1] for r in REFERENCE["frame"]])
    assert err > 1e-3, err


if __name__ == "__main__":  # print the reference values
    import tempfile
    from pathlib import Path

    for est in ("frame", "rao_blackwell"):
        with tempfile.TemporaryDirectory() as tmp:
            print(est, _losses(Path(tmp), est))
