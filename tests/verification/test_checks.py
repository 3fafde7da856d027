"""The built-in suite (`hessid verify --all`): every identity holds, every wrong formula is
detected, and the verifier itself fails when the library's identity is broken."""

import json

import pytest
import torch

import hessid.identities as identities
from hessid.cli import main
from hessid.quadrature import builtin_systems
from hessid.verification.checks import (
    CheckResult,
    all_passed,
    check_quadrature_system,
    format_table,
    relative_error,
)

NEGATIVE_KINDS = ("term2 sign flipped", "term1 only", "no div G", "linear formula on nonlinear map",
                  "no G dG f term", "missing fiber Jacobian")


@pytest.fixture(scope="module")
def verify_all_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "all.json"
    code = main(["verify", "--all", "--quiet", "--json", str(path)])
    return code, json.loads(path.read_text())


def test_verify_all_exits_zero_and_every_check_passes(verify_all_json):
    code, data = verify_all_json
    assert code == 0
    assert data["summary"]["all_passed"] and data["summary"]["n_failed"] == 0
    assert data["summary"]["n_checks"] == len(data["results"]) >= 150


def test_verify_all_covers_every_builtin_system_and_form(verify_all_json):
    _, data = verify_all_json
    systems = {r["system"] for r in data["results"]}
    for s in builtin_systems():
        assert s.name in systems
    assert any(s.startswith("gaussian closed form") for s in systems)
    assert any(s.startswith("ENM villin") for s in systems)
    quantities = {r["quantity"] for r in data["results"]}
    for form in ("compact", "split", "symmetric"):
        assert f"hessian ({form})" in quantities
        assert f"symmetry of averaged hessian ({form})" in quantities
    assert "translation zero mode |H t|/|H|" in quantities


def test_every_kind_of_wrong_formula_is_detected(verify_all_json):
    _, data = verify_all_json
    negatives = [r for r in data["results"] if r["negative_control"]]
    for kind in NEGATIVE_KINDS:
        rows = [r for r in negatives if kind in r["quantity"]]
        assert rows, f"no negative control for {kind!r}"
        assert all(r["passed"] and r["max_rel_error"] > r["tolerance"] for r in rows)


def test_identity_checks_are_at_quadrature_precision(verify_all_json):
    _, data = verify_all_json
    worst = max(r["max_rel_error"] for r in data["results"] if not r["negative_control"])
    assert worst < 1e-9


def test_broken_library_identity_is_caught_by_the_verifier(monkeypatch):
    """Verifier negative control: drop Term 2 inside hessid.identities → FAIL rows."""
    real = identities.cg_hessian_linear

    def term1_only(hessians, forces, projector, beta, weights=None, return_terms=False):
        total, (t1, t2) = real(hessians, forces, projector, beta, weights, return_terms=True)
        return (t1, (t1, torch.zeros_like(t2))) if return_terms else t1

    monkeypatch.setattr(identities, "cg_hessian_linear", term1_only)
    system = builtin_systems()[0]
    rows = check_quadrature_system(system)
    failed = {r.quantity for r in rows if not r.passed}
    assert "hessian <P ddH P^T> - beta Cov(P f)" in failed
    assert not all_passed(rows)


def test_negative_control_rows_pass_only_above_the_detection_threshold():
    row = CheckResult("s", "m", "neg: x detected", 2e-5, 1e-5, True, negative_control=True)
    table = format_table([row])
    assert ">1e-05" in table and "PASS" in table
    assert "1 checks (1 negative controls): 1 passed, 0 failed" in table


def test_relative_error_is_max_norm_relative():
    a = torch.tensor([1.0, 2.0 + 1e-6], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert abs(relative_error(a, b) - 0.5e-6) < 1e-15
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(a, b[:1])
