"""The verification gate: training refuses a dataset whose CG map or projector fails the
core's exact check (:func:`run_verification_gate`, :class:`VerificationGateError`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

import torch

from hessid.training.learning.datasets import ProteinData
from hessid.verification.elastic import check_linear_map_on_structure

log = logging.getLogger(__name__)

__all__ = ["VerificationGateError", "run_verification_gate"]


class VerificationGateError(RuntimeError):
    """The configured CG map / projector failed the exact check; training refused."""


class _StoredMap:
    """Duck-typed ``LinearMap`` of a dataset's (S, Q), both (n, N): unlike
    :class:`hessid.maps.LinearMap` it does not validate at init, so a broken Q reaches the check."""

    def __init__(self, S, Q):
        self.weights = torch.as_tensor(S, dtype=torch.float64)
        self.projector = torch.as_tensor(Q, dtype=torch.float64)
        self.spatial_dim = 3
        self.n_beads, self.n_atoms = self.weights.shape


def run_verification_gate(proteins: list[ProteinData], skip: bool = False) -> dict:
    """Verify each protein's CG map and projector before training (the design card's
    "GPU training once identities pass").

    Calls :func:`hessid.verification.elastic.check_linear_map_on_structure` on the frame-0 AA
    structure (N, 3) Å with the dataset's ``LinearMap`` (S, Q) at the dataset temperature:
    ``Q Sᵀ = I``, the mean force and the CG Hessian ``Term1 − β Cov(P f)`` against the exact
    ``(M K⁻¹ Mᵀ)⁻¹`` of the elastic network (docs/identities.md §2, §7.1), plus negative controls.

    Args:
        proteins: loaded datasets.
        skip: do not check; return ``{"skipped": True}`` after a loud warning.

    Returns:
        ``{"passed": bool, "skipped": bool, "proteins": {name: [CheckResult as dict, ...]}}``.

    Raises:
        VerificationGateError: a check failed or could not run (names protein, check, error,
            tolerance; says how to skip).
    """
    if skip:
        msg = ("VERIFICATION GATE SKIPPED (--skip-verification): the CG map and projector of "
               f"{[p.name for p in proteins]} were NOT checked; HVP targets may be wrong")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        return {"passed": None, "skipped": True, "proteins": {}}
    report: dict = {"passed": True, "skipped": False, "proteins": {}}
    failures = []
    for p in proteins:
        try:
            rows = check_linear_map_on_structure(p.aa_frame0, _StoredMap(p.weights, p.projector),
                                                 temperature=p.temperature, name=p.name)
        except Exception as exc:  # noqa: BLE001 - any failure to verify refuses training
            failures.append(f"{p.name}: the check could not run: {exc}")
            report["proteins"][p.name] = [{"error": str(exc)}]
            continue
        report["proteins"][p.name] = [
            {k: (v if isinstance(v, (str, bool, int, float, type(None))) else str(v))
             for k, v in asdict(r).items()} for r in rows]
        for r in rows:
            log.info("verification %s: %s: %.3e (tol %.1e) %s", p.name, r.quantity,
                     r.max_rel_error, r.tolerance, "ok" if r.passed else "FAILED")
            if not r.passed:
                failures.append(f"{p.name}: {r.quantity}: error {r.max_rel_error:.3e} vs "
                                f"tolerance {r.tolerance:.1e}")
    if failures:
        report["passed"] = False
        raise VerificationGateError(
            "verification gate failed; refusing to train:\n  " + "\n  ".join(failures)
            + "\nFix the CG map/projector of the dataset (hessid data map), or pass "
              "--skip-verification to train anyway.")
    return report
