"""The main job: the whole hessid pipeline on real input from one command (``hessid demo``).

Stages (each resumable; a killed demo continues where it stopped):

1. ``build``     chignolin (GYDPETGTWG) from its sequence: PeptideBuilder + pdbfixer (pH 7)
2. ``aa_md``     Amber14 + GBn2 implicit solvent in OpenMM, forces of every saved frame
3. ``targets``   Cα map (P = M), Term-1 HVP targets, k Gaussian probes per frame (FD of forces)
4. ``train:*``   CGSchNet + priors with FM, FM+AA (γ = 0) and FM+AA+Cov (γ = 1)
5. ``simulate:*`` CG Langevin MD, R replicas per model, started from reference frames
6. ``evaluate``  benchmark metrics against the AA reference (TICA KL/W1, structural W1)
7. ``report``    one HTML page with the table, free-energy surfaces, densities, curves

Progress and per-stage wall times are kept in ``<out>/demo_state.json``. Scales:
``ci`` (a miniature, ~2–4 min on 2 CPU cores), ``default`` (~20–30 min on 2 CPU cores) and
``full`` (research-sized, meant for a GPU).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: the three loss variants of the paper: (label, cov_weight γ or None for force matching only)
VARIANTS: tuple[tuple[str, float | None], ...] = (("FM", None), ("FM+AA", 0.0), ("FM+AA+Cov", 1.0))


@dataclass(frozen=True)
class DemoScale:
    """Sizes of one demo run (units in the names' comments).

    Attributes:
        aa_steps: AA production steps (2 fs each).  aa_stride: steps between saved frames.
        aa_equilibration: AA steps after minimisation, not saved.
        n_probes: k probes per frame for Term 1.
        train_steps: optimizer steps per model.  batch_size: frames per step.
        cg_replicas: CG MD replicas per model.  cg_steps: CG MD steps (timestep ``cg_timestep``
            fs).  cg_stride: steps between saved CG frames.
        lag_time: TICA lag, ps of reference time.
        hidden_channels, num_layers: CGSchNet size.
    """

    aa_steps: int
    aa_stride: int
    aa_equilibration: int
    n_probes: int
    train_steps: int
    batch_size: int
    cg_replicas: int
    cg_steps: int
    cg_stride: int
    cg_timestep: float
    lag_time: float
    hidden_channels: int = 64
    num_layers: int = 4


SCALES: dict[str, DemoScale] = {
    # a miniature of the same pipeline for CI: every stage runs, nothing is converged
    "ci": DemoScale(aa_steps=3000, aa_stride=25, aa_equilibration=500, n_probes=2, train_steps=30,
                    batch_size=16, cg_replicas=2, cg_steps=400, cg_stride=10, cg_timestep=2.0,
                    lag_time=1.0, hidden_channels=16, num_layers=2),
    # ~20–30 min on 2 CPU cores: 150 ps of AA reference (750 frames), k = 4
    "default": DemoScale(aa_steps=75_000, aa_stride=100, aa_equilibration=5_000, n_probes=4,
                         train_steps=400, batch_size=16, cg_replicas=8, cg_steps=10_000,
                         cg_stride=50, cg_timestep=2.0, lag_time=10.0),
    # research-sized, for a GPU: 20 ns of AA reference, 20 replicas, paper's lag of 0.8 ns
    "full": DemoScale(aa_steps=10_000_000, aa_stride=500, aa_equilibration=50_000, n_probes=4,
                      train_steps=50_000, batch_size=200, cg_replicas=20, cg_steps=1_000_000,
                      cg_stride=500, cg_timestep=2.0, lag_time=800.0),
}


class DemoState:
    """Which stages are done and how long each took: ``<out>/demo_state.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"stages": {}}

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished in an earlier (or this) run."""
        return self.data["stages"].get(stage, {}).get("done", False)

    def mark(self, stage: str, seconds: float, **info) -> None:
        """Record ``stage`` as done after ``seconds`` (added to earlier interrupted attempts)."""
        prior = self.data["stages"].get(stage, {}).get("seconds", 0.0)
        self.data["stages"][stage] = {"done": True, "seconds": prior + seconds, **info}
        self._write()

    def add_time(self, stage: str, seconds: float) -> None:
        """Add the wall time of an interrupted attempt of ``stage``."""
        entry = self.data["stages"].setdefault(stage, {"done": False})
        entry["seconds"] = entry.get("seconds", 0.0) + seconds
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def _stage(state: DemoState, name: str, fn, say=print):
    """Run ``fn()`` unless ``name`` is done; record its wall time (also when it fails)."""
    if state.done(name):
        say(f"[demo] {name}: done earlier ({state.data['stages'][name]['seconds']:.0f} s), skipped")
        return None
    say(f"[demo] {name} ...")
    t0 = time.perf_counter()
    try:
        info = fn() or {}
    except BaseException:
        state.add_time(name, time.perf_counter() - t0)
        raise
    dt = time.perf_counter() - t0
    state.mark(name, dt, **info)
    say(f"[demo] {name}: {dt:.1f} s")
    return info


def run_demo(out_dir: str | Path = "hessid-demo", sequence: str | None = "GYDPETGTWG",
             name: str = "chignolin", pdb: str | Path | None = None, scale: str = "default",
             platform: str | None = None, seed: int = 0, progress: bool = True,
             say=print) -> Path:
    """Run the whole pipeline and return the path of the HTML report (``hessid demo``).

    Args:
        out_dir: working folder; everything the demo writes lives here. Re-running with the
            same folder resumes (finished stages are skipped, interrupted ones continue).
        sequence: one-letter amino-acid sequence to build (default chignolin GYDPETGTWG).
        name: protein name (folder and dataset name).
        pdb: build from this PDB file instead of ``sequence``.
        scale: ``ci`` | ``default`` | ``full`` (see :data:`SCALES`).
        platform: OpenMM platform for AA MD and targets (default CUDA if present, else CPU).
        seed: seed of AA MD, probes, training and CG MD.
        progress: progress bars.
        say: where stage messages go.

    Returns:
        Path of ``<out>/report/report.html``.

    Raises:
        ValueError: unknown scale, or a resumed folder built with another scale/protein.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState(out / "demo_state.json")
    settings = {"scale": scale, "name": name, "sequence": None if pdb else sequence,
                "pdb": str(pdb) if pdb else None, "seed": seed, "sizes": asdict(sc)}
    if "settings" in state.data and state.data["settings"] != settings:
        raise ValueError(f"{out} holds a demo run with other settings ({state.data['settings']}); "
                         f"use another --out folder")
    state.data["settings"] = settings
    state._write()

    data_root = out / "data"
    dataset = data_root / name / f"{name}.h5"

    def build():
        from hessid.training.data.structures import build_structure

        path = build_structure(name, sequence=None if pdb else sequence, pdb=pdb, out_dir=data_root)
        return {"pdb": str(path)}

    def aa_md():
        from hessid.training.data.aa_md import MDConfig, simulate

        cfg = MDConfig(steps=sc.aa_steps, stride=sc.aa_stride, equilibration_steps=sc.aa_equilibration,
                       platform=platform, seed=seed, chunk_frames=max(10, sc.aa_steps // sc.aa_stride // 50))
        resume = (data_root / name / f"{name}.chk").exists() and dataset.exists()
        simulate(name, cfg, root=data_root, resume=resume, overwrite=not resume, progress=progress)
        return {"frames": sc.aa_steps // sc.aa_stride}

    def targets():
        import h5py
        from hessid.training.data.targets import compute_targets

        resume = False
        if dataset.exists():
            with h5py.File(dataset, "r") as h5:
                resume = "cg/hvp_term1" in h5
        res = compute_targets(dataset, n_probes=sc.n_probes, probe_kind="gaussian", seed=seed,
                              platform=platform, workers=0, resume=resume, progress=progress)
        return {"summary": str(res)[:500]}

    _stage(state, "build", build, say)
    _stage(state, "aa_md", aa_md, say)
    _stage(state, "targets", targets, say)

    models: dict[str, list[str]] = {}
    curves: dict[str, str] = {}
    for label, gamma in VARIANTS:
        run_dir = out / "runs" / _safe(label)
        info = _stage(state, f"train:{label}",
                      lambda run_dir=run_dir, gamma=gamma, label=label: _train(
                          dataset, run_dir, label, gamma, sc, seed, progress), say)
        info = info or state.data["stages"][f"train:{label}"]
        curves[label] = info["metrics_csv"]
        sim_dir = out / "sim" / _safe(label)
        _stage(state, f"simulate:{label}",
               lambda sim_dir=sim_dir, model=info["model"]: _simulate(
                   model, dataset, sim_dir, sc, seed, progress), say)
        models[label] = [str(sim_dir)]

    eval_dir = out / "evaluation"

    def evaluate():
        from hessid.training.evaluation.evaluate import evaluate as run_eval

        docs = run_eval(dataset, models, eval_dir, protein=name, lag_time=sc.lag_time, seed=seed)
        return {"models": [d.get("model") for d in docs]}

    def report():
        from hessid.training.evaluation.report import build_report

        provenance = {"demo": settings, "dataset": str(dataset), "stages": state.data["stages"]}
        path = build_report(eval_dir, out / "report", training_curves=curves, provenance=provenance,
                            title=f"hessid demo — {name} ({scale})")
        return {"report": str(path)}

    _stage(state, "evaluate", evaluate, say)
    _stage(state, "report", report, say)
    report_path = Path(state.data["stages"]["report"]["report"])
    total = sum(s.get("seconds", 0.0) for s in state.data["stages"].values())
    say(f"[demo] finished in {total / 60:.1f} min of stage time; report: {report_path}")
    return report_path


def _safe(label: str) -> str:
    return label.replace("+", "_").replace("/", "_")


def _train(dataset: Path, run_dir: Path, label: str, gamma: float | None, sc: DemoScale,
           seed: int, progress: bool) -> dict:
    """Train one variant (γ None = force matching only); returns model and curve paths."""
    from hessid.training.learning.trainer import train

    hvp = gamma is not None
    config = {
        "name": run_dir.name, "output_dir": str(run_dir.parent), "seed": seed,
        # the HVP term starts after a short FM warm-up, γ ramps in (model forces are poor early)
        "hvp_start_step": sc.train_steps // 10 if hvp else 0,
        "cov_ramp_steps": sc.train_steps // 5 if hvp and gamma else 0,
        "data": {"datasets": [str(dataset)], "split": "frames", "val_fraction": 0.1,
                 "batch_size": sc.batch_size},
        "model": {"embedding_dimension": sc.hidden_channels, "num_layers": sc.num_layers,
                  "precision": "float32"},
        "loss": {"mode": "fm_hvp" if hvp else "fm", "cov_weight": gamma or 0.0},
        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup_steps": min(50, sc.train_steps // 10)},
        "trainer": {"max_steps": sc.train_steps, "val_every_steps": max(10, sc.train_steps // 20),
                    "checkpoint_every_steps": max(10, sc.train_steps // 20),
                    "early_stopping_patience": 0, "accelerator": "auto" if sc is SCALES["full"] else "cpu",
                    "progress_bar": progress},
    }
    resume = (run_dir / "checkpoints" / "last.ckpt").exists()
    result = train(config, resume=resume)
    return {"model": str(result.model), "metrics_csv": str(result.metrics_csv),
            "global_step": result.global_step, "best_val_fm": result.best_val_fm,
            "label": label}


def _simulate(model: str, dataset: Path, sim_dir: Path, sc: DemoScale, seed: int, progress: bool):
    from hessid.training.learning.models import load_potential
    from hessid.training.md.simulation import simulate

    potential = load_potential(model)
    resume = (sim_dir / "checkpoint.pt").exists()
    result = simulate(potential, sim_dir, n_steps=sc.cg_steps, save_interval=sc.cg_stride,
                      reference=str(dataset), n_replicas=sc.cg_replicas, timestep=sc.cg_timestep,
                      seed=seed, resume=resume, overwrite=not resume and sim_dir.exists(),
                      progress=progress, provenance={"model": model})
    return {"result": str(result)[:500]}


__all__ = ["DemoScale", "SCALES", "VARIANTS", "run_demo"]
