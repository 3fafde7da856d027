"""End to end: ``benchmarks/ala2.py --quick`` (issue 6's CI variant) runs every stage and resumes.

The quick mode is a miniature (a few ps of reference, 30 training steps): its numbers mean
nothing, so this checks the pipeline and the report's contents, not the science.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import load_benchmark

pytest.importorskip("openmm")
pytest.importorskip("torchmdnet")

@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2 min on 2 idle cores; generous for a loaded CI machine
def test_quick_benchmark_writes_every_table_and_resumes_without_recomputing(tmp_path):
    bench = load_benchmark('ala2')
    results = tmp_path / "report" / "ala2.md"
    summary = bench.main(["--quick", "--out", str(tmp_path / "run"), "--jobs", "1", "--results", str(results)])
    text = results.read_text()
    variants = bench.settings("quick")["variants"]
    for label in variants:  # one table row per variant, finite φ/ψ KL
        assert f"| {label} | 200 |" in text
    rows = {r["label"]: r for r in summary["rows"]}
    assert set(rows) == set(variants)
    assert all(math.isfinite(r["phi_psi_kl"]) and r["phi_psi_kl"] >= 0 for r in rows.values())
    # the reference CG Hessian and the side-by-side cost exist and reach the report
    assert summary["hessian_reference"] and all(
        math.isfinite(d["frobenius_rel_sem"]) for d in summary["hessian_reference"].values())
    assert set(summary["cost_ms_per_step"]) == set(variants)
    assert "Hessian rel. err." in text and "(ratio to FM)" in text and "Δ φ/ψ KL" in text
    for png in ("data_efficiency.png", "ablation.png", "phi_psi_free_energy.png"):
        assert (results.parent / "ala2" / png).stat().st_size > 1000
    # every stage resumes from its outputs: a second call rewrites none of them
    run = tmp_path / "run"
    products = sorted([*run.glob("reference/*/*.h5"), *run.glob("targets/*/*.h5"), *run.glob("train/*/model.pt"),
                       *run.glob("cgmd/*/*.dcd"), *run.glob("hessian_reference/*/*.h5")])
    assert len(products) >= 2 + 2 + 3 * 2  # AA runs, target files, models and CG trajectories
    stamps = {p: p.stat().st_mtime_ns for p in products}
    again = bench.main(["--quick", "--out", str(run), "--jobs", "1", "--results", str(results)])
    assert {p: p.stat().st_mtime_ns for p in products} == stamps
    assert again["rows"] == summary["rows"]
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["mode"] == "quick"
