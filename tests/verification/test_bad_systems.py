"""`hessid verify SYSTEM.py` on bad plugins (issue 12 item 4, verify part): each is refused with
one line naming the file, the function and the point, exit 2, no traceback."""

import textwrap

import pytest

from hessid.cli import main

GOOD = """
import torch
beta = 1.0
def potential(r):
    x, y = r[..., 0], r[..., 1]
    return 0.5 * x**2 + y**2 + 0.1 * y**4 + 0.3 * x * y
def cg_map(r):
    return r[..., :1]
def fiber(R, s):
    return torch.cat([R, s[..., :1]], dim=-1)
fiber_bounds = [(-7.0, 7.0)]
points = [[0.2], [0.6]]
n_nodes = 48
"""

CASES = {
    "exact_hessian of the wrong shape": (
        "def exact_hessian(R):\n    return torch.eye(2, dtype=torch.float64)\n",
        "exact_hessian(R) must return a finite (d, d) = (1, 1) matrix, got shape (2, 2)"),
    "potential of the wrong shape": (
        "_p = potential\ndef potential(r):\n    return _p(r)[..., None]\n",
        "potential(r) returned (3, 1) for r of shape (3, 2), expected (3,)"),
    "NaN in the potential": (
        "_p = potential\ndef potential(r):\n    return torch.where(r[..., 1] > 5, torch.nan, _p(r))\n",
        "at point 0 R = [0.2]: potential(r) = nan at fiber coordinates s = [5.42"),
    "numpy potential without gradients": (
        "import numpy as np\ndef potential(r):\n    x = r.detach().numpy()\n"
        "    return torch.as_tensor(0.5 * x[..., 0]**2 + x[..., 1]**2)\n",
        "potential(r) is not differentiable by torch autograd"),
    "wrong number of fiber_bounds": (
        "fiber_bounds = [(-7.0, 7.0), (-1.0, 1.0)]\nprojector = [[1.0, 0.0]]\n",
        "fiber(R, s) returned (9, 2), expected (S, D) = (9, 3): D = d + len(fiber_bounds) = 1 + 2"),
    "ragged projector": (
        "projector = [[1.0, 0.0], [1.0]]\n",
        "projector 'projector' is not a numeric (d, D) matrix (rows of different lengths?)"),
    "rank-deficient map with a projector": (
        "def cg_map(r):\n    return torch.stack([r[..., 0], 2 * r[..., 0]], dim=-1)\n"
        "def fiber(R, s):\n    return torch.cat([R[..., :1], s, torch.zeros_like(s)], dim=-1)\n"
        "points = [[0.2, 0.4]]\n"
        "projector = [[1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]\n",
        "cg_map is rank-deficient: rank M = 1 < d = 2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_system_is_refused_in_one_line(tmp_path, capsys, case):
    body, fragment = CASES[case]
    path = tmp_path / "system.py"
    path.write_text(textwrap.dedent(GOOD) + body)
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(path) in err[0] and fragment in err[0], err[0]


def test_non_python_file_is_refused(tmp_path, capsys):
    path = tmp_path / "system.txt"
    path.write_text(GOOD)
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ending in .py" in err[0]


def test_the_good_system_passes(tmp_path):
    path = tmp_path / "system.py"
    path.write_text(textwrap.dedent(GOOD))
    assert main(["verify", str(path), "-q"]) == 0
