"""Parser pieces shared by the training commands (the generic ones are in :mod:`hessid.cli.options`)."""

from __future__ import annotations

from jsonargparse import ArgumentParser

__all__ = ["ROOT_HELP", "add_dataset_arguments"]

#: --root: the folder holding NAME/ (same help everywhere)
ROOT_HELP = "folder holding the dataset folders NAME/ (default: the working directory)"


def add_dataset_arguments(parser: ArgumentParser) -> None:
    """Add the positional ``name`` (a dataset name, folder or file path; str) and ``--root``
    (str, default ``.``: the folder holding ``NAME/``), resolved by the command with
    :func:`~hessid.training.data.io.dataset_path` or
    :func:`~hessid.training.data.qm.qm_dataset_path`."""
    parser.add_argument("name", type=str, help="dataset name or path")
    parser.add_argument("--root", type=str, default=".", help=ROOT_HELP)
