"""``hessid targets``: precompute Term-1 HVP targets, Term 1 = P ∇²H Pᵀ v by central
differences of OpenMM forces (docs/data.md). A thin layer over
:func:`hessid.training.data.targets.compute_targets`; its options are :class:`TargetsOptions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
from hessid.training.data.targets import compute_targets

__all__ = ["TargetsOptions", "build_parser", "run"]


def _default(name: str):
    return signature_default(compute_targets, name)


@dataclass
class TargetsOptions:
    """Options of ``hessid targets`` (defaults: those of ``compute_targets``).

    Attributes:
        dataset: dataset name or .h5 path.
        probes: probes per frame k (``compute_targets(n_probes=)``).
        probe_kind: probe distribution.
        seed: probe seed.
        epsilon: largest atomic FD displacement, nm (default: by platform precision).
        platform: OpenMM platform (default: CUDA if present, else CPU).
        threads: CPU threads per worker.
        precision: CUDA/OpenCL precision.
        workers: worker processes (0: in-process).
        chunk_frames: frames per task and per atomic commit.
        scheduler: Dask scheduler address (needs hessid[dask]).
        full_block: store cg/hessian_block (2·3n force evaluations per frame).
        forcefield: override the file's force field.
        solvent: override the file's solvent.
        root: folder holding the dataset folders NAME/.
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
    root: str = "."


def build_parser(prog: str = "hessid targets") -> ArgumentParser:
    """The parser of ``hessid targets`` (options: :class:`TargetsOptions`)."""
    parser = new_parser(prog, "Term 1 = P ∇²H Pᵀ v by central differences of OpenMM forces, "
                              "k probes per frame (docs/data.md).")
    add_dataclass(parser, TargetsOptions, positional=["dataset"])
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
    res = compute_targets(
        path, n_probes=opts.probes, probe_kind=opts.probe_kind, seed=opts.seed,
        epsilon_nm=opts.epsilon, platform=opts.platform, threads=opts.threads,
        precision=opts.precision, workers=opts.workers, chunk_frames=opts.chunk_frames,
        scheduler=opts.scheduler, resume=cfg.resume, overwrite=cfg.overwrite,
        full_block=opts.full_block, forcefield=opts.forcefield, solvent=opts.solvent,
        progress=cfg.progress)
    save_config(parser, cfg, path.parent, "targets")
    print(f"wrote {res.path}: {res.chunks_computed} chunks computed, {res.chunks_skipped} "
          f"already done, {res.frame_probes_per_s:.1f} frame·probes/s "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
