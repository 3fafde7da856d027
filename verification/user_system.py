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
    system = QuadratureSystem(module.potential, module.cg_map, module.fiber, module.fiber_bounds,
                              module.points, float(module.beta), **kwargs)
    if validate:
        system.validate()
    return system


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
