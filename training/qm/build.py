"""``hessid qm build``: a resumable, parallel builder of atomistic QM datasets
(docs/atomistic.md; file layout :mod:`hessid.training.data.qm`).

Stages:

1. SMILES → RDKit molecule (explicit H) → ``conformers`` ETKDG conformers (seeded) → each
   optimised with the sampling method (GFN2-xTB by default, also for DFT labels: cheap
   structures, expensive labels) → its Hessian → harmonic analysis.
2. ``configs`` structures by normal-mode sampling (:mod:`hessid.training.qm.sampling`): the first
   ``configs − n_far`` at ``temperature`` (subset 0, near equilibrium), the last
   ``n_far = round(far_fraction · configs)`` at ``far_temperature`` (subset 1). Structure i is
   sampled from conformer ``i mod C`` with its own generator seeded by ``(seed, i)``, so a
   structure does not depend on how many others there are or in which order they run.
3. The file is created (coordinates, NaN values, ``done`` False); then the labelling method's
   energy, gradient and Hessian of every structure, in chunks of ``chunk`` structures through an
   executor (in-process for ``workers=0``, a spawn ``ProcessPoolExecutor`` otherwise: the
   pattern of ``hessid targets``), committed chunk by chunk in structure order.

Resume (``resume=True``): the settings must equal those stored in the file (attribute
``sampling``); the structures are read from the file and those already done (or failed, unless
``retry_failed``) are skipped. Each
structure's values depend only on its coordinates and the method settings (fresh SCF from the
default guess, no state carried between structures), so an interrupted-then-resumed build is
byte-identical to an uninterrupted one (tests/training/qm/test_build.py).

Failures of one structure (SCF non-convergence, a program error) are recorded in the file
(``failed``, ``error``) and counted; the build goes on. Bad input (SMILES, unsupported
element, options) raises ``ValueError`` before anything is written.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hessid.training.data.io import check_dataset_name
from hessid.training.data.qm import (
    SUBSET_FAR,
    SUBSET_NEAR,
    QMMinima,
    create_qm_dataset,
    open_qm_dataset,
    qm_dataset_path,
    record_qm_failures,
    write_qm_results,
)
from hessid.training.data.targets import InlineExecutor, make_executor
from hessid.training.qm.methods import (
    MethodSpec,
    QMError,
    check_elements,
    compute,
    method_versions,
)
from hessid.training.qm.sampling import (
    SAMPLING_SCHEMES,
    atomic_masses,
    etkdg_conformers,
    molecule_from_smiles,
    normal_mode_samples,
    optimise,
    vibrational_analysis,
)

__all__ = ["DEFAULT_SEED", "BuildInterrupted", "BuildResult", "build_qm_dataset", "label_chunk", "sample_structures"]

#: fixed default seed of conformers and normal-mode sampling (stored in the file)
DEFAULT_SEED = 20260313


class BuildInterrupted(RuntimeError):
    """Raised by the ``interrupt_after_chunks`` test hook."""


@dataclass
class BuildResult:
    """Summary of :func:`build_qm_dataset`.

    Attributes:
        path: the file.  n_structures: T.  computed / skipped / failed: structures this call
        computed, found done (or failed) already, and recorded as failed.  wall_s: seconds.
        qm_s: seconds inside QM calls of stage 3, summed over workers.  per_structure_s:
        qm_s / computed.  workers: processes (0: in-process).
    """

    path: Path
    n_structures: int
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    qm_s: float = 0.0
    workers: int = 0
    failures: list = field(default_factory=list)

    @property
    def per_structure_s(self) -> float:
        return self.qm_s / max(self.computed + self.failed, 1)


@dataclass(frozen=True)
class SampledStructures:
    """Output of stages 1–2: coordinates (T, N, 3) Å, subset (T,), conformer (T,), the minima
    (C, N, 3) Å with energies (C,) kcal/mol and Hessians (C, 3N, 3N) kcal/mol/Å², and
    the lowest wavenumber of each minimum (cm⁻¹)."""

    coordinates: np.ndarray
    subset: np.ndarray
    conformer: np.ndarray
    minima: QMMinima
    lowest_wavenumbers: tuple
    optimisation_steps: tuple


def sample_structures(species, molecule, configs: int, *, conformers: int, seed: int, temperature: float,
                      far_temperature: float, far_fraction: float, scheme: str, min_wavenumber: float,
                      sampling_spec: MethodSpec, fmax: float) -> SampledStructures:  # fmt: skip
    """Stages 1–2: ETKDG conformers, optimisation, Hessians, normal-mode sampling.

    Raises:
        ValueError: ETKDG cannot embed the molecule.
        QMError: every conformer's optimisation or Hessian failed (the first message).
    """
    raw = etkdg_conformers(molecule, conformers, seed)  # (C, N, 3)
    masses = atomic_masses(species)
    minima, energies, hessians, analyses, lowest, steps, errors = [], [], [], [], [], [], []
    for c in range(raw.shape[0]):
        try:
            x, _, nit = optimise(species, raw[c], sampling_spec, fmax=fmax)
            res = compute(species, x, sampling_spec, hessian=True)
        except QMError as exc:
            errors.append(f"conformer {c}: {exc}")
            continue
        va = vibrational_analysis(res.hessian, x, masses)
        minima.append(x)
        energies.append(res.energy)
        hessians.append(res.hessian)
        analyses.append(va)
        lowest.append(float(va.wavenumbers[0]))
        steps.append(nit)
    if not minima:
        raise QMError(f"no conformer could be optimised: {errors[0]}")
    n_far = int(round(far_fraction * configs))
    coords = np.empty((configs, len(species), 3))
    subset = np.where(np.arange(configs) < configs - n_far, SUBSET_NEAR, SUBSET_FAR).astype(np.int8)
    conformer = np.arange(configs, dtype=np.int64) % len(minima)
    for i in range(configs):
        rng = np.random.default_rng([int(seed), i])
        temp = temperature if subset[i] == SUBSET_NEAR else far_temperature
        c = int(conformer[i])
        coords[i] = normal_mode_samples(minima[c], analyses[c], temp, rng, n=1, scheme=scheme,
                                        min_wavenumber=min_wavenumber)[0]  # fmt: skip
    return SampledStructures(coords, subset, conformer,
                             QMMinima(np.stack(minima), np.array(energies), np.stack(hessians)),
                             tuple(lowest), tuple(steps))  # fmt: skip


def label_chunk(species: np.ndarray, coords: np.ndarray, indices: np.ndarray, spec: MethodSpec,
                hessians: bool = True):  # fmt: skip
    """Worker task: QM values of a chunk of structures.

    Returns:
        ``(indices (b,), energies (b,), gradients (b, N, 3), hessians (b, 3N, 3N) | None,
        ok (b,) bool, messages (b,) str, qm_seconds)``; failed structures have NaN values,
        ``ok`` False and their one-line message.
    """
    t0 = time.perf_counter()
    b, n = len(indices), len(species)
    e = np.full(b, np.nan)
    g = np.full((b, n, 3), np.nan)
    h = np.full((b, 3 * n, 3 * n), np.nan) if hessians else None
    ok = np.zeros(b, bool)
    msgs = [""] * b
    for j in range(b):
        try:
            res = compute(species, coords[j], spec, hessian=hessians)
        except QMError as exc:
            msgs[j] = str(exc)
            continue
        e[j], g[j] = res.energy, res.gradient
        if hessians:
            h[j] = res.hessian
        ok[j] = True
    return np.asarray(indices), e, g, h, ok, msgs, time.perf_counter() - t0


def _init_worker(threads: int) -> None:
    """Pool initializer: pin each worker's OpenMP threads (tblite, PySCF's BLAS)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def _make_executor(workers: int, threads: int, scheduler: str | None = None):
    """``(executor, slots)``: a Dask cluster's executor (through ``hessid targets``'s
    :func:`~hessid.training.data.targets.make_executor`; its workers must import hessid), the
    calling process (``workers=0``), or a spawn pool with pinned threads."""
    if scheduler:
        ex, _, n = make_executor(0, None, scheduler)
        return ex, n
    if workers <= 0:
        return InlineExecutor(), 1
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))  # fmt: skip
    return pool, workers


def _settings_mismatch(old: dict, new: dict) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: file has {old.get(key)!r}, now {new.get(key)!r}"
    return None


def build_qm_dataset(
    smiles: str,
    name: str,
    *,
    method: str = "gfn2-xtb",
    configs: int = 100,
    root: str | Path = ".",
    conformers: int = 4,
    temperature: float = 300.0,
    far_temperature: float = 1000.0,
    far_fraction: float = 0.25,
    scheme: str = "boltzmann",
    min_wavenumber: float = 100.0,
    seed: int = DEFAULT_SEED,
    sampling_method: str = "gfn2-xtb",
    hessians: bool = True,
    xc: str = "wb97x-d3bj",
    basis: str = "6-31g(d)",
    fd_step: float | None = None,
    xtb_accuracy: float | None = None,
    fmax: float = 0.01,
    max_iter: int | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    chunk: int = 4,
    resume: bool = False,
    retry_failed: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    interrupt_after_chunks: int | None = None,
) -> BuildResult:
    """Build ``ROOT/NAME/NAME.h5`` from a SMILES string (stages: module docstring).

    Args:
        smiles: the molecule.  name: dataset name.  method: labels, ``gfn2-xtb`` | ``dft``.
        configs: structures T.  root: output root.  conformers: ETKDG conformers C.
        temperature: sampling temperature of the near set, K.  far_temperature: of the far
            set, K.  far_fraction: share of far structures.  scheme: ``boltzmann`` | ``ani1``.
        min_wavenumber: amplitude floor of soft modes, cm⁻¹.  seed: conformer and sampling seed.
        sampling_method: method of the optimisation and sampling Hessians (``gfn2-xtb`` |
            ``dft``).  hessians: compute Hessians (False: an E-F-only set).
        xc, basis: DFT functional and basis.  fd_step: GFN2-xTB FD step, Å (default
            :data:`~hessid.training.qm.methods.DEFAULT_FD_STEP`).  xtb_accuracy: tblite accuracy.
        fmax: optimisation convergence, kcal/mol/Å.  max_iter: SCF iteration limit of the
            labels (default: the method's).  workers: processes (0: in-process).
        scheduler: Dask scheduler address (needs hessid[dask]); tasks then run on its workers.
        threads: OpenMP threads per worker (default: 1 for GFN2-xTB, cores // max(workers, 1)
            for DFT).  chunk: structures per
            task and per commit.  resume: continue an existing file.  retry_failed: with
            resume, recompute failed structures.  overwrite: replace an existing file.
        progress: tqdm bar.  interrupt_after_chunks: test hook (raise after that many commits).

    Returns:
        :class:`BuildResult`.

    Raises:
        ValueError: bad SMILES, unsupported element, bad option, or resume settings that differ
            from the file's (one line naming them).
        FileExistsError: the file exists, neither resume nor overwrite.
        QMError: no conformer could be optimised (stage 1).
        ImportError: ``scheduler`` without dask.distributed installed.
    """
    t_start = time.perf_counter()
    check_dataset_name(name)
    if configs < 1:
        raise ValueError(f"--configs={configs}: expected at least 1 structure")
    if conformers < 1:
        raise ValueError(f"--conformers={conformers}: expected at least 1")
    if not 0.0 <= far_fraction <= 1.0:
        raise ValueError(f"--far-fraction={far_fraction}: expected a value in [0, 1]")
    if not (temperature > 0 and far_temperature > 0):
        raise ValueError(f"--temperature={temperature}, --far-temperature={far_temperature}: expected > 0 K")
    if scheme not in SAMPLING_SCHEMES:
        raise ValueError(f"--scheme={scheme!r}: expected one of {', '.join(SAMPLING_SCHEMES)}")
    if chunk < 1 or workers < 0:
        raise ValueError(f"--chunk={chunk}, --workers={workers}: expected chunk >= 1 and workers >= 0")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    path = qm_dataset_path(name, root)
    if path.exists() and not (resume or overwrite):
        raise FileExistsError(f"{path}: exists (use --resume to continue it or --overwrite to replace it)")
    if resume and not path.exists():
        raise FileNotFoundError(f"{path}: nothing to resume (run without --resume)")
    molecule = molecule_from_smiles(smiles)
    species = molecule.species
    gfn2_threads = threads  # None → 1 (methods.MethodSpec.threads)
    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    common = {"charge": molecule.charge, "multiplicity": molecule.multiplicity, "xc": xc, "basis": basis}
    if fd_step is not None:
        common["fd_step"] = fd_step
    if xtb_accuracy is not None:
        common["xtb_accuracy"] = xtb_accuracy
    label_extra = {} if max_iter is None else {"max_iter": int(max_iter)}
    spec = MethodSpec(name=method, threads=threads if method == "dft" else gfn2_threads, **common, **label_extra)
    sampling_spec = MethodSpec(name=sampling_method, threads=threads if sampling_method == "dft" else gfn2_threads,
                               **common)  # fmt: skip
    check_elements(species, spec)
    check_elements(species, sampling_spec)

    settings = {
        "smiles": smiles, "method": spec.label, "configs": int(configs), "conformers": int(conformers),
        "temperature": float(temperature), "far_temperature": float(far_temperature),
        "far_fraction": float(far_fraction), "scheme": scheme, "min_wavenumber": float(min_wavenumber),
        "seed": int(seed), "sampling_method": sampling_spec.label, "hessians": bool(hessians),
        "convergence": spec.convergence(), "fmax": float(fmax),
    }  # fmt: skip
    if resume:
        old = open_qm_dataset(path)
        mismatch = _settings_mismatch(old.attrs.get("sampling", {}), settings)
        if mismatch:
            raise ValueError(f"{path}: --resume with different settings ({mismatch}); use --overwrite to rebuild")
        done = old.done | (old.failed & (not retry_failed))
        n_structures = old.n_structures
    else:
        sampled = sample_structures(species, molecule, configs, conformers=conformers, seed=seed,
                                    temperature=temperature, far_temperature=far_temperature,
                                    far_fraction=far_fraction, scheme=scheme, min_wavenumber=min_wavenumber,
                                    sampling_spec=sampling_spec, fmax=fmax)  # fmt: skip
        attrs = {
            "name": name, "smiles": smiles, "method": spec.label, "basis": spec.basis if method == "dft" else "none",
            "program": "tblite" if method == "gfn2-xtb" else "pyscf", "versions": method_versions(spec),
            "convergence": spec.convergence(), "hessian_method": spec.hessian_method if hessians else "none",
            "seed": int(seed), "temperature_near": float(temperature), "temperature_far": float(far_temperature),
            "charge": molecule.charge, "multiplicity": molecule.multiplicity, "sampling": settings,
            "minima_method": sampling_spec.label,
            "minima_lowest_wavenumbers": json.dumps([round(w, 3) for w in sampled.lowest_wavenumbers]),
            "minima_optimisation_steps": json.dumps(list(sampled.optimisation_steps)),
        }  # fmt: skip
        create_qm_dataset(path, species, sampled.coordinates, subset=sampled.subset, conformer=sampled.conformer,
                          with_hessians=hessians, attrs=attrs, minima=sampled.minima, overwrite=overwrite)  # fmt: skip
        done = np.zeros(configs, bool)
        n_structures = configs
    coords_all = open_qm_dataset(path, validate=False).coordinates
    todo = np.flatnonzero(~done)
    result = BuildResult(path, n_structures, skipped=int(n_structures - todo.size))
    chunks = [todo[i : i + chunk] for i in range(0, todo.size, chunk)]
    ex, n_slots = _make_executor(workers, threads, scheduler)
    result.workers = n_slots if scheduler else workers
    bar = tqdm(total=n_structures, initial=result.skipped, unit="structure", disable=not progress,
               desc=f"{name} {spec.label}")  # fmt: skip
    committed = 0
    try:
        pending: set = set()
        queue = list(chunks)
        ready: dict = {}  # first index → finished chunk, committed in structure order
        order = [int(c[0]) for c in chunks]
        next_commit = 0
        while queue or pending:
            while queue and len(pending) < 2 * n_slots:
                idx = queue.pop(0)
                pending.add(ex.submit(label_chunk, species, coords_all[idx], idx, spec, hessians))
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                out = fut.result()
                ready[int(out[0][0])] = out
            while next_commit < len(order) and order[next_commit] in ready:
                idx, e, g, h, ok, msgs, qm_s = ready.pop(order[next_commit])
                next_commit += 1
                if ok.any():
                    write_qm_results(path, idx[ok], e[ok], -g[ok], None if h is None else h[ok])
                if (~ok).any():
                    record_qm_failures(path, idx[~ok], [m for m, k in zip(msgs, ok, strict=True) if not k])
                    result.failures += [f"structure {i}: {m}" for i, m, k in zip(idx, msgs, ok, strict=True) if not k]
                result.computed += int(ok.sum())
                result.failed += int((~ok).sum())
                result.qm_s += qm_s
                bar.update(len(idx))
                committed += 1
                if interrupt_after_chunks is not None and committed >= interrupt_after_chunks:
                    for p in pending:
                        p.cancel()
                    raise BuildInterrupted(f"interrupted after {committed} chunks")
    finally:
        bar.close()
        ex.shutdown(wait=True, cancel_futures=True)
    result.wall_s = time.perf_counter() - t_start
    return result


def settings_of(result: BuildResult) -> dict:
    """The result as a JSON-ready dict (for printing)."""
    out = asdict(result)
    out["path"] = str(result.path)
    out["per_structure_s"] = result.per_structure_s
    return out
