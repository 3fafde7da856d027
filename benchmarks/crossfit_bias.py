"""Bias of Term 2's covariance estimate: same-fit against cross-fitted residuals (docs/training.md
"Cross-fitted residual").

Toy with a known answer (:func:`hessid.training.data.synthetic.write_noisy_chain_dataset`):
``P f = F(R) + σ ε``, so ``β Cov(P f | R) = βσ² I`` and ``β tr Cov = 3nβσ²`` exactly, and the
mean force F(R) is known, so each residual splits as ``dF = ε' + b`` with ``ε' = P f − F(R)``
(the noise) and ``b = F(R) − F_θ(R)`` (the model error):

    β⟨‖dF‖²⟩ = β⟨‖ε'‖²⟩ + β⟨‖b‖²⟩ + 2β⟨b·ε'⟩.

The last, cross term is the over-fitting bias: negative when the model trained on the frame
(it fitted part of ε'), zero in expectation when it did not (cross-fitting). The script trains
one FM model on the training frames (same-fit: its own residuals on them) and runs
``crossfit_residuals`` with K folds (same settings), and prints every term with its standard
error over frames.

    python benchmarks/crossfit_bias.py --frames 80 --steps 1500 --folds 4 --out /tmp/xfit_bias
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from hessid.training.data.synthetic import HarmonicChainPotential, write_noisy_chain_dataset
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.crossfit import crossfit_residuals
from hessid.training.learning.datasets import load_protein, split_frames
from hessid.training.learning.models import load_potential
from hessid.training.learning.residuals import model_residuals, read_residual_file
from hessid.training.learning.trainer import train
from hessid.units import beta as beta_of_temperature


class ZeroPotential(torch.nn.Module):
    """U ≡ 0 (mean force zero: P f is pure noise, and any model force is model error)."""

    def forward(self, positions, bead_types, batch=None):
        n = int(batch[-1]) + 1 if batch is not None and batch.numel() else 1
        return positions.sum() * 0.0 + positions.new_zeros(n)


def _mean_force_potential(kind: str) -> torch.nn.Module:
    return ZeroPotential() if kind == "zero" else HarmonicChainPotential(bond_k=5.0, angle_k=0.0)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x)))


def decompose(dF: np.ndarray, noise: np.ndarray, beta: float) -> dict:
    """Per-frame terms of β‖dF‖² = β‖ε'‖² + β‖b‖² + 2β b·ε' (all (M, n, 3) kcal/mol/Å in),
    as (mean, standard error) over frames, kcal/mol/Å²."""
    b = dF - noise
    terms = {"beta_dF2": (dF**2).sum((1, 2)), "beta_noise2": (noise**2).sum((1, 2)),
             "beta_b2": (b**2).sum((1, 2)), "cross": 2 * (b * noise).sum((1, 2))}
    return {k: _mean_se(beta * v) for k, v in terms.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--beads", type=int, default=5)
    ap.add_argument("--sigma", type=float, default=2.0, help="force noise σ, kcal/mol/Å")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--patience", type=int, default=0, help="early stopping (0: off, over-fits)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--mean-force", choices=("zero", "harmonic"), default="zero",
                    help="zero: P f = σε; harmonic: soft bonds (5 kcal/mol/Å²) + σε")
    ap.add_argument("--prior", action="store_true", help="fit the Boltzmann-inverted prior")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/xfit_bias")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    out = Path(args.out)
    ds = write_noisy_chain_dataset(out / "toy.h5", n_beads=args.beads, n_frames=args.frames,
                                   seed=args.seed, force_noise=args.sigma,
                                   potential=_mean_force_potential(args.mean_force))
    cfg = TrainConfig.from_dict({
        "name": "samefit", "output_dir": str(out / "runs"), "seed": args.seed,
        "data": {"datasets": [str(ds)], "batch_size": 16, "val_fraction": 0.2},
        "model": {"embedding_dimension": args.width, "num_layers": args.layers, "num_rbf": 16,
                  "precision": "float64", "cutoff_lower": 0.0, "cutoff_upper": 12.0},
        "loss": {"mode": "fm"},
        "optim": {"lr": 3e-3, "schedule": "cosine"},
        "prior": {"enabled": bool(args.prior)},
        "trainer": {"max_steps": args.steps, "val_every_steps": 50,
                    "checkpoint_every_steps": 500, "early_stopping_patience": args.patience,
                    "progress_bar": False}})
    protein = load_protein(ds)
    train_items, _ = split_frames([protein], cfg, False)
    rows = np.array([t for _, t in train_items])
    R = torch.as_tensor(protein.cg_coordinates[rows]).reshape(-1, 3)
    batch = torch.arange(len(rows)).repeat_interleave(protein.n_beads)
    mean_force = _mean_force_potential(args.mean_force)
    x = R.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mean_force(x, torch.zeros(len(x), dtype=torch.long), batch).sum(), x)
    noise = protein.cg_forces[rows] - (-g).numpy().reshape(len(rows), protein.n_beads, 3)
    beta = beta_of_temperature(protein.temperature)

    main_run = out / "runs" / "samefit" / "model.pt"
    if not main_run.exists():
        train(cfg)
    same = model_residuals(load_potential(main_run), protein, rows)
    rf = read_residual_file(crossfit_residuals(cfg, args.folds, out / "crossfit", progress=False))
    by_id = {int(f): r for f, r, s in zip(rf.frame_id[0], rf.residual[0], rf.split[0], strict=True) if s == 0}
    cross = np.stack([by_id[int(protein.frame_id[t])] for t in rows])
    result = {"settings": vars(args), "n_train_frames": len(rows),
              "truth_beta_trCov": 3 * protein.n_beads * beta * args.sigma**2,
              "same_fit": decompose(same, noise, beta), "cross_fit": decompose(cross, noise, beta)}
    print(f"β tr Cov (exact) = {result['truth_beta_trCov']:.3f} kcal/mol/Å², {len(rows)} training frames")
    print(f"{'':10s} {'β⟨‖dF‖²⟩':>18s} {'β⟨‖ε′‖²⟩':>18s} {'β⟨‖b‖²⟩':>18s} {'2β⟨b·ε′⟩':>18s}")
    for key in ("same_fit", "cross_fit"):
        r = result[key]
        print(f"{key:10s} " + " ".join(f"{r[t][0]:9.3f} ± {r[t][1]:6.3f}"
                                      for t in ("beta_dF2", "beta_noise2", "beta_b2", "cross")))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
