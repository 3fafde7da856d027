"""Conditional labels (hessid.training.data.labels, ``hessid targets --conditional``).

Estimators first (synthetic series with known answers: AR(1) statistical inefficiency, block-error
coverage, each with a negative control that must fail), then a tiny real alanine-dipeptide run
(2 configurations × 20 frozen-bead samples, GBn2, CPU, 1 thread): layout and provenance, the cost
count against OpenMM calls counted independently, resume byte identity, training through the
public trainer, CLI errors.
"""

from __future__ import annotations

import csv
import shutil
import warnings

import h5py
import numpy as np
import openmm
import pytest
from scipy import signal, stats

from hessid.cli import main
from hessid.training.data import labels as lb
from hessid.training.data import schema as sc
from hessid.training.data.aa_md import MDConfig, simulate
from hessid.training.data.cg_map import write_cg
from hessid.training.data.io import validate_dataset
from hessid.training.data.reader import open_dataset
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.trainer import train
from hessid.training.pipelines import ala2

RHO = 0.6  # AR(1) coefficient: g = (1 + ρ)/(1 − ρ) = 4


def _ar1(rng, rho: float, shape: tuple) -> np.ndarray:
    """Stationary AR(1) series along axis 0 with unit variance: x_t = ρ x_{t−1} + √(1−ρ²) ε_t."""
    e = rng.standard_normal(shape)
    e[0] /= np.sqrt(1.0 - rho**2)  # stationary start: Var x_0 = 1
    return signal.lfilter([np.sqrt(1.0 - rho**2)], [1.0, -rho], e, axis=0)


# ----------------------------------------------------------------------------- estimators


def test_statistical_inefficiency_of_ar1_and_negative_controls():
    rng = np.random.default_rng(0)
    m = 20000
    g_true = (1 + RHO) / (1 - RHO)
    x = np.stack([_ar1(rng, RHO, (m,)), _ar1(rng, 0.2, (m,)), rng.standard_normal(m)], axis=1)  # (m, 3)
    # relative s.e. of the windowed g estimate ≈ √(2(2W+1)/m) with a window W ≈ 3–5 g → ≈ 6 %;
    # 15 % is > 2 s.e. on either side
    g = lb.statistical_inefficiency(x)
    assert abs(g - g_true) / g_true < 0.15, g  # the max over components: the ρ = 0.6 one
    assert abs(lb.statistical_inefficiency(x[:, 1]) - 1.5) / 1.5 < 0.15  # ρ = 0.2: g = 1.5
    # i.i.d. gives ≈ 1 (pymbar clips at 1; its upward fluctuation is ~ the same 6 %)
    assert 1.0 <= lb.statistical_inefficiency(rng.standard_normal((m, 4))) < 1.15
    # negative control: the same AR(1) samples shuffled in time lose their correlation, and the
    # AR(1) test above must fail on them
    g_shuffled = lb.statistical_inefficiency(rng.permutation(x[:, 0]))
    assert not abs(g_shuffled - g_true) / g_true < 0.15, g_shuffled
    assert g_shuffled < 1.2
    # a constant component is skipped, not an error; a (m, n, 3) array is accepted
    assert lb.statistical_inefficiency(np.ones((50, 2, 3))) == 1.0
    with pytest.raises(ValueError, match="at least 2 samples"):
        lb.statistical_inefficiency(np.ones(1))


def test_block_errors_cover_the_true_mean_of_correlated_series_and_naive_errors_do_not():
    """400 AR(1) series (g = 4, m = 400, 10 blocks of 40 ≈ 10 g): the t-interval of the block
    s.e. covers the true mean 0 about 95 % of the time; the i.i.d. s.e. std/√m (too small by √g)
    covers about P(|Z| < 1.96/2) ≈ 67 %. Binomial s.d. of a coverage over 400 series ≈ 1.1 %."""
    rng = np.random.default_rng(1)
    m, reps, nb = 400, 400, 10
    x = _ar1(rng, RHO, (m, reps))  # (m, reps): each column one series
    mean, sem = lb.block_mean_sem(x, nb)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=0, atol=1e-15)
    t = stats.t.ppf(0.975, nb - 1)
    coverage = np.mean(np.abs(mean) < t * sem)
    assert 0.90 < coverage < 0.985, coverage
    naive = x.std(axis=0, ddof=1) / np.sqrt(m)
    naive_coverage = np.mean(np.abs(mean) < t * naive)
    assert not 0.90 < naive_coverage < 0.985, naive_coverage  # negative control fails the test
    # the block s.e.² estimates g σ²/m (σ² = 1): mean over series within 15 % (s.d. of a
    # 9-dof variance estimate √(2/9) ≈ 47 % per series, / √400 → 2.4 %, plus block-length bias)
    assert abs(np.mean(sem**2) / (4.0 / m) - 1.0) < 0.15
    with pytest.raises(ValueError, match="n_blocks"):
        lb.block_mean_sem(x, 201)


def test_cost_count_formula_and_evenly_spaced_frames_and_seeds():
    assert lb.aa_force_evaluations(1, 125, 4) == 133  # a plain frame of the study: 125 MD steps + 2k
    assert lb.aa_force_evaluations(500, 50, 15, 10000) == 10000 + 500 * (50 + 30)
    with pytest.raises(ValueError, match="negative"):
        lb.aa_force_evaluations(1, -1)
    np.testing.assert_array_equal(lb.evenly_spaced_frames(101, 3), [0, 50, 100])
    np.testing.assert_array_equal(lb.evenly_spaced_frames(5, 1), [0])
    with pytest.raises(ValueError, match="configs"):
        lb.evenly_spaced_frames(5, 6)
    assert lb.config_seed(0, 7) == lb.config_seed(0, 7) != lb.config_seed(1, 7)
    assert all(1 <= lb.config_seed(s, f) <= 2**30 for s in range(3) for f in range(50))


# ----------------------------------------------------------------------------- real runs

RUN = dict(samples=20, stride=10, equilibration_steps=100, n_blocks=4, workers=0, progress=False)
FRAMES = [2, 0]  # given unsorted: stored ascending


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Alanine dipeptide, GBn2, 3 AA frames (every 100 steps), 5-bead map with the constraint-aware Q."""
    root = tmp_path_factory.mktemp("labels_src")
    ala2.write_structure("ala2", root)
    path = simulate("ala2", MDConfig(steps=300, stride=100, platform="CPU", threads=1, seed=3), root=root,
                    progress=False)  # fmt: skip
    ala2.map_dataset(path)
    return path


@pytest.fixture(scope="module")
def full_run(source, tmp_path_factory):
    """An uninterrupted run with every MD step and every OpenMM force call counted."""
    counts = {"steps": 0, "force_calls": 0}
    step, get_state = openmm.LangevinMiddleIntegrator.step, openmm.Context.getState

    def counting_step(self, n):
        counts["steps"] += int(n)
        return step(self, n)

    def counting_get_state(self, *args, **kwargs):
        counts["force_calls"] += bool(kwargs.get("getForces"))
        return get_state(self, *args, **kwargs)

    out = tmp_path_factory.mktemp("full") / "lab.h5"
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(openmm.LangevinMiddleIntegrator, "step", counting_step)
        mp.setattr(openmm.Context, "getState", counting_get_state)
        res = lb.compute_conditional_labels(source, out, FRAMES, keep_samples=True, **RUN)
    return out, res, counts, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_layout_provenance_and_estimates(source, full_run):
    out, res, _, _ = full_run
    assert (res.n_configs, res.configs_computed, res.configs_skipped) == (2, 2, 0)
    L = lb.read_labels(out)
    n, d = 5, 15
    assert L.mean_force.shape == L.mean_force_sem.shape == L.coordinates.shape == (2, n, 3)
    for a in (L.hessian, L.hessian_sem, L.term1, L.term2):
        assert a.shape == (2, d, d) and a.dtype == np.float64 and np.isfinite(a).all()
    np.testing.assert_array_equal(L.hessian, L.hessian.transpose(0, 2, 1))
    np.testing.assert_array_equal(L.source_frame, [0, 2])
    assert L.done.all() and (L.n_samples == 20).all()
    np.testing.assert_allclose(L.effective_samples, 20 / L.statistical_inefficiency, rtol=1e-15)
    assert (L.statistical_inefficiency >= 1).all() and (L.drift_angstrom < 1e-3).all()
    assert (L.mean_force_sem > 0).all()
    np.testing.assert_allclose(L.mean_force_noise(), (L.mean_force_sem**2).sum(axis=(1, 2)), rtol=1e-15)
    validate_dataset(out)  # the standard layout, finite everywhere once done
    with open_dataset(source) as src, open_dataset(out) as ds:
        np.testing.assert_array_equal(L.coordinates, src.cg.coordinates([0, 2]))  # R
        np.testing.assert_array_equal(ds.coordinates(), src.coordinates([0, 2]))  # AA part: source frames
        np.testing.assert_array_equal(ds.cg.projector, src.cg.projector)
        assert ds.cg.projector_constraints == "HBonds"
        assert L.source_forcefield_hash == src.forcefield_hash
        assert ds.attr("kind") == "conditional_labels" and L.settings["samples"] == 20
        q = src.cg.projector
    assert L.source == str(source.resolve()) and L.temperature == 300.0
    # the estimates are those of the kept samples, mapped with the source's own Q
    for i, frame in enumerate(L.source_frame):
        scratch = out.parent / "lab.scratch" / f"c{frame:07d}.h5"
        with open_dataset(scratch) as ds:
            np.testing.assert_array_equal(ds.cg.projector, q)
            pf = ds.cg.forces()
        np.testing.assert_allclose(L.mean_force[i], pf.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(L.statistical_inefficiency[i], lb.statistical_inefficiency(pf), rtol=1e-15)
        b = 1.0 / (0.0019872041 * 300.0)
        np.testing.assert_allclose(L.term2[i], b * np.cov(pf.reshape(20, -1).T), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(L.hessian[i], 0.5 * (L.term1[i] + L.term1[i].T) - L.term2[i], rtol=1e-12,
                                   atol=1e-9)  # fmt: skip


def test_cost_equals_the_md_steps_and_fd_force_calls_actually_run(full_run):
    """Counted independently: LangevinMiddleIntegrator.step (every MD step, equilibration and
    production) and Context.getState(getForces=True) (every force call: one per saved sample,
    which the cost convention leaves out, plus the FD evaluations)."""
    out, res, counts, _ = full_run
    L = lb.read_labels(out)
    saved = int(L.n_samples.sum())
    assert counts["steps"] == 2 * (100 + 20 * 10)
    fd_calls = counts["force_calls"] - saved
    assert fd_calls == 2 * 20 * 2 * 15  # configs × samples × 2 × 3n
    assert int(L.aa_force_evaluations.sum()) == res.aa_force_evaluations == counts["steps"] + fd_calls
    # negative control: a formula with one evaluation per direction does not match
    assert 2 * (100 + 20 * (10 + 15)) != counts["steps"] + fd_calls


def test_short_blocks_warn_in_one_line_naming_the_configuration(full_run):
    out, _, _, messages = full_run
    L = lb.read_labels(out)
    # blocks of 20 / 4 = 5 samples: a warning exactly for the configurations with 5 < 5 g
    want = [int(f) for f, g in zip(L.source_frame, L.statistical_inefficiency, strict=True) if 5 < 5 * g]
    block_msgs = [m for m in messages if "blocks of 5 samples" in m]
    assert [int(m.split("configuration ")[1].split(":")[0]) for m in block_msgs] == want
    for msg in block_msgs:
        assert "\n" not in msg and "configuration" in msg


def _arrays(path) -> dict:
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda k, o: out.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def test_resume_skips_done_configurations_and_gives_identical_bytes(source, full_run, tmp_path):
    out_full = full_run[0]
    out = tmp_path / "lab.h5"
    with pytest.raises(lb.LabelsInterrupted), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lb.compute_conditional_labels(source, out, FRAMES, interrupt_after_configs=1, **RUN)
    with open_dataset(out) as ds:
        np.testing.assert_array_equal(ds.hessian_block.done(), [True, False])
    assert not (tmp_path / "lab.scratch" / "c0000000.h5").exists()  # samples of a done config deleted
    with pytest.raises(sc.DatasetError, match="frame 1: configuration not done"):
        lb.read_labels(out)
    assert lb.read_labels(out, allow_partial=True).done.tolist() == [True, False]
    with pytest.raises(sc.DatasetError, match=r"resume with seed=1 but the stored run used 0"):
        lb.compute_conditional_labels(source, out, FRAMES, seed=1, **RUN)
    with pytest.raises(FileExistsError, match="--resume"):
        lb.compute_conditional_labels(source, out, FRAMES, resume=False, **RUN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lb.compute_conditional_labels(source, out, FRAMES, **RUN)
    assert (res.configs_computed, res.configs_skipped) == (1, 1)
    assert not (tmp_path / "lab.scratch").exists()
    a, b = _arrays(out_full), _arrays(out)
    assert a.keys() == b.keys() and "labels/term1" in a
    for key in a:
        assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes(), key
    res = lb.compute_conditional_labels(source, out, FRAMES, **RUN)  # finished: nothing to do
    assert (res.configs_computed, res.configs_skipped) == (0, 2)


@pytest.mark.parametrize("mode", ["fm", "fm_hessian"])
def test_the_labels_file_trains_with_fm_and_fm_hessian(full_run, tmp_path, mode):
    cfg = TrainConfig.from_dict({
        "name": mode, "output_dir": str(tmp_path / "runs"), "seed": 0,
        "data": {"datasets": [str(full_run[0])], "batch_size": 2, "val_fraction": 0.0},
        "model": {"embedding_dimension": 8, "num_layers": 1, "num_rbf": 4, "precision": "float64"},
        "loss": {"mode": mode, "cov_weight": 0.0}, "prior": {"enabled": False},
        "trainer": {"max_steps": 2, "progress_bar": False},
    })  # fmt: skip
    res = train(cfg)
    with open(res.metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    assert len(rows) == 2 and np.isfinite(float(rows[-1]["fm"]))
    if mode == "fm_hessian":
        assert np.isfinite(float(rows[-1]["hessian"]))


def test_source_checks_name_the_file(source, full_run, tmp_path):
    labels_file = tmp_path / "l.h5"
    bad = tmp_path / "com.h5"
    shutil.copy(source, bad)
    with h5py.File(bad, "r+") as h5:
        w = h5["cg/weights"][()]
        w[0] = 0.0
        w[0, :2] = 0.5  # bead 0: the mean of two atoms
        h5["cg/weights"][...] = w
    with pytest.raises(sc.DatasetError, match=r"com\.h5: dataset 'cg/weights': bead 0 is not a selection"):
        lb.compute_conditional_labels(bad, labels_file, [0], **RUN)
    with pytest.raises(ValueError, match=r"frames: 3 is out of range \[0, 3\)"):
        lb.compute_conditional_labels(source, labels_file, [0, 3], **RUN)
    with pytest.raises(ValueError, match="repeated"):
        lb.compute_conditional_labels(source, labels_file, [1, 1], **RUN)
    with pytest.raises(ValueError, match="samples=6 gives blocks"):
        lb.compute_conditional_labels(source, labels_file, [1], **{**RUN, "samples": 6})
    assert not labels_file.exists()
    # a labels file refuses re-mapping, Term-1 recomputation and being a source
    lab = shutil.copy(full_run[0], tmp_path / "done.h5")
    for call in (lambda: write_cg(lab, overwrite=True), lambda: lb.compute_conditional_labels(lab, labels_file, [0], **RUN)):
        with pytest.raises(sc.DatasetError, match="is a conditional-labels file"):
            call()


def test_cli_runs_and_refuses_bad_input_with_one_line_and_exit_2(source, tmp_path, capsys):
    base = ["targets", str(source), "--conditional", "--no-progress"]
    run = ["--samples", "20", "--stride", "5", "--equilibration-ps", "0.01", "--blocks", "2", "--workers", "0"]
    bad = {
        "exactly one of --configs": base + run,
        "needs --samples": base + ["--configs", "2"],
        "--frames '0,x'": base + ["--frames", "0,x", *run],
        "frames: 7 is out of range": base + ["--frames", "0,7", *run],
        "nope.h5: no such dataset file": ["targets", str(tmp_path / "nope.h5"), "--conditional", "--configs", "1",
                                          *run],
        "--samples is only used with --conditional": ["targets", str(source), "--samples", "3"],
        "is a conditional-labels file": None,  # filled below
    }
    out = tmp_path / "cli" / "lab.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--configs", "1", *run, "--out", str(out)]) == 0
    assert "1 configurations computed" in capsys.readouterr().out
    L = lb.read_labels(out)
    assert L.source_frame.tolist() == [0] and L.settings["equilibration_steps"] == 5  # 0.01 ps at 2 fs
    assert (out.parent / "hessid-targets-conditional.yaml").exists()
    bad["is a conditional-labels file"] = ["data", "map", str(out), "--overwrite"]
    for text, argv in bad.items():
        assert main(argv) == 2, text
        err = capsys.readouterr().err.strip()
        assert text in err and len(err.splitlines()) == 1, err
