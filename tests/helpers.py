"""Shared assertions for hessid's tests (e3nn style: one dtype → tolerance table), and the
loader of the ``benchmarks/`` driver scripts the study tests exercise.

Tolerances are set from explainable error: float64 closed forms carry round-off of a few
hundred ulps through the linear algebra (≈1e-12 relative); float32 ≈1e-5.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

#: the repository root (benchmarks/ is not a package: its scripts are loaded by path)
REPO = Path(__file__).resolve().parents[1]

#: relative tolerance for closed-form comparisons, by dtype
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def relative_error(a, b) -> float:
    """max|a − b| / max(max|b|, tiny): a scale-aware error measure used throughout."""
    a, b = _as_tensor(a).double(), _as_tensor(b).double()
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


def assert_close(a, b, dtype=torch.float64, what: str = "value", rtol: float | None = None):
    """Assert relative_error(a, b) ≤ the dtype's tolerance (or rtol)."""
    tol = TOLERANCE[dtype] if rtol is None else rtol
    err = relative_error(a, b)
    assert err <= tol, f"{what}: relative error {err:.3e} exceeds {tol:.1e}"


def assert_hessian_close(a, b, dtype=torch.float64, rtol: float | None = None):
    """Hessians: same as assert_close, named for the message."""
    assert_close(a, b, dtype, what="Hessian", rtol=rtol)


def assert_symmetric(h, dtype=torch.float64, rtol: float | None = None):
    """Assert a (…, d, d) matrix is symmetric to the dtype's tolerance."""
    h = _as_tensor(h)
    assert_close(h, h.transpose(-1, -2), dtype, what="symmetry", rtol=rtol)


def assert_unbiased(samples, mean: float, var: float, z_max: float = 5.0):
    """z-test: the sample mean of i.i.d. ``samples`` agrees with ``mean`` given the exact
    per-sample variance ``var`` (from docs/identities.md, table (6.1)), |z| < z_max."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    z = (x.mean() - mean) / math.sqrt(var / x.size) if var > 0 else 0.0
    assert abs(z) < z_max, f"biased: mean {x.mean():.6g} vs {mean:.6g}, z = {z:.2f}"
    return z


def load_benchmark(name: str) -> ModuleType:
    """Load ``benchmarks/<name>.py`` as a fresh module (not registered in ``sys.modules``).

    Raises:
        FileNotFoundError: no such script.
    """
    path = REPO / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
