"""QM methods: units at the Hartree/Bohr boundary, FD Hessians against analytic ones, the FD
convergence order, symmetry, SCF non-convergence and element checks."""

from __future__ import annotations

import numpy as np
import pytest

from hessid.training.qm.methods import (
    MethodSpec,
    QMError,
    UnsupportedElementError,
    check_elements,
    compute,
    energy_gradient,
    fd_step_study,
)
from hessid.units import HARTREE_KCAL_PER_MOL

WATER_Z = np.array([8, 1, 1])
#: a slightly distorted water (Å), not a minimum: gradients are non-zero
WATER_X = np.array([[0.0, 0.0, 0.12], [0.0, 0.77, -0.47], [0.0, -0.74, -0.45]])
HF_STO3G = MethodSpec(name="dft", xc="hf", basis="sto-3g", conv_tol=1e-12, threads=1)


def test_gfn2_gradient_is_the_derivative_of_the_energy_in_kcal_mol_angstrom():
    """Central differences of the energy (kcal/mol) over Å steps reproduce the analytic gradient:
    a Bohr/Å mix-up at the boundary would be off by 1.89×, a Hartree one by 627×."""
    spec = MethodSpec()
    _, g = energy_gradient(WATER_Z, WATER_X, spec)
    h = 1e-4  # Å; truncation ≈ g''' h²/6 ≈ 1e-6 kcal/mol/Å, SCF noise ≈ 1e-9 kcal/mol / h
    fd = np.zeros_like(g)
    for i in range(3):
        for a in range(3):
            xp, xm = WATER_X.copy(), WATER_X.copy()
            xp[i, a] += h
            xm[i, a] -= h
            fd[i, a] = (energy_gradient(WATER_Z, xp, spec)[0] - energy_gradient(WATER_Z, xm, spec)[0]) / (2 * h)
    assert np.abs(g).max() > 1.0  # a non-trivial gradient (kcal/mol/Å)
    np.testing.assert_allclose(fd, g, atol=1e-3)
    assert not np.allclose(fd, g / 0.529177210903, atol=1e-3)  # control: a Bohr-scaled gradient fails


def test_gfn2_energy_is_in_kcal_per_mol():
    e, _ = energy_gradient(WATER_Z, WATER_X, MethodSpec())
    assert -5.1 < e / HARTREE_KCAL_PER_MOL < -5.0  # GFN2-xTB water ≈ −5.07 Hartree


def test_fd_hessian_of_pyscf_gradients_matches_the_analytic_hessian():
    """HF/STO-3G water: central differences of PySCF's analytic gradients against PySCF's
    analytic Hessian (converted from Hartree/Bohr² and (N, N, 3, 3) layout), on the in-plane
    columns of the oxygen, y and z (8 gradients, to stay fast). The FD error is O(h²): H(h) and H(2h)
    differ by ≈ 3× the error of H(h), which sets the tolerance."""
    ref = compute(WATER_Z, WATER_X, HF_STO3G)
    n = 3
    x0 = WATER_X.reshape(-1)

    def columns(h):  # (9, 2): central differences along the oxygen's y, z
        cols = []
        for j in (1, 2):
            e = np.zeros(9)
            e[j] = h
            gp = energy_gradient(WATER_Z, (x0 + e).reshape(n, 3), HF_STO3G)[1].reshape(-1)
            gm = energy_gradient(WATER_Z, (x0 - e).reshape(n, 3), HF_STO3G)[1].reshape(-1)
            cols.append((gp - gm) / (2 * h))
        return np.stack(cols, axis=1)

    h = 2e-3
    fd_h, fd_2h = columns(h), columns(2 * h)
    truncation = np.abs(fd_2h - fd_h).max() / 3.0  # ≈ error of fd_h (h² law)
    tol = 2.0 * truncation + 1e-4  # + SCF noise: conv_tol 1e-12 Hartree → ≪ 1e-4 kcal/mol/Å²
    err = np.abs(fd_h - ref.hessian[:, 1:3]).max()
    assert err < tol, (err, truncation)
    assert err / np.abs(ref.hessian).max() < 1e-4
    # negative control: the (N, N, 3, 3) → (3N, 3N) reshape without the transpose is caught
    h4 = ref.hessian.reshape(n, 3, n, 3).transpose(0, 2, 1, 3)  # back to PySCF's [i, j, α, β]
    wrong = h4.reshape(3 * n, 3 * n)
    assert np.abs(fd_h - wrong[:, 1:3]).max() > 100 * tol


def test_gfn2_fd_hessian_error_falls_as_h_squared_and_forward_differences_do_not():
    """Central differences are second order: halving h quarters the error (truncation regime,
    h ≥ 1e-2 Å, far above the SCF noise floor ≈ 1e-7 relative). Control: one-sided differences
    only halve it."""
    study = fd_step_study(WATER_Z, WATER_X, MethodSpec(), steps=(4e-2, 2e-2, 1e-2), reference_step=1e-2)
    errs = [r["max_abs_error"] for r in study["rows"]]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(3.5 < q < 4.5 for q in ratios), ratios
    spec = MethodSpec()
    n = 3

    def grad(x):
        return energy_gradient(WATER_Z, x.reshape(n, 3), spec)[1].reshape(-1)

    x = WATER_X.reshape(-1)
    g0 = grad(x)
    ref = compute(WATER_Z, WATER_X, MethodSpec(fd_step=1e-3, xtb_accuracy=1e-4)).hessian

    def forward(h):
        cols = [(grad(x + h * e) - g0) / h for e in np.eye(9)]
        return np.abs(np.stack(cols, axis=1) - ref).max()

    q = forward(2e-2) / forward(1e-2)
    assert 1.6 < q < 2.4, q


def test_hessians_are_symmetric_and_fd_asymmetry_is_small():
    res = compute(WATER_Z, WATER_X, MethodSpec())
    np.testing.assert_array_equal(res.hessian, res.hessian.T)
    assert res.asymmetry < 1e-5  # the unsymmetrised FD matrix: error ≈ 1e-6 relative at 5e-4 Å
    assert res.hessian.shape == (9, 9)


def test_scf_non_convergence_is_a_one_line_qm_error():
    with pytest.raises(QMError, match=r"^GFN2-xTB: SCF not converged in 1 cycles$"):
        compute(WATER_Z, WATER_X, MethodSpec(max_iter=1))


def test_unsupported_elements_are_refused_per_method():
    with pytest.raises(UnsupportedElementError, match=r"element U \(Z=92\) is not supported by GFN2-xTB"):
        check_elements([92, 1], MethodSpec())
    with pytest.raises(UnsupportedElementError, match="element I has no 6-31g\\(d\\) basis in PySCF"):
        check_elements([6, 53, 1], MethodSpec(name="dft"))
    check_elements([6, 53, 1], MethodSpec())  # control: GFN2-xTB treats iodine
    check_elements([6, 8, 1], MethodSpec(name="dft"))  # control: CHO have 6-31G(d)


def test_method_spec_refuses_bad_options():
    with pytest.raises(ValueError, match="--method='ccsd'"):
        MethodSpec(name="ccsd")
    with pytest.raises(ValueError, match="--fd-step"):
        MethodSpec(fd_step=0.0)
