"""The PHL study (docs/results/phl.md): its analysis on synthetic results with known answers, and
the ``--quick`` miniature of every stage end to end (real GFN2-xTB data, TensorNet training,
evaluation, cost, report), then a resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.helpers import load_benchmark

pytest.importorskip("tblite")
pytest.importorskip("torchmdnet")

from hessid.training.pipelines.phl import (  # noqa: E402
    ARM_LOSSES,
    analyse,
    arm_loss,
    job_list,
    molecule_arms,
    run_study,
)


def _records(factor: dict, noise: float, seed: int = 0) -> list[dict]:
    """Synthetic results: Hessian RMSE = 10 / sqrt(N) × factor[arm][test set] × replicate noise."""
    rng = np.random.default_rng(seed)
    out = []
    for rep in range(3):
        shared = rng.normal(0, 0.2)  # replicate effect shared by every arm (what pairing removes)
        for n in (25, 100):
            for arm, f in factor.items():
                rec = {"dataset": "mol", "arm": arm, "size": n, "rep": rep}
                for ts in ("test_near", "test_far"):
                    v = 10 / math.sqrt(n) * f[ts] * math.exp(shared + rng.normal(0, noise))
                    rec[ts] = {"hessian_rmse": v, "force_rmse": v / 10}
                out.append(rec)
    return out


SETTINGS = {"analysis": {"alpha": 0.05, "n_boot": 50}, "arms": list(ARM_LOSSES)}


def test_analysis_finds_equivalence_and_the_fixed_probe_gain_it_was_given():
    one = {"test_near": 1.0, "test_far": 1.0}
    factor = {"ef_h": one, "hvp_random_k1_fresh": one, "hvp_onehot_k1_fresh": one,
              "hvp_onehot_k1_fixed": {"test_near": 1.5, "test_far": 3.0},
              "hvp_random_k1_fixed": {"test_near": 1.0, "test_far": 1.0}}
    an = analyse(_records(factor, noise=0.005), SETTINGS, ["mol"], [25, 100])
    assert an["verdicts"]["F1"]["mol"].startswith("holds")
    assert an["verdicts"]["F2"]["mol"].startswith("holds")
    assert "larger far from equilibrium" in an["verdicts"]["F2"]["mol"]
    assert "not shown" not in an["verdicts"]["F2"]["mol"]
    tests = an["tests"]
    assert len(tests) == 7  # F1: 2 arms × near/far, F2: near/far, F2-far
    far = next(t for t in tests if t["finding"] == "F2" and t["test_set"] == "test_far")
    assert far["ratio"] == pytest.approx(1 / 3, rel=0.02)
    assert all(t["p_holm"] >= t["p"] for t in tests)


def test_analysis_negative_controls_fail_and_stay_inconclusive():
    one = {"test_near": 1.0, "test_far": 1.0}
    # HVP twice as bad as E-F-H; one-hot better than random when fixed
    factor = {"ef_h": one, "hvp_random_k1_fresh": {"test_near": 2.0, "test_far": 2.0},
              "hvp_onehot_k1_fresh": {"test_near": 2.0, "test_far": 2.0},
              "hvp_onehot_k1_fixed": one, "hvp_random_k1_fixed": {"test_near": 2.0, "test_far": 2.0}}
    an = analyse(_records(factor, noise=0.005), SETTINGS, ["mol"], [25, 100])
    assert an["verdicts"]["F1"]["mol"].startswith("fails")
    assert an["verdicts"]["F2"]["mol"].startswith("fails")
    # equal arms but noisy replicates: no equivalence within ±25 % shown, no difference either
    noisy = {a: one for a in factor}
    an = analyse(_records(noisy, noise=0.6, seed=3), SETTINGS, ["mol"], [25, 100])
    assert an["verdicts"]["F1"]["mol"].startswith("inconclusive")
    assert an["verdicts"]["F2"]["mol"].startswith("inconclusive")


def test_arms_share_the_probe_seed_and_differ_only_in_the_loss():
    s = {"loss": {"form": "mse"}, "replicates": {"probe_seed_base": 1000}}
    losses = {arm: arm_loss(arm, s, 2) for arm in ARM_LOSSES}
    assert {v["probe_seed"] for v in losses.values()} == {1002}
    assert losses["hvp_random_k1_fixed"]["probe_regime"] == "fixed"
    assert losses["hvp_onehot_k1_fresh"]["probe_kind"] == "one_hot"
    with pytest.raises(KeyError, match="unknown arm"):
        arm_loss("ef_hvp", s, 0)


def test_a_molecule_trains_only_its_own_arms_and_its_untrained_findings_are_not_tested(tmp_path):
    """A molecule's ``arms`` subset sets its jobs (the other molecule keeps every arm); a name
    outside the study's arms is refused; F1 on a molecule without E-F-H says "not tested"."""
    arms = list(ARM_LOSSES)
    s = {"arms": arms, "sizes": [25, 100], "split": {}, "replicates": {"n": 3},
         "molecules": [{"name": "mol"}, {"name": "big", "arms": ["hvp_random_k1_fixed", "ef"]}]}
    jobs = job_list(tmp_path, s, "tier1")
    assert {j["arm"] for j in jobs if j["dataset"] == "mol"} == set(arms)
    assert [j["arm"] for j in jobs if j["dataset"] == "big"][:2] == ["ef", "hvp_random_k1_fixed"]
    assert len([j for j in jobs if j["dataset"] == "big"]) == 2 * 2 * 3
    with pytest.raises(ValueError, match="not study arms"):
        molecule_arms({"name": "x", "arms": ["ef_hvp"]}, s)
    one = {"test_near": 1.0, "test_far": 1.0}
    recs = _records({a: one for a in arms if a != "ef_h"}, noise=0.005)
    an = analyse(recs, SETTINGS, ["mol"], [25, 100])
    assert an["verdicts"]["F1"]["mol"].startswith("not tested")
    assert not any(t["finding"] == "F1" for t in an["tests"])
    assert an["verdicts"]["F2"]["mol"].startswith("inconclusive")


def test_unknown_stop_after_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="--stop-after must be one of"):
        run_study(tmp_path / "x", {}, tmp_path / "x.md", stop_after="everything")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:  # the driver refuses it at parse time
        load_benchmark("phl").main(["--quick", "--out", str(tmp_path / "y"), "--stop-after", "everything"])
    assert exc.value.code == 2 and not (tmp_path / "y").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_study_end_to_end_and_resume(tmp_path, monkeypatch):
    """Every stage on tiny settings; then a rerun skips the done stages and a changed setting is refused."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bench = load_benchmark('phl')
    out = tmp_path / "phlq"
    summary = bench.main(["--quick", "--out", str(out), "--jobs", "1"])
    s = bench.settings("quick")
    assert summary["stages"] == ["data", "cost", "train", "tier2", "report"]
    state = json.loads((out / "state.json").read_text())
    assert all(state["stages"][k]["done"] for k in summary["stages"])

    # data: real GFN2-xTB structures, near and far, none failed
    data = state["stages"]["data"]["result"]
    assert data["ethanol"]["n_done"] == s["molecules"][0]["configs"] and data["ethanol"]["n_far"] >= 2
    assert data[s["tier2"]["name"]]["n_failed"] == 0

    # every run: real errors on the one shared test set; paired, nested training subsets
    runs = state["stages"]["train"]["result"]["runs"]
    assert len(runs) == len(s["arms"]) * len(s["sizes"]) * s["replicates"]["n"]
    splits = {}
    for r in runs:
        for ts in ("test_near", "test_far"):
            assert r[ts]["n"] == s["split"]["n_test"]
            assert r[ts]["hessian_rmse"] > 0 and math.isfinite(r[ts]["force_rmse"])
        assert r["steps"] == s["train"]["steps"]
        if r["arm"] == "ef":
            assert r["frequencies"]["frequency_mae"] > 0
        splits[(r["arm"], r["size"], r["rep"])] = json.loads(
            (out / "train" / "tier1" / r["name"] / "split.json").read_text())
    tests = {json.dumps([v["test_near"], v["test_far"]]) for v in splits.values()}
    assert len(tests) == 1  # one test set for every arm, size and replicate
    for (_arm, n, rep), sp in splits.items():
        assert sp["train"] == splits[("ef", n, rep)]["train"]  # paired across arms
    small, large = s["sizes"]
    for rep in range(s["replicates"]["n"]):
        a, b = splits[("ef", small, rep)]["train"], splits[("ef", large, rep)]["train"]
        assert b[:small] == a  # nested
    assert splits[("ef", large, 0)]["train"] != splits[("ef", large, 1)]["train"]  # replicates differ

    # cost: every arm measured; E-F-H costs more per step than E-F
    cost = state["stages"]["cost"]["result"]["ethanol"]
    names = {cost["arm_names"][a]: v for a, v in cost["arms"].items()}
    assert set(names) == set(s["arms"])
    assert names["ef_h"]["step_s_median"] > names["ef"]["step_s_median"]

    # report: verdicts, the Holm family, multipliers, costs, tier 2, plot
    text = (out / "results" / "phl_results.md").read_text()
    assert "**F1 cost, ethanol**: an E-F-H step costs" in text
    for head in ("## Verdicts (tier 1)", "## Pre-registered family", "data multiplier", "## Cost per step",
                 "## Tier 2", "Direction of each comparison"):
        assert head in text
    js = json.loads((out / "results" / "phl_summary.json").read_text())
    fam = js["analysis"]["tests"]
    assert {t["finding"] for t in fam} == {"F1", "F2", "F2-far"} and len(fam) == 7
    assert all(t["n"] == s["replicates"]["n"] and t["p_holm"] >= t["p"] for t in fam)
    assert all(0 < t["ratio_low"] <= t["ratio"] <= t["ratio_high"] for t in fam)
    mult = js["multipliers"]["ethanol"]["force_rmse_near"]
    assert len(mult) == (len(s["arms"]) - 1) * len(s["sizes"])
    assert js["tier2"]["verdicts"]["F2"][s["tier2"]["name"]].startswith("not tested")
    png = out / "results" / "phl_learning_curves_ethanol.png"
    assert png.read_bytes()[:4] == b"\x89PNG"

    # resume: nothing retrained, the report rebuilt identically
    before = (out / "results" / "phl_summary.json").read_text()
    again = bench.main(["--quick", "--out", str(out), "--jobs", "1"])
    state2 = json.loads((out / "state.json").read_text())
    for k in ("data", "cost", "train", "tier2"):
        assert state2["stages"][k]["attempts"] == 1
    assert again["verdicts"] == summary["verdicts"]
    assert json.loads((out / "results" / "phl_summary.json").read_text())["analysis"] == json.loads(before)["analysis"]
    # a changed setting in the same folder is refused
    s2 = {**s, "sizes": [4, 6]}
    with pytest.raises(ValueError, match="other settings"):
        run_study(out, s2, out / "x.md", jobs=1)
