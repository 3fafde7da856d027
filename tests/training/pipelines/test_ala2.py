"""Tests of hessid.training.pipelines.ala2: structure, 5-bead map, φ/ψ, basins, torus KL/W1, errors.

Tolerances are stated where they are set. Runs in a few seconds (no MD).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import mdtraj as md
import numpy as np
import openmm.app as app
import pytest

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.learning.configs import TrainConfig
from hessid.training.pipelines import ala2, ala2_study
from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def structure():
    return ala2.build_structure()


# ----------------------------------------------------------------------------- structure and map


def test_structure_has_22_atoms_with_hydrogens(structure):
    elements = [a.element.symbol for a in structure.topology.atoms()]
    assert len(elements) == 22
    assert elements.count("H") == 12
    assert [r.name for r in structure.topology.residues()] == ["ACE", "ALA", "NME"]


def test_map_selects_exactly_the_five_backbone_atoms(structure):
    cg_map, types, bonds, vocab = ala2.backbone_map(structure.topology)
    atoms = list(structure.topology.atoms())
    idx = ala2.backbone_indices(structure.topology)
    got = [(atoms[i].residue.name, atoms[i].name) for i in idx]
    assert got == list(ala2.BEADS)
    S = cg_map.weights.numpy()
    assert S.shape == (5, 22)
    assert np.array_equal(S.sum(axis=1), np.ones(5))  # one atom per bead
    assert np.array_equal(np.flatnonzero(S.sum(axis=0)), np.sort(idx))
    assert np.array_equal(cg_map.projector.numpy(), S)  # P = M
    assert types.tolist() == [0, 1, 2, 3, 4] and len(set(vocab)) == 5
    assert bonds.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    # bonded beads are chemically bonded atoms: 1.2–1.6 Å apart
    R = cg_map.map_coordinates(__import__("torch").as_tensor(structure.positions)).numpy()
    d = np.linalg.norm(R[bonds[:, 0]] - R[bonds[:, 1]], axis=1)
    assert np.all((d > 1.2) & (d < 1.6)), d


def test_map_rejects_a_topology_without_the_beads():
    top = app.Topology()
    res = top.addResidue("ALA", top.addChain())
    top.addAtom("CA", app.element.carbon, res)
    with pytest.raises(ValueError, match="ACE:C matched 0 atoms"):
        ala2.backbone_indices(top)


def test_write_structure_is_resumable(tmp_path):
    p = ala2.write_structure("ala2", tmp_path)
    assert p == tmp_path / "ala2" / "ala2.pdb" and p.exists()
    stamp = p.stat().st_mtime_ns
    assert ala2.write_structure("ala2", tmp_path) == p and p.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- φ/ψ


def _perturbed_frames(structure, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return structure.positions[None] + rng.normal(0, 0.4, (n, 22, 3))  # (n, 22, 3) Å


def test_phi_psi_match_mdtraj_on_the_aa_structure(structure):
    xyz = _perturbed_frames(structure)  # random distortions: all dihedral quadrants
    traj = md.Trajectory(xyz / 10.0, md.Topology.from_openmm(structure.topology))
    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    idx = ala2.backbone_indices(structure.topology)
    ours = ala2.phi_psi(xyz[:, idx])  # (n, 2) from CG coordinates only
    diff = ala2.wrap_angle(ours - np.concatenate([phi, psi], axis=1))
    assert np.abs(diff).max() < 1e-5  # mdtraj computes in float32
    assert np.ptp(ours[:, 0]) > 1.0  # the test covers a range of angles


def test_dihedral_known_values():
    p0, p1, p2 = np.array([1.0, 0, 0]), np.zeros(3), np.array([0, 1.0, 0])
    for deg in (-170, -90, -30, 0, 45, 90, 179):
        t = math.radians(deg)
        p3 = p2 + np.array([math.cos(t), 0, -math.sin(t)])
        # IUPAC: looking down p1→p2, p0 at 0°, p3 rotated clockwise is positive
        assert ala2.dihedral(p0, p1, p2, p3) == pytest.approx(t, abs=1e-12)


# ----------------------------------------------------------------------------- basins


def test_basin_assignment_on_known_points():
    deg = np.radians
    pts = deg(np.array([
        [-63, -43],    # αR helix
        [-80, 70],     # C7eq region: ψ ≥ 50 → β/PII side
        [-75, 145],    # PII
        [-150, 155],   # β
        [-150, -170],  # β wrapped in ψ
        [60, 45],      # αL
        [70, -60],     # C7ax, φ > 0 → αL
        [170, 170],    # β tail past φ = 180°: stays β (boundary at 120°)
        [150, -30],    # φ ≥ 120°, αR ψ band
        [0.01, 0],     # just inside αL at φ = 0
        [-0.01, 0],    # just outside: αR
        [-60, 50.01],  # just above ψ = 50: β
        [-60, 49.99],  # just below: αR
        [-60, -119.99],  # just inside αR at ψ = −120
        [-60, -120.01],  # just outside: β
        [119.99, 0],   # αL up to φ = 120
        [120.01, 0],   # then the αR ψ band
    ]))  # fmt: skip
    want = [0, 1, 1, 1, 1, 2, 2, 1, 0, 2, 0, 1, 0, 0, 1, 2, 0]
    assert ala2.assign_basins(pts).tolist() == want
    # branch independence: adding 2π changes nothing
    assert ala2.assign_basins(pts + 2 * math.pi).tolist() == want


def test_basin_populations_sum_to_one_and_read_lists():
    rng = np.random.default_rng(1)
    a = rng.uniform(-math.pi, math.pi, (3000, 2))
    out = ala2.basin_populations([a[:1000], a[1000:]], n_blocks=10)
    pops = np.array(list(out["populations"].values()))
    assert pops.sum() == pytest.approx(1.0, abs=1e-12)
    # uniform on the torus: αL holds 120/360 of φ, αR (240/360)(170/360)
    assert out["populations"]["alpha_L"] == pytest.approx(1 / 3, abs=0.05)
    assert out["populations"]["alpha_R"] == pytest.approx(2 / 3 * 170 / 360, abs=0.05)


def test_block_average_sem_matches_sigma_over_sqrt_n_on_iid_data():
    # For i.i.d. data the block s.e. estimates σ/√T; with 20 blocks its relative scatter is
    # 1/√(2·19) ≈ 16 %, so average over 50 independent series: scatter of the mean ≈ 2.3 %.
    rng = np.random.default_rng(2)
    t, sigma = 4000, 2.0
    ratios = []
    for _ in range(50):
        x = rng.normal(1.0, sigma, t)
        mean, sem = ala2.block_average(x, n_blocks=20)
        assert mean == pytest.approx(x.mean())
        ratios.append(sem / (sigma / math.sqrt(t)))
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.08)  # > 3σ of the 2.3 % scatter


def test_block_average_detects_correlation():
    # negative control: a strongly correlated AR(1) series has a larger s.e. than σ/√T
    rng = np.random.default_rng(3)
    t, rho = 20000, 0.99
    x = np.zeros(t)
    for i in range(1, t):
        x[i] = rho * x[i - 1] + rng.normal()
    _, sem = ala2.block_average(x, 10)
    naive = x.std() / math.sqrt(t)
    assert sem > 5 * naive  # true inflation √((1+ρ)/(1−ρ)) ≈ 14


def test_block_average_rejects_bad_block_count():
    with pytest.raises(ValueError, match="n_blocks"):
        ala2.block_average(np.zeros(5), 1)
    with pytest.raises(ValueError, match="n_blocks"):
        ala2.block_average(np.zeros(5), 6)


# ----------------------------------------------------------------------------- torus KL / W1


def _blob(phi0, psi0, n=4000, width=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([phi0 + rng.normal(0, width, n), psi0 + rng.normal(0, width, n)], 1)


def test_density_is_normalised_and_periodic():
    p = ala2.phi_psi_density(_blob(math.pi - 0.01, 0.0), 36, 1.0)
    assert p.shape == (36, 36) and p.sum() == pytest.approx(1.0)
    # the blob sits on the φ = ±π seam: smoothing wraps, so both edge rows carry mass
    assert p[0].sum() > 0.1 and p[-1].sum() > 0.1


def test_identical_densities_give_zero_kl_and_w1():
    p = ala2.phi_psi_density(_blob(-1.2, 2.5), 36, 1.0)
    assert ala2.phi_psi_kl(p, p) == 0.0
    assert ala2.phi_psi_w1(p, p) == pytest.approx(0.0, abs=1e-12)


def test_shift_across_the_seam_gives_w1_equal_to_the_wrapped_shift():
    # A blob centred in the cell at φ = 155° moved by Δ = +6 cells (60°) across the seam to
    # φ = −145°: the shifted histogram is an exact translation by 6 cells, so the periodic W1
    # is 6h = 60° = 1.047 rad (a translation of a blob much narrower than π); tolerance: a
    # quarter of the bin width h = 10°.
    h = 2 * math.pi / 36
    c = ala2.grid_centers(36)
    a = _blob(c[33], c[20])
    b = a + np.array([6 * h, 0.0])
    p, q = ala2.phi_psi_density(a), ala2.phi_psi_density(b)
    assert np.allclose(np.roll(p, 6, axis=0), q)  # exact translation on the grid
    w1 = ala2.phi_psi_w1(p, q)
    assert w1 == pytest.approx(6 * h, abs=h / 4)
    # negative control: a non-periodic ground distance sees the wrapped 60° shift as ~300°
    w1_flat = ala2.phi_psi_w1(p, q, periodic=False)
    assert w1_flat > 2 * math.pi - 6 * h - h
    # diagonal shift: Euclidean ground distance on the torus, √2 · 3h
    q2 = ala2.phi_psi_density(a + np.array([3 * h, -3 * h]))
    assert ala2.phi_psi_w1(p, q2) == pytest.approx(math.sqrt(2) * 3 * h, abs=h / 4)


def test_kl_uses_the_density_floor_and_is_reference_first():
    p = ala2.phi_psi_density(_blob(-1.2, 2.5), 36, 1.0)
    q = ala2.phi_psi_density(_blob(1.0, 0.5), 36, 1.0)  # disjoint support
    kl = ala2.phi_psi_kl(p, q)
    area = (2 * math.pi / 36) ** 2
    # model density vanishes on the reference's support: KL = E_ref log(ρ_ref / floor)
    expect = float(np.sum(p * np.log(np.maximum(p / area, 1e-6) / np.maximum(q / area, 1e-6))))
    assert kl == pytest.approx(expect) and kl > 10
    # asymmetry: a broad model misses little of a narrow reference, not the other way round
    broad = ala2.phi_psi_density(np.random.default_rng(4).uniform(-math.pi, math.pi, (20000, 2)))
    assert ala2.phi_psi_kl(p, broad) < ala2.phi_psi_kl(broad, p)


def test_phi_psi_metrics_keys():
    out = ala2.phi_psi_metrics(_blob(-1.2, 2.5), _blob(-1.1, 2.4, seed=1))
    assert set(out) == {"phi_psi_kl", "phi_psi_w1", "basins"}
    assert 0 < out["phi_psi_w1"] < 0.3


# ----------------------------------------------------------------------------- Hessian error


def test_hessian_relative_error():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 15, 15))
    assert np.allclose(ala2.hessian_relative_error(a, a), 0.0)
    assert np.allclose(ala2.hessian_relative_error(1.1 * a, a), 0.1)
    assert np.allclose(ala2.hessian_relative_error(np.zeros_like(a), a), 1.0)
    with pytest.raises(ValueError, match="zero"):
        ala2.hessian_relative_error(a, np.zeros_like(a))


def test_model_hessians_of_a_harmonic_chain():
    pot = HarmonicChainPotential(bond_k=100.0, bond_length=1.4, angle_k=0.0).double()
    x = np.cumsum(np.tile([[1.4, 0.0, 0.0]], (5, 1)), axis=0)[None]  # straight chain at rest
    h = ala2.model_hessians(pot, x)
    assert h.shape == (1, 15, 15)
    # at rest, the x-x block of bond (0,1) is k; transverse blocks vanish
    assert h[0, 0, 0] == pytest.approx(100.0) and h[0, 1, 1] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(h[0], h[0].T)


# ----------------------------------------------------------------------------- benchmark driver


def _driver():
    return load_benchmark("ala2")


@pytest.mark.parametrize("mode", ["quick", "small", "full"])
def test_driver_trainer_config_is_valid_and_differs_only_in_the_loss(mode, tmp_path, monkeypatch):
    """``_call_trainer`` builds a config the trainer accepts; variants differ only in the loss."""
    drv = _driver()
    s = drv.settings(mode)
    assert s["model"]["cutoff_lower"] == 0.0  # bonds of this map are < 3 Å
    seen = {}

    def fake_train(config):
        cfg = TrainConfig.from_dict(config)  # raises on unknown keys
        run = Path(cfg.output_dir) / cfg.name
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"")
        seen[cfg.name] = config
        return SimpleNamespace(model=run / "model.pt", metrics_csv=None, global_step=cfg.trainer.max_steps,
                               best_val_fm=None, verification={"passed": True})

    monkeypatch.setattr(ala2_study, "train", fake_train)
    for label, v in s["variants"].items():
        job = {"variant": v, "train": s["train"], "name": ala2_study._safe(label), "seed": 0, "data": "x.h5",
               "run_dir": str(tmp_path / ala2_study._safe(label)), "model": s["model"], "n_frames": 100}
        r = ala2_study._call_trainer(job)
        assert r["global_step"] == s["train"]["steps"]
    configs = list(seen.values())
    for c in configs:
        assert c["trainer"]["early_stopping_patience"] == 0 and c["trainer"]["max_steps"] == s["train"]["steps"]
    strip = [{k: v for k, v in c.items() if k not in ("loss", "name")} for c in configs]
    assert all(x == strip[0] for x in strip)
    with pytest.raises(ValueError, match="unknown mode"):
        drv.settings("huge")


def test_soft_hessian_error_ignores_stiff_modes_and_sees_soft_ones():
    """Law: an error confined to the stiff eigenvectors is invisible; one on a soft mode is not;
    n_stiff = 0 equals the full relative error of the symmetrised matrices."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(15, 15)))
    lam = np.concatenate([rng.uniform(-20, 50, 11), [1500.0, 1800.0, 2100.0, 2300.0]])  # ascending-ish
    h = (q * lam) @ q.T
    stiff = q[:, -4:]
    bumped = h + stiff @ np.diag([300.0, -200.0, 100.0, 50.0]) @ stiff.T
    assert ala2.hessian_soft_relative_error(bumped[None], h[None])[0] < 1e-10
    assert ala2.hessian_relative_error(bumped[None], h[None])[0] > 0.05  # the full metric sees it
    soft = h + 30.0 * np.outer(q[:, 0], q[:, 0])
    assert ala2.hessian_soft_relative_error(soft[None], h[None])[0] > 0.1
    np.testing.assert_allclose(ala2.hessian_soft_relative_error(soft[None], h[None], n_stiff=0),
                               ala2.hessian_relative_error(soft[None], h[None]), rtol=1e-12)
    with pytest.raises(ValueError, match="n_stiff"):
        ala2.hessian_soft_relative_error(h[None], h[None], n_stiff=15)


def test_an_unknown_stop_after_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="stop_after must be one of reference, map, pool, targets"):
        ala2_study.run_study(tmp_path / "x", {}, tmp_path / "x.md", stop_after="maps")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:
        load_benchmark("ala2").main(["--quick", "--out", str(tmp_path / "y"), "--stop-after", "maps"])
    assert exc.value.code == 2 and "invalid choice: 'maps'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()

