"""The built-in suite: identity vs exact, with negative controls (docs/identities.md §7, §9).

For a :class:`hessid.quadrature.QuadratureSystem` and each of its CG points R, the exact
mean force and Hessian (6th-order FD of the quadrature A(R), or a closed form) are compared
with the identities of :mod:`hessid.identities` evaluated on the *same* quadrature nodes and
weights:

* linear maps, each projector P: ``F = ⟨P f⟩`` and ``𝓗 = ⟨P∇²HPᵀ⟩ − β Cov(Pf)``
  (docs/identities.md, eqs. (2.2), (2.3));
* every map, each metric of G: ``F = ⟨Gf + β⁻¹ div G⟩`` and the compact, split and
  symmetric Hessian forms (docs/identities.md §3), plus the symmetry of each averaged Hessian;
* translation zero modes ``𝓗 t = 0`` where the system declares them;
* negative controls — wrong formulas that must be *detected* (error above
  :data:`DETECTION_THRESHOLD`): Term 2 sign flipped, Term 1 only, no div G, the linear
  formula on a nonlinear map, no ``G∂G·f`` term, and a missing fiber Jacobian.

Each (system, map, quantity) row reports the worst relative error over the points (for a
negative control: the weakest detection). Relative error = ``max|a − b| / max|b|``.
"""

from __future__ import annotations

import contextlib

import torch

# module attribute access (identities.f), so the verifier always checks the library's current
# functions (a test replaces one to prove the verifier catches a broken identity)
from hessid import identities
from hessid.maps import NonlinearMap
from hessid.quadrature import (
    QuadratureSystem,
    builtin_systems,
    potential_forces,
    potential_hessians,
)
from hessid.verification.elastic import check_structure_file, gaussian_identity
from hessid.verification.projector_checks import run_projector_checks
from hessid.verification.results import (
    CLOSED_FORM_TOL,
    DETECTION_THRESHOLD,
    DTYPE,
    QUADRATURE_TOL,
    REFINE_LEVELS,
    CheckResult,
    Item,
    RowAggregator,
    all_passed,
    format_table,
    linear_negative_control_errors,
    refine,
    relative_error,
    results_to_dict,
    timed,
    write_json,
)

__all__ = [
    "check_quadrature_system",
    "check_gaussian_closed_form",
    "run_builtin_checks",
    "single_threaded",
    # re-exported from hessid.verification.results, where they are defined
    "CheckResult",
    "relative_error",
    "linear_negative_control_errors",
    "format_table",
    "results_to_dict",
    "write_json",
    "all_passed",
    "timed",
    "QUADRATURE_TOL",
    "CLOSED_FORM_TOL",
    "DETECTION_THRESHOLD",
]

#: a wrong formula is only reported where it differs structurally from the right one
_STRUCTURAL = 1e-9


class _Rows:
    """Collects the :class:`~hessid.verification.results.Item` s of one point (judged later by
    :func:`hessid.verification.results.refine`)."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def add(self, map_: str, quantity: str, err: float, tol: float, point=None, negative=False,
            detail: str = "") -> None:
        kind = None if quantity.startswith("projector") else ("force" if "mean force" in quantity else "hessian")
        self.items.append(Item(map_, quantity, float(err), tol, negative, detail, kind))


@contextlib.contextmanager
def single_threaded():
    """Run torch on one intra-op thread inside the block (restored afterwards).

    The checks use tiny tensors (≤ a few hundred nodes): on a shared 2-core machine torch's
    thread pool only adds contention (measured: 25 s → 2.3 s for ``verify --all`` under load).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _symmetry_error(h: torch.Tensor) -> float:
    return float((h - h.T).abs().max()) / max(float(h.abs().max()), 1e-300)


def _curvature_force_term(nl_map, samples, forces, weights) -> torch.Tensor:
    """⟨G_ai (∂_i G_bj) f_j⟩ (the "G∂G·f" line of the split form), (d, d)."""
    with torch.enable_grad():
        r = samples.detach().clone().requires_grad_(True)
        G = nl_map.projector(r, create_graph=True)  # (S, d, D)
        S, d, D = G.shape
        dG = torch.zeros(S, d, D, D, dtype=DTYPE)  # [s, b, j, i] = ∂_i G_bj
        for b in range(d):
            for j in range(D):
                if G.requires_grad:
                    (g,) = torch.autograd.grad(G[:, b, j].sum(), r, retain_graph=True,
                                               allow_unused=True)
                    if g is not None:
                        dG[:, b, j] = g
    per = torch.einsum("sai,sbji,sj->sab", G.detach(), dG, forces)  # (S, d, d)
    return torch.einsum("s,sab->ab", weights, per)


def _linear_rows(rows: _Rows, system: QuadratureSystem, M, pt, samples, forces, hessians,
                 weights, F_ex, H_ex, negative_controls: bool) -> dict:
    hess_by_projector = {}
    for key, P in system.projectors.items():
        label = f"P={key}"
        F = identities.mean_force_linear(forces, P, weights)
        H, (term1, term2) = identities.cg_hessian_linear(hessians, forces, P, system.beta,
                                                         weights, return_terms=True)
        hess_by_projector[key] = (H, term1, term2)
        if M is not None:
            res = float((P @ M.T - torch.eye(M.shape[0], dtype=DTYPE)).abs().max())
            rows.add(label, "projector P M^T = I (abs residual)", res, QUADRATURE_TOL, pt)
        rows.add(label, "mean force <P f>", relative_error(F, F_ex), QUADRATURE_TOL, pt)
        rows.add(label, "hessian <P ddH P^T> - beta Cov(P f)", relative_error(H, H_ex),
                 QUADRATURE_TOL, pt)
        rows.add(label, "symmetry of averaged hessian", _symmetry_error(H), QUADRATURE_TOL, pt)
        if negative_controls and float(term2.abs().max()) > _STRUCTURAL * float(H_ex.abs().max()):
            for qty, e in linear_negative_control_errors(term1, term2, H_ex):
                rows.add(label, qty, e, DETECTION_THRESHOLD, pt, negative=True)
    return hess_by_projector


def _nonlinear_rows(rows: _Rows, system: QuadratureSystem, R, pt, samples, forces, weights,
                    F_ex, H_ex, forms, negative_controls: bool, is_linear: bool) -> dict:
    metrics = {"identity": NonlinearMap(system.cg_map)}
    if system.masses is not None:
        metrics["inverse_mass"] = NonlinearMap(system.cg_map, metric="inverse_mass",
                                               masses=system.masses)
    compact_by_metric = {}
    for key, nl in metrics.items():
        label = f"G={key}"
        F = identities.mean_force_nonlinear(nl, samples, forces, system.beta, weights)
        rows.add(label, "mean force <G f + div G / beta>", relative_error(F, F_ex),
                 QUADRATURE_TOL, pt)
        hessians = {}
        for form in forms:
            H = identities.cg_hessian_nonlinear(nl, system.potential, samples, system.beta,
                                                weights, form=form)
            hessians[form] = H
            rows.add(label, f"hessian ({form})", relative_error(H, H_ex), QUADRATURE_TOL, pt)
            rows.add(label, f"symmetry of averaged hessian ({form})", _symmetry_error(H),
                     QUADRATURE_TOL, pt)
        compact_by_metric[key] = hessians.get("compact")
        if not negative_controls or key != "identity":
            continue
        G, div = nl.projector_and_divergence(samples)
        L = nl.local_mean_force(samples, forces, system.beta)
        cov_L = identities.weighted_covariance(L, weights=weights)
        scale = float(H_ex.abs().max())
        if "compact" in hessians and float(cov_L.abs().max()) > _STRUCTURAL * scale:
            H = hessians["compact"]
            rows.add(label, "neg: term2 sign flipped detected",
                     relative_error(H + 2 * system.beta * cov_L, H_ex), DETECTION_THRESHOLD,
                     pt, negative=True)
            rows.add(label, "neg: term1 only detected",
                     relative_error(H + system.beta * cov_L, H_ex), DETECTION_THRESHOLD, pt,
                     negative=True)
        if is_linear:
            continue
        if float(div.abs().max()) > _STRUCTURAL:
            F_no_div = torch.einsum("s,sai,si->a", weights, G, forces)
            rows.add(label, "neg: no div G (mean force) detected",
                     relative_error(F_no_div, F_ex), DETECTION_THRESHOLD, pt, negative=True)
        if "split" in forms:
            H_split, terms = identities.cg_hessian_nonlinear(nl, system.potential, samples,
                                                             system.beta, weights, form="split",
                                                             return_terms=True)
            rows.add(label, "neg: linear formula on nonlinear map detected",
                     relative_error(terms["linear_form"], H_ex), DETECTION_THRESHOLD, pt,
                     negative=True)
            curv_f = _curvature_force_term(nl, samples, forces, weights)
            if float(curv_f.abs().max()) > _STRUCTURAL * scale:
                rows.add(label, "neg: no G dG f term detected",
                         relative_error(H_split + curv_f, H_ex), DETECTION_THRESHOLD, pt,
                         negative=True)
        if not system.jacobian_is_constant():
            # the PMF of a δ-measure without |det ∂r/∂(R,s)| (e.g. without ρ for a radius)
            F_nj, H_nj = system.exact_force_and_hessian(R, jacobian=False)
            F_id = identities.mean_force_nonlinear(nl, samples, forces, system.beta, weights)
            rows.add(label, "neg: missing fiber Jacobian (mean force) detected",
                     relative_error(F_id, F_nj), DETECTION_THRESHOLD, pt, negative=True)
            if "compact" in hessians:
                rows.add(label, "neg: missing fiber Jacobian (hessian) detected",
                         relative_error(hessians["compact"], H_nj), DETECTION_THRESHOLD, pt,
                         negative=True)
    return compact_by_metric


def check_quadrature_system(system: QuadratureSystem,
                            forms: tuple[str, ...] = ("compact", "split", "symmetric"),
                            negative_controls: bool = True,
                            refine_levels: tuple[int, ...] = REFINE_LEVELS) -> list[CheckResult]:
    """Identity vs exact for one quadrature system at all its points (docs/identities.md §2, §3,
    §7.5).

    Args:
        system: the system (built-in or a user's SYSTEM.py).
        forms: nonlinear Hessian forms to check.
        negative_controls: also report the wrong formulas that must be detected.
        refine_levels: node multipliers of the automatic refinement (default n, 2n, 4n;
            ``(1,)`` turns it off). Each point is self-certified
            (:mod:`hessid.verification.results`): a row is PASS only when its error *and* its
            resolution estimate (2× nodes, FD h vs h/2, edge density) are within tolerance,
            FAIL when the error exceeds 10× the estimate, else UNRESOLVED with advice.

    Returns:
        list of CheckResult, one per (map, quantity), aggregated over the points.

    Raises:
        ValueError: from :mod:`hessid.identities` / :mod:`hessid.maps` (e.g. a rank-deficient
            map Jacobian at a node).
    """
    with single_threaded():
        return _check_quadrature_system(system, forms, negative_controls, tuple(refine_levels))


def _check_quadrature_system(system, forms, negative_controls, levels) -> list[CheckResult]:
    agg = RowAggregator(system.name or "user system")
    M = system.linear_map_matrix()
    is_linear = M is not None

    def evaluate(level, R, ref):
        return _point_items(level, R, ref, M, is_linear, forms, negative_controls)

    for R in system.points:
        where = f"R={[round(float(x), 6) for x in R]}"
        for item in refine(system, R, evaluate, levels):
            agg.add(item, where)
    return agg.results()


def _point_items(system, R, ref, M, is_linear, forms, negative_controls) -> list[Item]:
    """Every row of one point at ``system.n_nodes`` (the FD reference comes from ``ref``)."""
    rows = _Rows()
    pt = None
    grad_fd, H_fd = ref["fd"]
    F_ex = -grad_fd
    H_ex = system.exact_hessian(R) if system.closed_form_hessian is not None else H_fd
    samples, weights = system.conditional_samples(R)
    forces = potential_forces(system.potential, samples)
    lin = {}
    if system.projectors:
        hessians = potential_hessians(system.potential, samples)
        lin = _linear_rows(rows, system, M, pt, samples, forces, hessians, weights, F_ex,
                           H_ex, negative_controls)
    nonlin = _nonlinear_rows(rows, system, R, pt, samples, forces, weights, F_ex, H_ex,
                             forms, negative_controls, is_linear)
    if system.closed_form_hessian is not None:
        # the claimed closed form must also agree with the FD of the quadrature A
        rows.add("exact", "claimed exact_hessian vs FD of quadrature A",
                 relative_error(H_ex, H_fd), QUADRATURE_TOL, pt)
    if system.zero_modes is not None:
        for t in system.zero_modes:
            tn = t / t.norm()
            for key, (H, term1, term2) in lin.items():
                err = float((H @ tn).abs().max()) / float(H.abs().max())
                rows.add(f"P={key}", "translation zero mode |H t|/|H|", err, QUADRATURE_TOL,
                         pt, detail=f"|Term1 t|={float((term1 @ tn).norm()):.3g}, "
                                    f"|Term2 t|={float((term2 @ tn).norm()):.3g} cancel")
            for key, H in nonlin.items():
                if H is not None:
                    err = float((H @ tn).abs().max()) / float(H.abs().max())
                    rows.add(f"G={key}", "translation zero mode |H t|/|H|", err,
                             QUADRATURE_TOL, pt)
            err = float((H_ex @ tn).abs().max()) / float(H_ex.abs().max())
            rows.add("exact", "translation zero mode of FD hessian", err, 1e-7, pt)
    return rows.items


def check_gaussian_closed_form(seed: int = 0, D: int = 6, d: int = 3) -> list[CheckResult]:
    """Gaussian H = ½(r−r₀)ᵀK(r−r₀), random SPD K and full-rank M: identity vs S⁻¹
    (docs/identities.md §7.1).

    Three projectors: minimum-norm, a random member of the family, and the K-metric
    ``P = S⁻¹ M K⁻¹`` for which Cov(Pf) = 0. Closed-form Gaussian moments, β = β(300 K).

    Returns:
        list of CheckResult (tolerance :data:`CLOSED_FORM_TOL`).
    """
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=gen, dtype=DTYPE)
    K = A @ A.T + 0.5 * torch.eye(D, dtype=DTYPE)
    M = torch.randn(d, D, generator=gen, dtype=DTYPE)
    delta = 0.5 * torch.randn(d, generator=gen, dtype=DTYPE)
    beta = 1.0 / (0.0019872041 * 300.0)
    p_min = torch.linalg.solve(M @ M.T, M)
    C = torch.randn(d, D, generator=gen, dtype=DTYPE)
    p_rand = p_min + C @ (torch.eye(D, dtype=DTYPE) - M.T @ p_min)
    Kinv = torch.linalg.inv(K)
    p_kmetric = torch.linalg.solve(M @ Kinv @ M.T, M @ Kinv)
    system = f"gaussian closed form D={D} d={d}"
    out = []
    eye = torch.eye(d, dtype=DTYPE)
    for key, P in (("min_norm", p_min), ("random_C", p_rand), ("K_metric", p_kmetric)):
        label = f"P={key}"
        g = gaussian_identity(K, M, P, beta, delta)
        res = float((P @ M.T - eye).abs().max())
        out.append(CheckResult(system, label, "projector P M^T = I (abs residual)", res,
                               CLOSED_FORM_TOL, res <= CLOSED_FORM_TOL))
        for qty, a, b in (("mean force <P f> vs -S^-1 (R - M r0)", g["mean_force"], g["exact_mean_force"]),
                          ("hessian Term1 - beta Cov(Pf) vs S^-1", g["hessian"], g["exact_hessian"])):
            e = relative_error(a, b)
            out.append(CheckResult(system, label, qty, e, CLOSED_FORM_TOL, e <= CLOSED_FORM_TOL))
        if key == "K_metric":
            e = float(g["term2"].abs().max()) / float(g["exact_hessian"].abs().max())
            out.append(CheckResult(system, label, "Cov(P f) = 0 for the K-metric projector", e,
                                   CLOSED_FORM_TOL, e <= CLOSED_FORM_TOL))
        else:
            for qty, e in linear_negative_control_errors(g["term1"], g["term2"], g["exact_hessian"]):
                out.append(CheckResult(system, label, qty, e, DETECTION_THRESHOLD,
                                       e > DETECTION_THRESHOLD, negative_control=True))
    return out


def run_builtin_checks(include_elastic: bool = True) -> list[CheckResult]:
    """Every built-in check: the quadrature systems of docs/identities.md §7.5, the Gaussian closed
    form, the elastic network of the shipped villin structure (Cα map; residue COM map with the
    min-norm and bead-sum projectors) and the variance-minimising projector Q*
    (:func:`hessid.verification.projector_checks.run_projector_checks`).

    Returns:
        list of CheckResult; the suite passes when every row passed.
    """
    results: list[CheckResult] = []
    with single_threaded():
        for system in builtin_systems():
            results.extend(check_quadrature_system(system))
        results.extend(check_gaussian_closed_form())
        if include_elastic:
            results.extend(check_structure_file(None, "ca", "min_norm"))
            results.extend(check_structure_file(None, "com", "min_norm"))
            results.extend(check_structure_file(None, "com", "bead_sum"))
        results.extend(run_projector_checks(include_elastic))
    return results
