"""The gate of the second alanine-dipeptide study (docs/results/ala2_v2.md), written as soon as
the gate stage has run — before any arm trains, so that the gate outcome and the detectable
effect on metric 1 are on the page ("Gate attempts") first.

Post-processing only: the study's stages (:mod:`hessid.training.pipelines.ala2_v2_study`) decide
every number (the gate stage stores each FM model's metrics); this module reads a run folder
and writes the gate table, the detectable effect, the test labels' own errors and FM's learning
curve with its figure (:func:`hessid.training.evaluation.study_v2_report.write_ala2_v2_gate`).

``python -m hessid.training.pipelines.ala2_v2_gate RUN DEST`` writes ``DEST/ala2_v2_gate.md`` and
``DEST/ala2_v2_gate/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hessid.training.evaluation.study_v2_report import write_ala2_v2_gate
from hessid.training.pipelines.ala2_v2_study import labels_own_errors, open_run, report_settings

#: the stages the gate report reads
NEEDED = ("test_labels", "gate")


def load_gate(run: str | Path) -> dict:
    """Settings, test-label errors and FM rows of a run whose gate stage has finished.

    Args:
        run: the study's run folder (``--out`` of ``benchmarks/ala2_v2.py``).

    Returns:
        ``{"settings": dict, "label_errors": dict, "rows": [dict], "gate": dict}`` — the run's
        ``settings.json``, the test labels' own errors (kcal/mol/Å), one row per FM model of the
        gate (metrics 1–4 as the gate stage stored them) and the gate stage's result.

    Raises:
        FileNotFoundError: no ``state.json`` or ``settings.json`` in ``run``.
        ValueError: a stage the report needs (test_labels, gate) has not finished.
    """
    run = Path(run)
    settings, runner = open_run(run, NEEDED, "the gate")
    gate = runner.result("gate")
    return {"settings": settings, "label_errors": labels_own_errors(run / runner.result("test_labels")["path"]),
            "rows": gate["rows"], "gate": gate}


def write_gate_report(run: str | Path, dest: str | Path) -> dict:
    """The gate fragment and figure of ``run`` into ``dest`` (created).

    Returns:
        as :func:`~hessid.training.evaluation.study_v2_report.write_ala2_v2_gate`.

    Raises:
        as :func:`load_gate` (nothing is written then), and ValueError if the gate recomputed
        from the stored rows disagrees with the gate stage's own verdict.
    """
    g = load_gate(run)  # refuses an unfinished run before writing
    dest = Path(dest)
    out = write_ala2_v2_gate(g["rows"], report_settings(g["settings"], g["label_errors"]), dest / "ala2_v2_gate.md",
                             dest / "ala2_v2_gate")
    if out["gate"].passed != g["gate"]["passed"]:
        raise ValueError(f"{run}: the gate recomputed from the stored rows ({out['gate'].passed}) disagrees with the "
                         f"gate stage ({g['gate']['passed']})")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``RUN DEST``; a run folder that is missing or has not reached the gate exits 2 with one line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="the study's run folder (--out of benchmarks/ala2_v2.py)")
    ap.add_argument("dest", help="folder for ala2_v2_gate.md and its figure")
    args = ap.parse_args(argv)
    try:
        out = write_gate_report(args.run, args.dest)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out["fragment"])
    print(out["gate"].reason)
    return 0


__all__ = ["NEEDED", "load_gate", "main", "write_gate_report"]


if __name__ == "__main__":
    raise SystemExit(main())
