"""Temperature-aware models on the 1-D toy T2 (spec thermo.md §7; docs/results/thermo.md):
batches of exact samples, a full-batch fit, and the model's thermodynamics by 1-D quadrature.

The CG coordinate x is bead 0's first Cartesian coordinate (positions (B, 3) = (x, 0, 0), one
bead per structure); the models use the ``mlp`` backbone with ``mlp_dims = 1``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hessid.thermo_toys import EntropicDoubleWell
from hessid.training.learning.thermal_losses import NoiseFloors, thermal_loss
from hessid.units import KB_KCAL_PER_MOL_K
from hessid.units import beta as beta_of_temperature

__all__ = ["exact_floors", "fit_full_batch", "model_thermodynamics", "toy_batch", "toy_points"]


def toy_batch(system: EntropicDoubleWell, temperatures, n_per_temperature: int, seed: int,
              dtype: torch.dtype = torch.float64) -> dict:
    """Exact i.i.d. samples of T2 at each temperature as a thermal training batch.

    Args:
        system: the toy; temperatures: K; n_per_temperature: frames per temperature; seed.

    Returns:
        dict: ``positions`` (B, 3) Å = (x, 0, 0), ``bead_types`` (B,) zeros, ``batch`` (B,) =
        arange, ``forces`` (B, 3) kcal/mol/Å = (f_x, 0, 0), ``beta`` (B,) mol/kcal,
        ``potential_energy`` (B,) kcal/mol, ``temperature`` (B,) K.
    """
    g = torch.Generator().manual_seed(int(seed))
    pos, frc, beta, energy, temp = [], [], [], [], []
    for t in temperatures:
        b = beta_of_temperature(float(t))
        r = system.sample(b, int(n_per_temperature), generator=g)  # (n, D)
        x = r[:, :1]
        pos.append(torch.cat([x, torch.zeros(len(x), 2, dtype=x.dtype)], 1))
        frc.append(torch.cat([system.forces(r)[:, :1], torch.zeros(len(x), 2, dtype=x.dtype)], 1))
        energy.append(system.potential(r))
        beta.append(torch.full((len(x),), b, dtype=x.dtype))
        temp.append(torch.full((len(x),), float(t), dtype=x.dtype))
    n = sum(len(p) for p in pos)
    return {"positions": torch.cat(pos).to(dtype), "bead_types": torch.zeros(n, dtype=torch.long),
            "batch": torch.arange(n), "forces": torch.cat(frc).to(dtype), "beta": torch.cat(beta).to(dtype),
            "potential_energy": torch.cat(energy).to(dtype), "temperature": torch.cat(temp).to(dtype)}


def exact_floors(system: EntropicDoubleWell, temperatures) -> NoiseFloors:
    """T2's exact floors: ``s_F = Var_x(f_x)/3 = mγ²/(6β²)`` per Cartesian component (f_x =
    −V' − ½k'Σy², Var(Σy²) = 2m/(βk)²; the y/z components are exact zeros) and
    ``s_U = Var_x(U) = m/(2β²)``."""
    ts = [float(t) for t in temperatures]
    bs = [beta_of_temperature(t) for t in ts]
    m, g = system.m, system.gamma
    return NoiseFloors(tuple(ts), tuple(m * g * g / (6 * b * b) for b in bs), tuple(m / (2 * b * b) for b in bs))


def fit_full_batch(model, data: dict, floors: NoiseFloors, energy_weight: float, steps: int, lr: float = 3e-3,
                   seed: int = 0, method: str = "adam") -> list[float]:
    """Full-batch fit of ``thermal_loss``: Adam with a cosine schedule (to lr/20), or L-BFGS
    (strong-Wolfe line search, ``steps`` iterations; ``lr`` unused) — the loss is deterministic.

    Returns:
        the total loss per step (floats).
    """
    torch.manual_seed(int(seed))
    if method == "lbfgs":
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=int(steps), history_size=50,
                                tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
        hist: list[float] = []

        def closure():
            opt.zero_grad()
            total = thermal_loss(model, data, floors, energy_weight=energy_weight, per_temperature=False)["total"]
            total.backward()
            hist.append(float(total.detach()))
            return total

        opt.step(closure)
        return hist
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    hist = []
    for _ in range(int(steps)):
        opt.zero_grad()
        terms = thermal_loss(model, data, floors, energy_weight=energy_weight, per_temperature=False)
        terms["total"].backward()
        opt.step()
        sched.step()
        hist.append(float(terms["total"].detach()))
    return hist


def toy_points(x: np.ndarray, dtype: torch.dtype = torch.float64) -> tuple:
    """Positions (Q, 3) = (x, 0, 0), bead types (Q,) zeros, batch (Q,) = arange for points x (Q,) Å."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)
    pos = torch.stack([xt, torch.zeros_like(xt), torch.zeros_like(xt)], 1)
    return pos, torch.zeros(len(xt), dtype=torch.long), torch.arange(len(xt))


def model_thermodynamics(model, temperature: float, lo: float = -3.0, hi: float = 3.0, n: int = 4001) -> dict:
    """The model's thermodynamics at T by quadrature (trapezoid on [lo, hi], Å) over
    ``p_θ(x) ∝ e^{−βA_θ(x, β)}``.

    Returns:
        dict: ``population`` P(x < 0); ``mean_energy`` E_p u_θ (kcal/mol; u_θ = A_θ for a
        β-independent model); ``heat_capacity`` C_tot = k_Bβ²Var_p(u_θ) + E_p C_θ (R8,
        kcal/mol/K); ``free_energy_difference`` A_θ(1) − A_θ(−1) (kcal/mol);
        ``heat_capacity_channel`` E_p C_θ (kcal/mol/K); ``entropy_gradient`` E_p ∂_x S_θ
        (kcal/mol/Å/K, by a central difference in T of the mean force, h = 1 K).
    """
    b = beta_of_temperature(float(temperature))
    x = np.linspace(lo, hi, n)
    pos, types, batch = toy_points(x, model.dtype)
    with torch.no_grad():
        a = model.free_energy(pos, types, batch, b).double().numpy()
    u = model.mean_energy(pos, types, batch, b).detach().double().numpy()
    c = model.heat_capacity(pos, types, batch, b).detach().double().numpy()
    f_hi = model.forces(pos, types, batch, beta_of_temperature(temperature + 1.0))[:, 0].detach().double().numpy()
    f_lo = model.forces(pos, types, batch, beta_of_temperature(temperature - 1.0))[:, 0].detach().double().numpy()
    w = np.full(n, x[1] - x[0])
    w[0] = w[-1] = 0.5 * (x[1] - x[0])
    lp = -b * a
    p = w * np.exp(lp - lp.max())
    p /= p.sum()
    mu = float(p @ u)
    var = float(p @ (u - mu) ** 2)
    ec = float(p @ c)
    a1 = float(np.interp(1.0, x, a) - np.interp(-1.0, x, a))
    return {"population": float(p[x < 0].sum() + 0.5 * p[x == 0].sum()), "mean_energy": mu,
            "heat_capacity": KB_KCAL_PER_MOL_K * b * b * var + ec, "free_energy_difference": a1,
            "heat_capacity_channel": ec, "entropy_gradient": float(p @ ((f_hi - f_lo) / 2.0))}
