"""Seconds per Hessian of one structure: GFN2-xTB (tblite, central differences of analytic
gradients, 6N gradients) and DFT (PySCF analytic, ωB97X-D3(BJ)/6-31G(d) unless --xc/--basis),
at a GFN2-optimised ETKDG conformer. Wall and process CPU time with the machine's load (it is
often shared). Results in docs/atomistic.md, "Cost". Prints JSON.

    python benchmarks/qm_hessian_cost.py [--smiles CCO] [--repeats 3] [--no-dft] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import finish, machine_info

from hessid.training.qm.methods import MethodSpec, compute
from hessid.training.qm.sampling import etkdg_conformers, molecule_from_smiles, optimise


def _time(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": walls, "cpu_s": cpus, "wall_s_min": min(walls)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smiles", default="CCO")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dft-repeats", type=int, default=1)
    p.add_argument("--no-dft", action="store_true")
    p.add_argument("--xc", default="wb97x-d3bj")
    p.add_argument("--basis", default="6-31g(d)")
    p.add_argument("--threads", type=int, default=None, help="PySCF threads (default: all cores)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    mol = molecule_from_smiles(args.smiles)
    gfn2 = MethodSpec()
    x0, _, _ = optimise(mol.species, etkdg_conformers(mol, 1, 7)[0], gfn2)
    result = {"benchmark": "qm_hessian_cost", "machine": machine_info(), "smiles": args.smiles,
              "n_atoms": int(len(mol.species))}
    result["gfn2_xtb"] = {"fd_step": gfn2.fd_step, "xtb_accuracy": gfn2.xtb_accuracy,
                          "gradients": 6 * len(mol.species) + 1,
                          **_time(lambda: compute(mol.species, x0, gfn2), args.repeats)}
    print(json.dumps({"partial": "gfn2_xtb", **result["gfn2_xtb"]}), file=sys.stderr, flush=True)
    if not args.no_dft:
        dft = MethodSpec(name="dft", xc=args.xc, basis=args.basis, threads=args.threads)
        result["dft"] = {"method": dft.label, "threads": args.threads,
                         **_time(lambda: compute(mol.species, x0, dft), args.dft_repeats)}
    return finish(result, packages=("hessid", "tblite", "pyscf", "pyscf-dispersion", "numpy"), out=args.out)


if __name__ == "__main__":
    main()
