"""The verification gate: training refuses a dataset whose CG map or projector fails the
core's exact check (:func:`run_verification_gate`, :class:`VerificationGateError`).

The check (:func:`hessid.verification.conditional_gate.check_projector_on_conditional_law`) runs
the estimators of :mod:`hessid.identities` with the dataset's projector on exact weighted
samples of the conditional law of an elastic network of the dataset's frame-0 structure, and
compares mean force, CG Hessian and the per-frame HVP target of training with their closed
forms. On HBond-constrained data (root attribute ``constraints = "HBonds"``) the network is
restricted to rigid X–H groups (the topology's bonds to hydrogen, as OpenMM constrains them)
and Q's columns must be equal within every group: the plain selection projector on such data
is refused, as is any Q with ``Q Sᵀ ≠ I``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

import numpy as np

from hessid.training.data.cg_map import hbond_pairs
from hessid.training.data.reader import open_dataset
from hessid.training.learning.datasets import ProteinData
from hessid.verification.conditional_gate import check_projector_on_conditional_law

log = logging.getLogger(__name__)

__all__ = ["VerificationGateError", "run_verification_gate", "rigid_pairs_of"]


class VerificationGateError(RuntimeError):
    """The configured CG map / projector failed the exact check; training refused."""


def rigid_pairs_of(protein: ProteinData) -> tuple[str, np.ndarray | None]:
    """The dataset's constraints and the atom pairs they make rigid.

    Args:
        protein: a loaded dataset (its file is re-opened for the ``constraints`` attribute and
            the topology).

    Returns:
        ``(constraints, pairs)``: ``constraints`` as stored (``"none"`` when the attribute is
        missing, logged as a warning); ``pairs`` (m, 2) int64 bonds to hydrogen for
        ``"HBonds"``, else None.

    Raises:
        ValueError: unknown constraints, or HBond data whose topology cannot be parsed.
    """
    with open_dataset(protein.path) as ds:
        constraints = ds.constraints
        if constraints is None:
            log.warning("%s: no 'constraints' attribute; the gate treats the data as unconstrained",
                        protein.path)
            return "none", None
        kind = constraints.strip().lower()
        if kind in ("none", ""):
            return "none", None
        if kind != "hbonds":
            raise ValueError(f"{protein.path}: constraints {constraints!r} are not supported by the gate "
                             "(HBonds or none)")
        return "HBonds", hbond_pairs(ds.topology())


def _jsonable(row) -> dict:
    return {k: (v if isinstance(v, (str, bool, int, float, type(None))) else str(v))
            for k, v in asdict(row).items()}


def run_verification_gate(proteins: list[ProteinData], skip: bool = False) -> dict:
    """Verify each protein's CG map and projector before training (the design card's
    "GPU training once identities pass").

    For each protein: the dataset's constraints and rigid X–H pairs (:func:`rigid_pairs_of`),
    then :func:`hessid.verification.conditional_gate.check_projector_on_conditional_law` on the
    frame-0 AA structure (N, 3) Å with the stored (S, Q) at the dataset temperature: ``Q Sᵀ = I``,
    equal Q columns within rigid groups, and ``hessid.identities`` (mean force, Term 1 − β Cov(Q f),
    HVP target) on the conditional law vs the exact answers, plus negative controls.
    About 1 s for a 300-atom protein (one Cholesky and QR of the 3N × 3N network).

    Args:
        proteins: loaded datasets.
        skip: do not check; return ``{"skipped": True}`` after a loud warning.

    Returns:
        ``{"passed": bool, "skipped": bool, "proteins": {name: {"constraints": str,
        "rows": [CheckResult as dict, ...]}}}``.

    Raises:
        VerificationGateError: a check failed or could not run; the message is one line naming
            the protein, every failed check with its error and tolerance, and how to skip.
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
            constraints, pairs = rigid_pairs_of(p)
            rows = check_projector_on_conditional_law(p.aa_frame0, p.weights, p.projector,
                                                      temperature=p.temperature, rigid_pairs=pairs,
                                                      name=p.name)
        except Exception as exc:  # noqa: BLE001 - any failure to verify refuses training
            failures.append(f"{p.name}: the check could not run: {exc}")
            report["proteins"][p.name] = {"error": str(exc)}
            continue
        report["proteins"][p.name] = {"constraints": constraints, "rows": [_jsonable(r) for r in rows]}
        bad = []
        for r in rows:
            log.info("verification %s: %s: %.3e (tol %.1e) %s", p.name, r.quantity,
                     r.max_rel_error, r.tolerance, "ok" if r.passed else "FAILED")
            if not r.passed:
                bad.append(f"{r.quantity}: {r.max_rel_error:.2e} vs tolerance {r.tolerance:.0e}")
        if bad:
            failures.append(f"{p.name} (constraints {constraints}): " + "; ".join(bad))
    if failures:
        report["passed"] = False
        raise VerificationGateError(
            "verification gate refused training: " + " | ".join(failures)
            + " -- fix the dataset's CG map/projector (hessid data map), or pass --skip-verification "
              "to train anyway")
    return report
