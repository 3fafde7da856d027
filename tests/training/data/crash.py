"""Crash-safety helpers of the dataset tests: run a step in a fresh interpreter that SIGKILLs
itself (no ``finally``, files left open), so the tests see what a real kill leaves behind."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def run_until_sigkill(code: str) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself; assert it died that way."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def simulate_until_sigkill(point: str, nth: int, md: dict, root: str | Path, name: str = "aaa") -> None:
    """``aa_md.simulate(name, MDConfig(**md), root)`` in a fresh interpreter that SIGKILLs itself
    at the ``nth`` call of the crash point ``point`` (:func:`hessid.training.data.io.crash_point`);
    assert it died that way."""
    run_until_sigkill(f"""
import os, signal
from hessid.training.data import aa_md, io
calls = [0]
def hook(name):
    if name == {point!r}:
        calls[0] += 1
        if calls[0] == {nth}:
            os.kill(os.getpid(), signal.SIGKILL)
io.crash_hook = hook
aa_md.simulate({name!r}, aa_md.MDConfig(**{md!r}), root={str(root)!r}, progress=False)
""")
