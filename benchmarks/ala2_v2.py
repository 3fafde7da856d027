"""Alanine dipeptide, 5-bead CG, second study (docs/results/ala2_v2.md) — settings and one command.

    python benchmarks/ala2_v2.py --reference runs/ala2/reference --out runs/ala2_v2   # the study
    python benchmarks/ala2_v2.py --quick --out /tmp/ala2_v2q                          # miniature (minutes)

Every setting of the pre-registered design is fixed here, before any result; the stages live in
:mod:`hessid.training.pipelines.ala2_v2_study` and resume on a rerun of the same command.
``--reference`` reuses the 4 × 12.5 ns reference of ``benchmarks/ala2.py`` (the same settings,
so nothing is re-simulated); without it the reference is generated. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hessid.training.pipelines.ala2_v2_study import STOP_POINTS, run_study

REPO = Path(__file__).resolve().parents[1]

#: the AA reference: the first study's full settings (4 runs × 12.5 ns, frames every 0.5 ps)
REFERENCE = {
    "full": {"n_runs": 4, "steps": 3_125_000, "stride": 125, "equilibration_steps": 12_500, "timestep": 4.0,
             "hydrogen_mass": 3.0, "temperature": 300.0, "friction": 1.0, "solvent": "gbn2", "chunk_frames": 500},
    "quick": {"n_runs": 2, "steps": 10_000, "stride": 50, "equilibration_steps": 1_000, "timestep": 2.0,
              "temperature": 300.0, "friction": 1.0, "solvent": "gbn2", "chunk_frames": 50},
}  # fmt: skip
#: held-out run, validation frames, test configurations (≥ 50 ps apart), Q* fit frames
SPLIT = {
    "full": {"held_out_run": 3, "val_every": 12, "n_val": 2000, "n_test_per_basin": 50, "test_spacing_ps": 50.0,
             "qfit_every": 4},
    "quick": {"held_out_run": 1, "val_every": 4, "n_val": 40, "n_test_per_basin": 2, "test_spacing_ps": 2.0,
              "qfit_every": 2, "allow_fill": True},
}  # fmt: skip
SUBSET_SEEDS = {"full": [0, 1], "quick": [0]}
INIT_SEEDS = {"full": [0, 1], "quick": [0, 1]}
POOL_SEED = 2026
FM_SIZES = {"full": [250, 1000, 4000, 16_000, 64_000], "quick": [40, 80, 160]}
ARM_SIZES = {"full": [250, 1000, 4000], "quick": [40, 80]}
#: conditional labels: test configurations (m = 500, one sample per 100 fs after 20 ps) and the
#: training labels of the conditional arms (m = 20 per 100 fs after 1 ps: an AA frame of the
#: reference is already a sample of the conditional ensemble at its own CG configuration, so the
#: equilibration only re-thermalises the velocities after freezing)
TEST_LABELS = {
    "full": {"samples": 500, "stride": 50, "timestep": 2.0, "equilibration_steps": 10_000, "n_blocks": 10,
             "seed": 31},
    "quick": {"samples": 10, "stride": 5, "timestep": 2.0, "equilibration_steps": 50, "n_blocks": 2, "seed": 31},
}  # fmt: skip
TRAIN_LABELS = {
    "full": {"samples": 20, "stride": 50, "timestep": 2.0, "equilibration_steps": 500, "n_blocks": 2, "seed": 41},
    "quick": {"samples": 4, "stride": 5, "timestep": 2.0, "equilibration_steps": 200, "n_blocks": 2, "seed": 41},
}  # fmt: skip
TARGETS = {"k": 4, "probe_kind": "gaussian", "probe_seed": 1234}
#: Q*: rigid HBond groups, every atom allowed (ala2 has 3 residues), the core's default ridge
QSTAR = {"neighbours": None}
#: the first study's CGSchNet for 5 beads (lower cutoff 0: every pair lies between 1.3 and ~5 Å)
MODEL = {
    "full": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm", "activation": "silu",
             "cutoff_lower": 0.0, "cutoff_upper": 8.0, "max_num_neighbors": 32, "precision": "float32"},
    "quick": {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 8, "rbf_type": "expnorm", "activation": "silu",
              "cutoff_lower": 0.0, "cutoff_upper": 8.0, "max_num_neighbors": 32, "precision": "float32"},
}  # fmt: skip
#: training: batch 64, AdamW, LR ×0.8 per 1000 steps, plateau stopping on the validation FM loss
#: (no counted improvement > 0.5 % for 2000 steps, budget 1.5 × the plateau step), best weights kept
TRAIN = {
    "full": {"batch_size": 64, "lr": 1e-3, "schedule": "exponential", "gamma_per_1000": 0.8, "weight_decay": 0.0,
             "grad_clip": 10.0, "lambda_force": 1.0, "lambda_hvp": 1.0, "max_steps": 20_000, "val_every_steps": 500,
             "plateau_rel_delta": 0.0, "plateau_window_steps": 2000, "plateau_budget_factor": 1.5},
    "quick": {"batch_size": 16, "lr": 1e-3, "schedule": "exponential", "gamma_per_1000": 0.8, "weight_decay": 0.0,
              "grad_clip": 10.0, "lambda_force": 1.0, "lambda_hvp": 1.0, "max_steps": 40, "val_every_steps": 10,
              "plateau_rel_delta": 0.0, "plateau_window_steps": 20, "plateau_budget_factor": 1.5},
}  # fmt: skip
#: arms: only the loss and the curvature labels differ. HVP arms: FM alone for the first 1000 steps
#: (the residual dF is model error before that), then γ ramped 0 → 1 over 1000 steps.
WARMUP = {"full": (1000, 1000), "quick": (10, 10)}


def arms(mode: str) -> dict:
    """The arms of the pre-registration (``data``: plain | qstar Term-1 files, or conditional labels)."""
    start, ramp = WARMUP[mode]
    hvp = {"mode": "fm_hvp", "cov_weight": 1.0, "hvp_start_step": start, "cov_ramp_steps": ramp}
    return {
        "FM": {"mode": "fm", "data": "fm"},
        "HVP-frame": {**hvp, "data": "plain", "loss": {"hvp_estimator": "frame"}},
        "HVP-RB": {**hvp, "data": "qstar", "loss": {"hvp_estimator": "rao_blackwell"}},
        "Cond-F": {"mode": "fm", "data": "labels"},
        "Cond-FH": {"mode": "fm_hessian", "cov_weight": 0.0, "data": "labels"},
    }


#: CG MD: 16 replicas (8 from αR, 8 from β/PII frames of the held-out run), BAOAB 2 fs, 1/ps,
#: frames every 0.5 ps; length from a pilot (burn-in 50 ps + max(5 τ, 100 ps), ≤ 1 ns)
CGMD = {
    "full": {"n_replicas": 16, "timestep": 2.0, "save_interval": 250, "friction": 1.0, "temperature": 300.0,
             "burn_in_ps": 50.0, "pilot_ps": 500.0, "min_span_ps": 100.0, "max_ps": 1000.0},
    "quick": {"n_replicas": 4, "timestep": 2.0, "save_interval": 10, "friction": 1.0, "temperature": 300.0,
              "burn_in_ps": 0.2, "pilot_ps": 1.0, "min_span_ps": 0.6, "max_ps": 1.0},
}  # fmt: skip
#: the gate; ``enforce`` False only in the miniature (its arms run whatever the gate says)
GATE = {
    "full": {"md_size": 16_000, "delta_g_tolerance": 0.2, "improve_from": 250, "improve_to": 4000, "enforce": True},
    "quick": {"md_size": 160, "delta_g_tolerance": 0.2, "improve_from": 40, "improve_to": 160, "enforce": False},
}  # fmt: skip
#: metric 2 on the 11 softest label modes; bootstrap resamples of the data multiplier
EVAL = {"full": {"n_soft": 11, "n_boot": 10_000}, "quick": {"n_soft": 11, "n_boot": 200}}


def settings(mode: str) -> dict:
    """All fixed settings of ``mode`` ("full" or "quick"), stored with the run."""
    if mode not in REFERENCE:
        raise ValueError(f"unknown mode {mode!r}; known: {sorted(REFERENCE)}")
    return {"mode": mode, "reference": REFERENCE[mode], "split": SPLIT[mode], "subset_seeds": SUBSET_SEEDS[mode],
            "init_seeds": INIT_SEEDS[mode], "pool_seed": POOL_SEED, "fm_sizes": FM_SIZES[mode],
            "arm_sizes": ARM_SIZES[mode], "test_labels": TEST_LABELS[mode], "train_labels": TRAIN_LABELS[mode],
            "targets": TARGETS, "qstar": QSTAR, "model": MODEL[mode], "train": TRAIN[mode], "arms": arms(mode),
            "cgmd": CGMD[mode], "gate": GATE[mode], "eval": EVAL[mode]}  # fmt: skip


def main(argv=None) -> dict:
    """Parse the command line, run (or resume) the study, return its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ala2_v2", help="run folder (every stage's outputs)")
    ap.add_argument("--reference", default=None, help="folder with ala2_r<i>/ala2_r<i>.h5 of benchmarks/ala2.py")
    ap.add_argument("--quick", action="store_true", help="miniature of every stage (minutes)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--results", default=None, help="results fragment (default OUT/results/ala2_v2_results.md)")
    ap.add_argument("--stop-after", default=None, choices=STOP_POINTS, help="stop after this stage")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    s = settings("quick" if args.quick else "full")
    s["reference_dir"] = str(Path(args.reference).resolve()) if args.reference else None
    results = Path(args.results) if args.results else out / "results" / "ala2_v2_results.md"
    return run_study(out, s, results, jobs=args.jobs, stop_after=args.stop_after)


if __name__ == "__main__":
    main()
