"""One stage runner for every multi-stage pipeline (the demo, the alanine-dipeptide study).

A pipeline is a sequence of named stages run in one *run folder*. The runner keeps a JSON
state file there::

    {"format": "hessid-stages", "version": 1,
     "settings": {...},                                  # what the run was started with
     "stages": {"<name>": {"done": true, "seconds": 12.3, "attempts": 1,
                           "key": {...},                 # optional: the inputs it was done for
                           "result": {...}}}}            # what the stage returned

- **Resumable**: a stage marked done (with the same ``key``, when one is given) is skipped on a
  rerun and its stored result returned; an interrupted stage is run again (it resumes from its
  own outputs, e.g. an MD checkpoint).
- **Wall time**: ``seconds`` sums every invocation of a stage, interrupted attempts included.
- **Structured**: results are JSON values only — dicts, lists, strings, numbers, booleans,
  None; :class:`pathlib.Path` values are stored relative to the run folder (POSIX separators)
  when they lie inside it, else absolute; dataclasses as dicts; numpy scalars/arrays as numbers
  and lists. Anything else raises :class:`TypeError` (no Python reprs in the state).
- **Atomic**: every write goes to a temporary file that then replaces the state file.

State files of the demo's first version (``{"stages": {name: {"done", "seconds", ...}}}``,
no ``"version"``) are read and rewritten in this format on the next write.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

#: format name and version written into every state file
STATE_FORMAT = "hessid-stages"
STATE_VERSION = 1


def to_json(value: Any, root: Path | None = None) -> Any:
    """A JSON value equal to ``value``, with paths made relative to ``root``.

    Args:
        value: nested dicts (keys str/int/float/bool), lists, tuples, str, int, float, bool,
            None, :class:`pathlib.PurePath`, dataclass instances, numpy scalars and arrays.
        root: run folder; a path inside it is stored relative to it (POSIX separators), any
            other path absolute. None: paths stored as given.

    Returns:
        The value built from dicts, lists, str, int, float (NaN/inf kept, as Python's
        :mod:`json` writes them), bool and None only.

    Raises:
        TypeError: a value of any other type (e.g. an arbitrary object, whose repr would end
            up in the state).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, PurePath):
        return relative_path(value, root) if root is not None else value.as_posix()
    if isinstance(value, np.ndarray):
        return to_json(value.tolist(), root)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name), root) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_json_key(k): to_json(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, root) for v in value]
    raise TypeError(f"cannot store a {type(value).__name__} in a stage state (JSON values, paths, "
                    f"dataclasses and numpy numbers only): {value!r:.80}")


def _json_key(k: Any) -> str:
    """A mapping key as JSON writes it (``200`` → ``"200"``, ``True`` → ``"true"``)."""
    if isinstance(k, str):
        return k
    if isinstance(k, (bool, np.bool_)):
        return "true" if k else "false"
    if isinstance(k, (int, np.integer)):
        return str(int(k))
    if isinstance(k, (float, np.floating)):
        return json.dumps(float(k))
    raise TypeError(f"state keys must be str or numbers, got {type(k).__name__}: {k!r:.80}")


def relative_path(path: str | PurePath, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators) when inside it, else absolute.

    Args:
        path: a file or folder path (relative paths are taken as relative to the current
            directory).
        root: the run folder.

    Returns:
        e.g. ``"train/FM_n200_s0/model.pt"``; ``"."`` for ``root`` itself.
    """
    p = Path(os.path.abspath(path))
    r = Path(os.path.abspath(root))
    try:
        return p.relative_to(r).as_posix()
    except ValueError:
        return p.as_posix()


def write_json(path: str | Path, value: Any, root: Path | None = None) -> Path:
    """Write ``to_json(value, root)`` to ``path`` atomically (temporary file + replace).

    Returns:
        ``path``.

    Raises:
        TypeError: as :func:`to_json`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json(value, root), indent=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any | None:
    """The JSON value in ``path``; None when it does not exist or is not complete JSON."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


class StageRunner:
    """Run named stages in a run folder, resumably, with their wall times in a JSON state.

    Args:
        run_dir: the run folder (created); stored paths are relative to it.
        state_file: name of the state file inside ``run_dir``.
        label: tag of the progress lines (``"[label] stage ..."``).
        say: where progress lines go (``print`` by default; one string per call).

    Raises:
        ValueError: the state file exists but is not JSON, or is of a newer format version
            than this runner reads.
    """

    def __init__(self, run_dir: str | Path, state_file: str = "state.json", label: str = "run",
                 say: Callable[[str], Any] = print):
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / state_file
        self.label = label
        self.say = say
        #: seconds each stage took in this invocation (0 for a skipped one)
        self.timings: dict[str, float] = {}
        self.data = self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> dict:
        fresh = {"format": STATE_FORMAT, "version": STATE_VERSION, "settings": None, "stages": {}}
        if not self.path.exists():
            return fresh
        try:
            old = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is not a JSON stage state ({exc}); move it away to "
                             f"start this run folder afresh") from exc
        if not isinstance(old, dict) or not isinstance(old.get("stages"), dict):
            raise ValueError(f"{self.path} is not a stage state (no 'stages' object)")
        version = old.get("version")
        if version is None:  # the demo's first format: {name: {done, seconds, **result}}
            self.say(f"[{self.label}] {self.path.name}: state of an older hessid version; "
                     f"read and rewritten in format version {STATE_VERSION}")
            stages = {}
            for name, entry in old["stages"].items():
                result = {k: v for k, v in entry.items() if k not in ("done", "seconds")}
                stages[name] = {"done": bool(entry.get("done", False)),
                                "seconds": float(entry.get("seconds", 0.0)), "attempts": 1,
                                "result": result}
            return {**fresh, "settings": old.get("settings"), "stages": stages}
        if old.get("format") != STATE_FORMAT or version > STATE_VERSION:
            raise ValueError(f"{self.path} is a state of format {old.get('format')!r} version {version}; "
                             f"this hessid reads {STATE_FORMAT!r} up to version {STATE_VERSION}")
        return {**fresh, **old}

    def save(self) -> None:
        """Write the state file (atomically)."""
        write_json(self.path, self.data, self.run_dir)

    @property
    def stages(self) -> dict[str, dict]:
        """``{name: {"done", "seconds", "attempts", "key"?, "result"?}}`` (live view)."""
        return self.data["stages"]

    def use_settings(self, settings: Mapping) -> None:
        """Record the run's settings, or check them against those it was started with.

        Raises:
            ValueError: the folder holds a run with other settings (the message says
                "other settings" and names the folder).
        """
        encoded = to_json(settings, self.run_dir)
        if self.data.get("settings") is not None and self.data["settings"] != encoded:
            raise ValueError(f"{self.run_dir} holds a {self.label} run with other settings "
                             f"({self.data['settings']}); use another output folder")
        self.data["settings"] = encoded
        self.save()

    # ------------------------------------------------------------------ queries
    def done(self, name: str, key: Any = None) -> bool:
        """Whether ``name`` finished earlier (for the same ``key`` when one is given)."""
        entry = self.stages.get(name, {})
        if not entry.get("done", False):
            return False
        return key is None or entry.get("key") == to_json(key, self.run_dir)

    def result(self, name: str) -> dict:
        """The stored result of stage ``name`` (paths as stored: see :meth:`resolve`).

        Raises:
            KeyError: the stage never finished.
        """
        entry = self.stages.get(name)
        if not entry or not entry.get("done"):
            raise KeyError(f"stage {name!r} has not finished in {self.run_dir}")
        return entry.get("result", {})

    def resolve(self, stored: str | PurePath) -> Path:
        """The absolute path of a stored path (relative ones are relative to the run folder)."""
        return self.run_dir / stored

    def seconds(self, name: str | None = None) -> float:
        """Wall seconds of stage ``name`` (all invocations), or of every stage when None."""
        if name is not None:
            return float(self.stages.get(name, {}).get("seconds", 0.0))
        return float(sum(e.get("seconds", 0.0) for e in self.stages.values()))

    def wall_seconds(self) -> dict[str, float]:
        """``{stage: wall seconds summed over every invocation}``."""
        return {n: float(e.get("seconds", 0.0)) for n, e in self.stages.items()}

    # ------------------------------------------------------------------ running
    def run(self, name: str, fn: Callable[[], Any], key: Any = None, rerun: bool = False) -> dict:
        """Run stage ``name`` unless it is done; return its result as stored.

        Args:
            name: stage name (unique in the run).
            fn: the stage; returns a mapping (or None) that :func:`to_json` can encode.
            key: the stage's inputs (JSON-encodable); a stage done for another key runs again.
            rerun: run even when done (e.g. a report regenerated on every call); its time
                still accumulates.

        Returns:
            The result after a JSON round trip (paths relative to the run folder, int keys as
            strings) — the same value whether the stage ran now or earlier.

        Raises:
            whatever ``fn`` raises (its wall time is recorded first, the stage stays not done);
            TypeError: the result holds a value :func:`to_json` cannot store.
        """
        if not rerun and self.done(name, key):
            self.timings[name] = 0.0
            self.say(f"[{self.label}] {name}: done earlier ({self.seconds(name):.0f} s), skipped")
            return self.result(name)
        self.say(f"[{self.label}] {name} ...")
        entry = self.stages.setdefault(name, {"done": False, "seconds": 0.0, "attempts": 0})
        entry["done"] = False
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException:
            self._add_time(entry, time.perf_counter() - t0)
            self.save()
            raise
        dt = time.perf_counter() - t0
        encoded = json.loads(json.dumps(to_json(result or {}, self.run_dir)))
        self._add_time(entry, dt)
        entry.update(done=True, result=encoded)
        if key is not None:
            entry["key"] = to_json(key, self.run_dir)
        else:
            entry.pop("key", None)
        self.save()
        self.timings[name] = dt
        self.say(f"[{self.label}] {name}: {dt:.1f} s")
        return encoded

    @staticmethod
    def _add_time(entry: dict, dt: float) -> None:
        entry["seconds"] = float(entry.get("seconds", 0.0)) + (dt if math.isfinite(dt) else 0.0)
        entry["attempts"] = int(entry.get("attempts", 0)) + 1


__all__ = ["STATE_FORMAT", "STATE_VERSION", "StageRunner", "read_json", "relative_path", "to_json",
           "write_json"]
