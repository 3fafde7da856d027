"""``benchmarks/thermo_t2.py --quick`` runs every arm, writes the table and resumes without
recomputing (the miniature's numbers mean nothing)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest

from tests.helpers import load_benchmark


@pytest.mark.slow
def test_quick_t2_study_runs_every_arm_and_resumes_without_recomputing(tmp_path):
    bench = load_benchmark('thermo_t2')
    table, figure = tmp_path / "t2.md", tmp_path / "t2.png"
    first = bench.main(["--quick", "--out", str(tmp_path / "run"), "--results", str(table), "--figure", str(figure)])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = table.read_text()
    for arm in bench.settings("quick")["arms"]:
        assert f"| {arm} |" in text
        assert arm in first["summary"]
    assert "| 200 | **exact** | 0.377 |" in text  # the quadrature row of the pre-registration
    assert first["summary"]["M0-300"]["recovers_parameters"] is False
    again = bench.main(["--quick", "--out", str(tmp_path / "run")])
    assert again["computed"] == [] and again["table"] == first["table"]


def test_t2_figure_redraws_from_a_result_json_and_refuses_another_file(tmp_path, capsys):
    bench = load_benchmark('thermo_t2')
    result = bench.main(["--quick", "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")])
    out = tmp_path / "again.png"
    again = bench.main(["--from-json", str(tmp_path / "r.json"), "--figure", str(out)])
    assert again["summary"] == json.loads(json.dumps(result["summary"]))  # read back, nothing trained
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # negative controls: a JSON that is not a T2 result, and a missing file: exit 2, no figure
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "something else"}))
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    broken = json.loads((tmp_path / "r.json").read_text())
    del broken["summary"][next(iter(broken["summary"]))]["temperatures"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    capsys.readouterr()  # drop what the run above printed
    for bad, says in (("other.json", "not a thermo_t2 result"), ("missing.json", "cannot read"),
                      ("list.json", "not a thermo_t2 result"), ("broken.json", "incomplete thermo_t2 result")):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--from-json", str(tmp_path / bad), "--figure", str(tmp_path / "bad.png")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert sum(ln.startswith("error:") for ln in err.splitlines()) == 1, err
        assert f"error: {tmp_path / bad}: {says}" in err and "Traceback" not in err, err
    assert not (tmp_path / "bad.png").exists()
    assert plt.get_fignums() == []  # the broken result's half-drawn figure was closed
    # an unwritable figure path is blamed on --figure, not on the (good) JSON file
    with pytest.raises(SystemExit) as exc:
        bench.main(["--from-json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "no" / "dir.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"error: --figure {tmp_path / 'no' / 'dir.png'}: cannot write" in err, err
