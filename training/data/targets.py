"""Term-1 HVP targets by central finite differences of OpenMM forces (``hessid targets``).

For frame t with AA positions r and CG probe v (docs/identities.md §5)::

    u = Pᵀ v                                   (N, 3) — embedded probe, P = Q ⊗ I₃
    ∇²H u ≈ −[f(r + s u) − f(r − s u)] / (2 s) error O(s² ∂³f), §5
    Term1 = P ∇²H Pᵀ v = Q (∇²H u)             (n, 3)

Units: OpenMM positions are nm and forces kJ/mol/nm, so the difference quotient is in
kJ/mol/nm² per unit of u; u is a dimensionless direction (probes are dimensionless), hence the
same vector in Å space and Term1 in kcal/mol/Å² is the nm result ÷ 418.4
(:func:`hessid.units.hessian_kj_nm2_to_kcal_angstrom2`). The step is ``s = ε / max|u|``:
ε (``epsilon_nm``) is the largest Cartesian displacement of any atom, whatever the probe's
norm, so one ε suits every probe kind. Constraints are not applied to displaced positions
(``getState`` evaluates forces at exactly the positions set).

Storage (docs/architecture.md): ``cg/hvp_term1`` (T, k, n, 3) float64 kcal/mol/Å² with its
probe and FD attributes, and ``cg/hvp_term1_done`` (T,) uint8. Both are allocated in full
when created (NaN / 0 fill), so later writes never change HDF5 metadata. Work is chunked by
frames; a chunk's values are committed (flush + fsync) before its done flags, and ``resume``
skips done chunks, so an interrupted and resumed run gives the same bytes as an
uninterrupted one. Probes are regenerated from ``(probe_kind, probe_seed, frame_id, k, 3n)``
with :func:`hessid.probes.draw_probes`, never stored.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import socket
import threading
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import openmm
from openmm import unit
from tqdm.auto import tqdm

from hessid.probes import PROBE_KINDS, ProbeSpec
from hessid.training.data import schema as sc
from hessid.training.data.aa_md import (
    choose_platform,
    create_system,
    platform_precision,
    system_hash,
)
from hessid.training.data.cg_map import ca_map, hbond_pairs, write_cg
from hessid.training.data.io import commit, dataset_path, validate_dataset
from hessid.training.data.reader import Dataset, open_dataset
from hessid.training.data.schema import DatasetError
from hessid.units import (
    ANGSTROM_PER_NM,
    hessian_kj_nm2_to_kcal_angstrom2,
    length_angstrom_to_nm,
)

#: default ε (nm, largest atomic displacement) per floating-point model, from
#: benchmarks/term1_fd_error.py (docs/data.md, "Error study"; chignolin, amber14+GBn2 and
#: vacuum, 4 frames × 4 Gaussian probes, against a 2-level Richardson reference on Reference):
#: double: error ≈ 3.4e-5·(ε/1e-3 nm)², round-off floor 1e-10 at 1e-6 nm → 1e-5 nm (3.6e-9);
#: mixed (CPU; CUDA mixed computes forces in single precision too): minimum of the
#: worst-frame curve at 1e-4–1.8e-4 nm (1.7e-6 GBn2, 2.5–4e-6 vacuum) → 1e-4 nm;
#: single: not measured here (no GPU), 3e-4 nm by the round-off scaling.
DEFAULT_EPSILON_NM = {"double": 1e-5, "mixed": 1e-4, "single": 3e-4}
#: accepted ε range, nm (docs/data.md, "Choice of ε"): below 1e-7 nm the central difference of
#: mixed/single-precision forces (relative round-off ~1e-7) is round-off only; above 1e-2 nm
#: (0.1 Å) the measured truncation error 3.4e-5·(ε/1e-3 nm)² passes 3e-3 and GB's kinks
#: (seen at 3e-4 nm) are straddled; a value in Å given as nm (e.g. 5) is far outside
EPSILON_RANGE_NM = (1e-7, 1e-2)
#: HDF5's largest chunk, bytes (a chunk holds chunk_frames frames of the targets)
HDF5_CHUNK_LIMIT = 2**32 - 1
#: fraction of the free disk space the allocated targets may take
DISK_FRACTION = 0.9


def free_disk_bytes(folder: str | Path) -> int:
    """Free bytes on the file system holding ``folder`` (``shutil.disk_usage``)."""
    return int(shutil.disk_usage(folder).free)


def check_target_arguments(n_probes: int, epsilon_nm: float | None, workers: int, chunk_frames: int,
                           threads: int | None) -> None:
    """Range-check the arguments of :func:`compute_targets` before anything is read or created.

    Raises:
        ValueError: ``n_probes`` < 1, ε outside :data:`EPSILON_RANGE_NM` (nm) or not finite,
            ``workers`` < 0, ``chunk_frames`` < 1, ``threads`` < 1 (one line naming the option).
    """
    if int(n_probes) < 1:
        raise ValueError(f"--probes={n_probes}: expected at least 1 probe per frame")
    if epsilon_nm is not None:
        lo, hi = EPSILON_RANGE_NM
        if not (math.isfinite(float(epsilon_nm)) and lo <= float(epsilon_nm) <= hi):
            raise ValueError(f"--epsilon={epsilon_nm}: expected nm in [{lo:g}, {hi:g}] (the largest atomic "
                             "displacement in nm, not Å; default by platform precision, docs/data.md)")
    if int(workers) < 0:
        raise ValueError(f"--workers={workers}: expected 0 (in this process) or a positive number of processes")
    if int(chunk_frames) < 1:
        raise ValueError(f"--chunk-frames={chunk_frames}: expected at least 1 frame per chunk")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"--threads={threads}: expected at least 1 thread")


def targets_bytes(n_frames: int, n_beads: int, n_probes: int, full_block: bool = False) -> int:
    """Bytes :func:`compute_targets` allocates: the float64 values (T·k·n·3, or T·(3n)² with
    ``full_block``) plus the (T,) uint8 done mask."""
    d = 3 * int(n_beads)
    per_frame = d * d if full_block else int(n_probes) * d
    return int(n_frames) * (8 * per_frame + 1)


def dataset_probe_key(ds: Dataset) -> int:
    """The default per-dataset probe key: the first 60 bits of sha256 over the topology text
    and the float64 bytes of frame 0's coordinates. Two different datasets (another protein, or
    the same one from another seed, whose first saved frame differs) get different probes; the
    same data always get the same key, so a rerun reproduces its probes. Once written, the key
    is read from ``probe_key`` (copies and subsets keep it), never re-derived.

    Returns:
        int in [0, 2**60).
    """
    h = hashlib.sha256(b"hessid probe key v1\0")
    h.update(ds.topology_text.encode())
    h.update(np.ascontiguousarray(ds.coordinates(slice(0, 1)), dtype="<f8").tobytes())
    return int(h.hexdigest()[:15], 16)


def _plain(value):
    """A stored attribute as a plain Python value (for messages: 2, not np.int64(2))."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class TargetsInterrupted(RuntimeError):
    """Raised by :func:`compute_targets` when ``interrupt_after_chunks`` is reached (test hook
    that behaves like a killed run: finished chunks are committed)."""


def default_epsilon(precision: str) -> float:
    """Default FD step ε in nm for a platform precision ("double" | "mixed" | "single").

    Raises:
        ValueError: unknown precision.
    """
    if precision not in DEFAULT_EPSILON_NM:
        raise ValueError(f"precision {precision!r} is not one of {sorted(DEFAULT_EPSILON_NM)}")
    return DEFAULT_EPSILON_NM[precision]


# ----------------------------------------------------------------------------- kernel


def _forces_nm(context, positions_nm: np.ndarray) -> np.ndarray:
    context.setPositions(positions_nm)
    f = context.getState(getForces=True).getForces(asNumpy=True)
    return np.asarray(f.value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def term1_fd(
    context,
    positions_nm: np.ndarray,
    projector: np.ndarray,
    probes: np.ndarray,
    epsilon_nm: float,
    embed: np.ndarray | None = None,
    timer: list | None = None,
) -> np.ndarray:
    """Term 1 = P ∇²H Pᵀ v for k probes at one frame, by central differences
    (docs/identities.md §5).

    Args:
        context: ``openmm.Context`` of the AA system (its positions are overwritten).
        positions_nm: (N, 3) float64 AA positions in **nm** (OpenMM boundary).
        projector: Q, (n, N) float64 (P = Q ⊗ I₃), dimensionless.
        probes: (k, n, 3) float64 CG probes v, dimensionless.
        epsilon_nm: largest atomic displacement, nm; the step along u is s = ε/max|u|.
        embed: matrix used for the displacement, (n, N); default ``projector`` (u = Pᵀv, the
            correct choice; anything else is only for negative controls).
        timer: if a list, the seconds spent inside OpenMM (setPositions + getState) are
            appended to it.

    Returns:
        (k, n, 3) float64, kcal/mol/Å² (the nm/kJ quotient ÷ 418.4).

    Raises:
        ValueError: shapes disagree, ε ≤ 0, or a probe is zero.
    """
    q = np.asarray(projector, dtype=np.float64)
    probes = np.asarray(probes, dtype=np.float64)
    r = np.asarray(positions_nm, dtype=np.float64)
    n, n_atoms = q.shape
    if r.shape != (n_atoms, 3) or probes.ndim != 3 or probes.shape[1:] != (n, 3):
        raise ValueError(f"shapes: positions {r.shape} (want ({n_atoms}, 3)), probes "
                         f"{probes.shape} (want (k, {n}, 3)), projector {q.shape}")  # fmt: skip
    if not epsilon_nm > 0:
        raise ValueError(f"epsilon_nm must be positive, got {epsilon_nm}")
    e = q if embed is None else np.asarray(embed, dtype=np.float64)
    out = np.empty(probes.shape)  # (k, n, 3)
    for m, v in enumerate(probes):
        u = e.T @ v  # (N, 3) = Pᵀ v
        umax = float(np.abs(u).max())
        if umax == 0.0:
            raise ValueError(f"probe {m} embeds to zero displacement")
        s = epsilon_nm / umax
        t0 = _time.perf_counter()
        f_plus = _forces_nm(context, r + s * u)
        f_minus = _forces_nm(context, r - s * u)
        if timer is not None:
            timer.append(_time.perf_counter() - t0)
        hu = -(f_plus - f_minus) / (2.0 * s)  # (N, 3) kJ/mol/nm² per unit u
        out[m] = hessian_kj_nm2_to_kcal_angstrom2(q @ hu)
    return out


# ----------------------------------------------------------------------------- workers


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its OpenMM context (picklable).

    Attributes:
        system_xml: serialized ``openmm.System``.  platform: OpenMM platform name.
        properties: platform properties.  projector: Q (n, N).  epsilon_nm: ε in nm.
    """

    system_xml: str
    platform: str
    properties: dict
    projector: np.ndarray
    epsilon_nm: float
    key: str = ""


class _WorkerCache(threading.local):
    """Per-thread cache of the worker's OpenMM context (a Context must not be shared between
    threads; a process-pool worker and a Dask worker with ``threads_per_worker=1`` have one
    thread, hence one context per worker)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.spec: WorkerSpec | None = None
        self.context = None


_WORKER = _WorkerCache()
#: contexts built by this process (all threads); reported with each chunk so the driver can
#: check that contexts are reused across frames and chunks
_CONTEXTS_BUILT = [0]


def _context_for(spec: WorkerSpec):
    """This thread's OpenMM context for ``spec``: built on first use, reused across frames and
    chunks, rebuilt only when the spec's key (system hash, platform, properties, ε) changes.

    Returns:
        ``(context, spec)``.
    """
    if _WORKER.context is None or _WORKER.key != spec.key:
        system = openmm.XmlSerializer.deserialize(spec.system_xml)
        integrator = openmm.VerletIntegrator(0.001)
        platform = openmm.Platform.getPlatformByName(spec.platform)
        _WORKER.context = openmm.Context(system, integrator, platform, spec.properties)
        _WORKER.key, _WORKER.spec = spec.key, spec
        _CONTEXTS_BUILT[0] += 1
    return _WORKER.context, _WORKER.spec


def _init_worker(spec: WorkerSpec) -> None:
    """ProcessPoolExecutor initializer: build this process's context once."""
    _context_for(spec)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class _Chunk:
    index: int
    start: int
    positions_nm: np.ndarray  # (b, N, 3)
    probes: np.ndarray  # (b, k, n, 3)
    box_nm: np.ndarray | None = None  # (b, 3, 3)


def _run_chunk(chunk: _Chunk, spec: WorkerSpec | None = None):
    """Compute one chunk in a worker.

    Returns:
        ``(index, start, values (b, k, n, 3), openmm_s, wall_s, (worker_id, contexts_built))``;
        ``contexts_built`` counts the contexts this worker process has built so far.
    """
    t0 = _time.perf_counter()
    if spec is None:
        context, spec = _WORKER.context, _WORKER.spec
    else:
        context, spec = _context_for(spec)
    timer: list = []
    out = np.empty(chunk.probes.shape)
    for b in range(chunk.positions_nm.shape[0]):
        if chunk.box_nm is not None:
            context.setPeriodicBoxVectors(*chunk.box_nm[b])
        out[b] = term1_fd(context, chunk.positions_nm[b], spec.projector, chunk.probes[b],
                          spec.epsilon_nm, timer=timer)  # fmt: skip
    return (chunk.index, chunk.start, out, float(sum(timer)), _time.perf_counter() - t0,
            (_worker_id(), _CONTEXTS_BUILT[0]))  # fmt: skip


class InlineExecutor(cf.Executor):
    """Runs tasks in the calling process (workers=0): no pickling, for tests and debugging."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            fut.set_exception(exc)
        return fut


class _DaskExecutor(cf.Executor):
    """``concurrent.futures`` front of a Dask ``Client``: tasks are submitted impure (never
    deduplicated by Dask), ``shutdown`` accepts ``cancel_futures`` (Dask's ``ClientExecutor``
    does not) and closes the client this module opened."""

    def __init__(self, client) -> None:
        self.client = client
        self._inner = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs):
        return self._inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._inner.shutdown(wait=wait and not cancel_futures)
        finally:
            self.client.close()


def make_executor(workers: int, spec: WorkerSpec | None = None, scheduler: str | None = None):
    """Executor for the chunk tasks and the spec argument each task must carry.

    Args:
        workers: 0 → in-process; ≥ 1 → ``ProcessPoolExecutor`` (spawn) with one context per
            worker built by the initializer.
        spec: the worker spec (initializer argument, or scattered to the Dask workers).
        scheduler: Dask scheduler address (``tcp://host:port``); runs the tasks through
            ``dask.distributed.Client(address).get_executor(pure=False)``. The spec is
            scattered once to every worker (``broadcast=True``) and tasks carry only its
            future; each Dask worker thread builds one OpenMM context on its first task and
            reuses it (:func:`_context_for`). Workers must be able to import ``hessid``.

    Returns:
        ``(executor, task_spec, n_slots)``: ``task_spec`` is the second argument of
        :func:`_run_chunk` (None for the pool, whose initializer set the context up; the spec
        in-process; a Dask future of it on a cluster); ``n_slots`` the number of tasks that run
        at once (processes, or the cluster's worker threads).

    Raises:
        ImportError: ``scheduler`` given but dask.distributed is not installed.
        OSError: the scheduler cannot be reached (Dask's connect timeout).
    """
    if scheduler:
        try:
            from dask.distributed import Client  # noqa: PLC0415 # optional: distributed (dask extra)
        except ImportError as exc:
            raise ImportError(
                "--scheduler needs dask.distributed, which is not installed; "
                "install it with `pip install hessid[dask]` (or run without --scheduler)"
            ) from exc
        client = Client(scheduler)
        try:
            info = client.scheduler_info().get("workers", {})
            n = max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))
            task_spec = client.scatter(spec, broadcast=True, hash=False) if spec is not None else None
        except BaseException:
            client.close()
            raise
        return _DaskExecutor(client), task_spec, n
    if workers <= 0:
        return InlineExecutor(), spec, 1
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(spec,),
    )  # fmt: skip
    return pool, None, workers


# ----------------------------------------------------------------------------- driver


def _early_alloc():
    """Dataset creation property list with early (at-creation) storage allocation."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


@dataclass
class TargetsResult:
    """Summary of a :func:`compute_targets` run.

    Attributes:
        path: dataset file.  n_frames: T.  n_probes: k.  chunks_computed / chunks_skipped.
        wall_s: seconds of the whole call.  openmm_s: seconds inside OpenMM force calls,
        summed over workers.  openmm_fraction: openmm_s / (wall_s × workers).
        frame_probes_per_s: computed frames × k / wall_s.
        extra: ``loop_s`` (compute loop wall), ``worker_s`` (seconds inside chunk tasks),
        ``frames_computed``, ``contexts_built`` ({worker id "host:pid:thread": OpenMM contexts
        that worker's process had built when it returned its last chunk}; 1 each when
        contexts are reused across frames and chunks).
    """

    path: Path
    n_frames: int
    n_probes: int
    chunks_computed: int = 0
    chunks_skipped: int = 0
    wall_s: float = 0.0
    openmm_s: float = 0.0
    workers: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def openmm_fraction(self) -> float:
        return self.openmm_s / max(self.wall_s * self.workers, 1e-12)

    @property
    def frame_probes_per_s(self) -> float:
        return self.extra.get("frames_computed", 0) * self.n_probes / max(self.wall_s, 1e-12)


def check_constraint_handling(path: Path, ds: Dataset, topology, constraints: str | None = None) -> None:
    """Refuse Term 1 when the CG projector's constraint handling and the Term-1 System disagree
    (docs/data.md, "Constraint-aware projector").

    The System is rebuilt with ``constraints`` (default: the file's ``constraints`` attribute,
    which must then exist; an override must equal a stored value, since another constraint set
    is another potential). Under HBond constraints the System lacks the X–H bond terms and the
    projector must move each rigid group as one: the columns of Q of the two atoms of every
    HBond pair must be equal (as :func:`hessid.maps.constraint_aware_projector` makes them).
    An unmapped file is mapped by ``write_cg`` from the file's own constraints.

    Raises:
        DatasetError: no ``constraints`` attribute and none given; an override that differs
            from the stored constraints; under HBonds, a mapped projector whose columns differ
            within a rigid pair (names the atoms).
    """
    stored = ds.constraints
    cons = constraints or stored
    if cons is None:
        raise DatasetError(path, "/", "no 'constraints' attribute, so the Term-1 potential is unknown "
                           "(HBonds or none): pass --constraints, or re-import with --constraints")
    if str(cons).lower() not in ("hbonds", "none"):
        raise DatasetError(path, "/", f"constraints {cons!r}: expected HBonds or none")
    if stored is not None and str(stored).lower() != str(cons).lower():
        raise DatasetError(path, "/", f"the data were simulated with constraints={stored!r} but the Term-1 System "
                           f"would use constraints={cons!r}: Term 1 would not be the Hessian of the potential "
                           "the forces came from")
    if str(cons).lower() != "hbonds" or not ds.has_cg:
        return
    q = ds.cg.projector  # (n, N)
    for a, h in hbond_pairs(topology):
        if not np.array_equal(q[:, a], q[:, h]):
            raise DatasetError(path, sc.CG_PROJECTOR, f"the projector handles constraints as "
                               f"{ds.cg.projector_constraints or 'none'!r}: its columns of the rigid HBond pair "
                               f"(atoms {int(a)}, {int(h)}) differ, but the Term-1 System uses constraints="
                               f"{cons!r} (no X–H bond terms), so Term 1 would not be the Hessian of the potential "
                               "the forces came from; re-map constraint-aware (`hessid data map NAME --overwrite`)")


def _system_for(ds: Dataset, forcefield, solvent, constraints):
    """(System, its sha256, force field, solvent, constraints) rebuilt from the dataset's
    topology and attributes (arguments override them; imports lack them)."""
    ff = forcefield or str(ds.attr(sc.ATTR_FORCEFIELD, "amber14-all.xml"))
    solv = solvent or ds.attr(sc.ATTR_SOLVENT)
    if solv is None:
        raise DatasetError(ds.path, "/", "no 'solvent' attribute; pass --solvent")
    solv = str(solv)
    cons = constraints or ds.constraints
    if cons is None:
        raise DatasetError(ds.path, "/", "no 'constraints' attribute: re-import with --constraints "
                           "HBonds|none (or pass constraints=)")
    top = ds.topology()
    box = ds.box(slice(0, 1))
    if box is not None and box.shape[0]:
        top.setPeriodicBoxVectors(length_angstrom_to_nm(box[0]) * unit.nanometer)
    system = create_system(top, ff, solv, cons)
    return system, system_hash(system), ff, solv, cons


def compute_targets(
    path: str | Path,
    n_probes: int = 4,
    probe_kind: str = "gaussian",
    seed: int = 0,
    epsilon_nm: float | None = None,
    platform: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
    workers: int = 1,
    chunk_frames: int = 4,
    scheduler: str | None = None,
    executor: cf.Executor | None = None,
    resume: bool = False,
    overwrite: bool = False,
    full_block: bool = False,
    forcefield: str | None = None,
    solvent: str | None = None,
    constraints: str | None = None,
    progress: bool = True,
    interrupt_after_chunks: int | None = None,
    probe_key: int | None = None,
) -> TargetsResult:
    """Precompute Term 1 for every frame of a dataset file (``hessid targets``;
    docs/identities.md §5).

    Writes ``cg/hvp_term1`` (T, k, n, 3) float64 kcal/mol/Å² (or, with ``full_block``,
    ``cg/hessian_block`` (T, 3n, 3n) = P ∇²H Pᵀ by 2·3n force evaluations per frame, entry
    [a, b] = (P∇²HPᵀ)_ab, not symmetrised) and its done mask. Creates the ``cg/`` group with the
    default Cα map if missing. The AA system is rebuilt from the stored topology, force field,
    solvent and constraints; its sha256 is stored as ``forcefield_hash``.

    Args:
        path: dataset ``.h5`` (or a name resolved by :func:`hessid.training.data.io.dataset_path`).
        n_probes: k probes per frame (ignored with ``full_block``).
        probe_kind: a :data:`hessid.probes.PROBE_KINDS` kind (default Gaussian: unbiased for
            ‖·‖_F² with scale 1, docs/identities.md §6, §8); ``probe_scale`` is stored.
        seed: probe seed; probes of frame t are
            ``draw_probes(kind, seed, [frame_id[t]], k, 3n, key=probe_key)``.
        epsilon_nm: largest atomic displacement, nm (default :func:`default_epsilon`).
        platform, threads, precision: OpenMM platform (default CUDA if present else CPU),
            CPU threads per worker (default cores // workers), CUDA/OpenCL precision.
        workers: worker processes (0 = in this process).
        chunk_frames: frames per task and per atomic commit.
        scheduler: Dask scheduler address (needs ``hessid[dask]``); the cluster's workers
            must import hessid; one OpenMM context per worker thread, reused across chunks.
        executor: a ready ``concurrent.futures.Executor`` (tasks then carry the worker spec).
        resume: continue an existing run (settings must match); otherwise an existing result
            is an error unless ``overwrite``.
        forcefield, solvent, constraints: override the file's attributes (imports lack them).
        progress: tqdm bar.
        interrupt_after_chunks: test hook; raise :class:`TargetsInterrupted` after this many
            chunks were committed by this call.
        probe_key: per-dataset probe key (stored as ``probe_key``); default
            :func:`dataset_probe_key` of the file, or the stored key on ``resume`` (0 for targets
            written before keys existed).

    Returns:
        :class:`TargetsResult` (timings for the throughput benchmark).

    Raises:
        DatasetError: invalid file; a conditional-labels file (its blocks are labels); existing
            result with different settings on ``resume``.
        FileExistsError: result exists, neither ``resume`` nor ``overwrite``.
        ImportError: ``scheduler`` without dask.distributed.
        ValueError: bad k, kind, ε, platform.
    """
    t_start = _time.perf_counter()
    path = dataset_path(path)
    check_target_arguments(n_probes, epsilon_nm, workers, chunk_frames, threads)
    if not full_block and probe_kind not in PROBE_KINDS:
        raise ValueError(f"--probe-kind={probe_kind!r}: expected one of {', '.join(PROBE_KINDS)}")
    validate_dataset(path)
    key = sc.HESSIAN_BLOCK_NAME if full_block else sc.TERM1_NAME  # inside cg/
    with open_dataset(path) as ds:
        sc.refuse_labels_file(ds.attrs, path, "recomputing targets of")
        has_cg = ds.has_cg
        top = ds.topology()
        n_beads = ds.cg.n_beads if has_cg else ca_map(top)[0].n_beads
        t_frames = ds.n_frames
        check_constraint_handling(path, ds, top, constraints)
        exists = ds.has_hessian_block if full_block else ds.has_term1
        stored_key = None
        if exists and resume and not full_block:  # a resumed run keeps its key (0: written before keys)
            stored_key = int(_plain(ds.term1.attrs.get(sc.ATTR_PROBE_KEY, 0)))
        key_of_data = dataset_probe_key(ds) if probe_key is None and stored_key is None else None
    if exists and not (resume or overwrite):
        raise FileExistsError(f"{path}: dataset 'cg/{key}' exists (use --resume or --overwrite)")
    if not exists or not resume:
        rows = min(int(chunk_frames), max(t_frames, 1))
        chunk = targets_bytes(rows, n_beads, n_probes, full_block)
        if chunk >= HDF5_CHUNK_LIMIT:
            raise ValueError(f"--probes={n_probes}, --chunk-frames={chunk_frames}: one HDF5 chunk of cg/{key} "
                             f"would hold {chunk / 2**30:.3g} GiB, above HDF5's 4 GiB chunk limit; lower "
                             "--chunk-frames or --probes")
        need = targets_bytes(t_frames, n_beads, n_probes, full_block)
        free = free_disk_bytes(path.parent)
        if need > DISK_FRACTION * free:
            what = f"{t_frames} frames × (3·{n_beads})² block" if full_block else \
                f"{t_frames} frames × {n_probes} probes × {n_beads} beads × 3"
            raise ValueError(f"--probes={n_probes}: cg/{key} would take {need / 1e9:.3g} GB ({what} float64) "
                             f"but {path.parent} has {free / 1e9:.3g} GB free")
    if workers > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    plat, props = choose_platform(platform, threads, precision)
    prec = platform_precision(plat.getName(), props)
    eps = float(epsilon_nm) if epsilon_nm is not None else default_epsilon(prec)
    if not has_cg:
        write_cg(path)

    with open_dataset(path) as ds:
        system, fhash, ff, solv, cons = _system_for(ds, forcefield, solvent, constraints)
        q = ds.cg.projector  # (n, N)
        t_frames = ds.n_frames
        frame_ids = ds.frame_id()
    n = q.shape[0]
    d = 3 * n
    k = d if full_block else int(n_probes)
    attrs = {
        "unit": sc.HESSIAN_UNIT, "epsilon_nm": eps,
        "epsilon_definition": "largest Cartesian displacement of any atom (nm); step s = eps/max|P^T v|",
        # "spec §5" is docs/identities.md §5; the string is kept byte-identical (file provenance)
        "method": "central finite difference of OpenMM forces along u = P^T v (spec §5)",
        "constraints_applied_to_displacements": False, "platform": plat.getName(),
        "precision": prec, "forcefield_hash": fhash, "forcefield": ff, "solvent": solv,
        "constraints": cons, "threads": str(props.get("Threads", "")),
        "projector_sha256": hashlib.sha256(np.ascontiguousarray(q, dtype=np.float64).tobytes()).hexdigest(),
    }  # fmt: skip
    probe_spec = None
    if full_block:  # every unit vector e_a: not a ProbeSpec kind
        attrs.update(probe_kind=sc.FULL_BLOCK_PROBE_KIND, probe_seed=0, probe_scale=1.0, n_probes=k,
                     probe_key=0, layout=sc.FULL_BLOCK_LAYOUT)  # fmt: skip
    else:
        pkey = int(probe_key) if probe_key is not None else (stored_key if stored_key is not None else key_of_data)
        probe_spec = ProbeSpec(kind=probe_kind, seed=int(seed), n_probes=k, key=pkey)
        attrs.update(probe_spec.to_attrs(dim=d), probe_reshape=sc.PROBE_RESHAPE)
    chunk_frames = int(chunk_frames)
    attrs["chunk_frames"] = chunk_frames
    shape = (t_frames, d, d) if full_block else (t_frames, k, n, 3)
    chunks = (min(chunk_frames, max(t_frames, 1)),) + shape[1:]

    with h5py.File(path, "r+") as h5:
        g = h5[sc.CG]
        if key in g:
            if resume:
                old = {a: _plain(v) for a, v in g[key].attrs.items()}
                for a in sc.TERM1_RESUME_ATTRS:
                    if a in (sc.ATTR_PROJECTOR_SHA256, sc.ATTR_PROBE_KEY) and a not in old:
                        continue  # targets written before the projector / probe key was recorded
                    if str(old.get(a)) != str(attrs[a]):
                        raise DatasetError(path, f"cg/{key}", f"--resume with {a}={_plain(attrs[a])!r} but "
                                           f"the stored run used {old.get(a)!r} (rerun with the stored "
                                           "settings, or --overwrite)")  # fmt: skip
                if g[key].shape != shape:
                    raise DatasetError(path, f"cg/{key}", f"shape {g[key].shape}, expected {shape}")
            else:
                del g[key]
                del g[f"{key}_done"]
        if key not in g:
            # all storage allocated now (NaN / 0 filled): later writes only overwrite raw data
            # in place and never touch HDF5 metadata, so a kill mid-write cannot corrupt the file
            ds = g.create_dataset(key, shape=shape, dtype="f8", chunks=chunks, fillvalue=np.nan,
                                  dcpl=_early_alloc())  # fmt: skip
            for a, v in attrs.items():
                ds.attrs[a] = v
            g.create_dataset(f"{key}_done", shape=(t_frames,), dtype="u1", fillvalue=0,
                             dcpl=_early_alloc())  # fmt: skip
            commit(h5)
        done = g[f"{key}_done"][()].astype(bool)

    todo = [c for c in range(0, t_frames, chunk_frames) if not done[c : c + chunk_frames].all()]
    n_chunks_total = len(range(0, t_frames, chunk_frames))
    spec = WorkerSpec(openmm.XmlSerializer.serialize(system), plat.getName(), props, q, eps,
                      key=f"{fhash}:{plat.getName()}:{json.dumps(props, sort_keys=True)}:{eps}")  # fmt: skip
    result = TargetsResult(path, t_frames, k, chunks_skipped=n_chunks_total - len(todo))
    if executor is not None:
        ex, task_spec, n_workers, own = executor, spec, max(1, workers), False
    else:
        ex, task_spec, n_workers = make_executor(workers, spec, scheduler)
        own = True
    result.workers = n_workers
    frames_done = 0

    def make_chunk(h5, ci: int, start: int) -> _Chunk:
        pos = length_angstrom_to_nm(h5[sc.COORDINATES][start : start + chunk_frames])  # (b, N, 3) nm
        box = h5[sc.BOX][start : start + chunk_frames] / ANGSTROM_PER_NM if sc.BOX in h5 else None
        b = pos.shape[0]
        if full_block:
            probes = np.broadcast_to(np.eye(d).reshape(1, d, n, 3), (b, d, n, 3)).copy()
        else:
            probes = probe_spec.draw(frame_ids[start : start + b], d).numpy()
            probes = probes.reshape(b, k, n, 3)  # (b, k, n, 3)
        return _Chunk(ci, start, pos, probes, box)

    bar = tqdm(total=t_frames, initial=t_frames - sum(min(chunk_frames, t_frames - s) for s in todo),
               unit="frame", disable=not progress, desc=f"{path.stem} Term 1")  # fmt: skip
    committed = 0
    contexts: dict = {}  # worker id → OpenMM contexts its process has built (reuse check)
    t_loop = _time.perf_counter()
    try:
        pending: set = set()
        queue = list(enumerate(todo))
        max_inflight = 2 * n_workers
        with h5py.File(path, "r+") as h5:
            ds, dm = h5[f"cg/{key}"], h5[f"cg/{key}_done"]
            while queue or pending:
                while queue and len(pending) < max_inflight:
                    ci, start = queue.pop(0)
                    ch = make_chunk(h5, ci, start)
                    pending.add(ex.submit(_run_chunk, ch, task_spec))
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: f.result()[1]):  # by chunk start: deterministic
                    _, start, values, omm_s, worker_s, (wid, n_ctx) = fut.result()
                    b = values.shape[0]
                    if full_block:  # values (b, d probes e_a, n, 3) → block[:, :, a]
                        values = values.reshape(b, d, d).transpose(0, 2, 1)
                    # commit order: values durable first, then their done flags, so a flag
                    # never stands for values that a kill or power loss could still lose
                    ds[start : start + b] = values
                    commit(h5)
                    dm[start : start + b] = 1
                    commit(h5)
                    contexts[wid] = max(contexts.get(wid, 0), n_ctx)
                    result.openmm_s += omm_s
                    result.extra["worker_s"] = result.extra.get("worker_s", 0.0) + worker_s
                    result.chunks_computed += 1
                    frames_done += b
                    committed += 1
                    bar.update(b)
                    if interrupt_after_chunks is not None and committed >= interrupt_after_chunks:
                        for p in pending:
                            p.cancel()
                        raise TargetsInterrupted(f"interrupted after {committed} chunks")
    finally:
        bar.close()
        if own:
            ex.shutdown(wait=True, cancel_futures=True)
        result.extra["loop_s"] = _time.perf_counter() - t_loop
    result.wall_s = _time.perf_counter() - t_start
    result.extra["frames_computed"] = frames_done
    result.extra["contexts_built"] = contexts
    return result


def load_probes(path: str | Path, frames: np.ndarray | None = None) -> np.ndarray:
    """Regenerate the probes behind ``cg/hvp_term1`` from its attributes.

    Args:
        path: dataset file.  frames: row indices (default all).

    Returns:
        (F, k, n, 3) float64 probes, dimensionless.

    Raises:
        NotMappedError, NoTargetsError: no ``cg/`` or no ``cg/hvp_term1`` (both DatasetError).
        DatasetError: probe attributes missing.
    """
    with open_dataset(path) as ds:
        return ds.term1.probes(None if frames is None else np.asarray(frames))
