"""QM methods behind one interface: energy, analytic gradient and Hessian of one structure, in
hessid units (kcal/mol, Å). Hartree and Bohr never leave this module (conversions:
:mod:`hessid.units`).

- Tier 1, GFN2-xTB through tblite (Bannwarth, Ehlert, Grimme, JCTC 15, 1652 (2019)): energies
  and analytic gradients; the Hessian by central differences of analytic gradients
  (:func:`central_difference_hessian`), symmetrised.
- Tier 2, DFT through PySCF (Sun et al., JCP 153, 024109 (2020)) with analytic Hessians:
  ωB97X-D3(BJ)/6-31G(d) by default (pyscf-dispersion's D3(BJ) on the ωB97X-V functional without
  its VV10 term, the parametrisation of Najibi & Goerigk, JCTC 14, 5725 (2018)); any PySCF
  ``xc`` (``hf`` for Hartree-Fock) and basis may be chosen.

Errors: :class:`UnsupportedElementError` (a ``ValueError``: bad input, refused before any
computation) and :class:`QMError` (a ``RuntimeError`` for one structure: SCF non-convergence,
a crashed program; the builder records it for that structure and goes on).
"""

from __future__ import annotations

import importlib.metadata
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tblite.exceptions import TBLiteRuntimeError
from tblite.interface import Calculator
from threadpoolctl import ThreadpoolController

from hessid.training.data.qm import element_symbol
from hessid.units import (
    energy_hartree_to_kcal,
    force_hartree_bohr_to_kcal_angstrom,
    hessian_hartree_bohr2_to_kcal_angstrom2,
    length_angstrom_to_bohr,
)

__all__ = [
    "DEFAULT_FD_STEP", "GFN2_MAX_Z", "METHODS", "MethodSpec", "QMError", "QMResult",
    "UnsupportedElementError", "central_difference_hessian", "check_elements", "compute",
    "energy_gradient", "method_versions",
]  # fmt: skip

#: methods of ``hessid qm build --method``
METHODS = ("gfn2-xtb", "dft")
#: largest atomic number GFN2-xTB is parametrised for
GFN2_MAX_Z = 86
#: default central-difference step of GFN2-xTB Hessians, Å (docs/atomistic.md, "FD step"; ethanol at
#: a minimum, a 300 K and a 1000 K sample, against a Richardson-extrapolated reference): at SCC
#: accuracy 1e-4 the error follows the h² law from 2e-2 relative at 5e-2 Å down to ≈ 1e-7 at
#: 1e-4 Å, where SCF noise (≈ 5e-5 kcal/mol/Å² at 1e-4 Å, ∝ 1/h) starts to show. At 5e-4 Å the
#: error is ≤ 2e-6 relative (≤ 3e-3 kcal/mol/Å²), ~100× above that noise, so a structure with a
#: 10× noisier SCF (far from equilibrium) is still truncation-dominated.
DEFAULT_FD_STEP = 5e-4
#: tblite SCC accuracy used for Hessians (1.0 = tblite default; smaller is tighter). At 1.0 and
#: 0.01 the FD error stops falling (or jumps) below ≈ 2e-3 Å because the SCF stopping point
#: changes between displaced gradients; 1e-4 keeps the h² law over the whole range for ≈ 1.3×
#: the time per Hessian.
DEFAULT_XTB_ACCURACY = 1e-4


class QMError(RuntimeError):
    """A QM computation failed for one structure (SCF non-convergence, program error); the
    message is one line."""


class UnsupportedElementError(ValueError):
    """The method cannot treat an element of the molecule (one line naming it)."""


@dataclass(frozen=True)
class MethodSpec:
    """A QM method and its numerical settings (stored as provenance).

    Attributes:
        name: ``gfn2-xtb`` or ``dft``.
        charge: total charge, e.  multiplicity: 2S + 1.
        xc: PySCF functional (dft), e.g. ``wb97x-d3bj``, ``b3lyp``, ``hf``.
        basis: PySCF basis (dft), e.g. ``6-31g(d)``.
        fd_step: central-difference step of GFN2-xTB Hessians, Å.
        xtb_accuracy: tblite SCC accuracy (smaller is tighter).
        max_iter: SCF iteration limit.
        conv_tol: PySCF SCF energy convergence, Hartree.
        grid_level: PySCF DFT grid level (0–9).
        threads: OpenMP threads of the computation (None: 1 for GFN2-xTB, whose small
            per-gradient work loses to thread start-up and, on a loaded machine, to spinning
            OpenMP barriers, 40–100× slower with 2 threads at load 10 on 2 cores; PySCF's
            default, all cores, for DFT). Parallelise GFN2-xTB builds with workers instead.
    """

    name: str = "gfn2-xtb"
    charge: int = 0
    multiplicity: int = 1
    xc: str = "wb97x-d3bj"
    basis: str = "6-31g(d)"
    fd_step: float = DEFAULT_FD_STEP
    xtb_accuracy: float = DEFAULT_XTB_ACCURACY
    max_iter: int = 250
    conv_tol: float = 1e-10
    grid_level: int = 3
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"--method={self.name!r}: expected one of {', '.join(METHODS)}")
        if not self.fd_step > 0:
            raise ValueError(f"--fd-step={self.fd_step!r}: expected a positive step in Å")
        if self.multiplicity < 1:
            raise ValueError(f"multiplicity {self.multiplicity} < 1")

    @property
    def label(self) -> str:
        """``gfn2-xtb`` or ``XC/BASIS`` (lower case)."""
        return "gfn2-xtb" if self.name == "gfn2-xtb" else f"{self.xc}/{self.basis}".lower()

    @property
    def hessian_method(self) -> str:
        return "central_difference" if self.name == "gfn2-xtb" else "analytic"

    def convergence(self) -> dict:
        """The numerical settings that decide the values (JSON provenance)."""
        if self.name == "gfn2-xtb":
            return {"xtb_accuracy": self.xtb_accuracy, "max_iter": self.max_iter,
                    "fd_step_angstrom": self.fd_step, "fd_stencil": "central, 3-point, symmetrised"}  # fmt: skip
        return {"conv_tol_hartree": self.conv_tol, "max_iter": self.max_iter, "grid_level": self.grid_level}


@dataclass(frozen=True)
class QMResult:
    """One structure's values, hessid units.

    Attributes:
        energy: kcal/mol.  gradient: (N, 3) kcal/mol/Å (= −forces).
        hessian: (3N, 3N) kcal/mol/Å², symmetric, or None.
        asymmetry: max |H − Hᵀ| / max |H| before symmetrisation (FD noise; 0 if analytic).
    """

    energy: float
    gradient: np.ndarray
    hessian: np.ndarray | None = None
    asymmetry: float = 0.0


def method_versions(spec: MethodSpec) -> dict:
    """Program versions used by ``spec`` (provenance)."""
    names = ("tblite", "rdkit") if spec.name == "gfn2-xtb" else ("pyscf", "pyscf-dispersion", "rdkit", "tblite")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_elements(species: Sequence[int], spec: MethodSpec) -> None:
    """Refuse elements the method cannot treat, before any computation.

    Raises:
        UnsupportedElementError: GFN2-xTB and Z > 86; DFT and an element without the basis in
            PySCF's library (one line naming the element and the method).
    """
    zs = sorted({int(z) for z in species})
    if spec.name == "gfn2-xtb":
        bad = [z for z in zs if z > GFN2_MAX_Z or z < 1]
        if bad:
            raise UnsupportedElementError(f"element {_symbol(bad[0])} (Z={bad[0]}) is not supported by GFN2-xTB "
                                          f"(Z <= {GFN2_MAX_Z})")  # fmt: skip
        return
    from pyscf import gto  # noqa: PLC0415 # optional: PySCF only for --method dft (tier 2)

    for z in zs:
        sym = element_symbol(z)
        try:
            with warnings.catch_warnings():  # PySCF's "try basis-set-exchange" hint: not ours
                warnings.simplefilter("ignore")
                gto.basis.load(spec.basis, sym)
        except Exception as exc:  # noqa: BLE001 - PySCF raises several types; re-raised as one
            raise UnsupportedElementError(f"element {sym} has no {spec.basis} basis in PySCF ({type(exc).__name__})") from None


def _symbol(z: int) -> str:
    try:
        return element_symbol(z)
    except ValueError:
        return f"Z={z}"


# ----------------------------------------------------------------------------- GFN2-xTB


def _xtb_calculator(species: np.ndarray, coords: np.ndarray, spec: MethodSpec) -> Calculator:
    calc = Calculator("GFN2-xTB", np.asarray(species, np.int32), length_angstrom_to_bohr(coords),
                      charge=float(spec.charge), uhf=int(spec.multiplicity - 1))  # fmt: skip
    calc.set("verbosity", 0)
    calc.set("accuracy", float(spec.xtb_accuracy))
    calc.set("max-iter", int(spec.max_iter))
    return calc


def _xtb_run(calc: Calculator, guess=None):
    try:
        return calc.singlepoint(guess, copy=guess is not None)
    except TBLiteRuntimeError as exc:
        raise QMError(f"GFN2-xTB: {' '.join(str(exc).split())}") from None


def _xtb_energy_gradient(species, coords, spec, guess=None):
    calc = _xtb_calculator(species, coords, spec)
    res = _xtb_run(calc, guess)
    return energy_hartree_to_kcal(float(res.get("energy"))), force_hartree_bohr_to_kcal_angstrom(res.get("gradient")), res


def central_difference_hessian(gradient: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                               step: float) -> tuple[np.ndarray, float]:  # fmt: skip
    """Hessian by central differences of an analytic gradient, symmetrised.

    H[:, j] = (g(x + h e_j) − g(x − h e_j)) / (2h),   H ← (H + Hᵀ)/2

    Truncation error O(h²) (g''' h²/6 per column); noise of the gradient δ gives O(δ/h).

    Args:
        gradient: flat (D,) → (D,) gradient, kcal/mol/Å (any consistent units).
        x: (D,) point, Å.  step: h, Å.

    Returns:
        ``(H (D, D) symmetric, asymmetry)`` with asymmetry = max |H − Hᵀ| / max |H| before
        symmetrisation (an estimate of the FD error).
    """
    x = np.asarray(x, np.float64)
    d = x.size
    h = np.empty((d, d))
    for j in range(d):
        xp, xm = x.copy(), x.copy()
        xp[j] += step
        xm[j] -= step
        h[:, j] = (gradient(xp) - gradient(xm)) / (2.0 * step)
    asym = float(np.abs(h - h.T).max() / max(np.abs(h).max(), 1e-300))
    return 0.5 * (h + h.T), asym


def _xtb_compute(species, coords, spec: MethodSpec, hessian: bool) -> QMResult:
    e, g, _ = _xtb_energy_gradient(species, coords, spec)
    if not hessian:
        return QMResult(e, g)
    n = len(species)

    def grad(xflat):  # a fresh SCF from the SAD guess: no state carried between displacements
        return _xtb_energy_gradient(species, xflat.reshape(n, 3), spec)[1].reshape(-1)

    h, asym = central_difference_hessian(grad, coords.reshape(-1), spec.fd_step)
    return QMResult(e, g, h, asym)


# ----------------------------------------------------------------------------- PySCF


def _pyscf_mean_field(species, coords, spec: MethodSpec):
    from pyscf import dft, gto, lib, scf  # noqa: PLC0415 # optional: PySCF only for --method dft (tier 2)

    if spec.threads:
        lib.num_threads(int(spec.threads))
    atoms = [(element_symbol(int(z)), tuple(float(c) for c in xyz)) for z, xyz in zip(species, coords, strict=True)]
    try:
        mol = gto.M(atom=atoms, unit="Angstrom", basis=spec.basis, charge=spec.charge,
                    spin=spec.multiplicity - 1, verbose=0)  # fmt: skip
    except RuntimeError as exc:  # e.g. charge/spin parity
        raise QMError(f"PySCF: {' '.join(str(exc).split())}") from None
    restricted = spec.multiplicity == 1
    if spec.xc.lower() == "hf":
        mf = scf.RHF(mol) if restricted else scf.UHF(mol)
    else:
        mf = dft.RKS(mol, xc=spec.xc) if restricted else dft.UKS(mol, xc=spec.xc)
        mf.grids.level = int(spec.grid_level)
    mf.conv_tol = float(spec.conv_tol)
    mf.chkfile = None  # no checkpoint files left in TMPDIR
    mf.max_cycle = int(spec.max_iter)
    mf.kernel()
    if not mf.converged:  # one second-order (Newton) attempt from where DIIS stopped
        mf = mf.newton()
        mf.kernel(mf.make_rdm1())
    if not mf.converged:
        raise QMError(f"PySCF {spec.label}: SCF did not converge in {spec.max_iter} cycles (nor with Newton)")
    return mf


def _pyscf_compute(species, coords, spec: MethodSpec, hessian: bool) -> QMResult:
    mf = _pyscf_mean_field(species, coords, spec)
    n = len(species)
    e = energy_hartree_to_kcal(float(mf.e_tot))
    g = force_hartree_bohr_to_kcal_angstrom(np.asarray(mf.nuc_grad_method().kernel()))  # (N, 3)
    if not hessian:
        return QMResult(e, g)
    h4 = np.asarray(mf.Hessian().kernel())  # (N, N, 3, 3) Hartree/Bohr², [i, j, α, β]
    h = hessian_hartree_bohr2_to_kcal_angstrom2(h4.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n))  # (3N, 3N)
    asym = float(np.abs(h - h.T).max() / max(np.abs(h).max(), 1e-300))
    return QMResult(e, g, 0.5 * (h + h.T), asym)


# ----------------------------------------------------------------------------- front


def compute(species: Sequence[int], coords: np.ndarray, spec: MethodSpec, hessian: bool = True) -> QMResult:
    """Energy, gradient and (optionally) Hessian of one structure.

    Args:
        species: (N,) atomic numbers.  coords: (N, 3) float64 Å.  spec: the method.
        hessian: compute the Hessian (GFN2-xTB: 6N extra gradients; DFT: analytic).

    Returns:
        :class:`QMResult` in kcal/mol, kcal/mol/Å, kcal/mol/Å².

    Raises:
        QMError: SCF non-convergence or a program error for this structure (one line).
    """
    species = np.asarray(species, np.int64)
    coords = np.asarray(coords, np.float64)
    if spec.name == "gfn2-xtb":
        with _openmp().limit(limits=int(spec.threads or 1), user_api="openmp"):
            return _xtb_compute(species, coords, spec, hessian)
    return _pyscf_compute(species, coords, spec, hessian)


_CONTROLLER: list = []


def _openmp() -> ThreadpoolController:
    """This process's threadpool controller (built once: scanning the loaded libraries costs
    milliseconds, as much as a GFN2-xTB gradient of a small molecule)."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def energy_gradient(species: Sequence[int], coords: np.ndarray, spec: MethodSpec) -> tuple[float, np.ndarray]:
    """``(energy kcal/mol, gradient (N, 3) kcal/mol/Å)`` of one structure (see :func:`compute`)."""
    res = compute(species, coords, spec, hessian=False)
    return res.energy, res.gradient


# ----------------------------------------------------------------------------- FD step study

#: steps of :func:`fd_step_study`, Å
STUDY_STEPS = (5e-2, 2e-2, 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)


def fd_step_study(species: Sequence[int], coords: np.ndarray, spec: MethodSpec | None = None,
                  steps: Sequence[float] = STUDY_STEPS, accuracies: Sequence[float] | None = None,
                  reference_step: float = 1e-2, reference_accuracy: float = 1e-4) -> dict:  # fmt: skip
    """Error of the central-difference GFN2-xTB Hessian as a function of the step.

    The reference is Richardson's extrapolation of two central differences at the tightest SCF
    accuracy, H_ref = (4 H(h₀/2) − H(h₀)) / 3 with h₀ = ``reference_step``: the O(h²) terms
    cancel, leaving O(h₀⁴). ``reference_error`` = max |H_ref − H(h₀/2)| is the h² error the
    extrapolation removed (a scale, not a bound on H_ref's own error); rows that follow the h²
    law over several decades down to a flat floor show that H_ref is accurate below that floor
    (the floor is then the SCF noise of the scanned accuracy, not the reference's error).

    Args:
        species: (N,) atomic numbers.  coords: (N, 3) Å (ideally a minimum).
        spec: method settings (default :class:`MethodSpec`).
        steps: h values, Å.  accuracies: tblite accuracies to scan (default: spec's).
        reference_step: h₀, Å.  reference_accuracy: tblite accuracy of the reference.

    Returns:
        dict: ``reference_max_abs`` (max |H_ref|, kcal/mol/Å²), ``reference_error`` (bound,
        kcal/mol/Å²), ``rows``: list of ``{"step", "accuracy", "max_abs_error" (kcal/mol/Å²),
        "relative_error" (max abs error / max |H_ref|), "asymmetry", "seconds"}``, ``best``
        (the row with the smallest relative error at the spec's accuracy).
    """
    spec = spec or MethodSpec()
    if spec.name != "gfn2-xtb":
        raise ValueError("the FD step study is for GFN2-xTB (DFT Hessians are analytic)")
    accuracies = tuple(accuracies or (spec.xtb_accuracy,))
    tight = MethodSpec(**{**spec.__dict__, "xtb_accuracy": reference_accuracy})
    h1 = compute(species, coords, MethodSpec(**{**tight.__dict__, "fd_step": reference_step})).hessian
    h2 = compute(species, coords, MethodSpec(**{**tight.__dict__, "fd_step": reference_step / 2})).hessian
    ref = (4.0 * h2 - h1) / 3.0
    scale = float(np.abs(ref).max())
    rows = []
    for acc in accuracies:
        for step in steps:
            t0 = time.perf_counter()
            res = compute(species, coords, MethodSpec(**{**spec.__dict__, "xtb_accuracy": acc, "fd_step": step}))
            err = float(np.abs(res.hessian - ref).max())
            rows.append({"step": float(step), "accuracy": float(acc), "max_abs_error": err,
                         "relative_error": err / scale, "asymmetry": res.asymmetry,
                         "seconds": time.perf_counter() - t0})  # fmt: skip
    mine = [r for r in rows if r["accuracy"] == spec.xtb_accuracy] or rows
    return {"reference_max_abs": scale, "reference_error": float(np.abs(ref - h2).max()),
            "reference_step": reference_step, "reference_accuracy": reference_accuracy,
            "rows": rows, "best": min(mine, key=lambda r: r["relative_error"])}  # fmt: skip
