"""End to end: ``benchmarks/ala2_v2.py --quick`` runs every stage of the second study and resumes.

The miniature (2 × 20 ps reference, a handful of labels, 40 training steps, 1 ps of CG MD) means
nothing scientifically; this checks that every stage runs, that every arm gets paired rows and a
verdict sentence, and that a rerun recomputes nothing.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from hessid.training.learning.models import load_potential
from hessid.training.pipelines import ala2_v2_diagnosis, ala2_v2_gate
from hessid.training.pipelines.ala2_v2_study import md_work
from hessid.training.pipelines.runner import StageRunner
from tests.helpers import load_benchmark

pytest.importorskip("openmm")
pytest.importorskip("torchmdnet")

@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_study_runs_every_arm_and_resumes_without_recomputing(tmp_path):
    bench = load_benchmark('ala2_v2')
    results = tmp_path / "report" / "ala2_v2_results.md"
    run = tmp_path / "run"
    summary = bench.main(["--quick", "--out", str(run), "--jobs", "1", "--results", str(results)])
    s = bench.settings("quick")
    text = results.read_text()
    for arm in s["arms"]:
        assert arm in text
    assert "gate" in summary and isinstance(summary["gate"]["passed"], bool)
    pops = summary["reference_basins"]  # the 2 × 20 ps miniature may never visit αR: ΔG is then NaN
    both = pops["alpha_R"] > 0 and pops["beta_PII"] > 0
    assert math.isfinite(summary["reference_delta_g"]) == both
    n_models = len(s["fm_sizes"]) * 2 + (len(s["arms"]) - 1) * len(s["arm_sizes"]) * 2
    models = sorted(run.glob("train/*/model.pt"))
    assert len(models) == n_models
    assert len(list(run.glob("cgmd/*/md_done.json"))) == n_models
    assert (results.parent / "ala2_v2" / "learning_curves.png").stat().st_size > 1000
    # every stage resumes from its outputs: a second call rewrites none of them
    products = sorted([*run.glob("data/*/*/*.h5"), *run.glob("labels/**/*.h5"), *run.glob("targets/**/*.h5"),
                       *models, *run.glob("cgmd/*/*.dcd")])
    stamps = {p: p.stat().st_mtime_ns for p in products}
    again = bench.main(["--quick", "--out", str(run), "--jobs", "1", "--results", str(results)])
    assert {p: p.stat().st_mtime_ns for p in products} == stamps
    assert again["gate"] == summary["gate"]
    # the gate report (post-processing) reads the same run and agrees with the gate stage
    dest = tmp_path / "gate_report"
    assert ala2_v2_gate.main([str(run), str(dest)]) == 0
    gate_md = (dest / "ala2_v2_gate.md").read_text()
    assert f"**Gate {'passed' if summary['gate']['passed'] else 'failed'}.**" in gate_md
    assert gate_md == results.read_text().split("### Metric 1")[0].replace("](ala2_v2/", "](ala2_v2_gate/") + \
        "![learning curves](ala2_v2_gate/learning_curves.png)\n"
    assert (dest / "ala2_v2_gate" / "learning_curves.png").stat().st_size > 1000
    # negative controls: a run that has not reached the gate, and a folder that is no run: exit 2, nothing written
    partial = tmp_path / "partial"
    partial.mkdir()
    state = json.loads((run / "state.json").read_text())
    del state["stages"]["gate"]
    (partial / "state.json").write_text(json.dumps(state))
    shutil.copy(run / "settings.json", partial / "settings.json")
    for bad in (partial, tmp_path / "nothing"):
        assert ala2_v2_gate.main([str(bad), str(tmp_path / "bad_dest")]) == 2
    assert not (tmp_path / "bad_dest").exists() and not (tmp_path / "nothing").exists()
    # the gate cause-finding (docs/results/ala2_v2.md, "Cause-finding plan") on the same run: every
    # variant paired with the gate's models; the run folder is only read
    run_files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    diag = tmp_path / "diag"
    assert ala2_v2_diagnosis.main([str(run), str(diag), "--jobs", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == run_files
    res = json.loads((diag / "ala2_v2_diagnosis.json").read_text())
    assert res["gate"]["passed"] == summary["gate"]["passed"]
    assert res["gate"]["dg_error_mean"] == pytest.approx(summary["gate"]["mean_delta_g_error"], rel=1e-12, nan_ok=True)
    assert set(res["variants"]) == set(ala2_v2_diagnosis.VARIANTS)
    name = f"FM_n{s['gate']['md_size']}_s0i0"
    base_sim = json.loads((run / "cgmd" / name / "simulation.json").read_text())
    prior_sim = json.loads((diag / "prior_only" / "cgmd" / name / "simulation.json").read_text())
    assert prior_sim["provenance"]["prior_only"] is True and prior_sim["seed"] == base_sim["seed"]
    assert prior_sim["config"] == base_sim["config"]  # same replicas, steps, masses, noise seed
    base_x = np.fromfile(run / "cgmd" / name / "replica_000.dcd", dtype=np.uint8)
    assert not np.array_equal(np.fromfile(diag / "prior_only" / "cgmd" / name / "replica_000.dcd", dtype=np.uint8),
                              base_x)  # the network is left out: another trajectory
    # every variant started from the gate's start frames with its noise seeds (md_work of the study)
    r = ala2_v2_diagnosis.load_run(run)
    gate_runs = ala2_v2_diagnosis.md_size_runs(r)
    want = [{"name": j["name"], "seed": j["seed"], "starts_sha256": ala2_v2_diagnosis.starts_digest(j["starts"])}
            for j in md_work(run, r["settings"], r["split"], gate_runs, s["cgmd"])]
    diag_state = StageRunner(diag, ala2_v2_diagnosis.DIAG_STATE)
    for stage in ("prior_only", "timestep"):
        assert diag_state.result(stage)["jobs"] == want
    width_jobs = diag_state.result("width_md")["jobs"]
    assert [(j["seed"], j["starts_sha256"]) for j in width_jobs] == [(j["seed"], j["starts_sha256"]) for j in want]
    ts_sim = json.loads((diag / "timestep" / "cgmd" / name / "simulation.json").read_text())
    assert ts_sim["config"]["timestep_fs"] == base_sim["config"]["timestep_fs"] / 2
    assert ts_sim["config"]["n_steps"] == 2 * base_sim["config"]["n_steps"]
    assert ts_sim["frame_interval_ps"] == pytest.approx(base_sim["frame_interval_ps"], rel=1e-12)
    wide = load_potential(diag / "width" / "train" / name / "model.pt")
    narrow = load_potential(run / "train" / name / "model.pt")
    n_par = [sum(p.numel() for p in m.parameters()) for m in (narrow, wide)]
    assert n_par[1] > 2 * n_par[0]  # width × 2: the dense layers grow ≈ × 4
    assert (diag / "ala2_v2_diagnosis" / "delta_g.png").stat().st_size > 1000
    assert "**Reading.**" in (diag / "ala2_v2_diagnosis.md").read_text()
    # a rerun recomputes no trajectory and no model; a folder started on another run is refused
    diag_files = {p: p.stat().st_mtime_ns for p in diag.rglob("*") if p.suffix in (".dcd", ".pt")}
    assert ala2_v2_diagnosis.main([str(run), str(diag), "--jobs", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in diag.rglob("*") if p.suffix in (".dcd", ".pt")} == diag_files
    # a kill inside a stage: the stage is not done and one model has no md_done.json; the rerun
    # resumes it from its checkpoint and gives the same summary
    before = json.loads((diag / "ala2_v2_diagnosis.json").read_text())
    state = json.loads((diag / ala2_v2_diagnosis.DIAG_STATE).read_text())
    del state["stages"]["timestep"]
    (diag / ala2_v2_diagnosis.DIAG_STATE).write_text(json.dumps(state))
    (diag / "timestep" / "cgmd" / name / "md_done.json").unlink()
    assert ala2_v2_diagnosis.main([str(run), str(diag), "--jobs", "1"]) == 0
    after = json.loads((diag / "ala2_v2_diagnosis.json").read_text())
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    with pytest.raises(ValueError, match="other settings"):
        ala2_v2_diagnosis.run_diagnosis(run, diag, width_factor=3)
