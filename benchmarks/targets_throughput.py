"""Term-1 precompute throughput (results in docs/data.md).

For each system (chignolin and longer peptides, amber14 + GBn2, Cα map): simulate a few frames,
then run :func:`hessid.training.data.targets.compute_targets` with 1 and 2 worker processes
(``--threads`` CPU threads each) and report frame·probes/s and the fraction of time spent
inside OpenMM force evaluations (setPositions + getState(getForces)):

- ``openmm_fraction_end_to_end`` = OpenMM seconds / (wall of the whole call × workers), the
  call including validation, system construction and process start-up;
- ``openmm_fraction_steady`` = OpenMM seconds / seconds inside the workers' chunk tasks (the
  per-frame overhead we own: probe embedding, projection, pickling of results excluded);
- ``openmm_fraction_loop`` = OpenMM seconds / (compute loop wall × workers).

Prints JSON. ``python benchmarks/targets_throughput.py [--systems chignolin,hp35] [--probes 4]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import openmm
from _common import finish, machine_info

from hessid.training.data.aa_md import MDConfig, simulate
from hessid.training.data.reader import open_dataset
from hessid.training.data.structures import build_structure
from hessid.training.data.targets import compute_targets

SYSTEMS = {
    "chignolin": "GYDPETGTWG",  # 10 residues
    "hp35": "LSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF",  # villin headpiece, 35 residues
    "p80": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLG",
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="chignolin,hp35")
    ap.add_argument("--frames", default="chignolin:48,hp35:12,p80:6")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    ap.add_argument("--platform", default="CPU")
    ap.add_argument("--chunk-frames", type=int, default=4)
    args = ap.parse_args(argv)
    frames = {k: int(v) for k, v in (x.split(":") for x in args.frames.split(","))}

    out = {"benchmark": "targets_throughput", "date": datetime.date.today().isoformat(),
           "machine": machine_info(),
           "openmm": openmm.__version__, "platform": args.platform, "threads_per_worker": args.threads,
           "probes": args.probes, "results": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.systems.split(","):
            n_frames = frames.get(name, 8)
            build_structure(name, sequence=SYSTEMS[name], out_dir=tmp)
            t0 = time.perf_counter()
            path = simulate(name, MDConfig(steps=50 * n_frames, stride=50, platform=args.platform,
                                           threads=2 if args.platform == "CPU" else None,
                                           chunk_frames=n_frames), root=tmp, progress=False)  # fmt: skip
            md_s = time.perf_counter() - t0
            with open_dataset(path) as ds:
                n_atoms = ds.n_atoms
            for workers in (int(w) for w in args.workers.split(",")):
                res = compute_targets(path, n_probes=args.probes, platform=args.platform,
                                      threads=args.threads if args.platform == "CPU" else None,
                                      workers=workers, chunk_frames=args.chunk_frames,
                                      overwrite=True, progress=False)  # fmt: skip
                evals = 2 * args.probes * n_frames
                out["results"].append({
                    "system": name, "residues": len(SYSTEMS[name]), "atoms": n_atoms,
                    "frames": n_frames, "workers": workers, "wall_s": res.wall_s,
                    "frame_probes_per_s": res.frame_probes_per_s,
                    "ms_per_force_eval_in_openmm": 1e3 * res.openmm_s / evals,
                    "openmm_fraction_end_to_end": res.openmm_fraction,
                    "openmm_fraction_loop": res.openmm_s / (res.extra["loop_s"] * res.workers),
                    "openmm_fraction_steady": res.openmm_s / res.extra["worker_s"],
                    "md_setup_s": md_s,
                })  # fmt: skip
                print(json.dumps(out["results"][-1]), flush=True, file=__import__("sys").stderr)
            Path(path).unlink()
    return finish(out, ("hessid", "openmm"))


if __name__ == "__main__":
    main()
