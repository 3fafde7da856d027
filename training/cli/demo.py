"""``hessid demo``: the whole pipeline from one command, a thin layer over
:func:`hessid.training.pipelines.demo.run_demo` (options: :class:`DemoOptions`).

Build → AA MD (Amber14/GBn2, OpenMM) → Cα map + Term-1 targets → train FM, FM+AA, FM+AA+Cov →
CG MD → evaluation → HTML report. Re-run the same command to resume a killed demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    add_dataclass,
    add_run_flags,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.training.md.simulation import DEFAULT_SEED, deterministic_torch
from hessid.training.pipelines.demo import SCALES, run_demo

__all__ = ["DemoOptions", "build_parser", "run"]


def _default(name: str):
    return signature_default(run_demo, name)


@dataclass
class DemoOptions:
    """Options of ``hessid demo`` (defaults: those of ``run_demo``).

    Attributes:
        out: working folder; re-running with the same folder resumes.
        scale: ci (a miniature), default (~20-30 min on 2 CPU cores) or full (research size,
            for a GPU).
        sequence: one-letter sequence to build (default: chignolin).
        pdb: build from this PDB file instead of the sequence.
        name: protein name (default: chignolin, or the PDB file's stem).
        platform: OpenMM platform (default: CUDA if present, else CPU).
        seed: seed of AA MD, probes, training and CG MD (default: a fixed non-zero seed, so
            two default demos are the same demo; stored in hessid-demo.yaml and demo_state.json).
        deterministic: bit-identical results for a fixed seed on this machine and these library
            versions: one CPU thread for torch and OpenMM, torch's deterministic algorithms (cost:
            no multi-threading, roughly 2x slower on 2 cores). Without it, AA MD and training use
            several threads and may differ in the last bits, which grow over a long run.
    """

    out: str = _default("out_dir")
    scale: str = _default("scale")
    sequence: str = _default("sequence")
    pdb: str | None = _default("pdb")
    name: str | None = None
    platform: str | None = _default("platform")
    seed: int = DEFAULT_SEED
    deterministic: bool = False


def build_parser(prog: str = "hessid demo") -> ArgumentParser:
    """The parser of ``hessid demo`` (options: :class:`DemoOptions`)."""
    parser = new_parser(prog, f"The whole pipeline on chignolin (or your protein), resumable. "
                              f"Scales: {', '.join(SCALES)}.")
    add_dataclass(parser, DemoOptions)
    add_run_flags(parser, progress=True)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid demo``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: unknown scale, or a folder holding a demo with other settings (exit 2).
    """
    opts = dataclass_from(DemoOptions, cfg)
    name = opts.name or (Path(opts.pdb).stem if opts.pdb else _default("name"))
    if opts.seed == 0:
        raise ValueError("--seed 0 means 'random' to OpenMM: give a non-zero seed")
    with deterministic_torch(opts.deterministic):
        path = run_demo(opts.out, sequence=None if opts.pdb else opts.sequence, name=name,
                        pdb=opts.pdb, scale=opts.scale, platform=opts.platform, seed=opts.seed,
                        progress=cfg.progress)
    save_config(parser, cfg, opts.out, "demo")
    print(f"report: {path}")
    return 0
