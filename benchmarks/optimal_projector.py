"""Variance-minimising projector Q* on real data: before/after (docs/benchmarks/optimal_projector.md).

For each system and projector (the constraint-aware reference and Q* with the residue-neighbour
mask ±0, ±1 residues and all atoms; ridge 1e-8, and 1e-2 where frames are few), on frames held
out from the fit:

* ``β E‖Q f‖²`` per frame (kcal/mol/Å²); between feasible projectors it differs only by
  ``β E tr Cov_R(Q f)`` (the mean force is projector independent);
* ``tr Term 1 = tr Q∇²U Qᵀ`` per frame by central FD of OpenMM forces along all 3n one-hot
  probes (CPU, 1 thread, mixed precision, ε = 1e-4 nm: relative error ≈ 2e-6), on a subset of
  the evaluation frames; and the paired check that ``g_t(Q) = tr T1_t(Q) − β‖Q f_t‖²`` has a
  projector-independent mean (its difference to the reference must be 0 within its s.e.);
* chignolin only (a trained FM model exists): ``β|dF|² = β‖Q f − F_θ‖²`` with the demo's FM
  model, its Hessian norm ``‖∇²U_θ‖_F`` as the signal, and the per-frame Frobenius SNR
  ``‖∇²U_θ‖_F / β|dF|²``; for ala2 the SNR gain implied is the ratio of the noise terms.

Data are copied (never modified): ala2 fit = run 3 every 5th frame (5000), eval = runs 0–2
every 25th frame (3000); chignolin (demo data, 120 frames): fit = frames 0–59, eval = 60–119,
and an in-sample row (fit and eval on all 120). Resumable: copies and FD traces are cached
under --scratch. Prints JSON (also written to SCRATCH/optimal_projector.json).

    nice python benchmarks/optimal_projector.py [--scratch /work/runs/scratch_qstar] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import openmm
import torch
from _common import finish, machine_info
from tqdm.auto import tqdm

from hessid.maps import constraint_aware_projector
from hessid.training.data import cg_map as cgm
from hessid.training.data.aa_md import choose_platform, create_system
from hessid.training.data.cg_map import ca_map
from hessid.training.data.io import copy_frames
from hessid.training.data.reader import open_dataset
from hessid.training.data.targets import DEFAULT_EPSILON_NM, term1_fd
from hessid.training.learning.hessians import hessian_autograd
from hessid.training.learning.models import load_potential
from hessid.training.pipelines.ala2 import backbone_map, dataset_topology
from hessid.units import beta as beta_of

ALA2 = Path("/work/runs/ala2/reference")
CHIGNOLIN = Path("/work/runs/demo_final/data/chignolin/chignolin.h5")
FM_MODEL = Path("/work/runs/demo_final/runs/FM/model.pt")


def _copy_ala2(scratch: Path, quick: bool) -> tuple[Path, Path]:
    step_fit, step_eval = (50, 250) if quick else (5, 25)
    fit = scratch / "ala2_fit" / "ala2_fit.h5"
    ev = scratch / "ala2_eval" / "ala2_eval.h5"
    if not fit.exists():
        copy_frames([(ALA2 / "ala2_r3" / "ala2_r3.h5", np.arange(0, 25000, step_fit))], fit)
    if not ev.exists():
        rows = np.arange(0, 25000, step_eval)
        srcs = [(ALA2 / f"ala2_r{r}" / f"ala2_r{r}.h5", rows) for r in range(3)]
        t = 3 * rows.size
        copy_frames(srcs, ev, frame_id=np.arange(t), time=0.5 * np.arange(1, t + 1))  # unique ids, increasing time
    return fit, ev


def _copy_chignolin(scratch: Path) -> Path:
    out = scratch / "chignolin" / "chignolin.h5"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CHIGNOLIN, out)
    return out


def _context(path: Path):
    with open_dataset(path) as ds:
        top = ds.topology()
        ff, solv, cons = (str(ds.attr(k)) for k in ("forcefield", "solvent", "constraints"))
    system = create_system(top, ff, solv, cons)
    plat, props = choose_platform("CPU", 1, None)
    return openmm.Context(system, openmm.VerletIntegrator(0.001), plat, props)


def _term1_traces(path: Path, projectors: dict, rows: np.ndarray, cache: Path, label: str) -> dict:
    """tr Term 1 per frame (rows) for each projector, full one-hot block by FD; cached per projector."""
    store = dict(np.load(cache)) if cache.exists() else {}
    todo = [k for k in projectors if f"{label}/{k}" not in store]
    if todo:
        ctx = _context(path)
        with open_dataset(path) as ds:
            pos = ds.coordinates(rows) / 10.0  # (F, N, 3) nm
        for k in todo:
            q = projectors[k]
            n = q.shape[0]
            probes = np.eye(3 * n).reshape(3 * n, n, 3)
            tr = np.empty(rows.size)
            for i in tqdm(range(rows.size), desc=f"{label} tr T1 {k}", leave=False):
                hv = term1_fd(ctx, pos[i], q, probes, DEFAULT_EPSILON_NM["mixed"])  # (3n, n, 3)
                tr[i] = np.trace(hv.reshape(3 * n, 3 * n))
            store[f"{label}/{k}"] = tr
            np.savez(cache, **store)  # per-projector done flag: its key
    return {k: store[f"{label}/{k}"] for k in projectors}


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def _sq_norms(q: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(T,) ‖Q f_t‖², f (T, N, 3)."""
    pf = np.einsum("nN,tNc->tnc", q, f)
    return (pf * pf).sum(axis=(1, 2))


def _evaluate(name, fit_path, fit_frames, eval_path, eval_rows, fd_rows, cg_map, variants, beta, scratch,
              model=None) -> dict:
    Q = {"constraint-aware": None}
    fits = {}
    for key, nb, ridge in variants:
        t0 = time.perf_counter()
        q, prov = cgm.fit_optimal_projector(fit_path, fit_frames, nb, cg_map=cg_map, ridge=ridge)
        Q[key] = q
        fits[key] = {"neighbours": nb, "ridge": ridge, "fit_s": round(time.perf_counter() - t0, 3),
                     "fit_n_frames": prov["fit_n_frames"],
                     "beta_objective_fit_reference": beta * prov["objective_reference"],
                     "beta_objective_fit_optimal": beta * prov["objective_optimal"]}
    with open_dataset(eval_path) as ds:
        top = ds.topology()
        f = ds.forces(eval_rows)  # (T, N, 3)
        R = ds.coordinates(eval_rows)
    S = cg_map.weights.numpy()
    Q["constraint-aware"] = constraint_aware_projector(S, cg_map.projector.numpy(), cgm.hbond_pairs(top),
                                                       n_atoms=S.shape[1]).numpy()  # fmt: skip
    out = {"eval_frames": int(eval_rows.size), "fd_frames": int(fd_rows.size), "fits": fits, "projectors": {}}
    sq = {k: _sq_norms(q, f) for k, q in Q.items()}
    tr = _term1_traces(eval_path, Q, eval_rows[fd_rows], scratch / f"{name}_term1.npz", name)
    dF = None if model is None else _model_terms(model, np.einsum("nN,tNc->tnc", S, R), _TYPES[name.split("_")[0]])
    g_ref = tr["constraint-aware"] - beta * sq["constraint-aware"][fd_rows]
    for k, q in Q.items():
        m, se = _mean_se(beta * sq[k])
        tm, tse = _mean_se(tr[k])
        g = tr[k] - beta * sq[k][fd_rows]
        dm, dse = _mean_se(g - g_ref)
        row = {"beta_E_sq_projected_force": m, "se": se,
               "ratio_to_reference": m / float(np.mean(beta * sq["constraint-aware"])),
               "tr_term1": tm, "tr_term1_se": tse,
               "tr_term1_ratio_to_reference": tm / float(np.mean(tr["constraint-aware"])),
               "g_minus_reference_mean": dm, "g_minus_reference_se": dse,
               "max_abs_coefficient": float(np.abs(q).max()), "frobenius_norm": float(np.linalg.norm(q))}
        if dF is not None:
            pf = np.einsum("nN,tNc->tnc", q, f)
            noise = beta * ((pf - dF["model_forces"]) ** 2).sum(axis=(1, 2))  # β|dF|² per frame
            snr = dF["hessian_fro"] / noise
            row.update({"beta_dF2_mean": float(noise.mean()), "beta_dF2_median": float(np.median(noise)),
                        "snr_median": float(np.median(snr)), "snr_mean": float(snr.mean())})
        out["projectors"][k] = row
    if dF is not None:
        out["model_hessian_fro_mean"] = float(dF["hessian_fro"].mean())
    return out


def _model_terms(model_path, cg_coords: np.ndarray, bead_types) -> dict:
    """Model forces (T, n, 3) and Hessian Frobenius norms (T,) of the FM model at CG frames."""
    pot = load_potential(model_path)
    types = torch.as_tensor(bead_types, dtype=torch.long)
    forces, fro = [], []
    for x in cg_coords:
        pos = torch.as_tensor(x, dtype=pot.dtype)
        forces.append(pot.forces(pos, types).detach().double().numpy())
        fro.append(float(hessian_autograd(pot, pos, types).double().norm()))
    return {"model_forces": np.stack(forces), "hessian_fro": np.asarray(fro)}


#: bead types per system (the model's input)
_TYPES: dict = {}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", default="/work/runs/scratch_qstar")
    ap.add_argument("--quick", action="store_true", help="10× fewer ala2 frames, 10 FD frames")
    ap.add_argument("--fd-frames", type=int, default=None, help="frames with tr Term 1 (default 200 ala2, 24 chignolin)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "optimal_projector", "machine": machine_info(), "systems": {}}
    t_all = time.perf_counter()

    # ---------------------------------------------------------------- alanine dipeptide
    fit, ev = _copy_ala2(scratch, args.quick)
    cmap = backbone_map(dataset_topology(ev))[0]
    with open_dataset(ev) as ds:
        t_eval, temp = ds.n_frames, float(ds.temperature)
    n_fd = min(t_eval, args.fd_frames or (10 if args.quick else 200))
    rng = np.random.default_rng(0)
    variants = [("Q* nb=0", 0, 1e-8), ("Q* nb=1", 1, 1e-8), ("Q* all", None, 1e-8)]
    t0 = time.perf_counter()
    result["systems"]["ala2"] = {
        "data": "fit: run 3 every 5th frame; eval: runs 0-2 every 25th frame (12.5 ps apart)",
        "map": "5-bead backbone selection (training/pipelines/ala2.py backbone_map)",
        "temperature_K": temp, "beta": beta_of(temp),
        **_evaluate("ala2", fit, None, ev, np.arange(t_eval), np.sort(rng.choice(t_eval, n_fd, replace=False)),
                    cmap, variants, beta_of(temp), scratch)}  # fmt: skip
    result["systems"]["ala2"]["wall_s"] = round(time.perf_counter() - t0, 1)

    # ---------------------------------------------------------------- chignolin (demo data)
    chig = _copy_chignolin(scratch)

    with open_dataset(chig) as ds:
        top, temp = ds.topology(), float(ds.temperature)
        t_all_frames = ds.n_frames
    cmap, types, _, _ = ca_map(top)
    _TYPES["chignolin"] = types
    beta = beta_of(temp)
    variants = [("Q* nb=0", 0, 1e-8), ("Q* nb=1", 1, 1e-8), ("Q* all", None, 1e-8),
                ("Q* nb=0 ridge 1e-2", 0, 1e-2), ("Q* nb=1 ridge 1e-2", 1, 1e-2), ("Q* all ridge 1e-2", None, 1e-2)]
    half = t_all_frames // 2
    n_fd = min(half, args.fd_frames or (10 if args.quick else 24))
    model = FM_MODEL if FM_MODEL.exists() else None
    t0 = time.perf_counter()
    held = _evaluate("chignolin_heldout", chig, f"0:{half}", chig, np.arange(half, t_all_frames),
                     np.linspace(0, t_all_frames - half - 1, n_fd).astype(int), cmap, variants, beta, scratch, model)
    insample = _evaluate("chignolin_insample", chig, "all", chig, np.arange(t_all_frames),
                         np.linspace(0, t_all_frames - 1, n_fd).astype(int), cmap, variants[:3], beta, scratch, model)
    result["systems"]["chignolin"] = {
        "data": f"demo data ({t_all_frames} frames); held-out: fit 0:{half}, eval {half}:{t_all_frames}; "
                "in-sample: fit and eval on all frames",
        "map": "Ca selection (constraint-aware reference)", "temperature_K": temp, "beta": beta,
        "model": str(model) if model else None, "held_out": held, "in_sample": insample,
        "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    return finish(result, packages=("hessid", "numpy", "scipy", "torch", "openmm"),
                  out=scratch / "optimal_projector.json")


if __name__ == "__main__":
    main()
