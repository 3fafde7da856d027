"""``hessid evaluate``: benchmark metrics of CG simulations against the all-atom reference, a
thin layer over :func:`hessid.training.evaluation.evaluate.evaluate` (options:
:class:`EvaluateOptions`, defaults from :class:`BenchmarkEvaluator`).

Writes ``metrics.json`` per model, ``comparison.md``/``.csv`` and ``hessid-evaluate.yaml``
into ``--out``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    add_dataclass,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.training.data.io import dataset_path
from hessid.training.evaluation.evaluate import BenchmarkEvaluator, evaluate, load_reference

__all__ = ["EvaluateOptions", "build_parser", "run"]


def _default(name: str):
    return signature_default(BenchmarkEvaluator, name)


@dataclass
class EvaluateOptions:
    """Options of ``hessid evaluate``.

    Attributes:
        reference: dataset name or path, or mdtraj trajectories (with --top, --reference-dt).
        model: LABEL=SIMDIR simulation folders; repeat a LABEL for several training seeds
            (mean ± SE).
        out: output folder.
        top: topology of reference trajectories that carry none.
        reference_dt: reference frame spacing, ps (when the file stores no time).
        protein: protein name for the table (default: the reference's).
        lag_time: TICA lag, ps of reference time (default: the benchmark's 800 ps when the
            longest reference trajectory spans ten times that, else a tenth of it; a lag not
            shorter than the reference is refused).
        burn_in: fraction dropped from the start of each replica.
        bond_range: allowed consecutive-bead (CG bond) distance range (min max), Å (default set
            for Cα maps).
        n_bootstrap: replica bootstrap resamples for single-run standard errors.
        max_kde_points: KDEs built on at most this many points (seeded subsample).
        max_eval_points: KL Monte-Carlo mean over at most this many reference points.
        seed: subsampling seed.
    """

    reference: list[str]
    model: list[str]
    out: str
    top: str | None = None
    reference_dt: float | None = signature_default(evaluate, "reference_dt")
    protein: str | None = signature_default(evaluate, "protein")
    lag_time: float | None = _default("lag_time")
    burn_in: float = _default("burn_in")
    bond_range: tuple[float, float] = _default("bond_range")
    n_bootstrap: int = signature_default(evaluate, "n_bootstrap")
    max_kde_points: int | None = _default("max_kde_points")
    max_eval_points: int | None = _default("max_eval_points")
    seed: int = _default("seed")


def _models(items: list[str]) -> dict[str, list[str]]:
    """``["FM=a", "FM=b", "Cov=c"]`` → ``{"FM": ["a", "b"], "Cov": ["c"]}``.

    Raises:
        ValueError: an item is not LABEL=PATH.
    """
    models: dict[str, list[str]] = {}
    for text in items:
        label, _, path = text.partition("=")
        if not label or not path:
            raise ValueError(f"--model expects LABEL=SIMDIR, got {text!r}")
        models.setdefault(label, []).append(path)
    return models


def _reference(items: list[str]) -> str | list[str]:
    """One dataset (name or path) or several trajectory files."""
    if len(items) == 1:
        p = items[0]
        return p if Path(p).is_file() else str(dataset_path(p))
    return items


def build_parser(prog: str = "hessid evaluate") -> ArgumentParser:
    """The parser of ``hessid evaluate`` (options: :class:`EvaluateOptions`)."""
    parser = new_parser(prog, "Benchmark protocol: TICA (fit on the reference) KL/W1, 2-D W1, "
                              "bond/angle/dihedral/Rg W1. Writes metrics.json per model and "
                              "comparison.md/.csv.")
    add_dataclass(parser, EvaluateOptions)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid evaluate``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: a malformed --model, no usable replica, bad settings (exit 2).
        FileNotFoundError: a missing reference or simulation (exit 2).
    """
    opts = dataclass_from(EvaluateOptions, cfg)
    models = _models(opts.model)
    reference = load_reference(_reference(opts.reference), dt=opts.reference_dt, top=opts.top)
    docs = evaluate(reference, models, opts.out, protein=opts.protein,
                    n_bootstrap=opts.n_bootstrap, lag_time=opts.lag_time, burn_in=opts.burn_in,
                    bond_range=opts.bond_range, max_kde_points=opts.max_kde_points,
                    max_eval_points=opts.max_eval_points, seed=opts.seed)
    save_config(parser, cfg, opts.out, "evaluate")
    print((Path(opts.out) / "comparison.md").read_text())
    for d in docs:
        for sim in d["runs"]:
            for x in sim["dropped_replicas"]:
                print(f"{d['model']} {sim['source']}: dropped replica {x['replica']} "
                      f"({x['reason']})")
    return 0
