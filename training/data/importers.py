"""Importers of foreign AA data into the hessid dataset file (``hessid data import``).

Three sources: an Aghili/mdCATH-style HDF5 file (:func:`import_hdf5`), npy/npz arrays
(:func:`import_arrays`) and any trajectory mdtraj reads plus a force array
(:func:`import_trajectory`). Units are never guessed: they come from the arguments or from the
source's unit attributes and are normalised by :func:`normalize_unit`, then converted to hessid
units (Å, kcal/mol/Å, kcal/mol) before :func:`hessid.training.data.io.write_dataset` writes and
validates the file. Errors raise :class:`~hessid.training.data.schema.DatasetError` naming the
source file, the array and (for NaN/inf) the frame.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import h5py
import mdtraj
import numpy as np

from hessid.training.data.io import count_pdb_atoms, write_dataset
from hessid.training.data.schema import DatasetError
from hessid.units import ANGSTROM_PER_NM, KJ_PER_KCAL

__all__ = ["CONSTRAINTS", "ENERGY_UNITS", "FORCE_UNITS", "LENGTH_UNITS", "TEMPERATURE_RANGE_K",
           "import_arrays", "import_hdf5", "import_trajectory", "normalize_unit",
           "source_physics"]  # fmt: skip

#: accepted --constraints of an imported simulation → the stored spelling
CONSTRAINTS = {"hbonds": "HBonds", "none": "none"}
#: accepted --temperature range of an imported simulation, K
TEMPERATURE_RANGE_K = (1.0, 1000.0)

#: accepted spellings → factor that converts a value in that unit to hessid's unit
LENGTH_UNITS = {"angstrom": 1.0, "nm": ANGSTROM_PER_NM}
FORCE_UNITS = {
    "kcal/mol/angstrom": 1.0,
    "kj/mol/nm": 1.0 / (KJ_PER_KCAL * ANGSTROM_PER_NM),
    "kcal/mol/nm": 1.0 / ANGSTROM_PER_NM,
    "kj/mol/angstrom": 1.0 / KJ_PER_KCAL,
}
ENERGY_UNITS = {"kcal/mol": 1.0, "kj/mol": 1.0 / KJ_PER_KCAL}
_UNIT_ALIASES = {
    "a": "angstrom", "å": "angstrom", "ang": "angstrom", "angstroms": "angstrom",
    "nanometer": "nm", "nanometers": "nm",
}  # fmt: skip


def normalize_unit(unit: str | bytes | None, kind: str) -> str:
    """Canonical spelling of a length ("angstrom", "nm"), force ("kcal/mol/angstrom", ...)
    or energy ("kcal/mol", "kj/mol") unit.

    Raises:
        ValueError: unit is None or not recognised for ``kind``.
    """
    table = {"length": LENGTH_UNITS, "force": FORCE_UNITS, "energy": ENERGY_UNITS}[kind]
    if unit is None:
        raise ValueError(f"{kind} unit not given")
    if isinstance(unit, bytes):
        unit = unit.decode()
    u = str(unit).strip().lower().replace(" ", "").replace("kilojoule", "kj")
    u = u.replace("kilocalorie", "kcal").replace("/mole", "/mol").replace("**-1", "")
    parts = [_UNIT_ALIASES.get(p, p) for p in re.split(r"/", u)]
    u = "/".join(parts)
    if u not in table:
        raise ValueError(f"{kind} unit {unit!r} not recognised; use one of {sorted(table)}")
    return u



def source_physics(temperature, constraints) -> dict:
    """The root attributes ``temperature`` (K) and ``constraints`` of an imported simulation,
    which must be declared: they are never defaulted, since the CG map's projector, the Term-1
    System and training's β all depend on them.

    Args:
        temperature: K, within :data:`TEMPERATURE_RANGE_K`.
        constraints: ``"HBonds"`` (bonds to hydrogen were rigid) or ``"none"`` (any case).

    Returns:
        ``{"temperature": float, "constraints": "HBonds" | "none"}``.

    Raises:
        ValueError: missing or out of range (one line naming --temperature / --constraints).
    """
    if temperature is None:
        raise ValueError("--temperature is required: the temperature (K) of the source simulation "
                         "(there is no default)")
    lo, hi = TEMPERATURE_RANGE_K
    if not lo <= float(temperature) <= hi:
        raise ValueError(f"--temperature={temperature}: expected K in [{lo:g}, {hi:g}]")
    if constraints is None:
        raise ValueError("--constraints is required: HBonds if the source simulation kept bonds to "
                         "hydrogen rigid, else none (there is no default)")
    key = str(constraints).strip().lower()
    if key not in CONSTRAINTS:
        raise ValueError(f"--constraints={constraints!r}: expected HBonds or none")
    return {"temperature": float(temperature), "constraints": CONSTRAINTS[key]}


def _unit_from_attrs(ds, fallback_attrs, keys) -> str | None:
    for attrs in (ds.attrs, fallback_attrs):
        for k in keys:
            if k in attrs:
                v = attrs[k]
                return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _find_key(h5, candidates, explicit, src, what):
    if explicit is not None:
        if explicit not in h5:
            raise DatasetError(src, explicit, f"missing ({what})")
        return explicit
    for c in candidates:
        if c in h5 and isinstance(h5[c], h5py.Dataset):
            return c
    found = []
    h5.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and
                  n.rsplit("/", 1)[-1] in candidates else None)  # fmt: skip
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(src, "/", f"no {what} dataset (looked for {candidates}); name it explicitly")
    raise DatasetError(src, "/", f"several {what} datasets {found}; name one explicitly")


def _topology_text(topology: str | Path | None, src) -> str:
    if topology is None:
        raise ValueError(f"{src}: a topology (PDB file) is required")
    p = Path(topology)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such topology file")
    if p.suffix.lower() == ".pdb":
        return p.read_text()
    t = mdtraj.load_frame(str(p), 0) if p.suffix.lower() not in (".prmtop", ".psf") else None
    if t is None:
        raise ValueError(f"{p}: give a PDB topology (or a structure file mdtraj reads)")
    with tempfile.NamedTemporaryFile(suffix=".pdb") as tmp:
        t.save_pdb(tmp.name)
        return Path(tmp.name).read_text()


def _convert(arr, unit, kind, src, key):
    try:
        u = normalize_unit(unit, kind)
    except ValueError as exc:
        raise DatasetError(src, key, f"missing units: {exc}; declare it (e.g. --{kind}-unit)") from exc
    table = {"length": LENGTH_UNITS, "force": FORCE_UNITS, "energy": ENERGY_UNITS}[kind]
    return np.asarray(arr, dtype=np.float64) * table[u], u


def _check_import_shapes(src, coords, forces, n_top):
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise DatasetError(src, "coordinates", f"shape {coords.shape}, expected (T, N, 3)")
    if forces.shape != coords.shape:
        raise DatasetError(src, "forces", f"shape {forces.shape} != coordinates {coords.shape}")
    if coords.shape[1] != n_top:
        raise DatasetError(src, "coordinates", f"{coords.shape[1]} atoms but the topology has {n_top}")
    for key, arr in (("coordinates", coords), ("forces", forces)):
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            raise DatasetError(src, key, "contains NaN or inf", int(np.argmax(bad)))


def _write_imported(out, topology_text: str, coords: np.ndarray, forces: np.ndarray, time, *,
                    source, length_unit: str, force_unit: str, physics: dict, attrs: dict | None,
                    overwrite: bool) -> Path:
    """Write an imported dataset with its provenance: root attributes ``source`` and the
    source's length and force units, then ``physics`` (:func:`source_physics`), then ``attrs``."""
    meta = {"source": str(source), "source_length_unit": length_unit, "source_force_unit": force_unit}
    meta.update(physics)
    meta.update(attrs or {})
    return write_dataset(out, topology_text, coords, forces, time=time, attrs=meta, overwrite=overwrite)


def import_hdf5(
    source: str | Path,
    out: str | Path,
    topology: str | Path | None = None,
    coordinates_key: str | None = None,
    forces_key: str | None = None,
    length_unit: str | None = None,
    force_unit: str | None = None,
    timestep_ps: float | None = None,
    temperature: float | None = None,
    constraints: str | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Import an Aghili/mdCATH-style HDF5 file (datasets ``coordinates``/``coords`` and
    ``forces``, possibly nested in groups) into the hessid layout.

    Units come from the arguments or from the datasets' ``unit``/``units`` attributes (or
    root ``length_unit``/``force_unit``); they are never guessed: a missing unit is an error.
    The topology comes from ``topology`` (PDB) or a ``topology``/``pdb``/``pdbProteinAtoms``
    string dataset in the source.

    Args:
        source: input HDF5.  out: output ``.h5``.
        coordinates_key, forces_key: dataset paths inside ``source`` (searched if None).
        length_unit: of the coordinates ("angstrom" | "nm").  force_unit: of the forces
            ("kcal/mol/angstrom" | "kj/mol/nm" | ...).
        timestep_ps: time between frames, ps (else ``time`` from the source or the index).
        temperature, constraints: of the source simulation; required (:func:`source_physics`).

    Returns:
        the output path (validated).

    Raises:
        DatasetError: missing dataset or unit, shape mismatch, NaN/inf, atom-count mismatch.
        ValueError: temperature or constraints missing or invalid.
        FileNotFoundError: no source file.
    """
    physics = source_physics(temperature, constraints)
    src = Path(source)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such source file")
    try:
        h5 = h5py.File(src, "r")
    except OSError as exc:
        raise DatasetError(src, None, f"not a readable HDF5 file ({exc})") from None
    with h5:
        ck = _find_key(h5, ("coordinates", "coords", "positions"), coordinates_key, src, "coordinate")
        fk = _find_key(h5, ("forces",), forces_key, src, "force")
        lu = length_unit or _unit_from_attrs(h5[ck], h5.attrs, ("unit", "units", "length_unit"))
        fu = force_unit or _unit_from_attrs(h5[fk], h5.attrs, ("unit", "units", "force_unit"))
        coords, lu = _convert(h5[ck][()], lu, "length", src, ck)
        forces, fu = _convert(h5[fk][()], fu, "force", src, fk)
        if topology is None:
            tk = next((k for k in ("topology", "pdb", "pdbProteinAtoms") if k in h5), None)
            if tk is None:
                raise DatasetError(src, "topology", "missing: pass a PDB topology file")
            raw = h5[tk][()]
            top = raw.decode() if isinstance(raw, bytes) else str(raw)
        else:
            top = _topology_text(topology, src)
        time = h5["time"][()] if "time" in h5 and timestep_ps is None else None
    if coords.ndim == 2:
        coords, forces = coords[None], forces[None]
    _check_import_shapes(src, coords, forces, count_pdb_atoms(top))
    if time is None and timestep_ps is not None:
        time = np.arange(1, coords.shape[0] + 1) * float(timestep_ps)
    return _write_imported(out, top, coords, forces, time, source=src, length_unit=lu, force_unit=fu,
                           physics=physics, attrs=attrs, overwrite=overwrite)


def import_arrays(
    coordinates: str | Path | np.ndarray,
    forces: str | Path | np.ndarray,
    topology: str | Path,
    out: str | Path,
    length_unit: str,
    force_unit: str,
    timestep_ps: float | None = None,
    temperature: float | None = None,
    constraints: str | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Import npy/npz coordinate and force arrays (T, N, 3) with a PDB topology.

    An ``.npz`` is read for keys ``coordinates``/``coords``/``positions`` and ``forces``.
    Units must be declared (``length_unit``, ``force_unit``), and so must ``temperature`` (K)
    and ``constraints`` (:func:`source_physics`).

    Raises:
        DatasetError: unit missing, shape or atom-count mismatch, NaN/inf (file, array, frame).
    """

    physics = source_physics(temperature, constraints)

    def read(x, keys, what):
        if isinstance(x, np.ndarray):
            return x, what
        p = Path(x)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such {what} file")
        try:
            z = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{p}: not a readable .npy/.npz file ({exc})") from None
        if isinstance(z, np.lib.npyio.NpzFile):
            for k in keys:
                if k in z:
                    return z[k], f"{p}:{k}"
            raise DatasetError(p, "/", f"no {what} array (looked for {keys})")
        return z, str(p)

    c, csrc = read(coordinates, ("coordinates", "coords", "positions"), "coordinates")
    f, fsrc = read(forces, ("forces",), "forces")
    c, lu = _convert(c, length_unit, "length", csrc, "coordinates")
    f, fu = _convert(f, force_unit, "force", fsrc, "forces")
    top = _topology_text(topology, csrc)
    _check_import_shapes(csrc, c, f, count_pdb_atoms(top))
    time = None if timestep_ps is None else np.arange(1, c.shape[0] + 1) * float(timestep_ps)
    return _write_imported(out, top, c, f, time, source=csrc, length_unit=lu, force_unit=fu,
                           physics=physics, attrs=attrs, overwrite=overwrite)


def import_trajectory(
    trajectory: str | Path,
    forces: str | Path | np.ndarray,
    out: str | Path,
    force_unit: str,
    topology: str | Path | None = None,
    temperature: float | None = None,
    constraints: str | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Import any trajectory mdtraj reads (lengths known: mdtraj works in nm) plus a force
    array (npy/npz, (T, N, 3)) whose unit must be declared.

    Times come from the trajectory (ps) when strictly increasing, else the frame index.
    ``temperature`` (K) and ``constraints`` are required (:func:`source_physics`).

    Raises:
        DatasetError: see :func:`import_arrays`.
    """
    physics = source_physics(temperature, constraints)
    if not Path(trajectory).is_file():
        raise FileNotFoundError(f"{trajectory}: no such trajectory file")
    try:
        traj = mdtraj.load(str(trajectory), top=None if topology is None else str(topology))
    except Exception as exc:  # noqa: BLE001 - mdtraj raises many kinds on unreadable input
        raise ValueError(f"{trajectory}: not a trajectory mdtraj reads ({type(exc).__name__}: {exc})") from None
    with tempfile.NamedTemporaryFile(suffix=".pdb") as tmp:
        traj[0].save_pdb(tmp.name)
        top = Path(tmp.name).read_text()
    f = np.load(forces) if not isinstance(forces, np.ndarray) else forces
    if isinstance(f, np.lib.npyio.NpzFile):
        f = f["forces"]
    f, fu = _convert(f, force_unit, "force", str(forces), "forces")
    c = np.asarray(traj.xyz, dtype=np.float64) * ANGSTROM_PER_NM
    _check_import_shapes(trajectory, c, f, traj.n_atoms)
    time = np.asarray(traj.time, dtype=np.float64)
    if time.size > 1 and not (np.diff(time) > 0).all():
        time = None
    return _write_imported(out, top, c, f, time, source=trajectory, length_unit="nm", force_unit=fu,
                           physics=physics, attrs=attrs, overwrite=overwrite)


