"""Gaussian elastic-network model of a real structure: an exact test of a linear CG map.

An anisotropic elastic network (springs of constant ``spring`` between atoms closer than
``cutoff``) plus a weak harmonic tether of every atom to its reference position is a Gaussian
AA model ``H = ½ (r − r₀)ᵀ K (r − r₀)`` with SPD K (the tether removes the six rigid-body zero
modes). For any linear map ``R = M r`` its CG Hessian is exact (docs/identities.md §7.1):

    𝓗 = S⁻¹ = (M K⁻¹ Mᵀ)⁻¹,        F(R) = −S⁻¹ (R − M r₀)

and the identity (docs/identities.md, eq. (2.3)) can be evaluated with the closed-form Gaussian
moments of the constrained ensemble (mean ``μ = r₀ + K⁻¹MᵀS⁻¹(R − Mr₀)``, covariance
``Σ = β⁻¹(K⁻¹ − K⁻¹MᵀS⁻¹MK⁻¹)``):

    Term 1 = P K Pᵀ,    Cov(P f) = P K Σ K Pᵀ,    𝓗 = Term 1 − β Cov(P f),   F = −P K (μ − r₀)

Both agree with the exact answer iff ``P Mᵀ = I`` — so this checks a user's map *and*
projector on their own protein in seconds. Also a minimal PDB reader (no mdtraj/OpenMM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hessid.maps import LinearMap
from hessid.units import beta as beta_of_temperature
from hessid.verification.results import (
    DETECTION_THRESHOLD,
    DTYPE,
    ELASTIC_TOL,
    PROJECTOR_TOL,
    CheckResult,
    linear_negative_control_errors,
    relative_error,
)

__all__ = [
    "ELEMENT_MASSES",
    "PDBStructure",
    "read_pdb",
    "builtin_structure_path",
    "elastic_network_matrix",
    "gaussian_identity",
    "check_linear_map_on_structure",
    "structure_map",
    "check_structure_file",
]

#: standard atomic weights, g/mol (enough for proteins, nucleic acids and common ions)
ELEMENT_MASSES = {
    "H": 1.008, "D": 2.014, "C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06, "P": 30.974,
    "SE": 78.971, "F": 18.998, "CL": 35.45, "BR": 79.904, "I": 126.90, "NA": 22.990,
    "K": 39.098, "MG": 24.305, "CA": 40.078, "ZN": 65.38, "FE": 55.845, "MN": 54.938,
    "CU": 63.546,
}

@dataclass(frozen=True)
class PDBStructure:
    """Atoms of the first model of a PDB file.

    Attributes:
        positions: (N, 3) float64, Å.
        names: atom names, length N ("CA", "N", ...).
        elements: element symbols, length N (upper case).
        residues: residue keys (chain, resSeq, iCode), length N.
        residue_names: residue names, length N.
    """

    positions: np.ndarray
    names: tuple[str, ...]
    elements: tuple[str, ...]
    residues: tuple[tuple[str, int, str], ...]
    residue_names: tuple[str, ...]

    @property
    def n_atoms(self) -> int:
        return len(self.names)

    def masses(self) -> np.ndarray:
        """(N,) atomic masses, g/mol, from :data:`ELEMENT_MASSES`.

        Raises:
            ValueError: an element is not in the table.
        """
        missing = sorted({e for e in self.elements if e not in ELEMENT_MASSES})
        if missing:
            raise ValueError(f"no mass for element(s) {missing}; known: {sorted(ELEMENT_MASSES)}")
        return np.array([ELEMENT_MASSES[e] for e in self.elements])

    def ca_indices(self) -> list[int]:
        """Indices of the Cα atoms (atom name CA in a residue that is not a calcium ion)."""
        return [i for i, (n, e) in enumerate(zip(self.names, self.elements, strict=True))
                if n == "CA" and e == "C"]

    def residue_groups(self) -> list[list[int]]:
        """Atom indices of each residue, in file order."""
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(self.residues):
            groups.setdefault(key, []).append(i)
        return list(groups.values())


def _element(line: str, name: str) -> str:
    el = line[76:78].strip().upper() if len(line) >= 78 else ""
    if el:
        return el
    letters = "".join(c for c in name if c.isalpha()).upper()
    return letters[:2] if letters[:2] in ELEMENT_MASSES and len(name) == 4 else letters[:1]


def read_pdb(path, hydrogens: bool = True, waters: bool = False) -> PDBStructure:
    """Read ATOM/HETATM records of the first MODEL of a PDB file (fixed columns).

    Alternate locations other than blank/'A' are skipped.

    Args:
        path: PDB file.
        hydrogens: keep hydrogen atoms.
        waters: keep HOH/WAT/TIP3 residues.

    Returns:
        :class:`PDBStructure` with positions in Å.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no atoms were read, or a coordinate field is malformed.
    """
    text = Path(path).read_text().splitlines()
    pos, names, elements, residues, resnames = [], [], [], [], []
    for line in text:
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        if line[16] not in (" ", "A"):
            continue
        name = line[12:16].strip()
        resname = line[17:20].strip()
        if not waters and resname in ("HOH", "WAT", "TIP3", "SOL"):
            continue
        el = _element(line, line[12:16])
        if not hydrogens and el in ("H", "D"):
            continue
        try:
            xyz = [float(line[30:38]), float(line[38:46]), float(line[46:54])]
        except ValueError as exc:
            raise ValueError(f"{path}: malformed coordinates in line {line!r}") from exc
        pos.append(xyz)
        names.append(name)
        elements.append(el)
        residues.append((line[21], int(line[22:26]), line[26]))
        resnames.append(resname)
    if not pos:
        raise ValueError(f"{path}: no ATOM/HETATM records read")
    return PDBStructure(np.asarray(pos, dtype=np.float64), tuple(names), tuple(elements),
                        tuple(residues), tuple(resnames))


def builtin_structure_path() -> Path:
    """Path of the shipped villin headpiece (PDB 1VII, 295 heavy atoms, 36 residues)."""
    return Path(__file__).with_name("data") / "villin_1vii_heavy.pdb"


def elastic_network_matrix(positions, cutoff: float = 7.0, spring: float = 1.0,
                           tether: float = 0.05) -> torch.Tensor:
    """Tethered anisotropic elastic-network Hessian K (Gaussian AA model).

    ``H = Σ_{|r⁰_ij| < cutoff} (spring/2)(ûᵢⱼ·(δrᵢ − δrⱼ))² + (tether/2)|δr|²`` in flat form.

    Args:
        positions: reference structure r₀, (N, 3), Å.
        cutoff: contact cutoff, Å.
        spring: spring constant, kcal/mol/Å².
        tether: tether constant, kcal/mol/Å² (> 0: makes K SPD).

    Returns:
        K, (3N, 3N) float64 SPD, kcal/mol/Å², flat index 3i + α.

    Raises:
        ValueError: positions not (N, 3), or non-positive cutoff/spring/tether.
    """
    x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3), got {tuple(x.shape)}")
    if not (cutoff > 0 and spring > 0 and tether > 0):
        raise ValueError("cutoff, spring and tether must be positive")
    N = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]  # (N, N, 3)
    dist = diff.norm(dim=-1)
    contact = (dist < cutoff) & ~torch.eye(N, dtype=torch.bool)
    u = diff / torch.where(contact, dist, torch.ones_like(dist))[..., None]  # (N, N, 3)
    blocks = -spring * contact[..., None, None] * u[..., :, None] * u[..., None, :]  # (N, N, 3, 3)
    diag = -blocks.sum(dim=1)  # (N, 3, 3)
    blocks[torch.arange(N), torch.arange(N)] = diag
    K = blocks.permute(0, 2, 1, 3).reshape(3 * N, 3 * N)  # (3N, 3N)
    return K + tether * torch.eye(3 * N, dtype=DTYPE)


def gaussian_identity(K, M, P, beta: float, displacement=None) -> dict:
    """Exact CG quantities of a Gaussian model and the identity of docs/identities.md, eq. (2.3),
    from its moments.

    Args:
        K: AA Hessian, (D, D) SPD, kcal/mol/Å².
        M: linear map, (d, D). P: projector, (d, D) (not checked here).
        beta: mol/kcal.
        displacement: R − M r₀, (d,), Å (zero if None).

    Returns:
        dict of float64 tensors: ``exact_hessian`` S⁻¹ (d, d); ``term1`` P K Pᵀ;
        ``term2`` −β P K Σ K Pᵀ; ``hessian`` term1 + term2; ``exact_mean_force`` and
        ``mean_force`` (d,) kcal/mol/Å.
    """
    K, M, P = (torch.as_tensor(t, dtype=DTYPE) for t in (K, M, P))
    d = M.shape[0]
    delta = torch.zeros(d, dtype=DTYPE) if displacement is None else torch.as_tensor(displacement, dtype=DTYPE)
    chol = torch.linalg.cholesky(K)
    KinvMt = torch.cholesky_solve(M.T.contiguous(), chol)  # (D, d)  K⁻¹Mᵀ
    S = M @ KinvMt  # (d, d)
    S_inv = torch.linalg.inv(0.5 * (S + S.T))
    KP = K @ P.T  # (D, d)
    # Cov(Pf) = (KPᵀ)ᵀ Σ (KPᵀ) with Σ = β⁻¹(K⁻¹ − K⁻¹MᵀS⁻¹MK⁻¹), never forming the D×D Σ
    KinvKP = torch.cholesky_solve(KP, chol)  # (D, d)  K⁻¹ K Pᵀ
    MKinvKP = M @ KinvKP  # (d, d)
    cov = (KP.T @ KinvKP - MKinvKP.T @ S_inv @ MKinvKP) / beta  # (d, d)
    term1 = P @ KP
    term2 = -beta * cov
    mu_shift = KinvMt @ (S_inv @ delta)  # μ − r₀, (D,)
    return {"exact_hessian": S_inv, "term1": term1, "term2": term2, "hessian": term1 + term2,
            "exact_mean_force": -S_inv @ delta, "mean_force": -(P @ (K @ mu_shift))}


def _map_matrices(cg_map) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    S = torch.as_tensor(cg_map.weights, dtype=DTYPE).contiguous()
    Q = torch.as_tensor(cg_map.projector, dtype=DTYPE).contiguous()
    sd = int(getattr(cg_map, "spatial_dim", 3))
    eye = torch.eye(sd, dtype=DTYPE)
    return S, Q, torch.kron(S, eye), torch.kron(Q, eye)


def check_linear_map_on_structure(positions, cg_map, temperature: float = 300.0, name: str = "",
                                  *, cutoff: float = 7.0, tether: float = 0.05,
                                  seed: int = 0) -> list:
    """Check a linear CG map and its projector on an elastic network of a structure.

    Builds the tethered elastic network of ``positions`` (:func:`elastic_network_matrix`), then
    compares, at a random CG point R = M r₀ + δ (|δ| ~ 0.3 Å): ``Q Sᵀ = I``; the mean force ⟨P f⟩
    with −S⁻¹δ; the Hessian Term 1 − β Cov(P f) with (M K⁻¹ Mᵀ)⁻¹ (docs/identities.md, eqs. (2.3),
    (7.1)); and reports two negative controls (Term 2 sign flipped, Term 1 only) that must be
    detected.

    Args:
        positions: reference structure, (N, 3), Å.
        cg_map: a :class:`hessid.maps.LinearMap` (or any object with ``weights`` S (n, N),
            ``projector`` Q (n, N) and ``spatial_dim`` = 3).
        temperature: K.
        name: system label for the report.
        cutoff, tether: elastic-network parameters (Å; kcal/mol/Å²).
        seed: seed of the random CG displacement δ.

    Returns:
        list of :class:`~hessid.verification.results.CheckResult`.

    Raises:
        ValueError: positions not (N, 3) or inconsistent with the map's number of atoms.
    """
    pos = np.asarray(positions, dtype=np.float64)
    S, Q, M, P = _map_matrices(cg_map)
    if pos.ndim != 2 or pos.shape != (S.shape[1], 3):
        raise ValueError(f"positions must be ({S.shape[1]}, 3) for this map, got {pos.shape}")
    label = name or f"elastic network N={pos.shape[0]}"
    map_label = f"linear n={S.shape[0]}"
    beta = beta_of_temperature(temperature)
    K = elastic_network_matrix(pos, cutoff=cutoff, tether=tether)
    gen = torch.Generator().manual_seed(seed)
    delta = 0.3 * torch.randn(M.shape[0], generator=gen, dtype=DTYPE)
    out = gaussian_identity(K, M, P, beta, delta)
    res_proj = float((Q @ S.T - torch.eye(S.shape[0], dtype=DTYPE)).abs().max())
    rows = [
        CheckResult(label, map_label, "projector Q S^T = I (abs residual)", res_proj,
                    PROJECTOR_TOL, res_proj <= PROJECTOR_TOL),
    ]
    err_f = relative_error(out["mean_force"], out["exact_mean_force"])
    rows.append(CheckResult(label, map_label, "mean force <P f> vs -S^-1 (R - M r0)", err_f,
                            ELASTIC_TOL, err_f <= ELASTIC_TOL))
    err_h = relative_error(out["hessian"], out["exact_hessian"])
    rows.append(CheckResult(label, map_label, "hessian Term1 - beta Cov(Pf) vs (M K^-1 M^T)^-1",
                            err_h, ELASTIC_TOL, err_h <= ELASTIC_TOL,
                            detail=f"|Term1|max={float(out['term1'].abs().max()):.3g}, "
                                   f"|Term2|max={float(out['term2'].abs().max()):.3g}"))
    for qty, e in linear_negative_control_errors(out["term1"], out["term2"], out["exact_hessian"]):
        rows.append(CheckResult(label, map_label, qty, e, DETECTION_THRESHOLD,
                                e > DETECTION_THRESHOLD, negative_control=True))
    return rows


def structure_map(structure: PDBStructure, kind: str = "ca", projector: str = "min_norm"):
    """The Cα (selection) or residue centre-of-mass LinearMap of a structure.

    Args:
        structure: :class:`PDBStructure`.
        kind: ``"ca"`` (selection of Cα atoms; P = M for both projector kinds) or ``"com"``
            (one bead per residue, mass-weighted).
        projector: ``"min_norm"`` or ``"bead_sum"`` (COM maps).

    Returns:
        hessid.maps.LinearMap.

    Raises:
        ValueError: unknown kind, or no Cα atoms.
    """
    if kind == "ca":
        idx = structure.ca_indices()
        if not idx:
            raise ValueError("structure has no CA atoms")
        return LinearMap.selection(idx, structure.n_atoms)
    if kind == "com":
        return LinearMap.center_of_mass(structure.residue_groups(), structure.masses(),
                                        structure.n_atoms, projector=projector)
    raise ValueError(f"map kind must be 'ca' or 'com', got {kind!r}")


def check_structure_file(pdb=None, kind: str = "ca", projector: str = "min_norm",
                         temperature: float = 300.0) -> list:
    """``hessid verify --gaussian``: elastic-network check of a map on a PDB file.

    Args:
        pdb: PDB path; the shipped villin (1VII, heavy atoms) if None.
        kind: ``"ca"`` or ``"com"`` (groups = residues).
        projector: ``"min_norm"`` or ``"bead_sum"``.
        temperature: K.

    Returns:
        list of CheckResult.

    Raises:
        FileNotFoundError, ValueError: unreadable PDB, unknown kind/projector.
    """
    path = Path(pdb) if pdb is not None else builtin_structure_path()
    structure = read_pdb(path)
    cg_map = structure_map(structure, kind, projector)
    label = f"ENM {path.name} ({structure.n_atoms} atoms)"
    rows = check_linear_map_on_structure(structure.positions, cg_map, temperature, name=label)
    return [CheckResult(r.system, f"{kind}/{projector}", r.quantity, r.max_rel_error, r.tolerance,
                        r.passed, r.detail, r.negative_control) for r in rows]
