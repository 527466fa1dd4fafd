"""Build classification datasets and loaders from a run config (see ``botnet.engine.config``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from botnet.data.fashion_mnist import CLASSES as FMNIST_CLASSES
from botnet.data.fashion_mnist import MEAN as FMNIST_MEAN
from botnet.data.fashion_mnist import STD as FMNIST_STD

__all__ = ["DataInfo", "ResumableSampler", "ShardSampler", "dataset_stats", "build_eval_transform",
           "build_datasets", "build_train_loader", "build_eval_loader", "check_input_size", "num_workers"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataInfo:
    classes: list[str]
    in_chans: int
    mean: tuple
    std: tuple
    counts: dict[str, Any] = field(default_factory=dict)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (order fixed by ``seed`` and epoch) that can start mid-epoch.

    ``set_epoch(e)`` then ``skip(n)`` drops this rank's first ``n`` samples of epoch ``e``'s
    order once, so a resumed run sees exactly the batches the uninterrupted run would have.
    Works with ``num_replicas=1`` for single-process training. The ranks interleave one order, so
    ``k`` steps of a global batch ``G`` took its first ``k * G`` samples whatever the number of
    processes: ``skip(k * G / num_replicas)`` continues it on another number of processes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip(self, n: int) -> None:
        self._skip = int(n)

    def __iter__(self):
        idx = list(super().__iter__())
        start, self._skip = self._skip, 0
        return iter(idx[start:])

    def __len__(self) -> int:
        return self.num_samples - self._skip


class ShardSampler(Sampler):
    """Evaluation sampler: rank r gets indices r, r+W, r+2W ... (no padding, no duplicates)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def dataset_stats(cfg: dict, in_chans: int) -> tuple[tuple, tuple]:
    d = cfg["data"]
    if d["mean"] is not None and d["std"] is not None:
        return tuple(d["mean"]), tuple(d["std"])
    if d["dataset"] == "fashion-mnist":
        mean, std = FMNIST_MEAN, FMNIST_STD
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if in_chans == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    elif in_chans == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    return tuple(mean), tuple(std)


def _in_chans(cfg: dict) -> int:
    if cfg["model"]["in_chans"]:
        return int(cfg["model"]["in_chans"])
    return 1 if cfg["data"]["dataset"] == "fashion-mnist" else 3


def build_eval_transform(cfg: dict, in_chans: int | None = None, for_files: bool = False):
    """Evaluation transform. ``for_files=True``: input is a PIL image from disk (predict)."""
    from botnet.data.transforms import fashion_mnist_transforms, folder_transforms

    d = cfg["data"]
    in_chans = in_chans or _in_chans(cfg)
    mean, std = dataset_stats(cfg, in_chans)
    size = int(d["eval_img_size"] or d["img_size"])
    if d["dataset"] == "fashion-mnist":
        if for_files:  # a whole garment photo: plain resize to the training size, no crop
            from torchvision.transforms import v2

            return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True),
                               v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        return fashion_mnist_transforms(size, train=False, mean=mean, std=std)
    return folder_transforms(size, False, mean, std, crop_pct=d["crop_pct"], interpolation=d["interpolation"])


def build_datasets(cfg: dict, train: bool = True, val: bool = True) -> tuple[Dataset | None, Dataset | None, DataInfo]:
    """``(train_ds, val_ds, DataInfo)``. Folder layouts and shard indexes are checked before anything is loaded."""
    d = cfg["data"]
    in_chans = _in_chans(cfg)
    mean, std = dataset_stats(cfg, in_chans)
    size = int(d["img_size"])
    check_input_size(cfg, in_chans, train, val)  # before any data is read
    if d["dataset"] == "fashion-mnist":
        from botnet.data.fashion_mnist import FashionMNISTDataset

        from botnet.data.transforms import BatchAugment

        tr = None
        if train:  # uint8 items; the task augments whole batches on the device (BatchAugment)
            tr = FashionMNISTDataset("train", d["root"], d["download"], limit=d["limit_train"])
            tr.batch_transform = BatchAugment(size, mean, std, d["padding"], d["hflip"], d["re_prob"])
        va = FashionMNISTDataset("test", d["root"], d["download"], limit=d["limit_val"],
                                 transform=build_eval_transform(cfg, in_chans)) if val else None
        return tr, va, DataInfo(list(FMNIST_CLASSES), in_chans, mean, std)
    if d["dataset"] == "shards":  # tar shards written by `botnet data shards` (botnet.data.shard_stream)
        from botnet.data.shard_stream import build_shard_datasets

        tr, va, classes = build_shard_datasets(cfg, train, val, in_chans,
                                               _train_transform(d, size, mean, std) if train else None,
                                               build_eval_transform(cfg, in_chans) if val else None)
        return tr, va, DataInfo(classes, in_chans, mean, std)
    if d["dataset"] not in ("folder", "imagefolder", "imagenet"):
        raise ValueError(f"unknown data.dataset {d['dataset']!r} (use fashion-mnist, folder or shards)")
    if not d["root"]:
        raise ValueError("data.dataset=folder needs a data folder: --data-dir ROOT (with ROOT/train and ROOT/val)")
    from pathlib import Path

    from botnet.data.folder import SafeImageFolder, check_image_folder

    splits = tuple(s for s, use in ((d["train_split"], train), (d["val_split"], val)) if use)
    counts = check_image_folder(d["root"], splits)
    mode = "L" if in_chans == 1 else "RGB"
    tr = va = None
    classes = sorted(counts[splits[0]])
    c2i = {c: i for i, c in enumerate(classes)}
    if train:
        tr = SafeImageFolder(Path(d["root"]) / d["train_split"], mode=mode, skip_bad=d["skip_bad"], class_to_idx=c2i,
                             transform=_train_transform(d, size, mean, std))
    if val:
        va = SafeImageFolder(Path(d["root"]) / d["val_split"], mode=mode, skip_bad=d["skip_bad"], class_to_idx=c2i,
                             transform=build_eval_transform(cfg, in_chans))
    from botnet.data.folder import drop_bad_files

    for ds, key in ((tr, "limit_train"), (va, "limit_val")):
        if ds is not None and d[key]:
            g = torch.Generator().manual_seed(0)
            keep = sorted(torch.randperm(len(ds.samples), generator=g)[: int(d[key])].tolist())
            ds.samples = [ds.samples[i] for i in keep]
            ds.targets = [ds.targets[i] for i in keep]
    # every file's header, before any training step; all splits' problems in one report
    drop_bad_files({s: ds for s, ds in ((d["train_split"], tr), (d["val_split"], va)) if ds is not None},
                   skip_bad=bool(d["skip_bad"]), progress=bool(cfg.get("train", {}).get("progress", True)))
    return tr, va, DataInfo(classes, in_chans, mean, std, counts)


def _train_transform(d: dict, size: int, mean, std):
    """The training augmentation of image folders and shards (timm ``create_transform``)."""
    from botnet.data.transforms import folder_transforms

    return folder_transforms(size, True, mean, std, interpolation=d["interpolation"], auto_augment=d["auto_augment"],
                             re_prob=d["re_prob"], hflip=d["hflip"], scale=d["scale"])


def check_input_size(cfg: dict, in_chans: int, train: bool = True, val: bool = True) -> None:
    """The run's model on images of the run's sizes must fit this machine (botnet.models.limits)."""
    from botnet.models.limits import check_model

    d, m = cfg["data"], cfg["model"]
    sizes = ([int(d["img_size"])] if train else []) + ([int(d["eval_img_size"] or d["img_size"])] if val else [])
    kwargs = {**(m.get("kwargs") or {}), "in_chans": in_chans, "img_size": int(m.get("img_size") or d["img_size"])}
    if m.get("num_classes"):
        kwargs["num_classes"] = int(m["num_classes"])
    if sizes and m.get("name"):
        check_model(str(m["name"]), kwargs, input_size=max(sizes), option="--img-size (data.img_size)")


def num_workers(cfg: dict, world_size: int = 1) -> int:
    """``data.num_workers`` resolved, and never more than the cores this process may use (a stored
    ``num_workers: 48`` from another machine would start 48 processes here)."""
    import os

    from botnet.data.workers import resolve_num_workers
    from botnet.log import get_logger

    nw = resolve_num_workers(cfg["data"]["num_workers"], world_size=world_size)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    cap = max(cores // max(world_size, 1), 1)
    if nw > cap:
        get_logger("data").info(f"data.num_workers {nw} -> {cap}: this process may use {cores} CPU core(s)")
        nw = cap
    return nw


def _collate(cfg: dict):
    if cfg["data"]["dataset"] == "fashion-mnist":
        return None
    from botnet.data.folder import collate_skip_bad

    return collate_skip_bad


def build_train_loader(ds: Dataset, cfg: dict, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled, drop-last loader over this rank's shard (``ResumableSampler``, seeded by ``train.seed``)."""
    from botnet.data.shard_stream import ShardSplit, shard_train_loader
    from botnet.data.workers import seed_worker

    if isinstance(ds, ShardSplit):  # tar shards: the stream plans each rank's and worker's part itself
        return shard_train_loader(ds, cfg, rank, world_size, num_workers(cfg, world_size), _collate(cfg))

    sampler = ResumableSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=int(cfg["train"]["seed"]),
                               drop_last=True)
    nw = num_workers(cfg, world_size)
    return DataLoader(ds, batch_size=int(cfg["data"]["batch_size"]), sampler=sampler, drop_last=True,
                      num_workers=nw, collate_fn=_collate(cfg), worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(int(cfg["train"]["seed"])),
                      persistent_workers=nw > 0, pin_memory=torch.cuda.is_available())


def build_eval_loader(ds: Dataset, cfg: dict, rank: int = 0, world_size: int = 1) -> DataLoader:
    from botnet.data.shard_stream import ShardSplit, shard_eval_loader

    bs = int(cfg["data"]["eval_batch_size"] or 2 * int(cfg["data"]["batch_size"]))
    nw = num_workers(cfg, world_size)
    if isinstance(ds, ShardSplit):
        return shard_eval_loader(ds, cfg, rank, world_size, nw, _collate(cfg))
    return DataLoader(ds, batch_size=bs, sampler=ShardSampler(len(ds), rank, world_size), num_workers=nw,
                      collate_fn=_collate(cfg), generator=torch.Generator().manual_seed(0),
                      pin_memory=torch.cuda.is_available())


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return math.ceil(n / world_size) // batch_size if n >= world_size else 0
