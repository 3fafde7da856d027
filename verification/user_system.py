"""Load a user's ``SYSTEM.py`` for ``hessid verify SYSTEM.py`` (the QuadratureSystem protocol).

A system file is plain Python defining, at module level:

=================  ===================================================================
``beta``           1/(k_B T), mol/kcal
``potential(r)``   r: tensor (..., D) Å → energy (...), kcal/mol (differentiable torch)
``cg_map(r)``      (..., D) → (..., d) Å
``fiber(R, s)``    R (..., d), s (..., D − d) → r (..., D) with cg_map(r) == R
``fiber_bounds``   list of (lo, hi) or (lo, hi, "periodic"), one per fiber coordinate (≤ 3)
``points``         list of CG points R (each a length-d list), Å
=================  ===================================================================

Optional: ``projector`` (d, D) for a linear map (the linear identity is then checked with
it; a dict ``{name: P}`` checks several), ``exact_hessian(R)`` (d,) → (d, d) kcal/mol/Å²
(a closed form that replaces the finite-difference Hessian), ``name``, ``masses`` (D,) (adds
the inverse-mass G), ``zero_modes`` (k, d), ``n_nodes``, ``fd_step`` (Å).

Temperature (docs/thermo.md §5): ``betas`` (list, mol/kcal) adds the checks of
:func:`hessid.verification.thermo_checks.check_thermo_system` at every point and β;
``exact_mean_energy(R, beta)`` (R (B, d) → (B,) kcal/mol) is then checked too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from hessid.quadrature import QuadratureSystem
from hessid.verification.checks import check_quadrature_system
from hessid.verification.results import CheckResult
from hessid.verification.thermo_checks import check_thermo_system

__all__ = ["REQUIRED", "OPTIONAL", "load_user_system", "verify_user_system"]

REQUIRED = ("beta", "potential", "cg_map", "fiber", "fiber_bounds", "points")
OPTIONAL = ("projector", "exact_hessian", "name", "masses", "zero_modes", "n_nodes", "fd_step",
            "betas", "exact_mean_energy")


def load_user_system(path, validate: bool = True) -> QuadratureSystem:
    """Import a SYSTEM.py file and build its :class:`~hessid.quadrature.QuadratureSystem`.

    Args:
        path: the Python file.
        validate: check ``cg_map(fiber(R, s)) == R`` at every point (and ``P Mᵀ = I`` for a
            projector) before anything else — see :meth:`QuadratureSystem.validate`.

    Returns:
        QuadratureSystem named after the file (or its ``name``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required name is missing, the file fails to import, or validation fails
            (the message names the point and the residual).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"system file not found: {path}")
    if path.suffix != ".py":
        raise ValueError(f"{path}: a system file is Python source ending in .py (docs/verification.md)")
    spec = importlib.util.spec_from_file_location(f"hessid_user_system_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report, do not hide
        raise ValueError(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(spec.name, None)
    missing = [k for k in REQUIRED if not hasattr(module, k)]
    if missing:
        raise ValueError(f"{path}: missing required name(s) {missing}; a system file defines "
                         f"{list(REQUIRED)} (optional: {list(OPTIONAL)})")
    kwargs = {k: getattr(module, k) for k in OPTIONAL if hasattr(module, k)}
    kwargs.setdefault("name", path.stem)
    if "projector" in kwargs:
        kwargs["projector"] = _projector_arrays(path, kwargs["projector"])
    try:
        # first without the projector: a wrong number of fiber_bounds is named as such, not as a
        # projector of the wrong shape
        bare = QuadratureSystem(module.potential, module.cg_map, module.fiber, module.fiber_bounds,
                                module.points, float(module.beta),
                                **{k: v for k, v in kwargs.items() if k != "projector"})
        preflight(bare, path)
        system = QuadratureSystem(module.potential, module.cg_map, module.fiber, module.fiber_bounds,
                                  module.points, float(module.beta), **kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from exc
    preflight_projector(system, path)
    if validate:
        system.validate()
    return system


def _projector_arrays(path, projector):
    """The projector(s) as float arrays, or a one-line error naming a ragged/non-numeric one."""
    items = projector.items() if isinstance(projector, dict) else [("projector", projector)]
    out = {}
    for key, P in items:
        try:
            out[key] = np.asarray(P.detach() if torch.is_tensor(P) else P, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: projector {key!r} is not a numeric (d, D) matrix "
                             "(rows of different lengths?)") from None
        if out[key].ndim != 2:
            raise ValueError(f"{path}: projector {key!r} must be a (d, D) matrix, got shape {out[key].shape}")
    return out if isinstance(projector, dict) else out["projector"]


def preflight(system: QuadratureSystem, path="system") -> None:
    """Refuse a malformed system before any check, naming the function and the point.

    Evaluates, at every point R and on a 3-node grid of fiber coordinates: ``fiber(R, s)``
    (shape ``(S, D)`` with ``D = d + len(fiber_bounds)``), ``cg_map`` on it (``(S, d)``),
    ``potential`` (``(S,)``, finite, differentiable by torch autograd), and
    ``exact_hessian(R)`` (``(d, d)``, finite). :func:`preflight_projector` checks the map's rank.

    Raises:
        ValueError: one line naming the file, the function, the point and what is wrong.
    """
    d, k = system.d, system.n_fiber
    s, _ = system.nodes(3)
    for i, R in enumerate(system.points):
        where = f"{path}: at point {i} R = {[round(float(x), 6) for x in R]}"
        Rb = R[None].expand(s.shape[0], d)
        try:
            r = system.fiber(Rb, s)
        except Exception as exc:  # the user's code: name it
            raise ValueError(f"{where}: fiber(R, s) failed with s of shape {tuple(s.shape)} (one column per "
                             f"fiber_bounds entry, {k} given): {type(exc).__name__}: {exc}") from exc
        if not torch.is_tensor(r) or tuple(r.shape) != (s.shape[0], d + k):
            shape = tuple(r.shape) if hasattr(r, "shape") else type(r).__name__
            raise ValueError(f"{where}: fiber(R, s) returned {shape}, expected (S, D) = ({s.shape[0]}, {d + k}): "
                             f"D = d + len(fiber_bounds) = {d} + {k}; give one fiber_bounds entry per fiber "
                             "coordinate")
        xi = system.cg_map(r)
        if not torch.is_tensor(xi) or tuple(xi.shape) != (s.shape[0], d):
            shape = tuple(xi.shape) if hasattr(xi, "shape") else type(xi).__name__
            raise ValueError(f"{where}: cg_map(r) returned {shape} for r of shape {tuple(r.shape)}, "
                             f"expected ({s.shape[0]}, {d})")
        x = r.detach().clone().requires_grad_(True)
        try:
            e = system.potential(x)
        except Exception as exc:  # the user's code: name it
            raise ValueError(f"{where}: potential(r) failed: {type(exc).__name__}: {exc}") from exc
        if not torch.is_tensor(e) or tuple(e.shape) != (s.shape[0],):
            shape = tuple(e.shape) if hasattr(e, "shape") else type(e).__name__
            raise ValueError(f"{where}: potential(r) returned {shape} for r of shape {tuple(x.shape)}, "
                             f"expected ({s.shape[0]},): one energy per configuration, a torch tensor")
        bad = ~torch.isfinite(e)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            raise ValueError(f"{where}: potential(r) = {float(e[j].detach())} at fiber coordinates s = "
                             f"{[round(float(v), 6) for v in s[j]]} (r = {[round(float(v), 6) for v in r[j]]})")
        if not e.requires_grad:
            raise ValueError(f"{where}: potential(r) is not differentiable by torch autograd (no gradient "
                             "reaches r: use torch operations, not numpy)")
        if system.closed_form_hessian is not None:
            try:
                H = torch.as_tensor(system.closed_form_hessian(R.clone()), dtype=torch.float64)
            except Exception as exc:  # the user's code: name it
                raise ValueError(f"{where}: exact_hessian(R) failed: {type(exc).__name__}: {exc}") from exc
            if tuple(H.shape) != (d, d) or not bool(torch.isfinite(H).all()):
                raise ValueError(f"{where}: exact_hessian(R) must return a finite (d, d) = ({d}, {d}) matrix, "
                                 f"got shape {tuple(H.shape)}")


def preflight_projector(system: QuadratureSystem, path="system") -> None:
    """With a projector: the linear map must have rank d (else no P satisfies ``P Mᵀ = I``).

    Raises:
        ValueError: one line naming the file and the rank.
    """
    d = system.d
    if system.projectors:
        M = system.linear_map_matrix()
        if M is not None:
            rank = int(torch.linalg.matrix_rank(M))
            if rank < d:
                raise ValueError(f"{path}: cg_map is rank-deficient: rank M = {rank} < d = {d} (two CG "
                                 "coordinates are linearly dependent); no projector can satisfy P Mᵀ = I")


def verify_user_system(path) -> list[CheckResult]:
    """``hessid verify SYSTEM.py``: load, validate, and check every identity form.

    Returns:
        list of CheckResult (mean force and Hessian per form and metric, symmetry, the linear
        identity for a given projector, the claimed exact Hessian against the FD of the
        quadrature A, negative controls, and with ``betas`` the temperature relations).

    Raises:
        FileNotFoundError, ValueError: see :func:`load_user_system`.
    """
    system = load_user_system(path)
    return check_quadrature_system(system) + check_thermo_system(system)
