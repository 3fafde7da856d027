"""Shared helper for building config and parameter dataclasses from plain dicts (YAML, checkpoints)."""

from __future__ import annotations


def dataclass_from_dict(cls, d: dict | None, what: str):
    """``cls(**d)`` for a dataclass ``cls``, refusing keys that are not its fields.

    Args:
        cls: a dataclass type.
        d: its fields as a dict (None: all defaults).
        what: start of the error message, e.g. ``"unknown loss keys"``.

    Returns:
        the dataclass instance.

    Raises:
        ValueError: ``what`` followed by the unknown keys and the known ones.
    """
    d = dict(d or {})
    known = set(cls.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what} {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)
