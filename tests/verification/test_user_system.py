"""`hessid verify SYSTEM.py`: a correct user system passes; broken ones are refused or fail."""

import textwrap
from pathlib import Path

import pytest

from hessid.cli import main
from hessid.verification.user_system import load_user_system

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_system.py"

BASE = """
import torch
beta = 1.0
def potential(r):
    x, y = r[..., 0], r[..., 1]
    return 0.5 * x**2 + y**2 + 0.1 * y**4 + 0.3 * x * y
def cg_map(r):
    return r[..., :1]
fiber_bounds = [(-7.0, 7.0)]
points = [[0.2], [0.6]]
n_nodes = 64
"""


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "system.py"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(body))
    return path


def test_example_user_system_passes(capsys):
    assert main(["verify", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "hessian (symmetric)" in out and "P=given" in out


def test_fiber_off_the_level_set_is_refused_naming_point_and_residual(tmp_path, capsys):
    path = _write(tmp_path, """
        def fiber(R, s):
            return torch.cat([R + 0.01 * s, s], dim=-1)
    """)
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "cg_map(fiber(R, s)) != R at point 0" in err
    assert "max residual" in err


def test_wrong_projector_is_refused(tmp_path, capsys):
    path = _write(tmp_path, """
        def fiber(R, s):
            return torch.cat([R, s], dim=-1)
        projector = [[0.9, 0.4]]
    """)
    assert main(["verify", str(path)]) == 2
    assert "violates P Mᵀ = I: max |P Mᵀ − I| = 1.000e-01" in capsys.readouterr().err


def test_valid_offset_projector_passes(tmp_path):
    path = _write(tmp_path, """
        def fiber(R, s):
            return torch.cat([R, s], dim=-1)
        projector = [[1.0, 0.4]]
    """)
    assert main(["verify", "--quiet", str(path)]) == 0


def test_wrong_claimed_exact_hessian_fails_with_exit_code_one(tmp_path, capsys):
    path = _write(tmp_path, """
        def fiber(R, s):
            return torch.cat([R, s], dim=-1)
        def exact_hessian(R):
            return torch.ones(1, 1, dtype=torch.float64)   # not the true curvature
    """)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "claimed exact_hessian vs FD of quadrature A" in out and "FAIL" in out


def test_missing_required_name_is_refused(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("beta = 1.0\n")
    with pytest.raises(ValueError, match=r"missing required name\(s\) \['potential'"):
        load_user_system(path)
