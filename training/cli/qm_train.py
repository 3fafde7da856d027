"""``hessid qm {train,evaluate,cost,check-model}``: atomistic training commands
(docs/atomistic_learning.md). Thin layers over :mod:`hessid.training.atomistic`:

    hessid qm train --data.datasets NAME [NAME ...] [--loss.mode ef|ef_hvp|ef_h]
                    [--loss.probe-kind one_hot|random|gaussian] [--loss.n-probes K]
                    [--loss.probe-regime fresh|fixed] [--loss.form mse|rmse_sum]
                    [--model.precision float32|float64] [--steps N] [--name NAME] [--out DIR]
                    [--resume] [--set KEY=VALUE]
    hessid qm evaluate RUN_DIR [--no-frequencies] [--json FILE]
    hessid qm cost --data.datasets NAME --arms ef ef_hvp/random/1 ef_hvp/random/4 ef_h
                   [--cost-steps N] [--json FILE]
    hessid qm check-model [--model FILE] [--json FILE]

The options of ``train`` and ``cost`` are the fields of
:class:`~hessid.training.atomistic.trainer.TrainConfig`; ``train`` saves them as
``OUT/NAME/hessid-qm-train.yaml``. Exit codes: 0 done, 1 a check failed (check-model),
2 bad options or data. :data:`ACTIONS` lists (parser, help, runner) per action so that
``hessid qm`` can add them beside build/import/validate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser, Namespace

from hessid.cli.options import (
    JobFailed,
    add_dataclass,
    add_run_flags,
    add_set_flag,
    dataclass_from,
    new_parser,
    save_config,
)
from hessid.training.atomistic.check import model_hessian_checks
from hessid.training.atomistic.costs import measure_loss_costs
from hessid.training.atomistic.evaluation import error_metrics, frequency_comparison
from hessid.training.atomistic.frames import Split
from hessid.training.atomistic.model import load_potential
from hessid.training.atomistic.trainer import TrainConfig, load_datasets, train
from hessid.training.data.qm import open_qm_dataset
from hessid.verification.results import exit_code, format_table, write_json

__all__ = ["ACTIONS", "DEFAULT_ARMS", "CostOptions", "EvaluateOptions", "build_parser", "run", "train_config"]

RENAME = {"output_dir": "out"}
#: the arms of ``hessid qm cost`` when none are given
DEFAULT_ARMS = ("ef", "ef_hvp/one_hot/1", "ef_hvp/random/1", "ef_hvp/random/4", "ef_h")
ALIASES = {"optim.max_steps": ["--steps"]}
_RUNTIME = ("config", "print_config", "verbose", "quiet", "log_file", "resume", "arms", "cost_steps",
            "warmup", "json")


def train_config(cfg: Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train``/``cost`` options.

    Raises:
        ValueError: an invalid config (names the key).
    """
    values = {k: v for k, v in cfg.as_dict().items() if k not in _RUNTIME}
    return dataclass_from(TrainConfig, values)


def _train_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Train a TensorNet potential on QM energies, forces and Hessians "
                              "(E-F, E-F-HVP, E-F-H): OUT/NAME/model.pt, metrics.csv.")
    add_dataclass(parser, TrainConfig, rename=RENAME, aliases=ALIASES)
    add_set_flag(parser)
    add_run_flags(parser, resume="continue from OUT/NAME/checkpoints/last.ckpt (same result as "
                                 "an uninterrupted run)")
    return parser


def _train(cfg: Namespace, prog: str) -> None:
    config = train_config(cfg)
    result = train(config, resume=bool(cfg.get("resume")))
    save_config(_train_parser(prog), cfg, result.run_dir, "qm train")
    print(f"model: {result.model}\nmetrics: {result.metrics_csv}\nsteps: {result.global_step}")


@dataclass
class EvaluateOptions:
    """Options of ``hessid qm evaluate``.

    Attributes:
        run: a training run folder (OUT/NAME, holding model.pt and split.json).
        batch_size: structures per evaluation batch.
        frequencies: harmonic frequencies at the model-optimised geometry vs the reference.
        gtol: geometry-optimisation convergence, largest gradient component, kcal/mol/Å.
        json: where to write the results (default RUN/evaluation.json).
    """

    run: str
    batch_size: int = 16
    frequencies: bool = True
    gtol: float = 1e-3
    json: str | None = None


def _evaluate_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Energy/force/Hessian MAE and RMSE on the run's held-out near and "
                              "far structures, and harmonic frequencies at the model's minimum.")
    add_dataclass(parser, EvaluateOptions, positional=["run"])
    return parser


def _evaluate(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(EvaluateOptions, cfg)
    run_dir = Path(opts.run)
    model_path, split_path = run_dir / "model.pt", run_dir / "split.json"
    for p in (model_path, split_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (is {run_dir} a finished `hessid qm train` run?)")
    model = load_potential(model_path)
    split = Split(**{k: [tuple(r) for r in v] for k, v in json.loads(split_path.read_text()).items()})
    datasets = [open_qm_dataset(p) for p in model.metadata.get("datasets", [])]
    if not datasets:
        raise ValueError(f"{model_path}: names no datasets")
    result = {"model": str(model_path), "clock": "process"}
    for role in ("test_near", "test_far", "val"):
        result[role] = error_metrics(model, datasets, getattr(split, role), opts.batch_size)
    if opts.frequencies:
        result["frequencies"] = {}
        for ds in datasets:
            try:
                result["frequencies"][ds.name] = frequency_comparison(model, ds, opts.gtol)
            except ValueError as exc:
                result["frequencies"][ds.name] = {"skipped": str(exc)}
    out = Path(opts.json) if opts.json else run_dir / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for role in ("test_near", "test_far"):
        m = result[role]
        if m.get("n"):
            line = f"{role}: n={m['n']} E MAE {m['energy_mae']:.3f} kcal/mol, F MAE {m['force_mae']:.3f} kcal/mol/Å"
            if "hessian_mae" in m:
                line += f", H MAE {m['hessian_mae']:.3f} kcal/mol/Å²"
            print(line)
    for name, f in result.get("frequencies", {}).items():
        if "frequency_mae" in f:
            print(f"{name}: frequency MAE {f['frequency_mae']:.1f} cm⁻¹ at the model minimum "
                  f"(geometry RMSD {f['geometry_rmsd']:.3f} Å)")
    print(f"wrote {out}")


@dataclass
class CostOptions:
    """Options of ``hessid qm cost`` beyond the training config.

    Attributes:
        arms: loss arms: ``ef``, ``ef_h``, ``ef_hvp/KIND/K[/fresh|fixed]`` (none given:
            ef ef_hvp/one_hot/1 ef_hvp/random/1 ef_hvp/random/4 ef_h).
        cost_steps: timed steps per arm.
        warmup: untimed steps per arm first.
        json: write the timings here (default: print only).
    """

    arms: list[str] = field(default_factory=list)
    cost_steps: int = 10
    warmup: int = 2
    json: str | None = None


def _cost_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "Per-step and per-epoch process time of each loss, measured side by "
                              "side on the same batches (interleaved).")
    add_dataclass(parser, TrainConfig, rename=RENAME, aliases=ALIASES)
    add_dataclass(parser, CostOptions)
    add_set_flag(parser)
    return parser


def _cost(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(CostOptions, cfg)
    config = train_config(cfg)
    arms = opts.arms or list(DEFAULT_ARMS)
    result = measure_loss_costs(config, load_datasets(config.data), arms, opts.cost_steps, opts.warmup)
    result["settings"] = asdict(config)
    for arm, r in result["arms"].items():
        print(f"{arm:>22}: {1e3 * r['step_s_median']:9.1f} ms/step  {r['epoch_s']:8.2f} s/epoch  "
              f"x{r['relative_to_first']:.2f}")
    print(f"process clock, {result['threads']} threads, load average {result['load_average']}")
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(result, indent=1, default=_json_default))


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


@dataclass
class CheckOptions:
    """Options of ``hessid qm check-model``.

    Attributes:
        model: a trained model file (checked in float64); default: random TensorNet weights.
        json: also write the rows as JSON.
    """

    model: str | None = None
    json: str | None = None


def _check_parser(prog: str) -> ArgumentParser:
    parser = new_parser(prog, "The model's HVPs and Hessians against autograd on random molecules "
                              "(float64), with negative controls: the rows of "
                              "`hessid verify --model-hessian`.", config=False)
    add_dataclass(parser, CheckOptions)
    return parser


def _check(cfg: Namespace, prog: str) -> None:
    opts = dataclass_from(CheckOptions, cfg)
    rows = model_hessian_checks(opts.model)
    print(format_table(rows))
    if opts.json:
        write_json(rows, opts.json)
    if exit_code(rows) != 0:
        raise JobFailed("a model-Hessian row failed")


#: action → (parser maker, help line, runner(cfg, prog))
ACTIONS = {
    "train": (_train_parser, "train a TensorNet potential (E-F, E-F-HVP, E-F-H)", _train),
    "evaluate": (_evaluate_parser, "held-out errors and harmonic frequencies of a trained run", _evaluate),
    "cost": (_cost_parser, "per-step and per-epoch cost of each loss, side by side", _cost),
    "check-model": (_check_parser, "model HVPs/Hessians vs autograd, with negative controls", _check),
}


def build_parser(prog: str = "hessid qm") -> ArgumentParser:
    """The parser of the atomistic training actions (one subcommand each)."""
    parser = new_parser(prog, "Atomistic training (docs/atomistic_learning.md).", config=False,
                        logging_flags=False)
    sub = parser.add_subcommands(dest="subcommand", required=True)
    for name, (make, help_, _) in ACTIONS.items():
        sub.add_subcommand(name, make(f"{prog} {name}"), help=help_)
    return parser


def run(cfg: Namespace, parser: ArgumentParser) -> int:
    """Run the parsed action; returns 0 (errors raise: :func:`hessid.cli.options.run_command`).

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad options or data (exit 2).
        JobFailed: a model-Hessian row failed (exit 1).
    """
    action = cfg.subcommand
    ACTIONS[action][2](cfg[action], f"{parser.prog} {action}")
    return 0
