"""CG MD speed: steps/s × replicas of hessid's BAOAB integrator against TorchMD's, same model.

For n = 10/35/80 beads and R = 1 and 20 replicas: steps/s and replica-steps/s (steps/s × R) of

- ``hessid``: :class:`hessid.training.md.simulation.LangevinBAOAB` ``step`` (the loop ``run`` drives;
  replica checks on: non-finite values and the Cα–Cα bond range);
- ``torchmd``: TorchMD's ``Integrator`` (velocity Verlet + Langevin kick) with the model plugged
  in the way TorchMD does it for neural potentials: ``torchmd.forces.Forces(par, terms=[],
  external=E)`` where ``E.calculate(pos, box) -> (energy (R,), forces (R, n, 3))`` (the
  interface of ``torchmdnet.calculators.External``);
- ``torchmd_bare``: the same ``Integrator`` with a minimal force object whose ``compute`` calls
  the model once (no per-replica bookkeeping of ``Forces.compute``): TorchMD's integrator cost
  alone.

Every path evaluates the model through the same :func:`energy_and_forces` (one batched autograd
call per step), in float32, with the same timestep (2 fs), friction (1/ps), temperature
(300 K), masses (12 amu), replica count, start structure (an ideal Cα helix) and thread count
(1 by default). Models: ``HarmonicChainPotential`` (bonds + angles: the integrator's own cost
dominates) and hessid's CGSchNet ``CGPotential`` (TorchMD-Net graph network + priors, random
weights, seeded; skipped with a reason if it cannot be built), or ``--model PATH``
(``load_potential``). The implementations are timed in short blocks in rotating order over
``--repeats`` rounds; the best block is reported (other load on a shared machine only slows a
block down), with the median and the ratio hessid / TorchMD of the best blocks (> 1: hessid
faster); the same from thread CPU time (``time.thread_time``, exact for one torch thread),
which other processes on a shared machine disturb much less than wall time.

TorchMD (``pip install torchmd``) is not a hessid dependency: when it is not importable the
output says ``"available": false`` with the reason and only hessid is timed. Nothing here is
imported by hessid.

    python benchmarks/cg_md_speed.py [--seconds 0.25] [--repeats 7] [--threads 1]
        [--models harmonic,cgschnet] [--model PATH] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as im
import math
import statistics
import sys
import time

import torch
from _common import finish, machine_info

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.learning.models import CGPotential, load_potential
from hessid.training.learning.priors import PriorParameters
from hessid.training.md.integrator import LangevinBAOAB, energy_and_forces

TIMESTEP_FS, TEMPERATURE_K, FRICTION_PER_PS, MASS_AMU = 2.0, 300.0, 1.0, 12.0
SIZES, REPLICAS = (10, 35, 80), (1, 20)


def helix(n_beads: int, dtype=torch.float32) -> torch.Tensor:
    """Ideal Cα α-helix (radius 2.3 Å, rise 1.5 Å, 100°/residue; Cα–Cα ≈ 3.83 Å), (n, 3) Å."""
    i = torch.arange(n_beads, dtype=torch.float64)
    phi = i * math.radians(100.0)
    x = torch.stack([2.3 * torch.cos(phi), 2.3 * torch.sin(phi), 1.5 * i], dim=1)  # (n, 3)
    return x.to(dtype)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def torchmd_status() -> dict:
    try:
        import torchmd.forces  # noqa: F401, PLC0415 # optional: TorchMD is not a hessid dependency
        import torchmd.integrator  # noqa: F401, PLC0415 # optional: TorchMD is not a hessid dependency
        import torchmd.systems  # noqa: F401, PLC0415 # optional: TorchMD is not a hessid dependency
    except Exception as exc:  # not installed here: hessid does not depend on it
        return {"available": False, "reason": f"torchmd not importable: {type(exc).__name__}: {exc}"}
    return {"available": True, "version": _version("torchmd")}


def _version(pkg: str) -> str | None:
    try:
        return im.version(pkg)
    except im.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------- runners
# Each runner is built once per (model, n, R) and returns advance(n_steps) plus a state probe.


def hessid_runner(potential, n_beads, n_replicas, device, dtype, seed=0):
    integ = LangevinBAOAB(timestep=TIMESTEP_FS, temperature=TEMPERATURE_K, friction=FRICTION_PER_PS,
                          masses=MASS_AMU, bead_types=torch.zeros(n_beads, dtype=torch.long))
    x0 = helix(n_beads, dtype).expand(n_replicas, n_beads, 3).contiguous().to(device)  # (R, n, 3)
    box = {"state": integ.init(x0, potential, seed=seed)}

    def advance(n_steps: int):
        s = box["state"]
        for _ in range(n_steps):
            s = integ.step(s, potential)
        box["state"] = s

    def probe() -> dict:
        s = box["state"]
        return {"kinetic_temperature_K": round(float(integ.kinetic_temperature(s).mean()), 1),
                "replicas_running": int(s.active.sum())}

    return advance, probe


class ExternalModel:
    """``torchmdnet.calculators.External``'s interface around a CG potential (one batched call)."""

    def __init__(self, potential, bead_types):
        self.potential, self.bead_types = potential, bead_types

    def calculate(self, pos, box):
        energy, forces = energy_and_forces(self.potential, pos, self.bead_types)  # (R,), (R, n, 3)
        return energy, forces


class BareForces:
    """Minimal ``Forces`` stand-in: ``compute`` fills ``forces`` in place, returns energies."""

    par = None

    def __init__(self, external: ExternalModel):
        self.external = external

    def compute(self, pos, box, forces, **_):
        energy, f = self.external.calculate(pos, box)
        forces.copy_(f)
        return energy.cpu().tolist()


def torchmd_runner(potential, n_beads, n_replicas, device, dtype, bare: bool, seed=0):
    from torchmd.forces import Forces  # noqa: PLC0415 # optional: TorchMD is not a hessid dependency
    from torchmd.integrator import Integrator, kinetic_energy, kinetic_to_temp, maxwell_boltzmann  # noqa: PLC0415 # optional: TorchMD is not a hessid dependency
    from torchmd.systems import System  # noqa: PLC0415 # optional: TorchMD is not a hessid dependency

    external = ExternalModel(potential, torch.zeros(n_beads, dtype=torch.long, device=device))
    if bare:
        forces = BareForces(external)
    else:
        par = type("Par", (), {"masses": [MASS_AMU] * n_beads, "nonbonded_params": None,
                               "device": str(device)})()  # what Forces reads with no classical term
        forces = Forces(par, terms=[], external=external)
    system = System(n_beads, n_replicas, dtype, device)
    system.set_positions(helix(n_beads, torch.float64).numpy()[:, :, None])  # (n, 3, 1) → all R
    system.set_box(torch.zeros(3).numpy())  # no periodic box
    system.set_masses(torch.full((n_beads,), MASS_AMU))
    torch.manual_seed(seed)
    system.set_velocities(maxwell_boltzmann(system.masses, T=TEMPERATURE_K, replicas=n_replicas))
    forces.compute(system.pos, system.box, system.forces)  # initial forces, as TorchMD's run does
    integ = Integrator(system, forces, TIMESTEP_FS, device, gamma=FRICTION_PER_PS, T=TEMPERATURE_K)

    def advance(n_steps: int):
        integ.step(niter=n_steps)

    def probe() -> dict:
        ekin = kinetic_energy(integ.masses, system.vel).flatten()  # (R,)
        temp = kinetic_to_temp(ekin, n_beads)
        finite = torch.isfinite(system.pos).flatten(1).all(1)
        return {"kinetic_temperature_K": round(float(temp[finite].mean()) if finite.any() else float("nan"), 1),
                "replicas_finite": int(finite.sum())}

    return advance, probe


# ------------------------------------------------------------------------------- timing


def time_config(potential, n_beads, n_replicas, device, dtype, tmd_ok, seconds, repeats, max_steps):
    runners = {"hessid": hessid_runner(potential, n_beads, n_replicas, device, dtype)}
    if tmd_ok:
        for name, bare in (("torchmd", False), ("torchmd_bare", True)):
            try:
                runners[name] = torchmd_runner(potential, n_beads, n_replicas, device, dtype, bare)
            except Exception as exc:
                runners[name] = exc
    if not tmd_ok:
        runners["torchmd"] = runners["torchmd_bare"] = RuntimeError("torchmd not importable (see 'torchmd' above)")
    errors = {k: f"{type(v).__name__}: {v}" for k, v in runners.items() if isinstance(v, Exception)}
    live = {k: v for k, v in runners.items() if not isinstance(v, Exception)}
    for advance, _ in live.values():  # warm-up (allocator, lazy init, neighbour-list kernels)
        advance(3)
    sync(device)
    t0 = time.perf_counter()  # calibrate the step count on hessid
    live["hessid"][0](3)
    sync(device)
    per_step = (time.perf_counter() - t0) / 3
    n_steps = int(min(max_steps, max(5, seconds / max(per_step, 1e-9))))
    rates: dict[str, list[float]] = {k: [] for k in live}
    cpu_rates: dict[str, list[float]] = {k: [] for k in live}
    names = list(live)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            sync(device)
            t0, c0 = time.perf_counter(), time.thread_time()
            live[name][0](n_steps)
            sync(device)
            rates[name].append(n_steps / (time.perf_counter() - t0))
            cpu_rates[name].append(n_steps / max(time.thread_time() - c0, 1e-9))
    out = {"n_beads": n_beads, "n_replicas": n_replicas, "steps_timed": n_steps, "repeats": repeats}
    for name in runners:
        if name in errors:
            out[name] = {"available": False, "reason": errors[name]}
            continue
        sps = max(rates[name])  # best block: the one least slowed by other load on the machine
        out[name] = {"steps_per_s": round(sps, 1), "replica_steps_per_s": round(sps * n_replicas, 1),
                     "median_steps_per_s": round(statistics.median(rates[name]), 1),
                     "min_steps_per_s": round(min(rates[name]), 1),
                     "cpu_time_steps_per_s": round(max(cpu_rates[name]), 1), **live[name][1]()}
    for name in ("torchmd", "torchmd_bare"):
        if name in live:
            out[f"ratio_hessid_over_{name}"] = round(out["hessid"]["steps_per_s"] / out[name]["steps_per_s"], 3)
            out[f"cpu_time_ratio_hessid_over_{name}"] = round(
                out["hessid"]["cpu_time_steps_per_s"] / out[name]["cpu_time_steps_per_s"], 3)
    return out


def build_models(names: list[str], path: str | None, device) -> dict:
    models: dict = {}
    if path:
        models[path] = load_potential(path, map_location=device)
        return models
    for name in names:
        if name == "harmonic":
            models["HarmonicChainPotential"] = HarmonicChainPotential().to(device)
        elif name == "cgschnet":
            try:
                torch.manual_seed(0)
                models["CGPotential (CGSchNet 64×4, cutoff 3–12 Å, + priors; random weights)"] = (
                    CGPotential(["ALA"], PriorParameters()).to(device).eval())
            except Exception as exc:
                models["CGPotential"] = exc
        else:
            raise SystemExit(f"unknown model {name!r} (harmonic, cgschnet)")
    return models


def markdown(report: dict) -> str:
    lines = ["| model | device | threads | beads | R | hessid steps/s | hessid replica-steps/s | "
             "TorchMD steps/s | TorchMD bare steps/s | hessid / TorchMD | hessid / TorchMD bare | "
             "CPU-time ratio hessid / TorchMD | CPU-time ratio hessid / TorchMD bare |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for block in report["results"]:
        if "error" in block:
            lines.append(f"| {block['model']} | {block['device']} | {block['threads']} | — | — | "
                         f"not run: {block['error']} | | | | | | | |")
            continue
        for row in block["rows"]:
            def g(name, key="steps_per_s", row=row):
                v = row.get(name, {})
                return f"{v[key]:,.1f}" if key in v else "n/a"

            lines.append(
                f"| {block['model'].split(' (')[0]} | {block['device']} | {block['threads']} | {row['n_beads']} | "
                f"{row['n_replicas']} | {g('hessid')} | {g('hessid', 'replica_steps_per_s')} | {g('torchmd')} | "
                f"{g('torchmd_bare')} | {row.get('ratio_hessid_over_torchmd', 'n/a')} | "
                f"{row.get('ratio_hessid_over_torchmd_bare', 'n/a')} | "
                f"{row.get('cpu_time_ratio_hessid_over_torchmd', 'n/a')} | "
                f"{row.get('cpu_time_ratio_hessid_over_torchmd_bare', 'n/a')} |")
    return "\n".join(lines) + "\n"


def run_all(args, devices, tmd, results) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    replicas = [int(s) for s in args.replicas.split(",")]
    for device in devices:
        for model_name, potential in build_models(args.models.split(","), args.model, device).items():
            block = {"model": model_name, "device": device, "threads": args.threads if device == "cpu" else None}
            if isinstance(potential, Exception):
                block["error"] = f"{type(potential).__name__}: {potential}"
                results.append(block)
                continue
            block["rows"] = [time_config(potential, n, r, device, torch.float32, tmd["available"], args.seconds,
                                         args.repeats, args.max_steps) for n in sizes for r in replicas]
            results.append(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.25, help="target seconds per timed block (0.25)")
    ap.add_argument("--repeats", type=int, default=7, help="timed blocks per implementation (7)")
    ap.add_argument("--max-steps", type=int, default=2000, help="cap on steps per timed block")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (1)")
    ap.add_argument("--models", default="harmonic,cgschnet", help="comma list: harmonic, cgschnet")
    ap.add_argument("--model", default=None, help="checkpoint for load_potential (replaces --models)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bead counts (10,35,80)")
    ap.add_argument("--replicas", default=",".join(map(str, REPLICAS)), help="replica counts (1,20)")
    ap.add_argument("--no-cuda", action="store_true", help="skip CUDA even when available")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    args = ap.parse_args()
    tmd = torchmd_status()
    machine = machine_info()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    torch.set_num_threads(args.threads)
    results = []
    t_start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON (warp/torchmd-net print)
        run_all(args, devices, tmd, results)
    report = {
        "benchmark": "cg_md_speed",
        "integrators": {"hessid": "LangevinBAOAB.step (BAOAB, replica checks on)",
                        "torchmd": "torchmd.integrator.Integrator (VV + Langevin) + torchmd.forces.Forces(external=...)",
                        "torchmd_bare": "torchmd.integrator.Integrator + minimal compute() calling the model"},
        "conditions": {"timestep_fs": TIMESTEP_FS, "friction_per_ps": FRICTION_PER_PS,
                       "temperature_K": TEMPERATURE_K, "mass_amu": MASS_AMU, "dtype": "float32",
                       "start": "ideal Cα helix, same for every replica", "cpu_threads": args.threads},
        "torchmd": tmd,
        "machine": {**machine, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "results": results,
    }
    finish(report, ("hessid", "torch", "torchmd", "torchmd-net"), indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report))


if __name__ == "__main__":
    main()
