"""The variance-minimising force projector Q* of the second alanine-dipeptide study's HVP-RB arm.

Q* is fitted once on the held-out run's Q* fit frames (``split/qfit/qfit.h5``: run 3's frames
that are not test configurations) with the 5-bead backbone map, rigid HBond groups and every
atom allowed (settings ``qstar``), stored in ``qstar/qstar.npz`` with its provenance, and
written into copies of the training files (:func:`hessid.training.data.cg_map.write_cg` with
the matrix), whose Term 1 is then recomputed with its lift Q*ᵀv.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hessid.training.data.cg_map import fit_optimal_projector, write_cg
from hessid.training.pipelines import ala2


def fit_qstar(out: Path, s: dict, split: dict) -> tuple[np.ndarray, dict]:
    """Q* (5, N) float64 and its provenance, fitted on the Q* fit frames (cached in ``qstar/qstar.npz``)."""
    cache = out / "qstar" / "qstar.npz"
    if cache.exists():
        z = np.load(cache)
        return z["projector"], json.loads(str(z["provenance"]))
    qfit = out / split["qfit"]
    cg_map, *_ = ala2.backbone_map(ala2.dataset_topology(qfit))
    q, prov = fit_optimal_projector(qfit, None, s["qstar"]["neighbours"], cg_map=cg_map)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, projector=q, provenance=json.dumps(prov, default=str))
    return q, prov


def qstar_applier(out: Path, s: dict, split: dict) -> dict:
    """``{"apply": fn}``: ``fn(path)`` re-maps a copied training file with Q* (fitted on first use)."""

    def apply(path: Path) -> None:
        q, prov = fit_qstar(out, s, split)
        cg_map, types, bonds, vocab = ala2.backbone_map(ala2.dataset_topology(path))
        write_cg(path, cg_map, types, bonds, vocab, overwrite=True, projector=q, projector_provenance=prov)

    return {"apply": apply}


__all__ = ["fit_qstar", "qstar_applier"]
