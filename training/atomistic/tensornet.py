"""TorchMD-Net's TensorNet forward written in plain torch ops, so that positions can be
differentiated to any order and under ``vmap`` (docs/atomistic_learning.md, "Model").

The installed torchmd-net runs TensorNet through compiled warp kernels when ``warp-lang`` is
present: they give energies and forces, but have no batching rule (so no batched
Hessian-vector products) and no autograd formula beyond the second derivative (so an HVP
loss cannot be back-propagated to the weights). This module evaluates the *same* module
(its weights, its RBF, cutoff, embedding, LayerNorm and Linear submodules) with the
reference torch expressions torchmd-net itself uses when warp is absent
(``tensornet_embedding_message_passing``, ``tensornet_interaction_message_passing``,
``_decompose_tensor``, ...), re-stated here because the library binds the warp versions at
import; LayerNorm is written out too (:func:`layer_norm`: torch's fused kernel has a wrong
third derivative). The neighbour list is all ordered pairs of atoms of one molecule closer than the
upper cutoff plus one self-loop per atom (``OptimizedDistance(loop=True)``); pairs beyond the
cutoff carry the factor ``CosineCutoff = 0`` and zero derivatives, so dropping them is
exact. ``tests/training/atomistic/test_model.py`` checks equality with the library forward
to round-off in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["layer_norm", "pair_graph", "tensornet_features"]


def pair_graph(positions: Tensor, batch: Tensor, cutoff_upper: float,
               cutoff_lower: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """TensorNet's graph: ordered pairs (i, j), i ≠ j, of one molecule with
    ``cutoff_lower ≤ d_ij < cutoff_upper``, then one self-loop per atom.

    Args:
        positions: (A, 3) Å, atoms of B molecules flattened (graph layout).
        batch: (A,) int64 molecule index.
        cutoff_upper, cutoff_lower: Å.

    Returns:
        ``edge_index`` (2, E) int64 (receiver i, sender j), ``edge_weight`` (E,) Å (0 on
        self-loops, no gradient there), ``edge_vec`` (E, 3) Å, ``r_i − r_j`` (0 on self-loops).
    """
    n = positions.shape[0]
    with torch.no_grad():
        same = batch[:, None] == batch[None, :]  # (A, A)
        d = torch.cdist(positions.detach(), positions.detach())
        keep = same & (d < cutoff_upper) & (d >= cutoff_lower)
        keep.fill_diagonal_(False)
        i, j = torch.nonzero(keep, as_tuple=True)
    vec = positions[i] - positions[j]  # (P, 3)
    weight = vec.norm(dim=-1)  # (P,) never 0: i ≠ j atoms do not coincide
    loops = torch.arange(n, device=positions.device)
    edge_index = torch.stack([torch.cat([i, loops]), torch.cat([j, loops])])  # (2, E)
    edge_weight = torch.cat([weight, positions.new_zeros(n)])
    edge_vec = torch.cat([vec, positions.new_zeros(n, 3)])
    return edge_index, edge_weight, edge_vec


def layer_norm(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """``norm(x)`` over the last axis in elementary ops. torch's fused ``layer_norm`` has a
    double backward whose own derivative is wrong (torch 2.13, CPU: ``gradcheck`` of the
    weight-gradient of a layer-norm HVP fails), which would corrupt the θ-gradient of an HVP
    loss; this form is differentiable to any order and equal to round-off."""
    c = x - x.mean(-1, keepdim=True)
    y = c / torch.sqrt((c * c).mean(-1, keepdim=True) + norm.eps)
    return y * norm.weight + norm.bias if norm.elementwise_affine else y


def _eye_tensor(s: Tensor) -> Tensor:
    """s (N, F) → s δ_ab (N, 3, 3, F)."""
    return s[:, None, None, :] * torch.eye(3, dtype=s.dtype, device=s.device)[None, :, :, None]


def _decompose(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 3, 3, F) → trace part I (N, F), skew A, symmetric traceless S (N, 3, 3, F)."""
    a = 0.5 * (t - t.transpose(1, 2))
    s = t - a
    i = t.diagonal(dim1=1, dim2=2).mean(-1)
    return i, a, s - _eye_tensor(i)


def _compose(i: Tensor, a: Tensor, s: Tensor) -> Tensor:
    return _eye_tensor(i) + a + s


def _norm2(t: Tensor) -> Tensor:
    """Squared Frobenius norm over the 3×3 axes: (N, 3, 3, F) → (N, F)."""
    return (t**2).sum((1, 2))


def _skew(v: Tensor) -> Tensor:
    """(N, 3, F) vectors → skew tensors (N, 3, 3, F)."""
    zero = torch.zeros_like(v[:, 0])
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    rows = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=1)  # (N, 9, F)
    return rows.view(v.shape[0], 3, 3, v.shape[-1])


def _unskew(t: Tensor) -> Tensor:
    f = t.flatten(1, 2)
    return 0.5 * torch.stack((f[:, 7] - f[:, 5], f[:, 2] - f[:, 6], f[:, 3] - f[:, 1]), dim=1)


def _sym_traceless(t: Tensor) -> Tensor:
    s = 0.5 * (t + t.transpose(1, 2))
    return s - _eye_tensor(t.diagonal(dim1=1, dim2=2).mean(-1))


def _gather_add(edge_index: Tensor, factor: Tensor, x: Tensor, n: int) -> Tensor:
    """Σ_j factor_ij x_j over the edges into i: x (N, ...), factor (E, ...) → (N, ...)."""
    msg = factor * x.index_select(0, edge_index[1])
    return torch.zeros((n,) + x.shape[1:], dtype=x.dtype, device=x.device).index_add(0, edge_index[0], msg)


def _embedding(emb, z: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_vec_norm: Tensor,
               edge_attr: Tensor) -> Tensor:
    """TensorEmbedding.forward (reference path): → X (N, 3, 3, F)."""
    n, f = z.shape[0], emb.hidden_channels
    zz = emb.emb(z)
    zij = emb.emb2(zz.index_select(0, edge_index.t().reshape(-1)).view(-1, 2 * f))  # (E, F)
    dp = torch.stack([emb.distance_proj1(edge_attr), emb.distance_proj2(edge_attr),
                      emb.distance_proj3(edge_attr)], dim=1)  # (E, 3, F)
    w = (emb.cutoff(edge_weight)[:, None] * zij)[:, None, :] * dp  # (E, 3, F)
    idx = edge_index[0]
    i = torch.zeros(n, f, dtype=w.dtype, device=w.device).index_add(0, idx, w[:, 0])
    a_vec = torch.zeros(n, 3, f, dtype=w.dtype, device=w.device).index_add(
        0, idx, w[:, 1, None, :] * edge_vec_norm[..., None])
    outer = edge_vec_norm[:, :, None] * edge_vec_norm[:, None, :]  # (E, 3, 3)
    s = torch.zeros(n, 3, 3, f, dtype=w.dtype, device=w.device).index_add(
        0, idx, w[:, 2, None, None, :] * outer[..., None])
    a, s = _skew(a_vec), _sym_traceless(s)
    norm = layer_norm(_norm2(_compose(i, a, s)), emb.init_norm)
    for lin in emb.linears_scalar:
        norm = emb.act(lin(norm))
    norm = norm.reshape(-1, 3, f)
    i = emb.linears_tensor[0](i) * norm[:, 0, :]
    a = emb.linears_tensor[1](a) * norm[:, 1, None, None, :]
    s = emb.linears_tensor[2](s) * norm[:, 2, None, None, :]
    return _compose(i, a, s)


def _matmul(x: Tensor, y: Tensor) -> Tensor:
    """Per-channel 3×3 product x·y of (N, 3, 3, F) tensors."""
    return torch.matmul(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _interaction(layer, x: Tensor, edge_index: Tensor, edge_weight: Tensor,
                 edge_attr: Tensor) -> Tensor:
    """Interaction.forward (reference path, zero charge): X (N, 3, 3, F) → X'."""
    n, f = x.shape[0], layer.hidden_channels
    c = layer.cutoff(edge_weight)
    for lin in layer.linears_scalar:
        edge_attr = layer.act(lin(edge_attr))
    edge_attr = (edge_attr * c.view(-1, 1)).reshape(edge_attr.shape[0], 3, f)  # (E, 3, F)
    x = x / (_norm2(x) + 1)[:, None, None, :]
    i, a, s = _decompose(x)
    i, a, s = layer.linears_tensor[0](i), layer.linears_tensor[1](a), layer.linears_tensor[2](s)
    y = _compose(i, a, s)
    im = _gather_add(edge_index, edge_attr[:, 0, :], i, n)
    am = _skew(_gather_add(edge_index, edge_attr[:, 1, None, :], _unskew(a), n))
    sm = _gather_add(edge_index, edge_attr[:, 2, None, None, :], s, n)
    msg = _compose(im, am, sm)
    if layer.equivariance_invariance_group == "O(3)":
        c3 = _matmul(msg, y) + _matmul(y, msg)
    else:
        c3 = 2 * _matmul(y, msg)
    i, a, s = _decompose(c3)
    normp1 = _norm2(c3) + 1
    i, a, s = i / normp1, a / normp1[:, None, None, :], s / normp1[:, None, None, :]
    i, a, s = layer.linears_tensor[3](i), layer.linears_tensor[4](a), layer.linears_tensor[5](s)
    dx = _compose(i, a, s)
    return x + dx + _matmul(dx, dx)


def tensornet_features(rep, species: Tensor, positions: Tensor, batch: Tensor) -> Tensor:
    """Per-atom scalar features of a ``torchmdnet.models.tensornet.TensorNet`` (no box, zero
    total charge), computed with plain torch ops (any derivative order, vmap-able).

    Args:
        rep: the TensorNet module (its weights are used as they are).
        species: (A,) int64 atomic numbers (< ``rep.tensor_embedding.max_z``).
        positions: (A, 3) Å.
        batch: (A,) int64 molecule index.

    Returns:
        (A, hidden_channels) features; ``TorchMD_Net``'s output head maps them to atomic
        energies.
    """
    edge_index, edge_weight, edge_vec = pair_graph(positions, batch, rep.cutoff_upper,
                                                   rep.cutoff_lower)
    edge_attr = rep.distance_expansion(edge_weight)  # (E, R)
    loop = edge_index[0] == edge_index[1]
    edge_vec = edge_vec / edge_weight.masked_fill(loop, 1)[:, None]
    x = _embedding(rep.tensor_embedding, species, edge_index, edge_weight, edge_vec, edge_attr)
    for layer in rep.layers:
        x = _interaction(layer, x, edge_index, edge_weight, edge_attr)
    i, a, s = _decompose(x)
    feats = torch.cat((3 * i**2, _norm2(a), _norm2(s)), dim=-1)
    return rep.act(rep.linear(layer_norm(feats, rep.out_norm)))
