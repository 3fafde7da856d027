"""Priors by Boltzmann inversion recover known parameters (CGSchNet priors)."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest
import torch

from hessid.training.learning.models import CGPotential, load_potential
from hessid.training.learning.priors import PriorFit, PriorModel, PriorParameters, chain_indices
from hessid.training.md.simulation import simulate
from hessid.training.pipelines import ala2
from hessid.units import kT


def _chains_with_known_bonds(r0=3.8, k_bond=40.0, T=300.0, n=6, frames=4000, seed=0):
    """Chains whose bond lengths follow exp(−β ½k(r−r0)²) r² (sampled by rejection)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(kT(T) / k_bond)
    out = np.zeros((frames, n, 3))
    for i in range(1, n):
        r = r0 + sigma * rng.standard_normal(3 * frames)
        accept = rng.random(r.size) < (r / r.max()) ** 2  # Jacobian r²
        r = r[accept][:frames]
        direction = rng.standard_normal((frames, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        out[:, i] = out[:, i - 1] + r[:, None] * direction
    return out


def test_bond_force_constant_and_length_recovered():
    data = _chains_with_known_bonds()
    p = PriorFit(temperature=300.0).fit([data]).fetch_model().params
    assert abs(p.bond_r0 - 3.8) < 0.02
    assert abs(p.bond_k - 40.0) / 40.0 < 0.1
    assert p.repulsion_sigma > 0 and p.repulsion_epsilon == pytest.approx(kT(300.0), rel=1e-6)


def test_dihedral_fourier_fit_recovers_potential_shape():
    rng = np.random.default_rng(1)
    beta = 1 / kT(300.0)
    phi = rng.uniform(-math.pi, math.pi, 400000)
    u = 0.8 * np.cos(phi) - 0.5 * np.sin(2 * phi)
    phi = phi[rng.random(phi.size) < np.exp(-beta * (u - u.min()))]
    a, b = PriorFit(n_fourier=3)._fit_fourier(phi, kT(300.0))
    assert np.allclose(a, [0.8, 0.0, 0.0], atol=0.06) and np.allclose(b, [0.0, -0.5, 0.0], atol=0.06)


def test_prior_energy_is_sum_of_terms_and_forces_are_minus_gradient():
    params = PriorParameters(bond_k=30.0, bond_r0=3.8, angle_k=5.0, angle_theta0=1.9,
                             dihedral_cos=(0.3,), dihedral_sin=(-0.2,), repulsion_sigma=4.0)
    prior = PriorModel(params, dtype=torch.float64)
    pos = torch.as_tensor(_chains_with_known_bonds(frames=2, n=6)).reshape(-1, 3)
    batch = torch.arange(2).repeat_interleave(6)
    terms = prior.energy_terms(pos, batch)
    assert torch.allclose(prior(pos, batch), sum(terms.values()))
    idx = chain_indices(batch)
    assert idx["bonds"].shape == (10, 2) and idx["dihedrals"].shape == (6, 4)
    assert idx["pairs"].shape == (2 * 6, 2)  # |i-j| >= 3 in a 6-chain: 3+2+1
    x = pos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prior(x, batch).sum(), x)
    assert torch.allclose(prior.forces(pos, batch), -g)
    r = (pos[1] - pos[0]).norm()
    assert float(terms["bond"][0]) >= 0.5 * 30.0 * float((r - 3.8) ** 2) - 1e-12


def test_fit_errors():
    with pytest.raises(ValueError, match="before fit"):
        PriorFit().fetch_model()
    with pytest.raises(ValueError, match="expected CG coordinates"):
        PriorFit().fit([np.zeros((3, 2, 3))])
    with pytest.raises(ValueError, match="temperature"):
        PriorFit(temperature=-1)
    with pytest.raises(ValueError, match="unknown prior parameter"):
        PriorParameters.from_dict({"bond": 1})


# ----------------------------------------------------------------------------- per-class priors

#: 5-bead alanine-dipeptide backbone: bonds C–N, N–CA, CA–C, C–N (Å), angles (rad)
ALA2_BONDS = (1.33, 1.47, 1.55, 1.34)
ALA2_ANGLES = (2.13, 1.94, 2.03)


def _place(a, b, c, bond, angle, torsion):
    """NeRF: position of d with |cd| = bond, angle bcd, dihedral abcd (batched (T, 3))."""
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(n, bc)
    d2 = np.stack([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion),
                   bond * np.sin(angle) * np.sin(torsion)], -1)
    return c + d2[:, :1] * bc + d2[:, 1:2] * m + d2[:, 2:3] * n


def _ala2_like(frames=3000, seed=0, bond_sd=0.03, angle_sd=0.08):
    """5-bead chains with distinct Gaussian bond lengths and angles, random dihedrals (Å)."""
    rng = np.random.default_rng(seed)
    b = [m + bond_sd * rng.standard_normal(frames) for m in ALA2_BONDS]
    a = [m + angle_sd * rng.standard_normal(frames) for m in ALA2_ANGLES]
    x = np.zeros((frames, 5, 3))
    x[:, 1, 0] = b[0]
    x[:, 2] = x[:, 1] + b[1][:, None] * np.stack([-np.cos(a[0]), np.sin(a[0]), 0 * a[0]], -1)
    for i in (3, 4):
        tors = rng.uniform(-math.pi, math.pi, frames) if i == 3 else rng.normal(2.5, 0.4, frames)
        x[:, i] = _place(x[:, i - 3], x[:, i - 2], x[:, i - 1], b[i - 1], a[i - 2], tors)
    return x


def test_per_class_bond_and_angle_fits_match_their_own_means():
    x = _ala2_like()
    fit = PriorFit(temperature=300.0).fit(x, bead_types=np.arange(5))
    p = fit.fetch_model().params
    assert p.version == 2 and p.has_classes
    r0 = {c: r for c, _, r in p.bond_classes}
    assert sorted(r0) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    bonds = np.linalg.norm(np.diff(x, axis=1), axis=-1)  # (T, 4)
    for i, c in enumerate([(0, 1), (1, 2), (2, 3), (3, 4)]):
        assert abs(r0[c] - bonds[:, i].mean()) < 0.01, (c, r0[c], bonds[:, i].mean())
    k = {c: kk for c, kk, _ in p.bond_classes}
    assert all(abs(k[c] - kT(300.0) / 0.03**2) / (kT(300.0) / 0.03**2) < 0.2 for c in k)
    th0 = {c: t for c, _, t in p.angle_classes}
    for c, mean in zip([(0, 1, 2), (1, 2, 3), (2, 3, 4)], ALA2_ANGLES, strict=True):
        assert abs(th0[c] - mean) < 0.02
    assert len(p.dihedral_classes) == 2
    # negative control: one pooled term for all bonds misses at least one bond by > 0.1 Å
    pooled = PriorFit(temperature=300.0).fit(x).fetch_model().params
    assert not pooled.has_classes
    assert max(abs(pooled.bond_r0 - m) for m in ALA2_BONDS) > 0.1


def test_classes_are_reversal_symmetric_and_fall_back_to_pooled():
    x = _ala2_like(frames=400)
    # types palindromic: bonds (0,1),(1,2),(2,1),(1,0) → two classes
    p = PriorFit(min_samples=50).fit(x, bead_types=np.array([0, 1, 2, 1, 0])).fetch_model().params
    assert sorted(c for c, _, _ in p.bond_classes) == [(0, 1), (1, 2)]
    # too few samples per class → no classes, the pooled terms only
    p2 = PriorFit(min_samples=10_000).fit(x, bead_types=np.arange(5)).fetch_model().params
    assert not p2.has_classes
    with pytest.raises(ValueError, match="do not match"):
        PriorFit().fit(x, bead_types=np.arange(4))


def test_class_energy_uses_the_class_parameters_and_needs_types():
    params = PriorParameters(bond_k=30.0, bond_r0=3.8, bond_classes=(((0, 1), 500.0, 1.3),))
    prior = PriorModel(params, dtype=torch.float64)
    pos = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [1.5, 2.0, 0], [4.0, 2.0, 1.0]], dtype=torch.float64)
    batch = torch.zeros(4, dtype=torch.long)
    types = torch.tensor([0, 1, 2, 3])
    e = prior.energy_terms(pos, batch, types)["bond"]
    r = (pos[1:] - pos[:-1]).norm(dim=-1)
    expected = 0.5 * 500.0 * (r[0] - 1.3) ** 2 + (0.5 * 30.0 * (r[1:] - 3.8) ** 2).sum()
    assert torch.allclose(e, expected.reshape(1))
    # reversed type order hits the same class; types outside the table use the pooled term
    e_rev = prior.energy_terms(pos, batch, torch.tensor([7, 9, 1, 0]))["bond"]
    expected_rev = 0.5 * 500.0 * (r[2] - 1.3) ** 2 + (0.5 * 30.0 * (r[:2] - 3.8) ** 2).sum()
    assert torch.allclose(e_rev, expected_rev.reshape(1))
    with pytest.raises(ValueError, match="bead_types"):
        prior(pos, batch)


def test_prior_state_versions_round_trip_and_v1_still_loads(tmp_path):
    x = _ala2_like(frames=500)
    prior = PriorFit().fit(x, bead_types=np.arange(5)).fetch_model()
    d = prior.params.to_dict()
    assert PriorParameters.from_dict(d) == prior.params
    cfg = {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "cutoff_lower": 0.0,
           "cutoff_upper": 6.0, "precision": "float64"}
    model = CGPotential(["a", "b", "c", "d", "e"], prior, cfg)
    model.save(tmp_path / "m.pt")
    loaded = load_potential(tmp_path / "m.pt")
    assert loaded.prior.params == model.prior.params
    pos, types = torch.as_tensor(x[0]), torch.arange(5)
    assert torch.allclose(loaded(pos, types), model(pos, types))
    # a version-1 state (no version, no classes) loads as pooled-only
    v1 = {k: v for k, v in d.items() if not k.endswith("_classes") and k != "version"}
    p1 = PriorParameters.from_dict(v1)
    assert p1.version == 1 and not p1.has_classes
    ckpt = model.checkpoint_dict()
    ckpt["prior"] = v1
    torch.save(ckpt, tmp_path / "v1.pt")
    old = load_potential(tmp_path / "v1.pt")
    assert not old.prior.params.has_classes and torch.isfinite(old(pos, types)).all()
    with pytest.raises(ValueError, match="newer"):
        PriorParameters.from_dict(dict(d, version=99))


@pytest.mark.parametrize("per_class", [True, False])
def test_prior_only_cg_md_of_ala2_keeps_bonds_in_range(tmp_path, per_class):
    """Per-class prior: every replica survives; pooled single-term prior (negative control): breaks."""
    x = _ala2_like(frames=2000, seed=3)
    prior = PriorFit().fit(x, bead_types=np.arange(5) if per_class else None).fetch_model()
    pot = CGPotential(ala2.BEAD_VOCABULARY, prior, {"embedding_dimension": 8, "num_layers": 1,
                                                    "num_rbf": 4, "cutoff_lower": 0.0, "cutoff_upper": 6.0})
    with torch.no_grad():  # network output ≡ 0: the prior alone
        for prm in pot.net.parameters():
            prm.zero_()
    res = simulate(pot, tmp_path / "md", n_steps=600, save_interval=20, start_positions=x[:4],
                   bead_types=np.arange(5), masses=list(ala2.BEAD_MASSES), seed=0, progress=False,
                   bond_range=ala2.BOND_RANGE, threads=1)

    xyz = np.concatenate([mdtraj.load(str(f), top=str(res.topology)).xyz for f in res.trajectories]) * 10
    dev = np.abs(np.linalg.norm(np.diff(xyz, axis=1), axis=-1) - np.array(ALA2_BONDS))  # (F, 4) Å
    frac_off = float((dev > 0.12).any(axis=1).mean())  # 0.12 Å = 4σ of the data
    if per_class:
        assert res.failures == [] and frac_off < 0.05, (res.failures, frac_off)
    else:  # wrong bond lengths: replicas break or bonds sit far from their own means
        assert res.failures or frac_off > 0.3, frac_off
