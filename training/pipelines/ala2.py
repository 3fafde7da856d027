"""Alanine dipeptide (ACE-ALA-NME) in a 5-bead backbone CG representation.

System
    The all-atom structure is pdbfixer's shipped test file ``alanine-dipeptide.pdb`` (heavy
    atoms only), completed with hydrogens by OpenMM's ``Modeller.addHydrogens`` for the
    Amber14 force field: 22 atoms. :func:`write_structure` puts it where
    :func:`hessid.training.data.aa_md.simulate` expects it (``<root>/<name>/<name>.pdb``).

CG map
    Five backbone heavy atoms, found by residue and atom name: C of ACE, N, CA and C of ALA,
    N of NME (:data:`BEADS`). A selection map (P = M), so φ and ψ are functions of
    the CG coordinates. Each bead has its own type (:data:`BEAD_VOCABULARY`, 5 types), and
    the chain bonds are (0,1), (1,2), (2,3), (3,4).

Backbone dihedrals (IUPAC sign convention, the same as ``mdtraj.compute_phi/psi``)::

    φ = dihedral(C_ACE, N, CA, C)      = dihedral of beads (0, 1, 2, 3)
    ψ = dihedral(N, CA, C, N_NME)      = dihedral of beads (1, 2, 3, 4)

Basins (:func:`assign_basins`), a full partition of the (φ, ψ) torus, angles in degrees:

    αL      0 ≤ φ < 120                         (left-handed helix / C7ax side, φ > 0)
    αR      φ ∉ [0, 120) and −120 ≤ ψ < 50       (right-handed helix, C7eq bridge)
    β/PII   φ ∉ [0, 120) and ψ ∉ [−120, 50)      (extended β and polyproline II)

Why these boundaries: the slow process of alanine dipeptide is the change of sign of φ, with
free-energy barriers near φ ≈ 0° and φ ≈ 120° (the αL/C7ax region spans 0° < φ < 120°;
e.g. Chodera et al., J. Chem. Phys. 126, 155101 (2007), Fig. 1). Cutting at φ = 120° rather
than 180° keeps the tail of the β basin that wraps past φ = ±180° in β instead of counting
it as αL. On the φ < 0 side the αR/β barrier runs along ψ ≈ 50° and ψ ≈ −120° (the usual
Ramachandran split of the α and β regions); the rarely visited φ ≥ 120° side is folded into
the φ < 0 regions by the same ψ rule.

Densities and distances on the torus (:func:`phi_psi_density`, :func:`phi_psi_kl`,
:func:`phi_psi_w1`): a 36 × 36 histogram on [−π, π)² smoothed by a Gaussian of 1 bin with
wrap-around, normalised to sum 1; KL(ref‖model) with the density floor 1e-6 rad⁻² of
:data:`hessid.training.evaluation.divergences.KL_FLOOR` (docs/evaluation.md); W1 by exact transport (POT
``ot.emd2``) with the periodic ground distance ``√(Σ_axis min(|Δ|, 2π − |Δ|)²)`` (radians).

Units: Å for coordinates, radians for angles, kcal/mol/Å² for Hessians.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm.app as app
import ot
import torch
from scipy.ndimage import gaussian_filter

from hessid.maps import LinearMap
from hessid.training.data.aa_md import forcefield_files
from hessid.training.data.cg_map import write_cg
from hessid.training.data.reader import open_dataset
from hessid.training.data.structures import Structure, positions_angstrom
from hessid.training.evaluation.statistics import soft_mode_hessian_error
from hessid.training.learning.hessians import hessian_autograd
from hessid.units import KB_KCAL_PER_MOL_K

#: (residue name, atom name) of each bead, in bead order
BEADS = (("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N"))
#: bead-type vocabulary: one type per bead (``cg/bead_types`` = 0..4)
BEAD_VOCABULARY = ["C_ACE", "N", "CA", "C", "N_NME"]
#: chain bonds between consecutive beads, (4, 2)
BONDS = np.array([[0, 1], [1, 2], [2, 3], [3, 4]], dtype=np.int64)
#: element masses of the bead atoms, amu (C, N, C, C, N) — for CG Langevin dynamics
BEAD_MASSES = (12.011, 14.007, 12.011, 12.011, 14.007)
#: basin labels returned by :func:`assign_basins`, in index order
BASINS = ("alpha_R", "beta_PII", "alpha_L")
#: basin boundaries in degrees (module docstring)
ALPHA_L_PHI = (0.0, 120.0)
ALPHA_R_PSI = (-120.0, 50.0)
#: KL density floor (rad⁻²), the benchmark's convention (divergences.KL_FLOOR)
KL_FLOOR = 1e-6
#: default Cα-style bond check range for CG MD / evaluation of this map, Å (bonds are 1.3–1.6 Å)
BOND_RANGE = (1.0, 2.2)


# ----------------------------------------------------------------------------- structure


def pdbfixer_structure_path() -> Path:
    """Path of ``alanine-dipeptide.pdb`` shipped in pdbfixer's test data.

    Returns:
        the file path (heavy atoms of ACE-ALA-NME, no hydrogens).

    Raises:
        FileNotFoundError: pdbfixer is installed without its test data.
        ImportError: pdbfixer is not installed.
    """
    path = Path(str(importlib.resources.files("pdbfixer") / "tests" / "data" / "alanine-dipeptide.pdb"))
    if not path.exists():
        raise FileNotFoundError(f"{path}: pdbfixer's alanine-dipeptide.pdb not found (pdbfixer installed "
                                "without tests/data?)")  # fmt: skip
    return path


def build_structure(forcefield: str = "amber14-all.xml", solvent: str = "gbn2"):
    """All-atom alanine dipeptide (22 atoms) from pdbfixer's test PDB, hydrogens added.

    ``Modeller.addHydrogens`` with the given force field (only when hydrogens are missing),
    so the hydrogen names match the force-field templates.

    Args:
        forcefield: main force-field XML (Amber14 by default).
        solvent: a :data:`hessid.training.data.aa_md.SOLVENTS` entry (its XML is loaded as well).

    Returns:
        :class:`hessid.training.data.structures.Structure`, positions (22, 3) float64 in Å.

    Raises:
        FileNotFoundError, ImportError: see :func:`pdbfixer_structure_path`.
        ValueError: unknown solvent.
    """
    path = pdbfixer_structure_path()
    pdb = app.PDBFile(str(path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    if not any(a.element is not None and a.element.symbol == "H" for a in modeller.topology.atoms()):
        modeller.addHydrogens(app.ForceField(*forcefield_files(forcefield, solvent)))
    return Structure(modeller.topology, positions_angstrom(modeller.positions), str(path))


def write_structure(name: str = "ala2", root: str | Path = ".", overwrite: bool = False) -> Path:
    """Write the AA structure to ``<root>/<name>/<name>.pdb`` (the layout aa_md reads).

    Args:
        name: dataset name.  root: folder holding ``<name>/``.
        overwrite: replace an existing PDB (otherwise it is kept: resumable).

    Returns:
        the PDB path.
    """
    path = Path(root) / name / f"{name}.pdb"
    if path.exists() and not overwrite:
        return path
    return build_structure().save(path)


# ----------------------------------------------------------------------------- CG map


def backbone_indices(topology) -> np.ndarray:
    """Atom indices of the 5 beads (:data:`BEADS`), found by residue and atom name.

    Args:
        topology: OpenMM ``Topology`` (or anything with ``atoms()`` whose items have
            ``name``, ``index`` and ``residue.name``).

    Returns:
        (5,) int64 atom indices, bead order C(ACE), N, CA, C, N(NME).

    Raises:
        ValueError: a bead atom is missing or found more than once (names the bead).
    """
    found: dict = {b: [] for b in BEADS}
    for atom in topology.atoms():
        key = (atom.residue.name.upper(), atom.name.upper())
        if key in found:
            found[key].append(atom.index)
    out = []
    for bead, hits in found.items():
        if len(hits) != 1:
            raise ValueError(f"bead {bead[0]}:{bead[1]} matched {len(hits)} atoms (need exactly 1); "
                             "is this ACE-ALA-NME?")  # fmt: skip
        out.append(hits[0])
    return np.asarray(out, dtype=np.int64)


def backbone_map(topology):
    """The 5-bead backbone selection map of alanine dipeptide (P = M).

    Args:
        topology: OpenMM ``Topology`` of the AA system (N atoms).

    Returns:
        ``(cg_map, bead_types (5,) int64, bonds (4, 2) int64, vocabulary list[str])`` with
        ``cg_map`` a :class:`hessid.maps.LinearMap` of weights (5, N).

    Raises:
        ValueError: see :func:`backbone_indices`.
    """
    idx = backbone_indices(topology)
    cg_map = LinearMap.selection(idx.tolist(), topology.getNumAtoms())
    return cg_map, np.arange(5, dtype=np.int64), BONDS.copy(), list(BEAD_VOCABULARY)


def map_dataset(path: str | Path, overwrite: bool = False):
    """Write the backbone map's ``cg/`` group into a dataset file (``hessid data map``).

    Args:
        path: dataset ``.h5`` (validated by :func:`hessid.training.data.cg_map.write_cg`).
        overwrite: replace an existing ``cg/`` group (drops its targets).

    Returns:
        :class:`hessid.training.data.reader.CGData` as written.

    Raises:
        DatasetError: invalid file, or ``cg/`` exists and not ``overwrite``.
        ValueError: the topology is not alanine dipeptide.
    """
    cg_map, types, bonds, vocab = backbone_map(dataset_topology(path))
    return write_cg(path, cg_map, types, bonds, vocab, overwrite=overwrite)


def dataset_topology(path: str | Path):
    """The OpenMM ``Topology`` stored in a dataset file (its ``topology`` PDB text).

    Raises:
        DatasetError: missing file, not a hessid dataset, or unparsable PDB text.
    """
    with open_dataset(path) as ds:
        return ds.topology()


# ----------------------------------------------------------------------------- dihedrals


def dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Dihedral angle of four points (IUPAC sign convention, as mdtraj).

    ``atan2(|b2| b1·(b2×b3), (b1×b2)·(b2×b3))`` with ``b1 = p1 − p0``, ``b2 = p2 − p1``,
    ``b3 = p3 − p2``.

    Args:
        p0, p1, p2, p3: (..., 3) positions (any length unit).

    Returns:
        (...) float64 radians in (−π, π].
    """
    p0, p1, p2, p3 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2, p3))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.einsum("...i,...i->...", b1, n2)
    x = np.einsum("...i,...i->...", n1, n2)
    return np.arctan2(y, x)


def phi_psi(cg_coordinates: np.ndarray) -> np.ndarray:
    """Backbone dihedrals (φ, ψ) from CG coordinates of the 5-bead map.

    Args:
        cg_coordinates: (B, 5, 3) or (5, 3) bead positions, Å (any length unit works).

    Returns:
        (B, 2) (or (2,)) float64, radians in (−π, π]: column 0 φ, column 1 ψ.

    Raises:
        ValueError: the last two axes are not (5, 3).
    """
    x = np.asarray(cg_coordinates, dtype=np.float64)
    if x.shape[-2:] != (5, 3):
        raise ValueError(f"expected CG coordinates (..., 5, 3), got {x.shape}")
    phi = dihedral(x[..., 0, :], x[..., 1, :], x[..., 2, :], x[..., 3, :])
    psi = dihedral(x[..., 1, :], x[..., 2, :], x[..., 3, :], x[..., 4, :])
    return np.stack([phi, psi], axis=-1)


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Wrap angles (radians) into [−π, π)."""
    return (np.asarray(x, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


# ----------------------------------------------------------------------------- basins


def assign_basins(angles: np.ndarray) -> np.ndarray:
    """Basin of each (φ, ψ): 0 αR, 1 β/PII, 2 αL (:data:`BASINS`; boundaries in the module
    docstring, a full partition of the torus).

    Args:
        angles: (B, 2) φ, ψ in radians (any branch; wrapped internally).

    Returns:
        (B,) int64 basin indices.

    Raises:
        ValueError: ``angles`` is not (B, 2).
    """
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"expected (B, 2) (phi, psi) in radians, got {a.shape}")
    phi, psi = np.degrees(wrap_angle(a[:, 0])), np.degrees(wrap_angle(a[:, 1]))
    alpha_l = (phi >= ALPHA_L_PHI[0]) & (phi < ALPHA_L_PHI[1])
    alpha_r = ~alpha_l & (psi >= ALPHA_R_PSI[0]) & (psi < ALPHA_R_PSI[1])
    out = np.ones(a.shape[0], dtype=np.int64)  # β/PII
    out[alpha_r] = 0
    out[alpha_l] = 2
    return out


def block_average(x: np.ndarray, n_blocks: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean and block-average standard error of a time series (Flyvbjerg–Petersen blocks).

    The series is cut into ``n_blocks`` contiguous blocks of (nearly) equal length
    (``np.array_split``); s.e. = std(block means, ddof=1) / √n_blocks. Valid when blocks are
    long compared with the correlation time; on i.i.d. data it estimates σ/√T.

    Args:
        x: (T, ...) samples (time along axis 0).
        n_blocks: number of blocks, ≥ 2 and ≤ T.

    Returns:
        ``(mean (...), sem (...))`` float64; mean over all T samples.

    Raises:
        ValueError: ``n_blocks`` < 2 or > T.
    """
    x = np.asarray(x, dtype=np.float64)
    t = x.shape[0]
    if n_blocks < 2 or n_blocks > t:
        raise ValueError(f"need 2 <= n_blocks <= T, got n_blocks={n_blocks}, T={t}")
    means = np.stack([b.mean(axis=0) for b in np.array_split(x, n_blocks)])  # (n_blocks, ...)
    return x.mean(axis=0), means.std(axis=0, ddof=1) / math.sqrt(n_blocks)


def basin_populations(angles: np.ndarray | Sequence[np.ndarray], n_blocks: int = 10) -> dict:
    """Basin populations with block-average standard errors.

    Args:
        angles: (T, 2) φ, ψ radians, or a list of such arrays (independent runs, concatenated
            in order before blocking: blocks never mix runs when ``n_blocks`` equals the
            number of runs of equal length).
        n_blocks: blocks for :func:`block_average`.

    Returns:
        ``{"populations": {basin: p}, "sem": {basin: s.e.}, "n_frames": T, "n_blocks": n}``,
        populations summing to 1.

    Raises:
        ValueError: no frames, or ``n_blocks`` outside [2, T].
    """
    if not isinstance(angles, np.ndarray):
        angles = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, 2) for a in angles])
    labels = assign_basins(angles)
    if labels.size == 0:
        raise ValueError("no frames")
    onehot = (labels[:, None] == np.arange(len(BASINS))[None, :]).astype(np.float64)  # (T, 3)
    mean, sem = block_average(onehot, n_blocks)
    return {"populations": {b: float(mean[i]) for i, b in enumerate(BASINS)},
            "sem": {b: float(sem[i]) for i, b in enumerate(BASINS)},
            "n_frames": int(labels.size), "n_blocks": int(n_blocks)}  # fmt: skip


# ----------------------------------------------------------------------------- torus densities


def phi_psi_density(angles: np.ndarray, n_bins: int = 36, sigma_bins: float = 1.0) -> np.ndarray:
    """Probability of each cell of a periodic (φ, ψ) grid, smoothed with wrap-around.

    Histogram on [−π, π)² with ``n_bins`` × ``n_bins`` cells (bin width h = 2π/n_bins rad),
    then ``scipy.ndimage.gaussian_filter(mode="wrap")`` with σ = ``sigma_bins`` cells
    (0: no smoothing), normalised to sum 1.

    Args:
        angles: (T, 2) φ, ψ radians.
        n_bins: cells per axis (36 → 10° cells).
        sigma_bins: Gaussian smoothing width in cells.

    Returns:
        (n_bins, n_bins) float64 cell probabilities, axis 0 φ, axis 1 ψ; cell i covers
        [−π + i h, −π + (i+1) h).

    Raises:
        ValueError: not (T, 2), no finite frame.
    """
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"expected (T, 2) (phi, psi) in radians, got {a.shape}")
    a = a[np.isfinite(a).all(axis=1)]
    if a.shape[0] == 0:
        raise ValueError("no finite (phi, psi) samples")
    w = wrap_angle(a)
    idx = np.floor((w + math.pi) / (2 * math.pi) * n_bins).astype(np.int64) % n_bins  # (T, 2)
    hist = np.zeros((n_bins, n_bins))
    np.add.at(hist, (idx[:, 0], idx[:, 1]), 1.0)
    if sigma_bins > 0:
        hist = gaussian_filter(hist, sigma=sigma_bins, mode="wrap")
    return hist / hist.sum()


def grid_centers(n_bins: int = 36) -> np.ndarray:
    """Cell centres of the periodic grid, (n_bins,) radians in (−π, π)."""
    h = 2 * math.pi / n_bins
    return -math.pi + h * (np.arange(n_bins) + 0.5)


def phi_psi_kl(reference: np.ndarray, model: np.ndarray, floor: float = KL_FLOOR) -> float:
    """KL(ref‖model) of two grid densities from :func:`phi_psi_density` (nats).

    ``Σ_cells P_ref log(max(ρ_ref, floor) / max(ρ_model, floor))`` with ρ = P / h² the density
    in rad⁻² (h the bin width), i.e. the expectation over the reference of the log density
    ratio with the benchmark's density floor 1e-6 (divergences.kl_divergence's convention).

    Args:
        reference, model: (n, n) cell probabilities (each summing to 1).
        floor: density floor, rad⁻².

    Returns:
        KL in nats (0 for identical inputs).

    Raises:
        ValueError: shapes differ or are not square.
    """
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(model, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"need two equal square grids, got {p.shape} and {q.shape}")
    area = (2 * math.pi / p.shape[0]) ** 2  # rad²
    rp, rq = np.maximum(p / area, floor), np.maximum(q / area, floor)
    return float(np.sum(p * np.log(rp / rq)))


def torus_cost_matrix(n_bins: int = 36, periodic: bool = True) -> np.ndarray:
    """Ground distance between the cells of the (φ, ψ) grid, radians.

    ``d = √(Δφ² + Δψ²)`` with ``Δ = min(|Δ|, 2π − |Δ|)`` per axis when ``periodic`` (the
    geodesic distance on the flat torus), plain differences otherwise (negative control).

    Returns:
        (n_bins², n_bins²) float64; cell (i, j) has flat index ``i * n_bins + j``.
    """
    c = grid_centers(n_bins)
    gp, gs = np.meshgrid(c, c, indexing="ij")
    pts = np.stack([gp.ravel(), gs.ravel()], 1)  # (n², 2)
    diff = np.abs(pts[:, None, :] - pts[None, :, :])  # (n², n², 2)
    if periodic:
        diff = np.minimum(diff, 2 * math.pi - diff)
    return np.sqrt((diff**2).sum(-1))


def phi_psi_w1(reference: np.ndarray, model: np.ndarray, periodic: bool = True) -> float:
    """W1 between two (φ, ψ) grid densities on the torus, radians (POT ``ot.emd2``, exact).

    Args:
        reference, model: (n, n) cell probabilities from :func:`phi_psi_density`.
        periodic: periodic ground distance (default); False only for negative controls.

    Returns:
        W1 in radians (≥ 0; ≤ π√2 on the torus).

    Raises:
        ValueError: shapes differ or are not square.
    """
    p, q = np.asarray(reference, dtype=np.float64), np.asarray(model, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"need two equal square grids, got {p.shape} and {q.shape}")
    cost = torus_cost_matrix(p.shape[0], periodic)
    return float(ot.emd2(p.ravel() / p.sum(), q.ravel() / q.sum(), cost, numItermax=1_000_000))


def free_energy_grid(density: np.ndarray, temperature: float = 300.0) -> np.ndarray:
    """F = −k_BT ln P on the grid, minimum 0, NaN where P = 0; kcal/mol.

    Args:
        density: (n, n) cell probabilities.  temperature: K.

    Returns:
        (n, n) float64, kcal/mol.
    """
    p = np.asarray(density, dtype=np.float64)
    with np.errstate(divide="ignore"):
        f = -KB_KCAL_PER_MOL_K * temperature * np.log(p / p.max())
    f[p <= 0] = np.nan
    return f


def phi_psi_metrics(reference_angles: np.ndarray, model_angles: np.ndarray, n_bins: int = 36,
                    sigma_bins: float = 1.0, n_blocks: int = 10) -> dict:  # fmt: skip
    """All φ/ψ scores of a model ensemble against the reference.

    Args:
        reference_angles, model_angles: (T, 2) / (M, 2) φ, ψ radians.
        n_bins, sigma_bins: grid of :func:`phi_psi_density`.
        n_blocks: blocks for the model's basin-population errors.

    Returns:
        ``{"phi_psi_kl": nats, "phi_psi_w1": rad, "basins": basin_populations(model)}``.
    """
    p = phi_psi_density(reference_angles, n_bins, sigma_bins)
    q = phi_psi_density(model_angles, n_bins, sigma_bins)
    return {"phi_psi_kl": phi_psi_kl(p, q), "phi_psi_w1": phi_psi_w1(p, q),
            "basins": basin_populations(model_angles, min(n_blocks, len(model_angles)))}  # fmt: skip


# ----------------------------------------------------------------------------- Hessians


def _hessian_stacks(model, reference) -> tuple[np.ndarray, np.ndarray]:
    """Both arguments as float64 (B, d, d) stacks of equal shape, or ValueError."""
    m, r = np.asarray(model, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f"need two (B, d, d) stacks of equal shape, got {m.shape} and {r.shape}")
    return m, r


def hessian_relative_error(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Relative Frobenius error ‖H_model − H_ref‖_F / ‖H_ref‖_F per configuration.

    Args:
        model: (B, 15, 15) (or (B, d, d)) model CG Hessians, kcal/mol/Å².
        reference: same shape, reference CG Hessians, kcal/mol/Å².

    Returns:
        (B,) float64, dimensionless.

    Raises:
        ValueError: shapes differ, or a reference Hessian is zero.
    """
    m, r = _hessian_stacks(model, reference)
    den = np.linalg.norm(r.reshape(r.shape[0], -1), axis=1)
    if np.any(den == 0):
        raise ValueError("a reference Hessian is zero: relative error undefined")
    return np.linalg.norm((m - r).reshape(m.shape[0], -1), axis=1) / den


def hessian_soft_relative_error(model: np.ndarray, reference: np.ndarray, n_stiff: int = 4) -> np.ndarray:
    """Relative Frobenius error on the soft subspace of the reference Hessian, per configuration.

    The full Frobenius error is dominated by the stiff bond modes (eigenvalues ≈ 1500–2300
    kcal/mol/Å² for the 4 CG bonds of the 5-bead map), which the prior fits by Boltzmann
    inversion; the soft modes (angles, dihedrals, rigid-body modes) that shape φ/ψ are
    invisible in it. With V the eigenvectors of sym(H_ref) outside its ``n_stiff`` largest
    eigenvalues: ``‖Vᵀ(H_model − H_ref)V‖_F / ‖Vᵀ H_ref V‖_F``
    (:func:`hessid.training.evaluation.statistics.soft_mode_hessian_error` with
    ``n_soft = d − n_stiff``).

    Args:
        model: (B, d, d) model CG Hessians, kcal/mol/Å².
        reference: (B, d, d) reference CG Hessians, kcal/mol/Å².
        n_stiff: stiff modes left out (0 gives :func:`hessian_relative_error` of the
            symmetrised matrices), 0 ≤ n_stiff < d.

    Returns:
        (B,) float64, dimensionless.

    Raises:
        ValueError: shapes differ; ``n_stiff`` out of range; a reference soft block is zero.
    """
    m, r = _hessian_stacks(model, reference)
    d = m.shape[1]
    if not 0 <= int(n_stiff) < d:
        raise ValueError(f"n_stiff must lie in [0, {d}), got {n_stiff}")
    return soft_mode_hessian_error(m, r, n_soft=d - int(n_stiff))


def basin_frames(angles: np.ndarray) -> dict[str, int]:
    """Index of the frame nearest the φ/ψ density maximum of each visited basin.

    The maximum is taken over the grid cells of :func:`phi_psi_density` (36², 1-bin
    smoothing) that :func:`assign_basins` puts in the basin; the nearest frame of that basin
    by periodic (φ, ψ) distance is returned.

    Args:
        angles: (T, 2) φ, ψ in radians (e.g. of a reference run).

    Returns:
        ``{basin name: frame index}`` for every basin of :data:`BASINS` with at least one frame.
    """
    p = phi_psi_density(angles)
    c = grid_centers(p.shape[0])
    labels = assign_basins(angles)
    gp, gs = np.meshgrid(c, c, indexing="ij")
    cells = assign_basins(np.stack([gp.ravel(), gs.ravel()], 1)).reshape(p.shape)
    out = {}
    for b, name in enumerate(BASINS):
        if not np.any(labels == b):
            continue
        i, j = np.unravel_index(np.argmax(np.where(cells == b, p, -1)), p.shape)
        d = np.linalg.norm(wrap_angle(angles - np.array([c[i], c[j]])), axis=1)
        d[labels != b] = np.inf
        out[name] = int(np.argmin(d))
    return out


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error (ddof 1) of the finite values (None and NaN left out).

    Returns:
        ``(mean, s.e.)``; s.e. NaN for one value, both NaN for none.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def summarise_seeds(per_seed: list[dict]) -> dict:
    """Mean ± s.e. over training seeds of the study's per-seed metrics.

    Args:
        per_seed: dicts with ``phi_psi_kl``, ``phi_psi_w1``, ``wall_s_per_epoch``, ``basins``
            (:func:`basin_populations` or None) and optionally ``hessian_rel_error`` /
            ``hessian_soft_rel_error`` ({basin: relative error}).

    Returns:
        ``{name: (mean, s.e.)}`` for those keys, ``pop_<basin>``, ``hess_err_<basin>``,
        ``hess_err_mean`` and ``hess_soft_err_mean`` (per-seed mean over basins).
    """
    out = {k: mean_sem([m[k] for m in per_seed]) for k in ("phi_psi_kl", "phi_psi_w1", "wall_s_per_epoch")}
    for b in BASINS:
        out[f"pop_{b}"] = mean_sem([m["basins"]["populations"][b] if m["basins"] else None for m in per_seed])
    if per_seed and "hessian_rel_error" in per_seed[0]:
        for b in per_seed[0]["hessian_rel_error"]:
            out[f"hess_err_{b}"] = mean_sem([m["hessian_rel_error"].get(b) for m in per_seed])
        out["hess_err_mean"] = mean_sem([float(np.mean(list(m["hessian_rel_error"].values())))
                                         for m in per_seed if m.get("hessian_rel_error")])
        out["hess_soft_err_mean"] = mean_sem([float(np.mean(list(m["hessian_soft_rel_error"].values())))
                                              for m in per_seed if m.get("hessian_soft_rel_error")])
    return out


def model_hessians(potential, cg_coordinates: np.ndarray, bead_types: np.ndarray | None = None) -> np.ndarray:
    """Hessians ∇²U_θ of a CG potential at given configurations, by autograd.

    Args:
        potential: :class:`hessid.training.learning.models.CGPotential` (or any callable with its
            signature ``(positions (A, 3) Å, bead_types (A,), batch) -> (B,) kcal/mol``).
        cg_coordinates: (B, 5, 3) bead positions, Å.
        bead_types: (5,) int64 (default 0..4, :data:`BEAD_VOCABULARY`).

    Returns:
        (B, 15, 15) float64, kcal/mol/Å², flat index 3·bead + axis.
    """
    x = np.asarray(cg_coordinates, dtype=np.float64)
    types = torch.as_tensor(np.arange(x.shape[1]) if bead_types is None else bead_types, dtype=torch.long)
    dtype = getattr(potential, "dtype", torch.float64)
    out = [hessian_autograd(potential, torch.as_tensor(xi, dtype=dtype), types).detach().double().numpy()
           for xi in x]  # fmt: skip
    return np.stack(out)


__all__ = [
    "ALPHA_L_PHI", "ALPHA_R_PSI", "BASINS", "BEADS", "BEAD_MASSES", "BEAD_VOCABULARY", "BONDS",
    "BOND_RANGE", "KL_FLOOR", "assign_basins", "backbone_indices", "backbone_map",
    "basin_frames", "basin_populations", "block_average", "dataset_topology", "mean_sem", "summarise_seeds", "build_structure", "dihedral", "free_energy_grid",
    "grid_centers", "hessian_relative_error", "hessian_soft_relative_error", "map_dataset", "model_hessians",
    "pdbfixer_structure_path", "phi_psi", "phi_psi_density", "phi_psi_kl", "phi_psi_metrics",
    "phi_psi_w1", "torus_cost_matrix", "wrap_angle", "write_structure",
]  # fmt: skip
