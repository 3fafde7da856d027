"""``hessid simulate``: CG Langevin MD of R replicas with a trained potential, a thin layer over
:func:`hessid.training.md.simulation.simulate` (options: :class:`SimulateOptions`).

Writes ``replica_XXX.dcd`` + ``topology.pdb`` (mdtraj-readable), ``state.csv``,
``checkpoint.pt``, ``simulation.json`` and ``hessid-simulate.yaml`` into ``--out``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mdtraj as md
import numpy as np
import torch
from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    JobFailed,
    add_dataclass,
    add_run_flags,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.training.data.io import dataset_path
from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.learning.models import PriorOnlyPotential, load_potential
from hessid.training.md.simulation import load_cg_reference, simulate

__all__ = ["SimulateOptions", "build_parser", "load_model", "read_start", "run"]


def _default(name: str):
    return signature_default(simulate, name)


@dataclass
class SimulateOptions:
    """Options of ``hessid simulate`` (defaults: those of ``simulate``; give exactly one of
    ``reference`` and ``start``).

    Attributes:
        model: checkpoint path (load_potential) or ``harmonic[:bond_k,bond_length,angle_k,angle]``.
        reference: dataset name or path (cg/coordinates): start frames drawn with --seed.
        start: start structure(s): .npy (R, n, 3) or (n, 3) in Å, or a PDB/trajectory (Cα used).
        out: output folder.
        steps: total integration steps.
        stride: steps between saved frames.
        replicas: replicas R.
        timestep: fs.
        temperature: K (default: the reference dataset's, else 300; required with a reference
            holding several temperatures). A temperature-aware model runs at it through
            ``at_temperature(T)``; a temperature-unaware one trained at another temperature
            runs with one warning.
        friction: 1/ps.
        mass: bead mass, amu.
        seed: draws start frames, velocities and noise (default: a fixed non-zero seed, so two
            default runs are identical; stored in simulation.json).
        device: torch device of the state.
        precision: ``float32`` or ``float64``.
        threads: torch CPU threads (1 is fastest for small CG systems).
        checkpoint_interval: steps between checkpoints (default: 10 × stride).
        prior_only: simulate the model's prior alone, the network left out
            (:class:`~hessid.training.learning.models.PriorOnlyPotential`): what the prior by
            itself samples, the first check when a model's free energy is off.
        deterministic: bit-identical trajectories for a fixed seed on this machine and these
            library versions: one CPU thread and torch's deterministic algorithms (costs: no
            multi-threading, slower deterministic GPU kernels). Without it, CPU runs with
            --threads 1 (the default) are already reproducible; other thread counts and GPUs
            may differ in the last bits, which grow over a long run.
    """

    model: str
    out: str
    steps: int
    reference: str | None = None
    start: str | None = None
    stride: int = _default("save_interval")
    replicas: int = _default("n_replicas")
    timestep: float = _default("timestep")
    temperature: float | None = None
    friction: float = _default("friction")
    mass: float = _default("masses")
    seed: int = _default("seed")
    device: str = _default("device")
    precision: Literal["float32", "float64"] = str(_default("dtype")).removeprefix("torch.")
    threads: int | None = _default("threads")
    checkpoint_interval: int | None = _default("checkpoint_interval")
    deterministic: bool = _default("deterministic")
    prior_only: bool = False


def load_model(spec: str):
    """A CG potential from ``spec``: a checkpoint path (``load_potential``) or
    ``harmonic[:bond_k,bond_length,angle_k,angle]`` (the :class:`HarmonicChainPotential`
    fallback used by tests and the demo).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: ``spec`` is a folder or a file that is not a hessid model, or a malformed
            ``harmonic:`` spec.
    """
    if spec == "harmonic" or spec.startswith("harmonic:"):
        try:
            args = [float(x) for x in spec.split(":", 1)[1].split(",")] if ":" in spec else []
            return HarmonicChainPotential(*args)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--model {spec!r}: expected harmonic[:bond_k,bond_length,angle_k,"
                             f"angle] ({exc})") from None
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model {spec}: no such file (a model.pt written by hessid "
                                "train, or 'harmonic')")
    if path.is_dir():
        hint = " (did you mean its model.pt?)" if (path / "model.pt").is_file() else ""
        raise ValueError(f"--model {spec}: is a folder, not a model file{hint}")
    try:
        return load_potential(spec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError,
            RuntimeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"--model {spec}: not a hessid model file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def read_start(path: str) -> np.ndarray:
    """Start positions, Å: a ``.npy`` array as stored ((R, n, 3) or (n, 3)), else the Cα atoms
    of every frame of a structure/trajectory mdtraj reads ((F, n, 3); a single frame → (n, 3)).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: mdtraj cannot read start positions from it (one line naming the file).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--start {path}: no such file")
    try:
        if path.endswith(".npy"):
            start = np.load(path)
        else:
            t = md.load(path)
            start = t.xyz[:, t.topology.select("name CA")] * 10.0  # nm → Å, (F, n, 3)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"--start {path}: cannot read start positions "
                         f"({type(exc).__name__}: {exc})") from None
    return start[0] if start.ndim == 3 and start.shape[0] == 1 else start


def build_parser(prog: str = "hessid simulate") -> ArgumentParser:
    """The parser of ``hessid simulate`` (options: :class:`SimulateOptions`)."""
    parser = new_parser(prog, "BAOAB Langevin dynamics of R replicas at once; writes "
                              "replica_XXX.dcd + topology.pdb (mdtraj-readable), state.csv, "
                              "checkpoint.pt, simulation.json.")
    add_dataclass(parser, SimulateOptions)
    add_run_flags(parser, resume="continue from OUT/checkpoint.pt",
                  overwrite="replace an existing run in OUT", progress=True)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid simulate``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: neither or both of --reference/--start, a file that is not a model (or,
            with --prior-only, a model without a prior), an unmapped reference, a count < 1,
            a timestep beyond the stability limit (exit 2).
        FileNotFoundError: a missing model, dataset or start file (exit 2).
        FileExistsError: OUT holds a run, neither --resume nor --overwrite (exit 2).
        JobFailed: every replica stopped (blew up) before the end (exit 1; the files stay,
            with the failures in simulation.json).

    Nothing is created before every input has been checked.
    """
    opts = dataclass_from(SimulateOptions, cfg)
    for flag, value in (("--steps", opts.steps), ("--stride", opts.stride),
                        ("--replicas", opts.replicas)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if (opts.reference is None) == (opts.start is None):
        raise ValueError("give exactly one of --reference (a dataset) and --start (a file)")
    reference = None if opts.reference is None else str(dataset_path(opts.reference))
    temperature = opts.temperature
    if temperature is None and reference is not None:
        ref = load_cg_reference(reference)
        temperature = ref["temperature"]
        if temperature is None and len(ref["temperatures"]) > 1:
            raise ValueError(f"--temperature is required: the reference {reference} holds frames at "
                             f"{', '.join(f'{t:g}' for t in ref['temperatures'])} K")
    start = None if opts.start is None else read_start(opts.start)
    model = load_model(opts.model)
    if opts.prior_only:
        try:
            model = PriorOnlyPotential(model)
        except ValueError as exc:
            raise ValueError(f"--prior-only: --model {opts.model}: {exc}") from None
    result = simulate(
        model, opts.out, n_steps=opts.steps, save_interval=opts.stride,
        reference=reference, start_positions=start, n_replicas=opts.replicas,
        timestep=opts.timestep, temperature=temperature or _default("temperature"),
        friction=opts.friction, masses=opts.mass, seed=opts.seed, device=opts.device,
        dtype=getattr(torch, opts.precision), checkpoint_interval=opts.checkpoint_interval,
        resume=cfg.resume, overwrite=cfg.overwrite, progress=cfg.progress,
        provenance={"model": str(opts.model), "command": "hessid simulate", "prior_only": opts.prior_only},
        threads=opts.threads, deterministic=opts.deterministic)
    save_config(parser, cfg, result.directory, "simulate")
    print(f"wrote {len(result.trajectories)} trajectories "
          f"({result.frames[0] if result.frames else 0} frames each when not stopped) to "
          f"{result.directory}; {result.steps_per_second:.1f} steps/s")
    for f in result.failures:
        print(f"replica {f['replica']} stopped at step {f['step']}: {f['reason']}")
    if result.failures and len(result.failures) == len(result.trajectories):
        steps = sorted({f["step"] for f in result.failures})
        reasons = sorted({f["reason"] for f in result.failures})
        raise JobFailed(f"all {len(result.failures)} replicas stopped (at step "
                        f"{steps[0]}{f'–{steps[-1]}' if len(steps) > 1 else ''}: "
                        f"{'; '.join(reasons)}); the model or the settings (--timestep "
                        f"{opts.timestep:g} fs, --temperature) are not usable; details in "
                        f"{result.directory / 'simulation.json'}")
    return 0
