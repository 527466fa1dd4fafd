"""What the training loop does besides the steps, one hook each.

A hook sees the run at fixed points of :meth:`botnet.engine.Trainer.train_loop` (as detectron2's
``HookBase``): ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch``, ``after_eval``,
``after_train``. Its ``state_dict()`` goes into every resumable checkpoint beside the trainer's own
state (the keys join the checkpoint's ``extra`` mapping, so a hook's state is one entry there) and
comes back through ``load_state_dict`` on ``--resume``. A hook that wants the run to stop says so in
``wants_stop`` (its status: ``stop_reason``); the trainer asks every hook on every rank and stops
on all of them alike.

The default hooks, in the order they are called (:func:`default_hooks`):

========================  =====================================================================
``ThreadsHook``           CPU thread count: measured (``train.threads=auto``) or fixed
``ProgressHook``          meters, the progress bar or plain step lines, the ``train`` log records
``CheckpointHook``        ``last.safetensors`` at each epoch's end and every ``save_every_steps``
``EvalHook``              evaluation every ``eval_every`` epochs and at the end; ``best.safetensors``
``TimeBudgetHook``        ``train.time_budget``: the schedule fitted to the budget, the stop
``PlotsHook``             the PNG curves at the end (``train.plots``)
========================  =====================================================================
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from botnet.log import get_logger, progress_enabled

if TYPE_CHECKING:  # pragma: no cover
    from botnet.engine.task import StepOutput
    from botnet.engine.trainer import Trainer

__all__ = ["Hook", "ThreadsHook", "ProgressHook", "CheckpointHook", "EvalHook", "TimeBudgetHook", "PlotsHook",
           "default_hooks"]

log = get_logger("engine")


class Hook:
    """Base class: every method is optional. ``self.trainer`` is set when the trainer takes the hook."""

    trainer: Trainer

    def before_train(self) -> None: ...

    def before_epoch(self, epoch: int) -> None: ...

    def after_step(self, out: StepOutput) -> None: ...

    def after_epoch(self, epoch: int) -> None: ...

    def after_eval(self, metrics: dict[str, dict[str, Any]], seconds: float) -> None: ...

    def after_train(self, status: str) -> None: ...

    def close(self) -> None:
        """Called however the loop ends (an error included): release what the hook holds open."""

    stop_reason = "stopped"  # the run's status when this hook stops it

    def wants_stop(self) -> bool:
        """Stop after the current step: when any rank's hook says so, every rank stops (the trainer reduces)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ThreadsHook(Hook):
    """On the CPU: the thread count that runs fastest, measured on real steps (shared machines are often faster
    with fewer threads), or a fixed count. A deterministic run keeps one count throughout."""

    def __init__(self, threads: int | str = "auto", *, deterministic: bool = False, verbose: bool = True):
        self.threads, self.deterministic, self.verbose = threads, deterministic, verbose
        self.tuner = None

    def before_train(self) -> None:
        t = self.trainer
        if t.di.device.type != "cpu":
            return
        if self.threads == "auto" and not self.deterministic:  # a changing count would make runs differ bitwise
            from botnet.engine.threads import ThreadTuner

            self.tuner = ThreadTuner(verbose=t.di.is_main and self.verbose)
        elif self.threads != "auto":
            import torch

            torch.set_num_threads(int(self.threads))

    def after_step(self, out: StepOutput) -> None:
        if self.tuner is not None:
            self.tuner.after_step(self.trainer.step_seconds)


class ProgressHook(Hook):
    """Loss meters and throughput; a bar on a terminal, otherwise (a log file, a pipe, --no-progress) a plain
    line every ``train.log_every`` steps; the ``train`` and ``train_epoch`` records of ``metrics.jsonl``."""

    def __init__(self, progress: bool = True, log_every: int = 20):
        self.progress, self.log_every = progress, max(int(log_every), 1)
        self.bar = None
        self.items_per_s = 0.0

    def before_train(self) -> None:
        self.show_bar = self.trainer.di.is_main and progress_enabled(self.progress)

    def before_epoch(self, epoch: int) -> None:
        from tqdm import tqdm

        t = self.trainer
        self.bar = tqdm(total=t.epoch_steps, initial=t.batch_in_epoch, desc=t.epoch_label(epoch), dynamic_ncols=True,
                        disable=not self.show_bar, leave=t.di.is_main)
        self.meter = {"loss": 0.0, "n": 0, "correct": 0, "seen": 0}
        self.window = {"t": time.monotonic(), "n": 0, "loss": 0.0}

    def after_step(self, out: StepOutput) -> None:
        t = self.trainer
        bs, loss_v = out.batch_size, t.loss_value
        self.meter["loss"] += loss_v * bs
        self.meter["n"] += bs
        correct = out.metrics.get("correct")
        if correct is not None:
            self.meter["correct"] += correct
            self.meter["seen"] += bs
        self.window["n"] += bs
        self.window["loss"] += loss_v * bs
        if self.bar.total != t.epoch_steps:  # the budget refitted the schedule
            self.bar.total = t.epoch_steps
            self.bar.set_description(t.epoch_label(t.epoch), refresh=False)
        self.bar.update(1)
        if t.step % self.log_every == 0 or t.batch_in_epoch == t.epoch_steps:
            self._log_window(out)

    def _log_window(self, out: StepOutput) -> None:
        t, w, now = self.trainer, self.window, time.monotonic()
        self.items_per_s = w["n"] * t.di.world_size / max(now - w["t"], 1e-9)
        lr_now = t.optimizer.param_groups[0]["lr"]
        win_loss = w["loss"] / max(w["n"], 1)  # mean over the steps since the last record
        self.window = {"t": now, "n": 0, "loss": 0.0}
        self.bar.set_postfix(loss=f"{win_loss:.4f}", lr=f"{lr_now:.3g}", it_s=f"{self.items_per_s:.0f}")
        if t.di.is_main and not self.show_bar:
            log.info(f"{t.epoch_label(t.epoch)} step {t.step}/{t.steps_to_run()}: loss {win_loss:.4f} | "
                     f"lr {lr_now:.3g} | {self.items_per_s:.0f} img/s")
        parts = {k: float(v.detach()) for k, v in out.losses.items() if k != "loss"}
        t.logger.log({"loss": win_loss, **parts, "lr": lr_now, "items_per_s": self.items_per_s}, step=t.step,
                     phase="train", epoch=t.epoch_value())

    def after_epoch(self, epoch: int) -> None:
        self.close()
        t = self.trainer
        if self.meter["n"]:
            rec = {"train_loss": self.meter["loss"] / self.meter["n"]}
            if self.meter["seen"]:
                rec["train_top1"] = 100.0 * self.meter["correct"] / self.meter["seen"]
            t.logger.log(rec, step=t.step, phase="train_epoch", epoch=t.epoch_value())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CheckpointHook(Hook):
    """``last.safetensors`` (+ its training state) at the end of each epoch, every ``train.save_every_steps``
    steps, and at step 0 under an elastic launch (a job restarted before its first save then resumes that one,
    where it would find a folder that holds a run and be refused)."""

    def __init__(self, save_every_steps: int | None = None):
        self.every = int(save_every_steps or 0)

    def before_train(self) -> None:
        from botnet.engine.distributed import elastic_launch

        t = self.trainer
        if elastic_launch() and not t.resume and t.step == 0:
            t.save("last", t.start_epoch, 0)

    def after_step(self, out: StepOutput) -> None:
        t = self.trainer
        if self.every and t.step % self.every == 0:
            t.save("last", t.epoch, t.batch_in_epoch)

    def after_epoch(self, epoch: int) -> None:
        t = self.trainer
        done = t.batch_in_epoch >= t.spe
        t.save("last", *((epoch + 1, 0) if done else (epoch, t.batch_in_epoch)))  # a finished epoch: the next one


class EvalHook(Hook):
    """Evaluation every ``train.eval_every`` epochs and at the end (raw weights, and the EMA beside them), and
    ``best.safetensors`` by the task's ``key_metric``. State: the best so far."""

    def __init__(self, eval_every: int = 1):
        self.every = int(eval_every or 0)
        self.best: dict[str, Any] = {}
        self.last: dict[str, dict[str, Any]] | None = None
        self.last_step = -1
        self.final: dict[str, dict[str, Any]] | None = None

    def before_train(self) -> None:
        if not self.best:
            self.best = {"value": -math.inf, "which": None, "step": 0, "metric": self.trainer.task.key_metric}

    def after_epoch(self, epoch: int) -> None:
        t = self.trainer
        if t.stop_reason or t.step >= t.total_steps or not self.every or (epoch + 1) % self.every:
            return  # the last evaluation is the final one, in after_train
        self.evaluate(t.epoch_value())

    def after_train(self, status: str) -> None:
        t = self.trainer
        if status == "interrupted":
            return
        self.final = self.last if self.last is not None and self.last_step == t.step else \
            self.evaluate(round(t.step / t.spe, 4) if t.spe else 0.0)

    def evaluate(self, epoch_value: float) -> dict[str, dict[str, Any]]:
        from botnet.engine.distributed import barrier

        t = self.trainer
        t0 = time.monotonic()
        out = {"raw": t.task.evaluate(t.model, t.setup, t.cfg, t.di, desc="eval")}
        if t.ema is not None:
            out["ema"] = t.task.evaluate(t.ema.module, t.setup, t.cfg, t.di, desc="eval EMA")
        seconds = time.monotonic() - t0
        rec = scalars(out["raw"])
        if "ema" in out:
            rec.update({f"ema_{k}": v for k, v in scalars(out["ema"]).items()})
        t.logger.log(rec, step=t.step, phase="val", epoch=epoch_value)
        key = t.task.key_metric
        cand = max(out, key=lambda k: out[k].get(key, -math.inf))
        if out[cand].get(key, -math.inf) > self.best["value"]:
            self.best = {"value": out[cand][key], "which": cand, "step": t.step, "epoch": epoch_value, "metric": key}
            t.save("best", math.ceil(epoch_value), 0, weights_only=t.model if cand == "raw" else t.ema.module,
                   extra_more={"weights": cand, "val": rec})
        if t.di.is_main:
            msg = f"epoch {epoch_value:.2f} step {t.step}: val " + t.task.describe(out["raw"])
            if "ema" in out:
                msg += " | EMA " + t.task.describe(out["ema"])
            log.info(msg)
        t.set_train_mode()
        self.last, self.last_step = out, t.step
        barrier()
        t.call("after_eval", out, seconds)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("best"), dict):
            self.best = state["best"]


class TimeBudgetHook(Hook):
    """``train.time_budget`` seconds for the run: the schedule's decay is fitted to the steps the budget holds
    (from the recent step times and the evaluations still to come), and the run stops when it ends."""

    def __init__(self, seconds: float | None = None, *, eval_every: int = 0, fit_schedule: bool = True):
        self.seconds, self.eval_every, self.fit_schedule = seconds, int(eval_every or 0), fit_schedule
        self.budget, self.fitted = None, False

    def before_train(self) -> None:
        from botnet.engine.budget import BudgetFitter

        t = self.trainer
        if self.seconds:
            self.budget = BudgetFitter(float(self.seconds), t.t_start, t.planned_steps, t.spe, self.eval_every,
                                       t.setup.num_val * t.setup.eval_passes, 2 if t.ema else 1)

    stop_reason = "time_budget"

    def wants_stop(self) -> bool:
        return self.budget is not None and self.budget.exhausted()

    def after_step(self, out: StepOutput) -> None:
        t = self.trainer
        if self.budget is None:
            return
        self.budget.add_step(t.step_seconds)
        speed = t.hook(ProgressHook).items_per_s if t.hook(ProgressHook) else 0.0
        if self.fit_schedule and speed > 0 and self.budget.due(t.step):
            self._fit(speed)

    def _fit(self, speed: float) -> None:
        t = self.trainer
        target = self.budget.target_steps(t.step, speed)
        if abs(target - t.total_steps) > max(0.02 * t.total_steps, 5) and t.scheduler.fit_total_steps(target):
            t.total_steps = target
            if t.di.is_main:  # one line; the refits that follow the step times show in the epoch counter
                (log.debug if self.fitted else log.info)(
                    f"time budget {self.budget.budget:.0f}s: schedule set to {t.total_steps} steps "
                    f"({t.total_steps / t.spe:.2f} epochs; {self.budget.ms_per_step:.0f} ms/step)")
            self.fitted = True
            t.epoch_steps = min(t.spe, t.total_steps - t.epoch * t.spe)

    def after_eval(self, metrics: dict[str, dict[str, Any]], seconds: float) -> None:
        if self.budget is None:
            return
        self.budget.add_eval(seconds)
        if self.budget.exhausted():
            self.trainer.stop("time_budget")


class PlotsHook(Hook):
    """The run's PNG curves from its ``metrics.jsonl`` records, at the end (main rank, ``train.plots``)."""

    def after_train(self, status: str) -> None:
        t = self.trainer
        if t.di.is_main and t.hook(EvalHook) and t.hook(EvalHook).final is not None:
            t.task.plot(t.logger.records, t.run_dir)


def default_hooks(cfg: dict) -> list[Hook]:
    """Everything a run does besides its steps, in the order the hooks are called, each given its settings from
    the config's typed ``train`` and ``sched`` sections."""
    from botnet.engine.config import ENGINE_SCHEMA

    train, sched = ENGINE_SCHEMA.section(cfg, "train"), ENGINE_SCHEMA.section(cfg, "sched")
    hooks = [ThreadsHook(train.threads, deterministic=train.deterministic, verbose=train.progress),
             ProgressHook(train.progress, train.log_every), CheckpointHook(train.save_every_steps),
             EvalHook(train.eval_every),
             TimeBudgetHook(train.time_budget, eval_every=train.eval_every, fit_schedule=sched.fit_time_budget)]
    return hooks + ([PlotsHook()] if train.plots else [])


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics mapping (what is logged); confusion matrices and tables stay out."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")}
