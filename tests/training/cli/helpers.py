"""Helpers of the CLI tests: a minimal good training config, and HDF5 edits (h5py stays out of
the test modules)."""

from __future__ import annotations

from pathlib import Path

import h5py

#: a minimal training config that runs one step on the dataset ``toy``
GOOD_YAML = ("name: ok\ndata:\n  datasets: [toy]\n  batch_size: 4\nmodel:\n"
             "  embedding_dimension: 8\n  num_layers: 1\n  num_rbf: 4\ntrainer:\n"
             "  max_steps: 1\n  val_every_steps: 1\n  progress_bar: false\n")


def strip_cg_group(path: str | Path) -> None:
    """Delete the ``cg`` group of a dataset file: an imported dataset not yet mapped."""
    with h5py.File(path, "a") as f:
        del f["cg"]
