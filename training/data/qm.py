"""The atomistic QM dataset: schema, writer, reader, validator and the PyANI/hippynn importer
(docs/atomistic.md, "Data").

One molecule per file, ``ROOT/NAME/NAME.h5``. All arrays are in hessid units (Å, kcal/mol);
Hartree and Bohr are converted before writing (:mod:`hessid.units`). Shapes use T structures
and N atoms::

    species         (N,) int64              atomic numbers
    coordinates     (T, N, 3) float64       Å
    energies        (T,) float64            kcal/mol (total electronic energy of the method)
    forces          (T, N, 3) float64       kcal/mol/Å, −∇E of the same structure
    hessians        (T, 3N, 3N) float64     kcal/mol/Å², symmetric; absent for E-F-only sets
    structure_id    (T,) int64              stable id (seeds fixed probes), unique
    subset          (T,) int8               0 near equilibrium, 1 far from equilibrium
    done            (T,) bool               True where energies/forces/hessians hold values
    failed          (T,) bool               True where the computation failed (see ``error``)
    error           (T,) UTF-8 string       one-line reason for a failure ('' otherwise)
    conformer       (T,) int64              index of the minimum the structure was sampled from
                                            (−1: unknown, e.g. imported)
    minima/coordinates (C, N, 3) float64    Å, optimised conformers (optional)
    minima/energies    (C,) float64         kcal/mol
    minima/hessians    (C, 3N, 3N) float64  kcal/mol/Å² at the minima (symmetrised)

Values of a structure that is not ``done`` are NaN. A structure is never dropped: a failed
structure keeps its coordinates, ``failed = True`` and its ``error`` message, so a reader can
say how many and why. Readers train on ``done`` structures.

Root attributes: ``kind = "hessid-qm"``, ``format_version`` (int), ``name``, ``method``
(e.g. ``gfn2-xtb``, ``wb97x-d3bj/6-31g(d)``), ``basis``, ``program`` and ``versions`` (JSON),
``convergence`` (JSON: SCF thresholds, optimiser tolerances, FD step), ``units`` (JSON, the
table above), ``seed``, ``temperature_near`` and ``temperature_far`` (K, the sampling
temperatures), ``sampling`` (JSON: the sampling settings), ``smiles``, ``charge``,
``multiplicity``, ``hessian_method`` (``analytic`` | ``central_difference`` | ``imported``),
``source`` (imported files: the source path and units assumed).

Errors are :class:`hessid.training.data.schema.DatasetError` (one line naming the file, the
key and, where it applies, the structure index as the frame).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hessid.training.data.io import (
    atomic_output,
    check_dataset_name,
    commit,
    dataset_path,
    remove_new_folder,
)
from hessid.training.data.schema import DatasetError, DatasetNotFoundError, NotADatasetError
from hessid.units import BOHR_ANGSTROM, EV_KCAL_PER_MOL, HARTREE_KCAL_PER_MOL, KJ_PER_KCAL

__all__ = [
    "CONFORMER", "COORDINATES", "DONE", "ENERGIES", "ERROR", "FAILED", "FORCES", "HESSIANS",
    "KIND", "MINIMA_COORDINATES", "MINIMA_ENERGIES", "MINIMA_HESSIANS", "QM_FORMAT_VERSION",
    "SPECIES", "STRUCTURE_ID", "SUBSET", "SUBSET_FAR", "SUBSET_NEAR", "UNITS", "QMDataset",
    "QMMinima", "atomic_number", "create_qm_dataset", "element_symbol", "energy_factor",
    "import_pyani", "length_factor", "open_qm_dataset", "qm_dataset_path", "record_qm_failures", "unit_factor",
    "validate_qm_dataset", "write_qm_dataset", "write_qm_results",
]  # fmt: skip

KIND = "hessid-qm"
#: version of the layout written by this hessid
QM_FORMAT_VERSION = 1
READABLE_QM_FORMAT_VERSIONS = (1,)

SPECIES = "species"
COORDINATES = "coordinates"
ENERGIES = "energies"
FORCES = "forces"
HESSIANS = "hessians"
STRUCTURE_ID = "structure_id"
SUBSET = "subset"
DONE = "done"
FAILED = "failed"
ERROR = "error"
CONFORMER = "conformer"
MINIMA_COORDINATES = "minima/coordinates"
MINIMA_ENERGIES = "minima/energies"
MINIMA_HESSIANS = "minima/hessians"

SUBSET_NEAR = 0
SUBSET_FAR = 1

#: the units of every stored array (also written as the JSON root attribute ``units``)
UNITS = {
    COORDINATES: "angstrom", ENERGIES: "kcal/mol", FORCES: "kcal/mol/angstrom",
    HESSIANS: "kcal/mol/angstrom**2", "temperature": "K",
}  # fmt: skip

#: element symbols by atomic number (index 0 unused)
_SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm "
    "Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()


def element_symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (1–118). Raises ValueError outside."""
    if not 1 <= int(z) < len(_SYMBOLS):
        raise ValueError(f"atomic number {z!r} outside 1..{len(_SYMBOLS) - 1}")
    return _SYMBOLS[int(z)]


def atomic_number(symbol: str | bytes | int) -> int:
    """Atomic number of an element symbol (case-insensitive; bytes accepted) or of an int.

    Raises:
        ValueError: not an element symbol H..Og or an atomic number 1..118.
    """
    if isinstance(symbol, bytes):
        symbol = symbol.decode()
    if isinstance(symbol, (int, np.integer)):
        element_symbol(int(symbol))
        return int(symbol)
    text = str(symbol).strip()
    if text.isdigit():
        return atomic_number(int(text))
    for z, s in enumerate(_SYMBOLS):
        if z and s.lower() == text.lower():
            return z
    raise ValueError(f"unknown element symbol {symbol!r}")


# ----------------------------------------------------------------------------- units of imports

#: energy units accepted by importers → kcal/mol per unit
_ENERGY_UNITS = {"hartree": HARTREE_KCAL_PER_MOL, "kcal/mol": 1.0, "ev": EV_KCAL_PER_MOL,
                 "kj/mol": 1.0 / KJ_PER_KCAL}  # fmt: skip
#: length units accepted by importers → Å per unit
_LENGTH_UNITS = {"angstrom": 1.0, "bohr": BOHR_ANGSTROM, "nm": 10.0}


def _unit_factor(table: dict, kind: str, unit: str) -> float:
    key = str(unit).strip().lower()
    if key not in table:
        raise ValueError(f"unknown {kind} unit {unit!r}; known: {', '.join(table)}")
    return table[key]


def energy_factor(unit: str) -> float:
    """kcal/mol per ``unit`` (hartree, kcal/mol, ev, kj/mol; case-insensitive).

    Raises:
        ValueError: unknown unit (one line listing the known ones).
    """
    return _unit_factor(_ENERGY_UNITS, "energy", unit)


def length_factor(unit: str) -> float:
    """Å per ``unit`` (angstrom, bohr, nm; case-insensitive).

    Raises:
        ValueError: unknown unit (one line listing the known ones).
    """
    return _unit_factor(_LENGTH_UNITS, "length", unit)


def unit_factor(unit: str, length_power: int) -> float:
    """Factor converting ``unit`` = ``ENERGY/LENGTH`` (power 1) or ``ENERGY/LENGTH**2``
    (power 2) to kcal/mol/Å^power, e.g. ``unit_factor("hartree/bohr", 1) = 1185.82``.

    Raises:
        ValueError: the unit is not of that form (one line naming it).
    """
    text = str(unit).strip().lower().replace("^", "**")
    energy, sep, length = text.rpartition("/")
    suffix = f"**{length_power}" if length_power > 1 else ""
    if not sep or (suffix and not length.endswith(suffix)):
        raise ValueError(f"unit {unit!r}: expected ENERGY/LENGTH{suffix}, e.g. hartree/bohr{suffix}")
    length = length[: len(length) - len(suffix)] if suffix else length
    if length not in _LENGTH_UNITS:
        raise ValueError(f"unit {unit!r}: unknown length unit {length!r}; known: {', '.join(_LENGTH_UNITS)}")
    return energy_factor(energy) / _LENGTH_UNITS[length] ** length_power


# ----------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class QMMinima:
    """Optimised conformers stored with a built dataset (C minima, N atoms).

    Attributes:
        coordinates: (C, N, 3) float64 Å.  energies: (C,) float64 kcal/mol.
        hessians: (C, 3N, 3N) float64 kcal/mol/Å² (symmetrised) or None.
    """

    coordinates: np.ndarray
    energies: np.ndarray
    hessians: np.ndarray | None


@dataclass(frozen=True)
class QMDataset:
    """An atomistic QM dataset read into memory (numpy arrays in hessid units).

    Attributes:
        name: dataset name.  path: the HDF5 file.  attrs: root attributes (JSON ones decoded).
        species: (N,) int64 atomic numbers.  coordinates: (T, N, 3) float64 Å.
        energies: (T,) float64 kcal/mol.  forces: (T, N, 3) float64 kcal/mol/Å.
        hessians: (T, 3N, 3N) float64 kcal/mol/Å² or None.  structure_id: (T,) int64.
        subset: (T,) int8 (0 near, 1 far).  done: (T,) bool.  failed: (T,) bool.
        error: (T,) tuple of str.  conformer: (T,) int64.  minima: QMMinima or None.
    """

    name: str
    path: Path
    attrs: dict
    species: np.ndarray
    coordinates: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    hessians: np.ndarray | None
    structure_id: np.ndarray
    subset: np.ndarray
    done: np.ndarray
    failed: np.ndarray
    error: tuple = field(default=())
    conformer: np.ndarray | None = None
    minima: QMMinima | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.species.shape[0])

    @property
    def n_structures(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def has_hessians(self) -> bool:
        return self.hessians is not None

    def select(self, index) -> QMDataset:
        """The structures ``index`` (bool mask, int array or slice) as a new QMDataset."""
        idx = np.arange(self.n_structures)[index]
        return QMDataset(
            self.name, self.path, self.attrs, self.species, self.coordinates[idx], self.energies[idx],
            self.forces[idx], None if self.hessians is None else self.hessians[idx], self.structure_id[idx],
            self.subset[idx], self.done[idx], self.failed[idx], tuple(self.error[i] for i in idx),
            None if self.conformer is None else self.conformer[idx], self.minima)  # fmt: skip

    def completed(self) -> QMDataset:
        """The ``done`` structures only (what training uses)."""
        return self.select(self.done)


def qm_dataset_path(name_or_path: str | Path, root: str | Path = ".") -> Path:
    """``NAME`` → ``ROOT/NAME/NAME.h5``; a folder or ``.h5`` path as in
    :func:`hessid.training.data.io.dataset_path`."""
    return dataset_path(name_or_path, root)


_JSON_ATTRS = ("versions", "convergence", "units", "sampling", "source")


def _decode_attrs(attrs) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in _JSON_ATTRS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _open_h5(path: Path, mode: str = "r") -> h5py.File:
    if not path.exists():
        raise DatasetNotFoundError(path)
    try:
        h5 = h5py.File(path, mode)
    except OSError as exc:
        raise NotADatasetError(path, None, f"not an HDF5 file ({exc})") from None
    kind = h5.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind != KIND:
        h5.close()
        raise NotADatasetError(path, None, f"not an atomistic QM dataset (attribute kind={kind!r}, "
                               f"expected {KIND!r})")  # fmt: skip
    version = h5.attrs.get("format_version", None)
    if version is None or int(version) not in READABLE_QM_FORMAT_VERSIONS:
        h5.close()
        raise DatasetError(path, None, f"format_version={version!r} is not readable by this hessid "
                           f"(reads {list(READABLE_QM_FORMAT_VERSIONS)})")  # fmt: skip
    return h5


def open_qm_dataset(name_or_path: str | Path, root: str | Path = ".", validate: bool = True) -> QMDataset:
    """Read an atomistic QM dataset into memory.

    Args:
        name_or_path: ``NAME`` (→ ``ROOT/NAME/NAME.h5``), a folder or an ``.h5`` path.
        root: folder holding ``NAME/``.
        validate: run the structural checks of :func:`validate_qm_dataset` first.

    Returns:
        :class:`QMDataset` (arrays as numpy, hessid units).

    Raises:
        DatasetNotFoundError: no file.  NotADatasetError: not HDF5 or not ``kind = hessid-qm``.
        DatasetError: a key is missing or malformed (validate=True).
    """
    path = qm_dataset_path(name_or_path, root)
    if validate:
        validate_qm_dataset(path)
    with _open_h5(path) as h5:
        t = h5[COORDINATES].shape[0]
        minima = None
        if MINIMA_COORDINATES in h5:
            minima = QMMinima(h5[MINIMA_COORDINATES][()], h5[MINIMA_ENERGIES][()],
                              h5[MINIMA_HESSIANS][()] if MINIMA_HESSIANS in h5 else None)  # fmt: skip
        errors = tuple(e.decode() if isinstance(e, bytes) else str(e) for e in h5[ERROR][()]) \
            if ERROR in h5 else ("",) * t  # fmt: skip
        return QMDataset(
            name=str(h5.attrs.get("name", path.stem)), path=path, attrs=_decode_attrs(h5.attrs),
            species=h5[SPECIES][()].astype(np.int64), coordinates=h5[COORDINATES][()],
            energies=h5[ENERGIES][()], forces=h5[FORCES][()],
            hessians=h5[HESSIANS][()] if HESSIANS in h5 else None,
            structure_id=h5[STRUCTURE_ID][()], subset=h5[SUBSET][()], done=h5[DONE][()].astype(bool),
            failed=h5[FAILED][()].astype(bool) if FAILED in h5 else np.zeros(t, bool), error=errors,
            conformer=h5[CONFORMER][()] if CONFORMER in h5 else np.full(t, -1, np.int64), minima=minima)


# ----------------------------------------------------------------------------- writer


def _attr_value(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "none"
    return value


def _early_alloc():
    """Dataset creation property list with early (at-creation) storage allocation."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def create_qm_dataset(
    path: str | Path,
    species: Sequence[int],
    coordinates: np.ndarray,
    *,
    structure_id: np.ndarray | None = None,
    subset: np.ndarray | None = None,
    conformer: np.ndarray | None = None,
    with_hessians: bool = True,
    attrs: dict | None = None,
    minima: QMMinima | None = None,
    overwrite: bool = False,
) -> Path:
    """Create a dataset holding the structures to compute: coordinates set, values NaN,
    ``done`` False. :func:`write_qm_results` then fills structures as they finish
    (resumable: the done mask says what is left).

    The file is written as ``<path>.tmp`` and renamed, so a killed call leaves no half file.

    Args:
        path: the ``.h5`` file (its folder is created).
        species: (N,) atomic numbers.  coordinates: (T, N, 3) Å.
        structure_id: (T,) int64 unique (default ``arange(T)``).
        subset: (T,) int8, 0 near / 1 far (default 0).  conformer: (T,) int64 (default −1).
        with_hessians: allocate ``hessians`` (T, 3N, 3N).
        attrs: provenance root attributes (dicts/lists stored as JSON).
        minima: optimised conformers to store under ``minima/``.
        overwrite: replace an existing file.

    Returns:
        the path.

    Raises:
        FileExistsError: exists and not ``overwrite``.  ValueError: shapes or values disagree.
    """
    path = Path(path)
    species = np.asarray(species, dtype=np.int64)
    coordinates = np.asarray(coordinates, dtype=np.float64)
    t, n = coordinates.shape[0], species.shape[0]
    if coordinates.shape != (t, n, 3):
        raise ValueError(f"coordinates shape {coordinates.shape} != (T, {n}, 3) for {n} species")
    for z in species:
        element_symbol(int(z))
    structure_id = np.arange(t, dtype=np.int64) if structure_id is None else np.asarray(structure_id, np.int64)
    subset = np.zeros(t, np.int8) if subset is None else np.asarray(subset, np.int8)
    conformer = np.full(t, -1, np.int64) if conformer is None else np.asarray(conformer, np.int64)
    for key, arr in ((STRUCTURE_ID, structure_id), (SUBSET, subset), (CONFORMER, conformer)):
        if arr.shape != (t,):
            raise ValueError(f"{key} shape {arr.shape} != ({t},)")
    if np.unique(structure_id).size != t:
        raise ValueError("structure_id values are not unique")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use --overwrite to replace, or --resume to continue)")
    with atomic_output(path) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w", track_order=True) as h5:
            h5.attrs["kind"] = KIND
            h5.attrs["format_version"] = QM_FORMAT_VERSION
            h5.attrs["units"] = json.dumps(UNITS, sort_keys=True)
            for key, value in (attrs or {}).items():
                h5.attrs[key] = _attr_value(value)
            h5.create_dataset(SPECIES, data=species)
            h5.create_dataset(COORDINATES, data=coordinates)
            h5.create_dataset(ENERGIES, data=np.full(t, np.nan))
            h5.create_dataset(FORCES, data=np.full((t, n, 3), np.nan))
            if with_hessians:
                # storage allocated now: later writes fill it in place in any order, so the
                # file's bytes do not depend on the order structures finish
                h5.create_dataset(HESSIANS, shape=(t, 3 * n, 3 * n), dtype="f8", fillvalue=np.nan,
                                  chunks=(1, 3 * n, 3 * n), dcpl=_early_alloc())  # fmt: skip
            h5.create_dataset(STRUCTURE_ID, data=structure_id)
            h5.create_dataset(SUBSET, data=subset)
            h5.create_dataset(CONFORMER, data=conformer)
            h5.create_dataset(DONE, data=np.zeros(t, bool))
            h5.create_dataset(FAILED, data=np.zeros(t, bool))
            h5.create_dataset(ERROR, data=[""] * t, dtype=h5py.string_dtype())
            if minima is not None:
                h5.create_dataset(MINIMA_COORDINATES, data=np.asarray(minima.coordinates, np.float64))
                h5.create_dataset(MINIMA_ENERGIES, data=np.asarray(minima.energies, np.float64))
                if minima.hessians is not None:
                    h5.create_dataset(MINIMA_HESSIANS, data=np.asarray(minima.hessians, np.float64))
            commit(h5)
    return path


def write_qm_results(
    path: str | Path,
    indices: Sequence[int],
    energies: np.ndarray,
    forces: np.ndarray,
    hessians: np.ndarray | None = None,
) -> None:
    """Store computed structures and mark them done (values committed first, then the done
    flags, so a flag never stands for values a kill could still lose).

    Args:
        path: a file made by :func:`create_qm_dataset`.  indices: (b,) structure rows.
        energies: (b,) kcal/mol.  forces: (b, N, 3) kcal/mol/Å.
        hessians: (b, 3N, 3N) kcal/mol/Å² (required when the file has ``hessians``).

    Raises:
        DatasetError: shapes disagree with the file, values not finite, or a Hessian missing.
    """
    path = Path(path)
    idx = np.asarray(indices, dtype=np.int64)
    order = np.argsort(idx)  # h5py fancy indexing needs increasing rows
    idx = idx[order]
    with _open_h5(path, "r+") as h5:
        n = h5[SPECIES].shape[0]
        e = np.asarray(energies, np.float64)[order]
        f = np.asarray(forces, np.float64)[order]
        if e.shape != idx.shape or f.shape != (idx.size, n, 3):
            raise DatasetError(path, FORCES, f"results shapes {e.shape}, {f.shape} do not fit {idx.size} "
                               f"structures of {n} atoms")  # fmt: skip
        for key, arr in ((ENERGIES, e), (FORCES, f)):
            bad = ~np.isfinite(arr.reshape(idx.size, -1)).all(axis=1)
            if bad.any():
                raise DatasetError(path, key, "non-finite value", frame=int(idx[bad][0]))
        h5[ENERGIES][idx] = e
        h5[FORCES][idx] = f
        if HESSIANS in h5:
            if hessians is None:
                raise DatasetError(path, HESSIANS, "the file stores Hessians but none were given")
            h = np.asarray(hessians, np.float64)[order]
            if h.shape != (idx.size, 3 * n, 3 * n):
                raise DatasetError(path, HESSIANS, f"shape {h.shape} != ({idx.size}, {3 * n}, {3 * n})")
            for j, i in enumerate(idx):
                h5[HESSIANS][int(i)] = h[j]
        commit(h5)
        done = h5[DONE][()]
        done[idx] = True
        failed = h5[FAILED][()]
        failed[idx] = False
        h5[DONE][...] = done
        h5[FAILED][...] = failed
        err = h5[ERROR]
        for i in idx:
            if err[int(i)]:  # clear a failure a retry has fixed; untouched otherwise (same bytes)
                err[int(i)] = ""
        commit(h5)


def record_qm_failures(path: str | Path, indices: Sequence[int], messages: Sequence[str]) -> None:
    """Mark structures as failed with a one-line reason each (``done`` stays False, values NaN).

    Raises:
        DatasetError: the file is not a QM dataset.
    """
    path = Path(path)
    with _open_h5(path, "r+") as h5:
        failed = h5[FAILED][()]
        err = h5[ERROR]
        for i, msg in zip(indices, messages, strict=True):
            failed[int(i)] = True
            err[int(i)] = " ".join(str(msg).split())[:500]
        h5[FAILED][...] = failed
        commit(h5)


def write_qm_dataset(
    path: str | Path,
    species: Sequence[int],
    coordinates: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    hessians: np.ndarray | None = None,
    *,
    structure_id: np.ndarray | None = None,
    subset: np.ndarray | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete dataset in one call (every structure done) and validate it.

    Args:
        species: (N,) atomic numbers.  coordinates: (T, N, 3) Å.  energies: (T,) kcal/mol.
        forces: (T, N, 3) kcal/mol/Å.  hessians: (T, 3N, 3N) kcal/mol/Å² or None.
        structure_id: (T,) int64 (default arange).  subset: (T,) int8 (default 0).
        attrs: provenance root attributes.  overwrite: replace an existing file.

    Returns:
        the path.

    Raises:
        FileExistsError, ValueError: as :func:`create_qm_dataset`.
        DatasetError: the values fail :func:`validate_qm_dataset` (the file is removed).
    """
    path = Path(path)
    existed = path.parent.exists()
    create_qm_dataset(path, species, coordinates, structure_id=structure_id, subset=subset,
                      with_hessians=hessians is not None, attrs=attrs, overwrite=overwrite)  # fmt: skip
    try:
        write_qm_results(path, np.arange(np.asarray(coordinates).shape[0]), energies, forces, hessians)
        validate_qm_dataset(path)
    except BaseException:
        path.unlink(missing_ok=True)
        remove_new_folder(path.parent, existed)
        raise
    return path


# ----------------------------------------------------------------------------- validator

#: relative asymmetry ‖H − Hᵀ‖_max / max(‖H‖_max, 1) above which a stored Hessian is refused
#: (writers symmetrise; imported Hessians carry the FD/solver noise of their source)
SYMMETRY_TOLERANCE = 1e-6


def validate_qm_dataset(name_or_path: str | Path, root: str | Path = ".", check_values: bool = True,
                        symmetry_tolerance: float = SYMMETRY_TOLERANCE) -> dict:  # fmt: skip
    """Check an atomistic QM dataset against the schema.

    Checks: ``kind`` and ``format_version``; every required key with its shape and dtype;
    atomic numbers in 1..86; ``structure_id`` unique; ``subset`` in {0, 1}; not both ``done``
    and ``failed``; with ``check_values``: done structures have finite coordinates, energies,
    forces and Hessians, Hessians symmetric to ``symmetry_tolerance`` (relative), pending ones
    finite coordinates.

    Returns:
        summary dict: ``n_structures``, ``n_atoms``, ``n_done``, ``n_failed``, ``n_pending``,
        ``n_near``, ``n_far``, ``has_hessians``, ``method``, ``failures`` (first 5 messages).

    Raises:
        DatasetNotFoundError, NotADatasetError, DatasetError: the first problem found (one line
        naming the file, key and structure).
    """
    path = qm_dataset_path(name_or_path, root)
    with _open_h5(path) as h5:
        for key in (SPECIES, COORDINATES, ENERGIES, FORCES, STRUCTURE_ID, SUBSET, DONE):
            if key not in h5:
                raise DatasetError(path, key, "missing")
        species = h5[SPECIES][()]
        n = species.shape[0]
        if species.ndim != 1 or not np.issubdtype(species.dtype, np.integer) or n == 0:
            raise DatasetError(path, SPECIES, f"expected (N,) integer atomic numbers, got {species.shape} "
                               f"{species.dtype}")  # fmt: skip
        bad = (species < 1) | (species >= len(_SYMBOLS))
        if bad.any():
            raise DatasetError(path, SPECIES, f"atomic number {int(species[bad][0])} outside 1..{len(_SYMBOLS) - 1}")
        t = h5[COORDINATES].shape[0]
        shapes = {COORDINATES: (t, n, 3), ENERGIES: (t,), FORCES: (t, n, 3), STRUCTURE_ID: (t,),
                  SUBSET: (t,), DONE: (t,), FAILED: (t,), ERROR: (t,), CONFORMER: (t,),
                  HESSIANS: (t, 3 * n, 3 * n)}  # fmt: skip
        for key, shape in shapes.items():
            if key in h5 and h5[key].shape != shape:
                raise DatasetError(path, key, f"shape {h5[key].shape} != {shape}")
        for key in (COORDINATES, ENERGIES, FORCES, HESSIANS):
            if key in h5 and h5[key].dtype != np.float64:
                raise DatasetError(path, key, f"dtype {h5[key].dtype} != float64")
        sid = h5[STRUCTURE_ID][()]
        if np.unique(sid).size != t:
            raise DatasetError(path, STRUCTURE_ID, "values are not unique")
        subset = h5[SUBSET][()]
        bad = ~np.isin(subset, (SUBSET_NEAR, SUBSET_FAR))
        if bad.any():
            raise DatasetError(path, SUBSET, f"value {int(subset[bad][0])} not in {{0, 1}}",
                               frame=int(np.flatnonzero(bad)[0]))  # fmt: skip
        done = h5[DONE][()].astype(bool)
        failed = h5[FAILED][()].astype(bool) if FAILED in h5 else np.zeros(t, bool)
        both = done & failed
        if both.any():
            raise DatasetError(path, DONE, "structure both done and failed", frame=int(np.flatnonzero(both)[0]))
        if check_values:
            coords = h5[COORDINATES][()]
            bad = ~np.isfinite(coords.reshape(t, -1)).all(axis=1)
            if bad.any():
                raise DatasetError(path, COORDINATES, "non-finite value", frame=int(np.flatnonzero(bad)[0]))
            for key in (ENERGIES, FORCES):
                vals = h5[key][()].reshape(t, -1)
                bad = done & ~np.isfinite(vals).all(axis=1)
                if bad.any():
                    raise DatasetError(path, key, "non-finite value in a done structure",
                                       frame=int(np.flatnonzero(bad)[0]))  # fmt: skip
            if HESSIANS in h5:
                dset = h5[HESSIANS]
                for i in np.flatnonzero(done):
                    h = dset[int(i)]
                    if not np.isfinite(h).all():
                        raise DatasetError(path, HESSIANS, "non-finite value in a done structure", frame=int(i))
                    asym = float(np.max(np.abs(h - h.T))) / max(float(np.max(np.abs(h))), 1.0)
                    if asym > symmetry_tolerance:
                        raise DatasetError(path, HESSIANS, f"not symmetric: max |H - H^T| / max |H| = {asym:.2e} "
                                           f"> {symmetry_tolerance:.0e}", frame=int(i))  # fmt: skip
        errors = [e.decode() if isinstance(e, bytes) else str(e) for e in h5[ERROR][()]] if ERROR in h5 else []
        method = h5.attrs.get("method", "")
        return {
            "n_structures": int(t), "n_atoms": int(n), "n_done": int(done.sum()),
            "n_failed": int(failed.sum()), "n_pending": int((~done & ~failed).sum()),
            "n_near": int((subset == SUBSET_NEAR).sum()), "n_far": int((subset == SUBSET_FAR).sum()),
            "has_hessians": HESSIANS in h5,
            "method": method.decode() if isinstance(method, bytes) else str(method),
            "failures": [f"structure {i}: {errors[i]}" for i in np.flatnonzero(failed)[:5]] if errors else [],
        }  # fmt: skip


# ----------------------------------------------------------------------------- PyANI import

#: keys tried, in order, for each quantity of a PyANI/hippynn group
PYANI_KEYS = {
    "species": ("species", "atomic_numbers", "Z"),
    "coordinates": ("coordinates", "R"),
    "energies": ("energies", "energy", "T"),
    "forces": ("forces", "F"),
    "hessians": ("hessian", "hessians", "H"),
}


def _pyani_groups(h5: h5py.File) -> list[h5py.Group]:
    """Every group (at any depth) that holds a coordinates key: the molecules of a PyANI file."""
    found: list[h5py.Group] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and any(k in obj for k in PYANI_KEYS["coordinates"]):
            found.append(obj)

    if any(k in h5 for k in PYANI_KEYS["coordinates"]):
        found.append(h5)
    h5.visititems(visit)
    return found


def _first_key(group: h5py.Group, what: str):
    for key in PYANI_KEYS[what]:
        if key in group:
            return key
    return None


def import_pyani(
    src: str | Path,
    name: str,
    *,
    root: str | Path = ".",
    group: str | None = None,
    energy_unit: str = "hartree",
    length_unit: str = "angstrom",
    force_unit: str = "hartree/angstrom",
    hessian_unit: str = "hartree/angstrom**2",
    forces_are_gradients: bool = False,
    subset: int = SUBSET_NEAR,
    symmetrize: bool = True,
    overwrite: bool = False,
) -> Path:
    """Import a PyANI/hippynn HDF5 file (the layout of ANI-1x and OpenREACT-CHON-EFH) into
    ``ROOT/NAME/NAME.h5``.

    The PyANI layout: one group per molecule (at any depth, e.g. ``/gdb11_s01/mol0``) holding
    ``species`` (N,) element symbols (bytes) or atomic numbers, ``coordinates`` (T, N, 3),
    ``energies`` (T,), optionally ``forces`` (T, N, 3) and ``hessian`` (T, 3N, 3N) or any array
    with 9N² values per structure (e.g. (T, N, 3, N, 3)), read as row-major flat index
    ``3*i + α``. hessid's file holds one molecule, so the structures of every group with the
    same species are concatenated in file order; a file with several molecules needs ``group``.

    Units are not stored in the PyANI layout; the defaults follow ANI-1x's documented
    convention (energies Hartree, coordinates Å, forces Hartree/Å) and are recorded in the
    root attribute ``source``; override them when the source says otherwise (e.g. a
    Hessian stored in Hartree/Bohr² needs ``hessian_unit="hartree/bohr**2"``).

    Args:
        src: the PyANI file.  name: dataset name (→ ``ROOT/NAME/NAME.h5``).  root: output root.
        group: the molecule group to import (path inside the file) when there are several.
        energy_unit, length_unit, force_unit, hessian_unit: units of the source arrays
            (:func:`energy_factor`, :func:`unit_factor`).
        forces_are_gradients: the source's forces key holds +∇E (sign flipped on import).
        subset: subset label of every imported structure (0 near, 1 far).
        symmetrize: store (H + Hᵀ)/2 (the source's asymmetry is recorded in ``source``).
        overwrite: replace an existing dataset.

    Returns:
        the written path.

    Raises:
        FileNotFoundError: no ``src``.  ValueError: no molecule group, several molecules and no
            ``group``, a key missing (energies/forces), inconsistent shapes, an unknown unit or
            element (one line naming the source and the group/key).
        FileExistsError: the dataset exists and not ``overwrite``.
    """
    src = Path(src)
    check_dataset_name(name)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file")
    e_fac = energy_factor(energy_unit)
    l_fac = length_factor(length_unit)
    f_fac = unit_factor(force_unit, 1)
    h_fac = unit_factor(hessian_unit, 2)
    try:
        h5 = h5py.File(src, "r")
    except OSError as exc:
        raise ValueError(f"{src}: not an HDF5 file ({exc})") from None
    with h5:
        groups = _pyani_groups(h5)
        if group is not None:
            if group not in h5 or not isinstance(h5[group], h5py.Group):
                raise ValueError(f"{src}: no group {group!r} (groups: {', '.join(g.name for g in groups[:10])})")
            groups = [h5[group]]
        if not groups:
            raise ValueError(f"{src}: no PyANI molecule group (a group holding 'coordinates')")
        group_names = [g_.name for g_ in groups]
        parts: dict[str, list] = {k: [] for k in ("coordinates", "energies", "forces", "hessians")}
        species = None
        asym = 0.0
        for g in groups:
            skey = _first_key(g, "species")
            if skey is None:
                raise ValueError(f"{src}: group {g.name}: no species key ({'/'.join(PYANI_KEYS['species'])})")
            try:
                z = np.array([atomic_number(s) for s in np.asarray(g[skey][()]).ravel()], np.int64)
            except ValueError as exc:
                raise ValueError(f"{src}: group {g.name}, key {skey!r}: {exc}") from None
            if species is None:
                species = z
            elif not np.array_equal(z, species):
                raise ValueError(f"{src}: groups hold different molecules ({groups[0].name}, {g.name}); "
                                 "choose one with --group")  # fmt: skip
            n = z.size
            ckey = _first_key(g, "coordinates")
            coords = np.asarray(g[ckey][()], np.float64)
            if coords.ndim == 2:
                coords = coords[None]
            if coords.shape[1:] != (n, 3):
                raise ValueError(f"{src}: group {g.name}, key {ckey!r}: shape {coords.shape} != (T, {n}, 3)")
            t = coords.shape[0]
            ekey, fkey, hkey = _first_key(g, "energies"), _first_key(g, "forces"), _first_key(g, "hessians")
            if ekey is None or fkey is None:
                raise ValueError(f"{src}: group {g.name}: needs energies and forces keys "
                                 f"(has {', '.join(g.keys())})")  # fmt: skip
            e = np.asarray(g[ekey][()], np.float64).reshape(-1)
            f = np.asarray(g[fkey][()], np.float64)
            if e.shape != (t,) or f.size != t * n * 3:
                raise ValueError(f"{src}: group {g.name}: energies {e.shape} / forces {f.shape} do not fit "
                                 f"{t} structures of {n} atoms")  # fmt: skip
            parts["coordinates"].append(coords * l_fac)
            parts["energies"].append(e * e_fac)
            parts["forces"].append(f.reshape(t, n, 3) * f_fac * (-1.0 if forces_are_gradients else 1.0))
            if hkey is not None:
                h = np.asarray(g[hkey][()], np.float64)
                if h.size != t * 9 * n * n:
                    raise ValueError(f"{src}: group {g.name}, key {hkey!r}: shape {h.shape} does not hold "
                                     f"{t} × {3 * n}×{3 * n} values")  # fmt: skip
                h = h.reshape(t, 3 * n, 3 * n) * h_fac
                scale = np.maximum(np.abs(h).max(axis=(1, 2)), 1.0)
                asym = max(asym, float((np.abs(h - h.transpose(0, 2, 1)).max(axis=(1, 2)) / scale).max()))
                parts["hessians"].append(0.5 * (h + h.transpose(0, 2, 1)) if symmetrize else h)
            else:
                parts["hessians"].append(None)
    with_h = [p is not None for p in parts["hessians"]]
    if any(with_h) and not all(with_h):
        raise ValueError(f"{src}: some groups have Hessians and some do not; import them separately with --group")
    coords = np.concatenate(parts["coordinates"])
    hessians = np.concatenate(parts["hessians"]) if all(with_h) else None
    attrs = {
        "name": name, "method": "imported", "hessian_method": "imported" if hessians is not None else "none",
        "seed": 0, "source": {"path": str(src.resolve()), "layout": "pyani", "groups": group_names
                              if len(group_names) < 50 else len(group_names), "energy_unit": energy_unit,
                              "length_unit": length_unit, "force_unit": force_unit,
                              "hessian_unit": hessian_unit, "forces_are_gradients": forces_are_gradients,
                              "max_relative_asymmetry": asym, "symmetrized": symmetrize},
    }  # fmt: skip
    out = qm_dataset_path(name, root)
    return write_qm_dataset(out, species, coords, np.concatenate(parts["energies"]),
                            np.concatenate(parts["forces"]), hessians,
                            subset=np.full(coords.shape[0], subset, np.int8), attrs=attrs,
                            overwrite=overwrite)  # fmt: skip
