"""Synthetic CG trajectories and minimal dataset files shared by the evaluation tests."""

from __future__ import annotations

import h5py
import numpy as np

#: fast KDE settings for the evaluation tests
FAST = dict(max_kde_points=1000, max_eval_points=1000)


def chain_ensemble(n_frames, n_beads=8, p_b=0.5, lifetime=50.0, seed=0, noise=0.08):
    """(T, n, 3) nm Cα frames of a two-state chain: a slow Markov switch s(t) ∈ {0, 1} with
    mean lifetime ``lifetime`` frames and P(s=1) = p_b sets the angles and dihedrals."""
    rng = np.random.default_rng(seed)
    k_ab, k_ba = p_b / lifetime, (1 - p_b) / lifetime
    s = np.empty(n_frames)
    s[0] = rng.random() < p_b
    u = rng.random(n_frames)
    for t in range(1, n_frames):
        s[t] = (u[t] >= k_ba) if s[t - 1] else (u[t] < k_ab)
    theta = 1.6 + 0.35 * s[:, None] + noise * rng.normal(size=(n_frames, n_beads - 2))
    phi = 0.9 - 1.8 * s[:, None] + 2 * noise * rng.normal(size=(n_frames, n_beads - 3))
    bond = 3.8 + 0.05 * rng.normal(size=(n_frames, n_beads - 1))
    x = np.zeros((n_frames, n_beads, 3))
    x[:, 1, 0] = bond[:, 0]
    x[:, 2, 0] = bond[:, 0] - bond[:, 1] * np.cos(theta[:, 0])
    x[:, 2, 1] = bond[:, 1] * np.sin(theta[:, 0])
    for i in range(3, n_beads):  # NeRF placement
        a, b, c = x[:, i - 3], x[:, i - 2], x[:, i - 1]
        bc = (c - b) / np.linalg.norm(c - b, axis=1, keepdims=True)
        nrm = np.cross(b - a, bc)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        m = np.cross(nrm, bc)
        th, ph, r = theta[:, i - 2, None], phi[:, i - 3, None], bond[:, i - 1, None]
        x[:, i] = c - r * np.cos(th) * bc + r * np.sin(th) * np.cos(ph) * m + r * np.sin(th) * np.sin(ph) * nrm
    return x / 10.0  # Å → nm


def write_dataset(path, xyz_nm, dt_ps=40.0, name="toy"):
    """A minimal hessid dataset HDF5 (docs/architecture.md) holding only the CG part."""
    with h5py.File(path, "w") as f:
        f["cg/coordinates"] = xyz_nm * 10.0  # Å
        f["cg/bead_types"] = np.arange(xyz_nm.shape[1]) % 3
        f["time"] = dt_ps * np.arange(len(xyz_nm), dtype=np.float64)
        f.attrs["name"] = name
        f.attrs["temperature"] = 300.0
    return path
