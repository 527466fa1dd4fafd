"""Detection training / evaluation / prediction loops (used by ``botnet detect``).

Reuses the shared training engine: :mod:`botnet.training.distributed` (torchrun / DDP, gloo on
CPU), :mod:`botnet.training.checkpoint` (atomic safetensors weights + resumable state),
:mod:`botnet.training.logger` (TensorBoard + JSONL + CSV), :mod:`botnet.training.guards`
(non-finite loss, graceful Ctrl-C) and :mod:`botnet.training.config` (YAML recipe + ``--set``).

A run directory holds ``config.yaml``, ``last.safetensors`` (+ ``last.state.safetensors``),
``best.safetensors`` (best box AP, or mask AP for Mask R-CNN), ``metrics.jsonl/csv``, ``tb/``,
``eval.json`` + ``eval.md`` (COCO metrics of the final model on the val split) and
``predictions/*.png`` (drawn val predictions).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from botnet.training.config import load_config, merge

__all__ = [
    "DETECTION_DEFAULTS",
    "load_detection_config",
    "build_datasets",
    "build_model_from_config",
    "load_detector",
    "train_detector",
    "evaluate_detector",
    "predict_images",
    "draw_predictions",
]

DETECTION_DEFAULTS: dict[str, Any] = {
    "name": "detect",
    "out_dir": "runs/detect",
    "data": {
        "dataset": "fashion-mosaic",  # fashion-mosaic | coco
        "root": "data/fashion-mosaic",  # mosaic: generated here if missing; coco: base for relative paths
        "train_images": None, "train_ann": None,  # coco: image folder and instances JSON
        "val_images": None, "val_ann": None,
        "strict": False,            # raise instead of warn when the validation pass drops records
        "remove_empty": False,      # drop training images without annotations
        "mosaic": {"num_train": 512, "num_val": 128, "canvas": 160, "min_items": 2, "max_items": 5,
                   "min_item_size": 28, "max_item_size": 72, "max_overlap": 0.2, "seed": 0},
    },
    "model": {
        "kind": "maskrcnn",         # maskrcnn | fasterrcnn
        "backbone": "botnet50",     # any botnet.create_model name
        "kwargs": {},               # create_model overrides (e.g. layers: [1, 1, 1, 3])
        "img_size": None,           # attention tables' trained size (None: canvas or max min_size)
        "canvas": 1024,             # fixed square canvas (paper: 1024); null: variable-size batches
        "min_size": [800],          # variable-size mode: short side (list: random choice in training)
        "max_size": 1333,
        "norm": None,               # bn | frozen | sync (None: frozen with weights, bn without)
        "trainable_layers": None,   # 0-5 (None: 3 with weights, 5 without)
        "backbone_weights": None,   # ResNet/BoTNet classification checkpoint on disk
        "fpn_channels": 256,
        "anchor_sizes": [32, 64, 128, 256, 512],
        "box_head_dim": 1024,
        "mask_head_layers": [256, 256, 256, 256],
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
        "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512,
        "box_detections_per_img": 100, "box_score_thresh": 0.05,
    },
    "train": {
        "epochs": 12,
        "batch_size": 2,            # per process
        "optimizer": "sgd",         # sgd | adamw
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_steps": 500,
        "schedule": "cosine",       # cosine | step (x0.1 at 8/12 and 11/12 of training) | constant
        "scale_range": [0.8, 1.25],  # jitter (canvas mode); [0.1, 2.0] = large-scale jitter; null: none
        "hflip": 0.5,
        "grad_clip": 0.0,           # max grad norm (0: off)
        "amp": "none",              # none | bf16 | fp16
        "time_budget_min": None,    # stop training after this many minutes (schedule follows time)
        "num_workers": 0,
        "seed": 0,
        "log_every": 20,
        "eval_every": 0,            # evaluate every N epochs (0: only at the end)
        "device": "auto",
        "threads": None,            # torch.set_num_threads
        "resume": None,             # checkpoint path, run dir, or "auto" (out_dir/last)
    },
    "eval": {
        "batch_size": 2,
        "backend": "pycocotools",   # pycocotools | faster_coco_eval
        "num_draw": 8,              # val images drawn into out_dir/predictions
        "draw_score": 0.5,          # score threshold for drawing
        "draw_scale": 3,            # upscale factor of drawn images
    },
}


def load_detection_config(recipe: str | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML recipe (a path or a name in configs/) <- ``--set key=value`` overrides."""
    return load_config(recipe, overrides, defaults=DETECTION_DEFAULTS)


def validate_detection_config(cfg: dict) -> dict:
    """Check a detection config before any work; bad values raise a one-line ``ConfigError``."""
    import os as _os

    from botnet.errors import ConfigError, resolve_device
    from botnet.training.config import _choice, _num, check_model_kwargs, check_threads

    _num(cfg, "train.epochs", kind=int, low=1)
    _num(cfg, "train.batch_size", kind=int, low=1)
    _num(cfg, "train.lr", low=0)
    _num(cfg, "train.momentum", low=0, high=1)
    _num(cfg, "train.weight_decay", low=0)
    _num(cfg, "train.warmup_steps", kind=int, low=0)
    _num(cfg, "train.grad_clip", low=0)
    _num(cfg, "train.time_budget_min", low=0, low_open=True, optional=True)
    _num(cfg, "train.num_workers", kind=int, low=0)
    _num(cfg, "train.seed", kind=int, low=0)
    _num(cfg, "train.log_every", kind=int, low=1)
    _num(cfg, "train.eval_every", kind=int, low=0)
    _num(cfg, "train.hflip", low=0, high=1)
    _choice(cfg, "train.optimizer", ("sgd", "adamw"))
    _choice(cfg, "train.schedule", ("cosine", "step", "constant"))
    _choice(cfg, "train.amp", ("none", "bf16", "fp16", None))
    check_threads(cfg["train"]["threads"])
    resolve_device(cfg["train"]["device"])
    _num(cfg, "eval.batch_size", kind=int, low=1)
    _choice(cfg, "eval.backend", ("pycocotools", "faster_coco_eval"))
    _choice(cfg, "data.dataset", ("fashion-mosaic", "coco"))
    _choice(cfg, "model.kind", ("maskrcnn", "fasterrcnn"))
    _choice(cfg, "model.norm", ("bn", "frozen", "sync"), optional=True)
    _num(cfg, "model.canvas", kind=int, low=32, optional=True)
    _num(cfg, "model.img_size", kind=int, low=1, optional=True)
    _num(cfg, "model.trainable_layers", kind=int, low=0, high=5, optional=True)
    if not isinstance(cfg["model"].get("kwargs") or {}, dict):
        raise ConfigError(f"model.kwargs must be a mapping of create_model options, got {cfg['model']['kwargs']!r}")
    check_model_kwargs(cfg["model"]["backbone"], {"num_classes": 0, **(cfg["model"]["kwargs"] or {})})
    bw = cfg["model"]["backbone_weights"]
    if bw and not _os.path.exists(bw):
        raise ConfigError(f"model.backbone_weights {bw} does not exist")
    return cfg


def _resolve(root: str | None, p: str | None) -> str | None:
    if p is None:
        return None
    return p if os.path.isabs(p) or root is None else os.path.join(root, p)


def data_paths(cfg: dict, *, generate: bool = True) -> dict[str, str]:
    """Image folders and instances files of the train and val splits (generating the mosaic)."""
    d = cfg["data"]
    if d["dataset"] == "fashion-mosaic":
        from botnet.data.mosaic import generate_fashion_mosaic, mosaic_paths

        if generate:
            generate_fashion_mosaic(d["root"], progress=True, **d["mosaic"])
        (ti, ta), (vi, va) = mosaic_paths(d["root"], "train"), mosaic_paths(d["root"], "val")
        return {"train_images": ti, "train_ann": ta, "val_images": vi, "val_ann": va}
    if d["dataset"] != "coco":
        raise ValueError(f"data.dataset must be 'fashion-mosaic' or 'coco', got {d['dataset']!r}")
    out = {k: _resolve(d["root"], d[k]) for k in ("train_images", "train_ann", "val_images", "val_ann")}
    return out


def build_datasets(cfg: dict, *, train: bool = True, val: bool = True, generate: bool = True):
    """``(train_set or None, val_set or None)``; the validation pass of each runs here."""
    from botnet.data.coco import CocoDetection
    from botnet.detection.transforms import build_transforms

    paths = data_paths(cfg, generate=generate)
    with_masks = cfg["model"]["kind"] == "maskrcnn"
    canvas = cfg["model"]["canvas"]
    tr = va = None
    if train:
        if not paths["train_ann"]:
            raise ValueError("data.train_ann is not set")
        tr = CocoDetection(
            paths["train_images"], paths["train_ann"], with_masks=with_masks,
            remove_empty=cfg["data"]["remove_empty"], strict=cfg["data"]["strict"],
            transforms=build_transforms(True, canvas=canvas, scale_range=cfg["train"]["scale_range"],
                                        hflip=cfg["train"]["hflip"]),
        )
    if val and paths["val_ann"]:
        va = CocoDetection(paths["val_images"], paths["val_ann"], with_masks=with_masks, strict=cfg["data"]["strict"],
                           transforms=build_transforms(False))
    return tr, va


# ----------------------------------------------------------------------------- model
_DETECTOR_KEYS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                  "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                  "box_detections_per_img", "box_score_thresh")


def detector_kwargs(cfg: dict, num_classes: int) -> dict:
    """The ``build_detector`` keyword arguments described by ``cfg["model"]`` (JSON-serialisable)."""
    m = cfg["model"]
    kw = dict(
        kind=m["kind"], backbone=m["backbone"], num_classes=int(num_classes), img_size=m["img_size"],
        canvas=m["canvas"], min_size=list(m["min_size"]) if isinstance(m["min_size"], (list, tuple)) else m["min_size"],
        max_size=m["max_size"], trainable_layers=m["trainable_layers"], norm=m["norm"],
        backbone_weights=m["backbone_weights"], fpn_channels=m["fpn_channels"], anchor_sizes=list(m["anchor_sizes"]),
        box_head_dim=m["box_head_dim"], mask_head_layers=list(m["mask_head_layers"]),
        backbone_kwargs=dict(m["kwargs"] or {}),
    )
    kw.update({k: m[k] for k in _DETECTOR_KEYS})
    return kw


def build_model_from_config(cfg: dict, num_classes: int) -> torch.nn.Module:
    from botnet.detection.models import build_detector

    kw = detector_kwargs(cfg, num_classes)
    return build_detector(kw.pop("kind"), kw.pop("backbone"), **kw)


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a detector from a checkpoint written by :func:`train_detector`.

    Returns ``(model (eval mode), metadata)``; ``metadata["extra"]`` holds ``class_names`` and
    ``label_to_cat_id``.
    """
    from botnet.detection.models import build_detector
    from botnet.errors import resolve_device
    from botnet.training.checkpoint import CheckpointError, load_weights, read_metadata, resolve_checkpoint

    device = resolve_device(str(device))
    p = resolve_checkpoint(path)
    meta = read_metadata(p)
    kw = meta.get("model_kwargs")
    if not isinstance(kw, dict) or not str(meta.get("arch", "")).startswith("detector:") or "kind" not in kw:
        raise CheckpointError(f"{p} is not a detection checkpoint (architecture {meta.get('arch')!r}); give a "
                              f"run directory or checkpoint written by botnet detect train")
    kw = dict(kw)
    kw["backbone_weights"] = None  # the checkpoint holds every weight
    if kw.get("norm") == "sync":  # SyncBatchNorm has BatchNorm's state-dict keys
        kw["norm"] = "bn"
    model = build_detector(kw.pop("kind"), kw.pop("backbone"), **kw)
    load_weights(model, p)
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------- loops
def _lr_factor(progress: float, step: int, tcfg: dict) -> float:
    warm = min(1.0, (step + 1) / tcfg["warmup_steps"]) if tcfg["warmup_steps"] else 1.0
    p = min(max(progress, 0.0), 1.0)
    if tcfg["schedule"] == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * p))
    elif tcfg["schedule"] == "step":
        f = 0.01 if p >= 11 / 12 else 0.1 if p >= 8 / 12 else 1.0
    elif tcfg["schedule"] == "constant":
        f = 1.0
    else:
        raise ValueError(f"unknown schedule {tcfg['schedule']!r}")
    return warm * f


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "rel_" in n or "pos" in n.split(".")[-1] else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(images, targets, device):
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


def _autocast(amp: str, device: torch.device):
    import contextlib

    if amp in (None, "none", False):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_detector(model, dataset, *, batch_size: int = 2, backend: str = "pycocotools", device=None,
                      progress: bool = True, num_workers: int = 0) -> dict:
    """COCO box (and mask) metrics of ``model`` on ``dataset`` (a :class:`CocoDetection`).

    In a multi-process job each rank runs a shard; results are gathered and rank 0 computes the
    metrics (other ranks get ``{}``).
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from botnet.data.coco import detection_collate
    from botnet.detection.coco_eval import coco_evaluate, outputs_to_coco_results
    from botnet.training.distributed import all_gather_object, get_dist_info

    info = get_dist_info()
    device = device or next(model.parameters()).device
    sampler = DistributedSampler(dataset, shuffle=False) if info.distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                        collate_fn=detection_collate, num_workers=num_workers)
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    results, seen = [], set()
    it = loader
    if progress and info.is_main:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", unit="batch", leave=False)
    for images, targets in it:
        images = [i.to(device) for i in images]
        outputs = net(images)
        ids = [int(t["image_id"]) for t in targets]
        keep = [k for k, i in enumerate(ids) if i not in seen]
        seen.update(ids)
        results += outputs_to_coco_results([outputs[k] for k in keep], [ids[k] for k in keep], dataset.label_to_cat_id)
    net.train(was_training)
    gathered = all_gather_object((results, sorted(seen)))
    if not info.is_main:
        return {}
    all_results, all_ids, dup = [], set(), set()
    for res, ids in gathered:
        new = set(ids) - all_ids
        all_results += [r for r in res if r["image_id"] in new and r["image_id"] not in dup]
        dup |= new
        all_ids |= set(ids)
    iou_types = ("bbox", "segm") if getattr(dataset, "with_masks", False) else ("bbox",)
    metrics = coco_evaluate(dataset.coco, all_results, iou_types=iou_types, backend=backend,
                         image_ids=sorted(all_ids))
    for m in metrics.values():
        m["num_images"] = len(all_ids)
    return metrics


def _headline(metrics: dict) -> dict:
    out = {}
    for t, name in (("bbox", "box"), ("segm", "mask")):
        if t in metrics:
            for k in ("AP", "AP50", "AP75"):
                v = metrics[t][k]
                out[f"{name}_{k}"] = 0.0 if v is None else v
    return out


def train_detector(cfg: dict) -> dict:
    """Train per ``cfg`` (see :data:`DETECTION_DEFAULTS`); returns a summary dict (main rank)."""
    import yaml

    from botnet.training import checkpoint as ckpt
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    from botnet.data.coco import detection_collate
    from botnet.training.checkpoint import atomic_write_bytes
    from botnet.training.distributed import (any_rank_true, barrier, broadcast_object, cleanup,
                                             init_distributed, reduce_dict, seed_everything, seed_worker)
    from botnet.training.guards import GracefulInterrupt, check_finite
    from botnet.training.logger import MetricsLogger

    validate_detection_config(cfg)
    tcfg, ecfg = cfg["train"], cfg["eval"]
    out_dir = Path(cfg["out_dir"])
    resume = tcfg["resume"]
    if resume == "auto":
        resume = out_dir / "last.safetensors" if (out_dir / "last.safetensors").is_file() else None
    if resume:  # a bad or finished --resume is found before anything is built or written
        _, rmeta = ckpt.check_resumable(resume)
        if int(rmeta.get("epoch", 0)) >= int(tcfg["epochs"]):
            print(f"run {out_dir} is already finished ({rmeta.get('epoch')} of {tcfg['epochs']} epochs); nothing was "
                  f"changed. Pass a larger --epochs to train it further.")
            return {"already_finished": True, "out_dir": str(out_dir), "epochs_done": int(rmeta.get("epoch", 0))}
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    info = init_distributed(tcfg["device"])
    try:
        seed_everything(tcfg["seed"], info.rank)
        if info.is_main:
            ckpt.check_output_dir(out_dir)
            for f in ckpt.remove_stale_temp_files(out_dir):
                print(f"removed {f.name}, left by a save that was killed")
            data_paths(cfg, generate=True)  # generate the mosaic once, on rank 0
        barrier()
        train_set, val_set = build_datasets(cfg, generate=False)
        if info.is_main:
            print(f"train: {train_set.report.summary()}")
            if train_set.report.num_annotations == 0:
                print(f"warning: the training set has no annotations: the detector can only learn background",
                      file=sys.stderr)
            if val_set is not None:
                print(f"val: {val_set.report.summary()}")
                if val_set.report.num_annotations == 0:
                    print("warning: the validation set has no annotations: COCO AP is undefined (reported as 0)",
                          file=sys.stderr)
        if len(train_set) < tcfg["batch_size"] * info.world_size:
            from botnet.data.errors import DataError

            raise DataError(f"the training set has {len(train_set)} usable images, fewer than one batch "
                            f"({tcfg['batch_size']} x {info.world_size} process(es)); lower train.batch_size "
                            f"(--set train.batch_size=N) or add images")
        if info.is_main:
            atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
        num_classes = train_set.num_classes + 1
        if cfg["model"]["norm"] == "sync" and info.distributed and info.device.type == "cpu":
            # torch's SyncBatchNorm only runs under DDP on GPUs; decided here, before training
            if info.is_main:
                print("warning: model.norm=sync needs GPUs; using per-process BatchNorm (norm=bn) on the CPU")
            cfg = merge(cfg, {"model": {"norm": "bn"}})
        model = build_model_from_config(cfg, num_classes).to(info.device)
        model_kwargs = dict(model.detector_config)  # defaults resolved (norm, trainable_layers, img_size)
        net = model
        if info.distributed:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=info.device_ids,
                                                            find_unused_parameters=True)
        groups = _param_groups(model, tcfg["weight_decay"])
        if tcfg["optimizer"] == "sgd":
            opt = torch.optim.SGD(groups, lr=tcfg["lr"], momentum=tcfg["momentum"])
        elif tcfg["optimizer"] == "adamw":
            opt = torch.optim.AdamW(groups, lr=tcfg["lr"])
        else:
            raise ValueError(f"unknown optimizer {tcfg['optimizer']!r}")
        scaler = torch.amp.GradScaler(info.device.type, enabled=tcfg["amp"] == "fp16")

        gen = torch.Generator().manual_seed(int(tcfg["seed"]))
        sampler = (DistributedSampler(train_set, shuffle=True, seed=int(tcfg["seed"]), drop_last=True)
                   if info.distributed else RandomSampler(train_set, generator=gen))
        loader = DataLoader(train_set, batch_size=tcfg["batch_size"], sampler=sampler, drop_last=True,
                            collate_fn=detection_collate, num_workers=tcfg["num_workers"],
                            worker_init_fn=seed_worker)
        steps_per_epoch = len(loader)
        if steps_per_epoch == 0:
            raise ValueError(f"training set has {len(train_set)} images, fewer than one batch")
        total_steps = steps_per_epoch * tcfg["epochs"]
        start_epoch, step, elapsed_before, best = 0, 0, 0.0, -1.0
        if resume:
            state = ckpt.load_checkpoint(resume, model, optimizer=opt, scaler=scaler if tcfg["amp"] == "fp16" else None)
            start_epoch, step = state["epoch"], state["step"]
            elapsed_before = float(state["extra"].get("elapsed_s", 0.0))
            best = float(state["extra"].get("best", -1.0))
            if info.is_main:
                print(f"resumed from {resume}: epoch {start_epoch}, step {step}")
        logger = MetricsLogger(out_dir, enabled=info.is_main, resume=bool(resume))
        budget = tcfg["time_budget_min"] * 60.0 if tcfg["time_budget_min"] else None
        t_start = time.time() - elapsed_before
        extra_base = {"class_names": train_set.class_names,
                      "label_to_cat_id": {str(k): v for k, v in train_set.label_to_cat_id.items()}}
        key_metric = "mask_AP" if cfg["model"]["kind"] == "maskrcnn" else "box_AP"
        stopped = None
        metrics: dict = {}
        epoch = start_epoch

        def save(name: str, epoch_done: int, extra: dict | None = None) -> None:
            if info.is_main:
                ckpt.save_checkpoint(
                    out_dir / f"{name}.safetensors", model, optimizer=opt,
                    scaler=scaler if tcfg["amp"] == "fp16" else None, epoch=epoch_done, step=step,
                    arch=f"detector:{cfg['model']['kind']}_{cfg['model']['backbone']}_fpn",
                    model_kwargs=model_kwargs, class_names=train_set.class_names, config=cfg,
                    extra={**extra_base, "elapsed_s": time.time() - t_start, "best": best, **(extra or {})},
                )

        with GracefulInterrupt() as stop:
            for epoch in range(start_epoch, tcfg["epochs"]):
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                else:
                    gen.manual_seed(int(tcfg["seed"]) * 1000 + epoch)
                net.train()
                sums: dict[str, float] = {}
                n = 0
                it = loader
                if info.is_main:
                    from tqdm import tqdm

                    it = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", unit="batch")
                for images, targets in it:
                    images, targets = _to_device(images, targets, info.device)
                    progress = step / max(total_steps, 1)
                    if budget:
                        progress = max(progress, (time.time() - t_start) / budget)
                    lr = tcfg["lr"] * _lr_factor(progress, step, tcfg)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    with _autocast(tcfg["amp"], info.device):
                        losses = net(images, targets)
                    loss = sum(losses.values())
                    check_finite(loss, step, epoch)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if tcfg["grad_clip"]:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    n += 1
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                    if info.is_main and hasattr(it, "set_postfix"):
                        it.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.4f}")
                    if step % tcfg["log_every"] == 0:
                        logger.log({**{k: float(v.detach()) for k, v in losses.items()}, "loss": float(loss.detach()), "lr": lr},
                                   step=step, phase="train", epoch=epoch + n / steps_per_epoch)
                    over = budget is not None and time.time() - t_start >= budget
                    if any_rank_true(stop.requested or over):
                        stopped = "interrupt" if any_rank_true(stop.requested) else "time_budget"
                        break
                avg = reduce_dict({**sums, "n": n}, op="sum")
                cnt = max(avg.pop("n"), 1)
                epoch_losses = {f"epoch_{k}": v / cnt for k, v in avg.items()}
                logger.log(epoch_losses, step=step, phase="train", epoch=epoch + 1)
                if info.is_main:
                    print(f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in epoch_losses.items()))
                done = epoch + 1 if stopped is None else epoch
                save("last", done if stopped != "time_budget" else epoch + 1)
                is_last = stopped is not None or epoch + 1 == tcfg["epochs"]
                if val_set is not None and (is_last or (tcfg["eval_every"] and (epoch + 1) % tcfg["eval_every"] == 0)):
                    metrics = evaluate_detector(net, val_set, batch_size=ecfg["batch_size"], backend=ecfg["backend"],
                                                device=info.device)
                    head = broadcast_object(_headline(metrics) if info.is_main else None)
                    logger.log(head, step=step, phase="val", epoch=epoch + 1)
                    if info.is_main:
                        print("val: " + ", ".join(f"{k}={100 * v:.1f}" for k, v in head.items()))
                        if head.get(key_metric, -1) > best:
                            best = head[key_metric]
                            save("best", epoch + 1)
                if stopped:
                    break
        wall = time.time() - t_start
        summary = {"epochs_done": epoch + 1 if stopped != "interrupt" else epoch, "steps": step,
                   "train_wall_s": wall, "stopped": stopped, "out_dir": str(out_dir),
                   "num_train_images": len(train_set), "num_val_images": len(val_set) if val_set else 0,
                   "world_size": info.world_size}
        if info.is_main and val_set is not None and metrics:
            write_eval(out_dir, metrics, {**summary, "checkpoint": str(out_dir / "last.safetensors")})
            if ecfg["num_draw"]:
                ids = val_set.ids[: ecfg["num_draw"]]
                paths = [os.path.join(val_set.image_dir, val_set.coco.imgs[i]["file_name"]) for i in ids]
                predict_images(model, paths, train_set.class_names, out_dir / "predictions",
                               score_threshold=ecfg["draw_score"], scale=ecfg["draw_scale"])
            summary["metrics"] = _headline(metrics)
        logger.close()
        barrier()
        return summary
    finally:
        cleanup()


def write_eval(out_dir: str | os.PathLike, metrics: dict, info: dict | None = None) -> tuple[Path, Path]:
    """Write ``eval.json`` (full metrics) and ``eval.md`` (Markdown tables) into ``out_dir``."""
    from botnet.detection.coco_eval import results_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / "eval.json", out_dir / "eval.md"
    jp.write_text(json.dumps({"metrics": metrics, **(info or {})}, indent=1, default=str))
    head = "\n".join(f"- {k}: {v}" for k, v in (info or {}).items())
    mp.write_text(results_markdown(metrics, title="COCO metrics (percent)") + ("\n" + head + "\n" if head else ""))
    return jp, mp


# ----------------------------------------------------------------------------- drawing
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def draw_predictions(image_u8: torch.Tensor, output: dict, class_names: list[str], *,
                     score_threshold: float = 0.5, scale: int = 1, mask_threshold: float = 0.5) -> torch.Tensor:
    """Draw boxes, ``label score`` captions and masks on a uint8 (3, H, W) image."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= score_threshold
    boxes = output["boxes"][keep].detach().cpu().float()
    labels = output["labels"][keep].detach().cpu()
    scores = output["scores"][keep].detach().cpu()
    img = image_u8.cpu()
    if scale > 1:
        img = F.interpolate(img[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
        boxes = boxes * scale
    colors = [_PALETTE[int(lab) % len(_PALETTE)] for lab in labels]
    if "masks" in output and len(boxes):
        masks = output["masks"][keep].detach().cpu().float()
        if scale > 1:
            masks = F.interpolate(masks, scale_factor=scale, mode="bilinear", align_corners=False)
        img = draw_segmentation_masks(img, masks[:, 0] > mask_threshold, alpha=0.45, colors=colors)
    if len(boxes):
        names = [f"{class_names[int(lab)] if int(lab) < len(class_names) else int(lab)} {float(s):.2f}"
                 for lab, s in zip(labels, scores)]
        img = draw_bounding_boxes(img, boxes, labels=names, colors=colors, width=max(1, scale // 2))
    return img


@torch.no_grad()
def predict_images(model, paths: list[str], class_names: list[str], out_dir: str | os.PathLike, *,
                   score_threshold: float = 0.5, scale: int = 1) -> list[dict]:
    """Run ``model`` on image files, save ``out_dir/<name>.png`` drawings; return per-image records."""
    from PIL import Image

    from botnet.data.coco import read_image_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    records = []
    for p in paths:
        img = read_image_rgb(p).as_subclass(torch.Tensor)
        out = net([img.to(device).float() / 255.0])[0]
        drawn = draw_predictions(img, out, class_names, score_threshold=score_threshold, scale=scale)
        dst = out_dir / (Path(p).stem + ".png")
        Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy()).save(dst)
        keep = out["scores"] >= score_threshold
        records.append({
            "image": str(p), "drawing": str(dst),
            "detections": [{"label": class_names[int(lab)] if int(lab) < len(class_names) else int(lab),
                            "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                           for b, lab, s in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])],
        })
    net.train(was)
    return records
