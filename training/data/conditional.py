"""Reference CG Hessian at a fixed CG configuration R0, for selection maps (docs/data.md).

Identity (docs/identities.md §2, linear-map CG Hessian)::

    H_CG(R0) = ⟨P ∇²U Pᵀ⟩_{R0} − β Cov_{R0}(P f)

where ⟨·⟩_{R0} is the conditional AA ensemble with the CG coordinates fixed at R0. For a
*selection* map (each bead is one atom; under HBond constraints P also lifts the bead atom's
rigid hydrogens, see ``write_cg``) that ensemble is sampled directly by freezing the bead
atoms and running AA Langevin MD of the rest: :func:`sample_frozen` writes an AA dataset
file of that ensemble (the layout of :func:`hessid.training.data.aa_md.simulate`), which
``map_dataset``/``write_cg`` and ``compute_targets(full_block=True)`` process unchanged, and
:func:`estimate_cg_hessian` turns ``cg/hessian_block`` and ``cg/forces`` into the estimate with
block-average standard errors.

Freezing. OpenMM fixes massless particles, but refuses constraints that involve them (the
N–H and CA–HA bonds are HBond-constrained), so frozen atoms get a huge mass (default 1e10
amu, ``System.setParticleMass``) and zero velocity. Their thermal velocity is then
√(kT/m) ≈ 1.6e-5 nm/ps and the constraint solver moves them by ~1e-10 of each correction,
but the Langevin noise still makes them diffuse (D = kT/(mγ) ≈ 2.5e-10 nm²/ps, i.e. 1e-3 Å
after ≈ 20 ps) and the mean force pushes them at F/(mγ) ≈ 1e-7 nm/ps. So after every saved
frame the frozen atoms are put back at R0 with zero velocity (``restore=True``), followed by
``applyConstraints`` / ``applyVelocityConstraints``; the drift over one stride is what the
saved frames show (``frozen_max_displacement_angstrom``, max over frames and frozen atoms of
|r − r0|) and a run whose drift exceeds ``tolerance`` stops with :class:`FrozenAtomsDrifted`.

Minimisation (``minimize=True``; off by default, pass an equilibrated structure instead):
OpenMM's ``LocalEnergyMinimizer`` ignores masses, so it moves the frozen atoms too. We run
it, then put the frozen atoms back at R0 and re-apply the constraints; the mobile atoms are
then near (not at) a minimum for the frozen R0, which equilibration removes.

Units: Å, kcal/mol, K, ps in the file and the API; nm and kJ/mol only at the OpenMM calls.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as u
from tqdm.auto import tqdm

from hessid.training.data import schema as sc
from hessid.training.data.aa_md import (
    MDConfig,
    choose_platform,
    create_system,
    dataset_attrs,
    state_arrays,
    system_hash,
)
from hessid.training.data.io import append_frames, commit, create_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.data.schema import DatasetError
from hessid.training.data.structures import Structure, positions_angstrom, structure_from_pdb_text
from hessid.units import beta as _beta
from hessid.units import length_angstrom_to_nm, length_nm_to_angstrom

#: default mass of a frozen atom, amu
FROZEN_MASS_AMU = 1.0e10
#: default tolerance on the frozen atoms' displacement, Å
DRIFT_TOLERANCE_ANGSTROM = 1.0e-3
_SOLVENTS = ("gbn2", "obc2", "vacuum")


class FrozenAtomsDrifted(RuntimeError):
    """A frozen atom moved further than the tolerance from R0 (the frames written so far and the
    attribute ``frozen_max_displacement_angstrom`` are on disk)."""


def _structure_of(structure):
    """(topology, positions (N, 3) float64 Å) of a Structure, PDB text/path or (topology, positions)."""

    if hasattr(structure, "topology") and hasattr(structure, "positions"):
        return structure.topology, np.asarray(structure.positions, dtype=np.float64)
    if isinstance(structure, tuple) and len(structure) == 2:
        top, pos = structure
        if hasattr(pos, "value_in_unit"):  # openmm Quantity
            pos = positions_angstrom(pos)
        return top, np.asarray(pos, dtype=np.float64)
    if isinstance(structure, Path) or (isinstance(structure, str) and "\n" not in structure
                                       and structure.lower().endswith((".pdb", ".ent"))):  # fmt: skip
        p = Path(structure)
        s = structure_from_pdb_text(p.read_text(), str(p))
        return s.topology, s.positions
    if isinstance(structure, str):
        s = structure_from_pdb_text(structure, "PDB text")
        return s.topology, s.positions
    raise TypeError("structure must be a Structure, PDB text, a .pdb path or (topology, positions Å), "
                    f"got {type(structure).__name__}")  # fmt: skip


def _restore(context, positions_nm: np.ndarray, frozen: np.ndarray, r0_nm: np.ndarray, tol: float):
    """Put the frozen atoms back at R0 with zero velocity; re-apply position/velocity constraints."""

    st = context.getState(getVelocities=True)
    vel = st.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
    pos = np.array(positions_nm, dtype=np.float64)
    pos[frozen] = r0_nm
    vel = np.array(vel, dtype=np.float64)
    vel[frozen] = 0.0
    context.setPositions(pos * u.nanometer)
    context.setVelocities(vel * u.nanometer / u.picosecond)
    context.applyConstraints(tol)
    context.applyVelocityConstraints(tol)


def _positions_nm(context) -> np.ndarray:
    st = context.getState(getPositions=True)
    return np.asarray(st.getPositions(asNumpy=True).value_in_unit(u.nanometer), dtype=np.float64)


def sample_frozen(
    structure,
    frozen_atoms,
    out_path: str | Path,
    n_frames: int,
    stride: int,
    temperature: float = 300.0,
    timestep: float = 2.0,
    friction: float = 1.0,
    solvent: str = "gbn2",
    forcefield: str = "amber14-all.xml",
    constraints: str = "HBonds",
    equilibration_steps: int = 5000,
    seed: int = 0,
    platform: str | None = "CPU",
    threads: int | None = 1,
    progress: bool = False,
    minimize: bool = False,
    frozen_mass: float = FROZEN_MASS_AMU,
    restore: bool = True,
    tolerance: float = DRIFT_TOLERANCE_ANGSTROM,
    chunk_frames: int = 10,
    overwrite: bool = False,
) -> Path:
    """Sample the conditional AA ensemble at fixed frozen atoms (selection map at R0) into a dataset.

    Langevin MD (``LangevinMiddleIntegrator``) of the AA system with ``frozen_atoms`` held at
    their input positions R0 (module docstring: mass ``frozen_mass``, zero velocity, put back
    after every saved frame when ``restore``). Writes the layout of
    :func:`hessid.training.data.aa_md.simulate` (coordinates Å, forces kcal/mol/Å of the saved
    positions from ``getState`` — constraint forces not included, potential_energy kcal/mol,
    time ps since the start of production, frame_id = frame index; the root attributes
    ``temperature``, ``forcefield``, ``solvent``, ``constraints``, ``platform``, ``precision``,
    ``seed``, ``forcefield_hash``, ``md_config`` JSON, ``time_unit``), so
    :func:`hessid.training.data.io.validate_dataset`, ``map_dataset``/``write_cg`` and
    ``compute_targets`` read it unchanged. ``forcefield_hash`` is that of the *unmodified*
    System (the potential; masses changed only for the dynamics), so it equals the hash
    ``compute_targets`` computes. Extra root attributes: ``frozen_atoms`` (k,) int64,
    ``frozen_positions_angstrom`` (k, 3) float64 (R0), ``frozen_mass_amu``,
    ``frozen_tolerance_angstrom``, ``frozen_restore``, ``frozen_max_displacement_angstrom``
    (max over saved frames and frozen atoms of |r − r0|, Å), ``minimized``, ``ensemble``.
    The stored topology PDB holds the starting positions (frozen atoms at R0).

    Args:
        structure: :class:`hessid.training.data.structures.Structure`, PDB text, a ``.pdb`` path, or
            ``(topology, positions)`` with positions (N, 3) Å or an OpenMM Quantity.
        frozen_atoms: (k,) atom indices held fixed (e.g. ``ala2.backbone_indices(topology)``).
        out_path: the ``.h5`` file to write.
        n_frames: frames to save (≥ 1).  stride: MD steps between saved frames (≥ 1).
        temperature: K.  timestep: fs.  friction: 1/ps.
        solvent: "gbn2" | "obc2" | "vacuum" (explicit solvent is not supported here).
        forcefield: main force-field XML.  constraints: "HBonds" | "none".
        equilibration_steps: steps before production (not saved), run in segments of ``stride``
            with the same restoring.
        seed: Langevin and velocity seed.
        platform, threads: OpenMM platform ("CPU" by default) and CPU threads.
        progress: tqdm bar over frames.
        minimize: L-BFGS minimisation first, then frozen atoms restored (module docstring).
        frozen_mass: mass of the frozen atoms, amu.
        restore: put the frozen atoms back at R0 (zero velocity) after every saved frame and
            every equilibration segment.
        tolerance: largest allowed displacement of a frozen atom in a saved frame, Å.
        chunk_frames: frames per HDF5 append + commit.
        overwrite: replace an existing file.

    Returns:
        the path of the written dataset.

    Raises:
        ValueError: bad sizes, empty/duplicate/out-of-range ``frozen_atoms``, unsupported
            solvent or constraints, unknown platform.
        TypeError: ``structure`` of an unsupported type.
        FileExistsError: ``out_path`` exists and not ``overwrite``.
        FrozenAtomsDrifted: a saved frame has a frozen atom further than ``tolerance`` from R0.
    """

    out_path = Path(out_path)
    if int(n_frames) < 1 or int(stride) < 1 or int(equilibration_steps) < 0:
        raise ValueError(f"need n_frames >= 1, stride >= 1, equilibration_steps >= 0; got n_frames={n_frames}, "
                         f"stride={stride}, equilibration_steps={equilibration_steps}")  # fmt: skip
    if solvent not in _SOLVENTS:
        raise ValueError(f"solvent {solvent!r}: sample_frozen supports {_SOLVENTS} (no periodic box)")
    if not (frozen_mass > 0 and tolerance > 0):
        raise ValueError(f"frozen_mass and tolerance must be positive, got {frozen_mass}, {tolerance}")
    top, pos_a = _structure_of(structure)
    n_atoms = top.getNumAtoms()
    if pos_a.shape != (n_atoms, 3):
        raise ValueError(f"positions have shape {pos_a.shape}, the topology has {n_atoms} atoms")
    frozen = np.asarray(frozen_atoms, dtype=np.int64).reshape(-1)
    if frozen.size == 0 or np.unique(frozen).size != frozen.size or frozen.min() < 0 or frozen.max() >= n_atoms:
        raise ValueError(f"frozen_atoms must be distinct indices in [0, {n_atoms}), got {frozen.tolist()}")

    system = create_system(top, forcefield, solvent, constraints)
    fhash = system_hash(system)  # the potential: computed before the masses are changed
    for i in frozen:
        system.setParticleMass(int(i), float(frozen_mass) * u.amu)
    integrator = openmm.LangevinMiddleIntegrator(temperature * u.kelvin, friction / u.picosecond,
                                                 timestep * u.femtosecond)  # fmt: skip
    integrator.setRandomNumberSeed(int(seed))
    ctol = integrator.getConstraintTolerance()
    plat, props = choose_platform(platform, threads)
    context = openmm.Context(system, integrator, plat, props)

    r0_nm = length_angstrom_to_nm(pos_a[frozen])  # (k, 3) nm
    context.setPositions(length_angstrom_to_nm(pos_a) * u.nanometer)
    if minimize:  # the minimiser ignores masses: restore R0 afterwards
        openmm.LocalEnergyMinimizer.minimize(context, 10.0)
    context.setVelocitiesToTemperature(temperature * u.kelvin, int(seed))
    _restore(context, _positions_nm(context), frozen, r0_nm, ctol)  # R0, zero frozen velocity, constraints
    start_a = length_nm_to_angstrom(_positions_nm(context))
    done = 0
    while done < int(equilibration_steps):
        n = min(int(stride), int(equilibration_steps) - done)
        integrator.step(n)
        done += n
        if restore:
            _restore(context, _positions_nm(context), frozen, r0_nm, ctol)
    context.setTime(0.0)
    context.setStepCount(0)

    cfg = MDConfig(steps=int(n_frames) * int(stride), stride=int(stride), temperature=float(temperature),
                   friction=float(friction), timestep=float(timestep),
                   equilibration_steps=int(equilibration_steps), minimize=bool(minimize), solvent=solvent,
                   forcefield=forcefield, constraints=constraints, platform=plat.getName(),
                   threads=threads, seed=int(seed), chunk_frames=int(chunk_frames))  # fmt: skip
    attrs = {
        **dataset_attrs(out_path.stem, cfg, plat, props, fhash),
        "ensemble": "conditional AA ensemble, frozen atoms fixed at R0 (selection-map CG Hessian reference)",
        "frozen_atoms": frozen, "frozen_positions_angstrom": np.asarray(pos_a[frozen], dtype=np.float64),
        "frozen_mass_amu": float(frozen_mass), "frozen_tolerance_angstrom": float(tolerance),
        "frozen_restore": bool(restore), "minimized": bool(minimize),
        "frozen_max_displacement_angstrom": 0.0,
    }  # fmt: skip
    pdb_text = Structure(top, start_a, "").to_pdb()
    h5 = create_dataset(out_path, pdb_text, attrs, overwrite=overwrite, chunk_frames=chunk_frames)


    r0_a = np.asarray(pos_a[frozen], dtype=np.float64)
    drift = 0.0
    buf: list = []
    bar = tqdm(total=int(n_frames), unit="frame", disable=not progress, desc=f"{out_path.stem} frozen MD")
    try:
        for t in range(int(n_frames)):
            integrator.step(int(stride))
            pos, frc, ene, tim, _ = state_arrays(context, False)  # Å, kcal/mol/Å, kcal/mol, ps
            d = float(np.linalg.norm(pos[frozen] - r0_a, axis=1).max())
            drift = max(drift, d)
            buf.append((pos, frc, ene, tim))
            if restore:
                _restore(context, length_angstrom_to_nm(pos), frozen, r0_nm, ctol)
            bar.update(1)
            bar.set_postfix(drift_A=f"{drift:.1e}")
            if len(buf) == int(chunk_frames) or t == int(n_frames) - 1 or d > tolerance:
                p, f, e, tm = zip(*buf, strict=True)
                ids = np.arange(t + 1 - len(buf), t + 1, dtype=np.int64)  # frame_id = frame index
                append_frames(h5, np.stack(p), np.stack(f), np.asarray(tm, "f8"), ids, np.asarray(e, "f8"))
                h5.attrs["frozen_max_displacement_angstrom"] = drift
                commit(h5)
                buf.clear()
            if d > tolerance:
                raise FrozenAtomsDrifted(
                    f"{out_path}: frame {t}: a frozen atom moved {d:.3e} Å from R0 (tolerance {tolerance:g} Å); "
                    "raise frozen_mass, lower stride, or keep restore=True")  # fmt: skip
    finally:
        bar.close()
        h5.close()
    return out_path


def estimate_cg_hessian(path: str | Path, temperature: float | None = None, n_blocks: int = 10) -> dict:
    """CG Hessian at the fixed R0 of a :func:`sample_frozen` file, with block standard errors.

    Source: docs/identities.md §2, linear-map CG Hessian: ⟨P∇²HPᵀ⟩_R − β Cov_R(Pf). Reads
    ``cg/hessian_block`` (T, 3n, 3n) kcal/mol/Å² (``compute_targets(full_block=True)``; entry
    [a, b] = (P∇²HPᵀ)_ab, flat index 3·I + α, not symmetrised) and ``cg/forces`` (T, n, 3)
    kcal/mol/Å (P f). Term 2 uses the unbiased covariance (divisor T − 1). Frames are read in
    ``n_blocks`` contiguous blocks (``np.array_split``); the estimator is recomputed per block
    and ``sem`` = std(block estimates, ddof=1)/√n_blocks (valid when blocks are longer than the
    correlation time). The full-data estimate pools the blocks exactly (Chan's update), so
    memory is one block.

    Args:
        path: dataset ``.h5``.
        temperature: K; default the root attribute ``temperature``.
        n_blocks: blocks for the standard error, 2 ≤ n_blocks ≤ T // 2.

    Returns:
        dict of float64 numpy arrays / numbers: ``hessian`` (3n, 3n) kcal/mol/Å², symmetrised
        term1 − term2; ``term1`` (3n, 3n) mean block (as stored, not symmetrised); ``term2``
        (3n, 3n) β Cov(P f); ``sem`` (3n, 3n) block standard error of ``hessian``; ``n_frames``;
        ``n_blocks``; ``beta`` mol/kcal; ``temperature`` K; ``frobenius_rel_sem`` =
        ‖sem‖_F/‖hessian‖_F; ``drift_angstrom`` (root ``frozen_max_displacement_angstrom``, or None).

    Raises:
        DatasetNotFoundError: no such file (also a ``FileNotFoundError``).
        DatasetError: ``cg/hessian_block`` or ``cg/forces`` missing, shapes inconsistent, no
            temperature, or a frame not computed (done flag 0, or NaN/inf) — naming the first.
        ValueError: ``n_blocks`` out of range.
    """
    with open_dataset(path) as ds:
        hb = ds.hessian_block  # NoHessianBlockError names the file
        hshape, fshape = hb.shape, ds.shape_of(sc.CG_FORCES)  # DatasetError if cg/forces is missing
        t = int(hshape[0])
        if len(hshape) != 3 or len(fshape) != 3 or fshape[0] != t or hshape[1:] != (3 * fshape[1],) * 2:
            raise DatasetError(ds.path, sc.HESSIAN_BLOCK, f"shape {hshape} does not match cg/forces "
                               f"{fshape} (expected (T, 3n, 3n) and (T, n, 3))")  # fmt: skip
        d = int(hb.shape[1])
        if temperature is None:
            if ds.temperature is None:
                raise DatasetError(ds.path, "/", "no 'temperature' attribute; pass temperature")
            temperature = ds.temperature
        b = _beta(float(temperature))
        if not 2 <= int(n_blocks) <= t // 2:
            raise ValueError(f"need 2 <= n_blocks <= T // 2 (T={t} frames), got n_blocks={n_blocks}")
        done = hb.done()
        if not done.all():
            f0 = int(np.argmin(done))
            raise DatasetError(ds.path, sc.HESSIAN_BLOCK, "not computed (done flag 0); finish "
                               "compute_targets(full_block=True, resume=True)", f0)  # fmt: skip
        drift = ds.attr(sc.ATTR_FROZEN_DRIFT)
        drift = None if drift is None else float(drift)
        blocks = []  # (n_t, mean block (d, d), mean Pf (d,), M2 (d, d))
        for sl in np.array_split(np.arange(t), int(n_blocks)):
            rows = slice(int(sl[0]), int(sl[-1]) + 1)
            h = np.asarray(hb.values(rows), dtype=np.float64)  # (m, d, d)
            f = np.asarray(ds.cg.forces(rows), dtype=np.float64).reshape(len(sl), d)  # (m, d)
            for key, arr in ((sc.HESSIAN_BLOCK, h), (sc.CG_FORCES, f)):
                bad = ~np.isfinite(arr.reshape(len(sl), -1)).all(axis=1)
                if bad.any():
                    raise DatasetError(ds.path, key, "contains NaN or inf (frame not computed?)",
                                       int(sl[0] + np.argmax(bad)))  # fmt: skip
            fm = f.mean(axis=0)
            blocks.append((len(sl), h.mean(axis=0), fm, (f - fm).T @ (f - fm)))

    def estimate(n_t, h_mean, m2):
        return h_mean - b * m2 / (n_t - 1)

    ests = np.stack([0.5 * (e + e.T) for e in (estimate(m, h, m2) for m, h, _, m2 in blocks)])
    n_tot = sum(m for m, *_ in blocks)
    term1 = sum(m * h for m, h, _, _ in blocks) / n_tot
    f_mean = sum(m * fm for m, _, fm, _ in blocks) / n_tot
    m2 = sum(m2b + m * np.outer(fm - f_mean, fm - f_mean) for m, _, fm, m2b in blocks)
    term2 = b * m2 / (n_tot - 1)
    term2 = 0.5 * (term2 + term2.T)
    hess = 0.5 * (term1 + term1.T) - term2
    sem = ests.std(axis=0, ddof=1) / math.sqrt(len(blocks))
    norm = float(np.linalg.norm(hess))
    return {
        "hessian": hess, "term1": term1, "term2": term2, "sem": sem, "n_frames": int(n_tot),
        "n_blocks": len(blocks), "beta": float(b), "temperature": float(temperature),
        "frobenius_rel_sem": float(np.linalg.norm(sem) / norm) if norm > 0 else math.inf,
        "drift_angstrom": drift,
    }  # fmt: skip


__all__ = ["DRIFT_TOLERANCE_ANGSTROM", "FROZEN_MASS_AMU", "FrozenAtomsDrifted", "estimate_cg_hessian",
           "sample_frozen"]  # fmt: skip
