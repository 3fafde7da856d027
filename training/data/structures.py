"""All-atom starting structures: from a sequence (PeptideBuilder + pdbfixer) or a PDB file.

A :class:`Structure` holds an OpenMM ``Topology`` and positions in Å (hessid's unit; the
conversion to OpenMM's nm happens in :meth:`Structure.positions_nm`). ``hessid data build``
calls :func:`build_structure`, which writes ``./<name>/<name>.pdb``.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as u
import PeptideBuilder
from Bio.PDB import PDBIO
from openmm.app import Modeller, PDBFile, PDBxFile, element
from pdbfixer import PDBFixer
from pdbfixer.pdbfixer import substitutions as PDBFIXER_SUBSTITUTIONS
from PeptideBuilder import Geometry

from hessid.training.data.io import check_dataset_name, remove_new_folder
from hessid.units import length_angstrom_to_nm, length_nm_to_angstrom

log = logging.getLogger(__name__)

#: default seed of the random numbers used while building (pdbfixer's and OpenMM Modeller's
#: hydrogen and missing-atom placement): fixed and non-zero, so a build is reproducible
DEFAULT_BUILD_SEED = 2024

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
#: residue names amber14 has templates for (standard residues, protonation variants, caps)
KNOWN_RESIDUES = frozenset(ONE_TO_THREE.values()) | frozenset(
    {"HID", "HIE", "HIP", "CYX", "CYM", "ASH", "GLH", "LYN", "ACE", "NME", "NH2"})


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
    sequence: str, phi: float = -75.0, psi: float = 145.0, ph: float = 7.0,
    seed: int = DEFAULT_BUILD_SEED,
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
        seed: seed of the hydrogen placement (:func:`seed_build_rngs`).

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
    return _fix(out.getvalue(), ph=ph, source=f"sequence:{seq}", seed=seed)


def seed_build_rngs(seed: int) -> None:
    """Seed the generators pdbfixer and OpenMM's ``Modeller`` draw from while placing missing
    atoms and hydrogens: Python's ``random`` (``Modeller.addHydrogens`` starts hydrogens at
    random offsets) and numpy's global generator."""
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)  # noqa: NPY002 - the global generator is what is seeded


def _fix(text: str, ph: float, source: str, seed: int = DEFAULT_BUILD_SEED) -> Structure:
    """pdbfixer on PDB text, reproducibly: the build RNGs are seeded (:func:`seed_build_rngs`),
    the minimisations that relax added atoms run on the Reference platform (deterministic; the
    CPU platform with several threads is not) and ``addMissingAtoms`` gets ``seed``."""
    seed_build_rngs(seed)
    fixer = PDBFixer(pdbfile=io.StringIO(text), platform=openmm.Platform.getPlatformByName("Reference"))
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # never invent unresolved loops silently
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=int(seed))
    fixer.addMissingHydrogens(ph)
    return Structure(fixer.topology, positions_angstrom(fixer.positions), source)


def _check_element_column(path: Path) -> None:
    """Refuse an ATOM/HETATM record whose element column (77-78) is not an element symbol:
    OpenMM would silently guess the element from the atom name instead.

    Raises:
        ValueError: names the file, line, atom and symbol.
    """
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.startswith(("ATOM", "HETATM")) or len(line) < 77:
            continue
        symbol = line[76:78].strip()
        if not symbol:
            continue
        try:
            element.Element.getBySymbol(symbol)
        except KeyError:
            raise ValueError(f"{path}: line {number}: atom {line[12:16].strip()!r} has element {symbol!r}, "
                             "which is not an element symbol (columns 77-78)") from None


def _read_structure_file(path: Path):
    """OpenMM's reader for ``path`` (PDBx/mmCIF by suffix, else PDB), with its errors turned
    into one line naming the file; atoms whose element is unknown are refused (OpenMM leaves
    them without element, and pdbfixer/the force field would treat them as something else).

    Raises:
        ValueError: unreadable, empty, or an atom without a known element.
    """
    reader = PDBxFile if path.suffix.lower() in {".cif", ".mmcif", ".pdbx"} else PDBFile
    try:
        pdb = reader(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenMM raises IndexError/KeyError/... on bad text
        raise ValueError(f"{path}: not a readable {'mmCIF' if reader is PDBxFile else 'PDB'} file "
                         f"({type(exc).__name__}: {exc})") from exc
    if pdb.topology.getNumAtoms() == 0:
        raise ValueError(f"{path}: no atoms (no ATOM/HETATM records)")
    if reader is PDBFile:
        _check_element_column(path)
    for atom in pdb.topology.atoms():
        if atom.element is None:
            r = atom.residue
            raise ValueError(f"{path}: atom {atom.name!r} (serial {atom.id}) of residue {r.name} {r.id} "
                             f"chain {r.chain.id} has no known element (check the element column, "
                             "columns 77-78)")
    return pdb


def load_pdb(
    path: str | Path,
    keep_water: bool = False,
    keep_ions: bool = False,
    fix: bool = True,
    ph: float = 7.0,
    drop_unknown: bool = False,
    seed: int = DEFAULT_BUILD_SEED,
) -> Structure:
    """Load a PDB (or PDBx/mmCIF) file, strip or keep waters/ions, optionally fix it.

    Args:
        path: structure file.
        keep_water: keep water molecules (default: strip them).
        keep_ions: keep monatomic ions (default: strip them).
        fix: run pdbfixer (nonstandard residues pdbfixer knows → standard, missing heavy atoms,
            hydrogens at ``ph``). Missing residues (gaps) are reported by pdbfixer but never built.
        ph: protonation pH.
        drop_unknown: drop residues amber14 has no template for and pdbfixer cannot replace
            (ligands, unknown residues), logging each; default: refuse the file naming them.
        seed: seed of the hydrogen placement (:func:`seed_build_rngs`).

    Returns:
        :class:`Structure`, positions in Å.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or empty file, an atom without a known element, unknown residues
            without ``drop_unknown``, or no atoms left after stripping (one line naming the file).
    """

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a structure file")
    pdb = _read_structure_file(path)
    modeller = Modeller(pdb.topology, pdb.positions)
    drop, unknown = [], []
    for res in modeller.topology.residues():
        name = res.name.upper()
        if name in WATER_NAMES:
            if not keep_water:
                drop.append(res)
        elif name in ION_NAMES:
            if not keep_ions:
                drop.append(res)
        elif name not in KNOWN_RESIDUES and name not in PDBFIXER_SUBSTITUTIONS:
            unknown.append(res)
    if unknown:
        names = ", ".join(f"{r.name} {r.id} (chain {r.chain.id})" for r in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        if not drop_unknown:
            raise ValueError(f"{path}: residues without an amber14 template (ligands or unknown "
                             f"residues): {names}{more}; remove them or pass --drop-unknown")
        log.warning("%s: dropped residues without an amber14 template: %s%s", path, names, more)
        drop += unknown
    if drop:
        modeller.delete(drop)
    if modeller.topology.getNumAtoms() == 0:
        raise ValueError(f"{path}: no atoms left after stripping waters/ions/unknown residues")
    s = Structure(modeller.topology, positions_angstrom(modeller.positions), str(path))
    if not fix:
        return s
    return _fix(s.to_pdb(), ph=ph, source=str(path), seed=seed)


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
    drop_unknown: bool = False,
    seed: int = DEFAULT_BUILD_SEED,
    overwrite: bool = False,
) -> Path:
    """Build or load a structure and write ``<out_dir>/<name>/<name>.pdb`` (``hessid data build``).

    Exactly one of ``sequence`` / ``pdb``. The same arguments give the same file (hydrogen
    placement seeded by ``seed``, :func:`seed_build_rngs`). Nothing is written when anything
    fails (the folder is created only for the final write).

    Returns:
        the written path.

    Raises:
        ValueError: ``name`` not a plain folder name; both or neither of ``sequence`` and ``pdb``;
            bad sequence; unreadable, empty or unknown-element file; unknown residues (see
            :func:`load_pdb`); ``ph`` outside [0, 14].
        FileNotFoundError: ``pdb`` does not exist.
        FileExistsError: ``<name>.pdb`` exists and not ``overwrite``.
    """
    check_dataset_name(name)
    if (sequence is None) == (pdb is None):
        raise ValueError("give exactly one of --sequence or --pdb")
    if not 0.0 <= float(ph) <= 14.0:
        raise ValueError(f"--ph={ph}: expected a pH in [0, 14]")
    out = Path(out_dir) / name / f"{name}.pdb"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (use --overwrite to replace it)")
    if sequence is not None:
        s = build_from_sequence(sequence, phi=phi, psi=psi, ph=ph, seed=seed)
    else:
        s = load_pdb(pdb, keep_water=keep_water, keep_ions=keep_ions, ph=ph,
                     drop_unknown=drop_unknown, seed=seed)
    existed = out.parent.exists()
    try:
        return s.save(out)
    except BaseException:
        remove_new_folder(out.parent, existed)
        raise
