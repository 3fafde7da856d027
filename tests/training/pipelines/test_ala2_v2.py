"""The second alanine-dipeptide study's own pieces: test-configuration choice, ΔG, free-energy RMSE,
correlation time, AA cost accounting (the miniature of every stage is test_ala2_v2_benchmark.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessid.training.evaluation.evaluate import Trajectories
from hessid.training.pipelines import ala2, ala2_v2_eval, ala2_v2_study
from hessid.training.pipelines.ala2_v2 import (
    choose_test_configurations,
    fm_aa_cost,
    label_cost_estimate,
    n_label_configs,
)
from hessid.training.pipelines.ala2_v2_eval import (
    correlation_time,
    delta_g,
    fe_rmse,
    replica_angles,
)
from hessid.units import KB_KCAL_PER_MOL_K
from tests.helpers import load_benchmark

ALPHA = (math.radians(-70), math.radians(-40))
BETA = (math.radians(-120), math.radians(140))


def _angles(labels):
    return np.array([ALPHA if x == 0 else BETA for x in labels], dtype=np.float64)


def test_test_configurations_respect_spacing_quota_and_exclusion():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    excluded = rng.random(2000) < 0.3
    idx = choose_test_configurations(_angles(labels), excluded, 10, 25)
    basins = ala2.assign_basins(_angles(labels)[idx])
    assert len(idx) == 20 and np.sum(basins == 0) == 10 and np.sum(basins == 1) == 10
    assert not excluded[idx].any()
    assert np.min(np.diff(idx)) >= 25
    # negative control: the quota cannot be met at this spacing
    with pytest.raises(ValueError, match="frames apart; need 60"):
        choose_test_configurations(_angles(labels), excluded, 60, 25)


def test_delta_g_is_minus_kt_log_population_ratio():
    ang = _angles([0] * 30 + [1] * 70)
    expected = -KB_KCAL_PER_MOL_K * 300.0 * math.log(30 / 70)
    assert delta_g(ang, 300.0) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(delta_g(_angles([1] * 10), 300.0))


def test_fe_rmse_is_zero_for_the_same_surface_and_positive_for_another():
    rng = np.random.default_rng(1)
    ref = np.column_stack([rng.normal(-1.2, 0.3, 20000), rng.normal(2.4, 0.3, 20000)])
    ref = np.concatenate([ref, np.column_stack([rng.normal(-1.2, 0.3, 8000), rng.normal(-0.7, 0.3, 8000)])])
    assert fe_rmse(ref, ref, 300.0) == pytest.approx(0.0, abs=1e-12)
    other = np.column_stack([rng.normal(-1.2, 0.3, 20000), rng.normal(2.4, 0.3, 20000)])  # αR basin missing
    assert fe_rmse(ref, other, 300.0) > 0.5


def test_correlation_time_of_a_two_state_markov_chain():
    """Switching probability p per step: ρ = 1 − 2p, τ = ρ/(1 − ρ) steps."""
    rng = np.random.default_rng(2)
    p, n, reps = 0.02, 20000, 8
    chains = []
    for _ in range(reps):
        flips = rng.random(n) < p
        chains.append(np.cumsum(flips) % 2)
    rho = 1 - 2 * p
    tau = correlation_time(chains, dt_ps=0.5)
    assert tau == pytest.approx(0.5 * rho / (1 - rho), rel=0.2)  # ~5 % s.e. over 8 × 800 τ
    # negative control: the shuffled series has no memory
    shuffled = [rng.permutation(c) for c in chains]
    assert correlation_time(shuffled, dt_ps=0.5) < 0.1 * tau
    assert math.isnan(correlation_time([np.zeros(100)], 0.5))


def test_aa_cost_accounting_matches_the_pre_registration():
    s = {"reference": {"stride": 125}, "targets": {"k": 4},
         "train_labels": {"equilibration_steps": 500, "samples": 20, "stride": 50}}
    assert fm_aa_cost(s, 1000, with_term1=False) == 125_000
    assert fm_aa_cost(s, 1000, with_term1=True) == 133_000
    assert label_cost_estimate(s) == 2100
    assert [n_label_configs(s, n, 2100) for n in (250, 1000, 4000)] == [14, 59, 238]


def test_replica_angles_keep_every_good_float32_replica_and_drop_only_the_broken_one(monkeypatch):
    """CG MD trajectories load as float32 (nm); the kept replicas must be found by index, not by
    identity of the float64 copies filter_replicas makes (that bug returned None for all)."""
    rng = np.random.default_rng(0)
    chain = np.array([[0.0, 0, 0], [1.5, 0, 0], [2.0, 1.4, 0], [3.4, 1.6, 0.5], [4.0, 2.9, 0.9]]) / 10  # nm
    good = [(chain + 0.002 * rng.standard_normal((20, 5, 3))).astype(np.float32) for _ in range(3)]
    broken = good[0].copy()
    broken[7, 4] += 1.0  # a 1 nm jump: bond far outside ala2.BOND_RANGE
    trajs = Trajectories(xyz=[good[0], broken, good[1], good[2]], dt=1.0)
    monkeypatch.setattr(ala2_v2_eval, "load_simulation", lambda _: trajs)
    out = replica_angles(None, burn_in_ps=5.0, dt_ps=1.0)
    assert [a is None for a in out] == [False, True, False, False]  # control: the broken replica is dropped
    np.testing.assert_allclose(out[0], ala2.phi_psi(good[0][5:].astype(np.float64) * 10.0))
    assert out[0].shape == (15, 2)


def test_an_unknown_stop_after_is_refused_before_anything_runs(tmp_path, capsys):
    # a typo must not run the whole study (≈ 20 h): run_study refuses it, the driver exits 2
    with pytest.raises(ValueError, match="stop_after must be one of reference, split, gate_train"):
        ala2_v2_study.run_study(tmp_path / "x", {}, tmp_path / "x.md", stop_after="gat")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:
        load_benchmark("ala2_v2").main(["--quick", "--out", str(tmp_path / "y"), "--stop-after", "gat"])
    assert exc.value.code == 2 and "invalid choice: 'gat'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert ala2_v2_study.STOP_POINTS == ("reference", "split", "gate_train", "test_labels", "pilot", "gate",
                                         "arms_train")

