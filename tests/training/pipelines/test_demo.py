"""The main job end to end: a miniature of the chignolin demo (issue 5 "Tests and CI").

Every stage runs for real (PeptideBuilder/pdbfixer build, OpenMM Amber14/GBn2 MD with forces,
Cα map, FD Term-1 targets, CGSchNet training of FM / FM+AA / FM+AA+Cov, CG MD, evaluation,
report) at the ``ci`` scale, ~1.5–3 min on 2 CPU cores. The checks are consistency checks
of each stage's outputs, not claims about the science (the miniature is far from converged).
"""

import json
import math
import re
from dataclasses import asdict

import h5py
import numpy as np
import pytest

from hessid.training.pipelines.demo import SCALES, VARIANTS, run_demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    messages = []
    report = run_demo(out, scale="ci", platform="CPU", progress=False, say=messages.append)
    return out, report, messages


def test_every_stage_finishes_and_the_report_is_written(demo_dir):
    out, report, messages = demo_dir
    assert report.exists() and report.stat().st_size > 1000
    state = json.loads((out / "demo_state.json").read_text())
    expected = ["build", "aa_md", "targets", "evaluate", "report"]
    expected += [f"{stage}:{label}" for label, _ in VARIANTS for stage in ("train", "simulate")]
    for stage in expected:
        assert state["stages"][stage]["done"], stage
        assert state["stages"][stage]["seconds"] > 0
    assert any("report" in m for m in messages)
    for png in ("free_energy_tica.png", "tic_densities.png", "structure.png", "training_curves.png"):
        assert (report.parent / png).stat().st_size > 1000, png


def test_dataset_holds_finite_forces_and_term1_with_probe_attributes(demo_dir):
    out, _, _ = demo_dir
    sc = SCALES["ci"]
    with h5py.File(out / "data" / "chignolin" / "chignolin.h5", "r") as h5:
        n_frames = sc.aa_steps // sc.aa_stride
        assert h5["coordinates"].shape[0] == n_frames
        assert np.isfinite(h5["forces"][:]).all()
        term1 = h5["cg/hvp_term1"]
        assert term1.shape == (n_frames, sc.n_probes, 10, 3)  # 10 Cα beads
        assert np.isfinite(term1[:]).all()
        assert term1.attrs["probe_kind"] == "gaussian"
        assert h5["cg/hvp_term1_done"][:].all()


def test_report_table_equals_metrics_json(demo_dir):
    out, report, _ = demo_dir
    page = report.read_text()
    for label, _ in VARIANTS:
        doc = json.loads((out / "evaluation" / label / "metrics.json").read_text())
        assert doc["model"] == label
        row = re.search(rf'<tr data-protein="chignolin" data-model="{re.escape(label)}">(.*?)</tr>', page)
        assert row, f"no report row for {label}"
        cells = dict(re.findall(r'data-metric="(\w+)" data-value="([^"]+)"', row.group(1)))
        assert set(cells) == set(doc["metrics"])
        for key, value in doc["metrics"].items():
            assert math.isfinite(value), (label, key)
            assert float(cells[key]) == value, (label, key)


def test_rerunning_a_finished_demo_skips_every_stage(demo_dir):
    out, report, _ = demo_dir
    messages = []
    again = run_demo(out, scale="ci", platform="CPU", progress=False, say=messages.append)
    assert again == report
    stage_lines = [m for m in messages if m.startswith("[demo]") and "finished" not in m]
    assert stage_lines and all("skipped" in m for m in stage_lines)


def test_a_folder_of_another_scale_is_refused(demo_dir):
    out, _, _ = demo_dir
    with pytest.raises(ValueError, match="other settings"):
        run_demo(out, scale="default", progress=False, say=lambda m: None)


def test_a_folder_of_the_first_demo_version_resumes_from_its_state(tmp_path):
    """An old ``demo_state.json`` (stage results beside done/seconds, absolute paths) is read:
    every stage it marks done is skipped and its report path returned."""
    out = tmp_path / "old"
    out.mkdir()
    settings = {"scale": "ci", "name": "chignolin", "sequence": "GYDPETGTWG", "pdb": None, "seed": 0,
                "sizes": asdict(SCALES["ci"])}
    stages = {name: {"done": True, "seconds": 1.0} for name in ("build", "aa_md", "targets", "evaluate")}
    stages["build"]["pdb"] = str(out / "data" / "chignolin" / "chignolin.pdb")
    stages["targets"]["summary"] = "TargetsResult(path=...)"  # the first version stored a repr
    for label, _ in VARIANTS:
        stages[f"train:{label}"] = {"done": True, "seconds": 1.0, "model": str(out / "runs" / label / "model.pt"),
                                    "metrics_csv": str(out / "runs" / label / "metrics.csv")}
        stages[f"simulate:{label}"] = {"done": True, "seconds": 1.0, "result": "SimulationResult(...)"}
    stages["report"] = {"done": True, "seconds": 1.0, "report": str(out / "report" / "report.html")}
    (out / "demo_state.json").write_text(json.dumps({"stages": stages, "settings": settings}))
    messages = []
    report = run_demo(out, scale="ci", platform="CPU", progress=False, say=messages.append)
    assert report == out / "report" / "report.html"
    assert any("older hessid version" in m for m in messages)
    stage_lines = [m for m in messages if m.startswith("[demo]") and "finished" not in m and "older" not in m]
    assert len(stage_lines) == len(stages) and all("skipped" in m for m in stage_lines)
    state = json.loads((out / "demo_state.json").read_text())
    assert state["version"] == 1 and state["stages"]["report"]["result"]["report"] == str(report)
