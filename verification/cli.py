"""``hessid verify``: check the CG identities against exact answers (thin CLI layer).

    hessid verify --all [--json FILE]
    hessid verify SYSTEM.py [--json FILE]
    hessid verify --gaussian --map ca|com [--pdb FILE] [--projector min_norm|bead_sum]
                  [--temperature K] [--json FILE]

Prints a table (system, map, quantity, max relative error, tolerance, PASS/FAIL). Exit code
0 when every row passes, 1 on any failure, 2 when the input is refused (e.g. a system whose
``cg_map(fiber(R, s)) != R`` or whose projector violates ``P Mᵀ = I``).
"""

from __future__ import annotations

import argparse
import sys

from hessid.verification.checks import all_passed, format_table, timed, write_json

__all__ = ["register", "run", "verify_all"]


def verify_all():
    """Every built-in check (``hessid verify --all``); see
    :func:`hessid.verification.checks.run_builtin_checks`."""
    from hessid.verification.checks import run_builtin_checks

    return run_builtin_checks()


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``verify`` subcommand to an argparse ``subparsers`` object; sets ``func``."""
    p = subparsers.add_parser(
        "verify", help="check CG identities against exact Hessians",
        description="Check the mean-force and CG-Hessian identities (docs/identities.md §2, "
                    "§3) against "
                    "exact answers: quadrature of Z(R) with 6th-order FD of A(R), Gaussian "
                    "closed forms, and elastic networks of real structures.")
    p.add_argument("system", nargs="?", help="a SYSTEM.py file (see docs/verification.md)")
    p.add_argument("--all", action="store_true", help="run every built-in check")
    p.add_argument("--gaussian", action="store_true",
                   help="elastic-network (Gaussian) check of a linear map on a structure")
    p.add_argument("--map", choices=("ca", "com"), default="ca",
                   help="with --gaussian: Cα selection or residue centre of mass")
    p.add_argument("--pdb", help="with --gaussian: PDB file (default: shipped villin 1VII)")
    p.add_argument("--projector", choices=("min_norm", "bead_sum"), default="min_norm",
                   help="with --gaussian: force projector")
    p.add_argument("--temperature", type=float, default=300.0, help="K (with --gaussian)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``hessid verify`` for parsed arguments; returns the exit code (0, 1 or 2)."""
    chosen = sum([bool(args.all), bool(args.gaussian), args.system is not None])
    if chosen != 1:
        print("hessid verify: give exactly one of --all, --gaussian or SYSTEM.py",
              file=sys.stderr)
        return 2
    try:
        if args.all:
            results, wall = timed(verify_all)
        elif args.gaussian:
            from hessid.verification.elastic import check_structure_file

            results, wall = timed(check_structure_file, args.pdb, args.map, args.projector,
                                  args.temperature)
        else:
            from hessid.verification.user_system import verify_user_system

            results, wall = timed(verify_user_system, args.system)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hessid verify: refused: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        failed = [r for r in results if not r.passed]
        if failed:
            print("\n".join(format_table(failed).splitlines()[:-2]))
        print(format_table(results).splitlines()[-1])
    else:
        print(format_table(results))
    print(f"wall time {wall:.2f} s")
    if args.json:
        write_json(results, args.json, wall)
    return 0 if all_passed(results) else 1
