"""Fit the learning-rate decay to a wall-clock budget (``train.time_budget``, seconds).

A run with a budget stops when the budget ends; so that it still anneals, the schedule's decay is
shortened to the number of steps the budget will hold, measured from the recent step times (mean
of the last 100 steps: warm-up and thread probing fade out, a machine that gets busier or quieter
is followed) and the time the remaining evaluations will take.
"""
from __future__ import annotations

import collections
import math
import time

__all__ = ["BudgetFitter"]


class BudgetFitter:
    def __init__(self, budget_s: float, t_start: float, planned_steps: int, steps_per_epoch: int,
                 eval_every: int, n_eval_items: int, evals_per_round: int = 1, check_every: int = 50):
        self.budget, self.t_start = float(budget_s), t_start
        self.planned, self.spe = int(planned_steps), max(int(steps_per_epoch), 1)
        self.eval_every, self.n_eval_items, self.evals_per_round = int(eval_every), n_eval_items, evals_per_round
        self.check_every = check_every
        self.recent: collections.deque[float] = collections.deque(maxlen=100)
        self.eval_seconds, self.n_evals = 0.0, 0
        self.last_check = None

    def exhausted(self) -> bool:
        return time.monotonic() - self.t_start >= self.budget

    def add_step(self, seconds: float) -> None:
        self.recent.append(seconds)

    def add_eval(self, seconds: float) -> None:
        self.eval_seconds += seconds
        self.n_evals += 1

    def due(self, step: int) -> bool:
        if self.last_check is None:
            self.last_check = step
        if step - self.last_check >= self.check_every:
            self.last_check = step
            return True
        return False

    def target_steps(self, step: int, items_per_s: float) -> int:
        """Optimizer steps the budget holds (never beyond the planned ones), snapped to epoch ends."""
        elapsed = time.monotonic() - self.t_start
        per_step = sum(self.recent) / max(len(self.recent), 1)
        if self.n_evals:
            per_eval = self.eval_seconds / self.n_evals
        else:  # not measured yet: evaluation runs about 3x faster per item than training
            per_eval = self.n_eval_items / max(items_per_s * 3.0, 1.0) * self.evals_per_round
        can_do = step + int(max(self.budget - elapsed - per_eval - 5, 0) / max(per_step, 1e-9))
        for _ in range(2):  # reserve time for the evaluations those epochs will trigger
            epochs_left = max(math.ceil(can_do / self.spe) - (step // self.spe) - 1, 0)
            evals_left = (epochs_left // self.eval_every if self.eval_every else 0) + 1
            can_do = step + int(max(self.budget - elapsed - per_eval * evals_left - 5, 0) / max(per_step, 1e-9))
        target = min(max(int(can_do * 0.97), step + 1), self.planned)
        # With evaluations at epoch ends, do not start an epoch only to evaluate again a few steps
        # later. Without them (eval_every 0: one evaluation, at the end) those steps are training.
        if (self.eval_every and target % self.spe and target % self.spe < 0.15 * self.spe
                and target - target % self.spe > step):
            target -= target % self.spe
        return target

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * sum(self.recent) / max(len(self.recent), 1)
