"""The ``data`` suite: training-loader throughput on one CPU core, image folder against tar shards.

A configuration ``{"model": "data:KIND", "mode": "train" | "read", "images": N, "batch": B, "size": S}``
times one pass of a loader over ``N`` generated JPEGs of 500 x 375 pixels (about ImageNet's mean
size), in one process (``num_workers=0``) with one torch thread, so images/s is per core:

- ``data:folder``  - the ImageNet-layout folder through botnet's training loader (``--dataset folder``),
- ``data:shards``  - the same images written by ``botnet data shards``, through botnet's shard loader
  (``--dataset shards``),
- ``data:timm-wds`` - the same shards through timm's webdataset reader (``timm.data.create_dataset("wds/...")``).

``train``: decode and the ImageNet recipe's training augmentation (``imagenet-botnet-s1-59-t3``:
random-resized crop to ``S`` px, bicubic, flip, RandAugment ``rand-m10-n2-mstd0.5``), collated in
batches of ``B``. ``read``: the bytes of every image only (what the format and library add on top of the
file system). The images are generated once per process into a temporary folder, removed at exit.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

__all__ = ["make_jpeg_set", "build_data_step"]

_SETS: dict[int, Path] = {}
RECIPE = dict(interpolation="bicubic", auto_augment="rand-m10-n2-mstd0.5", scale=[0.08, 1.0], hflip=0.5, re_prob=0.0)


def make_jpeg_set(root: Path, n: int, *, classes: int = 4, size=(500, 375), seed: int = 0, split: str = "train") -> Path:
    """``root/SPLIT/cCLASS/NNNNN.jpg``: ``n`` JPEGs (quality 90) of smooth colour fields, shapes and
    sensor-like noise, so that they compress and decode like photographs rather than like flat colour."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = [x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        px = np.asarray(img).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
        d = Path(root) / split / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return root


def _data_set(n: int) -> Path:
    """The generated folder and its shards (``ROOT/folder``, ``ROOT/shards``), once per process."""
    if n not in _SETS:
        from botnet.data.shards import write_shards

        root = Path(tempfile.mkdtemp(prefix="botnet-bench-data-"))
        atexit.register(shutil.rmtree, root, True)
        make_jpeg_set(root / "folder", n)
        write_shards(root / "folder", root / "shards", splits=("train",), max_count=64)
        _SETS[n] = root
    return _SETS[n]


def _cfg(kind: str, root: Path, cfg: dict) -> dict:
    from botnet.classification import CLASSIFICATION_DEFAULTS
    from botnet.engine.config import merge

    data = dict(RECIPE, dataset=kind, root=str(root), img_size=int(cfg["size"]), batch_size=int(cfg["batch"]),
                num_workers=0)
    return merge(CLASSIFICATION_DEFAULTS, {"data": data, "train": {"progress": False}})


def _loader(kind: str, cfg: dict, root: Path):
    """The loader the training would use (botnet's builders), or timm's reader over the same shards."""
    from botnet.data.builder import build_datasets, build_train_loader

    if kind == "timm-wds":
        from timm.data import create_dataset

        from botnet.data.builder import _train_transform

        c = _cfg("shards", root / "shards", cfg)
        ds = create_dataset("wds/bench", root=str(root / "shards"), split="train", is_training=True,
                            batch_size=int(cfg["batch"]), seed=0)
        ds.transform = _train_transform(c["data"], int(cfg["size"]), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return torch.utils.data.DataLoader(ds, batch_size=int(cfg["batch"]), num_workers=0)
    c = _cfg(kind, root / kind, cfg)
    ds, _, _ = build_datasets(c, train=True, val=False)
    return build_train_loader(ds, c)


def _reader(kind: str, root: Path) -> Callable[[], int]:
    """``read`` mode: every image's bytes, no decoding; returns the bytes read."""
    if kind == "folder":
        from botnet.data.folder import image_files

        files = image_files(root / "folder" / "train")

        def read_folder() -> int:
            total = 0
            for p in files:
                with open(p, "rb") as f:
                    total += len(f.read())
            return total

        return read_folder
    from botnet.data.shard_stream import ShardSplit, ShardStream, shard_order
    from botnet.data.shards import read_index

    split = ShardSplit(read_index(root / "shards", ("train",)), "train")
    stream = ShardStream(split, batch_size=1, train=False)

    def read_shards() -> int:
        order = shard_order(len(split.lengths), 0, None)
        return sum(len(s["jpg"]) for _, s in stream._read(order, 0, len(split)))

    return read_shards


def build_data_step(cfg: dict) -> Callable[[], None]:
    """One pass over the generated set, on one torch thread (the loader runs in this process)."""
    kind = cfg["model"].split(":", 1)[1]
    root = _data_set(int(cfg["images"]))
    if cfg["mode"] == "read":
        fn = _reader(kind, root)
    else:
        loader = _loader(kind, cfg, root)

        def fn() -> int:
            n = sum(len(batch[1]) for batch in loader)
            if n != int(cfg["images"]):  # the figure is images / time: every image must have been loaded
                raise ValueError(f"a pass loaded {n} of {cfg['images']} images; use a multiple of the batch "
                                 f"({cfg['batch']}) for --data-images")
            return n

    def step() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fn()
        finally:
            torch.set_num_threads(threads)

    return step
