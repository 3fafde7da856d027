"""GFN2-xTB central-difference Hessian: error against the step (results in docs/atomistic.md,
"FD step"). For a GFN2-optimised minimum of the molecule (RDKit ETKDG conformer, seed fixed)
and a thermal normal-mode sample of it (300 K; far: 1000 K), prints the error of the 3-point
central difference at each step h and tblite accuracy against a Richardson-extrapolated
reference at accuracy 1e-4 (hessid.training.qm.methods.fd_step_study). Prints JSON.

    python benchmarks/qm_fd_step.py [--smiles CCO] [--accuracies 1.0,0.01,0.0001]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import finish, machine_info

from hessid.training.qm.methods import STUDY_STEPS, MethodSpec, compute, fd_step_study
from hessid.training.qm.sampling import (
    atomic_masses,
    etkdg_conformers,
    molecule_from_smiles,
    normal_mode_samples,
    optimise,
    vibrational_analysis,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smiles", default="CCO")
    p.add_argument("--accuracies", default="1.0,0.01,0.0001")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    mol = molecule_from_smiles(args.smiles)
    spec = MethodSpec()
    x0, _, _ = optimise(mol.species, etkdg_conformers(mol, 1, args.seed)[0], spec)
    va = vibrational_analysis(compute(mol.species, x0, spec).hessian, x0, atomic_masses(mol.species))
    rng = np.random.default_rng(args.seed)
    points = {"minimum": x0,
              "near_300K": normal_mode_samples(x0, va, 300.0, rng)[0],
              "far_1000K": normal_mode_samples(x0, va, 1000.0, rng)[0]}
    accs = [float(a) for a in args.accuracies.split(",")]
    studies = {}
    for label, x in points.items():
        studies[label] = fd_step_study(mol.species, x, spec, steps=STUDY_STEPS, accuracies=accs)
    result = {"benchmark": "qm_fd_step", "machine": machine_info(), "smiles": args.smiles,
              "default_step": spec.fd_step, "default_accuracy": spec.xtb_accuracy, "studies": studies}
    return finish(result, packages=("hessid", "tblite", "numpy"), out=args.out)


if __name__ == "__main__":
    main()
