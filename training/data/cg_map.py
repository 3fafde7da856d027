"""The CG step of the dataset file: the Cα map and ``cg/`` group writing (``hessid data map``).

:func:`ca_map` builds the default one-bead-per-residue selection map with bead types and chain
bonds, :func:`hbond_pairs` lists OpenMM's HBond-constrained atom pairs, and :func:`write_cg`
applies a :class:`hessid.maps.LinearMap` to every frame of a dataset file and writes ``cg/``
(layout: :mod:`hessid.training.data.schema`).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from openmm.app import element

from hessid.maps import LinearMap, constraint_aware_projector
from hessid.training.data import schema as sc
from hessid.training.data.io import (
    FRAME_BLOCK,
    read_topology_text,
    topology_from_pdb,
    validate_dataset,
)
from hessid.training.data.reader import CGData, load_cg
from hessid.training.data.schema import DatasetError

__all__ = ["RESIDUE_ALIASES", "STANDARD_RESIDUES", "ca_map", "hbond_pairs", "write_cg"]

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
        DatasetError: invalid file, a conditional-labels file (re-mapping would overwrite its
            labels), ``cg/`` exists and not ``overwrite``, map/atom mismatch, or
            no constraint-aware projector exists for this map (a rigid X–H group split between
            beads; the message says so).
    """
    path = Path(path)
    validate_dataset(path, check_cg=not overwrite)  # a group to be replaced may be stale
    with h5py.File(path, "r") as h5:
        top = topology_from_pdb(read_topology_text(h5), f"{path}: topology")
        sc.refuse_labels_file(h5.attrs, path, "re-mapping")
        exists = sc.CG in h5
        raw = h5.attrs.get(sc.ATTR_CONSTRAINTS, "none")
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
        try:
            Q = constraint_aware_projector(S, Q, hbond_pairs(top), n_atoms=S.shape[1]).numpy()
        except ValueError as exc:
            raise DatasetError(path, "cg/projector", f"HBond-constrained data: {exc} "
                               "(or write_cg(..., constraint_aware=False) with a projector "
                               "valid under the constraints)") from exc  # fmt: skip
        projector_constraints = "HBonds"
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
        h5.flush()
    return load_cg(path)

