"""Exact identities of the atomistic HVP losses (issue 13 item 3), each with a negative control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessid.probes import draw_probes
from hessid.training.atomistic.losses import LossConfig, hessian_mse, hvp_mse
from hessid.training.atomistic.probes import AtomisticProbeSpec, molecule_probes, probe_kind
from tests.helpers import relative_error


def _sym(d, seed):
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a + a.T


def _graph(sizes):
    batch = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])
    return batch, torch.tensor(sizes)


def _graph_probes(per_mol, sizes):
    """Per-molecule probes (k, 3n_b) → graph layout (k, A, 3)."""
    return torch.cat([v.reshape(v.shape[0], n, 3) for v, n in zip(per_mol, sizes, strict=True)], 1)


def _hvp_graph(mats, probes, sizes):
    out, start = [], 0
    for m, n in zip(mats, sizes, strict=True):
        v = probes[:, start:start + n].reshape(probes.shape[0], 3 * n)
        out.append((v @ m.T).reshape(-1, n, 3))
        start += n
    return torch.cat(out, 1)


def test_one_hot_probes_averaged_over_all_columns_give_frobenius_over_d():
    """mean_i ‖Δ e_i‖² = ‖Δ‖²_F / d exactly; the scaled loss (c = d) gives ‖Δ‖²_F/d²·d² = L_H."""
    d = 12
    delta = _sym(d, 0)
    cols = torch.eye(d, dtype=torch.float64)
    assert relative_error(((cols @ delta.T) ** 2).sum(-1).mean(), (delta**2).sum() / d) < 1e-14
    # control: the plain mean of squared entries over one column (no average) is not it
    assert relative_error((delta[:, 0] ** 2).sum(), (delta**2).sum() / d) > 1e-3


def test_d_orthonormal_probes_reproduce_the_frobenius_norm():
    """Σ_{m≤d} ‖Δ v_m‖² = ‖Δ‖²_F for a complete orthonormal frame (hessid's orthonormal kind);
    d − 1 of them do not."""
    d = 9
    delta = _sym(d, 1)
    v = draw_probes("orthonormal", 3, [7], d, d)[0]  # (d, d)
    assert relative_error(((v @ delta.T) ** 2).sum(), (delta**2).sum()) < 1e-13
    assert relative_error(((v[:-1] @ delta.T) ** 2).sum(), (delta**2).sum()) > 1e-3


@pytest.mark.parametrize("kind", ["one_hot", "random"])
def test_hvp_mse_expectation_equals_hessian_mse_at_a_molecule_size_mix(kind):
    """E_v[L_HVP] = L_H exactly for molecules of 2, 3 and 5 atoms: one-hot by enumerating all
    columns, unit-sphere ('random') by E[v vᵀ] = I/d with the exact uniform mixture over an
    orthonormal frame's ± directions (a 2-design would be needed for the variance, not the
    mean). Control: dropping the per-molecule scale c_b = d_b (one common scale) is biased."""
    sizes = [2, 3, 5]
    batch, n_atoms = _graph(sizes)
    mats = [_sym(3 * n, 10 + n) for n in sizes]
    zeros = [torch.zeros_like(m) for m in mats]
    target = hessian_mse(mats, zeros)
    # exact expectation: average over d_max "slots"; slot i uses column i mod d_b of molecule b
    # (uniform over each molecule's columns when every d_b divides the slot count)
    slots = int(np.lcm.reduce([3 * n for n in sizes]))
    frames = [torch.eye(3 * n, dtype=torch.float64) if kind == "one_hot"
              else draw_probes("orthonormal", 0, [n], 3 * n, 3 * n)[0] for n in sizes]
    per_slot = [_graph_probes([f[i % f.shape[0]][None] for f in frames], sizes) for i in range(slots)]
    scale = torch.tensor([3.0 * n for n in sizes], dtype=torch.float64)  # c_b = d_b
    losses = [hvp_mse(_hvp_graph(mats, v, sizes), torch.zeros_like(v), scale, batch, n_atoms)
              for v in per_slot]
    assert relative_error(torch.stack(losses).mean(), target) < 1e-13
    common = torch.full((3,), float(np.mean([3 * n for n in sizes])), dtype=torch.float64)
    biased = torch.stack([hvp_mse(_hvp_graph(mats, v, sizes), torch.zeros_like(v), common, batch, n_atoms)
                          for v in per_slot]).mean()
    assert relative_error(biased, target) > 1e-2


def test_hvp_mse_is_unbiased_by_monte_carlo_with_the_library_probes():
    """molecule_probes (fresh, Gaussian and unit-sphere) average to L_H within 5 standard errors."""
    sizes = [2, 4]
    batch, n_atoms = _graph(sizes)
    mats = [_sym(3 * n, 20 + n) for n in sizes]
    target = float(hessian_mse(mats, [torch.zeros_like(m) for m in mats]))
    for kind in ("gaussian", "random"):
        spec = AtomisticProbeSpec(kind, 2, "fresh", 5)
        vals = []
        for step in range(500):
            v, c = molecule_probes(spec, torch.tensor([0, 1]), batch, step)
            vals.append(float(hvp_mse(_hvp_graph(mats, v, sizes), torch.zeros_like(v), c, batch, n_atoms)))
        vals = np.asarray(vals)
        z = (vals.mean() - target) / (vals.std(ddof=1) / np.sqrt(vals.size))
        assert abs(z) < 5, (kind, z)


def test_fixed_probes_depend_on_structure_id_only_and_fresh_probes_on_the_step():
    batch, _ = _graph([3, 3])
    fixed = AtomisticProbeSpec("random", 2, "fixed", 1)
    a, _ = molecule_probes(fixed, torch.tensor([4, 9]), batch, step=0)
    b, _ = molecule_probes(fixed, torch.tensor([9, 4]), batch, step=17)
    assert torch.equal(a[:, :3], b[:, 3:]) and torch.equal(a[:, 3:], b[:, :3])
    fresh = AtomisticProbeSpec("random", 2, "fresh", 1)
    c, _ = molecule_probes(fresh, torch.tensor([4, 9]), batch, step=0)
    d, _ = molecule_probes(fresh, torch.tensor([4, 9]), batch, step=1)
    assert not torch.equal(c, d)
    assert torch.allclose(c.reshape(2, 2, 9).norm(dim=-1), torch.ones(2, 2, dtype=torch.float64))


def test_quadratic_toy_fixed_one_hot_probes_recover_only_probed_columns():
    """E = ½ xᵀKx fitted by H_θ = W (symmetric) on fixed probes per structure (3 structures,
    k = 1, d = 6): the minimum-norm minimiser of the HVP loss equals K on the probed columns
    (and rows) only with one-hot probes, and everywhere with dense (Gaussian) probes.
    Control: the one-hot fit is not K."""
    d = 6
    K = _sym(d, 3) + 10 * torch.eye(d, dtype=torch.float64)
    iu = torch.triu_indices(d, d)
    batch, n_atoms = _graph([2])

    def fit(kind, k=1):
        spec = AtomisticProbeSpec(kind, k, "fixed", 2)
        probes = [molecule_probes(spec, torch.tensor([s]), batch)[0] for s in range(3)]  # (k, 2, 3) each

        def loss(theta):
            W = torch.zeros(d, d, dtype=torch.float64).index_put((iu[0], iu[1]), theta)
            W = W + W.T - torch.diag(torch.diag(W))
            return sum(hvp_mse(_hvp_graph([W], v, [2]), _hvp_graph([K], v, [2]),
                               torch.tensor([float(d)]), batch, n_atoms) for v in probes)

        theta0 = torch.zeros(iu.shape[1], dtype=torch.float64)
        g = torch.autograd.functional.jacobian(loss, theta0)
        h = torch.autograd.functional.hessian(loss, theta0)
        theta = -torch.linalg.pinv(h, rtol=1e-12) @ g  # exact: the loss is quadratic in θ
        W = torch.zeros(d, d, dtype=torch.float64).index_put((iu[0], iu[1]), theta)
        return W + W.T - torch.diag(torch.diag(W)), torch.cat(probes).reshape(-1, d)

    W, probes = fit("one_hot")
    seen = probes.abs().sum(0) > 0  # probed columns
    assert 0 < int(seen.sum()) < d
    assert relative_error(W[:, seen], K[:, seen]) < 1e-10
    assert relative_error(W[seen][:, seen], K[seen][:, seen]) < 1e-10
    assert relative_error(W, K) > 0.1  # control: unprobed block not recovered
    assert float(W[~seen][:, ~seen].abs().max()) == 0.0
    W_dense, _ = fit("gaussian", k=2)
    assert relative_error(W_dense, K) < 1e-10


def test_loss_config_weights_and_validation():
    assert LossConfig(form="rmse_sum").weights() == (1.0, 0.30, 0.09)
    assert LossConfig().weights() == (1.0, 1.0, 1.0)
    assert LossConfig(force_weight=2.0).weights() == (1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="probe kind"):
        LossConfig(probe_kind="sobol")
    with pytest.raises(ValueError, match="loss.mode"):
        LossConfig(mode="efh")
    assert probe_kind("random") == "unit_sphere"
