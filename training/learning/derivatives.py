"""Exact, batched Hessian-vector products of a CGSchNet potential (docs/identities.md §5, model side).

``H_θ v = ∇_R (v · ∇_R U_θ)`` for k probes per structure, differentiable w.r.t. θ so that the
HVP loss can be trained. Two implementations, tested against each other and against the full
autograd Hessian in float64 (``tests/training/learning/test_hvp.py``):

- :func:`hvp_reference` — the slow, obvious one: TorchMD-Net forward, ``∇_R U`` with
  ``create_graph``, then one double backward per probe.
- :func:`energy_forces_hvp` — the fast one. It uses the structure of SchNet: the network
  depends on R only through the pair distances ``d_p``, and every distance-dependent filter
  ``W_p = φ(d_p)`` (RBF → MLP → cosine cutoff, all interaction layers at once) is a function
  of one scalar. So

      U(R) = G(φ(d(R)))
      ∇_R U   = Jᵀ a,                         a_p = ∂U/∂d_p
      H v     = Jᵀ (∇²_d U) J v + Σ_p a_p ∇²_R d_p v

  where ``J v`` is the per-pair scalar ``u_p · (v_i − v_j)``. The filter jets ``φ, φ', φ''``
  are computed once per pair, analytically (no per-probe pass through the filter MLPs,
  which hold most of SchNet's flops). ``a`` and ``∇²_d U w`` come from the message-passing
  part ``G`` in one of three ways (``method``; ``"auto"``, the default, picks ``"edges"`` or
  ``"dense"`` by size with :func:`choose_hvp_method`):

  * ``"edges"``: forward-over-reverse written out by hand on the directed edge list
    (:mod:`hessid.training.learning.edge_hvp`): one primal forward and reverse of ``G``
    (giving ``a``), then the tangent of both in the direction ``w = J v`` for all k probes
    at once as a leading tangent dimension. Cost and memory ∝ pairs; the θ-graph keeps per
    probe only node tensors and per-pair scalars.
  * ``"dense"``: the same on a dense per-structure (n × n) pair grid (zero filters off the
    pair list, so padding, the diagonal and pairs beyond the cutoffs add exact zeros), every
    per-probe edge operation a batched matrix product against k-independent grid tensors
    (``φ′_ij h_j``, ``φ′_ij g_i``, ``W_ij``). Cost ∝ B n²: wins while the grid is well filled.
  * ``"double_backward"``: a batched autograd double backward (``is_grads_batched``)
    through ``G`` on the edge list. Slow; kept as an independent implementation.

  No path uses an autograd double backward in R except the last; autograd only carries θ
  for the (single) backward of the loss.

  The expensive part is shared by all probes; what scales with k is the tangent of ``G``
  and the geometry.

Both return the prior's contribution too (the prior is fixed: no θ-graph; closed-form gradient and
HVPs, :meth:`~hessid.training.learning.priors.PriorModel.energy_gradient_hvp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hessid.training.learning.edge_hvp import (
    SUPPORTED_ACTIVATIONS,
    activation_derivatives,
    activation_jet,
    edge_energy_forces_hvp,
)
from hessid.training.learning.layout import BatchLayout, batch_layout, check_graph_batch

__all__ = [
    "DENSE_MIN_BEADS",
    "DENSE_MIN_FILL",
    "DENSE_MIN_PROBES",
    "HVP_METHODS",
    "EnergyForcesHVP",
    "choose_hvp_method",
    "energy_forces_hvp",
    "pair_list",
    "set_compile",
]


@dataclass
class EnergyForcesHVP:
    """Output of :func:`energy_forces_hvp`.

    Attributes:
        energy: (B,) kcal/mol, prior included.
        forces: (A, 3) kcal/mol/Å, ``−∂U/∂R``.
        hvp: (k, A, 3) kcal/mol/Å², ``H_θ v_m`` per probe; None when no probes were given.
        force_residual: (A, 3) kcal/mol/Å, ``dF = P f − F_θ`` (detached), when
            ``residual_target`` was given; else None.
        hvp_residual: (A, 3) (kcal/mol)²/Å³, ``H_θ dF`` (the (k+1)-th tangent, with the θ-graph
            when ``create_graph``), when ``residual_target`` was given; else None.
    """

    energy: torch.Tensor
    forces: torch.Tensor
    hvp: torch.Tensor | None
    force_residual: torch.Tensor | None = None
    hvp_residual: torch.Tensor | None = None


# ----------------------------------------------------------------------------- pairs


def pair_list(positions: torch.Tensor, batch: torch.Tensor, cutoff_lower: float,
              cutoff_upper: float, layout: BatchLayout | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unordered bead pairs (i < j, same structure) with ``cutoff_lower < d < cutoff_upper``.

    Pairs outside the open interval have zero filter weight and zero filter derivatives in
    CGSchNet (cosine cutoff), so dropping them is exact. No neighbour cap. The boolean
    selection is the step's one unavoidable host sync (the pair count depends on the data).

    Args:
        positions: (A, 3) Å.  batch: (A,) int64, non-decreasing.
        cutoff_lower, cutoff_upper: Å.
        layout: :func:`~hessid.training.learning.layout.batch_layout` of ``batch`` (None:
            looked up).

    Returns:
        (i, j), each (P,) int64.
    """
    i, j = (batch_layout(batch) if layout is None else layout).all_pairs()
    with torch.no_grad():
        d = (positions[i] - positions[j]).norm(dim=-1)  # (P,)
        keep = torch.nonzero((d > cutoff_lower) & (d < cutoff_upper))[:, 0]
    return i[keep], j[keep]


# ----------------------------------------------------------------------------- jets
# A jet is a tensor whose dim 1 holds (f, f', f'') w.r.t. the pair distance d.


def _jet_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product rule on jets of order 1 (2 slots) or 2 (3 slots) along dim 1."""
    if a.shape[1] == 2:
        a0, a1 = a.unbind(1)
        b0, b1 = b.unbind(1)
        return torch.stack([a0 * b0, a1 * b0 + a0 * b1], 1)
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a0 * b0, a1 * b0 + a0 * b1, a2 * b0 + 2 * a1 * b1 + a0 * b2], 1)


def _cosine_cutoff_jet(d: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Jet of TorchMD-Net's CosineCutoff(lower, upper) at d (P,) → (P, 3)."""
    if lower > 0:
        kappa = 2 * math.pi / (upper - lower)
        theta = kappa * (d - lower) + math.pi
        mask = ((d < upper) & (d > lower)).to(d.dtype)
    else:
        kappa = math.pi / upper
        theta = kappa * d
        mask = (d < upper).to(d.dtype)
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([0.5 * (c + 1), -0.5 * kappa * s, -0.5 * kappa**2 * c], 1) * mask[:, None]


def _rbf_jet(rbf: torch.nn.Module, d: torch.Tensor) -> torch.Tensor:
    """Jet of the RBF expansion at d (P,) → (P, 3, R)."""
    name = type(rbf).__name__
    if name == "ExpNormalSmearing":
        alpha = rbf.alpha
        t = torch.exp(alpha * (rbf.cutoff_lower - d))[:, None]  # (P, 1)
        q = t - rbf.means  # (P, R)
        g = torch.stack([-rbf.betas * q**2, -2 * rbf.betas * q * (-alpha * t),
                         -2 * rbf.betas * (alpha**2 * t**2 + q * alpha**2 * t)], 1)  # (P, 3, R)
        env = _cosine_cutoff_jet(d, 0.0, rbf.cutoff_upper)[:, :, None]  # (P, 3, 1)
    elif name == "GaussianSmearing":
        q = d[:, None] - rbf.offset  # (P, R)
        c = rbf.coeff
        g = torch.stack([c * q**2, 2 * c * q, (2 * c).expand_as(q)], 1)  # (P, 3, R)
        env = None
    else:  # pragma: no cover - guarded by ModelConfig
        raise ValueError(f"fast HVP path supports expnorm/gauss RBFs, not {name}")
    e = torch.exp(g[:, 0])
    ex = torch.stack([e, e * g[:, 1], e * (g[:, 2] + g[:, 1] ** 2)], 1)  # (P, 3, R)
    return ex if env is None else _jet_mul(ex, env.expand_as(ex))


def filter_jets(rep: torch.nn.Module, d: torch.Tensor, order: int = 2) -> torch.Tensor:
    """Jets of all distance filters of a TorchMD_GN representation at pair distances d.

    Filters, in order: the neighbour embedding's ``distance_proj(rbf)·C`` (if enabled), then
    each interaction block's ``mlp(rbf)·C`` (the CFConv filter), C the cosine cutoff.

    Args:
        rep: ``TorchMD_GN`` module.
        d: (P,) pair distances, Å.
        order: 2 (value, φ′, φ″) or 1 (value, φ′: forces only, a third cheaper).

    Returns:
        (P, order + 1, L', F): value and derivatives w.r.t. d (Å⁻¹, Å⁻²).
    """
    nj = order + 1
    x = _rbf_jet(rep.distance_expansion, d)[:, :nj]  # (P, nj, R)
    blocks = list(rep.interactions)
    w1 = [b.mlp[0].weight for b in blocks]
    b1 = [b.mlp[0].bias for b in blocks]
    ne = rep.neighbor_embedding
    if ne is not None:
        w1.append(ne.distance_proj.weight)
        b1.append(ne.distance_proj.bias)
    F = blocks[0].mlp[0].weight.shape[0]
    L = len(blocks)
    bias = torch.cat(b1)
    h = x @ torch.cat(w1).T  # (P, nj, L'F)
    h = torch.cat([h[:, :1] + bias, h[:, 1:]], 1)
    hi = h[..., : L * F].reshape(h.shape[0], nj, L, F)  # (P, nj, L, F)
    s = activation_jet(blocks[0].mlp[1], hi)
    w2 = torch.stack([b.mlp[2].weight for b in blocks])  # (L, F, F) (out, in)
    m = torch.einsum("pclf,lgf->pclg", s, w2)  # (P, nj, L, F)
    b2 = torch.stack([b.mlp[2].bias for b in blocks])  # (L, F)
    m = torch.cat([m[:, :1] + b2, m[:, 1:]], 1)
    if ne is not None:
        m = torch.cat([h[..., L * F :].reshape(h.shape[0], nj, 1, -1), m], 2)  # (P, nj, L', F)
    c = _cosine_cutoff_jet(d, rep.cutoff_lower, rep.cutoff_upper)[:, :nj]  # (P, nj)
    return _jet_mul(m, c[:, :, None, None].expand_as(m))


def _message_passing_energy(net: torch.nn.Module, filters: torch.Tensor, z: torch.Tensor,
                            dst: torch.Tensor, src: torch.Tensor, batch: torch.Tensor,
                            n_graphs: int) -> torch.Tensor:
    """TorchMD_Net energy given the per-edge filters (the part G of the module docstring).

    filters: (E, L', F) for directed edges (messages src → dst). Returns (B,) kcal/mol.
    """
    rep, out = net.representation_model, net.output_model
    x = rep.embedding(z)  # (A, F)
    k = 0
    ne = rep.neighbor_embedding
    if ne is not None:
        xn = ne.embedding(z)
        msg = filters[:, 0] * xn.index_select(0, src)  # (E, F)
        xn = torch.zeros_like(x).index_add(0, dst, msg)
        x = ne.combine(torch.cat([x, xn], dim=1))
        k = 1
    for blk in rep.interactions:
        h = blk.conv.lin1(x)
        msg = filters[:, k] * h.index_select(0, src)  # (E, F)
        h = torch.zeros_like(h).index_add(0, dst, msg)
        h = blk.lin(blk.act(blk.conv.lin2(h)))
        x = x + h
        k += 1
    e_atom = out.output_network(x)[:, 0] * net.std  # (A,)
    return torch.zeros(n_graphs, dtype=x.dtype, device=x.device).index_add(0, batch, e_atom) + net.mean


# ----------------------------------------------------------------------------- dense tangents
# Forward-over-reverse by hand, per structure on a dense (B, n, n) pair grid. Every k-dependent
# edge operation becomes a batched matrix product ("kbij,bijf->kbif"-type contractions), the
# k-independent parts (filters and their jets, primal forward and reverse) are computed once.


def _dense_layout(batch: torch.Tensor, n_graphs: int):
    counts = torch.bincount(batch, minlength=n_graphs)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.shape[0], device=batch.device) - starts[batch]  # (A,)
    return max(batch_layout(batch).counts, default=0), local  # host ints from the cached layout


def _dense_energy_forces_hvp(net, pos, z, batch, n_graphs, i, j, probes, probe_chunk,
                             residual_fn=None):
    """Energy (B,), ∇_R U (A, 3) and H v (k, A, 3) of the network (no prior), dense tangents.

    ``residual_fn`` or None: when given, ``residual_fn(∇_R U)`` (A, 3) is appended to the
    probes after the primal reverse, so H v has k + 1 rows.

    Notation (module docstring): a = ∂U/∂d per pair, ȧ = (∇²_d U) J v; directed messages
    j → i with filter W[b, i, j] (symmetric), zero off the pair list (so padding, the
    diagonal and pairs beyond the cutoffs contribute exact zeros).
    """
    rep, out = net.representation_model, net.output_model
    n, local = _dense_layout(batch, n_graphs)
    B, A = n_graphs, pos.shape[0]
    dt, dev = pos.dtype, pos.device
    # geometry, dense: u[b,i,j] = (r_i − r_j)/d_ij, zero where i == j or padded
    pd = torch.zeros(B, n, 3, dtype=dt, device=dev).index_put((batch, local), pos)
    r = pd[:, :, None] - pd[:, None, :]  # (B, n, n, 3)
    dd = r.norm(dim=-1)
    dd = torch.where(dd > 0, dd, torch.ones_like(dd))
    u = r / dd[..., None]  # (B, n, n, 3)
    d = (pos[i] - pos[j]).norm(dim=-1)  # (P,)
    bi, li, lj = batch[i], local[i], local[j]
    nn_ = n * n
    flat = torch.cat([bi * nn_ + li * n + lj, bi * nn_ + lj * n + li])  # (2P,)
    with torch.enable_grad():
        jets = filter_jets(rep, d, order=2)  # (P, 3, L', F)
        P, _, Lp, F = jets.shape
        flat_jets = jets.permute(1, 2, 0, 3).reshape(3 * Lp, P, F).unbind(0)
        dense = [torch.zeros(B * nn_, F, dtype=dt, device=dev)
                 .index_copy(0, flat, torch.cat([s, s])).view(B, n, n, F)
                 for s in flat_jets[: 2 * Lp]]
        W, P1 = dense[:Lp], dense[Lp:]  # L' × (B, n, n, F): φ, φ′ on the grid
        P2 = flat_jets[2 * Lp :]  # L' × (P, F): φ″ stays on the pair list (only in a2 below)

        def phi2_contract(l, g, h):  # Σ_f φ″_ij g_i h_j for both directions, dense (B, n, n)
            gi, gj, hi, hj = g[bi, li], g[bi, lj], h[bi, li], h[bi, lj]  # (P, F)
            val = torch.cat([(P2[l] * gi * hj).sum(-1), (P2[l] * gj * hi).sum(-1)])  # (2P,)
            return torch.zeros(B * nn_, dtype=dt, device=dev).index_copy(0, flat, val).view(B, n, n)
        Wt = [w_.permute(0, 3, 1, 2) for w_ in W]  # (B, F, n, n) views, symmetric in the last two
        ne = rep.neighbor_embedding
        mask = torch.zeros(B, n, dtype=dt, device=dev).index_put((batch, local),
                                                                 torch.ones(A, dtype=dt, device=dev))
        zd = torch.zeros(B, n, dtype=z.dtype, device=dev).index_put((batch, local), z)

        def conv(l, h):  # (B, n, F) -> Σ_j W_ij h_j, (B, n, F)
            return (Wt[l] @ h.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)

        def conv_k(l, h):  # (k, B, n, F) -> Σ_j W_ij h_kj, (k, B, n, F)
            return (Wt[l] @ h.permute(1, 3, 2, 0)).permute(3, 0, 2, 1)

        def contract_w(w, q):  # Σ_j w_kij q_ijf: (k, B, n, n), (B, n, n, F) -> (k, B, n, F)
            return (w.permute(1, 2, 0, 3) @ q).permute(2, 0, 1, 3)

        def contract_f(g, q):  # Σ_f g_kif q_ijf: (k, B, n, F), (B, n, n, F) -> (k, B, n, n)
            return (g.permute(1, 2, 0, 3) @ q.transpose(2, 3)).permute(2, 0, 1, 3)

        # ---- primal forward
        x = rep.embedding(zd)  # (B, n, F)
        L0 = 0
        if ne is not None:
            e_ne = ne.embedding(zd)  # (B, n, F)
            cw = ne.combine.weight  # (F, 2F)
            x = x @ cw[:, :F].T + conv(0, e_ne) @ cw[:, F:].T + ne.combine.bias
            L0 = 1
        blocks = list(rep.interactions)
        saved = []
        for li_, blk in enumerate(blocks):
            l = li_ + L0
            h1 = x @ blk.conv.lin1.weight.T  # (B, n, F)
            h2 = blk.conv.lin2(conv(l, h1))
            s2, ds2, dds2 = activation_derivatives(blk.act, h2)
            x = x + blk.lin(s2)
            saved.append((h1, ds2, dds2))
        o1, o2 = out.output_network.layers[0], out.output_network.layers[2]
        zo = o1(x)  # (B, n, H)
        so, dso, ddso = activation_derivatives(out.output_network.layers[1], zo)
        e_atom = (so @ o2.weight.T)[..., 0] + o2.bias  # (B, n)
        energy = (e_atom * mask).sum(1) * net.std + net.mean  # (B,)
        # ---- primal reverse: g = ∂U/∂(.)
        gy = (mask * net.std)[..., None] * o2.weight[0]  # (B, n, H)
        gx = (gy * dso) @ o1.weight  # (B, n, F)
        rev = [None] * len(blocks)
        a, a2_all = 0.0, None
        for li_ in reversed(range(len(blocks))):
            blk, l = blocks[li_], li_ + L0
            h1, ds2, _ = saved[li_]
            g3 = gx @ blk.lin.weight  # (B, n, F)
            gagg = (g3 * ds2) @ blk.conv.lin2.weight  # (B, n, F)
            q1 = P1[l] * h1[:, None]  # (B, n, n, F)  [i, j]: φ′_ij h1_j
            q2 = P1[l] * gagg[:, None]  # (B, n, n, F)  [j, i]: φ′_ij g_i  (φ′ symmetric)
            a = a + contract_f(gagg[None], q1)[0]  # Σ_f g_i φ′_ij h1_j
            a2 = phi2_contract(l, gagg, h1)  # Σ_f g_i φ″_ij h1_j
            a2_all = a2 if a2_all is None else a2_all + a2
            gx = gx + conv(l, gagg) @ blk.conv.lin1.weight
            rev[li_] = (g3, gagg, q1, q2)
        if ne is not None:
            gxn = gx @ cw[:, F:]
            q1n = P1[0] * e_ne[:, None]
            a = a + contract_f(gxn[None], q1n)[0]
            a2_all = a2_all + phi2_contract(0, gxn, e_ne)
        a = a + a.transpose(1, 2)  # (B, n, n) ∂U/∂d_ij, symmetric
        grad_d = (a[..., None] * u).sum(2)  # (B, n, 3)
        grad_r = grad_d[batch, local]  # (A, 3)
        hvp = None
        if residual_fn is not None:  # the residual dF, known only now, as tangent k + 1
            probes = torch.cat([probes.to(dt), residual_fn(grad_r)[None]])
        if probes is not None:
            vd = torch.zeros(probes.shape[0], B, n, 3, dtype=dt, device=dev)
            vd[:, batch, local] = probes.to(dt)
            c = a / dd  # (B, n, n)
            k_all = vd.shape[0]
            chunk = max(k_all, 1) if probe_chunk is None else max(1, int(probe_chunk))
            parts = [vd.new_zeros(0, A, 3)]
            for start in range(0, k_all, chunk):
                v = vd[start : start + chunk]  # (k, B, n, 3)
                uv = (u[None] * v[:, :, :, None]).sum(-1)  # (k, B, n, n)  u_ij·v_i
                w = uv + uv.transpose(2, 3)  # u_ij·(v_i − v_j)  (u antisymmetric)
                # tangent forward
                xd = None
                if ne is not None:
                    xd = contract_w(w, q1n) @ cw[:, F:].T
                fwd = []
                for li_, blk in enumerate(blocks):
                    l = li_ + L0
                    _, ds2, _ = saved[li_]
                    aggd = contract_w(w, rev[li_][2])
                    h1d = None
                    if xd is not None:
                        h1d = xd @ blk.conv.lin1.weight.T
                        aggd = aggd + conv_k(l, h1d)
                    h2d = aggd @ blk.conv.lin2.weight.T  # (k, B, n, F)
                    xdl = (ds2 * h2d) @ blk.lin.weight.T
                    xd = xdl if xd is None else xd + xdl
                    fwd.append((h1d, h2d))
                # tangent reverse
                gxd = (gy * ddso * (xd @ o1.weight.T)) @ o1.weight  # (k, B, n, F)
                ad = w * a2_all
                for li_ in reversed(range(len(blocks))):
                    blk, l = blocks[li_], li_ + L0
                    _, ds2, dds2 = saved[li_]
                    g3, gagg, q1, q2 = rev[li_]
                    h1d, h2d = fwd[li_]
                    g3d = gxd @ blk.lin.weight
                    gaggd = (g3d * ds2 + g3 * dds2 * h2d) @ blk.conv.lin2.weight  # (k, B, n, F)
                    ad = ad + contract_f(gaggd, q1)
                    if h1d is not None:  # Σ_f g_i φ′_ij ḣ1_j, stored [j, i]
                        ad = ad + contract_f(h1d, q2).transpose(2, 3)
                    if li_ > 0 or ne is not None:  # ∂/∂x of the layer input is needed below
                        g1d = contract_w(w.transpose(2, 3), q2) + conv_k(l, gaggd)
                        gxd = gxd + g1d @ blk.conv.lin1.weight
                if ne is not None:
                    ad = ad + contract_f(gxd @ cw[:, F:], q1n)
                ad = ad + ad.transpose(2, 3)  # (k, B, n, n)  ∇²_d U · J v
                t = ad - c * w
                hv = ((t[..., None] * u).sum(3) + v * c.sum(2)[..., None]
                      - (c @ v))  # (k, B, n, 3)
                parts.append(hv[:, batch, local])
            hvp = torch.cat(parts)  # (k, A, 3)
    return energy, grad_r, hvp


#: values of ``energy_forces_hvp(method=...)``
HVP_METHODS = ("auto", "edges", "dense", "double_backward")


#: :func:`choose_hvp_method` takes the dense grid from this fill (pairs / grid cells), this k
#: and this mean structure size on (below it the dense path's extra small ops cost more than its
#: cheaper probes save: quiet crossover of 2026-11-29, docs/training.md "HVP cost")
DENSE_MIN_FILL = 0.3
DENSE_MIN_PROBES = 4
DENSE_MIN_BEADS = 8


def choose_hvp_method(n_beads: int, n_pairs: int, n_graphs: int, n_probes: int) -> str:
    """The faster exact HVP path for a batch: ``"edges"`` or ``"dense"`` (host ints, no sync).

    Cost model, in FM steps (docs/training.md, "HVP cost"): ``edges`` ≈ 1 + c₀ + k c₁ with
    c₀, c₁ ∝ pairs, ``dense`` ≈ 1 + d₀ + k d₁ with d₀, d₁ ∝ B n² (the grid); ``dense`` has
    the larger fixed part and the smaller per-probe part while the grid is well filled. Rule
    (measured crossover, CPU float32, 2 threads, k ∈ {1, 4, 8}, 5–200 beads × batch 16–64):
    ``dense`` when the fill ``2P / (B n̄²)`` (n̄ = A / B, so padding of ragged batches counts as
    empty cells) is at least :data:`DENSE_MIN_FILL`, ``k ≥`` :data:`DENSE_MIN_PROBES` and
    ``n̄ ≥`` :data:`DENSE_MIN_BEADS`; ``edges`` otherwise. Below 8 beads every op is dispatch
    bound and the dense path makes ~20 % more ops (5 beads, k = 4: edges 2.00–2.62× FM, dense
    2.29–2.92× at batch 16–64); at 10 beads the two tie at batch 16–32 and dense wins at 64;
    from 20 beads dense wins while the fill is ≥ 0.3 (80 beads: 0.37) and loses below (200
    beads: 0.18, edges 4.0× against dense 5.8×).

    Args:
        n_beads: A, beads in the batch.  n_pairs: P, pairs inside the cutoffs.
        n_graphs: B, structures.  n_probes: k.

    Returns:
        ``"edges"`` or ``"dense"``.
    """
    mean_n = n_beads / max(n_graphs, 1)
    fill = 2 * n_pairs / max(n_graphs * mean_n**2, 1.0)
    dense = fill >= DENSE_MIN_FILL and n_probes >= DENSE_MIN_PROBES and mean_n >= DENSE_MIN_BEADS
    return "dense" if dense else "edges"


def _check_supported(potential) -> None:
    cfg = potential.config
    if cfg.activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"the fast HVP paths support activations {SUPPORTED_ACTIVATIONS}, not "
                         f"{cfg.activation!r}")
    if cfg.rbf_type not in ("expnorm", "gauss"):
        raise ValueError(f"the fast HVP path supports expnorm/gauss RBFs, not {cfg.rbf_type!r}")


# ----------------------------------------------------------------------------- torch.compile

_COMPILE: dict = {"enabled": False, "fn": None}


def _edge_core(rep, net, pos, z, batch, n_graphs, i, j, probes, probe_chunk):
    """Filter jets + edge-list energy, ∇_R U and H v: the part of the step that compiles
    (no data-dependent shapes: the pair list ``i, j`` is an input)."""
    order = 1 if probes is None else 2
    jets = filter_jets(rep, (pos[i] - pos[j]).norm(dim=-1), order=order)  # (P, order+1, L', F)
    return edge_energy_forces_hvp(net, pos, z, batch, n_graphs, i, j, jets, probes, probe_chunk)


def _edge_kernel(compiled: bool):
    if not compiled:
        return _edge_core
    if _COMPILE["fn"] is None:
        _COMPILE["fn"] = torch.compile(_edge_core, dynamic=True)
    return _COMPILE["fn"]


def set_compile(enabled: bool) -> bool:
    """Route the edge-list path through ``torch.compile`` (``trainer.compile``); returns the
    previous setting.

    When on, :func:`energy_forces_hvp` runs the filter jets and the edge-list energy,
    forces and HVPs as one ``torch.compile(..., dynamic=True)`` region (the pair list, the
    prior and the loss stay eager), for HVP steps with ``method="edges"`` (or ``"auto"``
    choosing it) AND for forces-only (FM) steps, which then use the edge list's hand-written
    reverse instead of an autograd double backward (AOTAutograd cannot differentiate a
    compiled backward twice). The Rao–Blackwellised residual tangent and the dense path stay
    eager. Process-wide; the trainer restores the previous value after the run. Exact either
    way (same operations; float rounding may differ). Measured cost and speed-up:
    docs/training.md "HVP cost".
    """
    previous = bool(_COMPILE["enabled"])
    _COMPILE["enabled"] = bool(enabled)
    return previous


def _check_inputs(potential, positions, bead_types, batch) -> tuple[torch.Tensor, BatchLayout]:
    """``CGPotential._check``'s checks, with the host reads done once per batch object.

    Returns:
        batch (A,) (zeros when None) and its :class:`BatchLayout`.

    Raises:
        ValueError: positions not (A, 3); bead_types or batch not (A,); a bead type outside
            the vocabulary.
    """
    batch = check_graph_batch(positions, bead_types, batch)
    layout = batch_layout(batch, bead_types)
    n_vocab = len(potential.bead_vocabulary)
    if layout.types_range is not None and not (0 <= layout.types_range[0]
                                               and layout.types_range[1] < n_vocab):
        raise ValueError(f"bead_types must lie in [0, {n_vocab})")
    return batch, layout


def _prior_terms(potential, positions, batch, probes, bead_types=None, layout=None):
    """Prior energy (B,), gradient (A, 3) and HVPs (k, A, 3); constants w.r.t. θ.

    Closed form (:meth:`~hessid.training.learning.priors.PriorModel.energy_gradient_hvp`:
    analytic gradient and tangents per bonded/pair term, all probes at once; no autograd).
    """
    if potential.prior is None:
        return 0.0, 0.0, 0.0
    layout = batch_layout(batch) if layout is None else layout
    e, g, hv = potential.prior.energy_gradient_hvp(positions, batch, bead_types, probes,
                                                   n_graphs=layout.n_graphs, index=layout.chain())
    return e, g, (0.0 if hv is None else hv)


def _prior_terms_autograd(potential, positions, batch, probes, bead_types=None):
    """The same by autograd: one batched double backward for all k probes (the reference of
    the closed form; tests and benchmarks)."""
    if potential.prior is None:
        return 0.0, 0.0, 0.0
    with torch.enable_grad():
        x = positions.detach().requires_grad_(True)
        e = potential.prior(x, batch, bead_types)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=probes is not None)
        hv = 0.0
        if probes is not None:  # all k probes in one batched double backward (no loop)
            hv = torch.autograd.grad(g, x, grad_outputs=probes.to(x.dtype),
                                     is_grads_batched=True)[0] if len(probes) else torch.zeros_like(probes)
    return e.detach(), g.detach(), hv


def energy_forces_hvp(potential, positions: torch.Tensor, bead_types: torch.Tensor,
                      batch: torch.Tensor | None = None, probes: torch.Tensor | None = None,
                      create_graph: bool = True, probe_chunk: int | None = None,
                      method: str = "auto",
                      residual_target: torch.Tensor | None = None,
                      residual_transform=None) -> EnergyForcesHVP:
    """Energy, forces and exact HVPs of a :class:`~hessid.training.learning.models.CGPotential` (fast).

    ``H_θ v = ∇_R(v·∇_R U_θ)`` (docs/identities.md §5, model side), computed by the edge-factored
    forward-over-reverse scheme of the module docstring; equal to :func:`hvp_reference`
    and to ``hessian_autograd(...) @ v`` to rounding (tested in float64, ~1e-13 relative).

    Args:
        potential: CGPotential (CGSchNet + prior).
        positions: (A, 3) Å, graph-batched; need not require grad (derivatives w.r.t. R are
            analytic; only θ carries an autograd graph).
        bead_types: (A,) int64 residue-type indices.
        batch: (A,) int64 structure index, non-decreasing; None = one structure.
        probes: (k, A, 3) probe vectors, or None for energy and forces only.
        create_graph: keep the graph w.r.t. θ (needed to train on forces / HVPs).
        probe_chunk: batch at most this many probes at once (memory bound); None = all k.
        method: how the k probes go through the message passing when probes are given
            (all exact; they differ in cost only):
            ``"auto"`` (default) — :func:`choose_hvp_method` by size;
            ``"edges"`` — hand-written forward-over-reverse on the edge list, the k probes a
            tangent dimension (:func:`~hessid.training.learning.edge_hvp.edge_energy_forces_hvp`;
            cost and memory ∝ pairs);
            ``"dense"`` — the same on a dense per-structure (n × n) pair grid, all k probes
            as batched matrix products (cost ∝ B n²);
            ``"double_backward"`` — batched autograd double backward through the edge-list
            message passing (an independent check; slow). Forces-only calls always use the
            edge list with first-order jets.
        residual_target: target forces ``P f`` (A, 3) kcal/mol/Å, or None. When given (probes
            required), the force residual ``dF = P f − F_θ`` of this very forward pass is
            detached and appended to the probes as a (k+1)-th tangent, so ``H_θ dF`` shares
            the primal forward and reverse with the k probes (the extra HVP of the
            Rao–Blackwellised loss, docs/variance_reduction.md eq. (2)). The prior's gradient
            is evaluated once more for it (cheap, no network).
        residual_transform: None, or a linear map (A, 3) → (A, 3) applied to the detached dF
            before it is appended (e.g. the bond projection
            :func:`~hessid.training.learning.losses.project_out_bonds`); ``hvp_residual`` is then
            ``H_θ · transform(dF)`` while ``force_residual`` stays dF.

    Returns:
        :class:`EnergyForcesHVP` with energy (B,) kcal/mol, forces (A, 3) kcal/mol/Å and hvp
        (k, A, 3) kcal/mol/Å² (None without probes), in the potential's dtype; with
        ``residual_target`` also ``force_residual`` dF (A, 3) and ``hvp_residual`` H_θ dF
        (A, 3).

    Raises:
        ValueError: unsupported activation / RBF, unknown method, probe shape not (k, A, 3),
            ``residual_target`` without probes or not of shape (A, 3), or called inside
            ``torch.autocast`` (mixed precision: measured in docs/training.md, bfloat16 loses
            every digit of the network's HVP; the exact paths run in the model's precision).
    """
    if torch.is_autocast_enabled(positions.device.type):
        raise ValueError("energy_forces_hvp: mixed precision (torch.autocast) is not supported by "
                         "the exact HVP paths; use precision float32 or float64 "
                         "(docs/training.md, 'Mixed precision')")
    _check_supported(potential)
    batch, layout = _check_inputs(potential, positions, bead_types, batch)
    if probes is not None and (probes.ndim != 3 or probes.shape[1:] != positions.shape):
        raise ValueError(f"probes must be (k, A, 3) = (k, {positions.shape[0]}, 3), got "
                         f"{tuple(probes.shape)}")
    net = potential.net
    rep = net.representation_model
    pos = positions.detach()
    n_graphs = layout.n_graphs
    i, j = pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper, layout)
    if method not in HVP_METHODS:
        raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
    residual_fn = None
    if residual_target is not None:
        if probes is None or residual_target.shape != positions.shape:
            raise ValueError(f"residual_target needs probes and shape {tuple(positions.shape)}, "
                             f"got {tuple(residual_target.shape)}")
        # dF = P f − F_θ = P f + ∇U_prior + ∇U_net = offset + ∇U_net
        offset = residual_target.detach().to(pos.dtype) + _prior_terms(potential, pos, batch, None,
                                                                       bead_types, layout)[1]

        def residual_fn(grad_net, transformed=True):
            dF = (offset + grad_net).detach()
            if transformed and residual_transform is not None:
                return residual_transform(dF).detach()
            return dF
    if probes is not None and method == "auto":
        method = choose_hvp_method(pos.shape[0], i.shape[0], n_graphs, probes.shape[0])
    compiled = _COMPILE["enabled"] and residual_fn is None
    if probes is None and compiled:  # hand-written reverse: one θ-backward, compilable
        with torch.set_grad_enabled(create_graph):
            energy, grad_r, _ = _edge_kernel(True)(rep, net, pos, bead_types.long(), batch,
                                                   n_graphs, i, j, None, None)
        pe, pg, _ = _prior_terms(potential, pos, batch, None, bead_types, layout)
        return EnergyForcesHVP(energy=energy + pe, forces=-(grad_r + pg), hvp=None)
    if probes is not None and method == "edges":
        with torch.set_grad_enabled(create_graph):
            if compiled:
                energy, grad_r, hvp = _edge_kernel(True)(rep, net, pos, bead_types.long(), batch,
                                                         n_graphs, i, j, probes, probe_chunk)
            else:
                jets = filter_jets(rep, (pos[i] - pos[j]).norm(dim=-1), order=2)  # (P, 3, L', F)
                energy, grad_r, hvp = edge_energy_forces_hvp(
                    net, pos, bead_types.long(), batch, n_graphs, i, j, jets, probes, probe_chunk,
                    residual_fn=residual_fn)
        return _with_prior(potential, pos, batch, bead_types, energy, grad_r, hvp, residual_fn,
                           probes, layout)
    if probes is not None and method == "dense":
        with torch.set_grad_enabled(create_graph):
            energy, grad_r, hvp = _dense_energy_forces_hvp(
                net, pos, bead_types.long(), batch, n_graphs, i, j, probes, probe_chunk,
                residual_fn)
        return _with_prior(potential, pos, batch, bead_types, energy, grad_r, hvp, residual_fn,
                           probes, layout)
    rij = pos[i] - pos[j]  # (P, 3)
    d = rij.norm(dim=-1)  # (P,)
    u = rij / d[:, None]  # (P, 3)
    with torch.enable_grad():
        jets = filter_jets(rep, d, order=1 if probes is None else 2)  # (P, 2|3, L', F)
        s = torch.zeros_like(d, requires_grad=True)  # (P,) distance shifts, evaluated at 0
        s3 = s[:, None, None]
        if probes is None:  # first order suffices for forces
            w_pair = jets[:, 0] + s3 * jets[:, 1]  # (P, L', F)
        else:  # second-order Taylor in s: exact first and second derivatives at s = 0
            w_pair = jets[:, 0] + s3 * (jets[:, 1] + 0.5 * s3 * jets[:, 2])  # (P, L', F)
        filters = torch.cat([w_pair, w_pair], 0)  # (2P, L', F): both message directions
        dst, src = torch.cat([i, j]), torch.cat([j, i])
        energy = _message_passing_energy(net, filters, bead_types.long(), dst, src, batch,
                                         n_graphs)
        need_graph = create_graph or probes is not None
        (a,) = torch.autograd.grad(energy.sum(), s, create_graph=need_graph)  # (P,) ∂U/∂d
        au = a[:, None] * u  # (P, 3)
        grad_r = torch.zeros_like(pos).index_add(0, i, au).index_add(0, j, -au)  # (A, 3)
        hvp = None
        if probes is not None:
            tangents = probes.to(pos.dtype)
            if residual_fn is not None:  # the residual dF, known only now, as tangent k + 1
                tangents = torch.cat([tangents, residual_fn(grad_r)[None]])
            dv = tangents[:, i] - tangents[:, j]  # (k, P, 3)
            w = (dv * u).sum(-1)  # (k, P)  J v
            chunk = tangents.shape[0] if probe_chunk is None else max(1, int(probe_chunk))
            parts = []
            for start in range(0, w.shape[0], chunk):
                wc = w[start : start + chunk]
                (b,) = torch.autograd.grad(a, s, grad_outputs=wc, retain_graph=True,
                                           create_graph=create_graph, is_grads_batched=True)
                parts.append(b)  # (kc, P)  ∇²_d U · J v
            bw = torch.cat(parts)  # (k, P)
            geo = (a / d)[:, None] * (dv - u * w[..., None])  # (k, P, 3)  a ∇²d v
            t = bw[..., None] * u + geo  # (k, P, 3)
            hvp = torch.zeros(tangents.shape, dtype=pos.dtype, device=pos.device)
            hvp = hvp.index_add(1, i, t).index_add(1, j, -t)  # (k, A, 3)
    if not create_graph:
        energy, grad_r = energy.detach(), grad_r.detach()
        hvp = None if hvp is None else hvp.detach()
    if hvp is not None:
        return _with_prior(potential, pos, batch, bead_types, energy, grad_r, hvp, residual_fn,
                           probes, layout)
    pe, pg, _ = _prior_terms(potential, pos, batch, None, bead_types, layout)
    return EnergyForcesHVP(energy=energy + pe, forces=-(grad_r + pg), hvp=None)


def _with_prior(potential, pos, batch, bead_types, energy, grad_r, hvp, residual_fn, probes,
                layout=None):
    """Add the prior to the network's energy, gradient and HVPs; split off the residual row.

    ``hvp`` (k', A, 3) holds the network HVPs along ``probes`` (k, A, 3), plus, when
    ``residual_fn`` is given, along ``residual_fn(grad_r)`` as row k' − 1 = k.
    """
    residual = None
    if residual_fn is not None:
        residual = residual_fn(grad_r, transformed=False)  # (A, 3)  dF
        probes = torch.cat([probes.to(pos.dtype), residual_fn(grad_r)[None]])
    pe, pg, phv = _prior_terms(potential, pos, batch, probes, bead_types, layout)
    hvp = hvp + phv  # (k', A, 3)
    out = EnergyForcesHVP(energy=energy + pe, forces=-(grad_r + pg), hvp=hvp)
    if residual_fn is not None:
        out.hvp, out.hvp_residual, out.force_residual = hvp[:-1], hvp[-1], residual
    return out


# ----------------------------------------------------------------------------- references
