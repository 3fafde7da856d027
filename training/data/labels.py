"""Conditional labels: mean force and CG Hessian at chosen CG configurations (``hessid targets
--conditional``; docs/data.md, "Conditional labels").

For a CG configuration R of a mapped dataset (a selection map: each bead is one atom) the
frozen-bead AA ensemble — bead atoms fixed at R, the rest sampled by Langevin MD
(:func:`hessid.training.data.conditional.sample_frozen`) — gives, with m samples r_t and the
source's own projector P = Q ⊗ I₃ (docs/identities.md §2)::

    F(R)    = ⟨P f⟩_R                                     mean force, kcal/mol/Å
    H_CG(R) = ⟨P ∇²U Pᵀ⟩_R − β Ĉov_R(P f)               CG Hessian, kcal/mol/Å² (m − 1 divisor)

(the mean-force identity and the linear-map CG Hessian; cf. mean-force matching with
conditionally sampled forces, Park, Chennakesavalu & Rotskoff 2026). Term 1 per sample is the
full block P∇²UPᵀ by central differences of OpenMM forces
(:func:`hessid.training.data.targets.compute_targets` with ``full_block=True``); the estimate and
its block standard errors are :func:`hessid.training.data.conditional.estimate_cg_hessian`.

Errors. The samples are a time series: the statistical inefficiency g = 1 + 2τ_int of P f
(:func:`statistical_inefficiency`, pymbar's estimator per component, the max over the 3n
components) measures their correlation, and m/g is the effective sample count. Block standard
errors (:func:`block_mean_sem`, n_blocks contiguous blocks) carry the correlation as long as a
block is several g long; a label whose blocks are shorter than 5 g is reported with a one-line
warning. The covariance term's bias from correlated samples is of relative order (g − 1)/m and
is not corrected.

Cost. :func:`aa_force_evaluations` counts AA force evaluations: one per MD step (equilibration
and production) and two per FD direction per sample (central differences; the full block has
3n directions). The force/energy evaluation OpenMM makes when a frame is saved is not counted
(the same convention for plain training frames, whose AA MD saves frames the same way).

Output (layout: :mod:`hessid.training.data.schema`, "conditional labels"): the standard mapped
layout with one frame per configuration, so :func:`hessid.training.learning.datasets.load_protein`
trains on it unchanged (``cg/forces`` = F(R) for mode "fm", ``cg/hessian_block`` = H_CG(R) for
mode "fm_hessian" with γ = 0), plus ``labels/`` (errors, g, costs) and provenance attributes.
The AA part holds the source's AA frame at each R; its AA forces are single-frame forces, not
labels. :func:`read_labels` reads a labels file as :class:`ConditionalLabels`.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time as _time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from hessid.maps import LinearMap
from hessid.training.data import schema as sc
from hessid.training.data.cg_map import write_cg
from hessid.training.data.conditional import FROZEN_MASS_AMU, estimate_cg_hessian, sample_frozen
from hessid.training.data.io import (
    append_frames,
    commit,
    create_dataset,
    dataset_path,
    topology_from_pdb,
)
from hessid.training.data.reader import open_dataset
from hessid.training.data.schema import DatasetError
from hessid.training.data.targets import compute_targets

__all__ = ["ConditionalLabels", "LabelsInterrupted", "LabelsResult", "aa_force_evaluations", "block_mean_sem",
           "compute_conditional_labels", "config_seed", "evenly_spaced_frames", "pymbar_timeseries", "read_labels",
           "statistical_inefficiency"]  # fmt: skip

#: version of the labels layout (stored in the settings; a rerun with another version is refused)
LABELS_VERSION = 1
#: smallest block length, in units of g, below which the block errors are reported as unreliable
MIN_BLOCK_LENGTH_IN_G = 5.0
#: frames per compute_targets chunk (commit granularity inside one configuration)
_TARGET_CHUNK = 50


class LabelsInterrupted(RuntimeError):
    """Raised by :func:`compute_conditional_labels` when ``interrupt_after_configs`` is reached (test
    hook that behaves like a killed run: finished configurations are committed)."""


# ----------------------------------------------------------------------------- estimators


def pymbar_timeseries():
    """pymbar.timeseries, imported on first use with pymbar's import-time log banners (JAX, the
    timeseries caveat) silenced: they go through ``logging`` at WARNING level."""
    for name in ("pymbar", "pymbar.timeseries", "pymbar.mbar_solvers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from pymbar import timeseries  # noqa: PLC0415 # optional: late, so its import banners are silenced first

    return timeseries


def statistical_inefficiency(series, mintime: int = 3) -> float:
    """Statistical inefficiency g = 1 + 2 τ_int of a time series, max over its components.

    g is pymbar's estimator (``pymbar.timeseries.statistical_inefficiency``, Chodera et al., JCTC
    2007: g = 1 + 2 Σ_{t≥1} (1 − t/m) C(t)/C(0), summed until C(t) first drops below 0 after
    ``mintime`` lags), applied to each component separately; components that are constant
    (zero variance) are skipped. For an AR(1) series with coefficient ρ, g = (1 + ρ)/(1 − ρ).

    Args:
        series: (m, ...) array, m ≥ 2 samples in time order (e.g. (m, n, 3) P f, kcal/mol/Å).
        mintime: lags always summed (pymbar's ``mintime``).

    Returns:
        g ≥ 1 (float, dimensionless); 1.0 when every component is constant.

    Raises:
        ValueError: fewer than 2 samples, or NaN/inf in the series.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] < 2:
        raise ValueError(f"need a series of at least 2 samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the series contains NaN or inf")
    x = x.reshape(x.shape[0], -1)
    ts = pymbar_timeseries()
    gs = [float(ts.statistical_inefficiency(col, fast=False, mintime=int(mintime)))
          for col in x.T if np.ptp(col) > 0]  # fmt: skip
    return max(gs, default=1.0)


def block_mean_sem(x, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over samples and its block standard error.

    The m samples are cut into ``n_blocks`` contiguous blocks (``np.array_split``, the blocks of
    :func:`~hessid.training.data.conditional.estimate_cg_hessian`); sem = std(block means,
    ddof = 1)/√n_blocks (Flyvbjerg & Petersen, J. Chem. Phys. 1989). It accounts for the
    correlation of the samples when a block is much longer than g (:func:`statistical_inefficiency`).

    Args:
        x: (m, ...) float array, samples in time order.
        n_blocks: 2 ≤ n_blocks ≤ m // 2.

    Returns:
        ``(mean, sem)``, each of shape x.shape[1:], float64, in the units of x.

    Raises:
        ValueError: ``n_blocks`` out of range.
    """
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    if not 2 <= int(n_blocks) <= m // 2:
        raise ValueError(f"need 2 <= n_blocks <= m // 2 (m={m} samples), got n_blocks={n_blocks}")
    means = np.stack([x[sl].mean(axis=0) for sl in np.array_split(np.arange(m), int(n_blocks))])
    return x.mean(axis=0), means.std(axis=0, ddof=1) / math.sqrt(int(n_blocks))


def aa_force_evaluations(frames: int, md_steps_per_frame: int, fd_directions: int = 0,
                         equilibration_steps: int = 0) -> int:
    """AA force evaluations of a data-generation recipe (the study's AA cost unit).

        evaluations = equilibration_steps + frames · (md_steps_per_frame + 2 · fd_directions)

    One per MD step; two per central-difference direction per frame (``term1_fd``: f(r ± s u)).
    A plain training frame with k Term-1 probes saved every s MD steps is
    ``aa_force_evaluations(1, s, k)`` (e.g. 125 + 8 for s = 125, k = 4); a conditional label of m
    samples every s steps after e equilibration steps with the full 3n × 3n block is
    ``aa_force_evaluations(m, s, 3n, e)``. The force call made when a frame is saved is not
    counted (module docstring).

    Args:
        frames: saved frames (samples), ≥ 0.  md_steps_per_frame: MD steps per saved frame, ≥ 0.
        fd_directions: FD directions per frame (k probes, or 3n for the full block), ≥ 0.
        equilibration_steps: MD steps before the first frame, ≥ 0.

    Returns:
        int count.

    Raises:
        ValueError: a negative argument.
    """
    args = {"frames": frames, "md_steps_per_frame": md_steps_per_frame, "fd_directions": fd_directions,
            "equilibration_steps": equilibration_steps}  # fmt: skip
    bad = {k: v for k, v in args.items() if int(v) < 0}
    if bad:
        raise ValueError(f"aa_force_evaluations: negative arguments {bad}")
    return int(equilibration_steps) + int(frames) * (int(md_steps_per_frame) + 2 * int(fd_directions))


def evenly_spaced_frames(n_frames: int, configs: int) -> np.ndarray:
    """``configs`` evenly spaced frame indices of a dataset of ``n_frames`` frames (first and last
    included): ``round(linspace(0, T − 1, C))``.

    Returns:
        (C,) int64, strictly increasing.

    Raises:
        ValueError: configs < 1 or configs > n_frames.
    """
    if not 1 <= int(configs) <= int(n_frames):
        raise ValueError(f"configs must lie in [1, {n_frames}] (frames of the source), got {configs}")
    if int(configs) == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, int(n_frames) - 1, int(configs))).astype(np.int64)


def config_seed(seed: int, frame: int) -> int:
    """Langevin/velocity seed of the configuration at source row ``frame``: a function of
    ``(seed, frame)`` only (never of worker or order), in [1, 2³⁰] (OpenMM reads 0 as random)."""
    state = np.random.SeedSequence([int(seed), int(frame)]).generate_state(1, dtype=np.uint32)[0]
    return 1 + int(state) % (2**30)


# ----------------------------------------------------------------------------- worker


def _sampled(path: Path, n_frames: int) -> bool:
    """The frozen-bead file exists, opens and holds all its frames."""
    try:
        with open_dataset(path) as ds:
            return ds.n_frames == int(n_frames) and ds.has(sc.FORCES)
    except (OSError, ValueError):
        return False


def _has_block(path: Path) -> bool:
    """compute_targets(full_block=True) has started on the file (so its cg/ group is complete)."""
    try:
        with open_dataset(path) as ds:
            return ds.has_hessian_block
    except (OSError, ValueError):
        return False


def _label_one(job: dict) -> dict:
    """One configuration: frozen-bead MD → map with the source's S, Q → full Term-1 blocks →
    estimates. Resumes inside the configuration (a complete sample file is reused, the FD blocks
    continue from their done flags). Runs in a worker process (1 OpenMM thread)."""
    t0 = _time.perf_counter()
    s = job["settings"]
    scratch = Path(job["scratch"])
    m, nb = int(s["samples"]), int(s["n_blocks"])
    if not _has_block(scratch):
        if not _sampled(scratch, m):
            top = topology_from_pdb(job["topology"], f"{job['source']}: topology")
            sample_frozen((top, job["positions"]), job["frozen"], scratch, n_frames=m, stride=s["stride"],
                          temperature=s["temperature"], timestep=s["timestep_fs"], friction=s["friction"],
                          solvent=s["solvent"], forcefield=s["forcefield"], constraints=s["constraints"],
                          equilibration_steps=s["equilibration_steps"], seed=job["seed"], platform=s["platform"],
                          threads=1, progress=False, frozen_mass=s["frozen_mass_amu"], overwrite=True)  # fmt: skip
        write_cg(scratch, LinearMap(job["weights"], job["projector"]), job["bead_types"], job["bonds"],
                 job["vocabulary"], overwrite=True, constraint_aware=False)  # the source's own Q, as is
    compute_targets(scratch, full_block=True, epsilon_nm=s["epsilon_nm"], platform=s["platform"], threads=1,
                    workers=0, chunk_frames=_TARGET_CHUNK, resume=True, progress=False)  # fmt: skip
    with open_dataset(scratch) as ds:
        pf = ds.cg.forces()  # (m, n, 3) kcal/mol/Å
    est = estimate_cg_hessian(scratch, temperature=s["temperature"], n_blocks=nb)
    mean, sem = block_mean_sem(pf, nb)
    g = statistical_inefficiency(pf)
    n = pf.shape[1]
    return {
        "index": job["index"], "frame": job["frame"], "mean_force": mean, "mean_force_sem": sem,
        "hessian": est["hessian"], "hessian_sem": est["sem"], "term1": est["term1"], "term2": est["term2"],
        "g": g, "n_samples": int(est["n_frames"]),
        "aa_force_evaluations": aa_force_evaluations(m, s["stride"], 3 * n, s["equilibration_steps"]),
        "drift": float(est["drift_angstrom"]) if est["drift_angstrom"] is not None else math.nan,
        "wall_s": _time.perf_counter() - t0,
    }  # fmt: skip


# ----------------------------------------------------------------------------- driver


@dataclass
class LabelsResult:
    """Summary of a :func:`compute_conditional_labels` run.

    Attributes:
        path: the labels file.  n_configs: C.  configs_computed / configs_skipped: this call.
        wall_s: seconds of the call.  config_wall_s: {source frame: seconds} of the
            configurations computed by this call (MD + FD + estimates, in the worker).
        aa_force_evaluations: total over all C configurations (settings-derived, exact).
    """

    path: Path
    n_configs: int
    configs_computed: int = 0
    configs_skipped: int = 0
    wall_s: float = 0.0
    config_wall_s: dict = field(default_factory=dict)
    aa_force_evaluations: int = 0


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


def _selection_atoms(path, weights: np.ndarray) -> np.ndarray:
    """Bead atoms of a selection map (each row of S one atom with weight 1), else DatasetError."""
    w = np.asarray(weights, dtype=np.float64)
    atoms = np.argmax(np.abs(w), axis=1)
    for i, a in enumerate(atoms):
        row = w[i].copy()
        if abs(row[a] - 1.0) > 1e-12 or np.any(np.delete(row, a) != 0.0):
            raise DatasetError(path, sc.CG_WEIGHTS, f"bead {i} is not a selection (one atom with weight 1): "
                               "conditional labels freeze each bead's atom, so they need a selection map")
    if np.unique(atoms).size != atoms.size:
        raise DatasetError(path, sc.CG_WEIGHTS, "two beads select the same atom")
    return atoms.astype(np.int64)


def _source_info(source: Path, frames, overrides: dict) -> dict:
    """Everything read from the source: checks, settings parts and per-frame arrays."""
    with open_dataset(source) as ds:
        sc.refuse_labels_file(ds.attrs, source, "using it as the source of")
        cg = ds.cg  # NotMappedError names the file
        if ds.has(sc.BOX):
            raise DatasetError(source, sc.BOX, "periodic (explicit-solvent) data: frozen-bead sampling "
                               "supports implicit solvent or vacuum only")  # fmt: skip
        t = ds.n_frames
        fr = np.asarray(frames, dtype=np.int64).reshape(-1)
        if fr.size == 0:
            raise ValueError("frames: no configuration chosen")
        bad = fr[(fr < 0) | (fr >= t)]
        if bad.size:
            raise ValueError(f"frames: {int(bad[0])} is out of range [0, {t}) of {source}")
        if np.unique(fr).size != fr.size:
            raise ValueError(f"frames: repeated frame indices {sorted(fr.tolist())}")
        fr = np.sort(fr)
        weights, projector = cg.weights, cg.projector
        frozen = _selection_atoms(source, weights)
        md = json.loads(ds.attr(sc.ATTR_MD_CONFIG) or "{}")
        temperature = overrides.get("temperature") or ds.temperature
        if temperature is None:
            raise DatasetError(source, "/", "no 'temperature' attribute; pass temperature")
        solvent = overrides.get("solvent") or ds.attr(sc.ATTR_SOLVENT)
        if solvent is None:
            raise DatasetError(source, "/", "no 'solvent' attribute; pass solvent")
        constraints = overrides.get("constraints") or ds.constraints or (
            "HBonds" if cg.projector_constraints == "HBonds" else "none")
        info = {
            "frames": fr, "frozen": frozen, "weights": weights, "projector": projector,
            "bead_types": cg.bead_types, "bonds": cg.bonds, "vocabulary": cg.vocabulary,
            "topology": ds.topology_text, "positions": ds.coordinates(fr), "cg_coordinates": cg.coordinates(fr),
            "forces": ds.forces(fr), "time": ds.time(fr), "frame_id": ds.frame_id(fr),
            "potential_energy": ds.potential_energy(fr), "root_attrs": ds.attrs,
            "temperature": float(temperature), "solvent": str(solvent), "constraints": str(constraints),
            "forcefield": overrides.get("forcefield") or str(ds.attr(sc.ATTR_FORCEFIELD, "amber14-all.xml")),
            "friction": float(overrides.get("friction") or md.get("friction", 1.0)),
            "forcefield_hash": ds.forcefield_hash or "", "projector_sha256": _sha256(projector),
        }  # fmt: skip
    with h5py.File(source, "r") as h5:  # the map's provenance attributes, copied as they are
        info["map_attrs"] = {key: dict(h5[key].attrs) for key in (sc.CG, sc.CG_WEIGHTS, sc.CG_PROJECTOR)}
    return info


def _create_output(out: Path, info: dict, settings: dict, source: Path) -> None:
    """Write the labels file with every array allocated (NaN / 0) and the done flags 0, to a
    temporary name first (a kill leaves no half-created file)."""
    c = len(info["frames"])
    n = info["weights"].shape[0]
    d = 3 * n
    root = {k: v for k, v in info["root_attrs"].items()
            if k not in (sc.ATTR_FORMAT_VERSION, sc.ATTR_VERSIONS, *sc.ROOT_UNITS)}  # fmt: skip
    root.update({sc.ATTR_NAME: out.stem, sc.ATTR_KIND: sc.KIND_CONDITIONAL_LABELS,
                 sc.ATTR_LABELS_SETTINGS: json.dumps(settings, sort_keys=True),
                 sc.ATTR_LABELS_SOURCE: str(source),
                 sc.ATTR_LABELS_SOURCE_FORCEFIELD_HASH: info["forcefield_hash"],
                 sc.ATTR_LABELS_SOURCE_PROJECTOR_SHA256: info["projector_sha256"]})  # fmt: skip
    tmp = out.with_suffix(".tmp.h5")
    h5 = create_dataset(tmp, info["topology"], root, overwrite=True)
    try:
        append_frames(h5, info["positions"], info["forces"], info["time"], info["frame_id"], info["potential_energy"])
        if info["potential_energy"] is None:
            del h5[sc.POTENTIAL_ENERGY]
        h5.create_group(sc.CG)
        h5.create_dataset(sc.CG_WEIGHTS, data=np.asarray(info["weights"], np.float64))
        h5.create_dataset(sc.CG_PROJECTOR, data=np.asarray(info["projector"], np.float64))
        for key, attrs in info["map_attrs"].items():
            h5[key].attrs.update(attrs)
        bt = h5.create_dataset(sc.CG_BEAD_TYPES, data=np.asarray(info["bead_types"], np.int64))
        bt.attrs[sc.ATTR_BEAD_VOCABULARY] = json.dumps(list(info["vocabulary"]))
        h5.create_dataset(sc.CG_BONDS, data=np.asarray(info["bonds"], np.int64).reshape(-1, 2))
        x = h5.create_dataset(sc.CG_COORDINATES, data=np.asarray(info["cg_coordinates"], np.float64))
        x.attrs[sc.ATTR_UNIT] = sc.LENGTH_UNIT
        f = h5.create_dataset(sc.CG_FORCES, data=np.full((c, n, 3), np.nan))
        f.attrs.update({sc.ATTR_UNIT: sc.FORCE_UNIT, sc.ATTR_MEANING: sc.LABELS_FORCES_MEANING})
        hb = h5.create_dataset(sc.HESSIAN_BLOCK, data=np.full((c, d, d), np.nan))
        hb.attrs.update({sc.ATTR_UNIT: sc.HESSIAN_UNIT, sc.ATTR_MEANING: sc.LABELS_HESSIAN_MEANING,
                         "layout": sc.FULL_BLOCK_LAYOUT, "probe_kind": sc.FULL_BLOCK_PROBE_KIND})  # fmt: skip
        h5.create_dataset(sc.HESSIAN_BLOCK_DONE, data=np.zeros(c, np.uint8))
        h5.create_group(sc.LABELS)
        for spec in sc.LABELS_ARRAYS:
            shape = tuple(c if a == "C" else n if a == "n" else d if a == "3n" else a for a in spec.shape)
            fill = np.nan if spec.dtype == "f8" else 0
            ds = h5.create_dataset(spec.key, data=np.full(shape, fill, dtype=spec.dtype))
            if spec.unit:
                ds.attrs[sc.ATTR_UNIT] = spec.unit
        h5[sc.LABELS_SOURCE_FRAME][...] = info["frames"]
        commit(h5)
    finally:
        h5.close()
    os.replace(tmp, out)


def _write_row(h5: h5py.File, i: int, r: dict) -> None:
    """Commit configuration i's values, then its done flag (a flag never stands for lost values)."""
    h5[sc.CG_FORCES][i] = r["mean_force"]
    h5[sc.HESSIAN_BLOCK][i] = r["hessian"]
    for key, val in ((sc.LABELS_MEAN_FORCE_SEM, r["mean_force_sem"]), (sc.LABELS_HESSIAN_SEM, r["hessian_sem"]),
                     (sc.LABELS_TERM1, r["term1"]), (sc.LABELS_TERM2, r["term2"]),
                     (sc.LABELS_STATISTICAL_INEFFICIENCY, r["g"]),
                     (sc.LABELS_EFFECTIVE_SAMPLES, r["n_samples"] / r["g"]),
                     (sc.LABELS_N_SAMPLES, r["n_samples"]), (sc.LABELS_AA_FORCE_EVALUATIONS, r["aa_force_evaluations"]),
                     (sc.LABELS_DRIFT, r["drift"])):  # fmt: skip
        h5[key][i] = val
    commit(h5)
    h5[sc.HESSIAN_BLOCK_DONE][i] = 1
    commit(h5)


def _check_resume(out: Path, settings: dict) -> None:
    with open_dataset(out) as ds:
        if ds.attr(sc.ATTR_KIND) != sc.KIND_CONDITIONAL_LABELS:
            raise DatasetError(out, None, "exists and is not a conditional-labels file (pass overwrite=True)")
        old = json.loads(ds.attr(sc.ATTR_LABELS_SETTINGS) or "{}")
    for key in sorted(set(old) | set(settings)):
        if old.get(key) != settings.get(key):
            raise DatasetError(out, None, f"resume with {key}={settings.get(key)!r} but the stored run used "
                               f"{old.get(key)!r} (pass overwrite=True to start again)")


def _scratch_file(scratch_dir: Path, frame: int) -> Path:
    """The frozen-bead sample file of the configuration at source row ``frame``."""
    return scratch_dir / f"c{int(frame):07d}.h5"


def _configs(jobs: list, workers: int):
    """Yield the finished configurations' results as they come (in order when in-process)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _label_one(job)
        return
    ex = cf.ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [ex.submit(_label_one, job) for job in jobs]
        for fut in cf.as_completed(futures):
            yield fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def compute_conditional_labels(
    source: str | Path,
    out: str | Path,
    frames,
    samples: int,
    stride: int,
    equilibration_steps: int,
    timestep: float = 2.0,
    seed: int = 0,
    workers: int = 1,
    n_blocks: int = 10,
    progress: bool = True,
    resume: bool = True,
    keep_samples: bool = False,
    overwrite: bool = False,
    temperature: float | None = None,
    friction: float | None = None,
    solvent: str | None = None,
    forcefield: str | None = None,
    constraints: str | None = None,
    epsilon_nm: float | None = None,
    platform: str = "CPU",
    frozen_mass: float = FROZEN_MASS_AMU,
    interrupt_after_configs: int | None = None,
) -> LabelsResult:
    """Conditional labels F(R) and H_CG(R) at chosen frames of a mapped dataset (module docstring).

    For each source row i in ``frames``: frozen atoms = the bead atoms (selection map), start from
    AA frame i, ``samples`` frozen-bead samples every ``stride`` MD steps after
    ``equilibration_steps`` (:func:`~hessid.training.data.conditional.sample_frozen`, seed
    :func:`config_seed` (seed, i), 1 OpenMM thread), map with the source's S and Q unchanged
    (incl. a constraint-aware or fitted projector), full FD Term-1 blocks
    (``compute_targets(full_block=True)``), then the estimates. Each configuration's sample file
    lives in ``<out stem>.scratch/`` next to ``out`` (deleted once its row is committed unless
    ``keep_samples``).

    Output layout (docs/data.md, "Conditional labels"; keys in :mod:`~hessid.training.data.schema`):
    C = len(frames) frames in ascending source order; ``cg/coordinates`` (C, n, 3) Å = R,
    ``cg/forces`` (C, n, 3) kcal/mol/Å = F(R) (NaN until done), ``cg/hessian_block``
    (C, 3n, 3n) kcal/mol/Å² = H_CG(R) (symmetrised) with ``cg/hessian_block_done`` (C,) the
    per-configuration done flag; ``labels/…`` errors, g, costs, source rows; root ``kind`` =
    "conditional_labels", ``labels_settings`` (JSON), ``labels_source``,
    ``labels_source_forcefield_hash``, ``labels_source_projector_sha256``. The AA part holds the
    source's AA frames (single-frame forces, not labels). Rows are committed (values, then the
    done flag) as configurations finish; a rerun with ``resume`` skips done configurations and
    gives the same bytes in every array as an uninterrupted run (seeds depend on (seed, i) only).

    Args:
        source: mapped dataset (``.h5`` path or name, :func:`~hessid.training.data.io.dataset_path`).
        out: the labels ``.h5`` to write.
        frames: (C,) source row indices (distinct; stored sorted).
        samples: m frozen-bead samples per configuration (≥ 2·n_blocks).
        stride: MD steps between samples (≥ 1).  equilibration_steps: MD steps before the first (≥ 0).
        timestep: fs.  seed: base seed.
        workers: processes over configurations (≤ 1: in this process); 1 OpenMM thread each.
        n_blocks: blocks of the block standard errors.
        progress: tqdm bar over configurations.
        resume: continue an existing labels file with the same settings.
        keep_samples: keep the per-configuration sample files.
        overwrite: replace an existing labels file (and its scratch folder).
        temperature, friction, solvent, forcefield, constraints: override the source's
            attributes (K, 1/ps; imports may lack them).
        epsilon_nm: FD step (default: ``compute_targets``'s for the platform precision).
        platform: OpenMM platform ("CPU"; "Reference" for double precision).
        frozen_mass: amu (``sample_frozen``).
        interrupt_after_configs: test hook: raise :class:`LabelsInterrupted` after this many
            configurations were committed by this call.

    Returns:
        :class:`LabelsResult`.

    Raises:
        DatasetNotFoundError: no source file.  NotMappedError: the source has no ``cg/``.
        DatasetError: the source map is not a selection map, the source is periodic, lacks
            temperature/solvent, or is itself a labels file; ``out`` exists with other settings.
        FileExistsError: ``out`` exists, neither ``resume`` nor ``overwrite``.
        ValueError: bad sizes, frames out of range or repeated.
        FrozenAtomsDrifted: a frozen atom drifted (``sample_frozen``).
    """
    t_start = _time.perf_counter()
    source = dataset_path(source).resolve()
    out = Path(out)
    for name, v, lo in (("samples", samples, 2), ("stride", stride, 1), ("equilibration_steps", equilibration_steps, 0),
                        ("n_blocks", n_blocks, 2)):  # fmt: skip
        if int(v) != v or int(v) < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
    if int(samples) < 2 * int(n_blocks):
        raise ValueError(f"samples={samples} gives blocks of fewer than 2 samples with n_blocks={n_blocks}")
    if not timestep > 0:
        raise ValueError(f"timestep must be positive (fs), got {timestep}")
    if out.resolve() == source:
        raise ValueError(f"out {out} is the source file")
    info = _source_info(source, frames, {"temperature": temperature, "solvent": solvent, "forcefield": forcefield,
                                         "constraints": constraints, "friction": friction})  # fmt: skip
    fr = info["frames"]
    settings = {
        "labels_version": LABELS_VERSION, "source": str(source), "source_forcefield_hash": info["forcefield_hash"],
        "source_projector_sha256": info["projector_sha256"], "frames": fr.tolist(),
        "frozen_atoms": info["frozen"].tolist(), "samples": int(samples), "stride": int(stride),
        "equilibration_steps": int(equilibration_steps), "timestep_fs": float(timestep), "seed": int(seed),
        "n_blocks": int(n_blocks), "temperature": info["temperature"], "friction": info["friction"],
        "solvent": info["solvent"], "forcefield": info["forcefield"], "constraints": info["constraints"],
        "epsilon_nm": None if epsilon_nm is None else float(epsilon_nm), "platform": str(platform),
        "frozen_mass_amu": float(frozen_mass), "fd_directions_per_sample": 3 * int(info["weights"].shape[0]),
    }  # fmt: skip
    scratch_dir = out.parent / f"{out.stem}.scratch"
    if out.exists():
        if overwrite:
            out.unlink()
            shutil.rmtree(scratch_dir, ignore_errors=True)
        elif resume:
            _check_resume(out, settings)
        else:
            raise FileExistsError(f"{out}: exists (use --resume to continue or --overwrite to replace it)")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _create_output(out, info, settings, source)
    with open_dataset(out) as ds:
        done = ds.hessian_block.done()
    result = LabelsResult(out, len(fr), configs_skipped=int(done.sum()))
    jobs = [{"index": i, "frame": int(f), "seed": config_seed(seed, int(f)), "settings": settings,
             "scratch": str(_scratch_file(scratch_dir, int(f))), "source": str(source), "topology": info["topology"],
             "positions": info["positions"][i], "frozen": info["frozen"], "weights": info["weights"],
             "projector": info["projector"], "bead_types": info["bead_types"], "bonds": info["bonds"],
             "vocabulary": info["vocabulary"]}
            for i, f in enumerate(fr) if not done[i]]  # fmt: skip
    if jobs:
        scratch_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(fr), initial=int(done.sum()), unit="config", disable=not progress,
               desc=f"{out.stem} conditional labels")  # fmt: skip
    try:
        with h5py.File(out, "r+") as h5:
            for r in _configs(jobs, int(workers)):
                _write_row(h5, r["index"], r)
                if not keep_samples:
                    _scratch_file(scratch_dir, r["frame"]).unlink(missing_ok=True)
                result.configs_computed += 1
                result.config_wall_s[r["frame"]] = r["wall_s"]
                block_len = int(samples) // int(n_blocks)
                if block_len < MIN_BLOCK_LENGTH_IN_G * r["g"]:
                    warnings.warn(f"{out}: configuration {r['frame']}: blocks of {block_len} samples are shorter "
                                  f"than {MIN_BLOCK_LENGTH_IN_G:g} g = {MIN_BLOCK_LENGTH_IN_G * r['g']:.1f} "
                                  "(block errors may be underestimated: fewer blocks or more samples)",
                                  stacklevel=2)  # fmt: skip
                bar.update(1)
                bar.set_postfix(g=f"{r['g']:.2f}", s=f"{r['wall_s']:.0f}")
                if interrupt_after_configs is not None and result.configs_computed >= interrupt_after_configs:
                    raise LabelsInterrupted(f"interrupted after {result.configs_computed} configurations")
    finally:
        bar.close()
    if not keep_samples and scratch_dir.exists() and not any(scratch_dir.iterdir()):
        scratch_dir.rmdir()
    with open_dataset(out) as ds:
        result.aa_force_evaluations = int(ds.read(sc.LABELS_AA_FORCE_EVALUATIONS).sum())
    result.wall_s = _time.perf_counter() - t_start
    return result


# ----------------------------------------------------------------------------- reading


@dataclass
class ConditionalLabels:
    """A conditional-labels file in memory (float64 numpy; C configurations, n beads, d = 3n).

    Attributes:
        path: the file.
        source_frame: (C,) int64 rows of the configurations in the source dataset.
        coordinates: (C, n, 3) Å, R.
        mean_force: (C, n, 3) kcal/mol/Å, F(R) = ⟨P f⟩_R.
        mean_force_sem: (C, n, 3) kcal/mol/Å, block standard error of ``mean_force``.
        hessian: (C, d, d) kcal/mol/Å², H_CG(R) = ⟨P∇²UPᵀ⟩_R − β Ĉov_R(P f), symmetric.
        hessian_sem: (C, d, d) kcal/mol/Å², block standard error of ``hessian``.
        term1: (C, d, d) kcal/mol/Å², ⟨P∇²UPᵀ⟩_R as stored (not symmetrised).
        term2: (C, d, d) kcal/mol/Å², β Ĉov_R(P f) (m − 1 divisor).
        statistical_inefficiency: (C,) g of P f (max over components), dimensionless.
        effective_samples: (C,) m / g.
        n_samples: (C,) int64 m.
        aa_force_evaluations: (C,) int64 AA force evaluations spent on each label.
        drift_angstrom: (C,) Å, largest frozen-atom displacement in a saved sample.
        done: (C,) bool, the configuration's labels are committed (others are NaN).
        temperature: K.  settings: the run's settings (dict).  source: source file path.
        source_forcefield_hash, source_projector_sha256: provenance of the source.
    """

    path: Path
    source_frame: np.ndarray
    coordinates: np.ndarray
    mean_force: np.ndarray
    mean_force_sem: np.ndarray
    hessian: np.ndarray
    hessian_sem: np.ndarray
    term1: np.ndarray
    term2: np.ndarray
    statistical_inefficiency: np.ndarray
    effective_samples: np.ndarray
    n_samples: np.ndarray
    aa_force_evaluations: np.ndarray
    drift_angstrom: np.ndarray
    done: np.ndarray
    temperature: float
    settings: dict
    source: str
    source_forcefield_hash: str
    source_projector_sha256: str

    @property
    def n_configs(self) -> int:
        return int(self.source_frame.shape[0])

    def mean_force_noise(self) -> np.ndarray:
        """tr Var F̂ per configuration, Σ over the 3n components of ``mean_force_sem``²:
        (C,) (kcal/mol/Å)². The label-noise term of E‖F_θ − F̂‖² = ‖F_θ − F‖² + tr Var F̂."""
        return (self.mean_force_sem.reshape(self.n_configs, -1) ** 2).sum(axis=1)


def read_labels(path: str | Path, allow_partial: bool = False) -> ConditionalLabels:
    """Read a conditional-labels file (:func:`compute_conditional_labels`).

    Args:
        path: the labels ``.h5`` (or a dataset name).
        allow_partial: return an unfinished file (rows not done are NaN) instead of raising.

    Returns:
        :class:`ConditionalLabels`.

    Raises:
        DatasetNotFoundError: no file.
        DatasetError: not a conditional-labels file, a ``labels/`` array missing, or (unless
            ``allow_partial``) a configuration not done — naming the first.
    """
    with open_dataset(path) as ds:
        if ds.attr(sc.ATTR_KIND) != sc.KIND_CONDITIONAL_LABELS:
            raise DatasetError(ds.path, None, f"not a conditional-labels file (root attribute "
                               f"{sc.ATTR_KIND}={ds.attr(sc.ATTR_KIND)!r})")  # fmt: skip
        done = ds.hessian_block.done()
        if not allow_partial and not done.all():
            raise DatasetError(ds.path, sc.HESSIAN_BLOCK_DONE, "configuration not done (finish it with "
                               "`hessid targets --conditional --resume`)", int(np.argmin(done)))  # fmt: skip
        arr = {spec.key: ds.read(spec.key) for spec in sc.LABELS_ARRAYS}
        return ConditionalLabels(
            path=Path(ds.path), source_frame=arr[sc.LABELS_SOURCE_FRAME].astype(np.int64),
            coordinates=ds.cg.coordinates().astype(np.float64), mean_force=ds.cg.forces().astype(np.float64),
            mean_force_sem=arr[sc.LABELS_MEAN_FORCE_SEM], hessian=ds.hessian_block.values().astype(np.float64),
            hessian_sem=arr[sc.LABELS_HESSIAN_SEM], term1=arr[sc.LABELS_TERM1], term2=arr[sc.LABELS_TERM2],
            statistical_inefficiency=arr[sc.LABELS_STATISTICAL_INEFFICIENCY],
            effective_samples=arr[sc.LABELS_EFFECTIVE_SAMPLES], n_samples=arr[sc.LABELS_N_SAMPLES].astype(np.int64),
            aa_force_evaluations=arr[sc.LABELS_AA_FORCE_EVALUATIONS].astype(np.int64),
            drift_angstrom=arr[sc.LABELS_DRIFT], done=done, temperature=float(ds.temperature or math.nan),
            settings=json.loads(ds.attr(sc.ATTR_LABELS_SETTINGS) or "{}"), source=str(ds.attr(sc.ATTR_LABELS_SOURCE)),
            source_forcefield_hash=str(ds.attr(sc.ATTR_LABELS_SOURCE_FORCEFIELD_HASH)),
            source_projector_sha256=str(ds.attr(sc.ATTR_LABELS_SOURCE_PROJECTOR_SHA256)),
        )  # fmt: skip
