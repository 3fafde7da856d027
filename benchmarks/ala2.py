"""Alanine dipeptide, 5-bead CG: does curvature supervision help? — settings and one command.

    python benchmarks/ala2.py --out runs/ala2            # full benchmark (hours, 2 CPU cores)
    python benchmarks/ala2.py --quick --out /tmp/ala2q   # miniature of every stage (minutes)
    python benchmarks/ala2.py --small --out runs/ala2_small  # preliminary small run (~25 min)

The stages (reference AA MD, 5-bead map, training pool, Term-1 targets, reference CG Hessian,
training grid, cost per step, CG MD, evaluation, report) live in
:mod:`hessid.training.pipelines.ala2_study`; each is resumable (rerun the same command), with
its wall time summed over invocations in ``<out>/state.json``. The report is
:mod:`hessid.training.evaluation.study_report`.

Hyper-parameters are fixed here, before any comparison, and are the same for every variant
except the loss. Prints a JSON summary at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hessid.training.pipelines.ala2_study import STOP_POINTS, run_study

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- settings

#: AA reference: runs × ns (full: 6 × 10 ns = 60 ns ≥ 50 ns), frames every 0.5 ps
REFERENCE = {
    "full": {"n_runs": 4, "steps": 3_125_000, "stride": 125, "equilibration_steps": 12_500,
             "timestep": 4.0, "hydrogen_mass": 3.0, "temperature": 300.0, "friction": 1.0,
             "solvent": "gbn2", "chunk_frames": 500},
    "quick": {"n_runs": 2, "steps": 10_000, "stride": 50, "equilibration_steps": 1_000,
              "timestep": 2.0, "temperature": 300.0, "friction": 1.0, "solvent": "gbn2",
              "chunk_frames": 50},
    "small": {"n_runs": 2, "steps": 500_000, "stride": 250, "equilibration_steps": 25_000,
              "timestep": 2.0, "temperature": 300.0, "friction": 1.0, "solvent": "gbn2",
              "chunk_frames": 500},
}  # fmt: skip
#: training-set sizes (frames) and seeds
SIZES = {"full": [1000, 4000, 16000, 64000], "quick": [200], "small": [2000]}
#: the one training-set size of the probe / full-Hessian ablation (variants with "sizes": "ablation")
ABLATION_SIZE = {"full": 4000, "quick": 200, "small": 2000}
SEEDS = {"full": [0, 1, 2], "quick": [0], "small": [0]}
#: probe settings for Term 1 (tag → (probe_kind, k, full_block)); probe seed fixed
TARGETS = {
    "gaussian_k4": ("gaussian", 4, False),
    "gaussian_k1": ("gaussian", 1, False),
    "one_hot_k4": ("one_hot", 4, False),
    "one_hot_k1": ("one_hot", 1, False),
    "full_block": ("one_hot_all", 15, True),
}
PROBE_SEED = 1234
POOL_SEED = 2024
#: variants: only the loss differs. The probe ablations use γ = 1 (Term 1 − β Cov), like the
#: full-Hessian variant they are compared with.
VARIANTS = {
    "FM": {"mode": "fm", "targets": "gaussian_k4", "cov_weight": 0.0, "sizes": "all"},
    "FM+AA": {"mode": "fm_hvp", "targets": "gaussian_k4", "cov_weight": 0.0, "sizes": "all"},
    "FM+AA+Cov": {"mode": "fm_hvp", "targets": "gaussian_k4", "cov_weight": 1.0, "sizes": "all"},
    "FM+AA+Cov gaussian k1": {"mode": "fm_hvp", "targets": "gaussian_k1", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+AA+Cov one-hot k4": {"mode": "fm_hvp", "targets": "one_hot_k4", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+AA+Cov one-hot k1": {"mode": "fm_hvp", "targets": "one_hot_k1", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+full-Hessian": {"mode": "fm_hessian", "targets": "full_block", "cov_weight": 1.0, "sizes": "ablation"},
}  # fmt: skip
QUICK_VARIANTS = ["FM", "FM+AA+Cov", "FM+full-Hessian"]
#: the preliminary "small" run (--small): a few ns of reference, one size, one seed
SMALL_VARIANTS = ["FM", "FM+AA", "FM+AA+Cov"]
#: CGSchNet for 5 beads: the lower cutoff is 0 (not the Cα default 3 Å) because every pair of
#: this map lies between 1.3 and ~5 Å; bonded pairs are seen by both prior and network.
MODEL = {"full": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm",
                  "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                  "max_num_neighbors": 32, "precision": "float32"},
         "quick": {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 8, "rbf_type": "expnorm",
                   "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                   "max_num_neighbors": 32, "precision": "float32"},
         "small": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm",
                   "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                   "max_num_neighbors": 32, "precision": "float32"}}  # fmt: skip
#: optimiser and budget: the same number of gradient steps for every size and variant
TRAIN = {"full": {"steps": 1000, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                  "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1},
         "quick": {"steps": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                   "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1},
         "small": {"steps": 2000, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                   "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1}}  # fmt: skip
#: CG MD: 20 replicas × 40 ps per model (full: 10 000 BAOAB steps of 4 fs; BAOAB samples a harmonic
#: bond's configurational distribution exactly at any stable step, and the stiffest CG bond's period
#: is ≈ 35 fs), bead masses of the atoms, 1/ps friction; start frames drawn from the training pool
CGMD = {"full": {"n_replicas": 20, "n_steps": 10_000, "save_interval": 50, "timestep": 4.0,
                 "friction": 1.0, "temperature": 300.0},
        "quick": {"n_replicas": 2, "n_steps": 500, "save_interval": 10, "timestep": 2.0,
                  "friction": 1.0, "temperature": 300.0},
        "small": {"n_replicas": 10, "n_steps": 10_000, "save_interval": 50, "timestep": 2.0,
                  "friction": 1.0, "temperature": 300.0}}  # fmt: skip
#: reference CG Hessian at one configuration per basin (frozen-bead AA sampling at R0, then
#: ⟨P∇²UPᵀ⟩ − β Cov(Pf); training/data/conditional.py): frames, stride (steps of 2 fs)
HESSREF = {"full": {"n_frames": 3000, "stride": 100, "timestep": 2.0, "equilibration_steps": 10_000},
           "quick": {"n_frames": 40, "stride": 10, "timestep": 2.0, "equilibration_steps": 200},
           "small": {"n_frames": 1000, "stride": 100, "timestep": 2.0, "equilibration_steps": 10_000}}  # fmt: skip
#: evaluation: TICA lag (ps of reference time), φ/ψ grid, blocks
EVAL = {"full": {"lag_time": 2.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 10},
        "quick": {"lag_time": 5.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 4},
        "small": {"lag_time": 2.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 5}}  # fmt: skip


def settings(quick: bool | str) -> dict:
    """All fixed settings of one mode (stored with every stage's outputs).

    ``quick``: True/False (quick/full) or the mode name ``"full"``, ``"quick"``, ``"small"``.
    """
    m = quick if isinstance(quick, str) else ("quick" if quick else "full")
    if m not in REFERENCE:
        raise ValueError(f"unknown mode {m!r}; known: {sorted(REFERENCE)}")
    names = {"quick": QUICK_VARIANTS, "small": SMALL_VARIANTS, "full": list(VARIANTS)}[m]
    variants = {k: VARIANTS[k] for k in names}
    return {"mode": m, "reference": REFERENCE[m], "sizes": SIZES[m], "seeds": SEEDS[m],
            "targets": {t: TARGETS[t] for t in sorted({v["targets"] for v in variants.values()})},
            "ablation_size": ABLATION_SIZE[m],
            "probe_seed": PROBE_SEED, "pool_seed": POOL_SEED, "variants": variants,
            "model": MODEL[m], "train": TRAIN[m], "cgmd": CGMD[m], "eval": EVAL[m],
            "hessian_reference": HESSREF[m]}  # fmt: skip


def main(argv=None) -> dict:
    """Parse the command line, run (or resume) the study, return its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ala2", help="work folder (all stages' outputs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="miniature of every stage (minutes)")
    mode.add_argument("--small", action="store_true", help="preliminary small run: 2 × 1 ns reference, "
                      "2000 frames, FM / FM+AA / FM+AA+Cov, 1 seed, 10 × 20 ps CG MD (~25 min, 2 cores)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (AA runs, training, CG MD)")
    ap.add_argument("--results", default=None, help="results markdown (default docs/results/ala2.md; "
                    "quick/small: OUT/results/ala2.md)")
    ap.add_argument("--stop-after", default=None, choices=STOP_POINTS, help="stop after this group of stages")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    s = settings("quick" if args.quick else "small" if args.small else "full")
    results_md = Path(args.results) if args.results else (
        out / "results" / "ala2.md" if (args.quick or args.small) else REPO / "docs" / "results" / "ala2.md")
    return run_study(out, s, results_md, jobs=args.jobs, stop_after=args.stop_after)


if __name__ == "__main__":
    main()
