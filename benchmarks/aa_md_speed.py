"""All-atom MD speed (ns/day) per solvent model, as ``hessid data simulate`` runs it (results
in docs/benchmarks/data.md).

Chignolin (GYDPETGTWG) built from its sequence like ``hessid data build`` (extended PPII start),
amber14-all.xml with ``gbn2``, ``obc2``, ``vacuum`` and ``explicit`` (TIP3P-FB box, 1 nm
padding, PME 1 nm cutoff), HBond constraints, LangevinMiddle 300 K, 1/ps, 2 fs, on the OpenMM
CPU platform. Each system is built with :func:`hessid.training.data.aa_md.create_system` (the
production code path), minimised (bounded iterations, not timed), warmed up, then timed over
blocks of ``--stride`` steps, each followed by the ``getState(positions, forces, energy)`` that
saving a frame costs, until ``--seconds`` have passed. HDF5 writes are not included (one
chunk write per ``chunk_frames`` frames; negligible next to the steps).

Prints one JSON object (machine, date, OpenMM version, threads, per-solvent atoms, steps,
seconds, ms/step, ns/day)::

    python benchmarks/aa_md_speed.py [--solvents gbn2,obc2,vacuum,explicit] [--seconds 8]
        [--threads 2] [--stride 100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import openmm
import openmm.app as app
import openmm.unit as u
from _common import finish, machine_info

from hessid.training.data.aa_md import create_system, forcefield_files, ns_per_day
from hessid.training.data.structures import build_from_sequence


def bench_solvent(solvent: str, structure, threads: int, stride: int, seconds: float,
                  padding_nm: float = 1.0, min_iterations: int = 300) -> dict:  # fmt: skip
    """Time LangevinMiddle MD of ``structure`` in ``solvent``; returns a result row (ns/day)."""
    top, pos = structure.topology, structure.positions_nm() * u.nanometer
    if solvent == "explicit":
        modeller = app.Modeller(top, pos)
        ff = app.ForceField(*forcefield_files("amber14-all.xml", solvent))
        modeller.addSolvent(ff, model="tip3p", padding=padding_nm * u.nanometer)
        top, pos = modeller.topology, modeller.positions
    system = create_system(top, "amber14-all.xml", solvent, "HBonds")
    integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 2 * u.femtosecond)
    integ.setRandomNumberSeed(0)
    plat = openmm.Platform.getPlatformByName("CPU")
    ctx = openmm.Context(system, integ, plat, {"Threads": str(threads)})
    ctx.setPositions(pos)
    if solvent == "explicit":
        ctx.setPeriodicBoxVectors(*top.getPeriodicBoxVectors())
    t0 = time.perf_counter()
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, min_iterations)
    setup_s = time.perf_counter() - t0
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 0)
    integ.step(2 * stride)  # warm-up (neighbour lists, PME grids, JIT of kernels)
    steps, t0 = 0, time.perf_counter()
    while True:
        integ.step(stride)
        ctx.getState(getPositions=True, getForces=True, getEnergy=True)
        steps += stride
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {"solvent": solvent, "atoms": system.getNumParticles(),
            "box_nm": (round(top.getPeriodicBoxVectors()[0][0].value_in_unit(u.nanometer), 3)
                       if solvent == "explicit" else None),
            "steps": steps, "seconds": round(elapsed, 3), "ms_per_step": 1e3 * elapsed / steps,
            "ns_per_day": ns_per_day(steps, 2.0, elapsed), "minimise_s": round(setup_s, 2)}  # fmt: skip


def main(argv=None) -> dict:
    """Run the benchmark; prints and returns the JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solvents", default="gbn2,obc2,vacuum,explicit")
    ap.add_argument("--sequence", default="GYDPETGTWG", help="default chignolin")
    ap.add_argument("--seconds", type=float, default=8.0, help="timed wall seconds per solvent")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU platform threads")
    ap.add_argument("--stride", type=int, default=100, help="steps between state reads (frames)")
    ap.add_argument("--padding", type=float, default=1.0, help="explicit box padding, nm")
    args = ap.parse_args(argv)

    out = {"benchmark": "aa_md_speed", "date": datetime.date.today().isoformat(),
           "machine": machine_info(), "openmm": openmm.__version__, "platform": "CPU",
           "threads": args.threads, "sequence": args.sequence, "timestep_fs": 2.0,
           "stride": args.stride, "results": []}  # fmt: skip
    structure = build_from_sequence(args.sequence)
    for solvent in args.solvents.split(","):
        row = bench_solvent(solvent, structure, args.threads, args.stride, args.seconds,
                            padding_nm=args.padding)  # fmt: skip
        out["results"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return finish(out, ("hessid", "openmm"))


if __name__ == "__main__":
    main()
