"""Probe estimators (docs/identities.md §6) and deterministic per-frame seeding
(docs/identities.md §5)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hessid.probes import (
    PROBE_KINDS,
    ProbeSpec,
    draw_probes,
    frobenius_estimate,
    frobenius_estimator_variance,
    probe_scale,
    trace_estimator_variance,
    trace_estimator_variances,
)
from tests.helpers import assert_unbiased
from tests.strategies import probe_kinds, seeds

FAST = settings(max_examples=15, deadline=None)


def _random_matrix(seed, m, d):
    return np.random.default_rng(seed).standard_normal((m, d))


# --- exact enumeration ------------------------------------------------------------------

@given(seed=seeds, d=st.integers(2, 7), m=st.integers(1, 5))
@FAST
def test_rademacher_frobenius_estimator_is_unbiased_with_known_variance_by_enumeration(seed, d, m):
    A = _random_matrix(seed, m, d)
    values = [float(np.sum((A @ np.array(s)) ** 2)) for s in itertools.product([-1.0, 1.0], repeat=d)]
    values = np.array(values)  # every sign vector is equally likely: exact moments
    np.testing.assert_allclose(values.mean(), np.sum(A * A), rtol=1e-12)
    np.testing.assert_allclose(values.var(), frobenius_estimator_variance("rademacher", A), rtol=1e-10, atol=1e-12)


@given(seed=seeds, d=st.integers(2, 9), m=st.integers(1, 5))
@FAST
def test_one_hot_estimators_are_unbiased_with_known_variance_by_enumeration(seed, d, m):
    A = _random_matrix(seed, m, d)
    scale = probe_scale("one_hot", d)
    fro = np.array([scale * np.sum(A[:, i] ** 2) for i in range(d)])
    np.testing.assert_allclose(fro.mean(), np.sum(A * A), rtol=1e-12)
    np.testing.assert_allclose(fro.var(), frobenius_estimator_variance("one_hot", A), rtol=1e-10, atol=1e-12)
    Asq = _random_matrix(seed + 1, d, d)
    tr = np.array([scale * Asq[i, i] for i in range(d)])
    np.testing.assert_allclose(tr.mean(), np.trace(Asq), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tr.var(), trace_estimator_variance("one_hot", Asq), rtol=1e-10, atol=1e-12)


@given(seed=seeds, d=st.integers(2, 7))
@FAST
def test_rademacher_trace_estimator_variance_matches_enumeration(seed, d):
    A = _random_matrix(seed, d, d)
    values = np.array([np.array(s) @ A @ np.array(s) for s in itertools.product([-1.0, 1.0], repeat=d)])
    np.testing.assert_allclose(values.mean(), np.trace(A), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values.var(), trace_estimator_variance("rademacher", A), rtol=1e-10, atol=1e-12)


@given(seed=seeds, d=st.integers(2, 8), m=st.integers(1, 4))
@FAST
def test_d_orthonormal_probes_give_the_frobenius_norm_exactly(seed, d, m):
    A = torch.as_tensor(_random_matrix(seed, m, d))
    v = draw_probes("orthonormal", seed, [seed % 1000], d, d)[0]  # (d, d)
    torch.testing.assert_close(v @ v.T, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-13)
    est = frobenius_estimate(A, v, "orthonormal")
    np.testing.assert_allclose(float(est), float((A * A).sum()), rtol=1e-12)
    assert frobenius_estimator_variance("orthonormal", A, k=d) == pytest.approx(0.0, abs=1e-9)


# --- Monte Carlo z-tests with the variances of docs/identities.md, table (6.1) -----------

@pytest.mark.parametrize("kind", PROBE_KINDS)
@pytest.mark.parametrize("k", [1, 3])
def test_frobenius_estimator_is_unbiased_z_test_with_known_variance(kind, k):
    d, m, n = 12, 7, 6000
    A = torch.as_tensor(_random_matrix(11, m, d))
    v = draw_probes(kind, 2024, range(n), k, d)  # (n, k, d)
    Av = torch.einsum("nkd,md->nkm", v, A)
    est = probe_scale(kind, d) * (Av**2).sum(-1).mean(-1)  # (n,)
    var = frobenius_estimator_variance(kind, A, k)
    assert_unbiased(est.numpy(), float((A * A).sum()), var)
    # the variance formula itself: sample variance within its own sampling error (~6 %)
    assert float(est.var()) == pytest.approx(var, rel=0.15)


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_trace_estimator_is_unbiased_z_test_with_known_variance(kind):
    d, n = 10, 6000
    A = torch.as_tensor(_random_matrix(5, d, d))
    v = draw_probes(kind, 7, range(n), 1, d)[:, 0]  # (n, d)
    est = probe_scale(kind, d) * torch.einsum("nd,de,ne->n", v, A, v)
    var = trace_estimator_variance(kind, A)
    assert_unbiased(est.numpy(), float(torch.trace(A)), var)
    assert float(est.var()) == pytest.approx(var, rel=0.15)


def test_unscaled_unit_sphere_estimator_is_detected_as_biased():
    """Negative control: the paper's unit probes without the factor d miss ‖A‖_F²
    (docs/identities.md §8)."""
    d, n = 12, 4000
    A = torch.as_tensor(_random_matrix(3, 6, d))
    v = draw_probes("unit_sphere", 1, range(n), 1, d)[:, 0]
    est = ((v @ A.T) ** 2).sum(-1)  # no scale
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(est.numpy(), float((A * A).sum()), frobenius_estimator_variance("unit_sphere", A) / d**2)


# --- determinism ---------------------------------------------------------------------------

@given(kind=probe_kinds, seed=seeds, k=st.integers(1, 4), data=st.data())
@FAST
def test_probes_of_a_frame_do_not_depend_on_batch_order_or_composition(kind, seed, k, data):
    ids = data.draw(st.lists(st.integers(0, 10**9), min_size=1, max_size=6, unique=True))
    perm = data.draw(st.permutations(range(len(ids))))
    d = 9
    full = draw_probes(kind, seed, ids, k, d)
    shuffled = draw_probes(kind, seed, [ids[i] for i in perm], k, d)
    assert torch.equal(shuffled, full[list(perm)])
    singles = torch.cat([draw_probes(kind, seed, [i], k, d) for i in ids])
    assert torch.equal(singles, full)


@given(kind=probe_kinds, seed=seeds)
@FAST
def test_float32_probes_are_the_rounding_of_the_float64_draw(kind, seed):
    p64 = draw_probes(kind, seed, [0, 5, 17], 3, 12)
    p32 = draw_probes(kind, seed, [0, 5, 17], 3, 12, dtype=torch.float32)
    assert p32.dtype == torch.float32
    assert torch.equal(p32, p64.to(torch.float32))


def test_probes_are_bit_identical_across_processes():
    """A probe drawn in another process (as a worker or DDP rank would) equals ours."""
    code = (
        "from hessid.probes import draw_probes;"
        "import sys;"
        "sys.stdout.write(draw_probes('orthonormal', 99, [3, 1], 2, 6).numpy().tobytes().hex())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == draw_probes("orthonormal", 99, [3, 1], 2, 6).numpy().tobytes().hex()


def test_different_seeds_and_frames_give_different_probes():
    a = draw_probes("gaussian", 1, [0, 1], 2, 6)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, draw_probes("gaussian", 2, [0, 1], 2, 6))


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_probe_kinds_have_their_defining_structure(kind):
    v = draw_probes(kind, 3, range(50), 3, 8)  # (50, 3, 8)
    norms = v.norm(dim=-1)
    if kind in ("unit_sphere", "one_hot", "orthonormal"):
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-14)
    if kind == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    if kind == "one_hot":
        assert torch.all((v == 0) | (v == 1))
    if kind == "orthonormal":
        gram = v @ v.transpose(1, 2)
        torch.testing.assert_close(gram, torch.eye(3, dtype=v.dtype).expand_as(gram), rtol=0, atol=1e-14)


def test_bad_arguments_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="probe kind"):
        draw_probes("sobol", 0, [0], 1, 3)
    with pytest.raises(ValueError, match="k <= dim"):
        draw_probes("orthonormal", 0, [0], 4, 3)
    with pytest.raises(ValueError, match="frame id"):
        draw_probes("gaussian", 0, [-1], 1, 3)
    with pytest.raises(ValueError, match="frame_ids"):
        draw_probes("gaussian", 0, [0.5], 1, 3)


def test_probe_spec_round_trips_through_attributes():
    spec = ProbeSpec("unit_sphere", 12345, 4)
    again = ProbeSpec.from_attrs(spec.to_attrs())
    assert again == spec
    assert torch.equal(again.draw([7], 30), draw_probes("unit_sphere", 12345, [7], 4, 30))
    assert spec.scale(30) == 30.0
    with pytest.raises(KeyError, match="probe_seed"):
        ProbeSpec.from_attrs({"probe_kind": "gaussian", "n_probes": 1})


def test_probe_spec_attributes_with_a_dimension_carry_scale_and_dimension():
    spec = ProbeSpec("unit_sphere", 3, 2)
    attrs = spec.to_attrs(dim=12)
    assert attrs == {"probe_kind": "unit_sphere", "probe_seed": 3, "n_probes": 2, "probe_key": 0,
                     "probe_scale": 12.0, "probe_dim": 12}
    assert ProbeSpec.from_attrs(attrs) == spec  # extra attributes are ignored on reading
    assert ProbeSpec("gaussian", 0, 1).to_attrs(dim=9)["probe_scale"] == 1.0


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_stacked_trace_variances_equal_the_per_matrix_variance(kind):
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((4, 6, 6))
    k = 3
    got = trace_estimator_variances(kind, stack, k)
    want = [trace_estimator_variance(kind, a, k) for a in stack]
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="stack"):
        trace_estimator_variances(kind, stack[0], k)
