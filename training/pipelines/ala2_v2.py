"""The second alanine-dipeptide study (docs/results/ala2_v2.md): data, labels and training stages.

Pre-registered design, run stage by stage in one run folder through a
:class:`~hessid.training.pipelines.runner.StageRunner` (``<out>/state.json``); every stage
resumes from its own outputs. The settings live in ``benchmarks/ala2_v2.py``. Stages here:

1. ``reference``   the 4 × 12.5 ns AA reference (reused from a folder, or generated), mapped.
2. ``split``       held-out run → 2000 validation frames (every 12th) and 100 test configurations
                   (50 αR, 50 β/PII, ≥ 50 ps apart, not validation frames); Q* fit frames (the
                   held-out run's other frames); per subset seed a seeded permutation of the
                   training runs' frames, nested training files of every size.
3. ``test_labels`` conditional labels (mean force, CG Hessian, errors) at the test configurations.
4. ``targets``     Term 1 (k Gaussian probes) on the training files of the HVP arms, with the
                   constraint-aware projector and with Q* (fitted on the Q* fit frames).
5. ``train_labels`` conditional labels at the first C(N) frames of each training subset, C(N)
                   the configurations the FM arm's AA cost at size N buys.
6. ``gate``        FM at every size and replicate (plateau stopping on the validation files),
                   then the gate's MD-free and MD checks (:mod:`.ala2_v2_eval`).
7. ``arms``        every other arm × size × replicate, paired with FM.

The evaluation stages (CG MD, metrics, gate verdict, report) are in :mod:`.ala2_v2_eval`.

Pairing: replicate r = (subset seed, init seed). Every arm at (N, r) trains on frames of the
same subset (the FM file, its Term-1 copy, its Q* copy, or conditional labels at its first
C(N) frames), from the same initial weights and data order (``seed`` = init seed), and its CG
MD uses the same start frames and noise seed.

Units: Å, kcal/mol, K, ps (fs for time steps).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hessid.training.data import schema as sc
from hessid.training.data.io import copy_frames, validate_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.data.targets import compute_targets, make_executor
from hessid.training.learning.trainer import train
from hessid.training.pipelines import ala2
from hessid.training.pipelines.ala2_study import (
    done_mask_complete,
    frame_times,
    n_frames,
    stage_map,
    stage_reference,
)
from hessid.training.pipelines.runner import read_json, write_json

#: per-frame dataset of the subset pools and the files cut from them: the frame's position in
#: its subset's seeded permutation (the training set of size N is ``draw_rank < N``)
DRAW_RANK = "draw_rank"


def log(msg: str) -> None:
    """A progress line on stderr: ``[ala2_v2 HH:MM:SS] msg``."""
    print(f"[ala2_v2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def executor(jobs: int) -> cf.Executor:
    """``jobs`` ≤ 1: tasks run in this process; else a spawn process pool of ``jobs`` workers."""
    if jobs <= 1:
        return make_executor(0)[0]
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def replicates(s: dict) -> list[tuple[int, int]]:
    """Replicate ids (subset seed, init seed), in a fixed order."""
    return [(a, b) for a in s["subset_seeds"] for b in s["init_seeds"]]


def rep_tag(rep: tuple[int, int]) -> str:
    """``"s<subset>i<init>"``."""
    return f"s{rep[0]}i{rep[1]}"


# ----------------------------------------------------------------------------- 1. reference


def stage_reference_v2(out: Path, s: dict, jobs: int) -> dict:
    """The AA reference under ``<out>/reference`` (a link to ``s["reference_dir"]`` when given),
    completed if needed (first study's driver) and mapped; basin populations per run.

    Raises:
        FileNotFoundError: the first study's reference run is missing (names the file).
    """
    ref_dir = out / "reference"
    if s.get("reference_dir"):
        src = Path(s["reference_dir"]).resolve()
        if not (src / "ala2_r0" / "ala2_r0.h5").exists():
            raise FileNotFoundError(f"{src}: no ala2_r0/ala2_r0.h5 (run benchmarks/ala2.py --stop-after map first)")
        if not ref_dir.exists():
            ref_dir.symlink_to(src, target_is_directory=True)
    ref = stage_reference(out, {"reference": s["reference"]}, jobs)
    mapped = stage_map(out, ref)
    return {"files": ref["files"], "config": s["reference"], "basins_per_run": mapped["basins_per_run"],
            "basins_pooled": mapped["basins_pooled"]}  # fmt: skip


# ----------------------------------------------------------------------------- 2. split


def choose_test_configurations(angles: np.ndarray, excluded: np.ndarray, n_per_basin: int,
                               spacing_frames: int, allow_fill: bool = False) -> np.ndarray:
    """Test configurations of the held-out run: ``n_per_basin`` in αR and in β/PII, pairwise at
    least ``spacing_frames`` apart in time, none in ``excluded``.

    Greedy in time order, αR first (the rarer basin), then β/PII keeping the spacing to every
    chosen frame.

    Args:
        angles: (T, 2) φ, ψ radians of the held-out run's frames (time order).
        excluded: (T,) bool, frames that may not be chosen (validation frames).
        n_per_basin: configurations per basin.  spacing_frames: minimum index distance.
        allow_fill: a basin short of frames is filled from any frame (the miniature's short
            reference may never visit αR); off in the study.

    Returns:
        (2 · n_per_basin,) int64 frame indices, sorted.

    Raises:
        ValueError: fewer than ``n_per_basin`` frames of a basin satisfy the spacing.
    """
    labels = ala2.assign_basins(angles)
    chosen: list[int] = []
    for b in (ala2.BASINS.index("alpha_R"), ala2.BASINS.index("beta_PII")):
        got = 0
        for t in np.flatnonzero((labels == b) & ~excluded):
            if got == n_per_basin:
                break
            if all(abs(int(t) - c) >= spacing_frames for c in chosen):
                chosen.append(int(t))
                got += 1
        for t in np.flatnonzero(~excluded) if allow_fill and got < n_per_basin else []:
            if got == n_per_basin:
                break
            if all(abs(int(t) - c) >= spacing_frames for c in chosen):
                chosen.append(int(t))
                got += 1
        if got < n_per_basin:
            raise ValueError(f"only {got} {ala2.BASINS[b]} frames {spacing_frames} frames apart; "
                             f"need {n_per_basin} (lower the spacing or the count)")  # fmt: skip
    return np.sort(np.asarray(chosen, dtype=np.int64))


def stage_split(out: Path, s: dict, ref: dict) -> dict:
    """Validation and test files of the held-out run; per subset seed, nested training files.

    Files: ``split/val/val.h5``, ``split/test/test.h5`` (AA frames of the test configurations),
    ``split/qfit/qfit.h5`` (Q* fit frames), ``data/s<k>/pool/pool.h5`` and
    ``data/s<k>/n<N>/n<N>.h5`` (frames with draw rank < N, in time order per run).

    Raises:
        ValueError: the largest training size exceeds the training runs' frames.
    """
    sp = s["split"]
    files = [out / f for f in ref["files"]]
    held = files[sp["held_out_run"]]
    train_files = [f for i, f in enumerate(files) if i != sp["held_out_run"]]
    with open_dataset(held) as ds:
        angles = ala2.phi_psi(ds.cg.coordinates())
        dt = float(np.median(np.diff(ds.time())))
    n_held = len(angles)
    val_idx = np.arange(0, n_held, sp["val_every"])[: sp["n_val"]]
    is_val = np.zeros(n_held, bool)
    is_val[val_idx] = True
    spacing = int(math.ceil(sp["test_spacing_ps"] / dt))
    test_idx = choose_test_configurations(angles, is_val, sp["n_test_per_basin"], spacing,
                                          allow_fill=sp.get("allow_fill", False))
    is_test = np.zeros(n_held, bool)
    is_test[test_idx] = True
    qfit_idx = np.flatnonzero(~is_test)[:: sp["qfit_every"]]
    for name, idx in (("val", val_idx), ("test", test_idx), ("qfit", qfit_idx)):
        path = out / "split" / name / f"{name}.h5"
        if not path.exists():
            copy_frames([(held, idx)], path)
    counts = [n_frames(f) for f in train_files]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    n_pool = max(s["fm_sizes"])
    if n_pool > total:
        raise ValueError(f"the largest size {n_pool} exceeds the {total} training-run frames")
    subsets = {}
    for k in s["subset_seeds"]:
        perm = np.random.default_rng([s["pool_seed"], k]).permutation(total)[:n_pool]
        rank = np.full(total, -1, dtype=np.int64)
        rank[perm] = np.arange(n_pool)
        sizes = {}
        for size in sorted(s["fm_sizes"]):
            path = out / "data" / f"s{k}" / f"n{size}" / f"n{size}.h5"
            sel = np.flatnonzero((rank >= 0) & (rank < size))
            if not path.exists():
                per_file = [(f, sel[(sel >= offsets[i]) & (sel < offsets[i + 1])] - offsets[i])
                            for i, f in enumerate(train_files)]  # fmt: skip
                run_of = np.concatenate([np.full(len(r), i) for i, (_, r) in enumerate(per_file)])
                local = np.concatenate([r for _, r in per_file])
                times = np.concatenate([frame_times(f, r) for f, r in per_file])
                copy_frames(per_file, path, frame_id=run_of * 10_000_000 + local,
                            time=run_of * (float(times.max()) + 1.0) + times,
                            extra_datasets={DRAW_RANK: rank[sel]},
                            extra_attrs={"subset_seed": int(k), "pool_seed": int(s["pool_seed"]),
                                         "subset_sources": json.dumps([str(f) for f in train_files])})  # fmt: skip
                validate_dataset(path)
            sizes[str(size)] = path
        subsets[str(k)] = sizes
    test_basins = ala2.assign_basins(angles[test_idx])
    log(f"split: {len(val_idx)} validation frames, {len(test_idx)} test configurations, "
        f"{len(qfit_idx)} Q* fit frames, {len(subsets)} subsets of up to {n_pool} of {total} frames")
    return {"held_out": held, "train_files": train_files, "val": out / "split/val/val.h5",
            "test": out / "split/test/test.h5", "qfit": out / "split/qfit/qfit.h5",
            "val_frames": val_idx, "test_frames": test_idx, "test_basins": test_basins,
            "qfit_frames": int(len(qfit_idx)), "frame_dt_ps": dt, "subsets": subsets}  # fmt: skip


def cut_by_rank(src: Path, dst: Path, size: int) -> Path:
    """Copy the frames of ``src`` with draw rank < ``size`` (targets included) to ``dst``."""
    if not dst.exists():
        with open_dataset(src) as ds:
            rank = ds.read(DRAW_RANK)
        copy_frames([(src, np.flatnonzero(rank < size))], dst)
    return dst


# ----------------------------------------------------------------------------- training jobs


def train_config(job: dict, s: dict) -> dict:
    """The trainer config of one job: the study's network, prior, optimiser and stopping rule;
    the arm's loss; validation on the held-out run's validation file (FM loss)."""
    tr, arm = s["train"], s["arms"][job["arm"]]
    loss = {"mode": arm["mode"], "cov_weight": arm.get("cov_weight", 0.0), "lambda_force": tr["lambda_force"],
            "lambda_hvp": tr["lambda_hvp"], **arm.get("loss", {})}
    if "residual_file" in job:
        loss["residual_file"] = job["residual_file"]
    n_train = job["n_train"]
    return {
        "name": job["name"], "output_dir": str(Path(job["run_dir"]).parent), "seed": int(job["rep"][1]),
        "hvp_start_step": arm.get("hvp_start_step", 0), "cov_ramp_steps": arm.get("cov_ramp_steps", 0),
        "data": {"datasets": [job["data"]], "val_datasets": [job["val"]],
                 "batch_size": int(min(tr["batch_size"], n_train))},
        "model": s["model"], "loss": loss,
        "optim": {"lr": tr["lr"], "schedule": tr["schedule"], "gamma_per_1000": tr["gamma_per_1000"],
                  "weight_decay": tr["weight_decay"], "grad_clip": tr["grad_clip"]},
        "trainer": {"max_steps": tr["max_steps"], "val_every_steps": tr["val_every_steps"],
                    "checkpoint_every_steps": tr["val_every_steps"], "early_stopping_patience": 0,
                    "plateau_rel_delta": tr["plateau_rel_delta"], "plateau_window_steps": tr["plateau_window_steps"],
                    "plateau_budget_factor": tr["plateau_budget_factor"], "keep_best": True,
                    "accelerator": "cpu", "devices": 1, "progress_bar": False},
    }  # fmt: skip


def train_job(job: dict) -> dict:
    """Train one (arm, size, replicate) model, resuming from its last checkpoint; skipped when
    ``train_done.json`` exists. Returns the JSON record (paths relative to the run folder)."""
    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    done = run_dir / "train_done.json"
    if done.exists() and (run_dir / "model.pt").exists():
        return read_json(done)
    cfg = train_config(job, job["settings"])
    last = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    res = train(cfg, resume=last.exists())
    wall = time.perf_counter() - t0
    rec = {"arm": job["arm"], "size": job["size"], "rep": list(job["rep"]), "name": job["name"],
           "model": Path(res.model), "metrics_csv": Path(res.metrics_csv), "global_step": int(res.global_step),
           "best_val_fm": res.best_val_fm, "stopping": res.stopping, "wall_s": wall,
           "s_per_step": wall / max(int(res.global_step), 1), "n_train": job["n_train"],
           "aa_force_evaluations": job["aa_force_evaluations"], "data": Path(job["data"])}  # fmt: skip
    write_json(done, rec, Path(job["root"]))
    return read_json(done)


def run_jobs(jobs_list: list[dict], jobs: int, what: str) -> list[dict]:
    """Run training jobs ``jobs`` at a time (longest first), returning records in input order."""
    todo = [j for j in jobs_list if not (Path(j["run_dir"]) / "train_done.json").exists()]
    log(f"{what}: {len(jobs_list)} models, {len(todo)} to train ({jobs} in parallel)")
    order = sorted(range(len(jobs_list)), key=lambda i: -jobs_list[i]["size"])
    results: dict[int, dict] = {}
    with executor(jobs) as ex:
        futs = {ex.submit(train_job, jobs_list[i]): i for i in order}
        for f in cf.as_completed(futs):
            i = futs[f]
            results[i] = f.result()
            r = results[i]
            log(f"{what}: {r['name']} done: {r['global_step']} steps, {r['wall_s']:.0f} s, "
                f"best val FM {r['best_val_fm']}")
    return [results[i] for i in range(len(jobs_list))]


def job_spec(out: Path, s: dict, split: dict, arm: str, size: int, rep, data: Path, n_train: int, aa: int) -> dict:
    """One training job (see :func:`train_job`): arm, size, replicate, its data and AA cost."""
    name = f"{arm}_n{size}_{rep_tag(rep)}"
    return {"arm": arm, "size": int(size), "rep": list(rep), "name": name, "run_dir": str(out / "train" / name),
            "root": str(out), "data": str(data), "val": str(out / split["val"]), "n_train": int(n_train),
            "aa_force_evaluations": int(aa), "settings": s}  # fmt: skip


def stage_gate_train(out: Path, s: dict, split: dict, jobs: int) -> dict:
    """FM at every size of its learning curve and every replicate."""
    work = [job_spec(out, s, split, "FM", n, rep, out / split["subsets"][str(rep[0])][str(n)], n,
                 fm_aa_cost(s, n, with_term1=False))
            for n in s["fm_sizes"] for rep in replicates(s)]  # fmt: skip
    return {"runs": run_jobs(work, jobs, "gate train")}


def stage_keys(s: dict) -> dict:
    """The inputs each early stage is done for (StageRunner keys), shared by every caller."""
    return {"reference": s["reference"],
            "split": {k: s[k] for k in ("split", "subset_seeds", "pool_seed", "fm_sizes")},
            "gate_train": {k: s[k] for k in ("fm_sizes", "model", "train", "subset_seeds", "init_seeds")}}


def fm_aa_cost(s: dict, size: int, with_term1: bool) -> int:
    """AA force evaluations behind ``size`` plain frames: MD steps per saved frame, plus 2k FD
    evaluations per frame for Term 1 (docs/results/ala2_v2.md, "Equal AA cost")."""
    per = int(s["reference"]["stride"]) + (2 * int(s["targets"]["k"]) if with_term1 else 0)
    return per * int(size)


def _call_targets(path: Path, s: dict, jobs: int) -> None:
    t = s["targets"]
    with open_dataset(path) as ds:
        exists = ds.has(sc.TERM1)
    compute_targets(path, n_probes=t["k"], probe_kind=t["probe_kind"], seed=t["probe_seed"], platform="CPU",
                    threads=1, workers=jobs if jobs > 1 else 0, chunk_frames=64, resume=exists,
                    progress=False)  # fmt: skip


def targets_for(out: Path, s: dict, split: dict, jobs: int, projector: str, fit: dict | None = None) -> dict:
    """Term 1 on the largest HVP-arm file of every subset (``projector`` "plain" or "qstar"),
    then the smaller sizes cut from it. Returns ``{subset: {size: path}}``."""
    sizes = sorted(s["arm_sizes"])
    files: dict = {}
    for k, by_size in split["subsets"].items():
        top = out / "targets" / projector / f"s{k}" / f"n{sizes[-1]}" / f"n{sizes[-1]}.h5"
        if not top.exists():
            src = out / by_size[str(sizes[-1])]
            tmp = top.with_suffix(".copy.h5")
            with open_dataset(src) as ds:
                rank = ds.read(DRAW_RANK)
            copy_frames([(src, np.arange(len(rank)))], tmp)
            if projector == "qstar":
                fit["apply"](tmp)
            tmp.rename(top)
        if not done_mask_complete(top, sc.TERM1):
            log(f"targets: {projector} Term 1 on subset {k} ({sizes[-1]} frames)")
            _call_targets(top, s, jobs)
        files[k] = {str(n): cut_by_rank(top, top.parents[1] / f"n{n}" / f"n{n}.h5", n) for n in sizes}
        files[k][str(sizes[-1])] = top
    return files


def n_label_configs(s: dict, size: int, cost_per_label: float) -> int:
    """C(N): conditional labels the FM arm's AA cost at size N buys (at least 1)."""
    return max(1, int(fm_aa_cost(s, size, with_term1=False) // cost_per_label))


def label_cost_estimate(s: dict) -> float:
    """AA force evaluations of one training label (settings ``train_labels``): equilibration +
    samples × stride MD steps + 2 · 3n FD evaluations per sample (central differences, n = 5)."""
    c = s["train_labels"]
    return float(c["equilibration_steps"] + c["samples"] * c["stride"] + 2 * 15 * c["samples"])


__all__ = ["DRAW_RANK", "choose_test_configurations", "cut_by_rank", "executor",
           "fm_aa_cost", "job_spec", "label_cost_estimate", "log", "n_label_configs", "rep_tag", "replicates",
           "run_jobs", "stage_gate_train", "stage_keys", "stage_reference_v2", "stage_split", "targets_for",
           "train_config", "train_job"]  # fmt: skip
