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
    OUT/mosaic.json                   (the generator settings and counts)
    OUT/.botnet-generated.json        (the marker: generator and settings; written last)

The set is written only into a new or empty folder, or over a set botnet generated (the marker
says so): it is built in a temporary sibling folder and swapped into place, and the old set's
files are then removed by name. Any other folder (a user's COCO set, a set an earlier botnet
version generated without the marker) is never written into: :func:`generate_fashion_mosaic`
reuses it only when it is the same set, else refuses in one line.

Every image is generated from its own seed ``(seed, split, index)``, so image ``i`` is the same
whatever ``num_train`` / ``num_val`` is, and the whole set is bit-identical run to run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from botnet.data.errors import DataError

__all__ = ["FASHION_CLASSES", "MosaicConfig", "generate_fashion_mosaic", "read_fashion_mnist", "mosaic_paths",
           "MARKER", "folder_state", "coco_layout", "refusal", "check_target"]

MARKER = ".botnet-generated.json"
GENERATOR = "botnet fashion-mosaic"
_STAMP = "mosaic.json"
# COCO layouts found in a data folder: (train images, train instances, val images, val instances)
_COCO_LAYOUTS = (("train", "instances_train.json", "val", "instances_val.json"),
                 ("train2017", "annotations/instances_train2017.json", "val2017", "annotations/instances_val2017.json"))

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
    from botnet.log import progress_enabled

    if progress_enabled(progress):  # a bar on a terminal only, never into a log file
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


def _read_json(path: str) -> dict | None:
    """A small JSON object file, else None (missing, a link, too big, not JSON)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > (1 << 20):
            return None
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return out if isinstance(out, dict) else None


def coco_layout(root: str | os.PathLike) -> dict[str, str | None] | None:
    """The COCO set in ``root`` (``train/`` + ``instances_train.json``, or COCO 2017's ``train2017/``
    + ``annotations/instances_train2017.json``; val when present), as paths relative to ``root``."""
    for ti, ta, vi, va in _COCO_LAYOUTS:
        if os.path.isdir(os.path.join(root, ti)) and os.path.isfile(os.path.join(root, ta)):
            has_val = os.path.isdir(os.path.join(root, vi)) and os.path.isfile(os.path.join(root, va))
            return {"train_images": ti, "train_ann": ta, "val_images": vi if has_val else None,
                    "val_ann": va if has_val else None}
    return None


def folder_state(out_dir: str | os.PathLike) -> tuple[str, dict | None]:
    """``(state, settings)`` of a data folder. State: ``missing``, ``empty``, ``generated`` (botnet's
    marker), ``legacy`` (a set of an earlier botnet version: mosaic.json, no marker), ``coco`` (a
    COCO set botnet did not generate), ``other`` (anything else), ``file`` (not a folder)."""
    d = os.fspath(out_dir)
    if not os.path.lexists(d):
        return "missing", None
    if os.path.islink(d) or not os.path.isdir(d):
        return "file", None
    if not os.listdir(d):
        return "empty", None
    complete = all(os.path.isfile(mosaic_paths(d, s)[1]) for s in ("train", "val"))
    marker = _read_json(os.path.join(d, MARKER))
    if marker is not None and marker.get("generator") == GENERATOR:
        return "generated", marker.get("settings") if complete else None
    stamp = _read_json(os.path.join(d, _STAMP))
    if stamp is not None and "settings" in stamp and complete:
        return "legacy", stamp.get("settings")
    return ("coco", None) if coco_layout(d) is not None else ("other", None)


def refusal(d: str, state: str, what: str) -> str:
    """Why an existing folder is not written into, and what to do: one line."""
    if state == "file":
        return f"{what} {d} is a file or a link, not a folder; choose a new folder for the generated set"
    if state == "legacy":
        return (f"{what} {d} holds a fashion-mosaic set of an earlier botnet version (no {MARKER} marker), so "
                f"botnet treats it as your data and does not replace it: delete it yourself (rm -r {d}) to regenerate "
                f"it there, or choose another folder")
    if state == "coco":
        return (f"{what} {d} holds a COCO data set botnet did not generate; botnet never writes over it: choose a new "
                f"or empty folder for the generated set")
    return (f"{what} {d} is not empty and was not generated by botnet (no {MARKER}); botnet never writes over it: "
            f"choose a new or empty folder")


def check_target(out_dir: str, settings: dict, *, overwrite: bool = False, replace_stale: bool = False,
                 what: str = "--out") -> str:
    """``reuse`` (the same set is there), else the folder's state when the set may be written there
    (``missing``, ``empty``, ``generated``); raises :class:`DataError` (one line) for any other."""
    state, old = folder_state(out_dir)
    if state in ("generated", "legacy") and old == settings and not overwrite:
        return "reuse"
    if state == "generated" and not (overwrite or replace_stale):
        raise DataError(f"{what} {out_dir} holds a fashion-mosaic set generated with other settings; pass --overwrite "
                        f"to replace it, or choose another folder")
    if state not in ("missing", "empty", "generated"):
        raise DataError(refusal(out_dir, state, what))
    extra = _foreign_file(out_dir) if state == "generated" else None
    if extra is not None:
        raise DataError(f"{what} {out_dir} is a generated set, but {extra} in it is not a file botnet wrote; move it "
                        f"out (or choose another folder) before the set is replaced")
    return state


def generate_fashion_mosaic(
    out_dir: str | os.PathLike,
    *,
    source: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    replace_stale: bool = False,
    what: str = "--out",
    **settings,
) -> dict:
    """Write the fashion-mosaic data set to ``out_dir``; return a summary dict.

    ``settings`` are :class:`MosaicConfig` fields (``num_train``, ``num_val``, ``canvas``,
    ``min_items``, ``max_items``, ``min_item_size``, ``max_item_size``, ``max_overlap``,
    ``min_visible``, ``threshold``, ``seed``). A set already there with the same settings is reused
    (unless ``overwrite``). A set botnet generated with other settings is replaced only with
    ``overwrite`` or ``replace_stale``; any other non-empty folder raises :class:`DataError` (one
    line naming ``what`` and the folder) and is left as it is.
    """
    cfg = MosaicConfig(**settings)
    cfg.check()
    out_dir = os.fspath(out_dir)
    state = check_target(out_dir, asdict(cfg), overwrite=overwrite, replace_stale=replace_stale, what=what)
    if state == "reuse":
        stamp = _read_json(os.path.join(out_dir, _STAMP)) or {"settings": asdict(cfg)}
        return {**stamp, "reused": True}
    from botnet.io.folders import check_output_dir

    parent = os.path.dirname(os.path.abspath(out_dir))
    check_output_dir(parent, f"the folder of {what}")
    os.makedirs(parent, exist_ok=True)
    from botnet.io.temp_beside import TempBeside, remove_abandoned

    dest = os.path.abspath(out_dir)
    remove_abandoned(dest, lambda p: _remove_set(str(p)), what="an interrupted data-set generation")
    with TempBeside(dest, folder=True) as claim:
        tmp = str(claim.path)
        try:
            summary = _write_set(tmp, out_dir, cfg, source, progress)
            _swap(tmp, out_dir, state)
        except BaseException:
            _remove_set(tmp)
            raise
    return {**summary, "reused": False}


def _write_set(tmp: str, out_dir: str, cfg: MosaicConfig, source: str | None, progress: bool) -> dict:
    """Both splits, the stamp and, last, the marker (a set without it is never taken as botnet's)."""
    summary = {"settings": asdict(cfg)}
    for split, num in (("train", cfg.num_train), ("val", cfg.num_val)):
        images, labels = read_fashion_mnist("train" if split == "train" else "test", source)
        summary[split] = _write_split(tmp, split, num, cfg, images, labels, progress)
        summary[split]["instances_json"] = mosaic_paths(out_dir, split)[1]  # its final place, not the temporary one
    with open(os.path.join(tmp, _STAMP), "w") as f:
        json.dump(summary, f, indent=1)
    from botnet import __version__

    marker = {"generator": GENERATOR, "botnet_version": __version__, "settings": asdict(cfg)}
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(marker, f, indent=1)
    from botnet.io.atomic import make_shareable

    make_shareable(tmp)  # mkdtemp made it private; a data set is shared like any folder
    return summary


def _swap(tmp: str, out_dir: str, state: str) -> None:
    from botnet.io.dirswap import swap_into_place

    now, _ = folder_state(out_dir)
    if now != state or now not in ("missing", "empty", "generated"):  # changed while generating
        raise DataError(refusal(out_dir, now, "the folder"))
    old = swap_into_place(tmp, os.path.abspath(out_dir))
    if old is not None:
        _remove_set(os.fspath(old))


def _is_generated_name(rel: str) -> bool:
    """A path (relative to the set's folder) of a file the generator writes."""
    if rel in (MARKER, _STAMP, "instances_train.json", "instances_val.json"):
        return True
    split, _, name = rel.partition("/")
    return split in ("train", "val") and len(name) == 10 and name.endswith(".png") and name[:6].isdigit()


def _foreign_file(d: str) -> str | None:
    """The first file or folder in a generated set that the generator does not write, else None."""
    for top, dirs, files in os.walk(d):
        rel_top = os.path.relpath(top, d)
        for n in sorted(dirs):
            if rel_top != "." or n not in ("train", "val") or os.path.islink(os.path.join(top, n)):
                return os.path.join(top, n)
        for n in sorted(files):
            rel = n if rel_top == "." else f"{rel_top}/{n}"
            if not _is_generated_name(rel) or os.path.islink(os.path.join(top, n)):
                return os.path.join(top, n)
    return None


def _remove_set(d: str) -> None:
    """Remove the files the generator writes (and nothing else) from a folder it wrote."""
    from botnet.io.dirswap import remove_written

    if not os.path.isdir(d):
        return
    names = [MARKER, _STAMP, "instances_train.json", "instances_val.json"]
    for split in ("train", "val"):
        if os.path.isdir(os.path.join(d, split)):
            names += [f"{split}/{n}" for n in os.listdir(os.path.join(d, split)) if _is_generated_name(f"{split}/{n}")]
    remove_written(d, names)
