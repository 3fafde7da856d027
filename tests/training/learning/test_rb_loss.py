"""Training-side Rao–Blackwellised HVP loss, its stabiliser, the bond projection and the
γ-aware normalisation (docs/training.md "HVP estimators", docs/variance_reduction.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessid.hvp_loss import hvp_gradient_probe_variance
from hessid.probes import draw_probes, probe_scale
from hessid.training.data.synthetic import compact_chain
from hessid.training.learning.configs import LossConfig, TrainConfig
from hessid.training.learning.datasets import collate_frames, target_normalisations
from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.hessians import hvp_reference
from hessid.training.learning.losses import (
    bond_directions,
    hessian_loss,
    hessian_target_norms,
    hessian_targets,
    hvp_loss,
    hvp_target_norms,
    hvp_targets,
    project_out_bonds,
    rao_blackwell_hvp_loss_graph,
)
from hessid.training.learning.models import CGPotential
from hessid.training.learning.trainer import train
from tests.curvature_instances import chignolin_like_instance, hessian_derivatives
from tests.helpers import assert_close, relative_error
from tests.training.learning.fixtures import N_BEADS, TINY, synthetic_protein, tiny_module


@pytest.fixture(scope="module")
def protein(tmp_path_factory):
    return synthetic_protein(tmp_path_factory.mktemp("rb"))


def _batch(protein, frames=(0, 1, 2)):
    return collate_frames([protein], [(0, t) for t in frames],
                          [np.arange(len(protein.vocabulary))], torch.float64, need_probes=True)


def _with_probes(protein, data, frames, columns):
    """Replace the batch's probes by one-hot e_i, i in ``columns``, with the exact Term 1
    ``block[:, i]`` (the synthetic dataset's cg/hessian_block) and the one-hot scale 3n."""
    d = 3 * N_BEADS
    blocks = torch.as_tensor(protein.hessian_block[list(frames)])  # (B, d, d)
    k, B = len(columns), len(frames)
    eye = torch.eye(d, dtype=torch.float64)[list(columns)]  # (k, d)
    data = dict(data)
    data["probes"] = eye[:, None].expand(k, B, d).reshape(k, B * N_BEADS, 3).clone()
    data["term1"] = torch.einsum("bij,kj->kbi", blocks, eye).reshape(k, B * N_BEADS, 3)
    data["probe_scale"] = torch.full((B,), probe_scale("one_hot", d), dtype=torch.float64)
    return data


def _grad(module, data):
    module.potential.zero_grad()
    module.compute_losses(data, 10**9)["total"].backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in module.potential.net.parameters()])


# ----------------------------------------------------------------------------- extra tangent


@pytest.mark.parametrize("method", ["dense", "edges"])
def test_residual_tangent_is_the_hvp_along_the_force_residual(protein, method):
    """``residual_target``: the (k+1)-th tangent H_θ dF equals the reference HVP along the
    detached dF = P f − F_θ (prior included), and the k probe HVPs are unchanged."""
    module = tiny_module(protein)
    pot, data = module.potential, _batch(protein)
    args = (pot, data["positions"], data["bead_types"], data["batch"], data["probes"])
    plain = energy_forces_hvp(*args, create_graph=False, method=method)
    out = energy_forces_hvp(*args, create_graph=False, method=method,
                            residual_target=data["forces"])
    assert_close(out.hvp, plain.hvp, rtol=1e-13, what="probe HVPs")
    assert_close(out.forces, plain.forces, rtol=1e-13, what="forces")
    dF = data["forces"] - plain.forces
    assert_close(out.force_residual, dF, rtol=1e-13, what="dF")
    ref = hvp_reference(pot, data["positions"], data["bead_types"], data["batch"], dF[None]).hvp[0]
    assert_close(out.hvp_residual, ref, rtol=1e-11, what="H dF")
    assert float(ref.abs().max()) > 1.0
    projected = energy_forces_hvp(*args, create_graph=False, method=method,
                                  residual_target=data["forces"],
                                  residual_transform=lambda x: project_out_bonds(
                                      x, data["positions"], data["batch"]))
    z = project_out_bonds(dF, data["positions"], data["batch"])
    ref_z = hvp_reference(pot, data["positions"], data["bead_types"], data["batch"], z[None]).hvp[0]
    assert_close(projected.hvp_residual, ref_z, rtol=1e-11, what="H P⊥dF")
    assert_close(projected.force_residual, dF, rtol=1e-13, what="dF (untransformed)")
    with pytest.raises(ValueError, match="residual_target"):
        energy_forces_hvp(pot, data["positions"], data["bead_types"], data["batch"], None,
                          residual_target=data["forces"])


# ----------------------------------------------------------------------------- expectation


@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("stabiliser", [0.0, 0.5])
def test_rb_gradient_equals_frame_gradient_on_a_complete_one_hot_basis(protein, project, stabiliser):
    """k = 3n one-hot probes (c/k = 1, Σ e eᵀ = I): the θ-gradient of the module's
    Rao–Blackwellised loss equals that of the per-frame loss draw by draw
    (docs/variance_reduction.md eq. (3) with Π = I); the stabiliser is exactly zero there."""
    frames = (0, 1, 2)
    data = _with_probes(protein, _batch(protein, frames), frames, range(3 * N_BEADS))
    g_frame = _grad(tiny_module(protein, hvp_project_bonds=project), data)
    g_rb = _grad(tiny_module(protein, hvp_estimator="rao_blackwell", rb_stabiliser=stabiliser,
                             hvp_project_bonds=project), data)
    assert float(g_frame.abs().max()) > 1.0
    assert_close(g_rb, g_frame, rtol=1e-9, what="∇L_RB vs ∇ℓ (complete basis)")


@pytest.mark.parametrize("project", [False, True])
def test_rb_gradient_equals_probe_average_of_frame_gradient(protein, project):
    """k = 1 one-hot probe e_i with c = 3n, averaged over all i (the exact probe expectation):
    E ∇L_RB = E ∇ℓ, stabiliser included. Negative control: L_RB without its
    ``2γβ dFᵀ H_θ dF`` term misses the expectation by far more than round-off."""
    frames = (0, 3)
    base = _batch(protein, frames)
    frame_mod = tiny_module(protein, hvp_project_bonds=project)
    rb_mod = tiny_module(protein, hvp_estimator="rao_blackwell", hvp_project_bonds=project)
    g_frame = g_rb = g_drop = 0.0
    d = 3 * N_BEADS
    for i in range(d):
        data = _with_probes(protein, base, frames, [i])
        g_frame = g_frame + _grad(frame_mod, data) / d
        g_rb = g_rb + _grad(rb_mod, data) / d
        g_rb_single = _grad(rb_mod, data)
        # negative control: the same loss with the extra dF term dropped (γ = 0 in L_RB only)
        pot = rb_mod.potential
        pot.zero_grad()
        out = energy_forces_hvp(pot, data["positions"], data["bead_types"], data["batch"],
                                data["probes"], residual_target=data["forces"])
        hv, t1 = out.hvp, data["term1"]
        if project:
            hv, t1 = (project_out_bonds(x, data["positions"], data["batch"]) for x in (hv, t1))
        rao_blackwell_hvp_loss_graph(hv, t1, out.hvp_residual,
                                     out.force_residual, data["beta"], 0.0, data["batch"],
                                     len(frames), data["probe_scale"]).backward()
        g_drop = g_drop + torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                     for p in pot.net.parameters()]) / d
    assert float((g_rb_single - _grad(frame_mod, data)).abs().max()) > 1e-3 * float(g_frame.abs().max())
    assert_close(g_rb, g_frame, rtol=1e-9, what="E ∇L_RB vs E ∇ℓ (one-hot enumeration)")
    assert relative_error(g_drop, g_frame) > 1e-2, "dropping 2γβ dFᵀHdF must be detected"


# ----------------------------------------------------------------------------- stabiliser


def _dense_case(seed, d=12, k=3):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(d, d, generator=g, dtype=torch.float64)
    H = 20 * (H + H.T)
    T1 = torch.randn(d, d, generator=g, dtype=torch.float64)
    T1 = 50 * (T1 + T1.T)
    w = 3 * torch.randn(d, generator=g, dtype=torch.float64)
    v = draw_probes("gaussian", seed, [0], k, d)[0]  # (k, d)
    return H, T1, w, v


def _graph_loss(H, T1, w, v, beta, alpha):
    """rao_blackwell_hvp_loss_graph for one frame of d/3 beads from dense matrices."""
    k, d = v.shape
    n = d // 3
    return rao_blackwell_hvp_loss_graph(
        (v @ H).reshape(k, n, 3), (v @ T1.T).reshape(k, n, 3), (H @ w).reshape(n, 3),
        w.reshape(n, 3), beta, 1.0, torch.zeros(n, dtype=torch.long), 1, 1.0, stabiliser=alpha)


def test_stabiliser_bounds_the_fixed_probe_rb_loss_below():
    """The documented failure (docs/variance_reduction.md §1.6): H → H − t u uᵀ with u ⟂ the
    frame's probes lowers plain L_RB linearly without bound; the stabilised loss stays above
    its θ-independent bound −(α/(1−α))(c/k)Σ(ŵᵀT1v)² − γ²β²‖w‖⁴/α and rises for large t."""
    H, T1, w, v = _dense_case(1)
    beta, alpha = 1.7, 0.5
    q, _ = torch.linalg.qr(torch.cat([v.T, w[:, None]], 1))
    u = q[:, -1]  # orthogonal to the probes, u·w ≠ 0
    assert abs(float(u @ w)) > 0.1
    wh = w / w.norm()
    bound = -(alpha / (1 - alpha)) * float(((v @ T1.T @ wh) ** 2).mean()) - beta**2 * float(w.norm()) ** 4 / alpha
    plain, stab = [], []
    for t in (0.0, 1e2, 1e4, 1e6):
        Ht = H - t * torch.outer(u, u)
        plain.append(float(_graph_loss(Ht, T1, w, v, beta, 0.0)))
        stab.append(float(_graph_loss(Ht, T1, w, v, beta, alpha)))
    slope = 2 * beta * float(u @ w) ** 2
    assert plain[-1] < plain[0] - 0.5 * slope * 1e6  # unbounded below (linear in t)
    assert min(stab) >= bound and stab[-1] > stab[0]
    # property check of the bound on random instances and random directions
    for seed in range(2, 40):
        H, T1, w, v = _dense_case(seed)
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(12, 12, generator=g, dtype=torch.float64)
        wh = w / w.norm()
        bound = -(alpha / (1 - alpha)) * float(((v @ T1.T @ wh) ** 2).mean()) - beta**2 * float(w.norm()) ** 4 / alpha
        for t in (1.0, 1e3, 1e6):
            assert float(_graph_loss(H - t * (X + X.T), T1, w, v, beta, alpha)) >= bound


def test_stabiliser_has_zero_probe_mean_and_rb_equals_frame_at_gamma_zero(protein):
    """Value: averaged over all one-hot probes the stabiliser adds exactly 0; with γ = 0 the
    module's two estimators give the same value and gradient."""
    H, T1, w, v = _dense_case(5)
    d = H.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    diff = sum(float(_graph_loss(H, T1, w, eye[i:i + 1] * d**0.5, 1.3, 0.5)
                     - _graph_loss(H, T1, w, eye[i:i + 1] * d**0.5, 1.3, 0.0)) for i in range(d)) / d
    scale = abs(float(_graph_loss(H, T1, w, eye[:1] * d**0.5, 1.3, 0.5)
                      - _graph_loss(H, T1, w, eye[:1] * d**0.5, 1.3, 0.0)))
    assert scale > 1.0 and abs(diff) <= 1e-10 * scale
    data = _batch(protein)
    a = tiny_module(protein, cov_weight=0.0)
    b = tiny_module(protein, cov_weight=0.0, hvp_estimator="rao_blackwell")
    ta, tb = a.compute_losses(data, 10**9), b.compute_losses(data, 10**9)
    assert_close(tb["hvp"], ta["hvp"], rtol=1e-12, what="γ = 0 value")
    assert_close(_grad(b, data), _grad(a, data), rtol=1e-10, what="γ = 0 gradient")


# ----------------------------------------------------------------------------- bond projection


def _two_chains():
    sizes = (6, 4)
    pos = torch.cat([torch.as_tensor(compact_chain(n, 1, seed=i)[0]) for i, n in enumerate(sizes)])
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return pos, batch


def test_bond_projection_kills_bond_residuals_and_keeps_orthogonal_ones():
    pos, batch = _two_chains()
    B = bond_directions(pos, batch)  # (nb, A, 3)
    assert B.shape == (5 + 3, 10, 3)
    assert_close(B.reshape(8, -1).norm(dim=1), torch.ones(8), rtol=1e-14, what="unit bonds")
    g = torch.Generator().manual_seed(0)
    k = 3
    along = torch.einsum("kb,bac->kac", torch.randn(k, 8, generator=g, dtype=torch.float64), B)
    probes = torch.randn(k, 10, 3, generator=g, dtype=torch.float64)
    # orthogonal: a random vector minus its least-squares fit by the bond directions
    flat = B.reshape(8, -1).T  # (30, 8) (each bond lives in one frame)
    raw = torch.randn(k, 30, generator=g, dtype=torch.float64)
    coef = torch.linalg.lstsq(flat, raw.T).solution  # (8, k)
    ortho = (raw - (flat @ coef).T).reshape(k, 10, 3)
    assert float((ortho.reshape(k, -1) @ flat).abs().max()) < 1e-10
    target = torch.randn(k, 10, 3, generator=g, dtype=torch.float64)
    P = lambda x: project_out_bonds(x, pos, batch)  # noqa: E731
    zero = hvp_loss(P(target + along), P(target), batch, 2)
    assert float(zero) <= 1e-24 * float((along**2).sum())
    kept = hvp_loss(P(target + ortho), P(target), batch, 2)
    assert_close(kept, hvp_loss(target + ortho, target, batch, 2), rtol=1e-12,
                 what="orthogonal residual unchanged")
    assert float(hvp_loss(target + along, target, batch, 2)) > 1.0  # negative control
    assert_close(P(P(probes)), P(probes), rtol=1e-12, what="idempotent")
    assert_close((P(probes) * ortho).sum(), (probes * P(ortho)).sum(), rtol=1e-12, what="symmetric")


def test_module_trains_with_every_hvp_option(protein):
    data = _batch(protein)
    for est in ("frame", "rao_blackwell"):
        for project in (False, True):
            terms = tiny_module(protein, hvp_estimator=est, hvp_project_bonds=project).compute_losses(data, 10**9)
            assert torch.isfinite(terms["hvp"]) and terms["total"].requires_grad
    with pytest.raises(ValueError, match="hvp_estimator"):
        LossConfig(hvp_estimator="fancy")
    with pytest.raises(ValueError, match="rb_stabiliser"):
        LossConfig(rb_stabiliser=1.0)


def test_trainer_runs_the_rao_blackwell_estimator_with_bond_projection(tmp_path, protein):
    """End to end: norms with Term 2 and projection, the extra tangent, γ ramp, finite metrics."""
    cfg = TrainConfig.from_dict({
        "name": "rb", "output_dir": str(tmp_path), "seed": 1,
        "data": {"datasets": [str(protein.path)], "batch_size": 2, "val_fraction": 0.0},
        "model": TINY, "prior": {"enabled": True},
        "loss": {"mode": "fm_hvp", "cov_weight": 1.0, "hvp_estimator": "rao_blackwell",
                 "hvp_project_bonds": True},
        "trainer": {"max_steps": 3, "progress_bar": False, "early_stopping_patience": 0},
        "hvp_start_step": 1, "cov_ramp_steps": 1})
    result = train(cfg)
    assert result.global_step == 3 and cfg.loss.hvp_norm > 0
    rows = [r.split(",") for r in result.metrics_csv.read_text().splitlines()[1:]]
    assert [r[4] != "" for r in rows if r[1] == "train"] == [False, True, True]
    assert all(np.isfinite(float(r[2])) for r in rows)


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("project", [False, True])
def test_hvp_norm_is_the_loss_of_a_zero_model_including_term2(protein, project):
    """``hvp_norm`` with Term 2 = the mean HVP loss of a model with zero outputs at γ =
    cov_weight (dF = P f), so the normalised HVP term of such a model is exactly 1; γ = 0 and
    ``norm_includes_term2=False`` give the Term-1-only norm of earlier versions, bit for bit."""
    items = [(0, t) for t in range(protein.n_frames)]
    gamma = 1.0
    norms = target_normalisations([protein], items, True, True, cov_weight=gamma,
                                  project_bonds=project)
    old = target_normalisations([protein], items, True, True)
    kind = protein.probe_spec().kind
    c = probe_scale(kind, 3 * N_BEADS)
    legacy = np.mean([c * float((protein.term1[t] ** 2).sum(-1).sum(-1).mean()) for t in range(protein.n_frames)])
    assert old["hvp_norm"] == legacy
    assert norms["hvp_norm"] > 1.5 * old["hvp_norm"] or project  # Term 2 matters here
    module = tiny_module(protein, hvp_project_bonds=project, normalise=True, lambda_force=0.0,
                         hvp_norm=norms["hvp_norm"])
    pot = CGPotential(protein.vocabulary, None, module.cfg.model)
    with torch.no_grad():  # zero outputs: energy constant, forces and Hessian zero
        pot.net.output_model.output_network.layers[2].weight.zero_()
    module.potential = pot
    data = _batch(protein, range(protein.n_frames))
    terms = module.compute_losses(data, 10**9)
    assert_close(terms["total"], torch.tensor(1.0, dtype=torch.float64), rtol=1e-10,
                 what="normalised HVP term of a zero model")
    beta = data["beta"]
    blocks = torch.as_tensor(protein.hessian_block)
    F = torch.as_tensor(protein.cg_forces)
    exact = hessian_target_norms(blocks, F, beta, gamma)
    zero_loss = torch.stack([hessian_loss([torch.zeros_like(b)], hessian_targets([b], [f], bb, gamma))
                             for b, f, bb in zip(blocks, F, beta, strict=True)])
    assert_close(exact, zero_loss, rtol=1e-12, what="hessian_target_norms")
    assert_close(torch.tensor(norms["hessian_norm"], dtype=torch.float64), exact.mean(), rtol=1e-12, what="hessian_norm")
    # with a complete orthonormal basis the probed norm is the exact Frobenius norm
    d = 3 * N_BEADS
    v = torch.eye(d, dtype=torch.float64).expand(protein.n_frames, d, d)
    t1v = torch.einsum("bij,bkj->bki", blocks, v).reshape(-1, d, N_BEADS, 3)
    probed = hvp_target_norms(t1v, F, v.reshape(-1, d, N_BEADS, 3), beta, gamma, float(d))
    assert_close(probed, exact, rtol=1e-12, what="probed vs exact norm")
    h = hvp_targets(t1v[0].reshape(d, N_BEADS, 3), F[0], v[0].reshape(d, N_BEADS, 3),
                    float(beta[0]), gamma, torch.zeros(N_BEADS, dtype=torch.long), 1)
    assert_close(probed[0], (h**2).sum(), rtol=1e-12, what="= ‖h‖² summed over the basis")


def test_documented_variance_cost_of_the_stabiliser():
    """docs/training.md: on the chignolin-like instance of docs/variance_reduction.md the
    Gaussian k = 4 probe-variance ratio Var ∇ℓ / Var ∇L is 10.9 without and 10.7 with the
    α = 0.5 stabiliser (residual matrix ``H_θ − T1 − α ŵŵᵀ H_θ``; exact closed forms)."""
    inst = chignolin_like_instance(frames=50, seed=0)  # the instance of realistic_variance_ratios
    beta, T1, H, residuals = inst.beta, inst.term1, inst.model_hessian, inst.residuals
    E = hessian_derivatives(T1.shape[0])
    ratios = {}
    for alpha in (0.0, 0.5, 0.9):
        cur = rb = 0.0
        for w in residuals:
            wh = w / np.linalg.norm(w)
            cur += hvp_gradient_probe_variance("gaussian", H - T1 + beta * np.outer(w, w), E, 4).sum()
            rb += hvp_gradient_probe_variance("gaussian", H - T1 - alpha * np.outer(wh, wh) @ H, E, 4).sum()
        ratios[alpha] = round(cur / rb, 1)
    assert ratios == {0.0: 10.9, 0.5: 10.7, 0.9: 10.5}, ratios
