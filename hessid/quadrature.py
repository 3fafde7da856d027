"""Exact constrained averages by quadrature over the fiber ξ(r) = R (docs/identities.md §1, §7.5).

A CG point R fixes d of the D AA coordinates; the remaining D − d ≤ 3 *fiber coordinates*
``s`` parametrise the level set through a user function ``r = fiber(R, s)`` with
``ξ(fiber(R, s)) = R``. Changing variables ``r → (R', s)`` in
``Z(R) = ∫ exp(−βH(r)) δ(ξ(r) − R) dr`` integrates the δ away and leaves

    Z(R) = ∫ exp(−βH(fiber(R, s))) |det ∂r/∂(R, s)| ds      (docs/identities.md, eq. (9.1))

where ``∂r/∂(R, s)`` is the D×D Jacobian of ``(R, s) ↦ r`` (the δ-measure Jacobian, e.g.
``ρ`` for a radius; computed here by autograd). The s-integral is a tensor product of
Gauss–Legendre rules (trapezoid rules for periodic coordinates, which converge
spectrally for smooth periodic integrands). The nodes do not depend on R, so the
quadrature A(R) = −β⁻¹ ln Z(R) is a smooth function of R and can be differentiated by
high-order finite differences: this is the exact ground truth of ``hessid verify``.

Finite-difference step (error analysis). 6th-order central differences of A with step h:
truncation ``h⁶|A⁽⁷⁾|/140`` (gradient) and ``h⁶|A⁽⁸⁾|/560`` (Hessian); rounding
``≈ 1.5 ε_A/h`` and ``≈ 6 ε_A/h²`` with ``ε_A ≈ 2e-16·|ln Σ|/β`` (a common shift is taken
out of ln Z, so ε_A is the rounding of an O(1) number). On the Å / kcal/mol scales of the
built-in systems (|A⁽ᵏ⁾| = O(1..10²)), ``h = 1e-2 Å`` gives truncation ≈ 1e-12·|A⁽⁸⁾| and
rounding ≈ 1e-11 relative: the optimum of the Hessian error ``h* = (560·6 ε/|A⁽⁸⁾|)^{1/8}``
is 1e-2 … 3e-2. Pass ``fd_step`` for systems with other length scales.

Only torch (float64 throughout) is used; no import from verification or training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

DTYPE = torch.float64

#: 6th-order central first-derivative coefficients for offsets 1, 2, 3 (antisymmetric).
FD6_FIRST = (3.0 / 4.0, -3.0 / 20.0, 1.0 / 60.0)
#: 6th-order central second-derivative coefficients for offsets 0, 1, 2, 3 (symmetric).
FD6_SECOND = (-49.0 / 18.0, 3.0 / 2.0, -3.0 / 20.0, 1.0 / 90.0)
#: default number of quadrature nodes per fiber coordinate, by fiber dimension D − d.
DEFAULT_NODES = {0: 1, 1: 96, 2: 40, 3: 20}


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x,
                           dtype=DTYPE)


def fd6_gradient_and_hessian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian of a scalar function by 6th-order central differences.

    ``∂_a f ≈ Σ_k c_k [f(x + k h e_a) − f(x − k h e_a)] / h`` (c = 3/4, −3/20, 1/60) and
    ``∂_a∂_b f`` from the product of two such stencils (a ≠ b) or the 7-point second
    derivative stencil (a = b); error O(h⁶). All 1 + 6d + 18d(d−1) points are evaluated
    in one batched call.

    Args:
        fn: batched scalar function, (B, d) → (B,), float64.
        x: evaluation point, (d,).
        h: step, same unit as x (> 0).

    Returns:
        (gradient (d,), Hessian (d, d)) in units of f / x and f / x²; the Hessian is
        symmetric by construction.

    Raises:
        ValueError: h is not positive or x is not 1-D.
    """
    if not h > 0:
        raise ValueError(f"finite-difference step must be positive, got {h!r}")
    x = _as_tensor(x)
    if x.dim() != 1:
        raise ValueError(f"x must be a 1-D tensor (d,), got shape {tuple(x.shape)}")
    d = x.shape[0]
    eye = torch.eye(d, dtype=DTYPE)
    offsets = [torch.zeros(d, dtype=DTYPE)]
    index: dict[tuple, int] = {(): 0}
    for a in range(d):
        for k in (1, 2, 3):
            for sgn in (1, -1):
                index[(a, sgn * k)] = len(offsets)
                offsets.append(sgn * k * h * eye[a])
    for a in range(d):
        for b in range(a + 1, d):
            for i in (-3, -2, -1, 1, 2, 3):
                for j in (-3, -2, -1, 1, 2, 3):
                    index[(a, i, b, j)] = len(offsets)
                    offsets.append(i * h * eye[a] + j * h * eye[b])
    values = fn(x + torch.stack(offsets))  # (B,)
    f0 = values[0]
    grad = torch.zeros(d, dtype=DTYPE)
    hess = torch.zeros(d, d, dtype=DTYPE)
    for a in range(d):
        grad[a] = sum(
            c * (values[index[(a, k)]] - values[index[(a, -k)]])
            for c, k in zip(FD6_FIRST, (1, 2, 3), strict=True)
        ) / h
        hess[a, a] = (FD6_SECOND[0] * f0 + sum(
            c * (values[index[(a, k)]] + values[index[(a, -k)]])
            for c, k in zip(FD6_SECOND[1:], (1, 2, 3), strict=True)
        )) / h**2
    signed = {k: FD6_FIRST[k - 1] for k in (1, 2, 3)} | {-k: -FD6_FIRST[k - 1] for k in (1, 2, 3)}
    for a in range(d):
        for b in range(a + 1, d):
            hess[a, b] = hess[b, a] = sum(
                signed[i] * signed[j] * values[index[(a, i, b, j)]]
                for i in signed for j in signed
            ) / h**2
    return grad, hess


def _rule(lo: float, hi: float, n: int, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    if periodic:
        nodes = lo + (hi - lo) * np.arange(n) / n
        return nodes, np.full(n, (hi - lo) / n)
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def _parse_bounds(fiber_bounds) -> list[tuple[float, float, bool]]:
    out = []
    for k, b in enumerate(fiber_bounds):
        if len(b) not in (2, 3):
            raise ValueError(f"fiber_bounds[{k}] must be (lo, hi) or (lo, hi, 'periodic'), got {b!r}")
        periodic = len(b) == 3
        if periodic and b[2] != "periodic":
            raise ValueError(f"fiber_bounds[{k}]: third entry must be 'periodic', got {b[2]!r}")
        lo, hi = float(b[0]), float(b[1])
        if not hi > lo:
            raise ValueError(f"fiber_bounds[{k}] = {b!r}: need hi > lo")
        out.append((lo, hi, periodic))
    if len(out) > 3:
        raise ValueError(f"at most 3 fiber coordinates (D − d ≤ 3) are supported, got {len(out)}")
    return out


def _parse_betas(betas) -> list[float]:
    if betas is None:
        return []
    out = [float(b) for b in np.asarray(betas, dtype=np.float64).reshape(-1)]
    for b in out:
        if not (math.isfinite(b) and b > 0):
            raise ValueError(f"betas must be positive and finite (mol/kcal), got {b!r}")
        if b > 50.0:
            raise ValueError(f"betas are 1/(k_B T) in mol/kcal; {b!r} (T = "
                             f"{1.0 / (0.0019872041 * b):.3g} K) looks like a temperature in K "
                             "passed as beta")
    return out


def potential_forces(potential: Callable, r: torch.Tensor) -> torch.Tensor:
    """AA forces f = −∇H by autograd (docs/identities.md §0).

    Args:
        potential: H, (S, D) → (S,), kcal/mol.
        r: configurations, (S, D), Å, float64.

    Returns:
        (S, D) forces, kcal/mol/Å (detached).
    """
    r = r.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(potential(r).sum(), r)
    return -g.detach()


def potential_hessians(potential: Callable, r: torch.Tensor) -> torch.Tensor:
    """AA Hessians ∇²H by autograd (one backward pass per AA coordinate).

    Args:
        potential: H, (S, D) → (S,), kcal/mol.
        r: configurations, (S, D), Å, float64.

    Returns:
        (S, D, D) Hessians, kcal/mol/Å², symmetric (detached).
    """
    r = r.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(potential(r).sum(), r, create_graph=True)
    rows = [torch.autograd.grad(g[:, i].sum(), r, retain_graph=True)[0] for i in range(r.shape[1])]
    return torch.stack(rows, dim=1).detach()  # (S, D, D)


class QuadratureSystem:
    """A CG map with an exact PMF by quadrature over its fibers (docs/identities.md §1, §7.5).

    This is also the protocol of a user's ``SYSTEM.py`` for ``hessid verify``.

    Args:
        potential: H(r), (..., D) → (...), kcal/mol; differentiable torch function.
        cg_map: ξ(r), (..., D) → (..., d), Å; differentiable torch function.
        fiber: r = fiber(R, s), R (..., d) and s (..., D − d) → (..., D) with
            ξ(fiber(R, s)) = R; smooth in (R, s).
        fiber_bounds: one ``(lo, hi)`` per fiber coordinate (Gauss–Legendre) or
            ``(lo, hi, "periodic")`` (trapezoid); at most 3 entries.
        points: CG points R at which to check, list of length-d sequences, Å.
        beta: 1/(k_B T), mol/kcal.
        projector: for linear maps, a force projector P (d, D) with P Mᵀ = I, or a mapping
            ``{name: P}`` of several; None for a general (nonlinear) map.
        exact_hessian: optional closed form R (d,) → 𝓗(R) (d, d), kcal/mol/Å²; replaces the
            finite-difference Hessian of A.
        name: label used in reports.
        n_nodes: nodes per fiber coordinate (default 96 / 40 / 20 for 1 / 2 / 3 coordinates).
        fd_step: finite-difference step of A in Å (default 1e-2; see the module docstring).
        masses: optional per-coordinate masses (D,), amu; the nonlinear identities are then
            also checked with the inverse-mass metric G = (J W Jᵀ)⁻¹ J W, W = diag(1/m).
        zero_modes: optional CG vectors t (k, d) with 𝓗 t = 0 (e.g. translations).
        betas: optional inverse temperatures (list, mol/kcal) at which ``hessid verify`` also
            checks the temperature relations of docs/thermo.md (R2, R3, R6).
        exact_mean_energy: optional closed form ``(R (B, d), beta) → ⟨U⟩_R (B,)`` kcal/mol,
            checked against the quadrature at every point and β in ``betas``.

    Raises:
        ValueError: malformed bounds, points or projector shapes; ``betas`` not positive and
            finite, or above 50 mol/kcal (T < 10 K: a temperature in K passed as β).
    """

    def __init__(
        self,
        potential: Callable,
        cg_map: Callable,
        fiber: Callable,
        fiber_bounds: Sequence,
        points: Sequence,
        beta: float,
        projector=None,
        exact_hessian: Callable | None = None,
        name: str = "",
        *,
        n_nodes: int | None = None,
        fd_step: float = 1e-2,
        masses=None,
        zero_modes=None,
        betas=None,
        exact_mean_energy: Callable | None = None,
    ) -> None:
        self.potential = potential
        self.cg_map = cg_map
        self.fiber = fiber
        self.bounds = _parse_bounds(fiber_bounds)
        self.points = [_as_tensor(p).reshape(-1) for p in points]
        if not self.points:
            raise ValueError("points must list at least one CG point R")
        self.d = self.points[0].shape[0]
        if any(p.shape[0] != self.d for p in self.points):
            raise ValueError("all points must have the same dimension d")
        self.n_fiber = len(self.bounds)
        self.D = self.d + self.n_fiber
        if not beta > 0:
            raise ValueError(f"beta must be positive (mol/kcal), got {beta!r}")
        self.beta = float(beta)
        if projector is None:
            self.projectors: dict[str, torch.Tensor] = {}
        elif isinstance(projector, Mapping):
            self.projectors = {str(k): _as_tensor(v) for k, v in projector.items()}
        else:
            self.projectors = {"given": _as_tensor(projector)}
        for key, p in self.projectors.items():
            if tuple(p.shape) != (self.d, self.D):
                raise ValueError(f"projector {key!r} must have shape (d, D) = ({self.d}, {self.D}), "
                                 f"got {tuple(p.shape)}")
        self.closed_form_hessian = exact_hessian
        self.name = name
        self.n_nodes = int(n_nodes or DEFAULT_NODES[self.n_fiber])
        self.fd_step = float(fd_step)
        self.masses = None if masses is None else _as_tensor(masses).reshape(-1)
        if self.masses is not None and self.masses.shape[0] != self.D:
            raise ValueError(f"masses must have D = {self.D} entries, got {self.masses.shape[0]}")
        self.zero_modes = None if zero_modes is None else _as_tensor(zero_modes).reshape(-1, self.d)
        self.betas = _parse_betas(betas)
        self.closed_form_mean_energy = exact_mean_energy

    # -- quadrature ---------------------------------------------------------------------
    def nodes(self, n_nodes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor-product quadrature nodes and weights over the fiber coordinates.

        Returns:
            (s (S, D − d), w (S,)) float64; S = n_nodes^(D − d) (1 node, weight 1, if d = D).
        """
        n = int(n_nodes or self.n_nodes)
        if self.n_fiber == 0:
            return torch.zeros(1, 0, dtype=DTYPE), torch.ones(1, dtype=DTYPE)
        rules = [_rule(lo, hi, n, per) for lo, hi, per in self.bounds]
        grids = np.meshgrid(*[r[0] for r in rules], indexing="ij")
        wgrids = np.meshgrid(*[r[1] for r in rules], indexing="ij")
        s = np.stack([g.reshape(-1) for g in grids], axis=-1)
        w = np.prod(np.stack([g.reshape(-1) for g in wgrids], axis=-1), axis=-1)
        return torch.as_tensor(s, dtype=DTYPE), torch.as_tensor(w, dtype=DTYPE)

    def _fiber_points(self, R: torch.Tensor, n_nodes: int | None = None, jacobian: bool = True):
        """r = fiber(R, s) on the nodes and log of the unnormalised weights.

        R (B, d) → r (B, S, D), log_w (B, S) = ln w_q − βH(r) + ln|det ∂r/∂(R, s)|.
        """
        r, log_measure, energy = self.fiber_log_measure(R, n_nodes, jacobian)
        return r, log_measure - self.beta * energy

    def fiber_log_measure(self, R, n_nodes: int | None = None, jacobian: bool = True):
        """The β-independent parts of the quadrature of Z(R, β) (docs/identities.md, eq. (9.1)).

        ``ln Z(R, β) = logsumexp_s(log_measure − β·energy)`` for *any* β, so one fiber
        evaluation serves every temperature (docs/thermo.md §5).

        Args:
            R: CG points, (B, d) (or (d,)), Å.
            n_nodes: nodes per fiber coordinate (default ``self.n_nodes``).
            jacobian: include ln|det ∂r/∂(R, s)| (False only for negative controls).

        Returns:
            r (B, S, D) Å, log_measure (B, S) = ln w_q + ln|det ∂r/∂(R, s)|, energy (B, S)
            kcal/mol = H(r); float64, detached.

        Raises:
            ValueError: fiber(R, s) returns the wrong shape.
        """
        R = _as_tensor(R).reshape(-1, self.d)
        s, wq = self.nodes(n_nodes)
        B, S = R.shape[0], s.shape[0]
        Rb = R[:, None, :].expand(B, S, self.d).reshape(B * S, self.d)
        sb = s[None].expand(B, S, self.n_fiber).reshape(B * S, self.n_fiber)
        x = torch.cat([Rb, sb], dim=-1).detach().requires_grad_(jacobian)  # (B*S, D)
        r = self.fiber(x[:, : self.d], x[:, self.d:])  # (B*S, D)
        if tuple(r.shape) != (B * S, self.D):
            raise ValueError(f"fiber(R, s) must return (..., D) = (..., {self.D}), got {tuple(r.shape)}")
        log_w = torch.log(wq)[None].expand(B, S).clone()
        if jacobian:
            rows = [torch.autograd.grad(r[:, i].sum(), x, retain_graph=i < self.D - 1)[0]
                    for i in range(self.D)]
            jac = torch.stack(rows, dim=1)  # (B*S, D, D)
            log_w = log_w + torch.linalg.slogdet(jac)[1].reshape(B, S)
        r = r.detach()
        with torch.no_grad():
            energy = self.potential(r).reshape(B, S)
        return r.reshape(B, S, self.D), log_w, energy

    def conditional_samples(self, R, n_nodes: int | None = None, jacobian: bool = True):
        """Weighted nodes representing the constrained Boltzmann measure at R
        (docs/identities.md §1).

        Args:
            R: CG point, (d,), Å.
            n_nodes: nodes per fiber coordinate (default ``self.n_nodes``).
            jacobian: include |det ∂r/∂(R, s)| (False only for negative controls).

        Returns:
            (samples (S, D) Å, weights (S,) summing to 1), float64.
        """
        R = _as_tensor(R).reshape(1, self.d)
        r, log_w = self._fiber_points(R, n_nodes, jacobian)
        return r[0], torch.softmax(log_w[0], dim=0)

    def log_partition(self, R, n_nodes: int | None = None, shift: float | None = None,
                      jacobian: bool = True):
        """ln Z(R) − shift for a batch of points (docs/identities.md §1), R (B, d) → (B,).

        ``jacobian=False`` drops |det ∂r/∂(R, s)| (a deliberately wrong δ-measure, used only
        by negative controls)."""
        R = _as_tensor(R).reshape(-1, self.d)
        _, log_w = self._fiber_points(R, n_nodes, jacobian)
        return torch.logsumexp(log_w - (0.0 if shift is None else shift), dim=-1)

    def free_energy(self, R, n_nodes: int | None = None) -> torch.Tensor:
        """A(R) = −β⁻¹ ln Z(R), kcal/mol (up to a constant), R (d,) or (B, d) → () or (B,)."""
        R = _as_tensor(R)
        out = -self.log_partition(R, n_nodes) / self.beta
        return out[0] if R.dim() == 1 else out

    def _fd(self, R, jacobian: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        R = _as_tensor(R).reshape(self.d)
        # common shift: the FD stencil sees an O(1) number
        shift = float(self.log_partition(R[None], jacobian=jacobian).item())

        def a_fn(x):
            return -self.log_partition(x, shift=shift, jacobian=jacobian) / self.beta

        return fd6_gradient_and_hessian(a_fn, R, self.fd_step)

    def exact_mean_force(self, R) -> torch.Tensor:
        """F(R) = −∇A by 6th-order central FD of the quadrature A, (d,) → (d,), kcal/mol/Å."""
        return -self._fd(R)[0]

    def exact_hessian(self, R) -> torch.Tensor:
        """𝓗(R) = ∇∇A, (d,) → (d, d) kcal/mol/Å²: the closed form if one was given, else
        6th-order central FD of the quadrature A."""
        if self.closed_form_hessian is not None:
            return _as_tensor(self.closed_form_hessian(_as_tensor(R))).reshape(self.d, self.d)
        return self._fd(R)[1]

    def exact_force_and_hessian(self, R, jacobian: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(F (d,), 𝓗 (d, d)) sharing one FD stencil; the closed-form Hessian if given.

        ``jacobian=False`` differentiates the A of a wrong δ-measure (negative controls only;
        the closed form is then ignored)."""
        grad, hess = self._fd(R, jacobian)
        if jacobian and self.closed_form_hessian is not None:
            hess = self.exact_hessian(R)
        return -grad, hess

    # -- validation ---------------------------------------------------------------------
    def fiber_residual(self, R, n_nodes: int = 7) -> float:
        """max_s |ξ(fiber(R, s)) − R| over an n_nodes^(D−d) grid of fiber coordinates, Å."""
        R = _as_tensor(R).reshape(1, self.d)
        r, _ = self._fiber_points(R, n_nodes, jacobian=False)
        with torch.no_grad():
            xi = self.cg_map(r[0])
        return float((xi - R).abs().max())

    def jacobian_is_constant(self, n_probe: int = 5, tol: float = 1e-10) -> bool:
        """True when |det ∂r/∂(R, s)| is the same at every probed (R, s) (then dropping it
        changes A(R) only by a constant, e.g. linear maps and unit-Jacobian shears)."""
        R = torch.stack(self.points)
        R = torch.cat([R, R + 0.1])  # (2P, d): also off the listed points
        _, with_j = self._fiber_points(R, n_probe, jacobian=True)
        _, without = self._fiber_points(R, n_probe, jacobian=False)
        log_det = with_j - without  # (2P, S)
        return float(log_det.max() - log_det.min()) <= tol

    def linear_map_matrix(self, n_probe: int = 5) -> torch.Tensor | None:
        """M = ∂ξ/∂r if ξ is linear (Jacobian identical at a few fiber nodes), else None.

        Returns:
            (d, D) float64 or None.
        """
        jacs = []
        for R in self.points[:2]:
            r, _ = self._fiber_points(R[None], n_probe, jacobian=False)
            x = r[0].clone().requires_grad_(True)
            xi = self.cg_map(x)
            jac = torch.stack([torch.autograd.grad(xi[:, a].sum(), x, retain_graph=True)[0]
                               for a in range(self.d)], dim=1)  # (S, d, D)
            jacs.append(jac)
        jac = torch.cat(jacs)
        if float((jac - jac[0]).abs().max()) > 1e-12 * (1.0 + float(jac.abs().max())):
            return None
        return jac[0].detach()

    def validate(self, tol: float = 1e-8) -> None:
        """Check the user protocol: ξ(fiber(R, s)) = R at every point, P Mᵀ = I for projectors.

        Raises:
            ValueError: naming the point and residual when ξ(fiber(R, s)) ≠ R (beyond
                ``tol·(1 + |R|)``), when a projector is given for a nonlinear map, or when
                ‖P Mᵀ − I‖_max > tol.
        """
        for k, R in enumerate(self.points):
            res = self.fiber_residual(R)
            if not res <= tol * (1.0 + float(R.abs().max())):
                raise ValueError(
                    f"{self.name or 'system'}: cg_map(fiber(R, s)) != R at point {k} "
                    f"R = {R.tolist()}: max residual {res:.3e} (tolerance {tol:.1e}); "
                    "fiber(R, s) must return configurations on the level set ξ(r) = R")
        if self.projectors:
            M = self.linear_map_matrix()
            if M is None:
                raise ValueError(f"{self.name or 'system'}: a projector was given but cg_map is "
                                 "not linear (its Jacobian varies); omit the projector")
            eye = torch.eye(self.d, dtype=DTYPE)
            for key, P in self.projectors.items():
                res = float((P @ M.T - eye).abs().max())
                if not res <= tol:
                    raise ValueError(
                        f"{self.name or 'system'}: projector {key!r} violates P Mᵀ = I: "
                        f"max |P Mᵀ − I| = {res:.3e} (tolerance {tol:.1e})")

    def __repr__(self) -> str:
        return (f"QuadratureSystem(name={self.name!r}, D={self.D}, d={self.d}, "
                f"points={len(self.points)}, projectors={list(self.projectors)})")


# ---------------------------------------------------------------------------------------
# Built-in systems (docs/identities.md §7.5)
# ---------------------------------------------------------------------------------------
BETA_300K = 1.0 / (0.0019872041 * 300.0)


def _anharmonic_2d(r):
    x, y = r[..., 0], r[..., 1]
    return 0.5 * x**2 + 0.1 * x**4 + y**2 + 0.1 * y**4 + 0.3 * x * y + 0.1 * x**2 * y


def _anharmonic_2d_x() -> QuadratureSystem:
    return QuadratureSystem(
        _anharmonic_2d, lambda r: r[..., :1],
        lambda R, s: torch.cat([R, s], dim=-1), [(-7.0, 7.0)],
        [[-0.7], [0.3], [1.1]], BETA_300K,
        projector={"min_norm": [[1.0, 0.0]], "offset": [[1.0, 0.7]]},
        name="anharmonic-2d R=x")


def _anharmonic_2d_mixed() -> QuadratureSystem:
    m = torch.tensor([0.8, 0.5], dtype=DTYPE)
    nrm2 = float(m @ m)
    normal = torch.tensor([-0.5, 0.8], dtype=DTYPE) / math.sqrt(nrm2)

    def fiber(R, s):
        return R * m / nrm2 + s * normal

    return QuadratureSystem(
        _anharmonic_2d, lambda r: (r * m).sum(-1, keepdim=True), fiber, [(-8.0, 8.0)],
        [[-0.6], [0.2], [0.9]], BETA_300K,
        projector={"min_norm": (m / nrm2)[None], "x_only": [[1.0 / 0.8, 0.0]]},
        name="anharmonic-2d R=0.8x+0.5y")


def _three_atoms_1d() -> QuadratureSystem:
    M = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]], dtype=DTYPE)
    pinv = torch.linalg.pinv(M)  # (3, 2)
    null = torch.linalg.svd(M).Vh[-1]  # (3,)
    p_min = torch.linalg.solve(M @ M.T, M)
    C = torch.tensor([[0.5, -0.2, 0.3], [0.1, 0.4, -0.6]], dtype=DTYPE)
    p_other = p_min + C @ (torch.eye(3, dtype=DTYPE) - M.T @ p_min)

    def potential(r):
        a, b, c = r[..., 0], r[..., 1], r[..., 2]
        return (0.6 * a**2 + 0.8 * b**2 + 0.5 * c**2 + 0.05 * (a**4 + b**4 + c**4)
                + 0.3 * a * b - 0.2 * b * c + 0.1 * a * b * c)

    return QuadratureSystem(
        potential, lambda r: r @ M.T, lambda R, s: R @ pinv.T + s * null, [(-8.0, 8.0)],
        [[0.3, -0.2], [-0.5, 0.6]], BETA_300K,
        projector={"min_norm": p_min, "general_C": p_other},
        name="three-atoms-1d overlapping M")


def _chain3_ca() -> QuadratureSystem:
    def bond(b):
        x = b - 1.5
        return 2.0 * x**2 - 0.5 * x**3 + 0.4 * x**4

    def potential(r):
        r1, r2, r3 = r[..., 0], r[..., 1], r[..., 2]
        return bond(r2 - r1) + bond(r3 - r2) + 0.3 * torch.cos(0.8 * (r3 - r1))

    return QuadratureSystem(
        potential, lambda r: torch.stack([r[..., 0], r[..., 2]], dim=-1),
        lambda R, s: torch.cat([R[..., :1], s, R[..., 1:]], dim=-1), [(-2.5, 6.5)],
        [[0.0, 2.7], [0.4, 3.6]], BETA_300K,
        projector={"selection": [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                   "shared_middle": [[1.0, 0.5, 0.0], [0.0, -0.3, 1.0]]},
        n_nodes=128, zero_modes=[[1.0, 1.0]], name="chain-3 translation-invariant, Ca atoms 1,3")


def _radius_2d() -> QuadratureSystem:
    def potential(r):
        x, y = r[..., 0], r[..., 1]
        return 0.8 * x**2 + 1.6 * y**2 + 0.05 * (x**2 + y**2) ** 2 + 0.2 * x

    def fiber(R, s):
        return torch.cat([R * torch.cos(s), R * torch.sin(s)], dim=-1)

    return QuadratureSystem(
        potential, lambda r: torch.linalg.vector_norm(r, dim=-1, keepdim=True), fiber,
        [(0.0, 2 * math.pi, "periodic")], [[0.6], [1.0], [1.5]], BETA_300K,
        n_nodes=64, masses=[1.0, 3.0], name="anisotropic-2d radius |r|")


def _shear_3d(a: float = 0.3, b: float = 0.2, c: float = 0.25) -> QuadratureSystem:
    def potential(r):
        x, y, z = r[..., 0], r[..., 1], r[..., 2]
        return (0.5 * x**2 + 0.75 * y**2 + z**2 + 0.05 * (x**4 + y**4 + z**4)
                + 0.2 * x * y + 0.1 * y * z)

    def cg_map(r):
        x, y, z = r[..., 0], r[..., 1], r[..., 2]
        return torch.stack([x + a * y**2 + b * z**2, y + c * z**2], dim=-1)

    def fiber(R, s):
        z = s[..., 0]
        y = R[..., 1] - c * z**2
        x = R[..., 0] - a * y**2 - b * z**2
        return torch.stack([x, y, z], dim=-1)

    return QuadratureSystem(
        potential, cg_map, fiber, [(-5.0, 5.0)], [[0.4, -0.3], [-0.2, 0.5]], BETA_300K,
        n_nodes=64, masses=[1.0, 2.0, 3.0], name="shear 3d->2d")


def _cylindrical_3d() -> QuadratureSystem:
    def potential(r):
        x, y, z = r[..., 0], r[..., 1], r[..., 2]
        return (0.6 * x**2 + 1.2 * y**2 + 0.8 * z**2 + 0.05 * (x**2 + y**2) ** 2
                + 0.3 * x * z + 0.15 * x)

    def cg_map(r):
        rho = torch.sqrt(r[..., 0] ** 2 + r[..., 1] ** 2)
        return torch.stack([rho, r[..., 2]], dim=-1)

    def fiber(R, s):
        rho, z, th = R[..., 0], R[..., 1], s[..., 0]
        return torch.stack([rho * torch.cos(th), rho * torch.sin(th), z], dim=-1)

    return QuadratureSystem(
        potential, cg_map, fiber, [(0.0, 2 * math.pi, "periodic")],
        [[0.7, 0.2], [1.2, -0.4]], BETA_300K, n_nodes=64, masses=[1.0, 2.0, 1.5],
        name="cylindrical 3d->2d (rho, z)")


def isotropic_radius_system(dim: int = 3, beta: float = BETA_300K) -> QuadratureSystem:
    """Isotropic radius ξ = |r| in ``dim`` ≤ 3 dimensions, H = U(|r|) (docs/identities.md §7.3).

    U(ρ) = ρ² − 0.4ρ + 0.1ρ⁴ (kcal/mol, ρ in Å); closed form
    A = U(ρ) − (dim − 1)β⁻¹ ln ρ, so ``exact_hessian`` is left to the FD of A and the
    caller can compare with ``U''(ρ) + (dim − 1)/(βρ²)``.

    Raises:
        ValueError: dim not in (2, 3).
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")

    def potential(r):
        rho = torch.linalg.vector_norm(r, dim=-1)
        return rho**2 - 0.4 * rho + 0.1 * rho**4

    def fiber(R, s):
        rho = R[..., 0]
        if dim == 2:
            return torch.stack([rho * torch.cos(s[..., 0]), rho * torch.sin(s[..., 0])], dim=-1)
        th, ph = s[..., 0], s[..., 1]
        return torch.stack([rho * torch.sin(th) * torch.cos(ph), rho * torch.sin(th) * torch.sin(ph),
                            rho * torch.cos(th)], dim=-1)

    bounds = [(0.0, 2 * math.pi, "periodic")] if dim == 2 else [(0.0, math.pi), (0.0, 2 * math.pi, "periodic")]
    return QuadratureSystem(potential, lambda r: torch.linalg.vector_norm(r, dim=-1, keepdim=True),
                            fiber, bounds, [[0.5], [1.0], [1.7]], beta, n_nodes=32,
                            name=f"isotropic radius {dim}d")


def builtin_systems() -> list[QuadratureSystem]:
    """The quadrature systems of docs/identities.md §7.5 (fresh objects on every call).

    Linear: 2-D anharmonic with R = x and R = 0.8x + 0.5y; 3 atoms in 1-D with an
    overlapping non-orthonormal 2×3 M; translation-invariant 3-atom chain with a Cα-like
    selection of atoms 1 and 3 (two projectors each). Nonlinear: anisotropic 2-D radius
    (θ-quadrature, measure ρ dθ), 3-D → 2-D shear (unit Jacobian), 3-D → 2-D cylindrical
    (ρ, z) (measure ρ dθ). β = β(300 K) in mol/kcal, lengths in Å.

    Returns:
        list of QuadratureSystem.
    """
    return [_anharmonic_2d_x(), _anharmonic_2d_mixed(), _three_atoms_1d(), _chain3_ca(),
            _radius_2d(), _shear_3d(), _cylindrical_3d()]
