"""The verifier certifies its own numerics (issue 12 item 1): every quadrature row carries a
resolution estimate (2× nodes, FD h vs h/2, Boltzmann density at the fiber_bounds edges); a
correct system is never FAIL (PASS after automatic refinement, or UNRESOLVED with advice);
a wrong identity is FAIL at every resolution."""

import json
import textwrap

import pytest
import torch

from hessid import identities
from hessid.cli import main
from hessid.quadrature import BETA_300K, QuadratureSystem
from hessid.verification.checks import check_quadrature_system
from hessid.verification.results import (
    EDGE_TOL,
    EXIT_UNRESOLVED,
    FAIL,
    PASS,
    UNRESOLVED,
    CheckResult,
    Resolution,
    exit_code,
    judge,
)

DT = torch.float64
_M = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
_K = torch.tensor([40.0, 25.0, 60.0], dtype=DT)
_N1 = torch.tensor([0.3, -0.5, 0.0], dtype=DT)
_N2 = torch.tensor([0.2, 0.0, -0.5], dtype=DT)
EXACT = 1.0 / float((_M**2 / _K).sum())  # 𝓗 = (M K⁻¹ Mᵀ)⁻¹ of the Gaussian


def issue_system(n_nodes=None, bounds=((-7.0, 9.0), (-6.0, 11.0)), points=((0.3,), (-0.8,)),
                 **kw) -> QuadratureSystem:
    """The issue's correct linear system: 3 coordinates, weighted-COM map 0.5/0.3/0.2, sum
    projector, two fiber coordinates on (−7, 9) × (−6, 11), closed-form Hessian."""
    return QuadratureSystem(
        lambda r: 0.5 * (_K * r**2).sum(-1), lambda r: (r * _M).sum(-1, keepdim=True),
        lambda R, s: R * torch.ones(3, dtype=DT) + s[..., :1] * _N1 + s[..., 1:2] * _N2,
        list(bounds), [list(p) for p in points], BETA_300K, projector={"sum": [[1.0, 1.0, 1.0]]},
        exact_hessian=lambda R: torch.tensor([[EXACT]], dtype=DT), name="issue-12", n_nodes=n_nodes, **kw)


def _by_quantity(rows):
    return {(r.map, r.quantity): r for r in rows}


def test_judge_table():
    ok = Resolution(nodes=1e-12, fd=1e-12, n_nodes=40, fd_step=0.01)
    coarse = Resolution(nodes=1e-3, n_nodes=40, fd_step=0.01)
    assert judge(1e-10, 1e-8, ok)[0] == PASS
    assert judge(1e-3, 1e-8, ok)[0] == FAIL  # far above what the resolution explains
    assert judge(1e-3, 1e-8, coarse) == (UNRESOLVED, coarse.advice(1e-3, 1e-8))
    assert judge(1e-10, 1e-8, coarse)[0] == UNRESOLVED  # agreement the resolution cannot certify
    assert "raise n_nodes (at n_nodes=40" in coarse.advice(1e-3, 1e-8)
    edge = Resolution(edge=10 * EDGE_TOL)
    assert judge(1e-10, 1e-8, edge)[0] == UNRESOLVED and "widen fiber_bounds" in judge(1e-10, 1e-8, edge)[1]
    fd = Resolution(fd=1e-6, fd_step=0.3)
    assert "change fd_step (now 0.3" in judge(1e-6, 1e-8, fd)[1]
    # negative controls: detected only beyond 10× the estimate
    assert judge(1e-2, 1e-5, ok, negative=True)[0] == PASS
    assert judge(1e-2, 1e-5, coarse, negative=True)[0] == UNRESOLVED
    assert judge(1e-7, 1e-5, ok, negative=True)[0] == FAIL
    # closed forms: PASS / FAIL only
    assert judge(1e-3, 1e-8)[0] == FAIL and judge(1e-3, 1e-5, negative=True)[0] == PASS


def test_exit_codes():
    row = CheckResult("s", "m", "q", 0.0, 1e-8, True)
    assert exit_code([row]) == 0
    assert exit_code([row, CheckResult("s", "m", "q", 1.0, 1e-8, False, verdict=UNRESOLVED)]) == EXIT_UNRESOLVED
    assert exit_code([row, CheckResult("s", "m", "q", 1.0, 1e-8, False, verdict=UNRESOLVED),
                      CheckResult("s", "m", "q", 1.0, 1e-8, False)]) == 1
    assert exit_code([]) == 1


def test_issue_system_at_40_nodes_is_unresolved_not_fail_without_refinement():
    rows = check_quadrature_system(issue_system(40), forms=("compact",), refine_levels=(1,))
    assert not any(r.status == FAIL for r in rows), [r for r in rows if r.status == FAIL]
    rows = _by_quantity(rows)
    for key in (("P=sum", "hessian <P ddH P^T> - beta Cov(P f)"),
                ("exact", "claimed exact_hessian vs FD of quadrature A")):
        assert rows[key].status == UNRESOLVED and "raise n_nodes (at n_nodes=40" in rows[key].detail


def test_issue_system_passes_at_defaults_through_automatic_refinement():
    rows = check_quadrature_system(issue_system(), forms=("compact",))  # default: 40 nodes
    assert all(r.status == PASS for r in rows), [r for r in rows if r.status != PASS]
    hess = _by_quantity(rows)[("P=sum", "hessian <P ddH P^T> - beta Cov(P f)")]
    assert "n_nodes=160" in hess.detail and "refined from n_nodes=40" in hess.detail


@pytest.mark.parametrize("n_nodes", [40, 80, 160])
def test_a_wrong_identity_fails_at_every_resolution(monkeypatch, n_nodes):
    real = identities.cg_hessian_linear

    def broken(hessians, forces, P, beta, weights=None, return_terms=False):
        return real(hessians, forces, P, 0.999 * beta, weights, return_terms)  # Term 2 0.1 % off

    monkeypatch.setattr(identities, "cg_hessian_linear", broken)
    # (at 40 nodes the row is UNRESOLVED until the automatic refinement reaches 160: then FAIL)
    rows = _by_quantity(check_quadrature_system(issue_system(n_nodes, points=[[0.3]]), forms=()))
    assert rows[("P=sum", "hessian <P ddH P^T> - beta Cov(P f)")].status == FAIL
    assert rows[("exact", "claimed exact_hessian vs FD of quadrature A")].status == PASS


def test_too_narrow_fiber_bounds_are_unresolved_with_widen_advice():
    rows = check_quadrature_system(issue_system(24, bounds=((-0.2, 0.2), (-0.2, 0.2))), forms=("compact",))
    assert not any(r.status == FAIL for r in rows)
    hess = _by_quantity(rows)[("exact", "claimed exact_hessian vs FD of quadrature A")]
    assert hess.status == UNRESOLVED and "widen fiber_bounds" in hess.detail


def test_too_large_fd_step_is_unresolved_with_fd_advice():
    def potential(r):
        x, y = r[..., 0], r[..., 1]
        return 0.5 * x**2 + 0.1 * x**4 + y**2 + 0.1 * y**4 + 0.3 * x * y + 0.1 * x**2 * y

    system = QuadratureSystem(potential, lambda r: r[..., :1], lambda R, s: torch.cat([R, s], -1),
                              [(-7.0, 7.0)], [[0.3]], BETA_300K, projector=[[1.0, 0.0]], fd_step=0.4)
    rows = check_quadrature_system(system, forms=("compact",))
    assert not any(r.status == FAIL for r in rows)
    hess = _by_quantity(rows)[("P=given", "hessian <P ddH P^T> - beta Cov(P f)")]
    assert hess.status == UNRESOLVED and "change fd_step (now 0.4" in hess.detail


SYSTEM_FILE = """
import torch
beta = 1.0 / (0.0019872041 * 300.0)
_m = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
_k = torch.tensor([40.0, 25.0, 60.0], dtype=torch.float64)
_n1 = torch.tensor([0.3, -0.5, 0.0], dtype=torch.float64)
_n2 = torch.tensor([0.2, 0.0, -0.5], dtype=torch.float64)
def potential(r):
    return 0.5 * (_k * r**2).sum(-1)
def cg_map(r):
    return (r * _m).sum(-1, keepdim=True)
def fiber(R, s):
    return R * torch.ones(3, dtype=torch.float64) + s[..., :1] * _n1 + s[..., 1:2] * _n2
fiber_bounds = [(-7.0, 9.0), (-6.0, 11.0)]
points = [[0.3]]
projector = [[1.0, 1.0, 1.0]]
n_nodes = 10
"""


def test_cli_exit_code_3_and_advice_for_an_unresolvable_system(tmp_path, capsys):
    path = tmp_path / "coarse.py"
    path.write_text(textwrap.dedent(SYSTEM_FILE))
    out_json = tmp_path / "out" / "r.json"
    assert main(["verify", str(path), "--json", str(out_json)]) == EXIT_UNRESOLVED
    out = capsys.readouterr().out
    assert "UNRESOLVED" in out and "-> raise n_nodes (at n_nodes=40" in out and " unresolved" in out
    assert "FAIL" not in out.replace("0 failed", "")
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["n_unresolved"] > 0 and summary["n_failed"] == 0 and summary["exit_code"] == 3
    assert main(["verify", "--help"]) == 0
    assert "3 no FAIL but some UNRESOLVED" in " ".join(capsys.readouterr().out.split())
