"""Cost of one training step and one epoch of each loss, measured side by side in one run
(docs/atomistic_learning.md, "Cost").

Every arm starts from the same initial model (same seed, same reference fit) and takes the
same batches; the arms' steps are interleaved round-robin (step s of every arm before step
s + 1 of any), so a change in machine load during the run hits all arms alike. Time is the
process CPU time (``time.process_time``) of collate + loss + backward + optimiser step; the
first ``warmup`` steps of each arm are not counted. The machine's load average is recorded.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from hessid.training.atomistic.frames import collate
from hessid.training.atomistic.losses import LossConfig
from hessid.training.atomistic.objective import batch_loss
from hessid.training.atomistic.trainer import TrainConfig, prepare

__all__ = ["measure_loss_costs", "parse_arm"]


def parse_arm(text: str, base: LossConfig) -> LossConfig:
    """``ef`` | ``ef_h`` | ``ef_hvp/KIND/K[/fixed]`` → the LossConfig of that arm (other fields
    from ``base``).

    Raises:
        ValueError: a malformed arm.
    """
    parts = text.split("/")
    if parts[0] in ("ef", "ef_h") and len(parts) == 1:
        return replace(base, mode=parts[0])
    if parts[0] == "ef_hvp" and len(parts) in (3, 4):
        regime = parts[3] if len(parts) == 4 else base.probe_regime
        try:
            k = int(parts[2])
        except ValueError:
            raise ValueError(f"arm {text!r}: K must be an integer") from None
        return replace(base, mode="ef_hvp", probe_kind=parts[1], n_probes=k, probe_regime=regime)
    raise ValueError(f"arm {text!r}: expected ef, ef_h or ef_hvp/KIND/K[/fresh|fixed]")


def measure_loss_costs(cfg: TrainConfig, datasets: list, arms: list[str], n_steps: int = 10,
                       warmup: int = 2) -> dict:
    """Per-step and per-epoch process time of each loss arm on the same batches.

    Args:
        cfg: the run settings (model, data split, batch size, learning rate, base loss).
        datasets: opened QM datasets.
        arms: arm strings (:func:`parse_arm`).
        n_steps: timed steps per arm.
        warmup: untimed steps per arm first.

    Returns:
        dict ``arms`` {arm: {``step_s_median``, ``step_s_mean``, ``step_s`` (list),
        ``epoch_s`` (median × steps per epoch), ``relative_to_first``}}, ``steps_per_epoch``,
        ``batch_size``, ``n_train``, ``clock`` ("process"), ``load_average`` (before, after),
        ``threads``.

    Raises:
        ValueError: n_steps < 1 or warmup < 0.
    """
    if n_steps < 1 or warmup < 0:
        raise ValueError(f"need n_steps >= 1 and warmup >= 0, got {n_steps}, {warmup}")
    losses = {arm: parse_arm(arm, cfg.loss) for arm in arms}
    model0, split, scales = prepare(cfg, datasets)
    models = {arm: copy.deepcopy(model0) for arm in arms}
    opts = {arm: torch.optim.Adam(m.parameters(), lr=cfg.optim.lr) for arm, m in models.items()}
    bs = cfg.optim.batch_size
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(split.train))
    n_batches = math.ceil(len(split.train) / bs)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    load_before = os.getloadavg()
    for step in range(warmup + n_steps):
        b = step % n_batches
        refs = [split.train[i] for i in order[b * bs:(b + 1) * bs]]
        for arm in arms:
            loss_cfg, model, opt = losses[arm], models[arm], opts[arm]
            t0 = time.process_time()
            batch = collate(datasets, refs, model.dtype, loss_cfg.mode != "ef")
            loss, _ = batch_loss(model, batch, loss_cfg, scales, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= warmup:
                times[arm].append(time.process_time() - t0)
    first = statistics.median(times[arms[0]])
    out = {arm: {"step_s_median": statistics.median(t), "step_s_mean": statistics.fmean(t),
                 "step_s": t, "epoch_s": statistics.median(t) * n_batches,
                 "relative_to_first": statistics.median(t) / first} for arm, t in times.items()}
    return {"arms": out, "steps_per_epoch": n_batches, "batch_size": bs, "n_train": len(split.train),
            "clock": "process", "load_average": [load_before[0], os.getloadavg()[0]],
            "threads": torch.get_num_threads()}
