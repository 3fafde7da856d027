"""Figures of the alanine-dipeptide temperature-transfer study (docs/results/thermo.md).

Post-processing only: the study's stages (:mod:`hessid.training.pipelines.thermo_ala2`) decide
every number; this module reads a finished run folder and draws

- ``thermo_ala2_transfer.png``: ΔG(αR−β) and p(αR) against temperature — the AA reference at
  every temperature (mean ± SE over runs) and, at each task's target temperature, every arm's
  seeds (points) and their mean;
- ``thermo_ala2_phi_psi_<task>.png``: φ/ψ free energies −k_BT ln p (kcal/mol) at the task's target
  temperature, the AA reference beside every arm (seeds pooled), on the study's 36 × 36 periodic
  grid.

``python -m hessid.training.pipelines.thermo_ala2_figures RUN DEST`` writes them into DEST.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hessid.training.evaluation.report import (
    MODEL_COLORS,
    REFERENCE_COLOR,
    plot_phi_psi_panels,
    pyplot,
)
from hessid.training.pipelines import ala2
from hessid.training.pipelines.runner import StageRunner
from hessid.training.pipelines.thermo_ala2 import STATE_FILE, replica_angles, tkey

#: free-energy colour scale top, kcal/mol (the study's F RMSE uses bins below 3 kcal/mol)
F_MAX = 5.0


def load_run(run: str | Path) -> dict:
    """Settings and stage results of a finished transfer-study run, read once (through the
    study's :class:`~hessid.training.pipelines.runner.StageRunner` state).

    Args:
        run: the study's run folder (``--out`` of ``benchmarks/thermo_ala2.py``).

    Returns:
        ``{"folder", "settings", "reference", "train", "evaluate"}`` — the folder (Path), the
        settings dict and the results of the stages of those names (``reference``: per ``"<T>K"``
        populations, ``delta_g``, ``delta_g_se`` kcal/mol; ``evaluate``: ``{task: {arm: {seed:
        metrics}}}``).

    Raises:
        FileNotFoundError: no ``state.json`` in ``run``.
        ValueError: ``state.json`` is not a stage state, or a stage the figures need
            (reference, train, evaluate) has not finished.
    """
    path = Path(run) / STATE_FILE
    if not path.is_file():  # checked first: the runner would create the folder
        raise FileNotFoundError(f"{path}: no study state (not a thermo_ala2 run folder)")
    runner = StageRunner(run, STATE_FILE, label="thermo_ala2")
    needed = ("reference", "train", "evaluate")
    missing = [n for n in needed if not runner.done(n)]
    if missing:
        raise ValueError(f"{path}: stage(s) {', '.join(missing)} not finished; run the study first")
    return {"folder": runner.run_dir, "settings": runner.data["settings"], **{n: runner.result(n) for n in needed}}


def plot_transfer(r: dict, path: str | Path) -> Path:
    """ΔG(αR−β) (top) and p(αR) (bottom) against T, one column per task.

    The AA reference is the black line with ±SE bars (4 independent runs); grey bands mark the
    task's training temperatures; at the target temperature each arm's seeds are points
    (side by side) and a bar marks their mean.

    Args:
        r: :func:`load_run` of the run folder.  path: PNG file.

    Returns:
        ``path`` as a Path.
    """
    s, refs, ev = r["settings"], r["reference"], r["evaluate"]
    temps = [float(t) for t in s["temperatures"]]
    plt = pyplot()
    tasks = list(s["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(6.0 * len(tasks), 7.5), sharex=True, squeeze=False,
                             constrained_layout=True)  # fmt: skip
    quantities = (("ΔG(αR−β) (kcal/mol)", lambda d: d["delta_g"], lambda d: d["delta_g_se"]),
                  ("p(αR)", lambda d: d["populations"]["alpha_R"], lambda d: d["sem"]["alpha_R"]))
    arms = list(s["arms"])
    width = 0.6 * min(np.diff(temps)) / max(len(arms), 1)
    for col, task in enumerate(tasks):
        spec = s["tasks"][task]
        target = float(spec["target"])
        for row, (label, value, error) in enumerate(quantities):
            ax = axes[row][col]
            for t in spec["train"]:
                ax.axvspan(float(t) - 6, float(t) + 6, color="0.9", zorder=0)
            ax.errorbar(temps, [value(refs[tkey(t)]) for t in temps], yerr=[error(refs[tkey(t)]) for t in temps],
                        color=REFERENCE_COLOR, marker="s", capsize=4, label="AA reference (±SE)")  # fmt: skip
            for i, arm in enumerate(arms):
                x = target + (i - (len(arms) - 1) / 2) * width
                vals = np.array([value(m) for m in ev[task][arm].values()], dtype=np.float64)
                color = MODEL_COLORS[i % len(MODEL_COLORS)]
                ax.plot(np.full(len(vals), x), vals, "o", color=color, alpha=0.7, label=arm)
                if np.isfinite(vals).any():
                    ax.hlines(np.nanmean(vals), x - width / 2, x + width / 2, color=color, lw=2.5)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"{task}: train {', '.join(f'{float(t):g}' for t in spec['train'])} K, "
                             f"predict {target:g} K", fontsize=11)
            else:
                ax.set_xlabel("temperature (K)")
            ax.set_xticks(temps)
    axes[0][0].legend(fontsize=9, loc="best")
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_phi_psi(r: dict, task: str, path: str | Path) -> Path:
    """φ/ψ free energies at the task's target temperature: AA reference, then every arm.

    F = −k_BT ln P on the study's smoothed 36 × 36 periodic grid (:func:`ala2.phi_psi_density`,
    :func:`ala2.free_energy_grid`), kcal/mol, minimum 0, white above :data:`F_MAX`; each arm's
    replicas (after the burn-in) and seeds pooled. The reference's 1–4 kcal/mol contours are
    drawn on every arm's panel.

    Args:
        r: :func:`load_run` of the run folder.  task: a task of the settings.  path: PNG file.

    Returns:
        ``path`` as a Path.

    Raises:
        KeyError: unknown ``task``.
    """
    s, run = r["settings"], r["folder"]
    if task not in s["tasks"]:
        raise KeyError(f"unknown task {task!r}; tasks: {', '.join(s['tasks'])}")
    target = float(s["tasks"][task]["target"])
    c = s["cgmd"]
    dt_ps = c["save_interval"] * c["timestep"] * 1e-3
    reference = np.load(run / "reference" / f"phi_psi_{tkey(target)}.npy")  # (F, 2) rad
    panels = [("AA reference", reference)]
    for arm in s["arms"]:
        per = []
        for rec in r["train"][task][arm].values():
            per += [a for a in replica_angles(run / "cgmd" / rec["name"], c["burn_in_ps"], dt_ps)
                    if a is not None and len(a)]  # fmt: skip
        panels.append((arm, np.concatenate(per) if per else None))
    surfaces = [(label, None if angles is None else ala2.free_energy_grid(ala2.phi_psi_density(angles), target))
                for label, angles in panels]  # fmt: skip
    return plot_phi_psi_panels(surfaces, np.degrees(ala2.grid_centers()), path, f_max=F_MAX,
                               reference_levels=(1, 2, 3, 4), missing_text="no replica\nsurvived",
                               suptitle=f"{task}: φ/ψ free energy at {target:g} K", title_fontsize=11,
                               height=3.8, sharey=True)  # fmt: skip


def write_figures(run: str | Path, dest: str | Path) -> list[Path]:
    """Every figure of the study into ``dest`` (created).

    Returns:
        the PNG paths: the transfer plot, then one φ/ψ plot per task.

    Raises:
        as :func:`load_run`.
    """
    r = load_run(run)  # refuses an unfinished run before writing
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [plot_transfer(r, dest / "thermo_ala2_transfer.png"),
            *[plot_phi_psi(r, t, dest / f"thermo_ala2_phi_psi_{t}.png") for t in r["settings"]["tasks"]]]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``RUN DEST``; a run folder that is missing or unfinished exits 2 with one line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="the study's run folder (--out of benchmarks/thermo_ala2.py)")
    ap.add_argument("dest", help="folder for the PNG files")
    args = ap.parse_args(argv)
    try:
        paths = write_figures(args.run, args.dest)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


__all__ = ["F_MAX", "load_run", "main", "plot_phi_psi", "plot_transfer", "write_figures"]


if __name__ == "__main__":
    raise SystemExit(main())
