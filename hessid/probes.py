"""Probe vectors for stochastic Hessian-vector-product matching (docs/identities.md §5, §6).

Probes are drawn per frame from a counter-based generator (numpy's Philox keyed by
``(seed, frame_id)``, its counter starting at ``(0, 0, 0, key)`` for a per-dataset ``key``) on
the CPU in float64, then cast. The probes of a frame therefore depend only on
``(kind, seed, key, frame_id, k, dim)``: they are bit-identical whatever the batch
order, batch composition, process or rank count, device or storage dtype (a float32 copy is
the rounding of the float64 draw). This is what lets Term 1 be precomputed once and the
same probes be regenerated online during training.

Kinds and the scale that makes ``scale · ‖A v‖²`` an unbiased estimate of ``‖A‖_F²`` for
one probe (docs/identities.md §6):

=============  ===========================================  =====
kind           distribution of one probe v ∈ R^d             scale
=============  ===========================================  =====
gaussian       N(0, I_d)                                     1
rademacher     i.i.d. ±1 entries                             1
unit_sphere    uniform on S^{d−1} (normalised Gaussian)      d
one_hot        e_i, i uniform in {0..d−1} (with replacement) d
orthonormal    k orthonormal columns of a Haar-random frame  d
=============  ===========================================  =====

The paper's probes are unit vectors; ``E‖Av‖² = ‖A‖_F²/d`` for them (docs/identities.md §8), so a
loss built with ``unit_sphere`` probes must multiply by ``probe_scale`` to be on the ‖·‖_F² scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

PROBE_KINDS = ("gaussian", "rademacher", "unit_sphere", "one_hot", "orthonormal")

_MAX_KEY = 2**64


def _check_kind(kind: str) -> None:
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind {kind!r} is not one of {PROBE_KINDS}")


def _generator(seed: int, frame_id: int, key: int = 0) -> np.random.Generator:
    """Philox generator keyed by (seed, frame_id), its 256-bit counter starting at
    (0, 0, 0, key): a counter-based stream per frame and dataset key. A frame's draw advances
    only the low counter word (far below 2**192 steps), so different keys never share counter
    values, hence never share random numbers; key 0 is the stream of version-1 files."""
    if not (0 <= int(seed) < _MAX_KEY):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not (0 <= int(frame_id) < _MAX_KEY):
        raise ValueError(f"frame id must be an integer in [0, 2**64), got {frame_id!r}")
    if not (0 <= int(key) < _MAX_KEY):
        raise ValueError(f"probe key must be an integer in [0, 2**64), got {key!r}")
    words = np.array([int(seed), int(frame_id)], dtype=np.uint64)
    counter = np.array([0, 0, 0, int(key)], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=words, counter=counter))


def _orthonormal_columns(g: np.ndarray) -> np.ndarray:
    """Modified Gram–Schmidt with one reorthogonalisation pass on the columns of ``g`` (d, k),
    elementwise numpy only (no LAPACK/BLAS, whose kernels differ between machines), giving a
    Haar-distributed frame.

    One MGS pass loses orthogonality in proportion to ε·κ(g) (seen: 3.8e-13 at d = 7); the
    second pass ("twice is enough", Giraud et al., Numer. Math. 101, 2005) brings ‖QᵀQ − I‖ to
    O(ε) for any numerically full-rank g. It changes the frame only at that round-off level.
    """
    q = g.copy()
    for j in range(q.shape[1]):
        for _ in range(2):
            for i in range(j):
                q[:, j] -= np.sum(q[:, i] * q[:, j]) * q[:, i]
        q[:, j] /= math.sqrt(np.sum(q[:, j] * q[:, j]))
    return q


def _draw_one(kind: str, rng: np.random.Generator, k: int, dim: int) -> np.ndarray:
    """The k probes of one frame, float64 (k, dim)."""
    if kind == "gaussian":
        return rng.standard_normal((k, dim))
    if kind == "rademacher":
        return rng.integers(0, 2, size=(k, dim)).astype(np.float64) * 2.0 - 1.0
    if kind == "unit_sphere":
        g = rng.standard_normal((k, dim))
        norms = np.sqrt(np.sum(g * g, axis=1, keepdims=True))
        return g / norms
    if kind == "one_hot":
        out = np.zeros((k, dim))
        out[np.arange(k), rng.integers(0, dim, size=k)] = 1.0
        return out
    # orthonormal
    if k > dim:
        raise ValueError(f"orthonormal probes need k <= dim, got k={k}, dim={dim}")
    return _orthonormal_columns(rng.standard_normal((dim, k))).T.copy()


def draw_probes(
    kind: str,
    seed: int,
    frame_ids: Iterable[int] | np.ndarray | torch.Tensor,
    k: int,
    dim: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    key: int = 0,
) -> torch.Tensor:
    """Deterministic probes for each frame (docs/identities.md §5, "Deterministic probes").

    Args:
        kind: one of :data:`PROBE_KINDS`.
        seed: global probe seed, integer in [0, 2**64).
        frame_ids: F global frame ids (int), e.g. the dataset's ``frame_id``; any order.
        k: probes per frame (≥ 1; ≤ dim for ``orthonormal``).
        dim: CG dimension d = 3n (probes live in flat CG space; reshape to (n, 3) as needed).
        dtype: storage dtype of the result (the draw is always float64, then cast).
        device: where the result lives (drawn on the CPU, then moved).
        key: per-dataset probe key in [0, 2**64) (0: the probes of files without one), so two
            datasets with the same seed and frame ids get different probes.

    Returns:
        (F, k, dim) tensor; dimensionless (unit of the displacement direction).
        Row ``[f]`` depends only on ``(kind, seed, key, frame_ids[f], k, dim)``.

    Raises:
        ValueError: unknown kind, k < 1, dim < 1, k > dim for orthonormal probes, seed, key or
            a frame id outside [0, 2**64).
    """
    _check_kind(kind)
    if int(k) < 1 or int(dim) < 1:
        raise ValueError(f"need k >= 1 and dim >= 1, got k={k}, dim={dim}")
    if isinstance(frame_ids, torch.Tensor):
        frame_ids = frame_ids.detach().cpu().numpy()
    ids = np.atleast_1d(np.asarray(frame_ids))
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"frame_ids must be a 1-D sequence of integers, got {ids.dtype} {ids.shape}")
    out = np.empty((ids.size, int(k), int(dim)))  # (F, k, d)
    for f, frame_id in enumerate(ids.tolist()):
        out[f] = _draw_one(kind, _generator(seed, frame_id, key), int(k), int(dim))
    return torch.from_numpy(out).to(dtype=dtype, device=device)


def probe_scale(kind: str, dim: int) -> float:
    """Scale c with E[c ‖A v‖²] = ‖A‖_F² for one probe v of ``kind`` in R^dim
    (docs/identities.md, table (6.1)).

    Also the scale of the trace estimator: E[c vᵀ A v] = tr A.

    Raises:
        ValueError: unknown kind or dim < 1.
    """
    _check_kind(kind)
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return 1.0 if kind in ("gaussian", "rademacher") else float(dim)


def frobenius_estimate(A: torch.Tensor, probes: torch.Tensor, kind: str) -> torch.Tensor:
    """Unbiased estimate of ‖A‖_F² from k probes: ``scale · mean_m ‖A v_m‖²``
    (docs/identities.md, table (6.1)).

    Args:
        A: (m, d) matrix.
        probes: (k, d) probes of ``kind``.
        kind: probe kind (sets the scale).

    Returns:
        0-dim tensor, units of A².
    """
    Av = probes @ A.T  # (k, m)
    return probe_scale(kind, A.shape[1]) * (Av * Av).sum(-1).mean()


def _haar_subspace_factor(d: int, k: int) -> float:
    """Var tr(B Π) = factor · (‖B‖_F² − (tr B)²/d) for Π the projector on a Haar-random
    k-dimensional subspace of R^d (k = 1 gives the unit-sphere value 2/(d(d+2)))."""
    if d == 1:
        return 0.0
    return 2.0 * k * (d - k) / ((d - 1) * d * (d + 2))


def frobenius_estimator_variance(kind: str, A, k: int = 1) -> float:
    """Variance of the unbiased ‖A‖_F² estimator ``scale · mean_{m≤k} ‖A v_m‖²``
    (docs/identities.md, table (6.1)).

    With ``B = AᵀA`` (d×d) and ``c_i = B_ii``, for one probe:
    gaussian ``2‖B‖_F²``; rademacher ``2(‖B‖_F² − Σ B_ii²)``; unit_sphere
    ``(2d/(d+2))(‖B‖_F² − ‖A‖_F⁴/d)``; one_hot ``d Σ c_i² − ‖A‖_F⁴``. Independent kinds
    divide by k; ``orthonormal`` uses the Haar k-frame variance
    ``(d/k)² · 2k(d−k)/((d−1)d(d+2)) · (‖B‖_F² − ‖A‖_F⁴/d)`` (0 at k = d).

    Args:
        kind: probe kind.
        A: (m, d) matrix (tensor or array; computed in float64).
        k: probes averaged.

    Returns:
        float, units of A⁴.

    Raises:
        ValueError: unknown kind, k < 1, or k > d for orthonormal probes.
    """
    _check_kind(kind)
    A = np.asarray(torch.as_tensor(A, dtype=torch.float64).cpu())
    d = A.shape[1]
    if k < 1 or (kind == "orthonormal" and k > d):
        raise ValueError(f"invalid number of probes k={k} for kind {kind!r} and d={d}")
    B = A.T @ A
    fro_B2 = float(np.sum(B * B))
    fro_A2 = float(np.trace(B))
    diag2 = float(np.sum(np.diag(B) ** 2))
    if kind == "gaussian":
        return 2.0 * fro_B2 / k
    if kind == "rademacher":
        return 2.0 * (fro_B2 - diag2) / k
    if kind == "unit_sphere":
        return (2.0 * d / (d + 2)) * (fro_B2 - fro_A2**2 / d) / k
    if kind == "one_hot":
        return (d * diag2 - fro_A2**2) / k
    return (d / k) ** 2 * _haar_subspace_factor(d, k) * (fro_B2 - fro_A2**2 / d)


def trace_estimator_variance(kind: str, A, k: int = 1) -> float:
    """Variance of the unbiased tr A estimator ``scale · mean_{m≤k} v_mᵀ A v_m``
    (docs/identities.md, table (6.1)).

    With ``S = (A + Aᵀ)/2``: gaussian ``2‖S‖_F²``; rademacher ``2(‖S‖_F² − Σ S_ii²)``;
    unit_sphere ``(2d/(d+2))(‖S‖_F² − (tr S)²/d)``; one_hot ``d Σ A_ii² − (tr A)²``;
    independent kinds divide by k; orthonormal as in :func:`frobenius_estimator_variance`.

    Args:
        kind: probe kind.
        A: (d, d) square matrix.
        k: probes averaged.

    Returns:
        float, units of A².

    Raises:
        ValueError: unknown kind, A not square, k < 1, or k > d for orthonormal probes.
    """
    A = np.asarray(torch.as_tensor(A, dtype=torch.float64).cpu())
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    return float(trace_estimator_variances(kind, A[None], k)[0])


def trace_estimator_variances(kind: str, A, k: int = 1) -> np.ndarray:
    """:func:`trace_estimator_variance` for every matrix of a stack (docs/identities.md,
    table (6.1)).

    Args:
        kind: probe kind.
        A: (m, d, d) stack of square matrices (tensor or array; computed in float64).
        k: probes averaged.

    Returns:
        (m,) float64 array, units of A².

    Raises:
        ValueError: unknown kind, A not a stack of square matrices, k < 1, or k > d for
            orthonormal probes.
    """
    _check_kind(kind)
    A = np.asarray(torch.as_tensor(A, dtype=torch.float64).cpu())
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"A must be a (m, d, d) stack of square matrices, got shape {A.shape}")
    d = A.shape[-1]
    if k < 1 or (kind == "orthonormal" and k > d):
        raise ValueError(f"invalid number of probes k={k} for kind {kind!r} and d={d}")
    S = 0.5 * (A + np.swapaxes(A, -1, -2))
    fro_S2 = np.einsum("mab,mab->m", S, S)
    diag = np.einsum("maa->ma", A)
    tr = diag.sum(-1)
    diag2 = (diag**2).sum(-1)
    if kind == "gaussian":
        return 2.0 * fro_S2 / k
    if kind == "rademacher":
        return 2.0 * (fro_S2 - (np.einsum("maa->ma", S) ** 2).sum(-1)) / k
    if kind == "unit_sphere":
        return (2.0 * d / (d + 2)) * (fro_S2 - tr**2 / d) / k
    if kind == "one_hot":
        return (d * diag2 - tr**2) / k
    return (d / k) ** 2 * _haar_subspace_factor(d, k) * (fro_S2 - tr**2 / d)


@dataclass(frozen=True)
class ProbeSpec:
    """What fixes the probes of a run: kind, global seed, probes per frame, per-dataset key.

    Stored as HDF5/checkpoint attributes (``probe_kind``, ``probe_seed``, ``n_probes``,
    ``probe_key``) so that a file records enough to regenerate its probes; see :meth:`to_attrs`.
    ``key`` 0 is the stream of files written before the key existed (no ``probe_key``).
    """

    kind: str = "gaussian"
    seed: int = 0
    n_probes: int = 4
    key: int = 0

    def __post_init__(self):
        _check_kind(self.kind)
        if self.n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {self.n_probes}")
        if not 0 <= int(self.key) < _MAX_KEY:
            raise ValueError(f"probe key must be an integer in [0, 2**64), got {self.key!r}")

    def draw(self, frame_ids, dim: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """:func:`draw_probes` with this spec: (F, n_probes, dim)."""
        return draw_probes(self.kind, self.seed, frame_ids, self.n_probes, dim, dtype, device, key=self.key)

    def scale(self, dim: int) -> float:
        """:func:`probe_scale` of this kind at dimension ``dim``."""
        return probe_scale(self.kind, dim)

    def to_attrs(self, dim: int | None = None) -> dict:
        """Attributes to store beside precomputed targets.

        Args:
            dim: probe dimension d (= 3n for CG probes); when given, ``probe_dim`` (int) and
                ``probe_scale`` (float, :func:`probe_scale` at d) are stored too.

        Returns:
            dict ``probe_kind`` (str), ``probe_seed`` (int), ``n_probes`` (int), ``probe_key``
            (int) [, ``probe_scale``, ``probe_dim``].

        Raises:
            ValueError: dim < 1.
        """
        out = {"probe_kind": self.kind, "probe_seed": int(self.seed), "n_probes": int(self.n_probes),
               "probe_key": int(self.key)}
        if dim is not None:
            out.update(probe_scale=float(self.scale(int(dim))), probe_dim=int(dim))
        return out

    @classmethod
    def from_attrs(cls, attrs) -> ProbeSpec:
        """Inverse of :meth:`to_attrs` (accepts an h5py attrs mapping or a dict); a missing
        ``probe_key`` is 0 (files written before the key existed keep their probes).

        Raises:
            KeyError: an attribute is missing (names it).
        """
        missing = [key for key in ("probe_kind", "probe_seed", "n_probes") if key not in attrs]
        if missing:
            raise KeyError(f"probe attributes missing: {missing}")
        kind = attrs["probe_kind"]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        return cls(kind=kind, seed=int(attrs["probe_seed"]), n_probes=int(attrs["n_probes"]),
                   key=int(attrs.get("probe_key", 0)))
