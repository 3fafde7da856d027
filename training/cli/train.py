"""``hessid train``: a thin layer over :func:`hessid.training.learning.trainer.train`.

    hessid train --config run.yaml [--set loss.cov_weight=1 ...] [--resume]
                 [--devices N] [--num-nodes N] [--accelerator cpu|gpu|auto]
                 [--max-steps N] [--name NAME] [--output-dir DIR] [--skip-verification]

Every flag is also a config key (docs/training.md); flags override the YAML, ``--set`` overrides
any key. Exit codes: 0 trained, 3 the verification gate refused, 2 bad config or data.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers) -> None:
    """Add the ``train`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "train", help="train a CG potential (FM / FM+AA / FM+AA+Cov)",
        description="Train CGSchNet + priors by force matching and HVP matching (spec §5). "
                    "The CG map and projector of every dataset are verified first.")
    p.add_argument("--config", required=True, help="YAML run config (docs/training.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.cov_weight=1 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <run>/checkpoints/last.ckpt with the same data order")
    p.add_argument("--devices", type=int, help="devices per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=int, help="nodes (DDP when > 1)")
    p.add_argument("--accelerator", choices=["cpu", "gpu", "auto"], help="Lightning accelerator")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--name", help="run name (output folder)")
    p.add_argument("--output-dir", help="parent folder of runs")
    p.add_argument("--skip-verification", action="store_true",
                   help="DANGEROUS: train without verifying the CG map/projector")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit code."""
    from hessid.training.learning.configs import load_config
    from hessid.training.learning.gate import VerificationGateError
    from hessid.training.learning.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.set)
    for flag, key in (("devices", "trainer.devices"), ("num_nodes", "trainer.num_nodes"),
                      ("accelerator", "trainer.accelerator"), ("max_steps", "trainer.max_steps"),
                      ("name", "name"), ("output_dir", "output_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(args.config, overrides)
        if args.skip_verification:
            print("WARNING: --skip-verification: the CG map and projector will NOT be verified",
                  file=sys.stderr)
        result = train(cfg, resume=args.resume, skip_verification=args.skip_verification or None)
    except VerificationGateError as exc:
        print(f"hessid train: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        print(f"hessid train: {exc}", file=sys.stderr)
        return 2
    print(f"model: {result.model}\nmetrics: {result.metrics_csv}\nsteps: {result.global_step}")
    return 0
