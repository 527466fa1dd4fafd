"""Detection and instance segmentation as a task of the training engine.

``train(cfg)`` runs ``botnet detect train`` from a config (:data:`DETECTION_DEFAULTS` schema):
COCO-format data (the fashion-mosaic set is generated when missing) with a validation pass over
every record, a torchvision Mask R-CNN / Faster R-CNN over a BoTNet-FPN backbone, the detector's
own loss dict per step, COCO box/mask AP (pycocotools or faster-coco-eval) per evaluation, and at
the end ``eval.json``/``eval.md`` and drawn validation predictions. A run directory holds the
same files as a classification run (``config.json``, ``summary.json``, checkpoints, metrics).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from botnet.detection.config import DETECTION_DEFAULTS, detector_kwargs, validate_detection_config
from botnet.engine.log import get_logger
from botnet.engine.task import StepOutput, Task, TaskSetup

__all__ = ["DetectionTask", "data_paths", "build_datasets", "build_detector_from_kwargs", "train"]

log = get_logger("detection")


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
            generate_fashion_mosaic(d["root"], progress=bool(cfg.get("train", {}).get("progress", True)), **d["mosaic"])
        (ti, ta), (vi, va) = mosaic_paths(d["root"], "train"), mosaic_paths(d["root"], "val")
        return {"train_images": ti, "train_ann": ta, "val_images": vi, "val_ann": va}
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
            from botnet.errors import ConfigError

            raise ConfigError("data.train_ann is not set (the instances JSON of the training split)")
        tr = CocoDetection(
            paths["train_images"], paths["train_ann"], with_masks=with_masks,
            remove_empty=cfg["data"]["remove_empty"], strict=cfg["data"]["strict"],
            transforms=build_transforms(True, canvas=canvas, scale_range=cfg["data"]["scale_range"],
                                        hflip=cfg["data"]["hflip"]),
        )
    if val and paths["val_ann"]:
        va = CocoDetection(paths["val_images"], paths["val_ann"], with_masks=with_masks, strict=cfg["data"]["strict"],
                           transforms=build_transforms(False))
    return tr, va


def build_detector_from_kwargs(arch: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a detector from a checkpoint's ``model_kwargs`` (the checkpoint holds every weight)."""
    from botnet.detection.models import build_detector

    kw = dict(kwargs)
    kw["backbone_weights"] = None
    if kw.get("norm") == "sync":  # SyncBatchNorm has BatchNorm's state-dict keys
        kw["norm"] = "bn"
    return build_detector(kw.pop("kind"), kw.pop("backbone"), **kw)


class DetectionTask(Task):
    name = "detection"
    find_unused_parameters = True  # the mask head gets no gradient from images without instances
    # RoI shapes change every step: cudnn.benchmark would re-tune nearly every step (about 10x slower);
    # bf16 is not the CUDA default here until a detection run has been measured with it
    cuda_defaults = {"amp": "none", "channels_last": False, "cudnn_benchmark": False}

    def __init__(self, cfg: dict | None = None):
        self.key_metric = "mask_AP" if (cfg or DETECTION_DEFAULTS)["model"]["kind"] == "maskrcnn" else "box_AP"

    def validate(self, cfg: dict) -> None:
        validate_detection_config(cfg)

    def setup(self, cfg: dict, dist) -> TaskSetup:
        from torch.utils.data import DataLoader

        from botnet.data.builder import ResumableSampler
        from botnet.data.coco import detection_collate
        from botnet.data.errors import DataError
        from botnet.detection.models import build_detector
        from botnet.engine.distributed import barrier, seed_worker

        if dist.is_main:
            data_paths(cfg, generate=True)  # generate the mosaic once, on rank 0
        barrier()
        train_set, val_set = build_datasets(cfg, generate=False)
        if dist.is_main:
            _report(train_set, val_set)
        bs = int(cfg["data"]["batch_size"])
        if len(train_set) < bs * dist.world_size:
            raise DataError(f"the training set has {len(train_set)} usable images, fewer than one batch ({bs} x "
                            f"{dist.world_size} process(es)); lower data.batch_size (--batch-size N) or add images")
        if cfg["model"]["norm"] == "sync" and dist.distributed and dist.device.type == "cpu":
            log.warning("model.norm=sync needs GPUs; using per-process BatchNorm (norm=bn) on the CPU")
            cfg["model"]["norm"] = "bn"
        kw = detector_kwargs(cfg, train_set.num_classes + 1)
        model = build_detector(kw.pop("kind"), kw.pop("backbone"), **kw)
        seed = int(cfg["train"]["seed"])
        sampler = ResumableSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed,
                                   drop_last=True)
        loader = DataLoader(train_set, batch_size=bs, sampler=sampler, drop_last=True, collate_fn=detection_collate,
                            num_workers=int(cfg["data"]["num_workers"]), worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(seed), pin_memory=dist.device.type == "cuda")
        arch = f"detector:{cfg['model']['kind']}_{cfg['model']['backbone']}_fpn"
        meta = {"class_names": train_set.class_names,
                "label_to_cat_id": {str(k): v for k, v in train_set.label_to_cat_id.items()}}
        return TaskSetup(model=model, arch=arch, model_kwargs=dict(model.detector_config), train_loader=loader,
                         num_val=len(val_set) if val_set is not None else 0, class_names=train_set.class_names,
                         meta=meta, state={"val_set": val_set, "train_set": train_set})

    def train_step(self, model, batch, device, setup) -> StepOutput:
        images, targets = batch
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        return StepOutput({"loss": sum(losses.values()), **losses}, batch_size=len(images))

    def evaluate(self, model, setup, cfg, dist, desc: str = "eval") -> dict[str, Any]:
        from botnet.detection.evaluate import evaluate_detector, headline
        from botnet.engine.distributed import broadcast_object

        val_set = setup.state["val_set"]
        if val_set is None:
            return {}
        ec = cfg["eval"]
        metrics = evaluate_detector(model, val_set, batch_size=int(ec["batch_size"]), backend=ec["backend"],
                                    device=dist.device, progress=bool(cfg["train"]["progress"]))
        head = broadcast_object(headline(metrics) if dist.is_main else None)
        return {**head, "_metrics": metrics}

    def describe(self, m: dict[str, Any]) -> str:
        return ", ".join(f"{k}={100 * v:.1f}" for k, v in m.items() if not k.startswith("_")) or "(no val set)"

    def finalize(self, run_dir: Path, setup: TaskSetup, final, records, cfg) -> dict[str, Any]:
        from botnet.detection.evaluate import write_eval
        from botnet.detection.predict import predict_images

        val_set, raw = setup.state["val_set"], final.get("raw") or {}
        if val_set is None or not raw.get("_metrics"):
            return {}
        write_eval(run_dir, raw["_metrics"], {"checkpoint": str(run_dir / "last.safetensors"),
                                              "num_val_images": len(val_set), "num_train_images":
                                              len(setup.state["train_set"]), "world_size": _world_size()})
        ec = cfg["eval"]
        if ec["num_draw"]:
            ids = val_set.ids[: int(ec["num_draw"])]
            paths = [os.path.join(val_set.image_dir, val_set.coco.imgs[i]["file_name"]) for i in ids]
            predict_images(setup.model, paths, setup.class_names, run_dir / "predictions",
                           score_threshold=ec["draw_score"], scale=ec["draw_scale"])
        return {"metrics": {k: v for k, v in raw.items() if not k.startswith("_")}}


def _world_size() -> int:
    from botnet.engine.distributed import get_dist_info

    return get_dist_info().world_size


def _report(train_set, val_set) -> None:
    log.info(f"train: {train_set.report.summary()}")
    if train_set.report.num_annotations == 0:
        log.warning("the training set has no annotations: the detector can only learn background")
    if val_set is not None:
        log.info(f"val: {val_set.report.summary()}")
        if val_set.report.num_annotations == 0:
            log.warning("the validation set has no annotations: COCO AP is undefined (reported as 0)")


def train(cfg: dict, resume=None, init_weights=None, dist_info=None, overwrite: bool = False) -> dict[str, Any]:
    """Run one detection job; returns the summary (also in ``RUN/summary.json``)."""
    from botnet.engine.trainer import Trainer

    task = DetectionTask(cfg)
    return Trainer(task, cfg, resume=resume, init_weights=init_weights, dist_info=dist_info,
                   overwrite=overwrite).run()
