"""Synthetic CG test data: compact Cα chains, small dataset files in the contract layout, and
:class:`HarmonicChainPotential`, a harmonic Cα-chain potential with the ``CGPotential`` signature.

Used by the training tests and ``benchmarks/hvp_step.py``; not a physical model. The AA system
of :func:`write_synthetic_dataset` is a Cα + side-bead chain held by harmonic springs, so its
forces and exact Term 1 (``P ∇²H Pᵀ v``, docs/identities.md §5) are available in closed form.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from hessid.probes import ProbeSpec

__all__ = ["HarmonicChainPotential", "compact_chain", "spring_network", "write_noisy_chain_dataset",
           "write_synthetic_dataset"]


def compact_chain(n_beads: int, n_frames: int = 1, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Compact self-avoiding Cα-like chains (protein density), Å.

    A confined random walk with 3.8 Å bonds, no two beads closer than 4 Å, inside a sphere of
    radius ``2.8 n^{1/3} + 2`` Å; frames are the base chain plus Gaussian noise.

    Args:
        n_beads: beads per chain (≥ 2).
        n_frames: frames T.
        seed: numpy seed.
        noise: standard deviation of the per-frame displacement, Å.

    Returns:
        (T, n, 3) float64, Å.

    Raises:
        RuntimeError: no self-avoiding compact chain of ``n_beads`` beads was found.
    """
    rng = np.random.default_rng(seed)
    radius = 2.8 * n_beads ** (1 / 3) + 2.0
    for _attempt in range(1000):
        x = np.zeros((n_beads, 3))
        ok = True
        for i in range(1, n_beads):
            for _try in range(200):
                step = rng.standard_normal(3)
                c = x[i - 1] + 3.8 * step / np.linalg.norm(step)
                if np.linalg.norm(c) < radius and (
                    i < 2 or np.linalg.norm(x[: i - 1] - c, axis=1).min() > 4.0
                ):
                    x[i] = c
                    break
            else:
                ok = False
                break
        if ok:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"could not grow a compact chain of {n_beads} beads")
    x -= x.mean(0)
    return x[None] + noise * rng.standard_normal((n_frames, n_beads, 3))


def spring_network(reference: np.ndarray, cutoff: float = 8.0, k: float = 5.0):
    """Harmonic spring network energy of a reference structure (AA stand-in).

    Args:
        reference: (N, 3) Å.  cutoff: Å.  k: kcal/mol/Å².

    Returns:
        callable ``energy(r (S, N, 3) Å) -> (S,) kcal/mol`` (torch, differentiable).
    """
    ref = torch.as_tensor(reference, dtype=torch.float64)
    i, j = torch.triu_indices(len(ref), len(ref), 1)
    r0 = (ref[i] - ref[j]).norm(dim=-1)
    keep = r0 < cutoff
    i, j, r0 = i[keep], j[keep], r0[keep]

    def energy(r: torch.Tensor) -> torch.Tensor:
        d = (r[:, i] - r[:, j]).norm(dim=-1)  # (S, n_springs)
        return 0.5 * k * ((d - r0) ** 2).sum(-1)

    return energy


def _ca_selection(n_beads: int) -> np.ndarray:
    """Selection weights S (n, 2n) float64 of the Cα + side-bead chains: bead i is atom 2i."""
    S = np.zeros((n_beads, 2 * n_beads))
    S[np.arange(n_beads), 2 * np.arange(n_beads)] = 1.0
    return S


def _write_chain_file(h5: h5py.File, *, forcefield: str, temperature: float, seed: int, name: str,
                      coordinates: np.ndarray, forces: np.ndarray, potential_energy: np.ndarray,
                      frame_id: np.ndarray, weights: np.ndarray, projector: np.ndarray,
                      cg_coordinates: np.ndarray, cg_forces: np.ndarray, bead_types: np.ndarray,
                      vocabulary: list[str]) -> h5py.Group:
    """Write what both synthetic files share: root attributes, the AA arrays, and ``cg/`` with
    the map, mapped arrays, bead types and consecutive-bead bonds; returns the ``cg`` group."""
    n_frames, n_beads = cg_coordinates.shape[:2]
    h5.attrs.update(dict(length_unit="angstrom", energy_unit="kcal/mol",
                         temperature=float(temperature), forcefield=forcefield,
                         solvent="none", platform="synthetic", seed=int(seed),
                         versions=json.dumps({}), name=name))
    h5.create_dataset("topology", data="synthetic")
    h5["coordinates"], h5["forces"] = coordinates, forces
    h5["potential_energy"] = potential_energy
    h5["time"] = np.arange(n_frames, dtype=np.float64)
    h5["frame_id"] = frame_id
    g = h5.create_group("cg")
    g["weights"], g["projector"] = weights, projector
    g["coordinates"], g["forces"] = cg_coordinates, cg_forces
    bt = g.create_dataset("bead_types", data=bead_types)
    bt.attrs["bead_vocabulary"] = json.dumps(vocabulary)
    g["bonds"] = np.stack([np.arange(n_beads - 1), np.arange(1, n_beads)], 1).astype(np.int64)
    return g


def write_synthetic_dataset(path: str | Path, n_beads: int = 8, n_frames: int = 12,
                            seed: int = 0, probe_kind: str = "gaussian", n_probes: int = 2,
                            probe_seed: int = 7, temperature: float = 300.0,
                            frame_id_offset: int = 0, broken_projector: bool = False,
                            name: str | None = None, full_block: bool = False) -> Path:
    """Write a small dataset file in the contract layout (docs/architecture.md).

    AA system: per residue a Cα atom and a side atom 1.5 Å away, N = 2n; AA energy a spring
    network (:func:`spring_network`) of frame 0; frames are frame 0 plus 0.15 Å noise. Cα
    selection map (``Q = S``). Term 1 is exact: ``Q ∇²H(r_t) Qᵀ v`` by autograd, with the
    probes ``draw_probes(kind, probe_seed, [frame_id], k, 3n)``.

    Args:
        path: file to write.  n_beads, n_frames: sizes.  seed: structure/noise seed.
        probe_kind, n_probes, probe_seed: probe spec stored in the ``cg/hvp_term1`` attrs
            (``ProbeSpec(...).to_attrs(dim=3n)``).
        temperature: K (root attribute).
        frame_id_offset: first global frame id.
        broken_projector: store Q = 1.1 S (violates Q Sᵀ = I; the verification gate must refuse).
        name: root ``name`` attribute (default: the file stem).
        full_block: also store ``cg/hessian_block`` (T, 3n, 3n) = Q ∇²H Qᵀ (exact).

    Returns:
        the path.

    Raises:
        ValueError: unknown probe kind or ``n_probes`` < 1 (:class:`hessid.probes.ProbeSpec`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    ca = compact_chain(n_beads, 1, seed=seed, noise=0.0)[0]
    side = rng.standard_normal((n_beads, 3))
    side = ca + 1.5 * side / np.linalg.norm(side, axis=1, keepdims=True)
    ref = np.stack([ca, side], 1).reshape(2 * n_beads, 3)  # (N, 3): atom 2i = Cα of residue i
    N = 2 * n_beads
    coords = ref[None] + 0.15 * rng.standard_normal((n_frames, N, 3))  # (T, N, 3)
    energy_fn = spring_network(ref)
    r = torch.as_tensor(coords).requires_grad_(True)
    e = energy_fn(r)
    (g,) = torch.autograd.grad(e.sum(), r)
    forces = -g.numpy()
    S = _ca_selection(n_beads)
    Q = 1.1 * S if broken_projector else S.copy()
    frame_id = np.arange(n_frames, dtype=np.int64) + frame_id_offset
    spec = ProbeSpec(kind=probe_kind, seed=int(probe_seed), n_probes=int(n_probes))
    probes = spec.draw(frame_id, 3 * n_beads)  # (T, k, 3n)
    probes = probes.reshape(n_frames, n_probes, n_beads, 3).numpy()  # (T, k, n, 3)
    Qt = torch.as_tensor(Q)
    term1 = np.zeros((n_frames, n_probes, n_beads, 3))
    for t in range(n_frames):
        x = torch.as_tensor(coords[t : t + 1]).requires_grad_(True)
        (gt,) = torch.autograd.grad(energy_fn(x).sum(), x, create_graph=True)
        for m in range(n_probes):
            u = torch.einsum("nN,nc->Nc", Qt, torch.as_tensor(probes[t, m]))  # (N, 3) Pᵀ v
            (hu,) = torch.autograd.grad(gt, x, grad_outputs=u[None], retain_graph=True)
            term1[t, m] = torch.einsum("nN,Nc->nc", Qt, hu[0]).numpy()
    types = np.arange(n_beads, dtype=np.int64) % 3
    with h5py.File(path, "w") as h5:
        g = _write_chain_file(
            h5, forcefield="spring-network", temperature=temperature, seed=seed, name=name or path.stem,
            coordinates=coords, forces=forces, potential_energy=e.detach().numpy(), frame_id=frame_id,
            weights=S, projector=Q, cg_coordinates=np.einsum("nN,TNc->Tnc", S, coords),
            cg_forces=np.einsum("nN,TNc->Tnc", Q, forces), bead_types=types,
            vocabulary=["ALA", "GLY", "TRP"])
        ds = g.create_dataset("hvp_term1", data=term1)
        ds.attrs.update(spec.to_attrs(dim=3 * n_beads))
        ds.attrs.update(dict(epsilon_nm=0.0, platform="exact", precision="double",
                             forcefield_hash="synthetic"))
        g["hvp_term1_done"] = np.ones(n_frames, dtype=np.uint8)
        if full_block:
            Qf = torch.kron(Qt, torch.eye(3, dtype=torch.float64))  # (3n, 3N)
            blocks = []
            for t in range(n_frames):
                H = torch.autograd.functional.hessian(
                    lambda x: energy_fn(x.reshape(1, N, 3)).sum(), torch.as_tensor(coords[t]).reshape(-1))
                blocks.append((Qf @ H @ Qf.T).numpy())  # (3n, 3n)
            g["hessian_block"] = np.stack(blocks)
            g["hessian_block_done"] = np.ones(n_frames, dtype=np.uint8)
        h5["synthetic/reference"] = ref  # (N, 3) Å: spring_network(reference) is the AA energy
    return path


class HarmonicChainPotential(torch.nn.Module):
    """Harmonic Cα bonds and angles, ``U = Σ ½k_b(|r_{i+1}−r_i| − b0)² + Σ ½k_θ(θ_i − θ0)²``.

    A stand-in for a trained ``CGPotential`` (tests, benchmark, demo fallback). Beads of one
    structure are contiguous in the flattened graph (TorchMD-Net convention); bonds join
    consecutive beads with the same ``batch`` index, angles consecutive triples.

    Args:
        bond_k: bond force constant, kcal/mol/Å².
        bond_length: equilibrium bond b0, Å (3.8 for Cα–Cα).
        angle_k: angle force constant, kcal/mol/rad² (0 disables angles).
        angle: equilibrium angle θ0, radians.

    ``forward(positions (A, 3) Å, bead_types (A,) long, batch (A,) long) -> (B,) kcal/mol``
    with ``B = batch[-1] + 1`` (batch sorted, as the contract requires); bead types unused.
    """

    def __init__(self, bond_k: float = 100.0, bond_length: float = 3.8, angle_k: float = 10.0,
                 angle: float = 1.7):
        super().__init__()
        self.register_buffer("bond_k", torch.tensor(float(bond_k), dtype=torch.float64))
        self.register_buffer("bond_length", torch.tensor(float(bond_length), dtype=torch.float64))
        self.register_buffer("angle_k", torch.tensor(float(angle_k), dtype=torch.float64))
        self.register_buffer("angle", torch.tensor(float(angle), dtype=torch.float64))

    def forward(self, positions: torch.Tensor, bead_types: torch.Tensor,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        """Energy (B,) kcal/mol of positions (A, 3) Å, graph-style (``CGPotential`` signature)."""
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        n_structures = int(batch[-1]) + 1 if batch.numel() else 0
        dtype = positions.dtype
        energy = positions.new_zeros(n_structures)
        d = positions[1:] - positions[:-1]  # (A-1, 3)
        same = batch[1:] == batch[:-1]  # (A-1,)
        length = d.norm(dim=-1)
        e_bond = 0.5 * self.bond_k.to(dtype) * (length - self.bond_length.to(dtype)) ** 2
        energy = energy.index_add(0, batch[:-1], torch.where(same, e_bond, 0.0))
        if positions.shape[0] >= 3 and float(self.angle_k) != 0.0:
            u, v = -d[:-1], d[1:]  # (A-2, 3) vectors from the middle bead
            cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
            theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
            same3 = same[1:] & same[:-1]  # (A-2,)
            e_angle = 0.5 * self.angle_k.to(dtype) * (theta - self.angle.to(dtype)) ** 2
            energy = energy.index_add(0, batch[:-2], torch.where(same3, e_angle, 0.0))
        return energy


def write_noisy_chain_dataset(path: str | Path, n_beads: int = 5, n_frames: int = 64, seed: int = 0,
                              noise: float = 0.3, force_noise: float = 2.0, temperature: float = 300.0,
                              potential: torch.nn.Module | None = None, name: str | None = None) -> Path:
    """Write a CG-only toy dataset whose conditional force covariance is known exactly.

    AA system: per bead a Cα atom and a side atom 1.5 Å away (N = 2n, as
    :func:`write_synthetic_dataset`, so the verification gate has atoms to eliminate), Cα
    selection map ``Q = S``; the side atoms carry zero force. Cα coordinates
    ``R_t = compact_chain(n, T, seed, noise)`` (Å); Cα forces ``P f_t = F(R_t) + σ ε_t`` with
    ``F = −∇U`` of ``potential`` (default :class:`HarmonicChainPotential()`), ε_t i.i.d.
    standard normal (T, n, 3) from ``numpy.random.default_rng([seed, 7])`` and σ =
    ``force_noise``. Hence ``E[P f | R] = F(R)`` and ``Cov(P f | R) = σ² I_{3n}`` exactly
    (``β tr Cov = 3nβσ²``): the test system for estimators of Term 2's covariance
    (docs/training.md "Cross-fitted residual"). Not a Boltzmann sample; no Term 1.

    Args:
        path: file to write.  n_beads, n_frames: n, T.  seed: structure and noise seed.
        noise: Å, per-frame displacement of the chain.  force_noise: σ, kcal/mol/Å.
        temperature: K (root attribute).  potential: the mean-force potential (``CGPotential``
            signature), None: ``HarmonicChainPotential()``.  name: root ``name`` (default: stem).

    Returns:
        the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pot = HarmonicChainPotential() if potential is None else potential
    R = compact_chain(n_beads, n_frames, seed=seed, noise=noise)  # (T, n, 3)
    x = torch.as_tensor(R.reshape(-1, 3)).requires_grad_(True)
    batch = torch.arange(n_frames).repeat_interleave(n_beads)
    energy = pot(x, torch.zeros(len(x), dtype=torch.long), batch)
    (g,) = torch.autograd.grad(energy.sum(), x)
    mean_force = -g.detach().numpy().reshape(n_frames, n_beads, 3)
    f = mean_force + float(force_noise) * np.random.default_rng([seed, 7]).standard_normal(R.shape)
    side = np.random.default_rng([seed, 8]).standard_normal((n_beads, 3))
    side = R + 1.5 * (side / np.linalg.norm(side, axis=1, keepdims=True))[None]  # (T, n, 3)
    coords = np.stack([R, side], 2).reshape(n_frames, 2 * n_beads, 3)  # atom 2i = Cα of bead i
    forces = np.stack([f, np.zeros_like(f)], 2).reshape(n_frames, 2 * n_beads, 3)
    S = _ca_selection(n_beads)
    with h5py.File(path, "w") as h5:
        _write_chain_file(
            h5, forcefield="noisy-chain", temperature=temperature, seed=seed, name=name or path.stem,
            coordinates=coords, forces=forces, potential_energy=energy.detach().numpy(),
            frame_id=np.arange(n_frames, dtype=np.int64), weights=S, projector=S.copy(),
            cg_coordinates=R, cg_forces=f, bead_types=np.zeros(n_beads, dtype=np.int64),
            vocabulary=["ALA"])
        h5["synthetic/mean_force"] = mean_force  # (T, n, 3) kcal/mol/Å: E[P f | R]
    return path
