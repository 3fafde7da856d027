"""The training commands: unified flag names, --print-config round trips, defaults taken from
the stage dataclasses, dataset names or paths, fs timesteps, exit codes."""

from __future__ import annotations

import json
import re

import mdtraj as md
import numpy as np
import pytest

from hessid.cli import main
from hessid.training.cli.evaluate import _models
from hessid.training.cli.evaluate import build_parser as evaluate_parser
from hessid.training.cli.train import build_parser as train_parser
from hessid.training.cli.train import train_config
from hessid.training.data.aa_md import MDConfig
from hessid.training.data.reader import load_dataset
from hessid.training.data.synthetic import compact_chain, write_synthetic_dataset
from hessid.training.learning.models import CGPotential
from hessid.training.learning.priors import PriorFit
from hessid.training.learning.trainer import TrainConfig

LOGGING = {"-v", "--verbose", "-q", "--quiet", "--log-file"}
CONFIG = {"--config", "--print-config"}
#: the unified flags each command must offer (besides LOGGING and CONFIG)
UNIFIED = {
    ("data", "simulate"): {"--steps", "--stride", "--timestep", "--temperature", "--seed",
                           "--resume", "--overwrite", "--no-progress", "--hydrogen-mass"},
    ("data", "import"): {"--timestep", "--temperature", "--overwrite"},
    ("data", "map"): {"--overwrite"},
    ("targets",): {"--seed", "--resume", "--overwrite", "--no-progress"},
    ("train",): {"--out", "--seed", "--resume", "--no-progress", "--steps"},
    ("simulate",): {"--steps", "--stride", "--timestep", "--temperature", "--out", "--seed",
                    "--resume", "--overwrite", "--no-progress"},
    ("evaluate",): {"--out", "--seed"},
    ("report",): {"--out", "--temperature"},
    ("demo",): {"--out", "--seed", "--no-progress"},
    ("verify",): {"--temperature"},
}
#: names the unified scheme replaced
RETIRED = {"--n-steps", "--save-interval", "--n-replicas", "--output-dir", "--quiet-progress"}


def _flags(argv: list[str], capsys) -> set[str]:
    assert main([*argv, "--help"]) == 0
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w.-]*)", capsys.readouterr().out))


@pytest.mark.parametrize("command", sorted(UNIFIED))
def test_every_command_offers_the_unified_flag_names(command, capsys):
    flags = _flags(list(command), capsys)
    assert UNIFIED[command] | LOGGING | CONFIG <= flags, UNIFIED[command] - flags
    assert not flags & RETIRED
    assert not [f for f in flags if "_" in f], "flags use dashes"


REQUIRED = {
    ("data", "build"): ["--name", "ag", "--sequence", "AG"],
    ("data", "simulate"): ["ag", "--steps", "40", "--stride", "10", "--hydrogen-mass", "3",
                           "--no-minimize", "--no-progress"],
    ("data", "import"): ["x.npz", "--name", "imp", "--timestep", "20"],
    ("data", "map"): ["ag", "--no-constraint-aware"],
    ("targets",): ["ag", "--probes", "2", "--workers", "0"],
    ("train",): ["--name", "r", "--loss.cov-weight", "1", "--data.datasets", "a.h5", "b.h5"],
    ("simulate",): ["--model", "harmonic", "--reference", "ag", "--out", "sim", "--steps", "60",
                    "--stride", "20"],
    ("evaluate",): ["--reference", "ag", "--model", "FM=sim", "FM=sim2", "--model", "Cov=s3",
                    "--out", "ev",
                    "--bond-range", "2.5", "6.5"],
    ("report",): ["ev", "--training", "FM=runs/r/metrics.csv", "--temperature", "310"],
    ("demo",): ["--scale", "ci", "--out", "d"],
    ("verify",): ["--all", "--json", "v.json"],
}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_print_config_reads_back_to_the_same_resolved_values(command, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, *REQUIRED[command], "--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(printed)
    assert main([*command, "--config", "c.yaml", "--print-config"]) == 0
    assert capsys.readouterr().out == printed


def test_data_simulate_defaults_come_from_mdconfig_and_the_new_flag_reaches_it(capsys):
    assert main(["data", "simulate", "ag", "--hydrogen-mass", "3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "hydrogen_mass: 3.0" in printed
    for key in ("steps", "stride", "timestep", "temperature", "friction", "chunk_frames"):
        assert f"\n{key}: {getattr(MDConfig(), key)}\n" in printed


def test_train_options_are_the_train_config_keys(tmp_path):
    run_yaml = tmp_path / "cfg" / "run.yaml"
    run_yaml.parent.mkdir()
    (tmp_path / "cfg" / "near.h5").touch()
    run_yaml.write_text("name: y\noutput_dir: o\ndata:\n  datasets: [near.h5, chig]\n"
                        "loss:\n  mode: fm_hvp\n  cov_weight: 0\n")
    cfg = train_parser().parse_args(["--config", str(run_yaml), "--steps", "5", "--no-progress",
                                     "--set", "loss.cov_weight=1", "--set", "optim.lr=0.01"])
    config = train_config(cfg)
    assert isinstance(config, TrainConfig)
    assert (config.name, config.output_dir) == ("y", "o")
    assert config.trainer.max_steps == 5 and config.trainer.progress_bar is False
    assert config.loss.cov_weight == 1 and config.optim.lr == 0.01
    # a relative path next to the YAML file; a dataset name → NAME/NAME.h5
    assert config.data.datasets == [str(tmp_path / "cfg" / "near.h5"), "chig/chig.h5"]
    assert config.trainer.val_every_steps == TrainConfig().trainer.val_every_steps


def test_train_refuses_bad_config_with_exit_2(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("name: x\n")
    assert main(["train", "--config", str(tmp_path / "x.yaml")]) == 2  # no datasets
    assert "data.datasets is empty" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "x.yaml"), "--set", "nope=1"]) == 2
    assert main(["train", "--config", str(tmp_path / "x.yaml"), "--optim.nope", "1"]) == 2
    (tmp_path / "y.yaml").write_text("optim:\n  learning_rate: 1\n")
    assert main(["train", "--config", str(tmp_path / "y.yaml")]) == 2  # unknown key in the file


def test_import_takes_the_timestep_in_fs_and_saves_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(5, 4, 3)) * 3.0)  # (T, N, 3) Å
    np.save(tmp_path / "f.npy", rng.normal(size=(5, 4, 3)))  # kcal/mol/Å
    (tmp_path / "top.pdb").write_text("".join(
        f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {3.8 * i:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00"
        f"           C\n" for i in range(4)) + "END\n")
    assert main(["data", "import", "x.npy", "--name", "imp", "--forces", "f.npy", "--topology",
                 "top.pdb", "--length-unit", "angstrom", "--force-unit", "kcal/mol/angstrom",
                 "--timestep", "20", "--temperature", "300", "--constraints", "none"]) == 0
    got = load_dataset("imp/imp.h5")
    np.testing.assert_allclose(np.diff(got.time), 0.02)  # 20 fs between frames = 0.02 ps
    assert (tmp_path / "imp" / "hessid-data-import.yaml").exists()
    assert main(["data", "validate", "imp"]) == 0  # a name: ./imp/imp.h5
    assert main(["data", "validate", "imp/imp.h5"]) == 0  # or a path
    assert main(["data", "validate", "nothere"]) == 2


def test_simulate_accepts_a_dataset_name_and_saves_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(tmp_path / "toy" / "toy.h5", n_beads=5, n_frames=6, seed=0)
    argv = ["simulate", "--model", "harmonic", "--reference", "toy", "--out", "sim", "--steps",
            "40", "--stride", "20", "--replicas", "2", "--no-progress", "-q"]
    assert main(argv) == 0
    saved = tmp_path / "sim" / "hessid-simulate.yaml"
    assert saved.exists() and "reference: toy" in saved.read_text()
    assert main(argv) == 2  # the folder holds a run: neither --resume nor --overwrite
    assert main(["simulate", "--config", str(saved), "--resume"]) == 0


def test_simulate_prior_only_runs_the_prior_alone_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prior = PriorFit().fit(compact_chain(8, 30, seed=2)).fetch_model()
    CGPotential(["ALA", "GLY"], prior, {"embedding_dimension": 16, "num_layers": 2, "num_rbf": 6}).save("model.pt")
    np.save("start.npy", compact_chain(8, 1, seed=3)[0])  # (8, 3) Å
    common = ["--start", "start.npy", "--steps", "40", "--stride", "20", "--replicas", "2", "--timestep", "1",
              "--no-progress", "-q"]
    assert main(["simulate", "--model", "model.pt", "--out", "prior", "--prior-only", *common]) == 0
    assert main(["simulate", "--model", "model.pt", "--out", "full", *common]) == 0
    assert json.loads((tmp_path / "prior" / "simulation.json").read_text())["provenance"]["prior_only"] is True
    assert json.loads((tmp_path / "full" / "simulation.json").read_text())["provenance"]["prior_only"] is False
    # same seed, start and noise: the trajectories differ only through the network's forces
    ends = [load_trajectory_end(tmp_path / name) for name in ("prior", "full")]
    assert not np.allclose(*ends)
    # a model without a prior (the harmonic stand-in) is refused: one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["simulate", "--model", "harmonic", "--out", "h", "--prior-only", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prior-only" in err and "\n" not in err and not (tmp_path / "h").exists()


def load_trajectory_end(folder):
    """Last saved frame of replica 0 of a ``hessid simulate`` folder, (n, 3) Å."""
    return md.load(str(folder / "replica_000.dcd"), top=str(folder / "topology.pdb")).xyz[-1] * 10.0


def test_a_repeated_model_flag_collects_labels_and_seeds():
    cfg = evaluate_parser().parse_args(["--reference", "ref.h5", "--out", "ev", "--model", "FM=a",
                                     "FM=b", "--model", "Cov=c"])
    assert _models(cfg.model) == {"FM": ["a", "b"], "Cov": ["c"]}
    with pytest.raises(ValueError, match="LABEL=SIMDIR"):
        _models(["nolabel"])
