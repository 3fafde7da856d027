"""Rows of a verification report, their tolerances, and how reports are printed and saved.

Everything the check modules share lives here, so that :mod:`hessid.verification.checks`
(quadrature systems, Gaussian closed form) and :mod:`hessid.verification.elastic` (elastic
networks of real structures) both depend on this module and never on each other.

A row compares a computed quantity ``a`` with an exact reference ``b`` by the max-norm
relative error ``max|a − b| / max|b|`` (:func:`relative_error`). A normal row passes when the
error is at most its tolerance; a *negative control* (a deliberately wrong formula,
docs/identities.md §9 "Negative controls") passes when its error *exceeds*
:data:`DETECTION_THRESHOLD`, i.e. when the wrong formula is detected.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "DTYPE",
    "QUADRATURE_TOL",
    "CLOSED_FORM_TOL",
    "ELASTIC_TOL",
    "PROJECTOR_TOL",
    "DETECTION_THRESHOLD",
    "CheckResult",
    "relative_error",
    "linear_negative_control_errors",
    "all_passed",
    "format_table",
    "results_to_dict",
    "write_json",
    "timed",
]

#: dtype of every verification computation
DTYPE = torch.float64
#: identity vs quadrature ground truth (relative, max-norm)
QUADRATURE_TOL = 1e-8
#: identity vs closed form (Gaussian; relative)
CLOSED_FORM_TOL = 1e-10
#: identity on an elastic network of a structure (relative, max-norm)
ELASTIC_TOL = 1e-8
#: ``max |Q Sᵀ − I|`` of a projector on an elastic network (absolute)
PROJECTOR_TOL = 1e-10
#: a wrong formula counts as detected when its relative error exceeds this
DETECTION_THRESHOLD = 1e-5


@dataclass(frozen=True)
class CheckResult:
    """One row of a verification report.

    Attributes:
        system: system label.
        map: map / projector label (e.g. ``P=min_norm``, ``G=identity``).
        quantity: what was compared; negative controls start with ``neg:``.
        max_rel_error: relative error (worst over the points), dimensionless.
        tolerance: for a normal check the largest accepted error; for a negative control the
            detection threshold the error must exceed.
        passed: ``max_rel_error <= tolerance`` (normal) or ``> tolerance`` (negative control).
        detail: free text (points, term sizes).
        negative_control: True for rows that check a wrong formula is detected.
    """

    system: str
    map: str
    quantity: str
    max_rel_error: float
    tolerance: float
    passed: bool
    detail: str = ""
    negative_control: bool = False


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max|b|`` (max-norm relative error; absolute if b = 0).

    Args:
        a: computed value; b: reference, same shape (any dtype; compared in float64).

    Returns:
        float, dimensionless.

    Raises:
        ValueError: shapes differ.
    """
    a = torch.as_tensor(a, dtype=DTYPE)
    b = torch.as_tensor(b, dtype=DTYPE)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    return err / scale if scale > 0 else err


def linear_negative_control_errors(term1: torch.Tensor, term2: torch.Tensor,
                                   exact_hessian: torch.Tensor) -> list[tuple[str, float]]:
    """Errors of the two wrong linear formulas every linear check must detect.

    The right formula is ``𝓗 = Term 1 + term2`` with ``term2 = −β Cov(P f)``
    (docs/identities.md, eq. (2.3)); the wrong ones flip the sign of Term 2 or drop it.

    Args:
        term1: ⟨P ∇²H Pᵀ⟩, (d, d) kcal/mol/Å².
        term2: −β Cov(P f) as added by the identity, (d, d) kcal/mol/Å².
        exact_hessian: the exact CG Hessian, (d, d) kcal/mol/Å².

    Returns:
        ``[(quantity, relative error)]`` for Term 2 with its sign flipped (Term1 + β Cov) and
        Term 1 alone; each must exceed :data:`DETECTION_THRESHOLD`.
    """
    return [("neg: term2 sign flipped detected", relative_error(term1 - term2, exact_hessian)),
            ("neg: term1 only detected", relative_error(term1, exact_hessian))]


def all_passed(results: list[CheckResult]) -> bool:
    """True when every row passed (and there is at least one row)."""
    return bool(results) and all(r.passed for r in results)


def format_table(results: list[CheckResult]) -> str:
    """Plain-text table: system, map, quantity, max relative error, tolerance, PASS/FAIL.

    Negative controls show their threshold as ``>1e-05`` (the error must exceed it).
    """
    header = ("system", "map", "quantity", "max rel err", "tolerance", "result")
    lines = [header]
    for r in results:
        tol = f">{r.tolerance:.0e}" if r.negative_control else f"{r.tolerance:.0e}"
        lines.append((r.system, r.map, r.quantity, f"{r.max_rel_error:.2e}", tol,
                      "PASS" if r.passed else "FAIL"))
    widths = [max(len(row[k]) for row in lines) for k in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    n_fail = sum(not r.passed for r in results)
    n_neg = sum(r.negative_control for r in results)
    text.append("")
    text.append(f"{len(results)} checks ({n_neg} negative controls): "
                f"{len(results) - n_fail} passed, {n_fail} failed")
    return "\n".join(text)


def results_to_dict(results: list[CheckResult], wall_time_s: float | None = None) -> dict:
    """JSON-ready dict: ``{"summary": {...}, "results": [CheckResult fields, ...]}``."""
    n_fail = sum(not r.passed for r in results)
    summary = {"n_checks": len(results), "n_passed": len(results) - n_fail, "n_failed": n_fail,
               "n_negative_controls": sum(r.negative_control for r in results),
               "all_passed": all_passed(results)}
    if wall_time_s is not None:
        summary["wall_time_s"] = round(wall_time_s, 3)
    return {"summary": summary, "results": [asdict(r) for r in results]}


def write_json(results: list[CheckResult], path, wall_time_s: float | None = None) -> Path:
    """Write :func:`results_to_dict` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_dict(results, wall_time_s), indent=2) + "\n")
    return path


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), wall seconds) — small helper for the CLI and benchmarks."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
