"""Divergences between sampled distributions (docs/evaluation.md, evaluation protocol steps 4–7).

KL(ref‖model) and W1 (1-D and 2-D) between Gaussian KDEs of samples; the reference is always
the first argument. KL in nats, W1 in the unit of the samples.
"""

from __future__ import annotations

import numpy as np
import ot
from scipy.stats import gaussian_kde, wasserstein_distance

#: density floor of the KL estimate (docs/evaluation.md, evaluation protocol step 4)
KL_FLOOR = 1e-6

# ----------------------------------------------------------------------------------------
# Metrics on samples (docs/evaluation.md, evaluation protocol steps 4–6)
# ----------------------------------------------------------------------------------------


def subsample(x: np.ndarray, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` rows of ``x`` (N, ...), drawn without replacement by ``rng``, in order.

    Returns:
        ``x`` itself when ``max_points`` is None or N ≤ ``max_points``; else (max_points, ...).
    """
    if max_points is None or len(x) <= max_points:
        return x
    return x[np.sort(rng.choice(len(x), max_points, replace=False))]


def _kde(x: np.ndarray) -> gaussian_kde:
    x = np.asarray(x, dtype=np.float64)
    return gaussian_kde(x.T if x.ndim == 2 else x)  # Scott bandwidth


def _check_samples(*xs, dim=1):
    for x in xs:
        x = np.asarray(x)
        if len(x) < 2 or not np.all(np.isfinite(x)):
            raise ValueError("need at least two finite samples for a KDE")
        if dim == 2 and (x.ndim != 2 or x.shape[1] != 2):
            raise ValueError(f"expected (N, 2) samples, got {x.shape}")


def kl_divergence(reference: np.ndarray, model: np.ndarray, floor: float = KL_FLOOR,
                  max_kde_points: int | None = 5000, max_eval_points: int | None = 5000,
                  seed: int = 0) -> float:
    """KL(ref‖model) of two 1-D samples by Gaussian KDEs (docs/evaluation.md, protocol step 4).

    KL = mean over reference points x of ``log(max(p_ref(x), floor) / max(p_model(x), floor))``
    with Scott-bandwidth ``scipy.stats.gaussian_kde``. Reference first: it measures how much of
    the reference the model misses (the upstream code swapped the order in places; not here).

    Args:
        reference: (N,) samples (e.g. TIC i of the reference).
        model: (M,) samples.
        floor: density floor (1e-6 in the benchmark).
        max_kde_points: KDEs are built on at most this many points (seeded subsample).
        max_eval_points: the Monte-Carlo mean uses at most this many reference points.
        seed: subsampling seed (each sample subsampled by its own ``default_rng(seed)``
            stream, so identical inputs give exactly 0).

    Returns:
        KL in nats (float). Not exactly ≥ 0 (finite-sample MC estimate).

    Raises:
        ValueError: fewer than two or non-finite samples.
    """
    _check_samples(reference, model)
    ref = np.asarray(reference, dtype=np.float64).ravel()
    mod = np.asarray(model, dtype=np.float64).ravel()
    p_ref = _kde(subsample(ref, max_kde_points, np.random.default_rng(seed)))
    p_mod = _kde(subsample(mod, max_kde_points, np.random.default_rng(seed)))
    x = subsample(ref, max_eval_points, np.random.default_rng(seed + 1))
    return float(np.mean(np.log(np.maximum(p_ref(x), floor) / np.maximum(p_mod(x), floor))))


def wasserstein_1d(reference: np.ndarray, model: np.ndarray, n_grid: int = 100,
                   lower: float | None = None, max_kde_points: int | None = 5000,
                   seed: int = 0) -> float:
    """W1 between the KDEs of two 1-D samples on a common grid (docs/evaluation.md, step 5).

    Both KDEs are evaluated on ``n_grid`` points over [min, max] of the union of the samples
    (from ``lower`` instead of the minimum when given, e.g. 0 for Rg), normalised to sum 1,
    and compared by exact 1-D transport (``scipy.stats.wasserstein_distance`` with weights).

    Args:
        reference: (N,) samples. model: (M,) samples.
        n_grid: grid points (100 in the benchmark).
        lower: grid start (None: the union's minimum).
        max_kde_points: KDEs built on at most this many points (seeded subsample).
        seed: subsampling seed.

    Returns:
        W1 in the samples' unit (float ≥ 0).

    Raises:
        ValueError: fewer than two or non-finite samples.
    """
    _check_samples(reference, model)
    ref = np.asarray(reference, dtype=np.float64).ravel()
    mod = np.asarray(model, dtype=np.float64).ravel()
    lo = min(ref.min(), mod.min()) if lower is None else float(lower)
    hi = max(ref.max(), mod.max())
    grid = np.linspace(lo, hi, n_grid)
    p = _kde(subsample(ref, max_kde_points, np.random.default_rng(seed)))(grid)
    q = _kde(subsample(mod, max_kde_points, np.random.default_rng(seed)))(grid)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("a KDE vanishes on the whole grid")
    return float(wasserstein_distance(grid, grid, p / p.sum(), q / q.sum()))


def density_grid_2d(reference: np.ndarray, model: np.ndarray, n_grid: int = 25,
                    padding: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Axes of the 2-D grid spanning both samples with ``padding`` × range on each side.

    Returns:
        ``(xs (n_grid,), ys (n_grid,))``.
    """
    both = np.concatenate([np.asarray(reference), np.asarray(model)])  # (N+M, 2)
    lo, hi = both.min(0), both.max(0)
    pad = padding * (hi - lo)
    return np.linspace(lo[0] - pad[0], hi[0] + pad[0], n_grid), np.linspace(lo[1] - pad[1], hi[1] + pad[1], n_grid)


def wasserstein_2d(reference: np.ndarray, model: np.ndarray, n_grid: int = 25,
                   padding: float = 0.1, max_kde_points: int | None = 5000, seed: int = 0) -> float:
    """W1 between 2-D KDEs on an ``n_grid``² grid (docs/evaluation.md, protocol step 6).

    KDEs of both (N, 2) samples on the grid of :func:`density_grid_2d` (10 % padding),
    normalised, exact transport with Euclidean ground cost (POT ``ot.emd2``).

    Args:
        reference: (N, 2). model: (M, 2).
        n_grid: points per axis (25). padding: fraction of the range added on each side.
        max_kde_points, seed: seeded KDE subsampling.

    Returns:
        W1 in the samples' unit (float ≥ 0).

    Raises:
        ValueError: samples are not (N, 2), fewer than two, or non-finite.
    """
    _check_samples(reference, model, dim=2)
    ref = np.asarray(reference, dtype=np.float64)
    mod = np.asarray(model, dtype=np.float64)
    xs, ys = density_grid_2d(ref, mod, n_grid, padding)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], 1)  # (n_grid², 2)
    p = _kde(subsample(ref, max_kde_points, np.random.default_rng(seed)))(points.T)
    q = _kde(subsample(mod, max_kde_points, np.random.default_rng(seed)))(points.T)
    cost = ot.dist(points, points, metric="euclidean")  # (n_grid², n_grid²)
    return float(ot.emd2(p / p.sum(), q / q.sum(), cost))


__all__ = ["KL_FLOOR", "density_grid_2d", "kl_divergence", "subsample", "wasserstein_1d", "wasserstein_2d"]
