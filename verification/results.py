"""Rows of a verification report, their tolerances, and how reports are printed and saved.

Everything the check modules share lives here, so that :mod:`hessid.verification.checks`
(quadrature systems, Gaussian closed form) and :mod:`hessid.verification.elastic` (elastic
networks of real structures) both depend on this module and never on each other.

A row compares a computed quantity ``a`` with an exact reference ``b`` by the max-norm
relative error ``max|a − b| / max|b|`` (:func:`relative_error`). A normal row passes when the
error is at most its tolerance; a *negative control* (a deliberately wrong formula,
docs/identities.md §9 "Negative controls") passes when its error *exceeds*
:data:`DETECTION_THRESHOLD`, i.e. when the wrong formula is detected.

**Self-certification** (one mechanism for every quadrature-based row: the identity suite of
:mod:`~hessid.verification.checks`, the Q* rows of :mod:`~hessid.verification.projector_checks`
and the temperature rows of :mod:`~hessid.verification.thermo_checks`). A row computed on a
quadrature carries a :class:`Resolution`: the change of the reference when the nodes per fiber
coordinate are doubled (``nodes``), the Richardson estimate of the finite-difference error,
``|D(h) − D(h/2)|`` (``fd``), both on the row's error scale, and the Boltzmann density at the
``fiber_bounds`` edges relative to its peak (``edge``). :func:`judge` turns (error, tolerance,
resolution) into one of three verdicts:

* ``PASS``: the error is within tolerance *and* the resolution estimate is too (for a negative
  control: the error exceeds the threshold and 10× the estimate);
* ``FAIL``: the error exceeds the tolerance and 10× the resolution estimate, with negligible
  edge weight — no refinement can explain it: the identity (or the claimed reference) is wrong;
* ``UNRESOLVED``: anything else — the verifier cannot tell right from wrong at this resolution;
  the row's detail names the fix (raise ``n_nodes``, widen ``fiber_bounds``, change ``fd_step``).

:func:`refine` runs a point at the system's ``n_nodes`` and, while any row is UNRESOLVED,
again at 2× and 4× (:data:`REFINE_LEVELS`); the last level's verdicts are reported.
Closed-form rows (Gaussian, elastic networks) have no resolution parameter: PASS or FAIL.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from hessid import identities
from hessid.maps import NonlinearMap
from hessid.quadrature import QuadratureSystem, potential_forces, potential_hessians

__all__ = [
    "DTYPE",
    "QUADRATURE_TOL",
    "CLOSED_FORM_TOL",
    "ELASTIC_TOL",
    "PROJECTOR_TOL",
    "DETECTION_THRESHOLD",
    "EDGE_TOL",
    "RESOLUTION_MARGIN",
    "REFINE_LEVELS",
    "PASS",
    "FAIL",
    "UNRESOLVED",
    "EXIT_UNRESOLVED",
    "CheckResult",
    "Resolution",
    "Item",
    "RowAggregator",
    "judge",
    "refine",
    "with_nodes",
    "edge_density_ratio",
    "quadrature_resolution",
    "exit_code",
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
#: the fiber_bounds truncate the measure non-negligibly when the Boltzmann density at an edge
#: exceeds this fraction of its peak: the mass cut off is ≈ ratio × (decay length / width) of
#: the density, and the Hessian rows weight the tail by up to (s/σ)² ≈ 10², so 1e-10 keeps the
#: truncation 10× under the 1e-8 tolerance
EDGE_TOL = 1e-10
#: a failing error is "wrong" (FAIL) only when it exceeds the resolution estimate by this factor;
#: a negative control is "detected" only when its error exceeds this many estimates
RESOLUTION_MARGIN = 10.0
#: node multipliers of the automatic refinement: the default, then 2× and 4× per coordinate
REFINE_LEVELS = (1, 2, 4)
#: row verdicts
PASS, FAIL, UNRESOLVED = "PASS", "FAIL", "UNRESOLVED"
#: exit code of ``hessid verify`` when no row FAILs but some are UNRESOLVED
EXIT_UNRESOLVED = 3


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
        verdict: ``"PASS"``, ``"FAIL"`` or ``"UNRESOLVED"`` (:func:`judge`); empty means
            PASS/FAIL from ``passed`` (closed-form rows).
    """

    system: str
    map: str
    quantity: str
    max_rel_error: float
    tolerance: float
    passed: bool
    detail: str = ""
    negative_control: bool = False
    verdict: str = ""

    @property
    def status(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"UNRESOLVED"``."""
        return self.verdict or (PASS if self.passed else FAIL)


@dataclass(frozen=True)
class Resolution:
    """How well a quadrature-based row is resolved (dimensionless, on the row's error scale).

    Attributes:
        nodes: change of the value when the nodes per fiber coordinate are doubled.
        fd: Richardson estimate ``|D(h) − D(h/2)|`` of the finite-difference error.
        edge: Boltzmann density at the ``fiber_bounds`` edges / its peak (not an error scale;
            non-negligible above :data:`EDGE_TOL`).
        n_nodes: nodes per fiber coordinate of the row (for the advice).
        fd_step: the finite-difference step, Å (for the advice).
    """

    nodes: float = 0.0
    fd: float = 0.0
    edge: float = 0.0
    n_nodes: int | None = None
    fd_step: float | None = None

    @property
    def estimate(self) -> float:
        """``nodes + fd``: the error the resolution could explain."""
        return self.nodes + self.fd

    def advice(self, err: float, tol: float) -> str:
        """What to change: every part of the estimate that is not negligible for this row."""
        out = []
        if self.edge > EDGE_TOL:
            out.append(f"widen fiber_bounds (Boltzmann density at an edge is {self.edge:.1e} of its peak)")
        limit = min(tol, err / RESOLUTION_MARGIN)
        fd_first = self.fd > limit and self.fd >= self.nodes  # else the FD only sees the quadrature noise
        if self.nodes > limit or not out and not fd_first:
            out.append(f"raise n_nodes (at n_nodes={self.n_nodes}, 2x nodes changes the value by {self.nodes:.1e})")
        if fd_first:
            out.append(f"change fd_step (now {self.fd_step} A; h vs h/2 differ by {self.fd:.1e})")
        return "; ".join(out)


def judge(err: float, tol: float, res: Resolution | None = None, negative: bool = False) -> tuple[str, str]:
    """Verdict of one row at one point (module docstring): ``(verdict, reason)``.

    Args:
        err: relative error of the row (dimensionless).
        tol: tolerance (normal row) or detection threshold (negative control).
        res: the row's :class:`Resolution`; None for a closed form (PASS/FAIL only).
        negative: the row is a negative control (must exceed ``tol``).

    Returns:
        (``"PASS"`` | ``"FAIL"`` | ``"UNRESOLVED"``, one-line reason; empty for PASS).
    """
    err, tol = float(err), float(tol)
    if not math.isfinite(err):
        return FAIL, "non-finite error"
    if res is None:
        ok = err > tol if negative else err <= tol
        return (PASS, "") if ok else (FAIL, "not detected" if negative else "exceeds the tolerance")
    est, edge_ok = res.estimate, res.edge <= EDGE_TOL
    if negative:
        if err > tol and err > RESOLUTION_MARGIN * est and edge_ok:
            return PASS, ""
        if err <= tol and RESOLUTION_MARGIN * est < tol and edge_ok:
            return FAIL, "wrong formula NOT DETECTED (resolved)"
        return UNRESOLVED, "detection not certified: " + res.advice(err, tol)
    if err <= tol and est <= tol and edge_ok:
        return PASS, ""
    if err > tol and RESOLUTION_MARGIN * est < err and edge_ok:
        return FAIL, f"wrong: the error exceeds the resolution estimate {est:.1e} by > {RESOLUTION_MARGIN:g}x"
    return UNRESOLVED, res.advice(err, tol)


@dataclass
class Item:
    """One row's value at one point, before aggregation (see :class:`RowAggregator`).

    ``kind`` says which part of the reference the row depends on (``"force"``, ``"hessian"``,
    or None for a row that uses no quadrature, e.g. ``P Mᵀ = I``); ``res`` is filled by
    :func:`refine` from the kind, or given directly.
    """

    map: str
    quantity: str
    err: float
    tol: float
    negative: bool = False
    detail: str = ""
    kind: str | None = "hessian"
    res: Resolution | None = None
    verdict: str = ""
    reason: str = ""

    def judged(self) -> Item:
        if not self.verdict:
            self.verdict, self.reason = judge(self.err, self.tol, self.res, self.negative)
        return self


class RowAggregator:
    """Aggregates per-point :class:`Item` s into one :class:`CheckResult` per (map, quantity):
    FAIL if any point FAILs, else UNRESOLVED if any is, else PASS; the reported error is the worst
    (normal rows) or the weakest detection (negative controls) over the points."""

    def __init__(self, system: str) -> None:
        self.system = system
        self._rows: dict[tuple[str, str], list] = {}

    def add(self, item: Item, where) -> None:
        item.judged()
        self._rows.setdefault((item.map, item.quantity), []).append((item, where))

    def results(self) -> list[CheckResult]:
        out = []
        for (map_, quantity), items in self._rows.items():
            neg = items[0][0].negative
            verdicts = {it.verdict for it, _ in items}
            verdict = FAIL if FAIL in verdicts else UNRESOLVED if UNRESOLVED in verdicts else PASS
            pick = [p for p in items if p[0].verdict == verdict]
            it, where = (min if neg else max)(pick, key=lambda p: p[0].err)
            text = f"{len(items)} point(s), {'weakest' if neg else 'worst'} at {where}"
            if it.res is not None and it.res.n_nodes is not None:
                text += f", n_nodes={it.res.n_nodes}"
            if verdict != PASS:
                text += f"; {verdict}: {it.reason}"
            if it.detail:
                text += "; " + it.detail
            out.append(CheckResult(self.system, map_, quantity, it.err, it.tol, verdict == PASS, text, neg,
                                   verdict))
        return out


def with_nodes(system: QuadratureSystem, n_nodes: int | None = None, fd_step: float | None = None):
    """A shallow copy of ``system`` with other ``n_nodes`` / ``fd_step`` (the original is unchanged)."""
    out = copy.copy(system)
    if n_nodes is not None:
        out.n_nodes = int(n_nodes)
    if fd_step is not None:
        out.fd_step = float(fd_step)
    return out


def edge_density_ratio(system: QuadratureSystem, R, n_nodes: int | None = None, beta: float | None = None) -> float:
    """Boltzmann density (per unit fiber volume, with the δ-measure Jacobian) on the outermost node
    layer of every non-periodic fiber coordinate, over its peak on the nodes; 0 without
    non-periodic coordinates. Dimensionless.

    Args:
        system: the quadrature system.  R: CG point (d,).  n_nodes: nodes per coordinate.
        beta: inverse temperature (default ``system.beta``), mol/kcal.
    """
    if not any(not per for _, _, per in system.bounds):
        return 0.0
    s, wq = system.nodes(n_nodes)
    _, log_measure, energy = system.fiber_log_measure(torch.as_tensor(R, dtype=DTYPE).reshape(1, -1), n_nodes)
    b = system.beta if beta is None else float(beta)
    log_density = (log_measure[0] - torch.log(wq) - b * energy[0])
    mask = torch.zeros(s.shape[0], dtype=torch.bool)
    for k, (_, _, periodic) in enumerate(system.bounds):
        if not periodic:
            mask |= (s[:, k] == s[:, k].min()) | (s[:, k] == s[:, k].max())
    return float(torch.exp(log_density[mask].max() - log_density.max()))


def _identity_values(system: QuadratureSystem, R, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(F (d,), 𝓗 (d, d)) by :mod:`hessid.identities` on the quadrature at ``n_nodes``: the linear
    identity with the first projector, else the compact nonlinear form with G = (JJᵀ)⁻¹J."""
    samples, w = system.conditional_samples(R, n_nodes=n_nodes)
    forces = potential_forces(system.potential, samples)
    if system.projectors:
        P = next(iter(system.projectors.values()))
        hess = potential_hessians(system.potential, samples)
        return (identities.mean_force_linear(forces, P, w),
                identities.cg_hessian_linear(hess, forces, P, system.beta, w))
    nl = NonlinearMap(system.cg_map)
    return (identities.mean_force_nonlinear(nl, samples, forces, system.beta, w),
            identities.cg_hessian_nonlinear(nl, system.potential, samples, system.beta, w, form="compact"))


def quadrature_resolution(system: QuadratureSystem, R, cache: dict | None = None) -> dict:
    """The :class:`Resolution` of the force and Hessian rows of ``system`` at R.

    ``nodes``: the change of the identity's mean force and Hessian (:mod:`hessid.identities` on
    the quadrature samples) when the nodes per fiber coordinate are doubled; the reference (FD
    of the quadrature A) integrates the same measure on the same nodes, so this is the
    quadrature's resolution on both sides of every row, at a fraction of the cost of the FD
    stencil at 2× nodes. ``fd``: the change of the 6th-order FD of A from step h to h/2
    (Richardson). Both relative to max|F| or max|𝓗| of the FD reference (the rows' scales).
    ``edge``: :func:`edge_density_ratio`.

    Args:
        system: the system at the level being judged.  R: CG point (d,).
        cache: ``{("id", n): (F, H)}`` reused across refinement levels (filled here).

    Returns:
        ``{"force": Resolution, "hessian": Resolution, "fd": (grad, hess)}``: ``fd`` holds the FD
        gradient and Hessian of A at ``system.n_nodes`` and ``system.fd_step``.
    """
    cache = {} if cache is None else cache
    n = system.n_nodes

    def ident(m):
        if ("id", m) not in cache:
            cache[("id", m)] = _identity_values(system, R, m)
        return cache[("id", m)]

    g, h = system._fd(R)
    (F1, H1), (F2, H2) = ident(n), ident(2 * n)
    gh, hh = with_nodes(system, fd_step=system.fd_step / 2)._fd(R)
    sg, sh = max(float(g.abs().max()), 1e-300), max(float(h.abs().max()), 1e-300)
    kw = dict(edge=edge_density_ratio(system, R), n_nodes=n, fd_step=system.fd_step)
    return {"force": Resolution(float((F2 - F1).abs().max()) / sg, float((gh - g).abs().max()) / sg, **kw),
            "hessian": Resolution(float((H2 - H1).abs().max()) / sh, float((hh - h).abs().max()) / sh, **kw),
            "fd": (g, h)}


def refine(system: QuadratureSystem, R, evaluate: Callable, levels=REFINE_LEVELS) -> list[Item]:
    """Evaluate one CG point, refining the quadrature while any row is UNRESOLVED.

    Args:
        system: the system at its own ``n_nodes`` (n₀).
        R: CG point, (d,).
        evaluate: ``evaluate(system_at_level, R, ref)`` → list of :class:`Item`, where
            ``ref = quadrature_resolution(...)`` (its ``"fd"`` entry holds the FD gradient and
            Hessian of A at the level's nodes); items with ``kind`` get ``ref[kind]`` as their
            resolution unless they carry their own.
        levels: node multipliers (default :data:`REFINE_LEVELS`: n₀, 2n₀, 4n₀).

    Returns:
        the judged items of the last level evaluated (the first level at which no row is
        UNRESOLVED, or the last of the budget); each detail names a refinement.
    """
    cache: dict = {}
    n0 = system.n_nodes
    items: list[Item] = []
    for mult in levels:
        level = system if mult == 1 else with_nodes(system, mult * n0)
        ref = quadrature_resolution(level, R, cache)
        items = evaluate(level, R, ref)
        for it in items:
            if it.res is None and it.kind is not None:
                it.res = ref[it.kind]
            it.judged()
        if all(it.verdict != UNRESOLVED for it in items):
            break  # the identity at 2n of this level (in the cache) is reused by the next level
    if mult != levels[0]:
        for it in items:
            it.detail = (it.detail + "; " if it.detail else "") + f"refined from n_nodes={n0}"
    return items


def exit_code(results: list[CheckResult]) -> int:
    """``hessid verify``'s exit code: 0 all PASS, 1 any FAIL, :data:`EXIT_UNRESOLVED` (3) when
    no row fails but some are UNRESOLVED (and 1 for an empty report)."""
    statuses = {r.status for r in results}
    if not results or FAIL in statuses:
        return 1
    return EXIT_UNRESOLVED if UNRESOLVED in statuses else 0


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
    return bool(results) and all(r.status == PASS for r in results)


def format_table(results: list[CheckResult]) -> str:
    """Plain-text table: system, map, quantity, max relative error, tolerance, PASS/FAIL/UNRESOLVED.

    Negative controls show their threshold as ``>1e-05`` (the error must exceed it). Every
    UNRESOLVED row is followed by an indented line with its advice.
    """
    header = ("system", "map", "quantity", "max rel err", "tolerance", "result")
    lines = [header]
    for r in results:
        tol = f">{r.tolerance:.0e}" if r.negative_control else f"{r.tolerance:.0e}"
        lines.append((r.system, r.map, r.quantity, f"{r.max_rel_error:.2e}", tol, r.status))
    widths = [max(len(row[k]) for row in lines) for k in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines[:1]]
    text.append("  ".join("-" * w for w in widths))
    for r, row in zip(results, lines[1:], strict=True):
        text.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if r.status == UNRESOLVED:
            text.append(f"    -> {r.detail.split(UNRESOLVED + ': ', 1)[-1]}")
    counts = _counts(results)
    text.append("")
    text.append(f"{len(results)} checks ({counts['n_negative_controls']} negative controls): "
                f"{counts['n_passed']} passed, {counts['n_failed']} failed, "
                f"{counts['n_unresolved']} unresolved")
    return "\n".join(text)


def _counts(results: list[CheckResult]) -> dict:
    st = [r.status for r in results]
    return {"n_checks": len(results), "n_passed": st.count(PASS), "n_failed": st.count(FAIL),
            "n_unresolved": st.count(UNRESOLVED),
            "n_negative_controls": sum(r.negative_control for r in results)}


def results_to_dict(results: list[CheckResult], wall_time_s: float | None = None) -> dict:
    """JSON-ready dict: ``{"summary": {n_checks, n_passed, n_failed, n_unresolved,
    n_negative_controls, all_passed, exit_code[, wall_time_s]}, "results": [CheckResult fields
    with ``verdict`` filled, ...]}``."""
    summary = _counts(results) | {"all_passed": all_passed(results), "exit_code": exit_code(results)}
    if wall_time_s is not None:
        summary["wall_time_s"] = round(wall_time_s, 3)
    return {"summary": summary, "results": [asdict(replace(r, verdict=r.status)) for r in results]}


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
