"""``benchmarks/thermo_t2.py --quick`` runs every arm, writes the table and resumes without
recomputing (the miniature's numbers mean nothing)."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark


@pytest.mark.slow
def test_quick_t2_study_runs_every_arm_and_resumes_without_recomputing(tmp_path):
    bench = load_benchmark('thermo_t2')
    table = tmp_path / "t2.md"
    first = bench.main(["--quick", "--out", str(tmp_path / "run"), "--results", str(table)])
    text = table.read_text()
    for arm in bench.settings("quick")["arms"]:
        assert f"| {arm} |" in text
        assert arm in first["summary"]
    assert "| 200 | **exact** | 0.377 |" in text  # the quadrature row of the pre-registration
    assert first["summary"]["M0-300"]["recovers_parameters"] is False
    again = bench.main(["--quick", "--out", str(tmp_path / "run")])
    assert again["computed"] == [] and again["table"] == first["table"]
