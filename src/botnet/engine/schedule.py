"""Learning-rate schedules from library factories, stepped once per optimizer step.

* ``cosine``, ``step``, ``poly``, ``tanh``, ``multistep``: timm's ``create_scheduler_v2`` with
  ``step_on_epochs=False`` (per-step warm-up and decay), driven by ``step_update(step)``.
* ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR``.
* ``constant``: timm ``cosine`` with an infinite period after the warm-up is not needed; we use
  ``torch.optim.lr_scheduler.LinearLR`` for the warm-up followed by a constant rate.

:class:`StepScheduler` gives them one interface: ``step_update(step)`` after every optimizer
step, ``state_dict()/load_state_dict()`` for resuming, and ``fit_total_steps(n)`` which
shortens the decay of the timm schedules (their lr is recomputed from ``t_initial`` at every
step), used by ``--time-budget`` so a cosine run cut short by the budget still anneals.
"""
from __future__ import annotations

import torch

__all__ = ["StepScheduler", "build_scheduler"]


class StepScheduler:
    """Uniform wrapper over a timm scheduler or a torch ``LRScheduler`` (stepped per update)."""

    def __init__(self, sched, kind: str, total_steps: int, warmup_steps: int):
        self.sched, self.kind = sched, kind
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def step_update(self, step: int) -> None:
        """Set the lr for the update that follows optimizer step number ``step``."""
        if self.kind == "timm":
            self.sched.step_update(num_updates=step)
        else:
            self.sched.step()

    def fit_total_steps(self, total: int) -> bool:
        """Make the decay end at ``total`` steps instead; True when the schedule supports it."""
        total = max(int(total), self.warmup_steps + 1)
        if self.kind != "timm" or not hasattr(self.sched, "t_initial"):
            return False
        self.sched.t_initial = total - (self.warmup_steps if getattr(self.sched, "warmup_prefix", False) else 0)
        self.total_steps = total
        return True

    def state_dict(self) -> dict:
        return {"kind": self.kind, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state["sched"])
        self.total_steps, self.warmup_steps = state["total_steps"], state["warmup_steps"]


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict, steps_per_epoch: int,
                    epochs: float) -> StepScheduler:
    """Scheduler over ``epochs * steps_per_epoch`` optimizer steps from a ``sched`` config section.

    Keys: ``name`` (cosine | onecycle | step | multistep | poly | tanh | constant), ``warmup_epochs``
    (fractional allowed), ``warmup_lr``, ``min_lr``, ``step_epochs``, ``milestones`` (multistep:
    fractions of the training, e.g. the detection recipe's x0.1 at 8/12 and 11/12), ``gamma``,
    ``pct_start``.
    """
    name = sched_cfg["name"]
    spe = max(int(steps_per_epoch), 1)
    total = max(int(round(float(epochs) * spe)), 1)
    warmup = int(round(float(sched_cfg.get("warmup_epochs") or 0) * spe))
    if name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        s = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total + 1,
                                                pct_start=float(sched_cfg.get("pct_start", 0.25)),
                                                final_div_factor=1e4)
        return StepScheduler(s, "torch", total, 0)
    if name == "constant":
        lr = optimizer.param_groups[0]["lr"]
        start = min(float(sched_cfg.get("warmup_lr") or lr) / lr, 1.0) if lr else 1.0
        s = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=max(start, 1e-8), total_iters=max(warmup, 1))
        return StepScheduler(s, "torch", total, warmup)
    from timm.scheduler import create_scheduler_v2

    timm_name = {"multistep": "multistep", "step": "step", "cosine": "cosine", "poly": "poly", "tanh": "tanh"}.get(name)
    if timm_name is None:
        raise ValueError(f"unknown schedule {name!r}: use cosine, onecycle, step, multistep, poly, tanh or constant")
    s, _ = create_scheduler_v2(
        optimizer, sched=timm_name, num_epochs=total, warmup_epochs=warmup,
        warmup_lr=float(sched_cfg.get("warmup_lr") or 0.0), min_lr=float(sched_cfg.get("min_lr") or 0.0),
        decay_epochs=int(float(sched_cfg.get("step_epochs") or 1) * spe),
        decay_milestones=[max(int(round(float(f) * total)), 1) for f in sched_cfg.get("milestones") or (0.667, 0.917)],
        decay_rate=float(sched_cfg.get("gamma", 0.1)), step_on_epochs=False, updates_per_epoch=1,
    )
    s.step_update(0)
    return StepScheduler(s, "timm", total, warmup)
