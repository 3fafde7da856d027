"""The hessid dataset file contract: every HDF5 key, shape, dtype, unit and attribute name.

One HDF5 file per protein, ``./<name>/<name>.h5`` (docs/architecture.md, "Dataset file").
All arrays are in hessid units (Å, kcal/mol, ps, K); OpenMM's nm and kJ/mol are converted
before writing. Shapes use T frames, N atoms, n beads, k probes, d = 3n::

    topology            scalar UTF-8 string      PDB text of the AA system
    coordinates         (T, N, 3) float64        Å
    forces              (T, N, 3) float64        kcal/mol/Å, forces of the saved positions
    potential_energy    (T,) float64             kcal/mol (optional for imported data)
    temperature         (T,) float64             K, thermostat set-point of the frame (version 3)
    time                (T,) float64             ps, strictly increasing within a temperature
    frame_id            (T,) int64               global frame id (probe seeding key), unique
    box                 (T, 3, 3) float64        Å, periodic systems only
    cg/weights, cg/projector        (n, N)       S and Q of the LinearMap
    cg/coordinates, cg/forces       (T, n, 3)    Å; P f in kcal/mol/Å
    cg/bead_types (n,) int64 (attr bead_vocabulary, JSON list), cg/bonds (n_bonds, 2) int64
    cg/hvp_term1 (T, k, n, 3) kcal/mol/Å², cg/hvp_term1_done (T,) uint8
    cg/hessian_block (T, 3n, 3n) kcal/mol/Å², cg/hessian_block_done (T,) uint8   (optional)

The probe attributes of ``cg/hvp_term1`` (``probe_kind``, ``probe_seed``, ``n_probes``,
``probe_key``, ``probe_scale``, ``probe_dim``) are read and written only through
:class:`hessid.probes.ProbeSpec`.

Format version: the root attribute ``format_version`` (int). Files written before it existed
have no such attribute and are read as version 1 (:func:`format_version_of`). Version 2 adds
the per-dataset ``probe_key`` attribute of ``cg/hvp_term1`` (mixed into the probe generator so
two datasets with the same seed and frame ids do not share probes) and requires the root
``temperature`` and ``constraints`` of imported files; a Term 1 without ``probe_key`` (any
version) was computed with key 0 and is read with it, so no migration is needed. Version 3
adds the per-frame ``temperature`` dataset (K) and the root attribute ``segments`` (JSON: one
record per temperature segment of ``hessid data simulate``): a file may then hold frames at
several temperatures, its root ``temperature`` attribute is absent when it does, and ``time``
restarts at 0 in each segment. The bump is needed because a version-2 writer resuming such a
file would append frames without a temperature and read the whole file at one temperature;
version-1/2 files are read unchanged (every frame at the root ``temperature``).

This module holds names and small frozen dataclasses only (no I/O); the readers and writers are
:mod:`hessid.training.data.io` and :mod:`hessid.training.data.reader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AA_ARRAYS", "AA_REQUIRED", "CG_ARRAYS", "FORMAT_VERSION", "ArraySpec", "DatasetError",
    "DatasetNotFoundError", "NoHessianBlockError", "NoTargetsError", "NotADatasetError",
    "NotMappedError", "format_version_of",
]  # fmt: skip

#: version of the layout written by this hessid; files without the attribute are version 1
FORMAT_VERSION = 3
#: versions this hessid reads
READABLE_FORMAT_VERSIONS = (1, 2, 3)

# ----------------------------------------------------------------------------- units

LENGTH_UNIT = "angstrom"
FORCE_UNIT = "kcal/mol/angstrom"
ENERGY_UNIT = "kcal/mol"
TIME_UNIT = "ps"
HESSIAN_UNIT = "kcal/mol/angstrom**2"
TEMPERATURE_UNIT = "K"

# ----------------------------------------------------------------------------- AA keys

TOPOLOGY = "topology"
COORDINATES = "coordinates"
FORCES = "forces"
POTENTIAL_ENERGY = "potential_energy"
TIME = "time"
FRAME_ID = "frame_id"
BOX = "box"
#: per-frame thermostat set-point, K (version 3; absent: every frame at the root temperature)
FRAME_TEMPERATURE = "temperature"
#: per-frame AA datasets (first axis T), in the order they are written
AA_PER_FRAME = (COORDINATES, FORCES, POTENTIAL_ENERGY, TIME, FRAME_ID, BOX, FRAME_TEMPERATURE)
#: datasets every AA dataset file has
AA_REQUIRED = (TOPOLOGY, COORDINATES, FORCES, TIME, FRAME_ID)

# ----------------------------------------------------------------------------- root attributes

ATTR_FORMAT_VERSION = "format_version"
ATTR_LENGTH_UNIT = "length_unit"
ATTR_ENERGY_UNIT = "energy_unit"
ATTR_TEMPERATURE = "temperature"  # K
ATTR_FORCEFIELD = "forcefield"
ATTR_SOLVENT = "solvent"
ATTR_PLATFORM = "platform"
ATTR_SEED = "seed"
ATTR_VERSIONS = "versions"  # JSON {package: version}
ATTR_NAME = "name"
ATTR_CONSTRAINTS = "constraints"  # "HBonds" | "none" | ... (simulated data)
ATTR_FORCEFIELD_HASH = "forcefield_hash"  # sha256 of the serialized OpenMM System
ATTR_MD_CONFIG = "md_config"  # JSON of aa_md.MDConfig
ATTR_TIME_IS_INDEX = "time_is_index"  # True when time was not given (frame index × 1 ps)
ATTR_CHECKPOINT_FRAMES = "checkpoint_frames"  # frames covered by the last AA MD checkpoint
#: JSON list, one record per temperature segment (aa_md.segment_record): temperature (K), seed,
#: integrator, checkpoint file, md_config (the segment's settings with the file's base seed)
ATTR_SEGMENTS = "segments"
ATTR_FROZEN_DRIFT = "frozen_max_displacement_angstrom"  # conditional.sample_frozen, Å
#: per-dataset unit attribute (coordinates, forces, potential_energy, time, cg arrays)
ATTR_UNIT = "unit"
#: units every root must declare: attribute → required value
ROOT_UNITS = {ATTR_LENGTH_UNIT: LENGTH_UNIT, ATTR_ENERGY_UNIT: ENERGY_UNIT}
#: per-dataset unit attributes written by create_dataset
AA_UNITS = {COORDINATES: LENGTH_UNIT, FORCES: FORCE_UNIT, POTENTIAL_ENERGY: ENERGY_UNIT, TIME: TIME_UNIT,
            FRAME_TEMPERATURE: TEMPERATURE_UNIT}
#: meaning attribute of the per-frame temperature dataset
FRAME_TEMPERATURE_MEANING = "thermostat set-point (K) of the canonical (Langevin) run that generated the frame"

# ----------------------------------------------------------------------------- CG keys

CG = "cg"
CG_WEIGHTS = "cg/weights"
CG_PROJECTOR = "cg/projector"
CG_COORDINATES = "cg/coordinates"
CG_FORCES = "cg/forces"
CG_BEAD_TYPES = "cg/bead_types"
CG_BONDS = "cg/bonds"
#: names of the two target datasets inside cg/ (their done masks add DONE_SUFFIX)
TERM1_NAME = "hvp_term1"
HESSIAN_BLOCK_NAME = "hessian_block"
DONE_SUFFIX = "_done"
TERM1 = f"{CG}/{TERM1_NAME}"
TERM1_DONE = TERM1 + DONE_SUFFIX
HESSIAN_BLOCK = f"{CG}/{HESSIAN_BLOCK_NAME}"
HESSIAN_BLOCK_DONE = HESSIAN_BLOCK + DONE_SUFFIX

ATTR_BEAD_VOCABULARY = "bead_vocabulary"  # on cg/bead_types (older files: on cg/ or the root)
ATTR_MAP = "map"  # on cg/: "ca" | "custom"
ATTR_PROJECTOR_CONSTRAINTS = "projector_constraints"  # on cg/: "HBonds" | "none"
ATTR_MEANING = "meaning"
#: "spec §2" is docs/identities.md §2; the string is kept byte-identical (file provenance)
CG_FORCES_MEANING = "P f, projected AA forces (spec §2)"

# ----------------------------------------------------------------------------- Term-1 attrs

#: attributes of cg/hvp_term1 that validate_dataset requires
TERM1_REQUIRED_ATTRS = ("probe_kind", "probe_seed", "epsilon_nm", "unit")
#: attributes a --resume must match (projector_sha256 only when the stored run has it)
TERM1_RESUME_ATTRS = ("probe_kind", "probe_seed", "n_probes", "probe_key", "epsilon_nm", "platform",
                      "precision", "forcefield_hash", "chunk_frames", "threads",
                      "projector_sha256")  # fmt: skip
ATTR_PROBE_KEY = "probe_key"
ATTR_EPSILON_NM = "epsilon_nm"
ATTR_PROJECTOR_SHA256 = "projector_sha256"
#: how a reader turns draw_probes' flat (k, 3n) probes into the (k, n, 3) layout of the file
PROBE_RESHAPE = "draw_probes(kind, seed, [frame_id], k, 3n, key=probe_key).reshape(k, n, 3)"
#: the probe_kind stored on cg/hessian_block: every unit vector e_a (not a ProbeSpec kind)
FULL_BLOCK_PROBE_KIND = "one_hot_all"
FULL_BLOCK_LAYOUT = "[t, a, b] = (P ∇²H Pᵀ)_ab, a, b flat CG indices 3*I + alpha"


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ArraySpec:
    """One dataset of the file: HDF5 key, symbolic shape, dtype, unit.

    Attributes:
        key: HDF5 path (``"cg/forces"``).
        shape: symbolic axes, e.g. ``("T", "N", 3)``.
        dtype: numpy dtype string (``"f8"``, ``"i8"``, ``"u1"``, ``"str"``).
        unit: hessid unit or ``None`` (dimensionless, indices, text).
        required: present in every file of its group (AA root or ``cg/``).
    """

    key: str
    shape: tuple
    dtype: str
    unit: str | None
    required: bool = False


AA_ARRAYS = (
    ArraySpec(TOPOLOGY, (), "str", None, True),
    ArraySpec(COORDINATES, ("T", "N", 3), "f8", LENGTH_UNIT, True),
    ArraySpec(FORCES, ("T", "N", 3), "f8", FORCE_UNIT, True),
    ArraySpec(POTENTIAL_ENERGY, ("T",), "f8", ENERGY_UNIT),
    ArraySpec(TIME, ("T",), "f8", TIME_UNIT, True),
    ArraySpec(FRAME_ID, ("T",), "i8", None, True),
    ArraySpec(BOX, ("T", 3, 3), "f8", LENGTH_UNIT),
    ArraySpec(FRAME_TEMPERATURE, ("T",), "f8", TEMPERATURE_UNIT),
)
CG_ARRAYS = (
    ArraySpec(CG_WEIGHTS, ("n", "N"), "f8", None, True),
    ArraySpec(CG_PROJECTOR, ("n", "N"), "f8", None, True),
    ArraySpec(CG_COORDINATES, ("T", "n", 3), "f8", LENGTH_UNIT),
    ArraySpec(CG_FORCES, ("T", "n", 3), "f8", FORCE_UNIT),
    ArraySpec(CG_BEAD_TYPES, ("n",), "i8", None),
    ArraySpec(CG_BONDS, ("n_bonds", 2), "i8", None),
    ArraySpec(TERM1, ("T", "k", "n", 3), "f8", HESSIAN_UNIT),
    ArraySpec(TERM1_DONE, ("T",), "u1", None),
    ArraySpec(HESSIAN_BLOCK, ("T", "3n", "3n"), "f8", HESSIAN_UNIT),
    ArraySpec(HESSIAN_BLOCK_DONE, ("T",), "u1", None),
)


# ----------------------------------------------------------------------------- errors


class DatasetError(ValueError):
    """A dataset file is missing, malformed or lacks a part. One line naming the file, the
    dataset (HDF5 key; omitted for file-level problems) and, where it applies, the frame.

    Attributes:
        path: the file (str).  dataset: HDF5 key or None.  frame: frame index or None.
        detail: the message without the location.
    """

    def __init__(self, path, dataset: str | None, message: str, frame: int | None = None):
        where = f"{path}: dataset '{dataset}'" if dataset else f"{path}"
        if frame is not None:
            where += f", frame {frame}"
        super().__init__(f"{where}: {message}")
        self.path, self.dataset, self.frame, self.detail = str(path), dataset, frame, message


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No file at the resolved dataset path (also a ``FileNotFoundError``)."""

    def __init__(self, path):
        super().__init__(path, None, "no such dataset file")


class NotADatasetError(DatasetError):
    """The file is not HDF5, or holds neither ``coordinates`` nor a ``cg/`` group."""


class NotMappedError(DatasetError):
    """The dataset has no ``cg/`` group (run ``hessid data map``)."""

    def __init__(self, path):
        super().__init__(path, CG, "missing: the dataset is not CG-mapped (run `hessid data map`)")


class NoTargetsError(DatasetError):
    """The dataset has no ``cg/hvp_term1`` (run ``hessid targets``)."""

    def __init__(self, path):
        super().__init__(path, TERM1, "missing: no Term-1 targets (run `hessid targets`)")


class NoHessianBlockError(DatasetError):
    """The dataset has no ``cg/hessian_block`` (run ``hessid targets --full-block``)."""

    def __init__(self, path):
        super().__init__(path, HESSIAN_BLOCK, "missing (run map_dataset/write_cg and "
                         "compute_targets(full_block=True) first)")  # fmt: skip


def format_version_of(attrs, path: str | Path = "") -> int:
    """Format version of a file from its root attributes (1 when the attribute is absent:
    files written before the attribute existed have the version-1 layout).

    Args:
        attrs: the root attribute mapping (h5py ``attrs`` or a dict).
        path: the file, for the error message.

    Returns:
        int version, one of :data:`READABLE_FORMAT_VERSIONS`.

    Raises:
        DatasetError: the version is not an integer or newer than this hessid reads.
    """
    raw = attrs.get(ATTR_FORMAT_VERSION, 1)
    try:
        version = int(raw)
    except (TypeError, ValueError) as exc:
        raise DatasetError(path, None, f"attribute {ATTR_FORMAT_VERSION}={raw!r} is not an integer") from exc
    if version not in READABLE_FORMAT_VERSIONS:
        raise DatasetError(path, None, f"format version {version} is not readable by this hessid "
                           f"(reads {list(READABLE_FORMAT_VERSIONS)}); upgrade hessid")  # fmt: skip
    return version


# ----------------------------------------------------------------------------- conditional labels
# A conditional-labels file (hessid.training.data.labels, docs/data.md "Conditional labels") has
# the standard mapped layout with C configurations as its frames: cg/coordinates = R (C, n, 3),
# cg/forces = the conditional mean force F(R) (C, n, 3), cg/hessian_block = the CG-Hessian
# estimate (C, 3n, 3n) whose done mask is the per-configuration done flag; the AA part holds
# the source's single AA frames at R (their forces are not labels). Plus the group labels/:
#
#     labels/mean_force_sem           (C, n, 3) float64    kcal/mol/Å, block standard error
#     labels/hessian_sem              (C, 3n, 3n) float64  kcal/mol/Å², block standard error
#     labels/term1                    (C, 3n, 3n) float64  ⟨P∇²U Pᵀ⟩_R (as stored, not symmetrised)
#     labels/term2                    (C, 3n, 3n) float64  β Ĉov_R(P f), m − 1 divisor
#     labels/statistical_inefficiency (C,) float64         g of P f (max over the 3n components)
#     labels/effective_samples        (C,) float64         m / g
#     labels/n_samples                (C,) int64           m frozen-bead samples
#     labels/aa_force_evaluations     (C,) int64           equilibration + MD steps + FD evaluations
#     labels/drift_angstrom           (C,) float64         Å, max frozen-atom displacement seen
#     labels/source_frame             (C,) int64           row of the configuration in the source
#
# and the root attributes kind = "conditional_labels", labels_settings (JSON), labels_source
# (path), labels_source_forcefield_hash, labels_source_projector_sha256.

ATTR_KIND = "kind"
KIND_CONDITIONAL_LABELS = "conditional_labels"
ATTR_LABELS_SETTINGS = "labels_settings"
ATTR_LABELS_SOURCE = "labels_source"
ATTR_LABELS_SOURCE_FORCEFIELD_HASH = "labels_source_forcefield_hash"
ATTR_LABELS_SOURCE_PROJECTOR_SHA256 = "labels_source_projector_sha256"
LABELS = "labels"
LABELS_MEAN_FORCE_SEM = "labels/mean_force_sem"
LABELS_HESSIAN_SEM = "labels/hessian_sem"
LABELS_TERM1 = "labels/term1"
LABELS_TERM2 = "labels/term2"
LABELS_STATISTICAL_INEFFICIENCY = "labels/statistical_inefficiency"
LABELS_EFFECTIVE_SAMPLES = "labels/effective_samples"
LABELS_N_SAMPLES = "labels/n_samples"
LABELS_AA_FORCE_EVALUATIONS = "labels/aa_force_evaluations"
LABELS_DRIFT = "labels/drift_angstrom"
LABELS_SOURCE_FRAME = "labels/source_frame"
LABELS_ARRAYS = (
    ArraySpec(LABELS_MEAN_FORCE_SEM, ("C", "n", 3), "f8", FORCE_UNIT, True),
    ArraySpec(LABELS_HESSIAN_SEM, ("C", "3n", "3n"), "f8", HESSIAN_UNIT, True),
    ArraySpec(LABELS_TERM1, ("C", "3n", "3n"), "f8", HESSIAN_UNIT, True),
    ArraySpec(LABELS_TERM2, ("C", "3n", "3n"), "f8", HESSIAN_UNIT, True),
    ArraySpec(LABELS_STATISTICAL_INEFFICIENCY, ("C",), "f8", None, True),
    ArraySpec(LABELS_EFFECTIVE_SAMPLES, ("C",), "f8", None, True),
    ArraySpec(LABELS_N_SAMPLES, ("C",), "i8", None, True),
    ArraySpec(LABELS_AA_FORCE_EVALUATIONS, ("C",), "i8", None, True),
    ArraySpec(LABELS_DRIFT, ("C",), "f8", LENGTH_UNIT, True),
    ArraySpec(LABELS_SOURCE_FRAME, ("C",), "i8", None, True),
)
#: meaning attribute of cg/forces and cg/hessian_block in a labels file
LABELS_FORCES_MEANING = "conditional mean force <P f>_R of frozen-bead AA samples"
LABELS_HESSIAN_MEANING = "CG Hessian estimate <P grad^2 U P^T>_R - beta Cov_R(P f) (symmetrised)"


def refuse_labels_file(attrs, path: str | Path, action: str) -> None:
    """Refuse an operation that would overwrite the labels of a conditional-labels file.

    Args:
        attrs: the file's root attribute mapping (h5py ``attrs`` or a dict).
        path: the file, for the message.
        action: what was refused, e.g. ``"re-mapping"``.

    Raises:
        DatasetError: ``attrs[kind] == "conditional_labels"`` (one line naming the file).
    """
    raw = attrs.get(ATTR_KIND)
    kind = raw.decode() if isinstance(raw, bytes) else raw
    if kind == KIND_CONDITIONAL_LABELS:
        raise DatasetError(path, None, f"is a conditional-labels file: {action} it would overwrite its "
                           "labels (rerun `hessid targets --conditional` on its source instead)")
