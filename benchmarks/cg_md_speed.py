"""CG MD speed: steps/s × replicas of hessid's BAOAB integrator, and TorchMD's with the same model.

Prints one JSON object. For n = 10/35/80 beads and R = 1 and 20 replicas, on CPU (1 thread and
torch's default) and on CUDA when available: steps/s and replica-steps/s (steps/s × R). The
model is ``HarmonicChainPotential`` (or ``--model PATH`` via ``load_potential``); TorchMD
(``pip install torchmd``) runs the same model through a duck-typed force object when
importable, otherwise it is reported as unavailable. Nothing here is imported by hessid.

    python benchmarks/cg_md_speed.py [--steps 300] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from hessid.training.simulate import HarmonicChainPotential, LangevinBAOAB, energy_and_forces


def chain(n_replicas: int, n_beads: int, device, dtype) -> torch.Tensor:
    x = torch.zeros(n_replicas, n_beads, 3, dtype=dtype)  # (R, n, 3) Å
    x[:, :, 0] = 3.8 * torch.arange(n_beads)
    x[:, :, 1] = 0.3 * (torch.arange(n_beads) % 2)
    return x.to(device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_hessid(potential, n_beads, n_replicas, n_steps, device, dtype=torch.float32) -> float:
    integ = LangevinBAOAB(timestep=2.0, temperature=300.0, friction=1.0, masses=12.0,
                          bead_types=torch.zeros(n_beads, dtype=torch.long))
    state = integ.init(chain(n_replicas, n_beads, device, dtype), potential, seed=0)
    for _ in range(20):
        state = integ.step(state, potential)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        state = integ.step(state, potential)
    sync(device)
    return n_steps / (time.perf_counter() - t0)


def time_torchmd(potential, n_beads, n_replicas, n_steps, device, dtype=torch.float32) -> dict:
    """TorchMD's Integrator with our potential as its force provider (best effort)."""
    try:
        from torchmd.integrator import Integrator, maxwell_boltzmann
        from torchmd.systems import System
    except Exception as exc:  # not installed here
        return {"available": False, "reason": f"torchmd not importable: {type(exc).__name__}: {exc}"}
    try:
        bead_types = torch.zeros(n_beads, dtype=torch.long)

        class SameModel:  # TorchMD calls forces.compute(pos, box, forces) -> energies
            par = None

            def compute(self, pos, box, forces, **_):
                e, f = energy_and_forces(potential, pos, bead_types)
                forces[:] = f
                return e.detach().cpu().tolist()

        system = System(n_beads, n_replicas, dtype, device)
        system.set_positions(chain(n_replicas, n_beads, "cpu", torch.float64).permute(1, 2, 0).numpy())
        system.set_box(torch.zeros(n_replicas, 3))
        masses = torch.full((n_beads,), 12.0)
        system.set_velocities(maxwell_boltzmann(masses, T=300.0, replicas=n_replicas))
        integ = Integrator(system, SameModel(), 2.0, device, gamma=1.0, T=300.0)
        integ.step(niter=20)
        sync(device)
        t0 = time.perf_counter()
        integ.step(niter=n_steps)
        sync(device)
        return {"available": True, "steps_per_s": n_steps / (time.perf_counter() - t0)}
    except Exception as exc:
        return {"available": False, "reason": f"torchmd importable but the adapter failed: {type(exc).__name__}: {exc}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", default=None, help="checkpoint for load_potential (default: harmonic chain)")
    args = ap.parse_args()
    if args.model:
        from hessid.training.models import load_potential

        potential, model_name = load_potential(args.model), args.model
    else:
        potential, model_name = HarmonicChainPotential(), "HarmonicChainPotential (bonds + angles)"
    configs = [("cpu", 1), ("cpu", torch.get_num_threads())]
    if torch.cuda.is_available():
        configs.append(("cuda", None))
    default_threads = torch.get_num_threads()
    rows = []
    for device, threads in configs:
        if threads is not None:
            torch.set_num_threads(threads)
        pot = potential.to(device)
        for n_beads in (10, 35, 80):
            for n_replicas in (1, 20):
                sps = time_hessid(pot, n_beads, n_replicas, args.steps, device)
                tmd = time_torchmd(pot, n_beads, n_replicas, args.steps, device)
                row = {"device": device, "threads": threads, "n_beads": n_beads, "n_replicas": n_replicas,
                       "hessid_steps_per_s": round(sps, 1), "hessid_replica_steps_per_s": round(sps * n_replicas, 1),
                       "torchmd": tmd}
                if tmd.get("available"):
                    row["speed_ratio_hessid_over_torchmd"] = round(sps / tmd["steps_per_s"], 3)
                rows.append(row)
        torch.set_num_threads(default_threads)
    print(json.dumps({
        "benchmark": "cg_md_speed", "model": model_name, "integrator": "BAOAB, 2 fs, 1/ps, 300 K, float32",
        "steps_timed": args.steps, "machine": platform.platform(), "processor": platform.processor(),
        "cpu_threads_default": default_threads, "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
