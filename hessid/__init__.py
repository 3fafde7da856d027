"""hessid — verification-first CG potentials with Hessian-vector-product supervision.

Core modules (torch, numpy, scipy only):

- :mod:`hessid.units`      — k_B, β(T), OpenMM (kJ/mol, nm) ↔ hessid (kcal/mol, Å) conversions
- :mod:`hessid.maps`       — linear and nonlinear CG maps and their force projectors
- :mod:`hessid.probes`     — deterministic per-frame probe vectors and estimator scales
- :mod:`hessid.identities` — mean force, CG Hessian and HVP-target estimators
  (docs/identities.md §2–§5)
- :mod:`hessid.hvp_loss`   — per-frame and Rao–Blackwellised HVP losses (docs/variance_reduction.md)
- :mod:`hessid.optimal_projector` — variance-minimising force projector Q* (docs/variance_reduction.md)
- :mod:`hessid.toy`        — systems with exact answers and a quadrature engine
  (docs/identities.md §7)
- :mod:`hessid.thermo`     — temperature/parameter derivatives of A from conditional samples
  (docs/thermo.md (R1)–(R8)); :mod:`hessid.thermo_toys` — toys T1–T3 (docs/thermo.md §6)

:mod:`hessid.cli` is the ``hessid`` command line (jsonargparse); it imports a command's module
only when that command runs.

Subpackages: :mod:`hessid.verification` (exact checks, ``hessid verify``) and
:mod:`hessid.training` (data, targets, models, losses, training, simulation, evaluation).
"""

__version__ = "0.1.0"
