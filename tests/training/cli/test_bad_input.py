"""Bad input to the run commands (train, simulate, evaluate, report): one line on stderr that
names the key or file, the documented exit code, no traceback, and nothing left behind.

One table (:data:`CASES`): command line, expected message fragment, exit code. Every case
runs in the same prepared folder (a small synthetic dataset, config files, a file that is
not a model); the folder's listing must be the same afterwards. Negative control: the good
versions of the same command lines succeed in the same folder and do write their outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hessid.cli import main
from hessid.training.data.synthetic import write_synthetic_dataset
from tests.training.cli.helpers import GOOD_YAML, strip_cg_group

FILES = {
    "lr.yaml": GOOD_YAML + "optim:\n  lr: fast\n",
    "batch.yaml": GOOD_YAML.replace("batch_size: 4", "batch_size: -4"),
    "broken.yaml": "name: ok\ndata: [datasets: toy\n  x: : \n",
    "missing.yaml": GOOD_YAML.replace("[toy]", "[nothere]"),
    "list.yaml": "- just\n- a list\n",
    "notmodel.pt": "this is not a checkpoint\n",
}

SIM_NOREF = ["simulate", "--model", "harmonic", "--out", "out", "--steps", "20", "--stride",
             "10", "--replicas", "2", "--no-progress"]
SIM = [*SIM_NOREF, "--reference", "toy"]

#: (id, argv, message fragment, exit code)
CASES = [
    # ---- train: values are type- and range-checked before the run folder exists
    ("train-lr-not-a-number", ["train", "--config", "lr.yaml"],
     "optim.lr: expected a number, got 'fast'", 2),
    ("train-set-lr-not-a-number", ["train", "--config", "ok.yaml", "--set", "optim.lr=fast"],
     "optim.lr: expected a number, got 'fast'", 2),
    ("train-max-steps-abc", ["train", "--config", "ok.yaml", "--set", "trainer.max_steps=abc"],
     "trainer.max_steps: expected an integer, got 'abc'", 2),
    ("train-max-steps-flag-abc", ["train", "--config", "ok.yaml", "--steps", "abc"],
     "trainer.max_steps: expected an integer, got 'abc'", 2),
    ("train-max-steps-zero", ["train", "--config", "ok.yaml", "--steps", "0"],
     "trainer.max_steps: must be >= 1, got 0", 2),
    ("train-malformed-yaml", ["train", "--config", "broken.yaml"],
     "broken.yaml line 3 column 4: malformed YAML", 2),
    ("train-yaml-not-a-mapping", ["train", "--config", "list.yaml"],
     "list.yaml: expected a mapping", 2),
    ("train-config-missing", ["train", "--config", "nothere.yaml"],
     "nothere.yaml: no such file", 2),
    ("train-negative-batch", ["train", "--config", "batch.yaml"],
     "data.batch_size: must be >= 1, got -4", 2),
    ("train-missing-dataset", ["train", "--config", "missing.yaml"],
     "data.datasets[0]: nothere/nothere.h5 does not exist", 2),
    ("train-name-escapes", ["train", "--config", "ok.yaml", "--name", "../escape"],
     "name: must be a plain folder name", 2),
    ("train-val-fraction-one", ["train", "--config", "ok.yaml", "--set", "data.val_fraction=1"],
     "data.val_fraction: must be in [0, 1), got 1.0", 2),
    # ---- simulate: inputs and ranges are checked before OUT is created
    ("simulate-missing-model", [*SIM, "--model", "nothere.pt"],
     "--model nothere.pt: no such file", 2),
    ("simulate-not-a-model", [*SIM, "--model", "notmodel.pt"],
     "--model notmodel.pt: not a hessid model file", 2),
    ("simulate-model-is-a-folder", [*SIM, "--model", "toy"],
     "--model toy: is a folder", 2),
    ("simulate-missing-reference", [*SIM_NOREF, "--reference", "nothere"],
     "nothere/nothere.h5: no such dataset file", 2),
    ("simulate-reference-not-mapped", [*SIM_NOREF, "--reference", "raw"],
     "the dataset is not CG-mapped (run `hessid data map`)", 2),
    ("simulate-missing-start", [*SIM_NOREF, "--start", "nothere.npy"],
     "--start nothere.npy: no such file", 2),
    ("simulate-negative-steps", [*SIM, "--model", "harmonic", "--steps", "-5"],
     "--steps must be >= 1, got -5", 2),
    ("simulate-zero-stride", [*SIM, "--model", "harmonic", "--stride", "0"],
     "--stride must be >= 1, got 0", 2),
    ("simulate-timestep-200fs", [*SIM, "--model", "harmonic:100", "--timestep", "200"],
     "timestep 200 fs is beyond the stability limit of this model: its stiffest prior bond "
     "(k = 100 kcal/mol/Å²) between beads of 12 amu vibrates at up to ω = 2√(k/m) = 118.1/ps", 2),
    ("simulate-negative-timestep", [*SIM, "--model", "harmonic", "--timestep", "-1"],
     "timestep must be a finite number > 0 (fs), got -1.0", 2),
    # ---- evaluate: reference, simulations and lag are checked before OUT is written
    ("evaluate-missing-reference", ["evaluate", "--reference", "nothere", "--model", "FM=sim",
                                    "--out", "ev"], "nothere/nothere.h5: no such dataset file", 2),
    ("evaluate-reference-not-mapped", ["evaluate", "--reference", "raw", "--model", "FM=sim",
                                       "--out", "ev"], "not CG-mapped", 2),
    ("evaluate-missing-simulation", ["evaluate", "--reference", "toy", "--model", "FM=nosim",
                                     "--out", "ev"], "simulation folder nosim: no such folder", 2),
    ("evaluate-not-a-simulation", ["evaluate", "--reference", "toy", "--model", "FM=toy",
                                   "--out", "ev"], "simulation folder toy: no simulation.json", 2),
    ("evaluate-lag-longer-than-data", ["evaluate", "--reference", "toy", "--model", "FM=sim",
                                       "--out", "ev", "--lag-time", "800"],
     "lag_time 800 ps (800 frames of 1 ps) is not shorter than any reference trajectory "
     "(longest: 12 frames = 11 ps)", 2),
    ("evaluate-bad-model-flag", ["evaluate", "--reference", "toy", "--model", "sim",
                                 "--out", "ev"], "--model expects LABEL=SIMDIR", 2),
    # ---- report
    ("report-missing-folder", ["report", "noeval"], "evaluation folder noeval: no such folder", 2),
    ("report-not-an-evaluation", ["report", "toy"], "evaluation folder toy: no metrics.json", 2),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    write_synthetic_dataset(root / "toy" / "toy.h5", n_beads=5, n_frames=12, seed=0)
    write_synthetic_dataset(root / "raw" / "raw.h5", n_beads=5, n_frames=12, seed=0)
    strip_cg_group(root / "raw" / "raw.h5")  # an imported, not yet mapped dataset
    cwd = os.getcwd()
    os.chdir(root)
    try:  # a good CG simulation of the toy for evaluate
        assert main([*SIM[:SIM.index("--out") + 1], "sim", *SIM[SIM.index("--out") + 2:],
                     "-q"]) == 0
    finally:
        os.chdir(cwd)
    (root / "ok.yaml").write_text(GOOD_YAML)
    for name, text in FILES.items():
        (root / name).write_text(text)
    return root


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "fragment", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_its_exit_code_and_leaves_nothing(argv, fragment, code, workdir,
                                                                  capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    before = _listing(workdir)
    assert main([*argv, "-q"]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hessid ")]
    assert len(lines) == 1, err
    assert fragment in lines[0], err
    assert "Traceback" not in err
    assert _listing(workdir) == before, "a refused command left files behind"


def test_verbose_adds_the_traceback(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["train", "--config", "batch.yaml", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "data.batch_size: must be >= 1" in err


def test_simulate_whose_replicas_all_fail_exits_1_with_a_summary(workdir, capsys, monkeypatch,
                                                                 tmp_path):
    """Bonds of 10 Å equilibrium length leave the allowed Cα–Cα range at once."""
    monkeypatch.chdir(workdir)
    out = tmp_path / "blown"
    argv = [*SIM, "--model", "harmonic:100,10", "--out", os.fspath(out), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "all 2 replicas stopped (at step" in err and "CG bond outside" in err
    assert (out / "simulation.json").exists()  # the failed run's record stays
    assert main([*SIM, "--out", os.fspath(tmp_path / "fine"), "-q"]) == 0  # negative control


def test_evaluate_default_lag_fits_short_data_and_is_recorded(workdir, capsys, monkeypatch,
                                                              tmp_path):
    """Without --lag-time the README chain's short reference gets a tenth of its span."""
    monkeypatch.chdir(workdir)
    out = tmp_path / "ev"
    assert main(["evaluate", "--reference", "toy", "--model", "FM=sim", "--out",
                 os.fspath(out), "--max-kde-points", "200", "-q"]) == 0
    doc = json.loads((out / "FM" / "metrics.json").read_text())
    assert doc["settings"]["lag_time_ps"] == 1.0 and doc["settings"]["lag_auto"] is True
    assert main(["report", os.fspath(out), "-q"]) == 0
    assert (out / "report.html").exists()


def test_negative_control_the_good_config_trains(workdir, capsys, monkeypatch, tmp_path):
    """The refusals above are not a broken command: the same config, valid, trains."""
    monkeypatch.chdir(workdir)
    out = tmp_path / "runs"
    assert main(["train", "--config", "ok.yaml", "--out", os.fspath(out), "-q"]) == 0
    assert (out / "ok" / "model.pt").exists()
