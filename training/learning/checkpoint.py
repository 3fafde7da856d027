"""One-file potential checkpoints: the steps :class:`~hessid.training.learning.models.CGPotential`
and :class:`~hessid.training.learning.thermal_models.ThermalPotential` share.

Each class keeps its own format name, version checks and config fields; these functions write
the file and read back the parts whose checks are the same (units, prior, weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hessid.training.learning.priors import PriorParameters

__all__ = ["checkpoint_prior", "load_weights", "save_checkpoint"]


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write a checkpoint dict (plain Python + CPU tensors) to one file with ``torch.save``.

    Args:
        ckpt: the potential's ``checkpoint_dict()``.
        path: destination file (``.pt``); parent folders are created.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def checkpoint_prior(ckpt: dict, units: dict, source: str) -> PriorParameters | None:
    """Check a checkpoint's units and read its prior back.

    Args:
        ckpt: the checkpoint dict.
        units: the units the reading class uses (``{"length": "angstrom", ...}``).
        source: the file (or ``<dict>``) named in messages.

    Returns:
        the stored :class:`PriorParameters`, or None when the checkpoint has no prior.

    Raises:
        ValueError: the checkpoint's ``units`` differ from ``units``; unknown prior fields.
    """
    if ckpt.get("units") != units:
        raise ValueError(f"{source} uses units {ckpt.get('units')}, expected {units}")
    prior = ckpt.get("prior")
    return None if prior is None else PriorParameters.from_dict(prior)


def load_weights(module: torch.nn.Module, state_dict: dict, source: str,
                 ignore_missing: str | None = None) -> None:
    """Load checkpoint weights into ``module`` and refuse any mismatch.

    Args:
        module: the module the weights belong to (the network, or the whole potential).
        state_dict: ``{name: tensor}`` as stored.
        source: the file (or ``<dict>``) named in messages.
        ignore_missing: a key prefix (e.g. ``"prior."``) whose keys may be absent from
            ``state_dict`` (parts rebuilt from other checkpoint fields).

    Raises:
        ValueError: keys missing from or unexpected in ``state_dict`` (the message lists both).
    """
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if ignore_missing is not None:
        missing = [k for k in missing if not k.startswith(ignore_missing)]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the config (missing {missing}, "
                         f"unexpected {unexpected})")
