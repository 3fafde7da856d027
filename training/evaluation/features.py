"""Structural features of Cα trajectories (docs/evaluation.md, evaluation protocol steps 3 and 5).

Units: coordinates in nm (mdtraj), distances and Rg in nm, angles and dihedrals in radians.
"""

from __future__ import annotations

import mdtraj as md
import numpy as np

from hessid.training.md.reporters import ca_topology

# ----------------------------------------------------------------------------------------
# Features (docs/evaluation.md, evaluation protocol steps 3 (TICA) and 5 (structure))
# ----------------------------------------------------------------------------------------


def _as_traj(xyz_nm: np.ndarray) -> md.Trajectory:
    xyz = np.asarray(xyz_nm, dtype=np.float32)
    return md.Trajectory(xyz, ca_topology(xyz.shape[1]))


def ca_pair_distances(xyz_nm: np.ndarray) -> np.ndarray:
    """All Cα–Cα distances i < j, ``np.triu_indices(n, 1)`` order (docs/evaluation.md, step 3).

    Args:
        xyz_nm: (T, n, 3) nm.

    Returns:
        (T, n(n−1)/2) float64, nm.
    """
    xyz = np.asarray(xyz_nm, dtype=np.float64)
    i, j = np.triu_indices(xyz.shape[1], 1)
    return np.linalg.norm(xyz[:, j] - xyz[:, i], axis=-1)  # (T, n(n-1)/2)


def bond_lengths(xyz_nm: np.ndarray) -> np.ndarray:
    """Consecutive Cα distances (i, i+1), (T, n−1) nm (mdtraj.compute_distances)."""
    n = np.shape(xyz_nm)[1]
    pairs = np.stack([np.arange(n - 1), np.arange(1, n)], 1)  # (n-1, 2)
    return md.compute_distances(_as_traj(xyz_nm), pairs, periodic=False).astype(np.float64)


def bond_angles(xyz_nm: np.ndarray) -> np.ndarray:
    """Cα angles (i, i+1, i+2), (T, n−2) radians in [0, π] (mdtraj.compute_angles)."""
    n = np.shape(xyz_nm)[1]
    idx = np.stack([np.arange(n - 2) + k for k in range(3)], 1)  # (n-2, 3)
    return md.compute_angles(_as_traj(xyz_nm), idx, periodic=False).astype(np.float64)


def dihedral_angles(xyz_nm: np.ndarray) -> np.ndarray:
    """Cα pseudo-dihedrals (i..i+3), (T, n−3) radians in (−π, π] (``periodic=False``)."""
    n = np.shape(xyz_nm)[1]
    idx = np.stack([np.arange(n - 3) + k for k in range(4)], 1)  # (n-3, 4)
    return md.compute_dihedrals(_as_traj(xyz_nm), idx, periodic=False).astype(np.float64)


def radius_of_gyration(xyz_nm: np.ndarray) -> np.ndarray:
    """Radius of gyration of the Cα trace (equal weights), (T,) nm (mdtraj.compute_rg)."""
    return md.compute_rg(_as_traj(xyz_nm)).astype(np.float64)


def structural_features(xyz_nm: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled structural distributions of frames (T, n, 3) nm (docs/evaluation.md, protocol step 5).

    Returns:
        ``{"bond": (T(n−1),) nm, "angle": (T(n−2),) rad, "dihedral": (T(n−3),) rad, "rg": (T,) nm}``.
    """
    return {"bond": bond_lengths(xyz_nm).ravel(), "angle": bond_angles(xyz_nm).ravel(),
            "dihedral": dihedral_angles(xyz_nm).ravel(), "rg": radius_of_gyration(xyz_nm)}


__all__ = ["bond_angles", "bond_lengths", "ca_pair_distances", "dihedral_angles", "radius_of_gyration",
           "structural_features"]
