"""End to end: ``benchmarks/thermo_ala2.py --quick`` runs every stage of the alanine-dipeptide
temperature-transfer study (docs/results/thermo.md) and resumes.

The miniature (2 runs × 4 temperatures × 1.2 ps of AA, 4 training steps, 80 fs of CG MD) means
nothing scientifically; this checks that one multi-temperature file per run holds every
temperature, that each task trains on its three temperatures and predicts the fourth, that the
arms are paired (same draw, same starts, same noise), that every comparison of the
pre-registered family gets a row and every verdict a sentence, and that a rerun recomputes nothing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.helpers import load_benchmark

pytest.importorskip("openmm")
pytest.importorskip("torchmdnet")

from hessid.training.data.reader import open_dataset  # noqa: E402
from hessid.training.pipelines.thermo_ala2 import PRIMARY, run_study  # noqa: E402
from hessid.training.pipelines.thermo_ala2_figures import main as figures_main  # noqa: E402


@pytest.mark.timeout(600)
def test_quick_transfer_study_runs_every_stage_pairs_the_arms_and_resumes(tmp_path):
    bench = load_benchmark('thermo_ala2')
    s = bench.settings("quick")
    run, results = tmp_path / "run", tmp_path / "report" / "thermo_ala2_results.md"
    summary = bench.main(["--quick", "--out", str(run), "--jobs", "1", "--results", str(results)])

    # one multi-temperature AA file per independent run, every temperature at full length
    per_t = s["aa"]["steps"] // s["aa"]["stride"]
    for i in range(s["aa"]["n_runs"]):
        with open_dataset(run / "aa" / f"ala2t_r{i}" / f"ala2t_r{i}.h5") as ds:
            assert ds.temperature_values == tuple(s["temperatures"])
            np.testing.assert_array_equal(np.unique(ds.temperatures(), return_counts=True)[1], [per_t] * 4)
            assert ds.cg.coordinates().shape == (4 * per_t, 5, 3)
    assert summary["aa"]["total_ns"] == pytest.approx(
        s["aa"]["n_runs"] * 4 * s["aa"]["steps"] * s["aa"]["timestep"] * 1e-6)
    assert summary["aa"]["ns_per_day_per_process"] and all(v > 0 for v in summary["aa"]["ns_per_day_per_process"])
    assert set(summary["reference"]) == {"300K", "350K", "400K", "450K"}
    for ref in summary["reference"].values():
        assert ref["n_frames"] == s["aa"]["n_runs"] * per_t
        assert sum(ref["populations"].values()) == pytest.approx(1.0)

    # each task trains on its three temperatures and predicts the fourth; the target file is single-T
    n = s["data"]["frames_per_temperature"]
    for task, spec in s["tasks"].items():
        for k in s["seeds"]:
            with open_dataset(run / "data" / task / f"s{k}" / "train.h5") as ds:
                assert ds.temperature_values == tuple(spec["train"])
                assert len(ds.temperatures()) == 3 * n
            with open_dataset(run / "data" / task / f"s{k}" / "target.h5") as ds:
                assert ds.temperature == spec["target"]

    # every (task, arm, seed) trained and simulated at the target T; arms paired within a seed
    n_models = len(s["tasks"]) * len(s["arms"]) * len(s["seeds"])
    assert len(list(run.glob("train/*/model.pt"))) == n_models
    assert len(list(run.glob("cgmd/*/md_done.json"))) == n_models
    for task, spec in s["tasks"].items():
        for k in s["seeds"]:
            infos = {arm: json.loads((run / "cgmd" / f"{task}_{arm}_s{k}" / "simulation.json").read_text())
                     for arm in s["arms"]}  # fmt: skip
            assert {i["config"]["temperature_K"] for i in infos.values()} == {spec["target"]}
            assert {i["seed"] for i in infos.values()} == {s["cgmd"]["noise_seed"] + k}
            aware = {arm: i["model_temperature"]["temperature_aware"] for arm, i in infos.items()}
            assert aware == {"M0-pool": False, "M2-F": True, "M2-FU": True, "FM-target": False}
            cfgs = {arm: json.loads((run / "train" / f"{task}_{arm}_s{k}" / "train_done.json").read_text())["data"]
                    for arm in s["arms"]}  # fmt: skip
            assert cfgs["M0-pool"] == cfgs["M2-F"] == cfgs["M2-FU"] != cfgs["FM-target"]

    # the metrics and the pre-registered family
    m = summary["metrics"]
    for task in s["tasks"]:
        for arm in s["arms"]:
            for rec in m[task][arm].values():
                assert rec["replicas"] == 2 * s["cgmd"]["n_per_basin"]
                if rec["replicas_alive"]:
                    assert math.isfinite(rec["kl"]) and rec["kl"] >= 0
                    assert sum(rec["populations"].values()) == pytest.approx(1.0)
    assert any(rec["replicas_alive"] for t in m.values() for a in t.values() for rec in a.values())
    primary = [r for r in summary["comparisons"] if r["family"] == "primary"]
    assert [(r["task"], r["arm"], r["base"]) for r in primary] == [
        (t, a, b) for t in s["tasks"] for a, b in PRIMARY]
    for r in summary["comparisons"]:
        assert r["n"] <= len(s["seeds"])
        assert math.isnan(r["p_holm"]) or r["p"] <= r["p_holm"] <= 1.0
    assert len(summary["verdicts"]) == len(primary) + 2 * len(s["tasks"])
    for task, st in summary["status"].items():
        target = summary["reference"][f"{s['tasks'][task]['target']:g}K"]
        if not math.isfinite(target["delta_g"]):  # 2 × 1.2 ps seldom reach αR: the criteria say so
            assert st["resolved"] is False and st["void"] is True
            assert sum(v.startswith(f"{task}: ") and "void" in v.lower() for v in summary["verdicts"]) == 1 + len(PRIMARY)
    text = results.read_text()
    for needle in ("### AA reference", "| 450 |", "interpolation: train 300, 400, 450 K, predict 350 K",
                   "extrapolation: train 300, 350, 400 K, predict 450 K", "ns/day", *s["arms"]):
        assert needle in text, needle

    # the figures: one transfer plot and one φ/ψ plot per task, as PNG files
    assert figures_main([str(run), str(tmp_path / "fig")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == sorted(["thermo_ala2_transfer.png", *[f"thermo_ala2_phi_psi_{t}.png" for t in s["tasks"]]])
    for name in pngs:
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every stage resumes from its outputs: a second call rewrites no product
    products = sorted([*run.glob("aa/*/*.h5"), *run.glob("data/*/*/*.h5"), *run.glob("train/*/model.pt"),
                       *run.glob("cgmd/*/*.dcd")])
    stamps = {p: p.stat().st_mtime_ns for p in products}
    again = bench.main(["--quick", "--out", str(run), "--jobs", "1", "--results", str(results)])
    assert {p: p.stat().st_mtime_ns for p in products} == stamps
    assert again["verdicts"] == summary["verdicts"]
    # negative controls: a folder started with other settings, an unknown stage
    other = bench.settings("quick")
    other["seeds"] = [0, 1, 2]
    with pytest.raises(ValueError, match="other settings"):
        run_study(run, other, results, jobs=1)
    with pytest.raises(ValueError, match="unknown stage"):
        run_study(run, bench.settings("quick"), results, jobs=1, stop_after="nope")
    # figures of a folder that is not a run, or whose evaluation has not finished: exit 2, one line
    assert figures_main([str(tmp_path / "nothing"), str(tmp_path / "fig2")]) == 2
    state = json.loads((run / "state.json").read_text())
    state["stages"]["evaluate"]["done"] = False
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "state.json").write_text(json.dumps(state))
    assert figures_main([str(tmp_path / "half"), str(tmp_path / "fig2")]) == 2
    assert not (tmp_path / "fig2").exists()
