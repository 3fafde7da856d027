"""Evaluation of an atomistic potential (docs/atomistic_learning.md, "Evaluation"):
energy/force/Hessian MAE and RMSE on held-out structures, and harmonic frequencies at the
model's own optimised geometry against the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hessid.training.atomistic.frames import FrameRef, collate
from hessid.training.atomistic.frequencies import harmonic_frequencies, optimise_geometry
from hessid.training.atomistic.model import AtomisticPotential, hessian_autograd

__all__ = ["error_metrics", "frequency_comparison", "kabsch_rmsd", "model_energy_and_gradient"]


def error_metrics(model: AtomisticPotential, datasets: Sequence, refs: Sequence[FrameRef],
                  batch_size: int = 16, hessians: bool = True) -> dict:
    """MAE and RMSE of energies (per molecule, kcal/mol), force components (kcal/mol/Å) and
    Hessian elements (kcal/mol/Å²) over ``refs``; Hessians skipped when a dataset has none.

    Returns:
        dict ``n``, ``energy_mae``, ``energy_rmse``, ``force_mae``, ``force_rmse`` and, with
        Hessians, ``hessian_mae``, ``hessian_rmse`` (NaN-free floats; empty refs → ``n = 0``).
    """
    refs = list(refs)
    if not refs:
        return {"n": 0}
    hessians = hessians and all(datasets[d].hessians is not None for d, _ in refs)
    sums = dict(e_abs=0.0, e_sq=0.0, f_abs=0.0, f_sq=0.0, nf=0, h_abs=0.0, h_sq=0.0, nh=0)
    for start in range(0, len(refs), batch_size):
        b = collate(datasets, refs[start:start + batch_size], model.dtype, hessians).to(model.device)
        if hessians:
            out, hess = model.hessians(b.species, b.positions, b.batch)
            for h, t in zip(hess, b.hessians, strict=True):
                diff = (h.double() - t.double()).abs()
                sums["h_abs"] += float(diff.sum())
                sums["h_sq"] += float((diff**2).sum())
                sums["nh"] += diff.numel()
        else:
            out = model.energy_forces_hvp(b.species, b.positions, b.batch, n_molecules=b.n_molecules)
        e = out.energy.double() + model.reference(b.species, b.batch, b.n_molecules)
        de = (e - b.energy).abs()
        df = (out.forces.double() - b.forces.double()).abs()
        sums["e_abs"] += float(de.sum())
        sums["e_sq"] += float((de**2).sum())
        sums["f_abs"] += float(df.sum())
        sums["f_sq"] += float((df**2).sum())
        sums["nf"] += df.numel()
    n = len(refs)
    out = {"n": n, "energy_mae": sums["e_abs"] / n, "energy_rmse": math.sqrt(sums["e_sq"] / n),
           "force_mae": sums["f_abs"] / sums["nf"], "force_rmse": math.sqrt(sums["f_sq"] / sums["nf"])}
    if hessians:
        out.update(hessian_mae=sums["h_abs"] / sums["nh"], hessian_rmse=math.sqrt(sums["h_sq"] / sums["nh"]))
    return out


def model_energy_and_gradient(model: AtomisticPotential, species):
    """(n, 3) float64 Å → (model energy kcal/mol, gradient (n, 3) kcal/mol/Å), for scipy."""
    z = torch.as_tensor(np.asarray(species), dtype=torch.long)

    def fn(x):
        t = torch.as_tensor(x, dtype=model.dtype).requires_grad_(True)
        e = model(z, t).sum()
        (g,) = torch.autograd.grad(e, t)
        return float(e.detach()), g.detach().double().numpy()

    return fn


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Å) of two (n, 3) geometries after optimal superposition (Kabsch)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    s = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return float(np.sqrt(np.mean(np.sum((a @ u @ s @ vt - b) ** 2, 1))))


def frequency_comparison(model: AtomisticPotential, dataset, gtol: float = 1e-3) -> dict:
    """Harmonic frequencies of the model at its own minimum vs the reference's at its minimum.

    The reference minimum is the dataset's first stored minimum (``minima``: optimised
    conformer and its Hessian); without one, the done structure of subset 0 with the smallest
    largest force component stands in (reported as ``reference_max_force``). The model is
    optimised (L-BFGS) from the reference minimum; its Hessian there is autograd's (float64
    when the model is).

    Returns:
        dict ``reference_frequencies``, ``model_frequencies`` (cm⁻¹, ascending lists),
        ``model_frequencies_at_reference_geometry``, ``frequency_mae``, ``frequency_rmse``,
        ``frequency_max_abs`` (model-optimised vs reference, mode by mode in ascending order),
        ``frequency_mae_at_reference_geometry``, ``geometry_rmsd`` (Å, Kabsch),
        ``optimiser_converged``, ``optimiser_max_force``, ``reference_max_force``, ``source``.

    Raises:
        ValueError: no reference Hessian at a minimum or near-equilibrium structure.
    """
    z = np.asarray(dataset.species)
    minima = getattr(dataset, "minima", None)
    if minima is not None and minima.hessians is not None and len(minima.coordinates):
        x_ref, h_ref, source, ref_force = minima.coordinates[0], minima.hessians[0], "minimum 0", 0.0
    else:
        if dataset.hessians is None:
            raise ValueError(f"dataset {dataset.name!r} has no Hessians: no reference frequencies")
        ok = np.flatnonzero(np.asarray(dataset.done) & (np.asarray(dataset.subset) == 0))
        if not ok.size:
            raise ValueError(f"dataset {dataset.name!r} has no done near-equilibrium structure")
        fmax = np.abs(np.asarray(dataset.forces)[ok]).reshape(ok.size, -1).max(1)
        t = int(ok[np.argmin(fmax)])
        x_ref, h_ref = dataset.coordinates[t], dataset.hessians[t]
        source, ref_force = f"structure {int(dataset.structure_id[t])}", float(fmax.min())
    nu_ref = harmonic_frequencies(h_ref, z, x_ref)
    opt = optimise_geometry(model_energy_and_gradient(model, z), x_ref, gtol=gtol)
    zt = torch.as_tensor(z, dtype=torch.long)
    h_model = hessian_autograd(model, zt, torch.as_tensor(opt.coordinates, dtype=model.dtype))
    nu_model = harmonic_frequencies(h_model, z, opt.coordinates)
    h_at_ref = hessian_autograd(model, zt, torch.as_tensor(x_ref, dtype=model.dtype))
    nu_at_ref = harmonic_frequencies(h_at_ref, z, x_ref)
    diff = nu_model - nu_ref
    return {
        "reference_frequencies": nu_ref.tolist(), "model_frequencies": nu_model.tolist(),
        "model_frequencies_at_reference_geometry": nu_at_ref.tolist(),
        "frequency_mae": float(np.mean(np.abs(diff))), "frequency_rmse": float(np.sqrt(np.mean(diff**2))),
        "frequency_max_abs": float(np.max(np.abs(diff))),
        "frequency_mae_at_reference_geometry": float(np.mean(np.abs(nu_at_ref - nu_ref))),
        "geometry_rmsd": kabsch_rmsd(opt.coordinates, np.asarray(x_ref)),
        "optimiser_converged": opt.converged, "optimiser_max_force": opt.max_force,
        "reference_max_force": ref_force, "source": source,
    }
