"""``hessid data {build,simulate,import,map,validate}`` and ``hessid targets``: thin argparse
wrappers over :mod:`hessid.training.data.structures`, :mod:`.aa_md`, :mod:`.data` and
:mod:`.targets`.
"""

from __future__ import annotations

import argparse
import sys
import time

COMMANDS = ("data", "targets")


def _done(msg: str, t0: float) -> int:
    print(f"{msg} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _fail(exc: Exception) -> int:
    print(f"hessid: error: {exc}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- data


def _build(args) -> int:
    from hessid.training.data.structures import build_structure

    t0 = time.perf_counter()
    try:
        path = build_structure(args.name, sequence=args.sequence, pdb=args.pdb, out_dir=args.root,
                               keep_water=args.keep_water, keep_ions=args.keep_ions,
                               phi=args.phi, psi=args.psi, ph=args.ph)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return _done(f"wrote {path}", t0)


def _simulate(args) -> int:
    from hessid.training.data.aa_md import MDConfig, simulate

    t0 = time.perf_counter()
    cfg = MDConfig(steps=args.steps, stride=args.stride, temperature=args.temperature,
                   friction=args.friction, timestep=args.timestep,
                   equilibration_steps=args.equilibration_steps, minimize=not args.no_minimize,
                   solvent=args.solvent, forcefield=args.forcefield, padding=args.padding,
                   constraints=args.constraints, platform=args.platform, threads=args.threads,
                   seed=args.seed, chunk_frames=args.chunk_frames)  # fmt: skip
    try:
        path = simulate(args.name, cfg, root=args.root, resume=args.resume,
                        overwrite=args.overwrite, progress=not args.no_progress)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        return _fail(exc)
    return _done(f"wrote {path}", t0)


def _import(args) -> int:
    from pathlib import Path

    from hessid.training.data import importers as data

    t0 = time.perf_counter()
    out = Path(args.root) / args.name / f"{args.name}.h5"
    attrs = {"name": args.name, "solvent": args.solvent, "forcefield": args.forcefield,
             "temperature": args.temperature}  # fmt: skip
    fmt = args.format
    if fmt == "auto":
        suf = Path(args.source).suffix.lower()
        fmt = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "arrays", ".npz": "arrays"}.get(suf, "trajectory")
    try:
        if fmt == "hdf5":
            path = data.import_hdf5(args.source, out, topology=args.topology,
                                    coordinates_key=args.coordinates_key, forces_key=args.forces_key,
                                    length_unit=args.length_unit, force_unit=args.force_unit,
                                    timestep_ps=args.timestep, attrs=attrs, overwrite=args.overwrite)  # fmt: skip
        elif fmt == "arrays":
            if args.forces is None or args.topology is None:
                raise ValueError("--format arrays needs --forces FILE and --topology PDB")
            src_forces = args.forces
            if args.source.endswith(".npz") and args.forces == args.source:
                src_forces = args.source
            path = data.import_arrays(args.source, src_forces, args.topology, out,
                                      length_unit=args.length_unit, force_unit=args.force_unit,
                                      timestep_ps=args.timestep, attrs=attrs, overwrite=args.overwrite)  # fmt: skip
        else:
            if args.forces is None:
                raise ValueError("--format trajectory needs --forces FILE")
            path = data.import_trajectory(args.source, args.forces, out, force_unit=args.force_unit,
                                          topology=args.topology, attrs=attrs, overwrite=args.overwrite)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        return _fail(exc)
    return _done(f"wrote {path}", t0)


def _map(args) -> int:
    from hessid.training.data import io as data
    from hessid.training.data.cg_map import write_cg

    t0 = time.perf_counter()
    path = data.dataset_path(args.name, args.root)
    try:
        cg = write_cg(path, overwrite=args.overwrite,
                           constraint_aware=not args.no_constraint_aware)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    return _done(f"wrote {path}:cg/ ({cg.weights.shape[0]} beads)", t0)


def _validate(args) -> int:
    from hessid.training.data import io as data

    try:
        summary = data.validate_dataset(data.dataset_path(args.name, args.root))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(summary)
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="build, simulate, import and map AA reference data",
                       description="All-atom reference data (docs/data.md).")  # fmt: skip
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = dsub.add_parser("build", help="structure from a sequence or a PDB file")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--sequence", help="one-letter sequence, e.g. GYDPETGTWG")
    src.add_argument("--pdb", help="structure file (PDB/mmCIF)")
    b.add_argument("--name", required=True, help="dataset name: writes ./NAME/NAME.pdb")
    b.add_argument("--keep-water", action="store_true", help="keep crystal waters (--pdb)")
    b.add_argument("--keep-ions", action="store_true", help="keep ions (--pdb)")
    b.add_argument("--phi", type=float, default=-75.0, help="backbone φ, degrees (default PPII)")
    b.add_argument("--psi", type=float, default=145.0, help="backbone ψ, degrees")
    b.add_argument("--ph", type=float, default=7.0, help="protonation pH")
    b.add_argument("--root", default=".", help="folder holding NAME/ (default .)")
    b.set_defaults(func=_build)

    s = dsub.add_parser("simulate", help="OpenMM AA MD with forces of the saved frames")
    s.add_argument("name", help="dataset name (./NAME/NAME.pdb → ./NAME/NAME.h5)")
    s.add_argument("--steps", type=int, default=10000, help="production steps")
    s.add_argument("--stride", type=int, default=500, help="steps between saved frames")
    s.add_argument("--temperature", type=float, default=300.0, help="K")
    s.add_argument("--friction", type=float, default=1.0, help="1/ps")
    s.add_argument("--timestep", type=float, default=2.0, help="fs")
    s.add_argument("--equilibration-steps", type=int, default=0)
    s.add_argument("--no-minimize", action="store_true")
    s.add_argument("--solvent", default="gbn2", choices=("gbn2", "obc2", "explicit", "vacuum"))
    s.add_argument("--forcefield", default="amber14-all.xml")
    s.add_argument("--padding", type=float, default=1.0, help="explicit box padding, nm")
    s.add_argument("--constraints", default="HBonds", choices=("HBonds", "none"))
    s.add_argument("--platform", default=None, help="Reference|CPU|CUDA|OpenCL (default CUDA if present, else CPU)")
    s.add_argument("--threads", type=int, default=None, help="CPU platform threads")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk-frames", type=int, default=10, help="frames per write/checkpoint")
    s.add_argument("--resume", action="store_true", help="continue from NAME.chk")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--root", default=".")
    s.set_defaults(func=_simulate)

    i = dsub.add_parser("import", help="import existing AA data (units must be declared or stored)")
    i.add_argument("source", help="HDF5 (mdCATH-style), npy/npz coordinates, or a trajectory mdtraj reads")
    i.add_argument("--name", required=True, help="writes ./NAME/NAME.h5")
    i.add_argument("--format", default="auto", choices=("auto", "hdf5", "arrays", "trajectory"))
    i.add_argument("--forces", help="force array (npy/npz) for arrays/trajectory")
    i.add_argument("--topology", help="PDB topology")
    i.add_argument("--coordinates-key", help="HDF5 dataset path of the coordinates")
    i.add_argument("--forces-key", help="HDF5 dataset path of the forces")
    i.add_argument("--length-unit", help="angstrom | nm")
    i.add_argument("--force-unit", help="kcal/mol/angstrom | kj/mol/nm | kcal/mol/nm | kj/mol/angstrom")
    i.add_argument("--timestep", type=float, help="ps between frames")
    i.add_argument("--solvent", help="solvent of the source simulation (needed by `hessid targets`)")
    i.add_argument("--forcefield", help="force-field XML of the source simulation")
    i.add_argument("--temperature", type=float, help="K")
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--root", default=".")
    i.set_defaults(func=_import)

    m = dsub.add_parser("map", help="apply the Cα map: cg/coordinates, cg/forces = P f, bead types")
    m.add_argument("name")
    m.add_argument("--overwrite", action="store_true", help="replace cg/ (drops its targets)")
    m.add_argument("--no-constraint-aware", action="store_true",
                   help="keep the plain Cα projector on HBond-constrained data (default: the "
                        "projector also sums the forces of H atoms rigidly bonded to a Cα)")  # fmt: skip
    m.add_argument("--root", default=".")
    m.set_defaults(func=_map)

    v = dsub.add_parser("validate", help="check a dataset file; errors name file, dataset, frame")
    v.add_argument("name")
    v.add_argument("--root", default=".")
    v.set_defaults(func=_validate)


# ----------------------------------------------------------------------------- targets


def _targets(args) -> int:
    from hessid.training.data import io as data
    from hessid.training.data.targets import compute_targets

    t0 = time.perf_counter()
    try:
        res = compute_targets(
            data.dataset_path(args.name, args.root), n_probes=args.probes,
            probe_kind=args.probe_kind, seed=args.seed, epsilon_nm=args.epsilon,
            platform=args.platform, threads=args.threads, precision=args.precision,
            workers=args.workers, chunk_frames=args.chunk_frames, scheduler=args.scheduler,
            resume=args.resume, overwrite=args.overwrite, full_block=args.full_block,
            forcefield=args.forcefield, solvent=args.solvent, progress=not args.no_progress,
        )  # fmt: skip
    except (ValueError, OSError, ImportError) as exc:  # OSError: files, unreachable scheduler
        return _fail(exc)
    return _done(f"wrote {res.path}: {res.chunks_computed} chunks computed, "
                 f"{res.chunks_skipped} already done, {res.frame_probes_per_s:.1f} frame·probes/s", t0)  # fmt: skip


def _add_targets(sub) -> None:
    t = sub.add_parser("targets", help="precompute Term-1 HVP targets by FD of OpenMM forces",
                       description="Term 1 = P ∇²H Pᵀ v by central differences (docs/data.md).")  # fmt: skip
    t.add_argument("name", help="dataset name or .h5 path")
    t.add_argument("--probes", type=int, default=4, help="probes per frame k")
    t.add_argument("--probe-kind", default="gaussian",
                   choices=("gaussian", "rademacher", "unit_sphere", "one_hot", "orthonormal"))  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="probe seed")
    t.add_argument("--epsilon", type=float, default=None,
                   help="largest atomic FD displacement, nm (default by platform precision)")  # fmt: skip
    t.add_argument("--platform", default=None)
    t.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    t.add_argument("--precision", default=None, choices=("single", "mixed", "double"))
    t.add_argument("--workers", type=int, default=1, help="worker processes (0: in-process)")
    t.add_argument("--chunk-frames", type=int, default=4, help="frames per task/commit")
    t.add_argument("--scheduler", default=None, help="Dask scheduler address (needs hessid[dask])")
    t.add_argument("--resume", action="store_true", help="skip committed chunks")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--full-block", action="store_true", help="store cg/hessian_block (2·3n force evals/frame)")
    t.add_argument("--forcefield", default=None, help="override the file's force field")
    t.add_argument("--solvent", default=None, help="override the file's solvent")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--root", default=".")
    t.set_defaults(func=_targets)


def register(subparsers: argparse._SubParsersAction, names: tuple[str, ...] | None = None) -> None:
    """Add the ``data`` and/or ``targets`` parsers to ``subparsers``.

    ``hessid.training.cli`` imports this module for either name and calls ``register`` while
    walking SUBCOMMANDS, where ``data`` precedes ``targets``: when it is called, a placeholder
    ``data`` parser exists already iff ``targets`` is being run. So, with ``names=None``: add
    ``targets`` if ``data`` is already registered, else add ``data`` (never a name that the CLI
    will add as a placeholder next). Pass ``names`` explicitly to add both elsewhere.
    """
    if names is None:
        names = ("targets",) if "data" in subparsers._name_parser_map else ("data",)
    if "data" in names:
        _add_data(subparsers)
    if "targets" in names:
        _add_targets(subparsers)
