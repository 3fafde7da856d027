"""End to end on real GFN2-xTB data: `hessid qm build` (tblite) of water, then E-F-HVP
training and evaluation against the stored minimum's frequencies."""

from __future__ import annotations

import json

import pytest

from hessid.cli import main
from hessid.cli.options import run_command
from hessid.training.cli import qm_train

pytest.importorskip("tblite")
pytest.importorskip("rdkit")


def test_water_build_train_evaluate(tmp_path, capsys):
    assert main(["qm", "build", "--smiles", "O", "--name", "water", "--method", "gfn2-xtb",
                 "--configs", "10", "--root", str(tmp_path), "--no-progress"]) == 0
    argv = ["train", "--data.datasets", "water", "--data.root", str(tmp_path), "--data.n-train", "4",
            "--data.n-val", "0", "--data.n-test", "2", "--optim.batch-size", "2", "--optim.max-epochs", "1",
            "--loss.mode", "ef_hvp", "--loss.probe-regime", "fixed", "--model.embedding-dimension", "8",
            "--model.num-layers", "1", "--model.num-rbf", "8", "--out", str(tmp_path / "runs"),
            "--name", "w", "--no-progress"]
    assert run_command(qm_train.build_parser, qm_train.run, argv, "hessid qm") == 0
    run = tmp_path / "runs" / "w"
    assert run_command(qm_train.build_parser, qm_train.run, ["evaluate", str(run), "--gtol", "0.05"],
                       "hessid qm") == 0
    out = json.loads((run / "evaluation.json").read_text())
    freq = out["frequencies"]["water"]
    assert freq["source"] == "minimum 0"
    ref = freq["reference_frequencies"]
    assert len(ref) == 3 and 1300 < ref[0] < 1800 and 3300 < ref[-1] < 4100  # GFN2-xTB water
