"""The common tail of the ``benchmarks/*`` scripts: machine, load, versions, JSON output.

Every timing script ends the same way: it records the machine it ran on (CPU model, cores,
load average before and after — the machines are often shared — and ``uptime``), the versions
of the packages it measured, and prints one JSON object (optionally also written to a file).

    from _common import finish, machine_info
    result = {"benchmark": "x", "machine": machine_info(), ...}
    return finish(result, packages=("torch", "openmm"))
"""

from __future__ import annotations

import datetime
import importlib.metadata as im
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``/``machine()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (rounded to 0.01), None where the OS has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def uptime() -> str | None:
    """The ``uptime`` command's line (time up, users, load), None where there is no such command."""
    exe = shutil.which("uptime")
    if exe is None:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=5, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Host, CPU model, core count, OS, Python, load average and ``uptime`` at the start of a run."""
    return {"node": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}", "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_1_5_15": load_average(), "uptime": uptime()}


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Installed distribution versions (``importlib.metadata``); None for a package not installed."""
    out: dict[str, str | None] = {}
    for pkg in packages:
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            out[pkg] = None
    return out


def finish(result: dict, packages: Iterable[str] = ("hessid", "numpy", "torch"), out: str | Path | None = None,
           indent: int = 1) -> dict:
    """Complete ``result`` with date, end-of-run load, ``uptime`` and versions; print it as JSON.

    Args:
        result: the benchmark's result; ``result["machine"]`` (a dict) gets ``loadavg_end`` and
            ``uptime_end``; ``date`` and ``versions`` are added unless present.
        packages: distributions whose versions are recorded (merged into ``result["versions"]``).
        out: also write the JSON there (parent folders created).
        indent: JSON indentation.

    Returns:
        ``result`` (completed in place).
    """
    result.setdefault("date", datetime.date.today().isoformat())
    machine = result.setdefault("machine", machine_info())
    if isinstance(machine, dict):
        machine["loadavg_end"] = load_average()
        machine["uptime_end"] = uptime()
    result["versions"] = {**versions(packages), **result.get("versions", {})}
    text = json.dumps(result, indent=indent, default=str)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
    return result
