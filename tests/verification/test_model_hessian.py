"""The generic model-Hessian check: exact HVPs pass, wrong ones fail, controls detect."""

from __future__ import annotations

import torch

from hessid.verification.model_hessian import check_model_hvp


def _energy(x):
    return (torch.sin(x) * x**2).sum() + (x[:-1] * x[1:]).sum() ** 2


def _exact_hvp(x, v):
    h = torch.autograd.functional.hessian(_energy, x)
    return v @ h.T


def _probes(d, k=2):
    return torch.randn(k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_exact_hvp_passes_every_row_including_the_negative_controls():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    rows = check_model_hvp(_energy, _exact_hvp, x, _probes(6), "toy", "exact")
    assert len(rows) == 5 and all(r.passed for r in rows)
    assert sum(r.negative_control for r in rows) == 3


def test_a_wrong_hvp_fails_the_exact_row():
    """Control: an HVP that drops the coupling term's second derivative is caught."""
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)

    def partial(x, v):
        h = torch.autograd.functional.hessian(lambda y: (torch.sin(y) * y**2).sum(), x)
        return v @ h.T

    rows = check_model_hvp(_energy, partial, x, _probes(6), "toy", "wrong")
    assert not rows[0].passed and rows[0].max_rel_error > 1e-3
