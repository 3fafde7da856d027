"""Term-1 finite-difference error study (results in docs/data.md).

For a thermal chignolin frame (amber14 + GBn2, HBond constraints as in `hessid data simulate`),
Cα map, Gaussian probes: relative error of the central difference Term 1 = P∇²HPᵀv at step ε
(largest atomic displacement, nm) against a Richardson-extrapolated reference computed on the
Reference platform (double precision; D(h), D(h/2), D(h/4) with h = 1e-3 nm, two Richardson
levels, truncation O(h⁶)). Per platform (Reference, CPU mixed precision; CUDA if present) and
the symmetry check v₁·(Hv₂) vs v₂·(Hv₁). Prints JSON.

    python benchmarks/term1_fd_error.py [--sequence GYDPETGTWG] [--probes 4] [--platforms Reference,CPU]
"""

from __future__ import annotations

import argparse
import datetime

import numpy as np
import openmm
import openmm.unit as u
from _common import finish, machine_info

from hessid.probes import draw_probes
from hessid.training.data.aa_md import choose_platform, create_system
from hessid.training.data.cg_map import ca_map
from hessid.training.data.structures import build_from_sequence
from hessid.training.data.targets import term1_fd


def _context(system, name, threads=1, precision=None):
    plat, props = choose_platform(name, threads if name == "CPU" else None, precision)
    return openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequence", default="GYDPETGTWG")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--platforms", default="Reference,CPU")
    ap.add_argument("--md-steps", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--h", type=float, default=1e-4, help="Richardson base step, nm")
    ap.add_argument("--solvents", default="gbn2,vacuum")
    args = ap.parse_args(argv)

    s = build_from_sequence(args.sequence)
    avail = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    names = [p for p in args.platforms.split(",") if p]
    if "CUDA" in avail and "CUDA" not in names:
        names.append("CUDA")
    eps_grid = [float(e) for e in np.logspace(-6, -2, 17)]
    out = {"benchmark": "term1_fd_error", "date": datetime.date.today().isoformat(),
           "machine": machine_info(),
           "openmm": openmm.__version__, "epsilon_definition": "largest atomic displacement, nm",
           "reference": f"Richardson (2 levels) on Reference from h={args.h:g}, h/2, h/4 nm",
           "error": "max over probes of ||T1(eps) - ref|| / ||ref|| (per-probe 2-norm); median and max over frames",
           "epsilon_nm": eps_grid, "systems": {}}  # fmt: skip
    for solvent in args.solvents.split(","):
        system = create_system(s.topology, "amber14-all.xml", solvent, "HBonds")
        # thermal frames: minimise + Langevin MD on CPU, a frame every 500 steps
        integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picoseconds)
        integ.setRandomNumberSeed(1)
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
        ctx.setPositions(s.positions_nm())
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0)
        ctx.setVelocitiesToTemperature(300 * u.kelvin, 1)
        integ.step(args.md_steps)
        frames = []
        for _ in range(args.frames):
            integ.step(500)
            frames.append(np.asarray(ctx.getState(getPositions=True).getPositions(asNumpy=True)
                                     .value_in_unit(u.nanometer)))  # fmt: skip
        del ctx
        q = ca_map(s.topology)[0].projector.numpy()
        n = q.shape[0]
        v = draw_probes("gaussian", 0, [0], args.probes, 3 * n).numpy().reshape(args.probes, n, 3)
        ref_ctx = _context(system, "Reference")
        refs, changes = [], []
        for r in frames:
            d = [term1_fd(ref_ctx, r, q, v, args.h / 2**j) for j in range(3)]
            r1 = [(4 * d[j + 1] - d[j]) / 3 for j in range(2)]
            refs.append((16 * r1[1] - r1[0]) / 15)  # (k, n, 3) kcal/mol/Å²
            changes.append(float(np.abs(refs[-1] - r1[1]).max() / np.abs(refs[-1]).max()))

        def rel(x, ref):
            return float(np.max(np.linalg.norm((x - ref).reshape(x.shape[0], -1), axis=1)
                                / np.linalg.norm(ref.reshape(x.shape[0], -1), axis=1)))  # fmt: skip

        res = {"system": f"{args.sequence} amber14+{solvent} HBonds, {s.n_atoms} atoms, Cα map "
               f"n={n}, {args.probes} Gaussian probes, {args.frames} frames",
               "reference_last_level_change": changes, "platforms": {}}  # fmt: skip
        for name in names:
            variants = [(name, None)] if name != "CUDA" else [("CUDA", "mixed"), ("CUDA", "double")]
            for pname, prec in variants:
                ctx = _context(system, pname, precision=prec)
                errs = np.array([[rel(term1_fd(ctx, r, q, v, e), ref) for e in eps_grid]
                                 for r, ref in zip(frames, refs, strict=True)])  # (frames, eps)
                med, worst = np.median(errs, axis=0), errs.max(axis=0)
                best = int(np.argmin(worst))
                syms = []
                for r in frames:
                    t1 = term1_fd(ctx, r, q, v[:2], eps_grid[best]).reshape(2, -1)
                    a, b = v[0].ravel() @ t1[1], v[1].ravel() @ t1[0]
                    syms.append(abs(a - b) / max(abs(a), abs(b)))
                label = pname if prec is None else f"{pname}-{prec}"
                res["platforms"][label] = {
                    "median_rel_error": med.tolist(), "max_rel_error": worst.tolist(),
                    "best_epsilon_nm": eps_grid[best], "best_max_rel_error": float(worst[best]),
                    "symmetry_rel_error_at_best": float(max(syms)),
                }
                del ctx
        out["systems"][solvent] = res
    return finish(out, ("hessid", "openmm"))


if __name__ == "__main__":
    main()
