"""The main job: the whole hessid pipeline on real input from one command (``hessid demo``).

Stages (each resumable; a killed demo continues where it stopped):

1. ``build``     chignolin (GYDPETGTWG) from its sequence: PeptideBuilder + pdbfixer (pH 7)
2. ``aa_md``     Amber14 + GBn2 implicit solvent in OpenMM, forces of every saved frame
3. ``targets``   Cα map (P = M), Term-1 HVP targets, k Gaussian probes per frame (FD of forces)
4. ``train:*``   CGSchNet + priors with FM, FM+AA (γ = 0) and FM+AA+Cov (γ = 1)
5. ``simulate:*`` CG Langevin MD, R replicas per model, started from reference frames
6. ``evaluate``  benchmark metrics against the AA reference (TICA KL/W1, structural W1)
7. ``report``    one HTML page with the table, free-energy surfaces, densities, curves

Progress and per-stage wall times are kept in ``<out>/demo_state.json`` (a
:class:`~hessid.training.pipelines.runner.StageRunner` state). Scales:
``ci`` (a miniature, ~2–4 min on 2 CPU cores), ``default`` (~20–30 min on 2 CPU cores) and
``full`` (research-sized, meant for a GPU).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from hessid.training.data.aa_md import MDConfig
from hessid.training.data.aa_md import simulate as simulate_aa
from hessid.training.data.io import dataset_path
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import compute_targets
from hessid.training.evaluation.evaluate import evaluate as run_evaluation
from hessid.training.evaluation.report import build_report
from hessid.training.learning.models import load_potential
from hessid.training.learning.trainer import train
from hessid.training.md.simulation import simulate as simulate_cg
from hessid.training.pipelines.runner import StageRunner

log = logging.getLogger(__name__)

#: the three loss variants of the paper: (label, cov_weight γ or None for force matching only)
VARIANTS: tuple[tuple[str, float | None], ...] = (("FM", None), ("FM+AA", 0.0), ("FM+AA+Cov", 1.0))
#: the demo's state file inside its output folder
STATE_FILE = "demo_state.json"


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
        say: where stage messages go (lines ``[demo] <stage> ...``).

    Returns:
        Path of ``<out>/report/report.html``.

    Raises:
        ValueError: unknown scale, a resumed folder built with another scale/protein, or a
            state file this version cannot read.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    out = Path(out_dir).resolve()
    runner = StageRunner(out, STATE_FILE, label="demo", say=say)
    settings = {"scale": scale, "name": name, "sequence": None if pdb else sequence,
                "pdb": str(pdb) if pdb else None, "seed": seed, "sizes": asdict(sc)}
    runner.use_settings(settings)

    data_root = out / "data"
    dataset = dataset_path(name, data_root)

    def build():
        path = build_structure(name, sequence=None if pdb else sequence, pdb=pdb, out_dir=data_root)
        return {"pdb": Path(path)}

    def aa_md():
        cfg = MDConfig(steps=sc.aa_steps, stride=sc.aa_stride, equilibration_steps=sc.aa_equilibration,
                       platform=platform, seed=seed, chunk_frames=max(10, sc.aa_steps // sc.aa_stride // 50))
        resume = (data_root / name / f"{name}.chk").exists() and dataset.exists()
        simulate_aa(name, cfg, root=data_root, resume=resume, overwrite=not resume, progress=progress)
        return {"frames": sc.aa_steps // sc.aa_stride}

    def targets():
        # resume=True also starts a run when the dataset holds no Term 1 yet
        res = compute_targets(dataset, n_probes=sc.n_probes, probe_kind="gaussian", seed=seed,
                              platform=platform, workers=0, resume=True, progress=progress)
        return {"summary": res}

    runner.run("build", build)
    runner.run("aa_md", aa_md)
    runner.run("targets", targets)

    models: dict[str, list[str]] = {}
    curves: dict[str, Path] = {}
    for label, gamma in VARIANTS:
        run_dir = out / "runs" / _safe(label)
        info = runner.run(f"train:{label}",
                          lambda run_dir=run_dir, gamma=gamma, label=label: _train(
                              dataset, run_dir, label, gamma, sc, seed, progress))
        curves[label] = runner.resolve(info["metrics_csv"])
        sim_dir = out / "sim" / _safe(label)
        model = runner.resolve(info["model"])
        runner.run(f"simulate:{label}",
                   lambda sim_dir=sim_dir, model=model: _simulate(model, dataset, sim_dir, sc, seed, progress))
        models[label] = [str(sim_dir)]

    eval_dir = out / "evaluation"

    def evaluate():
        docs = run_evaluation(dataset, models, eval_dir, protein=name, lag_time=sc.lag_time, seed=seed)
        return {"models": [d.get("model") for d in docs]}

    def report():
        provenance = {"demo": settings, "dataset": str(dataset), "stages": runner.stages}
        path = build_report(eval_dir, out / "report", training_curves=curves, provenance=provenance,
                            title=f"hessid demo — {name} ({scale})")
        return {"report": Path(path)}

    runner.run("evaluate", evaluate)
    runner.run("report", report)
    report_path = runner.resolve(runner.result("report")["report"])
    say(f"[demo] finished in {runner.seconds() / 60:.1f} min of stage time; report: {report_path}")
    return report_path


def _safe(label: str) -> str:
    return label.replace("+", "_").replace("/", "_")


def _train(dataset: Path, run_dir: Path, label: str, gamma: float | None, sc: DemoScale,
           seed: int, progress: bool) -> dict:
    """Train one variant (γ None = force matching only); returns model and curve paths."""
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
    return {"model": Path(result.model), "metrics_csv": Path(result.metrics_csv),
            "global_step": result.global_step, "best_val_fm": result.best_val_fm,
            "label": label}


def _simulate(model: Path, dataset: Path, sim_dir: Path, sc: DemoScale, seed: int, progress: bool) -> dict:
    potential = load_potential(model)
    resume = (sim_dir / "checkpoint.pt").exists()
    result = simulate_cg(potential, sim_dir, n_steps=sc.cg_steps, save_interval=sc.cg_stride,
                         reference=str(dataset), n_replicas=sc.cg_replicas, timestep=sc.cg_timestep,
                         seed=seed, resume=resume, overwrite=not resume and sim_dir.exists(),
                         progress=progress, provenance={"model": str(model)})
    return {"result": result}


__all__ = ["DemoScale", "SCALES", "STATE_FILE", "VARIANTS", "run_demo"]
