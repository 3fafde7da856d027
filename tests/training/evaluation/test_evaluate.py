"""Benchmark evaluation (benchmark.md): features, metrics with known answers, TICA, files.

KDE bias: scipy's Scott bandwidth is f·σ̂ with f = N^(−1/5), so a KDE of N(μ, σ²) samples is
≈ N(μ, σ²(1 + f²)). The closed forms below use these smoothed variances; the remaining
tolerance is Monte-Carlo/sampling error (stated per test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hessid.training.evaluation.divergences import kl_divergence, wasserstein_1d, wasserstein_2d
from hessid.training.evaluation.evaluate import (
    METRIC_NAMES,
    BenchmarkEvaluator,
    Trajectories,
    comparison_table,
    evaluate,
    filter_replicas,
    load_reference,
    read_metrics,
)
from hessid.training.evaluation.features import (
    bond_angles,
    bond_lengths,
    ca_pair_distances,
    dihedral_angles,
    radius_of_gyration,
)
from tests.training.evaluation.fixtures import FAST, chain_ensemble, write_dataset


@pytest.fixture(scope="module")
def reference():
    return Trajectories([chain_ensemble(1500, seed=0), chain_ensemble(1500, seed=10)], 40.0, "toy")


@pytest.fixture(scope="module")
def fitted(reference):
    return BenchmarkEvaluator(lag_time=800.0, **FAST).fit(reference).fetch_model()


def smoothed_sd(sd, n):
    return sd * math.sqrt(1 + n ** (-2 / 5))


def kde_kl_expected(mu, sd, n):
    """E_{x~N(0,1)} log(p̂_ref(x) / p̂_model(x)) with Gaussian KDEs p̂ = N(m, s²(1 + f²)).

    With no smoothing (f = 0) this is the closed form KL(N(0,1)‖N(μ,σ²)) =
    ln σ + (1 + μ²)/(2σ²) − ½; the Monte-Carlo points are raw reference samples, so only the
    densities carry the KDE smoothing.
    """
    s_ref, s_mod = smoothed_sd(1.0, n), smoothed_sd(sd, n)
    return math.log(s_mod / s_ref) - 1 / (2 * s_ref**2) + (1 + mu**2) / (2 * s_mod**2)


# ---------------------------------------------------------------- features and units


def test_pair_distances_are_nm_in_triu_order():
    xyz = np.array([[[0, 0, 0], [0.38, 0, 0], [0.38, 0.5, 0], [0, 0, 1.2]]])  # (1, 4, 3) nm
    d = ca_pair_distances(xyz)
    i, j = np.triu_indices(4, 1)
    assert d.shape == (1, 6)
    np.testing.assert_allclose(d[0], np.linalg.norm(xyz[0, j] - xyz[0, i], axis=-1))
    assert d[0, 0] == pytest.approx(0.38)  # (0, 1) first, in nm


def test_structural_features_are_nm_and_radians():
    xyz = np.array([[[0, 0, 0], [0.38, 0, 0], [0.38, 0.38, 0], [0.38, 0.38, 0.38]]])  # nm
    np.testing.assert_allclose(bond_lengths(xyz), 0.38, rtol=1e-6)
    np.testing.assert_allclose(bond_angles(xyz), math.pi / 2, rtol=1e-6)
    assert abs(dihedral_angles(xyz)[0, 0]) == pytest.approx(math.pi / 2, rel=1e-6)
    two = np.array([[[0, 0, 0], [0.4, 0, 0]]])
    assert radius_of_gyration(two)[0] == pytest.approx(0.2, rel=1e-6)  # Rg of 2 beads = d/2, nm


# ---------------------------------------------------------------- KL (benchmark.md)


def test_kl_of_gaussians_matches_closed_form_reference_first():
    # N = 4000 per sample: MC error of the mean log-ratio ≈ 0.01; tolerance 0.03 nats
    rng = np.random.default_rng(1)
    n = 4000
    ref = rng.normal(0, 1, n)
    for mu, sd in [(0.6, 1.0), (0.0, 0.5), (0.0, 2.0)]:
        model = rng.normal(mu, sd, n)
        expected = kde_kl_expected(mu, sd, n)
        got = kl_divergence(ref, model, max_kde_points=None, max_eval_points=None)
        assert got == pytest.approx(expected, abs=0.03), (mu, sd)
    # reference first: a too-narrow model misses reference mass (closed form 0.81 nats); a
    # too-wide one only wastes density (0.32 nats). Swapped arguments (upstream defect 2)
    # would rank them the other way (KL(N(0,¼)‖N(0,1)) = 0.32, KL(N(0,4)‖N(0,1)) = 0.81).
    narrow = kl_divergence(ref, rng.normal(0, 0.5, n), max_kde_points=None, max_eval_points=None)
    wide = kl_divergence(ref, rng.normal(0, 2.0, n), max_kde_points=None, max_eval_points=None)
    assert narrow > wide + 0.3


def test_kl_null_is_zero_and_shift_is_detected():
    rng = np.random.default_rng(2)
    ref, same = rng.normal(0, 1, 3000), rng.normal(0, 1, 3000)
    assert kl_divergence(ref, ref) == 0.0
    null = kl_divergence(ref, same)
    assert abs(null) < 0.02
    assert kl_divergence(ref, same + 1.0) > 0.3 > 10 * abs(null)  # negative control


def test_kl_floor_caps_disjoint_supports():
    # disjoint samples: p_model underflows to the 1e-6 floor, KL ≈ mean log(p_ref / 1e-6)
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, 2000)
    got = kl_divergence(ref, rng.normal(100, 1, 2000))
    assert 10 < got < -math.log(1e-6) + 1


# ---------------------------------------------------------------- W1


def test_w1_of_gaussians_matches_closed_form():
    # shift: W1 = |Δμ|; width: W1 = |σ₂ − σ₁|·E|Z| = |σ₂ − σ₁|·√(2/π) (quantile functions differ
    # by (σ₂ − σ₁)Φ⁻¹). N = 20000: sampling error ≈ 0.01; tolerance 0.03.
    rng = np.random.default_rng(4)
    n = 20000
    ref = rng.normal(0, 1, n)
    assert wasserstein_1d(ref, rng.normal(0.5, 1, n), max_kde_points=None) == pytest.approx(0.5, abs=0.03)
    expected = (smoothed_sd(2.0, n) - smoothed_sd(1.0, n)) * math.sqrt(2 / math.pi)
    assert wasserstein_1d(ref, rng.normal(0, 2.0, n), max_kde_points=None) == pytest.approx(expected, abs=0.03)


def test_w1_null_is_zero_and_shift_is_detected():
    rng = np.random.default_rng(5)
    ref, same = rng.normal(0, 1, 3000), rng.normal(0, 1, 3000)
    assert wasserstein_1d(ref, ref) == pytest.approx(0.0, abs=1e-12)
    null = wasserstein_1d(ref, same)
    assert null < 0.08
    assert wasserstein_1d(ref, same * 1.5) > 0.2 > 2 * null  # negative control: wider


def test_w1_grid_can_start_at_zero_for_rg():
    rng = np.random.default_rng(6)
    ref = np.abs(rng.normal(1.0, 0.1, 2000))
    assert wasserstein_1d(ref, ref + 0.2, lower=0.0) == pytest.approx(0.2, abs=0.02)


def test_w1_2d_of_shifted_gaussians_is_shift_length():
    # W1 under Euclidean cost of a shift by d is |d| = 1.0. The 25×25 grid has spacing ≈ 0.5
    # here; with both KDEs on the same grid the discretisation error stays below 0.1.
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, (4000, 2))
    got = wasserstein_2d(ref, rng.normal(0, 1, (4000, 2)) + [0.6, 0.8], max_kde_points=2000)
    assert got == pytest.approx(1.0, abs=0.1)
    assert wasserstein_2d(ref, ref) == pytest.approx(0.0, abs=1e-9)
    null = wasserstein_2d(ref, rng.normal(0, 1, (4000, 2)), max_kde_points=2000)
    assert null < 0.1 and got > 5 * null  # negative control
    with pytest.raises(ValueError):
        wasserstein_2d(ref[:, 0], ref[:, 0])


# ---------------------------------------------------------------- TICA and the estimator


def test_tica_lag_comes_from_physical_time(reference):
    for dt, lag in [(40.0, 20), (10.0, 80), (100.0, 8)]:
        est = BenchmarkEvaluator(lag_time=800.0, **FAST).fit(reference.xyz, dt=dt).fetch_model()
        assert est.lag_frames == lag and est.settings["reference_dt_ps"] == dt


def test_streamed_tica_equals_in_memory_fit(reference, fitted):
    streamed = BenchmarkEvaluator(lag_time=800.0, stream_above=0, chunk_size=300, **FAST).fit(reference).fetch_model()
    assert streamed.settings["tica_fit"] == "partial_fit"
    np.testing.assert_allclose(np.abs(streamed.tics), np.abs(fitted.tics), atol=1e-8)


def test_model_equal_to_reference_scores_zero_and_shifted_model_does_not(reference, fitted):
    # the same frames as the reference (no burn-in): every metric is exactly 0
    est = BenchmarkEvaluator(lag_time=800.0, burn_in=0.0, **FAST).fit(reference).fetch_model()
    same = est.score(Trajectories(reference.xyz, 40.0, "same"))
    for k in METRIC_NAMES:
        assert same.metrics[k] == pytest.approx(0.0, abs=1e-9), k
    # an independent sample of the same process is close; a model that stays mostly in one
    # state (P(s=1) = 0.9 instead of 0.5) is clearly worse on the slow mode
    good = fitted.score([chain_ensemble(1500, seed=20), chain_ensemble(1500, seed=21)]).metrics
    bad = fitted.score([chain_ensemble(1500, p_b=0.9, seed=22), chain_ensemble(1500, p_b=0.9, seed=23)]).metrics
    for k in ("tica_2d_w1", "tic0_kl", "tic0_w1", "dihedral_w1", "angle_w1", "rg_w1"):
        assert bad[k] > 3 * max(good[k], 1e-3), (k, good[k], bad[k])
    assert all(math.isfinite(good[k]) for k in METRIC_NAMES)  # per-TIC W1 filled (defect 1)


def test_replicas_are_filtered_and_reported_never_silently(fitted):
    ok = chain_ensemble(100, seed=30)
    nan = ok.copy()
    nan[50, 3, 0] = np.nan
    torn = ok.copy()
    torn[70, 5:] += 0.5  # a 5 Å jump: bond 4-5 far beyond 6 Å
    trajs = Trajectories([ok, nan, torn, ok, ok[:0]], 40.0, "m",
                         failures=[{"replica": 3, "step": 900, "reason": "non-finite"}])
    kept, dropped = filter_replicas(trajs, burn_in=0.1)
    assert [d["replica"] for d in dropped] == [1, 2, 3, 4]
    assert "non-finite" in dropped[0]["reason"] and "bond" in dropped[1]["reason"]
    assert "simulator" in dropped[2]["reason"] and "burn-in" in dropped[3]["reason"]
    assert len(kept) == 1 and len(kept[0]) == 90  # 10 % burn-in
    result = fitted.score(trajs)
    assert result.info["n_replicas"] == 5 and result.info["n_replicas_used"] == 1
    assert result.info["n_frames_used"] == 90 and len(result.info["dropped_replicas"]) == 4
    with pytest.raises(ValueError, match="every replica was dropped"):
        fitted.score(Trajectories([nan], 40.0, "m"))


# ---------------------------------------------------------------- files and table


def test_evaluate_writes_metrics_json_and_a_table_with_standard_errors(tmp_path, reference):
    ref_path = write_dataset(tmp_path / "toy.h5", np.concatenate(reference.xyz))
    ref = load_reference(ref_path)
    assert ref.dt == 40.0 and ref.xyz[0].shape == (3000, 8, 3)
    np.testing.assert_allclose(ref.xyz[0][0], reference.xyz[0][0])  # Å in the file → nm
    models = {"FM": [Trajectories([chain_ensemble(600, p_b=0.8, seed=s)], 20.0, f"fm{s}") for s in (40, 41)],
              "FM+AA": [Trajectories([chain_ensemble(600, seed=42)], 20.0, "fmaa")]}
    docs = evaluate(ref, models, tmp_path / "eval", protein="toy", lag_time=800.0, **FAST)
    again = read_metrics(tmp_path / "eval")
    assert [d["model"] for d in again] == ["FM", "FM+AA"]
    fm = again[0]
    assert fm["n_runs"] == 2 and fm["uncertainty"] == "seeds" and set(fm["sem"]) == set(METRIC_NAMES)
    runs = [r["metrics"]["tic0_kl"] for r in fm["runs"]]
    assert fm["metrics"]["tic0_kl"] == pytest.approx(np.mean(runs))
    assert fm["sem"]["tic0_kl"] == pytest.approx(np.std(runs, ddof=1) / math.sqrt(2))
    assert fm["settings"]["lag_frames"] == 20 and fm["settings"]["burn_in"] == 0.1
    assert fm["units"]["bond_w1"] == "nm" and fm["units"]["dihedral_w1"] == "rad"
    assert again[1]["sem"] is None
    md_table = (tmp_path / "eval" / "comparison.md").read_text()
    assert "| toy | FM |" in md_table and " ± " in md_table
    rows = (tmp_path / "eval" / "comparison.csv").read_text().splitlines()
    header = rows[0].split(",")
    for doc, row in zip(docs, rows[1:], strict=True):
        cells = dict(zip(header, row.split(","), strict=True))
        for k in METRIC_NAMES:
            assert float(cells[k]) == doc["metrics"][k]
    assert comparison_table(again)[1] == (tmp_path / "eval" / "comparison.csv").read_text()
    feats = np.load(tmp_path / "eval" / "FM+AA" / "features.npz")
    assert feats["tics"].shape[1] == 4 and 0.3 < feats["bond"].mean() < 0.45  # nm


def test_bootstrap_gives_standard_errors(fitted):
    trajs = Trajectories([chain_ensemble(150, seed=s) for s in range(50, 53)], 40.0, "m")
    result = fitted.score(trajs, n_bootstrap=2)
    assert set(result.sem) == set(METRIC_NAMES) and all(v >= 0 for v in result.sem.values())


def test_bad_settings_raise(reference):
    with pytest.raises(ValueError):
        BenchmarkEvaluator(n_tics=2)
    with pytest.raises(ValueError, match="not shorter than any reference trajectory"):
        BenchmarkEvaluator(lag_time=1e6).fit(reference)
    with pytest.raises(RuntimeError):
        BenchmarkEvaluator().fetch_model()
    with pytest.raises(ValueError):
        kl_divergence([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        filter_replicas(reference, burn_in=1.0)


def test_metrics_json_is_plain_json(tmp_path, reference):
    docs = evaluate(reference, {"M": [Trajectories([chain_ensemble(300, seed=60)], 40.0, "m")]},
                    tmp_path, lag_time=800.0, **FAST)
    text = (tmp_path / "M" / "metrics.json").read_text()
    assert json.loads(text)["metrics"] == docs[0]["metrics"]
