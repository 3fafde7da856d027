"""Cause-finding for the gate of the second alanine-dipeptide study (docs/results/ala2_v2.md,
"Gate" and "Cause-finding plan").

The page fixes the order in which a failed gate's cause is looked for — prior-only MD, the CG
time step, the network width — and this module runs all three on the gate's FM models, paired
with the gate itself (same training subsets and data order, the same CG MD start frames and
noise seeds; prior-only and time step reuse the gate's trained models, the wider network has
its own initial weights):

``prior_only``  the gate-size models' priors alone (:class:`~hessid.training.learning.models.
                PriorOnlyPotential`), CG MD exactly as in the gate: what the prior (bonds, angles
                and the two Fourier dihedrals φ, ψ fitted on the training frames, and the set
                ε(σ/r)⁶ repulsion of beads ≥ 3 apart) samples without the network, and how
                much of the prior's ΔG error the network removes.
``timestep``    the same models, CG time step × ``timestep_factor`` (½: 2 → 1 fs), the same
                length in ps and frame spacing in ps. The gate's criterion 1 uses only the
                gate-size models, so this *is* the gate's criterion 1 at the smaller step.
``width``       FM retrained at the gate's sizes (250, 4000 and the MD size) with the embedding
                width × ``width_factor``, every other setting the study's; CG MD at the MD size.
                Both gate criteria are recomputed on these models.

Reading (fixed on the page before the gate outcome was known): a variant *fixes* the gate when
the gate's criteria pass with it (time step: criterion 1 at the smaller step, criterion 2 as
measured; width: both criteria on the wider models); the first fixing variant in the order
time step → width is adopted for a second gate attempt; prior-only MD is a diagnostic (no fix
of its own). The paired differences variant − gate carry t-based 95 % intervals. "As
measured" is the study's gate stage (its stored verdict and criteria decide); the gate
recomputed here from the trajectories and models is a cross-check, reported when it disagrees.

The study's run folder is only read; every output goes to the diagnosis folder, stage by stage
through a :class:`~hessid.training.pipelines.runner.StageRunner` (``diagnosis_state.json``), so
a rerun resumes (MD replicas checkpoint; trained models are kept).

``python -m hessid.training.pipelines.ala2_v2_diagnosis RUN OUT [--jobs 2]`` writes
``OUT/ala2_v2_diagnosis.md``, ``OUT/ala2_v2_diagnosis.json`` and ``OUT/ala2_v2_diagnosis/delta_g.png``.

Units: Å, kcal/mol, K, ps (fs for time steps).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hessid.training.data.labels import read_labels
from hessid.training.evaluation.report import pyplot
from hessid.training.evaluation.statistics import gate as gate_verdict
from hessid.training.evaluation.statistics import noise_corrected_force_error, paired_difference
from hessid.training.pipelines.ala2_v2 import (
    executor,
    fm_aa_cost,
    job_spec,
    rep_tag,
    replicates,
    run_jobs,
)
from hessid.training.pipelines.ala2_v2_eval import md_metrics, model_forces, simulate_job
from hessid.training.pipelines.ala2_v2_study import md_work, open_run
from hessid.training.pipelines.runner import StageRunner, write_json

#: the diagnosis's own settings, fixed on the page before the gate outcome was known
DEFAULTS = {"timestep_factor": 0.5, "width_factor": 2}
#: variants in the page's order; the fixing candidates in the order a fix is adopted
VARIANTS = ("prior_only", "timestep", "width")
FIX_ORDER = ("timestep", "width")
#: stages of the study run the diagnosis reads
NEEDED = ("split", "gate_train", "test_labels", "reference_md", "pilot", "gate_md")
#: this module's stages, in order (``--stop-after`` choices)
STAGES = ("prior_only", "timestep", "width_train", "width_md", "summary")
DIAG_STATE = "diagnosis_state.json"


def log(msg: str) -> None:
    """A progress line on stderr: ``[ala2_v2 diagnosis HH:MM:SS] msg``."""
    print(f"[ala2_v2 diagnosis {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the study run


def load_run(run: str | Path) -> dict:
    """The study run's settings and the stage results the diagnosis needs, paths made absolute.

    Args:
        run: the study's run folder (``--out`` of ``benchmarks/ala2_v2.py``).

    Returns:
        ``{"run", "settings", "split", "gate_runs", "labels", "reference_dg", "n_steps", "gate"}``:
        the folder, ``settings.json``, the split with absolute paths, the gate's FM training
        records (``model`` absolute), the test-labels file, the reference ΔG(αR−β) kcal/mol, the
        CG MD length in steps (the pilot's), and the gate stage's result (None before it ran).

    Raises:
        FileNotFoundError: no ``state.json`` or ``settings.json`` in ``run``.
        ValueError: a needed stage (split … gate_md) has not finished.
    """
    run = Path(run).resolve()
    s, runner = open_run(run, NEEDED, "the gate MD")
    split = copy.deepcopy(runner.result("split"))
    split["val"] = str(run / split["val"])
    split["held_out"] = str(run / split["held_out"])
    split["subsets"] = {k: {n: str(run / p) for n, p in v.items()} for k, v in split["subsets"].items()}
    gate_runs = [dict(r, model=str(run / r["model"])) for r in runner.result("gate_train")["runs"]]
    return {"run": run, "settings": s, "split": split, "gate_runs": gate_runs,
            "labels": run / runner.result("test_labels")["path"],
            "reference_dg": float(runner.result("reference_md")["delta_g"]),
            "n_steps": int(runner.result("pilot")["n_steps"]),
            "gate": runner.result("gate") if runner.done("gate") else None}  # fmt: skip


def gate_sizes(s: Mapping) -> list[int]:
    """The sizes the gate uses: criterion 2's two sizes and the MD size, ascending, unique."""
    g = s["gate"]
    return sorted({int(g["improve_from"]), int(g["improve_to"]), int(g["md_size"])})


def scaled_cgmd(c: Mapping, n_steps: int, factor: float) -> dict:
    """CG MD settings with the time step × ``factor``, the same length and frame spacing in ps.

    Args:
        c: the study's ``cgmd`` settings (``timestep`` fs, ``save_interval`` steps).
        n_steps: the study's MD length in steps at ``c["timestep"]``.
        factor: time-step factor (0 < factor ≤ 1 and 1/factor an integer, so frames stay on steps).

    Returns:
        ``c`` with ``timestep``, ``save_interval`` and ``n_steps`` rescaled.

    Raises:
        ValueError: ``factor`` outside (0, 1] or 1/factor not an integer.
    """
    inv = 1.0 / factor if factor > 0 else math.inf
    if not 0.0 < factor <= 1.0 or abs(inv - round(inv)) > 1e-9:
        raise ValueError(f"timestep_factor must be 1/k for an integer k ≥ 1, got {factor}")
    k = int(round(inv))
    return dict(c, timestep=float(c["timestep"]) * factor, save_interval=int(c["save_interval"]) * k,
                n_steps=int(n_steps) * k)


def width_settings(s: Mapping, factor: int) -> dict:
    """The study's settings with the CGSchNet embedding width × ``factor`` (nothing else changes).

    Raises:
        ValueError: ``factor`` is not an integer ≥ 2.
    """
    if int(factor) != factor or factor < 2:
        raise ValueError(f"width_factor must be an integer ≥ 2, got {factor}")
    w = copy.deepcopy(dict(s))
    w["model"]["embedding_dimension"] = int(s["model"]["embedding_dimension"]) * int(factor)
    return w


# ----------------------------------------------------------------------------- stages


def starts_digest(starts) -> str:
    """SHA-256 of CG MD start frames (R, n, 3) Å as float64 bytes: a record that two runs started
    from the same frames."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(starts, dtype=np.float64)).tobytes()).hexdigest()


def _md(out: Path, root: Path, r: dict, runs: list[dict], c: dict, jobs: int, what: str,
        prior_only: bool = False) -> dict:
    """CG MD of ``runs`` under ``out/cgmd/<name>`` with the gate's start frames and noise seeds
    (:func:`~hessid.training.pipelines.ala2_v2_study.md_work`); stored paths relative to ``root``,
    the diagnosis folder; the result records each model's seed and start-frame digest."""
    work = md_work(out, r["settings"], r["split"], runs, c)
    for j in work:
        j["prior_only"] = prior_only
        j["root"] = str(root)
    log(f"{what}: {len(work)} models × {c['n_replicas']} replicas × {c['n_steps']} steps of {c['timestep']:g} fs")
    with executor(jobs) as ex:
        res = [f.result() for f in [ex.submit(simulate_job, j) for j in work]]
    return {"runs": res, "cgmd": c,
            "jobs": [{"name": j["name"], "seed": j["seed"], "starts_sha256": starts_digest(j["starts"])} for j in work]}


def md_size_runs(r: dict) -> list[dict]:
    """The gate's FM training records at the MD size, in replicate order."""
    size = int(r["settings"]["gate"]["md_size"])
    return [g for g in r["gate_runs"] if int(g["size"]) == size]


def stage_width_train(out: Path, r: dict, factor: int, jobs: int) -> dict:
    """FM at the gate's sizes and every replicate with the wider network, under ``out/width/train``
    (stored paths relative to ``out``)."""
    s = r["settings"]
    sw = width_settings(s, factor)
    work = [job_spec(out / "width", sw, r["split"], "FM", n, rep, Path(r["split"]["subsets"][str(rep[0])][str(n)]),
                     n, fm_aa_cost(s, n, with_term1=False))
            for n in gate_sizes(s) for rep in replicates(s)]  # fmt: skip
    for j in work:
        j["root"] = str(out)  # stored paths relative to the diagnosis folder
    return {"runs": run_jobs(work, jobs, f"width ×{factor} train"), "model": sw["model"]}


# ----------------------------------------------------------------------------- metrics


def force_errors(models: Mapping[str, Path], labels_path: Path) -> dict[str, float]:
    """Metric 1 (noise-corrected RMS mean-force error per bead, kcal/mol/Å) of each model."""
    lab = read_labels(labels_path)
    out = {}
    for name, path in models.items():
        f = model_forces(path, lab.coordinates)
        out[name] = float(noise_corrected_force_error(f, lab.mean_force, lab.mean_force_sem).rms)
    return out


def _rep(rec: Mapping) -> tuple[int, int]:
    return (int(rec["rep"][0]), int(rec["rep"][1]))


def summarise(r: dict, out: Path, results: Mapping[str, dict], tolerance: float | None = None) -> dict:
    """Per-replicate MD metrics of the gate and of every variant, paired differences, the gate's
    criteria under each variant and the page's reading.

    Args:
        r: :func:`load_run`'s result.
        out: the diagnosis folder.
        results: finished stage results by stage name (``prior_only``, ``timestep``,
            ``width_train``, ``width_md``; a missing one is left out of the summary).
        tolerance: criterion 1's tolerance, kcal/mol (default: the study's).

    Returns:
        JSON-able dict: ``reference_dg``, ``tolerance``, ``gate`` (the study's criteria as
        recomputed here), ``variants`` {name: {"rows", "dg_diff", "criterion_1", …}},
        ``fixes`` (variants whose gate passes), ``adopted`` (first of :data:`FIX_ORDER` that
        fixes, or None) and ``reading`` (plain sentences).
    """
    s = r["settings"]
    g = s["gate"]
    tol = float(g["delta_g_tolerance"] if tolerance is None else tolerance)
    ref_phi = np.load(r["run"] / "reference_phi_psi.npy")
    base_c = dict(s["cgmd"], n_steps=r["n_steps"])
    md_runs = md_size_runs(r)

    def md_rows(dirs: Mapping[tuple, Path], c: Mapping) -> dict[tuple, dict]:
        return {rep: md_metrics(d, ref_phi, r["reference_dg"], c) for rep, d in dirs.items()}

    gate_md = md_rows({_rep(x): r["run"] / "cgmd" / x["name"] for x in md_runs}, base_c)
    small, large = int(g["improve_from"]), int(g["improve_to"])
    fe_gate = force_errors({x["name"]: Path(x["model"]) for x in r["gate_runs"]
                            if int(x["size"]) in (small, large)}, r["labels"])  # fmt: skip
    fe_by = {(int(x["size"]), _rep(x)): fe_gate[x["name"]] for x in r["gate_runs"] if x["name"] in fe_gate}
    reps = [tuple(x) for x in replicates(s)]

    def criteria(md: Mapping[tuple, dict], fe: Mapping[tuple, float]):
        return gate_verdict([md[k]["delta_g_error"] for k in reps], {k: fe[(small, k)] for k in reps},
                            {k: fe[(large, k)] for k in reps}, tolerance=tol)

    gate_res = criteria(gate_md, fe_by)
    gate_json = _gate_json(gate_res, gate_md, reps)
    study = r["gate"]
    if study is not None:  # the study's own verdict decides; the recomputation is a cross-check
        recomputed = {k: gate_json[k] for k in ("passed", "criterion_1", "criterion_2")}
        stored = {"passed": bool(study["passed"]), "criterion_1": bool(study["delta_g_ok"]),
                  "criterion_2": bool(study["improvement_ok"])}
        gate_json.update(stored, recomputed=recomputed, recomputed_agrees=recomputed == stored)
        if recomputed != stored:
            log(f"warning: the gate recomputed here ({recomputed}) differs from the study's gate stage ({stored}); "
                f"the study's verdict is used (main's force code rounds differently from the frozen study code)")
    force_ok = bool(gate_json["criterion_2"])
    summary: dict = {"reference_dg": r["reference_dg"], "tolerance": tol, "replicates": [list(k) for k in reps],
                     "gate": gate_json, "variants": {}}

    def dg_block(rows: Mapping[tuple, dict]) -> dict:
        d = paired_difference({str(k): rows[k]["delta_g_error"] for k in reps},
                              {str(k): gate_md[k]["delta_g_error"] for k in reps})
        mean = float(np.mean([rows[k]["delta_g_error"] for k in reps]))
        return {"rows": {str(k): rows[k] for k in reps}, "dg_error_mean": mean,
                "dg_diff": _interval_json(d), "criterion_1": bool(math.isfinite(mean) and abs(mean) <= tol)}

    if "prior_only" in results:
        rows = md_rows({_rep(x): out / "prior_only" / "cgmd" / x["name"] for x in md_runs}, base_c)
        blk = dg_block(rows)
        blk.update(network_share(r["reference_dg"], [gate_md[k]["delta_g"] for k in reps],
                                 [rows[k]["delta_g"] for k in reps]))
        summary["variants"]["prior_only"] = blk
    if "timestep" in results:
        c = results["timestep"]["cgmd"]
        rows = md_rows({_rep(x): out / "timestep" / "cgmd" / x["name"] for x in md_runs}, c)
        blk = dg_block(rows)
        blk["timestep_fs"] = float(c["timestep"])
        blk["gate_passes"] = bool(blk["criterion_1"] and force_ok)
        summary["variants"]["timestep"] = blk
    if "width_train" in results and "width_md" in results:
        wr = results["width_train"]["runs"]
        rows = md_rows({_rep(x): out / "width" / "cgmd" / x["name"] for x in wr
                        if int(x["size"]) == int(g["md_size"])}, base_c)  # fmt: skip
        blk = dg_block(rows)
        fe_w = force_errors({x["name"]: out / x["model"] for x in wr if int(x["size"]) in (small, large)}, r["labels"])
        by = {(int(x["size"]), _rep(x)): fe_w[x["name"]] for x in wr if x["name"] in fe_w}
        gw = criteria(rows, by)
        blk["gate"] = _gate_json(gw, rows, reps)
        blk["force_error"] = {f"{n}/{rep_tag(k)}": by[(n, k)] for n in (small, large) for k in reps}
        blk["force_error_gate"] = {f"{n}/{rep_tag(k)}": fe_by[(n, k)] for n in (small, large) for k in reps}
        blk["embedding_dimension"] = int(results["width_train"]["model"]["embedding_dimension"])
        blk["gate_passes"] = bool(gw.passed)
        summary["variants"]["width"] = blk
    summary["fixes"], summary["adopted"] = adopted_fix(bool(gate_json["passed"]), summary["variants"])
    summary["reading"] = reading(summary)
    return summary


def network_share(reference_dg: float, full_dg: Sequence[float], prior_dg: Sequence[float]) -> dict:
    """Share of the prior's ΔG gap that the network removes, from replicate means:
    (⟨ΔG_full⟩ − ⟨ΔG_prior⟩) / (ΔG_ref − ⟨ΔG_prior⟩) over the replicates where both are finite
    (1: all of it, 0: none, < 0: the network widens it; NaN when no replicate is usable or the
    prior's gap is below 0.01 kcal/mol, where the ratio means nothing).

    Args:
        reference_dg: ΔG(αR−β) of the reference, kcal/mol.
        full_dg, prior_dg: (R,) ΔG of the full models and of their priors alone, kcal/mol, paired.

    Returns:
        ``{"network_share": float, "network_share_n": int}`` (replicates used).
    """
    f, p = np.asarray(full_dg, dtype=np.float64), np.asarray(prior_dg, dtype=np.float64)
    ok = np.isfinite(f) & np.isfinite(p)
    if not ok.any():
        return {"network_share": math.nan, "network_share_n": 0}
    gap = reference_dg - p[ok].mean()
    share = float((f[ok].mean() - p[ok].mean()) / gap) if abs(gap) >= 0.01 else math.nan
    return {"network_share": share, "network_share_n": int(ok.sum())}


def adopted_fix(gate_passed: bool, variants: Mapping[str, Mapping]) -> tuple[list[str], str | None]:
    """The page's rule: the variants whose gate passes (in :data:`FIX_ORDER`) and the one adopted
    for a second gate attempt — the first of them, and none when the gate passed as measured.

    Args:
        gate_passed: the gate's outcome as measured.
        variants: ``{name: {"gate_passes": bool, …}}`` (prior-only MD is never a fix).

    Returns:
        (fixing variant names, adopted name or None).
    """
    fixes = [v for v in FIX_ORDER if variants.get(v, {}).get("gate_passes")]
    return fixes, (fixes[0] if fixes and not gate_passed else None)


def _interval_json(d) -> dict:
    return {"mean": d.mean, "low": d.low, "high": d.high, "p": d.p_value, "n": d.n, "sd": d.sd}


def _gate_json(res, md_rows: Mapping[tuple, dict], reps: Sequence[tuple]) -> dict:
    return {"passed": res.passed, "reason": res.reason, "criterion_1": res.dg_ok, "dg_error_mean": res.dg_mean,
            "criterion_2": res.force_ok, "force_diff": _interval_json(res.force_diff),
            "dg_errors": {str(k): md_rows[k]["delta_g_error"] for k in reps},
            "halves_agree": {str(k): md_rows[k].get("halves_agree") for k in reps}}  # fmt: skip


def reading(summary: Mapping) -> list[str]:
    """The page's reading of a diagnosis summary, in plain sentences (rules of the docstring)."""
    tol = summary["tolerance"]
    gate = summary["gate"]
    v = summary["variants"]
    out = [f"Gate as measured: {'passed' if gate['passed'] else 'failed'} (mean ΔG error "
           f"{gate['dg_error_mean']:+.2f} kcal/mol against ±{tol:g}; criterion 2 "
           f"{'holds' if gate['criterion_2'] else 'does not hold'})."]
    if "prior_only" in v:
        p = v["prior_only"]
        share = f"{p['network_share']:.2f}" if math.isfinite(p["network_share"]) else "undefined"
        out.append(f"Prior alone: mean ΔG error {p['dg_error_mean']:+.2f} kcal/mol; the network removes a share "
                   f"{share} of the prior's ΔG gap (replicate means, {p['network_share_n']} replicates; 1 = all of "
                   f"it, 0 = none, < 0 = it widens it).")
    if "timestep" in v:
        t = v["timestep"]
        d = t["dg_diff"]
        out.append(f"Time step {t['timestep_fs']:g} fs: mean ΔG error {t['dg_error_mean']:+.2f} kcal/mol; paired "
                   f"change against the gate {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] kcal/mol "
                   f"({'the time step matters' if d['low'] > 0 or d['high'] < 0 else 'no resolved time-step effect'}); "
                   f"the gate {'passes' if t['gate_passes'] else 'still fails'} with it.")
    if "width" in v:
        w = v["width"]
        out.append(f"Width {w['embedding_dimension']}: mean ΔG error {w['dg_error_mean']:+.2f} kcal/mol, "
                   f"criterion 2 {'holds' if w['gate']['criterion_2'] else 'does not hold'}; the gate "
                   f"{'passes' if w['gate_passes'] else 'still fails'} with the wider network.")
    if gate["passed"]:
        out.append("The gate passed as measured: nothing is adopted (the variants are a robustness check).")
    elif summary["adopted"]:
        out.append(f"Adopted for the second gate attempt: {summary['adopted']} (the first fixing variant in the "
                   f"order time step → width).")
    else:
        out.append("No variant fixes the gate: by the page's rule the study is void.")
    return out


# ----------------------------------------------------------------------------- report


def write_report(summary: Mapping, dest: Path) -> Path:
    """``dest/ala2_v2_diagnosis.md`` (tables + reading), ``.json`` and ``ala2_v2_diagnosis/delta_g.png``."""
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "ala2_v2_diagnosis.json", summary)
    reps = [tuple(k) for k in summary["replicates"]]
    cols = ["gate", *summary["variants"]]
    rows_by = {"gate": {str(k): {"delta_g_error": summary["gate"]["dg_errors"][str(k)],
                                 "halves_agree": summary["gate"]["halves_agree"][str(k)]} for k in reps}}
    rows_by.update({n: v["rows"] for n, v in summary["variants"].items()})
    lines = ["## Gate cause-finding (ala2_v2 diagnosis)", "",
             f"Reference ΔG(αR−β) = {summary['reference_dg']:.3f} kcal/mol; criterion 1 tolerance "
             f"±{summary['tolerance']:g} kcal/mol. ΔG error per replicate (kcal/mol; * = the two halves of the "
             f"replicas disagree on p(αR)):", "",
             "| replicate | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in reps:
        cells = []
        for c in cols:
            row = rows_by[c][str(k)]
            e = row["delta_g_error"]
            cells.append("NaN" if not math.isfinite(e) else f"{e:+.2f}{'*' if row.get('halves_agree') is False else ''}")
        lines.append(f"| {rep_tag(k)} | " + " | ".join(cells) + " |")
    lines.append("| mean | " + " | ".join(
        f"{summary['gate']['dg_error_mean']:+.2f}" if c == "gate" else f"{summary['variants'][c]['dg_error_mean']:+.2f}"
        for c in cols) + " |")
    lines += ["", "Paired change of the ΔG error, variant − gate (95 % t-interval):", ""]
    for n, v in summary["variants"].items():
        d = v["dg_diff"]
        lines.append(f"- {n}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] kcal/mol (n = {d['n']})")
    if "width" in summary["variants"]:
        w = summary["variants"]["width"]
        lines += ["", f"Metric 1 (kcal/mol/Å) of the wider network (width {w['embedding_dimension']}) against the "
                  f"gate's: " + "; ".join(f"{k}: {w['force_error'][k]:.3f} vs {w['force_error_gate'][k]:.3f}"
                                          for k in w["force_error"]) + ".",
                  f"Gate with the wider network: {w['gate']['reason']}"]
    lines += ["", "**Reading.** " + " ".join(summary["reading"]), "",
              "![ΔG error per replicate](ala2_v2_diagnosis/delta_g.png)", ""]
    md = dest / "ala2_v2_diagnosis.md"
    md.write_text("\n".join(lines))
    _plot(dest / "ala2_v2_diagnosis" / "delta_g.png", rows_by, cols, reps, summary["tolerance"])
    return md


def _plot(path: Path, rows_by: Mapping, cols: Sequence[str], reps: Sequence[tuple], tol: float) -> Path:
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 3.4))
    try:
        ax.axhspan(-tol, tol, color="0.9", label=f"±{tol:g} kcal/mol")
        ax.axhline(0.0, color="0.5", lw=0.8)
        for i, c in enumerate(cols):
            y = [rows_by[c][str(k)]["delta_g_error"] for k in reps]
            x = i + np.linspace(-0.15, 0.15, len(y))
            ax.plot(x, y, "o", color="C0")
            if np.isfinite(y).all():  # as the table: a NaN replicate (a basin never visited) leaves no mean
                ax.plot([i - 0.25, i + 0.25], [np.mean(y)] * 2, color="k", lw=2)
        ax.set_xticks(range(len(cols)), cols)
        ax.set_ylabel("ΔG(αR−β) error, kcal/mol")
        ax.set_title("gate-size FM models: replicates (dots), mean (bar)", fontsize=9)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- driver


def run_diagnosis(run: str | Path, out: str | Path, jobs: int = 2, timestep_factor: float = DEFAULTS["timestep_factor"],
                  width_factor: int = DEFAULTS["width_factor"], stop_after: str | None = None) -> dict:
    """Run (or resume) the cause-finding variants on a study run and write the report.

    Args:
        run: the study's run folder (read only).
        out: the diagnosis folder (created; ``diagnosis_state.json`` holds every stage).
        jobs: parallel processes.
        timestep_factor: CG time-step factor (1/k).
        width_factor: embedding-width factor (integer ≥ 2).
        stop_after: a name of :data:`STAGES`; stop after it (no report then unless ``summary``).

    Returns:
        the summary of :func:`summarise` (plus ``report``, the markdown path), or
        ``{"stopped_after": name}``.

    Raises:
        ValueError: ``stop_after`` unknown, bad factors, a run that has not reached the gate
            MD (:func:`load_run`), or a diagnosis folder started with other settings — all
            before anything is written.
        FileNotFoundError: as :func:`load_run`.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {', '.join(STAGES)}; got {stop_after!r}")
    r = load_run(run)
    s = r["settings"]
    c_small = scaled_cgmd(s["cgmd"], r["n_steps"], timestep_factor)
    width_settings(s, width_factor)  # validates the factor before anything is written
    out = Path(out).resolve()
    runner = StageRunner(out, DIAG_STATE, label="ala2_v2 diagnosis", say=log)
    runner.use_settings({"run": str(r["run"]), "timestep_factor": timestep_factor, "width_factor": width_factor,
                         "n_steps": r["n_steps"], "gate_models": [x["name"] for x in r["gate_runs"]]})
    base_c = dict(s["cgmd"], n_steps=r["n_steps"])
    md_runs = md_size_runs(r)
    plan = {
        "prior_only": lambda: _md(out / "prior_only", out, r, md_runs, base_c, jobs, "prior-only MD", prior_only=True),
        "timestep": lambda: _md(out / "timestep", out, r, md_runs, c_small, jobs, f"time step {c_small['timestep']:g} fs"),
        "width_train": lambda: stage_width_train(out, r, width_factor, jobs),
    }
    results: dict = {}
    for name in ("prior_only", "timestep", "width_train"):
        results[name] = runner.run(name, plan[name])
        if stop_after == name:
            return {"stopped_after": name}
    wr = [dict(x, model=str(out / x["model"])) for x in results["width_train"]["runs"]
          if int(x["size"]) == int(s["gate"]["md_size"])]  # fmt: skip
    results["width_md"] = runner.run("width_md", lambda: _md(out / "width", out, r, wr, base_c, jobs, "width MD"))
    if stop_after == "width_md":
        return {"stopped_after": "width_md"}
    summary = runner.run("summary", lambda: summarise(r, out, results), rerun=True)
    summary = dict(summary, report=str(write_report(summary, out)))
    for line in summary["reading"]:
        log(line)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI ``RUN OUT [--jobs J] [--stop-after STAGE]``; a bad run folder exits 2 with one line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="the study's run folder (--out of benchmarks/ala2_v2.py)")
    ap.add_argument("out", help="the diagnosis folder (created; resumable)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes")
    ap.add_argument("--stop-after", default=None, choices=STAGES, help="stop after this stage")
    args = ap.parse_args(argv)
    try:
        summary = run_diagnosis(args.run, args.out, jobs=args.jobs, stop_after=args.stop_after)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.get("reading", [f"stopped after {summary.get('stopped_after')}"])))
    return 0


__all__ = ["DEFAULTS", "FIX_ORDER", "NEEDED", "STAGES", "VARIANTS", "adopted_fix", "force_errors", "gate_sizes",
           "load_run", "main", "md_size_runs", "network_share", "reading", "run_diagnosis", "scaled_cgmd",
           "starts_digest", "summarise", "width_settings", "write_report"]


if __name__ == "__main__":
    raise SystemExit(main())
