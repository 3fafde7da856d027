"""The core command line (`hessid.cli`): help without the training layer, exit codes 0/1/2,
parsers generated from dataclasses, a missing extra named in one line."""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
from jsonargparse import Namespace

from hessid.cli import COMMANDS, main, usage
from hessid.cli.options import (
    EXIT_CODES,
    JobFailed,
    add_dataclass,
    add_run_flags,
    attribute_docs,
    dataclass_from,
    missing_extra_message,
    new_parser,
    run_command,
    save_config,
)

# a python process in which the training stack cannot be imported (as on a core-only install)
BLOCKED = ("openmm", "torchmdnet", "lightning", "h5py", "mdtraj")
WITHOUT_TRAINING = textwrap.dedent(f"""
    import importlib.abc, json, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _Blocked())
    from hessid.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({{"code": code, "training_imported": "hessid.training" in sys.modules}}))
""")


def _run_without_training(*argv: str, cwd=None) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TRAINING, *argv], capture_output=True,
                          text=True, timeout=900, cwd=cwd)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_help_lists_every_command_and_the_exit_codes_without_the_training_layer():
    result, proc = _run_without_training("--help")
    assert result == {"code": 0, "training_imported": False}
    for command in COMMANDS:
        assert f"  {command.name}  " in proc.stdout
    for code, text in EXIT_CODES.items():
        assert f"  {code}  {text}" in proc.stdout


@pytest.mark.slow
def test_verify_all_runs_without_the_training_layer():
    result, proc = _run_without_training("verify", "--all", "-q")
    assert result == {"code": 0, "training_imported": False}, proc.stderr
    assert "FAIL" not in proc.stdout.replace("0 FAIL", "")


def test_a_training_command_without_its_extra_names_the_extra_and_exits_2(tmp_path):
    (tmp_path / "x.yaml").write_text("name: x\n")
    result, proc = _run_without_training("train", "--config", "x.yaml", cwd=tmp_path)
    assert result["code"] == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "pip install 'hessid[training]'" in err[0], proc.stderr
    assert err[0].startswith("hessid train: needs the 'training' extra")


def test_python_dash_m_hessid_is_the_same_entry_point():
    proc = subprocess.run([sys.executable, "-m", "hessid", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == usage()


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert main(["verify", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main(["verify"]) == 2  # neither --all, --gaussian nor SYSTEM.py
    assert main(["verify", "--version"]) == 2
    assert main(["--version"]) == 0


# ----------------------------------------------------------------------------- options


@dataclass
class _Stage:
    """A stage config.

    Attributes:
        steps: production steps.
        hydrogen_mass: amu, or None.  temperature: K.
        minimize: run the minimiser first.
        bond_range: (min, max) Å.
        datasets: dataset paths.
    """

    steps: int = 10
    hydrogen_mass: float | None = None
    temperature: float = 300.0
    minimize: bool = True
    bond_range: tuple[float, float] = (2.0, 6.0)
    datasets: list = field(default_factory=list)


@dataclass
class _Nested:
    """Attributes:
    output_dir: parent folder.
    """

    output_dir: str = "runs"
    stage: _Stage = field(default_factory=_Stage)


def test_attribute_docs_reads_entries_shared_lines_and_continuations():
    docs = attribute_docs(_Stage)
    assert docs["steps"] == "production steps."
    assert docs["hydrogen_mass"] == "amu, or None." and docs["temperature"] == "K."
    assert docs["bond_range"] == "(min, max) Å."


def test_dataclass_flags_use_dashes_keys_use_field_names_and_defaults_come_from_the_dataclass():
    parser = new_parser("hessid x", "test")
    add_dataclass(parser, _Stage)
    cfg = parser.parse_args(["--hydrogen-mass", "3", "--no-minimize", "--bond-range", "1", "5",
                             "--datasets", "a.h5", "b.h5", "--datasets", "c.h5"])
    stage = dataclass_from(_Stage, cfg)
    assert stage == _Stage(hydrogen_mass=3.0, minimize=False, bond_range=(1.0, 5.0),
                           datasets=["a.h5", "b.h5", "c.h5"])
    assert dataclass_from(_Stage, parser.parse_args([])) == _Stage()


def test_nested_dataclasses_rename_and_aliases():
    parser = new_parser("hessid x", "test")
    add_dataclass(parser, _Nested, rename={"output_dir": "out"},
                  aliases={"stage.steps": ["--steps"]})
    cfg = parser.parse_args(["--out", "o", "--steps", "7", "--stage.temperature", "310"])
    assert dataclass_from(_Nested, cfg) == _Nested("o", _Stage(steps=7, temperature=310.0))
    assert cfg.as_dict()["output_dir"] == "o"  # the config key stays the field name


def test_saved_config_reads_back_to_the_same_options(tmp_path):
    parser = new_parser("hessid x", "test")
    add_dataclass(parser, _Nested)
    add_run_flags(parser, resume="r", overwrite="o", progress=True)
    cfg = parser.parse_args(["--stage.steps", "5", "--stage.hydrogen-mass", "4", "--no-progress",
                             "--resume"])
    path = save_config(parser, cfg, tmp_path / "out", "x sub")
    assert path == tmp_path / "out" / "hessid-x-sub.yaml"
    again = parser.parse_args(["--config", str(path)])
    del again["config"], cfg["config"]
    assert again == cfg


def _command(action):
    def build_parser(prog):
        parser = new_parser(prog, "test")
        parser.add_argument("--n", type=int, default=0)
        return parser

    def run(cfg: Namespace, parser) -> int:
        return action(cfg)

    return build_parser, run


def _raise(exc):
    def action(cfg):
        raise exc

    return action


@pytest.mark.parametrize("action, code, message", [
    (lambda cfg: 0, 0, None),
    (lambda cfg: 1, 1, None),
    (_raise(JobFailed("gate refused")), 1, "hessid t: failed: gate refused"),
    (_raise(OSError("disk full")), 1, "hessid t: failed: disk full"),
    (_raise(ValueError("bad value")), 2, "hessid t: refused: bad value"),
    (_raise(FileNotFoundError("no such file")), 2, "hessid t: refused: no such file"),
    (_raise(KeyError("no 'cg/coordinates'")), 2, "hessid t: refused: no 'cg/coordinates'"),
    (_raise(ModuleNotFoundError("No module named 'openmm'", name="openmm")), 2,
     "pip install 'hessid[training]'"),
])
def test_run_command_maps_outcomes_to_exit_codes(action, code, message, capsys):
    assert run_command(*_command(action), [], "hessid t", "training") == code
    err = capsys.readouterr().err
    if message is None:
        assert err == ""
    else:
        assert len(err.strip().splitlines()) == 1 and message in err


def test_refused_input_prints_a_traceback_only_with_verbose(capsys):
    build, run = _command(_raise(ValueError("bad value")))
    assert run_command(build, run, [], "hessid t") == 2
    assert "Traceback" not in capsys.readouterr().err
    assert run_command(build, run, ["-v"], "hessid t") == 2
    assert "Traceback" in capsys.readouterr().err


def test_usage_error_help_and_print_config_codes(capsys):
    build, run = _command(lambda cfg: 0)
    assert run_command(build, run, ["--n", "x"], "hessid t") == 2
    assert run_command(build, run, ["--help"], "hessid t") == 0
    assert run_command(build, run, ["--n", "3", "--print-config"], "hessid t") == 0
    assert "n: 3" in capsys.readouterr().out


def test_missing_extra_message():
    assert "hessid[dask]" in missing_extra_message(ModuleNotFoundError("x", name="distributed"))
    assert "hessid[training]" in missing_extra_message(
        ModuleNotFoundError("x", name="torchmdnet.models"))
    assert missing_extra_message(ImportError("install hessid[dask]")) == "install hessid[dask]"
    assert missing_extra_message(ImportError("x", name="hessid.training.nope")) is None
