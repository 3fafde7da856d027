"""Temperature transfer on alanine dipeptide (docs/results/thermo.md, second study): stages.

Pre-registered design (the settings live in ``benchmarks/thermo_ala2.py``), run stage by stage in
one run folder through a :class:`~hessid.training.pipelines.runner.StageRunner`
(``<out>/state.json``); every stage resumes from its own outputs:

1. ``aa``        independent AA runs, each one multi-temperature dataset
                 ``aa/ala2t_r<i>/ala2t_r<i>.h5`` holding a segment at every study temperature
                 (``aa_md.simulate`` with a new temperature per segment; HMR settings), mapped to
                 the 5-bead backbone; per run and temperature φ/ψ, the measured ns/day.
2. ``reference`` the AA reference at every temperature: basin populations (blocks = runs),
                 ΔG(αR−β) with its SE over runs, φ/ψ angles pooled over runs.
3. ``data``      per task and seed: ``train.h5`` (a seeded draw of frames at each training
                 temperature, pooled over the runs) and ``target.h5`` (a seeded draw at the
                 target temperature, for the upper-bound arm).
4. ``train``     every (task, arm, seed) ``ThermalPotential`` (``loss.mode: thermal``).
5. ``cgmd``      CG MD of every model at its task's target temperature from the task's fixed
                 start frames (arm- and seed-independent), noise seed per seed (arm-independent).
6. ``evaluate``  populations, ΔG(αR−β), φ/ψ KL and free-energy RMSE against the AA reference at
                 the target temperature.
7. ``report``    tables, paired intervals over seeds, Holm over the pre-registered family,
                 verdict sentences (markdown + JSON).

Tasks: interpolation (train 300/400/450 K, predict 350 K) and extrapolation (train 300/350/400 K,
predict 450 K). Pairing: seed k = (the frame draw k of every temperature, initial weights k, CG MD
noise k); all arms of a task at seed k share the draw, the initial weights (``seed`` of the
trainer), the start frames and the noise.

Units: Å, kcal/mol, K, ps (fs for time steps), mol/kcal for β.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hessid.training.data import aa_md
from hessid.training.data import schema as sc
from hessid.training.data.io import copy_frames, dataset_path, validate_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.evaluation.evaluate import filter_replicas, load_simulation
from hessid.training.evaluation.statistics import holm, paired_difference
from hessid.training.learning.trainer import train
from hessid.training.pipelines import ala2
from hessid.training.pipelines.ala2_v2 import executor
from hessid.training.pipelines.ala2_v2_eval import (
    correlation_time,
    delta_g,
    fe_rmse,
    simulate_job,
    start_frames,
)
from hessid.training.pipelines.runner import StageRunner, read_json, write_json

#: the study's state file inside its run folder
STATE_FILE = "state.json"
#: the primary comparisons of each task: (arm, baseline) on |ΔG(αR−β) error|
PRIMARY = (("M2-FU", "M0-pool"), ("M2-F", "M0-pool"), ("M2-FU", "M2-F"))


def log(msg: str) -> None:
    """A progress line on stderr: ``[thermo_ala2 HH:MM:SS] msg``."""
    print(f"[thermo_ala2 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tkey(temperature: float) -> str:
    """``"350K"`` for 350.0 (the key of a temperature in stored results)."""
    return f"{float(temperature):g}K"


# ----------------------------------------------------------------------------- 1. AA data


def frames_per_temperature(path: Path) -> dict[float, int]:
    """Frames held at each thermostat temperature of a dataset file, ``{T_K: count}``; {} when
    the file does not exist."""
    if not path.exists():
        return {}
    with open_dataset(path) as ds:
        t = ds.temperatures()
    values, counts = np.unique(np.asarray(t, dtype=np.float64), return_counts=True)
    return {float(v): int(c) for v, c in zip(values, counts, strict=True)}


def _held_temperatures(path: Path) -> list[float]:
    """Temperatures that have a segment record in ``path`` (K)."""
    if not path.exists():
        return []
    with open_dataset(path) as ds:
        return [float(s["temperature"]) for s in ds.segments]


def aa_run(name: str, root: str, cfg: dict, seed: int, temperatures: list[float]) -> dict:
    """One independent AA run: a segment of ``cfg["steps"]`` production steps at every temperature
    (in the given order) in one dataset ``<root>/<name>/<name>.h5``, each created, resumed or
    skipped from what the file holds; then the 5-bead map.

    Args:
        name: dataset name (its structure must exist: :func:`ala2.write_structure`).
        root: folder holding ``<name>/``.
        cfg: ``steps``, ``stride``, ``equilibration_steps``, ``timestep`` fs, ``hydrogen_mass``
            amu or None, ``friction`` 1/ps, ``solvent``, ``chunk_frames``.
        seed: the file's base seed (each later segment derives its own, ``aa_md.segment_seed``).
        temperatures: K, the segments.

    Returns:
        ``{"name", "frames": {T: count}, "ns_per_day": {T: measured or None (skipped)},
        "wall_s": {T: s}}``.
    """
    h5 = dataset_path(name, root)
    n_target = cfg["steps"] // cfg["stride"]
    speed, wall = {}, {}
    for temp in temperatures:
        have = frames_per_temperature(h5).get(float(temp), 0)
        if have >= n_target:
            speed[tkey(temp)], wall[tkey(temp)] = None, 0.0
            continue
        mdc = aa_md.MDConfig(steps=cfg["steps"], stride=cfg["stride"], temperature=float(temp),
                             friction=cfg["friction"], timestep=cfg["timestep"],
                             equilibration_steps=cfg["equilibration_steps"], solvent=cfg["solvent"],
                             platform="CPU", threads=1, seed=seed, chunk_frames=cfg["chunk_frames"],
                             hydrogen_mass=cfg.get("hydrogen_mass"))  # fmt: skip
        held = float(temp) in _held_temperatures(h5)
        t0 = time.perf_counter()
        aa_md.simulate(name, mdc, root=root, resume=held, overwrite=False, progress=False)
        dt = time.perf_counter() - t0
        wall[tkey(temp)] = dt
        speed[tkey(temp)] = aa_md.ns_per_day((n_target - have) * cfg["stride"], cfg["timestep"], dt)
    with open_dataset(h5) as ds:
        mapped = ds.has(sc.CG_COORDINATES) and ds.shape_of(sc.CG_COORDINATES)[0] == ds.shape_of(sc.COORDINATES)[0]
    if not mapped:
        ala2.map_dataset(h5, overwrite=True)
    return {"name": name, "frames": {tkey(t): c for t, c in frames_per_temperature(h5).items()},
            "ns_per_day": speed, "wall_s": wall}


def stage_aa(out: Path, s: dict, jobs: int) -> dict:
    """Every AA run of the study (``aa/ala2t_r<i>``, base seeds ``aa.seed_base + i``), ``jobs``
    at a time; temperatures in the order of ``s["temperatures"]``."""
    root = out / "aa"
    cfg = s["aa"]
    names = [f"ala2t_r{i}" for i in range(cfg["n_runs"])]
    for name in names:
        ala2.write_structure(name, root)
    ns = cfg["steps"] * cfg["timestep"] * 1e-6
    log(f"aa: {len(names)} runs × {len(s['temperatures'])} temperatures × {ns:.3g} ns, {jobs} in parallel")
    with executor(jobs) as ex:
        futs = [ex.submit(aa_run, n, str(root), cfg, cfg["seed_base"] + i, list(s["temperatures"]))
                for i, n in enumerate(names)]  # fmt: skip
        runs = [f.result() for f in futs]
    measured = [v for r in runs for v in r["ns_per_day"].values() if v]
    return {"runs": runs, "files": [dataset_path(n, root) for n in names],
            "ns_per_temperature": ns * len(names), "total_ns": ns * len(names) * len(s["temperatures"]),
            "ns_per_day_per_process": measured}  # fmt: skip


# ----------------------------------------------------------------------------- 2. reference


def rows_at(path: Path, temperature: float) -> np.ndarray:
    """Row indices (F,) int64 of the frames of ``path`` at ``temperature`` K (time order)."""
    with open_dataset(path) as ds:
        return np.flatnonzero(np.abs(ds.temperatures() - float(temperature)) < 1e-6)


def angles_at(path: Path, temperature: float) -> np.ndarray:
    """φ/ψ (F, 2) radians of the frames of ``path`` at ``temperature`` K."""
    rows = rows_at(path, temperature)
    with open_dataset(path) as ds:
        cg = ds.cg.coordinates()
    return ala2.phi_psi(np.asarray(cg)[rows])


def reference_at(files: list[Path], temperature: float) -> dict:
    """The AA reference at one temperature from independent runs.

    Args:
        files: the runs' datasets (mapped).  temperature: K.

    Returns:
        ``populations``/``sem`` per basin (blocks = runs, or 10 blocks for a single run),
        ``delta_g`` ΔG(αR−β) kcal/mol of the pooled frames (NaN when a basin is empty),
        ``delta_g_per_run`` and ``delta_g_se`` (SD over runs / √runs; NaN for < 2 finite runs),
        ``n_frames``.
    """
    per = [angles_at(f, temperature) for f in files]
    n_blocks = len(per) if len(per) > 1 else min(10, len(per[0]))
    pops = ala2.basin_populations(per, n_blocks=n_blocks)
    pooled = np.concatenate(per)
    dg_runs = [delta_g(a, temperature) for a in per]
    finite = [d for d in dg_runs if math.isfinite(d)]
    se = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
    return {"temperature": float(temperature), "populations": pops["populations"], "sem": pops["sem"],
            "delta_g": delta_g(pooled, temperature), "delta_g_per_run": dg_runs, "delta_g_se": se,
            "n_frames": int(len(pooled))}  # fmt: skip


def stage_reference(out: Path, s: dict, aa: dict) -> dict:
    """Reference at every study temperature; pooled φ/ψ saved as ``reference/phi_psi_<T>K.npy``."""
    files = [out / f for f in aa["files"]]
    refs = {}
    (out / "reference").mkdir(parents=True, exist_ok=True)
    for temp in s["temperatures"]:
        refs[tkey(temp)] = reference_at(files, temp)
        np.save(out / "reference" / f"phi_psi_{tkey(temp)}.npy", np.concatenate([angles_at(f, temp) for f in files]))
        r = refs[tkey(temp)]
        log(f"reference {tkey(temp)}: p(αR) {r['populations']['alpha_R']:.3f}, ΔG {r['delta_g']:+.3f} kcal/mol")
    return refs


# ----------------------------------------------------------------------------- 3. data


def draw_frames(files: list[Path], temperature: float, n: int, seed: list[int]) -> list[tuple[Path, np.ndarray]]:
    """A seeded draw of ``n`` frames at ``temperature`` K pooled over ``files`` (without
    replacement; all frames when fewer exist), as ``[(file, sorted rows)]`` per file.

    Args:
        files: datasets.  temperature: K.  n: frames to draw.  seed: ``numpy`` seed sequence.

    Returns:
        one ``(file, rows)`` per file, rows (≤ n,) int64 ascending; Σ rows = min(n, frames at T).
    """
    rows = [rows_at(f, temperature) for f in files]
    owner = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    local = np.concatenate(rows)
    pick = np.random.default_rng(seed).permutation(len(local))[: min(n, len(local))]
    return [(f, np.sort(local[pick][owner[pick] == i])) for i, f in enumerate(files)]


def write_subset(draws: list[tuple[Path, np.ndarray]], dst: Path, attrs: dict) -> Path:
    """Copy the drawn frames (several files and temperatures) into ``dst``: frame ids made unique
    (run · 10⁷ + row), time (ps) offset per run so it increases within every temperature; the
    per-frame temperature, β and potential energy come along (``copy_frames``); ``attrs`` are
    stored JSON-encoded as root attributes. Skipped (``dst`` returned) when ``dst`` exists.

    Raises:
        DatasetError: the written file fails ``validate_dataset`` (names file, dataset, frame).
    """
    if dst.exists():
        return dst
    by_file: dict[Path, list[np.ndarray]] = {}
    for f, r in draws:
        by_file.setdefault(f, []).append(r)
    files = sorted(by_file, key=str)
    sources, fid, times = [], [], []
    t_span = 0.0
    for f in files:
        with open_dataset(f) as ds:
            t_span = max(t_span, float(np.max(ds.time())))
    for i, f in enumerate(files):
        r = np.sort(np.concatenate(by_file[f]))
        sources.append((f, r))
        fid.append(i * 10_000_000 + r)
        with open_dataset(f) as ds:
            times.append(i * (t_span + 1.0) + ds.time(r))
    copy_frames(sources, dst, frame_id=np.concatenate(fid), time=np.concatenate(times),
                extra_attrs={k: json.dumps(v) for k, v in attrs.items()})  # fmt: skip
    validate_dataset(dst)
    return dst


def stage_data(out: Path, s: dict, aa: dict) -> dict:
    """Per task and seed ``data/<task>/s<k>/train.h5`` and ``target.h5``.

    The draw at temperature T for seed k is seeded by (data seed, k, T), so the 300 K frames of
    seed k are the same in both tasks, and every arm of a task at seed k trains on them."""
    files = [out / f for f in aa["files"]]
    n = s["data"]["frames_per_temperature"]
    res: dict = {}
    for task, spec in s["tasks"].items():
        for k in s["seeds"]:
            folder = out / "data" / task / f"s{k}"
            draws = {t: draw_frames(files, t, n, [s["data"]["seed"], k, int(round(t))])
                     for t in [*spec["train"], spec["target"]]}  # fmt: skip
            train_f = write_subset([d for t in spec["train"] for d in draws[t]], folder / "train.h5",
                                   {"task": task, "seed": k, "temperatures": spec["train"]})
            target_f = write_subset(draws[spec["target"]], folder / "target.h5",
                                    {"task": task, "seed": k, "temperatures": [spec["target"]]})
            res.setdefault(task, {})[str(k)] = {"train": train_f, "target": target_f}
    log(f"data: {len(s['tasks'])} tasks × {len(s['seeds'])} seeds, {n} frames per temperature")
    return res


# ----------------------------------------------------------------------------- 4. training


def train_config(job: dict, s: dict) -> dict:
    """The trainer config of one (task, arm, seed) job: the study's CGSchNet backbone, the arm's
    thermal form and energy weight, a fixed step budget, ``seed`` = the replicate's seed."""
    tr, arm = s["train"], s["arms"][job["arm"]]
    return {
        "name": job["name"], "output_dir": str(Path(job["run_dir"]).parent), "seed": int(job["seed"]),
        "data": {"datasets": [job["data"]], "batch_size": int(tr["batch_size"]), "val_fraction": tr["val_fraction"]},
        "model": s["model"], "loss": {"mode": "thermal"},
        "thermal": {**s["thermal"], "form": arm["form"], "energy_weight": float(arm["energy_weight"])},
        "optim": {"lr": tr["lr"], "schedule": tr["schedule"], "gamma_per_1000": tr["gamma_per_1000"],
                  "weight_decay": tr["weight_decay"], "grad_clip": tr["grad_clip"]},
        "trainer": {"max_steps": tr["max_steps"], "val_every_steps": tr["val_every_steps"],
                    "checkpoint_every_steps": tr["val_every_steps"], "early_stopping_patience": 0,
                    "keep_best": False, "accelerator": "cpu", "devices": 1, "progress_bar": False},
    }  # fmt: skip


def train_job(job: dict) -> dict:
    """Train one model, resuming from its last checkpoint; skipped when ``train_done.json``
    exists. Returns the JSON record (paths relative to the run folder)."""
    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    done = run_dir / "train_done.json"
    if done.exists() and (run_dir / "model.pt").exists():
        return read_json(done)
    last = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    res = train(train_config(job, job["settings"]), resume=last.exists())
    wall = time.perf_counter() - t0
    rec = {"task": job["task"], "arm": job["arm"], "seed": int(job["seed"]), "name": job["name"],
           "model": Path(res.model), "metrics_csv": Path(res.metrics_csv), "global_step": int(res.global_step),
           "best_val_fm": res.best_val_fm, "wall_s": wall, "s_per_step": wall / max(int(res.global_step), 1),
           "data": Path(job["data"])}  # fmt: skip
    write_json(done, rec, Path(job["root"]))
    return read_json(done)


def stage_train(out: Path, s: dict, data: dict, jobs: int) -> dict:
    """Every (task, arm, seed) model, ``jobs`` at a time; ``{task: {arm: {seed: record}}}``."""
    specs = []
    for task in s["tasks"]:
        for arm, a in s["arms"].items():
            for k in s["seeds"]:
                name = f"{task}_{arm}_s{k}"
                specs.append({"task": task, "arm": arm, "seed": k, "name": name, "root": str(out),
                              "run_dir": str(out / "train" / name), "settings": s,
                              "data": str(out / data[task][str(k)][a["data"]])})  # fmt: skip
    todo = sum(not (Path(j["run_dir"]) / "train_done.json").exists() for j in specs)
    log(f"train: {len(specs)} models, {todo} to train ({jobs} in parallel)")
    res: dict = {}
    with executor(jobs) as ex:
        for j, r in zip(specs, ex.map(train_job, specs), strict=True):
            res.setdefault(j["task"], {}).setdefault(j["arm"], {})[str(j["seed"])] = r
    return res


# ----------------------------------------------------------------------------- 5. CG MD


def task_starts(out: Path, s: dict, aa: dict, task: str) -> np.ndarray:
    """The task's CG MD start positions (R, 5, 3) Å: ``cgmd.n_per_basin`` αR then β/PII frames
    of run 0 at the target temperature, drawn with ``cgmd.start_seed`` (the same for every arm
    and seed of the task)."""
    f = out / aa["files"][0]
    t = s["tasks"][task]["target"]
    rows = rows_at(f, t)
    with open_dataset(f) as ds:
        cg = np.asarray(ds.cg.coordinates())[rows]
    c = s["cgmd"]
    idx = start_frames(ala2.phi_psi(cg), c["n_per_basin"], c["start_seed"], allow_fill=c.get("allow_fill", False))
    return cg[idx]


def stage_cgmd(out: Path, s: dict, aa: dict, trained: dict, jobs: int) -> dict:
    """CG MD of every model at its task's target temperature (``cgmd/<name>``); noise seed
    ``cgmd.noise_seed + k`` for seed k (arm-independent)."""
    specs = []
    for task, arms in trained.items():
        starts = task_starts(out, s, aa, task)
        c = {**s["cgmd"], "temperature": float(s["tasks"][task]["target"])}
        for arm, per_seed in arms.items():
            for k, rec in per_seed.items():
                specs.append({"task": task, "arm": arm, "seed_rep": int(k), "out": str(out / "cgmd" / rec["name"]),
                              "model": str(out / rec["model"]), "starts": starts.tolist(), "cgmd": c,
                              "root": str(out)})  # fmt: skip
    todo = sum(not (Path(j["out"]) / "md_done.json").exists() for j in specs)
    log(f"cgmd: {len(specs)} models, {todo} to simulate ({jobs} in parallel)")
    res: dict = {}
    with executor(jobs) as ex:
        runs = list(ex.map(_simulate, specs))
    for j, r in zip(specs, runs, strict=True):
        res.setdefault(j["task"], {}).setdefault(j["arm"], {})[str(j["seed_rep"])] = r
    return res


def _simulate(job: dict) -> dict:
    """:func:`~.ala2_v2_eval.simulate_job` with the noise seed of the replicate."""
    return simulate_job({**job, "seed": job["cgmd"]["noise_seed"] + int(job["seed_rep"])})


# ----------------------------------------------------------------------------- 6. metrics


def replica_angles(sim_dir: Path, burn_in_ps: float, dt_ps: float) -> list[np.ndarray | None]:
    """φ/ψ (T_r, 2) radians per replica after the burn-in; None for a replica the simulator
    stopped, with a non-finite coordinate or a bond outside ``ala2.BOND_RANGE``, or with no frame
    left.

    (Matches replicas to ``filter_replicas``' kept list by position: the kept arrays are float64
    copies of mdtraj's float32 ones, so an identity test would drop every replica.)
    """
    trajs = load_simulation(sim_dir)
    kept, dropped = filter_replicas(trajs, (ala2.BOND_RANGE[0] / 10, ala2.BOND_RANGE[1] / 10), 0.0)
    bad = {d["replica"] for d in dropped}
    n_burn = int(round(burn_in_ps / dt_ps))
    out, it = [], iter(kept)
    for r in range(len(trajs.xyz)):
        x = None if r in bad else next(it)
        out.append(ala2.phi_psi(x[n_burn:] * 10.0) if x is not None and len(x) > n_burn else None)
    return out


def model_metrics(sim_dir: Path, reference_angles: np.ndarray, reference: dict, c: dict) -> dict:
    """Metrics of one model's CG MD at temperature ``c["temperature"]`` K against the AA
    reference there.

    Args:
        sim_dir: CG MD folder.  reference_angles: (F, 2) φ/ψ radians of the AA reference.
        reference: :func:`reference_at` of that temperature.  c: CG MD settings (``timestep`` fs,
            ``save_interval``, ``burn_in_ps``, ``temperature`` K).

    Returns:
        ``populations`` per basin (pooled frames after burn-in); ``delta_g``, ``delta_g_error``
        (model − AA) and ``abs_delta_g_error`` kcal/mol; ``fe_rmse`` kcal/mol
        (:func:`~.ala2_v2_eval.fe_rmse`); ``kl`` nats (KL(AA‖model) of the smoothed φ/ψ grid
        densities); ``tau_ps`` (αR indicator correlation time, NaN if no transition);
        ``p_alpha_halves`` (first and second half of the replicas); ``replicas_alive``. Every
        metric is NaN when no replica survived.
    """
    dt_ps = c["save_interval"] * c["timestep"] * 1e-3
    per = replica_angles(sim_dir, c["burn_in_ps"], dt_ps)
    alive = [a for a in per if a is not None and len(a)]
    nan = math.nan
    if not alive:
        return {"populations": {b: nan for b in ala2.BASINS}, "delta_g": nan, "delta_g_error": nan,
                "abs_delta_g_error": nan, "fe_rmse": nan, "kl": nan, "tau_ps": nan,
                "p_alpha_halves": [nan, nan], "replicas_alive": 0, "replicas": len(per)}  # fmt: skip
    pooled = np.concatenate(alive)
    lab = ala2.assign_basins(pooled)
    pops = {b: float(np.mean(lab == i)) for i, b in enumerate(ala2.BASINS)}
    ia = ala2.BASINS.index("alpha_R")
    ind = [None if a is None else (ala2.assign_basins(a) == ia).astype(float) for a in per]
    half = len(per) // 2
    halves = [float(np.mean(np.concatenate(p))) if p else nan
              for p in ([x for x in ind[:half] if x is not None], [x for x in ind[half:] if x is not None])]
    dg = delta_g(pooled, c["temperature"])
    err = dg - reference["delta_g"]
    kl = ala2.phi_psi_kl(ala2.phi_psi_density(reference_angles), ala2.phi_psi_density(pooled))
    return {"populations": pops, "delta_g": dg, "delta_g_error": err, "abs_delta_g_error": abs(err),
            "fe_rmse": fe_rmse(reference_angles, pooled, c["temperature"]), "kl": float(kl),
            "tau_ps": correlation_time(ind, dt_ps), "p_alpha_halves": halves, "replicas_alive": len(alive),
            "replicas": len(per)}  # fmt: skip


def stage_evaluate(out: Path, s: dict, refs: dict, trained: dict) -> dict:
    """:func:`model_metrics` of every model; ``{task: {arm: {seed: metrics}}}``."""
    res: dict = {}
    for task, arms in trained.items():
        t = s["tasks"][task]["target"]
        ref_angles = np.load(out / "reference" / f"phi_psi_{tkey(t)}.npy")
        c = {**s["cgmd"], "temperature": float(t)}
        for arm, per_seed in arms.items():
            for k, rec in per_seed.items():
                res.setdefault(task, {}).setdefault(arm, {})[k] = model_metrics(
                    out / "cgmd" / rec["name"], ref_angles, refs[tkey(t)], c)
    return res


# ----------------------------------------------------------------------------- 7. report

METRICS = ("abs_delta_g_error", "delta_g", "fe_rmse", "kl")


def comparisons(evald: dict, s: dict, alpha: float = 0.05) -> list[dict]:
    """The pre-registered paired comparisons.

    Primary family (Holm over all of it, both tasks): for each task and each (arm, baseline) of
    :data:`PRIMARY`, the paired difference of |ΔG(αR−β) error| over seeds. Secondary (each
    reported with its own interval, Holm within the secondary family): the same pairs on the
    φ/ψ free-energy RMSE and KL, and every arm against the upper bound ``FM-target`` on
    |ΔG error|.

    Returns:
        one dict per comparison: ``task``, ``arm``, ``base``, ``metric``, ``family``
        ("primary"/"secondary"), ``mean``, ``low``, ``high``, ``p``, ``p_holm``, ``n``,
        ``significant`` (p_holm ≤ ``alpha`` and the interval excludes 0).
    """
    rows = []
    for family, pairs, metrics in (("primary", PRIMARY, ("abs_delta_g_error",)),
                                   ("secondary", PRIMARY, ("fe_rmse", "kl")),
                                   ("secondary", [(a, "FM-target") for a in s["arms"] if a != "FM-target"],
                                    ("abs_delta_g_error",))):  # fmt: skip
        for task in s["tasks"]:
            for arm, base in pairs:
                for metric in metrics:
                    a = {k: v[metric] for k, v in evald[task][arm].items()}
                    b = {k: v[metric] for k, v in evald[task][base].items()}
                    iv = paired_difference(a, b)
                    rows.append({"task": task, "arm": arm, "base": base, "metric": metric, "family": family,
                                 "mean": iv.mean, "low": iv.low, "high": iv.high, "p": iv.p_value, "n": iv.n})  # fmt: skip
    for family in ("primary", "secondary"):
        idx = [i for i, r in enumerate(rows) if r["family"] == family]
        adj = holm([rows[i]["p"] for i in idx])
        for i, p in zip(idx, adj, strict=True):
            rows[i]["p_holm"] = float(p)
            rows[i]["significant"] = bool(p <= alpha and (rows[i]["low"] > 0 or rows[i]["high"] < 0))
    return rows


def task_status(task: str, s: dict, refs: dict, evald: dict) -> dict:
    """Whether a task can answer the question (pre-registered validity criteria).

    ``resolved``: the AA ΔG(αR−β) at the target and at 300 K differ by more than
    ``verdict.resolve_factor`` × their combined SE (over runs) — a temperature effect the
    reference resolves. ``void``: the upper bound FM-target misses the AA ΔG at the target by
    more than ``verdict.void_margin`` kcal/mol (3-seed mean of |ΔG error|) — the network, data or
    CG MD cannot reproduce the target even in-sample.

    Returns:
        ``{"resolved": bool, "void": bool, "effect": kcal/mol, "effect_se": kcal/mol,
        "upper_bound_error": kcal/mol}`` (NaN effect → not resolved; NaN error → void).
    """
    v = s["verdict"]
    tgt, base = refs[tkey(s["tasks"][task]["target"])], refs[tkey(300.0)]
    effect = tgt["delta_g"] - base["delta_g"]
    se = math.hypot(tgt["delta_g_se"], base["delta_g_se"])
    resolved = bool(math.isfinite(effect) and math.isfinite(se) and abs(effect) > v["resolve_factor"] * se)
    ub = [x["abs_delta_g_error"] for x in evald[task]["FM-target"].values()]
    ub_err = float(np.mean(ub)) if ub and all(math.isfinite(x) for x in ub) else math.nan
    return {"resolved": resolved, "void": not (ub_err <= v["void_margin"]), "effect": effect, "effect_se": se,
            "upper_bound_error": ub_err}


def verdicts(rows: list[dict], s: dict, status: dict) -> list[str]:
    """Verdict sentences of the pre-registered criteria (docs/results/thermo.md): one per task
    for its validity (:func:`task_status`), one per (task, primary comparison), one per task for
    the upper-bound criterion."""
    out = []
    tol = s["verdict"]["upper_bound_margin"]
    for task, st in status.items():
        out.append(f"{task}: AA temperature effect ΔG(target) − ΔG(300 K) = {st['effect']:+.3f} ± "
                   f"{st['effect_se']:.3f} kcal/mol ({'resolved' if st['resolved'] else 'not resolved'}); "
                   f"upper bound FM-target |ΔG error| {st['upper_bound_error']:.3f} kcal/mol "
                   f"({'VOID: above ' + str(s['verdict']['void_margin']) if st['void'] else 'valid'})")
    for r in rows:
        if r["family"] == "primary":
            st = status[r["task"]]
            if st["void"]:
                word = "void (the upper bound does not reproduce the target)"
            elif not st["resolved"]:
                word = "inconclusive (no resolved AA temperature effect)"
            elif not math.isfinite(r["p_holm"]):
                word = "inconclusive (fewer than 2 usable seeds)"
            elif r["significant"]:
                word = "supported" if r["mean"] < 0 else "reversed"
            else:
                word = "not shown"
            out.append(f"{r['task']}: {r['arm']} has a smaller |ΔG error| than {r['base']} — {word} "
                       f"(Δ = {r['mean']:+.3f} kcal/mol, 95 % CI [{r['low']:+.3f}, {r['high']:+.3f}], "
                       f"Holm p = {r['p_holm']:.3g}, n = {r['n']})")
    for r in rows:
        if r["metric"] == "abs_delta_g_error" and r["base"] == "FM-target" and r["arm"] == "M2-FU":
            ok = math.isfinite(r["high"]) and r["high"] <= tol
            out.append(f"{r['task']}: M2-FU within {tol} kcal/mol of the upper bound FM-target — "
                       f"{'yes' if ok else 'not shown'} (upper end of the CI {r['high']:+.3f})")
    return out


def _fmt(values: list[float], digits: int = 3) -> str:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "nan"
    sd = f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else ""
    return f"{v.mean():.{digits}f}{sd}"


def report_markdown(s: dict, aa: dict, refs: dict, trained: dict, evald: dict, rows: list[dict],
                    words: list[str]) -> str:
    """The results section (markdown): AA reference per temperature, per task and arm the metrics
    (mean ± SD over seeds), the paired comparisons and the verdict sentences."""
    lines = ["### AA reference", "",
             "| T (K) | frames | p(αR) | p(β/PII) | p(αL) | ΔG(αR−β) (kcal/mol) |", "|---|---|---|---|---|---|"]
    for key, r in refs.items():
        p, e = r["populations"], r["sem"]
        lines.append(f"| {key[:-1]} | {r['n_frames']} | {p['alpha_R']:.3f} ± {e['alpha_R']:.3f} | "
                     f"{p['beta_PII']:.3f} ± {e['beta_PII']:.3f} | {p['alpha_L']:.4f} | "
                     f"{r['delta_g']:+.3f} ± {r['delta_g_se']:.3f} |")
    speeds = aa.get("ns_per_day_per_process") or []
    if speeds:
        lines += ["", f"AA speed: {min(speeds):.0f}–{max(speeds):.0f} ns/day per process "
                  f"({aa['ns_per_temperature']:.3g} ns per temperature, {aa['total_ns']:.3g} ns in all)."]
    for task, spec in s["tasks"].items():
        t = spec["target"]
        ref = refs[tkey(t)]
        lines += ["", f"### {task}: train {', '.join(f'{x:g}' for x in spec['train'])} K, predict {t:g} K "
                  f"(AA ΔG {ref['delta_g']:+.3f}, p(αR) {ref['populations']['alpha_R']:.3f})", "",
                  "| arm | p(αR) | p(β/PII) | ΔG (kcal/mol) | ΔG − AA | |ΔG − AA| | F RMSE (kcal/mol) | KL (nats) "
                  "| τ (ps) | replicas alive | steps | s/step |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for arm in s["arms"]:
            m = evald[task][arm].values()
            tr = trained[task][arm].values()
            lines.append(f"| {arm} | {_fmt([x['populations']['alpha_R'] for x in m])} | "
                         f"{_fmt([x['populations']['beta_PII'] for x in m])} | {_fmt([x['delta_g'] for x in m])} | "
                         f"{_fmt([x['delta_g_error'] for x in m])} | {_fmt([x['abs_delta_g_error'] for x in m])} | "
                         f"{_fmt([x['fe_rmse'] for x in m])} | {_fmt([x['kl'] for x in m])} | "
                         f"{_fmt([x['tau_ps'] for x in m], 1)} | {sum(x['replicas_alive'] for x in m)}/"
                         f"{sum(x['replicas'] for x in m)} | "
                         f"{_fmt([float(x['global_step']) for x in tr], 0)} | {_fmt([x['s_per_step'] for x in tr])} |")
    lines += ["", "### Paired comparisons (arm − base over seeds; negative: the arm is closer to AA)", "",
              "| family | task | arm − base | metric | mean | 95 % CI | p | Holm p |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['task']} | {r['arm']} − {r['base']} | {r['metric']} | {r['mean']:+.3f} | "
                     f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p']:.3g} | {r['p_holm']:.3g} |")
    lines += ["", "### Verdict (pre-registered criteria)", "", *[f"- {w}" for w in words], ""]
    return "\n".join(lines)


def stage_report(out: Path, s: dict, aa: dict, refs: dict, trained: dict, evald: dict, results_md: Path) -> dict:
    """Write the results fragment ``results_md`` and ``<out>/summary.json``; return the summary."""
    rows = comparisons(evald, s)
    status = {task: task_status(task, s, refs, evald) for task in s["tasks"]}
    words = verdicts(rows, s, status)
    text = report_markdown(s, aa, refs, trained, evald, rows, words)
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(text)
    summary = {"reference": refs, "metrics": evald, "comparisons": rows, "status": status, "verdicts": words,
               "aa": {k: aa[k] for k in ("ns_per_temperature", "total_ns", "ns_per_day_per_process")},
               "results": results_md}  # fmt: skip
    write_json(out / "summary.json", summary, out)
    return summary


# ----------------------------------------------------------------------------- the study

STAGES = ("aa", "reference", "data", "train", "cgmd", "evaluate", "report")


def run_study(out: str | Path, s: dict, results_md: str | Path, jobs: int = 2, stop_after: str | None = None) -> dict:
    """Run (or resume) the study in ``out``.

    Args:
        out: run folder (created).  s: the settings of ``benchmarks/thermo_ala2.py`` (stored;
            a folder started with other settings is refused).  results_md: results fragment.
        jobs: parallel processes.  stop_after: a stage name of :data:`STAGES` (None: all).

    Returns:
        ``{"stopped_after": stage}`` when stopped early, else the summary of :func:`stage_report`
        (``reference``, ``metrics``, ``comparisons``, ``verdicts``, ``aa``, ``results``), with
        ``wall_s`` per stage.

    Raises:
        ValueError: unknown ``stop_after``; the folder holds a run with other settings.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
    out = Path(out).resolve()
    runner = StageRunner(out, STATE_FILE, label="thermo_ala2", say=log)
    runner.use_settings(s)
    results_md = Path(results_md).resolve()

    def stop(name: str) -> bool:
        return stop_after == name

    aa = runner.run("aa", lambda: stage_aa(out, s, jobs))
    if stop("aa"):
        return {"stopped_after": "aa", "wall_s": runner.wall_seconds()}
    refs = runner.run("reference", lambda: stage_reference(out, s, aa))
    if stop("reference"):
        return {"stopped_after": "reference", "wall_s": runner.wall_seconds()}
    data = runner.run("data", lambda: stage_data(out, s, aa))
    if stop("data"):
        return {"stopped_after": "data", "wall_s": runner.wall_seconds()}
    trained = runner.run("train", lambda: stage_train(out, s, data, jobs))
    if stop("train"):
        return {"stopped_after": "train", "wall_s": runner.wall_seconds()}
    runner.run("cgmd", lambda: stage_cgmd(out, s, aa, trained, jobs))
    if stop("cgmd"):
        return {"stopped_after": "cgmd", "wall_s": runner.wall_seconds()}
    evald = runner.run("evaluate", lambda: stage_evaluate(out, s, refs, trained))
    if stop("evaluate"):
        return {"stopped_after": "evaluate", "wall_s": runner.wall_seconds()}
    summary = runner.run("report", lambda: stage_report(out, s, aa, refs, trained, evald, results_md), rerun=True)
    return {**summary, "wall_s": runner.wall_seconds()}

__all__ = ["METRICS", "PRIMARY", "STAGES", "aa_run", "angles_at", "comparisons", "draw_frames",
           "frames_per_temperature", "model_metrics", "reference_at", "replica_angles", "report_markdown", "rows_at", "run_study",
           "stage_aa", "stage_cgmd", "stage_data", "stage_evaluate", "stage_reference", "stage_report",
           "stage_train", "task_starts", "task_status", "tkey", "train_config", "train_job", "verdicts", "write_subset"]  # fmt: skip
