"""The stage runner: resume skips done stages, wall time accumulates, JSON state with relative paths."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hessid.training.pipelines.runner import (
    STATE_VERSION,
    StageRunner,
    read_json,
    relative_path,
    to_json,
    write_json,
)


def _runner(tmp_path, messages=None):
    return StageRunner(tmp_path / "run", "state.json", label="t",
                       say=(messages.append if messages is not None else lambda m: None))


def test_a_rerun_skips_stages_marked_done_and_returns_their_stored_result(tmp_path):
    calls = []

    def stage():
        calls.append(1)
        return {"n": 3}

    first = _runner(tmp_path)
    assert first.run("a", stage) == {"n": 3}
    messages: list[str] = []
    again = _runner(tmp_path, messages)
    assert again.done("a")
    assert again.run("a", stage) == {"n": 3}
    assert len(calls) == 1
    assert messages == [f"[t] a: done earlier ({again.seconds('a'):.0f} s), skipped"]
    assert again.timings == {"a": 0.0}


def test_a_stage_done_for_another_key_runs_again(tmp_path):
    calls = []
    runner = _runner(tmp_path)
    runner.run("a", lambda: calls.append(1), key={"steps": 10})
    runner.run("a", lambda: calls.append(1), key={"steps": 10})
    assert len(calls) == 1
    reopened = _runner(tmp_path)
    assert reopened.done("a", key={"steps": 10}) and not reopened.done("a", key={"steps": 20})
    reopened.run("a", lambda: calls.append(1), key={"steps": 20})
    assert len(calls) == 2
    assert reopened.stages["a"]["key"] == {"steps": 20}


def test_rerun_true_runs_a_done_stage_again(tmp_path):
    calls = []
    runner = _runner(tmp_path)
    runner.run("report", lambda: calls.append(1))
    runner.run("report", lambda: calls.append(1), rerun=True)
    assert len(calls) == 2 and runner.stages["report"]["attempts"] == 2


def test_wall_time_accumulates_over_invocations_including_failed_attempts(tmp_path):
    def slow_fail():
        time.sleep(0.05)
        raise RuntimeError("killed")

    runner = _runner(tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        runner.run("md", slow_fail)
    after_fail = _runner(tmp_path)
    assert not after_fail.done("md")
    t_fail = after_fail.seconds("md")
    assert t_fail >= 0.05

    def slow_ok():
        time.sleep(0.05)
        return {}

    after_fail.run("md", slow_ok)
    final = _runner(tmp_path)
    assert final.done("md")
    assert final.seconds("md") >= t_fail + 0.05
    assert final.stages["md"]["attempts"] == 2
    assert final.wall_seconds() == {"md": final.seconds("md")}
    assert final.seconds() == final.seconds("md")


def test_state_is_plain_json_with_paths_relative_to_the_run_folder(tmp_path):
    @dataclass
    class Result:
        path: Path
        frames: int

    runner = _runner(tmp_path)
    inside = runner.run_dir / "train" / "model.pt"
    outside = tmp_path / "elsewhere" / "data.h5"
    result = runner.run("train", lambda: {"model": inside, "data": outside, "summary": Result(inside, 4),
                                          "by_size": {200: inside}, "loss": np.float32(0.5),
                                          "steps": np.int64(7), "curve": np.arange(3)})
    state = json.loads((runner.run_dir / "state.json").read_text())
    assert state["format"] == "hessid-stages" and state["version"] == STATE_VERSION
    stored = state["stages"]["train"]["result"]
    assert stored == result
    assert stored["model"] == "train/model.pt"
    assert stored["data"] == outside.as_posix()  # outside the run folder: absolute
    assert stored["summary"] == {"path": "train/model.pt", "frames": 4}
    assert stored["by_size"] == {"200": "train/model.pt"}
    assert stored["loss"] == 0.5 and stored["steps"] == 7 and stored["curve"] == [0, 1, 2]
    assert runner.resolve(stored["model"]) == inside and runner.resolve(stored["data"]) == outside
    assert "PosixPath" not in (runner.run_dir / "state.json").read_text()


def test_a_value_without_a_json_form_is_refused_not_stored_as_a_repr(tmp_path):
    runner = _runner(tmp_path)
    with pytest.raises(TypeError, match="cannot store a object"):
        runner.run("bad", lambda: {"x": object()})
    assert not runner.done("bad")
    with pytest.raises(TypeError, match="keys"):
        to_json({(1, 2): 3})


def test_settings_are_recorded_and_other_settings_refused(tmp_path):
    runner = _runner(tmp_path)
    runner.use_settings({"scale": "ci", "seed": 0})
    _runner(tmp_path).use_settings({"scale": "ci", "seed": 0})  # same settings: fine
    with pytest.raises(ValueError, match="other settings"):
        _runner(tmp_path).use_settings({"scale": "default", "seed": 0})


def test_a_state_of_the_first_demo_version_is_read_and_rewritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = {"stages": {"build": {"done": True, "seconds": 2.5, "pdb": "/abs/chignolin.pdb"},
                      "aa_md": {"done": False, "seconds": 4.0}},
           "settings": {"scale": "ci"}}
    (run / "state.json").write_text(json.dumps(old))
    messages: list[str] = []
    runner = _runner(tmp_path, messages)
    assert any("older hessid version" in m for m in messages)
    assert runner.done("build") and not runner.done("aa_md")
    assert runner.result("build") == {"pdb": "/abs/chignolin.pdb"}
    assert runner.seconds("aa_md") == 4.0
    assert runner.data["settings"] == {"scale": "ci"}
    runner.run("aa_md", lambda: {"frames": 10})
    state = json.loads((run / "state.json").read_text())
    assert state["version"] == STATE_VERSION
    assert state["stages"]["aa_md"]["seconds"] >= 4.0 and state["stages"]["aa_md"]["done"]


def test_a_state_of_a_newer_version_or_not_json_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(json.dumps({"format": "hessid-stages", "version": STATE_VERSION + 1,
                                                "stages": {}}))
    with pytest.raises(ValueError, match="version"):
        _runner(tmp_path)
    (run / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON stage state"):
        _runner(tmp_path)


def test_write_json_is_atomic_and_read_json_tolerates_missing_or_partial_files(tmp_path):
    path = write_json(tmp_path / "a" / "doc.json", {"p": tmp_path / "a" / "x"}, tmp_path)
    assert read_json(path) == {"p": "a/x"}
    assert not list((tmp_path / "a").glob("*.tmp"))
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "partial.json").write_text('{"a": ')
    assert read_json(tmp_path / "partial.json") is None
    assert relative_path(tmp_path, tmp_path) == "."
