"""Driver of CG Langevin runs: the loop, checkpoints, resume, failure reports, output files.

:func:`simulate` is what ``hessid simulate`` calls: it picks start structures, builds a
:class:`~hessid.training.md.integrator.LangevinBAOAB` and the reporters
(:mod:`hessid.training.md.reporters`), and drives :func:`run`, which integrates, reports,
checkpoints and stops replicas that blow up. A killed run resumes from its checkpoint to a
byte-identical result.

Units as in :mod:`hessid.training.md.integrator`: Å, Å/ps, kcal/mol, amu, ps (timestep in fs),
K, 1/ps.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as im
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hessid.training.data import schema as sc
from hessid.training.data.reader import open_dataset
from hessid.training.md.integrator import (
    DEFAULT_BOND_RANGE,
    STATUS_NAMES,
    STATUS_RUNNING,
    LangevinBAOAB,
    LangevinState,
    check_timestep,
    stiffest_bond,
)
from hessid.training.md.reporters import DCDReporter, Reporter, StateDataReporter, ca_topology

__all__ = ["DEFAULT_SEED", "SimulationResult", "deterministic_torch", "failures", "load_checkpoint", "load_cg_reference",
           "potential_at_temperature", "run", "save_checkpoint", "simulate", "start_frame_pool",
           "training_temperature"]

log = logging.getLogger(__name__)

#: seed of a run that names none: fixed and non-zero (OpenMM reads 0 as "pick one at random"),
#: so two default runs are the same run; stored in ``simulation.json``
DEFAULT_SEED = 2026


def failures(state: LangevinState) -> list[dict]:
    """Stopped replicas as ``[{"replica", "step", "reason"}]`` (empty while all run)."""
    status = state.status.cpu().tolist()
    steps = state.failed_step.cpu().tolist()
    return [{"replica": r, "step": steps[r], "reason": STATUS_NAMES[s]}
            for r, s in enumerate(status) if s != STATUS_RUNNING]


def save_checkpoint(path, state: LangevinState, reporters: dict, config: dict) -> None:
    """Atomically write ``{state, reporters, config}`` with ``torch.save`` (tmp + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state": state.to_dict(), "reporters": reporters, "config": config}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu") -> tuple[LangevinState, dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` → ``(state, reporters, config)``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return LangevinState.from_dict(ckpt["state"], device), ckpt["reporters"], ckpt["config"]


def run(integrator: LangevinBAOAB, potential, state: LangevinState, n_steps: int,
        reporters: Mapping[str, Reporter] | None = None, checkpoint_path=None, checkpoint_interval: int | None = None,
        config: dict | None = None, progress: bool = True) -> LangevinState:
    """Integrate until ``state.step == n_steps``, reporting, checkpointing and logging failures.

    Reporters are called after steps that are multiples of their ``interval`` (OpenMM
    convention: step 0 is not reported). At every ``checkpoint_interval`` steps and at the end
    the reporters flush and the checkpoint (state + reporter bookkeeping + ``config``) is
    written, so a killed run resumes to the same trajectory. Stops early when every replica
    has failed.

    Args:
        integrator: :class:`LangevinBAOAB`.
        potential: ``CGPotential``-like callable.
        state: start state (step 0 or a resumed checkpoint).
        n_steps: total step count to reach (not additional steps).
        reporters: ``{name: reporter}``, each a
            :class:`~hessid.training.md.reporters.Reporter` (``interval``, ``report``, ``flush``).
        checkpoint_path: where to checkpoint (None: no checkpoints).
        checkpoint_interval: steps between checkpoints (None: only at the end).
        config: JSON-able run description stored in the checkpoint.
        progress: show a tqdm bar (steps/s, running replicas).

    Returns:
        The final :class:`LangevinState`.
    """
    reporters = reporters or {}
    known_failed: set[int] = {f["replica"] for f in failures(state)}
    report_steps = sorted({r.interval for r in reporters.values()} | ({checkpoint_interval} if checkpoint_interval else set()))
    check_every = min(report_steps) if report_steps else 100
    bar = tqdm(total=n_steps, initial=state.step, unit="step", disable=not progress,
               dynamic_ncols=True, desc="CG MD")
    try:
        while state.step < n_steps:
            state = integrator.step(state, potential)
            s = state.step
            bar.update(1)
            for rep in reporters.values():
                if s % rep.interval == 0:
                    rep.report(state, integrator)
            if s % check_every == 0 or s == n_steps:
                new = [f for f in failures(state) if f["replica"] not in known_failed]
                for f in new:
                    msg = f"replica {f['replica']} stopped at step {f['step']}: {f['reason']}"
                    log.warning(msg)
                    bar.write("WARNING: " + msg)
                    known_failed.add(f["replica"])
                bar.set_postfix(running=state.n_replicas - len(known_failed), refresh=False)
                if len(known_failed) == state.n_replicas:
                    bar.write("all replicas stopped; ending the run early")
                    break
            if checkpoint_path is not None and checkpoint_interval and s % checkpoint_interval == 0:
                save_checkpoint(checkpoint_path, state, {k: r.flush() for k, r in reporters.items()},
                                config or {})
    finally:
        bar.close()
    saved = {k: r.flush() for k, r in reporters.items()}
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, state, saved, config or {})
    return state


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` produced.

    Attributes:
        directory: output folder.
        trajectories: per-replica DCD paths (mdtraj-readable with ``topology``).
        topology: Cα PDB path.
        n_steps: steps integrated.
        frames: frames per replica.
        failures: stopped replicas ``[{"replica", "step", "reason"}]``.
        steps_per_second: integration speed of this invocation (steps × 1, not × replicas).
    """

    directory: Path
    trajectories: list[Path]
    topology: Path
    n_steps: int
    frames: list[int]
    failures: list[dict]
    steps_per_second: float


def load_cg_reference(path) -> dict:
    """Read the CG part of a hessid dataset file (docs/architecture.md, "Dataset file") with
    :func:`hessid.training.data.reader.open_dataset`.

    Args:
        path: dataset ``.h5`` path (or name/folder, :func:`hessid.training.data.io.dataset_path`).

    Returns:
        dict with ``positions`` (T, n, 3) float64 Å, ``bead_types`` (n,) int64 (zeros when not
        stored), ``time`` (T,) ps (or None), ``temperature`` K (or None: not stored, or the file
        holds several), ``temperatures`` (the distinct ones, K, ascending),
        ``frame_temperatures`` (T,) float64 K of each frame (None when the file holds one or
        none), ``residue_names`` (n,) or None, ``name``, ``path``.

    Raises:
        DatasetNotFoundError: no such file (also a ``FileNotFoundError``).
        DatasetError: not a hessid dataset, or it has no ``cg/coordinates`` (the message names
            the file and what is missing).
    """
    with open_dataset(path) as ds:
        cg = ds.cg
        pos = np.asarray(cg.coordinates(), dtype=np.float64)
        types = cg.bead_types if cg.has(sc.CG_BEAD_TYPES) else np.zeros(pos.shape[1], np.int64)
        t = np.asarray(ds.time(), dtype=np.float64) if ds.has(sc.TIME) else None
        residue_names = cg.residue_names if cg.has(sc.CG_BEAD_TYPES) else None
        frame_t = ds.temperatures() if ds.is_multi_temperature else None
        return {"positions": pos, "bead_types": types, "time": t, "temperature": ds.temperature,
                "temperatures": ds.temperature_values, "frame_temperatures": frame_t,
                "residue_names": residue_names, "name": ds.name, "path": str(path)}


def start_frame_pool(frame_temperatures: np.ndarray | None, n_frames: int, temperature: float) -> np.ndarray:
    """Frames of a reference that CG MD at ``temperature`` may start from.

    A single-temperature reference (``frame_temperatures`` None): all ``n_frames``. A
    multi-temperature one: the frames generated at the stored temperature nearest to
    ``temperature`` (that temperature itself when stored; the lower one on a tie), so replicas
    start from configurations typical of the thermostat they run at, not from a mixture.

    Args:
        frame_temperatures: (T,) float64 K per frame, or None.
        n_frames: T.
        temperature: the simulation's, K.

    Returns:
        (m,) int64 frame indices, ascending.
    """
    if frame_temperatures is None:
        return np.arange(n_frames)
    ft = np.asarray(frame_temperatures, dtype=np.float64)
    values = np.unique(ft)
    nearest = values[np.argmin(np.abs(values - float(temperature)))]  # first (lower) on a tie
    return np.flatnonzero(ft == nearest)


#: environment of :func:`deterministic_torch`: cuBLAS's deterministic workspace, and one thread
#: for OpenMM CPU-platform contexts created inside the block (the AA MD of ``hessid demo``)
_DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OPENMM_CPU_THREADS": "1"}


@contextlib.contextmanager
def deterministic_torch(enabled: bool = True):
    """Within the block: one torch CPU thread and torch's deterministic algorithms (on CUDA also
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; OpenMM CPU contexts created inside get
    ``OPENMM_CPU_THREADS=1``), so that a fixed seed gives bit-identical numbers on the
    same machine and library versions; restored afterwards. Costs: one thread only (CG MD of
    ≤ 100 beads already runs on one; training is up to ~2× slower on 2 cores) and, on GPUs, the
    slower deterministic kernels. Not covered: other machines, other torch/BLAS builds.

    Args:
        enabled: False: do nothing.
    """
    if not enabled:
        yield
        return
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    env = {k: os.environ.get(k) for k in _DETERMINISTIC_ENV}
    for k, v in _DETERMINISTIC_ENV.items():
        os.environ.setdefault(k, v)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1], warn_only=old[2])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)


def training_temperature(potential) -> float | None:
    """The temperature a temperature-unaware potential was trained at, K, when it says so: its
    ``training_temperature`` attribute, else ``metadata["temperature"]``, else its prior's fit
    temperature (``prior.params.temperature``, :class:`~hessid.training.learning.priors.PriorParameters`).

    Returns:
        float K, or None when the potential records none (e.g. the harmonic stand-in).
    """
    for value in (getattr(potential, "training_temperature", None),
                  (getattr(potential, "metadata", None) or {}).get("temperature")):
        if value is not None:
            return float(value)
    params = getattr(getattr(potential, "prior", None), "params", None)
    value = getattr(params, "temperature", None)
    return None if value is None else float(value)


def potential_at_temperature(potential, temperature: float) -> tuple[torch.nn.Module, dict]:
    """The potential to integrate at ``temperature`` K, and what was done (for ``simulation.json``).

    A temperature-aware model (attribute ``temperature_aware = True``; docs/architecture.md,
    the multi-temperature contract) is replaced by its fixed-β view
    ``potential.at_temperature(temperature)`` — a module with ``CGPotential``'s interface whose
    energy is the free energy A_θ(R, β) at that β (kcal/mol). Any other potential is used as it
    is; when it records a training temperature (:func:`training_temperature`) other than
    ``temperature`` (by more than 1e-6 K), one warning line says that its free energy is reused
    at another temperature (the entropic part −T S(R) of A does not follow T, so populations
    can move the wrong way).

    Args:
        potential: ``CGPotential``-like module.  temperature: K, > 0.

    Returns:
        ``(module, info)``; info: ``temperature_aware`` (bool), ``training_temperature`` (K or
        None), ``temperature`` (K).

    Raises:
        TypeError: ``temperature_aware`` is set but the model has no callable ``at_temperature``.
    """
    t = float(temperature)
    if getattr(potential, "temperature_aware", False):
        at = getattr(potential, "at_temperature", None)
        if not callable(at):
            raise TypeError(f"{type(potential).__name__} says temperature_aware but has no at_temperature(T)")
        return at(t), {"temperature_aware": True, "training_temperature": None, "temperature": t}
    t_train = training_temperature(potential)
    if t_train is not None and abs(t_train - t) > 1e-6:
        log.warning("the model is not temperature-aware and was trained at %g K: simulating it at %g K reuses its "
                    "%g K free energy (its entropic part does not follow the temperature; use a temperature-aware "
                    "model to transfer)", t_train, t, t_train)
    return potential, {"temperature_aware": False, "training_temperature": t_train, "temperature": t}


def _versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("hessid", "torch", "numpy", "mdtraj"):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            out[pkg] = None
    return out


def simulate(potential, out_dir, *, n_steps: int, save_interval: int = 100,
             reference=None, start_positions=None, bead_types=None, n_replicas: int = 20,
             timestep: float = 2.0, temperature: float = 300.0, friction: float = 1.0,
             masses: float | Sequence[float] = 12.0, seed: int = DEFAULT_SEED, device: str = "cpu",
             dtype: torch.dtype = torch.float32, checkpoint_interval: int | None = None,
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             residue_names: Sequence[str] | None = None, bond_range=DEFAULT_BOND_RANGE,
             provenance: dict | None = None, threads: int | None = 1,
             reporters: Mapping[str, Reporter] | None = None,
             deterministic: bool = False) -> SimulationResult:
    """Run R replicas of CG Langevin MD and write mdtraj-readable trajectories.

    Starting structures: ``start_positions`` (R, n, 3) Å or (n, 3) (copied to every replica), or
    R frames drawn without replacement (seeded by ``seed``) from ``reference`` — a hessid
    dataset HDF5 path (``cg/coordinates``) or an array (T, n, 3) Å.

    Writes into ``out_dir``: ``replica_XXX.dcd`` (Å in the file, nm once loaded by mdtraj),
    ``topology.pdb`` (Cα), ``state.csv`` (energies, kinetic temperatures),
    ``checkpoint.pt`` and ``simulation.json`` (units, parameters, start frames, seeds,
    versions, failures, steps/s). ``mdtraj.load(out/'replica_000.dcd', top=out/'topology.pdb')``.

    Args:
        potential: ``CGPotential``-like callable (kcal/mol, Å). A temperature-aware model is
            integrated through its fixed-β view ``potential.at_temperature(temperature)``; a
            temperature-unaware one trained at another temperature is used with one warning
            (:func:`potential_at_temperature`).
        out_dir: output folder.
        n_steps: total integration steps.
        save_interval: frame stride in steps.
        reference, start_positions: see above (exactly one).
        bead_types: (n,) long; from the dataset when ``reference`` is a path, else zeros.
        n_replicas: R (ignored when ``start_positions`` is (R, n, 3)).
        timestep: fs. temperature: K. friction: 1/ps. masses: amu, float or (n,).
        seed: draws start frames, velocities and noise.
        device, dtype: where and in which precision the state lives.
        checkpoint_interval: steps between checkpoints (default: 10 × save_interval); a
            multiple of ``save_interval`` is required for exact resumption.
        resume: continue from ``out_dir/checkpoint.pt`` when present (bit-identical result).
        overwrite: replace an existing run in ``out_dir``.
        progress: tqdm bar.
        residue_names: for the Cα topology (from the dataset vocabulary when available).
        bond_range: (min, max) Å for the blow-up check, or None.
        provenance: extra JSON-able provenance (model path, training run, …).
        reporters: extra ``{name: Reporter}`` (:class:`~hessid.training.md.reporters.Reporter`)
            called after the built-in ``"trajectory"`` (DCD) and ``"state_data"`` (CSV) ones;
            their :meth:`flush` results go into the checkpoint and come back to ``restore`` on
            resume.
        threads: torch CPU threads during the run (restored afterwards; None: leave as is).
            CG systems of ≤ 100 beads are dominated by per-op overhead, where one thread is
            fastest (multi-threaded small ops were up to 9× slower on a loaded 2-core machine).
        deterministic: bit-identical trajectories for a fixed seed on the same machine and
            library versions (:func:`deterministic_torch`: one CPU thread, torch's
            deterministic algorithms; on CUDA also cuBLAS workspace settings, slower).

    Returns:
        :class:`SimulationResult`.

    Raises:
        ValueError: neither or both of ``reference``/``start_positions``, too few reference
            frames, bad shapes, a count < 1 (``n_steps``, ``save_interval``, ``n_replicas``), a
            non-positive timestep or temperature, a timestep beyond the stability limit of the
            potential's stiffest bond (:func:`~hessid.training.md.integrator.check_timestep`), a checkpoint interval that is not a multiple of the stride, an
            extra reporter named ``"trajectory"`` or ``"state_data"``, or a checkpoint written
            with other settings.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    for name, value in (("n_steps", n_steps), ("save_interval", save_interval),
                        ("n_replicas", n_replicas)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value, unit in (("timestep", timestep, "fs"), ("temperature", temperature, "K")):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 ({unit}), got {value!r}")
    if not (math.isfinite(friction) and friction >= 0):
        raise ValueError(f"friction must be >= 0 (1/ps), got {friction!r}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} is a file, not a folder")
    checkpoint_interval = checkpoint_interval or 10 * save_interval
    if checkpoint_interval < 1 or checkpoint_interval % save_interval:
        raise ValueError(f"checkpoint_interval ({checkpoint_interval}) must be a positive multiple "
                         f"of save_interval ({save_interval})")
    potential, thermal = potential_at_temperature(potential, temperature)  # (warns once when T-unaware)
    omega_dt = check_timestep(timestep, masses, stiffest_bond(potential))
    if (reference is None) == (start_positions is None):
        raise ValueError("give exactly one of reference= or start_positions=")
    clash = sorted({"trajectory", "state_data"} & set(reporters or {}))
    if clash:
        raise ValueError(f"reporter names {clash} are reserved for the built-in reporters")

    start_info: dict = {}
    if reference is not None:
        if isinstance(reference, str | os.PathLike):
            ref = load_cg_reference(reference)
            frames, start_info["reference"] = ref["positions"], ref["path"]
            if bead_types is None:
                bead_types = ref["bead_types"]
            residue_names = residue_names or ref["residue_names"]
            frame_t = ref["frame_temperatures"]
        else:
            frames, frame_t = np.asarray(reference, dtype=np.float64), None
        pool = start_frame_pool(frame_t, len(frames), temperature)
        at = ""
        if frame_t is not None:
            start_info["start_temperature"] = t_start = float(frame_t[pool[0]])
            at = f" at {t_start:g} K"
            if t_start != float(temperature):
                log.info("start frames drawn from the reference's frames%s (nearest stored temperature to %g K)",
                         at, temperature)
        if len(pool) < n_replicas:
            raise ValueError(f"reference holds {len(pool)} frames{at}, need {n_replicas} start frames")
        idx = np.sort(pool[np.random.default_rng(seed).choice(len(pool), n_replicas, replace=False)])
        start = torch.as_tensor(frames[idx])  # (R, n, 3)
        start_info["reference_frames"] = idx.tolist()
    else:
        start = torch.as_tensor(np.asarray(start_positions, dtype=np.float64))
        if start.ndim == 2:
            start = start.expand(n_replicas, *start.shape).clone()  # (R, n, 3)
        start_info["given"] = True
    if start.ndim != 3 or start.shape[-1] != 3 or start.shape[1] < 2:
        raise ValueError(f"start positions must be (R, n, 3) or (n, 3) Å with n >= 2 beads, got "
                         f"{tuple(start.shape)}")
    if not torch.isfinite(start).all():
        raise ValueError("start positions hold non-finite values")
    n_rep, n_beads = start.shape[0], start.shape[1]
    if bead_types is None:
        bead_types = np.zeros(n_beads, dtype=np.int64)
    integrator = LangevinBAOAB(timestep=timestep, temperature=temperature, friction=friction,
                               masses=torch.as_tensor(masses, dtype=torch.float64),
                               bead_types=torch.as_tensor(np.asarray(bead_types)),
                               bond_range=tuple(bond_range) if bond_range is not None else None)
    config = {"n_replicas": n_rep, "n_beads": n_beads, "n_steps": n_steps, "save_interval": save_interval,
              "checkpoint_interval": checkpoint_interval, "seed": seed, "dtype": str(dtype),
              **integrator.config()}
    if deterministic:
        config["deterministic"] = True
    config_for_match = {k: v for k, v in config.items() if k != "n_steps"}

    have_run = ckpt_path.exists() or any(out.glob("replica_*.dcd"))
    if have_run and not resume:
        if not overwrite:
            raise FileExistsError(f"{out} already holds a simulation; pass resume=True or overwrite=True")
        for p in [*out.glob("replica_*.dcd"), ckpt_path, out / "state.csv", out / "simulation.json",
                  out / "topology.pdb"]:
            p.unlink(missing_ok=True)

    out.mkdir(parents=True, exist_ok=True)  # every check above passed: now create files
    topology = ca_topology(n_beads, residue_names)
    builtin = {
        "trajectory": DCDReporter(out, save_interval, n_rep, n_beads, save_interval * timestep * 1e-3, topology),
        "state_data": StateDataReporter(out / "state.csv", save_interval),
    }
    all_reporters = {**builtin, **(reporters or {})}
    potential = potential.to(device) if hasattr(potential, "to") else potential
    if resume and ckpt_path.exists():
        state, saved, old_config = load_checkpoint(ckpt_path, device)
        old_match = {k: v for k, v in old_config.items() if k != "n_steps"}
        if old_match != config_for_match:
            diff = sorted(k for k in set(old_match) | set(config_for_match)
                          if old_match.get(k) != config_for_match.get(k))
            raise ValueError(f"checkpoint in {out} was written with different settings: {diff}")
        for name, rep in all_reporters.items():
            rep.restore(saved.get(name, {}))
        log.info("resuming %s at step %d", out, state.step)
    else:
        if resume:
            log.info("no checkpoint in %s; starting a new run", out)
        state = integrator.init(start.to(device=device, dtype=dtype), potential, seed=seed)

    step0, t0 = state.step, time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None and str(device).startswith("cpu"):
        torch.set_num_threads(int(threads))
    try:
        with deterministic_torch(deterministic):
            state = run(integrator, potential, state, n_steps, all_reporters, ckpt_path,
                        checkpoint_interval, config, progress)
    finally:
        torch.set_num_threads(old_threads)
    elapsed = time.perf_counter() - t0
    speed = (state.step - step0) / elapsed if elapsed > 0 and state.step > step0 else float("nan")
    fails = failures(state)
    for f in fails:
        log.warning("replica %d stopped at step %d: %s", f["replica"], f["step"], f["reason"])
    traj = [f.path for f in builtin["trajectory"].files]
    meta = {
        "format": "DCD per replica + Cα PDB topology; load with mdtraj.load(dcd, top='topology.pdb')",
        "units": {"positions_in_files": "angstrom (mdtraj converts to nm)", "time": "ps",
                  "energy": "kcal/mol", "temperature": "K", "mass": "amu", "friction": "1/ps",
                  "timestep": "fs"},
        "frame_interval_ps": save_interval * timestep * 1e-3,
        "first_frame_step": save_interval,
        "config": config, "start": start_info,
        "frames_per_replica": builtin["trajectory"].frames_written,
        "trajectories": [p.name for p in traj], "topology": "topology.pdb",
        "failures": fails, "steps_completed": state.step,
        "omega_max_dt": omega_dt, "seed": seed, "deterministic": bool(deterministic),
        "steps_per_second_last_invocation": speed, "device": str(device),
        "versions": _versions(), "provenance": provenance or {}, "model_temperature": thermal,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "simulation.json").write_text(json.dumps(meta, indent=2, default=str))
    return SimulationResult(directory=out, trajectories=traj, topology=out / "topology.pdb",
                            n_steps=state.step, frames=list(builtin["trajectory"].frames_written),
                            failures=fails, steps_per_second=speed)
