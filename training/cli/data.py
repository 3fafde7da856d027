"""``hessid data {build,simulate,import,map,validate}``: all-atom reference datasets
(docs/data.md). Each action is a thin layer over one public function:
:func:`~hessid.training.data.structures.build_structure`,
:func:`~hessid.training.data.aa_md.simulate` (options: :class:`~hessid.training.data.aa_md.MDConfig`),
the importers and :func:`~hessid.training.data.io.write_cg` /
:func:`~hessid.training.data.io.validate_dataset` of :mod:`hessid.training.data.io`.

A dataset argument is a name (``NAME`` → ``ROOT/NAME/NAME.h5``), a folder or an ``.h5`` path
(:func:`hessid.training.data.io.dataset_path`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from hessid.cli.options import (
    JobFailed,
    add_dataclass,
    add_run_flags,
    dataclass_from,
    new_parser,
    save_config,
    signature_default,
)
from hessid.optimal_projector import DEFAULT_RIDGE
from hessid.training.cli.common import ROOT_HELP, add_dataset_arguments
from hessid.training.data.aa_md import SOLVENTS, MDConfig, check_md_config, simulate
from hessid.training.data.cg_map import (
    PROJECTOR_KINDS,
    OptimalFit,
    ca_map,
    load_projector,
    write_cg,
)
from hessid.training.data.deep_check import deep_validate, format_checks
from hessid.training.data.importers import (
    import_arrays,
    import_hdf5,
    import_trajectory,
    source_physics,
)
from hessid.training.data.io import check_dataset_name, dataset_path, validate_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.data.structures import build_structure

__all__ = ["BuildOptions", "ImportOptions", "MapOptions", "build_parser", "map_projector_arguments",
           "parse_neighbours", "run"]


@dataclass
class BuildOptions:
    """Options of ``hessid data build`` (give exactly one of ``sequence``, ``pdb``).

    Attributes:
        name: dataset name: writes ROOT/NAME/NAME.pdb.
        sequence: one-letter sequence, e.g. GYDPETGTWG.
        pdb: structure file (PDB/mmCIF).
        keep_water: keep crystal waters (with --pdb).
        keep_ions: keep ions (with --pdb).
        phi: backbone φ of a built sequence, degrees (default: PPII).
        psi: backbone ψ, degrees.
        ph: protonation pH, in [0, 14].
        drop_unknown: drop residues amber14 has no template for (ligands, unknown residues),
            listing them; default: refuse the file naming them.
        seed: seed of the hydrogen and missing-atom placement (the same seed gives the same
            file; fixed non-zero default).
        root: folder holding NAME/.
    """

    name: str
    sequence: str | None = None
    pdb: str | None = None
    keep_water: bool = signature_default(build_structure, "keep_water")
    keep_ions: bool = signature_default(build_structure, "keep_ions")
    phi: float = signature_default(build_structure, "phi")
    psi: float = signature_default(build_structure, "psi")
    ph: float = signature_default(build_structure, "ph")
    drop_unknown: bool = signature_default(build_structure, "drop_unknown")
    seed: int = signature_default(build_structure, "seed")
    root: str = "."


@dataclass
class ImportOptions:
    """Options of ``hessid data import`` (units must be declared here or stored in the source).

    Attributes:
        source: HDF5 (mdCATH-style), npy/npz coordinates, or a trajectory mdtraj reads.
        name: dataset name: writes ROOT/NAME/NAME.h5.
        format: ``auto`` (from the suffix), ``hdf5``, ``arrays`` or ``trajectory``.
        forces: force array (npy/npz) for arrays/trajectory.
        topology: PDB topology.
        coordinates_key: HDF5 dataset path of the coordinates.
        forces_key: HDF5 dataset path of the forces.
        length_unit: ``angstrom`` | ``nm``.
        force_unit: ``kcal/mol/angstrom`` | ``kj/mol/nm`` | ``kcal/mol/nm`` | ``kj/mol/angstrom``.
        timestep: fs between saved frames (default: the source's time, else the frame index).
        solvent: solvent of the source simulation (needed by `hessid targets`).
        forcefield: force-field XML of the source simulation.
        temperature: K of the source simulation (required, no default; in [1, 1000]).
        constraints: ``HBonds`` if the source simulation kept bonds to hydrogen rigid, else
            ``none`` (required, no default: the CG projector and the Term-1 potential depend on it).
        root: folder holding NAME/.
    """

    source: str
    name: str
    format: Literal["auto", "hdf5", "arrays", "trajectory"] = "auto"
    forces: str | None = None
    topology: str | None = None
    coordinates_key: str | None = None
    forces_key: str | None = None
    length_unit: str | None = None
    force_unit: str | None = None
    timestep: float | None = None
    solvent: str | None = None
    forcefield: str | None = None
    temperature: float | None = None
    constraints: str | None = None
    root: str = "."


@dataclass
class MapOptions:
    """Options of ``hessid data map``.

    Attributes:
        name: dataset name or path.
        projector: force projector: ``constraint-aware`` (the map's projector, summed over
            HBond-rigid groups) or ``optimal`` (the variance-minimising Q*, fitted on held-out
            frames; docs/variance_reduction.md §2).
        constraint_aware: on HBond-constrained data, let the projector also sum the forces of
            H atoms rigidly bonded to a Cα (--no-constraint-aware: the plain Cα projector).
            Constraint-aware kind only.
        projector_from: use the projector stored in this mapped dataset (e.g. one Q* shared by
            several runs) instead of fitting one; its map must be the same.
        fit_dataset: with --projector optimal: fit Q* on this dataset (name or path; same
            atoms) instead of the mapped one, e.g. a held-out run.
        fit_frames: with --projector optimal: fit frames, ``all``, ``START:STOP[:STEP]`` or
            ``i,j,k`` (default: all frames of --fit-dataset, else the last 20 % of the mapped
            dataset, which should then not be trained on).
        neighbours: with --projector optimal: each bead may use the atoms of its residue and of
            K residues on either side (``all``: every atom).
        ridge: with --projector optimal: ridge relative to the mean force second moment.
        root: folder holding NAME/.
    """

    name: str
    projector: str = "constraint-aware"
    constraint_aware: bool = signature_default(write_cg, "constraint_aware")
    projector_from: str | None = None
    fit_dataset: str | None = None
    fit_frames: str | None = None
    neighbours: str = "all"
    ridge: float = DEFAULT_RIDGE
    root: str = "."


def parse_neighbours(text) -> int | None:
    """``--neighbours``: ``all``/``none`` → None (every atom), else a non-negative integer.

    Raises:
        ValueError: anything else (one line naming the argument).
    """
    t = str(text).strip().lower()
    if t in ("all", "none"):
        return None
    try:
        k = int(t)
    except ValueError:
        k = -1
    if k < 0 or str(k) != t.lstrip("+"):
        raise ValueError(f"--neighbours={text!r}: expected a non-negative integer or 'all'")
    return k


def map_projector_arguments(opts: MapOptions, path: Path) -> dict:
    """The projector keyword arguments of :func:`~hessid.training.data.cg_map.write_cg` for
    ``hessid data map`` options for the mapped dataset ``path``. A --projector-from matrix must
    come from a file mapped with the same (Cα) weights; ``write_cg`` checks it further
    (``Q Sᵀ = I``, equal columns within this dataset's rigid groups).

    Raises:
        ValueError: unknown --projector, fit options without ``--projector optimal``, or
            --projector-from combined with a fit (one line naming the arguments).
        DatasetError: the --projector-from file is missing, not mapped, or mapped with other
            weights.
    """
    if opts.projector not in PROJECTOR_KINDS:
        raise ValueError(f"--projector={opts.projector!r}: expected one of {', '.join(PROJECTOR_KINDS)}")
    fit_given = [f"--{k.replace('_', '-')}" for k, default in
                 (("fit_dataset", None), ("fit_frames", None), ("neighbours", "all"), ("ridge", DEFAULT_RIDGE))
                 if getattr(opts, k) != default]  # fmt: skip
    neighbours = parse_neighbours(opts.neighbours)
    if opts.projector_from is not None:
        if opts.projector != "constraint-aware" or fit_given:
            raise ValueError("--projector-from FILE applies a stored projector: it takes no "
                             f"--projector optimal or fit options ({', '.join(fit_given) or '--projector'})")  # fmt: skip
        with open_dataset(path) as ds:
            weights = ca_map(ds.topology())[0].weights.numpy()
        q, prov = load_projector(dataset_path(opts.projector_from, opts.root), weights=weights)
        return {"projector": q, "projector_provenance": prov}
    if opts.projector != "optimal":
        if fit_given:
            raise ValueError(f"{', '.join(fit_given)} only with --projector optimal")
        return {"projector": opts.projector, "constraint_aware": opts.constraint_aware}
    if not opts.constraint_aware:
        raise ValueError("--no-constraint-aware only with --projector constraint-aware "
                         "(Q* always keeps HBond groups rigid)")  # fmt: skip
    fit_dataset = None if opts.fit_dataset is None else dataset_path(opts.fit_dataset, opts.root)
    return {"projector": "optimal",
            "optimal": OptimalFit(dataset=fit_dataset, frames=opts.fit_frames,
                                  neighbours=neighbours, ridge=float(opts.ridge))}  # fmt: skip


def _done(message: str, t0: float) -> None:
    print(f"{message} ({time.perf_counter() - t0:.1f} s)")


# ----------------------------------------------------------------------------- parsers


def _build_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Structure from a sequence (PeptideBuilder + pdbfixer) or a "
                              "PDB/mmCIF file: ROOT/NAME/NAME.pdb.")
    add_dataclass(parser, BuildOptions)
    add_run_flags(parser, overwrite="replace an existing NAME.pdb")
    return parser


def _simulate_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "OpenMM all-atom MD (Langevin, canonical) with the forces and potential "
                              "energies of the saved frames: ROOT/NAME/NAME.h5 (+ NAME.chk for --resume). "
                              "On an existing dataset a new --temperature adds a temperature segment "
                              "(same system; docs/data.md, 'Multi-temperature datasets').")
    parser.add_argument("name", type=str, help="dataset name (ROOT/NAME/NAME.pdb → NAME.h5)")
    add_dataclass(parser, MDConfig)
    parser.add_argument("--root", type=str, default=".", help=ROOT_HELP)
    add_run_flags(parser, resume="continue the --temperature segment (default: that of the last frame) "
                                 "from its checkpoint (a larger --steps extends)",
                  overwrite="replace an existing dataset", progress=True)
    return parser


def _import_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Import existing all-atom data into the hessid dataset layout.")
    add_dataclass(parser, ImportOptions, positional=["source"])
    add_run_flags(parser, overwrite="replace an existing dataset")
    return parser


def _map_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Apply the Cα map: cg/coordinates, cg/forces = P f, bead types "
                              "(P: constraint-aware, the variance-minimising Q*, or one stored "
                              "in another file).")
    add_dataclass(parser, MapOptions, positional=["name"])
    add_run_flags(parser, overwrite="replace cg/ (drops its targets)")
    return parser


def _validate_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Check a dataset file; errors name the file, dataset and frame. "
                              "--deep also checks the values (exit 1 when a check fails).",
                        config=False)
    add_dataset_arguments(parser)
    parser.add_argument("--deep", action=ActionYesNo(no_prefix="no-"), default=False,
                        help="also check cg/coordinates = S·coordinates, cg/forces = Q·forces, "
                             "recompute the forces of a few frames with OpenMM, check bond and "
                             "Cα–Cα lengths (units) and report incomplete runs")
    parser.add_argument("--force-frames", type=int, default=signature_default(deep_validate, "n_force_frames"),
                        help="with --deep: frames whose forces are recomputed")
    parser.add_argument("--platform", type=str | None, default=None,
                        help="with --deep: OpenMM platform of the recomputation (default CPU, 1 thread)")
    return parser


_ACTIONS = {
    "build": (_build_parser, "structure from a sequence or a PDB file"),
    "simulate": (_simulate_parser, "OpenMM AA MD with forces of the saved frames"),
    "import": (_import_parser, "import existing AA data (units declared or stored)"),
    "map": (_map_parser, "apply the Cα map: cg/coordinates, cg/forces = P f, bead types"),
    "validate": (_validate_parser, "check a dataset file"),
}


def build_parser(prog: str = "hessid data") -> ArgumentParser:
    """The parser of ``hessid data`` with one subcommand per action."""
    parser = new_parser(prog, "All-atom reference data (docs/data.md).", config=False,
                        logging_flags=False)
    sub = parser.add_subcommands(dest="subcommand", required=True)
    for name, (make, help_) in _ACTIONS.items():
        sub.add_subcommand(name, make(f"{prog} {name}"), help=help_)
    return parser


# ----------------------------------------------------------------------------- actions


def _build(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(BuildOptions, cfg)
    t0 = time.perf_counter()
    path = build_structure(opts.name, sequence=opts.sequence, pdb=opts.pdb, out_dir=opts.root,
                           keep_water=opts.keep_water, keep_ions=opts.keep_ions, phi=opts.phi,
                           psi=opts.psi, ph=opts.ph, drop_unknown=opts.drop_unknown, seed=opts.seed,
                           overwrite=cfg.overwrite)
    save_config(_build_parser(prog), cfg, path.parent, "data build")
    _done(f"wrote {path}", t0)


def _simulate(cfg: Namespace, prog: str) -> None:
    t0 = time.perf_counter()
    md = dataclass_from(MDConfig, cfg)
    check_md_config(md)  # refuses --seed 0 (the library would replace it)
    path = simulate(cfg.name, md, root=cfg.root, resume=cfg.resume,
                    overwrite=cfg.overwrite, progress=cfg.progress)
    save_config(_simulate_parser(prog), cfg, path.parent, "data simulate")
    _done(f"wrote {path}", t0)


def _import(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(ImportOptions, cfg)
    t0 = time.perf_counter()
    check_dataset_name(opts.name)
    source_physics(opts.temperature, opts.constraints)  # required: refuse before reading anything
    if opts.solvent is not None and opts.solvent not in SOLVENTS:
        raise ValueError(f"--solvent={opts.solvent!r}: expected one of {', '.join(SOLVENTS)}")
    if opts.timestep is not None and not opts.timestep > 0:
        raise ValueError(f"--timestep={opts.timestep}: expected fs > 0")
    for option in ("source", "forces", "topology"):
        given = getattr(opts, option)
        if given is not None and not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such file (--{option})" if option != "source"
                                    else f"{given}: no such source file")
    out = Path(opts.root) / opts.name / f"{opts.name}.h5"
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out}: exists (use --overwrite to replace it)")
    attrs = {"name": opts.name, "solvent": opts.solvent, "forcefield": opts.forcefield}
    physics = {"temperature": opts.temperature, "constraints": opts.constraints}
    timestep_ps = None if opts.timestep is None else opts.timestep / 1000.0  # fs → ps
    fmt = opts.format
    if fmt == "auto":
        fmt = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "arrays",
               ".npz": "arrays"}.get(Path(opts.source).suffix.lower(), "trajectory")
    if fmt == "hdf5":
        path = import_hdf5(opts.source, out, topology=opts.topology,
                                coordinates_key=opts.coordinates_key, forces_key=opts.forces_key,
                                length_unit=opts.length_unit, force_unit=opts.force_unit,
                                timestep_ps=timestep_ps, attrs=attrs, overwrite=cfg.overwrite, **physics)
    elif fmt == "arrays":
        if opts.forces is None or opts.topology is None:
            raise ValueError("--format arrays needs --forces FILE and --topology PDB")
        path = import_arrays(opts.source, opts.forces, opts.topology, out,
                                  length_unit=opts.length_unit, force_unit=opts.force_unit,
                                  timestep_ps=timestep_ps, attrs=attrs, overwrite=cfg.overwrite,
                                  **physics)
    else:
        if opts.forces is None:
            raise ValueError("--format trajectory needs --forces FILE")
        path = import_trajectory(opts.source, opts.forces, out, force_unit=opts.force_unit,
                                      topology=opts.topology, attrs=attrs,
                                      overwrite=cfg.overwrite, **physics)
    save_config(_import_parser(prog), cfg, Path(path).parent, "data import")
    _done(f"wrote {path}", t0)


def _map(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(MapOptions, cfg)
    t0 = time.perf_counter()
    path = dataset_path(opts.name, opts.root)
    kwargs = map_projector_arguments(opts, path)
    cg = write_cg(path, overwrite=cfg.overwrite, **kwargs)
    save_config(_map_parser(prog), cfg, path.parent, "data map")
    kind = kwargs["projector_provenance"]["kind"] if "projector_provenance" in kwargs else opts.projector
    _done(f"wrote {path}:cg/ ({cg.weights.shape[0]} beads, {kind} projector)", t0)


def _validate(cfg: Namespace, prog: str) -> None:
    path = dataset_path(cfg.name, cfg.root)
    if not cfg.deep:
        print(validate_dataset(path))
        return
    rows = deep_validate(path, n_force_frames=cfg.force_frames, platform=cfg.platform)
    print(format_checks(path, rows))
    failed = [r.name for r in rows if r.failed]
    if failed:
        raise JobFailed(f"{path}: {len(failed)} deep check(s) failed: {', '.join(failed)}")


_RUN = {"build": _build, "simulate": _simulate, "import": _import, "map": _map,
        "validate": _validate}


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run the parsed ``hessid data`` action; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: invalid options or data (exit 2).
        FileNotFoundError: a missing structure or dataset (exit 2).
        FileExistsError: the dataset exists and neither --resume nor --overwrite (exit 2).
        JobFailed: ``validate --deep`` found a failing check (exit 1).
    """
    action = cfg.subcommand
    _RUN[action](cfg[action], f"{parser.prog} {action}")
    return 0
