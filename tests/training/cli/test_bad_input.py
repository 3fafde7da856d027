"""Bad input to the run commands (train, simulate, evaluate, report): one line on stderr that
names the key or file, the documented exit code, no traceback, and nothing left behind.

One table (:data:`CASES`): command line, expected message fragment, exit code. Every case
runs in the same prepared folder (a small synthetic dataset, config files, a file that is
not a model); the folder's listing must be the same afterwards. Negative control: the good
versions of the same command lines succeed in the same folder and do write their outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hessid.cli import main
from hessid.training.data.synthetic import write_synthetic_dataset

GOOD_YAML = ("name: ok\ndata:\n  datasets: [toy]\n  batch_size: 4\nmodel:\n"
             "  embedding_dimension: 8\n  num_layers: 1\n  num_rbf: 4\ntrainer:\n"
             "  max_steps: 1\n  val_every_steps: 1\n  progress_bar: false\n")

FILES = {
    "lr.yaml": GOOD_YAML + "optim:\n  lr: fast\n",
    "batch.yaml": GOOD_YAML.replace("batch_size: 4", "batch_size: -4"),
    "broken.yaml": "name: ok\ndata: [datasets: toy\n  x: : \n",
    "missing.yaml": GOOD_YAML.replace("[toy]", "[nothere]"),
    "list.yaml": "- just\n- a list\n",
    "notmodel.pt": "this is not a checkpoint\n",
}

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
     "data.datasets[0]: no such file nothere/nothere.h5", 2),
    ("train-name-escapes", ["train", "--config", "ok.yaml", "--name", "../escape"],
     "name: must be a plain folder name", 2),
    ("train-val-fraction-one", ["train", "--config", "ok.yaml", "--set", "data.val_fraction=1"],
     "data.val_fraction: must be in [0, 1), got 1.0", 2),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    write_synthetic_dataset(root / "toy" / "toy.h5", n_beads=5, n_frames=12, seed=0)
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


def test_negative_control_the_good_config_trains(workdir, capsys, monkeypatch, tmp_path):
    """The refusals above are not a broken command: the same config, valid, trains."""
    monkeypatch.chdir(workdir)
    out = tmp_path / "runs"
    assert main(["train", "--config", "ok.yaml", "--out", os.fspath(out), "-q"]) == 0
    assert (out / "ok" / "model.pt").exists()
