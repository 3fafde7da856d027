"""Training data: dataset files in memory, the train/validation split, target normalisations,
graph batches with online probes, and the deterministic rank-sharded batch stream.

Data order and probes do not depend on the number of ranks: global step s uses the global
batch ``order(seed, epoch)[s·b:(s+1)·b]``; rank r of w takes its frames ``r::w``; each rank
regenerates its frames' probes from their frame ids with the dataset's stored probe spec
(``draw_probes(kind, seed, [frame_id], k, 3n)``, the probes the stored Term 1 used).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hessid.probes import ProbeSpec
from hessid.training.data.reader import open_dataset
from hessid.training.data.schema import FRAME_TEMPERATURE, DatasetError
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.losses import hessian_target_norms, hvp_target_norms
from hessid.training.learning.thermal_losses import NoiseFloors, estimate_noise_floors
from hessid.units import beta as beta_of_temperature

log = logging.getLogger(__name__)

__all__ = [
    "FrameStream",
    "fill_thermal_floors",
    "ProteinData",
    "collate_frames",
    "load_protein",
    "merge_vocabularies",
    "split_frames",
    "split_items",
    "target_normalisations",
    "thermal_noise_floors",
]


@dataclass
class ProteinData:
    """One protein's dataset file in memory (what training needs; hessid units).

    Attributes:
        name, path: protein name (root attr ``name`` or file stem) and file.
        temperature: K (a mixed-temperature file: the mean of ``temperatures``, used only by the
            gate and the prior fit; ``mixed_temperature`` is then True).  frame_id: (T,) int64.
        temperatures: (T,) K, the thermostat set-point of each frame (constant for a
            single-temperature file).
        cg_coordinates: (T, n, 3) Å.  cg_forces: (T, n, 3) kcal/mol/Å (P f).
        bead_types: (n,) int64 in the file's vocabulary; ``vocabulary`` its names.
        weights, projector: (n, N) S and Q.  aa_frame0: (N, 3) Å (for the gate).
        term1: (T, k, n, 3) kcal/mol/Å² or None; ``term1_attrs``; ``term1_done`` (T,) bool.
        hessian_block: (T, 3n, 3n) kcal/mol/Å² or None; ``hessian_done`` (T,) bool.
        potential_energy: (T,) kcal/mol or None.
    """

    name: str
    path: Path
    temperature: float
    frame_id: np.ndarray
    cg_coordinates: np.ndarray
    cg_forces: np.ndarray
    bead_types: np.ndarray
    vocabulary: list
    weights: np.ndarray
    projector: np.ndarray
    aa_frame0: np.ndarray
    term1: np.ndarray | None = None
    term1_attrs: dict = field(default_factory=dict)
    term1_done: np.ndarray | None = None
    hessian_block: np.ndarray | None = None
    hessian_done: np.ndarray | None = None
    potential_energy: np.ndarray | None = None
    temperatures: np.ndarray | None = None
    mixed_temperature: bool = False

    def frame_temperature(self, t: int) -> float:
        """Thermostat temperature of frame index ``t``, K."""
        return float(self.temperatures[t]) if self.temperatures is not None else float(self.temperature)

    @property
    def n_beads(self) -> int:
        """n, beads per frame."""
        return int(self.cg_coordinates.shape[1])

    @property
    def n_frames(self) -> int:
        """T, frames read."""
        return int(self.cg_coordinates.shape[0])

    def probe_spec(self) -> ProbeSpec:
        """The :class:`hessid.probes.ProbeSpec` of the stored Term 1 (``ProbeSpec.from_attrs``),
        checked against the attributes it implies at d = 3n (``ProbeSpec.to_attrs(dim=3n)``:
        ``probe_scale`` to 1e-12 relative, ``probe_dim``) where the file stores them.

        Raises:
            ValueError: no ``cg/hvp_term1``; its probe attributes are missing or invalid; a
                stored ``probe_scale``/``probe_dim`` disagrees with the spec at d = 3n.
        """
        if self.term1 is None:
            raise ValueError(f"{self.path}: no cg/hvp_term1 (run `hessid targets`)")
        try:
            spec = ProbeSpec.from_attrs(self.term1_attrs)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{self.path}: cg/hvp_term1: {exc} (run `hessid targets`)") from exc
        d = 3 * self.n_beads
        implied = spec.to_attrs(dim=d)
        for key in implied.keys() - spec.to_attrs().keys():
            stored = self.term1_attrs.get(key)
            if stored is not None and not math.isclose(float(stored), implied[key], rel_tol=1e-12):
                raise ValueError(f"{self.path}: cg/hvp_term1: stored {key} {stored} != {implied[key]} "
                                 f"of probe kind {spec.kind!r} at d = {d}")
        return spec


def load_protein(path: str | Path, max_frames: int | None = None) -> ProteinData:
    """Read the parts of a dataset file that training needs (contract layout).

    Args:
        path: the dataset's HDF5 file (or a dataset name/folder,
            :func:`hessid.training.data.io.dataset_path`).
        max_frames: read only the first this many frames (None: all).

    Returns:
        :class:`ProteinData` (arrays as stored: coordinates Å, forces kcal/mol/Å, Term 1 and
        Hessian blocks kcal/mol/Å²).

    Raises:
        DatasetNotFoundError: no file (a ``FileNotFoundError``).
        NotMappedError: no ``cg/`` group (a ``ValueError``, as every
            :class:`~hessid.training.data.schema.DatasetError`).
        DatasetError: a dataset training needs is missing (names the file and dataset), the
            file has neither a ``temperature`` attribute nor per-frame temperatures (β enters
            Term 2 and the prior: no default), or a frame's temperature is not a finite positive
            number (names the file and frame).
        ValueError: shapes inconsistent (names the file and dataset).
    """
    sl = slice(None, max_frames)
    with open_dataset(path) as ds:
        cg = ds.cg
        temperature = ds.temperature
        temps = _frame_temperatures(ds, sl)
        if temperature is None and temps is None:
            raise DatasetError(ds.path, "/", "no 'temperature' attribute: β enters Term 2 and the prior, so "
                               "training does not assume one (set it when importing: --temperature K)")
        mixed = temps is not None and temps.size > 0 and bool(np.any(temps != temps[0]))
        if temperature is None:  # a mixed-temperature file (multi-temperature contract)
            temperature = float(np.mean(temps)) if temps.size else float("nan")
        p = ProteinData(
            name=ds.name, path=ds.path, temperature=float(temperature),
            frame_id=ds.frame_id(sl), cg_coordinates=cg.coordinates(sl), cg_forces=cg.forces(sl),
            bead_types=cg.bead_types, vocabulary=cg.vocabulary, weights=cg.weights,
            projector=cg.projector, aa_frame0=ds.coordinates(0),
            potential_energy=ds.potential_energy(sl), temperatures=temps, mixed_temperature=mixed,
        )  # fmt: skip
        if p.temperatures is None:
            p.temperatures = np.full(p.n_frames, float(temperature))
        bad = np.flatnonzero(~(np.isfinite(p.temperatures) & (p.temperatures > 0)))
        if bad.size:  # β = 1/(k_B T) must be finite and > 0 for every frame (Term 2, the prior)
            raise DatasetError(ds.path, FRAME_TEMPERATURE, f"temperature {p.temperatures[bad[0]]!r} K is "
                               "not a finite positive number", frame=int(bad[0]))
        if ds.has_term1:
            p.term1, p.term1_attrs, p.term1_done = ds.term1.values(sl), ds.term1.attrs, ds.term1.done(sl)
        if ds.has_hessian_block:
            p.hessian_block, p.hessian_done = ds.hessian_block.values(sl), ds.hessian_block.done(sl)
    n = p.n_beads
    if p.cg_forces.shape != p.cg_coordinates.shape or p.bead_types.shape != (n,):
        raise ValueError(f"{p.path}: cg/forces {p.cg_forces.shape}, cg/coordinates "
                         f"{p.cg_coordinates.shape}, cg/bead_types {p.bead_types.shape} disagree")
    if p.term1 is not None and p.term1.shape[2:] != (n, 3):
        raise ValueError(f"{p.path}: cg/hvp_term1 {p.term1.shape} is not (T, k, {n}, 3)")
    if not p.vocabulary:
        p.vocabulary = [f"type{i}" for i in range(int(p.bead_types.max()) + 1)]
    return p


def _frame_temperatures(ds, sl) -> np.ndarray | None:
    """Per-frame temperatures (K) from a reader that has ``temperatures(frames)`` (the
    multi-temperature contract), None when it has none or stores none."""
    fn = getattr(ds, "temperatures", None)
    if fn is None:
        return None
    try:
        return np.asarray(fn(sl), dtype=np.float64)
    except DatasetError:
        return None


def merge_vocabularies(proteins: list[ProteinData]) -> tuple[list[str], list[np.ndarray]]:
    """One bead vocabulary for all proteins (first-seen order) and each file's type map.

    Args:
        proteins: loaded datasets.

    Returns:
        ``(vocabulary, type_maps)``: ``type_maps[i]`` (len of protein i's vocabulary,) int64
        maps protein i's bead-type indices into ``vocabulary``.
    """
    vocabulary: list[str] = []
    for p in proteins:
        for name in p.vocabulary:
            if name not in vocabulary:
                vocabulary.append(name)
    type_maps = [np.array([vocabulary.index(v) for v in p.vocabulary], dtype=np.int64) for p in proteins]
    return vocabulary, type_maps


# ----------------------------------------------------------------------------- split


def split_frames(proteins: list[ProteinData], cfg: TrainConfig, need_term1: bool,
                 need_hessian: bool = False) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Train/validation split of the usable frames (``cfg.data.split``).

    A frame is usable when it has the targets the loss needs (``cg/hvp_term1_done`` with
    ``need_term1``, ``cg/hessian_block_done`` with ``need_hessian``). ``split: frames`` holds
    out ``round(val_fraction · usable)`` random frames of each protein (generator seeded by
    ``[cfg.seed, 1]``); ``split: protein`` holds out every frame of ``val_proteins``.

    Args:
        proteins: loaded datasets.
        cfg: the run config (``seed``, ``data.split``, ``data.val_fraction``,
            ``data.val_proteins``).
        need_term1, need_hessian: whether the loss needs Term 1 / full Hessian blocks.

    Returns:
        ``(train_items, val_items)``: lists of ``(protein index, frame index)``, sorted per
        protein.

    Raises:
        ValueError: a protein lacks the targets the loss needs, a file mixes temperatures and
            the loss mode is not ``thermal``, ``val_proteins`` names an unknown protein, or no
            training frame is left.
    """
    train_items, val_items = [], []
    rng = np.random.default_rng([cfg.seed, 1])
    for pi, p in enumerate(proteins):
        if p.mixed_temperature and cfg.loss.mode != "thermal":
            raise ValueError(f"{p.path}: frames at several temperatures; loss mode {cfg.loss.mode} trains one "
                             "β-independent potential at one temperature (use loss.mode=thermal)")
        ok = np.ones(p.n_frames, bool)
        if need_term1:
            if p.term1 is None:
                raise ValueError(f"{p.path}: loss mode fm_hvp needs cg/hvp_term1 (run `hessid targets`)")
            ok &= p.term1_done
            if (~ok).any():
                log.info("%s: %d frames without Term 1 are not used", p.name, int((~ok).sum()))
        if need_hessian:
            if p.hessian_block is None:
                raise ValueError(f"{p.path}: loss mode fm_hessian needs cg/hessian_block "
                                 "(`hessid targets --full-block`)")
            ok &= p.hessian_done
        frames = np.flatnonzero(ok)
        if cfg.data.split == "protein":
            (val_items if p.name in cfg.data.val_proteins else train_items).extend((pi, int(t)) for t in frames)
        else:
            perm = rng.permutation(frames)
            n_val = int(round(cfg.data.val_fraction * len(frames)))
            val_items.extend((pi, int(t)) for t in sorted(perm[:n_val]))
            train_items.extend((pi, int(t)) for t in sorted(perm[n_val:]))
    if cfg.data.split == "protein":
        unknown = set(cfg.data.val_proteins) - {p.name for p in proteins}
        if unknown:
            raise ValueError(f"data.val_proteins names unknown proteins {sorted(unknown)}")
    if not train_items:
        raise ValueError("no training frames after the split")
    return train_items, val_items


def split_items(proteins: list[ProteinData], n_train_files: int, cfg: TrainConfig, need_term1: bool,
                need_hessian: bool = False) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The run's ``(train_items, val_items)``: with ``data.val_datasets`` (loaded after the
    ``n_train_files`` training files) every usable frame of the training files trains and every
    frame of the validation files validates; otherwise :func:`split_frames`.

    Raises:
        ValueError: as :func:`split_frames`.
    """
    if not cfg.data.val_datasets:
        return split_frames(proteins, cfg, need_term1, need_hessian)
    d = cfg.to_dict()
    cfg_all = TrainConfig.from_dict(dict(d, data=dict(d["data"], split="frames", val_fraction=0.0, val_datasets=[])))
    train_items, _ = split_frames(proteins[:n_train_files], cfg_all, need_term1, need_hessian)
    val_items = [(pi, t) for pi in range(n_train_files, len(proteins)) for t in range(proteins[pi].n_frames)]
    return train_items, val_items


def target_normalisations(proteins: list[ProteinData], items: list[tuple[int, int]],
                          need_term1: bool, need_hessian: bool, cov_weight: float = 0.0,
                          project_bonds: bool = False,
                          residuals: list[np.ndarray | None] | None = None) -> dict[str, float]:
    """Loss values of a model with zero outputs, averaged over the training frames (the loss
    divisors, :meth:`~hessid.training.learning.configs.LossConfig.norm`).

    ``force_norm = mean_t ‖P f_t‖²`` ((kcal/mol/Å)²);
    ``hvp_norm = mean_t c · mean_k ‖Term1_tk − γ β P f_t (P f_t·v_tk)‖²`` with
    ``c = probe_scale(kind, 3n)`` and the stored probes (:func:`~hessid.training.learning.losses.hvp_target_norms`;
    γ = ``cov_weight``, 0 gives the Term-1-only norm) ((kcal/mol/Å²)²);
    ``hessian_norm = mean_t ‖block_t − γ β P f_t P f_tᵀ‖_F²`` ((kcal/mol/Å²)²);
    ``energy_norm = var_t U_t`` ((kcal/mol)²; 1 when zero).

    Args:
        proteins: loaded datasets.
        items: training frames ``(protein index, frame index)``.
        need_term1, need_hessian: include ``hvp_norm`` / ``hessian_norm``.
        cov_weight: γ ∈ [0, 1] of Term 2 in the norms.
        project_bonds: ``hvp_norm`` of the bond-projected residual (``loss.hvp_project_bonds``).
        residuals: None (Term 2 of the norms uses ``dF = P f``, the zero-model convention), or
            per protein the stored cross-fitted dF (T, n, 3) kcal/mol/Å
            (``loss.residual="crossfit"``): the target is then fixed, and the norms are exactly
            the HVP / Hessian loss of a zero-curvature model against it.

    Returns:
        ``{"force_norm": …}`` plus ``hvp_norm``, ``hessian_norm``, ``energy_norm`` where the
        data has them.

    Raises:
        ValueError: ``need_term1`` and a protein without a stored probe spec.
    """
    fn, hn, hs, en = [], [], [], []
    term1_only = cov_weight == 0 and not project_bonds  # the arithmetic of earlier versions, bit for bit
    for pi, t in items:
        p = proteins[pi]
        fn.append(float((p.cg_forces[t] ** 2).sum()))
        if need_term1 and term1_only:
            hn.append(p.probe_spec().scale(3 * p.n_beads) * float((p.term1[t] ** 2).sum(-1).sum(-1).mean()))
        if need_hessian and term1_only and p.hessian_block is not None:
            hs.append(float((p.hessian_block[t] ** 2).sum()))
        if p.potential_energy is not None:
            en.append(float(p.potential_energy[t]))
    by_protein: dict[int, list[int]] = {}
    for pi, t in items:
        by_protein.setdefault(pi, []).append(t)
    if term1_only:
        by_protein = {}
    for pi, ts in by_protein.items():
        p = proteins[pi]
        beta = beta_of_temperature(p.temperature)
        for start in range(0, len(ts), 1024):  # chunks bound the memory of the drawn probes
            chunk = np.asarray(ts[start : start + 1024])
            forces = torch.as_tensor(p.cg_forces[chunk])  # (b, n, 3)
            if residuals is not None:  # Term 2 with the stored cross-fitted dF
                forces = torch.as_tensor(residuals[pi][chunk], dtype=torch.float64)
            if need_term1:
                spec = p.probe_spec()
                k = spec.n_probes
                v = spec.draw(p.frame_id[chunk], 3 * p.n_beads)  # (b, k, 3n)
                hn.extend(hvp_target_norms(
                    torch.as_tensor(p.term1[chunk]), forces, v.reshape(-1, k, p.n_beads, 3),
                    beta, cov_weight, spec.scale(3 * p.n_beads),
                    torch.as_tensor(p.cg_coordinates[chunk]) if project_bonds else None).tolist())
            if need_hessian and p.hessian_block is not None:
                hs.extend(hessian_target_norms(torch.as_tensor(p.hessian_block[chunk]), forces,
                                               beta, cov_weight).tolist())
    out = {"force_norm": float(np.mean(fn))}
    if hn:
        out["hvp_norm"] = float(np.mean(hn))
    if hs:
        out["hessian_norm"] = float(np.mean(hs))
    if en:
        out["energy_norm"] = float(np.var(en)) or 1.0
    return out


def thermal_noise_floors(proteins: list[ProteinData], items: list[tuple[int, int]],
                         need_energy: bool = True) -> NoiseFloors:
    """Noise floors per temperature for the thermal losses (spec thermo.md §4) from the training
    frames: nearest-neighbour differences in the flattened CG coordinates within each
    (protein, temperature) (:func:`~hessid.training.learning.thermal_losses.estimate_noise_floors`;
    an over-estimate that shrinks as frames densify), pooled over proteins weighted by frame count.

    Args:
        proteins: loaded datasets; items: training frames ``(protein index, frame index)``.
        need_energy: also the energy floors (every frame needs ``potential_energy``).

    Returns:
        :class:`~hessid.training.learning.thermal_losses.NoiseFloors`.

    Raises:
        ValueError: ``need_energy`` and a protein without potential energies; a temperature with
            fewer than 2 frames of a protein.
    """
    by_protein: dict[int, list[int]] = {}
    for pi, t in items:
        by_protein.setdefault(pi, []).append(t)
    acc: dict[float, list] = {}
    for pi, ts in by_protein.items():
        p = proteins[pi]
        ts = np.asarray(sorted(ts))
        if need_energy and p.potential_energy is None:
            raise ValueError(f"{p.path}: L_U needs per-frame potential energies (AA 'potential_energy')")
        temps = np.array([p.frame_temperature(t) for t in ts])
        fl = estimate_noise_floors(p.cg_coordinates[ts].reshape(len(ts), -1), p.cg_forces[ts], temps,
                                   p.potential_energy[ts] if need_energy else None)
        for k, temp in enumerate(fl.temperatures):
            n = int(np.sum(temps == temp))
            acc.setdefault(temp, []).append((n, fl.force[k], fl.energy[k] if fl.energy is not None else None))
    force = {t: sum(n * f for n, f, _ in v) / sum(n for n, _, _ in v) for t, v in acc.items()}
    energy = ({t: sum(n * e for n, _, e in v) / sum(n for n, _, _ in v) for t, v in acc.items()}
              if need_energy else None)
    return NoiseFloors.from_dicts(force, energy)


def fill_thermal_floors(cfg: TrainConfig, proteins: list[ProteinData], items: list[tuple[int, int]]) -> None:
    """Set ``cfg.thermal.force_floors``/``energy_floors`` (those still None) from
    :func:`thermal_noise_floors` of the training frames, in place (they are stored with the run's
    config)."""
    tc = cfg.thermal
    if tc.force_floors is not None and (tc.energy_weight == 0 or tc.energy_floors is not None):
        return
    force, energy = thermal_noise_floors(proteins, items, need_energy=tc.energy_weight > 0).to_dicts()
    if tc.force_floors is None:
        tc.force_floors = force
    if tc.energy_floors is None and energy is not None:
        tc.energy_floors = energy


# ----------------------------------------------------------------------------- batches


def collate_frames(proteins: list[ProteinData], items: list[tuple[int, int]],
                   type_maps: list[np.ndarray], dtype: torch.dtype, need_probes: bool,
                   need_hessian: bool = False,
                   residuals: list[np.ndarray | None] | None = None) -> dict:
    """Graph-batch frames ``(protein index, frame index)`` with targets and online probes.

    Probes are regenerated from frame ids with each protein's stored probe spec:
    ``draw_probes(kind, seed, [frame_id], k, 3n)`` reshaped (k, n, 3) — the probes its Term 1
    used (docs/identities.md §5; never stored).

    Args:
        residuals: None, or per protein the stored cross-fitted force residual dF (T, n, 3)
            kcal/mol/Å (``loss.residual="crossfit"``,
            :func:`hessid.training.learning.crossfit.residuals_for_frames`); the batch then
            carries them as ``residual``.

    Returns:
        dict of tensors: ``positions`` (A, 3) Å, ``bead_types`` (A,), ``batch`` (A,),
        ``forces`` (A, 3) kcal/mol/Å, ``frame_id`` (B,), ``beta`` (B,) mol/kcal (each frame's
        thermostat β), and with
        probes ``probes``/``term1`` (k, A, 3) and ``probe_scale`` (B,); with Hessians
        ``hessian_blocks`` (list of (3n, 3n)); ``energy`` and ``potential_energy``
        (B,) kcal/mol when every frame has one;
        ``residual`` (A, 3) kcal/mol/Å with ``residuals``.

    Raises:
        ValueError: ``residuals`` lacks a frame of the batch (NaN row).
        ValueError: proteins in one batch stored different k; a protein's probe attributes are
            missing or inconsistent (:meth:`ProteinData.probe_spec`); fm_hessian without
            ``cg/hessian_block``.
    """
    pos, types, batch, forces, fid, beta, probes, term1, scale, hess, energy, resid = ([] for _ in range(12))
    ks = set()
    for b, (pi, t) in enumerate(items):
        p = proteins[pi]
        n = p.n_beads
        pos.append(torch.as_tensor(p.cg_coordinates[t]))
        forces.append(torch.as_tensor(p.cg_forces[t]))
        if residuals is not None:
            r = residuals[pi][t] if residuals[pi] is not None else None
            if r is None or not np.isfinite(r).all():
                raise ValueError(f"{p.path}: no stored cross-fitted residual for frame id "
                                 f"{int(p.frame_id[t])}")
            resid.append(torch.as_tensor(r))
        types.append(torch.as_tensor(type_maps[pi][p.bead_types]))
        batch.append(torch.full((n,), b, dtype=torch.long))
        fid.append(int(p.frame_id[t]))
        beta.append(beta_of_temperature(p.frame_temperature(t)))  # finite, > 0: checked by load_protein
        if p.potential_energy is not None:
            energy.append(float(p.potential_energy[t]))
        if need_probes:
            spec = p.probe_spec()
            k = spec.n_probes
            ks.add(k)
            v = spec.draw([int(p.frame_id[t])], 3 * n)  # (1, k, 3n)
            probes.append(v.reshape(k, n, 3))  # (k, n, 3)
            term1.append(torch.as_tensor(p.term1[t]))  # (k, n, 3)
            scale.append(spec.scale(3 * n))  # 1 or d: finite, > 0 by construction
        if need_hessian:
            if p.hessian_block is None:
                raise ValueError(f"{p.path}: mode fm_hessian needs cg/hessian_block")
            hess.append(torch.as_tensor(p.hessian_block[t], dtype=dtype))
    if len(ks) > 1:
        raise ValueError(f"proteins in one batch stored different probe counts {sorted(ks)}")
    out = {
        "positions": torch.cat(pos).to(dtype), "bead_types": torch.cat(types).long(),
        "batch": torch.cat(batch), "forces": torch.cat(forces).to(dtype),
        "frame_id": torch.tensor(fid, dtype=torch.long), "beta": torch.tensor(beta, dtype=dtype),
    }
    if len(energy) == len(items):
        out["energy"] = torch.tensor(energy, dtype=dtype)
        out["potential_energy"] = torch.tensor(energy, dtype=torch.float64).to(dtype)
    if residuals is not None:
        out["residual"] = torch.cat(resid).to(dtype)  # (A, 3)
    if need_probes:
        out["probes"] = torch.cat(probes, 1).to(dtype)  # (k, A, 3)
        out["term1"] = torch.cat(term1, 1).to(dtype)  # (k, A, 3)
        out["probe_scale"] = torch.tensor(scale, dtype=dtype)
    if need_hessian:
        out["hessian_blocks"] = hess
    return out


class FrameStream:
    """Deterministic, resumable, rank-sharded batches of frames (a Lightning train/val loader).

    Global step s of epoch e = s // L (L batches per epoch) uses the global batch
    ``perm(seed, e)[(s % L)·b : (s % L + 1)·b]``; rank r of w keeps items ``r::w``. Iteration
    starts at the owning trainer's ``global_step``, so a resumed run sees the same batches.

    Args:
        items: frames ``(protein index, frame index)``.
        batch_size: global batch size b (clipped to ``[1, len(items)]``).
        seed: data-order seed.
        collate: maps a list of items to a batch (e.g. :func:`collate_frames` bound to the data).
        shuffle: True for training (a new permutation per epoch, incomplete last batch
            dropped), False for validation (items in order, every batch).
        module: the LightningModule whose trainer gives rank, world size and ``global_step``
            (None: rank 0 of 1; a shuffled stream then cannot be iterated).

    Raises:
        ValueError: on iteration, a shuffled stream whose batch size does not divide by the
            number of ranks.
    """

    def __init__(self, items, batch_size, seed, collate, shuffle, module=None):
        self.items = list(items)
        self.batch_size = max(1, min(int(batch_size), len(self.items)))
        self.seed = int(seed)
        self.collate = collate
        self.shuffle = shuffle
        self.module = module
        if shuffle:
            self.n_batches = len(self.items) // self.batch_size  # drop_last: equal rank shares
        else:
            self.n_batches = math.ceil(len(self.items) / self.batch_size)

    def _rank_world(self):
        trainer = getattr(self.module, "_trainer", None) if self.module is not None else None
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def __len__(self) -> int:
        return self.n_batches

    def order(self, epoch: int) -> list:
        """The items in epoch ``epoch``'s order (permuted by ``[seed, epoch]`` when shuffled)."""
        if not self.shuffle:
            return self.items
        perm = np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.items))
        return [self.items[i] for i in perm]

    def global_batch(self, step: int) -> list:
        """The items of global step ``step`` over all ranks."""
        epoch, pos = divmod(int(step), self.n_batches)
        order = self.order(epoch)
        return order[pos * self.batch_size : (pos + 1) * self.batch_size]

    def __iter__(self):
        rank, world = self._rank_world()
        if self.shuffle and self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the "
                             f"number of ranks ({world}) so results do not depend on it")
        if self.shuffle:
            trainer = self.module._trainer
            start = int(trainer.global_step)
            first = start - start % self.n_batches
            for step in range(start, first + self.n_batches):
                yield self.collate(self.global_batch(step)[rank::world])
        else:
            # every rank sees a share of every validation batch, so no rank is left without a
            # validation metric (early stopping and sync_dist need one on each rank); a batch
            # smaller than the rank count repeats its last frame on the ranks it cannot fill
            for pos in range(self.n_batches):
                batch = self.items[pos * self.batch_size : (pos + 1) * self.batch_size]
                yield self.collate(batch[rank::world] or batch[-1:])

    # Lightning's resumable-loader protocol: the position is derived from global_step
    def state_dict(self) -> dict:
        """``{"seed": seed}`` (the position is not stored: it follows from ``global_step``)."""
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Check a resumed run uses the same data seed.

        Raises:
            ValueError: ``state`` holds a different seed.
        """
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError("resuming with a different data seed changes the data order")
