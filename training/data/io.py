"""The hessid dataset file: one HDF5 per protein (docs/architecture.md, "Dataset file").

Layout (all arrays in hessid units; OpenMM's nm and kJ/mol are converted before writing)::

    topology            scalar UTF-8 string      PDB text of the AA system
    coordinates         (T, N, 3) float64        Å
    forces              (T, N, 3) float64        kcal/mol/Å, forces of the saved positions
    potential_energy    (T,) float64             kcal/mol (optional for imported data)
    time                (T,) float64             ps, strictly increasing
    frame_id            (T,) int64               global frame id (probe seeding key), unique
    box                 (T, 3, 3) float64        Å, periodic systems only
    cg/weights, cg/projector        (n, N)       S and Q (Q aggregated over rigid X–H groups
                                                 for HBond-constrained data, see write_cg)
    cg/coordinates, cg/forces       (T, n, 3)    Å; P f in kcal/mol/Å
    cg/bead_types (n,) int64, cg/bonds (n_bonds, 2) int64
    cg/hvp_term1 (T, k, n, 3) kcal/mol/Å², cg/hvp_term1_done (T,) uint8   (training.targets)
    cg/hessian_block (T, 3n, 3n) kcal/mol/Å², cg/hessian_block_done (T,) uint8  (optional)

Public functions: :func:`create_dataset`, :func:`append_frames`, :func:`truncate_frames`,
:func:`write_dataset`, :func:`validate_dataset`, :func:`load_dataset`, the importers
:func:`import_hdf5`, :func:`import_arrays`, :func:`import_trajectory`, and the CG step
:func:`ca_map`, :func:`hbond_pairs`, :func:`write_cg`, :func:`load_cg`. Every validation
failure raises :class:`DatasetError` naming the file, the dataset and (where it applies) the
frame.
"""

from __future__ import annotations

import io
import json
import os
import platform as _platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hessid.units import ANGSTROM_PER_NM, KJ_PER_KCAL

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

#: the 20 standard residues (bead-type vocabulary, index = bead type); others are appended
STANDARD_RESIDUES = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
)  # fmt: skip
#: protonation/bonding variants mapped to their standard residue for bead types
RESIDUE_ALIASES = {
    "HID": "HIS", "HIE": "HIS", "HIP": "HIS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS",
    "CYX": "CYS", "CYM": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS",
}  # fmt: skip

_AA_REQUIRED = ("topology", "coordinates", "forces", "time", "frame_id")
_FRAME_BLOCK = 256  # frames read at a time while validating


class DatasetError(ValueError):
    """A dataset file is malformed. The message names the file, dataset and frame."""

    def __init__(self, path, dataset: str, message: str, frame: int | None = None):
        where = f"{path}: dataset '{dataset}'"
        if frame is not None:
            where += f", frame {frame}"
        super().__init__(f"{where}: {message}")
        self.path, self.dataset, self.frame = str(path), dataset, frame


# ----------------------------------------------------------------------------- helpers


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


def software_versions() -> dict:
    """Versions of the software that produced a file (stored as the ``versions`` attr)."""
    import hessid

    out = {"python": _platform.python_version(), "numpy": np.__version__,
           "h5py": h5py.__version__, "hessid": hessid.__version__}  # fmt: skip
    try:
        import openmm

        out["openmm"] = openmm.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def dataset_path(name_or_path: str | Path, root: str | Path = ".") -> Path:
    """Resolve ``hessid`` CLI dataset arguments to the HDF5 path.

    ``chignolin`` → ``<root>/chignolin/chignolin.h5``; a directory ``d`` → ``d/<d.name>.h5``;
    a path ending in ``.h5`` is returned as is.
    """
    p = Path(name_or_path)
    if p.suffix in (".h5", ".hdf5"):
        return p
    if p.is_dir():
        return p / f"{p.name}.h5"
    return Path(root) / p / f"{p.name}.h5"


def topology_from_pdb(text: str, source: str = "topology"):
    """OpenMM ``Topology`` of PDB text (atoms, residues, chains, bonds from CONECT/templates).

    Raises:
        ValueError: the text cannot be parsed as PDB.
    """
    from openmm.app import PDBFile

    try:
        return PDBFile(io.StringIO(text)).topology
    except Exception as exc:  # noqa: BLE001 - re-raised with the source named
        raise ValueError(f"{source}: not readable as PDB text ({exc})") from exc


def _count_pdb_atoms(text: str) -> int:
    n = 0
    for line in text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            n += 1
        elif line.startswith("ENDMDL"):
            break
    return n


def _read_topology_text(h5: h5py.File) -> str:
    raw = h5["topology"][()]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# ----------------------------------------------------------------------------- writing


def create_dataset(
    path: str | Path,
    topology_pdb: str,
    attrs: dict,
    periodic: bool = False,
    overwrite: bool = False,
    chunk_frames: int = 16,
) -> h5py.File:
    """Create an empty, appendable dataset file and return it open for writing.

    Args:
        path: output ``.h5`` path (parents created).
        topology_pdb: PDB text of the AA system (N atoms).
        attrs: root attributes; ``temperature`` (K), ``forcefield``, ``solvent``, ``platform``,
            ``seed``, ``name`` as known. ``length_unit``/``energy_unit``/``versions`` are set here.
        periodic: also create the ``box`` dataset (T, 3, 3) Å.
        overwrite: replace an existing file.
        chunk_frames: HDF5 chunk length along the frame axis.

    Returns:
        ``h5py.File`` in mode ``r+`` with zero frames (caller closes it).

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
        ValueError: the topology holds no atoms.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use --overwrite to replace, --resume to continue)")
    n_atoms = _count_pdb_atoms(topology_pdb)
    if n_atoms == 0:
        raise ValueError(f"{path}: topology has no ATOM/HETATM records")
    path.parent.mkdir(parents=True, exist_ok=True)
    h5 = h5py.File(path, "w")
    h5.create_dataset("topology", data=topology_pdb, dtype=h5py.string_dtype("utf-8"))
    c = max(1, int(chunk_frames))
    for key in ("coordinates", "forces"):
        h5.create_dataset(key, shape=(0, n_atoms, 3), maxshape=(None, n_atoms, 3),
                          dtype="f8", chunks=(c, n_atoms, 3))  # fmt: skip
    for key, dt in (("potential_energy", "f8"), ("time", "f8"), ("frame_id", "i8")):
        h5.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt, chunks=(max(c, 64),))
    if periodic:
        h5.create_dataset("box", shape=(0, 3, 3), maxshape=(None, 3, 3), dtype="f8",
                          chunks=(max(c, 64), 3, 3))  # fmt: skip
    h5["coordinates"].attrs["unit"] = "angstrom"
    h5["forces"].attrs["unit"] = "kcal/mol/angstrom"
    h5["potential_energy"].attrs["unit"] = "kcal/mol"
    h5["time"].attrs["unit"] = "ps"
    h5.attrs["length_unit"] = "angstrom"
    h5.attrs["energy_unit"] = "kcal/mol"
    h5.attrs["versions"] = json.dumps(software_versions())
    for k, v in attrs.items():
        if v is not None:
            h5.attrs[k] = v
    h5.flush()
    return h5


def append_frames(
    h5: h5py.File,
    coordinates: np.ndarray,
    forces: np.ndarray,
    time: np.ndarray,
    frame_id: np.ndarray,
    potential_energy: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> int:
    """Append B frames (hessid units) and flush; returns the new frame count T.

    Args:
        coordinates: (B, N, 3) Å.  forces: (B, N, 3) kcal/mol/Å.  time: (B,) ps.
        frame_id: (B,) int.  potential_energy: (B,) kcal/mol.  box: (B, 3, 3) Å.

    Raises:
        ValueError: shapes disagree with the file.
    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    b = coordinates.shape[0]
    t0 = h5["coordinates"].shape[0]
    items = {"coordinates": coordinates, "forces": forces, "time": time, "frame_id": frame_id}
    if potential_energy is not None:
        items["potential_energy"] = potential_energy
    if box is not None:
        items["box"] = box
    for key, arr in items.items():
        arr = np.asarray(arr)
        ds = h5[key]
        if arr.shape != (b,) + ds.shape[1:]:
            raise ValueError(
                f"{h5.filename}: dataset '{key}': appending shape {arr.shape}, "
                f"expected {(b,) + ds.shape[1:]}"
            )
        ds.resize(t0 + b, axis=0)
        ds[t0:] = arr
    h5.flush()
    return t0 + b


def commit(h5: h5py.File) -> None:
    """Make everything written to ``h5`` so far durable: ``flush`` (HDF5 metadata and chunk
    caches → the OS) then ``fsync`` of the file descriptor (OS → disk).

    After ``commit`` returns, a killed process (SIGKILL, OOM) or a power loss leaves the file
    as it was at this point, provided no further write was in progress: HDF5 without SWMR has
    no journal, so a kill *during* a metadata-changing write (e.g. :func:`append_frames`
    resizing datasets) can still leave the file unreadable (docs/data.md, "Crash safety").

    Raises:
        OSError: flush or fsync failed (disk full, I/O error).
    """
    h5.flush()
    try:
        fd = h5.id.get_vfd_handle()
    except (ValueError, NotImplementedError):  # pragma: no cover - non-POSIX drivers (core, ...)
        return
    if isinstance(fd, int):
        os.fsync(fd)


def truncate_frames(h5: h5py.File, n_frames: int) -> None:
    """Cut every per-frame AA dataset (and any cg/ per-frame dataset) to ``n_frames`` frames.

    Used by ``--resume`` when the file holds frames written after the last checkpoint.
    """
    for key in ("coordinates", "forces", "potential_energy", "time", "frame_id", "box"):
        if key in h5 and h5[key].shape[0] > n_frames:
            h5[key].resize(n_frames, axis=0)
    h5.flush()


def write_dataset(
    path: str | Path,
    topology_pdb: str,
    coordinates: np.ndarray,
    forces: np.ndarray,
    time: np.ndarray | None = None,
    frame_id: np.ndarray | None = None,
    potential_energy: np.ndarray | None = None,
    box: np.ndarray | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete dataset in hessid units (Å, kcal/mol) and validate it.

    Args:
        coordinates: (T, N, 3) Å.  forces: (T, N, 3) kcal/mol/Å.
        time: (T,) ps (default: frame index × 1 ps, marked by attr ``time_is_index``).
        frame_id: (T,) int64 (default ``arange(T)``).
        potential_energy: (T,) kcal/mol, optional.  box: (T, 3, 3) Å, optional.

    Returns:
        the path.

    Raises:
        DatasetError: the written data fail :func:`validate_dataset`.
        FileExistsError: exists and not ``overwrite``.
    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    t = coordinates.shape[0]
    attrs = dict(attrs or {})
    if time is None:
        time = np.arange(t, dtype=np.float64)
        attrs["time_is_index"] = True
    if frame_id is None:
        frame_id = np.arange(t, dtype=np.int64)
    with create_dataset(path, topology_pdb, attrs, periodic=box is not None,
                        overwrite=overwrite) as h5:  # fmt: skip
        append_frames(h5, coordinates, np.asarray(forces, dtype=np.float64),
                      np.asarray(time, dtype=np.float64), np.asarray(frame_id, dtype=np.int64),
                      None if potential_energy is None else np.asarray(potential_energy, "f8"),
                      None if box is None else np.asarray(box, "f8"))  # fmt: skip
        if potential_energy is None:
            del h5["potential_energy"]
    validate_dataset(path)
    return Path(path)


# ----------------------------------------------------------------------------- validation


def _check_finite(path, h5, key: str, mask: np.ndarray | None = None) -> None:
    ds = h5[key]
    for start in range(0, ds.shape[0], _FRAME_BLOCK):
        block = ds[start : start + _FRAME_BLOCK]
        bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if mask is not None:
            bad &= mask[start : start + block.shape[0]].astype(bool)
        if bad.any():
            raise DatasetError(path, key, "contains NaN or inf", int(start + np.argmax(bad)))


def validate_dataset(path: str | Path, check_values: bool = True, check_cg: bool = True) -> dict:
    """Check a dataset file against the layout in the module docstring.

    Checks: required datasets and unit attributes present; shapes consistent (T, N, 3) with N
    = atoms of the topology; CG arrays consistent with (n, N); ``time`` strictly increasing;
    ``frame_id`` unique; no NaN/inf in coordinates, forces, energies, CG arrays and finished
    ``hvp_term1`` frames (``check_values``). ``check_cg=False`` skips the ``cg/`` group (the
    AA part only: what :func:`write_cg` needs before replacing a stale group, e.g. after a
    simulation was extended).

    Returns:
        summary dict: ``n_frames``, ``n_atoms``, ``n_beads`` (or None), ``n_probes`` (or None).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: the first problem found, naming file, dataset and frame.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(path, "/", f"not a readable HDF5 file ({exc})") from exc
    with h5:
        for key in _AA_REQUIRED:
            if key not in h5:
                raise DatasetError(path, key, "missing")
        for attr, want in (("length_unit", "angstrom"), ("energy_unit", "kcal/mol")):
            if attr not in h5.attrs:
                raise DatasetError(path, "/", f"missing units: root attribute '{attr}'")
            if str(h5.attrs[attr]) != want:
                raise DatasetError(path, "/", f"attribute {attr}={h5.attrs[attr]!r}, expected {want!r}")
        n_top = _count_pdb_atoms(_read_topology_text(h5))
        coords = h5["coordinates"]
        if coords.ndim != 3 or coords.shape[2] != 3:
            raise DatasetError(path, "coordinates", f"shape {coords.shape}, expected (T, N, 3)")
        t, n_atoms = coords.shape[:2]
        if n_atoms != n_top:
            raise DatasetError(path, "coordinates",
                               f"{n_atoms} atoms but the topology has {n_top}")  # fmt: skip
        expect = {"forces": (t, n_atoms, 3), "time": (t,), "frame_id": (t,),
                  "potential_energy": (t,), "box": (t, 3, 3)}  # fmt: skip
        for key, shape in expect.items():
            if key in h5 and h5[key].shape != shape:
                raise DatasetError(path, key, f"shape {h5[key].shape}, expected {shape} "
                                   f"(T={t} frames, N={n_atoms} atoms)")  # fmt: skip
        time = h5["time"][()]
        if not np.isfinite(time).all():
            raise DatasetError(path, "time", "contains NaN or inf", int(np.argmax(~np.isfinite(time))))
        if t > 1 and not (np.diff(time) > 0).all():
            bad = int(np.argmax(~(np.diff(time) > 0))) + 1
            raise DatasetError(path, "time", f"not strictly increasing ({time[bad - 1]} → {time[bad]} ps)", bad)
        fid = h5["frame_id"][()]
        if np.unique(fid).size != fid.size:
            _, first = np.unique(fid, return_index=True)
            dup = int(np.setdiff1d(np.arange(fid.size), first)[0])
            raise DatasetError(path, "frame_id", f"duplicate frame id {fid[dup]}", dup)
        if check_values:
            for key in ("coordinates", "forces", "potential_energy", "box"):
                if key in h5:
                    _check_finite(path, h5, key)
        summary = {"n_frames": int(t), "n_atoms": int(n_atoms), "n_beads": None, "n_probes": None}
        if "cg" in h5 and check_cg:
            summary.update(_validate_cg(path, h5, t, n_atoms, check_values))
    return summary


def _validate_cg(path, h5, t: int, n_atoms: int, check_values: bool) -> dict:
    cg = h5["cg"]
    for key in ("weights", "projector"):
        if key not in cg:
            raise DatasetError(path, f"cg/{key}", "missing")
    n = cg["weights"].shape[0]
    for key in ("weights", "projector"):
        if cg[key].shape != (n, n_atoms):
            raise DatasetError(path, f"cg/{key}", f"shape {cg[key].shape}, expected ({n}, {n_atoms})")
    shapes = {"coordinates": (t, n, 3), "forces": (t, n, 3), "bead_types": (n,),
              "hvp_term1_done": (t,), "hessian_block": (t, 3 * n, 3 * n),
              "hessian_block_done": (t,)}  # fmt: skip
    for key, shape in shapes.items():
        if key in cg and cg[key].shape != shape:
            raise DatasetError(path, f"cg/{key}", f"shape {cg[key].shape}, expected {shape}")
    if "bonds" in cg and (cg["bonds"].ndim != 2 or cg["bonds"].shape[1] != 2):
        raise DatasetError(path, "cg/bonds", f"shape {cg['bonds'].shape}, expected (n_bonds, 2)")
    k = None
    if "hvp_term1" in cg:
        h = cg["hvp_term1"]
        if h.ndim != 4 or h.shape[0] != t or h.shape[2:] != (n, 3):
            raise DatasetError(path, "cg/hvp_term1", f"shape {h.shape}, expected ({t}, k, {n}, 3)")
        k = int(h.shape[1])
        for attr in ("probe_kind", "probe_seed", "epsilon_nm", "unit"):
            if attr not in h.attrs:
                raise DatasetError(path, "cg/hvp_term1", f"missing attribute '{attr}'")
    if check_values:
        for key in ("coordinates", "forces"):
            if key in cg:
                _check_finite(path, h5, f"cg/{key}")
        for key in ("hvp_term1", "hessian_block"):
            if key in cg:
                done = cg[f"{key}_done"][()] if f"{key}_done" in cg else None
                _check_finite(path, h5, f"cg/{key}", done)
    return {"n_beads": int(n), "n_probes": k}


# ----------------------------------------------------------------------------- loading


@dataclass
class CGData:
    """The ``cg/`` group in memory (hessid units).

    Attributes:
        weights, projector: (n, N) float64, S and Q.
        coordinates: (T, n, 3) Å.  forces: (T, n, 3) kcal/mol/Å (P f).
        bead_types: (n,) int64.  bonds: (n_bonds, 2) int64.  vocabulary: residue names.
        hvp_term1: (T, k, n, 3) kcal/mol/Å² or None; ``term1_attrs`` its attributes.
        term1_done: (T,) bool or None.
    """

    weights: np.ndarray
    projector: np.ndarray
    coordinates: np.ndarray | None = None
    forces: np.ndarray | None = None
    bead_types: np.ndarray | None = None
    bonds: np.ndarray | None = None
    vocabulary: list = field(default_factory=list)
    hvp_term1: np.ndarray | None = None
    term1_attrs: dict = field(default_factory=dict)
    term1_done: np.ndarray | None = None

    def linear_map(self):
        """:class:`hessid.maps.LinearMap` with these weights and projector."""
        from hessid.maps import LinearMap

        return LinearMap(self.weights, self.projector)


@dataclass
class AADataset:
    """A loaded dataset file (all arrays in memory, hessid units).

    Attributes:
        path: the file.  topology_pdb: PDB text.  attrs: root attributes.
        coordinates: (T, N, 3) Å.  forces: (T, N, 3) kcal/mol/Å.  time: (T,) ps.
        frame_id: (T,) int64.  potential_energy: (T,) kcal/mol or None.  box: (T, 3, 3) Å or None.
        cg: :class:`CGData` or None.
    """

    path: Path
    topology_pdb: str
    attrs: dict
    coordinates: np.ndarray
    forces: np.ndarray
    time: np.ndarray
    frame_id: np.ndarray
    potential_energy: np.ndarray | None = None
    box: np.ndarray | None = None
    cg: CGData | None = None

    @property
    def n_frames(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def topology(self):
        """OpenMM ``Topology`` parsed from :attr:`topology_pdb`."""
        return topology_from_pdb(self.topology_pdb, f"{self.path}: topology")


def load_cg(path: str | Path) -> CGData:
    """Read the ``cg/`` group of a dataset file.

    Raises:
        DatasetError: the file has no ``cg/`` group (run ``hessid data map``).
    """
    with h5py.File(path, "r") as h5:
        if "cg" not in h5:
            raise DatasetError(path, "cg", "missing (run `hessid data map`)")
        return _read_cg(h5["cg"])


def _read_cg(cg) -> CGData:
    def get(key):
        return cg[key][()] if key in cg else None

    out = CGData(weights=get("weights"), projector=get("projector"),
                 coordinates=get("coordinates"), forces=get("forces"),
                 bead_types=get("bead_types"), bonds=get("bonds"))  # fmt: skip
    if "bead_types" in cg:
        out.vocabulary = json.loads(cg["bead_types"].attrs.get("bead_vocabulary", "[]"))
    if "hvp_term1" in cg:
        out.hvp_term1 = cg["hvp_term1"][()]
        out.term1_attrs = dict(cg["hvp_term1"].attrs)
        if "hvp_term1_done" in cg:
            out.term1_done = cg["hvp_term1_done"][()].astype(bool)
    return out


def load_dataset(path: str | Path, validate: bool = True) -> AADataset:
    """Load a dataset file into memory (validated first unless ``validate=False``).

    Raises:
        FileNotFoundError, DatasetError: see :func:`validate_dataset`.
    """
    path = Path(path)
    if validate:
        validate_dataset(path)
    with h5py.File(path, "r") as h5:
        get = lambda k: h5[k][()] if k in h5 else None  # noqa: E731
        return AADataset(
            path=path, topology_pdb=_read_topology_text(h5), attrs=dict(h5.attrs),
            coordinates=h5["coordinates"][()], forces=h5["forces"][()], time=h5["time"][()],
            frame_id=h5["frame_id"][()], potential_energy=get("potential_energy"),
            box=get("box"), cg=_read_cg(h5["cg"]) if "cg" in h5 else None,
        )  # fmt: skip


# ----------------------------------------------------------------------------- imports


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
    import mdtraj

    t = mdtraj.load_frame(str(p), 0) if p.suffix.lower() not in (".prmtop", ".psf") else None
    if t is None:
        raise ValueError(f"{p}: give a PDB topology (or a structure file mdtraj reads)")
    out = io.StringIO()
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pdb") as tmp:
        t.save_pdb(tmp.name)
        out.write(Path(tmp.name).read_text())
    return out.getvalue()


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


def import_hdf5(
    source: str | Path,
    out: str | Path,
    topology: str | Path | None = None,
    coordinates_key: str | None = None,
    forces_key: str | None = None,
    length_unit: str | None = None,
    force_unit: str | None = None,
    timestep_ps: float | None = None,
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

    Returns:
        the output path (validated).

    Raises:
        DatasetError: missing dataset or unit, shape mismatch, NaN/inf, atom-count mismatch.
    """
    src = Path(source)
    with h5py.File(src, "r") as h5:
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
    _check_import_shapes(src, coords, forces, _count_pdb_atoms(top))
    if time is None and timestep_ps is not None:
        time = np.arange(1, coords.shape[0] + 1) * float(timestep_ps)
    meta = {"source": str(src), "source_length_unit": lu, "source_force_unit": fu}
    meta.update(attrs or {})
    return write_dataset(out, top, coords, forces, time=time, attrs=meta, overwrite=overwrite)


def import_arrays(
    coordinates: str | Path | np.ndarray,
    forces: str | Path | np.ndarray,
    topology: str | Path,
    out: str | Path,
    length_unit: str,
    force_unit: str,
    timestep_ps: float | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Import npy/npz coordinate and force arrays (T, N, 3) with a PDB topology.

    An ``.npz`` is read for keys ``coordinates``/``coords``/``positions`` and ``forces``.
    Units must be declared (``length_unit``, ``force_unit``).

    Raises:
        DatasetError: unit missing, shape or atom-count mismatch, NaN/inf (file, array, frame).
    """

    def read(x, keys, what):
        if isinstance(x, np.ndarray):
            return x, what
        p = Path(x)
        if p.suffix == ".npz":
            z = np.load(p)
            for k in keys:
                if k in z:
                    return z[k], f"{p}:{k}"
            raise DatasetError(p, "/", f"no {what} array (looked for {keys})")
        return np.load(p), str(p)

    c, csrc = read(coordinates, ("coordinates", "coords", "positions"), "coordinates")
    f, fsrc = read(forces, ("forces",), "forces")
    c, lu = _convert(c, length_unit, "length", csrc, "coordinates")
    f, fu = _convert(f, force_unit, "force", fsrc, "forces")
    top = _topology_text(topology, csrc)
    _check_import_shapes(csrc, c, f, _count_pdb_atoms(top))
    time = None if timestep_ps is None else np.arange(1, c.shape[0] + 1) * float(timestep_ps)
    meta = {"source": str(csrc), "source_length_unit": lu, "source_force_unit": fu}
    meta.update(attrs or {})
    return write_dataset(out, top, c, f, time=time, attrs=meta, overwrite=overwrite)


def import_trajectory(
    trajectory: str | Path,
    forces: str | Path | np.ndarray,
    out: str | Path,
    force_unit: str,
    topology: str | Path | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Import any trajectory mdtraj reads (lengths known: mdtraj works in nm) plus a force
    array (npy/npz, (T, N, 3)) whose unit must be declared.

    Times come from the trajectory (ps) when strictly increasing, else the frame index.

    Raises:
        DatasetError: see :func:`import_arrays`.
    """
    import mdtraj

    traj = mdtraj.load(str(trajectory), top=None if topology is None else str(topology))
    import tempfile

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
    meta = {"source": str(trajectory), "source_length_unit": "nm", "source_force_unit": fu}
    meta.update(attrs or {})
    return write_dataset(out, top, c, f, time=time, attrs=meta, overwrite=overwrite)


# ----------------------------------------------------------------------------- CG map


def _residue_key(name: str) -> str:
    name = name.upper()
    return RESIDUE_ALIASES.get(name, name)


def ca_map(topology, vocabulary: list[str] | None = None):
    """Cα map of a protein topology: selection weights (P = M), bead types, chain bonds.

    One bead per residue that has N, CA and C atoms (so calcium ions named CA are skipped).

    Args:
        topology: OpenMM ``Topology``.
        vocabulary: residue-name list giving bead-type indices (default
            :data:`STANDARD_RESIDUES`; unseen names are appended).

    Returns:
        ``(cg_map, bead_types (n,) int64, bonds (n_bonds, 2) int64, vocabulary)`` where
        bonds join consecutive beads of the same chain (n − 1 for one chain).

    Raises:
        ValueError: no residue has a Cα.
    """
    from hessid.maps import LinearMap

    vocab = list(vocabulary or STANDARD_RESIDUES)
    idx, types, chain_of = [], [], []
    n_atoms = 0
    for chain in topology.chains():
        for res in chain.residues():
            atoms = {a.name: a.index for a in res.atoms()}
            if {"N", "CA", "C"} <= atoms.keys():
                key = _residue_key(res.name)
                if key not in vocab:
                    vocab.append(key)
                idx.append(atoms["CA"])
                types.append(vocab.index(key))
                chain_of.append(chain.index)
    n_atoms = topology.getNumAtoms()
    if not idx:
        raise ValueError("no residue with N, CA and C atoms: cannot build a Cα map")
    bonds = [(i, i + 1) for i in range(len(idx) - 1) if chain_of[i] == chain_of[i + 1]]
    cg_map = LinearMap.selection(idx, n_atoms)
    return (cg_map, np.asarray(types, dtype=np.int64),
            np.asarray(bonds, dtype=np.int64).reshape(-1, 2), vocab)  # fmt: skip


def hbond_pairs(topology) -> np.ndarray:
    """Atom pairs that OpenMM's ``constraints=HBonds`` makes rigid: every bond of the topology
    with a hydrogen at either end (the rule of ``ForceField.createSystem``).

    Args:
        topology: OpenMM ``Topology`` (with bonds, e.g. from :func:`topology_from_pdb`).

    Returns:
        (m, 2) int64 atom indices.
    """
    from openmm.app import element

    pairs = [(b.atom1.index, b.atom2.index) for b in topology.bonds()
             if b.atom1.element is element.hydrogen or b.atom2.element is element.hydrogen]  # fmt: skip
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def write_cg(
    path: str | Path,
    cg_map=None,
    bead_types: np.ndarray | None = None,
    bonds: np.ndarray | None = None,
    vocabulary: list[str] | None = None,
    overwrite: bool = False,
    constraint_aware: bool = True,
) -> CGData:
    """Apply a linear CG map to a dataset file and write its ``cg/`` group (``hessid data map``).

    R = S r (cg/coordinates, Å) and P f = Q f (cg/forces, kcal/mol/Å), spec §2.

    Constrained data: when the file's root attribute ``constraints`` is ``"HBonds"`` (datasets
    simulated by :mod:`.aa_md`), every bond with a hydrogen was rigid, and a projector is valid
    only if its lift Pᵀv moves each rigid X–H group as one body. Q is then replaced by
    :func:`hessid.maps.constraint_aware_projector` (spec §2 projector condition Q Sᵀ = I
    extended to holonomic constraints; Krämer et al., JCTC 2023, force aggregation): for the
    Cα map the force on a bead is f_CA + f_HA, the mean force of the constrained ensemble,
    and the Term-1 lift moves HA with CA. ``cg/projector``, ``cg/forces`` and, through them,
    the Term-1 targets use this Q; the attribute ``cg.attrs["projector_constraints"]`` is
    ``"HBonds"`` or ``"none"``. Files without the attribute (imports) or with ``"none"`` keep
    the map's projector.

    Args:
        path: dataset file (validated first).
        cg_map: :class:`hessid.maps.LinearMap` with ``n_atoms == N``; default: :func:`ca_map`.
        bead_types, bonds, vocabulary: required with a custom ``cg_map`` unless its bead count
            equals the Cα count (then the Cα types and bonds are used).
        overwrite: replace an existing ``cg/`` group (drops its targets).
        constraint_aware: aggregate the projector over HBond-constrained groups (above); False
            keeps ``cg_map.projector`` as given (use it with a projector that is already valid
            under the constraints).

    Returns:
        the written :class:`CGData`.

    Raises:
        DatasetError: invalid file, ``cg/`` exists and not ``overwrite``, map/atom mismatch, or
            no constraint-aware projector exists for this map (a rigid X–H group split between
            beads; the message says so).
    """
    path = Path(path)
    validate_dataset(path, check_cg=not overwrite)  # a group to be replaced may be stale
    with h5py.File(path, "r") as h5:
        top = topology_from_pdb(_read_topology_text(h5), f"{path}: topology")
        exists = "cg" in h5
        raw = h5.attrs.get("constraints", "none")
        constraints = raw.decode() if isinstance(raw, bytes) else str(raw)
    if exists and not overwrite:
        raise DatasetError(path, "cg", "exists (pass overwrite=True / --overwrite to replace it)")
    ca, ca_types, ca_bonds, ca_vocab = ca_map(top, vocabulary)
    if cg_map is None:
        cg_map = ca
    if cg_map.n_atoms != top.getNumAtoms():
        raise DatasetError(path, "cg/weights", f"map has {cg_map.n_atoms} atoms, file has {top.getNumAtoms()}")
    n = cg_map.n_beads
    if bead_types is None:
        if n != ca.n_beads:
            raise ValueError("a custom map with a different bead count needs bead_types and bonds")
        bead_types, vocabulary = ca_types, ca_vocab
    if bonds is None:
        bonds = ca_bonds if n == ca.n_beads else np.zeros((0, 2), np.int64)
    S = cg_map.weights.numpy()
    Q = cg_map.projector.numpy()
    projector_constraints = "none"
    if constraint_aware and constraints.strip().lower() == "hbonds":
        from hessid.maps import constraint_aware_projector

        try:
            Q = constraint_aware_projector(S, Q, hbond_pairs(top), n_atoms=S.shape[1]).numpy()
        except ValueError as exc:
            raise DatasetError(path, "cg/projector", f"HBond-constrained data: {exc} "
                               "(or write_cg(..., constraint_aware=False) with a projector "
                               "valid under the constraints)") from exc  # fmt: skip
        projector_constraints = "HBonds"
    with h5py.File(path, "r+") as h5:
        if "cg" in h5:
            del h5["cg"]
        g = h5.create_group("cg")
        g.create_dataset("weights", data=S)
        g.create_dataset("projector", data=Q)
        t = h5["coordinates"].shape[0]
        for key, mat in (("coordinates", S), ("forces", Q)):
            ds = g.create_dataset(key, shape=(t, n, 3), dtype="f8")
            for start in range(0, t, _FRAME_BLOCK):
                block = h5[key][start : start + _FRAME_BLOCK]  # (b, N, 3)
                ds[start : start + block.shape[0]] = np.einsum("nN,bNc->bnc", mat, block)
        g["coordinates"].attrs["unit"] = "angstrom"
        g["forces"].attrs["unit"] = "kcal/mol/angstrom"
        g["forces"].attrs["meaning"] = "P f, projected AA forces (spec §2)"
        bt = g.create_dataset("bead_types", data=np.asarray(bead_types, dtype=np.int64))
        bt.attrs["bead_vocabulary"] = json.dumps(list(vocabulary or []))
        g.create_dataset("bonds", data=np.asarray(bonds, dtype=np.int64).reshape(-1, 2))
        g.attrs["map"] = "ca" if cg_map is ca else "custom"
        g.attrs["projector_constraints"] = projector_constraints
        h5.flush()
    return load_cg(path)
