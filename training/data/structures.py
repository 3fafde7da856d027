"""All-atom starting structures: from a sequence (PeptideBuilder + pdbfixer) or a PDB file.

A :class:`Structure` holds an OpenMM ``Topology`` and positions in Å (hessid's unit; the
conversion to OpenMM's nm happens in :meth:`Structure.positions_nm`). ``hessid data build``
calls :func:`build_structure`, which writes ``./<name>/<name>.pdb``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm.unit as u
import PeptideBuilder
from Bio.PDB import PDBIO
from openmm.app import Modeller, PDBFile, PDBxFile
from pdbfixer import PDBFixer
from PeptideBuilder import Geometry

from hessid.units import length_angstrom_to_nm, length_nm_to_angstrom

#: one-letter → three-letter codes of the 20 standard amino acids
ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip

#: residue names treated as ions when stripping a PDB
ION_NAMES = frozenset(
    {"NA", "CL", "K", "MG", "CA", "ZN", "LI", "RB", "CS", "F", "BR", "I", "SOD", "CLA", "POT"}
)
#: residue names treated as water
WATER_NAMES = frozenset({"HOH", "WAT", "H2O", "TIP3", "TIP", "SOL", "T3P", "SPC"})


@dataclass
class Structure:
    """An all-atom structure.

    Attributes:
        topology: ``openmm.app.Topology`` (residues, atoms, bonds).
        positions: (N, 3) float64, Å.
        source: where it came from (sequence or file path), for messages and attributes.
    """

    topology: object
    positions: np.ndarray
    source: str = ""

    @property
    def n_atoms(self) -> int:
        """Number of atoms N."""
        return int(self.positions.shape[0])

    def positions_nm(self) -> np.ndarray:
        """Positions (N, 3) float64 in nm (the OpenMM boundary)."""
        return length_angstrom_to_nm(np.asarray(self.positions, dtype=np.float64))

    def to_pdb(self) -> str:
        """PDB text of the structure (OpenMM writer, ids kept, CONECT records for bonds)."""

        out = io.StringIO()
        PDBFile.writeFile(self.topology, self.positions_nm() * u.nanometer, out, keepIds=True)
        return out.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_pdb` to ``path`` (parents created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_pdb())
        return path


def positions_angstrom(positions) -> np.ndarray:
    """(N, 3) float64 Å of an OpenMM position ``Quantity`` (any length unit)."""
    return length_nm_to_angstrom(
        np.asarray(positions.value_in_unit(u.nanometer), dtype=np.float64)
    )


def structure_from_pdb_text(text: str, source: str = "") -> Structure:
    """Parse PDB text with OpenMM (no fixing). Positions in Å.

    Raises:
        ValueError: the text holds no atoms.
    """

    pdb = PDBFile(io.StringIO(text))
    pos = positions_angstrom(pdb.getPositions())
    if pos.shape[0] == 0:
        raise ValueError(f"{source or 'PDB text'}: no atoms")
    return Structure(pdb.topology, pos, source)


def build_from_sequence(
    sequence: str, phi: float = -75.0, psi: float = 145.0, ph: float = 7.0
) -> Structure:
    """Build a linear peptide from its one-letter sequence.

    PeptideBuilder places the heavy backbone and side chains with every residue at (φ, ψ)
    (default polyproline-II, −75°/145°, a clash-free extended start; minimise before MD), adds
    the C-terminal OXT, and pdbfixer adds missing heavy atoms and hydrogens at ``ph``
    (zwitterionic termini).

    Args:
        sequence: one-letter codes of standard amino acids, e.g. ``"GYDPETGTWG"``.
        phi, psi: backbone dihedrals in degrees.
        ph: protonation pH for pdbfixer.

    Returns:
        :class:`Structure` with positions in Å.

    Raises:
        ValueError: empty sequence or a letter that is not a standard amino acid.
    """

    seq = sequence.strip().upper()
    if not seq:
        raise ValueError("empty sequence")
    bad = sorted({c for c in seq if c not in ONE_TO_THREE})
    if bad:
        raise ValueError(
            f"sequence {sequence!r}: {bad} are not one-letter codes of standard amino acids"
        )
    geos = []
    for c in seq:
        g = Geometry.geometry(c)
        g.phi, g.psi_im1 = float(phi), float(psi)
        geos.append(g)
    structure = PeptideBuilder.make_structure_from_geos(geos)
    PeptideBuilder.add_terminal_OXT(structure)
    out = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(out)
    return _fix(out.getvalue(), ph=ph, source=f"sequence:{seq}")


def _fix(text: str, ph: float, source: str) -> Structure:
    fixer = PDBFixer(pdbfile=io.StringIO(text))
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # never invent unresolved loops silently
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(ph)
    return Structure(fixer.topology, positions_angstrom(fixer.positions), source)


def load_pdb(
    path: str | Path,
    keep_water: bool = False,
    keep_ions: bool = False,
    fix: bool = True,
    ph: float = 7.0,
) -> Structure:
    """Load a PDB (or PDBx/mmCIF) file, strip or keep waters/ions, optionally fix it.

    Args:
        path: structure file.
        keep_water: keep water molecules (default: strip them).
        keep_ions: keep monatomic ions (default: strip them). Other heterogens (ligands) are
            always removed when anything is stripped, since amber14 has no parameters for them.
        fix: run pdbfixer (nonstandard residues → standard, missing heavy atoms, hydrogens at
            ``ph``). Missing residues (gaps) are reported by pdbfixer but never built.
        ph: protonation pH.

    Returns:
        :class:`Structure`, positions in Å.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no atoms.
    """

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    reader = PDBxFile if path.suffix.lower() in {".cif", ".mmcif", ".pdbx"} else PDBFile
    pdb = reader(str(path))
    modeller = Modeller(pdb.topology, pdb.positions)
    drop = []
    for res in modeller.topology.residues():
        name = res.name.upper()
        if (name in WATER_NAMES and not keep_water) or (name in ION_NAMES and not keep_ions):
            drop.append(res)
        elif name not in WATER_NAMES and name not in ION_NAMES and not (keep_water and keep_ions):
            # other heterogens (ligands) go when stripping; keep standard/known residues
            if not _is_polymer(res):
                drop.append(res)
    if drop:
        modeller.delete(drop)
    if modeller.topology.getNumAtoms() == 0:
        raise ValueError(f"{path}: no atoms left after stripping waters/ions")
    s = Structure(modeller.topology, positions_angstrom(modeller.positions), str(path))
    if not fix:
        return s
    return _fix(s.to_pdb(), ph=ph, source=str(path))


def _is_polymer(residue) -> bool:
    names = {a.name for a in residue.atoms()}
    return {"N", "CA", "C"} <= names or {"P", "O5'"} <= names or residue.name in {"ACE", "NME"}


def build_structure(
    name: str,
    sequence: str | None = None,
    pdb: str | Path | None = None,
    out_dir: str | Path = ".",
    keep_water: bool = False,
    keep_ions: bool = False,
    phi: float = -75.0,
    psi: float = 145.0,
    ph: float = 7.0,
) -> Path:
    """Build or load a structure and write ``<out_dir>/<name>/<name>.pdb`` (``hessid data build``).

    Exactly one of ``sequence`` / ``pdb``. Returns the written path.

    Raises:
        ValueError: both or neither of ``sequence`` and ``pdb``; bad sequence; empty file.
        FileNotFoundError: ``pdb`` does not exist.
    """
    if (sequence is None) == (pdb is None):
        raise ValueError("give exactly one of sequence or pdb")
    if sequence is not None:
        s = build_from_sequence(sequence, phi=phi, psi=psi, ph=ph)
    else:
        s = load_pdb(pdb, keep_water=keep_water, keep_ions=keep_ions, ph=ph)
    return s.save(Path(out_dir) / name / f"{name}.pdb")
