"""The training gate (issue 12 item 2): `hessid.identities` on the elastic network's conditional
law with the dataset's projector; on HBond data, equal Q columns within every rigid X–H group.
Negative controls: the plain selection projector on HBond data and a broken projector are
refused with a one-line reason."""

import time

import numpy as np
import pytest

from hessid.training.data.cg_map import write_cg
from hessid.training.data.io import write_dataset
from hessid.training.data.structures import build_from_sequence
from hessid.training.data.synthetic import write_synthetic_dataset
from hessid.training.learning.datasets import load_protein
from hessid.training.learning.gate import (
    VerificationGateError,
    rigid_pairs_of,
    run_verification_gate,
)
from hessid.verification.conditional_gate import check_projector_on_conditional_law


@pytest.fixture(scope="module")
def hbond_file(tmp_path_factory):
    """Tri-alanine with hydrogens, two frames, ``constraints = "HBonds"``, mapped with the default
    (constraint-aware) Cα projector."""
    s = build_from_sequence("AAA")
    rng = np.random.default_rng(0)
    coords = s.positions[None] + 0.05 * rng.standard_normal((2, s.n_atoms, 3))
    path = tmp_path_factory.mktemp("gate") / "aaa.h5"
    write_dataset(path, s.to_pdb(), coords, np.zeros_like(coords),
                  attrs={"temperature": 300.0, "constraints": "HBonds", "name": "aaa"})
    write_cg(path)
    return path


def test_hbond_data_with_the_constraint_aware_projector_passes_fast(hbond_file):
    p = load_protein(hbond_file)
    constraints, pairs = rigid_pairs_of(p)
    assert constraints == "HBonds" and len(pairs) > 10
    t0 = time.perf_counter()
    report = run_verification_gate([p])
    assert time.perf_counter() - t0 < 2.0
    rows = {r["quantity"]: r for r in report["proteins"]["aaa"]["rows"]}
    assert report["passed"] and all(r["passed"] for r in rows.values())
    assert rows["equal Q columns within rigid groups (max abs diff / max|Q|)"]["max_rel_error"] == 0.0
    assert rows["hessian Term1 - beta Cov(Q f) (identities on the conditional law) vs exact"]["max_rel_error"] < 1e-10
    assert any(q.startswith("HVP target") for q in rows) and any(q.startswith("neg:") for q in rows)


def test_plain_selection_projector_on_hbond_data_is_refused(hbond_file, tmp_path):
    plain = tmp_path / "plain.h5"
    plain.write_bytes(hbond_file.read_bytes())
    write_cg(plain, overwrite=True, constraint_aware=False)  # Q = S: ignores the rigid X–H groups
    p = load_protein(plain)
    np.testing.assert_array_equal(p.projector, p.weights)
    with pytest.raises(VerificationGateError) as exc:
        run_verification_gate([p])
    msg = str(exc.value)
    assert "\n" not in msg and "aaa (constraints HBonds)" in msg
    assert "equal Q columns within rigid groups" in msg and "mean force <Q f>" in msg
    assert "--skip-verification" in msg


def test_broken_projector_is_refused_in_one_line(tmp_path):
    broken = write_synthetic_dataset(tmp_path / "bad.h5", n_beads=5, n_frames=2, broken_projector=True)
    with pytest.raises(VerificationGateError) as exc:
        run_verification_gate([load_protein(broken)])
    msg = str(exc.value)
    assert "\n" not in msg and "bad (constraints none): projector Q S^T = I (abs residual): 1.00e-01 vs tolerance 1e-10" in msg
    assert "hessian Term1 - beta Cov" in msg


def test_gate_rows_detect_a_projector_that_breaks_one_group_only():
    """Five atoms on a line-ish cluster, map selects atoms 0 and 3; atoms 0–1 and 3–4 are rigid.
    Q' averages each group (passes); moving weight inside one group (still Q Sᵀ = I) fails."""
    rng = np.random.default_rng(1)
    pos = np.cumsum(1.5 * rng.standard_normal((5, 3)), axis=0)
    S = np.zeros((2, 5))
    S[0, 0] = S[1, 3] = 1.0
    good = np.array([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0]])
    pairs = [[0, 1], [3, 4]]
    rows = check_projector_on_conditional_law(pos, S, good, rigid_pairs=pairs, name="five")
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    bad = good.copy()
    bad[1, 3], bad[1, 4] = 1.0, 0.5  # (Q Sᵀ)_11 = 1 still, but group 3–4 no longer moves as one
    rows = {r.quantity: r for r in check_projector_on_conditional_law(pos, S, bad, rigid_pairs=pairs)}
    assert not rows["equal Q columns within rigid groups (max abs diff / max|Q|)"].passed
    assert not rows["hessian Term1 - beta Cov(Q f) (identities on the conditional law) vs exact"].passed
    assert rows["projector Q S^T = I (abs residual)"].passed
    # without constraints the same Q is a valid projector: every identity row passes
    free = check_projector_on_conditional_law(pos, S, bad, name="five free")
    assert all(r.passed for r in free), [r for r in free if not r.passed]
