"""`hessid verify --model-hessian` and the atomistic provider behind it."""

from __future__ import annotations

from hessid.cli import main
from hessid.training.atomistic.check import model_hessian_checks


def test_model_hessian_rows_pass_with_their_controls():
    rows = model_hessian_checks(sizes=(3,), n_probes=2)
    assert len(rows) == 10 and all(r.passed for r in rows)
    assert {r.quantity for r in rows if r.negative_control} == {
        "neg: HVP at a geometry moved 1e-3 Å", "neg: central-difference HVP, h = 1e-3 Å",
        "neg: force sign convention (−H v)"}


def test_verify_model_hessian_command_exits_0(capsys):
    assert main(["verify", "--model-hessian", "-q"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_verify_refuses_two_modes(capsys):
    assert main(["verify", "--model-hessian", "--all"]) == 2
    assert "exactly one" in capsys.readouterr().err
