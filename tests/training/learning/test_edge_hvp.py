"""Edge-list forward-over-reverse HVPs (training/learning/edge_hvp.py): exactness for every
model option that affects the energy, negative controls, the custom edge ops, memory scaling."""

from __future__ import annotations

import pytest
import torch
from torchmdnet.models.utils import act_class_mapping

from hessid.training.learning import edge_hvp
from hessid.training.learning.derivatives import (
    choose_hvp_method,
    energy_forces_hvp,
    filter_jets,
    pair_list,
)
from hessid.training.learning.edge_hvp import (
    EdgeConv,
    EdgeDot,
    EdgeScatter,
    activation_derivatives,
    edge_energy_forces_hvp,
)
from hessid.training.learning.hessians import hessian_autograd, hvp_reference
from tests.helpers import assert_close, relative_error
from tests.training.learning.fixtures import random_cg_system

OPTIONS = [
    {},
    {"neighbor_embedding": True},
    {"cutoff_upper": 6.0},  # pairs beyond the upper cutoff
    {"cutoff_lower": 0.0},  # the one-sided cosine cutoff
    {"rbf_type": "gauss"},
    {"rbf_type": "gauss", "cutoff_lower": 0.0, "neighbor_embedding": True},
    {"activation": "ssp"},
    {"activation": "tanh", "neighbor_embedding": True},
    {"activation": "sigmoid"},
    {"activation": "swish"},
    {"num_layers": 1},
]


def _hessian_times(model, pos, types, batch, probes):
    """Autograd Hessian of each structure times its probes, (k, A, 3)."""
    out, start = [], 0
    for b in range(int(batch.max()) + 1):
        n = int((batch == b).sum())
        H = hessian_autograd(model, pos[start : start + n], types[start : start + n])  # (3n, 3n)
        v = probes[:, start : start + n].reshape(probes.shape[0], -1)  # (k, 3n)
        out.append((v @ H.T).reshape(probes.shape[0], n, 3))
        start += n
    return torch.cat(out, 1)


@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("config", OPTIONS)
def test_edges_hvp_equals_autograd_hessian_for_every_option(config, prior):
    model, pos, types, batch = random_cg_system(sizes=(7, 5), config=config, prior=prior)
    probes = torch.randn(4, pos.shape[0], 3, dtype=torch.float64)
    fast = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False, method="edges")
    hv = _hessian_times(model, pos, types, batch, probes)
    assert_close(fast.hvp, hv, rtol=1e-10, what=f"edges HVP vs autograd Hessian ({config})")
    ref = hvp_reference(model, pos, types, batch, probes)
    assert_close(fast.energy, ref.energy, rtol=1e-12, what="energy")
    assert_close(fast.forces, ref.forces, rtol=1e-12, what="forces")
    assert float(fast.hvp.abs().max()) > 1.0  # not vacuous
    # negative control: a tangent perturbed by 1e-6 (relative) is detected at this tolerance
    bad = energy_forces_hvp(model, pos, types, batch, probes * (1 + 1e-6), create_graph=False,
                            method="edges")
    assert relative_error(bad.hvp, hv) > 1e-8


def test_dropped_prior_term_is_detected():
    """Negative control: the network-only HVP misses the prior's curvature (the test system's
    network is scaled up, so the prior is ~2e-4 of the Hessian: still 10⁴ × the tolerance)."""
    model, pos, types, batch = random_cg_system(sizes=(6,))
    probes = torch.randn(2, pos.shape[0], 3, dtype=torch.float64)
    hv = _hessian_times(model, pos, types, batch, probes)
    rep = model.net.representation_model
    i, j = pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper)
    jets = filter_jets(rep, (pos[i] - pos[j]).norm(dim=-1), order=2)
    _, _, net_only = edge_energy_forces_hvp(model.net, pos, types, batch, 1, i, j, jets, probes)
    assert relative_error(net_only, hv) > 1e-6


@pytest.mark.parametrize("neighbor_embedding", [False, True])
def test_edges_parameter_gradient_equals_reference(neighbor_embedding):
    model, pos, types, batch = random_cg_system(sizes=(6, 4), config={"neighbor_embedding": neighbor_embedding,
                                                             "activation": "tanh"})
    probes = torch.randn(3, pos.shape[0], 3, dtype=torch.float64)
    target = torch.randn_like(probes)

    def grads(fn):
        model.zero_grad()
        out = fn()
        ((out.hvp - target) ** 2).sum().add(out.forces.pow(2).sum()).add(out.energy.sum()).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.net.parameters() if p.grad is not None])

    g_fast = grads(lambda: energy_forces_hvp(model, pos, types, batch, probes, method="edges"))
    g_ref = grads(lambda: hvp_reference(model, pos, types, batch, probes, create_graph=True))
    # float64 table tolerance: with tanh (saturating, weights × 3) the reference itself carries
    # ~3.5e-11 of rounding; edges, dense and double_backward agree with each other to that level
    assert_close(g_fast, g_ref, what="dL/dθ")
    g_db = grads(lambda: energy_forces_hvp(model, pos, types, batch, probes, method="double_backward"))
    assert_close(g_fast, g_db, what="dL/dθ edges vs double backward")


def test_edge_ops_gradcheck_and_gradgradcheck():
    torch.manual_seed(0)
    A, P, F = 6, 7, 3
    i = torch.tensor([0, 0, 1, 2, 3, 4, 1])
    j = torch.tensor([1, 2, 3, 4, 5, 5, 5])
    dst, src = torch.cat([i, j]), torch.cat([j, i])
    h = torch.randn(2, A, F, dtype=torch.float64, requires_grad=True)
    w = torch.randn(P, F, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, P, F, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(A, A, F, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, w: EdgeConv.apply(h, w, dst, src), (h, w))
    assert torch.autograd.gradgradcheck(lambda h, w: EdgeConv.apply(h, w, dst, src), (h, w))
    assert torch.autograd.gradcheck(lambda h, q: EdgeDot.apply(h, q, dst), (h, q))
    assert torch.autograd.gradgradcheck(lambda h, q: EdgeDot.apply(h, q, dst), (h, q))
    wk = torch.randn(2, P, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, q: EdgeScatter.apply(w, q, dst, A), (wk, q))
    assert torch.autograd.gradgradcheck(lambda w, q: EdgeScatter.apply(w, q, dst, A), (wk, q))
    # against the dense definitions
    dense = dense.index_put((i, j), w.detach()).index_put((j, i), w.detach())  # W_ij, symmetric
    conv = torch.einsum("ijf,kjf->kif", dense, h.detach())
    assert_close(EdgeConv.apply(h, w, dst, src), conv, what="EdgeConv")
    dot = (h.detach()[:, i] * q.detach()[0]).sum(-1) + (h.detach()[:, j] * q.detach()[1]).sum(-1)
    assert_close(EdgeDot.apply(h, q, dst), dot, what="EdgeDot")
    scat = (torch.zeros(2, A, F, dtype=torch.float64)
            .index_add(1, i, wk.detach()[..., None] * q.detach()[0])
            .index_add(1, j, wk.detach()[..., None] * q.detach()[1]))
    assert_close(EdgeScatter.apply(wk, q, dst, A), scat, what="EdgeScatter")
    # adjointness: <EdgeScatter(w, q), x> = <w, EdgeDot(x, q)>
    x = torch.randn(2, A, F, dtype=torch.float64)
    lhs = (EdgeScatter.apply(wk, q, dst, A) * x).sum()
    assert_close(lhs, (wk * EdgeDot.apply(x, q, dst)).sum(), what="adjoint")


@pytest.mark.parametrize("name", ["silu", "swish", "ssp", "tanh", "sigmoid"])
def test_activation_derivatives_equal_autograd(name):
    act = act_class_mapping[name]()
    x = torch.linspace(-25, 25, 201, dtype=torch.float64, requires_grad=True)  # both softplus branches
    f0, f1, f2 = activation_derivatives(act, x)
    ref0 = act(x)
    (ref1,) = torch.autograd.grad(ref0.sum(), x, create_graph=True)
    (ref2,) = torch.autograd.grad(ref1.sum(), x)
    assert_close(f0, ref0, rtol=1e-15, what=f"{name}")
    assert_close(f1, ref1, rtol=1e-15, what=f"{name}′")
    assert_close(f2, ref2, rtol=1e-14, what=f"{name}″")


def test_unsupported_activation_raises():
    with pytest.raises(ValueError, match="activation"):
        activation_derivatives(act_class_mapping["mish"](), torch.zeros(3))
    model, pos, types, batch = random_cg_system(sizes=(5,), config={"activation": "mish"})
    with pytest.raises(ValueError, match="activations"):
        energy_forces_hvp(model, pos, types, batch, torch.zeros(1, 5, 3, dtype=torch.float64))


@pytest.mark.parametrize("config", [{}, {"neighbor_embedding": True}])
def test_custom_and_plain_edge_ops_give_the_same_hvps_and_parameter_gradients(config):
    """``edge_ops="plain"`` (autograd ops, small systems) and ``"custom"`` (re-gathering
    functions) are the same formulas: equal HVPs, forces and θ-gradients to float64 rounding,
    both equal to the autograd Hessian · v. Negative control: a perturbed tangent differs."""
    model, pos, types, batch = random_cg_system(sizes=(7, 5), config=config)
    probes = torch.randn(3, pos.shape[0], 3, dtype=torch.float64)
    rep = model.net.representation_model
    i, j = pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper)
    target = torch.randn_like(probes)

    def run(kind, v=probes):
        model.zero_grad()
        jets = filter_jets(rep, (pos[i] - pos[j]).norm(dim=-1), order=2)
        _, g, hv = edge_energy_forces_hvp(model.net, pos, types, batch, 2, i, j, jets, v,
                                          edge_ops=kind)
        ((hv - target) ** 2).sum().add((g**2).sum()).backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.net.parameters() if p.grad is not None])
        return hv.detach(), g.detach(), grads

    hc, gc, tc = run("custom")
    hp, gp, tp = run("plain")
    assert_close(hp, hc, rtol=1e-12, what="HVP plain vs custom")
    assert_close(gp, gc, rtol=1e-12, what="∇U plain vs custom")
    assert_close(tp, tc, rtol=1e-11, what="dL/dθ plain vs custom")
    model.prior, prior = None, model.prior  # network-only autograd Hessian
    try:
        hv = _hessian_times(model, pos, types, batch, probes)
    finally:
        model.prior = prior
    assert_close(hc, hv, rtol=1e-10, what="custom vs autograd Hessian")
    assert relative_error(run("plain", probes * (1 + 1e-6))[0], hv) > 1e-8
    with pytest.raises(ValueError, match="edge_ops"):
        run("fused")


def test_saved_memory_per_probe_grows_by_scalars_per_pair_not_edge_features(monkeypatch):
    """The θ-graph holds no (k, E, F) edge tensor: with the same beads and ~3× the pairs
    (larger cutoff), each probe saves at most 16 more scalars per added pair (an (E, F) edge
    tensor would be 2F = 64 per pair). The custom edge ops (``edge_ops="custom"``, the choice
    of ``"auto"`` above :data:`PLAIN_EDGE_OPS_MAX_ELEMENTS`) are forced: these systems are small."""
    monkeypatch.setattr(edge_hvp, "PLAIN_EDGE_OPS_MAX_ELEMENTS", 0)

    def per_probe(cutoff):
        model, pos, types, batch = random_cg_system(sizes=(14, 14), dtype=torch.float32, prior=False,
                                           config={"embedding_dimension": 32, "cutoff_upper": cutoff})
        rep = model.net.representation_model
        n_pairs = pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper)[0].numel()

        def saved_bytes(k):
            seen, total = set(), [0]

            def pack(t):
                st = t.untyped_storage()
                if (st.data_ptr(), st.nbytes()) not in seen:
                    seen.add((st.data_ptr(), st.nbytes()))
                    total[0] += st.nbytes()
                return t

            probes = torch.randn(k, pos.shape[0], 3)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = energy_forces_hvp(model, pos, types, batch, probes, method="edges")
            del out
            return total[0]

        return (saved_bytes(9) - saved_bytes(1)) / 8, n_pairs

    small, p_small = per_probe(5.0)
    large, p_large = per_probe(12.0)
    assert p_large > 2 * p_small
    per_added_pair = (large - small) / (p_large - p_small) / 4  # float32 scalars
    assert per_added_pair < 16, per_added_pair


def test_choose_hvp_method():
    # measured regimes (docs/training.md): 200-bead chains fill ~18 % of the grid -> edges;
    # 35 beads fill ~60 % -> dense from k = 4; one probe -> edges (smaller fixed cost)
    assert choose_hvp_method(16 * 200, 16 * 3669, 16, 4) == "edges"
    assert choose_hvp_method(16 * 35, 16 * 380, 16, 4) == "dense"
    assert choose_hvp_method(16 * 35, 16 * 380, 16, 1) == "edges"
    # below DENSE_MIN_BEADS (ala2's 5 beads, fill 0.8) the op count decides -> edges
    assert choose_hvp_method(64 * 5, 64 * 10, 64, 4) == "edges"
    assert choose_hvp_method(64 * 10, 64 * 43, 64, 4) == "dense"
    assert choose_hvp_method(0, 0, 0, 4) == "edges"
    for sizes, expected in (((7, 5), "edges"), ((9, 10), "dense")):
        model, pos, types, batch = random_cg_system(sizes=sizes)
        pairs = pair_list(pos, batch, model.net.representation_model.cutoff_lower,
                          model.net.representation_model.cutoff_upper)[0].numel()
        assert choose_hvp_method(pos.shape[0], pairs, len(sizes), 4) == expected
        probes = torch.randn(4, pos.shape[0], 3, dtype=torch.float64)
        auto = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False)
        chosen = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False,
                                   method=expected)
        assert_close(auto.hvp, chosen.hvp, rtol=1e-12, what=f"auto vs {expected}")


def test_mixed_precision_is_refused_not_silently_wrong():
    # bfloat16 autocast lost every digit of the network HVP (docs/training.md, "Mixed
    # precision"); the exact paths refuse it with a one-line error instead
    model, pos, types, batch = random_cg_system(sizes=(6,), dtype=torch.float32)
    probes = torch.randn(2, pos.shape[0], 3)
    out = energy_forces_hvp(model, pos, types, batch, probes, create_graph=False)  # control
    assert out.hvp.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="mixed precision"):
            energy_forces_hvp(model, pos, types, batch, probes, create_graph=False)
