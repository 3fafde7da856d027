"""MD reporters: the Reporter protocol, custom reporters in the loop, the DCD file's append/truncate."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.md.integrator import LangevinBAOAB, LangevinState
from hessid.training.md.reporters import (
    DCDFile,
    DCDReporter,
    Reporter,
    StateDataReporter,
    ca_topology,
)
from hessid.training.md.simulation import run, simulate
from tests.training.md.chains import straight_chain


class Recorder:
    """A reporter by duck typing only (no base class): records what the loop hands it."""

    def __init__(self, interval: int):
        self.interval = interval
        self.steps: list[int] = []
        self.positions: list[torch.Tensor] = []
        self.flushes = 0
        self.restored: list[dict] = []

    def report(self, state: LangevinState, integrator: LangevinBAOAB) -> None:
        self.steps.append(state.step)
        self.positions.append(state.positions.clone())

    def flush(self) -> dict:
        self.flushes += 1
        return {"n_reports": len(self.steps)}

    def restore(self, saved: dict) -> None:
        self.restored.append(saved)


def _integrator(n: int) -> LangevinBAOAB:
    return LangevinBAOAB(timestep=2.0, temperature=300.0, friction=1.0, masses=12.0,
                         bead_types=torch.zeros(n, dtype=torch.long))


def test_builtin_and_custom_reporters_satisfy_the_protocol(tmp_path):
    assert isinstance(Recorder(5), Reporter)
    assert isinstance(DCDReporter(tmp_path, 5, 2, 4, 0.01), Reporter)
    assert isinstance(StateDataReporter(tmp_path / "state.csv", 5), Reporter)

    class NoRestore:
        interval = 5

        def report(self, state, integrator):
            pass

        def flush(self):
            return {}

    assert not isinstance(NoRestore(), Reporter)


def test_custom_reporter_receives_every_interval_state_and_its_flush_goes_into_the_checkpoint(tmp_path):
    n = 5
    pot = HarmonicChainPotential().double()
    integ = _integrator(n)
    x0 = straight_chain(n).expand(3, n, 3).clone()  # (R, n, 3)
    rec = Recorder(interval=5)
    final = run(integ, pot, integ.init(x0, pot, seed=2), 30, {"mine": rec},
                checkpoint_path=tmp_path / "ckpt.pt", checkpoint_interval=10, progress=False)
    assert final.step == 30
    assert rec.steps == [5, 10, 15, 20, 25, 30]  # OpenMM convention: step 0 is not reported
    assert rec.flushes == 4  # checkpoints at 10, 20, 30, then the final flush
    # the states handed over are the integrator's own trajectory
    state = integ.init(x0, pot, seed=2)
    for k in range(1, 31):
        state = integ.step(state, pot)
        if k % 5 == 0:
            assert torch.equal(rec.positions[k // 5 - 1], state.positions)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)["reporters"]
    assert saved == {"mine": {"n_reports": 6}}


def test_simulate_calls_extra_reporters_and_restores_them_on_resume(tmp_path):
    kw = dict(n_steps=40, save_interval=10, checkpoint_interval=20, start_positions=straight_chain(4),
              n_replicas=2, dtype=torch.float64, progress=False, seed=1)
    first = Recorder(interval=10)
    simulate(HarmonicChainPotential(), tmp_path / "run", reporters={"mine": first}, **kw)
    assert first.steps == [10, 20, 30, 40] and first.restored == []
    second = Recorder(interval=10)
    res = simulate(HarmonicChainPotential(), tmp_path / "run", resume=True,
                   reporters={"mine": second}, **{**kw, "n_steps": 60})
    assert second.restored == [{"n_reports": 4}]
    assert second.steps == [50, 60] and res.frames == [6, 6]
    with pytest.raises(ValueError, match="reserved"):
        simulate(HarmonicChainPotential(), tmp_path / "other", reporters={"trajectory": Recorder(10)}, **kw)
    assert not (tmp_path / "other" / "replica_000.dcd").exists()


def test_dcd_append_after_truncate_equals_a_direct_write_and_reads_back_in_mdtraj(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.normal(scale=10.0, size=(4, 3, 3))  # (F, n, 3) Å
    direct = DCDFile(tmp_path / "direct.dcd", 3, timestep_ps=0.02)
    direct.append(frames[:3])
    direct.append(frames[3:])
    resumed = DCDFile(tmp_path / "resumed.dcd", 3, timestep_ps=0.02)
    resumed.append(frames[:3])
    resumed.append(np.ones((2, 3, 3)))  # written after the "checkpoint": must go
    resumed.truncate(3)
    assert resumed.n_frames == 3
    resumed.append(frames[3:])
    assert (tmp_path / "direct.dcd").read_bytes() == (tmp_path / "resumed.dcd").read_bytes()
    with pytest.raises(ValueError, match="holds 4 frames"):
        resumed.truncate(5)

    top_pdb = tmp_path / "top.pdb"
    md.Trajectory(np.zeros((1, 3, 3)), ca_topology(3)).save_pdb(str(top_pdb))
    with md.formats.DCDTrajectoryFile(str(tmp_path / "resumed.dcd")) as f:
        xyz, cell_lengths, _ = f.read()  # Å, as stored
    np.testing.assert_array_equal(xyz, frames.astype(np.float32))  # float32 is the file's precision
    assert cell_lengths is None
    traj = md.load(str(tmp_path / "resumed.dcd"), top=str(top_pdb))
    assert traj.n_frames == 4
    # mdtraj converts Å → nm in float32: one rounding, ≤ 1 ulp (6e-8 relative)
    np.testing.assert_allclose(traj.xyz, frames / 10, rtol=2e-7, atol=0)
