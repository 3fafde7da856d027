"""Estimators of CG mean forces, CG Hessians and HVP targets (docs/identities.md §2, §3, §5).

Conditional averages ``⟨·⟩_R`` are estimated from samples on the fiber ``ξ(r) = R`` with
normalised weights (quadrature weights, importance weights, or uniform ``1/S`` for i.i.d.
samples). Weighted covariances use the plug-in (population) normalisation
``Σ_s w_s (x_s − x̄)(y_s − ȳ)ᵀ``: exact for quadrature, and biased by a factor ``1 − Σ w²``
(= (S−1)/S for uniform weights) for Monte Carlo samples.

Units: coordinates Å, energies kcal/mol, forces kcal/mol/Å, Hessians kcal/mol/Å², β mol/kcal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessid.maps import NonlinearMap, grad_rows

__all__ = [
    "weighted_mean",
    "weighted_covariance",
    "mean_force_linear",
    "cg_hessian_linear",
    "local_mean_force",
    "mean_force_nonlinear",
    "cg_hessian_nonlinear",
    "hvp_target_linear",
    "hvp_target_nonlinear",
    "term1_linear_exact",
    "NONLINEAR_HESSIAN_FORMS",
    "NONLINEAR_TARGET_FORMS",
]

NONLINEAR_HESSIAN_FORMS = ("compact", "split", "symmetric")
NONLINEAR_TARGET_FORMS = ("vjp", "jvp")


# ====================================================================== validation
def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"beta must be a positive scalar (mol/kcal), got {beta!r}") from None
    if not b > 0:
        raise ValueError(f"beta must be positive (mol/kcal), got {b!r}")
    return b


def _check_weights(weights, n_samples: int, like: torch.Tensor, name: str = "weights") -> torch.Tensor:
    """Normalised weights (S,) in the dtype/device of ``like``; uniform 1/S if None."""
    if n_samples < 1:
        raise ValueError("at least one sample is needed")
    if weights is None:
        return torch.full((n_samples,), 1.0 / n_samples, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights)
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{name} must have shape ({n_samples},), got {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains non-finite entries")
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative; smallest is {float(w.min()):.3e}")
    total = float(w.double().sum())
    if abs(total - 1.0) > 1e-12 * n_samples:
        raise ValueError(
            f"{name} must be normalised: sum is {total!r} (|sum − 1| = {abs(total - 1.0):.3e} "
            f"exceeds 1e-12·S = {1e-12 * n_samples:.1e})"
        )
    return w.to(dtype=like.dtype, device=like.device)


def _as_projector_matrix(projector) -> torch.Tensor:
    """A (d, D) projector tensor; a LinearMap gives its ``projector_matrix()``."""
    if hasattr(projector, "projector_matrix"):
        return projector.projector_matrix()
    P = torch.as_tensor(projector)
    if P.ndim != 2:
        raise ValueError(f"projector must be a (d, D) matrix, got shape {tuple(P.shape)}")
    return P


# ====================================================================== averages
def weighted_mean(x: torch.Tensor, weights=None) -> torch.Tensor:
    """Weighted average ``⟨x⟩ = Σ_s w_s x_s`` over the leading sample axis.

    Args:
        x: (S, ...), any unit.
        weights: normalised non-negative weights (S,); uniform if None.

    Returns:
        (...), unit of x.

    Raises:
        ValueError: x has no sample axis, or weights are mis-shaped, negative or not
            normalised (|Σw − 1| > 1e-12·S).
    """
    if x.ndim < 1:
        raise ValueError("x must have a leading sample axis (S, ...)")
    w = _check_weights(weights, x.shape[0], x)
    return torch.tensordot(w, x, dims=1)  # (...)


def weighted_covariance(x: torch.Tensor, y: torch.Tensor | None = None, weights=None) -> torch.Tensor:
    """Weighted (plug-in) covariance ``Cov(x, y) = Σ_s w_s (x_s − x̄)(y_s − ȳ)ᵀ``
    (docs/identities.md, eq. (0.1)).

    Args:
        x: (S, a).
        y: (S, b); x itself if None.
        weights: normalised weights (S,); uniform if None.

    Returns:
        (a, b), unit of x times unit of y.

    Raises:
        ValueError: x or y is not 2-D, their sample counts differ, or the weights are invalid.
    """
    if y is None:
        y = x
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x and y must be (S, a) and (S, b), got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different sample counts: {x.shape[0]} vs {y.shape[0]}")
    w = _check_weights(weights, x.shape[0], x)
    xc = x - torch.tensordot(w, x, dims=1)  # (S, a)
    yc = y - torch.tensordot(w, y, dims=1)  # (S, b)
    return torch.einsum("s,sa,sb->ab", w, xc, yc)  # (a, b)


# ====================================================================== linear maps
def _check_linear_inputs(forces: torch.Tensor, P: torch.Tensor) -> None:
    if forces.ndim != 2:
        raise ValueError(f"forces must be (S, D) flat AA forces, got shape {tuple(forces.shape)}")
    if P.shape[1] != forces.shape[1]:
        raise ValueError(
            f"projector (d, D) = {tuple(P.shape)} does not match forces (S, D) = {tuple(forces.shape)}"
        )


def mean_force_linear(forces: torch.Tensor, projector, weights=None) -> torch.Tensor:
    """CG mean force for a linear map, ``F(R) = ⟨P f⟩_R`` (docs/identities.md, eq. (2.2)).

    Args:
        forces: AA forces f = −∇H of the fiber samples, (S, D), kcal/mol/Å (flat ``3i + α``).
        projector: P with ``P Mᵀ = I``, (d, D) dimensionless, or a :class:`~hessid.maps.LinearMap`.
        weights: normalised sample weights (S,); uniform if None.

    Returns:
        (d,), kcal/mol/Å.

    Raises:
        ValueError: shapes disagree, or weights are invalid.
    """
    P = _as_projector_matrix(projector).to(dtype=forces.dtype, device=forces.device)
    _check_linear_inputs(forces, P)
    return P @ weighted_mean(forces, weights)  # (d,)


def cg_hessian_linear(
    hessians: torch.Tensor,
    forces: torch.Tensor,
    projector,
    beta: float,
    weights=None,
    return_terms: bool = False,
):
    """CG Hessian of the free energy for a linear map (docs/identities.md, eq. (2.3)).

    Hess A(R) = ⟨P ∇²H Pᵀ⟩_R − β Cov_R(P f)      (Term 1 + Term 2)

    Args:
        hessians: AA Hessians of the fiber samples, (S, D, D), kcal/mol/Å².
        forces: AA forces f = −∇H of the same samples, (S, D), kcal/mol/Å.
        projector: P with ``P Mᵀ = I``, (d, D), or a :class:`~hessid.maps.LinearMap`.
        beta: 1/(k_B T), mol/kcal.
        weights: normalised sample weights (S,); uniform if None.
        return_terms: also return ``(term1, term2)`` with ``term2 = −β Cov(P f)``.

    Returns:
        (d, d) tensor, kcal/mol/Å², symmetric up to sampling error; with ``return_terms`` the
        tuple ``(total, (term1, term2))``.

    Raises:
        ValueError: shapes disagree, beta is not positive, or weights are invalid.
    """
    b = _check_beta(beta)
    P = _as_projector_matrix(projector).to(dtype=forces.dtype, device=forces.device)
    _check_linear_inputs(forces, P)
    S, D = forces.shape
    if hessians.shape != (S, D, D):
        raise ValueError(f"hessians must have shape ({S}, {D}, {D}), got {tuple(hessians.shape)}")
    mean_hessian = weighted_mean(hessians, weights)  # (D, D)
    term1 = P @ mean_hessian @ P.T  # (d, d)
    projected = forces @ P.T  # (S, d)
    term2 = -b * weighted_covariance(projected, weights=weights)  # (d, d)
    total = term1 + term2
    if return_terms:
        return total, (term1, term2)
    return total


def term1_linear_exact(hessians: torch.Tensor, projector, probes: torch.Tensor) -> torch.Tensor:
    """Per-frame Term 1 of the HVP target, ``P ∇²H Pᵀ v`` (docs/identities.md, eq. (5.2)), exactly
    from Hessians.

    Reference for the finite-difference Term 1 of the data pipeline (tests).

    Args:
        hessians: AA Hessians, (B, D, D), kcal/mol/Å².
        projector: P, (d, D), or a :class:`~hessid.maps.LinearMap`.
        probes: CG probe vectors, (B, k, d).

    Returns:
        (B, k, d), kcal/mol/Å² × unit of v.

    Raises:
        ValueError: shapes disagree.
    """
    P = _as_projector_matrix(projector).to(dtype=hessians.dtype, device=hessians.device)
    d, D = P.shape
    if hessians.ndim != 3 or hessians.shape[1:] != (D, D):
        raise ValueError(f"hessians must have shape (B, {D}, {D}), got {tuple(hessians.shape)}")
    if probes.ndim != 3 or probes.shape[0] != hessians.shape[0] or probes.shape[2] != d:
        raise ValueError(
            f"probes must have shape ({hessians.shape[0]}, k, {d}), got {tuple(probes.shape)}"
        )
    u = probes @ P  # (B, k, D)   Pᵀ v
    hu = torch.einsum("bij,bkj->bki", hessians, u)  # (B, k, D)
    return hu @ P.T  # (B, k, d)


def _check_cov_weight(cov_weight) -> float:
    g = float(cov_weight)
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"cov_weight γ must lie in [0, 1], got {cov_weight!r}")
    return g


def hvp_target_linear(
    term1: torch.Tensor,
    force_residual: torch.Tensor,
    probes: torch.Tensor,
    beta: float,
    cov_weight: float = 1.0,
) -> torch.Tensor:
    """Per-frame HVP target for a linear map (docs/identities.md, eq. (5.2)).

    h(v) = Term1(v) − γ β dF (dF · v),   dF = P f(r_t) − F_θ(R_t) (detached here)

    With γ = 1 and an exact model force, ``E[h | R] = Hess A(R) v``; otherwise the target is
    biased by ``−β b (b·v)``, ``b = F − F_θ`` (docs/identities.md, eq. (5.4)).

    Args:
        term1: ``P ∇²H Pᵀ v`` per frame and probe, (B, k, d) (or (B, k, n, 3)), kcal/mol/Å².
        force_residual: dF, (B, d) (or (B, n, 3)), kcal/mol/Å.
        probes: v, same shape as term1, dimensionless (or Å: the target scales with v).
        beta: 1/(k_B T), mol/kcal.
        cov_weight: γ ∈ [0, 1]; 0 gives the "AA only" target, 1 the full one.

    Returns:
        Same shape as term1, kcal/mol/Å² × unit of v.

    Raises:
        ValueError: shapes disagree, beta is not positive, or γ is outside [0, 1].
    """
    b = _check_beta(beta)
    g = _check_cov_weight(cov_weight)
    if term1.shape != probes.shape or term1.ndim < 3:
        raise ValueError(
            f"term1 and probes must have the same shape (B, k, d...), got {tuple(term1.shape)} "
            f"and {tuple(probes.shape)}"
        )
    B, k = term1.shape[:2]
    if force_residual.shape != (B,) + tuple(term1.shape[2:]):
        raise ValueError(
            f"force_residual must have shape {(B,) + tuple(term1.shape[2:])}, got "
            f"{tuple(force_residual.shape)}"
        )
    dF = force_residual.detach().reshape(B, 1, -1)  # (B, 1, d)
    v = probes.reshape(B, k, -1)  # (B, k, d)
    proj = (v * dF).sum(-1, keepdim=True)  # (B, k, 1)   dF · v
    return term1 - (g * b * proj * dF).reshape(term1.shape)  # (B, k, d...)


# ====================================================================== nonlinear maps
def local_mean_force(G: torch.Tensor, div_G: torch.Tensor, forces: torch.Tensor, beta: float) -> torch.Tensor:
    """Local mean force ``L = G f + β⁻¹ div G`` (docs/identities.md, eq. (3.2)).

    Args:
        G: projector field, (S, d, D), with ``G Jᵀ = I``.
        div_G: row divergence ``Σ_i ∂_i G_ai``, (S, d), per Å.
        forces: AA forces f = −∇H, (S, D), kcal/mol/Å.
        beta: 1/(k_B T), mol/kcal.

    Returns:
        (S, d), kcal/mol/Å (for a positional ξ).

    Raises:
        ValueError: shapes disagree or beta is not positive.
    """
    b = _check_beta(beta)
    if G.ndim != 3 or forces.shape != (G.shape[0], G.shape[2]) or div_G.shape != G.shape[:2]:
        raise ValueError(
            f"expected G (S, d, D), div_G (S, d), forces (S, D); got {tuple(G.shape)}, "
            f"{tuple(div_G.shape)}, {tuple(forces.shape)}"
        )
    return torch.einsum("sai,si->sa", G, forces) + div_G / b  # (S, d)


def mean_force_nonlinear(cg_map: NonlinearMap, samples: torch.Tensor, forces: torch.Tensor, beta: float, weights=None) -> torch.Tensor:
    """CG mean force for a nonlinear map, ``F(R) = ⟨G f + β⁻¹ div G⟩_R``
    (docs/identities.md, eq. (3.2)).

    Args:
        cg_map: the :class:`~hessid.maps.NonlinearMap` ξ.
        samples: fiber samples (ξ(r) = R), flat (S, D), Å.
        forces: AA forces at the samples, (S, D), kcal/mol/Å.
        beta: 1/(k_B T), mol/kcal.
        weights: normalised weights (S,) of the fiber measure ``e^{−βH} δ(ξ − R) dr``
            (including its Jacobian, e.g. ρ dθ for a radius); uniform if None.

    Returns:
        (d,), kcal/mol/Å.

    Raises:
        ValueError: shapes disagree, beta is not positive, weights are invalid, or J is
            rank-deficient at a sample.
    """
    b = _check_beta(beta)
    if samples.ndim != 2 or forces.shape != samples.shape:
        raise ValueError(
            f"samples and forces must both be (S, D), got {tuple(samples.shape)}, {tuple(forces.shape)}"
        )
    _check_weights(weights, samples.shape[0], samples)
    L = cg_map.local_mean_force(samples.detach(), forces.detach(), b)  # (S, d)
    return weighted_mean(L, weights)


class _FiberQuantities:
    """Per-sample AA and map quantities with their autograd graph (internal)."""

    def __init__(self, cg_map: NonlinearMap, potential: Callable, samples: torch.Tensor, beta: float):
        if samples.ndim != 2:
            raise ValueError(f"samples must be (S, D) flat coordinates, got {tuple(samples.shape)}")
        self.r = samples.detach().clone().requires_grad_(True)  # (S, D)
        self.beta = beta
        energy = potential(self.r)
        if energy.shape != (samples.shape[0],):
            raise ValueError(f"potential must return (S,) energies, got {tuple(energy.shape)}")
        (grad,) = torch.autograd.grad(energy.sum(), self.r, create_graph=True)
        self.f = -grad  # (S, D)
        self.G, self.g = cg_map.projector_and_divergence(self.r, create_graph=True)  # (S, d, D), (S, d)
        self.L = torch.einsum("sai,si->sa", self.G, self.f) + self.g / beta  # (S, d)
        self.cg_map = cg_map

    def grad_rows(self, y: torch.Tensor) -> torch.Tensor:
        """(S, m) → (S, m, D) per-frame gradients, graph kept."""
        return grad_rows(y, self.r, create_graph=True)

    def jacobian_of_L(self) -> torch.Tensor:
        """∂L/∂r as [s, b, i] = ∂_i L_b, (S, d, D)."""
        return self.grad_rows(self.L)

    def aa_hessian(self) -> torch.Tensor:
        """∇²H, (S, D, D)."""
        return self.grad_rows(-self.f)

    def projector_gradient(self) -> torch.Tensor:
        """[s, a, i, j] = ∂_j G_ai, (S, d, D, D)."""
        S, d, D = self.G.shape
        return self.grad_rows(self.G.reshape(S, d * D)).reshape(S, d, D, D)  # (S, d, D, D)


def cg_hessian_nonlinear(
    cg_map: NonlinearMap,
    potential: Callable[[torch.Tensor], torch.Tensor],
    samples: torch.Tensor,
    beta: float,
    weights=None,
    form: str = "compact",
    return_terms: bool = False,
):
    """CG Hessian of the free energy for a nonlinear map (docs/identities.md, eqs. (3.4), (3.6),
    (3.7)), by autograd.

    ``compact``:   Hess A = −⟨G (∂L/∂r)ᵀ⟩ − β Cov(L)
    ``split``:     ⟨G ∇²H Gᵀ⟩ − β Cov(Gf) − [Cov(Gf, g) + Cov(g, Gf)] − β⁻¹ Cov(g)
                   − ⟨G_ai (∂_i G_bj) f_j⟩ − β⁻¹ ⟨G_ai ∂_i g_b⟩,           g = div G
    ``symmetric``: ⟨G ∇²H Gᵀ⟩ − β Cov(L) + ⟨Γ^c L_c⟩ + β⁻¹ ⟨G_ci ∂_i Γ^c⟩
                   + β⁻¹ ⟨(∂_j G_ai)(∂_i G_bj)⟩,       Γ^c_ab = G_ai G_bj ∂_i∂_j ξ_c

    All three agree for exact conditional averages; per sample they differ (the compact and
    split integrands are not symmetric). Use float64.

    Args:
        cg_map: the :class:`~hessid.maps.NonlinearMap` ξ.
        potential: H, a torch callable (S, D) Å → (S,) kcal/mol, frames independent.
        samples: fiber samples (ξ(r) = R), (S, D), Å.
        beta: 1/(k_B T), mol/kcal.
        weights: normalised weights (S,) of the fiber measure (with its Jacobian); uniform if None.
        form: ``"compact"``, ``"split"`` or ``"symmetric"``.
        return_terms: with ``form="split"``, also return a dict of the pieces, which sum to
            the total: ``"linear_form"`` (⟨G∇²HGᵀ⟩ − β Cov(Gf), the linear-map formula),
            ``"divergence_covariance"`` (−[Cov(Gf, g) + Cov(g, Gf)] − β⁻¹ Cov(g)),
            ``"curvature_force"`` (−⟨G_ai (∂_i G_bj) f_j⟩) and ``"curvature_divergence"``
            (−β⁻¹ ⟨G_ai ∂_i g_b⟩).

    Returns:
        (d, d), kcal/mol/Å² (positional ξ), detached; with ``return_terms`` the tuple
        ``(total, terms)``.

    Raises:
        ValueError: unknown form, return_terms without form="split", shapes disagree, beta
            not positive, weights invalid, or J rank-deficient at a sample.
    """
    if form not in NONLINEAR_HESSIAN_FORMS:
        raise ValueError(f"form must be one of {NONLINEAR_HESSIAN_FORMS}, got {form!r}")
    if return_terms and form != "split":
        raise ValueError("return_terms is only available with form='split'")
    b = _check_beta(beta)
    w = _check_weights(weights, samples.shape[0], samples)
    with torch.enable_grad():
        q = _FiberQuantities(cg_map, potential, samples, b)
        G, f, g, L = q.G, q.f, q.g, q.L
        cov_L = weighted_covariance(L.detach(), weights=w)  # (d, d)
        if form == "compact":
            dL = q.jacobian_of_L()  # (S, d, D)
            per_sample = -torch.einsum("sai,sbi->sab", G, dL)  # (S, d, d)
            return (weighted_mean(per_sample, w) - b * cov_L).detach()

        hess = q.aa_hessian()  # (S, D, D)
        projected_hessian = weighted_mean(torch.einsum("sai,sij,sbj->sab", G, hess, G), w)  # (d, d)
        dG = q.projector_gradient()  # (S, d, D, D)  [s, a, i, j] = ∂_j G_ai
        if form == "split":
            Gf = torch.einsum("sai,si->sa", G, f).detach()  # (S, d)
            gd = g.detach()
            linear_form = projected_hessian - b * weighted_covariance(Gf, weights=w)
            cross = weighted_covariance(Gf, gd, weights=w)
            div_cov = -(cross + cross.T) - weighted_covariance(gd, weights=w) / b
            dg = q.grad_rows(g)  # (S, d, D)  [s, b, i] = ∂_i g_b
            curvature_force = -weighted_mean(torch.einsum("sai,sbji,sj->sab", G, dG, f), w)  # (d, d)
            curvature_divergence = -weighted_mean(torch.einsum("sai,sbi->sab", G, dg), w) / b  # (d, d)
            total = (linear_form + div_cov + curvature_force + curvature_divergence).detach()
            if return_terms:
                terms = {
                    "linear_form": linear_form.detach(),
                    "divergence_covariance": div_cov.detach(),
                    "curvature_force": curvature_force.detach(),
                    "curvature_divergence": curvature_divergence.detach(),
                }
                return total, terms
            return total

        # symmetric form
        J = cg_map.jacobian(q.r, create_graph=True)  # (S, d, D)
        S_, d, D = J.shape
        xi_hess = q.grad_rows(J.reshape(S_, d * D)).reshape(S_, d, D, D)  # (S, c, i, j) ∂_j∂_i ξ_c
        gamma = torch.einsum("sai,sbj,scij->scab", G, G, xi_hess)  # (S, c, a, b)
        gamma_grad = q.grad_rows(gamma.reshape(S_, d * d * d)).reshape(S_, d, d, d, D)  # (S, c, a, b, i)
        term_gamma_L = torch.einsum("scab,sc->sab", gamma, L)  # (S, d, d)
        term_gamma_grad = torch.einsum("sci,scabi->sab", G, gamma_grad) / b  # (S, d, d)
        term_dGdG = torch.einsum("saij,sbji->sab", dG, dG) / b  # (S, d, d)
        rest = weighted_mean(term_gamma_L + term_gamma_grad + term_dGdG, w)
        return (projected_hessian - b * cov_L + rest).detach()


def hvp_target_nonlinear(
    cg_map: NonlinearMap,
    potential: Callable[[torch.Tensor], torch.Tensor],
    samples: torch.Tensor,
    model_force: torch.Tensor,
    probes: torch.Tensor,
    beta: float,
    cov_weight: float = 1.0,
    form: str = "vjp",
) -> torch.Tensor:
    """Per-frame HVP target for a nonlinear map (docs/identities.md, eq. (5.5)).

    h(v) = T1(v) − γ β dL (dL · v),    dL = L(r_t) − F_θ(R_t) (detached)
    ``vjp``: T1(v) = −G ∇_r(v·L) = −G (∂L/∂r)ᵀ v
    ``jvp``: T1(v) = −(∂L/∂r)(Gᵀ v)

    Both forms have conditional mean ``Hess A + β Cov(L)``, so with γ = 1 and an exact model
    force both targets are unbiased for ``Hess A · v``; they differ frame by frame. ∂L/∂r is
    computed exactly by autograd (d backward passes per batch).

    Args:
        cg_map: the :class:`~hessid.maps.NonlinearMap` ξ.
        potential: H, torch callable (B, D) Å → (B,) kcal/mol.
        samples: AA frames r_t, (B, D), Å.
        model_force: F_θ(ξ(r_t)), (B, d), kcal/mol/Å (detached here).
        probes: v, (B, k, d).
        beta: 1/(k_B T), mol/kcal.
        cov_weight: γ ∈ [0, 1].
        form: ``"vjp"`` or ``"jvp"``.

    Returns:
        (B, k, d), kcal/mol/Å² × unit of v, detached (a fixed regression target).

    Raises:
        ValueError: unknown form, shapes disagree, beta not positive, γ outside [0, 1], or
            J rank-deficient at a frame.
    """
    if form not in NONLINEAR_TARGET_FORMS:
        raise ValueError(f"form must be one of {NONLINEAR_TARGET_FORMS}, got {form!r}")
    b = _check_beta(beta)
    gam = _check_cov_weight(cov_weight)
    with torch.enable_grad():
        q = _FiberQuantities(cg_map, potential, samples, b)
        B, d, D = q.G.shape
        if model_force.shape != (B, d):
            raise ValueError(f"model_force must have shape ({B}, {d}), got {tuple(model_force.shape)}")
        if probes.ndim != 3 or probes.shape[0] != B or probes.shape[2] != d:
            raise ValueError(f"probes must have shape ({B}, k, {d}), got {tuple(probes.shape)}")
        dLdr = q.jacobian_of_L().detach()  # (B, d, D)  [b, c, i] = ∂_i L_c
    G = q.G.detach()
    v = probes.to(dtype=G.dtype)
    if form == "vjp":
        t1 = -torch.einsum("bai,bci,bkc->bka", G, dLdr, v)  # (B, k, d)
    else:
        t1 = -torch.einsum("bai,bci,bkc->bka", dLdr, G, v)  # (B, k, d)
    dL = (q.L.detach() - model_force.detach()).unsqueeze(1)  # (B, 1, d)
    proj = (v * dL).sum(-1, keepdim=True)  # (B, k, 1)
    return t1 - gam * b * proj * dL  # (B, k, d)
