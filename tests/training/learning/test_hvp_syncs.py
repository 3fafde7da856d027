"""Host syncs of a training step (issue 15 item 4), counted on CPU.

A host sync is an operation whose result the host must wait for on an accelerator: reading a
value (``item``/``int``/``bool``/``tolist``: ``aten::_local_scalar_dense``) or an output whose
shape depends on the data (``nonzero``, boolean-mask indexing, ``bincount``, ``unique``,
``masked_select``, ``repeat_interleave`` without ``output_size``). On CPU nothing waits, but
the same calls happen, so counting them here (a ``TorchDispatchMode`` sees every aten call;
``Tensor.tolist`` bypasses dispatch and is wrapped) lists what would sync on CUDA — the
semantics of ``torch.cuda.set_sync_debug_mode`` without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.datasets import collate_frames, load_protein
from hessid.training.learning.models import CGPotential
from hessid.training.learning.module import CGTrainingModule
from hessid.training.learning.priors import PriorFit

SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.bincount.default",
            "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
            "aten.masked_select.default", "aten.repeat_interleave.Tensor"}


class _SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNC_OPS:
            self.syncs.append(name)
        elif name.startswith("aten.index") and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool
                for a in args if isinstance(a, (list, tuple)) for t in a):
            self.syncs.append(name + " (boolean mask)")
        return func(*args, **(kwargs or {}))


def count_host_syncs(fn) -> list[str]:
    """The host-sync operations of ``fn()`` (see module docstring), in call order."""
    counter = _SyncCounter()
    real_tolist = torch.Tensor.tolist

    def tolist(self):
        counter.syncs.append("Tensor.tolist")
        return real_tolist(self)

    torch.Tensor.tolist = tolist
    try:
        with counter:
            fn()
    finally:
        torch.Tensor.tolist = real_tolist
    return counter.syncs


def test_the_counter_sees_every_kind_of_sync():
    """Negative control: each kind of sync is counted."""
    x = torch.tensor([0, 0, 1, 1, 2])
    assert count_host_syncs(lambda: int(x.max())) == ["aten._local_scalar_dense.default"]
    assert count_host_syncs(lambda: x.tolist()) == ["Tensor.tolist"]
    assert count_host_syncs(lambda: x[x > 0]) == ["aten.index.Tensor (boolean mask)"]
    assert count_host_syncs(lambda: torch.nonzero(x)) == ["aten.nonzero.default"]
    assert count_host_syncs(lambda: torch.unique(x)) == ["aten._unique2.default"]
    assert count_host_syncs(lambda: x + 1) == []


@pytest.fixture(scope="module")
def protein(tmp_path_factory):
    path = write_synthetic_dataset(tmp_path_factory.mktemp("sync") / "p.h5", n_beads=6,
                                   n_frames=4, seed=1, name="p")
    return load_protein(path)


@pytest.mark.parametrize("estimator", ["frame", "rao_blackwell"])
@pytest.mark.parametrize("project", [False, True])
def test_training_step_syncs_only_for_the_layout_and_the_pair_list(protein, estimator, project):
    """One FM+HVP step (losses and backward) on a new batch object: the batch layout is read
    once (``bincount`` + one ``tolist``: bead counts and bead-type range together), the cutoff
    selection of the pair list is one ``nonzero`` (its shape depends on the data). The
    Rao–Blackwellised loss adds none: the trainer calls the core's
    ``hessid.hvp_loss.rao_blackwell_hvp_loss`` with ``validate=False`` (β and c are host floats
    that are finite and positive by construction when the batch is collated). A second step on the same batch object re-reads
    nothing but the pair list."""
    cfg = TrainConfig.from_dict({"model": {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4},
                                 "loss": {"mode": "fm_hvp", "cov_weight": 1.0,
                                          "hvp_estimator": estimator,
                                          "hvp_project_bonds": project}})
    prior = PriorFit().fit([protein.cg_coordinates]).fetch_model()
    module = CGTrainingModule(CGPotential(protein.vocabulary, prior, cfg.model), cfg, {})
    data = collate_frames([protein], [(0, 0), (0, 1), (0, 2)],
                          [np.arange(len(protein.vocabulary))], torch.float32, need_probes=True)

    def step():
        module.compute_losses(data, 10**9)["total"].backward()

    first = count_host_syncs(step)
    assert sorted(first) == sorted(["aten.bincount.default", "Tensor.tolist", "aten.nonzero.default"]), first
    again = count_host_syncs(step)
    assert again == ["aten.nonzero.default"], again
