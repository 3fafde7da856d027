"""Temperature and parameter derivatives of the CG free energy from conditional samples
(docs/thermo.md, relations (R1)–(R8); Duschatko, Kozinsky et al., arXiv 2405.19386).

``βA(R, β) = −ln Z(R, β)`` is minus the cumulant generating function of the AA potential
energy U in the conditional ensemble at fixed R, seen as a function of β. Its β-derivatives
are the conditional cumulants of U, and its mixed (R, β) and (λ, β) derivatives are
conditional covariances. Every function here estimates one side of such a relation from
samples ``{r_s}`` of the ensemble at one fixed CG point R (linear map ``R = M r``, projector
P with ``P Mᵀ = I``), given per-sample energies ``U_s``, forces ``f_s`` or ``∂_λU_s``.

Two sampling situations, one rule:

* ``weights=None`` — i.i.d. (or restrained/constrained MD) samples at fixed R. Cumulants are
  Fisher's **k-statistics**, unbiased for κ_n (n ≤ 4; need S > n samples), and
  covariances use the unbiased ``1/(S − 1)`` normalisation (docs/thermo.md §4).
* ``weights`` given (normalised, e.g. quadrature nodes or importance weights) — **plug-in**
  (population) moments ``Σ_s w_s (x_s − x̄)…``: exact for quadrature, biased for Monte
  Carlo importance weights.

Units: energies kcal/mol, forces kcal/mol/Å, β in mol/kcal, T in K, ``k_B`` =
:data:`hessid.units.KB_KCAL_PER_MOL_K` kcal/mol/K; λ is whatever unit the user's parameter
has (``∂_λU`` in kcal/mol per unit λ). Passing a temperature where β is expected is a silent
unit error that no function here can detect; the checks of :mod:`hessid.verification`
(``hessid verify`` with ``betas``) include it as a negative control.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessid.units import KB_KCAL_PER_MOL_K

__all__ = [
    "KCAL_PER_MOL_A3_PER_BAR",
    "mean_energy",
    "energy_cumulant",
    "energy_cumulants",
    "energy_variance",
    "beta_free_energy_derivative",
    "conditional_heat_capacity",
    "conditional_entropy",
    "covariance_projected_force_energy",
    "mean_force_beta_derivative",
    "entropy_gradient",
    "mean_energy_gradient",
    "lambda_derivative_free_energy",
    "lambda_second_derivative_free_energy",
    "lambda_derivative_mean_energy",
    "npt_mean_enthalpy",
    "npt_pressure_derivative",
    "total_heat_capacity",
    "fd_beta_derivative",
]

#: 1 bar in kcal/mol/Å³ (10⁵ Pa × N_A / 4184 J/kcal / 10³⁰ Å³/m³), for p·V in (R7)
KCAL_PER_MOL_A3_PER_BAR = 1e5 * 6.02214076e23 / 4184.0 / 1e30

#: 6th-order central first-derivative coefficients, offsets 1, 2, 3 (antisymmetric)
_FD6_FIRST = (3.0 / 4.0, -3.0 / 20.0, 1.0 / 60.0)
#: 6th-order central second-derivative coefficients, offsets 0, 1, 2, 3 (symmetric)
_FD6_SECOND = (-49.0 / 18.0, 3.0 / 2.0, -3.0 / 20.0, 1.0 / 90.0)


# ====================================================================== validation
def _check_beta(beta, name: str = "beta") -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a positive scalar (mol/kcal), got {beta!r}") from None
    if not b > 0 or b == float("inf"):
        raise ValueError(f"{name} must be positive and finite (mol/kcal), got {b!r}")
    return b


def _samples(x, name: str, min_samples: int = 1) -> torch.Tensor:
    """A float tensor (S, ...) with S ≥ min_samples and finite entries."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim < 1:
        raise ValueError(f"{name} must have a leading sample axis (S, ...), got a scalar")
    if t.shape[0] < min_samples:
        raise ValueError(f"{name}: need at least {min_samples} samples, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite entries")
    return t


def _weights(weights, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """Normalised weights (S,) in the dtype of ``like``, or None (i.i.d. samples)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("weights contain non-finite entries")
    if bool((w < 0).any()):
        raise ValueError(f"weights must be non-negative; smallest is {float(w.min()):.3e}")
    total = float(w.double().sum())
    if abs(total - 1.0) > 1e-12 * n:
        raise ValueError(f"weights must be normalised: sum is {total!r} (|sum − 1| = "
                         f"{abs(total - 1.0):.3e} exceeds 1e-12·S = {1e-12 * n:.1e})")
    return w.to(dtype=like.dtype, device=like.device)


def _mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return x.mean(dim=0) if w is None else torch.tensordot(w, x, dims=1)


def _cov(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Cov(x, y) elementwise over trailing dims (broadcast): unbiased (w None) or plug-in."""
    xc, yc = x - _mean(x, w), y - _mean(y, w)
    if w is None:
        return (xc * yc).sum(dim=0) / (x.shape[0] - 1)
    return torch.tensordot(w, xc * yc, dims=1)


def _projected(forces, projector, n: int) -> torch.Tensor:
    """P f for flat forces (S, D) and P (d, D) (or a LinearMap): (S, d)."""
    f = _samples(forces, "forces")
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"forces must be (S, D) with S = {n} (the number of energies), "
                         f"got {tuple(f.shape)}")
    P = projector.projector_matrix() if hasattr(projector, "projector_matrix") else torch.as_tensor(projector)
    if P.ndim != 2 or P.shape[1] != f.shape[1]:
        raise ValueError(f"projector must be (d, D) with D = {f.shape[1]}, got {tuple(P.shape)}")
    return f @ P.to(dtype=f.dtype, device=f.device).T  # (S, d)


def _energies_1d(energies, min_samples: int = 1) -> torch.Tensor:
    U = _samples(energies, "energies", min_samples)
    if U.ndim != 1:
        raise ValueError(f"energies must be (S,), got {tuple(U.shape)}")
    return U


# ====================================================================== (R2), (R3): cumulants of U
def mean_energy(energies, weights=None) -> torch.Tensor:
    """Conditional mean energy ``⟨U⟩_R = ∂_β(βA)`` (docs/thermo.md, eq. (R2)).

    Args:
        energies: AA potential energies U of samples at one fixed R, (S, ...) kcal/mol
            (trailing dims are independent quantities, e.g. several R side by side).
        weights: normalised non-negative weights (S,); None for i.i.d. samples (1/S).

    Returns:
        (...), kcal/mol. Unbiased for i.i.d. samples.

    Raises:
        ValueError: no samples, non-finite entries, or invalid weights.
    """
    U = _samples(energies, "energies")
    return _mean(U, _weights(weights, U.shape[0], U))


def energy_cumulants(energies, order: int = 4, weights=None) -> torch.Tensor:
    """Conditional cumulants ``κ_1..κ_order`` of U at fixed R (docs/thermo.md, eq. (R3)).

    With ``weights=None`` these are Fisher's k-statistics (unbiased for κ_n from i.i.d.
    samples; S = number of samples, m_r the central sample moments Σ(U − Ū)^r / S):
    ``k1 = Ū``, ``k2 = S m2/(S−1)``, ``k3 = S² m3/((S−1)(S−2))``,
    ``k4 = S² [(S+1) m4 − 3(S−1) m2²] / ((S−1)(S−2)(S−3))``. With weights: the plug-in
    cumulants of the weighted law ``κ2 = m2``, ``κ3 = m3``, ``κ4 = m4 − 3 m2²`` (exact for
    quadrature weights).

    Args:
        energies: (S, ...) kcal/mol at one fixed R.
        order: highest cumulant, 1 ≤ order ≤ 4.
        weights: normalised weights (S,), or None for i.i.d. samples.

    Returns:
        (order, ...): ``κ_n`` in (kcal/mol)^n at index n − 1.

    Raises:
        ValueError: order outside 1..4, fewer than order + 1 i.i.d. samples (a k-statistic
            needs S > n), non-finite entries, or invalid weights.
    """
    if int(order) != order or not 1 <= order <= 4:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    order = int(order)
    U = _samples(energies, "energies", min_samples=order + 1 if weights is None else 1)
    w = _weights(weights, U.shape[0], U)
    mu = _mean(U, w)
    c = U - mu
    m = {r: _mean(c**r, w) for r in range(2, order + 1)}
    out = [mu]
    if w is None:
        S = U.shape[0]
        if order >= 2:
            out.append(S * m[2] / (S - 1))
        if order >= 3:
            out.append(S**2 * m[3] / ((S - 1) * (S - 2)))
        if order >= 4:
            out.append(S**2 * ((S + 1) * m[4] - 3 * (S - 1) * m[2] ** 2) / ((S - 1) * (S - 2) * (S - 3)))
    else:
        out += [m[r] for r in range(2, min(order, 3) + 1)]
        if order >= 4:
            out.append(m[4] - 3 * m[2] ** 2)
    return torch.stack(out)


def energy_cumulant(energies, n: int, weights=None) -> torch.Tensor:
    """One conditional cumulant ``κ_n(U|R)``, n ∈ {1, 2, 3, 4} (docs/thermo.md, eq. (R3));
    see :func:`energy_cumulants` for the estimators.

    Returns:
        (...), (kcal/mol)^n.

    Raises:
        ValueError: as :func:`energy_cumulants`.
    """
    return energy_cumulants(energies, n, weights)[n - 1]


def energy_variance(energies, weights=None) -> torch.Tensor:
    """``Var_R(U) = −∂²_β(βA)`` (docs/thermo.md, eq. (R3), n = 2): unbiased ``1/(S−1)`` for
    i.i.d. samples, plug-in with weights.

    Returns:
        (...), (kcal/mol)².

    Raises:
        ValueError: fewer than 2 i.i.d. samples, non-finite entries, or invalid weights.
    """
    return energy_cumulants(energies, 2, weights)[1]


def beta_free_energy_derivative(energies, n: int, weights=None) -> torch.Tensor:
    """``∂_β^n (βA)(R, β) = (−1)^{n+1} κ_n(U|R)`` for n = 1..4 (docs/thermo.md, eqs. (R2),
    (R3)): n = 1 is ⟨U⟩_R, n = 2 is −Var_R(U).

    Args:
        energies: (S, ...) kcal/mol at one fixed R and β.
        n: derivative order, 1..4.
        weights: normalised weights (S,), or None (i.i.d.; unbiased k-statistics).

    Returns:
        (...), (kcal/mol)^n (= kcal/mol per (mol/kcal)^{n−1}).

    Raises:
        ValueError: as :func:`energy_cumulants`.
    """
    return (-1) ** (n + 1) * energy_cumulant(energies, n, weights)


def conditional_heat_capacity(energies, beta: float, weights=None) -> torch.Tensor:
    """Conditional heat capacity ``C_R = k_B β² Var_R(U) = −k_B β² ∂²_β(βA)``
    (docs/thermo.md, eq. (R3)).

    Args:
        energies: (S, ...) kcal/mol at one fixed R.
        beta: 1/(k_B T) of the samples, mol/kcal (not a temperature).
        weights: normalised weights (S,), or None (i.i.d.; unbiased variance).

    Returns:
        (...), kcal/mol/K.

    Raises:
        ValueError: beta not positive, or as :func:`energy_variance`.
    """
    b = _check_beta(beta)
    return KB_KCAL_PER_MOL_K * b * b * energy_variance(energies, weights)


def conditional_entropy(free_energy, mean_energy_, beta: float) -> torch.Tensor:
    """``S_R = −∂_T A = k_B β (⟨U⟩_R − A)`` from (R2) ``A = ⟨U⟩_R − T S_R`` (docs/thermo.md,
    eq. (R2)). A is defined up to a constant per β, so S_R is up to a constant per β too.

    Args:
        free_energy: A(R, β), kcal/mol, any shape.
        mean_energy_: ⟨U⟩_R, kcal/mol, broadcastable with ``free_energy``.
        beta: mol/kcal.

    Returns:
        kcal/mol/K, the broadcast shape.

    Raises:
        ValueError: beta not positive.
    """
    b = _check_beta(beta)
    return KB_KCAL_PER_MOL_K * b * (torch.as_tensor(mean_energy_) - torch.as_tensor(free_energy))


# ====================================================================== (R6): thermal response of F
def covariance_projected_force_energy(forces, energies, projector, weights=None) -> torch.Tensor:
    """``Cov_R(P f, U)`` at fixed R for a linear map (docs/thermo.md, eq. (R6)).

    Args:
        forces: AA forces f = −∇U of the samples, (S, D) kcal/mol/Å (flat ``3i + α``).
        energies: AA potential energies of the same samples, (S,) kcal/mol.
        projector: P (d, D) with ``P Mᵀ = I`` (or a :class:`~hessid.maps.LinearMap`).
        weights: normalised weights (S,), or None (i.i.d.; unbiased ``1/(S−1)``).

    Returns:
        (d,), (kcal/mol)²/Å.

    Raises:
        ValueError: shapes disagree, fewer than 2 i.i.d. samples, non-finite entries, or
            invalid weights.
    """
    U = _energies_1d(energies, 2 if weights is None else 1)
    Pf = _projected(forces, projector, U.shape[0])
    w = _weights(weights, U.shape[0], Pf)
    return _cov(Pf, U.to(Pf)[:, None], w)


def mean_force_beta_derivative(forces, energies, projector, weights=None) -> torch.Tensor:
    """``∂_β F(R, β) = −Cov_R(P f, U)`` (docs/thermo.md, eq. (R6)); F = −∇_R A = ⟨P f⟩_R (R1).

    Args/Raises: as :func:`covariance_projected_force_energy`.

    Returns:
        (d,), kcal/mol/Å per mol/kcal = (kcal/mol)²/Å.
    """
    return -covariance_projected_force_energy(forces, energies, projector, weights)


def entropy_gradient(forces, energies, projector, beta: float, weights=None) -> torch.Tensor:
    """``∂_T F = ∇_R S_R = k_B β² Cov_R(P f, U)`` (docs/thermo.md, eq. (R6)).

    Args:
        forces, energies, projector, weights: as :func:`covariance_projected_force_energy`.
        beta: mol/kcal (not a temperature: passing T gives k_B T² Cov, off by (T/β)²).

    Returns:
        (d,), kcal/mol/Å/K.

    Raises:
        ValueError: beta not positive, or as :func:`covariance_projected_force_energy`.
    """
    b = _check_beta(beta)
    return KB_KCAL_PER_MOL_K * b * b * covariance_projected_force_energy(forces, energies, projector, weights)


def mean_energy_gradient(forces, energies, projector, beta: float, weights=None) -> torch.Tensor:
    """``∇_R ⟨U⟩_R = −F + β Cov_R(P f, U)`` with ``F = ⟨P f⟩_R`` (docs/thermo.md, eq. (R6)).

    Args:
        forces, energies, projector, weights: as :func:`covariance_projected_force_energy`.
        beta: mol/kcal.

    Returns:
        (d,), kcal/mol/Å.

    Raises:
        ValueError: beta not positive, or as :func:`covariance_projected_force_energy`.
    """
    b = _check_beta(beta)
    U = _energies_1d(energies, 2 if weights is None else 1)
    Pf = _projected(forces, projector, U.shape[0])
    w = _weights(weights, U.shape[0], Pf)
    return -_mean(Pf, w) + b * _cov(Pf, U.to(Pf)[:, None], w)


# ====================================================================== (R4), (R5): parameter response
def lambda_derivative_free_energy(dU_dlambda, weights=None) -> torch.Tensor:
    """``∂_λ A = ⟨∂_λU⟩_R`` (docs/thermo.md, eq. (R4)).

    Args:
        dU_dlambda: ∂U/∂λ of the samples at fixed R, (S, ...) kcal/mol per unit λ.
        weights: normalised weights (S,), or None (i.i.d.).

    Returns:
        (...), kcal/mol per unit λ.

    Raises:
        ValueError: no samples, non-finite entries, or invalid weights.
    """
    x = _samples(dU_dlambda, "dU_dlambda")
    return _mean(x, _weights(weights, x.shape[0], x))


def lambda_second_derivative_free_energy(dU_dlambda, d2U_dlambda2, beta: float, weights=None) -> torch.Tensor:
    """``∂²_λ A = ⟨∂²_λU⟩_R − β Var_R(∂_λU)`` (docs/thermo.md, eq. (R4)).

    Args:
        dU_dlambda: (S, ...) kcal/mol per unit λ.
        d2U_dlambda2: (S, ...) kcal/mol per unit λ², same samples; a Python 0.0 or a zero
            tensor when U is linear in λ.
        beta: mol/kcal.
        weights: normalised weights (S,), or None (i.i.d.; unbiased variance).

    Returns:
        (...), kcal/mol per unit λ².

    Raises:
        ValueError: beta not positive, fewer than 2 i.i.d. samples, shapes disagree,
            non-finite entries, or invalid weights.
    """
    b = _check_beta(beta)
    x = _samples(dU_dlambda, "dU_dlambda", 2 if weights is None else 1)
    x2 = torch.as_tensor(d2U_dlambda2, dtype=x.dtype)
    if x2.ndim == 0:
        x2 = x2.expand_as(x)
    x2 = _samples(x2, "d2U_dlambda2")
    if x2.shape != x.shape:
        raise ValueError(f"d2U_dlambda2 {tuple(x2.shape)} and dU_dlambda {tuple(x.shape)} differ")
    w = _weights(weights, x.shape[0], x)
    return _mean(x2, w) - b * _cov(x, x, w)


def lambda_derivative_mean_energy(energies, dU_dlambda, beta: float, weights=None) -> torch.Tensor:
    """``∂_λ ⟨U⟩_R = ⟨∂_λU⟩_R − β Cov_R(U, ∂_λU)`` (docs/thermo.md, eq. (R5)); equal to
    ``∂_β(β ∂_λA)`` (the mixed-derivative consistency of (R2) and (R4)).

    Args:
        energies: (S,) kcal/mol at fixed R, λ, β.
        dU_dlambda: (S,) or (S, k) kcal/mol per unit λ (k parameters), same samples.
        beta: mol/kcal.
        weights: normalised weights (S,), or None (i.i.d.; unbiased covariance).

    Returns:
        () or (k,), kcal/mol per unit λ.

    Raises:
        ValueError: beta not positive, sample counts differ, fewer than 2 i.i.d. samples,
            non-finite entries, or invalid weights.
    """
    b = _check_beta(beta)
    U = _energies_1d(energies, 2 if weights is None else 1)
    x = _samples(dU_dlambda, "dU_dlambda")
    if x.shape[0] != U.shape[0]:
        raise ValueError(f"dU_dlambda has {x.shape[0]} samples, energies {U.shape[0]}")
    w = _weights(weights, U.shape[0], x)
    Ub = U.to(x).reshape(-1, *([1] * (x.ndim - 1)))
    return _mean(x, w) - b * _cov(Ub, x, w)


# ====================================================================== (R7): NPT
def npt_mean_enthalpy(energies, volumes, pressure: float, weights=None) -> torch.Tensor:
    """``∂_β(βG)(R, β, p) = ⟨U + pV⟩_R`` in the NPT ensemble (docs/thermo.md, eq. (R7)).

    Args:
        energies: (S, ...) kcal/mol.
        volumes: (S, ...) Å³, same samples.
        pressure: kcal/mol/Å³ (bar × :data:`KCAL_PER_MOL_A3_PER_BAR`).
        weights: normalised weights (S,), or None (i.i.d.).

    Returns:
        (...), kcal/mol.

    Raises:
        ValueError: shapes disagree, non-finite entries, or invalid weights.
    """
    U, V = _samples(energies, "energies"), _samples(volumes, "volumes")
    if U.shape != V.shape:
        raise ValueError(f"energies {tuple(U.shape)} and volumes {tuple(V.shape)} differ")
    return _mean(U + float(pressure) * V.to(U), _weights(weights, U.shape[0], U))


def npt_pressure_derivative(volumes, weights=None) -> torch.Tensor:
    """``∂_p G(R, β, p) = ⟨V⟩_R`` (docs/thermo.md, eq. (R7)).

    Args:
        volumes: (S, ...) Å³.
        weights: normalised weights (S,), or None (i.i.d.).

    Returns:
        (...), Å³ (= kcal/mol per kcal/mol/Å³).

    Raises:
        ValueError: no samples, non-finite entries, or invalid weights.
    """
    V = _samples(volumes, "volumes")
    return _mean(V, _weights(weights, V.shape[0], V))


# ====================================================================== (R8): whole system
def total_heat_capacity(mean_energies, energy_variances, beta: float, weights=None, return_terms: bool = False):
    """Whole-system heat capacity from conditional moments (docs/thermo.md, eq. (R8)):
    ``C_tot = k_B β² [Var_{R∼e^{−βA}}(⟨U⟩_R) + E_R Var_R(U)]``.

    A CG simulation samples R ∼ e^{−βA} but only sees the first term (fluctuations of the
    conditional mean); the second is the heat capacity of the eliminated DOFs.

    Args:
        mean_energies: ⟨U⟩_R at B points R, (B,) kcal/mol.
        energy_variances: Var_R(U) at the same points, (B,) (kcal/mol)².
        beta: mol/kcal.
        weights: normalised weights (B,) of the marginal law e^{−βA(R)} (e.g. quadrature
            over R); None when the B points are i.i.d. draws of it (unbiased variance).
        return_terms: also return (CG-visible term, hidden term).

    Returns:
        () kcal/mol/K, or ``(total, (visible, hidden))``.

    Raises:
        ValueError: beta not positive, shapes disagree, fewer than 2 i.i.d. points,
            non-finite entries, or invalid weights.
    """
    b = _check_beta(beta)
    mu = _energies_1d(mean_energies, 2 if weights is None else 1)
    var = _energies_1d(energy_variances)
    if var.shape != mu.shape:
        raise ValueError(f"energy_variances {tuple(var.shape)} and mean_energies {tuple(mu.shape)} differ")
    w = _weights(weights, mu.shape[0], mu)
    visible = KB_KCAL_PER_MOL_K * b * b * _cov(mu, mu, w)
    hidden = KB_KCAL_PER_MOL_K * b * b * _mean(var.to(mu), w)
    total = visible + hidden
    return (total, (visible, hidden)) if return_terms else total


# ====================================================================== β-derivatives of closed forms
def fd_beta_derivative(fn: Callable[[float], torch.Tensor], beta: float, n: int = 1,
                       rel_step: float = 1e-2) -> torch.Tensor:
    """``∂_β^n fn`` at β by 6th-order central finite differences (n = 1 or 2), for checking a
    closed-form or model free energy against (R2)–(R5) (e.g. ``fn(b) = b·A(R, b)``).

    Error: truncation ``h⁶|fn⁽⁷⁾|/140`` (n = 1) or ``h⁶|fn⁽⁸⁾|/560`` (n = 2) with
    ``h = rel_step·β``; rounding ``≈ 1.5 ε|fn|/h`` or ``≈ 6 ε|fn|/h²`` (ε = 2.2e-16). For
    ``fn = βA`` of a system with m harmonic hidden DOFs (``∂_β^k(βA) ∝ (k−1)!/β^k``) the
    relative truncation is ≈ 5 (h/β)⁶ and 9 (h/β)⁶: ≈ 1e-11 at the default step.

    Args:
        fn: β (float, mol/kcal) → tensor (any shape), float64.
        beta: mol/kcal; ``beta·(1 − 3 rel_step) > 0`` is needed.
        n: 1 or 2.
        rel_step: h/β, 0 < rel_step < 1/3.

    Returns:
        tensor of fn's shape, fn's unit per (mol/kcal)^n.

    Raises:
        ValueError: n not 1 or 2, beta not positive, rel_step outside (0, 1/3), or fn returns
            a tensor that is not float64.
    """
    b = _check_beta(beta)
    if n not in (1, 2):
        raise ValueError(f"n must be 1 or 2, got {n!r}")
    if not 0 < rel_step < 1.0 / 3.0:
        raise ValueError(f"rel_step must lie in (0, 1/3), got {rel_step!r}")
    h = rel_step * b
    vals = {}
    for k in range(-3, 4):
        v = fn(b + k * h)
        if isinstance(v, torch.Tensor) and v.dtype != torch.float64:
            raise ValueError(f"fn must return float64 (a {v.dtype} value would swamp the finite "
                             "difference with its rounding)")
        vals[k] = torch.as_tensor(v, dtype=torch.float64)
    if n == 1:
        return sum(c * (vals[k] - vals[-k]) for c, k in zip(_FD6_FIRST, (1, 2, 3), strict=True)) / h
    return (_FD6_SECOND[0] * vals[0] + sum(c * (vals[k] + vals[-k])
                                           for c, k in zip(_FD6_SECOND[1:], (1, 2, 3), strict=True))) / h**2
