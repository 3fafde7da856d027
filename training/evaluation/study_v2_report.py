"""Results fragment of the pre-registered study ``docs/results/ala2_v2.md``: tables, verdicts, figures.

:func:`write_ala2_v2_results` takes one row per trained model and writes the markdown that goes
below the page's "Results" heading, plus two figures. Every number comes from
:mod:`hessid.training.evaluation.statistics`; this module only arranges them.

Row schema (one dict per (arm, size, replicate); JSON-friendly):

=======================  ==========================================================================
key                      meaning
=======================  ==========================================================================
``arm``                  ``"FM"``, ``"HVP-frame"``, ``"HVP-RB"``, ``"Cond-F"``, ``"Cond-FH"``, …
``size``                 nominal training-set size N, frames (int)
``replicate``            (subset seed, init seed), a 2-sequence of int
``force_error``          metric 1, noise-corrected RMS per bead of F_θ − F, kcal/mol/Å
``force_error_rel``      metric 1 relative (÷ RMS ‖F‖ per bead), optional
``hessian_soft_error``   metric 2, mean over configurations, dimensionless
``dg_error``             metric 3, ΔG(αR−β)_model − ΔG_ref, **signed**, kcal/mol
``fes_rmse``             metric 4, φ/ψ free-energy RMSE, kcal/mol
``train_wall_s``         training wall time, s
``steps``                optimiser steps
``aa_force_evals``       AA force evaluations spent on this model's training data
=======================  ==========================================================================

A missing metric is NaN. Comparisons use |dg_error| (an error: lower is better).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hessid.training.evaluation.report import pyplot
from hessid.training.evaluation.statistics import (
    METRIC_DG,
    METRIC_FORCE,
    Comparison,
    GateResult,
    MultiplierEstimate,
    PairedInterval,
    Verdict,
    data_multiplier,
    gate,
    holm,
    isotonic_decreasing,
    paired_difference,
    smallest_detectable_effect,
    verdict,
)

#: the pre-registered Holm family (page, "Analysis"): arms × sizes × metrics 1 and 3
FAMILY_ARMS = ("HVP-frame", "HVP-RB", "Cond-F", "Cond-FH")
FAMILY_SIZES = (250, 1000, 4000)
FAMILY_METRICS = (METRIC_FORCE, METRIC_DG)
#: (key, short title, unit) of metrics 1–4 as compared (metric 3 as absolute error)
METRICS = ((METRIC_FORCE, "1. mean-force error", "kcal/mol/Å"),
           ("hessian_soft_error", "2. soft-mode Hessian error", ""),
           (METRIC_DG, "3. absolute ΔG(αR−β) error", "kcal/mol"),
           ("fes_rmse", "4. φ/ψ free-energy RMSE", "kcal/mol"))
BASELINE = "FM"
DEFAULTS = {"family_arms": FAMILY_ARMS, "family_sizes": FAMILY_SIZES, "confidence": 0.95, "alpha": 0.05,
            "n_boot": 10_000, "seed": 0, "gate_dg_size": 16_000, "gate_force_sizes": (250, 4000),
            "gate_dg_tolerance": 0.2, "mode": "full"}


def _value(row: Mapping, key: str) -> float:
    """Metric ``key`` of a row as float (|dg_error| for :data:`METRIC_DG`); NaN when missing."""
    if key == METRIC_DG:
        v = row.get("dg_error")
        return abs(float(v)) if v is not None else math.nan
    v = row.get(key)
    return float(v) if v is not None else math.nan


def _index(rows: Sequence[Mapping]) -> dict[tuple[str, int], dict[tuple, Mapping]]:
    """``{(arm, size): {replicate: row}}``; ValueError on a missing key or a duplicate."""
    out: dict[tuple[str, int], dict[tuple, Mapping]] = {}
    for i, r in enumerate(rows):
        for k in ("arm", "size", "replicate"):
            if k not in r:
                raise ValueError(f"row {i} has no {k!r}")
        rep = tuple(int(x) for x in r["replicate"])
        cell = out.setdefault((str(r["arm"]), int(r["size"])), {})
        if rep in cell:
            raise ValueError(f"row {i}: duplicate replicate {rep} for arm {r['arm']!r} at size {r['size']}")
        cell[rep] = r
    return out


def _g(v: float, digits: int = 3, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if abs(v) >= 10**digits:
        return f"{v:+.0f}" if sign else f"{v:.0f}"
    if v != 0 and abs(v) < 10 ** -(digits + 1):
        return f"{v:+.{digits - 1}e}" if sign else f"{v:.{digits - 1}e}"
    return f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"


def _interval(d: PairedInterval) -> str:
    if not math.isfinite(d.mean):
        return "—"
    if not math.isfinite(d.low):
        return f"{_g(d.mean, sign=True)} (n = {d.n}, no interval)"
    return f"{_g(d.mean, sign=True)} [{_g(d.low, sign=True)}, {_g(d.high, sign=True)}]"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("< 1e-4" if p < 1e-4 else f"{p:.3g}")


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body)]


def _learning_curve(fm_cells: Mapping[int, Mapping[tuple, Mapping]], arm_cell: Mapping[tuple, Mapping], key: str,
                    size: int, n_boot: int, seed: int, confidence: float) -> MultiplierEstimate | None:
    """m of one arm at one size: replicates common to the arm and every FM size."""
    sizes = sorted(fm_cells)
    if len(sizes) < 2:
        return None
    reps = sorted(set(arm_cell).intersection(*(set(fm_cells[n]) for n in sizes)))
    if not reps:
        return None
    fm = np.array([[_value(fm_cells[n][r], key) for n in sizes] for r in reps])
    arm = np.array([_value(arm_cell[r], key) for r in reps])
    return data_multiplier(sizes, fm, arm, size, n_boot=n_boot, seed=seed, confidence=confidence)


def write_ala2_v2_results(rows: Sequence[Mapping], settings: Mapping, out_md_fragment: str | Path,
                          plots_dir: str | Path) -> dict:
    """Write the results fragment of ``docs/results/ala2_v2.md`` and its figures.

    The fragment holds, in order: the gate table (criteria 1 and 2, with the detectable effect
    on metric 1 implied by FM's replicate spread); FM's learning curve; per metric (1–4) a table
    of paired differences arm − FM with t-based 95 % intervals, raw p and — for the
    pre-registered family {HVP-frame, HVP-RB, Cond-F, Cond-FH} × {250, 1000, 4000} × {metric 1,
    metric 3}, 24 comparisons — Holm-adjusted p (missing comparisons count in the family); the
    data multiplier m with its paired bootstrap interval per arm and size for metrics 1 and 3;
    the cost table; and one verdict sentence per arm (:func:`statistics.verdict`; an arm outside
    the family is judged with unadjusted p and labelled secondary). Figures:
    ``learning_curves.png`` (FM mean with each replicate, its isotonic fit used for m, arms as
    points with 95 % t-intervals of their mean) and ``paired_differences.png`` (forest plot).

    Args:
        rows: one dict per trained model, keys as in the module docstring.
        settings: overrides of :data:`DEFAULTS` (``family_arms``, ``family_sizes``, ``confidence``,
            ``alpha``, ``n_boot``, ``seed``, ``gate_dg_size``, ``gate_force_sizes``,
            ``gate_dg_tolerance``, ``mode``) and optionally ``label_errors``: a dict of the test
            labels' own errors, printed beside the metrics (e.g. ``force_noise_rms`` kcal/mol/Å,
            ``force_rms`` kcal/mol/Å, ``hessian_soft_rel_sem``, ``dg_reference_sem`` kcal/mol).
        out_md_fragment: markdown file written (parent created).
        plots_dir: folder of the PNGs (created); linked relative to the fragment.

    Returns:
        ``{"fragment": Path, "plots": [Path, ...], "gate": GateResult, "verdicts": {arm: Verdict},
        "comparisons": {(arm, size, metric): (PairedInterval, p_holm)}, "multipliers":
        {(arm, size, metric): MultiplierEstimate | None}}``.

    Raises:
        ValueError: a row lacks ``arm``/``size``/``replicate``, a replicate repeats within an
            (arm, size), or no FM row exists.
    """
    s = {**DEFAULTS, **dict(settings)}
    conf, alpha = float(s["confidence"]), float(s["alpha"])
    cells = _index(rows)
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows))
    if BASELINE not in arms:
        raise ValueError("no FM rows: every comparison is against FM")
    others = [a for a in arms if a != BASELINE]
    fm_cells = {n: c for (a, n), c in cells.items() if a == BASELINE}
    fm_sizes = sorted(fm_cells)
    family_arms, family_sizes = tuple(s["family_arms"]), tuple(int(n) for n in s["family_sizes"])

    g = _evaluate_gate(fm_cells, s, conf)

    # ---- paired comparisons, Holm over the fixed family
    comps: dict[tuple[str, int, str], PairedInterval] = {}
    for a in others:
        for n in sorted(n for (aa, n) in cells if aa == a):
            if n not in fm_cells:
                continue
            for key, _, _ in METRICS:
                arm_v = {k: _value(r, key) for k, r in cells[(a, n)].items()}
                fm_v = {k: _value(fm_cells[n][k], key) for k in arm_v if k in fm_cells[n]}
                arm_v = {k: v for k, v in arm_v.items() if k in fm_v}  # pair on the common replicates
                comps[(a, n, key)] = paired_difference(arm_v, fm_v, conf)
    family = [(a, n, k) for a in family_arms for n in family_sizes for k in FAMILY_METRICS]
    p_family = holm([comps[f].p_value if f in comps else math.nan for f in family])
    p_holm = {f: float(p) for f, p in zip(family, p_family, strict=True)}

    # ---- data multipliers (metrics 1 and 3)
    mults: dict[tuple[str, int, str], MultiplierEstimate | None] = {}
    for a in others:
        for n in sorted(n for (aa, n) in cells if aa == a):
            for key in FAMILY_METRICS:
                mults[(a, n, key)] = _learning_curve(fm_cells, cells[(a, n)], key, n, int(s["n_boot"]),
                                                     int(s["seed"]), conf)

    # ---- verdicts
    verdicts: dict[str, Verdict] = {}
    for a in others:
        in_family = a in family_arms
        cs = []
        for n in sorted(n for (aa, n) in cells if aa == a):
            for key in FAMILY_METRICS:
                if (a, n, key) not in comps:
                    continue
                d = comps[(a, n, key)]
                p = p_holm.get((a, n, key), math.nan) if in_family else d.p_value
                fm_mean = float(np.nanmean([_value(r, key) for r in fm_cells[n].values()]))
                cs.append(Comparison(key, n, d, p, mults.get((a, n, key)), fm_mean))
        v = verdict(a, g.passed, cs, alpha=alpha, adjusted=in_family)
        if not in_family:
            v = Verdict(v.label, v.reason.replace(f"{a}: ", f"{a} (secondary: not in the pre-registered family, "
                                                  "p unadjusted): ", 1))
        verdicts[a] = v

    # ---- markdown
    out_md = Path(out_md_fragment)
    plots = Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(plots.resolve(), out_md.parent.resolve()))
    md = _gate_and_fm_md(g, fm_cells, s, conf)
    for key, title, unit in METRICS:
        primary = key in FAMILY_METRICS
        md += [f"### Metric {title}{' (' + unit + ')' if unit else ''}: arm − FM"
               f"{'' if primary else ' (secondary, unadjusted)'}", ""]
        body = []
        for a in others:
            for n in sorted(n for (aa, n) in cells if aa == a):
                if (a, n, key) not in comps:
                    continue
                d = comps[(a, n, key)]
                fm_m = np.nanmean([_value(fm_cells[n][k], key) for k in fm_cells[n]])
                arm_m = np.nanmean([_value(r, key) for r in cells[(a, n)].values()])
                ph = p_holm.get((a, n, key), math.nan) if primary else math.nan
                body.append([a, str(n), str(d.n), _g(float(fm_m)), _g(float(arm_m)), _interval(d), _p(d.p_value),
                             _p(ph) + (" *" if math.isfinite(ph) and ph <= alpha else "")])
        md += _table(["arm", "frames", "pairs", "FM", "arm", f"arm − FM [{int(100 * conf)} % CI]", "p",
                      "p (Holm, family of 24)"], body)
        md += [""]
    md += ["Paired over replicates (subset seed, init seed); t-interval with n − 1 degrees of freedom; negative: the "
           f"arm is better. *: Holm-adjusted p ≤ {alpha:g} across the {len(family)} pre-registered comparisons "
           "(a comparison that could not be made still counts in the family).", ""]

    md += ["### Data multiplier m = N'/N", ""]
    body = []
    for a in others:
        for n in sorted(n for (aa, n) in cells if aa == a):
            row = [a, str(n)]
            for key in FAMILY_METRICS:
                e = mults.get((a, n, key))
                row.append("—" if e is None or not math.isfinite(e.m) else f"{e.format()} (N' = {_g(e.n_prime)})")
            body.append(row)
    md += _table(["arm", "frames", *(f"m on metric {i} [{int(100 * conf)} % CI]" for i in (1, 3))], body)
    md += ["", "N' = the FM size whose (isotonic, non-increasing) learning curve, linear in log N between measured "
           f"sizes ({', '.join(map(str, fm_sizes))}), reaches the arm's mean; the smallest such N' on a flat stretch. "
           "'> x' / '< x': outside FM's measured sizes (censored, not extrapolated). Interval: percentile bootstrap "
           f"over replicates, FM and arm resampled together ({int(s['n_boot'])} resamples, seed {int(s['seed'])}).",
           ""]

    md += ["### Cost", ""]
    body = []
    for a in arms:
        for n in sorted(n for (aa, n) in cells if aa == a):
            c = list(cells[(a, n)].values())
            wall = np.nanmean([float(r.get("train_wall_s", math.nan)) for r in c])
            steps = np.nanmean([float(r.get("steps", math.nan)) for r in c])
            aa = np.nanmean([float(r.get("aa_force_evals", math.nan)) for r in c])
            fm_aa = (np.nanmean([float(r.get("aa_force_evals", math.nan)) for r in fm_cells[n].values()])
                     if n in fm_cells else math.nan)
            body.append([a, str(n), _g(float(wall)), _g(float(steps)),
                         _g(1000 * float(wall / steps)) if steps > 0 else "—", _g(float(aa)),
                         _g(float(aa / fm_aa)) if fm_aa > 0 else "—"])
    md += _table(["arm", "frames", "train wall s", "steps", "ms/step", "AA force evaluations", "AA cost ÷ FM"], body)
    md += ["", "Means over replicates.", ""]

    md += ["### Verdicts", ""]
    md += ["- " + verdicts[a].reason.replace(f"{verdicts[a].label} — ", f"**{verdicts[a].label}** — ", 1)
           for a in others]
    md += ["", f"![learning curves]({(rel / 'learning_curves.png').as_posix()})", "",
           f"![paired differences]({(rel / 'paired_differences.png').as_posix()})", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(md))

    figs = [_plot_learning_curves(plots / "learning_curves.png", cells, fm_cells, others, conf),
            _plot_forest(plots / "paired_differences.png", comps, p_holm, others, alpha)]
    return {"fragment": out_md, "plots": figs, "gate": g, "verdicts": verdicts,
            "comparisons": {k: (d, p_holm.get(k, math.nan)) for k, d in comps.items()}, "multipliers": mults}


def _evaluate_gate(fm_cells: Mapping[int, Mapping[tuple, Mapping]], s: Mapping, conf: float) -> GateResult:
    """The gate (:func:`statistics.gate`) on FM's rows, or a failed "not evaluable" result when a
    size it needs has no FM row."""
    n_dg = int(s["gate_dg_size"])
    n_lo, n_hi = (int(n) for n in s["gate_force_sizes"])
    if n_dg in fm_cells and n_lo in fm_cells and n_hi in fm_cells:
        common = sorted(set(fm_cells[n_lo]) & set(fm_cells[n_hi]))
        return gate([float(r.get("dg_error", math.nan)) for r in fm_cells[n_dg].values()],
                    {k: _value(fm_cells[n_lo][k], METRIC_FORCE) for k in common},
                    {k: _value(fm_cells[n_hi][k], METRIC_FORCE) for k in common},
                    tolerance=float(s["gate_dg_tolerance"]), confidence=conf)
    missing = [n for n in (n_dg, n_lo, n_hi) if n not in fm_cells]
    nan = math.nan
    return GateResult(False, nan, False, PairedInterval(nan, nan, nan, nan, nan, 0, nan, conf), False,
                      f"gate not evaluable: no FM rows at {', '.join(map(str, missing))} frames.")


def _gate_and_fm_md(g: GateResult, fm_cells: Mapping[int, Mapping[tuple, Mapping]], s: Mapping,
                    conf: float) -> list[str]:
    """Markdown lines: the mode banner, the gate table with the detectable effect on metric 1 and
    the test labels' errors, and FM's learning-curve table."""
    n_dg = int(s["gate_dg_size"])
    n_lo, n_hi = (int(n) for n in s["gate_force_sizes"])
    fm_sizes = sorted(fm_cells)
    md: list[str] = []
    if s["mode"] != "full":
        md += [f"**{str(s['mode']).upper()} MODE — a miniature run of the pipeline; these numbers are not the "
               "study's result.**", ""]
    fm_sd = {n: float(np.nanstd([_value(r, METRIC_FORCE) for r in fm_cells[n].values()], ddof=1))
             if len(fm_cells[n]) > 1 else math.nan for n in fm_sizes}
    sde_rows = []
    for n in (int(n) for n in s["family_sizes"]):
        sd, k = fm_sd.get(n, math.nan), len(fm_cells.get(n, {}))
        sde = smallest_detectable_effect(math.sqrt(2) * sd, k, conf) if k >= 2 and math.isfinite(sd) else math.nan
        sde_rows.append(f"{n}: {_g(sde)}")
    md += ["### Gate", ""]
    md += _table(["criterion", "value", "threshold", "holds"], [
        [f"1. FM ΔG(αR−β) error at {n_dg} frames, mean of replicates (kcal/mol)", _g(g.dg_mean, sign=True),
         f"within ±{_g(float(s['gate_dg_tolerance']))}", "yes" if g.dg_ok else "**no**"],
        [f"2. FM metric 1 at {n_hi} − at {n_lo} frames, paired (kcal/mol/Å)", _interval(g.force_diff),
         f"{int(100 * conf)} % interval below 0", "yes" if g.force_ok else "**no**"],
    ])
    md += ["", f"**Gate {'passed' if g.passed else 'failed'}.** {g.reason.split(': ', 1)[-1]}", "",
           "Smallest detectable effect on metric 1 (t half width of a paired mean, σ_d = √2 × FM's replicate "
           f"SD, n = FM's replicates) per size: {'; '.join(sde_rows)} kcal/mol/Å.", ""]
    le = s.get("label_errors") or {}
    if le:
        md += ["Test labels' own errors: " + ", ".join(f"{k} = {_g(float(v))}" for k, v in le.items()) + ".", ""]

    md += ["### FM learning curve", ""]
    body = []
    for n in fm_sizes:
        c = fm_cells[n]
        vals = {key: np.array([_value(r, key) for r in c.values()]) for key, _, _ in METRICS}
        signed = np.array([float(r.get("dg_error", math.nan)) for r in c.values()])

        def ms(x):
            x = x[np.isfinite(x)]
            return "—" if not x.size else (_g(x.mean()) if x.size < 2 else f"{_g(x.mean())} ± {_g(x.std(ddof=1), 2)}")
        body.append([str(n), str(len(c)), *(ms(vals[key]) for key, _, _ in METRICS),
                     "—" if not np.isfinite(signed).any() else _g(float(np.nanmean(signed)), sign=True)])
    md += _table(["frames", "replicates", *(f"{t} ({u})" if u else t for _, t, u in METRICS), "ΔG error, signed"],
                 body)
    md += ["", "Mean ± replicate SD.", ""]
    return md


def write_ala2_v2_gate(rows: Sequence[Mapping], settings: Mapping, out_md_fragment: str | Path,
                       plots_dir: str | Path) -> dict:
    """Write the gate part of the results — what :func:`write_ala2_v2_results` writes first (the
    gate table with the detectable effect on metric 1, and FM's learning curve) — from FM's rows
    alone, with the learning-curve figure. For the page's "Gate attempts", before any arm runs.

    Args:
        rows: one dict per trained model (keys as in the module docstring); rows of arms other
            than FM are ignored.
        settings: as for :func:`write_ala2_v2_results`.
        out_md_fragment: markdown file written (parent created).
        plots_dir: folder of ``learning_curves.png`` (created); linked relative to the fragment.

    Returns:
        ``{"fragment": Path, "plots": [Path], "gate": GateResult}``.

    Raises:
        ValueError: a row lacks ``arm``/``size``/``replicate``, a replicate repeats within a size,
            or no FM row exists.
    """
    s = {**DEFAULTS, **dict(settings)}
    conf = float(s["confidence"])
    cells = _index([r for r in rows if str(r.get("arm")) == BASELINE])
    fm_cells = {n: c for (_, n), c in cells.items()}
    if not fm_cells:
        raise ValueError("no FM rows: the gate is a property of FM")
    g = _evaluate_gate(fm_cells, s, conf)
    out_md, plots = Path(out_md_fragment), Path(plots_dir)
    plots.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(plots.resolve(), out_md.parent.resolve()))
    md = _gate_and_fm_md(g, fm_cells, s, conf)
    md += [f"![learning curves]({(rel / 'learning_curves.png').as_posix()})", ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(md))
    fig = _plot_learning_curves(plots / "learning_curves.png", cells, fm_cells, [], conf)
    return {"fragment": out_md, "plots": [fig], "gate": g}


def _mean_ci(x: np.ndarray, conf: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), smallest_detectable_effect(float(x.std(ddof=1)), x.size, conf)


def _plot_learning_curves(path: Path, cells, fm_cells, others, conf) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 4.0), constrained_layout=True)
    sizes = sorted(fm_cells)
    for ax, (key, title, unit) in zip(axes, METRICS, strict=True):
        for n in sizes:
            v = [_value(r, key) for r in fm_cells[n].values()]
            ax.scatter([n] * len(v), v, s=12, color="0.55", zorder=2)
        ax.plot(sizes, [np.nanmean([_value(r, key) for r in fm_cells[n].values()]) for n in sizes], "k-o",
                ms=4, label="FM (mean; dots: replicates)", zorder=3)
        if key in (METRIC_FORCE, METRIC_DG):
            mean = np.array([np.nanmean([_value(r, key) for r in fm_cells[n].values()]) for n in sizes])
            if np.all(np.isfinite(mean)):
                ax.plot(sizes, isotonic_decreasing(mean), "k--", lw=1, label="FM isotonic fit (for m)")
        for i, a in enumerate(others):
            ns = sorted(n for (aa, n) in cells if aa == a)
            mc = [_mean_ci(np.array([_value(r, key) for r in cells[(a, n)].values()]), conf) for n in ns]
            shift = 1.0 + 0.06 * (i - (len(others) - 1) / 2)
            ax.errorbar([n * shift for n in ns], [m for m, _ in mc], yerr=[e for _, e in mc], fmt="o", capsize=3,
                        color=f"C{i}", label=a, zorder=4)
        ax.set_xscale("log")
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)  # also when a metric is NaN everywhere (no MD)
        ax.set_xlabel("training frames N")
        ax.set_title(title + (f" ({unit})" if unit else ""), fontsize=11)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learning curves; arms: mean ± {int(100 * conf)} % t-interval over replicates", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_forest(path: Path, comps, p_holm, others, alpha) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 0.9 + 0.32 * max(1, len(
        {(a, n) for (a, n, _) in comps}))), constrained_layout=True, squeeze=False)
    keys = sorted({(a, n) for (a, n, _) in comps}, key=lambda t: (others.index(t[0]), t[1]))
    y = np.arange(len(keys))
    for ax, (key, title, unit) in zip(axes[0], METRICS, strict=True):
        for j, (a, n) in enumerate(keys):
            d = comps.get((a, n, key))
            if d is None or not math.isfinite(d.mean):
                continue
            lo = d.mean - d.low if math.isfinite(d.low) else 0.0
            hi = d.high - d.mean if math.isfinite(d.high) else 0.0
            sig = p_holm.get((a, n, key), math.nan) <= alpha
            ax.errorbar([d.mean], [j], xerr=[[lo], [hi]], fmt="o", capsize=3, color=f"C{others.index(a)}",
                        mfc=f"C{others.index(a)}" if sig else "white")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_yticks(y, [f"{a} {n}" for a, n in keys] if ax is axes[0][0] else [""] * len(keys), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("arm − FM" + (f" ({unit})" if unit else ""))
        ax.set_title(title, fontsize=11)
    fig.suptitle("paired differences, 95 % t-intervals (filled: Holm-significant in the family)", fontsize=11)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["BASELINE", "DEFAULTS", "FAMILY_ARMS", "FAMILY_METRICS", "FAMILY_SIZES", "METRICS",
           "write_ala2_v2_gate", "write_ala2_v2_results"]
