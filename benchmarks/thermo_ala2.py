"""Temperature transfer on alanine dipeptide, 5-bead CG (docs/results/thermo.md, second study):
settings and one command.

    OMP_NUM_THREADS=1 python benchmarks/thermo_ala2.py --out runs/thermo_ala2 --jobs 2   # the study
    python benchmarks/thermo_ala2.py --quick --out /tmp/thermo_ala2q --jobs 1            # miniature (~1 min)

Every setting of the pre-registered design is fixed here, before any result; the stages live in
:mod:`hessid.training.pipelines.thermo_ala2` and resume on a rerun of the same command
(``--stop-after STAGE`` stops after one of aa, reference, data, train, cgmd, evaluate, report).
Prints a JSON summary; the results fragment goes to ``--results`` (default
``OUT/results/thermo_ala2_results.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hessid.training.pipelines.thermo_ala2 import STAGES, run_study

#: the four study temperatures, K (segment order inside every AA file)
TEMPERATURES = [300.0, 350.0, 400.0, 450.0]
#: the two transfer tasks: training temperatures and the predicted one
TASKS = {
    "interpolation": {"train": [300.0, 400.0, 450.0], "target": 350.0},
    "extrapolation": {"train": [300.0, 350.0, 400.0], "target": 450.0},
}
#: AA: 4 independent runs × 4 temperatures × 5 ns (20 ns per temperature), the first ala2 study's
#: HMR settings (Amber14 + GBn2, HBond constraints, H mass 3 amu, 4 fs, LangevinMiddle 1/ps),
#: frames every 0.5 ps, 50 ps equilibration per segment
AA = {
    "full": {"n_runs": 4, "steps": 1_250_000, "stride": 125, "equilibration_steps": 12_500, "timestep": 4.0,
             "hydrogen_mass": 3.0, "friction": 1.0, "solvent": "gbn2", "chunk_frames": 500, "seed_base": 3000},
    "quick": {"n_runs": 2, "steps": 600, "stride": 20, "equilibration_steps": 50, "timestep": 2.0,
              "friction": 1.0, "solvent": "gbn2", "chunk_frames": 30, "seed_base": 3000},
}  # fmt: skip
#: training frames per temperature per seed (a seeded draw from the 40 000 frames of the 4 runs)
DATA = {"full": {"frames_per_temperature": 4000, "seed": 2026}, "quick": {"frames_per_temperature": 24, "seed": 2026}}
SEEDS = {"full": [0, 1, 2], "quick": [0, 1]}
#: the first study's CGSchNet for 5 beads
MODEL = {
    "full": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm", "activation": "silu",
             "cutoff_lower": 0.0, "cutoff_upper": 8.0, "max_num_neighbors": 32, "precision": "float32"},
    "quick": {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "rbf_type": "expnorm", "activation": "silu",
              "cutoff_lower": 0.0, "cutoff_upper": 8.0, "max_num_neighbors": 32, "precision": "float32"},
}  # fmt: skip
#: the thermal model: CGSchNet backbone, T0 = 300 K, head width
THERMAL = {"full": {"backbone": "schnet", "reference_temperature": 300.0, "hidden": 32},
           "quick": {"backbone": "schnet", "reference_temperature": 300.0, "hidden": 8}}
#: training: AdamW lr 1e-3, ×0.8 per 1000 steps, batch 64, a fixed budget of 4000 steps (no early
#: stopping; 5 % of the training frames validate, logged only), last weights kept
TRAIN = {
    "full": {"batch_size": 64, "lr": 1e-3, "schedule": "exponential", "gamma_per_1000": 0.8, "weight_decay": 0.0,
             "grad_clip": 10.0, "max_steps": 4000, "val_every_steps": 500, "val_fraction": 0.05},
    "quick": {"batch_size": 8, "lr": 1e-3, "schedule": "exponential", "gamma_per_1000": 0.8, "weight_decay": 0.0,
              "grad_clip": 10.0, "max_steps": 4, "val_every_steps": 2, "val_fraction": 0.1},
}  # fmt: skip
#: the arms: model form, w_U, and which file of the (task, seed) they train on
ARMS = {
    "M0-pool": {"form": "M0", "energy_weight": 0.0, "data": "train"},
    "M2-F": {"form": "M2", "energy_weight": 0.0, "data": "train"},
    "M2-FU": {"form": "M2", "energy_weight": 1.0, "data": "train"},
    "FM-target": {"form": "M0", "energy_weight": 0.0, "data": "target"},
}
#: CG MD at the target temperature: 16 replicas (8 αR + 8 β/PII starts from run 0 at the target
#: T, one draw per task), BAOAB 2 fs, 1/ps, 80 ps per replica, frames every 0.5 ps, 20 ps burn-in
CGMD = {
    "full": {"n_per_basin": 8, "start_seed": 77, "noise_seed": 500, "timestep": 2.0, "save_interval": 250,
             "friction": 1.0, "n_steps": 40_000, "burn_in_ps": 20.0},
    "quick": {"n_per_basin": 2, "start_seed": 77, "noise_seed": 500, "timestep": 2.0, "save_interval": 10,
              "friction": 1.0, "n_steps": 40, "burn_in_ps": 0.02, "allow_fill": True},
}  # fmt: skip
#: verdict thresholds (docs/results/thermo.md): "M2-FU reaches the upper bound" when the upper end
#: of its paired |ΔG error| CI against FM-target is ≤ upper_bound_margin kcal/mol; a task is
#: informative when |ΔG_AA(target) − ΔG_AA(300 K)| > resolve_factor × its SE, and void when
#: FM-target's mean |ΔG error| > void_margin kcal/mol
VERDICT = {"upper_bound_margin": 0.2, "resolve_factor": 2.0, "void_margin": 0.5}


def settings(mode: str) -> dict:
    """All fixed settings of ``mode`` ("full" or "quick"), stored with the run.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in AA:
        raise ValueError(f"unknown mode {mode!r}; known: {sorted(AA)}")
    return {"mode": mode, "temperatures": TEMPERATURES, "tasks": TASKS, "aa": AA[mode], "data": DATA[mode],
            "seeds": SEEDS[mode], "model": MODEL[mode], "thermal": THERMAL[mode], "train": TRAIN[mode],
            "arms": ARMS, "cgmd": CGMD[mode], "verdict": VERDICT}  # fmt: skip


def main(argv=None) -> dict:
    """Parse the command line, run (or resume) the study, print and return its JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/thermo_ala2", help="run folder (every stage's outputs)")
    ap.add_argument("--quick", action="store_true", help="miniature of every stage (about a minute)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--results", default=None, help="results fragment (default OUT/results/thermo_ala2_results.md)")
    ap.add_argument("--stop-after", default=None, choices=STAGES, help="stop after this stage")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    s = settings("quick" if args.quick else "full")
    results = Path(args.results) if args.results else out / "results" / "thermo_ala2_results.md"
    summary = run_study(out, s, results, jobs=args.jobs, stop_after=args.stop_after)
    print(json.dumps({k: summary[k] for k in ("verdicts", "wall_s", "stopped_after") if k in summary}, indent=1,
                     default=str))
    return summary


if __name__ == "__main__":
    main()
