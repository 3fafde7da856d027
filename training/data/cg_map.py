"""The CG step of the dataset file: the Cα map and ``cg/`` group writing (``hessid data map``).

:func:`ca_map` builds the default one-bead-per-residue selection map with bead types and chain
bonds, :func:`hbond_pairs` lists OpenMM's HBond-constrained atom pairs, and :func:`write_cg`
applies a :class:`hessid.maps.LinearMap` to every frame of a dataset file and writes ``cg/``
(layout: :mod:`hessid.training.data.schema`).

Force projectors (``write_cg(projector=...)``; docs/variance_reduction.md §2.6):
``"constraint-aware"`` (default; the map's projector aggregated over HBond groups),
``"optimal"`` (the variance-minimising ``Q*`` of :func:`hessid.optimal_projector.optimal_projector`,
fitted by :func:`fit_optimal_projector` on held-out frames, docs/variance_reduction.md §2), or
an explicit (n, N) matrix, e.g. one fitted once and shared by several datasets
(:func:`load_projector`). ``cg/`` records the kind, its provenance (JSON) and the sha256 of Q,
the same hash ``hessid targets`` stores with Term 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from openmm.app import element

from hessid.maps import PROJECTOR_TOL, LinearMap, check_projector, constraint_aware_projector
from hessid.optimal_projector import (
    DEFAULT_RIDGE,
    optimal_projector,
    projected_force_second_moment,
    residue_neighbour_mask,
    rigid_group_labels,
)
from hessid.training.data import schema as sc
from hessid.training.data.io import (
    FRAME_BLOCK,
    dataset_path,
    read_topology_text,
    topology_from_pdb,
    validate_dataset,
)
from hessid.training.data.reader import CGData, load_cg, open_dataset
from hessid.training.data.schema import DatasetError

__all__ = [
    "ATTR_PROJECTOR_KIND", "ATTR_PROJECTOR_PROVENANCE", "DEFAULT_HELD_OUT_FRACTION",
    "PROJECTOR_KINDS", "RESIDUE_ALIASES", "STANDARD_RESIDUES", "OptimalFit", "ca_map",
    "default_fit_frames", "fit_optimal_projector", "hbond_pairs", "load_projector",
    "neighbour_mask", "parse_frames", "projector_sha256", "write_cg",
]  # fmt: skip

log = logging.getLogger(__name__)

#: projector kinds ``write_cg(projector=...)`` fits itself (an (n, N) matrix is also accepted)
PROJECTOR_KINDS = ("constraint-aware", "optimal")
#: on cg/: "constraint-aware" | "map" (the map's own projector) | "optimal" | "given"
ATTR_PROJECTOR_KIND = "projector_kind"
#: on cg/: JSON provenance of the projector (fit dataset, frames, ridge, mask, objectives, sha256)
ATTR_PROJECTOR_PROVENANCE = "projector_provenance"
#: fraction of the mapped dataset's frames (its tail) that Q* is fitted on by default
DEFAULT_HELD_OUT_FRACTION = 0.2
#: below this many fit samples (frames × 3 components) per free coefficient of a bead, the fit
#: warns that Q* will fit the noise of its frames (chignolin, 60 frames, ~70 coefficients: the
#: held-out objective doubles against in-sample; docs/benchmarks/optimal_projector.md)
MIN_SAMPLES_PER_COEFFICIENT = 10.0
#: unit of the stored objectives E‖Q f‖² (per frame, summed over beads and components)
OBJECTIVE_UNIT = "(kcal/mol/angstrom)**2 per frame"

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
    pairs = [(b.atom1.index, b.atom2.index) for b in topology.bonds()
             if b.atom1.element is element.hydrogen or b.atom2.element is element.hydrogen]  # fmt: skip
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def projector_sha256(projector) -> str:
    """sha256 of Q as C-contiguous float64 bytes: the ``projector_sha256`` that ``hessid targets``
    stores with Term 1 (``cg/hvp_term1`` attribute) and :func:`write_cg` on ``cg/``.

    Args:
        projector: Q, (n, N).

    Returns:
        64 hex digits.
    """
    q = np.ascontiguousarray(np.asarray(projector), dtype=np.float64)
    return hashlib.sha256(q.tobytes()).hexdigest()


def parse_frames(spec, n_frames: int, what: str = "--fit-frames", source: str | Path = "") -> np.ndarray:
    """Frame rows from a selection: ``"all"``, a slice ``"START:STOP[:STEP]"`` (Python
    semantics, negative indices count from the end), a comma list ``"0,5,-1"``, a ``slice`` or
    an integer sequence.

    Args:
        spec: the selection (None is ``"all"``).
        n_frames: T, frames in the file.
        what: the argument's name, for errors.
        source: the dataset file, for errors.

    Returns:
        (F,) int64 sorted unique rows in [0, T), F ≥ 1.

    Raises:
        ValueError: malformed, out of range, or empty (one line naming ``what``, the file and T).
    """
    where = f"{what}={spec!r} for {source} ({n_frames} frames)" if source else f"{what}={spec!r} ({n_frames} frames)"
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        rows = np.arange(n_frames)
    elif isinstance(spec, slice):
        rows = np.arange(n_frames)[spec]
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                parts = text.split(":")
                if len(parts) > 3:
                    raise ValueError("more than two ':'")
                nums = [int(p) if p.strip() else None for p in parts]
                if len(nums) == 3 and nums[2] is not None and nums[2] <= 0:
                    raise ValueError("the step must be positive")
                rows = np.arange(n_frames)[slice(*nums)]
            else:
                rows = np.asarray([int(p) for p in text.split(",")], dtype=np.int64)
        except ValueError as exc:
            raise ValueError(f"{where}: expected 'all', START:STOP[:STEP] or i,j,k ({exc})") from None
    else:
        rows = np.asarray(spec)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"{where}: expected a 1-D sequence of integer frame indices")
    rows = np.asarray(rows, dtype=np.int64)
    bad = (rows < -n_frames) | (rows >= n_frames)
    if np.any(bad):
        raise ValueError(f"{where}: frame {int(rows[bad][0])} is out of range")
    rows = np.unique(np.where(rows < 0, rows + n_frames, rows))
    if rows.size == 0:
        raise ValueError(f"{where}: selects no frame")
    return rows


def default_fit_frames(n_frames: int, same_dataset: bool) -> str:
    """The documented default ``fit_frames``: every frame of a separate fit dataset (held out by
    construction, e.g. the validation run of a study), else the last
    :data:`DEFAULT_HELD_OUT_FRACTION` of the mapped dataset's frames (at least one). Frames of
    the mapped dataset that Q* was fitted on should not be trained on: a Q fitted on the frames
    it is applied to under-states their projected-force variance (docs/variance_reduction.md §2.5).

    Returns:
        a selection string for :func:`parse_frames` (``"all"`` or ``"START:"``).
    """
    if not same_dataset:
        return "all"
    n_fit = max(1, int(math.ceil(DEFAULT_HELD_OUT_FRACTION * n_frames)))
    return f"{n_frames - n_fit}:"


def _frames_record(rows: np.ndarray):
    """Compact JSON record of frame rows: ``"START:STOP:STEP"`` for an arithmetic run, else the list."""
    if rows.size == 1:
        return f"{int(rows[0])}:{int(rows[0]) + 1}:1"
    steps = np.diff(rows)
    if np.all(steps == steps[0]):
        return f"{int(rows[0])}:{int(rows[-1]) + 1}:{int(steps[0])}"
    return [int(r) for r in rows]


def _residue_chain(topology) -> tuple[np.ndarray, np.ndarray]:
    """(N,) residue index and (N,) chain index of every atom."""
    res = np.array([a.residue.index for a in topology.atoms()], dtype=np.int64)
    chain = np.array([a.residue.chain.index for a in topology.atoms()], dtype=np.int64)
    return res, chain


def neighbour_mask(topology, weights, neighbours: int | None) -> np.ndarray | None:
    """Atoms each bead's projector row may use: those of the chain of the bead's residues whose
    residue is within ``neighbours`` residues (in sequence) of one of them
    (:func:`hessid.optimal_projector.residue_neighbour_mask`); a bead's residues are those of
    its atoms of non-zero weight.

    Args:
        topology: OpenMM ``Topology`` (N atoms).
        weights: S, (n, N).
        neighbours: residues on either side (≥ 0), or None (every atom allowed).

    Returns:
        (n, N) bool, or None for ``neighbours=None``.

    Raises:
        ValueError: ``neighbours`` negative or not an integer; S does not match the topology.
    """
    if neighbours is None:
        return None
    if isinstance(neighbours, bool) or int(neighbours) != neighbours or neighbours < 0:
        raise ValueError(f"neighbours must be a non-negative integer or None (all atoms), got {neighbours!r}")
    S = np.asarray(weights, dtype=np.float64)
    res, chain = _residue_chain(topology)
    if S.ndim != 2 or S.shape[1] != res.size:
        raise ValueError(f"weights must be (n, {res.size}) for this topology, got {S.shape}")
    mask = np.zeros(S.shape, dtype=bool)
    for bead, row in enumerate(S):
        for atom in np.flatnonzero(row):
            near = residue_neighbour_mask([res[atom]], res, int(neighbours))[0]  # (N,)
            mask[bead] |= near & (chain == chain[atom])
    return mask


@dataclass(frozen=True)
class OptimalFit:
    """How ``write_cg(projector="optimal")`` fits Q* (``hessid data map --projector optimal``).

    Attributes:
        dataset: fit dataset (name or path); None: the dataset being mapped.
        frames: fit frames of that dataset (:func:`parse_frames`); None:
            :func:`default_fit_frames` (all frames of a separate dataset, else the last 20 %).
        neighbours: residue-neighbour mask (residues on either side of each bead's residue);
            None: every atom allowed.
        ridge: ridge of :func:`hessid.optimal_projector.optimal_projector`, relative to tr(C)/N.
    """

    dataset: str | Path | None = None
    frames: str | Sequence[int] | None = None
    neighbours: int | None = None
    ridge: float = DEFAULT_RIDGE


def _constraints_of(h5) -> str:
    raw = h5.attrs.get(sc.ATTR_CONSTRAINTS, "none")
    return (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()


def _is_hbonds(constraints: str) -> bool:
    return constraints.lower() == "hbonds"


def _reference_projector(path, S, Q_map, top, constraints: str, constraint_aware: bool):
    """(Q, kind): the constraint-aware projector on HBond data (``constraint_aware``), else the map's."""
    if constraint_aware and _is_hbonds(constraints):
        try:
            Q = constraint_aware_projector(S, Q_map, hbond_pairs(top), n_atoms=S.shape[1]).numpy()
        except ValueError as exc:
            raise DatasetError(path, "cg/projector", f"HBond-constrained data: {exc} "
                               "(or write_cg(..., constraint_aware=False) with a projector "
                               "valid under the constraints)") from exc  # fmt: skip
        return Q, "constraint-aware"
    return np.asarray(Q_map, dtype=np.float64), "map"


def _mean_sq_projected_force(path, projectors: dict, rows: np.ndarray | None = None) -> dict:
    """E‖Q f‖² over frames ``rows`` (all if None) of a dataset, for each Q; (kcal/mol/Å)²,
    summed over beads and components. Also the per-bead values under ``"<key>_per_bead"``."""
    with open_dataset(path) as ds:
        t = ds.n_frames
        rows = np.arange(t) if rows is None else np.asarray(rows)
        acc = {k: np.zeros(np.asarray(q).shape[0]) for k, q in projectors.items()}
        for start in range(0, rows.size, FRAME_BLOCK):
            f = ds.forces(rows[start : start + FRAME_BLOCK])  # (b, N, 3)
            for k, q in projectors.items():
                pf = np.einsum("nN,bNc->bnc", q, f)  # (b, n, 3)
                acc[k] += (pf * pf).sum(axis=(0, 2))
    out = {}
    for k, a in acc.items():
        out[k] = float(a.sum() / rows.size)
        out[f"{k}_per_bead"] = [float(x) for x in a / rows.size]
    return out


def fit_optimal_projector(
    dataset: str | Path,
    frames=None,
    neighbours: int | None = None,
    *,
    cg_map=None,
    ridge: float = DEFAULT_RIDGE,
    constraint_aware: bool = True,
) -> tuple[np.ndarray, dict]:
    """Fit the variance-minimising force projector Q* on frames of a dataset file
    (docs/variance_reduction.md §2; :func:`hessid.optimal_projector.optimal_projector`).

    Minimises ``J(Q) = (1/F) Σ_t ‖Q f_t‖²`` over the fit frames subject to ``Q Sᵀ = I``, equal
    coefficients within every rigid group (the connected components of the HBond constraints
    when the file's ``constraints`` attribute is ``"HBonds"``, so that the lift Qᵀv moves each
    X–H group rigidly and the FD Term 1 stays valid), and zeros outside the residue-neighbour
    mask (:func:`neighbour_mask`). Since ``⟨Q f⟩_R`` is the same for every feasible Q, Q*
    minimises ``E tr Cov_R(Q f)``, i.e. the noise of the per-frame targets.

    Args:
        dataset: fit dataset (name or path), validated (AA part).
        frames: fit frames (:func:`parse_frames`); None: every frame.
        neighbours: residues on either side of each bead's residue whose atoms it may use;
            None: all atoms.
        cg_map: :class:`hessid.maps.LinearMap` (weights S (n, N)); default :func:`ca_map`.
        ridge: relative ridge (≥ 0), docs/variance_reduction.md §2.4.
        constraint_aware: the reference projector of the recorded objective (as in
            :func:`write_cg`).

    Returns:
        ``(Q (n, N) float64, provenance dict)``; the provenance holds ``kind="optimal"``, the fit
        dataset path, its ``forcefield_hash``, ``fit_frames`` (a ``"START:STOP:STEP"`` run or a
        list), ``fit_n_frames``, ``fit_frame_ids_sha256``, ``ridge``, ``neighbours``, ``mask``,
        ``rigid_groups``, ``n_rigid_groups`` (groups of ≥ 2 atoms), ``objective_reference`` and
        ``objective_optimal`` (E‖Q f‖² on the fit frames, (kcal/mol/Å)² per frame, with
        per-bead lists), ``reference_kind`` and ``projector_sha256``.

    Raises:
        DatasetError: invalid file, or the map does not match its atoms.
        ValueError: bad ``frames``/``neighbours``/``ridge``, or no feasible Q* (from
            :func:`hessid.optimal_projector.optimal_projector`, naming the bead).
    """
    path = dataset_path(dataset)
    validate_dataset(path, check_cg=False)
    with h5py.File(path, "r") as h5:
        top = topology_from_pdb(read_topology_text(h5), f"{path}: topology")
        constraints = _constraints_of(h5)
        fhash = h5.attrs.get(sc.ATTR_FORCEFIELD_HASH)
        t = h5[sc.FORCES].shape[0]
    rows = parse_frames(frames, t, "fit frames (--fit-frames)", path)
    if cg_map is None:
        cg_map = ca_map(top)[0]
    S = cg_map.weights.numpy()
    if S.shape[1] != top.getNumAtoms():
        raise DatasetError(path, "cg/weights", f"map has {S.shape[1]} atoms, file has {top.getNumAtoms()}")
    pairs = hbond_pairs(top) if _is_hbonds(constraints) else None
    mask = neighbour_mask(top, S, neighbours)
    with open_dataset(path) as ds:
        fid = ds.frame_id(rows)
        C = np.zeros((S.shape[1], S.shape[1]))
        for start in range(0, rows.size, FRAME_BLOCK):
            f = ds.forces(rows[start : start + FRAME_BLOCK])  # (b, N, 3) kcal/mol/Å
            C += np.einsum("tia,tja->ij", f, f)
    C = 0.5 * (C + C.T) / rows.size  # (N, N) force second moment, docs/variance_reduction.md (5)
    Q = optimal_projector(S, second_moment=C, constrained_pairs=pairs, mask=mask, ridge=ridge).numpy()
    Q_ref, ref_kind = _reference_projector(path, S, cg_map.projector.numpy(), top, constraints, constraint_aware)
    j_ref = projected_force_second_moment(Q_ref, C)
    j_opt = projected_force_second_moment(Q, C)
    labels = rigid_group_labels(S.shape[1], constrained_pairs=pairs)
    allowed = np.ones(S.shape, dtype=bool) if mask is None else mask
    n_free = max(len(np.unique(labels[allowed[i]])) - int((S[:, allowed[i]] != 0).any(axis=1).sum())
                 for i in range(S.shape[0]))  # groups allowed minus the beads they carry
    samples_per_coef = 3 * rows.size / max(n_free, 1)
    if samples_per_coef < MIN_SAMPLES_PER_COEFFICIENT:
        log.warning("%s: Q* has up to %d free coefficients per bead but only %d fit frames × 3 "
                    "components: it will fit their noise (held-out variance larger than "
                    "in-sample); use more frames, --neighbours or a larger --ridge",
                    path, n_free, rows.size)  # fmt: skip
    prov = {
        "kind": "optimal", "fit_dataset": str(path.resolve()),
        "fit_forcefield_hash": None if fhash is None else str(fhash),
        "fit_frames": _frames_record(rows), "fit_n_frames": int(rows.size),
        "fit_frame_ids_sha256": hashlib.sha256(np.ascontiguousarray(fid, dtype=np.int64).tobytes()).hexdigest(),
        "ridge": float(ridge), "neighbours": None if neighbours is None else int(neighbours),
        "mask": "all atoms" if mask is None else f"atoms of the same chain within {int(neighbours)} residue(s) of the bead's residues",
        "rigid_groups": "HBonds" if pairs is not None else "none",
        "n_rigid_groups": int((np.bincount(labels) > 1).sum()),
        "max_free_coefficients_per_bead": int(n_free), "fit_samples_per_coefficient": float(samples_per_coef),
        "reference_kind": ref_kind, "objective_unit": OBJECTIVE_UNIT,
        "objective_reference": float(j_ref.sum()), "objective_optimal": float(j_opt.sum()),
        "objective_reference_per_bead": [float(x) for x in j_ref],
        "objective_optimal_per_bead": [float(x) for x in j_opt],
        "projector_sha256": projector_sha256(Q),
    }  # fmt: skip
    return Q, prov


def load_projector(path: str | Path, weights=None) -> tuple[np.ndarray, dict]:
    """The force projector of a mapped dataset file and its provenance, to apply the same Q
    (e.g. one Q* fitted once) to other datasets (``hessid data map --projector-from FILE``).

    Args:
        path: a mapped dataset (name or path).
        weights: S (n, N) of the map it will be used with; checked equal to the file's
            ``cg/weights`` when given.

    Returns:
        ``(Q (n, N) float64, provenance)``: the stored provenance (or one built from the
        ``projector_constraints`` attribute of older files) plus ``copied_from`` (path) and
        ``projector_sha256``.

    Raises:
        DatasetNotFoundError, NotMappedError: no file or no ``cg/``.
        DatasetError: the stored weights differ from ``weights``.
    """
    path = dataset_path(path)
    with open_dataset(path) as ds:
        cg = ds.cg
        Q, S_src = cg.projector, cg.weights
        with h5py.File(path, "r") as h5:
            attrs = dict(h5[sc.CG].attrs)
    raw = attrs.get(ATTR_PROJECTOR_PROVENANCE)
    if raw is not None:
        prov = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    else:
        pc = attrs.get(sc.ATTR_PROJECTOR_CONSTRAINTS, "none")
        pc = pc.decode() if isinstance(pc, bytes) else str(pc)
        prov = {"kind": "constraint-aware" if pc == "HBonds" else "map"}
    if weights is not None:
        S = np.asarray(weights, dtype=np.float64)
        if S.shape != S_src.shape or not np.array_equal(S, S_src):
            raise DatasetError(path, "cg/weights", f"the projector's map (weights {S_src.shape}) differs "
                               f"from the map it is to be used with (weights {S.shape})")  # fmt: skip
    prov["copied_from"] = str(path.resolve())
    prov["projector_sha256"] = projector_sha256(Q)
    return Q, prov


def _check_rigid_groups(path, Q: np.ndarray, pairs: np.ndarray) -> None:
    """Refuse a Q whose columns differ within a rigid group (its lift would break the constraints)."""
    labels = rigid_group_labels(Q.shape[1], constrained_pairs=pairs)
    for gid in np.flatnonzero(np.bincount(labels) > 1):
        idx = np.flatnonzero(labels == gid)
        cols = Q[:, idx]
        if not np.array_equal(cols, np.repeat(cols[:, :1], idx.size, axis=1)):
            raise DatasetError(path, "cg/projector", f"HBond-constrained data: the projector's columns "
                               f"differ within the rigid group of atoms {idx.tolist()} (its lift Qᵀv "
                               f"would break the constraints; fit it with the file's rigid groups)")  # fmt: skip


def write_cg(
    path: str | Path,
    cg_map=None,
    bead_types: np.ndarray | None = None,
    bonds: np.ndarray | None = None,
    vocabulary: list[str] | None = None,
    overwrite: bool = False,
    constraint_aware: bool = True,
    projector="constraint-aware",
    optimal: OptimalFit | None = None,
    projector_provenance: dict | None = None,
) -> CGData:
    """Apply a linear CG map to a dataset file and write its ``cg/`` group (``hessid data map``).

    R = S r (cg/coordinates, Å) and P f = Q f (cg/forces, kcal/mol/Å), docs/identities.md §2.

    Constrained data: when the file's root attribute ``constraints`` is ``"HBonds"`` (datasets
    simulated by :mod:`.aa_md`), every bond with a hydrogen was rigid, and a projector is valid
    only if its lift Pᵀv moves each rigid X–H group as one body. Q is then replaced by
    :func:`hessid.maps.constraint_aware_projector` (docs/identities.md §2 projector condition
    Q Sᵀ = I extended to holonomic constraints; Krämer et al., JCTC 2023, force aggregation):
    for the Cα map the force on a bead is f_CA + f_HA, the mean force of the constrained
    ensemble, and the Term-1 lift moves HA with CA. ``cg/projector``, ``cg/forces`` and, through them,
    the Term-1 targets use this Q; the attribute ``cg.attrs["projector_constraints"]`` is
    ``"HBonds"`` or ``"none"``. Files without the attribute (imports) or with ``"none"`` keep
    the map's projector.

    ``projector="optimal"`` writes the variance-minimising Q* instead (docs/variance_reduction.md
    §2), fitted by :func:`fit_optimal_projector` as ``optimal`` says (default: the last 20 % of
    this file's frames, all atoms, rigid HBond groups); an (n, N) matrix is written as given
    after checking ``Q Sᵀ = I`` and, on HBond data, equal columns within every rigid group.
    Every kind records on ``cg/``: ``projector_kind`` (``"constraint-aware"``, ``"map"``,
    ``"optimal"`` or, for a matrix without provenance, ``"given"``), ``projector_sha256``
    (:func:`projector_sha256`; Term-1 targets carry the same hash and ``hessid targets
    --resume`` refuses a mismatch) and ``projector_provenance`` (JSON: the fit's provenance,
    see :func:`fit_optimal_projector`, plus ``objective_mapped`` = E‖Q f‖² over this file's
    frames for the reference (constraint-aware or map) projector and for the written one).

    Args:
        path: dataset file (validated first).
        cg_map: :class:`hessid.maps.LinearMap` with ``n_atoms == N``; default: :func:`ca_map`.
        bead_types, bonds, vocabulary: required with a custom ``cg_map`` unless its bead count
            equals the Cα count (then the Cα types and bonds are used).
        overwrite: replace an existing ``cg/`` group (drops its targets).
        constraint_aware: aggregate the projector over HBond-constrained groups (above); False
            keeps ``cg_map.projector`` as given (use it with a projector that is already valid
            under the constraints). Only with ``projector="constraint-aware"``.
        projector: ``"constraint-aware"`` (default), ``"optimal"`` or Q (n, N) (e.g. from
            :func:`fit_optimal_projector` or :func:`load_projector`).
        optimal: the fit of ``projector="optimal"`` (default :class:`OptimalFit`).
        projector_provenance: recorded with a matrix ``projector`` (kind taken from its
            ``"kind"``).

    Returns:
        the written :class:`CGData`.

    Raises:
        DatasetError: invalid file, a conditional-labels file (re-mapping would overwrite its
            labels), ``cg/`` exists and not ``overwrite``, map/atom mismatch, no
            constraint-aware projector exists for this map (a rigid X–H group split between
            beads; the message says so), a given Q violates ``Q Sᵀ = I`` or splits a rigid
            group, or the fit dataset's topology differs.
        ValueError: unknown projector kind, ``optimal`` or ``projector_provenance`` with the
            wrong kind, ``constraint_aware=False`` with ``"optimal"``, bad fit options.
    """
    path = Path(path)
    explicit = not isinstance(projector, str)
    kind = "matrix" if explicit else projector
    if not explicit and projector not in PROJECTOR_KINDS:
        raise ValueError(f"projector must be one of {PROJECTOR_KINDS} or an (n, N) matrix, got {projector!r}")
    if optimal is not None and kind != "optimal":
        raise ValueError("optimal=OptimalFit(...) is only used with projector='optimal'")
    if projector_provenance is not None and not explicit:
        raise ValueError("projector_provenance is only recorded with a projector matrix")
    if kind == "optimal" and not constraint_aware:
        raise ValueError("projector='optimal' always keeps rigid HBond groups rigid; "
                         "constraint_aware=False applies to the constraint-aware kind only")  # fmt: skip
    validate_dataset(path, check_cg=not overwrite)  # a group to be replaced may be stale
    with h5py.File(path, "r") as h5:
        top = topology_from_pdb(read_topology_text(h5), f"{path}: topology")
        sc.refuse_labels_file(h5.attrs, path, "re-mapping")
        exists = sc.CG in h5
        constraints = _constraints_of(h5)
        t_mapped = h5[sc.FORCES].shape[0]
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
    Q_ref, ref_kind = _reference_projector(path, S, cg_map.projector.numpy(), top, constraints, constraint_aware)
    pairs = hbond_pairs(top) if _is_hbonds(constraints) else np.zeros((0, 2), np.int64)
    if kind == "constraint-aware":
        Q, prov = Q_ref, {"kind": ref_kind}
    else:
        if kind == "optimal":
            fit = optimal or OptimalFit()
            fit_path = path if fit.dataset is None else dataset_path(fit.dataset)
            same = fit_path.resolve() == path.resolve()
            if not same:
                _check_same_system(path, top, constraints, fit_path)
            frames = fit.frames
            if frames is None:
                with h5py.File(fit_path, "r") as h5:
                    frames = default_fit_frames(h5[sc.FORCES].shape[0], same)
            Q, prov = fit_optimal_projector(fit_path, frames, fit.neighbours, cg_map=cg_map,
                                            ridge=fit.ridge)  # fmt: skip
            prov["fit_frames_default"] = fit.frames is None
        else:
            Q = np.array(projector, dtype=np.float64)
            prov = dict(projector_provenance or {"kind": "given"})
            if Q.shape != S.shape:
                raise DatasetError(path, "cg/projector", f"shape {Q.shape}, expected {S.shape}")
        residual = check_projector(S, Q, tol=math.inf)
        if not residual <= PROJECTOR_TOL:
            raise DatasetError(path, "cg/projector", f"violates Q Sᵀ = I (max |Q Sᵀ − I| = {residual:.3e})")
        if len(pairs):
            _check_rigid_groups(path, Q, pairs)
    prov["projector_sha256"] = projector_sha256(Q)
    if kind != "constraint-aware":  # else the reference is what is written
        obj = _mean_sq_projected_force(path, {"reference": Q_ref, "written": Q})
        prov["objective_mapped"] = {"reference_kind": ref_kind, "n_frames": int(t_mapped),
                                    "unit": OBJECTIVE_UNIT, **obj}  # fmt: skip
    projector_constraints = "HBonds" if len(pairs) and (ref_kind == "constraint-aware" or kind != "constraint-aware") else "none"
    with h5py.File(path, "r+") as h5:
        if sc.CG in h5:
            del h5[sc.CG]
        g = h5.create_group(sc.CG)
        h5.create_dataset(sc.CG_WEIGHTS, data=S)
        h5.create_dataset(sc.CG_PROJECTOR, data=Q)
        t = h5[sc.COORDINATES].shape[0]
        for src, dst, mat in ((sc.COORDINATES, sc.CG_COORDINATES, S), (sc.FORCES, sc.CG_FORCES, Q)):
            ds = h5.create_dataset(dst, shape=(t, n, 3), dtype="f8")
            for start in range(0, t, FRAME_BLOCK):
                block = h5[src][start : start + FRAME_BLOCK]  # (b, N, 3)
                ds[start : start + block.shape[0]] = np.einsum("nN,bNc->bnc", mat, block)
        h5[sc.CG_COORDINATES].attrs[sc.ATTR_UNIT] = sc.LENGTH_UNIT
        h5[sc.CG_FORCES].attrs[sc.ATTR_UNIT] = sc.FORCE_UNIT
        h5[sc.CG_FORCES].attrs[sc.ATTR_MEANING] = sc.CG_FORCES_MEANING
        bt = h5.create_dataset(sc.CG_BEAD_TYPES, data=np.asarray(bead_types, dtype=np.int64))
        bt.attrs[sc.ATTR_BEAD_VOCABULARY] = json.dumps(list(vocabulary or []))
        h5.create_dataset(sc.CG_BONDS, data=np.asarray(bonds, dtype=np.int64).reshape(-1, 2))
        g.attrs[sc.ATTR_MAP] = "ca" if cg_map is ca else "custom"
        g.attrs[sc.ATTR_PROJECTOR_CONSTRAINTS] = projector_constraints
        g.attrs[ATTR_PROJECTOR_KIND] = str(prov.get("kind", "given"))
        g.attrs[sc.ATTR_PROJECTOR_SHA256] = prov["projector_sha256"]
        g.attrs[ATTR_PROJECTOR_PROVENANCE] = json.dumps(prov, sort_keys=True)
        h5.flush()
    return load_cg(path)


def _check_same_system(path, top, constraints: str, fit_path) -> None:
    """Refuse a fit dataset whose atoms or rigid groups differ from the mapped dataset's."""
    validate_dataset(fit_path, check_cg=False)
    with h5py.File(fit_path, "r") as h5:
        fit_top = topology_from_pdb(read_topology_text(h5), f"{fit_path}: topology")
        fit_constraints = _constraints_of(h5)
    a = [(x.name, x.residue.name, x.residue.index) for x in top.atoms()]
    b = [(x.name, x.residue.name, x.residue.index) for x in fit_top.atoms()]
    if a != b:
        raise DatasetError(fit_path, "topology", f"the fit dataset's atoms differ from those of {path} "
                           f"({len(b)} vs {len(a)} atoms, or different names/residues)")  # fmt: skip
    if _is_hbonds(constraints) != _is_hbonds(fit_constraints):
        raise DatasetError(fit_path, None, f"constraints={fit_constraints!r} but {path} has "
                           f"constraints={constraints!r}: the rigid groups would differ")  # fmt: skip
