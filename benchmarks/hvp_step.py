"""Training-step cost of FM+HVP(k) relative to FM alone: a size sweep measured side by side in one run.

    python benchmarks/hvp_step.py                                   # the full sweep (docs table)
    python benchmarks/hvp_step.py --beads 35 --batch 16 --probes 4 --rounds 3
    python benchmarks/hvp_step.py --beads 80 --methods edges,dense  # both paths, for the crossover
    python benchmarks/hvp_step.py --rounds 5 --json hvp_step.json --docs docs/training.md
                                                  # the full sweep, table written into the docs
    python benchmarks/hvp_step.py --beads 35 --batch 16 --probes 4 --compile  # torch.compile

One step = energies/forces (and HVPs) of a batch of synthetic compact Cα chains with a
CGSchNet (64 channels, 4 layers, 12 RBFs, cutoff 3–12 Å) plus a prior fitted to such chains
(``--no-prior``: network only), the loss, backward to θ and an AdamW step, all through
:func:`hessid.training.learning.derivatives.energy_forces_hvp` (the trainer's path). Variants
per size (beads × batch):

- ``fm``                 FM step (edge list, first-order filter jets, autograd reverse);
- ``<method>_k{K}``      FM+HVP(k) step with ``method=`` each of ``--methods`` (``auto`` picks
                         ``edges`` or ``dense`` by size, see ``choose_hvp_method``);
- ``naive_k{K}``         per-probe double-backward loop (``hvp_reference``), with ``--naive``.

Every (size, variant) runs once as a warm-up (which also records its memory), then ``--rounds``
rounds each time every (size, variant) once, round robin, so slow load drifts of a shared
machine hit all alike; within a round each size starts with one untimed FM step (the first step
after a different size pays for releasing and re-mapping memory: without it the first size's FM
step measured 4× slow in every round of the 2026-11-29 quiet sweep). Reported per size and k: the median and range over rounds of the
per-round ratio ``step(FM+HVP(k)) / step(FM)`` (same round), the cost per added probe in FM
steps (median over rounds of ``(t_k − t_1)/(k − 1)/t_FM``), and memory: on CPU the bytes of
tensors saved for backward (autograd ``saved_tensors_hooks``, unique storages), on CUDA the
peak allocated bytes; ``kb_per_pair_probe`` = (bytes(FM+HVP(k)) − bytes(FM)) / (k · pairs),
pairs = neighbour pairs inside the cutoffs in the batch. Times on a loaded machine are not
comparable across runs: the script prints ``os.getloadavg()`` before and after.

``--profile`` replaces the timing rounds by torch.profiler over ``--rounds`` steps of every
variant (after the warm-up) and prints, per size and HVP variant, the ops that account for the
step's extra self-CPU time over the FM step (ms per step, share of the extra, calls per step)
and the op counts of both: which op and what fraction, the question issue 15 asks of a goal not
met. The profiler adds a few µs per op, so its totals exceed the timed steps'; read shares.

``--compile`` runs the edge-list kernel under ``torch.compile``
(:func:`hessid.training.learning.derivatives.set_compile`, the trainer's ``trainer.compile``)
for the FM and the HVP variants alike; the warm-up of each variant then includes its
compilation, reported as ``warmup_s`` per variant. ``--docs FILE`` replaces the text between
the lines ``<!-- hvp_step table -->`` and ``<!-- /hvp_step table -->`` of FILE by the table and
a line naming the settings, date and load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torchmdnet

import hessid
from hessid.training.data.synthetic import compact_chain
from hessid.training.learning.derivatives import energy_forces_hvp, pair_list, set_compile
from hessid.training.learning.hessians import hvp_reference
from hessid.training.learning.models import CGPotential
from hessid.training.learning.priors import PriorFit


def _graph_bytes_hook():
    seen, total = set(), [0]

    def pack(t):
        try:
            st = t.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key not in seen:
                seen.add(key)
                total[0] += st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), total


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x]


def _size_variants(model, opt, n, B, ks, methods, naive, dev, seed):
    """Step functions of one size: {"fm": fn, "<method>_k{K}": fn, ...} and the pair count."""
    dtype = model.dtype
    g = torch.Generator().manual_seed(seed)
    pos = torch.as_tensor(compact_chain(n, B, seed=seed)).reshape(-1, 3).to(dev, dtype)  # (A, 3)
    types = torch.randint(0, 20, (n * B,), generator=g).to(dev)
    batch = torch.arange(B).repeat_interleave(n).to(dev)
    f_target = torch.randn(pos.shape, generator=g, dtype=dtype).to(dev)
    rep = model.net.representation_model
    pairs = int(pair_list(pos, batch, rep.cutoff_lower, rep.cutoff_upper)[0].numel())

    def step_fm():
        opt.zero_grad()
        out = energy_forces_hvp(model, pos, types, batch, None)
        ((out.forces - f_target) ** 2).sum().backward()
        opt.step()

    def make_hvp(k, method):
        v = torch.randn(k, n * B, 3, generator=g, dtype=dtype).to(dev)
        h = torch.randn(v.shape, generator=g, dtype=dtype).to(dev)

        def step():
            opt.zero_grad()
            out = (hvp_reference(model, pos, types, batch, v, create_graph=True) if method == "naive"
                   else energy_forces_hvp(model, pos, types, batch, v, method=method))
            (((out.forces - f_target) ** 2).sum() + ((out.hvp - h) ** 2).sum()).backward()
            opt.step()

        return step

    variants = {"fm": step_fm}
    for k in ks:
        for m in methods + (["naive"] if naive else []):
            variants[f"{m}_k{k}"] = make_hvp(k, m)
    return variants, pairs


def _summary(times, mem, n, B, pairs, ks, methods):
    rows = []
    fm = times["fm"]
    for m in methods:
        row = {"beads": n, "batch": B, "method": m, "pairs_per_structure": pairs / B,
               "fm_ms_median": 1e3 * statistics.median(fm), "fm_saved_bytes": mem["fm"]}
        for k in ks:
            r = [a / b for a, b in zip(times[f"{m}_k{k}"], fm, strict=True)]
            row[f"ratio_k{k}_rounds"] = r
            row[f"ratio_k{k}_median"] = statistics.median(r)
            row[f"ratio_k{k}_range"] = [min(r), max(r)]
            row[f"saved_bytes_k{k}"] = mem[f"{m}_k{k}"]
            row[f"kb_per_pair_probe_k{k}"] = (mem[f"{m}_k{k}"] - mem["fm"]) / (k * max(pairs, 1)) / 1e3
        big = [k for k in ks if k > 1]
        if 1 in ks and big:
            kk = max(big)
            per = [(a - b) / (kk - 1) / c for a, b, c in
                   zip(times[f"{m}_k{kk}"], times[f"{m}_k1"], fm, strict=True)]
            row["cost_per_probe_fm_steps"] = statistics.median(per)
            row["kb_per_pair_added_probe"] = ((mem[f"{m}_k{kk}"] - mem[f"{m}_k1"])
                                              / ((kk - 1) * max(pairs, 1)) / 1e3)
        rows.append(row)
    return rows


def _profile_variants(variants: dict, rounds: int) -> dict:
    """Per variant, {op: (self CPU ms per step, calls per step)} over ``rounds`` profiled steps."""
    out = {}
    for name, fn in variants.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                fn()
        out[name] = {e.key: (e.self_cpu_time_total / rounds / 1e3, e.count / rounds) for e in prof.key_averages()}
    return out


def _profile_table(prof: dict, n: int, B: int, top: int = 12) -> str:
    """Markdown: for each HVP variant, the ops with the largest extra self-CPU time over FM."""
    fm = prof["fm"]
    fm_ms, fm_calls = sum(v[0] for v in fm.values()), sum(v[1] for v in fm.values())
    lines = []
    for name, ops in prof.items():
        if name == "fm":
            continue
        ms, calls = sum(v[0] for v in ops.values()), sum(v[1] for v in ops.values())
        extra = {op: ops[op][0] - fm.get(op, (0.0, 0.0))[0] for op in ops}
        total_extra = ms - fm_ms
        lines += [f"**{n} × {B}, {name}**: self CPU {ms:.1f} ms/step vs FM {fm_ms:.1f} (extra {total_extra:.1f}); "
                  f"ops/step {calls:.0f} vs FM {fm_calls:.0f}", "",
                  "| op | extra ms/step | share of extra | calls/step (FM) |", "|---|---|---|---|"]
        for op in sorted(extra, key=lambda o: -extra[o])[:top]:
            share = extra[op] / total_extra if total_extra > 0 else float("nan")
            lines.append(f"| `{op}` | {extra[op]:.2f} | {100 * share:.0f} % | {ops[op][1]:.0f} "
                         f"({fm.get(op, (0.0, 0.0))[1]:.0f}) |")
        lines.append("")
    return "\n".join(lines)


def _table(rows, ks) -> str:
    head = ("| beads × batch | pairs/structure | method | FM step (ms) | "
            + " | ".join(f"k = {k}: ratio (range)" for k in ks)
            + f" | per added probe (FM steps) | KB/pair/probe (k = {max(ks)}) | KB/pair/added probe |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['beads']} × {r['batch']}", f"{r['pairs_per_structure']:.0f}", r["method"],
                 f"{r['fm_ms_median']:.1f}"]
        cells += [f"{r[f'ratio_k{k}_median']:.2f} ({r[f'ratio_k{k}_range'][0]:.2f}–"
                  f"{r[f'ratio_k{k}_range'][1]:.2f})" for k in ks]
        cells.append(f"{r['cost_per_probe_fm_steps']:.3f}" if "cost_per_probe_fm_steps" in r else "—")
        cells.append(f"{r[f'kb_per_pair_probe_k{max(ks)}']:.2f}")
        cells.append(f"{r['kb_per_pair_added_probe']:.2f}" if "kb_per_pair_added_probe" in r else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beads", default="5,10,35,80,200", help="comma list")
    ap.add_argument("--batch", default="16,64", help="comma list")
    ap.add_argument("--probes", default="1,4,8", help="k values, comma list")
    ap.add_argument("--methods", default="auto", help="energy_forces_hvp methods, comma list "
                    "(auto, edges, dense, double_backward)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--naive", action="store_true", help="also time the per-probe loop")
    ap.add_argument("--no-prior", action="store_true", help="network only (no fitted prior)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="wall: perf_counter (quiet machine, the docs' figures); process: CPU "
                    "time of this process (less sensitive to other load; CPU only)")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--compile", action="store_true", help="torch.compile the edge-list kernel "
                    "(trainer.compile) for every variant; warm-up includes compilation")
    ap.add_argument("--docs", default=None, help="write the table into this markdown file "
                    "between <!-- hvp_step table --> and <!-- /hvp_step table -->")
    ap.add_argument("--profile", action="store_true", help="profile --rounds steps of every variant "
                    "(torch.profiler) instead of timing them; prints the ops behind the extra cost")
    args = ap.parse_args(argv)
    set_compile(args.compile)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ks, methods = _ints(args.probes), [m for m in args.methods.split(",") if m]
    torch.manual_seed(0)
    prior = None if args.no_prior else PriorFit().fit([compact_chain(12, 200, seed=9)]).fetch_model()
    model = CGPotential([f"T{i}" for i in range(20)], prior, {"precision": args.precision}).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def memory(fn):
        if dev.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            sync()
            return int(torch.cuda.max_memory_allocated() - base)
        hook, total = _graph_bytes_hook()
        with hook:
            fn()
        return int(total[0])

    load_before = os.getloadavg()
    sizes = [(n, B) for n in _ints(args.beads) for B in _ints(args.batch)]
    steps, pairs, mem, times, warm = {}, {}, {}, {}, {}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for si, (n, B) in enumerate(sizes):
        steps[n, B], pairs[n, B] = _size_variants(model, opt, n, B, ks, methods, args.naive, dev,
                                                  seed=si)
        mem[n, B], warm[n, B] = {}, {}
        for name, fn in steps[n, B].items():  # warm-up (+ compilation) and memory
            t0 = clock()
            mem[n, B][name] = memory(fn)
            warm[n, B][name] = clock() - t0
        times[n, B] = {name: [] for name in steps[n, B]}
    if args.profile:
        prof = {f"{n}x{B}": _profile_variants(steps[n, B], args.rounds) for n, B in sizes}
        text = "\n".join(_profile_table(prof[f"{n}x{B}"], n, B) for n, B in sizes)
        print(text)
        print(f"torch.profiler, self CPU time, {args.rounds} steps per variant, threads "
              f"{torch.get_num_threads()}, {args.precision}, load average before {load_before[0]:.1f}, "
              f"after {os.getloadavg()[0]:.1f}")
        res = {"profile": prof, "pairs": {f"{n}x{B}": pairs[n, B] for n, B in sizes},
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(res, fh, indent=1)
        return res
    for _ in range(args.rounds):  # round robin over every (size, variant)
        for key, variants in steps.items():
            # one untimed FM step of this size first: the first step after another size (above
            # all after the previous round's largest step) pays for freeing and re-mapping its
            # memory, which made the first size's FM time 4× too slow in every round
            variants["fm"]()
            sync()
            for name, fn in variants.items():
                sync()
                t0 = clock()
                fn()
                sync()
                times[key][name].append(clock() - t0)
    rows = []
    for n, B in sizes:
        new = _summary(times[n, B], mem[n, B], n, B, pairs[n, B], ks,
                       methods + (["naive"] if args.naive else []))
        for row in new:
            row["warmup_s"] = {name: t for name, t in warm[n, B].items()
                               if name == "fm" or name.startswith(f"{row['method']}_k")}
        rows += new
    res = {"rows": rows, "probes": ks, "methods": methods, "rounds": args.rounds,
           "clock": args.clock, "compile": args.compile,
           "prior": not args.no_prior, "precision": args.precision, "device": str(dev),
           "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                           else platform.processor() or platform.machine()),
           "threads": torch.get_num_threads(),
           "memory_kind": ("cuda peak allocated bytes" if dev.type == "cuda"
                           else "autograd saved-tensor bytes"),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "date": datetime.date.today().isoformat(),
           "versions": {"hessid": hessid.__version__, "torch": torch.__version__,
                        "torchmdnet": getattr(torchmdnet, "__version__", "?"),
                        "python": platform.python_version()}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    table = _table(rows, ks)
    note = (f"{args.clock} clock, rounds {args.rounds}, threads {res['threads']}, {args.precision}, "
            f"{res['device_name']}, torch {torch.__version__}, compile {args.compile}, "
            f"{res['date']}, load average before {load_before[0]:.1f}, after "
            f"{res['loadavg_after'][0]:.1f}")
    print(table)
    print(note)
    if args.docs:
        _write_docs(args.docs, table + "\n\n" + note + "\n")
    return res


def _write_docs(path: str, text: str) -> None:
    """Replace the text between the two marker lines of the markdown file ``path``."""
    start, end = "<!-- hvp_step table -->", "<!-- /hvp_step table -->"
    with open(path) as fh:
        doc = fh.read()
    if start not in doc or end not in doc:
        raise SystemExit(f"{path}: no '{start}' ... '{end}' markers to write the table between")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as fh:
        fh.write(head + start + "\n" + text + end + tail)


if __name__ == "__main__":
    main()
