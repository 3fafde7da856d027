"""``hessid report``: the HTML report of an evaluation (metrics, free energies, densities,
training curves, provenance), a thin layer over
:func:`hessid.training.evaluation.report.build_report` (options: :class:`ReportOptions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    add_dataclass,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.training.evaluation.report import build_report

__all__ = ["ReportOptions", "build_parser", "run"]


@dataclass
class ReportOptions:
    """Options of ``hessid report``.

    Attributes:
        eval_dir: folder written by hessid evaluate.
        out: output folder (default: EVAL_DIR).
        training: LABEL=METRICS_CSV training curves of a model (several allowed).
        provenance: JSON or YAML files (config, targets, seeds) shown in the report.
        temperature: K, for the free energy −k_BT ln p.
        title: page title.
    """

    eval_dir: str
    out: str | None = signature_default(build_report, "out_dir")
    training: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)
    temperature: float = signature_default(build_report, "temperature")
    title: str | None = signature_default(build_report, "title")


def _read(path: str):
    text = Path(path).read_text()
    return yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)


def build_parser(prog: str = "hessid report") -> ArgumentParser:
    """The parser of ``hessid report`` (options: :class:`ReportOptions`)."""
    parser = new_parser(prog, "HTML report of an evaluation: metrics, free energies, "
                              "densities, training curves, provenance.")
    add_dataclass(parser, ReportOptions, positional=["eval_dir"])
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid report``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: a malformed --training item or provenance file (exit 2).
        FileNotFoundError: a missing evaluation folder or file (exit 2).
    """
    opts = dataclass_from(ReportOptions, cfg)
    curves = {}
    for text in opts.training:
        label, _, path = text.partition("=")
        if not label or not path:
            raise ValueError(f"--training expects LABEL=METRICS_CSV, got {text!r}")
        curves[label] = path
    provenance = {path: _read(path) for path in opts.provenance}
    out = build_report(opts.eval_dir, opts.out, training_curves=curves, provenance=provenance,
                       temperature=opts.temperature, title=opts.title)
    save_config(parser, cfg, out.parent, "report")
    print(f"report: {out.resolve()}")
    return 0
