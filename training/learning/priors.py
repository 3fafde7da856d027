"""Physical priors of a CG protein potential, fitted by Boltzmann inversion (CGSchNet style).

The prior is the fixed part of ``U_θ = U_prior + U_network`` (docs/identities.md §5 trains only the network):

- harmonic Cα bonds    ``½ k_b (r − r_0)²``           r: consecutive-bead distance, Å
- harmonic Cα angles   ``½ k_a (θ − θ_0)²``           θ: angle of three consecutive beads, rad
- Fourier dihedrals    ``Σ_n a_n cos nφ + b_n sin nφ`` φ: dihedral of four consecutive beads
- repulsion            ``ε (σ / r)^6``                 pairs |i − j| ≥ 3 of one chain

Each term is fitted from the CG coordinates of the training data by Boltzmann inversion of
its histogram, ``F(x) = −k_BT ln(p(x)/J(x))`` with the Jacobian ``J = r²`` (bonds),
``sin θ`` (angles) and 1 (dihedrals), then a weighted least-squares fit of the functional
form (counts as weights). The repulsion uses ``σ`` = the smallest non-bonded distance seen in
the data and ``ε = k_BT``.

Bonded terms are fitted per *class* (CGSchNet style): one parameter set per bead-type tuple
— bonds per (type_i, type_j), angles per triple, dihedrals per quadruple, a tuple and its
reverse being the same class (the bond length, angle and dihedral are all invariant under
reversal). A class with fewer than ``min_samples`` observations uses the *pooled* term, fitted
on all bonds (angles, dihedrals) together, which is also the term for any class unseen in
the training data. Without bead types every bond is one class (the pooled fit only). This
matters when bonds differ: the 5-bead alanine-dipeptide backbone has bonds of 1.33, 1.47,
1.55 and 1.34 Å, whose pooled harmonic fit (r0 = 1.17 Å) breaks every CG MD replica.

Prior-state versions (``PriorParameters.version``): 1 = pooled terms only (no ``version``
key in the saved dict; still loadable), 2 = pooled terms plus per-class terms.

Usage (deeptime's estimator/model split)::

    prior = PriorFit(temperature=300.0).fit(frames, bead_types=types).fetch_model()
    energy = prior.energy(positions, batch, bead_types)      # (B,) kcal/mol

``frames`` is a list of CG coordinate arrays ``(T, n, 3)`` in Å (one per protein), or of
:class:`hessid.training.learning.datasets.ProteinData`-like objects with a ``cg_coordinates`` attribute.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hessid.units import KB_KCAL_PER_MOL_K

__all__ = ["PRIOR_VERSION", "PriorFit", "PriorModel", "PriorParameters", "as_prior_model", "chain_indices"]

#: version of the prior state written by this hessid (see the module docstring)
PRIOR_VERSION = 2


@dataclass(frozen=True)
class PriorParameters:
    """Fitted prior parameters (plain floats; kcal/mol, Å, rad).

    Attributes:
        bond_k: bond force constant, kcal/mol/Å².
        bond_r0: equilibrium bond length, Å.
        angle_k: angle force constant, kcal/mol/rad².
        angle_theta0: equilibrium angle, rad.
        dihedral_cos: Fourier cosine coefficients a_1..a_N, kcal/mol.
        dihedral_sin: Fourier sine coefficients b_1..b_N, kcal/mol.
        repulsion_epsilon: repulsion strength ε, kcal/mol.
        repulsion_sigma: repulsion length σ, Å.
        temperature: temperature of the fit, K.
        bond_classes: per-class bond terms ``((type_i, type_j), k, r0)`` (types: indices into
            the potential's bead vocabulary, canonical order ``min(t, reversed t)``).
        angle_classes: per-class angle terms ``((t_i, t_j, t_k), k, theta0)``.
        dihedral_classes: per-class dihedrals ``((t_i, t_j, t_k, t_l), cos (N,), sin (N,))``.
        version: prior-state version (1 = pooled only, 2 = with classes).

    The scalar fields are the pooled terms, used for every class not listed.
    """

    bond_k: float = 100.0
    bond_r0: float = 3.8
    angle_k: float = 10.0
    angle_theta0: float = 1.8
    dihedral_cos: tuple[float, ...] = field(default_factory=tuple)
    dihedral_sin: tuple[float, ...] = field(default_factory=tuple)
    repulsion_epsilon: float = 0.6
    repulsion_sigma: float = 4.0
    temperature: float = 300.0
    bond_classes: tuple = ()
    angle_classes: tuple = ()
    dihedral_classes: tuple = ()
    version: int = PRIOR_VERSION

    def to_dict(self) -> dict:
        """Plain-Python dictionary (JSON and ``torch.load(weights_only=True)`` safe)."""
        d = asdict(self)
        d["dihedral_cos"] = list(self.dihedral_cos)
        d["dihedral_sin"] = list(self.dihedral_sin)
        d["bond_classes"] = [[list(t), float(k), float(x)] for t, k, x in self.bond_classes]
        d["angle_classes"] = [[list(t), float(k), float(x)] for t, k, x in self.angle_classes]
        d["dihedral_classes"] = [[list(t), [float(v) for v in c], [float(v) for v in sn]]
                                 for t, c, sn in self.dihedral_classes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PriorParameters:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown prior parameter keys {sorted(unknown)}")
        d = dict(d)
        d.setdefault("version", 1)  # version-1 states have no version key
        if int(d["version"]) > PRIOR_VERSION:
            raise ValueError(f"prior state version {d['version']} is newer than this hessid "
                             f"reads (<= {PRIOR_VERSION}); upgrade hessid")
        d["version"] = int(d["version"])
        d["dihedral_cos"] = tuple(float(x) for x in d.get("dihedral_cos", ()))
        d["dihedral_sin"] = tuple(float(x) for x in d.get("dihedral_sin", ()))
        d["bond_classes"] = tuple((tuple(int(v) for v in t), float(k), float(x))
                                  for t, k, x in d.get("bond_classes", ()))
        d["angle_classes"] = tuple((tuple(int(v) for v in t), float(k), float(x))
                                   for t, k, x in d.get("angle_classes", ()))
        d["dihedral_classes"] = tuple((tuple(int(v) for v in t), tuple(float(v) for v in c),
                                       tuple(float(v) for v in sn))
                                      for t, c, sn in d.get("dihedral_classes", ()))
        return cls(**d)

    @property
    def has_classes(self) -> bool:
        """Whether any per-class term exists (then the energy needs bead types)."""
        return bool(self.bond_classes or self.angle_classes or self.dihedral_classes)


def canonical_class(types) -> tuple[int, ...]:
    """Canonical bead-type tuple of a bonded term: ``min(t, reversed t)``."""
    t = tuple(int(v) for v in types)
    return min(t, t[::-1])


# ----------------------------------------------------------------------------- geometry


_INDEX_CACHE: dict = {}


def chain_indices(batch: torch.Tensor | None, counts: tuple[int, ...] | None = None,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Bonded and non-bonded index lists of graph-batched single chains.

    Beads of one structure are consecutive in the flattened layout and form one chain in
    order (the dataset's ``cg/bonds`` are the chain bonds ``(i, i+1)``).

    Args:
        batch: structure index of each bead, (A,) int64, non-decreasing; reading its bead
            counts is a host sync. None with ``counts``.
        counts: beads per structure (host ints), instead of reading them from ``batch``.
        device: where the lists go (default: ``batch.device``).

    Returns:
        dict with ``bonds`` (nb, 2), ``angles`` (na, 3), ``dihedrals`` (nd, 4) and
        ``pairs`` (np, 2) (|i − j| ≥ 3, same structure), all int64 on ``batch.device``.
    """
    if counts is None:
        counts = tuple(torch.bincount(batch).tolist()) if batch.numel() else ()
    device = batch.device if device is None else torch.device(device)
    key = (tuple(counts), str(device))
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    out: dict[str, list] = {"bonds": [], "angles": [], "dihedrals": [], "pairs": []}
    offset = 0
    for n in counts:
        idx = torch.arange(n) + offset
        for name, width in (("bonds", 2), ("angles", 3), ("dihedrals", 4)):
            if n >= width:
                out[name].append(torch.stack([idx[j : n - width + 1 + j] for j in range(width)], 1))
        if n >= 4:
            i, j = torch.triu_indices(n, n, offset=3)
            out["pairs"].append(torch.stack([i, j], 1) + offset)
        offset += n
    widths = {"bonds": 2, "angles": 3, "dihedrals": 4, "pairs": 2}
    result = {
        k: (torch.cat(v) if v else torch.zeros(0, widths[k], dtype=torch.long)).to(device)
        for k, v in out.items()
    }
    if len(_INDEX_CACHE) > 64:
        _INDEX_CACHE.clear()
    _INDEX_CACHE[key] = result
    return result


def _bond_lengths(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return (x[idx[:, 1]] - x[idx[:, 0]]).norm(dim=-1)  # (nb,)


def _angles(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    a = x[idx[:, 0]] - x[idx[:, 1]]  # (na, 3)
    b = x[idx[:, 2]] - x[idx[:, 1]]  # (na, 3)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.acos(cos.clamp(-1 + 1e-12, 1 - 1e-12))


def _dihedrals(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b0 = x[idx[:, 1]] - x[idx[:, 0]]  # (nd, 3)
    b1 = x[idx[:, 2]] - x[idx[:, 1]]
    b2 = x[idx[:, 3]] - x[idx[:, 2]]
    n1 = torch.linalg.cross(b0, b1)
    n2 = torch.linalg.cross(b1, b2)
    m1 = torch.linalg.cross(n1, b1 / b1.norm(dim=-1, keepdim=True))
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def _angle_jet(x: torch.Tensor, idx: torch.Tensor, v: torch.Tensor | None):
    """Angle θ (na,) of (x0, x1, x2) at x1, its gradient w.r.t. the three beads (3, na, 3) and
    the directional derivative of that gradient along v, (3, k, na, 3) (None without v)."""
    a, b = x[idx[:, 0]] - x[idx[:, 1]], x[idx[:, 2]] - x[idx[:, 1]]  # (na, 3)
    la, lb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)  # (na, 1)
    ah, bh = a / la, b / lb
    c = _dot(ah, bh)
    theta = torch.acos(c.clamp(-1 + 1e-12, 1 - 1e-12))[:, 0]  # as _angles
    s = torch.sqrt(1 - c * c)  # sin θ
    na_, nb_ = c * ah - bh, c * bh - ah
    da, db = la * s, lb * s
    pa, pb = na_ / da, nb_ / db  # ∂θ/∂a, ∂θ/∂b
    grad = torch.stack([pa, -(pa + pb), pb])  # (3, na, 3)
    if v is None:
        return theta, grad, None
    at, bt = v[:, idx[:, 0]] - v[:, idx[:, 1]], v[:, idx[:, 2]] - v[:, idx[:, 1]]  # (k, na, 3)
    lat, lbt = _dot(ah, at), _dot(bh, bt)  # (k, na, 1)
    aht, bht = (at - ah * lat) / la, (bt - bh * lbt) / lb
    ct = _dot(aht, bh) + _dot(ah, bht)
    st = -c * ct / s
    pat = (ct * ah + c * aht - bht - pa * (lat * s + la * st)) / da
    pbt = (ct * bh + c * bht - aht - pb * (lbt * s + lb * st)) / db
    thetat = _dot(pa, at) + _dot(pb, bt)  # (k, na, 1)  ∇θ·v
    return theta, grad, (torch.stack([pat, -(pat + pbt), pbt]), thetat)


def _dihedral_jet(x: torch.Tensor, idx: torch.Tensor, v: torch.Tensor | None):
    """Dihedral φ (nd,) of (x0, x1, x2, x3) (the angle of :func:`_dihedrals`), its gradient
    (4, nd, 3) and the directional derivative of the gradient along v (4, k, nd, 3)."""
    b0 = x[idx[:, 1]] - x[idx[:, 0]]  # (nd, 3)
    b1 = x[idx[:, 2]] - x[idx[:, 1]]
    b2 = x[idx[:, 3]] - x[idx[:, 2]]
    def cr(a, b):  # cross product, broadcasting the probe axis
        return torch.linalg.cross(*torch.broadcast_tensors(a, b))

    l1 = b1.norm(dim=-1, keepdim=True)
    d01, d12, d02, d11 = _dot(b0, b1), _dot(b1, b2), _dot(b0, b2), _dot(b1, b1)
    c12, c20, c01 = cr(b1, b2), cr(b2, b0), cr(b0, b1)
    vol = _dot(b0, c12)  # b0·(b1×b2)
    xx = d01 * d12 - d02 * d11  # (b0×b1)·(b1×b2)
    yy = -l1 * vol
    q = xx * xx + yy * yy
    phi = torch.atan2(yy, xx)[:, 0]
    gx = [d12 * b1 - d11 * b2, d01 * b2 + d12 * b0 - 2 * d02 * b1, d01 * b1 - d11 * b0]
    gy = [-l1 * c12, -(b1 / l1) * vol - l1 * c20, -l1 * c01]
    gphi = [(xx * gy_ - yy * gx_) / q for gx_, gy_ in zip(gx, gy, strict=True)]  # ∂φ/∂b_m
    grad = torch.stack([-gphi[0], gphi[0] - gphi[1], gphi[1] - gphi[2], gphi[2]])  # (4, nd, 3)
    if v is None:
        return phi, grad, None
    t0 = v[:, idx[:, 1]] - v[:, idx[:, 0]]  # (k, nd, 3)  tangents of b0, b1, b2
    t1 = v[:, idx[:, 2]] - v[:, idx[:, 1]]
    t2 = v[:, idx[:, 3]] - v[:, idx[:, 2]]
    d01t, d12t = _dot(t0, b1) + _dot(b0, t1), _dot(t1, b2) + _dot(b1, t2)
    d02t, d11t = _dot(t0, b2) + _dot(b0, t2), 2 * _dot(b1, t1)
    l1t = _dot(b1, t1) / l1
    volt = _dot(t0, c12) + _dot(t1, c20) + _dot(t2, c01)
    xt = sum(_dot(g, t) for g, t in zip(gx, (t0, t1, t2), strict=True))
    yt = sum(_dot(g, t) for g, t in zip(gy, (t0, t1, t2), strict=True))
    gxt = [d12t * b1 + d12 * t1 - d11t * b2 - d11 * t2,
           d01t * b2 + d01 * t2 + d12t * b0 + d12 * t0 - 2 * (d02t * b1 + d02 * t1),
           d01t * b1 + d01 * t1 - d11t * b0 - d11 * t0]
    gyt = [-l1t * c12 - l1 * (cr(t1, b2) + cr(b1, t2)),
           -(t1 / l1 - b1 * l1t / l1**2) * vol - (b1 / l1) * volt - l1t * c20
           - l1 * (cr(t2, b0) + cr(b2, t0)),
           -l1t * c01 - l1 * (cr(t0, b1) + cr(b0, t1))]
    qt = 2 * (xx * xt + yy * yt)
    gphit = [(xt * gy_ + xx * gyt_ - yt * gx_ - yy * gxt_ - gp * qt) / q
             for gx_, gy_, gxt_, gyt_, gp in zip(gx, gy, gxt, gyt, gphi, strict=True)]
    phit = (xx * yt - yy * xt) / q  # (k, nd, 1)  ∇φ·v
    hess = torch.stack([-gphit[0], gphit[0] - gphit[1], gphit[1] - gphit[2], gphit[2]])
    return phi, grad, (hess, phit)


def _chain_rule(idx, e1, e2, grad_q, jet, atoms, grads, hvps) -> None:
    """Append the gradient ``E′ ∇q`` and HVP ``E″ (∇q·v) ∇q + E′ ∇²q v`` of a term E(q) to
    the scatter lists, per bead of the term (``idx`` (m, w), ``grad_q`` (w, m, 3))."""
    for col in range(idx.shape[1]):
        atoms.append(idx[:, col])
        grads.append(e1[:, None] * grad_q[col])
    if jet is not None:
        hq, qt = jet  # (w, k, m, 3), (k, m, 1)
        for col in range(idx.shape[1]):
            hvps.append(e2[:, None] * qt * grad_q[col] + e1[:, None] * hq[col])


def _class_table(classes, width: int):
    """Dense lookup ``(n_vocab, table)``: table[key(types)] = class row (0 = pooled)."""
    if not classes:
        return 0, None
    n_vocab = 1 + max(max(c[0]) for c in classes)
    table = torch.zeros(n_vocab**width, dtype=torch.long)
    for row, c in enumerate(classes, start=1):
        for t in (tuple(c[0]), tuple(c[0])[::-1]):
            key = 0
            for v in t:
                key = key * n_vocab + int(v)
            table[key] = row
    return n_vocab, table


# ----------------------------------------------------------------------------- model


class PriorModel(torch.nn.Module):
    """Fitted prior energy ``U_prior(R)`` (fixed: its values are buffers, not parameters).

    Args:
        parameters: :class:`PriorParameters` from :class:`PriorFit`.
        dtype: torch dtype of the evaluation (float32 or float64).
    """

    def __init__(self, parameters: PriorParameters, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.parameters_ = parameters
        p = parameters
        t = lambda v: torch.as_tensor(v, dtype=dtype)  # noqa: E731
        self.register_buffer("bond_k", t(p.bond_k))
        self.register_buffer("bond_r0", t(p.bond_r0))
        self.register_buffer("angle_k", t(p.angle_k))
        self.register_buffer("angle_theta0", t(p.angle_theta0))
        self.register_buffer("dihedral_cos", t(list(p.dihedral_cos)).reshape(-1))
        self.register_buffer("dihedral_sin", t(list(p.dihedral_sin)).reshape(-1))
        self.register_buffer("repulsion_epsilon", t(p.repulsion_epsilon))
        self.register_buffer("repulsion_sigma", t(p.repulsion_sigma))
        # per-class tables: row 0 = pooled term, row c + 1 = class c; lookup from type tuples
        self.register_buffer("bond_k_c", t([p.bond_k] + [k for _, k, _ in p.bond_classes]))
        self.register_buffer("bond_r0_c", t([p.bond_r0] + [x for _, _, x in p.bond_classes]))
        self.register_buffer("angle_k_c", t([p.angle_k] + [k for _, k, _ in p.angle_classes]))
        self.register_buffer("angle_theta0_c",
                             t([p.angle_theta0] + [x for _, _, x in p.angle_classes]))
        n_f = len(p.dihedral_cos)
        for _, c, sn in p.dihedral_classes:
            if len(c) != n_f or len(sn) != n_f:
                raise ValueError(f"dihedral class has {len(c)}/{len(sn)} Fourier terms, pooled {n_f}")
        rows_c = [list(p.dihedral_cos)] + [list(c) for _, c, _ in p.dihedral_classes]
        rows_s = [list(p.dihedral_sin)] + [list(sn) for _, _, sn in p.dihedral_classes]
        self.register_buffer("dihedral_cos_c", t(rows_c).reshape(len(rows_c), n_f))  # (1+C, N)
        self.register_buffer("dihedral_sin_c", t(rows_s).reshape(len(rows_s), n_f))
        self._tables = {name: _class_table(classes, width) for name, classes, width in
                        (("bonds", p.bond_classes, 2), ("angles", p.angle_classes, 3),
                         ("dihedrals", p.dihedral_classes, 4))}

    @property
    def params(self) -> PriorParameters:
        """The immutable fitted parameters."""
        return self.parameters_

    def _class_rows(self, name: str, idx: torch.Tensor, bead_types: torch.Tensor | None):
        """Row of each term in the per-class tables (0 = pooled), (n,) int64."""
        n_vocab, table = self._tables[name]
        if table is None:
            return None
        if bead_types is None:
            raise ValueError("this prior has per-bead-type-class terms: pass bead_types "
                             "(A,) int64 to its energy")
        t = bead_types.long()[idx]  # (n, w)
        inside = (t < n_vocab).all(-1)
        key = torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
        for j in range(t.shape[1]):
            key = key * n_vocab + t[:, j].clamp(max=n_vocab - 1)
        rows = table.to(t.device)[key]
        return torch.where(inside, rows, torch.zeros_like(rows))

    def energy_terms(self, positions: torch.Tensor, batch: torch.Tensor,
                     bead_types: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-structure energy of each prior term.

        Args:
            positions: bead positions (A, 3), Å, graph-batched.
            batch: structure index of each bead (A,) int64, non-decreasing.
            bead_types: bead-type index of each bead (A,) int64 (the potential's vocabulary);
                required when the prior has per-class terms (:attr:`PriorParameters.has_classes`).

        Returns:
            dict ``bond``, ``angle``, ``dihedral``, ``repulsion`` → (B,) kcal/mol.

        Raises:
            ValueError: per-class terms but no ``bead_types``.
        """
        idx = chain_indices(batch)
        n_graphs = int(batch.max()) + 1 if batch.numel() else 0
        out = {}

        def reduce(values: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
            e = torch.zeros(n_graphs, dtype=positions.dtype, device=positions.device)
            return e.index_add(0, batch[owner], values)

        def per_term(name, pooled, table):
            rows = self._class_rows(name, idx[name], bead_types)
            return pooled if rows is None else table[rows]

        r = _bond_lengths(positions, idx["bonds"])
        bk = per_term("bonds", self.bond_k, self.bond_k_c)
        br0 = per_term("bonds", self.bond_r0, self.bond_r0_c)
        out["bond"] = reduce(0.5 * bk * (r - br0) ** 2, idx["bonds"][:, 0])
        th = _angles(positions, idx["angles"])
        ak = per_term("angles", self.angle_k, self.angle_k_c)
        a0 = per_term("angles", self.angle_theta0, self.angle_theta0_c)
        out["angle"] = reduce(0.5 * ak * (th - a0) ** 2, idx["angles"][:, 0])
        if self.dihedral_cos.numel() and idx["dihedrals"].shape[0]:
            phi = _dihedrals(positions, idx["dihedrals"])
            n = torch.arange(1, self.dihedral_cos.numel() + 1, dtype=positions.dtype,
                             device=positions.device)
            nphi = phi[:, None] * n  # (nd, N)
            dc = per_term("dihedrals", self.dihedral_cos, self.dihedral_cos_c)  # (N,) or (nd, N)
            ds = per_term("dihedrals", self.dihedral_sin, self.dihedral_sin_c)
            e = (torch.cos(nphi) * dc + torch.sin(nphi) * ds).sum(-1)
            out["dihedral"] = reduce(e, idx["dihedrals"][:, 0])
        else:
            out["dihedral"] = torch.zeros(n_graphs, dtype=positions.dtype, device=positions.device)
        pr = idx["pairs"]
        rr = _bond_lengths(positions, pr)
        out["repulsion"] = reduce(
            self.repulsion_epsilon * (self.repulsion_sigma / rr) ** 6, pr[:, 0]
        )
        return out

    def energy_gradient_hvp(self, positions: torch.Tensor, batch: torch.Tensor,
                            bead_types: torch.Tensor | None = None,
                            probes: torch.Tensor | None = None, n_graphs: int | None = None,
                            index: dict[str, torch.Tensor] | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Energy, gradient and Hessian-vector products of the prior in closed form.

        Every term is a function of one internal coordinate ``q`` (bond length, angle,
        dihedral, pair distance) with scalar derivatives ``E′(q)``, ``E″(q)``, so

            ∇U = Σ_terms E′ ∇q,        H v = Σ_terms E″ (∇q·v) ∇q + E′ (∇²q v),

        where ``∇q`` is written out analytically and ``∇²q v`` is its directional derivative
        along v (forward-mode by hand: every intermediate of ``∇q`` carries a tangent with a
        leading probe axis k, so all probes go through each term at once). Bonds and the
        repulsion are radial (``∇²r v = (dv − u (u·dv))/r``); the angle uses
        ``∇_a θ = (cos θ â − b̂)/(|a| sin θ)`` (a, b the bond vectors from the middle bead);
        the dihedral ``φ = atan2(y, x)`` with ``x = (b0×b1)·(b1×b2)``,
        ``y = −|b1| b0·(b1×b2)`` (the same angle as :meth:`energy_terms`), ``∇φ = (x∇y −
        y∇x)/(x² + y²)``. No autograd (the prior has no parameters to train): equal to the
        autograd gradient and Hessian times v to rounding (tests/training/learning/
        test_prior_hvp.py, float64, 1e-10).

        Args:
            positions: (A, 3) Å, graph-batched.
            batch: (A,) int64 structure index, non-decreasing.
            bead_types: (A,) int64; required with per-class terms.
            probes: (k, A, 3) probe vectors, or None (energy and gradient only).
            n_graphs: B (None: ``batch.max() + 1``, a host sync).
            index: :func:`chain_indices` of ``batch`` (None: looked up, a host sync).

        Returns:
            energy (B,) kcal/mol, gradient ``∂U/∂R`` (A, 3) kcal/mol/Å, hvp (k, A, 3)
            kcal/mol/Å² (None without probes); detached, in the positions' dtype.

        Raises:
            ValueError: per-class terms but no ``bead_types``.
        """
        with torch.no_grad():
            return self._energy_gradient_hvp(positions.detach(), batch, bead_types,
                                             None if probes is None else probes.detach(),
                                             n_graphs, index)

    def _energy_gradient_hvp(self, x, batch, bead_types, v, n_graphs, index):
        idx = chain_indices(batch) if index is None else index
        if n_graphs is None:
            n_graphs = int(batch.max()) + 1 if batch.numel() else 0
        dt, dev = x.dtype, x.device
        if v is not None:
            v = v.to(dt)
        owners, energies, atoms, grads, hvps = [], [], [], [], []

        def per_term(name, pooled, table):
            rows = self._class_rows(name, idx[name], bead_types)
            return pooled if rows is None else table[rows]

        def radial(pairs, f0, f1, f2, r, u):  # f(r) of the pair (i, j), r = |x_j − x_i|
            owners.append(pairs[:, 0])
            energies.append(f0)
            g = f1[:, None] * u  # (m, 3) ∂/∂x_j
            atoms.append(pairs[:, 1])
            atoms.append(pairs[:, 0])
            grads.extend([g, -g])
            if v is not None:
                dv = v[:, pairs[:, 1]] - v[:, pairs[:, 0]]  # (k, m, 3)
                uv = _dot(dv, u)  # (k, m, 1)
                t = f2[:, None] * uv * u + (f1 / r)[:, None] * (dv - u * uv)  # (k, m, 3)
                hvps.extend([t, -t])

        def distances(pairs):
            d = x[pairs[:, 1]] - x[pairs[:, 0]]  # (m, 3)
            r = d.norm(dim=-1)  # (m,)
            return r, d / r[:, None]

        # bonds: ½ k (r − r0)²
        bonds = idx["bonds"]
        r, u = distances(bonds)
        bk = per_term("bonds", self.bond_k, self.bond_k_c).to(dt)
        dr = r - per_term("bonds", self.bond_r0, self.bond_r0_c).to(dt)
        radial(bonds, 0.5 * bk * dr**2, bk * dr, bk.expand_as(r), r, u)
        # repulsion: ε (σ/r)⁶
        pairs = idx["pairs"]
        r, u = distances(pairs)
        e = self.repulsion_epsilon.to(dt) * (self.repulsion_sigma.to(dt) / r) ** 6
        radial(pairs, e, -6 * e / r, 42 * e / r**2, r, u)
        # angles: ½ k (θ − θ0)²
        ang = idx["angles"]
        ak = per_term("angles", self.angle_k, self.angle_k_c).to(dt)
        a0 = per_term("angles", self.angle_theta0, self.angle_theta0_c).to(dt)
        th, gth, hth = _angle_jet(x, ang, v)
        owners.append(ang[:, 0])
        energies.append(0.5 * ak * (th - a0) ** 2)
        e1, e2 = ak * (th - a0), ak.expand_as(th)
        _chain_rule(ang, e1, e2, gth, hth, atoms, grads, hvps)
        # dihedrals: Σ_n a_n cos nφ + b_n sin nφ
        dih = idx["dihedrals"]
        if self.dihedral_cos.numel() and dih.shape[0]:
            phi, gphi, hphi = _dihedral_jet(x, dih, v)
            n = torch.arange(1, self.dihedral_cos.numel() + 1, dtype=dt, device=dev)
            c = per_term("dihedrals", self.dihedral_cos, self.dihedral_cos_c).to(dt)
            sn = per_term("dihedrals", self.dihedral_sin, self.dihedral_sin_c).to(dt)
            cos, sin = torch.cos(phi[:, None] * n), torch.sin(phi[:, None] * n)  # (nd, N)
            owners.append(dih[:, 0])
            energies.append((cos * c + sin * sn).sum(-1))
            e1 = (n * (sin * -c + cos * sn)).sum(-1)
            e2 = -(n**2 * (cos * c + sin * sn)).sum(-1)
            _chain_rule(dih, e1, e2, gphi, hphi, atoms, grads, hvps)
        owner = batch[torch.cat(owners)]
        energy = torch.zeros(n_graphs, dtype=dt, device=dev).index_add(0, owner, torch.cat(energies))
        at = torch.cat(atoms)
        grad = torch.zeros_like(x).index_add(0, at, torch.cat(grads))
        hvp = None
        if v is not None:
            hvp = torch.zeros_like(v).index_add(1, at, torch.cat(hvps, 1))
        return energy, grad, hvp

    def forward(self, positions: torch.Tensor, batch: torch.Tensor,
                bead_types: torch.Tensor | None = None) -> torch.Tensor:
        """Prior energy per structure, (B,) kcal/mol (positions (A, 3) Å, batch (A,),
        bead_types (A,) — required with per-class terms)."""
        return sum(self.energy_terms(positions, batch, bead_types).values())

    energy = forward

    def forces(self, positions: torch.Tensor, batch: torch.Tensor,
               bead_types: torch.Tensor | None = None) -> torch.Tensor:
        """Prior forces ``−∂U_prior/∂R``, (A, 3) kcal/mol/Å."""
        x = positions.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x, batch, bead_types).sum(), x)
        return -g

    def save(self, path) -> None:
        """Write the parameters as JSON (the model checkpoint embeds them too)."""
        with open(path, "w") as fh:
            json.dump(self.params.to_dict(), fh, indent=1)


def as_prior_model(prior: PriorModel | PriorParameters | None, dtype: torch.dtype) -> PriorModel | None:
    """The prior a potential holds, built in the potential's dtype.

    A :class:`PriorModel` is rebuilt from its float parameters (a buffer cast float32 → float64
    would differ from the checkpoint's float values).

    Args:
        prior: fitted parameters, a prior model (any dtype) or None.
        dtype: the potential's floating dtype (float32 or float64).

    Returns:
        a new :class:`PriorModel` in ``dtype``, or None when ``prior`` is None.
    """
    if isinstance(prior, PriorModel):
        prior = prior.params
    return PriorModel(prior, dtype=dtype) if prior is not None else None


# ----------------------------------------------------------------------------- estimator


def _boltzmann_inversion(values: np.ndarray, bins: int, lo: float, hi: float, jacobian, kT: float):
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centers = 0.5 * (edges[1:] + edges[:-1])
    keep = (counts > 0) & (jacobian(centers) > 0)
    p = counts[keep] / counts.sum() / np.diff(edges)[keep]
    free = -kT * np.log(p / jacobian(centers[keep]))
    return centers[keep], free, counts[keep].astype(float)


def _fit_harmonic(values: np.ndarray, jacobian, kT: float, periodic=False) -> tuple[float, float]:
    """Weighted LSQ fit of ``½k(x−x0)² + c`` to the Boltzmann-inverted histogram.

    Bins: 60, fewer for small samples (√n, at least 10) so the histogram stays populated.
    """
    mean, std = float(values.mean()), float(values.std())
    if not np.isfinite(std) or std <= 1e-8 * max(abs(mean), 1.0):
        raise ValueError("cannot fit a harmonic prior: the data has zero spread")
    lo, hi = mean - 4 * std, mean + 4 * std
    bins = int(min(60, max(10, math.isqrt(values.size))))
    x, f, w = _boltzmann_inversion(values, bins, lo, hi, jacobian, kT)
    if x.size >= 3:
        A = np.stack([x**2, x, np.ones_like(x)], 1) * np.sqrt(w)[:, None]
        c2, c1, _ = np.linalg.lstsq(A, f * np.sqrt(w), rcond=None)[0]
        if c2 > 0:
            return float(2 * c2), float(-c1 / (2 * c2))
    return kT / std**2, mean  # Gaussian moments (the same inversion for a normal law)


class PriorFit:
    """Estimator of :class:`PriorModel` by Boltzmann inversion (see module docstring).

    Args:
        temperature: temperature of the data, K (sets k_BT in kcal/mol).
        n_fourier: number of dihedral Fourier terms N (a_n cos nφ + b_n sin nφ, n = 1..N).
        repulsion_scale: σ is this times the smallest non-bonded distance seen (Å/Å).
        min_samples: a bead-type class needs at least this many observations (bonds, angles
            or dihedrals of that class over all frames) for its own term; fewer → pooled term.
    """

    def __init__(self, temperature: float = 300.0, n_fourier: int = 3, repulsion_scale: float = 1.0,
                 min_samples: int = 100):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be >= 2, got {min_samples}")
        self.temperature = float(temperature)
        self.n_fourier = int(n_fourier)
        self.repulsion_scale = float(repulsion_scale)
        self.min_samples = int(min_samples)
        self._model: PriorParameters | None = None
        self.class_counts: dict = {}

    def fit(self, data, bead_types=None) -> PriorFit:
        """Fit to CG coordinates.

        Args:
            data: list of arrays (T, n, 3) Å (one per protein), a single such array, or
                objects with a ``cg_coordinates`` attribute of that shape.
            bead_types: None (one class per term: the pooled fit only), or the bead-type
                indices of each protein, a list of (n,) int arrays parallel to ``data`` (a
                single (n,) array with a single protein). Indices must be those of the
                potential's bead vocabulary.

        Returns:
            self.

        Raises:
            ValueError: no frames, fewer than 4 beads, a degenerate distribution, or
                bead_types that do not match the data.
        """
        if isinstance(data, (np.ndarray, torch.Tensor)):
            data = [data]
        arrays = []
        for item in data:
            arr = getattr(item, "cg_coordinates", item)
            arr = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr,
                             dtype=np.float64)
            if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[1] < 4 or arr.shape[0] < 1:
                raise ValueError(f"expected CG coordinates (T, n>=4, 3), got {arr.shape}")
            arrays.append(arr)
        if not arrays:
            raise ValueError("PriorFit.fit needs at least one protein")
        types = None
        if bead_types is not None:
            if isinstance(bead_types, (np.ndarray, torch.Tensor)) and np.ndim(bead_types) == 1:
                bead_types = [bead_types]
            types = [np.asarray(t, dtype=np.int64).reshape(-1) for t in bead_types]
            if len(types) != len(arrays) or any(t.size != a.shape[1] for t, a in zip(types, arrays, strict=False)):
                raise ValueError(f"bead_types {[t.shape for t in types]} do not match the data "
                                 f"{[a.shape for a in arrays]}: one (n,) array per protein")
            if any((t < 0).any() for t in types):
                raise ValueError("bead_types must be non-negative")
        kT = KB_KCAL_PER_MOL_K * self.temperature
        values = {"bonds": [], "angles": [], "dihedrals": []}
        keys = {"bonds": [], "angles": [], "dihedrals": []}
        nonbonded = []
        for pi, arr in enumerate(arrays):
            T, n, _ = arr.shape
            x = torch.as_tensor(arr.reshape(T * n, 3))  # (T*n, 3)
            batch = torch.arange(T).repeat_interleave(n)
            idx = chain_indices(batch)
            for name, fn in (("bonds", _bond_lengths), ("angles", _angles), ("dihedrals", _dihedrals)):
                values[name].append(fn(x, idx[name]).numpy())
                if types is not None:  # class of each term: the same for every frame
                    one = chain_indices(torch.zeros(n, dtype=torch.long))[name].numpy()  # (m, w)
                    cls = [canonical_class(types[pi][row]) for row in one]
                    keys[name].extend(cls * T)  # frame-major, matching values
            nonbonded.append(_bond_lengths(x, idx["pairs"]).min().item())
        v = {k: np.concatenate(x) for k, x in values.items()}
        bond_k, bond_r0 = _fit_harmonic(v["bonds"], lambda r: r**2, kT)
        angle_k, angle_theta0 = _fit_harmonic(v["angles"], np.sin, kT)
        cos_c, sin_c = self._fit_fourier(v["dihedrals"], kT)
        classes = {"bonds": [], "angles": [], "dihedrals": []}
        self.class_counts = {"bonds": {}, "angles": {}, "dihedrals": {}}
        if types is not None:
            for name in classes:
                labels = np.array(keys[name], dtype=np.int64).reshape(len(v[name]), -1)
                uniq, inverse = np.unique(labels, axis=0, return_inverse=True)
                inverse = inverse.reshape(-1)
                for ci, cl in enumerate(uniq):
                    sample = v[name][inverse == ci]
                    key = tuple(int(t) for t in cl)
                    self.class_counts[name][key] = int(sample.size)
                    if sample.size < self.min_samples:
                        continue  # too few: the pooled term
                    if name == "dihedrals":
                        c, sn = self._fit_fourier(sample, kT)
                        classes[name].append((key, tuple(c), tuple(sn)))
                        continue
                    jac = (lambda r: r**2) if name == "bonds" else np.sin
                    try:
                        kk, x0 = _fit_harmonic(sample, jac, kT)
                    except ValueError:
                        continue  # degenerate class (e.g. constrained): the pooled term
                    classes[name].append((key, kk, x0))
        self._model = PriorParameters(
            bond_k=bond_k, bond_r0=bond_r0, angle_k=angle_k, angle_theta0=angle_theta0,
            dihedral_cos=tuple(cos_c), dihedral_sin=tuple(sin_c), repulsion_epsilon=kT,
            repulsion_sigma=self.repulsion_scale * min(nonbonded), temperature=self.temperature,
            bond_classes=tuple(classes["bonds"]), angle_classes=tuple(classes["angles"]),
            dihedral_classes=tuple(classes["dihedrals"]),
        )
        return self

    def _fit_fourier(self, phi: np.ndarray, kT: float):
        if self.n_fourier <= 0:
            return [], []
        counts, edges = np.histogram(phi, bins=36, range=(-math.pi, math.pi))
        centers = 0.5 * (edges[1:] + edges[:-1])
        p = (counts + 1.0) / (counts.sum() + counts.size)  # pseudocount: empty bins stay finite
        free = -kT * np.log(p)
        free -= free.mean()
        n = np.arange(1, self.n_fourier + 1)
        A = np.concatenate([np.cos(np.outer(centers, n)), np.sin(np.outer(centers, n))], 1)
        coef = np.linalg.lstsq(A, free, rcond=None)[0]
        return coef[: self.n_fourier].tolist(), coef[self.n_fourier :].tolist()

    def fetch_model(self, dtype: torch.dtype = torch.float32) -> PriorModel:
        """The fitted :class:`PriorModel`; ``ValueError`` before :meth:`fit`."""
        if self._model is None:
            raise ValueError("PriorFit.fetch_model() called before fit()")
        return PriorModel(self._model, dtype=dtype)
