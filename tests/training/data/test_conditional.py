"""Reference CG Hessian at a fixed CG configuration (hessid.training.data.conditional).

Estimator law and standard errors on synthetic files with known answers (float64), then a short
real frozen-atom run of alanine dipeptide through map_dataset + compute_targets(full_block=True).
Tolerances are derived where they are set.
"""

from __future__ import annotations

import math
import time

import h5py
import numpy as np
import openmm.unit as u
import pytest

from hessid.training.data import conditional as rh
from hessid.training.data import io as data
from hessid.training.data.aa_md import create_system
from hessid.training.data.targets import compute_targets
from hessid.training.pipelines import ala2
from hessid.units import beta as beta_of

TEMPERATURE = 300.0
BETA = beta_of(TEMPERATURE)


def _problem(n_beads: int = 2, seed: int = 0):
    """Constant block B (d, d), force mean μ (d,) and covariance Σ (d, d), d = 3n."""
    rng = np.random.default_rng(seed)
    d = 3 * n_beads
    a = rng.standard_normal((d, d))
    B = a @ a.T + 5.0 * np.eye(d)  # kcal/mol/Å²
    c = rng.standard_normal((d, d))
    sigma = c @ c.T / d + 0.5 * np.eye(d)  # (kcal/mol/Å)²
    mu = rng.standard_normal(d)
    return B, mu, sigma


def _write(path, blocks, forces, temperature=TEMPERATURE, done=None):
    """Minimal layout estimate_cg_hessian reads: cg/hessian_block (T, d, d), cg/forces (T, n, 3)."""
    t, d, _ = blocks.shape
    with h5py.File(path, "w") as h5:
        h5.attrs["temperature"] = temperature
        g = h5.create_group("cg")
        g["hessian_block"] = blocks
        g["hessian_block_done"] = np.ones(t, np.uint8) if done is None else done
        g["forces"] = forces.reshape(t, d // 3, 3)
    return path


def _sample(B, mu, sigma, t, rng, block_noise=0.0):
    d = B.shape[0]
    f = rng.multivariate_normal(mu, sigma, size=t)  # (T, d)
    blocks = np.broadcast_to(B, (t, d, d)).copy()
    if block_noise:
        e = rng.standard_normal((t, d, d)) * block_noise
        blocks += np.triu(e) + np.triu(e, 1).transpose(0, 2, 1)  # symmetric, each entry var s²
    return blocks, f


def _cov_se(sigma, t):
    """Standard error of the sample covariance entries of Gaussian data: √((Σ_aaΣ_bb + Σ_ab²)/T)."""
    dg = np.diag(sigma)
    return np.sqrt((np.outer(dg, dg) + sigma**2) / t)


# ----------------------------------------------------------------------------- estimator law


def test_estimator_is_term1_minus_beta_cov_and_negative_controls_fail(tmp_path):
    B, mu, sigma = _problem()
    t = 20000
    rng = np.random.default_rng(1)
    blocks, f = _sample(B, mu, sigma, t, rng)
    # antisymmetric per-frame part: term1 keeps it (stored as is), the hessian is symmetrised
    anti = rng.standard_normal((t, 6, 6))
    blocks += 0.3 * (anti - anti.transpose(0, 2, 1))
    path = _write(tmp_path / "syn.h5", blocks, f)
    est = rh.estimate_cg_hessian(path, n_blocks=10)

    tol = 5.0 * BETA * _cov_se(sigma, t)  # 5 × the theoretical s.e. of β Σ̂, per entry
    want = B - BETA * sigma
    assert est["hessian"].shape == (6, 6) and est["hessian"].dtype == np.float64
    np.testing.assert_array_equal(est["hessian"], est["hessian"].T)
    assert np.all(np.abs(est["hessian"] - want) < tol), np.max(np.abs(est["hessian"] - want) / tol)
    np.testing.assert_allclose(est["term1"], blocks.mean(axis=0), rtol=1e-12, atol=1e-12)  # block pooling order
    np.testing.assert_allclose(est["term2"], BETA * np.cov(f.T), rtol=1e-12, atol=1e-12)
    assert est["n_frames"] == t and est["drift_angstrom"] is None
    assert est["beta"] == pytest.approx(1.0 / (0.0019872041 * 300.0), rel=1e-12)
    # negative controls: wrong sign of Term 2, Term 1 only — both off by far more than tol
    for wrong in (B + BETA * sigma, B):
        assert np.any(np.abs(est["hessian"] - wrong) > tol)
        assert np.max(np.abs(est["hessian"] - wrong) / tol) > 10


def test_explicit_temperature_overrides_the_attribute(tmp_path):
    B, mu, sigma = _problem()
    blocks, f = _sample(B, mu, sigma, 400, np.random.default_rng(2))
    path = _write(tmp_path / "s.h5", blocks, f, temperature=300.0)
    a = rh.estimate_cg_hessian(path, n_blocks=4)
    b = rh.estimate_cg_hessian(path, temperature=600.0, n_blocks=4)
    np.testing.assert_allclose(b["term2"], 0.5 * a["term2"], rtol=1e-12)  # β ∝ 1/T


def test_block_sem_matches_monte_carlo_spread_and_analytic_se(tmp_path):
    B, mu, sigma = _problem(seed=3)
    t, reps, s = 1000, 40, 0.8
    rng = np.random.default_rng(4)
    hs, sems = [], []
    for r in range(reps):
        blocks, f = _sample(B, mu, sigma, t, rng, block_noise=s)
        est = rh.estimate_cg_hessian(_write(tmp_path / f"r{r}.h5", blocks, f), n_blocks=10)
        hs.append(est["hessian"])
        sems.append(est["sem"])
    mc = np.std(hs, axis=0, ddof=1)  # spread across independent files
    sem = np.mean(sems, axis=0)
    # analytic: independent symmetric block noise (var s²/T) + β² Var(Σ̂_ab)
    analytic = np.sqrt(s**2 / t + (BETA * _cov_se(sigma, t)) ** 2)
    for ref in (mc, analytic):
        ratio = sem / ref
        assert 0.5 < np.median(ratio) < 2.0 and np.all((ratio > 0.33) & (ratio < 3.0)), ratio
        assert 0.5 < np.linalg.norm(sem) / np.linalg.norm(ref) < 2.0
    # MC spread itself agrees with the analytic s.e. (checks the reference, 40 replicates)
    assert 0.7 < np.linalg.norm(mc) / np.linalg.norm(analytic) < 1.3
    assert est["frobenius_rel_sem"] == pytest.approx(np.linalg.norm(est["sem"]) / np.linalg.norm(est["hessian"]))


# ----------------------------------------------------------------------------- errors


def test_missing_datasets_name_file_and_dataset(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["temperature"] = 300.0
        h5.create_group("cg")["forces"] = np.zeros((4, 2, 3))
    with pytest.raises(data.DatasetError, match=r"m\.h5: dataset 'cg/hessian_block': missing"):
        rh.estimate_cg_hessian(path, n_blocks=2)
    with h5py.File(path, "r+") as h5:
        del h5["cg/forces"]
        h5["cg/hessian_block"] = np.zeros((4, 6, 6))
    with pytest.raises(data.DatasetError, match=r"m\.h5: dataset 'cg/forces': missing"):
        rh.estimate_cg_hessian(path, n_blocks=2)


def test_incomplete_hessian_block_names_the_first_missing_frame(tmp_path):
    B, mu, sigma = _problem()
    blocks, f = _sample(B, mu, sigma, 20, np.random.default_rng(5))
    done = np.ones(20, np.uint8)
    done[[7, 12]] = 0
    path = _write(tmp_path / "d.h5", blocks, f, done=done)
    with pytest.raises(data.DatasetError, match=r"'cg/hessian_block', frame 7: not computed"):
        rh.estimate_cg_hessian(path, n_blocks=4)
    blocks[13, 0, 1] = np.nan
    blocks[15] = np.nan
    path = _write(tmp_path / "n.h5", blocks, f)
    with pytest.raises(data.DatasetError, match=r"'cg/hessian_block', frame 13: contains NaN"):
        rh.estimate_cg_hessian(path, n_blocks=4)
    with pytest.raises(ValueError, match="n_blocks"):
        rh.estimate_cg_hessian(_write(tmp_path / "ok.h5", np.nan_to_num(blocks), f), n_blocks=11)


# ----------------------------------------------------------------------------- real frozen-atom run

FROZEN_RUN = dict(n_frames=20, stride=10, solvent="gbn2", equilibration_steps=200, seed=7, platform="CPU",
                  threads=1, minimize=True, chunk_frames=8)  # fmt: skip


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """Alanine dipeptide, GBn2, 5 backbone atoms frozen, 20 frames × 10 steps (+ targets)."""
    s = ala2.build_structure()
    frozen = ala2.backbone_indices(s.topology)
    path = tmp_path_factory.mktemp("frozen") / "ala2_r0.h5"
    t0 = time.perf_counter()
    rh.sample_frozen(s, frozen, path, **FROZEN_RUN)
    t_md = time.perf_counter() - t0
    ala2.map_dataset(path)
    compute_targets(path, full_block=True, workers=0, platform="CPU", threads=1, progress=False)
    est = rh.estimate_cg_hessian(path, n_blocks=4)
    return s, frozen, path, est, {"md_s": t_md, "total_s": time.perf_counter() - t0}


def test_frozen_atoms_stay_at_r0_and_the_file_validates(frozen_run):
    s, frozen, path, _, timing = frozen_run
    summary = data.validate_dataset(path)
    assert summary["n_frames"] == 20 and summary["n_atoms"] == 22 and summary["n_beads"] == 5
    with h5py.File(path, "r") as h5:
        xyz = h5["coordinates"][()]
        attrs = dict(h5.attrs)
        time_ps = h5["time"][()]
        cg_xyz = h5["cg/coordinates"][()]
        block_hash = h5["cg/hessian_block"].attrs["forcefield_hash"]
    r0 = s.positions[frozen]
    np.testing.assert_array_equal(attrs["frozen_atoms"], frozen)
    np.testing.assert_array_equal(attrs["frozen_positions_angstrom"], r0)
    drift = np.linalg.norm(xyz[:, frozen] - r0, axis=2).max()
    assert attrs["frozen_max_displacement_angstrom"] == pytest.approx(drift, rel=1e-9, abs=1e-15)
    assert drift < 1e-3, drift
    np.testing.assert_allclose(cg_xyz, np.broadcast_to(r0, cg_xyz.shape), atol=1e-3)  # CG config = R0
    mobile = np.setdiff1d(np.arange(22), frozen)
    assert np.linalg.norm(xyz[:, mobile] - xyz[:1, mobile], axis=2).max() > 0.05  # the rest does move
    np.testing.assert_allclose(time_ps, 0.02 * np.arange(1, 21))  # stride 10 × 2 fs
    # potential identity: the masses were changed for the dynamics only
    assert attrs["forcefield_hash"] == block_hash
    print(f"\nfrozen drift {drift:.3e} Å; MD {timing['md_s']:.1f} s, MD+targets+estimate {timing['total_s']:.1f} s")


def test_constrained_hydrogen_bond_lengths_are_preserved(frozen_run):
    s, frozen, path, _, _ = frozen_run
    system = create_system(s.topology, "amber14-all.xml", "gbn2", "HBonds")
    cons = [system.getConstraintParameters(i) for i in range(system.getNumConstraints())]
    pairs = np.array([[i, j] for i, j, _ in cons])
    length = np.array([d.value_in_unit(u.angstrom) for _, _, d in cons])
    assert len(cons) == 12  # every H of the dipeptide
    assert np.isin(pairs, frozen).any(axis=1).sum() == 3  # H–N(ALA), HA–CA, H–N(NME) hang on frozen atoms
    with h5py.File(path, "r") as h5:
        xyz = h5["coordinates"][()]
    got = np.linalg.norm(xyz[:, pairs[:, 0]] - xyz[:, pairs[:, 1]], axis=2)  # (T, 12) Å
    # LangevinMiddle constraint tolerance 1e-5 (relative) → ~1e-5 Å on 1 Å bonds
    np.testing.assert_allclose(got, np.broadcast_to(length, got.shape), atol=2e-4)


def test_reference_hessian_of_the_real_run_is_finite_and_symmetric(frozen_run):
    _, _, _, est, _ = frozen_run
    h = est["hessian"]
    assert h.shape == (15, 15) and h.dtype == np.float64 and np.isfinite(h).all()
    np.testing.assert_array_equal(h, h.T)
    assert np.isfinite(est["sem"]).all() and est["n_frames"] == 20
    assert est["drift_angstrom"] is not None and est["drift_angstrom"] < 1e-3
    assert np.all(np.diag(est["term2"]) >= 0) and math.isfinite(est["frobenius_rel_sem"])


def test_light_frozen_atoms_are_caught_by_the_drift_check(tmp_path):
    """Negative control: with a normal mass the 'frozen' atoms move and the run stops."""
    s = ala2.build_structure()
    frozen = ala2.backbone_indices(s.topology)
    path = tmp_path / "light.h5"
    with pytest.raises(rh.FrozenAtomsDrifted, match="frame 0: a frozen atom moved"):
        rh.sample_frozen(s, frozen, path, n_frames=3, stride=10, equilibration_steps=0, frozen_mass=12.0,
                         solvent="vacuum", platform="CPU", threads=1)  # fmt: skip
    with h5py.File(path, "r") as h5:
        assert h5["coordinates"].shape[0] == 1 and h5.attrs["frozen_max_displacement_angstrom"] > 1e-3
    with pytest.raises(ValueError, match="frozen_atoms must be distinct"):
        rh.sample_frozen(s, [0, 0], tmp_path / "x.h5", n_frames=1, stride=1)
