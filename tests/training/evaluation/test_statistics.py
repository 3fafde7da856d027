"""Statistics of the ala2_v2 study (training/evaluation/statistics.py) and its report writer.

Each estimator test has a negative control that the same assertion rejects."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from hessid.training.evaluation.statistics import (
    METRIC_DG,
    METRIC_FORCE,
    VERDICT_LABELS,
    Comparison,
    MultiplierEstimate,
    PairedInterval,
    data_multiplier,
    gate,
    holm,
    isotonic_decreasing,
    noise_corrected_force_error,
    paired_difference,
    smallest_detectable_effect,
    soft_mode_hessian_error,
    verdict,
)
from hessid.training.evaluation.study_v2_report import (
    FAMILY_ARMS,
    write_ala2_v2_gate,
    write_ala2_v2_results,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = np.array([250.0, 1000.0, 4000.0, 16000.0, 64000.0])


# ----------------------------------------------------------------------------- paired t-interval
def test_paired_t_interval_covers_the_mean_at_its_nominal_rate_and_a_z_interval_does_not():
    """Law: over many normal draws with n = 4 pairs the 95 % t-interval covers the true mean
    difference 95 % of the time. Tolerance: the coverage count is Binomial(D, 0.95), SD
    √(0.95·0.05/D) = 0.0034 for D = 4000; ± 4 SD = ± 0.014. Negative control: the z-interval
    (1.96 instead of t(0.975, 3) = 3.18) covers P(|T₃| ≤ 1.96) ≈ 0.855 and fails the same check."""
    rng = np.random.default_rng(12)
    n_draws, n, delta = 4000, 4, 0.3
    tol = 4 * math.sqrt(0.95 * 0.05 / n_draws)
    base = rng.normal(1.0, 0.5, size=(n_draws, n))
    arm = base + delta + rng.normal(0.0, 0.2, size=(n_draws, n))  # correlated pairs, as in the study
    t_cover = z_cover = 0
    for a, b in zip(arm, base, strict=True):
        d = paired_difference(a, b)
        t_cover += d.low <= delta <= d.high
        z_half = 1.959964 * d.sd / math.sqrt(n)
        z_cover += d.mean - z_half <= delta <= d.mean + z_half
    assert abs(t_cover / n_draws - 0.95) < tol, t_cover / n_draws
    assert abs(z_cover / n_draws - 0.95) > tol, z_cover / n_draws  # negative control fails the check


def test_paired_p_value_is_dual_to_the_interval_and_uniform_under_the_null():
    """Law: p ≤ 1 − c exactly when the c-interval excludes 0; under H0 the rate of p ≤ 0.05 is
    0.05 (Binomial tolerance ± 4·√(0.05·0.95/2000) = ± 0.020). Negative control: with a true shift
    of 1 SD of the difference the rate is far above it."""
    rng = np.random.default_rng(3)
    for shift, expect_null in ((0.0, True), (1.0, False)):
        hits = 0
        for _ in range(2000):
            d = paired_difference(rng.normal(shift, 1.0, 6), np.zeros(6))
            assert (d.p_value <= 0.05) == d.excludes_zero or math.isclose(d.p_value, 0.05, abs_tol=1e-12)
            hits += d.p_value <= 0.05
        near = abs(hits / 2000 - 0.05) < 4 * math.sqrt(0.05 * 0.95 / 2000)
        assert near == expect_null, (shift, hits / 2000)


def test_paired_difference_pairs_by_replicate_id_drops_nan_pairs_and_refuses_a_broken_pairing():
    arm = {(0, 0): 1.0, (0, 1): 2.0, (1, 0): 1.5, (1, 1): 0.5}
    base = {(1, 1): 0.7, (1, 0): 1.2, (0, 1): 2.5, (0, 0): 1.1}  # other insertion order
    d = paired_difference(arm, base)
    diffs = np.array([1.0 - 1.1, 2.0 - 2.5, 1.5 - 1.2, 0.5 - 0.7])
    assert d.n == 4 and d.mean == pytest.approx(diffs.mean()) and d.sd == pytest.approx(diffs.std(ddof=1))
    t = stats.ttest_1samp(diffs, 0.0)
    assert d.p_value == pytest.approx(t.pvalue, rel=1e-10)
    # positional pairing of the same numbers in insertion order mispairs them: same mean, other spread
    assert paired_difference(list(arm.values()), list(base.values())).sd != pytest.approx(d.sd)
    with pytest.raises(ValueError, match=r"pairing broken.*only in arm \['\(2, 0\)'\]"):
        paired_difference({**arm, (2, 0): 1.0}, base)
    with pytest.raises(ValueError, match="pairing broken"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(TypeError):
        paired_difference(arm, list(base.values()))
    nan = paired_difference({**arm, (0, 0): math.nan}, base)
    assert nan.n == 3 and nan.dropped == ((0, 0),) and math.isfinite(nan.high)
    one = paired_difference([1.0, math.nan], [0.5, 0.0])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.p_value)
    const = paired_difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert const.p_value == 0.0 and const.low == const.high == 1.0


def test_smallest_detectable_effect_is_the_pre_registered_1_6_sigma_at_four_pairs():
    """The page: t(0.975, 3) · σ_d / 2 ≈ 1.6 σ_d. It equals the half width of an observed interval."""
    assert smallest_detectable_effect(1.0, 4) == pytest.approx(stats.t.ppf(0.975, 3) / 2) == pytest.approx(1.591, abs=1e-3)
    x = np.array([0.1, -0.2, 0.3, 0.05])
    assert smallest_detectable_effect(x.std(ddof=1), 4) == pytest.approx(paired_difference(x, np.zeros(4)).half_width)
    with pytest.raises(ValueError, match="n ≥ 2"):
        smallest_detectable_effect(1.0, 1)


# ----------------------------------------------------------------------------- Holm
def test_holm_matches_hand_worked_examples_and_is_less_conservative_than_bonferroni():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    0.04·1 = 0.04 → running max 0.06. Negative control: Bonferroni (m·p) gives 0.04 and 0.16 for
    the first two and would not be accepted as Holm."""
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert not np.allclose(np.minimum(1, 4 * np.array(p)), holm(p))
    # capping at 1 and ties: (0.3, 0.3, 0.9) → 0.9, 0.9, 0.9
    np.testing.assert_allclose(holm([0.3, 0.9, 0.3]), [0.9, 0.9, 0.9])
    np.testing.assert_allclose(holm([0.2]), [0.2])
    # a missing comparison counts in the family: (0.01, NaN, 0.03) uses m = 3
    out = holm([0.01, math.nan, 0.03])
    np.testing.assert_allclose(out[[0, 2]], [0.03, 0.06])
    assert math.isnan(out[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def _holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
    """The step-down procedure itself: reject p_(1..k) where k is the first i with p_(i) > α/(m − i + 1)."""
    order = np.argsort(p, kind="stable")
    reject = np.zeros(p.size, bool)
    for i, j in enumerate(order):
        if p[j] > alpha / (p.size - i):
            break
        reject[j] = True
    return reject


@settings(max_examples=200, deadline=None)
@given(p=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=24), alpha=st.floats(0.001, 0.2))
def test_holm_adjusted_p_is_monotone_bounded_and_rejects_exactly_as_the_step_down_procedure(p, alpha):
    """Laws: p_i ≤ p_j ⇒ p̃_i ≤ p̃_j; p ≤ p̃ ≤ 1; p̃_i ≤ α ⇔ step-down rejects H_i."""
    p = np.array(p)
    adj = holm(p)
    i, j = np.meshgrid(np.arange(p.size), np.arange(p.size))
    assert np.all(adj[i][p[i] <= p[j]] <= adj[j][p[i] <= p[j]] + 1e-15)
    assert np.all(p <= adj + 1e-15) and np.all(adj <= 1.0)
    ref = _holm_rejects(p, alpha)
    borderline = np.isclose(adj, alpha, rtol=1e-9)
    assert np.array_equal((adj <= alpha)[~borderline], ref[~borderline])


# ----------------------------------------------------------------------------- data multiplier
def test_isotonic_fit_pools_adjacent_violators():
    np.testing.assert_allclose(isotonic_decreasing([1.0, 0.8, 0.85, 0.6]), [1.0, 0.825, 0.825, 0.6])
    np.testing.assert_allclose(isotonic_decreasing([1.0, 1.2, 0.5]), [1.1, 1.1, 0.5])
    np.testing.assert_allclose(isotonic_decreasing([3.0, 2.0, 1.0]), [3.0, 2.0, 1.0])


def test_data_multiplier_is_exact_on_a_curve_linear_in_log_n_and_log_interpolation_matters():
    """y = 1 − 0.1 ln N is linear in ln N, so the piecewise-linear inverse is exact at any m
    (here m = 3: N' = 750 between the nodes 250 and 1000). Negative control: interpolating in N
    instead of ln N puts N' elsewhere."""
    curve = 1.0 - 0.1 * np.log(SIZES)
    fm = np.tile(curve, (4, 1))
    arm = np.full(4, 1.0 - 0.1 * np.log(750.0))
    e = data_multiplier(SIZES, fm, arm, 250, n_boot=200)
    assert e.m == pytest.approx(3.0, rel=1e-12) and e.censor == "" and e.n_prime == pytest.approx(750.0)
    assert e.low == pytest.approx(3.0) and e.high == pytest.approx(3.0)  # no replicate spread
    lin = data_multiplier(SIZES, fm, arm, 250, n_boot=200, log_interp=False)
    assert abs(lin.m - 3.0) > 0.1


def test_data_multiplier_recovers_a_power_law_gain_and_its_bootstrap_interval_covers_it():
    """FM: y = 2 N^−0.3 with 3 % multiplicative replicate noise; the arm at N = 250 has FM's value
    at 1000 frames (true m = 4). Point estimate within the noise-induced spread, the 95 % interval
    covers 4 and excludes 1 and 8. Negative control: an arm equal to FM at 250 (no gain) gets an
    interval that contains 1 or is censored below."""
    rng = np.random.default_rng(5)
    r = 6
    fm = 2.0 * SIZES[None] ** -0.3 * (1 + 0.03 * rng.standard_normal((r, SIZES.size)))
    arm = 2.0 * 1000.0**-0.3 * (1 + 0.03 * rng.standard_normal(r))
    e = data_multiplier(SIZES, fm, arm, 250, n_boot=2000, seed=1)
    assert e.censor == "" and e.low < 4.0 < e.high and e.excludes_one_above and e.at_least(2.0)
    assert e.high < 8.0 and e.m == pytest.approx(4.0, rel=0.5)
    null = data_multiplier(SIZES, fm, 2.0 * 250.0**-0.3 * (1 + 0.03 * rng.standard_normal(r)), 250, n_boot=2000)
    assert not null.excludes_one_above and not null.at_least(2.0)
    # deterministic for a seed
    assert data_multiplier(SIZES, fm, arm, 250, n_boot=2000, seed=1) == e


def test_data_multiplier_resamples_fm_and_arm_jointly():
    """An arm equal, replicate by replicate, to FM at 1000 frames has m = 4 in every joint
    resample although the replicates differ a lot (±20 %, common to all sizes of a replicate):
    the interval is the point. Negative control: the same arm values attached to the wrong
    replicates (a cyclic shift) give the same point estimate but a wide interval."""
    rng = np.random.default_rng(8)
    level = 1 + 0.2 * rng.standard_normal(4)
    fm = level[:, None] * 2.0 * SIZES[None] ** -0.3
    e = data_multiplier(SIZES, fm, fm[:, 1], 250, n_boot=1000)
    assert e.m == pytest.approx(4.0) and e.low == pytest.approx(4.0) and e.high == pytest.approx(4.0)
    unpaired = data_multiplier(SIZES, fm, fm[[1, 2, 3, 0], 1], 250, n_boot=1000)
    assert unpaired.m == pytest.approx(4.0) and unpaired.high / unpaired.low > 1.5


def test_data_multiplier_censors_outside_the_measured_sizes_and_uses_the_smallest_n_on_a_flat_stretch():
    fm = np.tile(2.0 * SIZES**-0.3, (4, 1))
    better = data_multiplier(SIZES, fm, np.full(4, 0.01), 250, n_boot=100)
    assert (better.censor, better.m) == (">", 256.0) and (better.low_censor, better.high_censor) == (">", ">")
    assert better.at_least(2.0) and better.excludes_one_above and better.format() == "> 256 [> 256, > 256]"
    worse = data_multiplier(SIZES, fm, np.full(4, 5.0), 1000, n_boot=100)
    assert (worse.censor, worse.m) == ("<", 0.25) and not worse.at_least(0.1) and not worse.excludes_one_above
    # non-monotone FM: isotonic pooling of 1000 and 4000 → flat at 0.825, the arm's 0.825 → N' = 1000
    fm_nm = np.tile([1.0, 0.8, 0.85, 0.6, 0.5], (3, 1))
    flat = data_multiplier(SIZES, fm_nm, np.full(3, 0.825), 250, n_boot=50)
    assert flat.n_prime == pytest.approx(1000.0) and flat.fm_fit[1] == flat.fm_fit[2] == pytest.approx(0.825)
    # NaN replicate dropped; all dropped → NaN
    fm_nan = fm.copy()
    fm_nan[0, 3] = math.nan
    assert data_multiplier(SIZES, fm_nan, fm[:, 1], 250, n_boot=50).n_replicates == 3
    assert math.isnan(data_multiplier(SIZES, fm, np.full(4, math.nan), 250, n_boot=50).m)
    with pytest.raises(ValueError, match="strictly increasing"):
        data_multiplier(SIZES[::-1], fm, fm[:, 1], 250)
    with pytest.raises(ValueError, match=r"fm_values \(R, S\)"):
        data_multiplier(SIZES, fm[:, :3], fm[:, 1], 250)


# ----------------------------------------------------------------------------- metrics 1 and 2
def test_noise_corrected_force_error_recovers_the_error_to_the_true_mean_force_and_uncorrected_is_biased():
    """F̂ = F + ε, ε ~ N(0, σ²) per component with σ = 1.5 kcal/mol/Å known (label_sem = σ);
    F_θ = F + δ with δ ~ N(0, 1). The corrected RMS per bead estimates ‖δ‖_rms. Tolerance: per
    component Var(e² − σ²) = 4δ²σ² + 2σ⁴ (e = δ − ε), so the mean square over K = 1500 components
    has SD √(Σ(4δ²σ² + 2σ⁴))/K, the RMS ≈ that / (2 rms) (delta method); 5 SD. Negative control: the
    uncorrected RMS (≈ √(1 + σ²) = 1.8) misses by far more than that."""
    rng = np.random.default_rng(21)
    c, n, sigma = 100, 5, 1.5
    force = rng.normal(0.0, 8.0, (c, n, 3))
    delta = rng.normal(0.0, 1.0, (c, n, 3))
    label = force + rng.normal(0.0, sigma, (c, n, 3))
    out = noise_corrected_force_error(force + delta, label, np.full((c, n, 3), sigma))
    true_rms = math.sqrt(np.mean(delta**2) * 3)  # per bead: Σ over 3 components, mean over C·n beads
    k = delta.size
    sd_ms_component = math.sqrt(np.sum(4 * delta**2 * sigma**2 + 2 * sigma**4)) / k
    sd_rms = 3 * sd_ms_component / (2 * true_rms)
    assert abs(out.rms - true_rms) < 5 * sd_rms, (out.rms, true_rms, sd_rms)
    assert abs(out.uncorrected_rms - true_rms) > 5 * sd_rms  # negative control
    assert out.noise_rms == pytest.approx(sigma * math.sqrt(3))
    true_f = math.sqrt(np.mean(np.sum(force**2, axis=2)))
    assert out.label_rms == pytest.approx(true_f, rel=0.02) and out.relative == pytest.approx(out.rms / out.label_rms)
    assert not out.clipped


def test_noise_corrected_force_error_clips_and_flags_a_negative_estimate_and_checks_input():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 5, 3))
    out = noise_corrected_force_error(y, y, np.full(y.shape, 0.1))
    assert out.clipped and out.rms == 0.0 and out.uncorrected_rms == 0.0
    with pytest.raises(ValueError, match="one shape"):
        noise_corrected_force_error(y, y[:3], np.zeros_like(y))
    with pytest.raises(ValueError, match="≥ 0"):
        noise_corrected_force_error(y, y, -np.ones_like(y))


def _soft_error_by_definition(hm, h, n_soft):
    """Loop over configurations: eigenvectors of the label's n_soft smallest eigenvalues."""
    out = []
    for a, b in zip(hm, h, strict=True):
        w, v = np.linalg.eigh(0.5 * (b + b.T))
        vs = v[:, np.argsort(w)[:n_soft]]
        out.append(np.linalg.norm(vs.T @ (0.5 * (a + a.T) - 0.5 * (b + b.T)) @ vs) / np.linalg.norm(vs.T @ b @ vs))
    return np.array(out)


def test_soft_mode_hessian_error_ignores_the_stiff_modes_and_matches_the_definition():
    """Law: a perturbation confined to the 4 stiffest eigenvectors of the label is invisible;
    one along a soft eigenvector is not (negative control). Matches a per-configuration
    evaluation of the definition (float64, 1e-12)."""
    rng = np.random.default_rng(4)
    c, d = 3, 15
    hs, bumps, softs = [], [], []
    for _ in range(c):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = np.concatenate([rng.uniform(-20, 50, 11), [1500.0, 1800.0, 2100.0, 2300.0]])
        h = (q * lam) @ q.T
        stiff = q[:, -4:]
        hs.append(h)
        bumps.append(h + stiff @ np.diag([300.0, -200.0, 100.0, 50.0]) @ stiff.T)
        softs.append(h + 30.0 * np.outer(q[:, 0], q[:, 0]))
    hs, bumps, softs = map(np.array, (hs, bumps, softs))
    assert np.all(soft_mode_hessian_error(bumps, hs) < 1e-10)
    err = soft_mode_hessian_error(softs, hs)
    assert np.all(err > 0.1)
    noisy = hs + rng.normal(size=hs.shape)
    np.testing.assert_allclose(soft_mode_hessian_error(noisy, hs, 11), _soft_error_by_definition(noisy, hs, 11),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="n_soft"):
        soft_mode_hessian_error(hs, hs, n_soft=0)


# ----------------------------------------------------------------------------- gate and verdict
def test_gate_needs_dg_within_tolerance_and_a_significant_improvement_of_fm():
    reps = [(0, 0), (0, 1), (1, 0), (1, 1)]
    small = dict(zip(reps, [2.0, 2.1, 1.9, 2.05], strict=True))
    large = dict(zip(reps, [1.5, 1.55, 1.45, 1.5], strict=True))
    ok = gate([0.1, -0.05, 0.15, 0.2], small, large)
    assert ok.passed and ok.dg_ok and ok.force_ok and ok.reason.startswith("gate passed")
    bad_dg = gate([0.3, 0.25, 0.35, 0.2], small, large)
    assert not bad_dg.passed and not bad_dg.dg_ok and "not within" in bad_dg.reason
    worse = gate([0.0] * 4, large, small)  # FM got significantly worse: interval above 0 does not pass
    assert worse.force_diff.excludes_zero and not worse.force_ok and not worse.passed


def _pi(mean, half, n=4, p=0.01):
    return PairedInterval(mean, mean - half, mean + half, half, p, n, half, 0.95)


def _m(m, low, high, censor="", lc="", hc=""):
    return MultiplierEstimate(m, censor, low, high, lc, hc, m * 250, 250.0, 4, 10000, 0.95)


def _comparisons(dg_diff, dg_half, f_diff, f_half, p=0.01, mult=None, sizes=(250, 1000, 4000), fm_force=1.0):
    out = []
    for n in sizes:
        out.append(Comparison(METRIC_DG, n, _pi(dg_diff, dg_half, p=p), p, mult if n == 250 else None, 0.5))
        out.append(Comparison(METRIC_FORCE, n, _pi(f_diff, f_half, p=p), p, None, fm_force))
    return out


def test_verdict_labels_each_hand_built_case():
    # void: gate failed, whatever the data
    v = verdict("HVP-RB", False, _comparisons(-1.0, 0.1, -0.5, 0.1, mult=_m(8, 3, 20)))
    assert v.label == "void" and "gate failed" in v.reason
    # supported: m = 8 [3, 20] at 250 on ΔG, Holm p 0.01, gain 1 kcal/mol
    v = verdict("HVP-RB", True, _comparisons(-1.0, 0.2, -0.5, 0.1, mult=_m(8, 3, 20)))
    assert v.label == "supported" and "250 frames" in v.reason and "falsification" not in v.reason
    # negative controls of "supported": interval of m reaching 1, Holm p too large, m only at 4000
    assert verdict("A", True, _comparisons(-1.0, 0.2, -0.5, 0.1, mult=_m(8, 0.9, 20))).label == "inconclusive"
    assert verdict("A", True, _comparisons(-1.0, 0.2, -0.5, 0.1, p=0.2, mult=_m(8, 3, 20))).label == "inconclusive"
    at_4000 = [Comparison(c.metric, c.size, c.diff, c.p_adjusted, _m(8, 3, 20) if c.size == 4000 else None, c.fm_mean)
               for c in _comparisons(-1.0, 0.2, -0.5, 0.1)]
    assert verdict("A", True, at_4000).label == "inconclusive"
    # censored m: "> 256" establishes m ≥ 2 and an interval above 1; "< 1" does not
    assert verdict("A", True, _comparisons(-1.0, 0.2, -0.5, 0.1, mult=_m(256, 256, 256, ">", ">", ">"))).label \
        == "supported"
    assert verdict("A", True, _comparisons(-1.0, 0.2, -0.5, 0.1, mult=_m(1, 1, 1, "<", "<", "<"))).label \
        == "inconclusive"
    # falsified: ΔG intervals within [−0.2, +0.2] (> −0.3) and metric 1 within −0.1 of FM's 1.0 (> −25 %)
    v = verdict("Cond-F", True, _comparisons(0.0, 0.2, 0.0, 0.1, p=0.9))
    assert v.label == "falsified" and "0.3 kcal/mol" in v.reason
    # not falsified when one size's ΔG interval allows a gain of 0.35 > 0.3
    near = _comparisons(0.0, 0.2, 0.0, 0.1, p=0.9)
    near[0] = Comparison(METRIC_DG, 250, _pi(-0.15, 0.2), 0.9, None, 0.5)
    v = verdict("Cond-F", True, near)
    assert v.label == "inconclusive" and "250 frames" in v.reason and "allows a gain of 0.35" in v.reason
    # ... or metric 1 allows a 30 % gain
    assert verdict("A", True, _comparisons(0.0, 0.2, -0.2, 0.1, p=0.9)).label == "inconclusive"
    # a missing interval cannot falsify
    assert verdict("A", True, _comparisons(0.0, math.nan, 0.0, 0.1, p=0.9)).label == "inconclusive"
    # both conditions: a significant gain smaller than the margins → supported, and the reason says so
    v = verdict("A", True, _comparisons(-0.1, 0.05, -0.05, 0.02, mult=_m(4, 2, 8)))
    assert v.label == "supported" and "falsification condition also held" in v.reason
    with pytest.raises(ValueError, match="metric"):
        verdict("A", True, [Comparison("fes_rmse", 250, _pi(0, 1), 0.5, None, 1.0)])


# ----------------------------------------------------------------------------- report writer
def _synthetic_rows(rng):
    rows = []
    reps = [(s, i) for s in (0, 1) for i in (0, 1)]
    level = dict(zip(reps, 1 + 0.1 * rng.standard_normal(4), strict=True))
    gain = {"FM": 1.0, "HVP-frame": 1.0, "HVP-RB": 4.0, "Cond-F": 2.0, "Cond-FH": 8.0, "HVP-RB-xfit": 4.0}
    for arm, g in gain.items():
        for n in (250, 1000, 4000, 16000, 64000) if arm == "FM" else (250, 1000, 4000):
            for rep in reps:
                eff = n * g
                rows.append({"arm": arm, "size": n, "replicate": list(rep),
                             "force_error": level[rep] * 3.0 * eff**-0.3 + 0.01 * rng.standard_normal(),
                             "hessian_soft_error": 0.5 * eff**-0.1 + 0.01 * rng.standard_normal(),
                             "dg_error": 2.0 * eff**-0.4 + 0.05 * rng.standard_normal(),
                             "fes_rmse": 1.5 * eff**-0.2 + 0.02 * rng.standard_normal(),
                             "train_wall_s": 100.0 + n / 100, "steps": 1000 + n // 10,
                             "aa_force_evals": 133 * n})
    return rows


def test_report_fragment_has_every_table_a_verdict_per_arm_and_both_figures(tmp_path):
    rows = _synthetic_rows(np.random.default_rng(2))
    out = write_ala2_v2_results(rows, {"n_boot": 500, "mode": "quick", "label_errors": {"force_noise_rms": 0.4}},
                                tmp_path / "frag" / "results.md", tmp_path / "plots")
    md = out["fragment"].read_text()
    for heading in ("### Gate", "### FM learning curve", "### Metric 1. mean-force error",
                    "### Metric 2. soft-mode Hessian error", "### Metric 3. absolute ΔG(αR−β) error",
                    "### Metric 4. φ/ψ free-energy RMSE", "### Data multiplier", "### Cost", "### Verdicts"):
        assert heading in md, heading
    assert "QUICK MODE" in md and "force_noise_rms = 0.4" in md
    tables = [t.splitlines() for t in "\n".join(x if x.startswith("|") else "" for x in md.splitlines()).split("\n\n")]
    tables = [t for t in tables if t and t[0]]
    assert len(tables) == 8  # gate, FM curve, metrics 1–4, multiplier, cost
    for t in tables:  # every row has as many cells as the header (a stray '|' in a cell would add one)
        assert {line.count("|") for line in t} == {t[0].count("|")}, t[0]
    arms = ["HVP-frame", "HVP-RB", "Cond-F", "Cond-FH", "HVP-RB-xfit"]
    verdict_lines = md.split("### Verdicts")[1].split("![")[0].strip().splitlines()
    assert len(verdict_lines) == len(arms)
    for a in arms:
        mine = [line for line in verdict_lines if line.startswith((f"- {a}: **", f"- {a} (secondary"))]
        assert len(mine) == 1 and any(f"**{label}** — " in mine[0] for label in VERDICT_LABELS), a
    assert "secondary" in next(line for line in verdict_lines if "HVP-RB-xfit" in line)
    # Holm over the fixed family of 24: the family members have adjusted p, the ablation has none
    assert sum(1 for k, (_, p) in out["comparisons"].items() if math.isfinite(p)) == 24
    assert all(math.isnan(p) for (a, _, _), (_, p) in out["comparisons"].items() if a not in FAMILY_ARMS)
    # a strong arm (8× the data) is supported, the arm equal to FM is not
    assert out["verdicts"]["Cond-FH"].label == "supported" and out["verdicts"]["HVP-frame"].label != "supported"
    assert out["gate"].force_ok
    for p in out["plots"]:
        assert p.read_bytes()[:8] == PNG_MAGIC
    assert "](../plots/learning_curves.png)" in md
    with pytest.raises(ValueError, match="duplicate replicate"):
        write_ala2_v2_results(rows + rows[:1], {}, tmp_path / "x.md", tmp_path / "p")
    with pytest.raises(ValueError, match="no FM rows"):
        write_ala2_v2_results([r for r in rows if r["arm"] != "FM"], {}, tmp_path / "x.md", tmp_path / "p")


def test_gate_fragment_is_the_opening_of_the_full_fragment_and_needs_fm_rows(tmp_path):
    rows = _synthetic_rows(np.random.default_rng(2))
    settings = {"n_boot": 200, "mode": "quick", "label_errors": {"force_noise_rms": 0.4}}
    full = write_ala2_v2_results(rows, settings, tmp_path / "full" / "results.md", tmp_path / "full" / "plots")
    gate_only = write_ala2_v2_gate(rows, settings, tmp_path / "gate" / "gate.md", tmp_path / "gate" / "plots")
    head = full["fragment"].read_text().split("### Metric 1")[0]
    text = gate_only["fragment"].read_text()
    assert text.startswith(head) and "### Metric" not in text and "### Verdicts" not in text
    assert "](plots/learning_curves.png)" in text
    assert gate_only["gate"] == full["gate"]
    assert [p.name for p in gate_only["plots"]] == ["learning_curves.png"]
    assert gate_only["plots"][0].read_bytes()[:8] == PNG_MAGIC
    # arms' rows are ignored: FM's rows alone give the same fragment
    again = write_ala2_v2_gate([r for r in rows if r["arm"] == "FM"], settings, tmp_path / "fm" / "gate.md",
                               tmp_path / "fm" / "plots")
    assert again["fragment"].read_text() == text
    # negative controls: no FM rows; a failing gate says so
    with pytest.raises(ValueError, match="no FM rows"):
        write_ala2_v2_gate([r for r in rows if r["arm"] != "FM"], {}, tmp_path / "x.md", tmp_path / "p")
    worse = [dict(r, force_error=r["force_error"] + (1.0 if r["size"] == 4000 else 0.0)) if r["arm"] == "FM" else r
             for r in rows]
    failed = write_ala2_v2_gate(worse, settings, tmp_path / "bad" / "gate.md", tmp_path / "bad" / "plots")
    assert not failed["gate"].passed and "**Gate failed.**" in failed["fragment"].read_text()

