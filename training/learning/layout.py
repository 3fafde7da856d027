"""Host-side layout of a graph batch, read back once per batch object (issue 15, host syncs).

A training step needs a few facts about the batch that live on the host: the number of
structures B, the beads per structure, the index lists built from them (all same-structure
pairs, the chain's bonds/angles/dihedrals, the frames grouped by size) and whether the bead
types lie in the vocabulary. Each of these, computed from device tensors, is a host sync
(``bincount(...).tolist()``, ``int(batch.max())``, ``torch.unique``, ``nonzero``); computed
separately by every function of the step they were about six per step.
:func:`batch_layout` reads them back in ONE transfer the first time it sees a given ``batch``
tensor (and bead-type tensor) and caches the result on that object's identity, so every
later call in the same step (forces/HVPs, the prior, the losses) is sync-free.

The cache holds a weak reference to the tensor and its in-place version counter: a tensor
that was freed (its id reused) or modified in place is read again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from hessid.training.learning.priors import chain_indices

__all__ = ["BatchLayout", "batch_layout", "check_graph_batch"]


@dataclass
class BatchLayout:
    """Host facts of a graph batch (:func:`batch_layout`).

    Attributes:
        counts: beads per structure, B host ints.
        n_graphs: B.
        types_range: (min, max) of the bead types (host ints), or None when not given.
    """

    counts: tuple[int, ...]
    n_graphs: int
    types_range: tuple[int, int] | None
    device: torch.device = field(default=torch.device("cpu"), repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    _types_key: tuple | None = field(default=None, repr=False)

    def all_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All unordered same-structure pairs ``(i, j)``, i < j, each (P_all,) int64 on the
        batch's device (built on the host from ``counts``: no sync)."""
        if "pairs" not in self._cache:
            ii, jj, offset = [], [], 0
            for n in self.counts:
                i, j = torch.triu_indices(n, n, offset=1)
                ii.append(i + offset)
                jj.append(j + offset)
                offset += n
            dev = self.device
            empty = torch.zeros(0, dtype=torch.long)
            self._cache["pairs"] = (torch.cat(ii or [empty]).to(dev), torch.cat(jj or [empty]).to(dev))
        return self._cache["pairs"]

    def chain(self) -> dict[str, torch.Tensor]:
        """:func:`~hessid.training.learning.priors.chain_indices` of the batch (no sync)."""
        if "chain" not in self._cache:
            self._cache["chain"] = chain_indices(None, counts=self.counts, device=self.device)
        return self._cache["chain"]

    def size_groups(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Frames grouped by bead count: ``(frames (B_g,), atoms (B_g·n,), n)`` per count, in
        increasing n; ``atoms`` are the rows of those frames' beads frame by frame (no sync)."""
        if "groups" not in self._cache:
            starts, s = [], 0
            for n in self.counts:
                starts.append(s)
                s += n
            dev = self.device
            groups = []
            for n in sorted(set(self.counts)):
                frames = [b for b, c in enumerate(self.counts) if c == n]
                atoms = [a for b in frames for a in range(starts[b], starts[b] + n)]
                groups.append((torch.tensor(frames, dtype=torch.long).to(dev),
                               torch.tensor(atoms, dtype=torch.long).to(dev), n))
            self._cache["groups"] = groups
        return self._cache["groups"]


def check_graph_batch(positions: torch.Tensor, bead_types: torch.Tensor, batch: torch.Tensor | None,
                      n_types: int | None = None) -> torch.Tensor:
    """Check the shapes of a graph batch (B structures' beads flattened along one axis).

    Args:
        positions: (A, 3) bead positions, Å.
        bead_types: (A,) int64 index into the bead vocabulary.
        batch: (A,) int64 structure index of each bead, or None (one structure).
        n_types: vocabulary size; when given, ``bead_types`` must lie in [0, n_types) (one host
            read of their min and max). None: the range is not checked here (callers that read
            it through :func:`batch_layout` check it there, without a further sync).

    Returns:
        ``batch`` (A,) int64 (zeros on the positions' device when None).

    Raises:
        ValueError: positions not (A, 3); bead_types or batch not (A,); a bead type outside
            [0, n_types).
    """
    if positions.ndim != 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must be (A, 3), got {tuple(positions.shape)}")
    if bead_types.shape != positions.shape[:1]:
        raise ValueError(f"bead_types {tuple(bead_types.shape)} must be (A,) = "
                         f"({positions.shape[0]},)")
    if batch is None:
        batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    if batch.shape != bead_types.shape:
        raise ValueError(f"batch {tuple(batch.shape)} must be (A,)")
    if n_types is not None and bead_types.numel() and (int(bead_types.min()) < 0
                                                       or int(bead_types.max()) >= n_types):
        raise ValueError(f"bead_types must lie in [0, {n_types})")
    return batch


_LAYOUTS: dict = {}


def batch_layout(batch: torch.Tensor, bead_types: torch.Tensor | None = None) -> BatchLayout:
    """The host layout of ``batch`` (and the range of ``bead_types``), cached per tensor object.

    Args:
        batch: (A,) int64 structure index, non-decreasing.
        bead_types: (A,) int64 or None.

    Returns:
        :class:`BatchLayout`; the first call for a batch object costs one host transfer
        (counts and the bead-type range together), later calls none (other bead types with
        the same batch: one transfer for their range).
    """
    hit = _LAYOUTS.get(id(batch))
    layout = None
    if hit is not None and hit[0]() is batch and hit[1] == batch._version:
        layout = hit[2]
    with_types = bead_types is not None and bead_types.numel() > 0
    if layout is not None:
        if not with_types or layout._types_key == (id(bead_types), bead_types._version):
            return layout
        t = bead_types.long()  # same batch, other bead types: read their range only
        layout.types_range = tuple(torch.stack([t.min(), t.max()]).tolist())
        layout._types_key = (id(bead_types), bead_types._version)
        return layout
    parts = [torch.bincount(batch)] if batch.numel() else [batch.new_zeros(0)]
    if with_types:
        t = bead_types.long()
        parts.append(torch.stack([t.min(), t.max()]))
    host = torch.cat([p.long() for p in parts]).tolist()  # the one host sync
    counts = tuple(host[:-2] if with_types else host)
    layout = BatchLayout(counts=counts, n_graphs=len(counts),
                         types_range=(host[-2], host[-1]) if with_types else None,
                         device=batch.device)
    layout._types_key = (id(bead_types), bead_types._version) if with_types else None
    if len(_LAYOUTS) > 16:
        _LAYOUTS.clear()
    _LAYOUTS[id(batch)] = (weakref.ref(batch), batch._version, layout)
    return layout
