"""The T2 study of docs/results/thermo.md: temperature-aware free energies (M1, M2, M3) and a
T-unaware control on the entropic double well, trained at 250/300/350 K, evaluated at 200/300/400 K
against the exact quadrature.

Resumable: each (arm, seed) writes ``OUT/runs/<arm>_s<seed>.json`` and is skipped when present.
``--quick`` is a seconds-long miniature for CI (meaningless numbers). Prints one JSON object;
``--results FILE`` also writes the markdown table, ``--figure PNG`` the figure (exact curves against
T, every arm's mean ± SD at the evaluation temperatures); ``--from-json FILE --figure PNG`` redraws
the figure of a finished run's JSON without training.

    python benchmarks/thermo_t2.py --out runs/thermo_t2 --jobs 3 --results /tmp/t2.md
    python benchmarks/thermo_t2.py --from-json docs/results/thermo/t2_result.json --figure docs/results/thermo/t2.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, machine_info  # noqa: E402

from hessid.thermo_toys import t2_double_well  # noqa: E402
from hessid.training.evaluation.report import MODEL_COLORS, pyplot  # noqa: E402
from hessid.training.learning.thermal_losses import estimate_noise_floors, thermal_loss  # noqa: E402
from hessid.training.learning.thermal_models import ThermalPotential  # noqa: E402
from hessid.training.learning.thermal_toy import (  # noqa: E402
    exact_floors,
    fit_full_batch,
    model_thermodynamics,
    toy_batch,
)
from hessid.units import KB_KCAL_PER_MOL_K  # noqa: E402
from hessid.units import beta as beta_of_temperature  # noqa: E402

#: arm → (form, training temperatures K, w_U)
ARMS = {
    "M0-300": ("M0", (300.0,), 0.0),
    "M1": ("M1", (250.0, 300.0, 350.0), 1.0),
    "M2": ("M2", (250.0, 300.0, 350.0), 1.0),
    "M3": ("M3", (250.0, 300.0, 350.0), 1.0),
    "M2-F": ("M2", (250.0, 300.0, 350.0), 0.0),
}
EVAL_TEMPERATURES = (200.0, 300.0, 400.0)
TARGETS = ("population", "mean_energy", "heat_capacity", "free_energy_difference")


def settings(mode: str = "full") -> dict:
    """The pre-registered settings (``full``) or the CI miniature (``quick``)."""
    if mode == "quick":
        return {"n_per_temperature": 150, "iterations": 15, "hidden": 8, "layers": 1, "seeds": [0],
                "arms": list(ARMS)}
    return {"n_per_temperature": 2000, "iterations": 300, "hidden": 32, "layers": 2, "seeds": [0, 1, 2],
            "arms": list(ARMS)}


def exact_table(temperatures=EVAL_TEMPERATURES) -> dict:
    """Exact P(x<0), ⟨U⟩, C_tot, A(1) − A(−1) per temperature (quadrature)."""
    s = t2_double_well()
    out = {}
    for t in temperatures:
        b = beta_of_temperature(t)
        out[t] = {"population": s.population(b), "mean_energy": s.total_mean_energy(b),
                  "heat_capacity": s.total_heat_capacity(b), "free_energy_difference": s.free_energy_difference(b)}
    return out


def run_one(arm: str, seed: int, st: dict) -> dict:
    """Train one (arm, seed) and evaluate it (a dict of floats)."""
    torch.set_num_threads(1)
    form, temps, w_u = ARMS[arm]
    system = t2_double_well()
    data = toy_batch(system, temps, st["n_per_temperature"], seed)
    floors = estimate_noise_floors(data["positions"][:, :1].numpy(), data["forces"].numpy(),
                                   data["temperature"].numpy(), data["potential_energy"].numpy())
    torch.manual_seed(seed)
    model = ThermalPotential(["bead"], None, {"precision": "float64"},
                             {"form": form, "backbone": "mlp", "mlp_dims": 1, "hidden": st["hidden"],
                              "mlp_layers": st["layers"], "reference_temperature": 300.0}, n_beads=1)
    t0 = time.process_time()
    hist = fit_full_batch(model, data, floors, w_u, st["iterations"], seed=seed, method="lbfgs")
    cpu = time.process_time() - t0
    final = thermal_loss(model, data, floors, energy_weight=w_u if model.temperature_aware else 0.0,
                         create_graph=False)
    exact_fl = exact_floors(system, temps)
    final_exact = thermal_loss(model, data, exact_fl, energy_weight=w_u if model.temperature_aware else 0.0,
                               create_graph=False, per_temperature=False)
    row = {"arm": arm, "seed": seed, "form": form, "train_temperatures": list(temps), "energy_weight": w_u,
           "evaluations": len(hist), "loss_first": hist[0], "loss_last": hist[-1], "cpu_s": cpu,
           "floors_estimated": floors.to_dicts(), "floors_exact": exact_fl.to_dicts(),
           "force_excess": float(final["force_excess"]), "force_excess_exact_floor": float(final_exact["force_excess"]),
           "per_temperature": final["per_temperature"], "eval": {}}
    if "energy_excess" in final:
        row["energy_excess"] = float(final["energy_excess"].detach())
        row["energy_excess_exact_floor"] = float(final_exact["energy_excess"].detach())
    for t in EVAL_TEMPERATURES:
        row["eval"][t] = model_thermodynamics(model, t)
    return row


def _run_path(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / f"{arm}_s{seed}.json"


def _job(args):
    arm, seed, st, path = args
    row = run_one(arm, seed, st)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(path)  # atomic: a crash leaves no half-written result
    return arm, seed


def summarise(rows: list[dict], exact: dict) -> dict:
    """Per arm and temperature: mean and SD over seeds of each target, its error, the verdicts."""
    kb = KB_KCAL_PER_MOL_K
    by_arm: dict[str, list] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in by_arm.items():
        a = {"seeds": sorted(r["seed"] for r in rs), "temperatures": {}}
        for t in EVAL_TEMPERATURES:
            cell = {}
            for k in TARGETS + ("heat_capacity_channel", "entropy_gradient"):
                v = np.array([r["eval"][_tkey(r["eval"], t)][k] for r in rs])
                cell[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}
                if k in exact[t]:
                    cell[k]["error"] = float(v.mean() - exact[t][k])
            cell["pass"] = bool(abs(cell["population"]["error"]) <= 0.03
                                and abs(cell["mean_energy"]["error"]) <= 0.05
                                and abs(cell["heat_capacity"]["error"]) <= 0.10 * exact[t]["heat_capacity"]
                                and abs(cell["free_energy_difference"]["error"]) <= 0.10)
            a["temperatures"][t] = cell
        trend = a["temperatures"][400.0]["population"]["mean"] - a["temperatures"][200.0]["population"]["mean"]
        exact_trend = exact[400.0]["population"] - exact[200.0]["population"]
        a["trend_sign_correct"] = bool(np.sign(trend) == np.sign(exact_trend))
        c300 = a["temperatures"][300.0]["heat_capacity_channel"]["mean"]
        s300 = a["temperatures"][300.0]["entropy_gradient"]["mean"]
        a["heat_capacity_channel_rel_error"] = c300 / (2 * kb) - 1
        a["entropy_gradient_rel_error"] = s300 / t2_double_well().entropy_gradient() - 1
        a["recovers_parameters"] = bool(abs(a["heat_capacity_channel_rel_error"]) <= 0.15
                                        and abs(a["entropy_gradient_rel_error"]) <= 0.15)
        a["passes_extrapolation"] = bool(a["temperatures"][200.0]["pass"] and a["temperatures"][400.0]["pass"]
                                         and a["trend_sign_correct"])
        for key in ("force_excess", "force_excess_exact_floor", "energy_excess", "energy_excess_exact_floor", "cpu_s"):
            v = [r[key] for r in rs if key in r]
            if v:
                a[key] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}
        out[arm] = a
    return out


def markdown(summary: dict, exact: dict) -> str:
    """The results table (mean ± SD over seeds; exact row first)."""
    def f(c, k, scale=1.0, digits=3):
        m, sd = c[k]["mean"] * scale, c[k]["sd"]
        return f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd * scale:.{digits}f}")

    lines = ["| T (K) | arm | P(x<0) | ⟨U⟩ (kcal/mol) | C_tot (10⁻³ kcal/mol/K) | A(1) − A(−1) (kcal/mol) | pass |",
             "|---|---|---|---|---|---|---|"]
    for t in EVAL_TEMPERATURES:
        e = exact[t]
        lines.append(f"| {t:.0f} | **exact** | {e['population']:.3f} | {e['mean_energy']:.3f} | "
                     f"{1e3 * e['heat_capacity']:.3f} | {e['free_energy_difference']:.3f} | |")
        for arm, a in summary.items():
            c = a["temperatures"][t]
            lines.append(f"| {t:.0f} | {arm} | {f(c, 'population')} | {f(c, 'mean_energy')} | "
                         f"{f(c, 'heat_capacity', 1e3)} | {f(c, 'free_energy_difference')} | "
                         f"{'yes' if c['pass'] else 'no'} |")
    lines += ["", "| arm | E_p C_θ at 300 K / 2k_B − 1 | E_p ∇S_θ at 300 K / (−m k_B γ/2) − 1 | trend sign | "
              "recovers parameters | passes 200 and 400 K | force excess | energy excess | CPU s/run |",
              "|---|---|---|---|---|---|---|---|---|"]
    for arm, a in summary.items():
        fe = a.get("force_excess", {}).get("mean")
        ee = a.get("energy_excess", {}).get("mean")
        lines.append(f"| {arm} | {a['heat_capacity_channel_rel_error']:+.3f} | {a['entropy_gradient_rel_error']:+.3f} | "
                     f"{'right' if a['trend_sign_correct'] else 'WRONG'} | {'yes' if a['recovers_parameters'] else 'no'} | "
                     f"{'yes' if a['passes_extrapolation'] else 'no'} | "
                     f"{'' if fe is None else f'{fe:+.3f}'} | {'' if ee is None else f'{ee:+.3f}'} | "
                     f"{a['cpu_s']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


#: panels of the figure: key, axis label, scale of the plotted value
FIGURE_PANELS = (("population", "P(x < 0)", 1.0), ("mean_energy", "⟨U⟩ (kcal/mol)", 1.0),
                 ("heat_capacity", "C_tot (10⁻³ kcal/mol/K)", 1e3),
                 ("free_energy_difference", "A(1) − A(−1) (kcal/mol)", 1.0))


def plot_t2(result: dict, path: str | Path, t_range: tuple[float, float] = (150.0, 450.0)) -> Path:
    """The T2 figure: exact P(x<0), ⟨U⟩, C_tot and A(1) − A(−1) against T (quadrature, black),
    the training temperatures of the T-aware arms shaded, and every arm's mean ± SD over seeds at
    the evaluation temperatures (points, side by side).

    Args:
        result: the JSON object of :func:`main` (``settings``, ``summary``).  path: PNG file.
        t_range: temperatures (K) of the exact curves.

    Returns:
        ``path`` as a Path.

    Raises:
        KeyError: ``result`` lacks ``settings`` or ``settings["arms"]``, or (with at least one
            arm) ``summary``; ``summary`` lacks an arm, an arm its ``temperatures``, those an
            evaluation temperature (200, 300, 400 K, keyed by float or as JSON writes it,
            ``"200.0"``; ``"200"`` is not found), or a cell a quantity of :data:`FIGURE_PANELS`
            or its ``mean``/``sd``. Nothing is written.
        TypeError: ``result`` or ``summary`` is not a dict (e.g. a JSON list), or a ``mean`` is
            None (an ``sd`` of None draws no error bar). Nothing is written.
        OSError: ``path`` cannot be written (its folder is not created).

    With ``--from-json`` (:func:`main`), each of these becomes one line on stderr and exit code
    2: a KeyError or TypeError names the JSON file (``incomplete thermo_t2 result``), an OSError
    names the ``--figure`` path; a JSON file that is not an object with ``"benchmark":
    "thermo_t2"`` is refused before drawing.
    """
    temps = np.linspace(*t_range, 61)
    exact = exact_table(tuple(float(t) for t in temps))
    arms = list(result["settings"]["arms"])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FIGURE_PANELS), figsize=(4.6 * len(FIGURE_PANELS), 4.2), constrained_layout=True)
    try:
        width = 6.0
        for ax, (key, label, scale) in zip(axes, FIGURE_PANELS, strict=True):
            for t in ARMS["M2"][1]:
                ax.axvspan(t - 4, t + 4, color="0.9", zorder=0)
            ax.plot(temps, [scale * exact[float(t)][key] for t in temps], color="black", lw=1.8, label="exact")
            for i, arm in enumerate(arms):
                cells = result["summary"][arm]["temperatures"]
                xs = [float(t) + (i - (len(arms) - 1) / 2) * width for t in EVAL_TEMPERATURES]
                ys = [scale * cells[_tkey(cells, t)][key]["mean"] for t in EVAL_TEMPERATURES]
                es = [scale * (cells[_tkey(cells, t)][key]["sd"] or 0.0) for t in EVAL_TEMPERATURES]
                ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=3, color=MODEL_COLORS[i % len(MODEL_COLORS)], label=arm)
            ax.set_xlabel("temperature (K)")
            ax.set_title(label, fontsize=12)
        # M0-300's ⟨U⟩ is its A_θ with an arbitrary constant (thermo.md): keep the axis on the exact range
        lo, hi = min(exact[float(t)]["mean_energy"] for t in temps), max(exact[float(t)]["mean_energy"] for t in temps)
        axes[1].set_ylim(lo - 0.5, hi + 0.5)
        axes[0].legend(fontsize=9)
        fig.suptitle("T2 entropic double well: trained at 250/300/350 K (grey), evaluated at 200/300/400 K; "
                     "mean ± SD over seeds", fontsize=12)
        fig.savefig(path)
    finally:  # also when a malformed result raises part-way
        plt.close(fig)
    return Path(path)


def _tkey(cells: dict, t: float):
    """The key of temperature ``t`` in a summary read back from JSON (str) or made here (float)."""
    return t if t in cells else str(t)


def main(argv=None) -> dict:
    """Run (or resume) the T2 study and return its result (also as ``--json``/``--results``/
    ``--figure``), or with ``--from-json F --figure P`` redraw the figure from a stored result
    and train nothing. Bad input to ``--from-json``: one line on stderr, exit code 2."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/thermo_t2", help="folder of per-run results (resumable)")
    p.add_argument("--quick", action="store_true", help="CI miniature (meaningless numbers)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes")
    p.add_argument("--results", default=None, help="also write the markdown table here")
    p.add_argument("--json", default=None, help="also write the JSON here")
    p.add_argument("--figure", default=None, help="also draw the figure (PNG) here")
    p.add_argument("--from-json", default=None, help="with --figure: redraw from this result JSON, train nothing")
    args = p.parse_args(argv)
    if args.from_json:
        if not args.figure:
            p.error("--from-json needs --figure")
        try:
            result = json.loads(Path(args.from_json).read_text())
        except (OSError, ValueError) as err:
            print(f"error: {args.from_json}: cannot read ({err!r})", file=sys.stderr)
            raise SystemExit(2) from None
        if not isinstance(result, dict) or result.get("benchmark") != "thermo_t2":
            print(f"error: {args.from_json}: not a thermo_t2 result (no 'benchmark': 'thermo_t2')", file=sys.stderr)
            raise SystemExit(2)
        try:
            plot_t2(result, args.figure)
        except (KeyError, TypeError) as err:
            print(f"error: {args.from_json}: incomplete thermo_t2 result ({err!r})", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as err:
            print(f"error: --figure {args.figure}: cannot write ({err.strerror or err!r})", file=sys.stderr)
            raise SystemExit(2) from None
        return result
    st = settings("quick" if args.quick else "full")
    out = Path(args.out)
    result = {"benchmark": "thermo_t2", "machine": machine_info(), "settings": st}
    todo = [(arm, seed, st, _run_path(out, arm, seed)) for arm in st["arms"] for seed in st["seeds"]
            if not _run_path(out, arm, seed).exists()]
    result["computed"] = [f"{a}_s{s}" for a, s, _, _ in todo]
    wall = time.time()
    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            list(ex.map(_job, todo))
    else:
        for job in todo:
            _job(job)
    result["wall_s"] = time.time() - wall
    rows = [json.loads(_run_path(out, a, s).read_text()) for a in st["arms"] for s in st["seeds"]]
    exact = exact_table()
    summary = summarise(rows, exact)
    result["exact"] = exact
    result["summary"] = summary
    table = markdown(summary, exact)
    result["table"] = table
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(table)
    if args.figure:
        plot_t2(result, args.figure)
    return finish(result, packages=("hessid", "numpy", "torch"), out=args.json)


if __name__ == "__main__":
    main()
