"""Wall times of `hessid verify --all` (prints JSON; nothing here is imported by hessid).

    python benchmarks/verify_timing.py [--repeats N]

Reports the end-to-end CLI time (a fresh process: includes importing torch) and, in-process,
the time of each group of the built-in suite, with the number of checks and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import finish, machine_info

from hessid.quadrature import builtin_systems
from hessid.verification.checks import check_gaussian_closed_form, check_quadrature_system
from hessid.verification.elastic import check_structure_file


def _cli_time(json_path: Path) -> tuple[float, int]:
    exe = Path(sys.executable).with_name("hessid")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hessid"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["verify", "--all", "--quiet", "--json", str(json_path)],
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc.returncode


def _group_times() -> dict:
    out = {"torch_threads": torch.get_num_threads()}
    groups = {}
    for system in builtin_systems():
        t0 = time.perf_counter()
        rows = check_quadrature_system(system)
        groups[system.name] = {"seconds": round(time.perf_counter() - t0, 3), "checks": len(rows)}
    t0 = time.perf_counter()
    rows = check_gaussian_closed_form()
    groups["gaussian closed form"] = {"seconds": round(time.perf_counter() - t0, 3), "checks": len(rows)}
    for kind, proj in (("ca", "min_norm"), ("com", "min_norm"), ("com", "bead_sum")):
        t0 = time.perf_counter()
        rows = check_structure_file(None, kind, proj)
        groups[f"elastic network villin {kind}/{proj}"] = {
            "seconds": round(time.perf_counter() - t0, 3), "checks": len(rows)}
    out["groups"] = groups
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    times, codes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "verify.json"
        for _ in range(args.repeats):
            t, code = _cli_time(path)
            times.append(round(t, 3))
            codes.append(code)
        summary = json.loads(path.read_text())["summary"] if path.exists() else {}
    result = {
        "benchmark": "hessid verify --all",
        "cli_wall_seconds": times,
        "exit_codes": codes,
        "suite_wall_seconds_in_process": summary.get("wall_time_s"),
        "n_checks": summary.get("n_checks"),
        "n_negative_controls": summary.get("n_negative_controls"),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        **_group_times(),
    }
    finish(result, ("hessid",), indent=2)


if __name__ == "__main__":
    main()
