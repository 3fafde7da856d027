"""CG MD at any temperature (issue 14 item 6): a temperature-aware model is integrated through its
fixed-β view ``at_temperature(T)`` (the contract of docs/architecture.md, written here against a
tiny stand-in); a temperature-unaware model run away from its training temperature warns once."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import torch

from hessid.cli import main
from hessid.training.data.io import write_dataset
from hessid.training.data.synthetic import HarmonicChainPotential
from hessid.training.md.simulation import potential_at_temperature, simulate, training_temperature
from tests.training.md.chains import straight_chain

KW = dict(n_steps=60, save_interval=20, n_replicas=2, dtype=torch.float64, progress=False, seed=5)


def bond_length_at(temperature: float) -> float:
    """The stand-in's free-energy minimum: bonds stretch by 2e-3 Å/K (an M1-like E − T S form)."""
    return 3.8 + 2e-3 * (temperature - 300.0)


class ThermalChain(torch.nn.Module):
    """A temperature-aware stand-in: ``at_temperature(T)`` is a harmonic chain whose bond length
    depends on T. Its own ``forward`` raises, so the MD can only have used the fixed-β view."""

    temperature_aware = True

    def __init__(self):
        super().__init__()
        self.requested: list[float] = []

    def at_temperature(self, temperature: float) -> torch.nn.Module:
        self.requested.append(temperature)
        return HarmonicChainPotential(bond_length=bond_length_at(temperature))

    def forward(self, *args):  # the T-aware model itself has no fixed-β energy
        raise AssertionError("the MD called the temperature-aware model without at_temperature(T)")


def _frames(run) -> list[bytes]:
    return [p.read_bytes() for p in run.trajectories]  # the DCD files, byte for byte


def test_a_temperature_aware_model_runs_its_fixed_beta_view_at_the_requested_temperature(tmp_path):
    model = ThermalChain()
    x0 = straight_chain(5)
    got = simulate(model, tmp_path / "aware", temperature=400.0, start_positions=x0, **KW)
    assert model.requested == [400.0]
    ref = simulate(HarmonicChainPotential(bond_length=bond_length_at(400.0)), tmp_path / "ref",
                   temperature=400.0, start_positions=x0, **KW)  # fmt: skip
    assert _frames(got) == _frames(ref)  # the same run, bit for bit
    # negative control: the view at another temperature is another potential (other frames)
    other = simulate(HarmonicChainPotential(bond_length=bond_length_at(300.0)), tmp_path / "other",
                     temperature=400.0, start_positions=x0, **KW)  # fmt: skip
    assert _frames(got) != _frames(other)
    meta = json.loads((tmp_path / "aware" / "simulation.json").read_text())
    assert meta["model_temperature"] == {"temperature_aware": True, "training_temperature": None,
                                         "temperature": 400.0}


def test_a_temperature_aware_model_resumes_bit_identically(tmp_path):
    x0 = straight_chain(5)
    kw = {**KW, "n_steps": 100, "checkpoint_interval": 40}
    full = simulate(ThermalChain(), tmp_path / "full", temperature=350.0, start_positions=x0, **kw)
    simulate(ThermalChain(), tmp_path / "part", temperature=350.0, start_positions=x0, **{**kw, "n_steps": 40})
    part = simulate(ThermalChain(), tmp_path / "part", temperature=350.0, start_positions=x0, resume=True, **kw)
    assert _frames(part) == _frames(full)


def test_a_temperature_unaware_model_away_from_its_training_temperature_warns_once(tmp_path, caplog):
    model = HarmonicChainPotential()
    model.training_temperature = 300.0
    x0 = straight_chain(4)
    with caplog.at_level(logging.WARNING, logger="hessid.training.md.simulation"):
        simulate(model, tmp_path / "hot", temperature=350.0, start_positions=x0, **KW)
    lines = [r.getMessage() for r in caplog.records if "not temperature-aware" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "trained at 300 K" in lines[0] and "350 K" in lines[0]
    meta = json.loads((tmp_path / "hot" / "simulation.json").read_text())
    assert meta["model_temperature"]["training_temperature"] == 300.0
    caplog.clear()  # negative controls: at its own temperature, or with no recorded one, no warning
    with caplog.at_level(logging.WARNING, logger="hessid.training.md.simulation"):
        simulate(model, tmp_path / "same", temperature=300.0, start_positions=x0, **KW)
        simulate(HarmonicChainPotential(), tmp_path / "unknown", temperature=350.0, start_positions=x0, **KW)
    assert not [r for r in caplog.records if "not temperature-aware" in r.getMessage()]


def test_training_temperature_is_read_from_the_attribute_metadata_or_prior():
    class WithPrior(torch.nn.Module):
        class prior:  # noqa: N801 - mimics CGPotential.prior.params
            class params:  # noqa: N801
                temperature = 310.0

    assert training_temperature(WithPrior()) == 310.0
    m = HarmonicChainPotential()
    assert training_temperature(m) is None
    m.metadata = {"temperature": 320.0}
    assert training_temperature(m) == 320.0


def test_a_model_claiming_temperature_awareness_without_at_temperature_is_refused():
    class Liar(HarmonicChainPotential):
        temperature_aware = True

    with pytest.raises(TypeError, match="no at_temperature"):
        potential_at_temperature(Liar(), 300.0)


def test_cli_requires_a_temperature_for_a_mixed_reference(tmp_path, monkeypatch, capsys):
    """``hessid simulate --reference MIXED`` without --temperature: one line, exit 2."""
    pdb = "".join(f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {3.8 * i:8.3f}   0.000   0.000  1.00  0.00           C\n"
                  for i in range(4)) + "END\n"
    x = np.stack([straight_chain(4).numpy() for _ in range(6)])
    path = write_dataset(tmp_path / "mix" / "mix.h5", pdb, x, np.zeros_like(x), attrs={"temperature": 300.0})
    with h5py.File(path, "r+") as h5:
        del h5.attrs["temperature"]
        h5["temperature"][3:] = 350.0
        g = h5.create_group("cg")
        g["weights"] = np.eye(4)
        g["projector"] = np.eye(4)
        g["coordinates"] = x
        g["forces"] = np.zeros_like(x)
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", "--model", "harmonic", "--reference", str(path), "--out", "run", "--steps", "20",
            "--replicas", "2", "--no-progress", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--temperature is required" in err and "300, 350 K" in err
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--temperature", "350"]) == 0
