"""Statistics of the pre-registered alanine-dipeptide study ``docs/results/ala2_v2.md``.

Pure numpy/scipy, no I/O. The page's "Metrics", "Analysis" and "Verdict rules" sections are
implemented here; :mod:`hessid.training.evaluation.study_v2_report` only formats the results.

Conventions
    * Every metric handed to the comparison functions is an **error: lower is better**. Metric 3
      (ΔG(αR−β) error, model − reference, signed) enters as its absolute value
      ``|ΔG_model − ΔG_ref|``; a "gain" is a reduction of the error.
    * A *replicate* is one (subset seed, init seed) pair; an arm and FM are compared only on the
      replicates both have (paired design of the page's "Arms" section).
    * Intervals are two-sided, t-based with n − 1 degrees of freedom (page, "Analysis").

Functions
    :func:`paired_difference`        arm − FM over replicates: mean, t-interval, p-value.
    :func:`holm`                     Holm's step-down adjusted p-values.
    :func:`data_multiplier`          m = N'/N from FM's learning curve, paired percentile bootstrap.
    :func:`isotonic_decreasing`      the monotone (pool-adjacent-violators) learning curve it reads.
    :func:`noise_corrected_force_error`  metric 1 with the label noise subtracted.
    :func:`soft_mode_hessian_error`  metric 2 per configuration.
    :func:`smallest_detectable_effect`  t half width of a paired mean.
    :func:`gate`                     the page's gate (criteria 1 and 2).
    :func:`verdict`                  supported / falsified / inconclusive / void per arm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: metric keys the verdict rules name: metric 1 (noise-corrected mean-force error) and metric 3
#: (absolute ΔG(αR−β) error)
METRIC_FORCE = "force_error"
METRIC_DG = "dg_abs_error"
VERDICT_LABELS = ("supported", "falsified", "inconclusive", "void")


# ----------------------------------------------------------------------------- paired differences
@dataclass(frozen=True)
class PairedInterval:
    """Mean of paired differences with its t-interval.

    Attributes:
        mean: mean of ``arm − base`` over the ``n`` usable pairs (metric units); NaN when n = 0.
        low, high: ends of the two-sided ``confidence`` t-interval (n − 1 dof); NaN when n < 2.
        half_width: ``(high − low) / 2``; NaN when n < 2.
        p_value: two-sided p of the one-sample t-test of mean 0; NaN when n < 2.
        n: number of pairs used.
        sd: sample SD of the differences (n − 1 divisor); NaN when n < 2.
        confidence: the interval's nominal coverage.
        dropped: replicate ids (or positions) left out because either value was NaN.
    """

    mean: float
    low: float
    high: float
    half_width: float
    p_value: float
    n: int
    sd: float
    confidence: float
    dropped: tuple = ()

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0 (False when undefined)."""
        return bool(self.low > 0 or self.high < 0)


def _as_pairs(arm, base) -> tuple[list, np.ndarray, np.ndarray]:
    """(ids, arm values, base values) aligned by replicate id (mappings) or by position (sequences)."""
    if isinstance(arm, Mapping) != isinstance(base, Mapping):
        raise TypeError("arm and base must both be mappings {replicate id: value} or both sequences")
    if isinstance(arm, Mapping):
        a_ids, b_ids = set(arm), set(base)
        if a_ids != b_ids:
            only_a = sorted(map(str, a_ids - b_ids))
            only_b = sorted(map(str, b_ids - a_ids))
            raise ValueError(f"pairing broken: replicate ids only in arm {only_a}, only in base {only_b}")
        ids = sorted(arm, key=str)
        return ids, np.array([arm[i] for i in ids], dtype=np.float64), np.array([base[i] for i in ids], dtype=np.float64)
    a, b = np.asarray(arm, dtype=np.float64).ravel(), np.asarray(base, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"pairing broken: {a.size} arm values against {b.size} base values")
    return list(range(a.size)), a, b


def paired_difference(arm, base, confidence: float = 0.95) -> PairedInterval:
    """Paired difference ``arm − base`` over replicates with a t-interval (page, "Analysis").

    d_r = arm_r − base_r, d̄ = mean d_r, s = SD(d_r) (n − 1 divisor), interval
    d̄ ± t_{(1+c)/2, n−1} · s/√n, p = 2·P(T_{n−1} > |d̄|/(s/√n)) (Student's one-sample t-test
    on the differences). A pair with a NaN on either side is dropped (listed in ``dropped``);
    with fewer than 2 pairs left the interval and p are NaN. When s = 0 the interval is the
    point d̄ and p is 0 (d̄ ≠ 0) or 1 (d̄ = 0).

    Args:
        arm: ``{replicate id: value}`` or a (n,) sequence of float (metric units).
        base: the same kind as ``arm``, same ids (or same length), values of the baseline.
        confidence: nominal coverage in (0, 1).

    Returns:
        :class:`PairedInterval`.

    Raises:
        ValueError: the replicate ids (or lengths) differ — the pairing is broken; ``confidence``
            outside (0, 1).
        TypeError: one argument is a mapping and the other is not.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    ids, a, b = _as_pairs(arm, base)
    ok = np.isfinite(a) & np.isfinite(b)
    dropped = tuple(i for i, k in zip(ids, ok, strict=True) if not k)
    d = (a - b)[ok]
    n = int(d.size)
    nan = math.nan
    if n == 0:
        return PairedInterval(nan, nan, nan, nan, nan, 0, nan, confidence, dropped)
    mean = float(d.mean())
    if n < 2:
        return PairedInterval(mean, nan, nan, nan, nan, 1, nan, confidence, dropped)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedInterval(mean, mean - half, mean + half, half, p, n, sd, confidence, dropped)


def smallest_detectable_effect(sd_diff: float, n: int, confidence: float = 0.95) -> float:
    """Half width t_{(1+c)/2, n−1} · σ_d / √n of a paired mean (page, "Smallest detectable effect").

    A paired mean difference smaller than this cannot exclude 0 at that σ_d. For n = 4 and
    c = 0.95: t = 3.182, so ≈ 1.59 σ_d (the page's "≈ 1.6 σ_d").

    Args:
        sd_diff: SD of the paired differences σ_d (metric units), ≥ 0.
        n: number of pairs, ≥ 2.
        confidence: nominal coverage in (0, 1).

    Returns:
        the half width, metric units.

    Raises:
        ValueError: n < 2, sd_diff < 0, or confidence outside (0, 1).
    """
    if int(n) < 2:
        raise ValueError(f"need n ≥ 2 pairs, got {n}")
    if not sd_diff >= 0:
        raise ValueError(f"sd_diff must be ≥ 0, got {sd_diff}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(stats.t.ppf(0.5 + confidence / 2.0, int(n) - 1) * sd_diff / math.sqrt(int(n)))


# ----------------------------------------------------------------------------- Holm
def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 6, 65 (1979)).

    With p_(1) ≤ … ≤ p_(m) sorted: p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)); hypothesis i
    is rejected at family-wise level α iff p̃_i ≤ α. The result is monotone in the raw p
    (p_i ≤ p_j ⇒ p̃_i ≤ p̃_j) and p ≤ p̃ ≤ 1. Ties are broken by position (stable sort) and get
    equal adjusted values.

    A NaN p (a comparison of the pre-registered family that could not be made) **counts in m**
    — the family is fixed in advance, so a missing comparison does not make the others less
    strictly corrected — is ordered last, and its adjusted value is NaN.

    Args:
        pvalues: (m,) array-like of p-values in [0, 1] or NaN.

    Returns:
        (m,) float64 adjusted p-values, in the input order.

    Raises:
        ValueError: a finite p outside [0, 1], or input not one-dimensional.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(np.where(finite, p, np.inf), kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * np.where(finite, p, 1.0)[order])
    adj_sorted = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adj_sorted
    out[~finite] = np.nan
    return out


# ----------------------------------------------------------------------------- data multiplier
@dataclass(frozen=True)
class MultiplierEstimate:
    """Data multiplier m = N'/N with its paired percentile-bootstrap interval.

    A value read outside FM's measured sizes is **censored**, never extrapolated: the arm's
    metric is better than FM's fitted curve at its largest size → m > N_max/N (censor ``">"``,
    value N_max/N); worse than at its smallest size → m < N_min/N (censor ``"<"``, value
    N_min/N). The interval ends carry their own censor marks: ``low_censor == "<"`` means the
    lower end lies below N_min/N (the data do not bound m from below), ``high_censor == ">"``
    that the upper end lies above N_max/N.

    Attributes:
        m: point estimate (or the bound when ``censor`` is set), dimensionless.
        censor: ``""``, ``">"`` or ``"<"``.
        low, high: interval ends (or bounds, see ``low_censor`` / ``high_censor``).
        low_censor, high_censor: ``""``, ``">"`` or ``"<"``.
        n_prime: FM size N' that matches the arm (or the bound), frames.
        arm_size: N, frames.
        n_replicates: replicates used (those finite in the arm and at every FM size).
        n_boot: bootstrap resamples.
        confidence: nominal coverage of the interval.
        fm_fit: (S,) the monotone (isotonic, non-increasing) FM curve the point estimate used.
    """

    m: float
    censor: str
    low: float
    high: float
    low_censor: str
    high_censor: str
    n_prime: float
    arm_size: float
    n_replicates: int
    n_boot: int
    confidence: float
    fm_fit: tuple = field(default=())

    def at_least(self, x: float) -> bool:
        """True when the point estimate establishes m ≥ x (a ``"<"`` censored m never does)."""
        if self.censor == "<" or not math.isfinite(self.m):
            return False
        return self.m >= x

    @property
    def excludes_one_above(self) -> bool:
        """True when the whole interval lies above 1 (the arm needs fewer frames than FM)."""
        if self.low_censor == "<" or not math.isfinite(self.low):
            return False
        return self.low > 1.0 or (self.low_censor == ">" and self.low >= 1.0)

    def format(self, digits: int = 2) -> str:
        """``"3.1 [1.4, > 16]"``-style text of the estimate and interval."""
        def one(v, c):
            if not math.isfinite(v):
                return "—"
            text = f"{v:.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"
            return f"{c} {text}" if c else text
        return f"{one(self.m, self.censor)} [{one(self.low, self.low_censor)}, {one(self.high, self.high_censor)}]"


def isotonic_decreasing(y, weights=None) -> np.ndarray:
    """Weighted least-squares non-increasing fit of a sequence (pool-adjacent-violators).

    argmin_g Σ w_i (y_i − g_i)² subject to g_1 ≥ g_2 ≥ … (Barlow, Bartholomew, Bremner & Brunk,
    *Statistical Inference under Order Restrictions*, 1972): adjacent values that violate the
    order are pooled into their weighted mean until none does. A non-increasing input is returned
    unchanged.

    Args:
        y: (S,) float values in order (e.g. a learning curve by increasing size).
        weights: (S,) positive weights, or None for equal weights.

    Returns:
        (S,) float64 fitted values, non-increasing.

    Raises:
        ValueError: shapes differ, y is not one-dimensional, or a weight is not positive.
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if y.ndim != 1 or w.shape != y.shape or np.any(~(w > 0)):
        raise ValueError(f"need (S,) values and (S,) positive weights, got {y.shape} and {w.shape}")
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for yi, wi in zip(y, w, strict=True):
        blocks.append([float(yi), float(wi), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:  # violates non-increasing
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, m) for m, _, c in blocks])


def _inverse_size(sizes: np.ndarray, g: np.ndarray, target: float, log_interp: bool) -> tuple[float, str]:
    """Smallest size N' at which the non-increasing piecewise-linear curve g reaches ≤ target.

    g is linear in log N (``log_interp``) or in N between the nodes ``sizes``. Returns (N', censor)
    with censor ``">"`` (target below g at the last size: N' > N_max, returns N_max) or ``"<"``
    (target above g at the first size: N' < N_min, returns N_min); a node is returned exactly.
    """
    if target < g[-1]:
        return float(sizes[-1]), ">"
    if target > g[0]:
        return float(sizes[0]), "<"
    k = int(np.argmax(g <= target))  # first node at or below the target (exists: g[-1] ≤ target)
    if k == 0 or g[k] == target:
        return float(sizes[k]), ""
    # g[k-1] > target > g[k]: linear between nodes k-1 and k
    t = (g[k - 1] - target) / (g[k - 1] - g[k])
    if log_interp:
        return float(sizes[k - 1] * (sizes[k] / sizes[k - 1]) ** t), ""
    return float(sizes[k - 1] + t * (sizes[k] - sizes[k - 1])), ""


def data_multiplier(fm_sizes, fm_values, arm_values, arm_size: float, n_boot: int = 10_000, seed: int = 0,
                    log_interp: bool = True, confidence: float = 0.95) -> MultiplierEstimate:
    """Data multiplier of an arm against FM's learning curve (page, "Analysis": data multiplier m).

    Point estimate: ȳ_s = mean over replicates of FM's metric at size N_s; ĝ = the non-increasing
    (isotonic) least-squares fit of ȳ against N (pool-adjacent-violators, equal weights), so that
    a learning curve made non-monotone by noise still has a unique inverse — a pooled, flat stretch
    takes the **smallest** N of the stretch (the conservative choice for the arm); ĝ is linear in
    log N between measured sizes (``log_interp``; linear in N otherwise). N' = the smallest N with
    ĝ(N) ≤ ā (ā: the arm's mean metric), m = N'/N. Outside [N_min, N_max] m is censored, never
    extrapolated (see :class:`MultiplierEstimate`).

    Interval: percentile bootstrap over replicates, FM and arm resampled **together** (one draw of
    R replicate indices with replacement sets both curves): the (1 − c)/2 and (1 + c)/2 order
    statistics of the resampled m, with censored resamples placed at ±∞ so that an interval end
    falling among them is reported censored. Only the distinct multisets of drawn replicates are
    evaluated (the result equals evaluating every resample). With 4 replicates there are only 35
    distinct multisets: the interval is coarse and its coverage is not guaranteed (pre-registered
    nonetheless).

    Args:
        fm_sizes: (S,) FM training-set sizes, frames, strictly increasing, > 0.
        fm_values: (R, S) FM metric per replicate (row) and size (column); lower is better.
        arm_values: (R,) the arm's metric at ``arm_size``, same replicate order as ``fm_values``.
        arm_size: N, frames, > 0.
        n_boot: bootstrap resamples (≥ 1).
        seed: seed of ``numpy.random.default_rng`` for the resampling.
        log_interp: interpolate in log N (the page) or in N.
        confidence: nominal coverage in (0, 1).

    Returns:
        :class:`MultiplierEstimate`. Replicates with a NaN in the arm or at any FM size are
        dropped (``n_replicates``); with none left every field is NaN.

    Raises:
        ValueError: shapes inconsistent, fewer than 2 sizes, sizes not increasing or not positive,
            ``arm_size`` ≤ 0, ``n_boot`` < 1 or ``confidence`` outside (0, 1).
    """
    sizes = np.asarray(fm_sizes, dtype=np.float64).ravel()
    fm = np.asarray(fm_values, dtype=np.float64)
    arm = np.asarray(arm_values, dtype=np.float64).ravel()
    if fm.ndim != 2 or fm.shape[1] != sizes.size or fm.shape[0] != arm.size:
        raise ValueError(f"need fm_values (R, S) with S = {sizes.size} sizes and R = {arm.size} arm values, "
                         f"got {fm.shape}")
    if sizes.size < 2 or np.any(sizes <= 0) or np.any(np.diff(sizes) <= 0):
        raise ValueError(f"fm_sizes must be ≥ 2 positive, strictly increasing sizes, got {sizes.tolist()}")
    if not arm_size > 0:
        raise ValueError(f"arm_size must be > 0, got {arm_size}")
    if int(n_boot) < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need n_boot ≥ 1 and confidence in (0, 1), got {n_boot}, {confidence}")
    ok = np.isfinite(arm) & np.all(np.isfinite(fm), axis=1)
    fm, arm = fm[ok], arm[ok]
    r = int(arm.size)
    nan = math.nan
    if r == 0:
        return MultiplierEstimate(nan, "", nan, nan, "", "", nan, float(arm_size), 0, int(n_boot), confidence)

    def estimate(weights: np.ndarray) -> tuple[float, str, np.ndarray]:
        g = isotonic_decreasing(weights @ fm)
        n_p, c = _inverse_size(sizes, g, float(weights @ arm), log_interp)
        return n_p, c, g

    n_prime, censor, g_hat = estimate(np.full(r, 1.0 / r))
    m_hat = n_prime / float(arm_size)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, r, size=(int(n_boot), r))
    counts = np.zeros((int(n_boot), r), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(int(n_boot)), r), draws.ravel()), 1)
    uniq, inverse = np.unique(counts, axis=0, return_inverse=True)
    log_m = np.empty(len(uniq))
    for i, cnt in enumerate(uniq):
        np_i, c_i, _ = estimate(cnt / r)
        log_m[i] = math.inf if c_i == ">" else -math.inf if c_i == "<" else math.log(np_i / float(arm_size))
    boot = np.sort(log_m[np.asarray(inverse).ravel()])
    b = boot.size
    alpha = 1.0 - confidence
    lo = boot[max(0, int(math.floor(alpha / 2.0 * b)))]
    hi = boot[min(b - 1, int(math.ceil((1.0 - alpha / 2.0) * b)) - 1)]
    m_min, m_max = sizes[0] / float(arm_size), sizes[-1] / float(arm_size)

    def end(v: float) -> tuple[float, str]:
        if v == math.inf:
            return float(m_max), ">"
        if v == -math.inf:
            return float(m_min), "<"
        return float(math.exp(v)), ""

    (low, lc), (high, hc) = end(lo), end(hi)
    return MultiplierEstimate(float(m_hat), censor, low, high, lc, hc, float(n_prime), float(arm_size), r,
                              int(n_boot), confidence, tuple(float(v) for v in g_hat))


# ----------------------------------------------------------------------------- metrics 1 and 2
@dataclass(frozen=True)
class ForceError:
    """Metric 1 on held-out configurations, with and without the label-noise correction.

    Attributes:
        rms: noise-corrected RMS per bead of F_θ − F, kcal/mol/Å (0 when clipped).
        relative: ``rms`` ÷ noise-corrected RMS per bead of F, dimensionless.
        uncorrected_rms: RMS per bead of F_θ − F̂ (biased up by the label noise), kcal/mol/Å.
        noise_rms: RMS per bead of the label standard errors, √(mean tr Var F̂ / n), kcal/mol/Å.
        label_rms: noise-corrected RMS per bead of F, kcal/mol/Å.
        clipped: True when the corrected mean square came out negative and was set to 0 (the
            model is closer to the labels than their noise resolves).
    """

    rms: float
    relative: float
    uncorrected_rms: float
    noise_rms: float
    label_rms: float
    clipped: bool


def noise_corrected_force_error(pred, label, label_sem) -> ForceError:
    """Noise-corrected mean-force error (page, "Metrics" 1; "Test labels").

    The label F̂(R) is a sample mean of the instantaneous CG force with E F̂ = F and covariance
    Var F̂, so E‖F_θ − F̂‖² = ‖F_θ − F‖² + tr Var F̂ (cross term zero in expectation). With
    tr Var F̂ estimated by Σ SEM² over beads and components (block standard errors):

        rms² = (1/(C n)) Σ_c (‖F_θ(R_c) − F̂(R_c)‖² − Σ SEM_c²),
        label_rms² = (1/(C n)) Σ_c (‖F̂(R_c)‖² − Σ SEM_c²),   relative = rms / label_rms.

    The correction is applied to the **average** over configurations (clipping per configuration
    would bias it upward); a negative average is clipped at 0 and flagged (``clipped``).

    Args:
        pred: (C, n, 3) model forces −∇U_θ at the test configurations, kcal/mol/Å.
        label: (C, n, 3) mean-force labels F̂, kcal/mol/Å.
        label_sem: (C, n, 3) standard errors of the labels (block SEM), kcal/mol/Å, ≥ 0.

    Returns:
        :class:`ForceError`.

    Raises:
        ValueError: shapes differ or are not (C, n, 3); a SEM negative; a value not finite.
    """
    p, y, s = (np.asarray(a, dtype=np.float64) for a in (pred, label, label_sem))
    if not (p.shape == y.shape == s.shape) or p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"need pred, label, label_sem of one shape (C, n, 3), got {p.shape}, {y.shape}, {s.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(y)) and np.all(np.isfinite(s))):
        raise ValueError("pred, label and label_sem must be finite")
    if np.any(s < 0):
        raise ValueError("label_sem must be ≥ 0")
    per_bead = p.shape[0] * p.shape[1]
    noise_ms = float(np.sum(s**2)) / per_bead
    raw_ms = float(np.sum((p - y) ** 2)) / per_bead
    corr_ms = raw_ms - noise_ms
    label_ms = float(np.sum(y**2)) / per_bead - noise_ms
    clipped = corr_ms < 0
    rms = math.sqrt(max(corr_ms, 0.0))
    label_rms = math.sqrt(label_ms) if label_ms > 0 else math.nan
    return ForceError(rms, rms / label_rms if label_ms > 0 else math.nan, math.sqrt(raw_ms), math.sqrt(noise_ms),
                      label_rms, bool(clipped))


def soft_mode_hessian_error(model_H, label_H, n_soft: int = 11) -> np.ndarray:
    """Soft-mode Hessian error per configuration (page, "Metrics" 2).

    With V_s the eigenvectors of sym(H) = (H + Hᵀ)/2 for its ``n_soft`` smallest (algebraic)
    eigenvalues: ‖V_sᵀ(sym(H_θ) − sym(H))V_s‖_F / ‖V_sᵀ sym(H) V_s‖_F. For the 5-bead map
    (3n = 15) n_soft = 11 leaves out the 4 stiff bond modes the prior fits. This is the
    computation of :func:`hessid.training.pipelines.ala2.hessian_soft_relative_error` with
    ``n_stiff = 3n − n_soft`` (which calls this function).

    Args:
        model_H: (C, d, d) model Hessians ∇²U_θ, kcal/mol/Å² (d = 3n).
        label_H: (C, d, d) label CG Hessians ⟨P∇²UPᵀ⟩ − β Ĉov(Pf), kcal/mol/Å².
        n_soft: soft modes kept, 1 ≤ n_soft ≤ d.

    Returns:
        (C,) float64, dimensionless.

    Raises:
        ValueError: shapes differ or are not (C, d, d); ``n_soft`` out of range; a label soft
            block is zero.
    """
    m, r = np.asarray(model_H, dtype=np.float64), np.asarray(label_H, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"need two (C, d, d) stacks of equal shape, got {m.shape} and {r.shape}")
    d = m.shape[1]
    if not 1 <= int(n_soft) <= d:
        raise ValueError(f"n_soft must lie in [1, {d}], got {n_soft}")
    sym = 0.5 * (r + r.transpose(0, 2, 1))
    _, vecs = np.linalg.eigh(sym)  # ascending eigenvalues
    v = vecs[:, :, : int(n_soft)]
    ms = 0.5 * (m + m.transpose(0, 2, 1))
    num = np.linalg.norm(np.einsum("bip,bij,bjq->bpq", v, ms - sym, v).reshape(m.shape[0], -1), axis=1)
    den = np.linalg.norm(np.einsum("bip,bij,bjq->bpq", v, sym, v).reshape(m.shape[0], -1), axis=1)
    if np.any(den == 0):
        raise ValueError("a reference soft block is zero: relative error undefined")
    return num / den


# ----------------------------------------------------------------------------- gate and verdict
@dataclass(frozen=True)
class GateResult:
    """The page's gate: criterion 1 (ΔG at 16 000 frames) and criterion 2 (FM improves 250 → 4000).

    Attributes:
        passed: both criteria hold.
        dg_mean: mean over replicates of the signed ΔG error at the gate size, kcal/mol.
        dg_ok: ``|dg_mean| ≤ tolerance``.
        force_diff: paired metric 1 at the large size − at the small size (negative: improves).
        force_ok: the interval of ``force_diff`` lies entirely below 0.
        reason: one sentence naming what failed, or that both held.
    """

    passed: bool
    dg_mean: float
    dg_ok: bool
    force_diff: PairedInterval
    force_ok: bool
    reason: str


def gate(dg_errors, force_small, force_large, tolerance: float = 0.2, confidence: float = 0.95) -> GateResult:
    """The page's gate (section "Gate").

    1. ΔG(αR−β) within ``tolerance`` of the reference at 16 000 frames, mean of the replicates:
       |mean_r (ΔG_r − ΔG_ref)| ≤ tolerance (a NaN replicate makes it fail).
    2. FM improves significantly from 250 to 4000 frames on the noise-corrected metric 1: the
       paired ``confidence`` interval of (4000 − 250) lies below 0 (an interval above 0 — FM got
       worse — does not pass).

    Args:
        dg_errors: (R,) signed ΔG errors of FM at 16 000 frames, kcal/mol.
        force_small: FM metric 1 at 250 frames, ``{replicate id: value}`` (or a sequence), kcal/mol/Å.
        force_large: the same at 4000 frames, same ids.
        tolerance: kcal/mol.
        confidence: nominal coverage.

    Returns:
        :class:`GateResult`.

    Raises:
        ValueError: the replicate ids of ``force_small`` and ``force_large`` differ.
    """
    dg = np.asarray(dg_errors, dtype=np.float64).ravel()
    dg_mean = float(dg.mean()) if dg.size and np.all(np.isfinite(dg)) else math.nan
    dg_ok = bool(math.isfinite(dg_mean) and abs(dg_mean) <= tolerance)
    diff = paired_difference(force_large, force_small, confidence)
    force_ok = bool(diff.high < 0)
    parts = []
    parts.append(f"ΔG error at the gate size {dg_mean:+.2f} kcal/mol ({'within' if dg_ok else 'not within'} "
                 f"±{tolerance:g})")
    parts.append(f"metric 1 changed by {diff.mean:+.3g} [{diff.low:+.3g}, {diff.high:+.3g}] kcal/mol/Å from the "
                 f"small to the large size ({'a significant improvement' if force_ok else 'not a significant improvement'})")
    reason = ("gate passed: " if dg_ok and force_ok else "gate failed: ") + "; ".join(parts) + "."
    return GateResult(dg_ok and force_ok, dg_mean, dg_ok, diff, force_ok, reason)


@dataclass(frozen=True)
class Comparison:
    """One arm − FM comparison at one size on one metric (input of :func:`verdict`).

    Attributes:
        metric: :data:`METRIC_FORCE` (metric 1) or :data:`METRIC_DG` (metric 3, absolute error).
        size: nominal training-set size N, frames.
        diff: paired arm − FM (negative: the arm is better).
        p_adjusted: Holm-adjusted p across the pre-registered family (NaN when not in it).
        multiplier: data multiplier at this size and metric, or None.
        fm_mean: FM's mean metric at this size (the scale of the 25 % margin of metric 1).
    """

    metric: str
    size: int
    diff: PairedInterval
    p_adjusted: float
    multiplier: MultiplierEstimate | None
    fm_mean: float


@dataclass(frozen=True)
class Verdict:
    """Verdict of one arm: ``label`` in :data:`VERDICT_LABELS` and the plain-words ``reason``."""

    label: str
    reason: str


def _metric_name(metric: str) -> str:
    return {METRIC_FORCE: "the mean-force error (metric 1)", METRIC_DG: "the ΔG error (metric 3)"}.get(metric, metric)


def verdict(arm: str, gate_passed: bool, comparisons: Sequence[Comparison], alpha: float = 0.05,
            min_multiplier: float = 2.0, max_supported_size: int = 1000, dg_margin: float = 0.3,
            force_margin_rel: float = 0.25, adjusted: bool = True) -> Verdict:
    """The page's verdict rules for one arm (section "Verdict rules"), checked in the page's order.

    * **void**: ``gate_passed`` is False.
    * **supported**: at some N ≤ ``max_supported_size`` on metric 3 or metric 1: m establishes
      ≥ ``min_multiplier`` (:meth:`MultiplierEstimate.at_least`), m's bootstrap interval lies
      above 1 (:attr:`MultiplierEstimate.excludes_one_above`), and the Holm-adjusted p of the
      paired difference at that size and metric is ≤ ``alpha`` with the arm better (mean < 0).
    * **falsified**: at every size the arm has, the 95 % interval of arm − FM excludes a gain
      larger than ``dg_margin`` kcal/mol on metric 3 (low > −dg_margin) **and** larger than
      ``force_margin_rel`` × FM's mean on metric 1 (low > −force_margin_rel · fm_mean). Reading
      of the page: "soft-mode mean-force error" is taken to be metric 1 and "25 %" relative to
      FM's metric 1 at that size. A size or metric with no interval (NaN) cannot falsify.
    * **inconclusive**: neither.

    If both "supported" and "falsified" hold (a significant gain smaller than the margins), the
    page's order makes it **supported**, and the reason says that the falsification condition
    also held.

    Args:
        arm: the arm's name (used in the reason).
        gate_passed: outcome of :func:`gate` (after the page's gate attempts).
        comparisons: every :class:`Comparison` of this arm (metrics 1 and 3, every size).
        alpha: family-wise level of the Holm-adjusted p.
        min_multiplier: m threshold of "supported".
        max_supported_size: largest N at which "supported" may be earned, frames.
        dg_margin: kcal/mol.
        force_margin_rel: fraction of FM's metric 1.
        adjusted: the comparisons' ``p_adjusted`` are Holm-adjusted (the family's arms); False
            for an arm outside the family judged on unadjusted p (only the wording changes).

    Returns:
        :class:`Verdict`.

    Raises:
        ValueError: a comparison names a metric other than metric 1 or 3.
    """
    for c in comparisons:
        if c.metric not in (METRIC_FORCE, METRIC_DG):
            raise ValueError(f"comparison metric must be {METRIC_FORCE!r} or {METRIC_DG!r}, got {c.metric!r}")
    if not gate_passed:
        return Verdict("void", f"{arm}: void — the gate failed, so no arm is judged.")
    support = []
    for c in sorted(comparisons, key=lambda c: (c.size, c.metric != METRIC_DG)):
        mult = c.multiplier
        if (c.size <= max_supported_size and mult is not None and mult.at_least(min_multiplier)
                and mult.excludes_one_above and c.p_adjusted <= alpha and c.diff.mean < 0):
            support.append(c)
    sizes = sorted({c.size for c in comparisons})
    fals_fail = []
    for n in sizes:
        for metric in (METRIC_DG, METRIC_FORCE):
            cs = [c for c in comparisons if c.size == n and c.metric == metric]
            if not cs:
                fals_fail.append(f"no {_metric_name(metric)} comparison at {n} frames")
                continue
            c = cs[0]
            margin = dg_margin if metric == METRIC_DG else force_margin_rel * c.fm_mean
            if not (math.isfinite(c.diff.low) and math.isfinite(margin) and c.diff.low > -margin):
                fals_fail.append(f"at {n} frames the interval of {_metric_name(metric)} allows a gain of "
                                 f"{-c.diff.low:.3g} (margin {margin:.3g})" if math.isfinite(c.diff.low)
                                 else f"at {n} frames {_metric_name(metric)} has no interval")
    falsified = bool(sizes) and not fals_fail
    if support:
        c = support[0]
        why = (f"{arm}: supported — at {c.size} frames on {_metric_name(c.metric)} the arm matches FM trained on "
               f"m = {c.multiplier.format()} times as many frames (interval above 1), and its paired difference "
               f"{c.diff.mean:+.3g} [{c.diff.low:+.3g}, {c.diff.high:+.3g}] is significant "
               f"{'after Holm' if adjusted else 'without adjustment'} (p = {c.p_adjusted:.3g} ≤ {alpha:g}).")
        if falsified:
            why += (" The falsification condition also held (every gain is smaller than the margins); "
                    "the page's order makes this supported.")
        return Verdict("supported", why)
    if falsified:
        return Verdict("falsified", f"{arm}: falsified — the gate passed and at every size "
                       f"({', '.join(map(str, sizes))} frames) the 95 % intervals exclude gains larger than "
                       f"{dg_margin:g} kcal/mol in ΔG error and {100 * force_margin_rel:g} % of FM's mean-force "
                       "error.")
    why_not = (f"no size ≤ {max_supported_size} frames had m ≥ {min_multiplier:g} with its interval above 1 "
               f"and a {'Holm-' if adjusted else ''}significant gain")
    return Verdict("inconclusive", f"{arm}: inconclusive — {why_not}; not falsified because "
                   + (fals_fail[0] if fals_fail else "the arm has no comparisons") + ".")


__all__ = [
    "METRIC_DG", "METRIC_FORCE", "VERDICT_LABELS", "Comparison", "ForceError", "GateResult", "MultiplierEstimate",
    "PairedInterval", "Verdict", "data_multiplier", "gate", "holm", "isotonic_decreasing", "noise_corrected_force_error",
    "paired_difference", "smallest_detectable_effect", "soft_mode_hessian_error", "verdict",
]
