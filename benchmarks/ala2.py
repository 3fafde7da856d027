"""Alanine dipeptide, 5-bead CG: does curvature supervision help? (issue 6) — one command.

    python benchmarks/ala2.py --out runs/ala2            # full benchmark (hours, 2 CPU cores)
    python benchmarks/ala2.py --quick --out /tmp/ala2q   # miniature of every stage (minutes)
    python benchmarks/ala2.py --small --out runs/ala2_small  # preliminary small run (~25 min)

Stages (each resumable: a stage whose outputs exist and are complete is skipped; an
interrupted AA run resumes from its OpenMM checkpoint, an interrupted target run from its done
mask, an interrupted CG MD from its checkpoint):

1. ``reference``  independent AA runs (Amber14 + GBn2, 300 K, HBond constraints, 2 fs,
   forces of every saved frame) via :func:`hessid.training.data.aa_md.simulate`, in parallel
   processes with one OpenMM thread each; basin populations with block-average errors.
2. ``map``        5-bead backbone map (:func:`hessid.training.pipelines.ala2.map_dataset`).
3. ``pool``       the training frames: one seeded permutation of all reference frames; the
   training set of size s is its first s frames (nested sets 1k ⊂ 4k ⊂ 16k ⊂ 64k).
4. ``targets``    Term 1 on the pool (:func:`hessid.training.data.targets.compute_targets`), one
   file per probe setting (Gaussian/one-hot × k ∈ {1, 4}) and the full 15 × 15 block; then
   per-size subsets (same frame ids, so the same probes).
5. ``train``      every variant × seed × size with the same network, prior, optimiser and step
   budget (:data:`MODEL`, :data:`TRAIN`); only the loss differs (:data:`VARIANTS`).
6. ``simulate``   CG Langevin MD, 20 replicas per model (:func:`hessid.training.md.simulation.simulate`).
7. ``evaluate``   benchmark.md metrics (TICA on pair distances) per (variant, size) with
   mean ± s.e. over seeds, φ/ψ KL and W1 on the torus, basin populations, model Hessians at
   the basin minima (error against a reference CG Hessian when ``hessian_reference.npz``
   exists), train wall time per epoch.
8. ``report``     ``ala2.md`` (docs/results/ala2.md in full mode) + HTML page with PNGs:
   table, data-efficiency curves, φ/ψ free-energy maps side by side.

Hyper-parameters are fixed here, before any comparison, and are the same for every variant
except the loss. Prints a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- settings

#: AA reference: runs × ns (full: 6 × 10 ns = 60 ns ≥ 50 ns), frames every 0.5 ps
REFERENCE = {
    "full": {"n_runs": 4, "steps": 3_125_000, "stride": 125, "equilibration_steps": 12_500,
             "timestep": 4.0, "hydrogen_mass": 3.0, "temperature": 300.0, "friction": 1.0,
             "solvent": "gbn2", "chunk_frames": 500},
    "quick": {"n_runs": 2, "steps": 10_000, "stride": 50, "equilibration_steps": 1_000,
              "timestep": 2.0, "temperature": 300.0, "friction": 1.0, "solvent": "gbn2",
              "chunk_frames": 50},
    "small": {"n_runs": 2, "steps": 500_000, "stride": 250, "equilibration_steps": 25_000,
              "timestep": 2.0, "temperature": 300.0, "friction": 1.0, "solvent": "gbn2",
              "chunk_frames": 500},
}  # fmt: skip
#: training-set sizes (frames) and seeds
SIZES = {"full": [1000, 4000, 16000, 64000], "quick": [200], "small": [2000]}
#: the one training-set size of the probe / full-Hessian ablation (variants with "sizes": "ablation")
ABLATION_SIZE = {"full": 4000, "quick": 200, "small": 2000}
SEEDS = {"full": [0, 1, 2], "quick": [0], "small": [0]}
#: probe settings for Term 1 (tag → (probe_kind, k, full_block)); probe seed fixed
TARGETS = {
    "gaussian_k4": ("gaussian", 4, False),
    "gaussian_k1": ("gaussian", 1, False),
    "one_hot_k4": ("one_hot", 4, False),
    "one_hot_k1": ("one_hot", 1, False),
    "full_block": ("one_hot_all", 15, True),
}
PROBE_SEED = 1234
POOL_SEED = 2024
#: variants: only the loss differs. The probe ablations use γ = 1 (Term 1 − β Cov), like the
#: full-Hessian variant they are compared with.
VARIANTS = {
    "FM": {"mode": "fm", "targets": "gaussian_k4", "cov_weight": 0.0, "sizes": "all"},
    "FM+AA": {"mode": "fm_hvp", "targets": "gaussian_k4", "cov_weight": 0.0, "sizes": "all"},
    "FM+AA+Cov": {"mode": "fm_hvp", "targets": "gaussian_k4", "cov_weight": 1.0, "sizes": "all"},
    "FM+AA+Cov gaussian k1": {"mode": "fm_hvp", "targets": "gaussian_k1", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+AA+Cov one-hot k4": {"mode": "fm_hvp", "targets": "one_hot_k4", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+AA+Cov one-hot k1": {"mode": "fm_hvp", "targets": "one_hot_k1", "cov_weight": 1.0, "sizes": "ablation"},
    "FM+full-Hessian": {"mode": "fm_hessian", "targets": "full_block", "cov_weight": 1.0, "sizes": "ablation"},
}  # fmt: skip
QUICK_VARIANTS = ["FM", "FM+AA+Cov", "FM+full-Hessian"]
#: the preliminary "small" run (--small): a few ns of reference, one size, one seed
SMALL_VARIANTS = ["FM", "FM+AA", "FM+AA+Cov"]
#: CGSchNet for 5 beads: the lower cutoff is 0 (not the Cα default 3 Å) because every pair of
#: this map lies between 1.3 and ~5 Å; bonded pairs are seen by both prior and network.
MODEL = {"full": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm",
                  "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                  "max_num_neighbors": 32, "precision": "float32"},
         "quick": {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 8, "rbf_type": "expnorm",
                   "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                   "max_num_neighbors": 32, "precision": "float32"},
         "small": {"embedding_dimension": 32, "num_layers": 3, "num_rbf": 12, "rbf_type": "expnorm",
                   "activation": "silu", "cutoff_lower": 0.0, "cutoff_upper": 8.0,
                   "max_num_neighbors": 32, "precision": "float32"}}  # fmt: skip
#: optimiser and budget: the same number of gradient steps for every size and variant
TRAIN = {"full": {"steps": 1000, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                  "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1},
         "quick": {"steps": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                   "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1},
         "small": {"steps": 2000, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0,
                   "lambda_force": 1.0, "lambda_hvp": 1.0, "grad_clip": 10.0, "val_fraction": 0.1}}  # fmt: skip
#: CG MD: 20 replicas × 40 ps per model (full: 10 000 BAOAB steps of 4 fs; BAOAB samples a harmonic
#: bond's configurational distribution exactly at any stable step, and the stiffest CG bond's period
#: is ≈ 35 fs), bead masses of the atoms, 1/ps friction; start frames drawn from the training pool
CGMD = {"full": {"n_replicas": 20, "n_steps": 10_000, "save_interval": 50, "timestep": 4.0,
                 "friction": 1.0, "temperature": 300.0},
        "quick": {"n_replicas": 2, "n_steps": 500, "save_interval": 10, "timestep": 2.0,
                  "friction": 1.0, "temperature": 300.0},
        "small": {"n_replicas": 10, "n_steps": 10_000, "save_interval": 50, "timestep": 2.0,
                  "friction": 1.0, "temperature": 300.0}}  # fmt: skip
#: reference CG Hessian at one configuration per basin (frozen-bead AA sampling at R0, then
#: ⟨P∇²UPᵀ⟩ − β Cov(Pf); training/data/conditional.py): frames, stride (steps of 2 fs)
HESSREF = {"full": {"n_frames": 3000, "stride": 100, "timestep": 2.0, "equilibration_steps": 10_000},
           "quick": {"n_frames": 40, "stride": 10, "timestep": 2.0, "equilibration_steps": 200},
           "small": {"n_frames": 1000, "stride": 100, "timestep": 2.0, "equilibration_steps": 10_000}}  # fmt: skip
#: evaluation: TICA lag (ps of reference time), φ/ψ grid, blocks
EVAL = {"full": {"lag_time": 2.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 10},
        "quick": {"lag_time": 5.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 4},
        "small": {"lag_time": 2.0, "n_bins": 36, "sigma_bins": 1.0, "n_blocks": 5}}  # fmt: skip


def settings(quick: bool | str) -> dict:
    """All fixed settings of one mode (stored with every stage's outputs).

    ``quick``: True/False (quick/full) or the mode name ``"full"``, ``"quick"``, ``"small"``.
    """
    m = quick if isinstance(quick, str) else ("quick" if quick else "full")
    if m not in REFERENCE:
        raise ValueError(f"unknown mode {m!r}; known: {sorted(REFERENCE)}")
    names = {"quick": QUICK_VARIANTS, "small": SMALL_VARIANTS, "full": list(VARIANTS)}[m]
    variants = {k: VARIANTS[k] for k in names}
    return {"mode": m, "reference": REFERENCE[m], "sizes": SIZES[m], "seeds": SEEDS[m],
            "targets": {t: TARGETS[t] for t in sorted({v["targets"] for v in variants.values()})},
            "ablation_size": ABLATION_SIZE[m],
            "probe_seed": PROBE_SEED, "pool_seed": POOL_SEED, "variants": variants,
            "model": MODEL[m], "train": TRAIN[m], "cgmd": CGMD[m], "eval": EVAL[m],
            "hessian_reference": HESSREF[m]}  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[ala2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _done(path: Path) -> dict | None:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
    return None


def _mark(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    os.replace(tmp, path)


def _jsonable(x):
    return json.loads(json.dumps(x, default=float))


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in label)


def _pool_executor(jobs: int):
    if jobs <= 1:
        from hessid.training.data.targets import InlineExecutor

        return InlineExecutor()
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


# ----------------------------------------------------------------------------- 1. reference


def _run_aa(name: str, root: str, cfg: dict, seed: int) -> dict:
    """One AA run (new or resumed); returns its frame count and measured ns/day."""
    import h5py
    from hessid.training.data import aa_md

    mdc = aa_md.MDConfig(steps=cfg["steps"], stride=cfg["stride"], temperature=cfg["temperature"],
                         friction=cfg["friction"], timestep=cfg["timestep"],
                         equilibration_steps=cfg["equilibration_steps"], solvent=cfg["solvent"],
                         platform="CPU", threads=1, seed=seed, chunk_frames=cfg["chunk_frames"],
                         hydrogen_mass=cfg.get("hydrogen_mass"))  # fmt: skip
    h5 = Path(root) / name / f"{name}.h5"
    chk = h5.with_suffix(".chk")
    n_target = cfg["steps"] // cfg["stride"]
    if h5.exists():
        with h5py.File(h5, "r") as f:
            n = f["coordinates"].shape[0]
        if n >= n_target:
            return {"name": name, "frames": n, "ns_per_day": None, "skipped": True}
    t0 = time.perf_counter()
    with h5py.File(h5, "r") if h5.exists() else _Null() as f:
        n0 = 0 if f is None else f["coordinates"].shape[0]
    resume = h5.exists() and chk.exists()
    aa_md.simulate(name, mdc, root=root, resume=resume, overwrite=not resume, progress=False)
    dt = time.perf_counter() - t0
    steps = (n_target - (n0 if resume else 0)) * cfg["stride"]
    return {"name": name, "frames": n_target, "skipped": False,
            "ns_per_day": aa_md.ns_per_day(steps, cfg["timestep"], dt), "wall_s": dt}


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def stage_reference(out: Path, s: dict, jobs: int) -> dict:
    from hessid.training.pipelines import ala2

    marker = out / "reference" / "done.json"
    root = out / "reference"
    cfg = s["reference"]
    names = [f"ala2_r{i}" for i in range(cfg["n_runs"])]
    prev = _done(marker)
    if prev and prev.get("config") == cfg:
        log("reference: complete, skipped")
        return prev
    for name in names:
        ala2.write_structure(name, root)
    log(f"reference: {len(names)} AA runs × {cfg['steps'] * cfg['timestep'] * 1e-6:.3g} ns, {jobs} in parallel")
    with _pool_executor(jobs) as ex:
        futs = [ex.submit(_run_aa, name, str(root), cfg, 1000 + i) for i, name in enumerate(names)]
        runs = [f.result() for f in futs]
    files = [str(root / n / f"{n}.h5") for n in names]
    doc = {"config": cfg, "runs": runs, "files": files,
           "total_ns": len(names) * cfg["steps"] * cfg["timestep"] * 1e-6,
           "ns_per_day_per_process": [r["ns_per_day"] for r in runs if r["ns_per_day"]]}  # fmt: skip
    _mark(marker, doc)
    return doc


# ----------------------------------------------------------------------------- 2. map


def stage_map(out: Path, ref: dict) -> dict:
    import h5py
    from hessid.training.pipelines import ala2

    marker = out / "reference" / "map_done.json"
    if _done(marker) and _done(marker).get("files") == ref["files"]:
        log("map: complete, skipped")
        return _done(marker)
    angles, basins = [], []
    for f in ref["files"]:
        with h5py.File(f, "r") as h5:
            ok = "cg/coordinates" in h5 and h5["cg/coordinates"].shape[0] == h5["coordinates"].shape[0]
        if not ok:
            ala2.map_dataset(f, overwrite=True)
        with h5py.File(f, "r") as h5:
            a = ala2.phi_psi(h5["cg/coordinates"][()])
        angles.append(a)
        basins.append(ala2.basin_populations(a, n_blocks=min(10, len(a))))
    pooled = ala2.basin_populations(angles, n_blocks=max(2, min(10 * len(angles), sum(map(len, angles)))))
    per_run_blocks = ala2.basin_populations(angles, n_blocks=len(angles)) if len(angles) > 1 else None
    doc = {"files": ref["files"], "basins_per_run": basins, "basins_pooled": pooled,
           "basins_blocks_are_runs": per_run_blocks}  # fmt: skip
    _mark(marker, doc)
    np.savez_compressed(out / "reference" / "phi_psi.npz", *angles)
    log(f"map: reference basins {json.dumps(pooled['populations'])}")
    return doc


# ----------------------------------------------------------------------------- 3. pool


def _copy_frames(src: Path, dst: Path, rows: np.ndarray, per_file: list | None = None) -> None:
    """Copy the per-frame datasets of ``src`` rows (sorted) into a new dataset ``dst``.

    ``per_file``: for the pool, a list of ``(file, rows_in_file)`` to concatenate instead of
    one source. Per-frame datasets are those whose first axis is T; attributes are kept.
    """
    import h5py

    tmp = dst.with_suffix(".tmp.h5")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sources = per_file or [(src, rows)]
    with h5py.File(sources[0][0], "r") as first, h5py.File(tmp, "w") as o:
        t_first = first["coordinates"].shape[0]
        for k, v in first.attrs.items():
            o.attrs[k] = v

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                g = o.require_group(name)
                for k, v in obj.attrs.items():
                    g.attrs[k] = v
                return
            per_frame = obj.shape and obj.shape[0] == t_first and name != "topology" and not name.startswith(
                ("cg/weights", "cg/projector", "cg/bead_types", "cg/bonds"))
            if not per_frame:
                ds = o.create_dataset(name, data=obj[()], dtype=obj.dtype)
            else:
                parts = []
                for f, r in sources:
                    with h5py.File(f, "r") as h:
                        parts.append(h[name][()][np.asarray(r)])
                ds = o.create_dataset(name, data=np.concatenate(parts), dtype=obj.dtype)
            for k, v in obj.attrs.items():
                ds.attrs[k] = v

        first.visititems(visit)
    os.replace(tmp, dst)


def stage_pool(out: Path, s: dict, ref: dict) -> dict:
    """Training pool: the first max(sizes) frames of one seeded permutation of all frames."""
    import h5py
    from hessid.training.data import io as _data

    marker = out / "pool" / "done.json"
    n_pool = max(s["sizes"])
    prev = _done(marker)
    if prev and prev.get("n_pool") == n_pool and prev.get("files") == ref["files"]:
        log("pool: complete, skipped")
        return prev
    counts = []
    for f in ref["files"]:
        with h5py.File(f, "r") as h5:
            counts.append(h5["coordinates"].shape[0])
    total = sum(counts)
    if n_pool > total:
        raise ValueError(f"pool of {n_pool} frames requested but the reference holds {total}")
    perm = np.random.default_rng(POOL_SEED).permutation(total)[:n_pool]  # global frame indices
    rank = np.empty(total, dtype=np.int64)
    rank[:] = -1
    rank[perm] = np.arange(n_pool)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    per_file = []
    for i, f in enumerate(ref["files"]):
        sel = np.sort(perm[(perm >= offsets[i]) & (perm < offsets[i + 1])]) - offsets[i]
        per_file.append((f, sel))
    pool = out / "pool" / "pool" / "pool.h5"
    _copy_frames(Path(ref["files"][0]), pool, None, per_file)
    # frame ids and times made globally unique and increasing: run i → frame id i·10⁷ + frame,
    # time i·(span + 1 ps) + t (span: longest run, ps)
    sel_global = np.concatenate([offsets[i] + r for i, (_, r) in enumerate(per_file)])
    with h5py.File(pool, "r+") as h5:
        run_of = np.concatenate([np.full(len(r), i) for i, (_, r) in enumerate(per_file)])
        h5["frame_id"][...] = run_of * 10_000_000 + np.concatenate([r for _, r in per_file])
        t = h5["time"][()]
        h5["time"][...] = run_of * (float(t.max()) + 1.0) + t
        h5.create_dataset("draw_rank", data=rank[sel_global])
        h5.attrs["pool_seed"] = POOL_SEED
        h5.attrs["pool_sources"] = json.dumps(ref["files"])
    _data.validate_dataset(pool)
    doc = {"n_pool": n_pool, "files": ref["files"], "pool": str(pool), "total_reference_frames": total}
    _mark(marker, doc)
    log(f"pool: {n_pool} of {total} reference frames")
    return doc


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
    import h5py
    from hessid.training.data.targets import compute_targets

    marker = out / "targets" / "done.json"
    prev = _done(marker)
    if prev and prev.get("targets") == _jsonable(s["targets"]) and prev.get("sizes") == _jsonable(target_sizes(s)) \
            and prev.get("pool") == _jsonable(pool):
        log("targets: complete, skipped")
        prev["files"] = {tag: {int(n): f for n, f in by_size.items()}  # JSON keys are strings
                         for tag, by_size in prev["files"].items()}
        return prev
    files, timing = {}, {}
    need = target_sizes(s)
    for tag, (kind, k, full_block) in s["targets"].items():
        path = out / "targets" / tag / f"{tag}.h5"
        n_tag = max(need[tag])  # Term 1 only on the frames some variant trains on
        if path.exists():
            with h5py.File(path, "r") as h5:
                stale = h5["coordinates"].shape[0] != n_tag  # e.g. a size was added to the grid
            if stale:
                log(f"targets: {tag} holds a different frame set than {n_tag} frames; rebuilt")
                path.unlink()
        if not path.exists():
            with h5py.File(pool["pool"], "r") as h5:
                rank = h5["draw_rank"][()]
            _copy_frames(Path(pool["pool"]), path, np.flatnonzero(rank < n_tag))
        key = "hessian_block" if full_block else "hvp_term1"
        with h5py.File(path, "r") as h5:
            complete = f"cg/{key}_done" in h5 and bool(h5[f"cg/{key}_done"][()].all())
            exists = f"cg/{key}" in h5
        if not complete:
            log(f"targets: {tag} on {n_tag} frames")
            r = compute_targets(path, n_probes=k, probe_kind="gaussian" if full_block else kind,
                                seed=PROBE_SEED, platform="CPU", threads=1, workers=jobs if jobs > 1 else 0,
                                chunk_frames=64, resume=exists, full_block=full_block, progress=False)  # fmt: skip
            timing[tag] = {"wall_s": r.wall_s, "frame_probes_per_s": r.frame_probes_per_s}
        files[tag] = {}
        with h5py.File(path, "r") as h5:
            rank = h5["draw_rank"][()]
        for size in need[tag]:
            sub = out / "targets" / tag / f"n{size}" / f"n{size}.h5"
            if not sub.exists():
                _copy_frames(path, sub, np.flatnonzero(rank < size))
            files[tag][size] = str(sub)
    doc = {"targets": s["targets"], "sizes": target_sizes(s), "pool": pool, "files": files, "timing": timing}
    _mark(marker, doc)
    return doc


# ----------------------------------------------------------------------------- 5. train


def _train_one(job: dict) -> dict:
    """Train one (variant, size, seed) model; returns its model path and wall times.

    Skipped when ``model.pt`` and ``train_done.json`` exist (a finished job).
    """
    import torch
    from hessid.training.learning import trainer as _train

    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    model_path = run_dir / "model.pt"
    if model_path.exists() and (run_dir / "train_done.json").exists():
        return json.loads((run_dir / "train_done.json").read_text())
    t0 = time.perf_counter()
    result = _call_trainer(_train, job)
    wall = time.perf_counter() - t0
    doc = {**result, "wall_s": wall, "job": job}
    (run_dir / "train_done.json").write_text(json.dumps(doc, indent=2, default=float))
    return doc


def _call_trainer(_train, job: dict) -> dict:
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
    res = _train.train(config)
    model = Path(res.model)
    if not model.exists():
        raise RuntimeError(f"trainer returned {res!r} but wrote no {model}")
    metrics = Path(res.metrics_csv) if res.metrics_csv else None
    return {"model": str(model), "metrics_csv": str(metrics) if metrics and metrics.exists() else None,
            "global_step": int(res.global_step), "best_val_fm": res.best_val_fm,
            "verification_passed": (res.verification or {}).get("passed"),
            "epochs": _epochs_from(metrics, tr, job)}


def _epochs_from(metrics: Path, tr: dict, job: dict) -> float:
    n_train = job["n_frames"] * (1 - tr["val_fraction"])
    return tr["steps"] * tr["batch_size"] / max(n_train, 1)


def stage_train(out: Path, s: dict, tgt: dict, jobs: int) -> dict:
    work = []
    for label, v in s["variants"].items():
        for size in variant_sizes(s, v):
            for seed in s["seeds"]:
                name = f"{_safe(label)}_n{size}_s{seed}"
                work.append({"label": label, "variant": v, "size": size, "seed": seed, "name": name,
                             "n_frames": size, "run_dir": str(out / "train" / name),
                             "data": tgt["files"][v["targets"]][size], "model": s["model"],
                             "train": s["train"]})  # fmt: skip
    log(f"train: {len(work)} models ({jobs} in parallel)")
    with _pool_executor(jobs) as ex:
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
    import torch
    from hessid.training.learning import trainer as _train
    from hessid.training.learning.models import load_potential

    marker = out / "cost" / "done.json"
    if _done(marker) and _done(marker).get("repeats") == repeats:
        log("cost: complete, skipped")
        return _done(marker)
    torch.set_num_threads(1)
    n = s["ablation_size"]
    fm_model = next(r["model"] for r in trained["runs"]
                    if r["job"]["label"] == "FM" and r["job"]["size"] == n and r["job"]["seed"] == s["seeds"][0])
    bs = s["train"]["batch_size"]
    steps: dict = {}
    for label, v in s["variants"].items():
        pot = load_potential(fm_model)
        prot = _train.load_protein(tgt["files"][v["targets"]][n])
        cfg = _train.TrainConfig.from_dict({
            "name": "cost", "output_dir": str(out / "cost"), "data": {"datasets": [prot.path]},
            "loss": {"mode": v["mode"], "cov_weight": v["cov_weight"], "normalise": False}})
        module = _train._make_module(pot, cfg, {})
        types = [np.arange(len(prot.vocabulary), dtype=np.int64)]
        data = _train.collate_frames([prot], [(0, t) for t in range(bs)], types, pot.dtype,
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
    doc = {"repeats": repeats, "batch_size": bs, "frames": n, "threads": 1, "ms_per_step": ms,
           "ratio_to_fm": {k: m / ms["FM"] for k, m in ms.items()}}
    _mark(marker, doc)
    log("cost: " + ", ".join(f"{k} {m:.1f} ms" for k, m in ms.items()))
    return doc


# ----------------------------------------------------------------------------- 6. simulate


def _simulate_one(job: dict) -> dict:
    import torch
    from hessid.training.learning.models import load_potential
    from hessid.training.md.simulation import simulate
    from hessid.training.pipelines import ala2

    out = Path(job["out"])
    meta = out / "simulation.json"
    c = job["cgmd"]
    if meta.exists():
        doc = json.loads(meta.read_text())
        if doc.get("config", {}).get("n_steps") == c["n_steps"]:
            return {"dir": str(out), "skipped": True}
    pot = load_potential(job["model"])
    res = simulate(pot, out, n_steps=c["n_steps"], save_interval=c["save_interval"], reference=job["reference"],
                   n_replicas=c["n_replicas"], timestep=c["timestep"], temperature=c["temperature"],
                   friction=c["friction"], masses=list(ala2.BEAD_MASSES), seed=job["seed"],
                   dtype=pot.dtype if hasattr(pot, "dtype") else torch.float32, resume=True,
                   progress=False, bond_range=ala2.BOND_RANGE, threads=1,
                   provenance={"model": job["model"]})  # fmt: skip
    return {"dir": str(out), "skipped": False, "steps_per_second": res.steps_per_second,
            "failures": res.failures}


def stage_simulate(out: Path, s: dict, trained: dict, pool: dict, jobs: int) -> dict:
    work = [{"out": str(out / "cgmd" / Path(r["model"]).parent.name), "model": r["model"],
             "reference": pool["pool"], "seed": r["job"]["seed"], "cgmd": s["cgmd"]}
            for r in trained["runs"]]  # fmt: skip
    log(f"simulate: {len(work)} models × {s['cgmd']['n_replicas']} replicas × {s['cgmd']['n_steps']} steps")
    with _pool_executor(jobs) as ex:
        results = [f.result() for f in [ex.submit(_simulate_one, j) for j in work]]
    return {"runs": results}


# ----------------------------------------------------------------------------- 7. evaluate


def _reference_trajectories(ref: dict):
    import h5py
    from hessid.training.evaluation.evaluate import Trajectories

    xyz, dt = [], None
    for f in ref["files"]:
        with h5py.File(f, "r") as h5:
            xyz.append(h5["cg/coordinates"][()] / 10.0)  # Å → nm
            t = h5["time"][()]
            dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    return Trajectories(xyz, dt, "alanine dipeptide", sources=list(ref["files"]),
                        residue_names=None)


def _model_angles(sim_dir: Path, burn_in: float) -> np.ndarray:
    from hessid.training.evaluation.evaluate import filter_replicas, load_simulation
    from hessid.training.pipelines import ala2

    trajs = load_simulation(sim_dir)
    kept, _ = filter_replicas(trajs, (ala2.BOND_RANGE[0] / 10, ala2.BOND_RANGE[1] / 10), burn_in)
    if not kept:
        return np.zeros((0, 2))
    return np.concatenate([ala2.phi_psi(x * 10.0) for x in kept])  # nm → Å (angles unit-free)


def _basin_minima(ref_angles: np.ndarray, cg_xyz: np.ndarray) -> dict:
    """A reference frame at the density maximum of each basin: {basin: (5, 3) Å}."""
    return {b: cg_xyz[i] for b, i in _basin_frames(ref_angles).items()}


def _basin_frames(ref_angles: np.ndarray) -> dict:
    """Index of the reference frame nearest the φ/ψ density maximum of each visited basin."""
    from hessid.training.pipelines import ala2

    p = ala2.phi_psi_density(ref_angles)
    c = ala2.grid_centers(p.shape[0])
    labels = ala2.assign_basins(ref_angles)
    out = {}
    for b, name in enumerate(ala2.BASINS):
        if not np.any(labels == b):
            continue
        gp, gs = np.meshgrid(c, c, indexing="ij")
        cells = ala2.assign_basins(np.stack([gp.ravel(), gs.ravel()], 1)).reshape(p.shape)
        i, j = np.unravel_index(np.argmax(np.where(cells == b, p, -1)), p.shape)
        d = np.linalg.norm(ala2.wrap_angle(ref_angles - np.array([c[i], c[j]])), axis=1)
        d[labels != b] = np.inf
        out[name] = int(np.argmin(d))
    return out


def _hessian_reference_one(job: dict) -> dict:
    """Frozen-bead sampling at one basin configuration → map → Term-1 blocks → estimate."""
    import h5py
    from hessid.training.data.conditional import estimate_cg_hessian, sample_frozen
    from hessid.training.data.reader import open_dataset
    from hessid.training.data.targets import compute_targets
    from hessid.training.pipelines import ala2

    c = job["config"]
    with open_dataset(job["reference"]) as ds:
        top = ds.topology()
        xyz = ds.coordinates(job["frame"])  # (N, 3) Å
    path = Path(job["path"])
    t0 = time.perf_counter()
    with h5py.File(path, "r") if path.exists() else _Null() as f:
        done = f is not None and "cg/hessian_block_done" in f and bool(f["cg/hessian_block_done"][()].all())
    if not done:
        sample_frozen((top, xyz), ala2.backbone_indices(top), path, n_frames=c["n_frames"], stride=c["stride"],
                      timestep=c["timestep"], equilibration_steps=c["equilibration_steps"], seed=job["seed"],
                      threads=1, overwrite=True)
        ala2.map_dataset(path, overwrite=True)
        compute_targets(path, full_block=True, seed=PROBE_SEED, platform="CPU", threads=1, workers=0,
                        chunk_frames=200, progress=False)  # fmt: skip
    est = estimate_cg_hessian(path, n_blocks=10)
    return {"basin": job["basin"], "hessian": est["hessian"], "sem": est["sem"],
            "frobenius_rel_sem": float(est["frobenius_rel_sem"]), "drift_angstrom": est["drift_angstrom"],
            "n_frames": int(est["n_frames"]), "wall_s": time.perf_counter() - t0,
            "term1_frobenius": float(np.linalg.norm(est["term1"])),
            "term2_frobenius": float(np.linalg.norm(est["term2"]))}


def stage_hessian_reference(out: Path, s: dict, ref: dict, mapped: dict, jobs: int) -> dict:
    """Reference CG Hessian at the basin configurations of :func:`_basin_frames` (run 0)."""
    import h5py
    from hessid.training.pipelines import ala2

    marker = out / "hessian_reference" / "done.json"
    c = s["hessian_reference"]
    prev = _done(marker)
    if prev and prev.get("config") == c and prev.get("reference") == ref["files"][0]:
        log("hessian reference: complete, skipped")
        return prev
    with h5py.File(ref["files"][0], "r") as h5:
        frames = _basin_frames(ala2.phi_psi(h5["cg/coordinates"][()]))
    work = [{"basin": b, "frame": i, "reference": ref["files"][0], "config": c, "seed": 7 + k,
             "path": str(out / "hessian_reference" / b / f"{b}.h5")} for k, (b, i) in enumerate(frames.items())]
    log(f"hessian reference: {len(work)} basin configurations × {c['n_frames']} frozen-bead frames")
    with _pool_executor(jobs) as ex:
        res = [f.result() for f in [ex.submit(_hessian_reference_one, j) for j in work]]
    np.savez(out / "hessian_reference.npz", **{r["basin"]: r["hessian"] for r in res},
             **{f"{r['basin']}_sem": r["sem"] for r in res})
    doc = {"config": c, "reference": ref["files"][0], "frames": frames,
           "basins": {r["basin"]: {k: v for k, v in r.items() if k not in ("hessian", "sem", "basin")}
                      for r in res}}  # fmt: skip
    _mark(marker, doc)
    log("hessian reference: " + ", ".join(f"{b} rel. s.e. {d['frobenius_rel_sem']:.3f}"
                                          for b, d in doc["basins"].items()))
    return doc


def stage_evaluate(out: Path, s: dict, ref: dict, mapped: dict, trained: dict, sims: dict) -> dict:
    import h5py
    from hessid.training.evaluation.evaluate import evaluate
    from hessid.training.learning.models import load_potential
    from hessid.training.pipelines import ala2

    ev = s["eval"]
    ref_traj = _reference_trajectories(ref)
    ref_angles = np.concatenate([ala2.phi_psi(x * 10.0) for x in ref_traj.xyz])
    with h5py.File(ref["files"][0], "r") as h5:
        cg0 = h5["cg/coordinates"][()]
    minima = _basin_minima(ala2.phi_psi(cg0), cg0)
    href_path = out / "hessian_reference.npz"
    href = {k: v for k, v in np.load(href_path).items() if not k.endswith("_sem")} if href_path.exists() else None
    by_group: dict = {}
    for r, sim in zip(trained["runs"], sims["runs"], strict=True):
        j = r["job"]
        by_group.setdefault((j["label"], j["size"]), []).append((r, Path(sim["dir"])))
    rows = []
    for (label, size), items in by_group.items():
        d = out / "evaluate" / f"{_safe(label)}_n{size}"
        marker = d / "ala2_metrics.json"
        if _done(marker):
            rows.append(_done(marker))
            continue
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
            pot = load_potential(r["model"])
            hm = {b: ala2.model_hessians(pot, x[None])[0] for b, x in minima.items()}
            if href is not None:
                m["hessian_rel_error"] = {b: float(ala2.hessian_relative_error(hm[b][None], href[b][None])[0])
                                          for b in hm if b in href}  # fmt: skip
                m["hessian_soft_rel_error"] = {
                    b: float(ala2.hessian_soft_relative_error(hm[b][None], href[b][None])[0]) for b in hm if b in href}
            np.savez_compressed(p / "phi_psi.npz", angles=ang)
            m.update(seed=r["job"]["seed"], wall_s_per_epoch=r["wall_s_per_epoch"], train_wall_s=r["wall_s"])
            per_seed.append(m)
        row = {"label": label, "size": size, "benchmark": docs[0], "per_seed": per_seed,
               "failed_seeds": failed_seeds, "summary": _summarise(per_seed)}
        _mark(marker, row)
        rows.append(row)
    doc = {"rows": rows, "reference_basins": mapped["basins_pooled"],
           "basin_minima": {b: x.tolist() for b, x in minima.items()},
           "hessian_reference": str(href_path) if href is not None else None}  # fmt: skip
    _mark(out / "evaluate" / "done.json", doc)
    np.save(out / "evaluate" / "reference_phi_psi.npy", ref_angles)
    return doc


def _has_survivors(sim_dir: Path) -> bool:
    meta = json.loads((Path(sim_dir) / "simulation.json").read_text())
    return len(meta.get("failures", [])) < meta["config"]["n_replicas"]


def _mean_sem(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def _summarise(per_seed: list[dict]) -> dict:
    from hessid.training.pipelines import ala2

    out = {k: _mean_sem([m[k] for m in per_seed]) for k in ("phi_psi_kl", "phi_psi_w1", "wall_s_per_epoch")}
    for b in ala2.BASINS:
        out[f"pop_{b}"] = _mean_sem([m["basins"]["populations"][b] if m["basins"] else None for m in per_seed])
    if per_seed and "hessian_rel_error" in per_seed[0]:
        for b in per_seed[0]["hessian_rel_error"]:
            out[f"hess_err_{b}"] = _mean_sem([m["hessian_rel_error"].get(b) for m in per_seed])
        out["hess_err_mean"] = _mean_sem([float(np.mean(list(m["hessian_rel_error"].values())))
                                          for m in per_seed if m.get("hessian_rel_error")])
        out["hess_soft_err_mean"] = _mean_sem([float(np.mean(list(m["hessian_soft_rel_error"].values())))
                                               for m in per_seed if m.get("hessian_soft_rel_error")])
    return out


# ----------------------------------------------------------------------------- 8. report


def _fmt(ms, digits=3) -> str:
    m, e = ms
    if not math.isfinite(m):
        return "—"
    return f"{m:.{digits}g}" if not math.isfinite(e) else f"{m:.{digits}g} ± {e:.2g}"


def stage_report(out: Path, s: dict, ref: dict, mapped: dict, evald: dict, results_md: Path,
                 report_dir: Path, timings: dict, cost: dict | None = None, href: dict | None = None) -> dict:
    from hessid.training.evaluation.report import _plt
    from hessid.training.pipelines import ala2

    plt = _plt()
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = evald["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    keyed = {(r["label"], r["size"]): r for r in rows}

    def bench(r, k):
        d = r["benchmark"]
        if d is None:  # every replica of every seed blew up
            return (math.nan, math.nan)
        e = (d.get("sem") or {}).get(k)
        return (d["metrics"][k], math.nan if e is None else e)

    # data-efficiency curves
    curves = [("tic0_kl", "TIC0 KL (nats)"), ("tica_2d_w1", "TICA 2D W1"), ("phi_psi_kl", "φ/ψ KL (nats)"),
              ("phi_psi_w1", "φ/ψ W1 (rad)"), ("pop_alpha_R", "p(αR)"), ("hess_err_mean", "Hessian rel. error"),
              ("hess_soft_err_mean", "soft-mode Hessian error")]
    main_labels = [lab for lab in labels if sum((lab, n) in keyed for n in sizes) > 1] or labels
    n_cols = 4
    n_rows = -(-len(curves) // n_cols)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(4.4 * n_cols, 3.8 * n_rows), constrained_layout=True)
    axes = list(np.ravel(grid))
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    for ax, (k, title) in zip(axes[: len(curves)], curves, strict=True):
        if k == "pop_alpha_R":
            p_ref = mapped["basins_pooled"]["populations"]["alpha_R"]
            ax.axhline(p_ref, color="k", ls="--", lw=1, label="reference")
        for lab in main_labels:
            ms = [bench(keyed[(lab, n)], k) if k in METRIC_KEYS else
                  keyed[(lab, n)]["summary"].get(k, (math.nan, math.nan))
                  for n in sizes if (lab, n) in keyed]
            ns = [n for n in sizes if (lab, n) in keyed]
            m = np.array([x[0] for x in ms])
            e = np.nan_to_num(np.array([x[1] for x in ms]))
            ax.errorbar(ns, m, yerr=e, marker="o", capsize=3, label=lab)
        ax.set_xscale("log")
        ax.set_xlabel("training frames")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.savefig(report_dir / "data_efficiency.png")
    plt.close(fig)

    # ablation at one size: every variant side by side, with its cost per step
    n_ab = s["ablation_size"]
    ab = [lab for lab in labels if (lab, n_ab) in keyed]
    ms_cost = (cost or {}).get("ms_per_step", {})
    panels_ab = [("φ/ψ KL (nats)", lambda r: r["summary"]["phi_psi_kl"]),
                 ("TIC0 KL (nats)", lambda r: bench(r, "tic0_kl")),
                 ("soft-mode Hessian error", lambda r: r["summary"].get("hess_soft_err_mean", (math.nan, math.nan))),
                 ("ms per training step", lambda r: (ms_cost.get(r["label"], math.nan), math.nan))]
    fig, axs = plt.subplots(1, len(panels_ab), figsize=(4.4 * len(panels_ab), 4.2), constrained_layout=True)
    y = np.arange(len(ab))
    for ax, (title, get) in zip(axs, panels_ab, strict=True):
        vals = [get(keyed[(lab, n_ab)]) for lab in ab]
        ax.barh(y, [v[0] for v in vals], xerr=np.nan_to_num([v[1] for v in vals]), capsize=3,
                color=["C0" if lab == "FM" else "C1" if lab == "FM+AA" else "C2" for lab in ab])
        ax.set_yticks(y, ab if ax is axs[0] else [""] * len(ab), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{n_ab} training frames, mean ± s.e. over seeds")
    fig.savefig(report_dir / "ablation.png")
    plt.close(fig)

    # φ/ψ free-energy maps side by side (largest size, seeds pooled)
    ref_angles = np.load(out / "evaluate" / "reference_phi_psi.npy")
    big = max(sizes)
    panels = [("reference", ref_angles)]
    for lab in labels:
        if (lab, big) in keyed:
            bd = keyed[(lab, big)]["benchmark"]
            if bd is None:
                continue
            parts = [np.load(f)["angles"] for f in (Path(r["source"]) / "phi_psi.npz" for r in bd["runs"])
                     if f.exists()]  # every seed pooled
            a = np.concatenate(parts) if parts else np.zeros((0, 2))
            if len(a) >= 2:
                panels.append((lab, a))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1, 3.6), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    c = np.degrees(ala2.grid_centers(s["eval"]["n_bins"]))
    levels = np.linspace(0, 5, 11)
    filled = None
    for ax, (lab, a) in zip(axes[0], panels, strict=True):
        fe = ala2.free_energy_grid(ala2.phi_psi_density(a, s["eval"]["n_bins"], s["eval"]["sigma_bins"]))
        filled = ax.contourf(c, c, np.where(fe <= 5, fe, np.nan).T, levels=levels, cmap="viridis")
        ax.set_title(lab, fontsize=10)
        ax.set_xlabel("φ (deg)")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
    axes[0][0].set_ylabel("ψ (deg)")
    fig.colorbar(filled, ax=axes[0].tolist(), label="free energy (kcal/mol)", shrink=0.9)
    fig.savefig(report_dir / "phi_psi_free_energy.png")
    plt.close(fig)

    # tables: data efficiency (variants trained at every size), then the ablation at one size
    head = ["model", "frames", "TIC0 KL", "TICA 2D W1", "φ/ψ KL", "φ/ψ W1 (rad)", "p(αR)", "p(β/PII)",
            "p(αL)", "Hessian rel. err.", "soft-mode Hessian err."]
    nan2 = (math.nan, math.nan)

    def row(lab, n, extra=()):
        r = keyed[(lab, n)]
        sm = r["summary"]
        cells = [lab, str(n), _fmt(bench(r, "tic0_kl")), _fmt(bench(r, "tica_2d_w1")), _fmt(sm["phi_psi_kl"]),
                 _fmt(sm["phi_psi_w1"]), _fmt(sm["pop_alpha_R"]), _fmt(sm["pop_beta_PII"]),
                 _fmt(sm["pop_alpha_L"]), _fmt(sm.get("hess_err_mean", nan2), 2),
                 _fmt(sm.get("hess_soft_err_mean", nan2), 2), *extra]
        return "| " + " | ".join(cells) + " |"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [row(lab, n) for lab in main_labels for n in sizes if (lab, n) in keyed]
    # every variant against FM at the same size: difference of seed means, s.e. combined
    cmp_keys = [("φ/ψ KL", lambda r: r["summary"]["phi_psi_kl"]), ("TIC0 KL", lambda r: bench(r, "tic0_kl")),
                ("Hessian rel. err.", lambda r: r["summary"].get("hess_err_mean", nan2)),
                ("soft-mode Hessian err.", lambda r: r["summary"].get("hess_soft_err_mean", nan2))]
    cmp_lines = ["| model | frames | " + " | ".join(f"Δ {k} (model − FM)" for k, _ in cmp_keys) + " |",
                 "|" + "---|" * (2 + len(cmp_keys))]
    for lab in labels:
        for n in sizes:
            if lab == "FM" or (lab, n) not in keyed or ("FM", n) not in keyed:
                continue
            cells = []
            for _, get in cmp_keys:
                (m1, e1), (m0, e0) = get(keyed[(lab, n)]), get(keyed[("FM", n)])
                d, e = m1 - m0, math.hypot(e1, e0)
                flag = " **" if math.isfinite(e) and e > 0 and abs(d) > 2 * e else ""
                cells.append("—" if not math.isfinite(d) else f"{d:+.3g} ± {e:.2g}{flag.strip() and ' (>2 s.e.)'}")
            cmp_lines.append(f"| {lab} | {n} | " + " | ".join(cells) + " |")
    n_ab = s["ablation_size"]
    ms = (cost or {}).get("ms_per_step", {})
    ab_head = [*head, "ms/step (ratio to FM)", "train wall s/epoch"]
    ab_lines = ["| " + " | ".join(ab_head) + " |", "|" + "---|" * len(ab_head)]
    for lab in labels:
        if (lab, n_ab) in keyed:
            c = f"{ms[lab]:.1f} ({ms[lab] / ms['FM']:.2f}×)" if lab in ms and "FM" in ms else "—"
            ab_lines.append(row(lab, n_ab, (c, _fmt(keyed[(lab, n_ab)]["summary"]["wall_s_per_epoch"]))))
    rb = mapped["basins_pooled"]
    ref_line = ", ".join(f"{b} {rb['populations'][b]:.3f} ± {rb['sem'][b]:.3f}" for b in ala2.BASINS)
    runs_line = ""
    if mapped.get("basins_blocks_are_runs"):
        rr = mapped["basins_blocks_are_runs"]
        runs_line = ("; with the independent runs as blocks: "
                     + ", ".join(f"{b} {rr['populations'][b]:.3f} ± {rr['sem'][b]:.3f}" for b in ala2.BASINS))
    mode_note = {"quick": "**QUICK MODE — a miniature to check the pipeline; these numbers mean nothing.**\n\n",
                 "small": "**PRELIMINARY SMALL RUN — a few ns of reference, one training size, one seed, "
                          "short CG MD; not the issue's full protocol.**\n\n"}.get(s["mode"], "")
    flag = {"quick": " --quick", "small": " --small"}.get(s["mode"], "")
    md = [
        "# Alanine dipeptide, 5-bead CG: does curvature supervision help?", "",
        mode_note + f"Generated by `python benchmarks/ala2.py{flag}` on "
        f"{time.strftime('%Y-%m-%d')}. Reference: {len(ref['files'])} independent AA runs, "
        f"{ref['total_ns']:.3g} ns in total (Amber14 + GBn2, 300 K). Mean ± standard error over "
        f"{len(s['seeds'])} training seed(s).", "",
        f"Reference basin populations (block averages, {rb['n_blocks']} blocks): {ref_line}{runs_line}.", "",
        "### Data efficiency", "", *lines, "",
        "Hessian rel. err.: ‖∇²U_θ − H_CG‖_F / ‖H_CG‖_F at one reference configuration per basin "
        "(mean over basins), H_CG = ⟨P∇²UPᵀ⟩ − β Cov(Pf) estimated by frozen-bead AA sampling at that "
        "configuration (training/data/conditional.py). Soft-mode error: the same on the subspace of "
        "the reference's 11 softest eigenvectors (the 4 stiff bond modes, fitted by the prior, left out; "
        "`ala2.hessian_soft_relative_error`). The reference's own statistical error (‖s.e.‖_F/‖H‖_F): "
        + (", ".join(f"{b} {d['frobenius_rel_sem']:.3f} ({d['n_frames']} frames, |Term 1|_F "
                     f"{d['term1_frobenius']:.0f}, |Term 2|_F {d['term2_frobenius']:.0f} kcal/mol/Å²)"
                     for b, d in (href or {}).get("basins", {}).items()) or "not computed") + ".", "",
        f"### Probes and full Hessian ({n_ab} training frames), with training cost", "", *ab_lines, "",
        "### Each variant against FM (negative Δ: better than FM)", "", *cmp_lines, "",
        "Δ is the difference of the seed means; ± combines the two standard errors over seeds; "
        "'(>2 s.e.)' marks a difference larger than twice that.", "",
        "ms/step: one training step (loss forward + backward, batch "
        f"{(cost or {}).get('batch_size', '?')}, 1 thread) of each variant, measured side by side in "
        "one process, round robin (median). Train wall s/epoch: the training jobs themselves, run "
        "two at a time on the shared machine (noisier).", "",
        "TIC metrics follow shared/spec/benchmark.md (TICA on the 10 pair distances, lag "
        f"{s['eval']['lag_time']} ps); φ/ψ KL(ref‖model) and W1 use a periodic {s['eval']['n_bins']}² grid "
        "(training/pipelines/ala2.py). Basins: αL 0 ≤ φ < 120°; αR otherwise with −120 ≤ ψ < 50°; β/PII the rest.", "",
        "![data efficiency](ala2/data_efficiency.png)", "", "![ablation](ala2/ablation.png)", "",
        "![phi/psi](ala2/phi_psi_free_energy.png)", "",
        "## Settings", "", "```json", json.dumps(s, indent=1, default=str), "```", "",
        "## Timings", "",
        "Wall seconds per stage, summed over every invocation of the command on this work folder "
        "(a resumed or extended stage counts every part; a skipped stage adds ≈ 0):", "",
        "```json", json.dumps(_done(out / "stage_wall_s.json") or timings, indent=1, default=float), "```", "",
        "## Closing note", "",
        ("Quick/small mode: no conclusion from this table alone." if s["mode"] in ("quick", "small") else
         "The interpretation of this run (which variant beats FM at which size, by how much, with "
         "what uncertainty; the covariance correction; HVP against the full Hessian and its cost) is "
         "written by hand in [ala2_discussion.md](ala2_discussion.md); the tables above are regenerated "
         "by the command at the top."), "",
    ]
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text("\n".join(md))
    html = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>ala2</title></head><body>"
            f"<pre>{_escape(chr(10).join(md))}</pre><img src='data_efficiency.png'>"
            "<img src='ablation.png'><img src='phi_psi_free_energy.png'></body></html>")  # fmt: skip
    (report_dir / "index.html").write_text(html)
    return {"results_md": str(results_md), "report": str(report_dir / "index.html")}


METRIC_KEYS = ("tic0_kl", "tica_2d_w1")


def _escape(t: str) -> str:
    import html

    return html.escape(t)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/ala2", help="work folder (all stages' outputs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="miniature of every stage (minutes)")
    mode.add_argument("--small", action="store_true", help="preliminary small run: 2 × 1 ns reference, "
                      "2000 frames, FM / FM+AA / FM+AA+Cov, 1 seed, 10 × 20 ps CG MD (~25 min, 2 cores)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (AA runs, training, CG MD)")
    ap.add_argument("--results", default=None, help="results markdown (default docs/results/ala2.md; "
                    "quick/small: OUT/results/ala2.md)")
    ap.add_argument("--stop-after", default=None, help="stop after this stage")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = settings("quick" if args.quick else "small" if args.small else "full")
    _mark(out / "settings.json", s)
    results_md = Path(args.results) if args.results else (
        out / "results" / "ala2.md" if (args.quick or args.small) else REPO / "docs" / "results" / "ala2.md")
    report_dir = results_md.parent / "ala2"
    timings: dict = {}
    t_all = time.perf_counter()

    ledger = out / "stage_wall_s.json"  # wall seconds per stage, summed over every invocation

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        r = fn(*a)
        timings[name] = time.perf_counter() - t0
        acc = _done(ledger) or {}
        acc[name] = acc.get(name, 0.0) + timings[name]
        _mark(ledger, acc)
        log(f"{name}: {timings[name]:.1f} s")
        return r

    summary: dict = {"out": str(out), "mode": s["mode"]}
    ref = timed("reference", stage_reference, out, s, args.jobs)
    summary["aa_ns_per_day_per_process"] = ref["ns_per_day_per_process"]
    mapped = timed("map", stage_map, out, ref)
    summary["reference_basins"] = mapped["basins_pooled"]
    if args.stop_after in ("reference", "map"):
        return _finish(summary, timings, t_all)
    pool = timed("pool", stage_pool, out, s, ref)
    tgt = timed("targets", stage_targets, out, s, pool, args.jobs)
    href = timed("hessian_reference", stage_hessian_reference, out, s, ref, mapped, args.jobs)
    summary["hessian_reference"] = href["basins"]
    summary["targets_timing"] = tgt["timing"]
    if args.stop_after in ("pool", "targets"):
        return _finish(summary, timings, t_all)
    trained = timed("train", stage_train, out, s, tgt, args.jobs)
    cost = timed("cost", stage_cost, out, s, tgt, trained)
    summary["cost_ms_per_step"] = cost["ms_per_step"]
    sims = timed("simulate", stage_simulate, out, s, trained, pool, args.jobs)
    evald = timed("evaluate", stage_evaluate, out, s, ref, mapped, trained, sims)
    rep = timed("report", stage_report, out, s, ref, mapped, evald, results_md, report_dir, dict(timings), cost,
                href)
    summary.update(rep)
    summary["rows"] = [{"label": r["label"], "size": r["size"],
                        "tic0_kl": r["benchmark"]["metrics"]["tic0_kl"] if r["benchmark"] else None,
                        "phi_psi_kl": r["summary"]["phi_psi_kl"][0],
                        "phi_psi_w1": r["summary"]["phi_psi_w1"][0]} for r in evald["rows"]]  # fmt: skip
    return _finish(summary, timings, t_all)


def _finish(summary, timings, t_all):
    summary["timings_s"] = timings
    summary["wall_s"] = time.perf_counter() - t_all
    print(json.dumps(summary, indent=2, default=float))
    return summary


if __name__ == "__main__":
    main()
