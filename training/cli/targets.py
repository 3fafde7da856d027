"""``hessid targets``: precompute Term-1 HVP targets, Term 1 = P ∇²H Pᵀ v by central
differences of OpenMM forces (docs/data.md). A thin layer over
:func:`hessid.training.data.targets.compute_targets`; its options are :class:`TargetsOptions`.

``hessid targets NAME --conditional (--configs C | --frames i,j,...) --samples m --stride s
--equilibration-ps t`` writes conditional labels instead (mean force and CG Hessian from
frozen-bead sampling at chosen configurations; docs/data.md, "Conditional labels"): a thin layer
over :func:`hessid.training.data.labels.compute_conditional_labels`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    add_dataclass,
    add_run_flags,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.training.data.io import dataset_path
from hessid.training.data.labels import compute_conditional_labels, evenly_spaced_frames
from hessid.training.data.reader import open_dataset
from hessid.training.data.targets import compute_targets

__all__ = ["TargetsOptions", "build_parser", "run"]


def _default(name: str):
    return signature_default(compute_targets, name)


def _labels_default(name: str):
    return signature_default(compute_conditional_labels, name)


#: options that only --conditional uses (None / their default otherwise)
_CONDITIONAL_ONLY = ("configs", "frames", "samples", "stride", "equilibration_ps", "out")


@dataclass
class TargetsOptions:
    """Options of ``hessid targets`` (defaults: those of ``compute_targets``).

    Attributes:
        dataset: dataset name or .h5 path.
        probes: probes per frame k (``compute_targets(n_probes=)``).
        probe_kind: probe distribution.
        seed: probe seed (with --conditional: the base Langevin seed).
        epsilon: largest atomic FD displacement, nm (default: by platform precision).
        platform: OpenMM platform (default: CUDA if present, else CPU).
        threads: CPU threads per worker.
        precision: CUDA/OpenCL precision.
        workers: worker processes (0: in-process; with --conditional, over configurations, <= 1 in-process).
        chunk_frames: frames per task and per atomic commit.
        scheduler: Dask scheduler address (needs hessid[dask]).
        full_block: store cg/hessian_block (2·3n force evaluations per frame).
        forcefield: override the file's force field.
        solvent: override the file's solvent.
        constraints: ``HBonds`` | ``none``: the constraints of the source simulation, for files
            imported without them (must agree with the projector's constraint handling).
        root: folder holding the dataset folders NAME/.
        conditional: write conditional labels (mean force + CG Hessian by frozen-bead sampling)
            at chosen configurations of the mapped dataset, instead of Term 1 of every frame.
        configs: with --conditional: C evenly spaced frames of the dataset.
        frames: with --conditional: comma-separated frame indices, e.g. 0,50,100.
        samples: with --conditional: frozen-bead samples m per configuration.
        stride: with --conditional: MD steps between samples.
        equilibration_ps: with --conditional: MD before the first sample, ps.
        timestep: with --conditional: MD time step, fs.
        blocks: with --conditional: blocks of the block standard errors.
        out: with --conditional: labels file (default: NAME_labels.h5 next to the dataset).
        keep_samples: with --conditional: keep the per-configuration sample files.
    """

    dataset: str
    probes: int = _default("n_probes")
    probe_kind: Literal["gaussian", "rademacher", "unit_sphere", "one_hot",
                        "orthonormal"] = _default("probe_kind")
    seed: int = _default("seed")
    epsilon: float | None = _default("epsilon_nm")
    platform: str | None = _default("platform")
    threads: int | None = _default("threads")
    precision: Literal["single", "mixed", "double"] | None = _default("precision")
    workers: int = _default("workers")
    chunk_frames: int = _default("chunk_frames")
    scheduler: str | None = _default("scheduler")
    full_block: bool = _default("full_block")
    forcefield: str | None = _default("forcefield")
    solvent: str | None = _default("solvent")
    constraints: str | None = _default("constraints")
    root: str = "."
    conditional: bool = False
    configs: int | None = None
    frames: str | None = None
    samples: int | None = None
    stride: int | None = None
    equilibration_ps: float | None = None
    timestep: float = _labels_default("timestep")
    blocks: int = _labels_default("n_blocks")
    out: str | None = None
    keep_samples: bool = _labels_default("keep_samples")


def build_parser(prog: str = "hessid targets") -> ArgumentParser:
    """The parser of ``hessid targets`` (options: :class:`TargetsOptions`)."""
    parser = new_parser(prog, "Term 1 = P ∇²H Pᵀ v by central differences of OpenMM forces, "
                              "k probes per frame (docs/data.md).")
    add_dataclass(parser, TargetsOptions, positional=["dataset"], aliases={"timestep": ["--timestep-fs"]})
    add_run_flags(parser, resume="skip committed chunks (settings must match)",
                  overwrite="replace existing targets", progress=True)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid targets``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: bad k, kind, ε, platform, or an invalid dataset (exit 2).
        FileExistsError: targets exist, neither --resume nor --overwrite (exit 2).
        ImportError: --scheduler without the dask extra (exit 2).
    """
    opts = dataclass_from(TargetsOptions, cfg)
    t0 = time.perf_counter()
    path = dataset_path(opts.dataset, opts.root)
    if opts.conditional:
        return _run_conditional(opts, path, cfg, parser, t0)
    given = [name for name in _CONDITIONAL_ONLY if getattr(opts, name) is not None]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} is only used with --conditional")
    res = compute_targets(
        path, n_probes=opts.probes, probe_kind=opts.probe_kind, seed=opts.seed,
        epsilon_nm=opts.epsilon, platform=opts.platform, threads=opts.threads,
        precision=opts.precision, workers=opts.workers, chunk_frames=opts.chunk_frames,
        scheduler=opts.scheduler, resume=cfg.resume, overwrite=cfg.overwrite,
        full_block=opts.full_block, forcefield=opts.forcefield, solvent=opts.solvent,
        constraints=opts.constraints, progress=cfg.progress)
    save_config(parser, cfg, path.parent, "targets")
    print(f"wrote {res.path}: {res.chunks_computed} chunks computed, {res.chunks_skipped} "
          f"already done, {res.frame_probes_per_s:.1f} frame·probes/s "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _parse_frames(text: str) -> list[int]:
    try:
        frames = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--frames {text!r}: expected comma-separated frame indices, e.g. 0,50,100") from None
    if not frames:
        raise ValueError(f"--frames {text!r}: no frame index given")
    return frames


def _run_conditional(opts: TargetsOptions, path, cfg: Namespace, parser: ArgumentParser, t0: float) -> int:
    """``hessid targets --conditional``: checks the options (one-line errors naming them), then
    :func:`~hessid.training.data.labels.compute_conditional_labels`."""
    if (opts.configs is None) == (opts.frames is None):
        raise ValueError("--conditional needs exactly one of --configs C and --frames i,j,...")
    for name in ("samples", "stride", "equilibration_ps"):
        if getattr(opts, name) is None:
            raise ValueError(f"--conditional needs --{name.replace('_', '-')}")
    if opts.equilibration_ps < 0 or not opts.timestep > 0:
        raise ValueError(f"--equilibration-ps must be >= 0 and --timestep > 0 fs, got {opts.equilibration_ps}, "
                         f"{opts.timestep}")
    if opts.full_block:
        raise ValueError("--full-block is not used with --conditional (labels always hold the full block)")
    if opts.configs is not None:
        with open_dataset(path) as ds:
            frames = evenly_spaced_frames(ds.n_frames, opts.configs).tolist()
    else:
        frames = _parse_frames(opts.frames)
    eq_steps = int(round(opts.equilibration_ps * 1000.0 / opts.timestep))
    out = Path(opts.out) if opts.out else path.parent / f"{path.stem}_labels.h5"
    res = compute_conditional_labels(
        path, out, frames, samples=opts.samples, stride=opts.stride, equilibration_steps=eq_steps,
        timestep=opts.timestep, seed=opts.seed, workers=opts.workers, n_blocks=opts.blocks, progress=cfg.progress,
        resume=cfg.resume, keep_samples=opts.keep_samples, overwrite=cfg.overwrite, solvent=opts.solvent,
        forcefield=opts.forcefield, epsilon_nm=opts.epsilon, platform=opts.platform or "CPU")
    save_config(parser, cfg, out.parent, "targets conditional")
    print(f"wrote {res.path}: {res.configs_computed} configurations computed, {res.configs_skipped} already done, "
          f"{res.aa_force_evaluations} AA force evaluations ({time.perf_counter() - t0:.1f} s)")
    return 0
