"""Report of the alanine-dipeptide study (``benchmarks/ala2.py``): markdown tables and figures.

The study (:mod:`hessid.training.pipelines.ala2_study`) computes; this module only formats
what it computed: tables of the benchmark metrics per (variant, training-set size), the
ablation at one size with the training cost, differences to force matching, and the figures.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hessid.training.evaluation.report import plot_phi_psi_panels, pyplot

#: benchmark metrics (from ``evaluate``'s metrics.json) shown beside the φ/ψ ones
METRIC_KEYS = ("tic0_kl", "tica_2d_w1")


def _fmt(ms, digits=3) -> str:
    """``"m ± e"`` of a (mean, s.e.) pair with ``digits`` significant digits; ``—`` when not finite."""
    m, e = ms
    if not math.isfinite(m):
        return "—"
    return f"{m:.{digits}g}" if not math.isfinite(e) else f"{m:.{digits}g} ± {e:.2g}"


def write_ala2_report(settings: dict, reference: dict, mapped: dict, rows: list[dict], results_md: Path,
                      report_dir: Path, wall_seconds: Mapping[str, float],
                      free_energy_panels: Sequence[tuple[str, np.ndarray]], grid_deg: np.ndarray,
                      basins: Sequence[str], cost: dict | None = None,
                      hessian_reference: dict | None = None) -> dict:
    """The alanine-dipeptide study's report: ``results_md`` and ``report_dir/index.html`` + PNGs.

    Tables (data efficiency; probe / full-Hessian ablation with training cost; every variant
    against FM), data-efficiency curves (``data_efficiency.png``), the ablation bars
    (``ablation.png``) and φ/ψ free-energy maps side by side (``phi_psi_free_energy.png``).
    Entries are mean ± standard error over seeds; a difference to FM is flagged when larger
    than twice the combined standard error.

    Args:
        settings: the study's settings (``hessid.training.pipelines.ala2_study.settings``).
        reference: result of the reference stage (``files``, ``total_ns``).
        mapped: result of the map stage (``basins_pooled``, ``basins_blocks_are_runs``).
        rows: evaluation rows ``{"label", "size", "benchmark", "summary", ...}``.
        results_md: markdown file written.
        report_dir: folder of the HTML page and PNGs (created).
        wall_seconds: ``{stage: wall s}`` summed over invocations (printed as JSON).
        free_energy_panels: ``[(label, F (n_bins, n_bins) kcal/mol)]``, the reference first.
        grid_deg: (n_bins,) φ/ψ bin centres, degrees.
        basins: basin names in table order (keys of the populations).
        cost: result of the cost stage (``ms_per_step``, ``batch_size``) or None.
        hessian_reference: result of the reference-Hessian stage (``basins``) or None.

    Returns:
        ``{"results_md": path, "report": path of index.html}``.
    """
    s, ref, href = settings, reference, hessian_reference
    plt = pyplot()
    report_dir.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    keyed = {(r["label"], r["size"]): r for r in rows}

    def bench(r, k):
        d = r["benchmark"]
        if d is None:  # every replica of every seed blew up
            return (math.nan, math.nan)
        e = (d.get("sem") or {}).get(k)
        return (d["metrics"][k], math.nan if e is None else e)

    # data-efficiency curves
    curves = [("tic0_kl", "TIC0 KL (nats)"), ("tica_2d_w1", "TICA 2D W1"), ("phi_psi_kl", "φ/ψ KL (nats)"),
              ("phi_psi_w1", "φ/ψ W1 (rad)"), ("pop_alpha_R", "p(αR)"), ("hess_err_mean", "Hessian rel. error"),
              ("hess_soft_err_mean", "soft-mode Hessian error")]
    main_labels = [lab for lab in labels if sum((lab, n) in keyed for n in sizes) > 1] or labels
    n_cols = 4
    n_rows = -(-len(curves) // n_cols)
    fig, grid = plt.subplots(n_rows, n_cols, figsize=(4.4 * n_cols, 3.8 * n_rows), constrained_layout=True)
    axes = list(np.ravel(grid))
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    for ax, (k, title) in zip(axes[: len(curves)], curves, strict=True):
        if k == "pop_alpha_R":
            p_ref = mapped["basins_pooled"]["populations"]["alpha_R"]
            ax.axhline(p_ref, color="k", ls="--", lw=1, label="reference")
        for lab in main_labels:
            ms = [bench(keyed[(lab, n)], k) if k in METRIC_KEYS else
                  keyed[(lab, n)]["summary"].get(k, (math.nan, math.nan))
                  for n in sizes if (lab, n) in keyed]
            ns = [n for n in sizes if (lab, n) in keyed]
            m = np.array([x[0] for x in ms])
            e = np.nan_to_num(np.array([x[1] for x in ms]))
            ax.errorbar(ns, m, yerr=e, marker="o", capsize=3, label=lab)
        ax.set_xscale("log")
        ax.set_xlabel("training frames")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.savefig(report_dir / "data_efficiency.png")
    plt.close(fig)

    # ablation at one size: every variant side by side, with its cost per step
    n_ab = s["ablation_size"]
    ab = [lab for lab in labels if (lab, n_ab) in keyed]
    ms_cost = (cost or {}).get("ms_per_step", {})
    panels_ab = [("φ/ψ KL (nats)", lambda r: r["summary"]["phi_psi_kl"]),
                 ("TIC0 KL (nats)", lambda r: bench(r, "tic0_kl")),
                 ("soft-mode Hessian error", lambda r: r["summary"].get("hess_soft_err_mean", (math.nan, math.nan))),
                 ("ms per training step", lambda r: (ms_cost.get(r["label"], math.nan), math.nan))]
    fig, axs = plt.subplots(1, len(panels_ab), figsize=(4.4 * len(panels_ab), 4.2), constrained_layout=True)
    y = np.arange(len(ab))
    for ax, (title, get) in zip(axs, panels_ab, strict=True):
        vals = [get(keyed[(lab, n_ab)]) for lab in ab]
        ax.barh(y, [v[0] for v in vals], xerr=np.nan_to_num([v[1] for v in vals]), capsize=3,
                color=["C0" if lab == "FM" else "C1" if lab == "FM+AA" else "C2" for lab in ab])
        ax.set_yticks(y, ab if ax is axs[0] else [""] * len(ab), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{n_ab} training frames, mean ± s.e. over seeds")
    fig.savefig(report_dir / "ablation.png")
    plt.close(fig)

    # φ/ψ free-energy maps side by side (largest size, seeds pooled)
    plot_phi_psi_panels(free_energy_panels, grid_deg, report_dir / "phi_psi_free_energy.png", f_max=5.0)

    # tables: data efficiency (variants trained at every size), then the ablation at one size
    head = ["model", "frames", "TIC0 KL", "TICA 2D W1", "φ/ψ KL", "φ/ψ W1 (rad)", "p(αR)", "p(β/PII)",
            "p(αL)", "Hessian rel. err.", "soft-mode Hessian err."]
    nan2 = (math.nan, math.nan)

    def row(lab, n, extra=()):
        r = keyed[(lab, n)]
        sm = r["summary"]
        cells = [lab, str(n), _fmt(bench(r, "tic0_kl")), _fmt(bench(r, "tica_2d_w1")), _fmt(sm["phi_psi_kl"]),
                 _fmt(sm["phi_psi_w1"]), _fmt(sm["pop_alpha_R"]), _fmt(sm["pop_beta_PII"]),
                 _fmt(sm["pop_alpha_L"]), _fmt(sm.get("hess_err_mean", nan2), 2),
                 _fmt(sm.get("hess_soft_err_mean", nan2), 2), *extra]
        return "| " + " | ".join(cells) + " |"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [row(lab, n) for lab in main_labels for n in sizes if (lab, n) in keyed]
    # every variant against FM at the same size: difference of seed means, s.e. combined
    cmp_keys = [("φ/ψ KL", lambda r: r["summary"]["phi_psi_kl"]), ("TIC0 KL", lambda r: bench(r, "tic0_kl")),
                ("Hessian rel. err.", lambda r: r["summary"].get("hess_err_mean", nan2)),
                ("soft-mode Hessian err.", lambda r: r["summary"].get("hess_soft_err_mean", nan2))]
    cmp_lines = ["| model | frames | " + " | ".join(f"Δ {k} (model − FM)" for k, _ in cmp_keys) + " |",
                 "|" + "---|" * (2 + len(cmp_keys))]
    for lab in labels:
        for n in sizes:
            if lab == "FM" or (lab, n) not in keyed or ("FM", n) not in keyed:
                continue
            cells = []
            for _, get in cmp_keys:
                (m1, e1), (m0, e0) = get(keyed[(lab, n)]), get(keyed[("FM", n)])
                d, e = m1 - m0, math.hypot(e1, e0)
                flag = " **" if math.isfinite(e) and e > 0 and abs(d) > 2 * e else ""
                cells.append("—" if not math.isfinite(d) else f"{d:+.3g} ± {e:.2g}{flag.strip() and ' (>2 s.e.)'}")
            cmp_lines.append(f"| {lab} | {n} | " + " | ".join(cells) + " |")
    n_ab = s["ablation_size"]
    ms = (cost or {}).get("ms_per_step", {})
    ab_head = [*head, "ms/step (ratio to FM)", "train wall s/epoch"]
    ab_lines = ["| " + " | ".join(ab_head) + " |", "|" + "---|" * len(ab_head)]
    for lab in labels:
        if (lab, n_ab) in keyed:
            c = f"{ms[lab]:.1f} ({ms[lab] / ms['FM']:.2f}×)" if lab in ms and "FM" in ms else "—"
            ab_lines.append(row(lab, n_ab, (c, _fmt(keyed[(lab, n_ab)]["summary"]["wall_s_per_epoch"]))))
    rb = mapped["basins_pooled"]
    ref_line = ", ".join(f"{b} {rb['populations'][b]:.3f} ± {rb['sem'][b]:.3f}" for b in basins)
    runs_line = ""
    if mapped.get("basins_blocks_are_runs"):
        rr = mapped["basins_blocks_are_runs"]
        runs_line = ("; with the independent runs as blocks: "
                     + ", ".join(f"{b} {rr['populations'][b]:.3f} ± {rr['sem'][b]:.3f}" for b in basins))
    mode_note = {"quick": "**QUICK MODE — a miniature to check the pipeline; these numbers mean nothing.**\n\n",
                 "small": "**PRELIMINARY SMALL RUN — a few ns of reference, one training size, one seed, "
                          "short CG MD; not the full protocol (`benchmarks/ala2.py` without "
                          "--small).**\n\n"}.get(s["mode"], "")
    flag = {"quick": " --quick", "small": " --small"}.get(s["mode"], "")
    md = [
        "# Alanine dipeptide, 5-bead CG: does curvature supervision help?", "",
        mode_note + f"Generated by `python benchmarks/ala2.py{flag}` on "
        f"{time.strftime('%Y-%m-%d')}. Reference: {len(ref['files'])} independent AA runs, "
        f"{ref['total_ns']:.3g} ns in total (Amber14 + GBn2, 300 K). Mean ± standard error over "
        f"{len(s['seeds'])} training seed(s).", "",
        f"Reference basin populations (block averages, {rb['n_blocks']} blocks): {ref_line}{runs_line}.", "",
        "### Data efficiency", "", *lines, "",
        "Hessian rel. err.: ‖∇²U_θ − H_CG‖_F / ‖H_CG‖_F at one reference configuration per basin "
        "(mean over basins), H_CG = ⟨P∇²UPᵀ⟩ − β Cov(Pf) estimated by frozen-bead AA sampling at that "
        "configuration (training/data/conditional.py). Soft-mode error: the same on the subspace of "
        "the reference's 11 softest eigenvectors (the 4 stiff bond modes, fitted by the prior, left out; "
        "`ala2.hessian_soft_relative_error`). The reference's own statistical error (‖s.e.‖_F/‖H‖_F): "
        + (", ".join(f"{b} {d['frobenius_rel_sem']:.3f} ({d['n_frames']} frames, |Term 1|_F "
                     f"{d['term1_frobenius']:.0f}, |Term 2|_F {d['term2_frobenius']:.0f} kcal/mol/Å²)"
                     for b, d in (href or {}).get("basins", {}).items()) or "not computed") + ".", "",
        f"### Probes and full Hessian ({n_ab} training frames), with training cost", "", *ab_lines, "",
        "### Each variant against FM (negative Δ: better than FM)", "", *cmp_lines, "",
        "Δ is the difference of the seed means; ± combines the two standard errors over seeds; "
        "'(>2 s.e.)' marks a difference larger than twice that.", "",
        "ms/step: one training step (loss forward + backward, batch "
        f"{(cost or {}).get('batch_size', '?')}, 1 thread) of each variant, measured side by side in "
        "one process, round robin (median). Train wall s/epoch: the training jobs themselves, run "
        "two at a time on the shared machine (noisier).", "",
        "TIC metrics follow docs/evaluation.md (TICA on the 10 pair distances, lag "
        f"{s['eval']['lag_time']} ps); φ/ψ KL(ref‖model) and W1 use a periodic {s['eval']['n_bins']}² grid "
        "(training/pipelines/ala2.py). Basins: αL 0 ≤ φ < 120°; αR otherwise with −120 ≤ ψ < 50°; β/PII the rest.", "",
        "![data efficiency](ala2/data_efficiency.png)", "", "![ablation](ala2/ablation.png)", "",
        "![phi/psi](ala2/phi_psi_free_energy.png)", "",
        "## Settings", "", "```json", json.dumps(s, indent=1, default=str), "```", "",
        "## Timings", "",
        "Wall seconds per stage, summed over every invocation of the command on this work folder "
        "(a resumed or extended stage counts every part; a skipped stage adds ≈ 0):", "",
        "```json", json.dumps(dict(wall_seconds), indent=1, default=float), "```", "",
        "## Closing note", "",
        ("Quick/small mode: no conclusion from this table alone." if s["mode"] in ("quick", "small") else
         "The interpretation of this run (which variant beats FM at which size, by how much, with "
         "what uncertainty; the covariance correction; HVP against the full Hessian and its cost) is "
         "written by hand in [ala2_discussion.md](ala2_discussion.md); the tables above are regenerated "
         "by the command at the top."), "",
    ]
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text("\n".join(md))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>ala2</title></head><body>"
            f"<pre>{html.escape(chr(10).join(md))}</pre><img src='data_efficiency.png'>"
            "<img src='ablation.png'><img src='phi_psi_free_energy.png'></body></html>")  # fmt: skip
    (report_dir / "index.html").write_text(page)
    return {"results_md": Path(results_md), "report": Path(report_dir) / "index.html"}


__all__ = ["METRIC_KEYS", "write_ala2_report"]
