"""Shared test instances for the curvature-loss variance studies (tests/core/test_hvp_loss.py,
tests/training/learning/test_rb_loss.py): one definition, so both reproduce the numbers that
docs/variance_reduction.md and docs/training.md quote."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hessian_derivatives(d: int) -> np.ndarray:
    """E_ab = ∂H/∂X_ab = (e_a e_bᵀ + e_b e_aᵀ)/2, (d², d, d), in X's row-major order."""
    E = np.zeros((d * d, d, d))
    for a in range(d):
        for b in range(d):
            E[a * d + b, a, b] += 0.5
            E[a * d + b, b, a] += 0.5
    return E


@dataclass
class ChignolinLikeInstance:
    """d = 30 (10 beads), β = 1.677399 mol/kcal (300 K); all matrices (d, d), kcal/mol/Å²."""

    beta: float
    cg_hessian: np.ndarray
    force_covariance: np.ndarray
    term1: np.ndarray
    model_hessian: np.ndarray
    residuals: list  # per-frame dF ~ N(0, C), (d,) each, kcal/mol/Å


def chignolin_like_instance(frames: int = 50, seed: int = 0, untrained: bool = False) -> ChignolinLikeInstance:
    """The chignolin-like Gaussian instance of docs/variance_reduction.md ("Measured reduction").

    CG Hessian 𝓗 with eigenvalues log-uniform in [20, 2000] kcal/mol/Å² (‖𝓗‖_F ≈ 4.1e3); force
    covariance C with eigenvalues log-uniform in [1, 100] scaled so that β tr C = 2.7e4
    kcal/mol/Å²; Term 1 = 𝓗 + βC (the Gaussian identity); model H_θ = 𝓗 + a symmetric error of
    10 % of ‖𝓗‖_F (``untrained``: H_θ = 0); ``frames`` residuals dF ~ N(0, C).
    """
    rng = np.random.default_rng(seed)
    d, beta = 30, 1.677399

    def spd(eigs):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return (q * eigs) @ q.T

    H_cg = spd(np.exp(rng.uniform(np.log(20.0), np.log(2000.0), d)))
    C = spd(np.exp(rng.uniform(0.0, np.log(100.0), d)))
    C *= 2.7e4 / beta / np.trace(C)
    T1 = H_cg + beta * C
    err = rng.standard_normal((d, d))
    err = err + err.T
    H_model = H_cg + 0.1 * np.linalg.norm(H_cg) / np.linalg.norm(err) * err
    if untrained:
        H_model = np.zeros((d, d))
    L = np.linalg.cholesky(C)
    residuals = [L @ rng.standard_normal(d) for _ in range(frames)]
    return ChignolinLikeInstance(beta, H_cg, C, T1, H_model, residuals)
