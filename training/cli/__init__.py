"""The ``hessid`` command line: a thin layer over public functions.

Each subcommand lives in the module that owns the work; that module exposes
``register(subparsers)`` which adds its parser and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code). Modules are imported lazily so that
``hessid verify`` never imports OpenMM or TorchMD-Net.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: (subcommand, module that registers it, one-line help)
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "hessid.training.pipelines.demo", "the whole pipeline on chignolin from one command (resumable)"),
    ("verify", "hessid.verification.cli", "check CG identities against exact Hessians"),
    ("simulate", "hessid.training.cli.md", "CG Langevin MD of replicas with a trained potential"),
    ("evaluate", "hessid.training.cli.md", "benchmark metrics of CG simulations vs the AA reference"),
    ("report", "hessid.training.cli.md", "HTML report: metrics, free energies, densities, provenance"),
    ("data", "hessid.training.cli.data", "build, simulate, import and map AA reference data"),
    ("targets", "hessid.training.cli.data", "precompute Term-1 HVP targets (FD of OpenMM forces)"),
    ("train", "hessid.training.cli.train", "train a CG potential (FM / FM+AA / FM+AA+Cov)"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; with ``only`` import just that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="hessid",
        description="Verification-first CG potentials with Hessian-vector-product matching.",
    )
    from hessid import __version__

    parser.add_argument("--version", action="version", version=f"hessid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in SUBCOMMANDS:
        if only != name:  # placeholder: import a subcommand's module only when it is run
            sub.add_parser(name, help=help_, add_help=False)
            continue
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessid`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in SUBCOMMANDS}
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in names else None)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
