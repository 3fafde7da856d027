"""Writing and validating the hessid dataset file (layout: :mod:`hessid.training.data.schema`).

Public functions: :func:`dataset_path` (name or path → file), :func:`create_dataset`,
:func:`append_frames`, :func:`commit`, :func:`truncate_frames`, :func:`open_for_append`, the
crash-safe append guard :func:`begin_append` / :func:`end_append` / :func:`recover_append`,
:func:`write_dataset`, :func:`validate_dataset`, :func:`copy_frames`, and the topology helpers
:func:`read_topology_text`, :func:`topology_from_pdb`, :func:`count_pdb_atoms`. Reading is
:func:`hessid.training.data.reader.open_dataset`; imports of foreign files are in
:mod:`.importers`, the CG map in :mod:`.cg_map`. Every validation failure raises
:class:`~hessid.training.data.schema.DatasetError` naming the file, the dataset and (where it
applies) the frame.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform as _platform
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import openmm
from openmm.app import PDBFile

import hessid
from hessid.training.data import schema as sc
from hessid.training.data.schema import DatasetError, DatasetNotFoundError

__all__ = [
    "APPEND_BACKUP", "DatasetError", "append_frames", "atomic_output", "backup_path", "begin_append", "commit", "copy_frames", "count_pdb_atoms", "create_dataset",
    "check_dataset_name", "dataset_path", "open_for_append", "read_topology_text", "software_versions", "topology_from_pdb",
    "crash_point", "end_append", "recover_append", "truncate_frames", "validate_dataset", "write_dataset",
]  # fmt: skip

#: frames read at a time while validating and mapping
FRAME_BLOCK = 256

#: :func:`begin_append` keeps a pre-append copy ``NAME.h5.bak`` (docs/data.md "Crash safety");
#: False only in the negative-control test
APPEND_BACKUP = True

#: test hook: called with the name of each crash point of an append (``after_backup_copy``,
#: ``before_resize``, ``after_resize``, ``after_write``; ``aa_md`` adds ``after_flush`` and
#: ``after_provenance``, inside the guarded write of a new temperature segment's record);
#: tests make it SIGKILL the process
crash_hook = None


def crash_point(name: str) -> None:
    """Call :data:`crash_hook` with ``name`` (a test hook; no-op when unset)."""
    if crash_hook is not None:
        crash_hook(name)


# ----------------------------------------------------------------------------- helpers

#: a dataset name: one folder/file stem, no path separators, not starting with a dot
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def check_dataset_name(name: str, option: str = "--name") -> str:
    """Refuse a dataset name that is not a plain folder name (it becomes ``ROOT/NAME/NAME.h5``).

    Args:
        name: the name given.  option: the option that gave it, for the message.

    Returns:
        ``name`` unchanged.

    Raises:
        ValueError: empty, a path (``/``, ``\\``, ``..``), starting with a dot or dash, or with
            characters outside ``A-Z a-z 0-9 _ . + -`` (one line naming the option).
    """
    text = str(name)
    if not _NAME_RE.fullmatch(text) or ".." in text:
        raise ValueError(f"{option}={text!r}: a dataset name is one folder name (letters, digits, "
                         "'_', '.', '+', '-'; no '/' or '..'), e.g. chignolin")
    return text


def remove_new_folder(folder: Path, existed: bool) -> None:
    """Remove ``folder`` if this run created it (``existed`` False) and it is empty: a failed
    start leaves nothing behind."""
    if not existed:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Write a file under a temporary name and rename it into place only when the write succeeds.

    Yields ``<path>.tmp`` (same folder, so the final :func:`os.replace` is atomic); the caller
    writes it (and creates the folder if it does not exist yet). On a normal exit the temporary
    file is renamed to ``path``; on any exception (``KeyboardInterrupt`` included) it is deleted,
    the folder is removed if this call found it missing and it is empty
    (:func:`remove_new_folder`), and the exception propagates unchanged.

    Args:
        path: the final file.

    Raises:
        OSError: the rename failed (the temporary file is then left in place).
    """
    existed = path.parent.exists()
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_new_folder(path.parent, existed)
        raise
    os.replace(tmp, path)


def software_versions() -> dict:
    """Versions of the software that produced a file (stored as the ``versions`` attr)."""
    return {"python": _platform.python_version(), "numpy": np.__version__,
            "h5py": h5py.__version__, "hessid": hessid.__version__, "openmm": openmm.__version__}  # fmt: skip


def dataset_path(name_or_path: str | Path, root: str | Path = ".") -> Path:
    """Resolve a dataset argument (name or path) to the HDF5 path; the file need not exist.

    ``chignolin`` → ``<root>/chignolin/chignolin.h5``; a directory ``d`` → ``d/<d.name>.h5``;
    a path ending in ``.h5``/``.hdf5`` is returned as is.
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
    try:
        return PDBFile(io.StringIO(text)).topology
    except Exception as exc:  # noqa: BLE001 - re-raised with the source named
        raise ValueError(f"{source}: not readable as PDB text ({exc})") from exc


def count_pdb_atoms(text: str) -> int:
    """Number of ATOM/HETATM records of the first model of PDB text (no parsing beyond that)."""
    n = 0
    for line in text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            n += 1
        elif line.startswith("ENDMDL"):
            break
    return n


def read_topology_text(h5) -> str:
    """The ``topology`` string (PDB text) of an open dataset file (``h5py.File`` or group).

    Raises:
        KeyError: no ``topology`` dataset.
    """
    raw = h5[sc.TOPOLOGY][()]
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
            ``seed``, ``name`` as known. ``format_version``/``length_unit``/``energy_unit``/
            ``versions`` are set here. The per-frame ``temperature`` dataset (T,) K is created
            empty; :func:`append_frames` fills it (from the root ``temperature`` when not given).
        periodic: also create the ``box`` dataset (T, 3, 3) Å.
        overwrite: replace an existing file (and delete its pre-append backup
            ``NAME.h5.bak``, :func:`begin_append`, so a resume never restores the old run).
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
    n_atoms = count_pdb_atoms(topology_pdb)
    if n_atoms == 0:
        raise ValueError(f"{path}: topology has no ATOM/HETATM records")
    path.parent.mkdir(parents=True, exist_ok=True)
    bak = backup_path(path)
    for stale in (bak, bak.with_name(bak.name + ".tmp")):  # of a replaced run: never restore it
        stale.unlink(missing_ok=True)
    h5 = h5py.File(path, "w")
    h5.create_dataset(sc.TOPOLOGY, data=topology_pdb, dtype=h5py.string_dtype("utf-8"))
    c = max(1, int(chunk_frames))
    for key in (sc.COORDINATES, sc.FORCES):
        h5.create_dataset(key, shape=(0, n_atoms, 3), maxshape=(None, n_atoms, 3),
                          dtype="f8", chunks=(c, n_atoms, 3))  # fmt: skip
    for key, dt in ((sc.POTENTIAL_ENERGY, "f8"), (sc.TIME, "f8"), (sc.FRAME_ID, "i8"),
                    (sc.FRAME_TEMPERATURE, "f8")):  # fmt: skip
        h5.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt, chunks=(max(c, 64),))
    h5[sc.FRAME_TEMPERATURE].attrs[sc.ATTR_MEANING] = sc.FRAME_TEMPERATURE_MEANING
    if periodic:
        h5.create_dataset(sc.BOX, shape=(0, 3, 3), maxshape=(None, 3, 3), dtype="f8",
                          chunks=(max(c, 64), 3, 3))  # fmt: skip
    for key, unit in sc.AA_UNITS.items():
        h5[key].attrs[sc.ATTR_UNIT] = unit
    h5.attrs[sc.ATTR_FORMAT_VERSION] = sc.FORMAT_VERSION
    for attr, unit in sc.ROOT_UNITS.items():
        h5.attrs[attr] = unit
    h5.attrs[sc.ATTR_VERSIONS] = json.dumps(software_versions())
    for k, v in attrs.items():
        if v is not None:
            h5.attrs[k] = v
    h5.flush()
    return h5


def open_for_append(path: str | Path) -> h5py.File:
    """Open an existing dataset file for :func:`append_frames` / :func:`truncate_frames`
    (``--resume`` of a simulation). An append cut short by a kill is rolled back first
    (:func:`recover_append`), so the file is the one of the last finished append.

    Returns:
        ``h5py.File`` in mode ``r+`` (caller closes it).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetError: the file cannot be opened (e.g. damaged by a kill during a chunk write,
            docs/data.md "Crash safety"); the message says to start again with --overwrite.
    """
    path = Path(path)
    recover_append(path)
    if not path.exists():
        raise DatasetNotFoundError(path)
    try:
        h5 = h5py.File(path, "r+")
    except OSError as exc:
        raise DatasetError(path, None, f"cannot be opened for --resume ({exc}); the file was "
                           "probably damaged by a kill during a chunk write. Start again "
                           "with --overwrite") from exc  # fmt: skip
    sc.format_version_of(h5.attrs, path)
    return h5


def append_frames(
    h5: h5py.File,
    coordinates: np.ndarray,
    forces: np.ndarray,
    time: np.ndarray,
    frame_id: np.ndarray,
    potential_energy: np.ndarray | None = None,
    box: np.ndarray | None = None,
    temperature: np.ndarray | float | None = None,
) -> int:
    """Append B frames (hessid units) and flush; returns the new frame count T.

    Args:
        coordinates: (B, N, 3) Å.  forces: (B, N, 3) kcal/mol/Å.  time: (B,) ps.
        frame_id: (B,) int.  potential_energy: (B,) kcal/mol.  box: (B, 3, 3) Å.
        temperature: thermostat set-point of the frames, K, (B,) or one float; written only when
            the file has the per-frame ``temperature`` dataset (version 3), where None means
            the root attribute ``temperature``.

    Raises:
        ValueError: shapes disagree with the file; the file has a per-frame ``temperature``
            dataset, no ``temperature`` is given and the root has none (a multi-temperature file).
    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    b = coordinates.shape[0]
    t0 = h5[sc.COORDINATES].shape[0]
    items = {sc.COORDINATES: coordinates, sc.FORCES: forces, sc.TIME: time, sc.FRAME_ID: frame_id}
    if potential_energy is not None:
        items[sc.POTENTIAL_ENERGY] = potential_energy
    if box is not None:
        items[sc.BOX] = box
    if sc.FRAME_TEMPERATURE in h5:
        if temperature is None:
            if sc.ATTR_TEMPERATURE not in h5.attrs:
                raise ValueError(f"{h5.filename}: dataset '{sc.FRAME_TEMPERATURE}': appending frames "
                                 "without a temperature to a file with no root temperature")
            temperature = float(h5.attrs[sc.ATTR_TEMPERATURE])
        items[sc.FRAME_TEMPERATURE] = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (b,))
    for key, arr in items.items():
        arr = np.asarray(arr)
        ds = h5[key]
        if arr.shape != (b,) + ds.shape[1:]:
            raise ValueError(
                f"{h5.filename}: dataset '{key}': appending shape {arr.shape}, "
                f"expected {(b,) + ds.shape[1:]}"
            )
        crash_point("before_resize")
        ds.resize(t0 + b, axis=0)
        crash_point("after_resize")
        ds[t0:] = arr
    crash_point("after_write")
    h5.flush()
    return t0 + b


def backup_path(path: str | Path) -> Path:
    """The pre-append copy of dataset file ``path``: ``NAME.h5`` → ``NAME.h5.bak``."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_append(h5: h5py.File) -> None:
    """Before an :func:`append_frames` that may be killed: :func:`commit` ``h5`` and store a
    durable copy of it as ``NAME.h5.bak`` (copy to ``.bak.tmp``, fsync, rename, fsync the folder).
    While the ``.bak`` exists the main file may be torn; :func:`recover_append` puts it back.
    Call :func:`end_append` once the append is committed. No-op when :data:`APPEND_BACKUP` is False.

    Cost: one copy of the whole file (measured in docs/data.md "Crash safety").

    Raises:
        OSError: copy, fsync or rename failed (disk full, I/O error).
    """
    if not APPEND_BACKUP:
        return
    commit(h5)
    path = Path(h5.filename)
    bak = backup_path(path)
    tmp = bak.with_name(bak.name + ".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    crash_point("after_backup_copy")
    os.replace(tmp, bak)
    _fsync_dir(path.parent)


def end_append(h5: h5py.File) -> None:
    """After the append that :func:`begin_append` guarded has been committed: delete
    ``NAME.h5.bak`` durably (unlink, fsync the folder), so a later resume keeps the new frames.
    Call it *before* replacing the simulation checkpoint (the checkpoint must never stand for
    more frames than a restored backup holds).

    Raises:
        OSError: unlink or fsync failed.
    """
    bak = backup_path(h5.filename)
    if bak.exists():
        bak.unlink()
        _fsync_dir(bak.parent)


def recover_append(path: str | Path) -> bool:
    """Roll back an append killed between :func:`begin_append` and :func:`end_append`: if
    ``NAME.h5.bak`` exists it replaces ``NAME.h5`` (rename, fsync the folder); a leftover
    ``NAME.h5.bak.tmp`` (kill during the copy; the main file was not touched yet) is deleted.
    Call it only while no process has the file open.

    Returns:
        True when the file was restored from the backup.

    Raises:
        OSError: rename, unlink or fsync failed.
    """
    path = Path(path)
    bak = backup_path(path)
    tmp = bak.with_name(bak.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    if not bak.exists():
        return False
    os.replace(bak, path)
    _fsync_dir(path.parent)
    return True


def commit(h5: h5py.File) -> None:
    """Make everything written to ``h5`` so far durable: ``flush`` (HDF5 metadata and chunk
    caches → the OS) then ``fsync`` of the file descriptor (OS → disk).

    After ``commit`` returns, a killed process (SIGKILL, OOM) or a power loss leaves the file
    as it was at this point, provided no further write was in progress: HDF5 without SWMR has
    no journal, so a kill *during* a metadata-changing write (e.g. :func:`append_frames`
    resizing datasets) can tear the file; guard such writes with :func:`begin_append` /
    :func:`end_append` (docs/data.md, "Crash safety").

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
    """Cut every per-frame AA dataset to ``n_frames`` frames (``--resume`` when the file holds
    frames written after the last checkpoint). The ``cg/`` group is left as is."""
    for key in sc.AA_PER_FRAME:
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
        DatasetError: the written data fail :func:`validate_dataset` (nothing is left behind:
            the file is written as ``<path>.tmp``, validated, then renamed).
        FileExistsError: exists and not ``overwrite``.
    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    t = coordinates.shape[0]
    attrs = dict(attrs or {})
    if time is None:
        time = np.arange(t, dtype=np.float64)
        attrs[sc.ATTR_TIME_IS_INDEX] = True
    if frame_id is None:
        frame_id = np.arange(t, dtype=np.int64)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use --overwrite to replace)")
    with atomic_output(path) as tmp:  # written and validated, then renamed
        with create_dataset(tmp, topology_pdb, attrs, periodic=box is not None,
                            overwrite=True) as h5:  # fmt: skip
            if sc.ATTR_TEMPERATURE not in attrs:  # no temperature known: no per-frame one either
                del h5[sc.FRAME_TEMPERATURE]
            append_frames(h5, coordinates, np.asarray(forces, dtype=np.float64),
                          np.asarray(time, dtype=np.float64), np.asarray(frame_id, dtype=np.int64),
                          None if potential_energy is None else np.asarray(potential_energy, "f8"),
                          None if box is None else np.asarray(box, "f8"))  # fmt: skip
            if potential_energy is None:
                del h5[sc.POTENTIAL_ENERGY]
        try:
            validate_dataset(tmp)
        except DatasetError as exc:  # name the final file, not the temporary one
            raise DatasetError(path, exc.dataset, exc.detail, exc.frame) from None
    return path


def copy_frames(
    sources: list[tuple[str | Path, np.ndarray]],
    dst: str | Path,
    frame_id: np.ndarray | None = None,
    time: np.ndarray | None = None,
    extra_datasets: dict | None = None,
    extra_attrs: dict | None = None,
) -> Path:
    """Write a new dataset holding chosen frames of one or more dataset files (concatenated in
    the order given), e.g. a training pool or a subset of it.

    Per-frame datasets (first axis T of the first source, except ``topology`` and the CG map
    arrays ``cg/weights``, ``cg/projector``, ``cg/bead_types``, ``cg/bonds``) are taken at the
    given rows; every other dataset and all attributes come from the first source, except the
    per-frame ``temperature`` (K), built from every source (its dataset, or its root
    ``temperature`` for version-1/2 files) with the root ``temperature`` set to the one value or
    removed when the copied frames mix temperatures. The file is written to ``<dst>.tmp.h5`` and
    renamed, so ``dst`` is never half-written.

    Args:
        sources: ``[(file, rows)]``, rows (R,) int indices into that file's frames.
        dst: output ``.h5`` (parents created; replaced if it exists).
        frame_id: (ΣR,) int64 replacing the copied ``frame_id`` (e.g. made unique across runs).
        time: (ΣR,) float64 ps replacing the copied ``time``.
        extra_datasets: ``{key: array}`` written as new datasets (e.g. a per-frame draw rank).
        extra_attrs: root attributes added or replaced.

    Returns:
        ``dst`` as a Path (not validated; frame ids may repeat across sources).

    Raises:
        DatasetNotFoundError: a source does not exist.
    """
    dst = Path(dst)
    for f, _ in sources:
        if not Path(f).exists():
            raise DatasetNotFoundError(f)
    tmp = dst.with_suffix(".tmp.h5")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fixed = (sc.CG_WEIGHTS, sc.CG_PROJECTOR, sc.CG_BEAD_TYPES, sc.CG_BONDS)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(h5py.File(f, "r")) for f, _ in sources]  # each opened once
        first = handles[0]
        o = stack.enter_context(h5py.File(tmp, "w"))
        t_first = first[sc.COORDINATES].shape[0]
        for k, v in first.attrs.items():
            o.attrs[k] = v

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                g = o.require_group(name)
                for k, v in obj.attrs.items():
                    g.attrs[k] = v
                return
            if name == sc.FRAME_TEMPERATURE:  # written below from every source
                return
            per_frame = obj.shape and obj.shape[0] == t_first and name != sc.TOPOLOGY and not name.startswith(fixed)
            if not per_frame:
                ds = o.create_dataset(name, data=obj[()], dtype=obj.dtype)
            else:
                parts = [h[name][()][np.asarray(r)] for h, (_, r) in zip(handles, sources, strict=True)]
                ds = o.create_dataset(name, data=np.concatenate(parts), dtype=obj.dtype)
            for k, v in obj.attrs.items():
                ds.attrs[k] = v

        first.visititems(visit)
        temps = _source_temperatures(handles, [r for _, r in sources])
        if temps is not None:
            ds = o.create_dataset(sc.FRAME_TEMPERATURE, data=temps, maxshape=(None,), dtype="f8")
            ds.attrs[sc.ATTR_UNIT] = sc.TEMPERATURE_UNIT
            ds.attrs[sc.ATTR_MEANING] = sc.FRAME_TEMPERATURE_MEANING
            values = np.unique(temps)
            if values.size == 1:
                o.attrs[sc.ATTR_TEMPERATURE] = float(values[0])
            elif sc.ATTR_TEMPERATURE in o.attrs:  # frames of several temperatures: no root one
                del o.attrs[sc.ATTR_TEMPERATURE]
            o.attrs[sc.ATTR_FORMAT_VERSION] = max(int(o.attrs.get(sc.ATTR_FORMAT_VERSION, 1)), sc.FORMAT_VERSION)
        for key, arr in ((sc.FRAME_ID, frame_id), (sc.TIME, time)):
            if arr is not None:
                o[key][...] = np.asarray(arr, dtype=o[key].dtype)
        for key, arr in (extra_datasets or {}).items():
            o.create_dataset(key, data=np.asarray(arr))
        for k, v in (extra_attrs or {}).items():
            o.attrs[k] = v
    os.replace(tmp, dst)
    return dst


def _source_temperatures(handles, rows) -> np.ndarray | None:
    """Per-frame temperatures (K) of the rows copied from each open source (its ``temperature``
    dataset, else its root ``temperature`` repeated); None when a source stores neither."""
    parts = []
    for h, r in zip(handles, rows, strict=True):
        r = np.asarray(r)
        if sc.FRAME_TEMPERATURE in h:
            parts.append(h[sc.FRAME_TEMPERATURE][()][r])
        elif sc.ATTR_TEMPERATURE in h.attrs:
            parts.append(np.full(r.shape[0], float(h.attrs[sc.ATTR_TEMPERATURE])))
        else:
            return None
    return np.concatenate(parts).astype(np.float64) if parts else None


# ----------------------------------------------------------------------------- validation


def _check_finite(path, h5, key: str, mask: np.ndarray | None = None) -> None:
    ds = h5[key]
    for start in range(0, ds.shape[0], FRAME_BLOCK):
        block = ds[start : start + FRAME_BLOCK]
        bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if mask is not None:
            bad &= mask[start : start + block.shape[0]].astype(bool)
        if bad.any():
            raise DatasetError(path, key, "contains NaN or inf", int(start + np.argmax(bad)))


def validate_dataset(path: str | Path, check_values: bool = True, check_cg: bool = True) -> dict:
    """Check a dataset file against the layout of :mod:`hessid.training.data.schema`.

    Checks: required datasets and unit attributes present; a readable format version (absent
    = 1); shapes consistent (T, N, 3) with N
    = atoms of the topology; CG arrays consistent with (n, N); per-frame ``temperature`` finite,
    in [1, 1000] K and equal to the root ``temperature`` where the root has one; ``time``
    strictly increasing (within each temperature of a multi-temperature file);
    ``frame_id`` unique; no NaN/inf in coordinates, forces, energies, CG arrays and finished
    ``hvp_term1`` frames (``check_values``). ``check_cg=False`` skips the ``cg/`` group (the
    AA part only: what :func:`write_cg` needs before replacing a stale group, e.g. after a
    simulation was extended).

    Returns:
        summary dict: ``n_frames``, ``n_atoms``, ``n_beads`` (or None), ``n_probes`` (or None),
        and ``frames_per_temperature`` (``{"300 K": 6, ...}``) when the file stores per-frame
        temperatures.

    Raises:
        DatasetNotFoundError: no such file (also a ``FileNotFoundError``).
        DatasetError: the first problem found, naming file, dataset and frame.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(path, "/", f"not a readable HDF5 file ({exc})") from exc
    with h5:
        for key in sc.AA_REQUIRED:
            if key not in h5:
                raise DatasetError(path, key, "missing")
        sc.format_version_of(h5.attrs, path)
        for attr, want in sc.ROOT_UNITS.items():
            if attr not in h5.attrs:
                raise DatasetError(path, "/", f"missing units: root attribute '{attr}'")
            if str(h5.attrs[attr]) != want:
                raise DatasetError(path, "/", f"attribute {attr}={h5.attrs[attr]!r}, expected {want!r}")
        n_top = count_pdb_atoms(read_topology_text(h5))
        coords = h5[sc.COORDINATES]
        if coords.ndim != 3 or coords.shape[2] != 3:
            raise DatasetError(path, "coordinates", f"shape {coords.shape}, expected (T, N, 3)")
        t, n_atoms = coords.shape[:2]
        if n_atoms != n_top:
            raise DatasetError(path, "coordinates",
                               f"{n_atoms} atoms but the topology has {n_top}")  # fmt: skip
        expect = {sc.FORCES: (t, n_atoms, 3), sc.TIME: (t,), sc.FRAME_ID: (t,),
                  sc.POTENTIAL_ENERGY: (t,), sc.BOX: (t, 3, 3), sc.FRAME_TEMPERATURE: (t,)}  # fmt: skip
        for key, shape in expect.items():
            if key in h5 and h5[key].shape != shape:
                raise DatasetError(path, key, f"shape {h5[key].shape}, expected {shape} "
                                   f"(T={t} frames, N={n_atoms} atoms)")  # fmt: skip
        temps = _check_frame_temperatures(path, h5)
        time = h5[sc.TIME][()]
        if not np.isfinite(time).all():
            raise DatasetError(path, "time", "contains NaN or inf", int(np.argmax(~np.isfinite(time))))
        for value in np.unique(temps) if temps is not None else [None]:
            rows = np.arange(t) if value is None else np.flatnonzero(temps == value)
            steps = np.diff(time[rows])
            if rows.size > 1 and not (steps > 0).all():
                bad = int(np.argmax(~(steps > 0))) + 1
                where = "" if value is None else f" within the {value:g} K frames"
                raise DatasetError(path, "time", f"not strictly increasing{where} "
                                   f"({time[rows[bad - 1]]} → {time[rows[bad]]} ps)", int(rows[bad]))  # fmt: skip
        fid = h5[sc.FRAME_ID][()]
        if np.unique(fid).size != fid.size:
            _, first = np.unique(fid, return_index=True)
            dup = int(np.setdiff1d(np.arange(fid.size), first)[0])
            raise DatasetError(path, "frame_id", f"duplicate frame id {fid[dup]}", dup)
        if check_values:
            for key in (sc.COORDINATES, sc.FORCES, sc.POTENTIAL_ENERGY, sc.BOX):
                if key in h5:
                    _check_finite(path, h5, key)
        summary = {"n_frames": int(t), "n_atoms": int(n_atoms), "n_beads": None, "n_probes": None}
        if temps is not None:  # frames per thermostat temperature, K
            values, counts = np.unique(temps, return_counts=True)
            summary["frames_per_temperature"] = {f"{v:g} K": int(c) for v, c in zip(values, counts, strict=True)}
        if sc.CG in h5 and check_cg:
            summary.update(_validate_cg(path, h5, t, n_atoms, check_values))
    return summary


#: thermostat set-points a file may hold, K (as ``hessid data simulate --temperature``)
TEMPERATURE_RANGE_K = (1.0, 1000.0)


def _check_frame_temperatures(path, h5) -> np.ndarray | None:
    """The per-frame ``temperature`` (T,) K after its checks, or None when the file has none.

    Checks: finite and within :data:`TEMPERATURE_RANGE_K`; equal to the root ``temperature``
    on every frame when the root has one (a file holding several temperatures has none).

    Raises:
        DatasetError: the first bad frame (naming the file, dataset and frame).
    """
    if sc.FRAME_TEMPERATURE not in h5:
        return None
    temps = h5[sc.FRAME_TEMPERATURE][()].astype(np.float64)
    lo, hi = TEMPERATURE_RANGE_K
    bad = ~(np.isfinite(temps) & (temps >= lo) & (temps <= hi))
    if bad.any():
        i = int(np.argmax(bad))
        raise DatasetError(path, sc.FRAME_TEMPERATURE, f"{temps[i]} K is not a temperature in "
                           f"[{lo:g}, {hi:g}] K", i)  # fmt: skip
    if sc.ATTR_TEMPERATURE in h5.attrs and temps.size:
        root = float(h5.attrs[sc.ATTR_TEMPERATURE])
        off = temps != root
        if off.any():
            i = int(np.argmax(off))
            raise DatasetError(path, sc.FRAME_TEMPERATURE, f"{temps[i]:g} K but the root attribute "
                               f"temperature is {root:g} K (a file holding several temperatures "
                               "has no root temperature)", i)  # fmt: skip
    return temps


def _validate_cg(path, h5, t: int, n_atoms: int, check_values: bool) -> dict:
    cg = h5[sc.CG]
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
        for attr in sc.TERM1_REQUIRED_ATTRS:
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


