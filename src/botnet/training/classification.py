"""Image-classification training and evaluation (single process, or DDP under ``torchrun``).

``train(cfg)`` runs a whole job from a config dict (``botnet.training.config.load_config``):
data (checked before anything trains), model from ``botnet.create_model``, timm optimizer and
scheduler factories, optional timm mixup/cutmix, label smoothing, EMA (timm ``ModelEmaV3``,
evaluated beside the raw weights), autocast (bf16/fp16), gradient clipping, channels_last,
``torch.compile``, SyncBatchNorm, tqdm progress with loss / lr / images per second, metrics to
TensorBoard/JSONL/CSV, checkpoints every epoch (and every N steps), exact resume, a wall-clock
budget, NaN/inf detection and clean Ctrl-C. At the end it writes PNG curves and a confusion
matrix and ``summary.json`` into the run directory.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from botnet.training import checkpoint as ckpt
from botnet.training.distributed import (DistInfo, any_rank_true, barrier, cleanup, init_distributed, reduce_dict,
                                         seed_everything)
from botnet.training.guards import GracefulInterrupt, NonFiniteLossError
from botnet.training.logger import MetricsLogger

__all__ = ["build_model", "model_from_checkpoint", "evaluate", "train", "TrainResult"]

TrainResult = dict


# ----------------------------------------------------------------------------- model
def model_kwargs_from_cfg(cfg: dict, num_classes: int, in_chans: int) -> dict[str, Any]:
    m = cfg["model"]
    kw: dict[str, Any] = {"num_classes": int(m["num_classes"] or num_classes), "in_chans": int(in_chans),
                          "img_size": int(m["img_size"] or cfg["data"]["img_size"])}
    if m.get("drop_rate"):
        kw["drop_rate"] = float(m["drop_rate"])
    if m.get("drop_path_rate"):
        kw["drop_path_rate"] = float(m["drop_path_rate"])
    kw.update(m.get("kwargs") or {})
    return kw


def build_model(arch: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """``botnet.create_model(arch, **model_kwargs)``, tagged with ``botnet_arch`` for error messages."""
    import botnet

    model = botnet.create_model(arch, **model_kwargs)
    model.botnet_arch = arch
    return model


def model_from_checkpoint(path: str | os.PathLike, use_ema: bool = False,
                          device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained with (from its metadata) and load its weights."""
    from botnet.errors import resolve_device

    device = resolve_device(str(device))
    wpath = ckpt.resolve_checkpoint(path)
    meta = ckpt.read_metadata(wpath)
    if meta.get("format") != "botnet-checkpoint-v1" or not meta.get("arch"):
        raise ckpt.CheckpointError(f"{wpath} is not a botnet training checkpoint (no architecture metadata); "
                                   f"build the model yourself and use botnet.training.checkpoint.load_weights")
    kwargs = meta.get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise ckpt.CheckpointError(f"{wpath} has corrupt model_kwargs metadata ({kwargs!r})")
    try:
        model = build_model(meta["arch"], kwargs)
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{wpath} describes a model this botnet cannot build "
                                   f"({meta['arch']}, {kwargs}): {' '.join(str(e).split())}") from None
    ckpt.load_weights(model, wpath, use_ema=use_ema)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------- helpers
def total_steps_planned(epochs: float, steps_per_epoch: int) -> int:
    return int(round(float(epochs) * steps_per_epoch))


def _autocast(device: torch.device, amp: str):
    if amp in (None, "none", "fp32", False):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _unpack(batch):
    if len(batch) == 3:  # folder collate: (x, y, skipped paths)
        return batch
    x, y = batch
    return x, y, []


def _fmt_rate(n: float, dt: float) -> float:
    return n / dt if dt > 0 else 0.0


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, amp: str = "none",
             channels_last: bool = False, progress: bool = False, desc: str = "eval") -> dict[str, Any]:
    """Top-1/top-5 accuracy (%), mean cross-entropy and the confusion matrix, reduced over ranks.

    Every rank evaluates its shard (``ShardSampler``: no padding), sums are all-reduced, so the
    numbers are exact over the whole split. Returns ``{"top1", "top5", "loss", "n", "confusion",
    "skipped", "images_per_s"}``.
    """
    from tqdm import tqdm

    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, c1, c5, n, skipped = 0.0, 0, 0, 0, []
    t0 = time.perf_counter()
    it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for batch in it:
        x, y, bad = _unpack(batch)
        skipped += list(bad)
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        k = min(5, out.shape[1])
        topk = out.topk(k, dim=1).indices
        c1 += (topk[:, 0] == y).sum().item()
        c5 += (topk == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
        cm += torch.bincount((y * num_classes + topk[:, 0]).cpu(), minlength=num_classes * num_classes).view(
            num_classes, num_classes)
        if progress:
            it.set_postfix(top1=f"{100.0 * c1 / max(n, 1):.2f}")
    dt = time.perf_counter() - t0
    tot = reduce_dict({"loss": loss_sum, "c1": c1, "c5": c5, "n": n, "skipped": len(skipped)}, op="sum")
    from botnet.training.distributed import all_reduce_tensor, is_distributed

    if is_distributed():
        from botnet.training.distributed import get_dist_info

        dev = get_dist_info().device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        cmd = cm.to(dev)
        all_reduce_tensor(cmd)
        cm = cmd.cpu()
    nt = max(tot["n"], 1)
    return {"top1": 100.0 * tot["c1"] / nt, "top5": 100.0 * tot["c5"] / nt, "loss": tot["loss"] / nt,
            "n": int(tot["n"]), "confusion": cm.numpy(), "skipped": skipped, "n_skipped": int(tot["skipped"]),
            "images_per_s": _fmt_rate(n, dt), "seconds": dt}


# ----------------------------------------------------------------------------- train
def _run_dir(cfg: dict) -> Path:
    return Path(cfg["output"]["dir"] or os.path.join("runs", cfg["name"]))


def _write_json(path: Path, data: dict) -> None:
    ckpt.atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def train(cfg: dict, resume: str | os.PathLike | None = None, init_weights: str | os.PathLike | None = None,
          dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Run one training job; returns the summary dict (also written to ``RUN/summary.json``).

    Raises:
        botnet.data.DataError / DatasetNotFoundError: bad or missing data, before training starts.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    from botnet.training.config import validate_config

    validate_config(cfg)  # every bad value is a one-line ConfigError before any work
    own_dist = dist_info is None
    di = dist_info or init_distributed(cfg["train"]["device"])
    try:
        return _train(cfg, di, resume, init_weights)
    finally:
        if own_dist:
            cleanup()


def _train(cfg: dict, di: DistInfo, resume, init_weights) -> dict[str, Any]:
    from tqdm import tqdm

    from botnet.data.builder import build_datasets, build_eval_loader, build_train_loader

    t_start = time.monotonic()
    tc, dc = cfg["train"], cfg["data"]
    run_dir = _run_dir(cfg)
    budget = float(tc["time_budget"]) if tc["time_budget"] else None
    # files first: a bad --resume / --init-weights / --output is found before the data is read
    if resume:
        ckpt.check_resumable(resume)
    if init_weights:  # read now (tensors only); whether they fit is checked once the model exists
        p = Path(init_weights)
        ckpt._read_weights(p if p.suffix in (".pt", ".pth", ".bin") else ckpt.resolve_checkpoint(p))
    if di.is_main:
        ckpt.check_output_dir(run_dir)
        for f in ckpt.remove_stale_temp_files(run_dir):
            print(f"removed {f.name}, left by a save that was killed")
    seed_everything(int(tc["seed"]), di.rank, deterministic=bool(tc["deterministic"]))

    # ---- data (validated before any training)
    train_ds, val_ds, info = build_datasets(cfg, train=True, val=True)
    if len(train_ds) < dc["batch_size"] * di.world_size:
        from botnet.data.errors import DataError

        raise DataError(f"the training set has {len(train_ds)} images, fewer than one global batch "
                        f"({dc['batch_size']} x {di.world_size} process(es)); lower --batch-size")
    if di.is_main:
        for split, ds in (("training", train_ds), ("validation", val_ds)):
            bad = getattr(ds, "bad_files", [])
            if bad:
                print(f"--skip-bad: leaving out {len(bad)} unreadable {split} file(s), e.g. {bad[0][0]}: {bad[0][1]}")
    train_loader = build_train_loader(train_ds, cfg, di.rank, di.world_size)
    val_loader = build_eval_loader(val_ds, cfg, di.rank, di.world_size)
    spe = len(train_loader)
    num_classes = len(info.classes)

    # ---- model
    arch = cfg["model"]["name"]
    mkw = model_kwargs_from_cfg(cfg, num_classes, info.in_chans)
    if mkw["num_classes"] != num_classes:
        from botnet.errors import ConfigError

        raise ConfigError(f"model.num_classes={mkw['num_classes']} but the data has {num_classes} classes")
    model = build_model(arch, mkw)
    if init_weights:
        ckpt.load_weights(model, init_weights)
    if tc["sync_bn"] and di.distributed:
        if di.device.type == "cpu":
            from botnet.errors import ConfigError

            raise ConfigError("train.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                             "use --freeze-bn or plain BatchNorm on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(di.device)
    if tc["channels_last"]:
        model = model.to(memory_format=torch.channels_last)

    # ---- optimisation
    from timm.optim import create_optimizer_v2

    oc = cfg["optim"]
    global_bs = dc["batch_size"] * di.world_size
    lr = float(oc["lr"]) * (global_bs / float(oc["lr_base_batch"]) if oc.get("lr_base_batch") else 1.0)
    okw: dict[str, Any] = {}
    if oc["name"] in ("sgd", "momentum", "nesterov"):
        okw = {"momentum": float(oc["momentum"]), "nesterov": bool(oc["nesterov"])}
    optimizer = create_optimizer_v2(model, opt=oc["name"], lr=lr, weight_decay=float(oc["weight_decay"]),
                                    filter_bias_and_bn=bool(oc["filter_bias_and_bn"]), **okw)
    from botnet.training.schedule import build_scheduler

    epochs = float(tc["epochs"])
    scheduler = build_scheduler(optimizer, cfg["sched"], spe, epochs)
    amp = str(tc["amp"] or "none")
    scaler = torch.amp.GradScaler(di.device.type, enabled=(amp == "fp16"))
    ema = None
    if tc["ema"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=float(tc["ema_decay"]), use_warmup=bool(tc["ema_warmup"]))
    mixup_fn = None
    if float(tc["mixup"] or 0) > 0 or float(tc["cutmix"] or 0) > 0:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=float(tc["mixup"] or 0), cutmix_alpha=float(tc["cutmix"] or 0),
                         label_smoothing=float(tc["label_smoothing"] or 0), num_classes=num_classes)
        from timm.loss import SoftTargetCrossEntropy

        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=float(tc["label_smoothing"] or 0))

    # ---- resume
    start_epoch, step, skip_batches, best = 0, 0, 0, {"top1": -1.0, "which": None, "step": 0}
    history_elapsed = 0.0
    if resume:
        st = ckpt.load_checkpoint(resume, model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                  scaler=scaler if scaler.is_enabled() else None, restore_rng=True)
        ex = st["extra"]
        start_epoch, step, skip_batches = int(ex.get("epoch", st["epoch"])), int(st["step"]), int(ex.get("batch_in_epoch", 0))
        best = ex.get("best", best)
        history_elapsed = float(ex.get("train_seconds", 0.0))
        if step >= total_steps_planned(epochs, spe):
            if di.is_main:
                print(f"run {run_dir} is already finished ({step} steps = {epochs:g} epochs of {spe} steps); nothing "
                      f"was changed. To train longer, start a new run from its weights: --init-weights "
                      f"{ckpt.resolve_checkpoint(resume, prefer=('last',))} --output NEW_DIR")
            return {"status": "already_finished", "steps": step, "epochs": float(epochs), "run_dir": str(run_dir)}
        if di.is_main:
            print(f"resumed from {ckpt.resolve_checkpoint(resume, prefer=('last',))}: epoch {start_epoch}, step {step}"
                  + (f", {skip_batches} batches into the epoch" if skip_batches else ""))

    # ---- wrappers
    train_model: nn.Module = model
    if di.distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=di.device_ids)
    if tc["compile"]:
        train_model = torch.compile(train_model)

    logger = MetricsLogger(run_dir, enabled=di.is_main, resume=bool(resume))
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", cfg)
        logger.add_text("config", "```\n" + json.dumps(cfg, indent=2, default=str) + "\n```")
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model {arch} ({n_params / 1e6:.3f} M parameters) | {len(train_ds)} train / {len(val_ds)} val images, "
              f"{num_classes} classes | {di.world_size} process(es) x batch {dc['batch_size']} | {spe} steps/epoch "
              f"| device {di.device} | run dir {run_dir}")

    meta_common = dict(arch=arch, model_kwargs=mkw, class_names=info.classes, config=cfg)

    def save(name: str, epoch_idx: int, batch_in_epoch: int, weights_only_model: nn.Module | None = None,
             extra_more: dict | None = None) -> Path | None:
        if not di.is_main:
            return None
        extra = {"epoch": epoch_idx, "batch_in_epoch": batch_in_epoch, "best": best,
                 "train_seconds": history_elapsed + train_seconds, **(extra_more or {})}
        if weights_only_model is not None:
            return ckpt.save_checkpoint(run_dir / f"{name}.safetensors", weights_only_model, epoch=epoch_idx, step=step,
                                        extra=extra, save_state=False, **meta_common)
        return ckpt.save_checkpoint(run_dir / f"{name}.safetensors", model, optimizer=optimizer, scheduler=scheduler,
                                    ema=ema, scaler=scaler if scaler.is_enabled() else None, epoch=epoch_idx,
                                    step=step, extra=extra, **meta_common)

    def run_eval(epoch_value: float) -> dict[str, Any]:
        nonlocal best, eval_seconds
        t0 = time.monotonic()
        res = evaluate(model, val_loader, di.device, num_classes, amp, tc["channels_last"],
                       progress=bool(tc["progress"]) and di.is_main, desc="eval")
        rec = {k: res[k] for k in ("top1", "top5", "loss")}
        out = {"raw": res}
        if ema is not None:
            eres = evaluate(ema.module, val_loader, di.device, num_classes, amp, tc["channels_last"],
                            progress=bool(tc["progress"]) and di.is_main, desc="eval EMA")
            rec.update({"ema_top1": eres["top1"], "ema_top5": eres["top5"], "ema_loss": eres["loss"]})
            out["ema"] = eres
        eval_seconds += time.monotonic() - t0
        logger.log(rec, step=step, phase="val", epoch=epoch_value)
        cand = max(out, key=lambda k: out[k]["top1"])
        if out[cand]["top1"] > best["top1"]:
            best = {"top1": out[cand]["top1"], "which": cand, "step": step, "epoch": epoch_value}
            save("best", math.ceil(epoch_value), 0, weights_only_model=model if cand == "raw" else ema.module,
                 extra_more={"weights": cand, "val": rec})
        if di.is_main:
            msg = f"epoch {epoch_value:.2f} step {step}: val top-1 {res['top1']:.2f}% top-5 {res['top5']:.2f}% loss {res['loss']:.4f}"
            if ema is not None:
                msg += f" | EMA top-1 {out['ema']['top1']:.2f}%"
            print(msg, flush=True)
        _set_train_mode(model, bool(tc["freeze_bn"]))
        return out

    # ---- loop
    status = "completed"
    train_seconds, eval_seconds, n_evals = 0.0, 0.0, 0
    step_at_start = step
    max_steps = int(tc["max_steps"]) if tc["max_steps"] else None
    total_steps = total_steps_planned(epochs, spe)
    last_eval: dict[str, Any] | None = None
    last_eval_step = -1
    skipped_train: list[str] = [p for p, _ in getattr(train_ds, "bad_files", [])]  # found by the pre-check
    fit_checked_at = step
    n_epochs_int = math.ceil(epochs)
    eval_every = int(tc["eval_every"] or 0)
    ips = 0.0

    planned_steps = total_steps
    recent_steps: "collections.deque[float]" = collections.deque(maxlen=100)

    def fit_schedule_to_budget() -> None:
        """Fit the decay to the wall-clock budget (never beyond the planned epochs).

        Uses the mean duration of the last 100 steps, so early slow steps (warm-up, thread
        probing) or a machine that gets busier/quieter are followed within a few dozen steps.
        """
        nonlocal total_steps
        elapsed = time.monotonic() - t_start
        per_step = sum(recent_steps) / max(len(recent_steps), 1)
        if n_evals:
            per_eval = eval_seconds / n_evals
        else:  # not measured yet: evaluation runs about 3x faster per image than training
            per_eval = len(val_ds) / max(ips * 3.0, 1.0) * (2 if ema is not None else 1)
        can_do = step + int(max(budget - elapsed - per_eval - 5, 0) / max(per_step, 1e-9))
        for _ in range(2):  # reserve time for the evaluations those epochs will trigger
            epochs_left = max(math.ceil(can_do / spe) - (step // spe) - 1, 0)
            evals_left = (epochs_left // eval_every if eval_every else 0) + 1
            can_do = step + int(max(budget - elapsed - per_eval * evals_left - 5, 0) / max(per_step, 1e-9))
        target = min(max(int(can_do * 0.97), step + 1), planned_steps)
        if target % spe and target % spe < 0.15 * spe and target - target % spe > step:
            target -= target % spe  # do not start an epoch only to evaluate again a few steps later
        if abs(target - total_steps) > max(0.02 * total_steps, 5) and scheduler.fit_total_steps(target):
            total_steps = target
            if di.is_main:
                tqdm.write(f"time budget {budget:.0f}s: schedule set to {total_steps} steps "
                           f"({total_steps / spe:.2f} epochs; {per_step * 1000:.0f} ms/step)")

    tuner = None
    if di.device.type == "cpu":
        threads = str(tc.get("threads", "auto"))
        if threads == "auto" and not tc["deterministic"]:  # a fixed count keeps runs bitwise repeatable
            from botnet.training.threads import ThreadTuner

            tuner = ThreadTuner(verbose=di.is_main and bool(tc["progress"]))
        elif threads != "auto" and int(threads) > 0:
            torch.set_num_threads(int(threads))

    with GracefulInterrupt() as interrupt:
        stop = False
        for epoch in range(start_epoch, n_epochs_int):
            if stop or step >= total_steps:
                break
            train_loader.sampler.set_epoch(epoch)
            batch_in_epoch = 0
            if skip_batches:
                train_loader.sampler.skip(skip_batches * dc["batch_size"])
                batch_in_epoch, skip_batches = skip_batches, 0
            epoch_steps = min(spe, total_steps - epoch * spe)
            _set_train_mode(train_model, bool(tc["freeze_bn"]))
            bar = tqdm(total=epoch_steps, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{n_epochs_int}",
                       dynamic_ncols=True, disable=not (tc["progress"] and di.is_main), leave=di.is_main)
            meter = {"loss": 0.0, "n": 0, "correct": 0, "seen": 0}
            window_t, window_n, window_loss = time.monotonic(), 0, 0.0
            for batch in train_loader:
                t_step = time.monotonic()
                x, y, bad = _unpack(batch)
                skipped_train += list(bad)
                if x is None:
                    continue
                x, y = x.to(di.device, non_blocking=True), y.to(di.device, non_blocking=True)
                if tc["channels_last"]:
                    x = x.contiguous(memory_format=torch.channels_last)
                y_hard = y
                if mixup_fn is not None:
                    if x.shape[0] % 2:  # timm Mixup needs an even batch
                        x, y, y_hard = x[:-1], y[:-1], y[:-1]
                    x, y = mixup_fn(x, y)
                with _autocast(di.device, amp):
                    out = train_model(x)
                loss = criterion(out.float(), y)
                loss_v = loss.detach().item()
                hit_budget = budget is not None and time.monotonic() - t_start >= budget
                flags = {"nonfinite": float(not math.isfinite(loss_v)), "interrupt": float(interrupt.requested),
                         "budget": float(hit_budget)}
                if di.distributed:  # every rank takes the same decision at the same step
                    flags = reduce_dict(flags, op="max")
                if flags["nonfinite"]:
                    bar.close()
                    last = run_dir / "last.safetensors"
                    hint = (f"Last good checkpoint: {last}" if last.is_file() else "No checkpoint had been written yet.")
                    err = NonFiniteLossError(loss_v, step + 1, epoch + 1, hint=hint)
                    if di.is_main:
                        _write_json(run_dir / "summary.json", {"status": "nonfinite_loss", "message": str(err),
                                                               "step": step, "epoch": epoch, "best": best})
                    logger.close()
                    raise err
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tc["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch_in_epoch += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)
                bs = y_hard.shape[0]
                meter["loss"] += loss_v * bs
                meter["n"] += bs
                if mixup_fn is None:
                    meter["correct"] += (out.detach().argmax(1) == y_hard).sum().item()
                    meter["seen"] += bs
                window_n += bs
                window_loss += loss_v * bs
                dt_step = time.monotonic() - t_step
                train_seconds += dt_step
                recent_steps.append(dt_step)
                if tuner is not None:
                    tuner.after_step(dt_step)
                bar.update(1)
                if step % max(int(tc["log_every"]), 1) == 0 or batch_in_epoch == epoch_steps:
                    now = time.monotonic()
                    ips = window_n * di.world_size / max(now - window_t, 1e-9)
                    lr_now = optimizer.param_groups[0]["lr"]
                    win_loss = window_loss / max(window_n, 1)  # mean over the steps since the last record
                    window_t, window_n, window_loss = now, 0, 0.0
                    bar.set_postfix(loss=f"{win_loss:.4f}", lr=f"{lr_now:.3g}", img_s=f"{ips:.0f}")
                    logger.log({"loss": win_loss, "lr": lr_now, "images_per_s": ips}, step=step, phase="train",
                               epoch=round(epoch + batch_in_epoch / spe, 4))
                if tc["save_every_steps"] and step % int(tc["save_every_steps"]) == 0:
                    save("last", epoch, batch_in_epoch)
                if budget and cfg["sched"].get("fit_time_budget", True) and step - fit_checked_at >= 50 and ips > 0:
                    fit_checked_at = step
                    fit_schedule_to_budget()
                    epoch_steps = min(spe, total_steps - epoch * spe)
                    bar.total = epoch_steps
                    bar.refresh()
                reason = None
                if flags["interrupt"]:
                    reason = "interrupted"
                elif flags["budget"]:
                    reason = "time_budget"
                elif max_steps and step >= max_steps:
                    reason = "max_steps"
                if reason:
                    status, stop = reason, True
                    break
                if batch_in_epoch >= epoch_steps:
                    break
            bar.close()
            if meter["n"]:
                rec = {"train_loss": meter["loss"] / meter["n"]}
                if meter["seen"]:
                    rec["train_top1"] = 100.0 * meter["correct"] / meter["seen"]
                logger.log(rec, step=step, phase="train_epoch", epoch=round(epoch + batch_in_epoch / spe, 4))
            # checkpoint position: a finished epoch continues with the next one
            pos = (epoch + 1, 0) if batch_in_epoch >= spe else (epoch, batch_in_epoch)
            save("last", *pos)
            if stop or step >= total_steps:
                break
            if eval_every and (epoch + 1) % eval_every == 0:
                last_eval, last_eval_step = run_eval(round(epoch + batch_in_epoch / spe, 4)), step
                n_evals += 1
                barrier()
                if budget is not None and time.monotonic() - t_start >= budget:
                    status = "time_budget"
                    break

    # ---- final evaluation
    epoch_value = round(step / spe, 4) if spe else 0.0
    if status == "interrupted":
        if di.is_main:
            print(f"interrupted at step {step}: checkpoint saved to {run_dir / 'last.safetensors'}; "
                  f"continue with --resume {run_dir / 'last.safetensors'}")
        final = None
    else:
        final = last_eval if (last_eval is not None and last_eval_step == step) else run_eval(epoch_value)
    total_wall = time.monotonic() - t_start
    summary: dict[str, Any] = {
        "status": status, "arch": arch, "model_kwargs": mkw, "steps": step, "epochs": epoch_value,
        "train_seconds": round(history_elapsed + train_seconds, 2), "eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(total_wall, 2), "world_size": di.world_size, "global_batch": global_bs,
        "best": best, "run_dir": str(run_dir), "skipped_train_files": len(skipped_train),
        "skipped_train_examples": skipped_train[:20],
    }
    if final is not None:
        summary["final"] = {k: {m: final[k][m] for m in ("top1", "top5", "loss", "n", "n_skipped")} for k in final}
        summary["skipped_val_files"] = int(final["raw"]["n_skipped"])
    if di.is_main:
        if final is not None and tc["plots"]:
            from botnet.training.plots import plot_confusion_matrix, plot_curves

            plot_curves(logger.records, run_dir)
            which = max(final, key=lambda k: final[k]["top1"])
            plot_confusion_matrix(final[which]["confusion"], info.classes, run_dir / "confusion_matrix.png",
                                  title=f"Confusion matrix ({'EMA' if which == 'ema' else 'raw'} weights)")
            np.savetxt(run_dir / "confusion_matrix.csv", final[which]["confusion"], fmt="%d", delimiter=",")
        _write_json(run_dir / "summary.json", summary)
        if skipped_train:
            print(f"skipped {len(skipped_train)} unreadable training files, e.g. {skipped_train[:3]}")
    logger.close()
    return summary

