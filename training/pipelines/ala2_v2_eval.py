"""The second alanine-dipeptide study (docs/results/ala2_v2.md): CG MD, metrics and the gate.

Metrics (pre-registered):

1. mean-force error at the test configurations, noise-corrected with the labels' block errors
   (:func:`hessid.training.evaluation.statistics.noise_corrected_force_error`);
2. soft-mode Hessian error on the label Hessian's 11 softest modes
   (:func:`hessid.training.evaluation.statistics.soft_mode_hessian_error`);
3. ΔG(αR−β) = −kT ln(p_αR / p_β) of the model's CG MD minus the reference's;
4. φ/ψ free-energy RMSE over the 36 × 36 bins whose reference free energy is below 3 kcal/mol,
   both surfaces shifted to zero mean over those bins.

CG MD per model: 16 replicas, half started in αR and half in β/PII (frames of the held-out
run, the same for every arm at a replicate), BAOAB at the settings' time step; after the burn-in
the αR↔β correlation time τ (integrated autocorrelation time of the αR indicator,
``pymbar.timeseries``) and the agreement of the two halves' p(αR) are recorded per model.

Units: Å, kcal/mol, K, ps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hessid.training.data.labels import pymbar_timeseries
from hessid.training.evaluation.evaluate import filter_replicas, load_simulation
from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.models import PriorOnlyPotential, load_potential
from hessid.training.md.simulation import simulate
from hessid.training.pipelines import ala2
from hessid.training.pipelines.runner import read_json, write_json
from hessid.units import KB_KCAL_PER_MOL_K


def _forces(pot, x: np.ndarray) -> np.ndarray:
    """Forces (C, n, 3) kcal/mol/Å, float64, of ``pot`` at configurations ``x`` (C, n, 3) Å (one batched call)."""
    n = x.shape[1]
    pos = torch.as_tensor(x.reshape(-1, 3), dtype=pot.dtype)
    types = torch.arange(n, dtype=torch.long).repeat(x.shape[0])
    batch = torch.arange(x.shape[0], dtype=torch.long).repeat_interleave(n)
    out = energy_forces_hvp(pot, pos, types, batch, None, create_graph=False)
    return out.forces.detach().double().numpy().reshape(x.shape)


def model_forces(model_path: str | Path, cg: np.ndarray) -> np.ndarray:
    """Forces (C, 5, 3) kcal/mol/Å of a saved model at CG configurations ``cg`` (C, 5, 3) Å (the
    model's dtype; no Hessians: metric 1 alone)."""
    torch.set_num_threads(1)
    return _forces(load_potential(model_path), np.asarray(cg, dtype=np.float64))


def model_forces_hessians(model_path: str | Path, cg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forces (C, 5, 3) kcal/mol/Å and Hessians (C, 15, 15) kcal/mol/Å² of a saved model at
    CG configurations ``cg`` (C, 5, 3) Å (float64 arithmetic is not forced: the model's dtype)."""
    torch.set_num_threads(1)
    pot = load_potential(model_path)
    x = np.asarray(cg, dtype=np.float64)
    return _forces(pot, x), ala2.model_hessians(pot, x)


def start_frames(angles: np.ndarray, n_per_basin: int, seed: int, allow_fill: bool = False) -> np.ndarray:
    """``n_per_basin`` αR then ``n_per_basin`` β/PII frame indices drawn (seeded) from ``angles``;
    with ``allow_fill`` a basin without enough frames is drawn from all frames (the miniature).

    Raises:
        ValueError: a basin has fewer than ``n_per_basin`` frames and not ``allow_fill``."""
    rng = np.random.default_rng([seed, 77])
    labels = ala2.assign_basins(angles)
    out = []
    for b in ("alpha_R", "beta_PII"):
        idx = np.flatnonzero(labels == ala2.BASINS.index(b))
        if len(idx) < n_per_basin:
            if not allow_fill:
                raise ValueError(f"{len(idx)} {b} frames for {n_per_basin} CG MD starts")
            idx = np.arange(len(angles))
        out.append(rng.choice(idx, n_per_basin, replace=False))
    return np.concatenate(out)


def simulate_job(job: dict) -> dict:
    """CG MD of one model (resumable; skipped when ``md_done.json`` exists); with a true
    ``job["prior_only"]`` the model's prior alone (:class:`PriorOnlyPotential`)."""
    out = Path(job["out"])
    done = out / "md_done.json"
    if done.exists():
        return read_json(done)
    c = job["cgmd"]
    torch.set_num_threads(1)
    pot = load_potential(job["model"])
    dtype = pot.dtype
    prior_only = bool(job.get("prior_only", False))
    if prior_only:
        pot = PriorOnlyPotential(pot)
    res = simulate(pot, out, n_steps=int(c["n_steps"]), save_interval=int(c["save_interval"]),
                   start_positions=np.asarray(job["starts"], dtype=np.float64), bead_types=torch.arange(5),
                   timestep=c["timestep"], temperature=c["temperature"], friction=c["friction"],
                   masses=list(ala2.BEAD_MASSES), seed=int(job["seed"]), dtype=dtype, resume=True,
                   progress=False, bond_range=ala2.BOND_RANGE, threads=1,
                   provenance={"model": str(job["model"]), **({"prior_only": True} if prior_only else {})})  # fmt: skip
    rec = {"dir": out, "steps_per_second": res.steps_per_second, "failures": res.failures,
           "n_steps": int(c["n_steps"]), **({"prior_only": True} if prior_only else {})}
    write_json(done, rec, Path(job["root"]))
    return read_json(done)


def replica_angles(sim_dir: Path, burn_in_ps: float, dt_ps: float) -> list[np.ndarray | None]:
    """φ/ψ (T, 2) per replica after the burn-in; None for a replica that failed."""
    trajs = load_simulation(sim_dir)
    n_burn = int(round(burn_in_ps / dt_ps))
    out = []
    # replicas are matched by index: filter_replicas returns float64 copies of the arrays
    _, dropped = filter_replicas(trajs, (ala2.BOND_RANGE[0] / 10, ala2.BOND_RANGE[1] / 10), 0.0)
    bad = {int(d["replica"]) for d in dropped}
    for r, x in enumerate(trajs.xyz):
        out.append(ala2.phi_psi(np.asarray(x[n_burn:], dtype=np.float64) * 10.0)
                   if r not in bad and len(x) > n_burn + 1 else None)
    return out


def correlation_time(indicators: list[np.ndarray], dt_ps: float) -> float:
    """Integrated αR↔β correlation time (ps) of 0/1 indicator series pooled over replicas:
    τ = (g − 1)/2 · Δt with g the statistical inefficiency
    (``pymbar.timeseries.statistical_inefficiency_multiple``); NaN when every series is constant."""
    series = [np.asarray(s, dtype=np.float64) for s in indicators if s is not None and len(s) > 2]
    series = [s for s in series if s.std() > 0]
    if not series:
        return math.nan
    g = float(pymbar_timeseries().statistical_inefficiency_multiple(series))
    return 0.5 * (g - 1.0) * dt_ps


def delta_g(angles: np.ndarray, temperature: float) -> float:
    """ΔG(αR−β) = −kT ln(p_αR/p_β), kcal/mol, from pooled φ/ψ (T, 2) radians (NaN if a basin is empty)."""
    lab = ala2.assign_basins(angles)
    p_a = np.mean(lab == ala2.BASINS.index("alpha_R"))
    p_b = np.mean(lab == ala2.BASINS.index("beta_PII"))
    if p_a == 0 or p_b == 0:
        return math.nan
    return float(-KB_KCAL_PER_MOL_K * temperature * math.log(p_a / p_b))


def fe_rmse(reference_angles: np.ndarray, model_angles: np.ndarray, temperature: float, n_bins: int = 36,
            cutoff: float = 3.0) -> float:
    """φ/ψ free-energy RMSE (kcal/mol) over the bins with reference F < ``cutoff``; both surfaces
    shifted to zero mean over those bins; a bin the model never visits is NaN → the RMSE is
    taken with the model's empty bins set to the largest model F + kT ln 10 (reported, not dropped)."""
    fr = ala2.free_energy_grid(ala2.phi_psi_density(reference_angles, n_bins), temperature)
    fm = ala2.free_energy_grid(ala2.phi_psi_density(model_angles, n_bins), temperature)
    sel = np.isfinite(fr) & (fr < cutoff)
    empty = ~np.isfinite(fm)
    if empty.all():
        return math.nan
    fm = np.where(empty, np.nanmax(fm) + KB_KCAL_PER_MOL_K * temperature * math.log(10.0), fm)
    a, b = fr[sel] - fr[sel].mean(), fm[sel] - fm[sel].mean()
    return float(np.sqrt(np.mean((a - b) ** 2)))


def md_metrics(sim_dir: Path, reference_angles: np.ndarray, reference_dg: float, c: dict) -> dict:
    """Metrics 3 and 4 of one model's CG MD, with τ and the halves check (docs/results/ala2_v2.md)."""
    dt_ps = c["save_interval"] * c["timestep"] * 1e-3
    per = replica_angles(sim_dir, c["burn_in_ps"], dt_ps)
    alive = [a for a in per if a is not None]
    if not alive:
        return {"delta_g": math.nan, "delta_g_error": math.nan, "fe_rmse": math.nan, "tau_ps": math.nan,
                "halves_agree": None, "replicas_alive": 0}  # fmt: skip
    pooled = np.concatenate(alive)
    ia = ala2.BASINS.index("alpha_R")
    ind = [None if a is None else (ala2.assign_basins(a) == ia).astype(float) for a in per]
    tau = correlation_time(ind, dt_ps)
    half = len(per) // 2
    halves = []
    for part in (ind[:half], ind[half:]):
        m = [x.mean() for x in part if x is not None]
        halves.append((float(np.mean(m)), float(np.std(m, ddof=1) / math.sqrt(len(m))) if len(m) > 1 else math.nan))
    (pa, sa), (pb, sb) = halves
    agree = bool(abs(pa - pb) <= 3.0 * math.hypot(sa, sb)) if math.isfinite(sa + sb) else None
    span = (len(alive[0]) * dt_ps)
    dg = delta_g(pooled, c["temperature"])
    return {"delta_g": dg, "delta_g_error": dg - reference_dg,
            "fe_rmse": fe_rmse(reference_angles, pooled, c["temperature"]), "tau_ps": tau,
            "span_after_burn_in_ps": span, "spans_5_tau": bool(span >= 5 * tau) if math.isfinite(tau) else None,
            "p_alpha_halves": [pa, pb], "p_alpha_halves_se": [sa, sb], "halves_agree": agree,
            "replicas_alive": len(alive)}  # fmt: skip


__all__ = ["correlation_time", "delta_g", "fe_rmse", "md_metrics", "model_forces", "model_forces_hessians", "replica_angles",
           "simulate_job", "start_frames"]  # fmt: skip
