"""Fashion-mosaic: a small, deterministic COCO-format instance-segmentation data set.

Several Fashion-MNIST items (real photos of clothes, 10 classes) are scaled, tinted and placed
on a textured canvas. Each item's pixel mask is its thresholded intensity, minus whatever later
items cover (partial overlap is allowed up to ``max_overlap`` box IoU; items left less than
``min_visible`` visible are removed before rendering). Its box is the tight box of the visible
mask, so masks always lie inside their boxes. Train images draw items from the Fashion-MNIST
training split and val images from its test split, so the val objects are unseen pictures.

Layout written by :func:`generate_fashion_mosaic`::

    OUT/train/000000.png ...          OUT/instances_train.json
    OUT/val/000000.png ...            OUT/instances_val.json
    OUT/mosaic.json                   (the generator settings, to detect stale folders)

Every image is generated from its own seed ``(seed, split, index)``, so image ``i`` is the same
whatever ``num_train`` / ``num_val`` is, and the whole set is bit-identical run to run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FASHION_CLASSES", "MosaicConfig", "generate_fashion_mosaic", "read_fashion_mnist", "mosaic_paths"]

FASHION_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]


def read_fashion_mnist(split: str = "train", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels [N])`` of a Fashion-MNIST split (``train`` / ``test``),
    read with the shared reader :func:`botnet.data.fashion_mnist.load_fashion_mnist` (``root``:
    a folder with the IDX files; default the system location)."""
    from botnet.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, root or os.environ.get("BOTNET_FASHION_MNIST"))


@dataclass
class MosaicConfig:
    num_train: int = 512
    num_val: int = 128
    canvas: int = 160
    min_items: int = 2
    max_items: int = 5
    min_item_size: int = 28
    max_item_size: int = 72
    max_overlap: float = 0.2
    min_visible: float = 0.6
    threshold: int = 40
    seed: int = 0

    def check(self) -> None:
        if self.canvas < 32:
            raise ValueError("canvas must be at least 32 px")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError("need 1 <= min_items <= max_items")
        if not 8 <= self.min_item_size <= self.max_item_size <= self.canvas:
            raise ValueError("need 8 <= min_item_size <= max_item_size <= canvas")
        if not 0.0 <= self.max_overlap < 1.0:
            raise ValueError("max_overlap must be in [0, 1)")


def mosaic_paths(out_dir: str | os.PathLike, split: str) -> tuple[str, str]:
    """``(image_dir, instances_json)`` of one split of a generated mosaic folder."""
    out_dir = os.fspath(out_dir)
    return os.path.join(out_dir, split), os.path.join(out_dir, f"instances_{split}.json")


def _box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _resize(item: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((w, h), Image.BILINEAR))


def _render(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, cfg: MosaicConfig):
    S = cfg.canvas
    # Background: a dark colour with a smooth gradient and fine noise.
    base = rng.uniform(0, 70, size=3)
    grad = rng.uniform(-25, 25, size=(2, 3))
    yy, xx = np.meshgrid(np.linspace(0, 1, S), np.linspace(0, 1, S), indexing="ij")
    bg = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    bg = bg + rng.normal(0, 6, size=(S, S, 3))

    n = int(rng.integers(cfg.min_items, cfg.max_items + 1))
    items = []  # (label, x0, y0, alpha[h,w], mask_full[S,S], color)
    for _ in range(n):
        idx = int(rng.integers(len(images)))
        size = int(rng.integers(cfg.min_item_size, cfg.max_item_size + 1))
        aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        w = int(np.clip(round(size * aspect**0.5), 8, S))
        h = int(np.clip(round(size / aspect**0.5), 8, S))
        color = rng.uniform(110, 255, size=3)
        flip = bool(rng.integers(2))
        for _try in range(30):
            x0 = int(rng.integers(0, S - w + 1))
            y0 = int(rng.integers(0, S - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if all(_box_iou(box, it["box"]) <= cfg.max_overlap for it in items):
                break
        else:
            continue
        pic = images[idx][:, ::-1] if flip else images[idx]
        small = _resize(np.ascontiguousarray(pic), w, h)
        full = np.zeros((S, S), dtype=bool)
        full[y0 : y0 + h, x0 : x0 + w] = small > cfg.threshold
        if full.sum() < 16:
            continue
        items.append({"label": int(labels[idx]), "box": box, "alpha": small.astype(np.float64) / 255.0,
                      "full": full, "color": color})

    def visible(its):
        out = []
        for i, it in enumerate(its):
            m = it["full"].copy()
            for later in its[i + 1 :]:
                m &= ~later["full"]
            out.append(m)
        return out

    vis = visible(items)
    keep = [it for it, m in zip(items, vis) if m.sum() >= cfg.min_visible * it["full"].sum()]
    vis = visible(keep)
    img = bg
    for it in keep:
        x0, y0, x1, y1 = it["box"]
        a = it["alpha"][..., None]
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - a) + it["color"] * a * (0.55 + 0.45 * a)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, [(it["label"], m) for it, m in zip(keep, vis)]


def _write_split(out_dir: str, split: str, num: int, cfg: MosaicConfig, images, labels, progress: bool) -> dict:
    from PIL import Image
    from pycocotools import mask as mask_utils

    img_dir, ann_path = mosaic_paths(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    split_code = {"train": 0, "val": 1}[split]
    coco_images, coco_anns = [], []
    it = range(num)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"mosaic {split}", unit="img")
    for i in it:
        rng = np.random.default_rng([cfg.seed, split_code, i])
        img, inst = _render(rng, images, labels, cfg)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(os.path.join(img_dir, name))
        image_id = i + 1
        coco_images.append({"id": image_id, "file_name": name, "width": cfg.canvas, "height": cfg.canvas})
        for label, m in inst:
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            coco_anns.append({
                "id": len(coco_anns) + 1, "image_id": image_id, "category_id": label + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(m.sum()), "iscrowd": 0,
                "segmentation": rle,
            })
    data = {
        "info": {"description": f"fashion-mosaic {split}", "settings": asdict(cfg)},
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(FASHION_CLASSES)],
    }
    with open(ann_path, "w") as f:
        json.dump(data, f)
    return {"images": len(coco_images), "annotations": len(coco_anns), "instances_json": ann_path}


def generate_fashion_mosaic(
    out_dir: str | os.PathLike,
    *,
    source: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    **settings,
) -> dict:
    """Write the fashion-mosaic data set to ``out_dir``; return a summary dict.

    ``settings`` are :class:`MosaicConfig` fields (``num_train``, ``num_val``, ``canvas``,
    ``min_items``, ``max_items``, ``min_item_size``, ``max_item_size``, ``max_overlap``,
    ``min_visible``, ``threshold``, ``seed``). If ``out_dir`` already holds a set generated with
    the same settings it is reused unless ``overwrite``.
    """
    cfg = MosaicConfig(**settings)
    cfg.check()
    out_dir = os.fspath(out_dir)
    stamp = os.path.join(out_dir, "mosaic.json")
    if not overwrite and os.path.isfile(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old.get("settings") == asdict(cfg) and all(
            os.path.isfile(mosaic_paths(out_dir, s)[1]) for s in ("train", "val")
        ):
            return {**old, "reused": True}
    from botnet.engine.checkpoint import check_output_dir

    check_output_dir(out_dir, "--out")
    os.makedirs(out_dir, exist_ok=True)
    summary = {"settings": asdict(cfg)}
    for split, num in (("train", cfg.num_train), ("val", cfg.num_val)):
        images, labels = read_fashion_mnist("train" if split == "train" else "test", source)
        summary[split] = _write_split(out_dir, split, num, cfg, images, labels, progress)
    with open(stamp, "w") as f:
        json.dump(summary, f, indent=1)
    return {**summary, "reused": False}
