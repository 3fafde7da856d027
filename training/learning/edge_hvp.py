"""Exact HVPs of CGSchNet on the edge list: forward-over-reverse with k probes as a tangent dimension.

Cost and memory scale with the number of neighbour pairs P (not with the n × n grid of the
dense path in :mod:`hessid.training.learning.derivatives`). Notation of that module's docstring
(docs/identities.md §5, model side): the network depends on R only through the pair distances
``d_p``; the distance filters ``W_p = φ(d_p)`` and their jets ``φ′, φ″`` are computed once per
pair; ``a_p = ∂U/∂d_p`` and

    H v = Jᵀ ȧ + Σ_p a_p ∇²_R d_p v,      ȧ = (∇²_d U) J v,      (J v)_p = u_p·(v_i − v_j)

where ȧ is the tangent (directional derivative along ``w = J v``) of the reverse pass. Here
the primal forward and reverse of the message passing are written out once on the directed
edge list (both directions of each pair, filter shared); the tangent of the forward and of
the reverse is then propagated for all k probes at once as a leading ``(k, ...)`` dimension
(batched tangents: one primal pass, no loop over probes, no autograd double backward).

Every per-probe edge operation is one of three custom autograd functions whose backward
re-gathers from node tensors instead of saving the gathered ``(k, E, F)`` edge tensors:

- :class:`EdgeConv` — ``out_i = Σ_{j∈N(i)} W_ij ⊙ h_j`` (continuous-filter convolution);
- :class:`EdgeDot`  — ``out_p = Σ_{directions} Σ_f x_{dst,f} q_{p,f}`` (per-pair contraction);
- :class:`EdgeScatter` — ``out_i = Σ_{e: dst=i} w_p q_e`` (its adjoint: scalar-weighted scatter).

So the θ-graph the loss backward walks holds per probe only node tensors ``(k, A, F)`` and
per-pair scalars ``(k, P)``: the saved-tensor memory per probe grows with the number of
beads, not with F × the number of edges.

Activations: every elementwise activation of TorchMD-Net with closed-form derivatives
(:func:`activation_derivatives`). This module imports nothing from the rest of hessid.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "PLAIN_EDGE_OPS_MAX_ELEMENTS",
    "SUPPORTED_ACTIVATIONS",
    "EdgeConv",
    "EdgeDot",
    "EdgeScatter",
    "activation_derivatives",
    "activation_jet",
    "edge_energy_forces_hvp",
]

_LN2 = math.log(2.0)

#: ``ModelConfig.activation`` names whose derivatives :func:`activation_derivatives` knows
SUPPORTED_ACTIVATIONS = ("silu", "swish", "ssp", "tanh", "sigmoid")


# ----------------------------------------------------------------------------- activations


def activation_derivatives(act: torch.nn.Module, x: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(x), f′(x), f″(x)`` of a TorchMD-Net activation module, elementwise, differentiable.

    Supported: ``SiLU`` (``x σ(x)``), ``Swish`` (``x σ(βx)``), ``ShiftedSoftplus``
    (``softplus(x) − ln 2``, with PyTorch's linear branch above x = 20 mirrored exactly),
    ``Tanh``, ``Sigmoid``.

    Args:
        act: the activation module (``torch.nn.SiLU()``, ``torchmdnet...ShiftedSoftplus()``, ...).
        x: pre-activations, any shape, float.

    Returns:
        three tensors shaped like x.

    Raises:
        ValueError: an activation without closed-form derivatives here (e.g. Mish).
    """
    name = type(act).__name__
    if name in ("SiLU", "Swish"):
        beta = float(getattr(act, "beta", 1.0))
        s = torch.sigmoid(beta * x)
        bx = beta * x
        return x * s, s * (1 + bx * (1 - s)), beta * s * (1 - s) * (2 + bx * (1 - 2 * s))
    if name == "ShiftedSoftplus":
        s = torch.sigmoid(x)
        # softplus(threshold=20) is the identity above x = 20; autograd's second derivative is
        # already 0 at x = 20 itself: mirrored, so the paths agree with autograd everywhere
        f0 = torch.nn.functional.softplus(x) - float(getattr(act, "shift", _LN2))
        return (f0, torch.where(x > 20.0, torch.ones_like(s), s),
                torch.where(x >= 20.0, torch.zeros_like(s), s * (1 - s)))
    if name == "Tanh":
        t = torch.tanh(x)
        return t, 1 - t * t, -2 * t * (1 - t * t)
    if name == "Sigmoid":
        s = torch.sigmoid(x)
        return s, s * (1 - s), s * (1 - s) * (1 - 2 * s)
    raise ValueError(f"exact HVP paths support silu/swish/ssp/tanh/sigmoid activations, not {name}")


def activation_jet(act: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Jet of ``act`` along dim 1: ``h = (h, h′, h″)`` or ``(h, h′)`` → ``(f, f′h′, f″h′² + f′h″)``."""
    f0, f1, f2 = activation_derivatives(act, h[:, 0])
    if h.shape[1] == 2:
        return torch.stack([f0, f1 * h[:, 1]], 1)
    return torch.stack([f0, f1 * h[:, 1], f2 * h[:, 1] ** 2 + f1 * h[:, 2]], 1)


# ----------------------------------------------------------------------------- edge ops
# Directed edges e = (dst ← src): the first P are (i ← j), the last P (j ← i), for the
# unordered pairs (i_p, j_p); a per-pair tensor serves both directions.


def _conv(h: torch.Tensor, w: torch.Tensor, dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    hs = h.index_select(-2, src).unflatten(-2, (2, w.shape[0]))  # (..., 2, P, F)
    return torch.zeros_like(h).index_add(-2, dst, (hs * w).flatten(-3, -2))


class EdgeConv(torch.autograd.Function):
    """``out[..., i, :] = Σ_{j ∈ N(i)} W_ij ⊙ h[..., j, :]`` on a symmetric edge list.

    forward(h (..., A, F), w (P, F), dst (2P,), src (2P,)) → (..., A, F); dst = cat(i, j),
    src = cat(j, i). Backward saves h and w only (node- and pair-sized) and re-gathers:
    ``∂/∂h = EdgeConv(g)`` (the edge list is symmetric) and ``∂/∂W_p = Σ_lead Σ_dirs
    g_dst ⊙ h_src``. Twice differentiable (the backward is built from differentiable ops).
    """

    @staticmethod
    def forward(ctx, h, w, dst, src):
        ctx.save_for_backward(h, w, dst, src)
        return _conv(h, w, dst, src)

    @staticmethod
    def backward(ctx, g):
        h, w, dst, src = ctx.saved_tensors
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = EdgeConv.apply(g, w, dst, src)
        if ctx.needs_input_grad[1]:
            prod = g.index_select(-2, dst) * h.index_select(-2, src)  # (..., 2P, F)
            gw = prod.reshape(-1, 2, w.shape[0], w.shape[1]).sum((0, 1))  # (P, F)
        return gh, gw, None, None


class EdgeDot(torch.autograd.Function):
    """``out[..., p] = Σ_{dir} Σ_f x[..., dst_{dir,p}, f] q[dir, p, f]`` (per-pair contraction).

    forward(x (..., A, F), q (2, P, F), dst (2P,)) → (..., P). The adjoint of
    :class:`EdgeScatter`. Backward saves x and q only: ``∂/∂x = EdgeScatter(g, q)``,
    ``∂/∂q = Σ_lead g x_dst``. Twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, q, dst):
        ctx.save_for_backward(x, q, dst)
        xd = x.index_select(-2, dst).unflatten(-2, (2, q.shape[1]))  # (..., 2, P, F)
        return (xd * q).sum((-1, -3))

    @staticmethod
    def backward(ctx, g):
        x, q, dst = ctx.saved_tensors
        gx = gq = None
        if ctx.needs_input_grad[0]:
            gx = EdgeScatter.apply(g, q, dst, x.shape[-2])
        if ctx.needs_input_grad[1]:
            xd = x.index_select(-2, dst).unflatten(-2, (2, q.shape[1]))  # (..., 2, P, F)
            gq = (g.unsqueeze(-2).unsqueeze(-1) * xd).reshape(-1, *q.shape).sum(0)  # (2, P, F)
        return gx, gq, None


class EdgeScatter(torch.autograd.Function):
    """``out[..., i, :] = Σ_{e: dst_e = i} w[..., p(e)] q[dir(e), p(e), :]`` (scalar-weighted scatter).

    forward(w (..., P), q (2, P, F), dst (2P,), n_nodes A) → (..., A, F). The adjoint of
    :class:`EdgeDot`. Backward saves w and q only (``index_add`` would save the
    ``(..., 2P, F)`` messages): ``∂/∂w = EdgeDot(g, q)``, ``∂/∂q = Σ_lead w g_dst``.
    """

    @staticmethod
    def forward(ctx, w, q, dst, n_nodes):
        ctx.save_for_backward(w, q, dst)
        m = (w.unsqueeze(-2).unsqueeze(-1) * q).flatten(-3, -2)  # (..., 2P, F)
        return m.new_zeros(*w.shape[:-1], n_nodes, q.shape[-1]).index_add(-2, dst, m)

    @staticmethod
    def backward(ctx, g):
        w, q, dst = ctx.saved_tensors
        gw = gq = None
        if ctx.needs_input_grad[0]:
            gw = EdgeDot.apply(g, q, dst)
        if ctx.needs_input_grad[1]:
            gd = g.index_select(-2, dst).unflatten(-2, (2, q.shape[1]))  # (..., 2, P, F)
            gq = (w.unsqueeze(-2).unsqueeze(-1) * gd).reshape(-1, *q.shape).sum(0)
        return gw, gq, None, None


def _plain_conv(h, w, dst, src):
    return _conv(h, w, dst, src)


def _plain_dot(x, q, dst):
    xd = x.index_select(-2, dst).unflatten(-2, (2, q.shape[1]))  # (..., 2, P, F)
    return (xd * q).sum((-1, -3))


def _plain_scatter(w, q, dst, n_nodes):
    m = (w.unsqueeze(-2).unsqueeze(-1) * q).flatten(-3, -2)  # (..., 2P, F)
    return m.new_zeros(*w.shape[:-1], n_nodes, q.shape[-1]).index_add(-2, dst, m)


#: ``edge_ops="auto"`` uses plain autograd ops while one gathered per-probe edge tensor
#: (k, 2P, F) has at most this many elements (8 MB in float32): small systems, where the
#: custom functions' Python overhead costs more than the memory they save (measured 5 × 16
#: beads, k = 4: 16 % less step time; 10 × 16: 13 %; 35 × 16: ≈5 %, within noise).
PLAIN_EDGE_OPS_MAX_ELEMENTS = 2**21


def _edge_ops(kind: str, n_elements: int):
    if kind == "auto":
        kind = "plain" if n_elements <= PLAIN_EDGE_OPS_MAX_ELEMENTS else "custom"
    if kind == "plain":
        return _plain_conv, _plain_dot, _plain_scatter
    if kind == "custom":
        return EdgeConv.apply, EdgeDot.apply, EdgeScatter.apply
    raise ValueError(f"edge_ops must be 'auto', 'plain' or 'custom', got {kind!r}")


# ----------------------------------------------------------------------------- the path


def edge_energy_forces_hvp(net: torch.nn.Module, pos: torch.Tensor, z: torch.Tensor,
                           batch: torch.Tensor, n_graphs: int, i: torch.Tensor, j: torch.Tensor,
                           jets: torch.Tensor, probes: torch.Tensor | None,
                           probe_chunk: int | None = None, residual_fn=None,
                           edge_ops: str = "auto",
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Network energy, ``∇_R U`` and ``H v`` by edge-list forward-over-reverse (module docstring).

    Args:
        net: TorchMD-Net ``TorchMD_Net`` with a ``TorchMD_GN`` representation and ``Scalar``
            output (``aggr="add"``), elementwise activation (:func:`activation_derivatives`).
        pos: (A, 3) Å, no graph needed (derivatives in R are analytic).
        z: (A,) int64 bead types.  batch: (A,) int64 structure index.  n_graphs: B.
        i, j: (P,) int64 pairs (i < j, same structure, inside the cutoffs; pairs outside
            would only add exact zeros).
        jets: (P, 3, L', F) filter jets ``(φ, φ′, φ″)`` w.r.t. d of all L' filters
            (``derivatives.filter_jets(..., order=2)``), carrying the θ-graph; (P, 2, L', F)
            (order 1) suffices without probes.
        probes: (k, A, 3) or None.
        probe_chunk: carry at most this many tangents at once (memory bound); None = all k.
        residual_fn: None, or a function ``∇_R U_net (A, 3) → (A, 3)`` whose (detached) value
            is appended to the probes as tangent k + 1 once the primal reverse has given
            ``∇_R U_net`` (the force residual of the Rao–Blackwellised loss, which depends on
            this very pass); requires probes.
        edge_ops: ``"custom"`` — :class:`EdgeConv`, :class:`EdgeDot`, :class:`EdgeScatter`
            (backward re-gathers: no (k, 2P, F) tensor saved); ``"plain"`` — the same
            formulas as plain autograd ops (saves the gathered edge tensors; less per-op
            overhead); ``"auto"`` — plain while k·2P·F ≤ :data:`PLAIN_EDGE_OPS_MAX_ELEMENTS`.
            Identical values either way.

    Returns:
        energy (B,) kcal/mol, grad (A, 3) kcal/mol/Å = ``∇_R U_net``, hvp (k, A, 3)
        kcal/mol/Å² (k + 1 rows with ``residual_fn``; None without probes); differentiable
        w.r.t. θ when grad mode is on.

    Raises:
        ValueError: probes given with filter jets of order < 2.
    """
    rep, out = net.representation_model, net.output_model
    A, P = pos.shape[0], i.shape[0]
    dt = pos.dtype
    dst, src = torch.cat([i, j]), torch.cat([j, i])  # (2P,)
    rij = pos[i] - pos[j]  # (P, 3)
    d = rij.norm(dim=-1)  # (P,)
    u = rij / d[:, None]  # (P, 3)
    k_all = 0 if probes is None else probes.shape[0] + (residual_fn is not None)
    if probe_chunk is not None:
        k_all = min(k_all, max(1, int(probe_chunk)))
    conv, dot, scatter = _edge_ops(edge_ops, max(k_all, 1) * 2 * P * jets.shape[-1])
    W, P1 = jets[:, 0], jets[:, 1]  # (P, L', F) each
    P2 = jets[:, 2] if jets.shape[1] > 2 else None  # order-1 jets: forces only

    def src_(h):  # (A, F) -> (2, P, F) node features at each edge's source
        return h.index_select(0, src).unflatten(0, (2, P))

    def dst_(h):
        return h.index_select(0, dst).unflatten(0, (2, P))

    # ---- primal forward
    ne = rep.neighbor_embedding
    x = rep.embedding(z)  # (A, F)
    F = x.shape[1]
    L0 = 0
    if ne is not None:
        e_ne = ne.embedding(z)
        cw = ne.combine.weight  # (F, 2F)
        x = x @ cw[:, :F].T + conv(e_ne, W[:, 0], dst, src) @ cw[:, F:].T + ne.combine.bias
        L0 = 1
    blocks = list(rep.interactions)
    saved = []
    for li_, blk in enumerate(blocks):
        h1 = x @ blk.conv.lin1.weight.T  # (A, F)
        h2 = blk.conv.lin2(conv(h1, W[:, li_ + L0], dst, src))
        s2, ds2, dds2 = activation_derivatives(blk.act, h2)
        x = x + blk.lin(s2)
        saved.append((h1, ds2, dds2))
    o1, o2 = out.output_network.layers[0], out.output_network.layers[2]
    so, dso, ddso = activation_derivatives(out.output_network.layers[1], o1(x))  # (A, H)
    e_atom = ((so @ o2.weight.T)[:, 0] + o2.bias) * net.std  # (A,)
    energy = torch.zeros(n_graphs, dtype=dt, device=pos.device).index_add(0, batch, e_atom) + net.mean
    # ---- primal reverse: g = ∂U/∂(.), a = ∂U/∂d, a2 = Σ g φ″ h (the ∂a/∂d-through-φ part)
    gy = net.std * o2.weight[0]  # (H,)
    gx = (gy * dso) @ o1.weight  # (A, F)
    rev = [None] * len(blocks)
    cs = [None] * (len(blocks) + L0)  # per filter: Σ_dirs g_dst ⊙ h_src, (P, F)
    for li_ in reversed(range(len(blocks))):
        blk, l = blocks[li_], li_ + L0
        h1, ds2, _ = saved[li_]
        g3 = gx @ blk.lin.weight  # (A, F)
        gagg = (g3 * ds2) @ blk.conv.lin2.weight  # (A, F)
        h1s, gs = src_(h1), src_(gagg)  # (2, P, F)
        cs[l] = (dst_(gagg) * h1s).sum(0)
        rev[li_] = (g3, gagg, P1[:, l] * h1s, P1[:, l] * gs)  # qs = φ′ h1_src, qg = φ′ g_src
        gx = gx + conv(gagg, W[:, l], dst, src) @ blk.conv.lin1.weight
    qs0 = None
    if ne is not None:
        gxn = gx @ cw[:, F:]
        e_s = src_(e_ne)
        cs[0] = (dst_(gxn) * e_s).sum(0)
        qs0 = P1[:, 0] * e_s
    c = torch.stack(cs, 1)  # (P, L', F)
    a = (P1 * c).sum((1, 2))  # (P,)  ∂U/∂d_p
    au = a[:, None] * u
    grad_r = torch.zeros_like(pos).index_add(0, i, au).index_add(0, j, -au)  # (A, 3)
    if probes is None:
        return energy, grad_r, None
    if P2 is None:
        raise ValueError("HVPs need order-2 filter jets (P, 3, L', F)")
    a2 = (P2 * c).sum((1, 2))  # (P,)
    # ---- tangents, all k probes at once: w = J v
    probes = probes.to(dt)
    if residual_fn is not None:  # known only now: the residual of this pass as tangent k + 1
        probes = torch.cat([probes, residual_fn(grad_r).detach().to(dt)[None]])
    chunk = max(probes.shape[0], 1) if probe_chunk is None else max(1, int(probe_chunk))
    parts = [probes.new_zeros(0, A, 3)]
    for start in range(0, probes.shape[0], chunk):
        v = probes[start : start + chunk]  # (k, A, 3)
        k = v.shape[0]
        dv = v[:, i] - v[:, j]  # (k, P, 3)
        w = (dv * u).sum(-1)  # (k, P)
        xd = None  # (k, A, F); the embedding does not depend on R
        if ne is not None:
            xd = scatter(w, qs0, dst, A) @ cw[:, F:].T
        fwd = []
        for li_, blk in enumerate(blocks):
            l = li_ + L0
            _, ds2, _ = saved[li_]
            aggd = scatter(w, rev[li_][2], dst, A)  # Σ_j w_ij φ′_ij h1_j
            h1d = None
            if xd is not None:
                h1d = xd @ blk.conv.lin1.weight.T
                aggd = aggd + conv(h1d, W[:, l], dst, src)
            h2d = aggd @ blk.conv.lin2.weight.T  # (k, A, F)
            xdl = (ds2 * h2d) @ blk.lin.weight.T
            xd = xdl if xd is None else xd + xdl
            fwd.append((h1d, h2d))
        gxd = (gy * ddso * (xd @ o1.weight.T)) @ o1.weight  # (k, A, F)
        ad = w * a2  # (k, P)
        for li_ in reversed(range(len(blocks))):
            blk, l = blocks[li_], li_ + L0
            _, ds2, dds2 = saved[li_]
            g3, gagg, qs, qg = rev[li_]
            h1d, h2d = fwd[li_]
            gaggd = (gxd @ blk.lin.weight * ds2 + g3 * dds2 * h2d) @ blk.conv.lin2.weight  # (k, A, F)
            ad = ad + dot(gaggd, qs, dst)
            if h1d is not None:
                ad = ad + dot(h1d, qg, dst)
            if li_ > 0 or ne is not None:  # the tangent of ∂U/∂x below this layer is needed
                g1d = scatter(w, qg, dst, A) + conv(gaggd, W[:, l], dst, src)
                gxd = gxd + g1d @ blk.conv.lin1.weight
        if ne is not None:
            ad = ad + dot(gxd @ cw[:, F:], qs0, dst)
        t = ad[..., None] * u + (a / d)[:, None] * (dv - u * w[..., None])  # (k, P, 3)
        hvp = torch.zeros(k, A, 3, dtype=dt, device=pos.device).index_add(1, i, t).index_add(1, j, -t)
        parts.append(hvp)
    return energy, grad_r, torch.cat(parts)
