"""All-atom reference MD with OpenMM, written to the hessid dataset file (``hessid data simulate``).

Amber14 (``amber14-all.xml``) with implicit solvent GBn2 by default (``obc2``; ``explicit`` =
TIP3P-FB box with PME; ``vacuum`` for tests), HBond constraints, LangevinMiddle integrator,
energy minimisation, equilibration, production with a stride.

Thermostat: OpenMM's ``LangevinMiddleIntegrator`` (Zhang, Liu, Zhang, Wang & Liu, J. Chem.
Phys. 151, 044503 (2019); the BAOAB "middle" splitting of Leimkuhler & Matthews, Appl. Math.
Res. Express 2013, 34) is Langevin dynamics: its exact flow has the canonical density
∝ exp(−β[U(r) + K(p)]) as its stationary distribution for any friction > 0, so the configurations
follow exp(−βU(r)) (with holonomic constraints, on the constraint manifold; hydrogen mass
repartitioning changes masses, hence only the dynamics). The discretisation biases
configurational averages by O(Δt²); the middle (BAOAB-type) placement of the thermostat step
makes that error small — for a harmonic U, BAOAB samples the configurations exactly at any
stable Δt (Leimkuhler & Matthews). Unlike Berendsen, it does not bias ⟨U⟩ or its variance
(spec thermo.md §4), which the temperature-aware losses need.

Several temperatures can share one file (temperature segments, :func:`simulate`): each frame
stores its thermostat temperature (dataset ``temperature``, K) next to its potential energy. Every saved frame stores the
positions *and the forces of those positions* (one ``getState`` after the step), converted at
the OpenMM boundary: nm → Å (×10), kJ/mol/nm → kcal/mol/Å (÷41.84), kJ/mol → kcal/mol.

Frames are written in chunks, each append guarded by a pre-append copy ``<name>.h5.bak`` that
``--resume`` puts back if the append was killed (:func:`hessid.training.data.io.begin_append`);
after each chunk is committed (HDF5 flush + fsync,
:func:`hessid.training.data.io.commit`) the OpenMM checkpoint ``<name>.chk`` is replaced
atomically (write, fsync, rename). The checkpoint's step count fixes how many frames it
stands for (``steps_done // stride``), so ``--resume`` cuts any frames flushed after the last
checkpoint and continues bit-for-bit (the checkpoint restores the Langevin RNG).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
from tqdm.auto import tqdm

from hessid.training.data import schema as sc
from hessid.training.data.io import (
    append_frames,
    begin_append,
    commit,
    crash_point,
    create_dataset,
    dataset_path,
    end_append,
    open_for_append,
    read_topology_text,
    topology_from_pdb,
    truncate_frames,
)
from hessid.training.data.structures import Structure, structure_from_pdb_text
from hessid.units import (
    energy_kj_to_kcal,
    force_kj_nm_to_kcal_angstrom,
    length_nm_to_angstrom,
)

SOLVENTS = ("gbn2", "obc2", "explicit", "vacuum")
_SOLVENT_FILES = {
    "gbn2": ["implicit/gbn2.xml"],
    "obc2": ["implicit/obc2.xml"],
    "explicit": ["amber14/tip3pfb.xml"],
    "vacuum": [],
}


log = logging.getLogger(__name__)

#: the default Langevin/velocity seed: fixed and non-zero (OpenMM reads 0 as "random")
DEFAULT_SEED = 12345


class SimulationInterrupted(RuntimeError):
    """Raised by :func:`simulate` when ``interrupt_after_chunks`` is reached (a test hook that
    behaves like a killed run: frames and checkpoint of finished chunks are on disk)."""


@dataclass
class MDConfig:
    """Settings of an AA simulation (units in the names' comments).

    Attributes:
        steps: production steps (frames = steps // stride).
        stride: steps between saved frames.
        temperature: thermostat set-point, K; on an existing dataset a temperature it does not
            hold adds a temperature segment (docs/data.md "Multi-temperature datasets").
        friction: 1/ps.  timestep: fs.
        equilibration_steps: steps after minimisation, before production (not saved).
        minimize: run OpenMM's L-BFGS minimiser first (tolerance 10 kJ/mol/nm).
        solvent: one of :data:`SOLVENTS`.  forcefield: main force-field XML.
        padding: explicit solvent box padding, nm (OpenMM boundary).
        constraints: "HBonds" | "none".
        hydrogen_mass: amu, or None for the force field's masses. Hydrogen mass
            repartitioning (mass moved from the bonded heavy atom; 3–4 amu with a 4 fs step is
            the usual choice). Masses change the dynamics only, not the configurational
            Boltzmann distribution, forces or Term 1: mapped data stay valid reference data.
        platform: OpenMM platform name (default: CUDA if present, else CPU).
        threads: CPU-platform threads (None: OpenMM's default).
        seed: Langevin and velocity seed, in [1, 2**31); the fixed default is stored in every
            file. OpenMM reads 0 as "pick a random seed": ``hessid data simulate --seed 0`` is
            refused, and :func:`simulate` replaces 0 by :data:`DEFAULT_SEED` with a warning.
        chunk_frames: frames per HDF5 write / checkpoint.
        deterministic: bit-identical reruns: CPU platform with one thread and
            ``DeterministicForces=true`` (default platform then CPU; Reference is deterministic
            anyway; CUDA/OpenCL get ``DeterministicForces=true``, reproducible on the same GPU
            and driver only). Without it the same seed gives the same run only up to the
            order of floating-point sums across threads.
    """

    steps: int = 10_000
    stride: int = 500
    temperature: float = 300.0
    friction: float = 1.0
    timestep: float = 2.0
    equilibration_steps: int = 0
    minimize: bool = True
    solvent: str = "gbn2"
    forcefield: str = "amber14-all.xml"
    padding: float = 1.0
    constraints: str = "HBonds"
    hydrogen_mass: float | None = None
    platform: str | None = None
    threads: int | None = None
    seed: int = 12345  # DEFAULT_SEED
    chunk_frames: int = 10
    deterministic: bool = False


#: MDConfig fields that fix the physics or the trajectory of a run: ``--resume`` refuses a
#: change (execution fields — platform, threads, chunk_frames — and steps may change)
RESUME_FIXED = ("stride", "temperature", "friction", "timestep", "equilibration_steps", "minimize",
                "solvent", "forcefield", "padding", "constraints", "hydrogen_mass", "seed",
                "deterministic")
#: accepted ranges of MDConfig's numbers: (low, high), inclusive
MD_RANGES = {"temperature": (1.0, 1000.0), "timestep": (0.01, 5.0), "friction": (1e-6, 1e4),
             "padding": (0.5, 10.0)}
#: OpenMM's random seeds are C ints; 0 means "random"
SEED_RANGE = (1, 2**31 - 1)


def check_md_config(cfg: MDConfig) -> None:
    """Range-check an :class:`MDConfig` before anything is created.

    Ranges: steps ≥ 0, stride ≥ 1, chunk_frames ≥ 1, equilibration_steps ≥ 0, threads ≥ 1,
    seed in :data:`SEED_RANGE`, :data:`MD_RANGES` (temperature K, timestep fs — above 5 fs
    even hydrogen-mass-repartitioned amber14 with HBond constraints is unstable —, friction
    1/ps, padding nm), hydrogen_mass in (0, 10] amu, known solvent and constraints.

    Raises:
        ValueError: the first value out of range (one line naming the option).
    """
    ints = {"steps": 0, "stride": 1, "chunk_frames": 1, "equilibration_steps": 0}
    for name, low in ints.items():
        if int(getattr(cfg, name)) < low:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(cfg, name)}: expected an integer >= {low}")
    for name, (lo, hi) in MD_RANGES.items():
        value = float(getattr(cfg, name))
        if not lo <= value <= hi:
            raise ValueError(f"--{name}={getattr(cfg, name)}: expected a value in [{lo:g}, {hi:g}]"
                             + (" fs" if name == "timestep" else ""))
    if cfg.threads is not None and int(cfg.threads) < 1:
        raise ValueError(f"--threads={cfg.threads}: expected at least 1")
    if not SEED_RANGE[0] <= int(cfg.seed) <= SEED_RANGE[1]:
        raise ValueError(f"--seed={cfg.seed}: expected an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] "
                         "(OpenMM reads 0 as 'random')")
    if cfg.hydrogen_mass is not None and not 0 < float(cfg.hydrogen_mass) <= 10.0:
        raise ValueError(f"--hydrogen-mass={cfg.hydrogen_mass}: expected amu in (0, 10]")
    if cfg.solvent not in SOLVENTS:
        raise ValueError(f"--solvent={cfg.solvent!r}: expected one of {', '.join(SOLVENTS)}")
    if str(cfg.constraints).lower() not in ("hbonds", "none"):
        raise ValueError(f"--constraints={cfg.constraints!r}: expected HBonds or none")
    if cfg.deterministic and cfg.threads is not None and int(cfg.threads) != 1:
        raise ValueError(f"--deterministic runs one CPU thread; --threads={cfg.threads} contradicts it")


def forcefield_files(forcefield: str = "amber14-all.xml", solvent: str = "gbn2") -> list[str]:
    """Force-field XML files for ``solvent`` (see :data:`SOLVENTS`).

    Raises:
        ValueError: unknown solvent.
    """
    if solvent not in _SOLVENT_FILES:
        raise ValueError(f"solvent {solvent!r} is not one of {SOLVENTS}")
    return [forcefield, *_SOLVENT_FILES[solvent]]


def create_system(topology, forcefield: str = "amber14-all.xml", solvent: str = "gbn2",
                  constraints: str = "HBonds", hydrogen_mass: float | None = None):  # fmt: skip
    """OpenMM ``System`` for a (possibly already solvated) topology.

    Implicit/vacuum: ``NoCutoff``. Explicit: PME, 1.0 nm cutoff, rigid water.
    Constrained bonds carry no ``HarmonicBondForce`` term (OpenMM's convention), so the
    potential — and hence Term 1 computed from it — is that of the sampled, constrained
    model.

    ``hydrogen_mass`` (amu): hydrogen mass repartitioning (OpenMM's ``hydrogenMass``); None
    keeps the force field's masses.

    Returns:
        ``openmm.System`` (kJ/mol, nm inside).

    Raises:
        ValueError: unknown solvent or constraints; a residue without a template; a
            non-positive ``hydrogen_mass``.
    """

    files = forcefield_files(forcefield, solvent)
    cons = {"hbonds": app.HBonds, "none": None}.get(str(constraints).lower(), "bad")
    if cons == "bad":
        raise ValueError(f"constraints {constraints!r} must be 'HBonds' or 'none'")
    kw = {}
    if hydrogen_mass is not None:
        if not float(hydrogen_mass) > 0:
            raise ValueError(f"hydrogen_mass must be > 0 amu, got {hydrogen_mass!r}")
        kw["hydrogenMass"] = float(hydrogen_mass) * u.amu
    ff = app.ForceField(*files)
    if solvent == "explicit":
        return ff.createSystem(topology, nonbondedMethod=app.PME,
                               nonbondedCutoff=1.0 * u.nanometer, constraints=cons, **kw)  # fmt: skip
    return ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=cons, **kw)


_CONSTRAINT_RE = re.compile(r'<Constraint d="([^"]*)" p1="(\d+)" p2="(\d+)"/>')


def dataset_attrs(name: str, cfg: MDConfig, platform, properties: dict, forcefield_hash: str) -> dict:
    """Root attributes of a simulated dataset file (docs/architecture.md, dataset layout).

    Args:
        name: dataset name.  cfg: the run's :class:`MDConfig` (stored as ``md_config`` JSON).
        platform: the OpenMM ``Platform`` used.  properties: its properties (precision, threads).
        forcefield_hash: :func:`system_hash` of the System *without* mass changes (the potential
            the targets rebuild; HMR or frozen-atom masses change only the dynamics).

    Returns:
        dict: ``name``, ``temperature`` (K), ``forcefield``, ``forcefield_files`` (JSON),
        ``solvent``, ``constraints``, ``platform``, ``precision``, ``seed``, ``timestep_fs``,
        ``friction_per_ps``, ``stride``, ``forcefield_hash``, ``md_config``, ``time_unit="ps"``,
        ``platform_properties`` (JSON, e.g. ``{"DeterministicForces": "true", "Threads": "1"}``).
    """
    return {
        "name": name, "temperature": float(cfg.temperature), "forcefield": cfg.forcefield,
        "forcefield_files": json.dumps(forcefield_files(cfg.forcefield, cfg.solvent)),
        "solvent": cfg.solvent, "constraints": cfg.constraints, "platform": platform.getName(),
        "precision": platform_precision(platform.getName(), properties), "seed": int(cfg.seed),
        "timestep_fs": float(cfg.timestep), "friction_per_ps": float(cfg.friction),
        "stride": int(cfg.stride), "forcefield_hash": forcefield_hash,
        "md_config": json.dumps(asdict(cfg)), "time_unit": "ps",
        "platform_properties": json.dumps(properties, sort_keys=True),
    }  # fmt: skip


def system_hash(system) -> str:
    """sha256 of the serialized ``System`` (masses, box, every force's parameters): the
    ``forcefield_hash`` attribute that ties targets to the exact potential.

    Constraints are hashed as a sorted set of ``(i, j, d)`` with i < j, because their order
    depends on the order of the topology's bonds, which a PDB round trip changes for rigid
    waters (explicit solvent) without changing the potential.

    Returns:
        64 hex digits.
    """

    xml = openmm.XmlSerializer.serialize(system)
    pairs = sorted((min(int(i), int(j)), max(int(i), int(j)), d)
                   for d, i, j in _CONSTRAINT_RE.findall(xml))  # fmt: skip
    xml = _CONSTRAINT_RE.sub("", xml) + json.dumps(pairs)
    return hashlib.sha256(xml.encode()).hexdigest()


def choose_platform(name: str | None = None, threads: int | None = None,
                    precision: str | None = None, deterministic: bool = False):  # fmt: skip
    """OpenMM platform and properties: ``name`` if given, else CUDA if present, else CPU
    (with ``deterministic``: else CPU).

    Args:
        name: "Reference" | "CPU" | "CUDA" | "OpenCL" | None.
        threads: CPU threads (CPU platform only).
        precision: "single" | "mixed" | "double" (CUDA/OpenCL only).
        deterministic: CPU: ``Threads=1``, ``DeterministicForces=true``; CUDA/OpenCL:
            ``DeterministicForces=true``; Reference: nothing (deterministic already).

    Returns:
        ``(platform, properties)``.

    Raises:
        ValueError: the named platform is not available (message lists the available ones).
    """

    names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name is None:
        name = "CUDA" if "CUDA" in names and not deterministic else "CPU"
    if name not in names:
        raise ValueError(f"OpenMM platform {name!r} not available; available: {names}")
    props = {}
    if name == "CPU" and threads:
        props["Threads"] = str(int(threads))
    if name in ("CUDA", "OpenCL") and precision:
        props["Precision"] = precision
    if deterministic and name == "CPU":
        props["Threads"] = "1"
    if deterministic and name != "Reference":
        props["DeterministicForces"] = "true"
    return openmm.Platform.getPlatformByName(name), props


def platform_precision(platform_name: str, properties: dict | None = None) -> str:
    """Floating-point model of a platform: Reference "double", CPU "mixed" (single-precision
    forces, double accumulation), CUDA/OpenCL their ``Precision`` property (default single)."""
    if platform_name == "Reference":
        return "double"
    if platform_name == "CPU":
        return "mixed"
    return (properties or {}).get("Precision", "single")


def resumed_config(path: Path, stored: dict, given: MDConfig | None) -> MDConfig:
    """The configuration of a resumed run: the stored ``md_config`` with the given ``steps``
    and execution settings (platform, threads, chunk_frames).

    A field of :data:`RESUME_FIXED` given with a value other than the stored one is refused:
    continuing with it would make ``md_config`` describe a run that did not happen. A given
    value equal to :class:`MDConfig`'s default counts as "not given" (the CLI cannot tell the
    two apart), so the stored value is kept.

    Raises:
        ValueError: a changed fixed setting (one line naming it, both values and the file).
    """
    default = MDConfig()
    known = {f.name for f in dataclasses.fields(MDConfig)}
    merged = {**asdict(default), **{k: v for k, v in stored.items() if k in known}}
    if given is not None:
        for k in RESUME_FIXED:
            new = getattr(given, k)
            if new != merged[k] and new != getattr(default, k):
                raise ValueError(f"{path}: --resume with {k}={new!r} but the stored run used {merged[k]!r} "
                                 "(a resumed run keeps its settings; start a new dataset to change it)")
        merged["steps"] = given.steps
        for k in ("platform", "threads", "chunk_frames"):  # execution, not physics: may change
            if getattr(given, k) is not None:
                merged[k] = getattr(given, k)
    return MDConfig(**merged)


def _write_checkpoint(context, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(context.createCheckpoint())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def state_arrays(context, periodic: bool):
    """The current state of an OpenMM context in hessid units.

    Returns:
        ``(positions (N, 3) float64 Å, forces (N, 3) float64 kcal/mol/Å of those positions,
        potential energy float kcal/mol, time float ps, box (3, 3) Å or None)``.
    """
    st = context.getState(getPositions=True, getForces=True, getEnergy=True)
    pos = length_nm_to_angstrom(st.getPositions(asNumpy=True).value_in_unit(u.nanometer))
    frc = force_kj_nm_to_kcal_angstrom(
        st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    )
    ene = energy_kj_to_kcal(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
    box = None
    if periodic:
        box = length_nm_to_angstrom(
            np.asarray(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer))
        )
    return (np.asarray(pos, "f8"), np.asarray(frc, "f8"), float(ene),
            st.getTime().value_in_unit(u.picosecond), box)  # fmt: skip


#: the integrator of every AA run and temperature segment (stored in each segment record)
INTEGRATOR = "LangevinMiddleIntegrator"
#: MDConfig fields every temperature segment of one file shares: the sampled system (force
#: field, solvent, constraints, box padding, masses), the dynamics and frame spacing, and the
#: base seed. A new segment may change only ``temperature``, ``steps``,
#: ``equilibration_steps`` and the execution settings (platform, threads, chunk_frames).
SEGMENT_SHARED = tuple(k for k in RESUME_FIXED if k not in ("temperature", "equilibration_steps"))


def segment_seed(seed: int, temperature: float) -> int:
    """Langevin/velocity seed of a temperature segment added to an existing file.

    The segment that creates the file uses ``seed`` itself (so a single-temperature run is
    the run of earlier hessid versions); each later segment uses this deterministic function of
    the base seed and its temperature: the first 8 bytes of sha256(``"hessid-segment:<seed>:
    <T to 1e-6 K>"``) mapped into :data:`SEED_RANGE` (never 0, OpenMM's "random").

    Args:
        seed: the file's base seed (``md_config`` seed).  temperature: K.

    Returns:
        int in [1, 2**31 − 1].
    """
    digest = hashlib.sha256(f"hessid-segment:{int(seed)}:{float(temperature):.6f}".encode()).digest()
    lo, hi = SEED_RANGE
    return lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)


def segment_checkpoint_name(stem: str, temperature: float, first: bool) -> str:
    """Checkpoint file of a segment: ``NAME.chk`` for the one that created the file (as before
    multi-temperature files existed), ``NAME.<T>K.chk`` (e.g. ``ala2.350K.chk``) for later ones."""
    return f"{stem}.chk" if first else f"{stem}.{float(temperature):g}K.chk"


def segment_record(cfg: MDConfig, seed: int, checkpoint: str) -> dict:
    """Provenance of one temperature segment (an item of the root attribute ``segments``).

    Returns:
        dict: ``temperature`` K, ``seed`` (the one given to OpenMM), ``integrator``
        (:data:`INTEGRATOR`), ``thermostat`` (what it samples), ``steps``,
        ``equilibration_steps``, ``checkpoint`` (file name in the dataset folder), ``md_config``
        (the segment's :class:`MDConfig` with the file's base seed).
    """
    return {"temperature": float(cfg.temperature), "seed": int(seed), "integrator": INTEGRATOR,
            "thermostat": "Langevin (BAOAB-type middle scheme): canonical in configurations",
            "steps": int(cfg.steps), "equilibration_steps": int(cfg.equilibration_steps),
            "checkpoint": checkpoint, "md_config": asdict(cfg)}  # fmt: skip


def stored_segments(h5, stem: str) -> list[dict]:
    """The segment records of an open simulated file: the root ``segments`` JSON, or (files of
    format version ≤ 2) one record built from ``md_config`` and the root temperature.

    Raises:
        DatasetError: the file has no ``md_config`` (not written by ``hessid data simulate``).
    """
    if sc.ATTR_SEGMENTS in h5.attrs:
        return list(json.loads(h5.attrs[sc.ATTR_SEGMENTS]))
    if sc.ATTR_MD_CONFIG not in h5.attrs:
        raise sc.DatasetError(h5.filename, None, "has no 'md_config' attribute: not written by "
                              "`hessid data simulate`, so it cannot be resumed or extended")  # fmt: skip
    md = json.loads(h5.attrs[sc.ATTR_MD_CONFIG])
    known = {f.name for f in dataclasses.fields(MDConfig)}
    cfg = MDConfig(**{k: v for k, v in md.items() if k in known})
    if sc.ATTR_TEMPERATURE in h5.attrs:
        cfg = dataclasses.replace(cfg, temperature=float(h5.attrs[sc.ATTR_TEMPERATURE]))
    return [segment_record(cfg, cfg.seed, segment_checkpoint_name(stem, cfg.temperature, True))]


def _find_segment(segments: list[dict], temperature: float) -> int | None:
    for i, seg in enumerate(segments):
        if abs(float(seg["temperature"]) - float(temperature)) < 1e-6:
            return i
    return None


def new_segment_config(path: Path, stored: dict, given: MDConfig) -> MDConfig:
    """Settings of a new temperature segment: the given ones where they differ from
    :class:`MDConfig`'s defaults (the CLI cannot tell a default from "not given"), else the
    stored first segment's; the fields of :data:`SEGMENT_SHARED` must equal the stored ones.

    Raises:
        ValueError: a shared setting given with another value (one line naming it, both
            values and the file).
    """
    default = MDConfig()
    known = {f.name for f in dataclasses.fields(MDConfig)}
    merged = {**asdict(default), **{k: v for k, v in stored.items() if k in known}}
    for k in SEGMENT_SHARED:
        new = getattr(given, k)
        if new != merged[k] and new != getattr(default, k):
            raise ValueError(f"{path}: a new temperature segment with {k}={new!r} but the file's segments "
                             f"use {merged[k]!r} (every temperature of one dataset samples the same system "
                             "with the same dynamics; start a new dataset to change it)")  # fmt: skip
    merged["temperature"] = float(given.temperature)
    merged["steps"] = int(given.steps)
    if given.equilibration_steps != default.equilibration_steps:
        merged["equilibration_steps"] = int(given.equilibration_steps)
    for k in ("platform", "threads", "chunk_frames"):  # execution, not physics
        if getattr(given, k) != getattr(default, k):
            merged[k] = getattr(given, k)
    return MDConfig(**merged)


def _checkpoint_steps(system, chk_path: Path, plat, props) -> int:
    """Step count of an OpenMM checkpoint (loaded into a throw-away context)."""
    integrator = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.001 * u.picosecond)
    context = openmm.Context(system, integrator, plat, props)
    try:
        context.loadCheckpoint(chk_path.read_bytes())
        return int(context.getStepCount())
    finally:
        del context


def _start_structure(folder: Path, stem: str, cfg: MDConfig):
    """Topology and positions (nm) of a new run: ``NAME.pdb``, solvated for explicit solvent."""
    pdb_path = folder / f"{stem}.pdb"
    if not pdb_path.exists():
        raise FileNotFoundError(f"{pdb_path}: no structure (run `hessid data build` first)")
    s = structure_from_pdb_text(pdb_path.read_text(), str(pdb_path))
    top, positions = s.topology, s.positions_nm() * u.nanometer
    if cfg.solvent == "explicit":
        modeller = app.Modeller(top, positions)
        ff = app.ForceField(*forcefield_files(cfg.forcefield, cfg.solvent))
        modeller.addSolvent(ff, model="tip3p", padding=cfg.padding * u.nanometer)
        top, positions = modeller.topology, modeller.positions
    return top, positions


def _equilibrate(context, integrator, cfg: MDConfig, seed: int, positions, top, periodic: bool) -> None:
    """Minimise (``cfg.minimize``), draw Maxwell–Boltzmann velocities at ``cfg.temperature``
    with ``seed``, run ``cfg.equilibration_steps``, and reset time and step count to 0."""
    context.setPositions(positions)
    if periodic:
        context.setPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    if cfg.minimize:
        openmm.LocalEnergyMinimizer.minimize(context, 10.0)
    context.setVelocitiesToTemperature(cfg.temperature * u.kelvin, int(seed))
    if cfg.equilibration_steps:
        integrator.step(int(cfg.equilibration_steps))
    context.setTime(0.0)
    context.setStepCount(0)


def simulate(
    name: str | Path,
    config: MDConfig | None = None,
    root: str | Path = ".",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    interrupt_after_chunks: int | None = None,
) -> Path:
    """Run (or resume, or add a temperature to) an AA simulation of ``<root>/<name>/<name>.pdb``
    into ``<name>.h5``.

    Writes the dataset layout of :mod:`hessid.training.data.io` (coordinates Å, forces of the saved
    positions kcal/mol/Å, potential energy kcal/mol (float64, the whole System: force field +
    implicit solvent or PME water), the thermostat temperature K per frame, time ps from the
    start of the segment's production, frame_id = global frame counter) plus ``box`` for
    explicit solvent, and an OpenMM checkpoint per temperature segment.

    Temperature segments (docs/data.md "Multi-temperature datasets"): on an existing file,

    * a ``config.temperature`` the file does not hold starts a new segment (refused with
      ``resume``, which only continues a held temperature): same system and dynamics (:data:`SEGMENT_SHARED`, refused otherwise), seed
      :func:`segment_seed`, its own minimisation from ``NAME.pdb``, velocities and
      equilibration at that temperature, its own checkpoint
      (:func:`segment_checkpoint_name`), a record in the root attribute ``segments``; the
      root ``temperature`` attribute is removed once the file holds two temperatures;
    * a temperature it holds needs ``resume``: the segment continues from its checkpoint up to
      ``config.steps`` production steps (a larger ``steps`` extends it), bit-for-bit;
    * ``resume`` with the default temperature (or ``config=None``) continues the segment of the
      file's last frame.

    Args:
        name: dataset name or directory (see :func:`hessid.training.data.io.dataset_path`).
        config: :class:`MDConfig` (on resume the segment's stored settings are used; ``steps``
            extends).
        root: folder holding ``<name>/``.
        resume: continue a segment from its checkpoint.
        overwrite: replace an existing dataset (when not resuming).
        progress: tqdm progress bar with ns/day.
        interrupt_after_chunks: test hook; raise :class:`SimulationInterrupted` after this many
            chunks have been committed.

    Returns:
        path of the HDF5 dataset.

    Raises:
        FileNotFoundError: no ``<name>.pdb`` (run ``hessid data build``), or ``--resume`` without
            a dataset or checkpoint.
        FileExistsError: the dataset holds the temperature and neither ``resume`` nor ``overwrite``.
        ValueError: bad settings (:func:`check_md_config`; seed 0 is replaced, not refused), a
            ``resume`` that changes a :data:`RESUME_FIXED` setting or names a temperature the file
            does not hold, a new segment that changes a
            :data:`SEGMENT_SHARED` setting or builds another System (force-field hash), the
            stored file disagrees with a checkpoint, or the file cannot be opened.
    """

    cfg = config or MDConfig()
    if int(cfg.seed) == 0:  # OpenMM's "random": never passed on (the CLI refuses --seed 0)
        log.warning("seed 0 means 'random' to OpenMM; using the fixed default seed %d (stored in the file)",
                    DEFAULT_SEED)
        cfg = dataclasses.replace(cfg, seed=DEFAULT_SEED)
    h5_path = dataset_path(name, root)
    folder, stem = h5_path.parent, h5_path.stem
    check_md_config(cfg)
    if resume and not h5_path.exists():
        raise FileNotFoundError(f"{folder / (stem + '.chk')}: no checkpoint to resume from (or {h5_path} missing)")
    if h5_path.exists() and (resume or not overwrite):
        return _continue(h5_path, None if config is None else cfg, resume, progress, interrupt_after_chunks)

    top, positions = _start_structure(folder, stem, cfg)
    periodic = cfg.solvent == "explicit"
    system = create_system(top, cfg.forcefield, cfg.solvent, cfg.constraints, cfg.hydrogen_mass)
    integrator = openmm.LangevinMiddleIntegrator(
        cfg.temperature * u.kelvin, cfg.friction / u.picosecond, cfg.timestep * u.femtosecond
    )
    integrator.setRandomNumberSeed(int(cfg.seed))
    plat, props = choose_platform(cfg.platform, cfg.threads, deterministic=cfg.deterministic)
    context = openmm.Context(system, integrator, plat, props)
    _equilibrate(context, integrator, cfg, cfg.seed, positions, top, periodic)
    st = context.getState(getPositions=True)
    if periodic:
        top.setPeriodicBoxVectors(st.getPeriodicBoxVectors())
    pdb_text = Structure(top, length_nm_to_angstrom(
        st.getPositions(asNumpy=True).value_in_unit(u.nanometer)), "").to_pdb()  # fmt: skip
    # the potential's hash: with HMR the sampled System differs only in its masses
    potential = system if cfg.hydrogen_mass is None else create_system(
        top, cfg.forcefield, cfg.solvent, cfg.constraints)  # fmt: skip
    attrs = dataset_attrs(stem, cfg, plat, props, system_hash(potential))
    chk_name = segment_checkpoint_name(stem, cfg.temperature, True)
    attrs[sc.ATTR_SEGMENTS] = json.dumps([segment_record(cfg, cfg.seed, chk_name)])
    h5 = create_dataset(h5_path, pdb_text, attrs, periodic=periodic,
                        overwrite=overwrite, chunk_frames=cfg.chunk_frames)  # fmt: skip
    try:
        for stale in folder.glob(f"{stem}.*K.chk"):  # checkpoints of a replaced file's segments
            stale.unlink()
        _write_checkpoint(context, folder / chk_name)
        _production(context, integrator, h5, folder / chk_name, cfg, 0, cfg.steps // cfg.stride, periodic,
                    progress, interrupt_after_chunks, first_frame_id=0)  # fmt: skip
    finally:
        h5.close()
    return h5_path


def _continue(h5_path: Path, given: MDConfig | None, resume: bool, progress: bool,
              interrupt_after_chunks: int | None) -> Path:  # fmt: skip
    """:func:`simulate` on an existing file: resume/extend a segment or add one."""
    folder, stem = h5_path.parent, h5_path.stem
    h5 = open_for_append(h5_path)  # DatasetError (a ValueError) if a kill damaged it; rolls back a torn append
    try:
        segments = stored_segments(h5, stem)
        n_rows = h5[sc.COORDINATES].shape[0]
        if sc.FRAME_TEMPERATURE in h5:
            temps = h5[sc.FRAME_TEMPERATURE][()].astype(np.float64)
        else:  # version ≤ 2: every frame at the one segment's temperature
            temps = np.full(n_rows, float(segments[0]["temperature"]))
        last_t = float(temps[-1]) if n_rows else float(segments[-1]["temperature"])
        target = None if given is None else float(given.temperature)
        if (target is not None and resume and target == MDConfig().temperature
                and _find_segment(segments, target) is None):
            target = None  # the default temperature: "not given" (the CLI cannot tell them apart)
        target = last_t if target is None else target
        index = _find_segment(segments, target)
        if index is not None and not resume:
            raise FileExistsError(f"{h5_path}: exists (use --overwrite to replace, --resume to continue or "
                                  f"extend its {target:g} K segment, or another --temperature to add a "
                                  "segment)")  # fmt: skip
        if index is None and resume:
            held = ", ".join(f"{float(s['temperature']):g}" for s in segments)
            raise ValueError(f"{h5_path}: --resume with temperature={target!r} but the file holds {held} K "
                             f"(--resume continues a held temperature; without it a {target:g} K segment is added)")
        first_md = segments[0]["md_config"]
        if index is None:
            cfg = new_segment_config(h5_path, first_md, given)
            seed = segment_seed(cfg.seed, cfg.temperature)
            chk_path = folder / segment_checkpoint_name(stem, cfg.temperature, False)
        else:
            cfg = resumed_config(h5_path, segments[index]["md_config"], given)
            seed = int(segments[index]["seed"])
            chk_path = folder / segments[index]["checkpoint"]
            if not chk_path.exists():
                raise FileNotFoundError(f"{chk_path}: no checkpoint to resume the {target:g} K segment from")
        check_md_config(cfg)
        top = topology_from_pdb(read_topology_text(h5), f"{h5_path}: topology")
        periodic = cfg.solvent == "explicit"
        plat, props = choose_platform(cfg.platform, cfg.threads, deterministic=cfg.deterministic)
        system = create_system(top, cfg.forcefield, cfg.solvent, cfg.constraints, cfg.hydrogen_mass)

        # frames flushed after the last checkpoint of the segment written last (a kill between
        # the file's commit and the checkpoint) are the file's last rows: cut them first
        last_index = _find_segment(segments, last_t)
        last_chk = folder / segments[last_index]["checkpoint"] if last_index is not None else None
        if n_rows and last_chk is not None and last_chk.exists():
            stride = int(segments[last_index]["md_config"]["stride"])
            steps = _checkpoint_steps(system, last_chk, plat, props)
            if steps % stride:
                raise ValueError(f"{last_chk}: step count {steps} is not a multiple of stride {stride}")
            have = int((temps == last_t).sum())
            extra = have - steps // stride
            if extra < 0:
                raise ValueError(f"{h5_path}: dataset 'coordinates' has {have} frames at {last_t:g} K "
                                 f"but the checkpoint {last_chk.name} stands for {steps // stride}")  # fmt: skip
            if extra and not (temps[n_rows - extra:] == last_t).all():
                raise ValueError(f"{h5_path}: the {extra} frames at {last_t:g} K after the checkpoint are not "
                                 "the file's last frames; the file was changed by hand")  # fmt: skip
            if extra:
                truncate_frames(h5, n_rows - extra)
                commit(h5)
                n_rows -= extra
                temps = temps[:n_rows]

        integrator = openmm.LangevinMiddleIntegrator(
            cfg.temperature * u.kelvin, cfg.friction / u.picosecond, cfg.timestep * u.femtosecond
        )
        integrator.setRandomNumberSeed(int(seed))
        context = openmm.Context(system, integrator, plat, props)
        have = int((temps == cfg.temperature).sum())
        if index is not None:
            context.loadCheckpoint(chk_path.read_bytes())
            if context.getStepCount() % cfg.stride:
                raise ValueError(f"{chk_path}: step count {context.getStepCount()} is not a multiple of stride "
                                 f"{cfg.stride}")  # fmt: skip
            n_done = context.getStepCount() // cfg.stride
            if have != n_done:
                raise ValueError(f"{h5_path}: dataset 'coordinates' has {have} frames at {cfg.temperature:g} K "
                                 f"but the checkpoint {chk_path.name} stands for {n_done}")  # fmt: skip
        else:
            new_top, positions = _start_structure(folder, stem, cfg)
            if new_top.getNumAtoms() != top.getNumAtoms():
                raise ValueError(f"{h5_path}: {folder / (stem + '.pdb')} gives {new_top.getNumAtoms()} atoms but the "
                                 f"dataset has {top.getNumAtoms()}; a new temperature must sample the same system")
            potential = create_system(new_top, cfg.forcefield, cfg.solvent, cfg.constraints)
            stored_hash = h5.attrs.get(sc.ATTR_FORCEFIELD_HASH)
            if stored_hash is not None and system_hash(potential) != str(stored_hash):
                raise ValueError(f"{h5_path}: {folder / (stem + '.pdb')} with the stored force field gives another "
                                 "potential (forcefield_hash differs); a new temperature must sample the same system")
            _equilibrate(context, integrator, cfg, seed, positions, new_top, periodic)
            n_done = 0

        record = segment_record(cfg, seed, chk_path.name)
        updated = list(segments)
        if index is None:
            updated.append(record)
        elif int(segments[index]["steps"]) != cfg.steps:
            updated[index] = {**segments[index], "steps": int(cfg.steps),
                              "md_config": {**segments[index]["md_config"], "steps": int(cfg.steps)}}  # fmt: skip
        _write_provenance(h5, updated, temps, index is None)
        if index is None:
            _write_checkpoint(context, chk_path)
        next_id = int(h5[sc.FRAME_ID][()].max()) + 1 if n_rows else 0
        _production(context, integrator, h5, chk_path, cfg, n_done, cfg.steps // cfg.stride, periodic,
                    progress, interrupt_after_chunks, first_frame_id=next_id - n_done)  # fmt: skip
    finally:
        h5.close()
    return h5_path


def _write_provenance(h5, segments: list[dict], temps: np.ndarray, new_segment: bool) -> None:
    """Store the segment records (and upgrade a version ≤ 2 file: per-frame ``temperature``
    filled from its one temperature, format version 3), guarded like an append; drop the root
    ``temperature`` once the segments hold two temperatures."""
    text = json.dumps(segments)
    upgrade = sc.FRAME_TEMPERATURE not in h5
    several = len({float(s["temperature"]) for s in segments}) > 1
    if not (upgrade or new_segment or text != h5.attrs.get(sc.ATTR_SEGMENTS)):
        return
    begin_append(h5)
    if upgrade:
        ds = h5.create_dataset(sc.FRAME_TEMPERATURE, data=temps, maxshape=(None,), dtype="f8",
                               chunks=(max(64, h5[sc.COORDINATES].chunks[0] if h5[sc.COORDINATES].chunks else 64),))
        ds.attrs[sc.ATTR_UNIT] = sc.TEMPERATURE_UNIT
        ds.attrs[sc.ATTR_MEANING] = sc.FRAME_TEMPERATURE_MEANING
    h5.attrs[sc.ATTR_FORMAT_VERSION] = sc.FORMAT_VERSION
    h5.attrs[sc.ATTR_SEGMENTS] = text
    if several and sc.ATTR_TEMPERATURE in h5.attrs:
        del h5.attrs[sc.ATTR_TEMPERATURE]
    crash_point("after_provenance")
    commit(h5)
    end_append(h5)


def _production(context, integrator, h5, chk_path, cfg, n_done, n_target, periodic,
                progress, interrupt_after_chunks, first_frame_id=0):  # fmt: skip
    """Production of one segment: frames ``n_done … n_target − 1`` of it, frame ids
    ``first_frame_id + n``, temperature ``cfg.temperature`` per frame."""

    bar = tqdm(total=n_target, initial=n_done, unit="frame", disable=not progress,
               desc=f"{Path(h5.filename).stem} MD")  # fmt: skip
    buf: list = []
    chunks = 0
    t_start, frames_run = _time.perf_counter(), 0
    ns_per_frame = cfg.stride * cfg.timestep * 1e-6
    n = n_done
    try:
        while n < n_target:
            integrator.step(int(cfg.stride))
            buf.append(state_arrays(context, periodic))
            n += 1
            frames_run += 1
            elapsed = _time.perf_counter() - t_start
            bar.update(1)
            bar.set_postfix(ns_per_day=f"{ns_per_frame * frames_run / elapsed * 86400:.1f}")
            if len(buf) == cfg.chunk_frames or n == n_target:
                pos, frc, ene, tim, box = zip(*buf, strict=True)
                begin_append(h5)  # NAME.h5.bak: the file as committed, restored on --resume
                append_frames(
                    h5, np.stack(pos), np.stack(frc), np.asarray(tim, "f8"),
                    first_frame_id + np.arange(n - len(buf), n, dtype=np.int64), np.asarray(ene, "f8"),
                    np.stack(box) if periodic else None, temperature=float(cfg.temperature),
                )  # flushed before the checkpoint: the checkpoint never runs ahead of the file
                h5.attrs[sc.ATTR_CHECKPOINT_FRAMES] = n
                commit(h5)  # flush + fsync: the checkpoint never runs ahead of the file
                crash_point("after_flush")
                end_append(h5)  # before the checkpoint: it never runs ahead of a restored backup
                _write_checkpoint(context, chk_path)
                buf.clear()
                chunks += 1
                if interrupt_after_chunks is not None and chunks >= interrupt_after_chunks and n < n_target:
                    raise SimulationInterrupted(f"interrupted after {chunks} chunks ({n} frames)")
    finally:
        bar.close()


def ns_per_day(steps: int, timestep_fs: float, seconds: float) -> float:
    """Simulation speed in ns/day for ``steps`` of ``timestep_fs`` fs taking ``seconds``."""
    return steps * timestep_fs * 1e-6 / seconds * 86400.0


__all__ = [
    "DEFAULT_SEED", "MD_RANGES", "RESUME_FIXED", "SEED_RANGE", "SOLVENTS", "MDConfig", "SimulationInterrupted",
    "check_md_config", "choose_platform", "create_system", "resumed_config",
    "dataset_attrs", "forcefield_files", "platform_precision", "simulate", "state_arrays", "system_hash",
    "ns_per_day",
]  # fmt: skip
