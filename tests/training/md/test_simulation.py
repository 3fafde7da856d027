"""CG MD driver: mdtraj-readable files, start frames, kill-and-resume, failure handling."""

from __future__ import annotations

import json

import mdtraj as md
import numpy as np
import pytest
import torch

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.md.integrator import STATUS_BOND_OUT_OF_RANGE, STATUS_NONFINITE, LangevinBAOAB
from hessid.training.md.reporters import DCDFile
from hessid.training.md.simulation import simulate, start_frame_pool
from tests.training.md.chains import NaNBeyond, straight_chain


def test_trajectory_loads_in_mdtraj_in_nm_with_provenance(tmp_path):
    x0 = straight_chain(5)
    res = simulate(HarmonicChainPotential(), tmp_path / "run", n_steps=40, save_interval=10,
                   start_positions=x0, n_replicas=2, dtype=torch.float64, progress=False,
                   provenance={"model": "harmonic"})
    traj = md.load(str(res.trajectories[1]), top=str(res.topology))
    assert traj.n_frames == 4 and traj.n_atoms == 5
    bonds = np.linalg.norm(np.diff(traj.xyz, axis=1), axis=-1)  # (F, 4) nm
    assert 0.3 < bonds.mean() < 0.46  # 3.8 Å bonds read back as ≈ 0.38 nm
    meta = json.loads((tmp_path / "run" / "simulation.json").read_text())
    assert meta["frame_interval_ps"] == pytest.approx(10 * 2.0e-3)
    assert meta["units"]["time"] == "ps" and meta["provenance"] == {"model": "harmonic"}
    assert meta["frames_per_replica"] == [4, 4] and meta["failures"] == []


def test_start_frame_pool_takes_the_nearest_stored_temperature():
    """Multi-temperature reference: the frames at the simulation temperature, else at the
    nearest stored one (the lower on a tie); single-temperature: every frame."""
    ft = np.array([300.0, 400.0, 300.0, 450.0, 400.0])
    np.testing.assert_array_equal(start_frame_pool(ft, 5, 400.0), [1, 4])
    np.testing.assert_array_equal(start_frame_pool(ft, 5, 440.0), [3])
    np.testing.assert_array_equal(start_frame_pool(ft, 5, 350.0), [0, 2])  # tie → 300 K
    np.testing.assert_array_equal(start_frame_pool(ft, 5, 200.0), [0, 2])
    np.testing.assert_array_equal(start_frame_pool(None, 3, 350.0), [0, 1, 2])


def test_start_frames_are_drawn_from_reference_with_the_seed(tmp_path):
    rng = np.random.default_rng(0)
    ref = np.stack([straight_chain(4).numpy() + 0.1 * rng.normal(size=(4, 3)) for _ in range(30)])
    kw = dict(n_steps=10, save_interval=10, reference=ref, n_replicas=3, progress=False)
    simulate(HarmonicChainPotential(), tmp_path / "a", seed=7, **kw)
    simulate(HarmonicChainPotential(), tmp_path / "b", seed=7, **kw)
    simulate(HarmonicChainPotential(), tmp_path / "c", seed=8, **kw)
    idx = [json.loads((tmp_path / d / "simulation.json").read_text())["start"]["reference_frames"]
           for d in "abc"]
    assert idx[0] == idx[1] != idx[2]
    assert len(set(idx[0])) == 3


def test_resume_after_a_kill_gives_bit_identical_trajectories(tmp_path):
    x0 = straight_chain(6)
    kw = dict(n_steps=300, save_interval=20, checkpoint_interval=100, start_positions=x0,
              n_replicas=3, dtype=torch.float64, progress=False, seed=3)
    full = simulate(HarmonicChainPotential(), tmp_path / "full", **kw)

    class Killer(HarmonicChainPotential):
        calls = 0

        def forward(self, *a):
            Killer.calls += 1
            if Killer.calls > 231:  # init + 230 steps: dies after the checkpoint at step 200
                raise KeyboardInterrupt
            return super().forward(*a)

    with pytest.raises(KeyboardInterrupt):
        simulate(Killer(), tmp_path / "killed", **kw)
    # make things worse: frames and log rows written after the checkpoint must be discarded
    DCDFile(tmp_path / "killed" / "replica_000.dcd", 6).append(np.ones((2, 6, 3)))
    with open(tmp_path / "killed" / "state.csv", "a") as f:
        f.write("260,0.52,0,1.0,300,running\n")
    with pytest.raises(FileExistsError):
        simulate(HarmonicChainPotential(), tmp_path / "killed", **kw)
    resumed = simulate(HarmonicChainPotential(), tmp_path / "killed", resume=True, **kw)
    assert resumed.frames == full.frames == [15, 15, 15]
    for a, b in zip(full.trajectories, resumed.trajectories, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "full" / "state.csv").read_text() == (tmp_path / "killed" / "state.csv").read_text()
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["state"]
    cb = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["state"]
    for key in ("positions", "velocities", "rng_state"):
        assert torch.equal(ca[key], cb[key])
    with pytest.raises(ValueError, match="different settings"):
        simulate(HarmonicChainPotential(), tmp_path / "killed", resume=True, **{**kw, "seed": 4})


def test_blown_up_replica_is_stopped_and_reported_while_others_continue(tmp_path):
    n = 6
    x0 = straight_chain(n).expand(4, n, 3).clone()  # (R, n, 3)
    x0[3, 0, 0] = 100.0  # replica 3: energy NaN from the first force call on (NaNBeyond)
    integ = LangevinBAOAB(timestep=2.0, temperature=300.0, friction=1.0, masses=12.0,
                          bead_types=torch.zeros(n, dtype=torch.long))
    pot = NaNBeyond()
    v0 = torch.zeros_like(x0)
    v0[1, -1] = torch.tensor([3000.0, 0.0, 0.0], dtype=torch.float64)  # replica 1: tears a bond
    state = integ.init(x0, pot, seed=0, velocities=v0)
    assert state.status.tolist() == [0, 0, 0, STATUS_NONFINITE]
    before = None
    for _ in range(50):
        if state.status[1] == 0:
            before = state.positions[1].clone()
        state = integ.step(state, pot)
    assert state.status.tolist() == [0, STATUS_BOND_OUT_OF_RANGE, 0, STATUS_NONFINITE]
    assert 0 < int(state.failed_step[1]) < 50 and int(state.failed_step[3]) == 0
    torch.testing.assert_close(state.positions[1], before)  # frozen at its last valid state
    assert torch.isfinite(state.positions[[0, 2]]).all()

    res = simulate(pot, tmp_path / "run", n_steps=100, save_interval=10, start_positions=x0,
                   dtype=torch.float64, progress=False, seed=0)
    reasons = {f["replica"]: f["reason"] for f in res.failures}
    assert set(reasons) == {3} and "non-finite" in reasons[3]
    assert res.frames == [10, 10, 10, 0]
    meta = json.loads((tmp_path / "run" / "simulation.json").read_text())
    assert meta["failures"] == res.failures
