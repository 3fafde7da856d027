"""CGPotential: shapes, dtypes, errors, checkpoint round trip and version handling."""

from __future__ import annotations

import pytest
import torch

from hessid import __version__
from hessid.training.data.synthetic import compact_chain
from hessid.training.learning.configs import ModelConfig
from hessid.training.learning.derivatives import energy_forces_hvp
from hessid.training.learning.models import (
    CHECKPOINT_FORMAT_VERSION,
    CGPotential,
    PriorOnlyPotential,
    load_potential,
)
from hessid.training.learning.priors import PriorFit
from tests.helpers import assert_close

SMALL = {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 6}


def _model(precision="float64"):
    torch.manual_seed(1)
    prior = PriorFit().fit(compact_chain(8, 30, seed=2)).fetch_model()
    return CGPotential(["ALA", "GLY"], prior, dict(SMALL, precision=precision))


def _inputs(dtype):
    pos = torch.as_tensor(compact_chain(6, 2, seed=3)).reshape(-1, 3).to(dtype)  # (12, 3)
    return pos, torch.tensor([0, 1] * 6), torch.arange(2).repeat_interleave(6)


def test_default_config_is_cgschnet():
    cfg = ModelConfig()
    assert (cfg.num_layers, cfg.embedding_dimension, cfg.num_rbf) == (4, 64, 12)
    assert (cfg.rbf_type, cfg.activation, cfg.cutoff_lower, cfg.cutoff_upper) == ("expnorm", "silu", 3.0, 12.0)
    m = CGPotential(["ALA"], None)
    assert type(m.net.representation_model).__name__ == "TorchMD_GN"
    assert len(m.net.representation_model.interactions) == 4


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_save_load_gives_same_energies_forces_and_hvps(tmp_path, precision):
    model = _model(precision)
    dtype = model.dtype
    pos, types, batch = _inputs(dtype)
    probes = torch.randn(2, 12, 3, dtype=dtype)
    before = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False)
    e_ref = model(pos, types, batch).detach()
    path = model.save(tmp_path / "model.pt", extra={"verification": {"passed": True}})
    loaded = load_potential(path)
    after = energy_forces_hvp(loaded, pos, types, batch, probes, create_graph=False)
    for a, b in ((before.energy, after.energy), (before.forces, after.forces), (before.hvp, after.hvp)):
        assert torch.equal(a, b)
    assert torch.equal(e_ref, loaded(pos, types, batch).detach())
    assert loaded.bead_vocabulary == ["ALA", "GLY"]
    assert loaded.prior.params == model.prior.params
    assert loaded.metadata["verification"] == {"passed": True}
    assert loaded.dtype == dtype


def test_forward_includes_prior_and_forces_are_minus_gradient():
    model = _model()
    pos, types, batch = _inputs(torch.float64)
    e = model(pos, types, batch)
    assert e.shape == (2,)
    assert_close((e - model.network_energy(pos, types, batch)).detach(), model.prior(pos, batch), rtol=1e-14)
    f = model.forces(pos, types, batch)
    x = pos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x, types, batch).sum(), x)
    assert_close(f, -g, rtol=1e-14)


def test_prior_only_potential_is_the_prior_alone_and_differs_from_the_full_model():
    model = _model()
    pos, types, batch = _inputs(torch.float64)
    prior_only = PriorOnlyPotential(model)
    e = prior_only(pos, types, batch).detach()
    assert_close(e, model.prior(pos, batch, types).detach(), rtol=1e-14)
    assert_close(e, (model(pos, types, batch) - model.network_energy(pos, types, batch)).detach(), rtol=1e-12)
    # negative control: the network's part is not negligible here, so the full model is told apart
    assert (model(pos, types, batch).detach() - e).abs().min() > 1e-3
    assert prior_only.metadata["prior_only"] is True and prior_only.bead_vocabulary == ["ALA", "GLY"]
    with pytest.raises(ValueError, match="vocabulary|type"):
        prior_only(pos, torch.full_like(types, 5), batch)
    with pytest.raises(ValueError, match="has no prior"):
        PriorOnlyPotential(CGPotential(["ALA"], None, SMALL))


def test_newer_checkpoint_format_is_refused_with_reason(tmp_path):
    model = _model()
    ckpt = model.checkpoint_dict()
    ckpt["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    ckpt["hessid_version"] = "9.9.9"
    torch.save(ckpt, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=r"hessid 9\.9\.9.*Upgrade hessid"):
        load_potential(tmp_path / "new.pt")


def test_other_hessid_version_same_format_loads_with_warning(tmp_path):
    model = _model()
    ckpt = model.checkpoint_dict()
    ckpt["hessid_version"] = "0.0.1"
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=f"0.0.1, loading with {__version__}"):
        load_potential(tmp_path / "old.pt")


def test_format_1_checkpoint_with_pooled_prior_still_loads(tmp_path):
    """Format 1 (before per-bead-type-class priors) is read as pooled priors, same energies."""
    model = _model()
    ckpt = model.checkpoint_dict()
    if ckpt["prior"] is not None:
        ckpt["prior"] = {k: v for k, v in ckpt["prior"].items()
                         if not k.endswith("_classes") and k != "version"}
    ckpt["format_version"] = 1
    torch.save(ckpt, tmp_path / "v1.pt")
    old = load_potential(tmp_path / "v1.pt")
    pos, types, batch = _inputs(torch.float64)
    assert torch.equal(old(pos, types, batch), model(pos, types, batch))


def test_not_a_checkpoint_is_refused(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a hessid CG potential"):
        load_potential(tmp_path / "x.pt")


def test_input_errors():
    model = _model()
    pos, types, batch = _inputs(torch.float64)
    with pytest.raises(ValueError, match="bead_types must lie"):
        model(pos, types + 5, batch)
    with pytest.raises(ValueError, match="positions must be"):
        model(pos.reshape(-1), types, batch)
    small = CGPotential(["ALA", "GLY"], None, dict(SMALL, precision="float64", max_num_neighbors=4))
    with pytest.raises(ValueError, match="max_num_neighbors"):
        small(pos, types, batch)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"layers": 3})
