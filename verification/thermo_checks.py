"""Temperature relations vs exact quadrature, with negative controls (docs/thermo.md §5).

For a :class:`hessid.quadrature.QuadratureSystem` with ``betas`` (mol/kcal), at every CG point
R and every β the estimators of :mod:`hessid.thermo`, evaluated on the quadrature nodes with
their Boltzmann weights at β, are compared with finite differences of the quadrature
``βA(R, β) = −ln Z(R, β)`` in β (and in R):

* (R2) ``⟨U⟩_R`` vs ``∂_β(βA)``;  (R3, n = 2) ``Var_R(U)`` vs ``−∂²_β(βA)``;
* (R6, linear maps, each projector P) ``∂_βF`` vs ``−Cov_R(Pf, U)`` and ``∇_R⟨U⟩_R`` vs
  ``−⟨Pf⟩_R + β Cov_R(Pf, U)``;
* a claimed closed form ``exact_mean_energy(R, beta)`` vs the quadrature ``⟨U⟩_R``;
* negative controls that must be detected: A in place of ⟨U⟩ (entropy dropped), Boltzmann
  weights at T instead of β, the sign of ``∂²_β(βA)``, ``k_B T² Var`` (T for β), the sign of
  the covariance in (R6), T for β in ``∂_TF`` and ``∇⟨U⟩``, and ``exact_mean_energy(R, T)``.

**PASS, FAIL or UNRESOLVED** (the mechanism of :mod:`hessid.verification.results` that every
quadrature row uses). Every row carries a :class:`~hessid.verification.results.Resolution`:
the change of the quadrature answer when the nodes per fiber coordinate are doubled plus the
Boltzmann mass on the outermost nodes of non-periodic coordinates (``nodes``), the Richardson
estimate ``|D(h) − D(2h)|/63`` of the 6th-order finite difference (``fd``), both on the row's
error scale, and the Boltzmann density at the ``fiber_bounds`` edges over its peak (``edge``).
:func:`~hessid.verification.results.judge` makes a failing row FAIL only when its error exceeds
ten times the estimate, else UNRESOLVED (refine ``n_nodes``, ``fiber_bounds`` or ``fd_step``);
a negative control is detected only when its error exceeds both
:data:`~hessid.verification.results.DETECTION_THRESHOLD` and ten times the estimate. While a
row is UNRESOLVED the whole system is re-run at 2× and then 4× the nodes.

Error scales (dimensionless errors): ⟨U⟩ rows ``max(|⟨U⟩|, sd_R(U))``; Var rows ``Var_R(U)``;
``∂_βF`` rows ``max(|Cov(Pf, U)|, max_a sd(Pf_a)·sd(U), |F|/β)`` (Cauchy–Schwarz bound: the
size the covariance could have, nonzero on T1 where the covariance vanishes); ``∇⟨U⟩`` rows
``max(|∇⟨U⟩|, |F|, β·max_a sd(Pf_a)·sd(U))``.

FD steps: ``h_β = 0.01 β`` (truncation ≈ 5–9·(h_β/β)⁶ ≈ 1e-11 relative for a harmonic fiber;
rounding ``≈ 6ε|βA|/h_β²`` ≈ 1e-11) and the system's ``fd_step`` in R.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

# module attribute access (thermo.f), so the verifier checks the library's current functions
from hessid import thermo
from hessid.quadrature import QuadratureSystem, potential_forces
from hessid.thermo_toys import thermo_builtin_systems
from hessid.units import KB_KCAL_PER_MOL_K
from hessid.verification.checks import check_quadrature_system, single_threaded
from hessid.verification.results import (
    DETECTION_THRESHOLD,
    DTYPE,
    QUADRATURE_TOL,
    REFINE_LEVELS,
    UNRESOLVED,
    CheckResult,
    Item,
    Resolution,
    RowAggregator,
    with_nodes,
)

__all__ = ["check_thermo_system", "run_thermo_builtin_checks", "BETA_REL_STEP"]

#: finite-difference step in β relative to β
BETA_REL_STEP = 1e-2
#: a wrong formula is only reported where it differs structurally from the right one
_STRUCTURAL = 1e-9
_FD1 = ((1, 3.0 / 4.0), (2, -3.0 / 20.0), (3, 1.0 / 60.0))
_FD2 = (-49.0 / 18.0, 3.0 / 2.0, -3.0 / 20.0, 1.0 / 90.0)
#: stencil offsets: 1, 2, 3 (step h) and 2, 4, 6 (step 2h, Richardson estimate)
_OFFSETS = (1, 2, 3, 4, 6)


def _fd1(v, c: int = 1):
    """6th-order first derivative from v[k] = f(x + k·h) (unit step), step multiple c."""
    return sum(w * (v[k * c] - v[-k * c]) for k, w in _FD1) / c


def _fd2(v, c: int = 1):
    return (_FD2[0] * v[0] + sum(w * (v[k * c] + v[-k * c]) for k, w in zip((1, 2, 3), _FD2[1:], strict=True))) / c**2


class _Rows:
    """Per-(map, quantity) items over (R, β) pairs with their resolution estimates."""

    def __init__(self, system: QuadratureSystem) -> None:
        self.agg = RowAggregator(system.name or "user system")
        self.n_nodes, self.fd_step = system.n_nodes, system.fd_step
        self.edge = 0.0  # density ratio at the fiber_bounds edges of the current (R, β)

    def add(self, map_: str, quantity: str, err: float, res, where: str, negative: bool = False,
            tol: float = QUADRATURE_TOL) -> None:
        nodes, fd = (res, 0.0) if isinstance(res, float) else res  # (2× nodes + edge mass, FD Richardson)
        r = Resolution(nodes=float(nodes), fd=float(fd), edge=self.edge, n_nodes=self.n_nodes,
                       fd_step=self.fd_step)
        self.agg.add(Item(map_, quantity, float(err), tol, negative, res=r), where)

    def results(self) -> list[CheckResult]:
        return self.agg.results()


def _nonperiodic_edge_mask(system: QuadratureSystem, n_nodes: int | None = None) -> torch.Tensor:
    """(S,) True for nodes on the first/last node of a non-periodic fiber coordinate."""
    s, _ = system.nodes(n_nodes)
    mask = torch.zeros(s.shape[0], dtype=torch.bool)
    for k, (_, _, periodic) in enumerate(system.bounds):
        if not periodic:
            mask |= (s[:, k] == s[:, k].min()) | (s[:, k] == s[:, k].max())
    return mask


def _mean_energy_claims(system: QuadratureSystem, Rall: torch.Tensor, beta: float) -> torch.Tensor:
    out = torch.as_tensor(system.closed_form_mean_energy(Rall, beta), dtype=DTYPE)
    if out.numel() != Rall.shape[0]:
        raise ValueError(f"{system.name or 'system'}: exact_mean_energy(R, beta) with R of shape "
                         f"{tuple(Rall.shape)} must return ({Rall.shape[0]},), got {tuple(out.shape)}")
    return out.reshape(-1)


def check_thermo_system(system: QuadratureSystem, betas=None, negative_controls: bool = True) -> list[CheckResult]:
    """The temperature relations of docs/thermo.md (R2, R3 n = 2, R6, ``exact_mean_energy``)
    against the quadrature, at every point of ``system`` and every β.

    Args:
        system: a QuadratureSystem (built-in or a user's SYSTEM.py).
        betas: inverse temperatures, mol/kcal (default ``system.betas``).
        negative_controls: also report the wrong formulas that must be detected.

    Returns:
        list of CheckResult, one per (map, quantity), aggregated over points and β; empty
        when there is no β.

    Raises:
        ValueError: a β is not positive, or ``exact_mean_energy`` returns the wrong shape.
    """
    betas = list(system.betas if betas is None else betas)
    with single_threaded():
        for mult in REFINE_LEVELS:
            level = system if mult == 1 else with_nodes(system, mult * system.n_nodes)
            out = _check(level, betas, negative_controls)
            if all(r.status != UNRESOLVED for r in out):
                break
    if mult != 1:
        out = [replace(r, detail=f"{r.detail}; refined from n_nodes={system.n_nodes}") for r in out]
    return out


def _check(system: QuadratureSystem, betas: list[float], negative_controls: bool) -> list[CheckResult]:
    rows = _Rows(system)
    if not betas:
        return []
    if any(not b > 0 for b in betas):
        raise ValueError(f"betas must be positive (mol/kcal), got {betas}")
    linear = bool(system.projectors) and system.linear_map_matrix() is not None
    n_fine = 2 * system.n_nodes
    edge = _nonperiodic_edge_mask(system)
    log_wq = torch.log(system.nodes()[1])
    Rall = torch.stack(system.points)
    claims = {}
    if system.closed_form_mean_energy is not None:
        for b in betas:
            claims[b] = _mean_energy_claims(system, Rall, b)
            if negative_controls:
                claims[("T", b)] = _mean_energy_claims(system, Rall, 1.0 / (KB_KCAL_PER_MOL_K * b))
    h = system.fd_step
    for ip, R in enumerate(system.points):
        pt = [round(float(x), 6) for x in R]
        # R stencil (linear maps only): index 0 = R; (a, k) → 1 + a·2|O| + ...
        index = {(0, 0): 0}
        pts = [R]
        if linear:
            for a in range(system.d):
                for k in _OFFSETS:
                    for sgn in (1, -1):
                        index[(a, sgn * k)] = len(pts)
                        pts.append(R + sgn * k * h * torch.eye(system.d, dtype=DTYPE)[a])
        r, lm, E = system.fiber_log_measure(torch.stack(pts))
        _, lm_c, E_c = system.fiber_log_measure(R[None], n_nodes=n_fine)  # *_c: at 2× nodes
        forces = forces_c = None
        if linear:
            forces = potential_forces(system.potential, r[0])
            r_c, _, _ = system.fiber_log_measure(R[None], n_nodes=n_fine, jacobian=False)
            forces_c = potential_forces(system.potential, r_c[0])
        for b in betas:
            T = 1.0 / (KB_KCAL_PER_MOL_K * b)
            where = f"R={pt}, T={T:.4g} K"
            hb = BETA_REL_STEP * b
            bs = {j: b + j * hb for j in (0, *_OFFSETS, *(-k for k in _OFFSETS))}
            g = {j: -torch.logsumexp(lm[0] - bj * E[0], dim=0) for j, bj in bs.items()}  # βA
            w = torch.softmax(lm[0] - b * E[0], dim=0)
            w_c = torch.softmax(lm_c[0] - b * E_c[0], dim=0)
            edge_mass = float(w[edge].sum()) if bool(edge.any()) else 0.0
            log_density = lm[0] - log_wq - b * E[0]
            rows.edge = float(torch.exp(log_density[edge].max() - log_density.max())) if bool(edge.any()) else 0.0
            E0 = E[0]
            mu, var = thermo.mean_energy(E0, w), thermo.energy_variance(E0, w)
            mu_c, var_c = thermo.mean_energy(E_c[0], w_c), thermo.energy_variance(E_c[0], w_c)
            scale_u = max(abs(float(mu)), math.sqrt(max(float(var), 0.0)), 1e-300)
            d1, d1_2 = _fd1(g) / hb, _fd1(g, 2) / hb
            d2, d2_2 = _fd2(g) / hb**2, _fd2(g, 2) / hb**2
            res_u = (abs(float(mu - mu_c)) / scale_u + edge_mass, abs(float(d1 - d1_2)) / 63 / scale_u)
            rows.add("beta", "R2 <U>_R vs d_beta(beta A) (FD of quadrature)", abs(float(mu - d1)) / scale_u,
                     res_u, where)
            scale_v = max(float(var), 1e-300)
            res_v = (abs(float(var - var_c)) / scale_v + edge_mass, abs(float(d2 - d2_2)) / 63 / scale_v)
            rows.add("beta", "R3 Var_R(U) vs -d2_beta(beta A)", abs(float(var + d2)) / scale_v, res_v, where)
            fluctuates = float(var) > _STRUCTURAL * scale_u**2
            if negative_controls and fluctuates:
                A = g[0] / b
                if abs(float(A - mu)) > _STRUCTURAL * scale_u:
                    rows.add("beta", "neg: A in place of <U>_R (entropy dropped) detected",
                             abs(float(A - d1)) / scale_u, res_u, where, negative=True, tol=DETECTION_THRESHOLD)
                mu_T = thermo.mean_energy(E0, torch.softmax(lm[0] - T * E0, dim=0))
                rows.add("beta", "neg: <U>_R weighted at T for beta detected", abs(float(mu_T - d1)) / scale_u,
                         res_u, where, negative=True, tol=DETECTION_THRESHOLD)
                rows.add("beta", "neg: +d2_beta(beta A) (sign) detected", abs(float(var - d2)) / scale_v,
                         res_v, where, negative=True, tol=DETECTION_THRESHOLD)
                c_true = KB_KCAL_PER_MOL_K * b * b * float(-d2)
                c_T = float(thermo.conditional_heat_capacity(E0, T, w))
                rows.add("beta", "neg: C_R = k_B T^2 Var(U) (T for beta) detected", abs(c_T - c_true) / c_true,
                         res_v, where, negative=True, tol=DETECTION_THRESHOLD)
            if claims:
                claim, claim_T = claims[b][ip], claims.get(("T", b))
                res_q = abs(float(mu - mu_c)) / scale_u + edge_mass
                rows.add("exact", "claimed exact_mean_energy vs quadrature <U>_R",
                         abs(float(claim - mu)) / scale_u, res_q, where)
                if claim_T is not None and fluctuates:
                    rows.add("exact", "neg: exact_mean_energy(R, T) (T for beta) detected",
                             abs(float(claim_T[ip] - mu)) / scale_u, res_q, where, negative=True,
                             tol=DETECTION_THRESHOLD)
            if linear:
                _r6_rows(rows, system, b, T, bs, lm, E, index, forces, forces_c, w, w_c, E_c, h, hb,
                         edge_mass, where, negative_controls)
    return rows.results()


def _r6_rows(rows, system, b, T, bs, lm, E, index, forces, forces_c, w, w_c, E_c, h, hb, edge_mass, where,
             negative_controls) -> None:
    """(R6) at one (R, β): ∂_βF and ∇⟨U⟩ for each projector, with negative controls."""
    d = system.d
    # F(β') = −∂_R(βA)/β' at every β' of the β stencil, from R differences at fixed β'
    ks = [sgn * k for k in _OFFSETS for sgn in (1, -1)]
    lz = {j: -torch.logsumexp(lm - bj * E, dim=1) for j, bj in bs.items()}  # βA at the R stencil
    F = {}
    for c in (1, 2):
        for j in bs:
            if j % c == 0:
                F[(c, j)] = torch.stack([
                    -_fd1({0: 0.0} | {k: lz[j][index[(a, k)]] - lz[j][0] for k in ks}, c) / h / bs[j]
                    for a in range(d)])
    dbF = _fd1({j: F[(1, j)] for j in (0, 1, -1, 2, -2, 3, -3)}) / hb
    dbF_2 = _fd1({j: F[(2, j)] for j in (0, 2, -2, 4, -4, 6, -6)}, 2) / hb
    F0 = F[(1, 0)]
    # ∇_R⟨U⟩ at β from ⟨U⟩ at the R-stencil points
    mus = torch.einsum("bs,bs->b", torch.softmax(lm - b * E, dim=1), E)
    grad, grad_2 = [], []
    for a in range(d):
        v = {0: mus[0]} | {k: mus[index[(a, k)]] for k in ks}
        grad.append(_fd1(v) / h)
        grad_2.append(_fd1(v, 2) / h)
    grad, grad_2 = torch.stack(grad), torch.stack(grad_2)
    sd_u = math.sqrt(max(float(thermo.energy_variance(E[0], w)), 0.0))
    for key, P in system.projectors.items():
        label = f"P={key}"
        cov = thermo.covariance_projected_force_energy(forces, E[0], P, w)
        cov_c = thermo.covariance_projected_force_energy(forces_c, E_c[0], P, w_c)
        Pf = forces @ P.T
        sd_pf = float(torch.sqrt(torch.clamp(torch.einsum("s,sa->a", w, (Pf - w @ Pf) ** 2), min=0)).max())
        cs = sd_pf * sd_u
        scale = max(float(cov.abs().max()), cs, float(F0.abs().max()) / b, 1e-300)
        res = (float((cov - cov_c).abs().max()) / scale + edge_mass, float((dbF - dbF_2).abs().max()) / 63 / scale)
        dbF_id = thermo.mean_force_beta_derivative(forces, E[0], P, w)
        rows.add(label, "R6 d_beta F vs -Cov(Pf, U) (FD of quadrature)", float((dbF_id - dbF).abs().max()) / scale,
                 res, where)
        scale_g = max(float(grad.abs().max()), float(F0.abs().max()), b * cs, 1e-300)
        res_g = (b * float((cov - cov_c).abs().max()) / scale_g + edge_mass,
                 float((grad - grad_2).abs().max()) / 63 / scale_g)
        grad_id = thermo.mean_energy_gradient(forces, E[0], P, b, w)
        rows.add(label, "R6 grad <U>_R vs -<Pf> + beta Cov(Pf, U)", float((grad_id - grad).abs().max()) / scale_g,
                 res_g, where)
        if not negative_controls or float(cov.abs().max()) <= _STRUCTURAL * scale:
            continue  # Cov(Pf, U) = 0 (e.g. T1): a wrong sign or T for β changes nothing
        rows.add(label, "neg: +Cov(Pf, U) (sign) detected", float((-dbF_id - dbF).abs().max()) / scale, res, where,
                 negative=True, tol=DETECTION_THRESHOLD)
        dTF = -KB_KCAL_PER_MOL_K * b * b * dbF  # ∂_T F = ∂_β F · dβ/dT
        dTF_T = thermo.entropy_gradient(forces, E[0], P, T, w)
        rows.add(label, "neg: d_T F = k_B T^2 Cov (T for beta) detected",
                 float((dTF_T - dTF).abs().max()) / max(float(dTF.abs().max()), KB_KCAL_PER_MOL_K * b * b * scale),
                 res, where, negative=True, tol=DETECTION_THRESHOLD)
        grad_T = thermo.mean_energy_gradient(forces, E[0], P, T, w)
        rows.add(label, "neg: grad <U>_R with T for beta detected", float((grad_T - grad).abs().max()) / scale_g,
                 res_g, where, negative=True, tol=DETECTION_THRESHOLD)


def run_thermo_builtin_checks() -> list[CheckResult]:
    """T1–T3 (:func:`hessid.thermo_toys.thermo_builtin_systems`) as ``hessid verify --all`` runs
    them: the identity suite at the system's β plus :func:`check_thermo_system` at 200, 300
    and 400 K.

    Returns:
        list of CheckResult.
    """
    results: list[CheckResult] = []
    with single_threaded():
        for system in thermo_builtin_systems():
            results.extend(check_quadrature_system(system))
            results.extend(check_thermo_system(system))
    return results
