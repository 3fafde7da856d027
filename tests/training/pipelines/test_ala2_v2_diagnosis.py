"""The gate cause-finding of the second alanine-dipeptide study: its rules and refusals (no MD here;
the variants run end to end on the miniature study in test_ala2_v2_benchmark.py)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessid.training.pipelines import ala2_v2_diagnosis as dg
from hessid.training.pipelines import ala2_v2_gate
from hessid.training.pipelines.ala2_v2_study import open_run
from hessid.training.pipelines.runner import STATE_FORMAT, STATE_VERSION
from tests.helpers import load_benchmark

CGMD = load_benchmark("ala2_v2").settings("full")["cgmd"]


@given(k=st.integers(1, 8), n_saved=st.integers(1, 400))
def test_smaller_time_step_keeps_length_and_frame_spacing_in_ps(k, n_saved):
    n_steps = n_saved * CGMD["save_interval"]
    c = dg.scaled_cgmd(CGMD, n_steps, 1.0 / k)
    assert c["timestep"] == pytest.approx(CGMD["timestep"] / k, rel=1e-12)
    assert c["n_steps"] * c["timestep"] == pytest.approx(n_steps * CGMD["timestep"], rel=1e-12)
    assert c["save_interval"] * c["timestep"] == pytest.approx(CGMD["save_interval"] * CGMD["timestep"], rel=1e-12)
    assert {key: c[key] for key in CGMD if key not in ("timestep", "save_interval")} == \
        {key: CGMD[key] for key in CGMD if key not in ("timestep", "save_interval")}


@pytest.mark.parametrize("factor", [0.0, -0.5, 0.4, 1.5, 2.0])
def test_time_step_factor_that_is_not_one_over_an_integer_is_refused(factor):
    with pytest.raises(ValueError, match="timestep_factor"):
        dg.scaled_cgmd(CGMD, 1000, factor)


def test_width_variant_changes_the_embedding_width_only():
    s = load_benchmark("ala2_v2").settings("full")
    w = dg.width_settings(s, 2)
    assert w["model"]["embedding_dimension"] == 2 * s["model"]["embedding_dimension"]
    assert {k: v for k, v in w["model"].items() if k != "embedding_dimension"} == \
        {k: v for k, v in s["model"].items() if k != "embedding_dimension"}
    assert {k: v for k, v in w.items() if k != "model"} == {k: v for k, v in s.items() if k != "model"}
    assert s["model"]["embedding_dimension"] == 32  # the study's settings are not modified in place
    for bad in (1, 0, 1.5):
        with pytest.raises(ValueError, match="width_factor"):
            dg.width_settings(s, bad)


def test_network_share_is_the_ratio_of_replicate_means_over_usable_pairs():
    ref = 1.0
    full, prior = [0.8, 0.4, math.nan, 0.6], [0.0, 0.2, 0.1, math.nan]  # pairs 3 and 4 unusable
    out = dg.network_share(ref, full, prior)
    assert out["network_share_n"] == 2
    assert out["network_share"] == pytest.approx((0.6 - 0.1) / (1.0 - 0.1), rel=1e-12)
    ratios = [(f - p) / (ref - p) for f, p in zip(full[:2], prior[:2], strict=True)]
    assert abs(out["network_share"] - sum(ratios) / 2) > 0.01  # not the mean of per-replicate ratios
    assert dg.network_share(ref, [1.0, 1.0], [0.0, 0.0])["network_share"] == pytest.approx(1.0)  # the network closes it
    assert dg.network_share(ref, [0.0, 0.0], [0.0, 0.0])["network_share"] == 0.0  # it adds nothing
    assert math.isnan(dg.network_share(ref, [0.5], [0.995])["network_share"])  # gap < 0.01: no ratio
    none = dg.network_share(ref, [math.nan], [0.0])
    assert none["network_share_n"] == 0 and math.isnan(none["network_share"])


@pytest.mark.parametrize(("gate_passed", "passes", "fixes", "adopted"), [
    (False, {"timestep": True, "width": True}, ["timestep", "width"], "timestep"),  # the page's order decides
    (False, {"timestep": False, "width": True}, ["width"], "width"),
    (False, {"timestep": False, "width": False}, [], None),
    (True, {"timestep": True, "width": False}, ["timestep"], None),  # a passed gate adopts nothing
    (False, {"prior_only": True}, [], None),  # prior-only MD is a diagnostic, never a fix
])  # fmt: skip
def test_first_fixing_variant_in_the_page_order_is_adopted(gate_passed, passes, fixes, adopted):
    variants = {k: {"gate_passes": v} for k, v in passes.items()}
    assert dg.adopted_fix(gate_passed, variants) == (fixes, adopted)


def _summary(gate_passed: bool, ts_passes: bool, ts_diff=(-0.3, -0.5, -0.1)) -> dict:
    m, lo, hi = ts_diff
    variants = {
        "prior_only": {"dg_error_mean": 0.9, "network_share": 0.2, "network_share_n": 3},
        "timestep": {"timestep_fs": 1.0, "dg_error_mean": 0.1 if ts_passes else 0.5, "gate_passes": ts_passes,
                     "dg_diff": {"mean": m, "low": lo, "high": hi}},
        "width": {"embedding_dimension": 64, "dg_error_mean": 0.45, "gate": {"criterion_2": True},
                  "gate_passes": False},
    }  # fmt: skip
    fixes, adopted = dg.adopted_fix(gate_passed, variants)
    return {"tolerance": 0.2, "gate": {"passed": gate_passed, "dg_error_mean": 0.1 if gate_passed else 0.6,
                                       "criterion_2": True},
            "variants": variants, "fixes": fixes, "adopted": adopted}  # fmt: skip


def test_reading_names_the_adopted_fix_or_says_void():
    fixed = " ".join(dg.reading(_summary(False, True)))
    assert "Adopted for the second gate attempt: timestep" in fixed
    assert "the time step matters" in fixed and "share 0.20" in fixed and "3 replicates" in fixed
    void = " ".join(dg.reading(_summary(False, False, ts_diff=(0.05, -0.2, 0.3))))
    assert "the study is void" in void and "no resolved time-step effect" in void and "Adopted" not in void
    passed = " ".join(dg.reading(_summary(True, True)))
    assert "nothing is adopted" in passed and "void" not in passed


def _partial_run(path, stages):
    path.mkdir()
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "settings": None,
             "stages": {n: {"done": True, "seconds": 0.0, "attempts": 1, "result": {}} for n in stages}}
    (path / "state.json").write_text(json.dumps(state))
    (path / "settings.json").write_text(json.dumps(load_benchmark("ala2_v2").settings("quick")))
    return path


@pytest.mark.parametrize("tool", [dg, ala2_v2_gate], ids=["diagnosis", "gate_report"])
def test_post_processing_refuses_an_unfinished_run_or_no_run_with_one_line_and_writes_nothing(tmp_path, capsys, tool):
    last = tool.NEEDED[-1]
    partial = _partial_run(tmp_path / "partial", [n for n in tool.NEEDED if n != last])
    for bad in (partial, tmp_path / "nothing"):
        assert tool.main([str(bad), str(tmp_path / "dest")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: ") and str(bad) in err
    with pytest.raises(ValueError, match=f"{last} not finished"):
        open_run(partial, tool.NEEDED, "x")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "nothing").exists()
    _partial_run(tmp_path / "complete", tool.NEEDED)
    settings, runner = open_run(tmp_path / "complete", tool.NEEDED, "x")  # positive control
    assert settings["mode"] == "quick" and all(runner.done(n) for n in tool.NEEDED)


def test_unknown_stop_point_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="stop_after"):
        dg.run_diagnosis(tmp_path / "run", tmp_path / "diag", stop_after="widht_md")
    assert not (tmp_path / "diag").exists()
