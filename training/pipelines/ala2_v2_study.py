"""Driver of the second alanine-dipeptide study (docs/results/ala2_v2.md): stage order, the gate,
the arms and the report. Stages and metrics: :mod:`.ala2_v2` and :mod:`.ala2_v2_eval`; settings:
``benchmarks/ala2_v2.py``.

Order: reference → split → test_labels → gate_train → gate_md (pilot for the CG MD length, then
CG MD of every FM model) → gate (verdict; the study stops here when it fails) → targets →
train_labels → arms_train → arms_md → evaluate → report. A rerun skips every finished stage
and resumes an interrupted one from its own outputs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hessid.training.data.io import copy_frames
from hessid.training.data.labels import compute_conditional_labels, read_labels
from hessid.training.data.reader import open_dataset
from hessid.training.evaluation.statistics import gate as gate_verdict
from hessid.training.evaluation.statistics import (
    noise_corrected_force_error,
    soft_mode_hessian_error,
)
from hessid.training.evaluation.study_v2_report import write_ala2_v2_results
from hessid.training.pipelines import ala2
from hessid.training.pipelines.ala2_v2 import (
    DRAW_RANK,
    executor,
    fm_aa_cost,
    job_spec,
    label_cost_estimate,
    log,
    n_label_configs,
    replicates,
    run_jobs,
    stage_gate_train,
    stage_keys,
    stage_reference_v2,
    stage_split,
    targets_for,
)
from hessid.training.pipelines.ala2_v2_eval import (
    correlation_time,
    delta_g,
    md_metrics,
    model_forces_hessians,
    replica_angles,
    simulate_job,
    start_frames,
)
from hessid.training.pipelines.ala2_v2_qstar import qstar_applier
from hessid.training.pipelines.runner import StageRunner, read_json, write_json

STATE_FILE = "state.json"
#: values of ``run_study(stop_after=…)``, in the order the stages run
STOP_POINTS = ("reference", "split", "gate_train", "test_labels", "pilot", "gate", "arms_train")


# ----------------------------------------------------------------------------- labels


def stage_test_labels(out: Path, s: dict, split: dict, jobs: int) -> dict:
    """Conditional labels at every test configuration (settings ``test_labels``)."""
    c = s["test_labels"]
    path = out / "labels" / "test" / "test_labels.h5"
    test = out / split["test"]
    n = len(split["test_frames"])
    log(f"test labels: {n} configurations × {c['samples']} samples")
    compute_conditional_labels(test, path, frames=np.arange(n), samples=c["samples"], stride=c["stride"],
                               equilibration_steps=c["equilibration_steps"], timestep=c["timestep"],
                               seed=c["seed"], workers=jobs, n_blocks=c["n_blocks"], progress=False)  # fmt: skip
    lab = read_labels(path)
    return {"path": path, "n": n, "aa_force_evaluations": int(np.sum(lab.aa_force_evaluations)),
            "median_statistical_inefficiency": float(np.median(lab.statistical_inefficiency))}


def stage_train_labels(out: Path, s: dict, split: dict, jobs: int) -> dict:
    """Conditional labels at the first C(N) frames (draw order) of every subset, for the
    conditional arms: one file per subset with C(max N) configurations (stored in source order),
    and per size the configurations whose source frame is among the first C(N) drawn."""
    c = s["train_labels"]
    cost = label_cost_estimate(s)
    sizes = sorted(s["arm_sizes"])
    counts = {str(n): n_label_configs(s, n, cost) for n in sizes}
    files = {}
    for k, by_size in split["subsets"].items():
        src = out / by_size[str(sizes[-1])]
        with open_dataset(src) as ds:
            rank = ds.read(DRAW_RANK)  # (T,) position of each source frame in the subset's draw order
        chosen = np.argsort(rank)[: counts[str(sizes[-1])]]
        path = out / "labels" / f"s{k}" / "train_labels.h5"
        log(f"train labels: subset {k}, {len(chosen)} configurations × {c['samples']} samples")
        compute_conditional_labels(src, path, frames=np.sort(chosen), samples=c["samples"], stride=c["stride"],
                                   equilibration_steps=c["equilibration_steps"], timestep=c["timestep"],
                                   seed=c["seed"] + int(k), workers=jobs, n_blocks=c["n_blocks"],
                                   progress=False)  # fmt: skip
        lab = read_labels(path)
        label_rank = rank[lab.source_frame]  # (C,) draw rank of each label's configuration
        per_size = {}
        for n in sizes:
            rows = np.flatnonzero(np.argsort(np.argsort(label_rank)) < counts[str(n)])
            sub = out / "labels" / f"s{k}" / f"n{n}" / f"n{n}.h5"
            if not sub.exists():
                copy_frames([(path, rows)], sub)
            per_size[str(n)] = {"path": sub, "configs": int(len(rows)),
                                "aa_force_evaluations": int(np.sum(lab.aa_force_evaluations[rows]))}
        files[k] = per_size
    return {"label_cost_estimate": cost, "configs": counts, "files": files}


# ----------------------------------------------------------------------------- training


def stage_arms_train(out: Path, s: dict, split: dict, tgt: dict, labels: dict, jobs: int) -> dict:
    """Every arm but FM at the arm sizes and every replicate."""
    work = []
    for arm, a in s["arms"].items():
        if arm == "FM" or not a.get("enabled", True):
            continue
        for n in s["arm_sizes"]:
            for rep in replicates(s):
                k = str(rep[0])
                if a["data"] == "labels":
                    f = labels["files"][k][str(n)]
                    work.append(job_spec(out, s, split, arm, n, rep, out / f["path"], f["configs"],
                                     f["aa_force_evaluations"]))
                else:
                    work.append(job_spec(out, s, split, arm, n, rep, out / tgt[a["data"]][k][str(n)], n,
                                     fm_aa_cost(s, n, with_term1=True)))
    return {"runs": run_jobs(work, jobs, "arms train")}


# ----------------------------------------------------------------------------- CG MD


def md_work(out: Path, s: dict, split: dict, runs: list[dict], cgmd: dict) -> list[dict]:
    """CG MD jobs of ``runs`` (:func:`~.ala2_v2_eval.simulate_job` specs) under ``out/cgmd/<name>``: the
    replicate's start frames (half αR, half β/PII of the held-out run) and noise seed
    1000 · subset seed + init seed, the same for every arm (pairing)."""
    with open_dataset(out / split["held_out"]) as ds:
        cg = ds.cg.coordinates()
    angles = ala2.phi_psi(cg)
    work = []
    for r in runs:
        rep = tuple(r["rep"])
        seed = 1000 * rep[0] + rep[1]
        idx = start_frames(angles, cgmd["n_replicas"] // 2, seed, allow_fill=s["split"].get("allow_fill", False))
        work.append({"out": str(out / "cgmd" / r["name"]), "model": str(out / r["model"]), "root": str(out),
                     "starts": cg[idx].tolist(), "seed": seed, "cgmd": cgmd, "name": r["name"]})
    return work


def stage_pilot(out: Path, s: dict, split: dict, gate: dict) -> dict:
    """CG MD length from a pilot: the FM model at the gate's MD size, replicate 0, simulated for
    ``pilot_ps``; τ from its αR indicator; length = burn-in + max(5τ, min_span), in whole save
    intervals, at most ``max_ps``."""
    c = dict(s["cgmd"])
    size = s["gate"]["md_size"]
    run = next(r for r in gate["runs"] if r["size"] == size and tuple(r["rep"]) == replicates(s)[0])
    c["n_steps"] = int(round(c["pilot_ps"] / (c["timestep"] * 1e-3)))
    job = md_work(out, s, split, [run], c)[0]
    job["out"] = str(out / "cgmd_pilot" / run["name"])
    simulate_job(job)
    dt_ps = c["save_interval"] * c["timestep"] * 1e-3
    per = replica_angles(Path(job["out"]), c["burn_in_ps"], dt_ps)
    ia = ala2.BASINS.index("alpha_R")
    tau = correlation_time([None if a is None else (ala2.assign_basins(a) == ia).astype(float) for a in per], dt_ps)
    span = max(5.0 * tau if math.isfinite(tau) else c["max_ps"], c["min_span_ps"])
    length = min(c["burn_in_ps"] + span, c["max_ps"])
    steps = int(math.ceil(length / (c["timestep"] * 1e-3) / c["save_interval"])) * c["save_interval"]
    log(f"pilot: τ(αR↔β) = {tau:.1f} ps → {length:.0f} ps per replica ({steps} steps)")
    return {"tau_ps": tau, "length_ps": length, "n_steps": steps, "model": run["name"]}


def stage_md(out: Path, s: dict, split: dict, runs: list[dict], n_steps: int, jobs: int, what: str) -> dict:
    """CG MD of every model in ``runs`` under ``cgmd/<name>/``."""
    c = dict(s["cgmd"], n_steps=int(n_steps))
    work = md_work(out, s, split, runs, c)
    log(f"{what}: {len(work)} models × {c['n_replicas']} replicas × {n_steps} steps")
    with executor(jobs) as ex:
        res = [f.result() for f in [ex.submit(simulate_job, j) for j in work]]
    return {"runs": res, "n_steps": int(n_steps)}


# ----------------------------------------------------------------------------- metrics, gate


def reference_md(out: Path, s: dict, ref: dict) -> dict:
    """Reference φ/ψ (every run) and ΔG(αR−β)."""
    angles = []
    for f in ref["files"]:
        with open_dataset(out / f) as ds:
            angles.append(ala2.phi_psi(ds.cg.coordinates()))
    a = np.concatenate(angles)
    np.save(out / "reference_phi_psi.npy", a)
    return {"delta_g": delta_g(a, s["cgmd"]["temperature"]), "n_frames": len(a)}


def model_row(out: Path, s: dict, run: dict, labels_path: Path, ref_md: dict) -> dict:
    """Metrics 1–4 of one trained model, in the row schema of
    :func:`hessid.training.evaluation.study_v2_report.write_ala2_v2_results` (cached in
    ``<train dir>/metrics_v2.json`` once its CG MD is done)."""
    cache = out / "train" / run["name"] / "metrics_v2.json"
    row = read_json(cache)
    if row is not None:
        return row
    lab = read_labels(labels_path)
    f, h = model_forces_hessians(out / run["model"], lab.coordinates)
    fe = noise_corrected_force_error(f, lab.mean_force, lab.mean_force_sem)
    soft = soft_mode_hessian_error(h, lab.hessian, n_soft=s["eval"]["n_soft"])
    row = {"arm": run["arm"], "size": run["size"], "replicate": list(run["rep"]), "name": run["name"],
           "force_error": fe.rms, "force_error_rel": fe.relative, "force_error_clipped": fe.clipped,
           "hessian_soft_error": float(np.mean(soft)), "train_wall_s": run["wall_s"], "steps": run["global_step"],
           "aa_force_evals": run["aa_force_evaluations"], "n_train": run["n_train"],
           "stopping": run.get("stopping")}  # fmt: skip
    sim = out / "cgmd" / run["name"]
    if (sim / "md_done.json").exists():
        m = md_metrics(sim, np.load(out / "reference_phi_psi.npy"), ref_md["delta_g"], s["cgmd"])
        row.update({"dg_error": m.pop("delta_g_error"), "fes_rmse": m.pop("fe_rmse"), **m})
        write_json(cache, row, out)
    return row


def stage_gate(out: Path, s: dict, gate: dict, labels: dict, ref_md: dict) -> dict:
    """The pre-registered gate (:func:`hessid.training.evaluation.statistics.gate`): FM at the MD
    size reproduces ΔG within the tolerance (mean of the replicates) and FM's noise-corrected
    mean-force error improves significantly from the smallest to the gate's large size."""
    g = s["gate"]
    rows = [model_row(out, s, r, out / labels["path"], ref_md) for r in gate["runs"]]

    def at(n, key):
        return {tuple(r["replicate"]): r.get(key, math.nan) for r in rows if r["size"] == n}

    res = gate_verdict(list(at(g["md_size"], "dg_error").values()), at(g["improve_from"], "force_error"),
                       at(g["improve_to"], "force_error"), tolerance=g["delta_g_tolerance"])
    log(res.reason)
    d = res.force_diff
    return {"passed": res.passed, "reason": res.reason, "delta_g_ok": res.dg_ok, "mean_delta_g_error": res.dg_mean,
            "improvement_ok": res.force_ok,
            "improvement": {"mean": d.mean, "low": d.low, "high": d.high, "p": d.p_value, "sd": d.sd},
            "rows": rows}  # fmt: skip


def report_settings(s: dict, label_errors: dict | None = None) -> dict:
    """The study's settings in the terms of :func:`write_ala2_v2_results` (family, gate, mode)."""
    g = s["gate"]
    family = [a for a, v in s["arms"].items() if a != "FM" and v.get("enabled", True) and not v.get("ablation")]
    out = {"family_arms": family, "family_sizes": list(s["arm_sizes"]), "gate_dg_size": g["md_size"],
           "gate_force_sizes": (g["improve_from"], g["improve_to"]), "gate_dg_tolerance": g["delta_g_tolerance"],
           "mode": s["mode"], "n_boot": s["eval"].get("n_boot", 10_000)}  # fmt: skip
    if label_errors:
        out["label_errors"] = label_errors
    return out


def labels_own_errors(path: Path) -> dict:
    """The test labels' own errors, printed beside the metrics: ``force_noise_rms`` (RMS over
    configurations of the per-bead standard error of the mean force) and ``force_rms`` (RMS
    per-bead mean force), both kcal/mol/Å, from the labels file at ``path``."""
    lab = read_labels(path)
    n_beads = lab.mean_force.shape[1]  # (C, n, 3)
    return {"force_noise_rms": float(np.sqrt(np.mean(np.sum(lab.mean_force_sem**2, axis=(1, 2))) / n_beads)),
            "force_rms": float(np.sqrt(np.mean(np.sum(lab.mean_force**2, axis=(1, 2))) / n_beads))}


def stage_report(out: Path, s: dict, rows: list[dict], tlab: dict, ref_md: dict, results_md: Path) -> dict:
    """The results fragment and figures (rewritten on every call), with the test labels' own errors."""
    res = write_ala2_v2_results(rows, report_settings(s, labels_own_errors(out / tlab["path"])), results_md,
                                results_md.parent / "ala2_v2")
    return {"fragment": res["fragment"], "plots": res["plots"],
            "gate": {"passed": res["gate"].passed, "reason": res["gate"].reason},
            "verdicts": {a: {"label": v.label, "reason": v.reason} for a, v in res["verdicts"].items()}}


# ----------------------------------------------------------------------------- driver


def open_run(run: str | Path, needed: Sequence[str], until: str) -> tuple[dict, StageRunner]:
    """The settings and stage runner of an existing study run whose stages ``needed`` finished
    (for post-processing: the gate report, the gate's cause-finding).

    Args:
        run: the study's run folder (``--out`` of ``benchmarks/ala2_v2.py``).
        needed: stage names that must have finished.
        until: what to run first, for the message (e.g. "the gate").

    Returns:
        (``settings.json`` as a dict, a :class:`StageRunner` on the run's state).

    Raises:
        FileNotFoundError: no ``state.json`` or ``settings.json`` in ``run`` (nothing is created).
        ValueError: a stage of ``needed`` has not finished (names them).
    """
    run = Path(run)
    state = run / STATE_FILE
    if not state.is_file():  # checked first: the runner would create the folder
        raise FileNotFoundError(f"{state}: no study state (not an ala2_v2 run folder)")
    settings = read_json(run / "settings.json")
    if settings is None:
        raise FileNotFoundError(f"{run / 'settings.json'}: missing (not an ala2_v2 run folder)")
    runner = StageRunner(run, STATE_FILE, label="ala2_v2")
    missing = [n for n in needed if not runner.done(n)]
    if missing:
        raise ValueError(f"{state}: stage(s) {', '.join(missing)} not finished; run the study up to {until} first")
    return settings, runner


def run_study(out: str | Path, s: dict, results_md: str | Path, jobs: int = 2, stop_after: str | None = None) -> dict:
    """Run (or resume) the study with settings ``s`` in the run folder ``out``.

    Args:
        out: run folder; ``state.json`` holds every stage's result and wall time.
        s: settings (``benchmarks/ala2_v2.py``); written to ``settings.json``.
        results_md: the markdown fragment of the results (figures next to it).
        jobs: parallel processes.
        stop_after: a stage name of :data:`STOP_POINTS`; stop after it.

    Returns:
        JSON-able summary (gate outcome, per-stage wall time, results path).

    Raises:
        ValueError: ``stop_after`` not in :data:`STOP_POINTS` (before anything is written).
    """
    if stop_after is not None and stop_after not in STOP_POINTS:
        raise ValueError(f"stop_after must be one of {', '.join(STOP_POINTS)}; got {stop_after!r}")
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(out, STATE_FILE, label="ala2_v2", say=log)
    write_json(out / "settings.json", s)
    summary: dict = {"out": str(out), "mode": s["mode"]}

    def finish():
        summary["timings_s"] = dict(runner.timings)
        summary["wall_s"] = time.perf_counter() - t0
        print(json.dumps(summary, indent=2, default=float))
        return summary

    def step(name, fn, key=None):
        res = runner.run(name, fn, key=key)
        return res, stop_after == name

    ref, stop = step("reference", lambda: stage_reference_v2(out, s, jobs), key=stage_keys(s)["reference"])
    summary["reference_basins"] = ref["basins_pooled"]["populations"]
    if stop:
        return finish()
    split, stop = step("split", lambda: stage_split(out, s, ref), key=stage_keys(s)["split"])
    if stop:
        return finish()
    gate_tr, stop = step("gate_train", lambda: stage_gate_train(out, s, split, jobs), key=stage_keys(s)["gate_train"])
    if stop:
        return finish()
    tlab, stop = step("test_labels", lambda: stage_test_labels(out, s, split, jobs), key=s["test_labels"])
    if stop:
        return finish()
    ref_md = runner.run("reference_md", lambda: reference_md(out, s, ref), key=ref["files"])
    summary["reference_delta_g"] = ref_md["delta_g"]
    pilot, stop = step("pilot", lambda: stage_pilot(out, s, split, gate_tr), key=s["cgmd"])
    if stop:
        return finish()
    n_steps = pilot["n_steps"]
    runner.run("gate_md", lambda: stage_md(out, s, split, gate_tr["runs"], n_steps, jobs, "gate MD"),
               key={"n_steps": n_steps, "models": [r["name"] for r in gate_tr["runs"]]})
    gate, stop = step("gate", lambda: stage_gate(out, s, gate_tr, tlab, ref_md), key={"gate": s["gate"]})
    summary["gate"] = {k: v for k, v in gate.items() if k != "rows"}
    if not gate["passed"] and s["gate"]["enforce"]:
        log("gate failed: the arms are not run (docs/results/ala2_v2.md, 'Gate')")
        return finish()
    if stop:
        return finish()
    applier = qstar_applier(out, s, split)
    tgt = {"plain": runner.run("targets_plain", lambda: targets_for(out, s, split, jobs, "plain"),
                               key={"targets": s["targets"], "sizes": s["arm_sizes"]})}
    tgt["qstar"] = runner.run("targets_qstar", lambda: targets_for(out, s, split, jobs, "qstar", applier),
                              key={"targets": s["targets"], "sizes": s["arm_sizes"], "qstar": s["qstar"]})
    labels = runner.run("train_labels", lambda: stage_train_labels(out, s, split, jobs), key=s["train_labels"])
    arms, stop = step("arms_train", lambda: stage_arms_train(out, s, split, tgt, labels, jobs),
                      key={"arms": s["arms"], "sizes": s["arm_sizes"]})
    if stop:
        return finish()
    runner.run("arms_md", lambda: stage_md(out, s, split, arms["runs"], n_steps, jobs, "arms MD"),
               key={"n_steps": n_steps, "models": [r["name"] for r in arms["runs"]]})
    rows = [model_row(out, s, r, out / tlab["path"], ref_md) for r in gate_tr["runs"] + arms["runs"]]
    results_md = Path(results_md).resolve()
    rep = runner.run("report", lambda: stage_report(out, s, rows, tlab, ref_md, results_md), rerun=True)
    summary["results"] = str(results_md)
    summary["verdicts"] = rep["verdicts"]
    return finish()


__all__ = ["STATE_FILE", "STOP_POINTS", "md_work", "model_row", "open_run", "reference_md", "report_settings", "run_study", "stage_arms_train",
           "stage_gate", "stage_md", "stage_pilot", "stage_test_labels", "stage_train_labels", "labels_own_errors"]  # fmt: skip
