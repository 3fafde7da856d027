"""`hessid qm train|evaluate|cost` on tiny files written in the atomistic dataset layout."""

from __future__ import annotations

import json

import pytest

from hessid.cli.options import run_command
from hessid.training.cli import qm_train
from hessid.training.data.qm import write_qm_dataset
from tests.training.atomistic.fixtures import fake_dataset

SMALL_FLAGS = ["--model.embedding-dimension", "8", "--model.num-layers", "1", "--model.num-rbf", "8",
               "--no-progress"]


def _qm(argv):
    return run_command(qm_train.build_parser, qm_train.run, argv, "hessid qm")


@pytest.fixture
def data_root(tmp_path):
    for name, n, seed in (("tri", 3, 1), ("quad", 4, 2)):
        ds = fake_dataset(name, n, 20, seed)
        write_qm_dataset(tmp_path / name / f"{name}.h5", ds.species, ds.coordinates, ds.energies,
                         ds.forces, ds.hessians, structure_id=ds.structure_id, subset=ds.subset,
                         attrs={"method": "quadratic test"})
    return tmp_path


def _train_args(root, *extra):
    return ["train", "--data.datasets", "tri", "quad", "--data.root", str(root), "--data.n-train", "8",
            "--data.n-val", "2", "--data.n-test", "3", "--optim.batch-size", "4", "--optim.max-epochs", "1",
            "--out", str(root / "runs"), "--name", "r", *SMALL_FLAGS, *extra]


def test_train_then_evaluate(data_root, capsys):
    assert _qm(_train_args(data_root, "--loss.mode", "ef_hvp", "--loss.probe-kind", "one_hot")) == 0
    run = data_root / "runs" / "r"
    assert (run / "model.pt").is_file() and (run / "hessid-qm-train.yaml").is_file()
    assert _qm(["evaluate", str(run), "--gtol", "0.1"]) == 0
    out = json.loads((run / "evaluation.json").read_text())
    assert out["test_near"]["n"] == 3 and out["test_far"]["n"] == 3
    assert "hessian_rmse" in out["test_far"]
    assert set(out["frequencies"]) == {"tri", "quad"}
    assert "test_near: n=3" in capsys.readouterr().out


def test_bad_input_is_one_line_exit_2(data_root, capsys):
    assert _qm(_train_args(data_root, "--loss.mode", "hessian")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _qm(["train", "--data.datasets", "missing", "--data.root", str(data_root), *SMALL_FLAGS]) == 2
    assert "missing" in capsys.readouterr().err
    assert _qm(["evaluate", str(data_root / "nowhere")]) == 2
    assert not (data_root / "runs").exists()  # nothing left behind


def test_cost_measures_every_arm(data_root, tmp_path):
    out = tmp_path / "cost.json"
    argv = ["cost", "--data.datasets", "tri", "--data.root", str(data_root), "--data.n-train", "4",
            "--data.n-val", "0", "--data.n-test", "2", "--optim.batch-size", "4", "--cost-steps", "1",
            "--warmup", "0", "--arms", "ef", "ef_hvp/random/2", "ef_h", "--json", str(out), *SMALL_FLAGS]
    assert _qm(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"ef", "ef_hvp/random/2", "ef_h"}
    assert result["clock"] == "process" and len(result["load_average"]) == 2
