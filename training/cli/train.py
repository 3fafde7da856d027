"""``hessid train``: a thin layer over :func:`hessid.training.learning.trainer.train`.

    hessid train --config run.yaml [--loss.cov-weight 1 ...] [--set KEY=VALUE ...] [--resume]
                 [--devices N] [--num-nodes N] [--accelerator cpu|gpu|auto] [--steps N]
                 [--name NAME] [--out DIR] [--skip-verification]

The options are the fields of :class:`~hessid.training.learning.trainer.TrainConfig`
(``--data.batch-size``, ``--trainer.val-every-steps``, ...; docs/training.md), so a run YAML
is a ``--config`` file; flags after ``--config`` override it, and so does ``--set KEY=VALUE``
(a dotted config key, VALUE read as YAML). Short names: ``--out`` = ``output_dir``,
``--steps`` = ``trainer.max_steps``, ``--devices``/``--num-nodes``/``--accelerator`` =
``trainer.*``, ``--no-progress`` = ``trainer.progress_bar: false``. The resolved config is
saved as ``<out>/<name>/hessid-train.yaml``. Exit codes: 0 trained, 1 the verification gate
refused, 2 bad config or data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from hessid.cli.options import (
    JobFailed,
    add_dataclass,
    add_run_flags,
    add_set_flag,
    new_parser,
    save_config,
)
from hessid.training.data.io import dataset_path
from hessid.training.learning.configs import TrainConfig
from hessid.training.learning.gate import VerificationGateError
from hessid.training.learning.trainer import train
from hessid.training.md.simulation import deterministic_torch

#: what --deterministic does and costs (train, demo)
DETERMINISTIC_HELP = (
    "bit-identical results for a fixed --seed on this machine and these library versions: one "
    "CPU thread and torch's deterministic algorithms (cost: no multi-threading, about 2x slower "
    "on 2 cores; slower deterministic GPU kernels). Without it a fixed seed gives the same data "
    "order and initial weights, but multi-threaded sums may differ in the last bits. Other "
    "machines, torch builds or rank counts are not covered")

__all__ = ["build_parser", "run", "train_config"]

#: option names that differ from the TrainConfig keys
RENAME = {"output_dir": "out", "trainer.progress_bar": "progress"}
ALIASES = {"trainer.max_steps": ["--steps", "--max-steps"], "trainer.devices": ["--devices"],
           "trainer.num_nodes": ["--num-nodes"], "trainer.accelerator": ["--accelerator"]}
#: parsed keys that are not TrainConfig keys
_RUNTIME = ("config", "print_config", "verbose", "quiet", "log_file", "resume", "deterministic")


def build_parser(prog: str = "hessid train") -> ArgumentParser:
    """The parser of ``hessid train``: every :class:`TrainConfig` key, ``--set``, ``--resume``."""
    parser = new_parser(prog, "Train CGSchNet + priors by force matching and HVP matching. "
                              "The CG map and projector of every dataset are verified first.")
    add_dataclass(parser, TrainConfig, rename=RENAME, aliases=ALIASES,
                  help={"skip_verification": "DANGEROUS: train without verifying the CG map "
                                             "and projector"})
    add_set_flag(parser)
    add_run_flags(parser, resume="continue from <out>/<name>/checkpoints/last.ckpt with the "
                                 "same data order")
    parser.add_argument("--deterministic", action=ActionYesNo(no_prefix="no-"), default=False,
                        help=DETERMINISTIC_HELP)
    return parser


def train_config(cfg: Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options: dataset names
    resolved (``NAME`` → ``NAME/NAME.h5``, :func:`~hessid.training.data.io.dataset_path`),
    relative paths looked up in the working directory, then next to the ``--config`` file.

    Raises:
        ValueError: an invalid config.
    """
    values = {k: v for k, v in cfg.as_dict().items() if k not in _RUNTIME}
    data = values.get("data") or {}
    data["datasets"] = [str(dataset_path(p)) for p in data.get("datasets") or []]
    configs = cfg.get("config") or []
    base = Path(os.fspath(configs[-1])).parent if configs else None
    return TrainConfig.from_dict(values, base_dir=base)


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run ``hessid train``; returns 0 (errors raise: see
    :func:`hessid.cli.options.run_command`).

    Raises:
        JobFailed: the verification gate refused a dataset (exit 1).
        ValueError, FileNotFoundError: bad config or data, one line naming the key or file
            (exit 2); nothing is created.
    """
    config = train_config(cfg)
    config.check_files()  # refused before the run folder is created
    if config.skip_verification:
        print("WARNING: --skip-verification: the CG map and projector will NOT be verified",
              file=sys.stderr)
    try:
        with deterministic_torch(bool(cfg.get("deterministic"))):
            result = train(config, resume=cfg.resume)
    except VerificationGateError as exc:
        raise JobFailed(str(exc)) from exc
    save_config(parser, cfg, result.run_dir, "train")
    print(f"model: {result.model}\nmetrics: {result.metrics_csv}\nsteps: {result.global_step}")
    return 0
