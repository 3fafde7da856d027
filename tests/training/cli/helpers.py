"""Helpers of the CLI tests that touch HDF5 files (h5py stays out of the test modules)."""

from __future__ import annotations

from pathlib import Path

import h5py


def strip_cg_group(path: str | Path) -> None:
    """Delete the ``cg`` group of a dataset file: an imported dataset not yet mapped."""
    with h5py.File(path, "a") as f:
        del f["cg"]
