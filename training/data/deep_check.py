"""``hessid data validate --deep``: checks of a dataset's *values* beyond the layout that
:func:`hessid.training.data.io.validate_dataset` checks (docs/data.md, "Validation").

Each check gives one :class:`DeepCheck` row with status ``PASS``, ``FAIL``, ``INCOMPLETE`` or
``SKIP`` and the measured value beside its tolerance:

* ``cg/coordinates = S·coordinates`` and ``cg/forces = Q·forces`` on every frame (a stale
  ``cg/`` after the AA arrays changed);
* the stored forces and potential energies of a few frames (and of the first and last frame of
  each temperature of a multi-temperature file) recomputed with OpenMM from the stored
  topology, force field, solvent and constraints (forces of other positions, another
  potential, wrong units);
* bonded distances: every AA bond of the topology and, for the Cα map, consecutive Cα–Cα
  distances within plausible ranges (catches Å declared as nm and the reverse);
* incomplete runs: a simulation (each temperature segment of one) with fewer frames than its
  settings ask for, targets or
  labels whose done flags are not all set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openmm
from openmm import unit

from hessid.training.data import schema as sc
from hessid.training.data.aa_md import choose_platform, create_system
from hessid.training.data.io import FRAME_BLOCK, dataset_path, validate_dataset
from hessid.training.data.reader import Dataset, open_dataset
from hessid.units import energy_kj_to_kcal, force_kj_nm_to_kcal_angstrom, length_angstrom_to_nm

__all__ = ["AA_BOND_RANGE", "CA_CA_RANGE", "ENERGY_REL_TOL", "FORCE_REL_TOL", "MAP_ROUNDOFF", "DeepCheck", "aa_bond_lengths",
           "deep_validate", "format_checks"]  # fmt: skip

#: relative round-off bound of a recomputed S·x or Q·f: a float64 sum of N products differs
#: from the stored one (another BLAS summation order) by ≤ N·2.2e-16·Σ|w x|; 1e-12 of the
#: largest |value| covers N up to ~4500 atoms per bead row with margin, and is far below any
#: real change (a stale map after 1 fs of MD moves atoms by ~1e-3 Å)
MAP_ROUNDOFF = 1e-12
#: relative error ‖f_stored − f_OpenMM‖ / ‖f_OpenMM‖ accepted for recomputed forces: the CPU
#: platform's single-precision forces differ from a double-precision recomputation by ~1e-6
#: to 1e-4 (docs/data.md: agreement to 1e-4 measured); the forces of the neighbouring MD step
#: differ by > 1e-2, a kcal/kJ mix-up by a factor 4.184
FORCE_REL_TOL = 1e-3
#: relative error |U_stored − U_OpenMM| / max(|U_OpenMM|, 1 kcal/mol) accepted for recomputed
#: potential energies: both are the same positions' energy, summed in double precision on the CPU
#: platform (measured 6e-16 relative on the vacuum test peptide, the same platform's own numbers); a kJ/mol
#: vs kcal/mol mix-up is a factor 4.184, another frame's energy differs by ≫ 1e-4 of |U|
ENERGY_REL_TOL = 1e-4
#: plausible length of any covalent bond in the AA topology, Å (X–H ≈ 1.0, S–S ≈ 2.05;
#: Å read as nm gives 10–20 Å, nm read as Å 0.1–0.2 Å)
AA_BOND_RANGE = (0.8, 2.3)
#: plausible distance of consecutive Cα of a chain, Å (cis 2.9, trans 3.8, with thermal spread)
CA_CA_RANGE = (2.6, 4.3)
#: frames whose forces are recomputed (evenly spaced, first and last included)
DEFAULT_FORCE_FRAMES = 3


@dataclass
class DeepCheck:
    """One row of ``hessid data validate --deep``.

    Attributes:
        name: what was checked.  status: ``PASS`` | ``FAIL`` | ``INCOMPLETE`` | ``SKIP``.
        detail: the measured value and tolerance, or why it was skipped / what to run.
    """

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def _map_check(ds: Dataset, name: str, aa_key: str, cg_key: str, matrix: np.ndarray, unit_: str) -> DeepCheck:
    worst, worst_frame, scale = 0.0, 0, 0.0
    for start in range(0, ds.n_frames, FRAME_BLOCK):
        rows = slice(start, start + FRAME_BLOCK)
        want = np.einsum("nN,bNc->bnc", matrix, ds.read(aa_key, rows))  # (b, n, 3)
        got = ds.read(cg_key, rows)
        diff = np.abs(got - want).reshape(got.shape[0], -1).max(axis=1)
        scale = max(scale, float(np.abs(want).max(initial=0.0)))
        if diff.size and float(diff.max()) > worst:
            worst, worst_frame = float(diff.max()), start + int(np.argmax(diff))
    tol = MAP_ROUNDOFF * max(scale, 1.0)
    detail = f"max |Δ| = {worst:.3g} {unit_} (frame {worst_frame}); tolerance {tol:.3g} {unit_} (round-off)"
    if worst > tol:
        return DeepCheck(name, "FAIL", detail + f"; cg/ is stale: re-map with `hessid data map {ds.path} --overwrite`")
    return DeepCheck(name, "PASS", detail)


def aa_bond_lengths(ds: Dataset, frames) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lengths of every bond of the stored topology at ``frames``: ((F, n_bonds) Å, bonds)."""
    top = ds.topology()
    bonds = [(a.index, b.index) for a, b in top.bonds()]
    x = ds.coordinates(frames)  # (F, N, 3) Å
    if not bonds:
        return np.zeros((x.shape[0], 0)), bonds
    i, j = np.asarray(bonds).T
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1), bonds


def _sample_frames(t: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, t - 1, num=min(k, t)).round().astype(int)) if t else np.zeros(0, int)


def _distance_checks(ds: Dataset) -> list[DeepCheck]:
    out = []
    frames = _sample_frames(ds.n_frames, 10)
    if not frames.size:
        return [DeepCheck("bond lengths", "SKIP", "no frames")]
    lengths, bonds = aa_bond_lengths(ds, frames)
    lo, hi = AA_BOND_RANGE
    if lengths.size:
        bad = (lengths < lo) | (lengths > hi)
        detail = f"{lengths.min():.3g}–{lengths.max():.3g} Å over {len(bonds)} bonds, {frames.size} frames; plausible [{lo}, {hi}] Å"
        if bad.any():
            f, b = np.argwhere(bad)[0]
            detail += (f"; frame {int(frames[f])}, atoms {bonds[b]}: {lengths[f, b]:.3g} Å (lengths declared in the "
                       "wrong unit? Å read as nm gives ×10)")
        out.append(DeepCheck("AA bond lengths", "FAIL" if bad.any() else "PASS", detail))
    else:
        out.append(DeepCheck("AA bond lengths", "SKIP", "the topology has no bonds"))
    if ds.has_cg and ds.cg.map_kind == "ca" and ds.cg.bonds is not None and len(ds.cg.bonds):
        x = ds.cg.coordinates(frames)  # (F, n, 3) Å
        i, j = np.asarray(ds.cg.bonds).T
        d = np.linalg.norm(x[:, i] - x[:, j], axis=-1)
        lo, hi = CA_CA_RANGE
        bad = (d < lo) | (d > hi)
        detail = f"{d.min():.3g}–{d.max():.3g} Å; plausible [{lo}, {hi}] Å"
        if bad.any():
            f, b = np.argwhere(bad)[0]
            detail += f"; frame {int(frames[f])}, beads {tuple(int(v) for v in ds.cg.bonds[b])}: {d[f, b]:.3g} Å"
        out.append(DeepCheck("Cα–Cα distances (cg/bonds)", "FAIL" if bad.any() else "PASS", detail))
    return out


def _force_check(ds: Dataset, n_frames: int, platform: str | None) -> list[DeepCheck]:
    name, energy_name = "forces recomputed with OpenMM", "potential energies recomputed with OpenMM"
    solvent = ds.attr(sc.ATTR_SOLVENT)
    constraints = ds.constraints
    if solvent is None or constraints is None:
        missing = ", ".join(a for a, v in (("solvent", solvent), ("constraints", constraints)) if v is None)
        return [DeepCheck(name, "SKIP", f"no {missing} attribute: the potential is unknown")]
    frames = _sample_frames(ds.n_frames, n_frames)
    if ds.is_multi_temperature:  # the first and last frame of each temperature, then evenly spaced
        temps = ds.temperatures()
        ends = [i for t in np.unique(temps) for i in np.flatnonzero(temps == t)[[0, -1]]]
        frames = np.unique(np.concatenate([frames, ends])).astype(int)
    if not frames.size:
        return [DeepCheck(name, "SKIP", "no frames")]
    top = ds.topology()
    box = ds.box(frames)
    if box is not None:
        top.setPeriodicBoxVectors(length_angstrom_to_nm(box[0]) * unit.nanometer)
    try:
        system = create_system(top, str(ds.attr(sc.ATTR_FORCEFIELD, "amber14-all.xml")), str(solvent), constraints)
    except ValueError as exc:
        return [DeepCheck(name, "FAIL", f"the stored topology/force field give no System ({exc})")]
    plat, props = choose_platform(platform or "CPU", threads=1)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)
    stored_energy = ds.potential_energy(frames)
    worst, worst_frame, e_worst, e_frame = 0.0, int(frames[0]), 0.0, int(frames[0])
    for row, t in enumerate(frames):
        if box is not None:
            context.setPeriodicBoxVectors(*length_angstrom_to_nm(box[row]))
        context.setPositions(length_angstrom_to_nm(ds.coordinates(int(t))))
        st = context.getState(getForces=True, getEnergy=True)
        f = st.getForces(asNumpy=True)
        ref = force_kj_nm_to_kcal_angstrom(np.asarray(f.value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))
        rel = float(np.linalg.norm(ds.forces(int(t)) - ref) / max(np.linalg.norm(ref), 1e-300))
        if rel > worst:
            worst, worst_frame = rel, int(t)
        if stored_energy is not None:
            e_ref = energy_kj_to_kcal(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            e_rel = abs(float(stored_energy[row]) - e_ref) / max(abs(e_ref), 1.0)
            if e_rel > e_worst:
                e_worst, e_frame = e_rel, int(t)
    detail = (f"max ‖f_stored − f_OpenMM‖/‖f_OpenMM‖ = {worst:.3g} (frame {worst_frame}) over frames "
              f"{frames.tolist()} on {plat.getName()}; tolerance {FORCE_REL_TOL:g}")
    rows = [DeepCheck(name, "FAIL" if worst > FORCE_REL_TOL else "PASS", detail)]
    if stored_energy is None:
        rows.append(DeepCheck(energy_name, "SKIP", "no potential_energy stored"))
    else:
        detail = (f"max |U_stored − U_OpenMM|/max(|U_OpenMM|, 1 kcal/mol) = {e_worst:.3g} (frame {e_frame}) "
                  f"over the same frames' energies; tolerance {ENERGY_REL_TOL:g}")
        rows.append(DeepCheck(energy_name, "FAIL" if e_worst > ENERGY_REL_TOL else "PASS", detail))
    return rows


def _completeness(ds: Dataset) -> list[DeepCheck]:
    out = []
    segments = ds.segments
    several = len(segments) > 1
    temps = ds.temperatures() if several else None
    for seg in segments:
        md = seg["md_config"]
        want = int(seg.get("steps", md["steps"])) // int(md["stride"])
        t = float(seg["temperature"])
        have = int((temps == t).sum()) if several else ds.n_frames
        status = "PASS" if have >= want else "INCOMPLETE"
        detail = f"{have} of {want} frames (steps // stride)"
        if have < want:
            flag = f" --temperature {t:g}" if several else ""
            detail += f"; continue with `hessid data simulate {ds.path.stem} --resume{flag}`"
        out.append(DeepCheck(f"simulation complete ({t:g} K)" if several else "simulation complete", status, detail))
    for part, label, command in ((sc.TERM1, "Term 1", "hessid targets {} --resume"),
                                 (sc.HESSIAN_BLOCK, "Hessian block", "hessid targets {} --full-block --resume")):
        done_key = part + sc.DONE_SUFFIX
        if ds.has(done_key):
            done = ds.read(done_key).astype(bool)
            detail = f"{int(done.sum())} of {done.size} frames done"
            if not done.all():
                detail += f" (first missing: frame {int(np.argmin(done))}); continue with `{command.format(ds.path.stem)}`"
            out.append(DeepCheck(f"{label} complete ({part})", "PASS" if done.all() else "INCOMPLETE", detail))
    return out


def deep_validate(path, n_force_frames: int = DEFAULT_FORCE_FRAMES, platform: str | None = None) -> list[DeepCheck]:
    """Run :func:`~hessid.training.data.io.validate_dataset` (layout) and then the value checks
    of this module.

    Args:
        path: dataset name, folder or ``.h5`` (:func:`~hessid.training.data.io.dataset_path`).
        n_force_frames: frames whose forces are recomputed (evenly spaced; ≥ 1).
        platform: OpenMM platform for the recomputation (default CPU, one thread).

    Returns:
        the rows, in the order: map, distances, forces, completeness.

    Raises:
        DatasetError: the layout check fails (as ``hessid data validate``).
        ValueError: ``n_force_frames`` < 1.
    """
    if int(n_force_frames) < 1:
        raise ValueError(f"--force-frames={n_force_frames}: expected at least 1")
    path = dataset_path(path)
    validate_dataset(path)
    rows: list[DeepCheck] = []
    with open_dataset(path) as ds:
        if ds.has_cg and ds.n_frames:
            cg = ds.cg
            if ds.has(sc.CG_COORDINATES):
                rows.append(_map_check(ds, "cg/coordinates = S·coordinates", sc.COORDINATES, sc.CG_COORDINATES,
                                       cg.weights, "Å"))
            if ds.has(sc.CG_FORCES) and ds.attr(sc.ATTR_KIND) != sc.KIND_CONDITIONAL_LABELS:
                rows.append(_map_check(ds, "cg/forces = Q·forces", sc.FORCES, sc.CG_FORCES, cg.projector,
                                       "kcal/mol/Å"))
        elif not ds.has_cg:
            rows.append(DeepCheck("cg/ = S·, Q·", "SKIP", "not mapped"))
        rows += _distance_checks(ds)
        rows += _force_check(ds, n_force_frames, platform)
        rows += _completeness(ds)
    return rows


def format_checks(path, rows: list[DeepCheck]) -> str:
    """The table ``hessid data validate --deep`` prints: one line per row, then a summary."""
    width = max(len(r.name) for r in rows) if rows else 0
    lines = [f"{r.status:<10} {r.name:<{width}}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "INCOMPLETE", "SKIP")}
    lines.append(f"{path}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return "\n".join(lines)
