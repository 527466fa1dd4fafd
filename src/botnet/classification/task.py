"""Image classification as a task of the training engine: data, model, step, evaluation, pictures.

``train(cfg)`` runs ``botnet train`` from a config (:data:`CLASSIFICATION_DEFAULTS` schema):
Fashion-MNIST or an ImageNet-layout folder (checked before training), a model from
``botnet.create_model``, cross-entropy with label smoothing or timm mixup/cutmix. Evaluation gives
top-1/top-5 (%), mean cross-entropy and the confusion matrix, exact over all ranks; the end of a
run writes the confusion matrix (PNG and CSV).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from botnet.classification.config import (CLASSIFICATION_DEFAULTS, attention_grid_warning, model_kwargs_from_cfg,
                                          resolve_classification_config, validate_classification_config)
from botnet.engine.task import StepOutput, Task, TaskSetup

__all__ = ["ClassificationTask", "evaluate", "log_probs", "train"]


def _unpack(batch):
    if len(batch) == 3:  # folder collate: (x, y, skipped paths)
        return batch
    x, y = batch
    return x, y, []


def _build_model(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    from botnet.models import create_model

    return create_model(arch, **kwargs)


def _criterion(loss: dict[str, Any], num_classes: int) -> tuple[Any, nn.Module]:
    """``(timm Mixup or None, criterion)`` of the ``loss`` section: mixup/cutmix give soft targets (smoothed
    by timm's Mixup), else cross-entropy with label smoothing."""
    smoothing = float(loss["label_smoothing"] or 0)
    if float(loss["mixup"] or 0) > 0 or float(loss["cutmix"] or 0) > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        return Mixup(mixup_alpha=float(loss["mixup"] or 0), cutmix_alpha=float(loss["cutmix"] or 0),
                     label_smoothing=smoothing, num_classes=num_classes), SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=smoothing)


class ClassificationTask(Task):
    name = "classification"
    key_metric = "top1"
    loss_label = "cross-entropy"
    config_defaults = CLASSIFICATION_DEFAULTS
    # fixed shapes: cudnn.benchmark tunes once; bf16 + channels_last are what GPUs run fastest
    cuda_defaults = {"amp": "bf16", "channels_last": True, "cudnn_benchmark": True}

    def build_model(self, arch: str, model_kwargs: dict[str, Any]) -> nn.Module:
        return _build_model(arch, model_kwargs)

    def resolve_config(self, cfg: dict, recipe: str | None = None) -> dict[str, str]:
        return resolve_classification_config(cfg, recipe)

    def validate(self, cfg: dict) -> None:
        validate_classification_config(cfg)

    def evaluate_checkpoint(self, model: nn.Module, meta: dict[str, Any], cfg: dict, device: torch.device, *,
                            amp: str = "none", progress: bool = False, desc: str = "eval") -> dict[str, Any]:
        """Accuracy of a trained classifier on the validation split ``cfg`` names (one process), the files its
        header check left out included in ``skipped``; the data's classes must be the checkpoint's."""
        from botnet.data.builder import build_datasets, build_eval_loader
        from botnet.errors import ConfigError

        _, val_ds, info = build_datasets(cfg, train=False, val=True)
        names = list(meta.get("class_names") or info.classes)
        if names != list(info.classes):
            raise ConfigError(f"the checkpoint's classes ({len(names)}) differ from the data's ({len(info.classes)}): "
                              f"{sorted(set(names) ^ set(info.classes))[:10]}")
        res = evaluate(model, build_eval_loader(val_ds, cfg), device, len(names), amp, progress=progress, desc=desc,
                       tta=cfg["data"].get("eval_tta", "none"))
        pre = [p for p, _ in getattr(val_ds, "bad_files", [])]  # left out by the header check (--skip-bad)
        res["skipped"], res["n_skipped"] = pre + list(res["skipped"]), res["n_skipped"] + len(pre)
        res["class_names"] = names
        return res

    def setup(self, cfg: dict, dist) -> TaskSetup:
        from botnet.data.builder import build_datasets, build_eval_loader, build_train_loader
        from botnet.data.errors import DataError
        from botnet.errors import ConfigError

        dc = cfg["data"]
        warning = attention_grid_warning(cfg) if dist.is_main else None  # before the data is read
        if warning:
            from botnet.log import get_logger

            get_logger("classification").warning(warning)
        train_ds, val_ds, info = build_datasets(cfg, train=True, val=True)
        if len(train_ds) < dc["batch_size"] * dist.world_size:
            raise DataError(f"the training set has {len(train_ds)} images, fewer than one global batch "
                            f"({dc['batch_size']} x {dist.world_size} process(es)); lower --batch-size")
        num_classes = len(info.classes)
        mkw = model_kwargs_from_cfg(cfg, num_classes, info.in_chans)
        if mkw["num_classes"] != num_classes:
            raise ConfigError(f"model.num_classes={mkw['num_classes']} but the data has {num_classes} classes")
        self.mixup, self.criterion = _criterion(cfg["loss"], num_classes)
        self.channels_last = bool(cfg["train"]["channels_last"])
        self.batch_transform = getattr(train_ds, "batch_transform", None)  # uint8 batches -> augmented floats
        return TaskSetup(
            model=_build_model(cfg["model"]["name"], mkw), arch=cfg["model"]["name"], model_kwargs=mkw,
            train_loader=build_train_loader(train_ds, cfg, dist.rank, dist.world_size), num_val=len(val_ds),
            class_names=list(info.classes), skipped_train=[p for p, _ in getattr(train_ds, "bad_files", [])],
            eval_passes=2 if dc["eval_tta"] == "hflip" else 1,
            state={"val_loader": build_eval_loader(val_ds, cfg, dist.rank, dist.world_size),
                   "skipped_val": [p for p, _ in getattr(val_ds, "bad_files", [])]},
        )

    def train_step(self, model, batch, device, setup) -> StepOutput | None:
        x, y, bad = _unpack(batch)
        if x is None:
            return None
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.batch_transform is not None:
            x = self.batch_transform(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y_hard = y
        if self.mixup is not None:
            if x.shape[0] % 2:  # timm Mixup needs an even batch
                x, y, y_hard = x[:-1], y[:-1], y[:-1]
            x, y = self.mixup(x, y)
        out = model(x)
        loss = self.criterion(out.float(), y)
        correct = None if self.mixup is not None else int((out.detach().argmax(1) == y_hard).sum())
        return StepOutput({"loss": loss}, batch_size=int(y_hard.shape[0]),
                          metrics={} if correct is None else {"correct": correct}, skipped=list(bad))

    def evaluate(self, model, setup, cfg, dist, desc: str = "eval") -> dict[str, Any]:
        tc = cfg["train"]
        res = evaluate(model, setup.state["val_loader"], dist.device, len(setup.class_names), tc["amp"],
                       tc["channels_last"], progress=bool(tc["progress"]) and dist.is_main, desc=desc,
                       tta=cfg["data"]["eval_tta"])
        return {"top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "n": res["n"],
                "n_skipped": res["n_skipped"], "_confusion": res["confusion"]}

    def describe(self, m: dict[str, Any]) -> str:
        return f"top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f}"

    def finalize(self, run_dir: Path, setup: TaskSetup, final, records, cfg) -> dict[str, Any]:
        if not cfg["train"]["plots"]:
            return {}
        from botnet.viz.plots import plot_confusion_matrix

        which = max(final, key=lambda k: final[k]["top1"])
        cm = final[which]["_confusion"]
        plot_confusion_matrix(cm, setup.class_names, run_dir / "confusion_matrix.png",
                              title=f"Confusion matrix ({'EMA' if which == 'ema' else 'raw'} weights)")
        np.savetxt(run_dir / "confusion_matrix.csv", cm, fmt="%d", delimiter=",")
        return {"skipped_val_files": int(final["raw"]["n_skipped"])}


def log_probs(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Class log-probabilities ``(B, K)``, float32. ``tta="hflip"``: of the mean of the probabilities of
    ``x`` and of its mirror image (the flip the training augmentation uses), at twice the cost."""
    out = model(x).float().log_softmax(1)
    if tta == "hflip":
        out = torch.logaddexp(out, model(x.flip(-1)).float().log_softmax(1)) - math.log(2.0)
    elif tta != "none":
        raise ValueError(f"unknown test-time augmentation {tta!r}; use none or hflip")
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, num_classes: int, amp: str = "none",
             channels_last: bool = False, progress: bool = False, desc: str = "eval", tta: str = "none") -> dict[str, Any]:
    """Top-1/top-5 accuracy (%), mean cross-entropy and the confusion matrix, reduced over ranks.

    Every rank evaluates its shard (``ShardSampler``: no padding), sums are all-reduced, so the
    numbers are exact over the whole split. Returns ``{"top1", "top5", "loss", "n", "confusion",
    "skipped", "n_skipped", "images_per_s", "seconds"}``.
    """
    from tqdm import tqdm

    from botnet.engine.distributed import all_reduce_tensor, get_dist_info, is_distributed, reduce_dict
    from botnet.log import progress_enabled
    from botnet.engine.trainer import autocast

    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, c1, c5, n, skipped = 0.0, 0, 0, 0, []
    t0 = time.perf_counter()
    it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress_enabled(progress))
    for batch in it:
        x, y, bad = _unpack(batch)
        skipped += list(bad)
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = log_probs(model, x, tta)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        topk = out.topk(min(5, out.shape[1]), dim=1).indices
        c1 += (topk[:, 0] == y).sum().item()
        c5 += (topk == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
        cm += torch.bincount((y * num_classes + topk[:, 0]).cpu(), minlength=num_classes * num_classes).view(
            num_classes, num_classes)
        if progress:
            it.set_postfix(top1=f"{100.0 * c1 / max(n, 1):.2f}")
    dt = time.perf_counter() - t0
    tot = reduce_dict({"loss": loss_sum, "c1": c1, "c5": c5, "n": n, "skipped": len(skipped)}, op="sum")
    if is_distributed():
        dev = get_dist_info().device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        cmd = cm.to(dev)
        all_reduce_tensor(cmd)
        cm = cmd.cpu()
    nt = max(tot["n"], 1)
    return {"top1": 100.0 * tot["c1"] / nt, "top5": 100.0 * tot["c5"] / nt, "loss": tot["loss"] / nt,
            "n": int(tot["n"]), "confusion": cm.numpy(), "skipped": skipped, "n_skipped": int(tot["skipped"]),
            "images_per_s": n / dt if dt > 0 else 0.0, "seconds": dt}


def train(cfg: dict, resume=None, init_weights=None, dist_info=None, overwrite: bool = False) -> dict[str, Any]:
    """Run one classification job; returns the summary (also in ``RUN/summary.json``).

    ``cfg``: :data:`CLASSIFICATION_DEFAULTS` with the run's values; the ones left ``None`` are filled
    first (:func:`~botnet.classification.config.resolve_classification_config`), the run's name too."""
    from botnet.engine.trainer import Trainer

    return Trainer(ClassificationTask(), cfg, resume=resume, init_weights=init_weights, dist_info=dist_info,
                   overwrite=overwrite).run()
