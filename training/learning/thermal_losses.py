"""Losses of the temperature-aware mode, each over its noise floor (spec thermo.md §3–§4,
docs/thermo.md §8).

Per frame t with CG positions R_t, projected force P f_t, AA potential energy U_t and
thermostat β_t (mol/kcal):

``L_F = mean_t ‖P f_t + ∇_R A_θ(R_t, β_t)‖² / (d_t s_F(β_t))``      (d_t = 3 n_t)
``L_U = mean_t (u_θ(R_t, β_t) − U_t)² / s_U(β_t)``,  ``u_θ = ∂_β(βA_θ)`` by autograd
``L_λ = mean_t (∂_λA_θ − ∂_λU_t)² / s_λ(β_t)``                         (optional, tensors in)
``L   = L_F + w_U L_U + w_λ L_λ``

Each term regresses a conditional mean (R1, R2, R4), so its population minimiser is exact and
its value there is 1 (the floor ``s_F = E tr Cov_R(Pf)/d``, ``s_U = E Var_R(U)``,
``s_λ = E Var_R(∂_λU)`` at that temperature): the *excess* ``L − 1`` is what a model can still
remove. Floors come per temperature (:class:`NoiseFloors`), given (exact toys) or estimated
from the training frames by nearest-neighbour differences (:func:`estimate_noise_floors`).

L_U is refused for a β-independent model: its u_θ = A_θ, so L_U would drag A_θ to ⟨U⟩_R and
drop −T S_R (spec §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from hessid.units import KB_KCAL_PER_MOL_K

__all__ = [
    "NoiseFloors",
    "check_energy_matching_allowed",
    "estimate_noise_floors",
    "lambda_loss",
    "thermal_loss",
]

#: relative tolerance when matching a frame's temperature to a floor's temperature
_T_RTOL = 1e-6


@dataclass(frozen=True)
class NoiseFloors:
    """Irreducible loss values per temperature (spec §4).

    Attributes:
        temperatures: (K,) K.
        force: (K,) ``s_F = E tr Cov_R(Pf)/d``, (kcal/mol/Å)² per component.
        energy: (K,) ``s_U = E Var_R(U)``, (kcal/mol)², or None (no energies).
    """

    temperatures: tuple
    force: tuple
    energy: tuple | None = None

    @classmethod
    def from_dicts(cls, force: dict, energy: dict | None = None) -> NoiseFloors:
        """From ``{T_K: value}`` dicts (the ``thermal`` config's ``force_floors``/``energy_floors``).

        Raises:
            ValueError: the dicts name different temperatures, or a value is not > 0.
        """
        ts = sorted(float(t) for t in force)
        if energy is not None and sorted(float(t) for t in energy) != ts:
            raise ValueError(f"force and energy floors name different temperatures: {sorted(force)} vs {sorted(energy)}")
        f = {float(k): float(v) for k, v in force.items()}
        e = None if energy is None else {float(k): float(v) for k, v in energy.items()}
        if not all(v > 0 for v in f.values()) or (e is not None and not all(v > 0 for v in e.values())):
            raise ValueError("noise floors must be > 0")
        return cls(tuple(ts), tuple(f[t] for t in ts), None if e is None else tuple(e[t] for t in ts))

    def to_dicts(self) -> tuple[dict, dict | None]:
        """``({T: s_F}, {T: s_U} or None)``."""
        f = dict(zip(self.temperatures, self.force, strict=True))
        e = None if self.energy is None else dict(zip(self.temperatures, self.energy, strict=True))
        return f, e

    def lookup(self, beta: torch.Tensor, scale_missing: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-frame floors for β (B,) mol/kcal → ``(s_F (B,), s_U (B,) or None)``.

        Args:
            beta: (B,) mol/kcal.
            scale_missing: a temperature without a floor takes the nearest tabulated one scaled
                by (T/T_near)² — the law of harmonic eliminated DOFs, Var_R(U) = (D − d)/(2β²)
                and Cov_R(Pf) ∝ 1/β (spec §4), exact for T1/T2 forces and energies: for
                validation frames at a held-out temperature (False: refuse).

        Raises:
            ValueError: a frame's temperature has no floor (names it) and not ``scale_missing``.
        """
        t_frames = (1.0 / (KB_KCAL_PER_MOL_K * beta.detach().double())).cpu().numpy()
        table = np.asarray(self.temperatures)
        idx = np.abs(t_frames[:, None] - table[None, :]).argmin(1)
        bad = np.abs(table[idx] - t_frames) > _T_RTOL * t_frames
        if bad.any() and not scale_missing:
            raise ValueError(f"no noise floor for temperature {t_frames[bad][0]:.6g} K "
                             f"(floors at {list(self.temperatures)} K)")
        scale = np.where(bad, (t_frames / table[idx]) ** 2, 1.0)
        f = torch.as_tensor(np.asarray(self.force)[idx] * scale, dtype=beta.dtype, device=beta.device)
        e = None if self.energy is None else torch.as_tensor(np.asarray(self.energy)[idx] * scale,
                                                             dtype=beta.dtype, device=beta.device)
        return f, e


def estimate_noise_floors(features: np.ndarray, forces: np.ndarray, temperatures: np.ndarray,
                          energies: np.ndarray | None = None) -> NoiseFloors:
    """Noise floors per temperature by nearest-neighbour differences (a Gamma-test-style
    estimator): for each frame i its nearest frame j(i) at the same temperature in ``features``,
    ``ŝ = mean_i ½‖y_i − y_j(i)‖²/dim(y)``.

    For independent frames ``E ŝ = s + ½ E‖μ(R_i) − μ(R_j)‖²/dim`` with μ the conditional mean:
    an *over*-estimate by the variation of μ over neighbour distances, → 0 as frames densify
    (fast in low-D CG spaces, slowly in high-D ones). MD correlation makes neighbours in time
    also neighbours in space and biases ŝ *low*: thin correlated frames first.

    Args:
        features: (T, q) per-frame coordinates the conditional means depend on (e.g. the
            flattened CG positions, Å).
        forces: (T, d) or (T, n, 3) projected forces P f, kcal/mol/Å.
        temperatures: (T,) K per frame.
        energies: (T,) AA potential energies U, kcal/mol, or None.

    Returns:
        :class:`NoiseFloors` at the distinct temperatures.

    Raises:
        ValueError: shapes disagree, or a temperature has fewer than 2 frames.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    f = np.asarray(forces, dtype=np.float64).reshape(len(forces), -1)
    t = np.asarray(temperatures, dtype=np.float64).reshape(-1)
    if not (len(x) == len(f) == len(t)) or (energies is not None and len(energies) != len(t)):
        raise ValueError(f"features {x.shape}, forces {f.shape}, temperatures {t.shape}"
                         f"{'' if energies is None else f', energies {np.shape(energies)}'} disagree in T")
    e = None if energies is None else np.asarray(energies, dtype=np.float64).reshape(-1)
    temps, sf, se = [], [], []
    for temp in np.unique(t):
        sel = np.flatnonzero(t == temp)
        if len(sel) < 2:
            raise ValueError(f"temperature {temp} K has {len(sel)} frame(s); the floor needs >= 2")
        _, nn = cKDTree(x[sel]).query(x[sel], k=2)
        j = sel[nn[:, 1]]
        temps.append(float(temp))
        sf.append(float(0.5 * ((f[sel] - f[j]) ** 2).sum(1).mean() / f.shape[1]))
        if e is not None:
            se.append(float(0.5 * ((e[sel] - e[j]) ** 2).mean()))
    return NoiseFloors(tuple(temps), tuple(sf), None if e is None else tuple(se))


def check_energy_matching_allowed(model) -> None:
    """Refuse L_U for a β-independent model (spec §3).

    Raises:
        ValueError: one line: ``model`` has no ``temperature_aware = True``.
    """
    if not getattr(model, "temperature_aware", False):
        raise ValueError(f"L_U (<U> matching) refused for the beta-independent model {type(model).__name__}: "
                         "its u = A, so L_U would drag A to <U>_R and drop -T S_R (spec thermo.md §3); "
                         "use a temperature-aware form (M1/M2/M3) or energy_weight=0")


def thermal_loss(model, data: dict, floors: NoiseFloors, energy_weight: float = 1.0,
                 create_graph: bool = True, per_temperature: bool = True, scale_missing: bool = False) -> dict:
    """L_F and L_U of one batch over their floors (module doc), with excesses.

    Args:
        model: a :class:`~hessid.training.learning.thermal_models.ThermalPotential` (or any
            potential with ``forces(positions, bead_types, batch, create_graph=...)`` when
            ``energy_weight == 0`` and it is β-independent).
        data: batch dict with ``positions`` (A, 3) Å, ``bead_types`` (A,), ``batch`` (A,),
            ``forces`` (A, 3) kcal/mol/Å (P f), ``beta`` (B,) mol/kcal per frame, and
            ``potential_energy`` (B,) kcal/mol when ``energy_weight > 0``.
        floors: :class:`NoiseFloors` covering every frame's temperature (and energy floors when
            ``energy_weight > 0``).
        energy_weight: w_U ≥ 0.
        create_graph: keep the θ-graph (training); False for evaluation.
        per_temperature: also return the per-temperature breakdown (host syncs; off in tight loops).
        scale_missing: floors at untabulated temperatures by T² scaling (:meth:`NoiseFloors.lookup`).

    Returns:
        scalar tensors: ``force`` (raw L_F, (kcal/mol/Å)² per component), ``force_scaled``
        (over s_F), ``force_excess`` (scaled − 1); with energies ``energy`` ((kcal/mol)²),
        ``energy_scaled``, ``energy_excess``; ``total`` (with the θ-graph); and
        ``per_temperature``: {T: {"force_scaled", "energy_scaled"}} floats (with ``per_temperature``).

    Raises:
        ValueError: L_U asked of a β-independent model; no ``potential_energy``; a temperature
            without a floor.
    """
    w_u = float(energy_weight)
    if w_u < 0:
        raise ValueError(f"energy_weight must be >= 0, got {energy_weight}")
    use_u = w_u > 0
    if use_u:
        check_energy_matching_allowed(model)
        if "potential_energy" not in data:
            raise ValueError("L_U needs per-frame 'potential_energy' (kcal/mol) in the batch")
        if floors.energy is None:
            raise ValueError("L_U needs energy noise floors")
    pos, types, batch, beta = data["positions"], data["bead_types"], data["batch"], data["beta"]
    n_graphs = int(beta.shape[0])
    if hasattr(model, "evaluate"):  # a ThermalPotential (M0 included): A(R, β_t)
        out = model.evaluate(pos, types, batch, beta, forces=True, mean_energy=use_u, create_graph=create_graph)
        model_forces = out["forces"]
    else:
        model_forces = model.forces(pos, types, batch, create_graph=create_graph)
        out = {}
    s_f, s_u = floors.lookup(beta, scale_missing=scale_missing)
    counts = torch.bincount(batch, minlength=n_graphs).to(pos.dtype)  # beads per frame
    sq = torch.zeros(n_graphs, dtype=pos.dtype, device=pos.device).index_add(
        0, batch, ((data["forces"] + (-model_forces)) ** 2).sum(-1))  # (B,) ‖P f + ∇A‖² summed per frame
    per_f = sq / (3 * counts)  # (B,) per component
    terms = {"force": per_f.mean(), "force_scaled": (per_f / s_f).mean()}
    terms["force_excess"] = terms["force_scaled"] - 1
    total = terms["force_scaled"]
    per_u = None
    if use_u:
        per_u = (out["mean_energy"] - data["potential_energy"]) ** 2  # (B,)
        terms["energy"] = per_u.mean()
        terms["energy_scaled"] = (per_u / s_u).mean()
        terms["energy_excess"] = terms["energy_scaled"] - 1
        total = total + w_u * terms["energy_scaled"]
    terms["total"] = total
    if not per_temperature:
        return terms
    temps = (1.0 / (KB_KCAL_PER_MOL_K * beta.detach().double())).cpu().numpy()
    per_t = {}
    for temp in np.unique(np.round(temps, 6)):
        m = torch.as_tensor(np.abs(temps - temp) <= _T_RTOL * temp, device=pos.device)
        row = {"force_scaled": float((per_f / s_f)[m].detach().mean())}
        if per_u is not None:
            row["energy_scaled"] = float((per_u / s_u)[m].detach().mean())
        per_t[float(temp)] = row
    terms["per_temperature"] = per_t
    return terms


def lambda_loss(dA_dlambda: torch.Tensor, dU_dlambda: torch.Tensor, floor: torch.Tensor | float) -> dict:
    """The optional λ term ``L_λ = mean_t (∂_λA_θ − ∂_λU_t)²`` (R4) over its floor
    ``s_λ = E Var_R(∂_λU)``.

    Args:
        dA_dlambda: (B,) the model's ∂_λA at (R_t, β_t, λ_t), kcal/mol per unit λ.
        dU_dlambda: (B,) per-frame AA ∂_λU (analytic or central difference), same units.
        floor: s_λ, scalar or (B,) (per frame temperature), > 0.

    Returns:
        ``lambda`` (raw), ``lambda_scaled``, ``lambda_excess`` scalar tensors.

    Raises:
        ValueError: shapes disagree or floor not positive.
    """
    if dA_dlambda.shape != dU_dlambda.shape or dA_dlambda.ndim != 1:
        raise ValueError(f"dA_dlambda {tuple(dA_dlambda.shape)} and dU_dlambda {tuple(dU_dlambda.shape)} must be (B,)")
    floor = torch.as_tensor(floor, dtype=dA_dlambda.dtype, device=dA_dlambda.device)
    if not bool(torch.all(floor > 0)):
        raise ValueError("the lambda noise floor must be > 0")
    per = (dA_dlambda - dU_dlambda) ** 2
    scaled = (per / floor).mean()
    return {"lambda": per.mean(), "lambda_scaled": scaled, "lambda_excess": scaled - 1}
