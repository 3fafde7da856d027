"""`hessid verify` with temperatures (docs/thermo.md §5): T1–T3 pass at quadrature precision,
every wrong formula is detected, a broken library estimator is reported *wrong* and a coarse
quadrature *under-resolved*, and user files with ``betas`` pass or fail as they should."""

import json
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hessid.thermo as thermo
import hessid.verification.cli as verify_cli
from hessid.cli import main
from hessid.quadrature import QuadratureSystem, builtin_systems
from hessid.thermo_toys import t2_double_well
from hessid.units import beta as beta_of
from hessid.verification.thermo_checks import check_thermo_system, run_thermo_builtin_checks

NEGATIVE_KINDS = ("A in place of <U>_R", "<U>_R weighted at T for beta", "+d2_beta(beta A) (sign)",
                  "k_B T^2 Var(U) (T for beta)", "exact_mean_energy(R, T)", "+Cov(Pf, U) (sign)",
                  "d_T F = k_B T^2 Cov (T for beta)", "grad <U>_R with T for beta")
RELATIONS = ("R2 <U>_R vs d_beta(beta A)", "R3 Var_R(U) vs -d2_beta(beta A)", "R6 d_beta F vs -Cov(Pf, U)",
             "R6 grad <U>_R vs -<Pf> + beta Cov(Pf, U)", "claimed exact_mean_energy vs quadrature <U>_R")
B300 = beta_of(300.0)


@pytest.fixture(scope="module")
def builtin_rows():
    return run_thermo_builtin_checks()


def test_t1_t2_t3_pass_every_relation_and_identity(builtin_rows):
    assert builtin_rows and all(r.passed for r in builtin_rows), [r for r in builtin_rows if not r.passed]
    for name in ("T1 gaussian", "T2 entropic double well", "T3 parameter response"):
        quantities = {r.quantity for r in builtin_rows if r.system.startswith(name)}
        for rel in RELATIONS:
            assert any(q.startswith(rel) for q in quantities), (name, rel)
        assert "hessian <P ddH P^T> - beta Cov(P f)" in quantities  # the identity suite ran too


def test_every_kind_of_thermal_mistake_is_detected(builtin_rows):
    negatives = [r for r in builtin_rows if r.negative_control]
    for kind in NEGATIVE_KINDS:
        rows = [r for r in negatives if kind in r.quantity]
        assert rows, f"no negative control for {kind!r}"
        assert all(r.passed and r.max_rel_error > r.tolerance for r in rows)
    # T1 has Cov(Pf, U) = 0: a sign flip of it is structurally invisible and not reported
    assert not any(r.system.startswith("T1") and "+Cov" in r.quantity for r in negatives)


def test_thermal_relations_hold_at_quadrature_precision(builtin_rows):
    worst = max(r.max_rel_error for r in builtin_rows if not r.negative_control)
    assert worst < 1e-9


def test_verify_all_runs_the_thermo_systems(monkeypatch, tmp_path, builtin_rows):
    monkeypatch.setattr(verify_cli, "run_builtin_checks", lambda: [])
    monkeypatch.setattr(verify_cli, "run_thermo_builtin_checks", lambda: builtin_rows)
    path = tmp_path / "all.json"
    assert main(["verify", "--all", "--quiet", "--json", str(path)]) == 0
    systems = {r["system"] for r in json.loads(path.read_text())["results"]}
    assert {s.split()[0] for s in systems} == {"T1", "T2", "T3"}


def _t2(n_nodes: int = 48):
    return t2_double_well(m=2).quadrature_system([[-1.0], [0.5]], B300, [beta_of(250.0)], n_nodes=n_nodes)


def test_broken_library_estimator_is_reported_wrong(monkeypatch):
    """Verifier negative control: flip the sign of ∂_βF inside hessid.thermo → FAIL ('wrong')."""
    real = thermo.mean_force_beta_derivative
    monkeypatch.setattr(thermo, "mean_force_beta_derivative", lambda *a, **k: -real(*a, **k))
    failed = [r for r in check_thermo_system(_t2()) if not r.passed]
    positive = [r for r in failed if not r.negative_control]
    assert len(positive) == 2 and all(r.quantity.startswith("R6 d_beta F") for r in positive)
    assert all(r.verdict == "FAIL" and "wrong" in r.detail for r in positive)
    # the sign-flip negative control now computes the right answer: it is (correctly) not detected
    assert {r.quantity for r in failed if r.negative_control} == {"neg: +Cov(Pf, U) (sign) detected"}


def test_subtly_broken_variance_is_reported_wrong(monkeypatch):
    real = thermo.energy_variance
    monkeypatch.setattr(thermo, "energy_variance", lambda *a, **k: 1.0001 * real(*a, **k))
    rows = {r.quantity: r for r in check_thermo_system(_t2())}
    r3 = rows["R3 Var_R(U) vs -d2_beta(beta A)"]
    assert r3.verdict == "FAIL" and "wrong" in r3.detail and r3.max_rel_error == pytest.approx(1e-4, rel=1e-3)


def test_coarse_quadrature_is_unresolved_not_fail():
    rows = check_thermo_system(_t2(n_nodes=3))  # 4× refinement reaches only 12 nodes
    claim = next(r for r in rows if r.quantity.startswith("claimed exact_mean_energy"))
    assert claim.verdict == "UNRESOLVED" and "raise n_nodes" in claim.detail
    assert not any(r.status == "FAIL" for r in rows), [r for r in rows if r.status == "FAIL"]
    # no negative control claims a detection that the resolution cannot support
    assert all(r.status != "PASS" or r.max_rel_error > 10 * 1e-5 for r in rows if r.negative_control)


def test_coarse_quadrature_passes_after_automatic_refinement():
    rows = check_thermo_system(_t2(n_nodes=12))
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    assert all("refined from n_nodes=12" in r.detail for r in rows)


@settings(max_examples=3, deadline=None)
@given(coef=st.lists(st.floats(0.05, 0.4), min_size=4, max_size=4), mixed=st.booleans(),
       T=st.lists(st.floats(220.0, 420.0), min_size=2, max_size=2))
def test_thermal_relations_hold_on_random_anharmonic_systems(coef, mixed, T):
    a, c, e, g = coef

    def potential(r):
        x, y = r[..., 0], r[..., 1]
        return 0.5 * x**2 + a * x**4 + y**2 + g * y**4 + c * x * y + e * x**2 * y

    m = torch.tensor([0.8, 0.5] if mixed else [1.0, 0.0], dtype=torch.float64)
    n = torch.tensor([-m[1], m[0]], dtype=torch.float64) / m.norm()
    system = QuadratureSystem(potential, lambda r: (r * m).sum(-1, keepdim=True),
                              lambda R, s: R * m / (m @ m) + s * n, [(-7.0, 7.0)], [[-0.5], [0.7]], B300,
                              projector={"min_norm": (m / (m @ m))[None]}, betas=[beta_of(t) for t in T])
    rows = check_thermo_system(system)
    assert all(r.passed for r in rows), [(r.quantity, r.max_rel_error, r.detail) for r in rows if not r.passed]
    assert any(r.negative_control for r in rows)


def test_nonlinear_maps_get_r2_r3_and_no_projector_rows():
    system = next(s for s in builtin_systems() if "radius" in s.name)
    rows = check_thermo_system(system, betas=[beta_of(250.0), beta_of(400.0)])
    assert rows and all(r.passed for r in rows)
    assert {r.map for r in rows} == {"beta"} and any(r.quantity.startswith("R3") for r in rows)


# ------------------------------------------------------------------------ user files
USER = """
import torch
k, c = 2.0, 0.3
beta = 1.0 / (0.0019872041 * 300.0)
betas = [1.0 / (0.0019872041 * T) for T in (250.0, 350.0)]
def potential(r):
    x, y = r[..., 0], r[..., 1]
    return 0.5 * x**2 + 0.1 * x**4 + 0.5 * k * y**2 + c * x * y
def cg_map(r):
    return r[..., :1]
def fiber(R, s):
    return torch.cat([R, s], dim=-1)
fiber_bounds = [(-6.0, 6.0)]
points = [[0.2], [0.6]]
n_nodes = 64
projector = [[1.0, 0.4]]
"""
# y | x ~ N(−cx/k, 1/(βk)):  ⟨U⟩_x = ½x² + 0.1x⁴ − c²x²/(2k) + 1/(2β)
GOOD = """
def exact_mean_energy(R, beta):
    x = R[..., 0]
    return 0.5 * x**2 + 0.1 * x**4 - c * c * x * x / (2 * k) + 1.0 / (2 * beta)
"""


def _write(tmp_path, extra: str, base: str = USER):
    path = tmp_path / "system.py"
    path.write_text(textwrap.dedent(base) + textwrap.dedent(extra))
    return path


def test_user_file_with_betas_passes_every_thermal_check(tmp_path, capsys):
    assert main(["verify", str(_write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    for rel in RELATIONS:
        assert rel in out
    assert "FAIL" not in out and "neg: exact_mean_energy(R, T) (T for beta) detected" in out


def test_user_file_with_a_t_unaware_mean_energy_fails(tmp_path, capsys):
    # ⟨U⟩ without the hidden DOF's 1/(2β): the claim a β-independent model would make
    bad = GOOD.replace(" + 1.0 / (2 * beta)", "")
    assert main(["verify", str(_write(tmp_path, bad))]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "claimed exact_mean_energy" in line)
    assert row.rstrip().endswith("FAIL")


def test_temperatures_passed_as_betas_are_refused(tmp_path, capsys):
    base = USER.replace("betas = [1.0 / (0.0019872041 * T) for T in (250.0, 350.0)]", "betas = [250.0, 350.0]")
    assert main(["verify", str(_write(tmp_path, GOOD, base))]) == 2
    assert "looks like a temperature in K passed as beta" in capsys.readouterr().err


def test_a_mean_energy_that_is_not_batched_is_refused(tmp_path, capsys):
    bad = """
def exact_mean_energy(R, beta):
    return torch.zeros(1, dtype=torch.float64)
"""
    assert main(["verify", str(_write(tmp_path, bad))]) == 2
    assert "exact_mean_energy(R, beta) with R of shape (2, 1) must return (2,)" in capsys.readouterr().err
