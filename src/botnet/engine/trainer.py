"""The training engine: one loop for every task (single process, or DDP under ``torchrun``).

``Trainer(task, cfg, resume=..., init_weights=...).run()`` validates everything it is given before
any work (config values, devices, files, the output folder), builds the task's model and data,
then trains with autocast (bf16/fp16 + gradient scaler), gradient clipping, channels_last,
``torch.compile``, SyncBatchNorm, EMA (timm ``ModelEmaV3``, evaluated beside the raw weights),
one parameter-group policy (:mod:`botnet.engine.optim`), timm's schedules fitted to a
wall-clock budget, measured CPU thread counts (restored afterwards), tqdm progress on a terminal (plain
per-step lines elsewhere), metrics to
TensorBoard/JSONL/CSV, atomic checkpoints with exact resume, clean Ctrl-C (exit code 130) and a
non-finite-loss stop (exit code 3). It ends with the task's pictures and ``summary.json``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from botnet.engine import checkpoint as ckpt
from botnet.engine.distributed import (DistInfo, barrier, broadcast_object, cleanup, elastic_launch, gather_object,
                                       init_distributed, reduce_dict, seed_everything)
from botnet.engine.devices import command_line, describe_machine
from botnet.engine.guards import GracefulInterrupt, NonFiniteLossError
from botnet.log import get_logger, progress_enabled
from botnet.engine.metrics_log import MetricsLogger
from botnet.engine.rng import get_rng_state
from botnet.engine.task import StepOutput, Task, TaskSetup
from botnet.errors import CheckpointError
from botnet.io.atomic import atomic_write_bytes, remove_stale_temp_files
from botnet.io.weights import WEIGHTS_SUFFIX, read_weights_file, state_path_for

__all__ = ["Trainer", "autocast", "fit_global_batch", "run_dir_of", "train"]

log = get_logger("engine")


def autocast(device: torch.device, amp: str | None):
    """``torch.autocast`` for ``amp`` in none | bf16 | fp16 (a no-op for none)."""
    if amp in (None, "none", "fp32", False):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_dir_of(cfg: dict) -> Path:
    return Path(cfg["output"]["dir"] or os.path.join("runs", cfg["name"]))


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")}


def fit_global_batch(global_batch: int, world_size: int, max_batch: int, what: str = "run") -> tuple[int, int]:
    """``(batch per process, accumulation steps)`` whose product with ``world_size`` is ``global_batch``, the batch
    no larger than ``max_batch`` and the accumulation steps as few as that allows. Raises ``ConfigError`` when
    ``global_batch`` does not split evenly over ``world_size`` processes."""
    if global_batch % world_size:
        from botnet.errors import ConfigError

        ok = [n for n in range(1, min(global_batch, 64) + 1) if global_batch % n == 0]
        raise ConfigError(f"cannot {what} on {world_size} processes: its global batch of {global_batch} does not "
                          f"split evenly over them; use {', '.join(map(str, ok))} processes")
    per = global_batch // world_size
    accum = -(-per // max(int(max_batch), 1))
    while per % accum:
        accum += 1
    return per // accum, accum


def train(task: Task, cfg: dict, resume=None, init_weights=None, dist_info: DistInfo | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Run one job; returns the summary (also written to ``RUN/summary.json``)."""
    return Trainer(task, cfg, resume=resume, init_weights=init_weights, dist_info=dist_info, overwrite=overwrite).run()


class Trainer:
    def __init__(self, task: Task, cfg: dict, *, resume=None, init_weights=None, dist_info: DistInfo | None = None,
                 overwrite: bool = False):
        """``overwrite``: a new run may replace the run already in the output folder (docs/run-folder.md)."""
        self.task, self.cfg, self.resume, self.init_weights = task, cfg, resume, init_weights
        self.tc = cfg["train"]
        self.run_dir = run_dir_of(cfg)
        self.overwrite, self.folder_lock = overwrite, None
        self._dist_given = dist_info
        self.di: DistInfo | None = None

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        self.task.validate(self.cfg)  # every bad value is a one-line ConfigError before any work
        self._check_files()
        self._claim_folder()
        threads_before, benchmark_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
        try:
            self.di = self._dist_given or init_distributed(self.tc["device"])
            return self._run()
        finally:
            if self.folder_lock is not None:
                self.folder_lock.release()
            torch.set_num_threads(threads_before)  # a run leaves the process as it found it
            torch.backends.cudnn.benchmark = benchmark_before
            if self._dist_given is None:
                cleanup()

    def _check_files(self) -> None:
        """A bad --resume / --init-weights / output folder is found before the data is read."""
        if self.resume:
            self.resume_path, self.resume_meta = ckpt.check_resumable(self.resume)
            self._resume_into_its_folder()
        if self.init_weights:
            read_weights_file(self.init_weights)  # tensors only; whether they fit is checked later

    def _resume_into_its_folder(self) -> None:
        """A resumed run writes into the folder of its checkpoint, never into the ``output.dir`` recorded in it
        (a moved run would write into its old place; a shared one could name any folder)."""
        from botnet.engine.run_folder import resume_folder, same_folder

        folder = resume_folder(self.resume)
        if self.cfg["output"].get("dir") and not same_folder(self.cfg["output"]["dir"], folder):
            log.info(f"resuming in {folder} (the config names {self.cfg['output']['dir']})")
        self.cfg["output"]["dir"] = str(folder)  # config.json and the checkpoints record where the run is
        self.run_dir = folder

    def _claim_folder(self) -> None:
        """The main rank checks the run folder, locks it for the whole run and refuses one that holds another run.

        Before the process group exists: a refused rank 0 then simply exits (torchrun stops the other ranks),
        where a collective it skipped would leave them waiting."""
        main = self._dist_given.is_main if self._dist_given is not None else int(os.environ.get("RANK", "0")) == 0
        if main:
            from botnet.engine.run_folder import claim_run_folder

            self.folder_lock = claim_run_folder(self.run_dir, resume=bool(self.resume), overwrite=self.overwrite)

    def _run(self) -> dict[str, Any]:
        di, tc = self.di, self.tc
        self.t_start = time.monotonic()
        if di.is_main:
            for f in remove_stale_temp_files(self.run_dir):
                log.info(f"removed {f.name}, left by a save that was killed")
        seed_everything(int(tc["seed"]), di.rank, deterministic=bool(tc["deterministic"]))
        from botnet.engine.devices import resolve_device_defaults

        for key, (was, now) in resolve_device_defaults(self.cfg, self.task.cuda_defaults, di.device,
                                                       di.world_size).items():
            if di.is_main:
                log.info(f"{key}: {was} -> {now} on {di.device.type}")
        if self.resume:
            self._keep_global_batch()
        self.setup = self.task.setup(self.cfg, di)
        self._build()
        finished = bool(self.resume) and self._restore()
        # a run killed between its last save and its summary (e.g. an elastic restart then) still gets its final
        # evaluation; one that has its summary is left as it is
        if finished and broadcast_object((self.run_dir / "summary.json").is_file()):
            if di.is_main:
                log.info(f"run {self.run_dir} is already finished ({self.step} steps = {self.step / self.spe:g} epochs "
                         f"of {self.spe} steps); nothing was changed. To train longer, start a new run from its "
                         f"weights: --init-weights {self.resume_path} --output NEW_DIR")
            return {"status": "already_finished", "steps": self.step, "epochs": float(tc["epochs"]),
                    "run_dir": str(self.run_dir)}
        self._wrap()
        if di.is_main and self.overwrite:  # only now: a bad input found above leaves the old run whole
            from botnet.engine.run_folder import clear_run_files

            removed = clear_run_files(self.run_dir)
            if removed:
                log.info(f"--overwrite: removed the previous run's {', '.join(removed)} from {self.run_dir}")
        if elastic_launch() and not self.resume:
            # a checkpoint before any other file: a job restarted before its first save then resumes this one,
            # where it would find a folder that "holds a run" and be refused
            self.train_seconds = 0.0
            self._save("last", self.start_epoch, 0)
        self.logger = MetricsLogger(self.run_dir, enabled=di.is_main, resume=bool(self.resume))
        self._announce()
        try:
            status = self._loop(finished)
        except NonFiniteLossError:
            self.logger.close()
            raise
        return self._finish(status)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        di, tc, cfg, s = self.di, self.tc, self.cfg, self.setup
        model = s.model
        if self.init_weights:
            ckpt.load_weights(model, self.init_weights)  # strict: every tensor, same shapes, or a one-line error
            if di.is_main:
                log.info(f"initial weights: all {len(model.state_dict())} tensors loaded from {self.init_weights}")
        if tc["sync_bn"] and di.distributed:
            if di.device.type == "cpu":
                from botnet.errors import ConfigError

                raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); use "
                                  "--freeze-bn or plain BatchNorm on the CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(di.device)
        if tc["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        from botnet.engine.optim import build_optimizer
        from botnet.engine.schedule import build_scheduler

        oc = cfg["optim"]
        self.accum = int(tc.get("accum_steps") or 1)
        self.global_batch = int(cfg["data"]["batch_size"]) * self.accum * di.world_size
        lr = float(oc["lr"]) * (self.global_batch / float(oc["lr_base_batch"]) if oc.get("lr_base_batch") else 1.0)
        self.optimizer = build_optimizer(model, oc, lr)
        self.spe = len(s.train_loader) // self.accum  # optimizer steps per epoch: floor(items / global batch)
        self.epochs = float(tc["epochs"])
        self.planned_steps = int(round(self.epochs * self.spe))
        self.scheduler = build_scheduler(self.optimizer, cfg["sched"], self.spe, self.epochs)
        self.amp = str(tc["amp"] or "none")
        self.scaler = torch.amp.GradScaler(di.device.type, enabled=(self.amp == "fp16"))
        self.ema = None
        if tc["ema"]:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=float(tc["ema_decay"]), use_warmup=bool(tc["ema_warmup"]))
        self.start_epoch, self.step, self.skip_batches = 0, 0, 0
        self.best: dict[str, Any] = {"value": -math.inf, "which": None, "step": 0, "metric": self.task.key_metric}
        self.history_seconds = 0.0

    def _keep_global_batch(self) -> None:
        """A run resumed on another number of processes keeps the global batch it was saved with: the
        per-process batch and the accumulation steps are refitted (the batch never above ``data.batch_size``),
        so the steps, the schedule and the order of the samples stay those of the run (docs/classification.md)."""
        ex = (getattr(self, "resume_meta", None) or {}).get("extra") or {}
        saved, was = ex.get("global_batch"), ex.get("world_size")
        world, batch = self.di.world_size, int(self.cfg["data"]["batch_size"])
        accum = int(self.tc.get("accum_steps") or 1)
        if not saved or was == world or batch * accum * world == saved:
            return  # same processes (a batch given anew is the user's), or a checkpoint older than these fields
        batch, accum = fit_global_batch(saved, world, batch, what=f"resume {self.run_dir}")
        self.cfg["data"]["batch_size"], self.tc["accum_steps"] = batch, accum
        if self.di.is_main:
            log.info(f"resuming on {world} process(es) (saved on {was}): global batch {saved} kept as {world} x "
                     f"batch {batch} x {accum} accumulation step(s)")

    def _restore(self) -> bool:
        """Load the checkpoint to resume; True when all of that run's steps are done."""
        st = ckpt.load_checkpoint(self.resume_path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                  ema=self.ema, scaler=self.scaler if self.scaler.is_enabled() else None,
                                  rank=self.di.rank)
        if not st["rng_restored"]:  # a rank the save had no stream for (more processes now): a seeded one
            seed_everything(int(self.tc["seed"]) + int(st["step"]), self.di.rank,
                            deterministic=bool(self.tc["deterministic"]))
        ex = st["extra"]
        self.start_epoch, self.step = int(ex.get("epoch", st["epoch"])), int(st["step"])
        self.skip_batches = int(ex.get("batch_in_epoch", 0))
        self.best = ex.get("best", self.best)
        self.history_seconds = float(ex.get("train_seconds", 0.0))
        if self.skip_batches > self.spe:  # the schema cannot know the epoch's length; the run does (== : epoch done)
            raise CheckpointError(
                f"training state {state_path_for(self.resume_path)}: extra.batch_in_epoch is "
                f"{self.skip_batches}, but an epoch of this run has {self.spe} steps; the file is damaged, or the "
                f"data changed since the save: resume with the same data, or start from its weights with "
                f"--init-weights {self.resume_path}")
        max_steps = int(self.tc["max_steps"] or 0)
        if self.step >= self.planned_steps or (max_steps and self.step >= max_steps):
            return True
        if self.di.is_main:
            log.info(f"resumed from {self.resume_path}: epoch {self.start_epoch}, step {self.step}"
                     + (f", {self.skip_batches} batches into the epoch" if self.skip_batches else "")
                     + ("; the last save was interrupted, so this is the complete checkpoint before it"
                        if self.resume_path.name.endswith(ckpt.PREV_TAG + WEIGHTS_SUFFIX) else ""))
        return False

    def _wrap(self) -> None:
        self.train_model: nn.Module = self.model
        if self.di.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=self.di.device_ids, find_unused_parameters=self.task.find_unused_parameters)
        if self.tc["compile"]:
            self.train_model = torch.compile(self.train_model)

    def _announce(self) -> None:
        di, s = self.di, self.setup
        if not di.is_main:
            return
        _write_json(self.run_dir / "config.json", self.cfg)
        self.logger.add_text("config", "```\n" + json.dumps(self.cfg, indent=2, default=str) + "\n```")
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(f"{self.task.name}: {s.arch} ({n_params / 1e6:.3f} M parameters) | "
                 f"{len(s.train_loader.dataset)} train / {s.num_val} val items | {di.world_size} process(es) x batch "
                 f"{self.cfg['data']['batch_size']}{f' x {self.accum} accumulation steps' if self.accum > 1 else ''} | "
                 f"{self.spe} steps/epoch | device {di.device} | run dir "
                 f"{self.run_dir}")
        if s.skipped_train:
            log.warning(f"left out {len(s.skipped_train)} unreadable training file(s), e.g. {s.skipped_train[0]}")

    # ------------------------------------------------------------------ checkpoints and evaluation
    def _save(self, name: str, epoch_idx: int, batch_in_epoch: int, weights_only: nn.Module | None = None,
              extra_more: dict | None = None) -> None:
        rank_rng = None
        if weights_only is None and self.di.distributed:  # every rank calls a resumable save: each keeps its stream
            rank_rng = gather_object(get_rng_state())
        if not self.di.is_main:
            return
        extra = {"epoch": epoch_idx, "batch_in_epoch": batch_in_epoch, "best": self.best,
                 "train_seconds": self.history_seconds + self.train_seconds, "world_size": self.di.world_size,
                 "global_batch": self.global_batch, **self.setup.meta, **(extra_more or {})}
        common = dict(epoch=epoch_idx, step=self.step, arch=self.setup.arch, model_kwargs=self.setup.model_kwargs,
                      class_names=self.setup.class_names, config=self.cfg, extra=extra, task=self.task.name)
        path = self.run_dir / f"{name}.safetensors"
        if weights_only is not None:
            ckpt.save_checkpoint(path, weights_only, save_state=False, **common)
        else:
            ckpt.save_checkpoint(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema,
                                 scaler=self.scaler if self.scaler.is_enabled() else None, rank_rng=rank_rng, **common)

    def _evaluate(self, epoch_value: float) -> dict[str, dict[str, Any]]:
        t0 = time.monotonic()
        out = {"raw": self.task.evaluate(self.model, self.setup, self.cfg, self.di, desc="eval")}
        if self.ema is not None:
            out["ema"] = self.task.evaluate(self.ema.module, self.setup, self.cfg, self.di, desc="eval EMA")
        if self.budget is not None:
            self.budget.add_eval(time.monotonic() - t0)
        rec = _scalars(out["raw"])
        if "ema" in out:
            rec.update({f"ema_{k}": v for k, v in _scalars(out["ema"]).items()})
        self.logger.log(rec, step=self.step, phase="val", epoch=epoch_value)
        key = self.task.key_metric
        cand = max(out, key=lambda k: out[k].get(key, -math.inf))
        if out[cand].get(key, -math.inf) > self.best["value"]:
            self.best = {"value": out[cand][key], "which": cand, "step": self.step, "epoch": epoch_value,
                         "metric": key}
            self._save("best", math.ceil(epoch_value), 0, weights_only=self.model if cand == "raw" else self.ema.module,
                       extra_more={"weights": cand, "val": rec})
        if self.di.is_main:
            msg = f"epoch {epoch_value:.2f} step {self.step}: val " + self.task.describe(out["raw"])
            if "ema" in out:
                msg += " | EMA " + self.task.describe(out["ema"])
            log.info(msg)
        _set_train_mode(self.train_model, bool(self.tc["freeze_bn"]))
        return out

    # ------------------------------------------------------------------ the loop
    def _loop(self, finished: bool = False) -> str:
        """The epochs; ``finished``: every step was done before a restart, only the final evaluation is left."""
        from botnet.engine.budget import BudgetFitter

        tc = self.tc
        self.train_seconds, self.items_per_s = 0.0, 0.0
        self.total_steps = self.planned_steps
        self.max_steps = int(tc["max_steps"]) if tc["max_steps"] else None
        self.last_eval, self.last_eval_step = None, -1
        self.skipped = list(self.setup.skipped_train)
        self.budget, self.fitted = None, False
        # a bar on a terminal; otherwise (a log file, a pipe, --no-progress) plain lines every log_every steps
        self.show_bar = self.di.is_main and progress_enabled(tc["progress"])
        if tc["time_budget"]:
            self.budget = BudgetFitter(float(tc["time_budget"]), self.t_start, self.planned_steps, self.spe,
                                       int(tc["eval_every"] or 0), self.setup.num_val * self.setup.eval_passes,
                                       2 if self.ema else 1)
        self.tuner = None
        if self.di.device.type == "cpu":
            self._cpu_threads()
        status = "completed"
        if finished:
            return status if self.step >= self.planned_steps else "max_steps"
        with GracefulInterrupt() as interrupt:
            self.interrupt = interrupt
            for epoch in range(self.start_epoch, math.ceil(self.epochs)):
                if self.step >= self.total_steps:
                    break
                reason, batch_in_epoch = self._train_epoch(epoch)
                pos = (epoch + 1, 0) if batch_in_epoch >= self.spe else (epoch, batch_in_epoch)
                self._save("last", *pos)  # a finished epoch continues with the next one
                if reason:
                    status = reason
                    break
                if self.step >= self.total_steps:
                    break
                if tc["eval_every"] and (epoch + 1) % int(tc["eval_every"]) == 0:
                    self.last_eval = self._evaluate(round(epoch + batch_in_epoch / self.spe, 4))
                    self.last_eval_step = self.step
                    barrier()
                    if self.budget is not None and self.budget.exhausted():
                        status = "time_budget"
                        break
        return status

    def _cpu_threads(self) -> None:
        threads = str(self.tc.get("threads", "auto"))
        if threads == "auto" and not self.tc["deterministic"]:  # a fixed count keeps runs bitwise repeatable
            from botnet.engine.threads import ThreadTuner

            self.tuner = ThreadTuner(verbose=self.di.is_main and bool(self.tc["progress"]))
        elif threads != "auto":
            torch.set_num_threads(int(threads))

    def _train_epoch(self, epoch: int) -> tuple[str | None, int]:
        """One epoch (or what is left of it); returns ``(stop reason or None, batches done in it)``."""
        from tqdm import tqdm

        tc, di, loader = self.tc, self.di, self.setup.train_loader
        loader.sampler.set_epoch(epoch)
        batch_in_epoch = 0
        if self.skip_batches:
            # this rank's share of the samples the run's steps took (global batch / processes each): the same
            # place in the epoch's order on any number of processes (ResumableSampler)
            loader.sampler.skip(self.skip_batches * self.accum * int(self.cfg["data"]["batch_size"]))
            batch_in_epoch, self.skip_batches = self.skip_batches, 0
        self.epoch_steps = min(self.spe, self.total_steps - epoch * self.spe)
        _set_train_mode(self.train_model, bool(tc["freeze_bn"]))
        self.bar = tqdm(total=self.epoch_steps, initial=batch_in_epoch, desc=self._epoch_label(epoch),
                        dynamic_ncols=True, disable=not self.show_bar, leave=di.is_main)
        self.meter = {"loss": 0.0, "n": 0, "correct": 0, "seen": 0}
        self.window = {"t": time.monotonic(), "n": 0, "loss": 0.0}
        reason, micro = None, 0
        for batch in loader:
            if micro == 0:
                t_step = time.monotonic()
            with self._grad_sync(micro + 1 == self.accum):  # DDP reduces the gradients once per step
                out = self.task.train_step(self.train_model, batch, di.device, self.setup)
                if out is None:
                    continue
                self.skipped += out.skipped
                micro += 1
                out = self._backward(out, micro)
            if micro < self.accum:
                continue
            micro = 0
            reason = self._optimizer_step(out, epoch, t_step)
            batch_in_epoch += 1
            self._after_step(out, epoch, batch_in_epoch, t_step)
            if reason or batch_in_epoch >= self.epoch_steps:
                break
        self.bar.close()
        if self.meter["n"]:
            rec = {"train_loss": self.meter["loss"] / self.meter["n"]}
            if self.meter["seen"]:
                rec["train_top1"] = 100.0 * self.meter["correct"] / self.meter["seen"]
            self.logger.log(rec, step=self.step, phase="train_epoch", epoch=round(epoch + batch_in_epoch / self.spe, 4))
        return reason, batch_in_epoch

    def _grad_sync(self, sync: bool):
        """DDP's ``no_sync`` for the batches of a step but its last (nothing to do in a single process)."""
        ddp = getattr(self.train_model, "_orig_mod", self.train_model)
        if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return ddp.no_sync()

    def _backward(self, out: StepOutput, micro: int) -> StepOutput:
        """Backward of one batch of the step (``micro`` = 1 .. accum): the gradients add up to those of the mean
        loss over the step's batches; returns the step's counts (the batch itself when there is no accumulation)."""
        loss = out.losses["loss"]
        loss_v = float(loss.detach().float())
        if micro == 1:
            self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss / self.accum if self.accum > 1 else loss).backward()
        if self.accum == 1:
            self._loss_value = loss_v
            return out
        if micro == 1:
            self._acc = {"loss": 0.0, "n": 0, "correct": 0 if out.correct is not None else None}
        acc = self._acc
        acc["loss"] += loss_v
        acc["n"] += out.batch_size
        if acc["correct"] is not None and out.correct is not None:
            acc["correct"] += out.correct
        self._loss_value = acc["loss"] / self.accum  # NaN / inf in any batch stays in the mean
        return StepOutput(out.losses, batch_size=acc["n"], correct=acc["correct"])

    def _optimizer_step(self, out, epoch: int, t_step: float) -> str | None:
        """The update after the step's backward passes; the stop decision (Ctrl-C, budget, max steps) is taken on
        every rank alike."""
        loss_v = self._loss_value
        flags = {"nonfinite": float(not math.isfinite(loss_v)), "interrupt": float(self.interrupt.requested),
                 "budget": float(self.budget is not None and self.budget.exhausted())}
        if self.di.distributed:
            flags = reduce_dict(flags, op="max")
        if flags["nonfinite"]:
            self._nonfinite(loss_v, epoch)
        opt, scaler = self.optimizer, self.scaler
        if self.tc["grad_clip"]:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.tc["grad_clip"]))
        scaler.step(opt)
        scaler.update()
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        if flags["interrupt"]:
            return "interrupted"
        if flags["budget"]:
            return "time_budget"
        if self.max_steps and self.step >= self.max_steps:
            return "max_steps"
        return None

    def _nonfinite(self, loss_v: float, epoch: int) -> None:
        self.bar.close()
        last = self.run_dir / "last.safetensors"
        hint = f"Last good checkpoint: {last}" if last.is_file() else "No checkpoint had been written yet."
        err = NonFiniteLossError(loss_v, self.step + 1, epoch + 1, hint=hint)
        if self.di.is_main:
            _write_json(self.run_dir / "summary.json", {"status": "nonfinite_loss", "message": str(err),
                                                        "step": self.step, "epoch": epoch, "best": self.best})
        raise err

    def _after_step(self, out, epoch: int, batch_in_epoch: int, t_step: float) -> None:
        """Meters, progress, log records, step checkpoints and the budget fit."""
        tc, bs, loss_v = self.tc, out.batch_size, self._loss_value
        self.meter["loss"] += loss_v * bs
        self.meter["n"] += bs
        if out.correct is not None:
            self.meter["correct"] += out.correct
            self.meter["seen"] += bs
        self.window["n"] += bs
        self.window["loss"] += loss_v * bs
        dt = time.monotonic() - t_step
        self.train_seconds += dt
        if self.budget is not None:
            self.budget.add_step(dt)
        if self.tuner is not None:
            self.tuner.after_step(dt)
        self.bar.update(1)
        if self.step % max(int(tc["log_every"]), 1) == 0 or batch_in_epoch == self.epoch_steps:
            self._log_window(out, epoch, batch_in_epoch)
        if tc["save_every_steps"] and self.step % int(tc["save_every_steps"]) == 0:
            self._save("last", epoch, batch_in_epoch)
        if self.budget is not None and self.cfg["sched"].get("fit_time_budget", True) and self.items_per_s > 0 \
                and self.budget.due(self.step):
            self._fit_budget(epoch)

    def _log_window(self, out, epoch: int, batch_in_epoch: int) -> None:
        now = time.monotonic()
        w = self.window
        self.items_per_s = w["n"] * self.di.world_size / max(now - w["t"], 1e-9)
        lr_now = self.optimizer.param_groups[0]["lr"]
        win_loss = w["loss"] / max(w["n"], 1)  # mean over the steps since the last record
        self.window = {"t": now, "n": 0, "loss": 0.0}
        self.bar.set_postfix(loss=f"{win_loss:.4f}", lr=f"{lr_now:.3g}", it_s=f"{self.items_per_s:.0f}")
        if self.di.is_main and not self.show_bar:
            log.info(f"{self._epoch_label(epoch)} step {self.step}/{self._steps_to_run()}: loss {win_loss:.4f} | "
                     f"lr {lr_now:.3g} | {self.items_per_s:.0f} img/s")
        parts = {k: float(v.detach()) for k, v in out.losses.items() if k != "loss"}
        self.logger.log({"loss": win_loss, **parts, "lr": lr_now, "items_per_s": self.items_per_s}, step=self.step,
                        phase="train", epoch=round(epoch + batch_in_epoch / self.spe, 4))

    def _fit_budget(self, epoch: int) -> None:
        target = self.budget.target_steps(self.step, self.items_per_s)
        if abs(target - self.total_steps) > max(0.02 * self.total_steps, 5) and self.scheduler.fit_total_steps(target):
            self.total_steps = target
            if self.di.is_main:  # one line; the refits that follow the step times show in the epoch counter
                (log.debug if self.fitted else log.info)(
                    f"time budget {self.budget.budget:.0f}s: schedule set to {self.total_steps} steps "
                    f"({self.total_steps / self.spe:.2f} epochs; {self.budget.ms_per_step:.0f} ms/step)")
            self.fitted = True
            self.epoch_steps = min(self.spe, self.total_steps - epoch * self.spe)
            self.bar.total = self.epoch_steps
            self.bar.set_description(self._epoch_label(epoch), refresh=False)
            self.bar.refresh()

    def _steps_to_run(self) -> int:
        """Steps this run will take: the schedule's (fitted to the budget, if any), or --max-steps if fewer."""
        return min(self.total_steps, self.max_steps) if self.max_steps else self.total_steps

    def _epoch_label(self, epoch: int) -> str:
        """``epoch k/N``, N the epochs the run will reach (after a budget fit: the fitted ones, not the config's)."""
        return f"epoch {epoch + 1}/{max(math.ceil(self._steps_to_run() / max(self.spe, 1)), epoch + 1)}"

    # ------------------------------------------------------------------ the end
    def _finish(self, status: str) -> dict[str, Any]:
        di, s = self.di, self.setup
        epoch_value = round(self.step / self.spe, 4) if self.spe else 0.0
        if status == "interrupted":
            if di.is_main:
                log.info(f"interrupted at step {self.step}: checkpoint saved to {self.run_dir / 'last.safetensors'}; "
                         f"continue with --resume {self.run_dir}")
            final = None
        elif self.last_eval is not None and self.last_eval_step == self.step:
            final = self.last_eval
        else:
            final = self._evaluate(epoch_value)
        summary: dict[str, Any] = {
            "status": status, "task": self.task.name, "arch": s.arch, "model_kwargs": s.model_kwargs,
            "steps": self.step, "epochs": epoch_value, "epochs_planned": self.epochs,
            "train_seconds": round(self.history_seconds + self.train_seconds, 2),
            "wall_seconds": round(time.monotonic() - self.t_start, 2), "world_size": di.world_size,
            "global_batch": self.global_batch, "best": self.best, "run_dir": str(self.run_dir),
            "skipped_train_files": len(self.skipped), "skipped_train_examples": self.skipped[:20],
            "command": command_line(), "hardware": describe_machine(di.device), "device": str(di.device),
            "threads": torch.get_num_threads(),
        }
        if final is not None:
            summary["final"] = {k: _scalars(v) for k, v in final.items()}
        if di.is_main:
            if final is not None:
                summary.update(self.task.finalize(self.run_dir, s, final, self.logger.records, self.cfg) or {})
            if final is not None and self.tc["plots"]:
                self.task.plot(self.logger.records, self.run_dir)
            _write_json(self.run_dir / "summary.json", summary)
            if self.skipped:
                log.warning(f"skipped {len(self.skipped)} unreadable training files, e.g. {self.skipped[:3]}")
        self.logger.close()
        barrier()
        return summary
