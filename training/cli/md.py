"""``hessid simulate``, ``hessid evaluate`` and ``hessid report`` (issue 5 §1–3).

Thin layer: each subcommand parses its flags and calls one public function with the same
names — :func:`hessid.training.md.simulation.simulate`, :func:`hessid.training.evaluation.evaluate.evaluate`,
:func:`hessid.training.evaluation.report.build_report`. ``register(subparsers)`` adds all three parsers
(the top-level CLI calls it for whichever of the three names is invoked).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

COMMANDS = ("simulate", "evaluate", "report")


def _label_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    label, value = text.split("=", 1)
    if not label or not value:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, value


def load_model(spec: str):
    """A CG potential from ``spec``: a checkpoint path (``training.models.load_potential``) or
    ``harmonic[:bond_k,bond_length,angle_k,angle]`` (the :class:`HarmonicChainPotential`
    fallback used by tests and the demo).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    from hessid.training.data.synthetic import HarmonicChainPotential

    if spec == "harmonic" or spec.startswith("harmonic:"):
        args = [float(x) for x in spec.split(":", 1)[1].split(",")] if ":" in spec else []
        return HarmonicChainPotential(*args)
    if not Path(spec).exists():
        raise FileNotFoundError(f"model checkpoint {spec} not found")
    from hessid.training.learning.models import load_potential

    return load_potential(spec)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="CG Langevin MD of R replicas with a trained potential",
                       description="BAOAB Langevin dynamics of R replicas at once; writes replica_XXX.dcd + "
                                   "topology.pdb (mdtraj-readable), state.csv, checkpoint.pt, simulation.json.")
    p.add_argument("--model", required=True, help="checkpoint path (load_potential) or 'harmonic'")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--reference", help="dataset HDF5 (cg/coordinates): start frames drawn with --seed")
    start.add_argument("--start", help="start structure(s): .npy (R, n, 3) or (n, 3) in Å, or a PDB (Cα used)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--n-steps", type=int, required=True, help="total integration steps")
    p.add_argument("--save-interval", type=int, default=100, help="frame stride, steps (default 100)")
    p.add_argument("--n-replicas", type=int, default=20, help="replicas R (default 20)")
    p.add_argument("--timestep", type=float, default=2.0, help="fs (default 2)")
    p.add_argument("--temperature", type=float, default=None, help="K (default: dataset's, else 300)")
    p.add_argument("--friction", type=float, default=1.0, help="1/ps (default 1)")
    p.add_argument("--mass", type=float, default=12.0, help="bead mass, amu (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for small CG systems)")
    p.add_argument("--checkpoint-interval", type=int, default=None, help="steps (default 10 × save interval)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_simulate)


def _read_start(path: str):
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path)
    import mdtraj as md

    t = md.load(path)
    return t.xyz[:, t.topology.select("name CA")] * 10.0  # nm → Å, (F, n, 3)


def run_simulate(args: argparse.Namespace) -> int:
    """``hessid simulate``: calls :func:`hessid.training.md.simulation.simulate`."""
    import torch
    from hessid.training.md.simulation import load_cg_reference, simulate

    temperature = args.temperature
    if temperature is None and args.reference:
        temperature = load_cg_reference(args.reference)["temperature"]
    start = None
    if args.start:
        start = _read_start(args.start)
        if start.ndim == 3 and start.shape[0] == 1:
            start = start[0]
    result = simulate(load_model(args.model), args.out, n_steps=args.n_steps, save_interval=args.save_interval,
                      reference=args.reference, start_positions=start, n_replicas=args.n_replicas,
                      timestep=args.timestep, temperature=temperature or 300.0, friction=args.friction,
                      masses=args.mass, seed=args.seed, device=args.device,
                      dtype=getattr(torch, args.precision), checkpoint_interval=args.checkpoint_interval,
                      resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                      provenance={"model": str(args.model), "command": "hessid simulate"}, threads=args.threads)
    print(f"wrote {len(result.trajectories)} trajectories ({result.frames[0] if result.frames else 0} frames "
          f"each when not stopped) to {result.directory}; {result.steps_per_second:.1f} steps/s")
    for f in result.failures:
        print(f"replica {f['replica']} stopped at step {f['step']}: {f['reason']}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="benchmark metrics of CG simulations against the AA reference",
                       description="benchmark.md protocol: TICA (fit on the reference) KL/W1, 2-D W1, "
                                   "bond/angle/dihedral/Rg W1. Writes metrics.json per model and comparison.md/.csv.")
    p.add_argument("--reference", required=True, nargs="+", help="dataset HDF5, or mdtraj trajectories (+ --top, --reference-dt)")
    p.add_argument("--top", default=None, help="topology for reference trajectories without one")
    p.add_argument("--reference-dt", type=float, default=None, help="reference frame spacing, ps")
    p.add_argument("--model", required=True, action="append", type=_label_value, metavar="LABEL=SIMDIR",
                   help="a simulation folder; repeat a LABEL for several training seeds (mean ± SE)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--protein", default=None, help="protein name for the table")
    p.add_argument("--lag-time", type=float, default=800.0, help="TICA lag, ps of reference time (default 800)")
    p.add_argument("--burn-in", type=float, default=0.1, help="fraction dropped per replica (default 0.1)")
    p.add_argument("--bond-range", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"), help="Å")
    p.add_argument("--n-bootstrap", type=int, default=0, help="replica bootstrap resamples for SE")
    p.add_argument("--max-kde-points", type=int, default=5000)
    p.add_argument("--max-eval-points", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0, help="KDE subsampling seed")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """``hessid evaluate``: calls :func:`hessid.training.evaluation.evaluate.evaluate`."""
    from hessid.training.evaluation.evaluate import evaluate as evaluate_fn
    from hessid.training.evaluation.evaluate import load_reference

    models: dict[str, list[str]] = {}
    for label, path in args.model:
        models.setdefault(label, []).append(path)
    ref_paths = args.reference[0] if len(args.reference) == 1 else args.reference
    reference = load_reference(ref_paths, dt=args.reference_dt, top=args.top)
    docs = evaluate_fn(reference, models, args.out, protein=args.protein, n_bootstrap=args.n_bootstrap,
                       lag_time=args.lag_time, burn_in=args.burn_in, bond_range=tuple(args.bond_range),
                       max_kde_points=args.max_kde_points, max_eval_points=args.max_eval_points, seed=args.seed)
    print((Path(args.out) / "comparison.md").read_text())
    for d in docs:
        for run in d["runs"]:
            for x in run["dropped_replicas"]:
                print(f"{d['model']} {run['source']}: dropped replica {x['replica']} ({x['reason']})")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report of an evaluation (metrics, free energies, densities, provenance)")
    p.add_argument("eval_dir", help="folder written by hessid evaluate")
    p.add_argument("--out", "-o", default=None, help="output folder (default: EVAL_DIR)")
    p.add_argument("--training", action="append", type=_label_value, default=[], metavar="LABEL=METRICS_CSV",
                   help="training curves of a model")
    p.add_argument("--provenance", action="append", default=[], metavar="FILE",
                   help="JSON or YAML file (config, targets, seeds) shown in the report")
    p.add_argument("--temperature", type=float, default=300.0, help="K, for −k_BT ln p (default 300)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """``hessid report``: calls :func:`hessid.training.evaluation.report.build_report`."""
    from hessid.training.evaluation.report import build_report

    prov = {}
    for path in args.provenance:
        text = Path(path).read_text()
        if path.endswith((".yaml", ".yml")):
            import yaml

            prov[path] = yaml.safe_load(text)
        else:
            prov[path] = json.loads(text)
    out = build_report(args.eval_dir, args.out, training_curves=dict(args.training), provenance=prov,
                       temperature=args.temperature, title=args.title)
    print(f"report: {out.resolve()}")
    return 0


def register(subparsers) -> None:
    """Add the invoked one of ``simulate``/``evaluate``/``report`` to the ``hessid`` parser.

    ``hessid.training.cli`` lists the three names in this order, adds a placeholder parser for
    every name it is not running, and calls this function when it reaches the invoked one, so
    the invoked name is the first of the three not yet registered; adding the others here
    would collide with the placeholders cli.py adds after it. Use :func:`register_all` to add
    all three to a fresh parser.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    taken = set(subparsers.choices)
    name = next((n for n in COMMANDS if n not in taken), None)
    if name is not None:
        _ADDERS[name](subparsers)


def register_all(subparsers) -> None:
    """Add all three subcommands (for a parser built outside ``hessid.training.cli``)."""
    for name in COMMANDS:
        if name not in subparsers.choices:
            _ADDERS[name](subparsers)


_ADDERS = {"simulate": _add_simulate, "evaluate": _add_evaluate, "report": _add_report}
