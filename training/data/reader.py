"""The typed read-only reader of the hessid dataset file (layout: :mod:`.schema`).

:func:`open_dataset` accepts a dataset name (``./NAME/NAME.h5``) or a path and returns a
:class:`Dataset`: a context manager over the open file whose arrays are read lazily, on
access, optionally for a selection of frames. Typical use::

    with open_dataset("chignolin") as ds:
        R = ds.cg.coordinates()                     # (T, n, 3) Å
        Pf = ds.cg.forces(slice(0, 100))            # (100, n, 3) kcal/mol/Å
        spec = ds.term1.probe_spec                  # hessid.probes.ProbeSpec
        v = ds.term1.probes([0, 5])                 # (2, k, n, 3), regenerated, never stored

Missing parts raise one-line :class:`~hessid.training.data.schema.DatasetError` subclasses
(all ``ValueError``) naming the file and what is missing: :class:`DatasetNotFoundError` (no
file; also a ``FileNotFoundError``), :class:`NotADatasetError`, :class:`NotMappedError` (no
``cg/``), :class:`NoTargetsError` (no ``cg/hvp_term1``), :class:`NoHessianBlockError`.
Reading does not validate values; :func:`hessid.training.data.io.validate_dataset` does
(``open_dataset(..., validate=True)``).

:func:`load_dataset` and :func:`load_cg` read everything into the dataclasses
:class:`AADataset` and :class:`CGData` (small files, tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hessid.maps import LinearMap
from hessid.probes import ProbeSpec
from hessid.training.data import schema as sc
from hessid.training.data.io import (
    dataset_path,
    read_topology_text,
    topology_from_pdb,
    validate_dataset,
)
from hessid.training.data.schema import (
    DatasetError,
    DatasetNotFoundError,
    NoHessianBlockError,
    NotADatasetError,
    NoTargetsError,
    NotMappedError,
)
from hessid.units import KB_KCAL_PER_MOL_K

__all__ = ["AADataset", "CGData", "CGGroup", "Dataset", "HessianBlock", "Term1", "load_cg",
           "load_dataset", "open_dataset"]  # fmt: skip


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attrs(attrs) -> dict:
    """h5py attributes as a dict; byte strings decoded, numpy scalars left as they are."""
    return {k: (_text(v) if isinstance(v, bytes) else v) for k, v in attrs.items()}


def _read(ds: h5py.Dataset, frames) -> np.ndarray:
    """Rows ``frames`` of an HDF5 dataset: None (all), an int, a slice, a bool mask or int
    indices in any order, repeats and negatives allowed (h5py itself needs increasing ones)."""
    if frames is None:
        return ds[()]
    if isinstance(frames, slice):
        return ds[frames]
    idx = np.asarray(frames)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.ndim == 0:
        return ds[int(idx)]
    if idx.size == 0:
        return np.empty((0,) + ds.shape[1:], dtype=ds.dtype)
    idx = np.where(idx < 0, idx + ds.shape[0], idx).astype(np.int64)
    uniq, inverse = np.unique(idx, return_inverse=True)
    return ds[uniq][inverse]


class _Part:
    """A part of an open dataset file (shared by the group views below)."""

    def __init__(self, h5: h5py.File, path: Path):
        self._h5, self.path = h5, path

    def _open(self) -> h5py.File:
        if not self._h5:
            raise DatasetError(self.path, None, "the dataset is closed (use it inside "
                               "`with open_dataset(...) as ds:`)")  # fmt: skip
        return self._h5

    def has(self, key: str) -> bool:
        """Whether the file holds the HDF5 key (e.g. ``schema.CG_BONDS``)."""
        return key in self._open()

    def shape_of(self, key: str) -> tuple:
        """Shape of the dataset at ``key`` (nothing read).

        Raises:
            DatasetError: the key is missing.
        """
        if key not in self._open():
            raise DatasetError(self.path, key, "missing")
        return tuple(self._h5[key].shape)

    def read(self, key: str, frames=None) -> np.ndarray:
        """The array at ``key`` (rows ``frames``: None, slice, int, indices or bool mask).

        Raises:
            DatasetError: the key is missing (names file and key).
        """
        if key not in self._open():
            raise DatasetError(self.path, key, "missing")
        return _read(self._h5[key], frames)

    def _optional(self, key: str, frames=None) -> np.ndarray | None:
        return _read(self._h5[key], frames) if key in self._open() else None


class CGGroup(_Part):
    """The ``cg/`` group: the CG map and the mapped frames (hessid units).

    Attributes (arrays read on access; n beads, N atoms, T frames):
        weights, projector: (n, N) float64, S and Q.  bead_types: (n,) int64.
        bonds: (n_bonds, 2) int64 or None.  vocabulary: bead-type names (``bead_vocabulary``).
        residue_names: name of each bead's type, or None without a vocabulary.
        map_kind: ``"ca"`` | ``"custom"`` | None.  projector_constraints: ``"HBonds"`` | ``"none"`` | None.
    """

    @property
    def n_beads(self) -> int:
        key = sc.CG_WEIGHTS if sc.CG_WEIGHTS in self._h5 else sc.CG_COORDINATES
        return int(self._h5[key].shape[0 if key == sc.CG_WEIGHTS else 1])

    @property
    def n_frames(self) -> int:
        return int(self._h5[sc.CG_COORDINATES].shape[0]) if sc.CG_COORDINATES in self._h5 else 0

    @property
    def weights(self) -> np.ndarray:
        return self.read(sc.CG_WEIGHTS)

    @property
    def projector(self) -> np.ndarray:
        return self.read(sc.CG_PROJECTOR)

    @property
    def bead_types(self) -> np.ndarray:
        return self.read(sc.CG_BEAD_TYPES).astype(np.int64)

    @property
    def bonds(self) -> np.ndarray | None:
        b = self._optional(sc.CG_BONDS)
        return None if b is None else b.astype(np.int64).reshape(-1, 2)

    @property
    def vocabulary(self) -> list[str]:
        """Bead-type names: attribute ``bead_vocabulary`` (JSON list) of ``cg/bead_types``, else
        of ``cg/`` or the root (older files); [] when none is stored."""
        for owner in (sc.CG_BEAD_TYPES, sc.CG, "/"):
            if owner in self._h5 and sc.ATTR_BEAD_VOCABULARY in self._h5[owner].attrs:
                raw = self._h5[owner].attrs[sc.ATTR_BEAD_VOCABULARY]
                return [str(v) for v in (json.loads(_text(raw)) if isinstance(raw, str | bytes) else raw)]
        return []

    @property
    def residue_names(self) -> list[str] | None:
        vocab = self.vocabulary
        return [vocab[i] for i in self.bead_types] if vocab else None

    @property
    def map_kind(self) -> str | None:
        raw = self._h5[sc.CG].attrs.get(sc.ATTR_MAP)
        return None if raw is None else _text(raw)

    @property
    def projector_constraints(self) -> str | None:
        raw = self._h5[sc.CG].attrs.get(sc.ATTR_PROJECTOR_CONSTRAINTS)
        return None if raw is None else _text(raw)

    def coordinates(self, frames=None) -> np.ndarray:
        """R = S r, (F, n, 3) float64 Å."""
        return self.read(sc.CG_COORDINATES, frames)

    def forces(self, frames=None) -> np.ndarray:
        """P f = Q f, (F, n, 3) float64 kcal/mol/Å."""
        return self.read(sc.CG_FORCES, frames)

    def linear_map(self) -> LinearMap:
        """:class:`hessid.maps.LinearMap` (S, Q) of the stored map."""
        return LinearMap(self.weights, self.projector)


class _Targets(_Part):
    _key = ""

    @property
    def attrs(self) -> dict:
        """Attributes of the target dataset (FD settings, provenance, probe attributes)."""
        return _attrs(self._h5[self._key].attrs)

    @property
    def shape(self) -> tuple:
        return tuple(self._h5[self._key].shape)

    def values(self, frames=None) -> np.ndarray:
        """Stored targets of the frames (float64 kcal/mol/Å²; NaN where not computed)."""
        return self.read(self._key, frames)

    def done(self, frames=None) -> np.ndarray:
        """(F,) bool: the frame's targets are committed (all True when no done mask is stored)."""
        key = self._key + sc.DONE_SUFFIX
        if key not in self._h5:
            n = self._h5[self._key].shape[0]
            return np.ones(n, dtype=bool) if frames is None else np.ones(n, dtype=bool)[frames]
        return _read(self._h5[key], frames).astype(bool)


class Term1(_Targets):
    """``cg/hvp_term1``: Term 1 = P ∇²H Pᵀ v (T, k, n, 3) float64 kcal/mol/Å²
    (docs/identities.md §5), its done mask and the :class:`hessid.probes.ProbeSpec` that
    regenerates its probes."""

    _key = sc.TERM1

    @property
    def probe_spec(self) -> ProbeSpec:
        """The probe spec of the stored targets (``ProbeSpec.from_attrs``).

        Raises:
            DatasetError: probe attributes missing or invalid (names them).
        """
        try:
            return ProbeSpec.from_attrs(self._h5[self._key].attrs)
        except (KeyError, ValueError) as exc:
            raise DatasetError(self.path, self._key, f"{exc} (rerun `hessid targets`)") from exc

    @property
    def n_probes(self) -> int:
        return int(self._h5[self._key].shape[1])

    def probes(self, frames=None) -> np.ndarray:
        """The probes v behind the stored values, regenerated from :attr:`probe_spec` and the
        frames' ``frame_id`` (``draw_probes(kind, seed, [frame_id], k, 3n).reshape(k, n, 3)``).

        Returns:
            (F, k, n, 3) float64, dimensionless.

        Raises:
            DatasetError: probe attributes or ``frame_id`` missing.
        """
        spec = self.probe_spec
        n = int(self._h5[self._key].shape[2])
        fid = np.atleast_1d(self.read(sc.FRAME_ID, frames))
        return spec.draw(fid, 3 * n).numpy().reshape(len(fid), spec.n_probes, n, 3)


class HessianBlock(_Targets):
    """``cg/hessian_block``: P ∇²H Pᵀ per frame, (T, 3n, 3n) float64 kcal/mol/Å², entry
    [t, a, b] with flat CG index a = 3·I + α, not symmetrised; and its done mask."""

    _key = sc.HESSIAN_BLOCK


class Dataset(_Part):
    """An open dataset file (read-only). Use as a context manager or call :meth:`close`.

    AA arrays are methods taking an optional frame selection (None, slice, int, indices or a
    bool mask): :meth:`coordinates` (F, N, 3) Å, :meth:`forces` (F, N, 3) kcal/mol/Å,
    :meth:`potential_energy` (F,) kcal/mol or None, :meth:`time` (F,) ps, :meth:`frame_id`
    (F,) int64, :meth:`box` (F, 3, 3) Å or None, :meth:`temperatures` (F,) K and
    :meth:`betas` (F,) mol/kcal (per frame; multi-temperature files, docs/data.md
    "Multi-temperature datasets"). The ``cg/`` group is :attr:`cg`
    (:class:`CGGroup`), Term 1 :attr:`term1` (:class:`Term1`), the full block
    :attr:`hessian_block` (:class:`HessianBlock`).
    """

    def __init__(self, h5: h5py.File, path: Path):
        super().__init__(h5, path)
        self.format_version = sc.format_version_of(h5.attrs, path)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, frames={self.n_frames}, cg={self.has_cg}, term1={self.has_term1})"

    # ------------------------------------------------------------------ attributes

    @property
    def attrs(self) -> dict:
        """Root attributes (byte strings decoded)."""
        return _attrs(self._h5.attrs)

    def attr(self, name: str, default=None):
        """One root attribute (decoded), or ``default``."""
        raw = self._h5.attrs.get(name, default)
        return _text(raw) if isinstance(raw, bytes) else raw

    @property
    def name(self) -> str:
        """Root attribute ``name``, else the file stem."""
        return str(self.attr(sc.ATTR_NAME) or self.path.stem)

    @property
    def temperature(self) -> float | None:
        """The file's one temperature, K: the root attribute, else the single value of the
        per-frame ``temperature``; None when not stored or when the frames hold several
        temperatures (then use :meth:`temperatures`)."""
        t = self.attr(sc.ATTR_TEMPERATURE)
        if t is not None:
            return float(t)
        values = self.temperature_values
        return values[0] if len(values) == 1 else None

    @property
    def temperature_values(self) -> tuple[float, ...]:
        """The distinct thermostat temperatures of the frames, K, ascending (() when none is stored)."""
        if sc.FRAME_TEMPERATURE in self._open():
            return tuple(float(v) for v in np.unique(self._h5[sc.FRAME_TEMPERATURE][()]))
        t = self.attr(sc.ATTR_TEMPERATURE)
        return () if t is None else (float(t),)

    @property
    def is_multi_temperature(self) -> bool:
        """The frames were generated at more than one temperature."""
        return len(self.temperature_values) > 1

    def temperatures(self, frames=None) -> np.ndarray:
        """Thermostat set-point of each frame, (F,) float64 K: the per-frame ``temperature``
        dataset (version 3), else the root attribute repeated (single-temperature files).

        Raises:
            DatasetError: neither is stored (e.g. an import without --temperature).
        """
        if sc.FRAME_TEMPERATURE in self._open():
            return np.asarray(_read(self._h5[sc.FRAME_TEMPERATURE], frames), dtype=np.float64)
        t = self.attr(sc.ATTR_TEMPERATURE)
        if t is None:
            raise DatasetError(self.path, sc.FRAME_TEMPERATURE, "missing, and no root 'temperature' attribute")
        full = np.full(self.n_frames, float(t), dtype=np.float64)
        if frames is None or isinstance(frames, slice):
            return full[frames if frames is not None else slice(None)]
        idx = np.asarray(frames)
        return full[np.flatnonzero(idx) if idx.dtype == bool else idx]

    def betas(self, frames=None) -> np.ndarray:
        """β = 1/(k_B T) of each frame, (F,) float64 mol/kcal (:meth:`temperatures`, hessid.units.beta).

        Raises:
            DatasetError: no temperature stored.
        """
        return 1.0 / (KB_KCAL_PER_MOL_K * self.temperatures(frames))

    def single_temperature(self, purpose: str = "single-temperature training") -> float:
        """The file's one temperature, K, for a consumer that needs exactly one.

        Args:
            purpose: what needs it, for the message.

        Raises:
            DatasetError: none stored, or the frames hold several (one line naming the file and
                the temperatures).
        """
        values = self.temperature_values
        if len(values) > 1:
            raise DatasetError(self.path, None, f"holds frames at {len(values)} temperatures "
                               f"({', '.join(f'{v:g}' for v in values)} K): {purpose} needs one "
                               "(use a temperature-aware model, or a file of one temperature)")  # fmt: skip
        if not values:
            raise DatasetError(self.path, "/", f"no 'temperature' attribute: {purpose} needs one "
                               "(set it when importing: --temperature K)")  # fmt: skip
        return values[0]

    @property
    def segments(self) -> list[dict]:
        """The temperature segments of a simulated file (root attribute ``segments``, JSON; one
        dict per ``hessid data simulate`` temperature: ``temperature`` K, ``seed``,
        ``integrator``, ``checkpoint``, ``md_config``); a version-1/2 simulated file gives one
        record built from its ``md_config``; [] for files not written by ``data simulate``."""
        raw = self.attr(sc.ATTR_SEGMENTS)
        if raw is not None:
            return list(json.loads(raw))
        cfg = self.attr(sc.ATTR_MD_CONFIG)
        if cfg is None:
            return []
        md = json.loads(cfg)
        return [{"temperature": float(self.attr(sc.ATTR_TEMPERATURE, md.get("temperature"))),
                 "seed": int(md.get("seed", self.attr(sc.ATTR_SEED, 0))),
                 "integrator": "LangevinMiddleIntegrator", "checkpoint": f"{self.path.stem}.chk",
                 "md_config": md}]  # fmt: skip

    @property
    def constraints(self) -> str | None:
        c = self.attr(sc.ATTR_CONSTRAINTS)
        return None if c is None else str(c)

    @property
    def forcefield_hash(self) -> str | None:
        h = self.attr(sc.ATTR_FORCEFIELD_HASH)
        return None if h is None else str(h)

    @property
    def n_frames(self) -> int:
        """T: frames of the first of coordinates, cg/coordinates, cg/forces, the targets (0 if none)."""
        for key in (sc.COORDINATES, sc.CG_COORDINATES, sc.CG_FORCES, sc.TERM1, sc.HESSIAN_BLOCK):
            if key in self._h5:
                return int(self._h5[key].shape[0])
        return 0

    @property
    def n_atoms(self) -> int:
        """N (from ``coordinates``).

        Raises:
            DatasetError: a CG-only file.
        """
        if sc.COORDINATES not in self._h5:
            raise DatasetError(self.path, sc.COORDINATES, "missing (a CG-only file)")
        return int(self._h5[sc.COORDINATES].shape[1])

    # ------------------------------------------------------------------ AA part

    @property
    def topology_text(self) -> str:
        """PDB text of the AA system (no OpenMM or mdtraj needed).

        Raises:
            DatasetError: no ``topology``.
        """
        if sc.TOPOLOGY not in self._h5:
            raise DatasetError(self.path, sc.TOPOLOGY, "missing")
        return read_topology_text(self._h5)

    def topology(self):
        """OpenMM ``Topology`` parsed from :attr:`topology_text`.

        Raises:
            DatasetError: no topology.  ValueError: not PDB text.
        """
        return topology_from_pdb(self.topology_text, f"{self.path}: topology")

    def coordinates(self, frames=None) -> np.ndarray:
        return self.read(sc.COORDINATES, frames)

    def forces(self, frames=None) -> np.ndarray:
        return self.read(sc.FORCES, frames)

    def potential_energy(self, frames=None) -> np.ndarray | None:
        return self._optional(sc.POTENTIAL_ENERGY, frames)

    def time(self, frames=None) -> np.ndarray:
        return self.read(sc.TIME, frames)

    def frame_id(self, frames=None) -> np.ndarray:
        return self.read(sc.FRAME_ID, frames).astype(np.int64)

    def box(self, frames=None) -> np.ndarray | None:
        return self._optional(sc.BOX, frames)

    # ------------------------------------------------------------------ CG part

    @property
    def has_cg(self) -> bool:
        return sc.CG in self._h5

    @property
    def has_term1(self) -> bool:
        return sc.TERM1 in self._h5

    @property
    def has_hessian_block(self) -> bool:
        return sc.HESSIAN_BLOCK in self._h5

    @property
    def cg(self) -> CGGroup:
        """Raises: NotMappedError: no ``cg/`` group."""
        if not self.has_cg:
            raise NotMappedError(self.path)
        return CGGroup(self._h5, self.path)

    @property
    def term1(self) -> Term1:
        """Raises: NotMappedError: no ``cg/``; NoTargetsError: no ``cg/hvp_term1``."""
        if not self.has_term1:
            raise NotMappedError(self.path) if not self.has_cg else NoTargetsError(self.path)
        return Term1(self._h5, self.path)

    @property
    def hessian_block(self) -> HessianBlock:
        """Raises: NotMappedError: no ``cg/``; NoHessianBlockError: no ``cg/hessian_block``."""
        if not self.has_hessian_block:
            raise NotMappedError(self.path) if not self.has_cg else NoHessianBlockError(self.path)
        return HessianBlock(self._h5, self.path)


def open_dataset(name_or_path: str | Path, root: str | Path = ".", validate: bool = False) -> Dataset:
    """Open a dataset file read-only.

    Args:
        name_or_path: dataset name (``<root>/NAME/NAME.h5``), folder, or ``.h5`` path
            (:func:`hessid.training.data.io.dataset_path`).
        root: folder holding ``NAME/`` for a bare name.
        validate: run :func:`hessid.training.data.io.validate_dataset` first (reads every frame).

    Returns:
        :class:`Dataset` (a context manager; close it).

    Raises:
        DatasetNotFoundError: no such file (also ``FileNotFoundError``).
        NotADatasetError: not HDF5, or neither ``coordinates`` nor a ``cg/`` group in it.
        DatasetError: format version newer than this hessid reads; with ``validate``, the first
            problem found.
    """
    path = dataset_path(name_or_path, root)
    if not path.exists():
        raise DatasetNotFoundError(path)
    if validate:
        validate_dataset(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise NotADatasetError(path, None, f"not a hessid dataset (not a readable HDF5 file: {exc})") from exc
    try:
        if sc.COORDINATES not in h5 and sc.CG not in h5:
            raise NotADatasetError(path, None, "not a hessid dataset (no 'coordinates' and no 'cg' group)")
        return Dataset(h5, path)
    except BaseException:
        h5.close()
        raise


# ----------------------------------------------------------------------------- eager loading


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

    def linear_map(self) -> LinearMap:
        """:class:`hessid.maps.LinearMap` with these weights and projector."""
        return LinearMap(self.weights, self.projector)

    def probe_spec(self) -> ProbeSpec:
        """ProbeSpec of the stored Term 1 (``ProbeSpec.from_attrs(term1_attrs)``).

        Raises:
            KeyError: no Term 1 or its probe attributes are missing.
        """
        return ProbeSpec.from_attrs(self.term1_attrs)


@dataclass
class AADataset:
    """A loaded dataset file (all arrays in memory, hessid units).

    Attributes:
        path: the file.  topology_pdb: PDB text.  attrs: root attributes.
        coordinates: (T, N, 3) Å.  forces: (T, N, 3) kcal/mol/Å.  time: (T,) ps.
        frame_id: (T,) int64.  potential_energy: (T,) kcal/mol or None.  box: (T, 3, 3) Å or None.
        cg: :class:`CGData` or None.  temperatures: (T,) K per frame, or None when not stored.
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
    temperatures: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def topology(self):
        """OpenMM ``Topology`` parsed from :attr:`topology_pdb`."""
        return topology_from_pdb(self.topology_pdb, f"{self.path}: topology")


def _cg_data(ds: Dataset) -> CGData:
    g = ds.cg
    out = CGData(weights=g._optional(sc.CG_WEIGHTS), projector=g._optional(sc.CG_PROJECTOR),
                 coordinates=g._optional(sc.CG_COORDINATES), forces=g._optional(sc.CG_FORCES),
                 bead_types=g._optional(sc.CG_BEAD_TYPES), bonds=g._optional(sc.CG_BONDS))  # fmt: skip
    if g.has(sc.CG_BEAD_TYPES):
        out.vocabulary = json.loads(_text(ds._h5[sc.CG_BEAD_TYPES].attrs.get(sc.ATTR_BEAD_VOCABULARY, "[]")))
    if ds.has_term1:
        t1 = ds.term1
        out.hvp_term1 = t1.values()
        out.term1_attrs = dict(ds._h5[sc.TERM1].attrs)
        if t1.has(sc.TERM1_DONE):
            out.term1_done = t1.done()
    return out


def load_cg(path: str | Path) -> CGData:
    """Read the ``cg/`` group of a dataset file (name or path) into memory.

    Raises:
        DatasetNotFoundError: no file.  NotMappedError: no ``cg/`` group (run ``hessid data map``).
    """
    with open_dataset(path) as ds:
        return _cg_data(ds)


def load_dataset(path: str | Path, validate: bool = True) -> AADataset:
    """Load a dataset file into memory (validated first unless ``validate=False``).

    Raises:
        DatasetNotFoundError, DatasetError: see :func:`hessid.training.data.io.validate_dataset`.
    """
    with open_dataset(path, validate=validate) as ds:
        return AADataset(
            path=Path(ds.path), topology_pdb=read_topology_text(ds._h5), attrs=dict(ds._h5.attrs),
            coordinates=ds.coordinates(), forces=ds.forces(), time=ds.time(),
            frame_id=ds.read(sc.FRAME_ID), potential_energy=ds.potential_energy(),
            box=ds.box(), cg=_cg_data(ds) if ds.has_cg else None,
            temperatures=ds.temperatures() if ds.temperature_values else None,
        )  # fmt: skip
