"""The Projected Hessian Learning data-efficiency study (docs/results/phl.md): stages and report.

Pre-registered design, run stage by stage in one run folder through a
:class:`~hessid.training.pipelines.runner.StageRunner` (``<out>/state.json``); every stage
resumes from its own outputs (datasets resume structure by structure, training runs from their
last checkpoint, finished runs are skipped). The settings live in ``benchmarks/phl.py``.

Stages:

1. ``data``     per molecule, a GFN2-xTB dataset (``build_qm_dataset``: near set at 300 K, far
                set at 1000 K); the tier-2 DFT dataset (ethanol, ωB97X-D3(BJ)/6-31G(d)).
2. ``cost``     per molecule, the cost per training step and per epoch of every arm, measured
                side by side (:func:`~hessid.training.atomistic.costs.measure_loss_costs`).
3. ``train``    every molecule × arm × size × replicate, then its evaluation (E/F/H errors on
                the held-out near and far sets, harmonic frequencies at the model's minimum).
4. ``tier2``    the tier-2 arms × sizes × replicates on the DFT dataset.
5. ``report``   paired intervals, Holm over the pre-registered family, data multipliers
                against E-F, verdicts, learning-curve plots (``<out>/results/``).

Pairing: replicate r fixes the training subset (``subset_seed``), the initial weights and the
batch order (``seed``) and the probe seed; every arm at (molecule, size, r) uses the same
three, so arms differ only in their loss. One split seed per molecule fixes the held-out near
and far test sets and the validation set for every size and replicate; training sets are nested
in the size.

Units: Å, kcal/mol (energies), kcal/mol/Å (forces), kcal/mol/Å² (Hessians), cm⁻¹ (frequencies),
seconds (cost, process time).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from hessid.training.atomistic.costs import measure_loss_costs
from hessid.training.atomistic.evaluation import error_metrics, frequency_comparison
from hessid.training.atomistic.frames import split_structures
from hessid.training.atomistic.model import load_potential
from hessid.training.atomistic.trainer import TrainConfig, load_datasets, train
from hessid.training.data.qm import open_qm_dataset
from hessid.training.evaluation.statistics import data_multiplier, holm, paired_difference
from hessid.training.pipelines.runner import StageRunner, read_json, write_json
from hessid.training.qm.build import build_qm_dataset

__all__ = ["ARM_LOSSES", "FAMILY", "FAMILY_METRIC", "STAGES", "analyse", "arm_loss", "job_list",
           "log_mean_by_replicate", "multipliers", "plot_learning_curves", "run_jobs", "run_study", "stage_cost",
           "stage_data", "train_config", "train_job", "write_report"]  # fmt: skip

#: arm name → the loss fields that differ between arms (everything else is shared)
ARM_LOSSES = {
    "ef": {"mode": "ef"},
    "hvp_onehot_k1_fresh": {"mode": "ef_hvp", "probe_kind": "one_hot", "n_probes": 1, "probe_regime": "fresh"},
    "hvp_random_k1_fresh": {"mode": "ef_hvp", "probe_kind": "random", "n_probes": 1, "probe_regime": "fresh"},
    "hvp_random_k4_fresh": {"mode": "ef_hvp", "probe_kind": "random", "n_probes": 4, "probe_regime": "fresh"},
    "hvp_onehot_k1_fixed": {"mode": "ef_hvp", "probe_kind": "one_hot", "n_probes": 1, "probe_regime": "fixed"},
    "hvp_random_k1_fixed": {"mode": "ef_hvp", "probe_kind": "random", "n_probes": 1, "probe_regime": "fixed"},
    "ef_h": {"mode": "ef_h"},
}  # fmt: skip

#: the metric of the pre-registered family: Hessian-element RMSE on a held-out set
FAMILY_METRIC = "hessian_rmse"

#: the pre-registered family: (finding, arm, base); each on (molecule, test set near/far)
FAMILY = (
    ("F1", "hvp_random_k1_fresh", "ef_h"),
    ("F1", "hvp_onehot_k1_fresh", "ef_h"),
    ("F2", "hvp_random_k1_fixed", "hvp_onehot_k1_fixed"),
)
#: the equivalence margin of finding 1: geometric-mean error ratio within [1/1.25, 1.25]
EQUIVALENCE_RATIO = 1.25


def log(msg: str) -> None:
    """One progress line on stderr, prefixed ``[phl]``."""
    print(f"[phl] {msg}", file=sys.stderr, flush=True)


def executor(jobs: int) -> cf.Executor:
    """``jobs`` ≤ 1: a thread pool of one (tasks run one at a time); else a spawn process pool."""
    if jobs <= 1:
        return cf.ThreadPoolExecutor(max_workers=1)
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


# ----------------------------------------------------------------------------- data
def stage_data(out: Path, s: dict, jobs: int) -> dict:
    """Build (or resume) every dataset of the study under ``out/data``.

    Returns:
        ``{name: {"path", "n_done", "n_failed", "n_near", "n_far"}}`` for the tier-1 molecules
        and the tier-2 set (paths relative to the run folder when stored).

    Raises:
        RuntimeError: a dataset has failed structures (they are recorded in the file; the study
            does not train on a dataset with holes it did not pre-register).
    """
    root = out / "data"
    specs = {m["name"]: m for m in s["molecules"]}
    specs[s["tier2"]["name"]] = s["tier2"]
    done = {}
    for name, m in specs.items():
        path = root / name / f"{name}.h5"
        kw = {k: v for k, v in m.items() if k not in ("name", "smiles", "why", "tier1_counterpart", "arms")}
        log(f"data: {name} ({m['smiles']}, {kw.get('method', 'gfn2-xtb')}, {m['configs']} structures)")
        build_qm_dataset(m["smiles"], name, root=root, resume=path.exists(), workers=jobs if jobs > 1 else 0,
                         progress=False, **kw)  # fmt: skip
        ds = open_qm_dataset(name, root=root)
        n_failed = int(np.asarray(ds.failed).sum()) if getattr(ds, "failed", None) is not None else 0
        if n_failed:
            raise RuntimeError(f"{path}: {n_failed} structures failed (see the file's 'error' key)")
        sub = np.asarray(ds.subset)
        done[name] = {"path": path, "n_done": int(np.asarray(ds.done).sum()), "n_failed": n_failed,
                      "n_near": int(np.sum(sub == 0)), "n_far": int(np.sum(sub == 1))}  # fmt: skip
    return done


# ----------------------------------------------------------------------------- training jobs
def arm_loss(arm: str, s: dict, rep: int) -> dict:
    """The :class:`~hessid.training.atomistic.losses.LossConfig` fields of ``arm`` in replicate ``rep``.

    Args:
        arm: a key of :data:`ARM_LOSSES`.
        s: the study settings (``loss``: the shared loss fields).
        rep: replicate index (sets the probe seed, the same for every arm).

    Returns:
        dict of LossConfig fields.

    Raises:
        KeyError: unknown arm.
    """
    if arm not in ARM_LOSSES:
        raise KeyError(f"unknown arm {arm!r}; known: {sorted(ARM_LOSSES)}")
    return {**s["loss"], **ARM_LOSSES[arm], "probe_seed": int(s["replicates"]["probe_seed_base"]) + rep}


def train_config(job: dict, s: dict) -> dict:
    """The ``TrainConfig`` fields of one job (dict; the trainer builds the dataclasses).

    Every run takes ``train.steps`` optimiser steps of ``train.batch_size`` structures; the
    learning rate decays per epoch by ``lr_final_factor ** (1 / epochs)`` so that every size ends
    at ``lr × lr_final_factor`` (the same schedule shape in steps); validation runs once, at the
    end.
    """
    t = s["train"]
    steps_per_epoch = math.ceil(job["size"] / t["batch_size"])
    epochs = max(1, math.ceil(t["steps"] / steps_per_epoch))
    rep = int(job["rep"])
    return {
        "name": job["name"], "output_dir": str(Path(job["root"]) / "train" / job["tier"]), "seed": rep,
        "model": s["model"], "loss": arm_loss(job["arm"], s, rep),
        "data": {"datasets": [job["dataset"]], "root": str(Path(job["root"]) / "data"), "n_train": int(job["size"]),
                 "n_val": int(job["split"]["n_val"]), "n_test": int(job["split"]["n_test"]),
                 "split_seed": int(job["split"]["split_seed"]), "train_subsets": [0, 1],
                 "subset_seed": int(s["replicates"]["subset_seed_base"]) + rep},
        "optim": {"lr": t["lr"], "lr_decay": float(t["lr_final_factor"]) ** (1.0 / epochs),
                  "batch_size": t["batch_size"], "max_epochs": epochs, "max_steps": t["steps"]},
        "checkpoint_every": t["checkpoint_every"], "validate_every": epochs, "progress": False,
    }  # fmt: skip


def molecule_arms(m: dict, s: dict) -> list[str]:
    """The tier-1 arms trained on molecule ``m``: its own ``arms`` list when the settings give
    one (a subset of ``s["arms"]``, in that order), else every arm. The cost stage always
    measures every arm on every molecule.

    Raises:
        ValueError: ``m["arms"]`` names an arm outside ``s["arms"]``.
    """
    arms = m.get("arms")
    if arms is None:
        return list(s["arms"])
    unknown = sorted(set(arms) - set(s["arms"]))
    if unknown:
        raise ValueError(f"molecule {m['name']!r}: arms {unknown} are not study arms {s['arms']}")
    return [a for a in s["arms"] if a in arms]


def job_list(out: Path, s: dict, tier: str) -> list[dict]:
    """Every (dataset, arm, size, replicate) job of ``tier`` ("tier1" or "tier2").

    Returns:
        list of dicts ``name``, ``tier``, ``dataset``, ``arm``, ``size``, ``rep``, ``split``,
        ``root``, ``run_dir`` (JSON values only).

    Raises:
        ValueError: unknown tier.
    """
    if tier == "tier1":
        plans = [(m["name"], s["sizes"], molecule_arms(m, s), s["split"]) for m in s["molecules"]]
    elif tier == "tier2":
        t2 = s["tier2"]
        plans = [(t2["name"], s["tier2_sizes"], s["tier2_arms"], s["tier2_split"])]
    else:
        raise ValueError(f"tier must be 'tier1' or 'tier2', got {tier!r}")
    jobs = []
    for dataset, sizes, arms, split in plans:
        for size in sizes:
            for rep in range(int(s["replicates"]["n"])):
                for arm in arms:
                    name = f"{dataset}_{arm}_n{size}_r{rep}"
                    jobs.append({"name": name, "tier": tier, "dataset": dataset, "arm": arm, "size": int(size),
                                 "rep": rep, "split": split, "root": str(out),
                                 "run_dir": str(out / "train" / tier / name)})  # fmt: skip
    return jobs


def train_job(job: dict, s: dict) -> dict:
    """Train one job (resuming from its checkpoint), then evaluate it; skipped when
    ``result.json`` exists.

    Returns:
        dict ``job`` fields plus ``steps``, ``train_cpu_s`` (process seconds of the steps),
        ``wall_s``, ``test_near`` and ``test_far`` (``error_metrics``: energy MAE/RMSE kcal/mol,
        force MAE/RMSE kcal/mol/Å, Hessian MAE/RMSE kcal/mol/Å²), ``frequencies``
        (``frequency_mae``/``frequency_rmse`` cm⁻¹ at the model's own minimum, convergence;
        None for arms outside ``evaluation.frequency_arms``).

    Raises:
        ValueError, FileNotFoundError: from the trainer (a checkpoint of another configuration,
            a missing dataset); the run folder keeps its checkpoint for the next attempt.
    """
    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    result_path = run_dir / "result.json"
    old = read_json(result_path)
    if old is not None:
        return old
    cfg = TrainConfig(**train_config(job, s))
    datasets = load_datasets(cfg.data)
    t0 = time.perf_counter()
    res = train(cfg, resume=(run_dir / "checkpoints" / "last.ckpt").exists(), datasets=datasets)
    model = load_potential(res.model)
    d = cfg.data
    split = split_structures(datasets, d.n_train, d.n_val, d.n_test, d.split_seed, d.train_subsets, d.subset_seed)
    freq = {}
    if job["arm"] in s["evaluation"]["frequency_arms"]:
        freq = frequency_comparison(model, datasets[0], gtol=float(s["evaluation"]["gtol"]))
    rec = {**{k: job[k] for k in ("name", "tier", "dataset", "arm", "size", "rep")},
           "steps": int(res.global_step), "train_cpu_s": float(res.last.get("cpu_s", math.nan)),
           "wall_s": time.perf_counter() - t0,
           "test_near": error_metrics(model, datasets, split.test_near, hessians=True),
           "test_far": error_metrics(model, datasets, split.test_far, hessians=True),
           "frequencies": {k: freq.get(k) for k in ("frequency_mae", "frequency_rmse", "frequency_max_abs",
                                                 "frequency_mae_at_reference_geometry", "geometry_rmsd",
                                                 "optimiser_converged")}}  # fmt: skip
    write_json(result_path, rec)
    return rec


def run_jobs(work: list[dict], s: dict, jobs: int, what: str) -> list[dict]:
    """Run ``work`` ``jobs`` at a time (E-F-H and large sizes first); records in input order."""
    todo = [j for j in work if not (Path(j["run_dir"]) / "result.json").exists()]
    log(f"{what}: {len(work)} runs, {len(todo)} to train ({jobs} in parallel)")
    cost = {"ef_h": 20.0, "hvp_random_k4_fresh": 3.0}
    order = sorted(range(len(work)), key=lambda i: -work[i]["size"] * cost.get(work[i]["arm"], 1.0))
    results: dict[int, dict] = {}
    with executor(jobs) as ex:
        futs = {ex.submit(train_job, work[i], s): i for i in order}
        for n, f in enumerate(cf.as_completed(futs), 1):
            i = futs[f]
            results[i] = r = f.result()
            log(f"{what}: [{n}/{len(work)}] {r['name']}: {r['steps']} steps, {r['wall_s']:.0f} s, "
                f"H RMSE near/far {r['test_near'].get('hessian_rmse', math.nan):.3g}/"
                f"{r['test_far'].get('hessian_rmse', math.nan):.3g} kcal/mol/Å²")
    return [results[i] for i in range(len(work))]


# ----------------------------------------------------------------------------- cost
def stage_cost(out: Path, s: dict) -> dict:
    """Per molecule, every arm's step and epoch cost side by side (process time, one thread),
    at the study's model and batch size on ``cost.n_train`` training structures.

    Returns:
        ``{molecule: measure_loss_costs(...) result}`` (seconds).
    """
    torch.set_num_threads(1)
    c = s["cost"]
    arms_spec = {arm: _cost_arm(arm) for arm in s["arms"]}
    res = {}
    for m in s["molecules"]:
        job = {"name": "cost", "tier": "cost", "root": str(out), "dataset": m["name"], "arm": "ef", "size": c["n_train"],
               "rep": 0, "split": s["split"]}  # fmt: skip
        cfg = TrainConfig(**train_config(job, s))
        r = measure_loss_costs(cfg, load_datasets(cfg.data), list(arms_spec.values()), n_steps=c["n_steps"],
                               warmup=c["warmup"])  # fmt: skip
        r["arm_names"] = {v: k for k, v in arms_spec.items()}
        res[m["name"]] = r
    return res


def _cost_arm(arm: str) -> str:
    """The ``measure_loss_costs`` arm string of a study arm (``ef_hvp/KIND/K/REGIME``)."""
    a = ARM_LOSSES[arm]
    if a["mode"] != "ef_hvp":
        return a["mode"]
    return f"ef_hvp/{a['probe_kind']}/{a['n_probes']}/{a['probe_regime']}"


# ----------------------------------------------------------------------------- analysis
def log_mean_by_replicate(records: list[dict], dataset: str, arm: str, test_set: str, metric: str,
                          sizes: list[int]) -> dict[int, float]:
    """Per replicate, the mean over ``sizes`` of log(metric) of one arm.

    Args:
        records: job results (:func:`train_job`).
        dataset, arm: which runs.
        test_set: ``"test_near"`` or ``"test_far"``.
        metric: a key of the error metrics (e.g. ``"hessian_rmse"``, kcal/mol/Å²).
        sizes: the training sizes averaged over.

    Returns:
        ``{replicate: mean_s log(metric)}`` (dimensionless); NaN when a size is missing.
    """
    by = {(r["size"], r["rep"]): r for r in records if r["dataset"] == dataset and r["arm"] == arm}
    reps = sorted({rep for _, rep in by})
    out = {}
    for rep in reps:
        vals = [by[(n, rep)][test_set].get(metric, math.nan) if (n, rep) in by else math.nan for n in sizes]
        out[rep] = float(np.mean(np.log(vals))) if all(v > 0 for v in vals) else math.nan
    return out


def _interval(arm: dict, base: dict, confidence: float) -> dict:

    pi = paired_difference(arm, base, confidence)
    return {"mean_log_ratio": pi.mean, "ratio": math.exp(pi.mean) if math.isfinite(pi.mean) else math.nan,
            "ratio_low": math.exp(pi.low) if math.isfinite(pi.low) else math.nan,
            "ratio_high": math.exp(pi.high) if math.isfinite(pi.high) else math.nan,
            "p": pi.p_value, "n": pi.n}  # fmt: skip


def analyse(records: list[dict], s: dict, datasets: list[str], sizes: list[int]) -> dict:
    """The pre-registered analysis (docs/results/phl.md, "Analysis") of one tier.

    For every family member (finding, arm, base) × dataset × test set (near, far): the per
    replicate mean over sizes of log(Hessian RMSE) of arm and base, their paired difference
    (t-interval over replicates, n − 1 dof) reported as a geometric-mean error ratio with its
    95 % interval and, for finding 1, its 90 % interval (two one-sided tests against the
    equivalence margin). For F2, also "far − near" of the log ratio (is the fixed-probe gain of
    random over one-hot larger far from equilibrium?). Holm over every p of the family.

    Returns:
        dict ``tests`` (list of dicts: finding, arm, base, dataset, test_set, ratio, ratio_low,
        ratio_high, p, p_holm, [ratio_low90, ratio_high90, equivalent]) and ``verdicts``
        ``{finding: {dataset: text}}``.
    """
    alpha = float(s["analysis"]["alpha"])
    tests = []
    for finding, arm, base in FAMILY:
        for ds in datasets:
            logs = {}
            for test_set in ("test_near", "test_far"):
                a = log_mean_by_replicate(records, ds, arm, test_set, FAMILY_METRIC, sizes)
                b = log_mean_by_replicate(records, ds, base, test_set, FAMILY_METRIC, sizes)
                logs[test_set] = (a, b)
                if not a or not b:
                    continue
                t = {"finding": finding, "arm": arm, "base": base, "dataset": ds, "test_set": test_set,
                     **_interval(a, b, 1 - alpha)}  # fmt: skip
                if finding == "F1":
                    eq = _interval(a, b, 1 - 2 * alpha)
                    t["ratio_low90"], t["ratio_high90"] = eq["ratio_low"], eq["ratio_high"]
                    t["equivalent"] = bool(1 / EQUIVALENCE_RATIO < eq["ratio_low"] and eq["ratio_high"] < EQUIVALENCE_RATIO)
                tests.append(t)
            if finding == "F2" and all(logs[k][0] and logs[k][1] for k in logs):
                (an, bn), (af, bf) = logs["test_near"], logs["test_far"]
                far = {r: af[r] - bf[r] for r in af if r in bf}
                near = {r: an[r] - bn[r] for r in an if r in bn}
                tests.append({"finding": "F2-far", "arm": arm, "base": base, "dataset": ds,
                              "test_set": "far − near", **_interval(far, near, 1 - alpha)})  # fmt: skip
    if tests:
        for t, p in zip(tests, holm([t["p"] for t in tests]), strict=True):
            t["p_holm"] = float(p)
    return {"tests": tests, "verdicts": _verdicts(tests, datasets, alpha)}


def _verdicts(tests: list[dict], datasets: list[str], alpha: float) -> dict:
    """Plain-words verdicts per finding and dataset (docs/results/phl.md, "Verdict criteria")."""
    out: dict = {"F1": {}, "F2": {}}
    for ds in datasets:
        f1 = [t for t in tests if t["finding"] == "F1" and t["dataset"] == ds]
        if not f1:
            out["F1"][ds] = "not tested (its arms were not trained on this molecule)"
        elif all(t.get("equivalent") for t in f1):
            out["F1"][ds] = "holds (fresh-probe HVP within ±25 % of E-F-H on Hessian RMSE, near and far)"
        elif any(t["ratio_low"] > 1 and t["p_holm"] <= alpha for t in f1):
            out["F1"][ds] = "fails (a fresh-probe HVP arm is worse than E-F-H, Holm-significant)"
        else:
            out["F1"][ds] = "inconclusive (neither equivalence within ±25 % nor a Holm-significant difference)"
        f2 = [t for t in tests if t["finding"] == "F2" and t["dataset"] == ds]
        far = [t for t in tests if t["finding"] == "F2-far" and t["dataset"] == ds]
        if not f2:
            out["F2"][ds] = "not tested (its arms were not trained on this molecule)"
        elif all(t["ratio_high"] < 1 and t["p_holm"] <= alpha for t in f2):
            extra = (" and the gain is larger far from equilibrium" if far and far[0]["ratio_high"] < 1
                     and far[0]["p_holm"] <= alpha else ", not shown to be larger far from equilibrium")
            out["F2"][ds] = "holds (fixed random < fixed one-hot, near and far, Holm-significant" + extra + ")"
        elif any(t["ratio_low"] > 1 and t["p_holm"] <= alpha for t in f2):
            out["F2"][ds] = "fails (fixed one-hot beats fixed random, Holm-significant)"
        else:
            out["F2"][ds] = "inconclusive (no Holm-significant difference on both test sets)"
    return out


def multipliers(records: list[dict], s: dict, dataset: str, metric: str, test_set: str) -> list[dict]:
    """Data multiplier m = N'/N of every arm at every size against E-F's isotonic learning
    curve of ``metric`` on ``test_set`` (paired bootstrap over replicates; censored outside
    E-F's size range). Returns a list of dicts ``arm``, ``size``, ``m``, ``low``, ``high``,
    ``censor``, ``low_censor``, ``high_censor``, ``n_prime``, ``n_replicates`` (the
    :class:`~hessid.training.evaluation.statistics.MultiplierEstimate` fields but its curve)."""

    sizes = sorted({r["size"] for r in records if r["dataset"] == dataset and r["arm"] == "ef"})
    reps = sorted({r["rep"] for r in records if r["dataset"] == dataset})
    if len(sizes) < 2:
        return []
    val = {(r["arm"], r["size"], r["rep"]): r[test_set].get(metric, math.nan) for r in records
           if r["dataset"] == dataset}  # fmt: skip
    ef = np.array([[val.get(("ef", n, rep), math.nan) for n in sizes] for rep in reps])
    out = []
    trained = {r["arm"] for r in records if r["dataset"] == dataset}
    for arm in [a for a in s["arms"] if a != "ef" and a in trained]:
        for n in sizes:
            av = np.array([val.get((arm, n, rep), math.nan) for rep in reps])
            est = data_multiplier(sizes, ef, av, n, n_boot=int(s["analysis"]["n_boot"]), seed=0)
            d = {k: getattr(est, k) for k in ("m", "censor", "low", "high", "low_censor", "high_censor",
                                               "n_prime", "n_replicates")}
            out.append({"arm": arm, "size": n, **d})
    return out


def _summary_table(records: list[dict], dataset: str, arms: list[str], sizes: list[int], test_set: str,
                   metric: str) -> list[str]:
    lines = ["| arm | " + " | ".join(f"N = {n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for arm in arms:
        cells = []
        for n in sizes:
            v = [r[test_set].get(metric, math.nan) if test_set != "frequencies" else r["frequencies"].get(metric)
                 for r in records if r["dataset"] == dataset and r["arm"] == arm and r["size"] == n]  # fmt: skip
            v = np.array([x for x in v if x is not None], dtype=float)
            cells.append(f"{v.mean():.3g} ± {v.std(ddof=1):.2g}" if v.size > 1 else (f"{v.mean():.3g}" if v.size else "–"))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def plot_learning_curves(records: list[dict], dataset: str, arms: list[str], path: Path) -> Path:
    """Learning curves (mean ± SD over replicates, log–log) of Hessian and force RMSE, near and
    far, one panel each; written to ``path`` (PNG)."""

    matplotlib.use("Agg")

    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True)
    panels = [("test_near", "hessian_rmse", "Hessian RMSE near (kcal/mol/Å²)"),
              ("test_far", "hessian_rmse", "Hessian RMSE far (kcal/mol/Å²)"),
              ("test_near", "force_rmse", "force RMSE near (kcal/mol/Å)"),
              ("test_far", "force_rmse", "force RMSE far (kcal/mol/Å)")]  # fmt: skip
    for ax, (ts, metric, title) in zip(axes.ravel(), panels, strict=True):
        for arm in arms:
            rs = [r for r in records if r["dataset"] == dataset and r["arm"] == arm]
            sizes = sorted({r["size"] for r in rs})
            if not sizes:
                continue
            v = [np.array([r[ts].get(metric, np.nan) for r in rs if r["size"] == n]) for n in sizes]
            mean = np.array([x.mean() for x in v])
            sd = np.array([x.std(ddof=1) if x.size > 1 else 0.0 for x in v])
            ax.errorbar(sizes, mean, yerr=sd, marker="o", capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training structures")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"PHL study: {dataset}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: Path, s: dict, records: dict, costs: dict, results_path: Path) -> dict:
    """The results fragment (markdown), a JSON summary and the learning-curve plots.

    Args:
        out: run folder.
        s: study settings.
        records: ``{"tier1": [...], "tier2": [...]}`` job results.
        costs: the ``cost`` stage's result.
        results_path: where the markdown fragment goes.

    Returns:
        dict ``analysis`` (tier 1), ``tier2`` (its analysis), ``multipliers``, ``plots``,
        ``results`` (path of the fragment), ``summary`` (path of the JSON).
    """
    t1, t2 = records["tier1"], records.get("tier2", [])
    mols = [m["name"] for m in s["molecules"]]
    an1 = analyse(t1, s, mols, list(s["sizes"]))
    t2name = s["tier2"]["name"]
    an2 = analyse(t2, s, [t2name], list(s["tier2_sizes"])) if t2 else {"tests": [], "verdicts": {}}
    mult = {m: {"force_rmse_near": multipliers(t1, s, m, "force_rmse", "test_near"),
                "hessian_rmse_near": multipliers(t1, s, m, "hessian_rmse", "test_near"),
                "hessian_rmse_far": multipliers(t1, s, m, "hessian_rmse", "test_far")} for m in mols}  # fmt: skip
    arms_of = {m["name"]: molecule_arms(m, s) for m in s["molecules"]}
    plots = {m: plot_learning_curves(t1, m, arms_of[m], out / "results" / f"phl_learning_curves_{m}.png") for m in mols}
    L = ["# PHL study: results", "", f"Settings mode: {s['mode']}; replicates: {s['replicates']['n']}; "
         f"sizes: {s['sizes']}; steps per run: {s['train']['steps']}.", ""]  # fmt: skip
    L += ["## Verdicts (tier 1)", ""]
    for f, by in an1["verdicts"].items():
        for ds, text in by.items():
            L.append(f"- **{f}, {ds}**: {text}")
    for m, c in costs.items():
        by = {c["arm_names"].get(a, a): v["step_s_median"] for a, v in c["arms"].items()}
        if "ef_h" in by and "hvp_random_k1_fresh" in by:
            L.append(f"- **F1 cost, {m}**: an E-F-H step costs {by['ef_h'] / by['hvp_random_k1_fresh']:.3g}× an "
                     f"E-F-HVP (random, k = 1) step (process time, side by side; the accuracy half of F1 is above)")
    L += ["", "## Pre-registered family (geometric-mean Hessian-RMSE ratio arm/base over sizes; Holm)", "",
          "| finding | dataset | arm / base | test set | ratio | 95 % interval | 90 % interval | p | p (Holm) |",
          "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in an1["tests"] + an2["tests"]:
        i90 = f"[{t['ratio_low90']:.4g}, {t['ratio_high90']:.4g}]" if "ratio_low90" in t else ""
        L.append(f"| {t['finding']} | {t['dataset']} | {t['arm']} / {t['base']} | {t['test_set']} | {t['ratio']:.4g} "
                 f"| [{t['ratio_low']:.4g}, {t['ratio_high']:.4g}] | {i90} | {t['p']:.3g} | {t.get('p_holm', math.nan):.3g} |")
    L.append("")
    L.append("(Tier-2 rows are Holm-adjusted within the tier-2 family; they re-check direction, see the page.)")
    for m in mols:
        for ts, metric, unit in (("test_near", "hessian_rmse", "kcal/mol/Å²"), ("test_far", "hessian_rmse", "kcal/mol/Å²"),
                                 ("test_near", "force_rmse", "kcal/mol/Å"), ("test_far", "force_rmse", "kcal/mol/Å"),
                                 ("test_near", "energy_mae", "kcal/mol"), ("test_far", "energy_mae", "kcal/mol"),
                                 ("frequencies", "frequency_mae", "cm⁻¹")):  # fmt: skip
            L += ["", f"### {m}: {metric} {ts} ({unit}; mean ± SD over replicates)", ""]
            L += _summary_table(t1, m, arms_of[m], list(s["sizes"]), ts, metric)
        L += ["", f"### {m}: data multiplier m = N'/N against E-F (force RMSE near)", "",
              "| arm | N | m | interval | censored |", "|---|---|---|---|---|"]
        for d in mult[m]["force_rmse_near"]:
            L.append(f"| {d['arm']} | {d['size']} | {d['censor']}{d['m']:.3g} | [{d['low_censor']}{d['low']:.3g}, "
                     f"{d['high_censor']}{d['high']:.3g}] | {d['censor'] or 'no'} |")
        L += ["", f"![learning curves {m}]({plots[m].name})"]
    L += ["", "## Cost per step and per epoch (process time, one thread, side by side)", "",
          "| molecule | arm | ms/step (median) | s/epoch | × E-F |", "|---|---|---|---|---|"]
    for m, c in costs.items():
        for arm_str, v in c["arms"].items():
            L.append(f"| {m} | {c['arm_names'].get(arm_str, arm_str)} | {1000 * v['step_s_median']:.0f} | "
                     f"{v['epoch_s']:.2f} | {v['relative_to_first']:.2f} |")
    if t2:
        L += ["", f"## Tier 2 ({t2name}, {s['tier2'].get('method', 'gfn2-xtb')})", ""]
        for f, by in an2["verdicts"].items():
            for ds, text in by.items():
                L.append(f"- **{f}, {ds}**: {text}")
        L += _tier_agreement(an1, an2, s)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text("\n".join(L) + "\n")
    summary = write_json(out / "results" / "phl_summary.json",
                         {"analysis": an1, "tier2": an2, "multipliers": mult, "costs": costs}, out)  # fmt: skip
    return {"analysis": an1, "tier2": an2, "multipliers": mult, "plots": plots, "results": results_path,
            "summary": summary}


def _tier_agreement(an1: dict, an2: dict, s: dict) -> list[str]:
    """Lines saying whether each tier-2 comparison points the same way as tier 1 on the same molecule."""
    ref = s["tier2"]["tier1_counterpart"]
    t1 = {(t["finding"], t["arm"], t["base"], t["test_set"]): t for t in an1["tests"] if t["dataset"] == ref}
    lines = ["", f"Direction of each comparison, tier 2 against tier 1 ({ref}):", ""]
    for t in an2["tests"]:
        k = (t["finding"], t["arm"], t["base"], t["test_set"])
        if k in t1:
            same = (t["ratio"] - 1) * (t1[k]["ratio"] - 1) > 0
            lines.append(f"- {t['finding']} {t['arm']} / {t['base']} {t['test_set']}: tier 1 {t1[k]['ratio']:.3f}, "
                         f"tier 2 {t['ratio']:.3f} → {'same direction' if same else 'opposite direction'}")
    return lines


# ----------------------------------------------------------------------------- the study
STAGES = ("data", "cost", "train", "tier2", "report")


def run_study(out: Path, s: dict, results_path: Path, jobs: int = 2, stop_after: str | None = None,
              say: Callable[[str], object] | None = None) -> dict:
    """Run (or resume) the whole study in ``out``.

    Args:
        out: run folder (created).
        s: settings (``benchmarks/phl.py``: ``settings(mode)``); recorded on the first call and
            checked on every later one.
        results_path: the markdown results fragment.
        jobs: parallel processes (datasets: build workers; training: runs at a time).
        stop_after: a stage name of :data:`STAGES`; later stages are not run.
        say: progress lines (default: stderr).

    Returns:
        dict ``stages`` (the stages run or skipped), ``state`` (path), and with the report its
        ``results``, ``summary``, ``verdicts``.

    Raises:
        ValueError: ``stop_after`` unknown, or ``out`` holds a run with other settings.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"--stop-after must be one of {STAGES}, got {stop_after!r}")
    runner = StageRunner(out, label="phl", say=say or (lambda m: print(m, file=sys.stderr, flush=True)))
    runner.use_settings(s)
    summary: dict = {"stages": [], "state": runner.path}

    def step(stage: str, fn: Callable[[], object], **kw) -> tuple[dict, bool]:
        result = runner.run(stage, fn, **kw)
        summary["stages"].append(stage)
        return result, stage == stop_after

    _, stop = step("data", lambda: stage_data(out, s, jobs))
    if stop:
        return summary
    costs, stop = step("cost", lambda: stage_cost(out, s))
    if stop:
        return summary
    t1, stop = step("train", lambda: {"runs": run_jobs(job_list(out, s, "tier1"), s, jobs, "train")})
    if stop:
        return summary
    t2, stop = step("tier2", lambda: {"runs": run_jobs(job_list(out, s, "tier2"), s, jobs, "tier2")})
    if stop:
        return summary
    records = {"tier1": t1["runs"], "tier2": t2["runs"]}
    rep, _ = step("report", lambda: write_report(out, s, records, costs, results_path), rerun=True)
    summary.update(results=rep["results"], summary=rep["summary"],
                   verdicts={"tier1": rep["analysis"]["verdicts"], "tier2": rep["tier2"]["verdicts"]})
    return summary
