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
from botnet.engine.config import ENGINE_SCHEMA
from botnet.engine.distributed import (DistInfo, barrier, broadcast_object, cleanup, gather_object,
                                       init_distributed, reduce_dict, seed_everything)
from botnet.engine.devices import command_line, describe_machine
from botnet.engine.guards import GracefulInterrupt, NonFiniteLossError
from botnet.engine.hooks import EvalHook, Hook, default_hooks, scalars
from botnet.engine.metrics_log import MetricsLogger
from botnet.engine.rng import get_rng_state
from botnet.engine.task import StepOutput, Task
from botnet.errors import CheckpointError
from botnet.io.atomic import atomic_write_bytes, remove_stale_temp_files
from botnet.io.weights import WEIGHTS_SUFFIX, read_weights_file, state_path_for
from botnet.log import get_logger

__all__ = ["Trainer", "autocast", "default_hooks", "fit_global_batch", "run_dir_of", "train"]

log = get_logger("engine")


def autocast(device: torch.device, amp: str | None):
    """``torch.autocast`` for ``amp`` in none | bf16 | fp16 (a no-op for none)."""
    if amp in (None, "none", "fp32", False):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_dir_of(cfg: dict) -> Path:
    return Path(cfg["output"]["dir"] or os.path.join("runs", cfg["name"]))


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


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
          overwrite: bool = False, hooks: list[Hook] | None = None) -> dict[str, Any]:
    """Run one job; returns the summary (also written to ``RUN/summary.json``)."""
    return Trainer(task, cfg, resume=resume, init_weights=init_weights, dist_info=dist_info, overwrite=overwrite,
                   hooks=hooks).run()


class Trainer:
    """The run's state (model, optimizer, schedule, EMA, scaler, its place in the data) and its steps; all else is
    a hook's (``hooks``, default :func:`~botnet.engine.hooks.default_hooks` of the config; pass more to add to
    them, e.g. ``default_hooks(cfg) + [mine]``)."""

    def __init__(self, task: Task, cfg: dict, *, resume=None, init_weights=None, dist_info: DistInfo | None = None,
                 overwrite: bool = False, hooks: list[Hook] | None = None):
        """``overwrite``: a new run may replace the run already in the output folder (docs/run-folder.md)."""
        self.task, self.cfg, self.resume, self.init_weights = task, cfg, resume, init_weights
        task.resolve_config(cfg)  # the values left open (the run's name among them) before the folder is named
        self.run_dir = run_dir_of(cfg)
        self.overwrite, self.folder_lock = overwrite, None
        self._dist_given = dist_info
        self.di: DistInfo | None = None
        self.hooks: list[Hook] = [] if hooks is None else list(hooks)
        self._default_hooks = hooks is None

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        self.task.validate(self.cfg)  # every bad value is a one-line ConfigError before any work
        self.opts = ENGINE_SCHEMA.section(self.cfg, "train")  # the train section, typed
        if self._default_hooks:
            self.hooks = default_hooks(self.cfg)
        for h in self.hooks:
            h.trainer = self
        self._check_files()
        self._claim_folder()
        threads_before, benchmark_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
        try:
            self.di = self._dist_given or init_distributed(self.opts.device)
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
        di = self.di
        self.t_start = time.monotonic()
        if di.is_main:
            for f in remove_stale_temp_files(self.run_dir):
                log.info(f"removed {f.name}, left by a save that was killed")
        seed_everything(self.opts.seed, di.rank, deterministic=self.opts.deterministic)
        from botnet.engine.devices import resolve_device_defaults

        for key, (was, now) in resolve_device_defaults(self.cfg, self.task.cuda_defaults, di.device,
                                                       di.world_size).items():
            if di.is_main:
                log.info(f"{key}: {was} -> {now} on {di.device.type}")
        if self.resume:
            self._keep_global_batch()
        self.opts = ENGINE_SCHEMA.section(self.cfg, "train")  # with the device's defaults and a refitted batch
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
            return {"status": "already_finished", "steps": self.step, "epochs": self.opts.epochs,
                    "run_dir": str(self.run_dir)}
        self._wrap()
        if di.is_main and self.overwrite:  # only now: a bad input found above leaves the old run whole
            from botnet.engine.run_folder import clear_run_files

            removed = clear_run_files(self.run_dir)
            if removed:
                log.info(f"--overwrite: removed the previous run's {', '.join(removed)} from {self.run_dir}")
        self.call("before_train")  # (under an elastic launch the first checkpoint is written here, before any file)
        self.logger = MetricsLogger(self.run_dir, enabled=di.is_main, resume=bool(self.resume))
        self._announce()
        try:
            status = self.train_loop(finished)
        except NonFiniteLossError:
            self.logger.close()
            raise
        finally:
            self.call("close")
        return self._finish(status)

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        di, opts, cfg, s = self.di, self.opts, self.cfg, self.setup
        model = s.model
        if self.init_weights:
            ckpt.load_weights(model, self.init_weights)  # strict: every tensor, same shapes, or a one-line error
            if di.is_main:
                log.info(f"initial weights: all {len(model.state_dict())} tensors loaded from {self.init_weights}")
        if opts.sync_bn and di.distributed:
            if di.device.type == "cpu":
                from botnet.errors import ConfigError

                raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); use "
                                  "--freeze-bn or plain BatchNorm on the CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(di.device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        from botnet.engine.optim import build_optimizer
        from botnet.engine.schedule import build_scheduler

        oc = cfg["optim"]
        self.accum = opts.accum_steps
        self.global_batch = int(cfg["data"]["batch_size"]) * self.accum * di.world_size
        lr = float(oc["lr"]) * (self.global_batch / float(oc["lr_base_batch"]) if oc.get("lr_base_batch") else 1.0)
        self.optimizer = build_optimizer(model, oc, lr)
        if isinstance(s.train_loader, torch.utils.data.DataLoader) and s.train_loader.generator is None:
            # each epoch's iterator draws a seed from the loader's generator, else from the global RNG: a resumed
            # run would draw it mid-epoch and shift every random number after it (the task's augmentation)
            s.train_loader.generator = torch.Generator().manual_seed(opts.seed)
        self.spe = len(s.train_loader) // self.accum  # optimizer steps per epoch: floor(items / global batch)
        self.epochs = opts.epochs
        self.planned_steps = int(round(self.epochs * self.spe))
        self.scheduler = build_scheduler(self.optimizer, cfg["sched"], self.spe, self.epochs)
        self.amp = str(opts.amp or "none")
        self.scaler = torch.amp.GradScaler(di.device.type, enabled=(self.amp == "fp16"))
        self.ema = None
        if opts.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=opts.ema_decay, use_warmup=opts.ema_warmup)
        # where the run is: start_epoch / skip_batches come from a resumed checkpoint
        self.start_epoch, self.step, self.skip_batches = 0, 0, 0
        self.epoch, self.batch_in_epoch, self.epoch_steps = 0, 0, self.spe
        self.total_steps = self.planned_steps  # a hook may refit it (the time budget)
        self.max_steps = opts.max_steps
        self.history_seconds, self.train_seconds, self.step_seconds = 0.0, 0.0, 0.0
        self.loss_value, self.stop_reason = math.nan, None
        self.skipped = list(s.skipped_train)

    def _keep_global_batch(self) -> None:
        """A run resumed on another number of processes keeps the global batch it was saved with: the
        per-process batch and the accumulation steps are refitted (the batch never above ``data.batch_size``),
        so the steps, the schedule and the order of the samples stay those of the run (docs/classification.md)."""
        ex = (getattr(self, "resume_meta", None) or {}).get("extra") or {}
        saved, was = ex.get("global_batch"), ex.get("world_size")
        world, batch = self.di.world_size, int(self.cfg["data"]["batch_size"])
        accum = int(self.cfg["train"].get("accum_steps") or 1)
        if not saved or was == world or batch * accum * world == saved:
            return  # same processes (a batch given anew is the user's), or a checkpoint that does not record them
        batch, accum = fit_global_batch(saved, world, batch, what=f"resume {self.run_dir}")
        self.cfg["data"]["batch_size"], self.cfg["train"]["accum_steps"] = batch, accum
        if self.di.is_main:
            log.info(f"resuming on {world} process(es) (saved on {was}): global batch {saved} kept as {world} x "
                     f"batch {batch} x {accum} accumulation step(s)")

    def _restore(self) -> bool:
        """Load the checkpoint to resume; True when all of that run's steps are done."""
        st = ckpt.load_checkpoint(self.resume_path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                  ema=self.ema, scaler=self.scaler if self.scaler.is_enabled() else None,
                                  rank=self.di.rank)
        if not st["rng_restored"]:  # a rank the save had no stream for (more processes now): a seeded one
            seed_everything(self.opts.seed + int(st["step"]), self.di.rank, deterministic=self.opts.deterministic)
        ex = st["extra"]
        self.start_epoch, self.step = int(ex.get("epoch", st["epoch"])), int(st["step"])
        self.skip_batches = int(ex.get("batch_in_epoch", 0))
        for h in self.hooks:
            h.load_state_dict(ex)
        self.history_seconds = float(ex.get("train_seconds", 0.0))
        if self.skip_batches > self.spe:  # the schema cannot know the epoch's length; the run does (== : epoch done)
            raise CheckpointError(
                f"training state {state_path_for(self.resume_path)}: extra.batch_in_epoch is "
                f"{self.skip_batches}, but an epoch of this run has {self.spe} steps; the file is damaged, or the "
                f"data changed since the save: resume with the same data, or start from its weights with "
                f"--init-weights {self.resume_path}")
        max_steps = self.opts.max_steps or 0
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
        if self.opts.compile:
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

    # ------------------------------------------------------------------ state, checkpoints, hooks
    def hook(self, kind: type) -> Hook | None:
        """The run's hook of this class, if it has one."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    def call(self, event: str, *args) -> None:
        for h in self.hooks:
            getattr(h, event)(*args)

    def stop(self, reason: str) -> None:
        """Stop after the current step (or epoch end) with ``reason`` as the run's status."""
        self.stop_reason = self.stop_reason or reason

    def state_dict(self) -> dict[str, Any]:
        """What a resumable checkpoint records of the run besides model, optimizer, schedule, EMA and scaler:
        the trainer's position and every hook's state (one ``extra`` mapping)."""
        state = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                 "train_seconds": self.history_seconds + self.train_seconds, "world_size": self.di.world_size,
                 "global_batch": self.global_batch}
        for h in self.hooks:
            state.update(h.state_dict())
        return state

    def save(self, name: str, epoch_idx: int, batch_in_epoch: int, weights_only: nn.Module | None = None,
             extra_more: dict | None = None) -> None:
        rank_rng = None
        if weights_only is None and self.di.distributed:  # every rank calls a resumable save: each keeps its stream
            rank_rng = gather_object(get_rng_state())
        if not self.di.is_main:
            return
        extra = {**self.state_dict(), "epoch": epoch_idx, "batch_in_epoch": batch_in_epoch, **self.setup.meta,
                 **(extra_more or {})}
        common = dict(epoch=epoch_idx, step=self.step, arch=self.setup.arch, model_kwargs=self.setup.model_kwargs,
                      class_names=self.setup.class_names, config=self.cfg, extra=extra, task=self.task.name)
        path = self.run_dir / f"{name}.safetensors"
        if weights_only is not None:
            ckpt.save_checkpoint(path, weights_only, save_state=False, **common)
        else:
            ckpt.save_checkpoint(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema,
                                 scaler=self.scaler if self.scaler.is_enabled() else None, rank_rng=rank_rng, **common)

    def set_train_mode(self) -> None:
        self.train_model.train()
        if self.opts.freeze_bn:  # running statistics stay as they are; the affine parameters still train
            for m in self.train_model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def epoch_value(self) -> float:
        return round(self.epoch + self.batch_in_epoch / self.spe, 4) if self.spe else 0.0

    def steps_to_run(self) -> int:
        """Steps this run will take: the schedule's (fitted to the budget, if any), or --max-steps if fewer."""
        return min(self.total_steps, self.max_steps) if self.max_steps else self.total_steps

    def epoch_label(self, epoch: int) -> str:
        """``epoch k/N``, N the epochs the run will reach (after a budget fit: the fitted ones, not the config's)."""
        return f"epoch {epoch + 1}/{max(math.ceil(self.steps_to_run() / max(self.spe, 1)), epoch + 1)}"

    # ------------------------------------------------------------------ the loop
    def train_loop(self, finished: bool = False) -> str:
        """The epochs; ``finished``: every step was done before a restart, only the final evaluation is left."""
        if finished:
            return "completed" if self.step >= self.planned_steps else "max_steps"
        with GracefulInterrupt() as self.interrupt:
            for epoch in range(self.start_epoch, math.ceil(self.epochs)):
                if self.step >= self.total_steps:
                    break
                self.epoch = epoch
                self._start_epoch(epoch)
                self.epoch_steps = min(self.spe, self.total_steps - epoch * self.spe)
                self.call("before_epoch", epoch)
                self.run_epoch(epoch)
                self.call("after_epoch", epoch)
                if self.stop_reason or self.step >= self.total_steps:
                    break
        return self.stop_reason or "completed"

    def run_epoch(self, epoch: int) -> None:
        """The steps of one epoch (or of what is left of it)."""
        loader = self.setup.train_loader
        micro = 0
        for batch in loader:
            if micro == 0:
                t_step = time.monotonic()
            with self._grad_sync(micro + 1 == self.accum):  # DDP reduces the gradients once per step
                with autocast(self.di.device, self.amp):
                    out = self.task.train_step(self.train_model, batch, self.di.device, self.setup)
                if out is None:
                    continue
                self.skipped += out.skipped
                micro += 1
                out = self._backward(out, micro)
            if micro < self.accum:
                continue
            micro = 0
            self._optimizer_step(epoch)
            self.batch_in_epoch += 1
            self.step_seconds = time.monotonic() - t_step
            self.train_seconds += self.step_seconds
            self.call("after_step", out)
            if self.stop_reason or self.batch_in_epoch >= self.epoch_steps:
                break

    def _start_epoch(self, epoch: int) -> None:
        """Where the epoch starts: its shuffled order, and the batches a resumed run already took."""
        loader = self.setup.train_loader
        loader.sampler.set_epoch(epoch)
        self.batch_in_epoch = 0
        if self.skip_batches:
            # this rank's share of the samples the run's steps took (global batch / processes each): the same
            # place in the epoch's order on any number of processes (ResumableSampler)
            loader.sampler.skip(self.skip_batches * self.accum * int(self.cfg["data"]["batch_size"]))
            self.batch_in_epoch, self.skip_batches = self.skip_batches, 0
        self.set_train_mode()

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
            self.loss_value = loss_v
            return out
        if micro == 1:
            self._acc = {"loss": 0.0, "n": 0, "metrics": {}}
        acc = self._acc
        acc["loss"] += loss_v
        acc["n"] += out.batch_size
        for k, v in out.metrics.items():  # counts add up over the step's batches
            acc["metrics"][k] = acc["metrics"].get(k, 0) + v
        self.loss_value = acc["loss"] / self.accum  # NaN / inf in any batch stays in the mean
        return StepOutput(out.losses, batch_size=acc["n"], metrics=dict(acc["metrics"]))

    def _optimizer_step(self, epoch: int) -> None:
        """The update after the step's backward passes; the stop decision (Ctrl-C, a hook's, max steps) is taken
        on every rank alike."""
        loss_v = self.loss_value
        flags = self._stop_flags(loss_v)
        if self.di.distributed:
            flags = reduce_dict(flags, op="max")
        if flags["nonfinite"]:
            self._nonfinite(loss_v, epoch)
        opt, scaler = self.optimizer, self.scaler
        if self.opts.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.grad_clip)
        scaler.step(opt)
        scaler.update()
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        if flags["interrupt"]:
            self.stop("interrupted")
        for i, h in enumerate(self.hooks):
            if flags[f"hook{i}"]:
                self.stop(h.stop_reason)
        if self.max_steps and self.step >= self.max_steps:
            self.stop("max_steps")

    def _stop_flags(self, loss_v: float) -> dict[str, float]:
        """This rank's reasons to stop, one key per reason and per hook whatever their answers, so every rank
        reduces the same keys (a key only where a hook wants to stop would make the ranks' tensors differ)."""
        flags = {"nonfinite": float(not math.isfinite(loss_v)), "interrupt": float(self.interrupt.requested)}
        flags.update({f"hook{i}": float(bool(h.wants_stop())) for i, h in enumerate(self.hooks)})
        return flags

    def _nonfinite(self, loss_v: float, epoch: int) -> None:
        self.call("close")
        last = self.run_dir / "last.safetensors"
        hint = f"Last good checkpoint: {last}" if last.is_file() else "No checkpoint had been written yet."
        err = NonFiniteLossError(loss_v, self.step + 1, epoch + 1, hint=hint)
        if self.di.is_main:
            _write_json(self.run_dir / "summary.json", {"status": "nonfinite_loss", "message": str(err),
                                                        "step": self.step, "epoch": epoch,
                                                        "best": self.hook(EvalHook).best if self.hook(EvalHook)
                                                        else None})
        raise err

    # ------------------------------------------------------------------ the end
    def _finish(self, status: str) -> dict[str, Any]:
        di, s = self.di, self.setup
        epoch_value = round(self.step / self.spe, 4) if self.spe else 0.0
        if status == "interrupted" and di.is_main:
            log.info(f"interrupted at step {self.step}: checkpoint saved to {self.run_dir / 'last.safetensors'}; "
                     f"continue with --resume {self.run_dir}")
        evals = self.hook(EvalHook)
        self.call("after_train", status)  # the final evaluation (EvalHook), then the plots
        final = evals.final if evals is not None else None
        summary: dict[str, Any] = {
            "status": status, "task": self.task.name, "arch": s.arch, "model_kwargs": s.model_kwargs,
            # the epochs the schedule ran to: the config's, or those the time budget fitted it to
            "steps": self.step, "epochs": epoch_value,
            "epochs_planned": round(self.total_steps / self.spe, 4) if self.spe else self.epochs,
            "train_seconds": round(self.history_seconds + self.train_seconds, 2),
            "wall_seconds": round(time.monotonic() - self.t_start, 2), "world_size": di.world_size,
            "global_batch": self.global_batch, "best": evals.best if evals is not None else None,
            "run_dir": str(self.run_dir), "skipped_train_files": len(self.skipped),
            "skipped_train_examples": self.skipped[:20], "command": command_line(),
            "hardware": describe_machine(di.device), "device": str(di.device), "threads": torch.get_num_threads(),
        }
        if final is not None:
            summary["final"] = {k: scalars(v) for k, v in final.items()}
        if di.is_main:
            if final is not None:
                summary.update(self.task.finalize(self.run_dir, s, final, self.logger.records, self.cfg) or {})
            _write_json(self.run_dir / "summary.json", summary)
            if self.skipped:
                shown = ", ".join(str(f) for f in self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
                log.warning(f"skipped {len(self.skipped)} unreadable training file(s): {shown} (listed in summary.json)")
        self.logger.close()
        barrier()
        return summary
