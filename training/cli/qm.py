"""``hessid qm {build,import,validate,train,evaluate,cost,check-model}``: atomistic QM datasets
and potentials (docs/atomistic.md). Each action is a thin layer over one public function:
:func:`~hessid.training.qm.build.build_qm_dataset`, :func:`~hessid.training.data.qm.import_pyani`,
:func:`~hessid.training.data.qm.validate_qm_dataset`; the training actions are those of
:mod:`hessid.training.cli.qm_train`.

``hessid qm build --smiles CCO --name ethanol --method gfn2-xtb --configs 200`` writes
``./ethanol/ethanol.h5``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
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
from hessid.training.cli.common import add_dataset_arguments
from hessid.training.cli.qm_train import ACTIONS as QM_TRAIN_ACTIONS
from hessid.training.data.io import check_dataset_name
from hessid.training.data.qm import SUBSET_NEAR, import_pyani, qm_dataset_path, validate_qm_dataset
from hessid.training.qm.build import build_qm_dataset

__all__ = ["BuildOptions", "ImportOptions", "build_parser", "run"]


def _b(name: str):
    return signature_default(build_qm_dataset, name)


def _i(name: str):
    return signature_default(import_pyani, name)


@dataclass
class BuildOptions:
    """Options of ``hessid qm build`` (defaults: those of ``build_qm_dataset``).

    Attributes:
        smiles: the molecule, e.g. CCO.
        name: dataset name: writes ROOT/NAME/NAME.h5.
        method: labels: gfn2-xtb (tblite; Hessians by central differences of analytic
            gradients) or dft (PySCF, analytic Hessians; --xc/--basis).
        configs: structures to sample and label.
        conformers: RDKit ETKDG conformers to optimise and sample around.
        temperature: normal-mode sampling temperature of the near-equilibrium set, K.
        far_temperature: sampling temperature of the far-from-equilibrium set (subset 1), K.
        far_fraction: share of far-from-equilibrium structures.
        scheme: normal-mode sampling: boltzmann (harmonic Boltzmann) or ani1 (Smith et al. 2017).
        min_wavenumber: amplitude floor of soft modes, cm^-1.
        seed: conformer and sampling seed (fixed default; stored in the file).
        sampling_method: method of the optimisation and sampling Hessians.
        hessians: compute Hessians (--no-hessians: an energy-force set).
        xc: DFT functional (PySCF name; wb97x-d3bj, b3lyp, hf, ...).
        basis: DFT basis.
        fd_step: GFN2-xTB central-difference step, Å (default: see docs/atomistic.md).
        xtb_accuracy: tblite SCC accuracy (smaller is tighter).
        fmax: optimisation convergence, largest gradient component, kcal/mol/Å.
        max_iter: SCF iteration limit of the labels (default: the method's).
        workers: worker processes (0: in this process).
        scheduler: Dask scheduler address, e.g. tcp://host:8786 (needs hessid[dask]).
        threads: OpenMP threads per worker (default: 1 for GFN2-xTB, cores // workers for DFT).
        chunk: structures per task and per commit.
        retry_failed: with --resume, recompute the structures recorded as failed.
        root: folder holding NAME/.
    """

    smiles: str
    name: str
    method: Literal["gfn2-xtb", "dft"] = _b("method")
    configs: int = _b("configs")
    conformers: int = _b("conformers")
    temperature: float = _b("temperature")
    far_temperature: float = _b("far_temperature")
    far_fraction: float = _b("far_fraction")
    scheme: Literal["boltzmann", "ani1"] = _b("scheme")
    min_wavenumber: float = _b("min_wavenumber")
    seed: int = _b("seed")
    sampling_method: Literal["gfn2-xtb", "dft"] = _b("sampling_method")
    hessians: bool = _b("hessians")
    xc: str = _b("xc")
    basis: str = _b("basis")
    fd_step: float | None = _b("fd_step")
    xtb_accuracy: float | None = _b("xtb_accuracy")
    fmax: float = _b("fmax")
    max_iter: int | None = _b("max_iter")
    workers: int = _b("workers")
    scheduler: str | None = _b("scheduler")
    threads: int | None = _b("threads")
    chunk: int = _b("chunk")
    retry_failed: bool = _b("retry_failed")
    root: str = "."


@dataclass
class ImportOptions:
    """Options of ``hessid qm import`` (a PyANI/hippynn HDF5 file, e.g. OpenREACT-CHON-EFH).

    Attributes:
        source: the PyANI HDF5 file.
        name: dataset name: writes ROOT/NAME/NAME.h5.
        group: the molecule group inside the file, when it holds several molecules.
        energy_unit: unit of the source energies (hartree, kcal/mol, ev, kj/mol).
        length_unit: unit of the source coordinates (angstrom, bohr, nm).
        force_unit: unit of the source forces, ENERGY/LENGTH.
        hessian_unit: unit of the source Hessians, ENERGY/LENGTH**2.
        forces_are_gradients: the source's forces key holds +dE/dx (flip the sign).
        subset: subset label of the imported structures (0 near, 1 far).
        symmetrize: store (H + H^T)/2.
        root: folder holding NAME/.
    """

    source: str
    name: str
    group: str | None = _i("group")
    energy_unit: str = _i("energy_unit")
    length_unit: str = _i("length_unit")
    force_unit: str = _i("force_unit")
    hessian_unit: str = _i("hessian_unit")
    forces_are_gradients: bool = _i("forces_are_gradients")
    subset: int = SUBSET_NEAR
    symmetrize: bool = _i("symmetrize")
    root: str = "."


def _build_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Sample structures of a molecule (ETKDG conformers, optimisation, "
                              "normal-mode sampling near and far from equilibrium) and label them "
                              "with energies, forces and Hessians: ROOT/NAME/NAME.h5.")
    add_dataclass(parser, BuildOptions)
    add_run_flags(parser, resume="continue an interrupted build (same settings; done structures "
                                 "are skipped)", overwrite="replace an existing dataset", progress=True)
    return parser


def _import_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Import a PyANI/hippynn HDF5 file (species, coordinates, energies, "
                              "forces, hessian) into ROOT/NAME/NAME.h5; units declared by the options.")
    add_dataclass(parser, ImportOptions, positional=["source"])
    add_run_flags(parser, overwrite="replace an existing dataset")
    return parser


def _validate_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Check an atomistic QM dataset; errors name the file, key and "
                              "structure. Exit 1 with --strict when structures failed or are pending.",
                        config=False)  # fmt: skip
    add_dataset_arguments(parser)
    parser.add_argument("--strict", action=ActionYesNo(no_prefix="no-"), default=False,
                        help="exit 1 when any structure failed or is not done")
    return parser


def _build(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(BuildOptions, cfg)
    t0 = time.perf_counter()
    kwargs = {k: v for k, v in vars(opts).items() if k not in ("smiles", "name")}
    res = build_qm_dataset(opts.smiles, opts.name, resume=cfg.resume, overwrite=cfg.overwrite,
                           progress=cfg.progress, **kwargs)  # fmt: skip
    save_config(_build_parser(prog), cfg, res.path.parent, "qm build")
    print(f"wrote {res.path}: {res.computed} structures computed, {res.skipped} already done, "
          f"{res.failed} failed, {res.per_structure_s:.2f} s per structure ({time.perf_counter() - t0:.1f} s)")
    for line in res.failures[:5]:
        print(f"  failed: {line}")
    if res.failed:
        raise JobFailed(f"{res.path}: {res.failed} structure(s) failed (recorded in the file; "
                        "`hessid qm validate` lists them)")


def _import(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(ImportOptions, cfg)
    t0 = time.perf_counter()
    check_dataset_name(opts.name)
    kwargs = {k: v for k, v in vars(opts).items() if k not in ("source", "name")}
    path = import_pyani(opts.source, opts.name, overwrite=cfg.overwrite, **kwargs)
    save_config(_import_parser(prog), cfg, path.parent, "qm import")
    print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")


def _validate(cfg: Namespace, prog: str) -> None:
    path = qm_dataset_path(cfg.name, cfg.root)
    summary = validate_qm_dataset(path)
    print(f"{path}: " + json.dumps(summary))
    if cfg.strict and (summary["n_failed"] or summary["n_pending"]):
        raise JobFailed(f"{path}: {summary['n_failed']} failed, {summary['n_pending']} pending structure(s)")


#: action → (parser factory, help, runner): data actions here, training actions from qm_train
_ACTIONS = {
    "build": (_build_parser, "sample and label structures of a molecule (GFN2-xTB or DFT)", _build),
    "import": (_import_parser, "import a PyANI/hippynn HDF5 file (units declared)", _import),
    "validate": (_validate_parser, "check an atomistic QM dataset", _validate),
    **QM_TRAIN_ACTIONS,
}


def build_parser(prog: str = "hessid qm") -> ArgumentParser:
    """The parser of ``hessid qm`` with one subcommand per action."""
    parser = new_parser(prog, "Atomistic QM datasets (docs/atomistic.md).", config=False, logging_flags=False)
    sub = parser.add_subcommands(dest="subcommand", required=True)
    for name, (make, help_, _) in _ACTIONS.items():
        sub.add_subcommand(name, make(f"{prog} {name}"), help=help_)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run the parsed ``hessid qm`` action; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError: bad SMILES, unsupported element, invalid options or data (exit 2).
        FileNotFoundError: a missing dataset or source (exit 2).
        FileExistsError: the dataset exists and neither --resume nor --overwrite (exit 2).
        JobFailed: structures failed (build) or --strict found failed/pending ones (exit 1).
    """
    action = cfg.subcommand
    _ACTIONS[action][2](cfg[action], f"{parser.prog} {action}")
    return 0
