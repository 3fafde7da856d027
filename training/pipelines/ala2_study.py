"""The alanine-dipeptide study: does curvature supervision help a 5-bead CG model?

The settings (every size, seed, variant and budget) live in ``benchmarks/ala2.py``; this
module runs them through one :class:`~hessid.training.pipelines.runner.StageRunner` in the run
folder (state in ``<out>/state.json``, wall time per stage summed over invocations). Stages:

1. ``reference``  independent AA runs (Amber14 + GBn2, forces of every saved frame) via
   :func:`hessid.training.data.aa_md.simulate`, in parallel processes with one OpenMM thread each.
2. ``map``        5-bead backbone map (:func:`hessid.training.pipelines.ala2.map_dataset`), φ/ψ
   basin populations with block-average errors.
3. ``pool``       one seeded permutation of all reference frames; the training set of size s is
   its first s frames (nested sets).
4. ``targets``    Term 1 on the pool (:func:`hessid.training.data.targets.compute_targets`), one
   file per probe setting, then per-size subsets (same frame ids, so the same probes).
5. ``hessian_reference`` reference CG Hessian ⟨P∇²UPᵀ⟩ − β Cov(Pf) at one configuration per
   basin (frozen-bead AA sampling, :mod:`hessid.training.data.conditional`).
6. ``train``      every variant × seed × size with the same network, prior, optimiser and step
   budget; only the loss differs. ``cost``: ms per training step of every variant, side by side.
7. ``simulate``   CG Langevin MD per model (:func:`hessid.training.md.simulation.simulate`).
8. ``evaluate``   benchmark metrics (TICA on pair distances), φ/ψ KL and W1 on the torus, basin
   populations, model Hessians at the basin minima against the reference CG Hessian.
9. ``report``     markdown + HTML page with PNGs
   (:func:`hessid.training.evaluation.study_report.write_ala2_report`); rewritten on every call.

A stage done for the same inputs (its ``key``) is skipped; a stage run again resumes from its
own outputs (an AA run from its OpenMM checkpoint, targets from their done mask, a training job
from ``train_done.json``, CG MD from its checkpoint, an evaluation group from
``ala2_metrics.json``), so a rerun recomputes nothing that is finished.
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

from hessid.training.data import aa_md
from hessid.training.data import schema as sc
from hessid.training.data.conditional import estimate_cg_hessian, sample_frozen
from hessid.training.data.io import copy_frames, dataset_path, validate_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.data.targets import compute_targets, make_executor
from hessid.training.evaluation.evaluate import (
    Trajectories,
    evaluate,
    filter_replicas,
    load_simulation,
)
from hessid.training.evaluation.study_report import write_ala2_report
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import collate_frames, load_protein
from hessid.training.learning.models import load_potential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.trainer import train
from hessid.training.md.simulation import simulate
from hessid.training.pipelines import ala2
from hessid.training.pipelines.runner import StageRunner, read_json, write_json

#: the study's state file inside its run folder
STATE_FILE = "state.json"
#: values of ``run_study(stop_after=…)``: stop after that group of stages
STOP_POINTS = ("reference", "map", "pool", "targets")
#: per-frame dataset of the pool (and the files cut from it): the frame's position in the
#: pool's seeded permutation, so the training set of size s is ``draw_rank < s``
DRAW_RANK = "draw_rank"


def log(msg: str) -> None:
    """A progress line on stderr: ``[ala2 HH:MM:SS] msg``."""
    print(f"[ala2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in label)


def _executor(jobs: int) -> cf.Executor:
    """``jobs`` ≤ 1: tasks run in this process; else a spawn process pool of ``jobs`` workers."""
    if jobs <= 1:
        return make_executor(0)[0]
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def n_frames(path: Path) -> int:
    """Frame count T of a dataset file."""
    with open_dataset(path) as ds:
        return ds.shape_of(sc.COORDINATES)[0]


def done_mask_complete(path: Path, key: str) -> bool:
    """Whether the done mask of ``key`` (``schema.TERM1`` or ``schema.HESSIAN_BLOCK``) exists in
    ``path`` and flags every frame."""
    if not path.exists():
        return False
    with open_dataset(path) as ds:
        done = key + sc.DONE_SUFFIX
        return ds.has(done) and bool(ds.read(done).all())


# ----------------------------------------------------------------------------- 1. reference


def _run_aa(name: str, root: str, cfg: dict, seed: int) -> dict:
    """One AA run (new or resumed); returns its frame count and measured ns/day."""
    mdc = aa_md.MDConfig(steps=cfg["steps"], stride=cfg["stride"], temperature=cfg["temperature"],
                         friction=cfg["friction"], timestep=cfg["timestep"],
                         equilibration_steps=cfg["equilibration_steps"], solvent=cfg["solvent"],
                         platform="CPU", threads=1, seed=seed, chunk_frames=cfg["chunk_frames"],
                         hydrogen_mass=cfg.get("hydrogen_mass"))  # fmt: skip
    h5 = dataset_path(name, root)
    n_target = cfg["steps"] // cfg["stride"]
    n0 = n_frames(h5) if h5.exists() else 0
    if n0 >= n_target:
        return {"name": name, "frames": n0, "ns_per_day": None, "skipped": True}
    t0 = time.perf_counter()
    resume = h5.exists() and h5.with_suffix(".chk").exists()
    aa_md.simulate(name, mdc, root=root, resume=resume, overwrite=not resume, progress=False)
    dt = time.perf_counter() - t0
    steps = (n_target - (n0 if resume else 0)) * cfg["stride"]
    return {"name": name, "frames": n_target, "skipped": False,
            "ns_per_day": aa_md.ns_per_day(steps, cfg["timestep"], dt), "wall_s": dt}


def stage_reference(out: Path, s: dict, jobs: int) -> dict:
    """Independent AA runs ``reference/ala2_r<i>/ala2_r<i>.h5`` (seeds 1000 + i)."""
    root = out / "reference"
    cfg = s["reference"]
    names = [f"ala2_r{i}" for i in range(cfg["n_runs"])]
    for name in names:
        ala2.write_structure(name, root)
    log(f"reference: {len(names)} AA runs × {cfg['steps'] * cfg['timestep'] * 1e-6:.3g} ns, {jobs} in parallel")
    with _executor(jobs) as ex:
        futs = [ex.submit(_run_aa, name, str(root), cfg, 1000 + i) for i, name in enumerate(names)]
        runs = [f.result() for f in futs]
    return {"config": cfg, "runs": runs, "files": [dataset_path(n, root) for n in names],
            "total_ns": len(names) * cfg["steps"] * cfg["timestep"] * 1e-6,
            "ns_per_day_per_process": [r["ns_per_day"] for r in runs if r["ns_per_day"]]}  # fmt: skip


# ----------------------------------------------------------------------------- 2. map


def stage_map(out: Path, ref: dict) -> dict:
    """5-bead map of every reference run, φ/ψ angles (``reference/phi_psi.npz``), basin populations."""
    angles, basins = [], []
    for f in (out / p for p in ref["files"]):
        with open_dataset(f) as ds:
            ok = ds.has(sc.CG_COORDINATES) and ds.shape_of(sc.CG_COORDINATES)[0] == ds.shape_of(sc.COORDINATES)[0]
        if not ok:
            ala2.map_dataset(f, overwrite=True)
        with open_dataset(f) as ds:
            a = ala2.phi_psi(ds.cg.coordinates())
        angles.append(a)
        basins.append(ala2.basin_populations(a, n_blocks=min(10, len(a))))
    pooled = ala2.basin_populations(angles, n_blocks=max(2, min(10 * len(angles), sum(map(len, angles)))))
    per_run_blocks = ala2.basin_populations(angles, n_blocks=len(angles)) if len(angles) > 1 else None
    np.savez_compressed(out / "reference" / "phi_psi.npz", *angles)
    log(f"map: reference basins {json.dumps(pooled['populations'])}")
    return {"files": ref["files"], "basins_per_run": basins, "basins_pooled": pooled,
            "basins_blocks_are_runs": per_run_blocks}  # fmt: skip


# ----------------------------------------------------------------------------- 3. pool


def frame_times(path: Path, rows: np.ndarray) -> np.ndarray:
    """``time`` (ps) of the frames ``rows`` of a dataset file."""
    with open_dataset(path) as ds:
        return ds.time(rows)


def _draw_rank(path: Path) -> np.ndarray:
    """The pool rank of every frame of ``path`` (:data:`DRAW_RANK`), (T,) int64."""
    with open_dataset(path) as ds:
        return ds.read(DRAW_RANK)


def stage_pool(out: Path, s: dict, ref: dict) -> dict:
    """Training pool: the first max(sizes) frames of one seeded permutation of all frames.

    Raises:
        ValueError: the pool is larger than the reference.
    """
    n_pool = max(s["sizes"])
    files = [out / f for f in ref["files"]]
    counts = [n_frames(f) for f in files]
    total = sum(counts)
    if n_pool > total:
        raise ValueError(f"pool of {n_pool} frames requested but the reference holds {total}")
    perm = np.random.default_rng(s["pool_seed"]).permutation(total)[:n_pool]  # global frame indices
    rank = np.full(total, -1, dtype=np.int64)
    rank[perm] = np.arange(n_pool)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    per_file = []
    for i, f in enumerate(files):
        sel = np.sort(perm[(perm >= offsets[i]) & (perm < offsets[i + 1])]) - offsets[i]
        per_file.append((f, sel))
    pool = out / "pool" / "pool" / "pool.h5"
    # frame ids and times made globally unique and increasing: run i → frame id i·10⁷ + frame,
    # time i·(span + 1 ps) + t (span: the largest pooled time, ps)
    sel_global = np.concatenate([offsets[i] + r for i, (_, r) in enumerate(per_file)])
    run_of = np.concatenate([np.full(len(r), i) for i, (_, r) in enumerate(per_file)])
    t = np.concatenate([frame_times(f, r) for f, r in per_file])
    copy_frames(per_file, pool, frame_id=run_of * 10_000_000 + np.concatenate([r for _, r in per_file]),
                time=run_of * (float(t.max()) + 1.0) + t, extra_datasets={DRAW_RANK: rank[sel_global]},
                extra_attrs={"pool_seed": s["pool_seed"], "pool_sources": json.dumps([str(f) for f in files])})
    validate_dataset(pool)
    log(f"pool: {n_pool} of {total} reference frames")
    return {"n_pool": n_pool, "files": ref["files"], "pool": pool, "total_reference_frames": total}


# ----------------------------------------------------------------------------- 4. targets


def variant_sizes(s: dict, variant: dict) -> list[int]:
    """Training-set sizes of one variant: every size, or only the ablation size."""
    return list(s["sizes"]) if variant.get("sizes", "all") == "all" else [s["ablation_size"]]


def target_sizes(s: dict) -> dict[str, list[int]]:
    """{target tag: sorted sizes some variant trains on with it}."""
    out: dict[str, set] = {}
    for v in s["variants"].values():
        out.setdefault(v["targets"], set()).update(variant_sizes(s, v))
    return {t: sorted(n) for t, n in out.items()}


def stage_targets(out: Path, s: dict, pool: dict, jobs: int) -> dict:
    """Term 1 (or the full block) per probe setting on the frames some variant trains on.

    Returns ``{"files": {tag: {str(size): path}}, "timing": {tag: {...}}, ...}``.
    """
    files, timing = {}, {}
    need = target_sizes(s)
    pool_path = out / pool["pool"]
    for tag, (kind, k, full_block) in s["targets"].items():
        path = out / "targets" / tag / f"{tag}.h5"
        n_tag = max(need[tag])  # Term 1 only on the frames some variant trains on
        if path.exists() and n_frames(path) != n_tag:  # e.g. a size was added to the grid
            log(f"targets: {tag} holds a different frame set than {n_tag} frames; rebuilt")
            path.unlink()
        if not path.exists():
            copy_frames([(pool_path, np.flatnonzero(_draw_rank(pool_path) < n_tag))], path)
        key = sc.HESSIAN_BLOCK if full_block else sc.TERM1
        if not done_mask_complete(path, key):
            with open_dataset(path) as ds:
                exists = ds.has(key)
            log(f"targets: {tag} on {n_tag} frames")
            r = compute_targets(path, n_probes=k, probe_kind="gaussian" if full_block else kind,
                                seed=s["probe_seed"], platform="CPU", threads=1, workers=jobs if jobs > 1 else 0,
                                chunk_frames=64, resume=exists, full_block=full_block, progress=False)  # fmt: skip
            timing[tag] = {"wall_s": r.wall_s, "frame_probes_per_s": r.frame_probes_per_s}
        files[tag] = {}
        rank = _draw_rank(path)
        for size in need[tag]:
            sub = out / "targets" / tag / f"n{size}" / f"n{size}.h5"
            if not sub.exists():
                copy_frames([(path, np.flatnonzero(rank < size))], sub)
            files[tag][str(size)] = sub
    return {"targets": s["targets"], "sizes": need, "pool": pool, "files": files, "timing": timing}


# ----------------------------------------------------------------------------- 5. train


def _train_one(job: dict) -> dict:
    """Train one (variant, size, seed) model; returns its model path and wall times.

    Skipped when ``model.pt`` and ``train_done.json`` exist (a finished job). Paths in the
    returned dict are relative to ``job["root"]`` (the run folder).
    """
    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    done = run_dir / "train_done.json"
    if (run_dir / "model.pt").exists() and done.exists():
        return read_json(done)
    t0 = time.perf_counter()
    result = _call_trainer(job)
    wall = time.perf_counter() - t0
    stored_job = {**job, "run_dir": run_dir, "data": Path(job["data"]), "root": Path(job["root"])}
    write_json(done, {**result, "wall_s": wall, "job": stored_job}, Path(job["root"]))
    return read_json(done)


def _call_trainer(job: dict) -> dict:
    """Run :func:`hessid.training.learning.trainer.train` on one job (the only place that knows its config).

    Every variant gets the same config except ``loss.mode`` / ``loss.cov_weight`` and the
    targets file; early stopping is off so every model takes exactly ``steps`` optimizer steps.
    The prior is the trainer's (per-bead-type-class Boltzmann inversion on the training frames).
    """
    v, tr = job["variant"], job["train"]
    every = max(1, tr["steps"] // 2)  # validation (10 % of the frames) twice: its cost grows with the size
    config = {
        "name": job["name"], "output_dir": str(Path(job["run_dir"]).parent), "seed": job["seed"],
        "data": {"datasets": [job["data"]], "split": "frames", "val_fraction": tr["val_fraction"],
                 "batch_size": tr["batch_size"]},
        "model": job["model"],
        "loss": {"mode": v["mode"], "cov_weight": v["cov_weight"], "lambda_force": tr["lambda_force"],
                 "lambda_hvp": tr["lambda_hvp"]},
        "optim": {"lr": tr["lr"], "weight_decay": tr["weight_decay"], "grad_clip": tr["grad_clip"]},
        "trainer": {"max_steps": tr["steps"], "val_every_steps": every, "checkpoint_every_steps": every,
                    "early_stopping_patience": 0, "accelerator": "cpu", "devices": 1,
                    "progress_bar": False},
    }  # fmt: skip
    res = train(config)
    model = Path(res.model)
    if not model.exists():
        raise RuntimeError(f"trainer returned {res!r} but wrote no {model}")
    metrics = Path(res.metrics_csv) if res.metrics_csv else None
    n_train = job["n_frames"] * (1 - tr["val_fraction"])
    return {"model": model, "metrics_csv": metrics if metrics and metrics.exists() else None,
            "global_step": int(res.global_step), "best_val_fm": res.best_val_fm,
            "verification_passed": (res.verification or {}).get("passed"),
            "epochs": tr["steps"] * tr["batch_size"] / max(n_train, 1)}


def stage_train(out: Path, s: dict, tgt: dict, jobs: int) -> dict:
    """Every (variant, size, seed) model under ``train/<variant>_n<size>_s<seed>/``."""
    work = []
    for label, v in s["variants"].items():
        for size in variant_sizes(s, v):
            for seed in s["seeds"]:
                name = f"{_safe(label)}_n{size}_s{seed}"
                work.append({"label": label, "variant": v, "size": size, "seed": seed, "name": name,
                             "n_frames": size, "run_dir": str(out / "train" / name), "root": str(out),
                             "data": str(out / tgt["files"][v["targets"]][str(size)]), "model": s["model"],
                             "train": s["train"]})  # fmt: skip
    log(f"train: {len(work)} models ({jobs} in parallel)")
    with _executor(jobs) as ex:
        results = [f.result() for f in [ex.submit(_train_one, j) for j in work]]
    for r in results:
        r["wall_s_per_epoch"] = r["wall_s"] / max(r["epochs"], 1e-12)
    return {"runs": results}


def stage_cost(out: Path, s: dict, tgt: dict, trained: dict, repeats: int = 20) -> dict:
    """Training cost per step of every variant, measured side by side in one process.

    One batch (``train.batch_size`` frames of the ablation-size set), the FM model of seed 0
    (network + prior), and each variant's loss forward + backward, round robin ``repeats``
    times on 1 thread (slow drifts of a shared machine hit every variant alike); the median
    ms/step and its ratio to FM. The wall time of the training jobs themselves (2 processes
    at a time on a shared machine) is reported next to it.
    """
    torch.set_num_threads(1)
    n = s["ablation_size"]
    fm_model = next(out / r["model"] for r in trained["runs"]
                    if r["job"]["label"] == "FM" and r["job"]["size"] == n and r["job"]["seed"] == s["seeds"][0])
    bs = s["train"]["batch_size"]
    steps: dict = {}
    for label, v in s["variants"].items():
        pot = load_potential(fm_model)
        prot = load_protein(out / tgt["files"][v["targets"]][str(n)])
        cfg = TrainConfig.from_dict({
            "name": "cost", "output_dir": str(out / "cost"), "data": {"datasets": [prot.path]},
            "loss": {"mode": v["mode"], "cov_weight": v["cov_weight"], "normalise": False}})
        module = CGTrainingModule(pot, cfg, {})
        types = [np.arange(len(prot.vocabulary), dtype=np.int64)]
        data = collate_frames([prot], [(0, t) for t in range(bs)], types, pot.dtype,
                              v["mode"] == "fm_hvp", v["mode"] == "fm_hessian")

        def step(module=module, data=data):
            module.potential.zero_grad(set_to_none=True)
            module.compute_losses(data, 10**9)["total"].backward()

        step()  # warm-up
        steps[label] = step
    times: dict = {k: [] for k in steps}
    for _ in range(repeats):
        for label, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    ms = {k: 1e3 * float(np.median(t)) for k, t in times.items()}
    log("cost: " + ", ".join(f"{k} {m:.1f} ms" for k, m in ms.items()))
    return {"repeats": repeats, "batch_size": bs, "frames": n, "threads": 1, "ms_per_step": ms,
            "ratio_to_fm": {k: m / ms["FM"] for k, m in ms.items()}}


# ----------------------------------------------------------------------------- 6. simulate


def _simulate_one(job: dict) -> dict:
    """CG MD of one model (skipped when ``simulation.json`` records the same step count)."""
    out = Path(job["out"])
    meta = read_json(out / "simulation.json")
    c = job["cgmd"]
    if meta is not None and meta.get("config", {}).get("n_steps") == c["n_steps"]:
        return {"dir": out, "skipped": True}
    pot = load_potential(job["model"])
    res = simulate(pot, out, n_steps=c["n_steps"], save_interval=c["save_interval"], reference=job["reference"],
                   n_replicas=c["n_replicas"], timestep=c["timestep"], temperature=c["temperature"],
                   friction=c["friction"], masses=list(ala2.BEAD_MASSES), seed=job["seed"],
                   dtype=pot.dtype if hasattr(pot, "dtype") else torch.float32, resume=True,
                   progress=False, bond_range=ala2.BOND_RANGE, threads=1,
                   provenance={"model": job["model"]})  # fmt: skip
    return {"dir": out, "skipped": False, "steps_per_second": res.steps_per_second, "failures": res.failures}


def stage_simulate(out: Path, s: dict, trained: dict, pool: dict, jobs: int) -> dict:
    """CG MD of every trained model under ``cgmd/<model run name>/``."""
    work = [{"out": str(out / "cgmd" / Path(r["model"]).parent.name), "model": str(out / r["model"]),
             "reference": str(out / pool["pool"]), "seed": r["job"]["seed"], "cgmd": s["cgmd"]}
            for r in trained["runs"]]  # fmt: skip
    log(f"simulate: {len(work)} models × {s['cgmd']['n_replicas']} replicas × {s['cgmd']['n_steps']} steps")
    with _executor(jobs) as ex:
        results = [f.result() for f in [ex.submit(_simulate_one, j) for j in work]]
    return {"runs": results}


# ----------------------------------------------------------------------------- 7. evaluate


def _reference_trajectories(out: Path, ref: dict) -> Trajectories:
    xyz, dt = [], None
    files = [out / f for f in ref["files"]]
    for f in files:
        with open_dataset(f) as ds:
            xyz.append(ds.cg.coordinates() / 10.0)  # Å → nm
            t = ds.time()
            dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    return Trajectories(xyz, dt, "alanine dipeptide", sources=[str(f) for f in files], residue_names=None)


def _model_angles(sim_dir: Path, burn_in: float) -> np.ndarray:
    trajs = load_simulation(sim_dir)
    kept, _ = filter_replicas(trajs, (ala2.BOND_RANGE[0] / 10, ala2.BOND_RANGE[1] / 10), burn_in)
    if not kept:
        return np.zeros((0, 2))
    return np.concatenate([ala2.phi_psi(x * 10.0) for x in kept])  # nm → Å (angles unit-free)


def _hessian_reference_one(job: dict) -> dict:
    """Frozen-bead sampling at one basin configuration → map → Term-1 blocks → estimate."""
    c = job["config"]
    top = ala2.dataset_topology(job["reference"])
    with open_dataset(job["reference"]) as ds:
        xyz = ds.coordinates(job["frame"])  # (N, 3) Å
    path = Path(job["path"])
    t0 = time.perf_counter()
    if not done_mask_complete(path, sc.HESSIAN_BLOCK):
        sample_frozen((top, xyz), ala2.backbone_indices(top), path, n_frames=c["n_frames"], stride=c["stride"],
                      timestep=c["timestep"], equilibration_steps=c["equilibration_steps"], seed=job["seed"],
                      threads=1, overwrite=True)
        ala2.map_dataset(path, overwrite=True)
        compute_targets(path, full_block=True, seed=job["probe_seed"], platform="CPU", threads=1, workers=0,
                        chunk_frames=200, progress=False)  # fmt: skip
    est = estimate_cg_hessian(path, n_blocks=10)
    return {"basin": job["basin"], "hessian": est["hessian"], "sem": est["sem"],
            "frobenius_rel_sem": float(est["frobenius_rel_sem"]), "drift_angstrom": est["drift_angstrom"],
            "n_frames": int(est["n_frames"]), "wall_s": time.perf_counter() - t0,
            "term1_frobenius": float(np.linalg.norm(est["term1"])),
            "term2_frobenius": float(np.linalg.norm(est["term2"]))}


def stage_hessian_reference(out: Path, s: dict, ref: dict, jobs: int) -> dict:
    """Reference CG Hessian at the basin configurations of :func:`ala2.basin_frames` (run 0).

    Writes ``hessian_reference.npz`` (``<basin>``: (15, 15) kcal/mol/Å², ``<basin>_sem``).
    """
    c = s["hessian_reference"]
    ref0 = out / ref["files"][0]
    with open_dataset(ref0) as ds:
        frames = ala2.basin_frames(ala2.phi_psi(ds.cg.coordinates()))
    work = [{"basin": b, "frame": i, "reference": str(ref0), "config": c, "seed": 7 + k,
             "probe_seed": s["probe_seed"], "path": str(out / "hessian_reference" / b / f"{b}.h5")}
            for k, (b, i) in enumerate(frames.items())]  # fmt: skip
    log(f"hessian reference: {len(work)} basin configurations × {c['n_frames']} frozen-bead frames")
    with _executor(jobs) as ex:
        res = [f.result() for f in [ex.submit(_hessian_reference_one, j) for j in work]]
    np.savez(out / "hessian_reference.npz", **{r["basin"]: r["hessian"] for r in res},
             **{f"{r['basin']}_sem": r["sem"] for r in res})
    basins = {r["basin"]: {k: v for k, v in r.items() if k not in ("hessian", "sem", "basin")} for r in res}
    log("hessian reference: " + ", ".join(f"{b} rel. s.e. {d['frobenius_rel_sem']:.3f}" for b, d in basins.items()))
    return {"config": c, "reference": ref["files"][0], "frames": frames, "basins": basins}


def _evaluate_group(out: Path, s: dict, label: str, size: int, items: list, ref_traj: Trajectories,
                    ref_angles: np.ndarray, minima: dict, href: dict | None) -> dict:
    """Metrics of one (variant, size) over its seeds; ``items``: [(train run, CG MD folder)]."""
    ev = s["eval"]
    d = out / "evaluate" / f"{_safe(label)}_n{size}"
    usable = [p for _, p in items if _has_survivors(p)]
    failed_seeds = [r["job"]["seed"] for r, p in items if p not in usable]
    docs = [None]
    if usable:  # a model whose every replica blew up is a result (reported), not a crash
        docs = evaluate(ref_traj, {label: [str(p) for p in usable]}, d, protein="alanine dipeptide",
                        lag_time=ev["lag_time"], bond_range=ala2.BOND_RANGE, burn_in=0.1)  # fmt: skip
    per_seed = []
    for r, p in items:
        ang = _model_angles(p, 0.1)
        m = ala2.phi_psi_metrics(ref_angles, ang, ev["n_bins"], ev["sigma_bins"], ev["n_blocks"]) \
            if len(ang) >= 2 else {"phi_psi_kl": math.nan, "phi_psi_w1": math.nan, "basins": None}
        pot = load_potential(out / r["model"])
        hm = {b: ala2.model_hessians(pot, x[None])[0] for b, x in minima.items()}
        if href is not None:
            m["hessian_rel_error"] = {b: float(ala2.hessian_relative_error(hm[b][None], href[b][None])[0])
                                      for b in hm if b in href}  # fmt: skip
            m["hessian_soft_rel_error"] = {
                b: float(ala2.hessian_soft_relative_error(hm[b][None], href[b][None])[0]) for b in hm if b in href}
        np.savez_compressed(p / "phi_psi.npz", angles=ang)
        m.update(seed=r["job"]["seed"], wall_s_per_epoch=r["wall_s_per_epoch"], train_wall_s=r["wall_s"])
        per_seed.append(m)
    return {"label": label, "size": size, "benchmark": docs[0], "per_seed": per_seed,
            "failed_seeds": failed_seeds, "summary": ala2.summarise_seeds(per_seed)}


def stage_evaluate(out: Path, s: dict, ref: dict, mapped: dict, trained: dict, sims: dict) -> dict:
    """Rows of metrics per (variant, size); each group cached in ``evaluate/<group>/ala2_metrics.json``."""
    ref_traj = _reference_trajectories(out, ref)
    ref_angles = np.concatenate([ala2.phi_psi(x * 10.0) for x in ref_traj.xyz])
    with open_dataset(out / ref["files"][0]) as ds:
        cg0 = ds.cg.coordinates()
    minima = {b: cg0[i] for b, i in ala2.basin_frames(ala2.phi_psi(cg0)).items()}  # {basin: (5, 3) Å}
    href_path = out / "hessian_reference.npz"
    href = {k: v for k, v in np.load(href_path).items() if not k.endswith("_sem")} if href_path.exists() else None
    by_group: dict = {}
    for r, sim in zip(trained["runs"], sims["runs"], strict=True):
        j = r["job"]
        by_group.setdefault((j["label"], j["size"]), []).append((r, out / sim["dir"]))
    rows = []
    for (label, size), items in by_group.items():
        marker = out / "evaluate" / f"{_safe(label)}_n{size}" / "ala2_metrics.json"
        row = read_json(marker)
        if row is None:
            write_json(marker, _evaluate_group(out, s, label, size, items, ref_traj, ref_angles, minima, href), out)
            row = read_json(marker)
        rows.append(row)
    np.save(out / "evaluate" / "reference_phi_psi.npy", ref_angles)
    return {"rows": rows, "reference_basins": mapped["basins_pooled"],
            "basin_minima": {b: x.tolist() for b, x in minima.items()},
            "hessian_reference": href_path if href is not None else None}  # fmt: skip


def _has_survivors(sim_dir: Path) -> bool:
    meta = read_json(Path(sim_dir) / "simulation.json")
    return len(meta.get("failures", [])) < meta["config"]["n_replicas"]


# ----------------------------------------------------------------------------- 8. report


def stage_report(out: Path, s: dict, ref: dict, mapped: dict, evald: dict, results_md: Path, report_dir: Path,
                 wall_seconds: dict, cost: dict | None = None, href: dict | None = None) -> dict:
    """φ/ψ free-energy maps (reference; every variant at the largest size, seeds pooled) + the report."""
    ev = s["eval"]
    ref_angles = np.load(out / "evaluate" / "reference_phi_psi.npy")
    big = max(r["size"] for r in evald["rows"])
    angle_sets = [("reference", ref_angles)]
    for r in evald["rows"]:
        if r["size"] != big or r["benchmark"] is None:
            continue
        parts = [np.load(f)["angles"] for f in (Path(run["source"]) / "phi_psi.npz" for run in r["benchmark"]["runs"])
                 if f.exists()]  # every seed pooled
        a = np.concatenate(parts) if parts else np.zeros((0, 2))
        if len(a) >= 2:
            angle_sets.append((r["label"], a))
    panels = [(lab, ala2.free_energy_grid(ala2.phi_psi_density(a, ev["n_bins"], ev["sigma_bins"])))
              for lab, a in angle_sets]
    return write_ala2_report(s, ref, mapped, evald["rows"], results_md, report_dir, wall_seconds, panels,
                             np.degrees(ala2.grid_centers(ev["n_bins"])), ala2.BASINS, cost, href)


# ----------------------------------------------------------------------------- driver


def run_study(out: str | Path, s: dict, results_md: str | Path, jobs: int = 2,
              stop_after: str | None = None) -> dict:
    """Run (or resume) the study with settings ``s`` in the run folder ``out``.

    Args:
        out: run folder (created); its ``state.json`` holds every stage's result and wall time.
        s: settings (``benchmarks/ala2.py``'s ``settings(mode)``); written to ``settings.json``.
        results_md: markdown report; its figures and HTML page go to ``<its folder>/ala2/``.
        jobs: parallel processes (AA runs, targets, training, CG MD, reference Hessians).
        stop_after: ``"reference"``/``"map"`` or ``"pool"``/``"targets"``: stop after that
            group of stages.

    Returns:
        JSON-able summary: ``out``, ``mode``, AA ns/day per process, reference basins,
        reference Hessian, targets timing, cost per step, ``rows`` (label, size, TIC0 KL, φ/ψ KL
        and W1), ``results_md``, ``report``, ``timings_s`` (this call, per stage) and ``wall_s``.

    Raises:
        ValueError: ``stop_after`` not in :data:`STOP_POINTS` (before anything is written); a
            pool larger than the reference; a state file this version cannot read.
    """
    if stop_after is not None and stop_after not in STOP_POINTS:
        raise ValueError(f"stop_after must be one of {', '.join(STOP_POINTS)}; got {stop_after!r}")
    t_all = time.perf_counter()
    out = Path(out).resolve()
    results_md = Path(results_md).resolve()
    runner = StageRunner(out, STATE_FILE, label="ala2", say=log)
    write_json(out / "settings.json", s)
    summary: dict = {"out": str(out), "mode": s["mode"]}

    def finish() -> dict:
        summary["timings_s"] = dict(runner.timings)
        summary["wall_s"] = time.perf_counter() - t_all
        print(json.dumps(summary, indent=2, default=float))
        return summary

    ref = runner.run("reference", lambda: stage_reference(out, s, jobs), key=s["reference"])
    summary["aa_ns_per_day_per_process"] = ref["ns_per_day_per_process"]
    mapped = runner.run("map", lambda: stage_map(out, ref), key=ref["files"])
    summary["reference_basins"] = mapped["basins_pooled"]
    if stop_after in ("reference", "map"):
        return finish()
    pool = runner.run("pool", lambda: stage_pool(out, s, ref),
                      key={"n_pool": max(s["sizes"]), "files": ref["files"], "seed": s["pool_seed"]})
    tgt = runner.run("targets", lambda: stage_targets(out, s, pool, jobs),
                     key={"targets": s["targets"], "sizes": target_sizes(s), "pool": pool,
                          "probe_seed": s["probe_seed"]})
    href = runner.run("hessian_reference", lambda: stage_hessian_reference(out, s, ref, jobs),
                      key={"config": s["hessian_reference"], "reference": ref["files"][0]})
    summary["hessian_reference"] = href["basins"]
    summary["targets_timing"] = tgt["timing"]
    if stop_after in ("pool", "targets"):
        return finish()
    trained = runner.run("train", lambda: stage_train(out, s, tgt, jobs),
                         key={k: s[k] for k in ("variants", "sizes", "seeds", "model", "train")} | {"files": tgt["files"]})
    cost = runner.run("cost", lambda: stage_cost(out, s, tgt, trained), key={"repeats": 20})
    summary["cost_ms_per_step"] = cost["ms_per_step"]
    sims = runner.run("simulate", lambda: stage_simulate(out, s, trained, pool, jobs),
                      key={"cgmd": s["cgmd"], "models": [r["model"] for r in trained["runs"]]})
    evald = runner.run("evaluate", lambda: stage_evaluate(out, s, ref, mapped, trained, sims),
                       key={"eval": s["eval"], "models": [r["model"] for r in trained["runs"]],
                            "simulations": [r["dir"] for r in sims["runs"]],
                            "hessian_reference": (out / "hessian_reference.npz").exists()})
    rep = runner.run("report", lambda: stage_report(out, s, ref, mapped, evald, results_md,
                                                    results_md.parent / "ala2", runner.wall_seconds(), cost, href),
                     rerun=True)  # fmt: skip
    summary.update({k: str(runner.resolve(v)) for k, v in rep.items()})
    summary["rows"] = [{"label": r["label"], "size": r["size"],
                        "tic0_kl": r["benchmark"]["metrics"]["tic0_kl"] if r["benchmark"] else None,
                        "phi_psi_kl": r["summary"]["phi_psi_kl"][0],
                        "phi_psi_w1": r["summary"]["phi_psi_w1"][0]} for r in evald["rows"]]  # fmt: skip
    return finish()


__all__ = ["STATE_FILE", "STOP_POINTS", "done_mask_complete", "frame_times", "log", "n_frames", "run_study", "stage_cost", "stage_evaluate", "stage_hessian_reference",
           "stage_map", "stage_pool", "stage_reference", "stage_report", "stage_simulate", "stage_targets",
           "stage_train", "target_sizes", "variant_sizes"]
