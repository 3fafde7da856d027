"""``hessid verify``: check the CG identities against exact answers (thin CLI layer).

    hessid verify --all [--json FILE]
    hessid verify SYSTEM.py [--json FILE]
    hessid verify --gaussian --map ca|com [--pdb FILE] [--projector min_norm|bead_sum]
                  [--temperature K] [--json FILE]
    hessid verify --model-hessian [--json FILE]     (needs the training extra)

Prints a table (system, map, quantity, max relative error, tolerance, PASS/FAIL/UNRESOLVED);
``-q`` prints only the rows that did not pass and the summary. Exit codes (:data:`EPILOG`):
0 every row passes, 1 any row FAILs, 2 the input is refused (e.g. a system whose
``cg_map(fiber(R, s)) != R`` or whose projector violates ``P Mᵀ = I``), 3 no row fails but some
are UNRESOLVED (the quadrature, bounds or FD step cannot certify them even after refining to
4× the nodes; each such row says what to change).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    add_dataclass,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.verification.checks import run_builtin_checks
from hessid.verification.elastic import check_structure_file
from hessid.verification.model_hessian import MODEL_HESSIAN_PROVIDER
from hessid.verification.results import (
    EXIT_UNRESOLVED,
    PASS,
    REFINE_LEVELS,
    exit_code,
    format_table,
    timed,
    write_json,
)
from hessid.verification.thermo_checks import run_thermo_builtin_checks
from hessid.verification.user_system import verify_user_system

__all__ = ["EPILOG", "VerifyOptions", "build_parser", "model_hessian_rows", "run", "verify_all"]

#: the verdicts and exit codes, printed by ``hessid verify --help``
EPILOG = (
    "Verdicts: PASS (error and resolution estimate within tolerance), FAIL (the error exceeds "
    "10x the resolution estimate: the identity, map or claimed reference is wrong), UNRESOLVED "
    "(quadrature nodes, fiber_bounds or fd_step cannot tell right from wrong; the row says which "
    "to change). Each quadrature row is recomputed with 2x nodes, the finite differences with "
    "h/2, and the Boltzmann density at the fiber_bounds edges is measured; unresolved points are "
    f"refined automatically first, up to {REFINE_LEVELS[-1]}x the nodes per fiber coordinate. "
    f"Exit codes: 0 all PASS; {EXIT_FAILED} any FAIL; 2 input refused; {EXIT_UNRESOLVED} no FAIL "
    "but some UNRESOLVED.")


@dataclass
class VerifyOptions:
    """Options of ``hessid verify`` (give exactly one of ``system``, ``all``, ``gaussian``,
    ``model_hessian``).

    Attributes:
        system: a SYSTEM.py file defining your CG map and system (docs/verification.md).
        all: run every built-in check.
        gaussian: elastic-network (Gaussian) check of a linear map on a structure.
        map: with --gaussian: ``ca`` (Cα selection) or ``com`` (residue centre of mass).
        pdb: with --gaussian: PDB file (default: the shipped villin 1VII).
        projector: with --gaussian: force projector, ``min_norm`` or ``bead_sum``.
        temperature: with --gaussian: K.
        model_hessian: the atomistic model's HVPs and Hessians against autograd on random
            molecules, with negative controls (needs the training extra).
        json: also write the results as JSON to this file.
    """

    system: str | None = None
    all: bool = False
    gaussian: bool = False
    map: Literal["ca", "com"] = signature_default(check_structure_file, "kind")
    pdb: str | None = None
    projector: Literal["min_norm", "bead_sum"] = signature_default(check_structure_file,
                                                                   "projector")
    temperature: float = signature_default(check_structure_file, "temperature")
    model_hessian: bool = False
    json: str | None = None


def verify_all():
    """Every built-in check (``hessid verify --all``); see
    :func:`hessid.verification.checks.run_builtin_checks` and
    :func:`hessid.verification.thermo_checks.run_thermo_builtin_checks` (T1–T3)."""
    return run_builtin_checks() + run_thermo_builtin_checks()


def model_hessian_rows():
    """The rows of ``hessid verify --model-hessian``: the training module named by
    :data:`~hessid.verification.model_hessian.MODEL_HESSIAN_PROVIDER`, imported by name only
    now (verification never imports the training layer; without the training extra the
    ImportError becomes "needs the 'training' extra", exit 2)."""
    module, _, function = MODEL_HESSIAN_PROVIDER.partition(":")
    return getattr(importlib.import_module(module), function)()


def build_parser(prog: str = "hessid verify") -> ArgumentParser:
    """The parser of ``hessid verify`` (options: :class:`VerifyOptions`)."""
    parser = new_parser(prog, "Check the mean-force and CG-Hessian identities against exact "
                              "answers: quadrature of Z(R) with 6th-order FD of A(R), Gaussian "
                              "closed forms, and elastic networks of real structures.")
    add_dataclass(parser, VerifyOptions, positional=["system"])
    parser.epilog = EPILOG
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Execute ``hessid verify`` for parsed options; returns the exit code (0, 1, 2 or 3, see
    :data:`EPILOG`).

    Raises:
        ValueError, FileNotFoundError: the system or structure is refused (exit 2).
    """
    opts = dataclass_from(VerifyOptions, cfg)
    if sum([opts.all, opts.gaussian, opts.system is not None, opts.model_hessian]) != 1:
        raise ValueError("give exactly one of --all, --gaussian, --model-hessian or SYSTEM.py")
    if opts.model_hessian:
        results, wall = timed(model_hessian_rows)
    elif opts.all:
        results, wall = timed(verify_all)
    elif opts.gaussian:
        results, wall = timed(check_structure_file, opts.pdb, opts.map, opts.projector,
                              opts.temperature)
    else:
        results, wall = timed(verify_user_system, opts.system)
    if cfg.quiet:
        failed = [r for r in results if r.status != PASS]
        if failed:
            print("\n".join(format_table(failed).splitlines()[:-2]))
        print(format_table(results).splitlines()[-1])
    else:
        print(format_table(results))
    print(f"wall time {wall:.2f} s")
    if opts.json:
        write_json(results, opts.json, wall)
        save_config(parser, cfg, Path(opts.json).parent, "verify")
    code = exit_code(results)
    return EXIT_OK if code == 0 else code
