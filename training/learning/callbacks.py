"""Lightning callbacks of the trainer that carry a training rule: plateau stopping with the
best-validation weights kept.

Plateau rule (``trainer.plateau_*``; docs/training.md, "Stopping at a plateau"): at every
validation the FM loss ``L`` (``val/fm``) is compared with the last *counted* value ``L_c``
(reached at step ``s_c``); it counts as an improvement when ``L < (1 − δ) L_c``, and then
``L_c, s_c ← L, s``. Training stops at the first validation step ``s`` with

    s − s_c ≥ window    and    s ≥ factor · s_c,

i.e. the loss has not improved by more than the relative ``δ`` for ``window`` steps, and the
run has had a budget of ``factor`` times the step at which it reached that plateau. With
``keep_best`` the weights at the lowest ``val/fm`` seen (any improvement, however small) are
restored at the end, so the saved model does not depend on when the rule fired.

The state (``L_c``, ``s_c``, the best value, its step and weights) is saved in Lightning
checkpoints, so a resumed run stops at the same step with the same weights.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl

__all__ = ["PlateauStopping"]


class PlateauStopping(pl.Callback):
    """Stop when ``val/fm`` has plateaued (module docstring) and optionally keep the best weights.

    Args:
        rel_delta: δ ∈ [0, 1), relative improvement that counts (e.g. 0.005 = 0.5 %; 0 = any new
            minimum counts).
        window_steps: optimizer steps without a counted improvement before stopping (≥ 1).
        budget_factor: the stop step is at least this factor × the step of the last counted
            improvement (≥ 1).
        keep_best: restore the weights of the lowest ``val/fm`` in :meth:`on_fit_end`.
        stop: apply the stopping rule (False: only track the best value and weights).
        monitor: the logged metric (default ``"val/fm"``, (kcal/mol/Å)² per frame, normalised
            as logged).

    Attributes (after fitting): ``plateau_step`` (s_c at the stop, or None if the rule never
    fired), ``stopped_step``, ``best_value``, ``best_step``, ``history`` [(step, value)].

    Raises:
        ValueError: parameters out of range.
    """

    def __init__(self, rel_delta: float, window_steps: int, budget_factor: float = 1.5,
                 keep_best: bool = True, monitor: str = "val/fm", stop: bool = True):
        if not 0.0 <= float(rel_delta) < 1.0:
            raise ValueError(f"rel_delta must lie in [0, 1), got {rel_delta}")
        if int(window_steps) < 1 or float(budget_factor) < 1.0:
            raise ValueError(f"need window_steps >= 1 and budget_factor >= 1, got {window_steps}, {budget_factor}")
        self.rel_delta = float(rel_delta)
        self.window_steps = int(window_steps)
        self.budget_factor = float(budget_factor)
        self.keep_best = bool(keep_best)
        self.stop = bool(stop)
        self.monitor = monitor
        self.counted_value = math.inf
        self.counted_step = 0
        self.best_value = math.inf
        self.best_step: int | None = None
        self.best_weights: dict | None = None
        self.plateau_step: int | None = None
        self.stopped_step: int | None = None
        self.history: list[tuple[int, float]] = []

    def should_stop(self, step: int, value: float) -> bool:
        """Update the rule with one validation ``(step, value)``; True when training should stop.

        Pure (no Lightning objects), so the rule is tested on its own.
        """
        self.history.append((int(step), float(value)))
        if math.isfinite(value) and value < (1.0 - self.rel_delta) * self.counted_value:
            self.counted_value, self.counted_step = float(value), int(step)
        if self.stop and step - self.counted_step >= self.window_steps and step >= self.budget_factor * self.counted_step:
            self.plateau_step, self.stopped_step = self.counted_step, int(step)
            return True
        return False

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        step = int(trainer.global_step)
        if math.isfinite(value) and value < self.best_value:
            self.best_value, self.best_step = value, step
            if self.keep_best:
                self.best_weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if self.should_stop(step, value):
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module):
        if self.keep_best and self.best_weights is not None:
            pl_module.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"counted_value": self.counted_value, "counted_step": self.counted_step,
                "best_value": self.best_value, "best_step": self.best_step, "best_weights": self.best_weights,
                "plateau_step": self.plateau_step, "stopped_step": self.stopped_step,
                "history": list(self.history)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
        self.history = [tuple(h) for h in self.history]

    def summary(self) -> dict:
        """JSON-able: plateau_step, stopped_step, best_step, best_value, validations."""
        return {"plateau_step": self.plateau_step, "stopped_step": self.stopped_step, "best_step": self.best_step,
                "best_value": self.best_value if math.isfinite(self.best_value) else None,
                "validations": len(self.history)}  # fmt: skip
