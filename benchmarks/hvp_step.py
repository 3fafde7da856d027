"""Training-step cost of FM+HVP(k) relative to FM alone, measured side by side in one run.

    python benchmarks/hvp_step.py --beads 35 --batch 32 --probes 4 --json out.json
    python benchmarks/hvp_step.py --beads 35 --batch 32 --probes 1,2,4,8 --json out.json

One step = energies/forces (and HVPs) of a batch of synthetic compact Cα chains with a
CGSchNet (64 channels, 4 layers, 12 RBFs, cutoff 3–12 Å), the loss, backward to θ and an
AdamW step. Variants:

- ``fm``            FM step through the trainer's path (hessid.training.learning.derivatives, edge-factored);
- ``fm_torchmdnet`` FM step through TorchMD-Net's forward + autograd forces (for reference);
- ``hvp``           FM+HVP(k) step, fast exact HVPs (the trainer's path: hand-written
                    forward-over-reverse tangents on a dense per-structure pair grid);
- ``hvp_edges``     FM+HVP(k) step, the previous fast path (batched double backward through
                    the edge-list message passing), with ``--edges``;
- ``naive``         FM+HVP(k) step, per-probe double-backward loop (``hvp_reference``).

Times are the minimum over ``--repeats`` rounds (``ratio_k{K}_rounds``: the ratio within each
round), the variants timed round-robin after one
warm-up each (so load drifts on a shared machine hit all variants alike). Memory: on CUDA the peak allocated
bytes of each step; on CPU the bytes of tensors saved for backward (the autograd graph held at
the backward, which is what grows with k; unique storages). ``ratio_k{K}`` = hvp / fm.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from _common import finish, machine_info


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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beads", type=int, default=35)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--probes", default="4", help="k, or a comma list (e.g. 1,2,4,8)")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-naive", action="store_true", help="skip the per-probe loop baseline")
    ap.add_argument("--naive-probes", default=None,
                    help="k values for the per-probe loop baseline (default: --probes)")
    ap.add_argument("--edges", action="store_true",
                    help="also time the edge-list double-backward HVP path (method='edges')")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from hessid.training.data.synthetic import compact_chain
    from hessid.training.learning.derivatives import energy_forces_hvp, hvp_reference, pair_list
    from hessid.training.learning.models import CGPotential


    dev = torch.device(args.device)
    ks = [int(k) for k in str(args.probes).split(",")]
    naive_ks = ks if args.naive_probes is None else [int(k) for k in args.naive_probes.split(",")]
    torch.manual_seed(0)
    n, B = args.beads, args.batch
    model = CGPotential([f"T{i}" for i in range(20)], None, {"precision": args.precision}).to(dev)
    dtype = model.dtype
    pos = torch.as_tensor(compact_chain(n, B, seed=0)).reshape(-1, 3).to(dev, dtype)  # (A, 3)
    types = torch.randint(0, 20, (n * B,), device=dev)
    batch = torch.arange(B, device=dev).repeat_interleave(n)
    f_target = torch.randn_like(pos)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pairs = int(pair_list(pos, batch, 3.0, 12.0)[0].numel())

    def step_fm():
        opt.zero_grad()
        out = energy_forces_hvp(model, pos, types, batch, None)
        ((out.forces - f_target) ** 2).sum().backward()
        opt.step()

    def step_fm_tmd():
        opt.zero_grad()
        x = pos.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x, types, batch).sum(), x, create_graph=True)
        ((-g - f_target) ** 2).sum().backward()
        opt.step()

    def make_hvp(k, naive, method="dense"):
        v = torch.randn(k, n * B, 3, device=dev, dtype=dtype)
        h = torch.randn_like(v)

        def step():
            opt.zero_grad()
            out = (hvp_reference(model, pos, types, batch, v, create_graph=True) if naive
                   else energy_forces_hvp(model, pos, types, batch, v, method=method))
            (((out.forces - f_target) ** 2).sum() + ((out.hvp - h) ** 2).sum()).backward()
            opt.step()

        return step

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def memory(fn):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            sync()
            return int(torch.cuda.max_memory_allocated() - base)
        hook, total = _graph_bytes_hook()
        with hook:
            fn()
        return int(total[0])

    variants = {"fm": step_fm, "fm_torchmdnet": step_fm_tmd}
    for k in ks:
        variants[f"hvp_k{k}"] = make_hvp(k, naive=False)
        if args.edges:
            variants[f"hvp_edges_k{k}"] = make_hvp(k, naive=False, method="edges")
        if not args.no_naive and k in naive_ks:
            variants[f"naive_k{k}"] = make_hvp(k, naive=True)
    times = {name: [] for name in variants}
    mem = {}
    for name, fn in variants.items():  # warm-up and memory
        mem[name] = memory(fn)
    for _ in range(args.repeats):  # round robin: slow drifts of a shared machine hit all alike
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    ms = {name: min(t) * 1e3 for name, t in times.items()}

    res = {"beads": n, "batch": B, "probes": ks, "pairs_per_structure": pairs / B,
           "precision": args.precision, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "memory_kind": "cuda peak allocated bytes" if dev.type == "cuda" else "autograd saved-tensor bytes",
           "date": datetime.date.today().isoformat(), "machine": machine_info()}
    res["fm_step_ms"], res["fm_memory_bytes"] = ms["fm"], mem["fm"]
    res["fm_torchmdnet_step_ms"] = ms["fm_torchmdnet"]
    res["fm_torchmdnet_memory_bytes"] = mem["fm_torchmdnet"]
    for k in ks:
        t, m = ms[f"hvp_k{k}"], mem[f"hvp_k{k}"]
        res[f"hvp_step_ms_k{k}"], res[f"hvp_memory_bytes_k{k}"] = t, m
        res[f"ratio_k{k}"] = t / res["fm_step_ms"]
        rounds = [a / b for a, b in zip(times[f"hvp_k{k}"], times["fm"], strict=True)]
        res[f"ratio_k{k}_rounds"] = rounds  # per round-robin round: load drift shows here
        res[f"ratio_k{k}_median_of_rounds"] = statistics.median(rounds)
        res[f"ratio_vs_torchmdnet_fm_k{k}"] = t / res["fm_torchmdnet_step_ms"]
        res[f"memory_per_probe_bytes_k{k}"] = (m - res["fm_memory_bytes"]) / k
        if f"hvp_edges_k{k}" in ms:
            te, me = ms[f"hvp_edges_k{k}"], mem[f"hvp_edges_k{k}"]
            res[f"hvp_edges_step_ms_k{k}"], res[f"hvp_edges_memory_bytes_k{k}"] = te, me
            res[f"ratio_edges_k{k}"] = te / res["fm_step_ms"]
            res[f"memory_per_probe_edges_bytes_k{k}"] = (me - res["fm_memory_bytes"]) / k
        if f"naive_k{k}" in ms:
            tn, mn = ms[f"naive_k{k}"], mem[f"naive_k{k}"]
            res[f"naive_step_ms_k{k}"], res[f"naive_memory_bytes_k{k}"] = tn, mn
            res[f"naive_ratio_k{k}"] = tn / res["fm_torchmdnet_step_ms"]
            res[f"naive_memory_per_probe_bytes_k{k}"] = (mn - res["fm_torchmdnet_memory_bytes"]) / k
    if len(ks) == 1:
        res["fm_hvp_step_ms"] = res[f"hvp_step_ms_k{ks[0]}"]
    return finish(res, ("hessid", "torch", "torchmd-net"), out=args.json)


if __name__ == "__main__":
    main()
