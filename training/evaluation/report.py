"""One HTML page per evaluation run: metrics table, free-energy surfaces, densities,
training curves and provenance (docs/evaluation.md "Plots" and "Reporting").

``build_report(eval_dir)`` reads what ``hessid evaluate`` wrote (``evaluation.json``,
``*/metrics.json``, ``reference_features.npz``, ``*/features.npz``) and writes
``report.html`` with PNG figures beside it. The metrics table is generated from the
metrics.json files (each cell carries the exact value in ``data-value``; a test checks they
agree). Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy.stats import gaussian_kde

from hessid.training.evaluation.evaluate import (
    METRIC_LABELS,
    METRIC_NAMES,
    METRIC_UNITS,
    format_value,
    read_metrics,
)
from hessid.units import KB_KCAL_PER_MOL_K

REFERENCE_COLOR = "black"
#: colour-blind-safe palette (Okabe–Ito) for models, in table order
MODEL_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
STRUCTURE_PANELS = [("bond", "Cα–Cα bond length (nm)"), ("angle", "Cα angle (rad)"),
                    ("dihedral", "Cα dihedral (rad)"), ("rg", "radius of gyration (nm)")]


def pyplot():
    """``matplotlib.pyplot`` switched to the headless Agg backend, with the report's font sizes.

    Every figure of the reports is drawn through it (files only, no window).

    Returns:
        the ``matplotlib.pyplot`` module.
    """
    matplotlib.use("Agg")
    plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12,
                         "legend.fontsize": 11, "figure.dpi": 110})
    return plt


def free_energy_2d(x: np.ndarray, y: np.ndarray, grid_x: np.ndarray, grid_y: np.ndarray,
                   temperature: float | None, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """F = −k_BT ln p on a grid from a Gaussian KDE, minimum shifted to 0 (docs/evaluation.md,
    "Reading the report").

    Args:
        x, y: (N,) samples (TIC0, TIC1).
        grid_x, grid_y: grid axes, (n_x,), (n_y,).
        temperature: K → F in kcal/mol; None → F in units of k_BT.
        max_points: KDE built on at most this many samples (seeded subsample).
        seed: subsampling seed.

    Returns:
        (n_x, n_y) float64; NaN where p is below 1e-8 of its maximum (empty region).
    """
    pts = np.stack([np.asarray(x, float), np.asarray(y, float)])  # (2, N)
    if pts.shape[1] > max_points:
        pts = pts[:, np.sort(np.random.default_rng(seed).choice(pts.shape[1], max_points, replace=False))]
    gx, gy = np.meshgrid(grid_x, grid_y, indexing="ij")
    p = gaussian_kde(pts)(np.stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)  # (n_x, n_y)
    kT = 1.0 if temperature is None else KB_KCAL_PER_MOL_K * temperature
    with np.errstate(divide="ignore"):
        f = -kT * np.log(p / p.max())
    f[p < 1e-8 * p.max()] = np.nan
    return f


def plot_free_energy(reference: np.ndarray, models: Mapping[str, np.ndarray], path,
                     temperature: float | None = 300.0, n_grid: int = 80, f_max: float | None = None) -> Path:
    """Reference beside each model: −k_BT ln p on (TIC0, TIC1), shared axes and colour scale.

    Filled contours every 0.5 k_BT up to ``f_max``; the reference's contours (1–4 k_BT) are
    drawn in grey on every model panel so shifts and missing basins show at a glance.

    Args:
        reference: (N, ≥2) reference TICs. models: ``{label: (M, ≥2) TICs}``.
        path: PNG file. temperature: K (None: k_BT units). n_grid: grid points per axis.
        f_max: colour-scale top (default 5 k_BT in the plotted unit).
    """
    plt = pyplot()
    everything = np.concatenate([reference[:, :2], *[m[:, :2] for m in models.values()]])
    lo, hi = np.percentile(everything, 0.1, axis=0), np.percentile(everything, 99.9, axis=0)
    pad = 0.1 * (hi - lo)
    gx, gy = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n_grid), np.linspace(lo[1] - pad[1], hi[1] + pad[1], n_grid)
    kT = 1.0 if temperature is None else KB_KCAL_PER_MOL_K * temperature
    unit = "k$_B$T" if temperature is None else "kcal/mol"
    f_max = 5 * kT if f_max is None else f_max
    levels = np.linspace(0, f_max, 11)
    panels = [("reference", reference)] + list(models.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.0, 4.2), sharex=True,
                             sharey=True, squeeze=False, constrained_layout=True)
    f_ref = free_energy_2d(reference[:, 0], reference[:, 1], gx, gy, temperature)
    filled = None
    for ax, (label, tics) in zip(axes[0], panels, strict=True):
        f = f_ref if label == "reference" else free_energy_2d(tics[:, 0], tics[:, 1], gx, gy, temperature)
        filled = _free_energy_panel(ax, gx, gy, f, f_max, levels, None if label == "reference" else f_ref,
                                    kT * np.arange(1, 5), linewidths=0.9)
        ax.set_title(label)
        ax.set_xlabel("TIC0")
    axes[0][0].set_ylabel("TIC1")
    fig.colorbar(filled, ax=axes[0].tolist(), label=f"free energy ({unit})", shrink=0.9, ticks=MaxNLocator(6))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _free_energy_panel(ax, x, y, f, f_max, levels, reference=None, reference_levels=(), linewidths=0.8):
    """Filled contours of ``f`` (n_x, n_y) on ``ax``, white above ``f_max``; the grey contours of
    ``reference`` (same shape, NaN counted as high) at ``reference_levels`` on top. Returns the
    filled QuadContourSet (for the colour bar)."""
    filled = ax.contourf(x, y, np.where(f <= f_max, f, np.nan).T, levels=levels, cmap="viridis")
    if reference is not None:
        ax.contour(x, y, np.nan_to_num(reference, nan=10 * f_max).T, levels=reference_levels, colors="0.55",
                   linewidths=linewidths)  # fmt: skip
    return filled


def plot_phi_psi_panels(panels: Mapping[str, np.ndarray | None] | Sequence[tuple[str, np.ndarray | None]],
                        grid_deg: np.ndarray, path, *, f_max: float = 5.0,
                        reference_levels: Sequence[float] = (), missing_text: str = "no data",
                        suptitle: str | None = None, title_fontsize: float = 10, height: float = 3.6,
                        sharey: bool = False) -> Path:
    """φ/ψ free-energy maps side by side, one panel per surface, one shared colour bar.

    Each panel: filled contours of F at 11 levels from 0 to ``f_max`` (viridis), white where F is
    above ``f_max`` or NaN (a surface with nothing at or below the cap draws an empty panel; no
    error); the panel's label as its title; φ (deg) on every x axis, ψ (deg) on the first panel's
    y axis, both limited to [−180°, 180°]. A ``None`` surface draws ``missing_text`` in its
    panel instead. The colour bar ("free energy (kcal/mol)") is drawn when at least one surface
    is given, and left out when every surface is ``None``.

    Args:
        panels: ``{label: F}`` or ``[(label, F)]`` in panel order; F is (n_bins, n_bins) float
            (float64 as ``ala2.free_energy_grid`` returns it), kcal/mol, indexed
            ``[φ bin, ψ bin]``, NaN for empty bins; or None (no data for that panel).
        grid_deg: (n_bins,) φ/ψ bin centres, **degrees** (e.g. ``np.degrees(ala2.grid_centers())``).
        path: PNG file written.
        f_max: colour-scale top and cap, kcal/mol.
        reference_levels: when given, the first panel is the reference: its contours at these
            free energies (kcal/mol; NaN counted as above every level) are drawn in grey on every
            other panel that has a surface.
        missing_text: text in the centre of a panel whose surface is None.
        suptitle: figure title, or None.
        title_fontsize: font size of the panel titles.
        height: figure height, inches (width: 3.6 per panel + 1).
        sharey: share the ψ axis between the panels (tick labels on the first panel only).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``panels`` is empty; ``grid_deg`` is not 1-D; a surface is not
            (n_bins, n_bins) with n_bins = ``len(grid_deg)`` (the message names the panel, e.g.
            ``panels['FM']``); ``reference_levels`` given but the first surface is None.
    """
    items = list(panels.items() if isinstance(panels, Mapping) else panels)
    grid = np.asarray(grid_deg)
    if not items:
        raise ValueError("panels: no surface to draw")
    if grid.ndim != 1:
        raise ValueError(f"grid_deg: shape {grid.shape}, expected (n_bins,) bin centres in degrees")
    n = len(grid)
    surfaces = []
    for label, f in items:
        if f is not None:
            f = np.asarray(f)
            if f.shape != (n, n):
                raise ValueError(f"panels[{label!r}]: shape {f.shape}, expected ({n}, {n}) = "
                                 "(len(grid_deg), len(grid_deg))")  # fmt: skip
        surfaces.append(f)
    reference = surfaces[0] if len(reference_levels) else None
    if len(reference_levels) and reference is None:
        raise ValueError(f"reference_levels: the first panel ({items[0][0]!r}) is the reference but has no surface")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(items), figsize=(3.6 * len(items) + 1, height), sharey=sharey, squeeze=False,
                             constrained_layout=True)  # fmt: skip
    levels = np.linspace(0, f_max, 11)
    filled = None
    for i, (ax, (label, _), f) in enumerate(zip(axes[0], items, surfaces, strict=True)):
        if f is None:
            ax.text(0, 0, missing_text, ha="center", va="center")
        else:
            filled = _free_energy_panel(ax, grid, grid, f, f_max, levels, None if i == 0 else reference,
                                        list(reference_levels))
        ax.set_title(label, fontsize=title_fontsize)
        ax.set_xlabel("φ (deg)")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
    axes[0][0].set_ylabel("ψ (deg)")
    if filled is not None:
        fig.colorbar(filled, ax=axes[0].tolist(), label="free energy (kcal/mol)", shrink=0.9)
    if suptitle is not None:
        fig.suptitle(suptitle, fontsize=12)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _kde_curve(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2 or np.ptp(s) == 0:
        return np.zeros_like(grid)
    return gaussian_kde(s)(grid)


def plot_densities(reference: Mapping[str, np.ndarray], models: Mapping[str, Mapping[str, np.ndarray]],
                   panels: list[tuple[str, str]], path, ncols: int = 4) -> Path:
    """1-D KDE densities, reference filled grey, models as coloured lines, one panel per key.

    Args:
        reference: ``{key: (N,) samples}``. models: ``{label: {key: (M,) samples}}``.
        panels: ``[(key, x-axis label)]``. path: PNG file.
    """
    plt = pyplot()
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, min(ncols, len(panels)), figsize=(4.3 * min(ncols, len(panels)), 3.5 * nrows),
                             squeeze=False, constrained_layout=True)
    for ax, (key, xlabel) in zip(axes.ravel(), panels, strict=False):
        data = [reference[key]] + [m[key] for m in models.values()]
        lo = min(np.nanpercentile(d, 0.5) for d in data)
        hi = max(np.nanpercentile(d, 99.5) for d in data)
        pad = 0.1 * (hi - lo or 1.0)
        grid = np.linspace(lo - pad, hi + pad, 300)
        ax.fill_between(grid, _kde_curve(reference[key], grid), color="0.8", label="reference")
        ax.plot(grid, _kde_curve(reference[key], grid), color=REFERENCE_COLOR, lw=1.2)
        for i, (label, m) in enumerate(models.items()):
            ax.plot(grid, _kde_curve(m[key], grid), color=MODEL_COLORS[i % len(MODEL_COLORS)], lw=2, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.set_yticks([])
    return _save_panel_grid(fig, axes, len(panels), path)


def _save_panel_grid(fig, axes, n_used: int, path) -> Path:
    """Hide the unused panels of a grid, put the legend on the first, save and close."""
    for ax in axes.ravel()[n_used:]:
        ax.set_visible(False)
    axes.ravel()[0].legend(frameon=False)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def read_training_csv(path) -> dict[str, np.ndarray]:
    """Numeric columns of a training ``metrics.csv`` (non-numeric cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                cols.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                cols.setdefault(k, []).append(float("nan"))
    return {k: np.asarray(v) for k, v in cols.items() if np.isfinite(v).any()}


def plot_training_curves(curves: Mapping[str, str | Path], path) -> Path | None:
    """Loss curves of each model's training run (one panel per loss column).

    Args:
        curves: ``{label: metrics.csv}``; the x axis is ``step``, ``epoch`` or the row index.
        path: PNG file.

    Returns:
        The PNG path, or None when no numeric loss column was found.
    """
    plt = pyplot()
    tables = {label: read_training_csv(p) for label, p in curves.items()}
    xkeys = ("step", "global_step", "epoch")
    ykeys = sorted({k for t in tables.values() for k in t if k not in xkeys and ("loss" in k or "mse" in k or "error" in k)})
    if not ykeys:
        ykeys = sorted({k for t in tables.values() for k in t if k not in xkeys})[:4]
    if not ykeys:
        return None
    ncols = min(3, len(ykeys))
    nrows = math.ceil(len(ykeys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.5 * nrows), squeeze=False, constrained_layout=True)
    for ax, key in zip(axes.ravel(), ykeys, strict=False):
        for i, (label, t) in enumerate(tables.items()):
            if key not in t:
                continue
            xk = next((k for k in xkeys if k in t), None)
            y = t[key]
            x = t[xk] if xk else np.arange(len(y))
            ok = np.isfinite(y) & np.isfinite(x)
            ax.plot(x[ok], y[ok], color=MODEL_COLORS[i % len(MODEL_COLORS)], label=label, lw=1.6)
            ax.set_xlabel(xk or "row")
        ax.set_title(key)
        finite = [t[key][np.isfinite(t[key])] for t in tables.values() if key in t]
        if finite and all(len(v) and (v > 0).all() for v in finite):
            ax.set_yscale("log")
    return _save_panel_grid(fig, axes, len(ykeys), path)


def metrics_table_html(docs: list[dict], digits: int = 3) -> str:
    """The comparison table as HTML (rows protein × model, columns benchmark metrics).

    Each cell shows ``mean`` or ``mean ± SE`` (:func:`format_value`) and carries the exact
    metrics.json value in ``data-value`` (and the SE in ``data-sem``); the best (lowest) value
    per column is bold.
    """
    best = {k: min(d["metrics"][k] for d in docs) for k in METRIC_NAMES}
    head = "".join(f'<th title="{html.escape(METRIC_UNITS[k])}">{html.escape(METRIC_LABELS[k])}</th>' for k in METRIC_NAMES)
    rows = []
    for d in docs:
        sem = d.get("sem") or {}
        cells = []
        for k in METRIC_NAMES:
            v = d["metrics"][k]
            text = html.escape(format_value(v, sem.get(k), digits))
            if len(docs) > 1 and v == best[k]:
                text = f"<b>{text}</b>"
            attrs = f'data-metric="{k}" data-value="{v!r}"' + (f' data-sem="{sem[k]!r}"' if k in sem else "")
            cells.append(f"<td {attrs}>{text}</td>")
        rows.append(f'<tr data-protein="{html.escape(d["protein"])}" data-model="{html.escape(d["model"])}">'
                    f'<td>{html.escape(d["protein"])}</td><td>{html.escape(d["model"])}</td>{"".join(cells)}</tr>')
    return (f'<table id="metrics-table"><thead><tr><th>protein</th><th>model</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _run_provenance(doc: dict) -> list[dict]:
    out = []
    for run in doc.get("runs", []):
        sim = Path(str(run.get("source", ""))) / "simulation.json"
        entry = {"source": run.get("source"), "replicas": f'{run.get("n_replicas_used")}/{run.get("n_replicas")}',
                 "frames_used": run.get("n_frames_used"), "frame_interval_ps": run.get("frame_interval_ps"),
                 "dropped_replicas": run.get("dropped_replicas")}
        if sim.exists():
            meta = json.loads(sim.read_text())
            entry["simulation"] = {"config": meta.get("config"), "start": meta.get("start"),
                                   "provenance": meta.get("provenance"), "versions": meta.get("versions"),
                                   "failures": meta.get("failures")}
        out.append(entry)
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.85em}.note{color:#555}"""


def build_report(eval_dir, out_dir=None, training_curves: Mapping[str, str | Path] | None = None,
                 provenance: Mapping | None = None, temperature: float | None = 300.0,
                 title: str | None = None) -> Path:
    """Write ``report.html`` + PNGs for one evaluation directory (``hessid report``).

    Args:
        eval_dir: folder written by :func:`hessid.training.evaluation.evaluate.evaluate`.
        out_dir: where to write (default: ``eval_dir``).
        training_curves: ``{model label: training metrics.csv}`` (optional).
        provenance: extra JSON-able provenance shown verbatim (data, targets, config, seeds).
        temperature: K for −k_BT ln p in kcal/mol (None: k_BT units).
        title: page title (default: "hessid evaluation — <protein>").

    Returns:
        Path of ``report.html``.

    Raises:
        FileNotFoundError: no metrics.json / reference_features.npz in ``eval_dir``.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"evaluation folder {eval_dir}: no such folder (write it with "
                                "hessid evaluate)")
    out = Path(out_dir) if out_dir is not None else eval_dir
    docs = read_metrics(eval_dir)
    if not (eval_dir / "reference_features.npz").is_file():
        raise FileNotFoundError(f"evaluation folder {eval_dir}: no reference_features.npz")
    for name, path in (training_curves or {}).items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--training {name}={path}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    index_path = eval_dir / "evaluation.json"
    dirs = ([m["directory"] for m in json.loads(index_path.read_text())["models"]] if index_path.exists()
            else [p.parent.name for p in sorted(eval_dir.glob("*/metrics.json"))])
    ref = dict(np.load(eval_dir / "reference_features.npz"))
    models = {d["model"]: dict(np.load(eval_dir / sub / "features.npz")) for d, sub in zip(docs, dirs, strict=True)}
    protein = docs[0]["protein"]
    title = title or f"hessid evaluation — {protein}"

    figures = []
    plot_free_energy(ref["tics"], {k: v["tics"] for k, v in models.items()}, out / "free_energy_tica.png", temperature)
    figures.append(("Free energy on (TIC0, TIC1)", "free_energy_tica.png",
                    "−k<sub>B</sub>T ln p from Gaussian KDEs (kcal/mol at the given temperature); reference "
                    "left, each model beside it with the reference's 1–4 k<sub>B</sub>T contours in grey. "
                    "Same axes and colour scale everywhere; white: beyond the scale (unvisited)."))
    tic_panels = [(f"tic{i}", f"TIC{i}") for i in range(4)]
    plot_densities({f"tic{i}": ref["tics"][:, i] for i in range(4)},
                   {k: {f"tic{i}": v["tics"][:, i] for i in range(4)} for k, v in models.items()},
                   tic_panels, out / "tic_densities.png")
    figures.append(("TIC densities", "tic_densities.png", "Gaussian KDEs; grey: reference."))
    plot_densities(ref, models, STRUCTURE_PANELS, out / "structure.png")
    figures.append(("Structural distributions", "structure.png",
                    "Pooled consecutive Cα bonds, angles, dihedrals and the radius of gyration."))
    if training_curves:
        if plot_training_curves(training_curves, out / "training_curves.png") is not None:
            figures.append(("Training curves", "training_curves.png", "From each run's metrics.csv."))

    s = docs[0]["settings"]
    r = docs[0]["reference"]
    summary = (f"Reference: {r.get('n_frames')} frames in {r.get('n_trajectories')} trajectories, "
               f"Δt = {r.get('dt_ps')} ps. TICA lag {s.get('lag_time_ps')} ps = {s.get('lag_frames')} frames "
               f"(deeptime, kinetic map, fit on the reference only by {s.get('tica_fit')}). "
               f"Burn-in {100 * s.get('burn_in', 0):.0f} % per replica; replicas with a NaN or a Cα–Cα bond "
               f"outside {s.get('bond_range_angstrom')} Å dropped. KDE: Scott bandwidth, KL floor {s.get('floor')}, "
               f"at most {s.get('max_kde_points')} points per KDE, subsampling seed {s.get('seed')}.")
    rep_rows = []
    for d in docs:
        for run in d.get("runs", []):
            dropped = "; ".join(f"replica {x['replica']}: {x['reason']}" for x in run.get("dropped_replicas", []))
            rep_rows.append(
                f"<tr><td>{html.escape(d['model'])}</td><td>{html.escape(str(run.get('source')))}</td>"
                f"<td>{run.get('n_replicas_used')}/{run.get('n_replicas')}</td><td>{run.get('n_frames_used')}</td>"
                f"<td>{run.get('frame_interval_ps')}</td>"
                f"<td style='text-align:left'>{html.escape(dropped or '—')}</td></tr>")
    rep_rows = "".join(rep_rows)
    uncertainty = sorted({d.get("uncertainty") for d in docs if d.get("uncertainty")})
    prov = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "evaluation_directory": str(eval_dir.resolve()),
        "reference": r, "settings": s, "versions": docs[0].get("versions"),
        "defects_not_copied": docs[0].get("defects_not_copied"),
        "models": {d["model"]: _run_provenance(d) for d in docs},
        "training_curves": {k: str(v) for k, v in (training_curves or {}).items()},
        "user": dict(provenance or {}),
    }
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(summary)}</p>",
        "<h2>Metrics</h2>",
        "<p class='note'>Lower is better; best per column in bold. "
        + html.escape(", ".join(f"{METRIC_LABELS[k]} [{METRIC_UNITS[k]}]" for k in METRIC_NAMES))
        + (f". Uncertainty: mean ± standard error ({html.escape(', '.join(uncertainty))})." if uncertainty else ".")
        + " Generated from metrics.json.</p>",
        metrics_table_html(docs),
        "<h2>Replicas</h2><table><thead><tr><th>model</th><th>simulation</th><th>replicas used</th>"
        f"<th>frames used</th><th>Δt (ps)</th><th>dropped (reason)</th></tr></thead><tbody>{rep_rows}</tbody></table>",
    ]
    for heading, fname, caption in figures:
        parts.append(f"<h2>{html.escape(heading)}</h2><p class='note'>{caption}</p><img src='{fname}' alt='{html.escape(heading)}'>")
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(prov, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    (out / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    return path


__all__ = ["MODEL_COLORS", "REFERENCE_COLOR", "STRUCTURE_PANELS", "build_report", "free_energy_2d",
           "metrics_table_html", "plot_densities", "plot_free_energy", "plot_phi_psi_panels", "plot_training_curves",
           "pyplot", "read_training_csv"]
