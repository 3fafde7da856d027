"""The ``hessid`` command line (console script ``hessid = "hessid.cli:main"``; also
``python -m hessid``).

Each command is one module (see :data:`COMMANDS`) defining ``build_parser(prog)`` and
``run(cfg)`` (:mod:`hessid.cli.options`). This package imports a command's module by name only
when that command runs, so ``hessid --help`` and ``hessid verify`` work with just the core and
the ``verification`` extra installed; a training command run without the ``training`` extra
says which extra to install and exits 2.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from hessid import __version__
from hessid.cli.options import EXIT_CODES, EXIT_OK, EXIT_USAGE, missing_extra_message, run_command

__all__ = ["COMMANDS", "Command", "main", "usage"]


@dataclass(frozen=True)
class Command:
    """One ``hessid`` command.

    Attributes:
        name: what the user types (``hessid NAME``).
        module: dotted module defining ``build_parser(prog)`` and ``run(cfg)``.
        extra: the optional extra the module needs (``pip install 'hessid[EXTRA]'``).
        help: one line for ``hessid --help``.
    """

    name: str
    module: str
    extra: str | None
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("verify", "hessid.verification.cli", "verification",
            "check CG identities against exact Hessians (PASS/FAIL table)"),
    Command("demo", "hessid.training.cli.demo", "training",
            "the whole pipeline on chignolin (or your protein) from one command, resumable"),
    Command("data", "hessid.training.cli.data", "training",
            "build, simulate, import, map and validate all-atom reference datasets"),
    Command("targets", "hessid.training.cli.targets", "training",
            "precompute Term-1 HVP targets (finite differences of OpenMM forces)"),
    Command("train", "hessid.training.cli.train", "training",
            "train a CG potential (FM / FM+AA / FM+AA+Cov)"),
    Command("simulate", "hessid.training.cli.simulate", "training",
            "CG Langevin MD of replicas with a trained potential"),
    Command("evaluate", "hessid.training.cli.evaluate", "training",
            "benchmark metrics of CG simulations against the all-atom reference"),
    Command("report", "hessid.training.cli.report", "training",
            "HTML report: metrics, free energies, densities, provenance"),
    Command("qm", "hessid.training.cli.qm", "qm",
            "atomistic QM datasets: build (GFN2-xTB / DFT Hessians), import, validate"),
)


def usage() -> str:
    """The text of ``hessid --help``: commands, common flags and exit codes."""
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        "usage: hessid [--help] [--version] COMMAND [options]",
        "",
        "Verification-first CG potentials with Hessian-vector-product supervision.",
        "",
        "commands:",
        *(f"  {c.name:<{width}}  {c.help}" for c in COMMANDS),
        "",
        "Run `hessid COMMAND --help` for a command's options. Every command takes -v/--verbose,",
        "-q/--quiet and --log-file FILE; long commands also take --config FILE (YAML) and",
        "--print-config, and save their resolved config as hessid-COMMAND.yaml next to their",
        "outputs. Training commands need `pip install 'hessid[training]'`.",
        "",
        "exit codes:",
        *(f"  {code}  {text}" for code, text in EXIT_CODES.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``hessid`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Returns:
        0 success, 1 a check or job failed, 2 bad input or usage (:data:`EXIT_CODES`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"hessid {__version__}")
        return EXIT_OK
    command = next((c for c in COMMANDS if c.name == argv[0]), None)
    if command is None:
        print(f"hessid: unknown command {argv[0]!r}; commands: "
              f"{', '.join(c.name for c in COMMANDS)} (see hessid --help)", file=sys.stderr)
        return EXIT_USAGE
    prog = f"hessid {command.name}"
    try:
        module = importlib.import_module(command.module)
    except ImportError as exc:
        message = missing_extra_message(exc, command.extra)
        if message is None:
            raise
        print(f"{prog}: {message}", file=sys.stderr)
        return EXIT_USAGE
    return run_command(module.build_parser, module.run, argv[1:], prog, command.extra)
