"""COCO instance sets as tar shards: what ``botnet data shards COCO_ROOT OUT`` writes, and how detection reads it.

The same writer, index and epoch plan as image-folder shards (:mod:`botnet.data.shards`,
:mod:`botnet.data.shard_stream`); what differs is the sample and the index::

    OUT/train-000000.tar ...      one sample per image: KEY.jpg (or .png ...: the image file's bytes, unchanged)
    OUT/val-000000.tar ...        and KEY.json ({"image": its image record, "annotations": its annotation records,
                                  as the source file holds them after the validation pass: boxes, category
                                  ids, polygons or RLE masks, iscrowd, area}); KEY is the image's index in
                                  its split (images in id order; training images shuffled across shards)
    OUT/instances_val.json        the validation split's instances file (the same records as its shards):
                                  COCO evaluation reads its ground truth from it
    OUT/_info.json                the index: "task": "detection", the categories (and their names as
                                  "classes"), per split the shard names, image and annotation counts

Every record goes through :func:`botnet.data.coco.validate_coco` when the shards are written (and each
sample again when it is read, so a shard edited by hand cannot feed pycocotools a record it would crash
on); training on the shards then reads no instances file and no image folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from botnet.data.errors import DataError
from botnet.data.shard_stream import ShardLoader, ShardSplit, ShardStream, _sample_id, _seeded
from botnet.data.shards import IMAGE_KEYS, ShardIndex, ShardJob, image_field, read_index

__all__ = ["COCO_SPLITS", "collect_coco", "CocoShardSplit", "CocoShardStream", "CocoShardVal",
           "read_detection_index", "coco_shard_train_loader", "instances_name"]

COCO_SPLITS = ("train", "val")
_LAYOUT_KEYS = {"train": ("train_images", "train_ann"), "val": ("val_images", "val_ann")}


def instances_name(split: str) -> str:
    """The file in OUT that holds a split's ground truth for COCO evaluation."""
    return f"instances_{split}.json"


# ---------------------------------------------------------------------- writing
def collect_coco(src: Path, splits, skip_bad: bool) -> ShardJob:
    """The COCO set ``src`` (:func:`botnet.data.mosaic.coco_layout`) as a job for the shard writer: every
    record validated (files and image headers too); records the validation pass drops stop the command
    (one line, with the counts) unless ``skip_bad`` leaves them out."""
    from botnet.data.mosaic import coco_layout

    layout = coco_layout(src)
    for s in splits:
        if s not in COCO_SPLITS:
            raise DataError(f"split {s!r}: a COCO set has the splits {' and '.join(COCO_SPLITS)} (--splits train,val)")
        if layout[_LAYOUT_KEYS[s][1]] is None:
            raise DataError(f"SRC {src} has no {s} split ({s}/ with instances_{s}.json, or COCO 2017's {s}2017/ with "
                            f"annotations/instances_{s}2017.json); pass --splits train to write the training split alone")
    samples, split_info, files, left_out, cats = {}, {}, {}, [], None
    for s in splits:
        images, ann = src / layout[_LAYOUT_KEYS[s][0]], src / layout[_LAYOUT_KEYS[s][1]]
        cleaned, bad = _validated(images, ann, skip_bad)
        left_out += bad
        if cats is None:
            cats = cleaned["categories"]
        elif _by_id(cleaned["categories"]) != _by_id(cats):
            raise DataError(f"{ann}: its categories differ from those of the {splits[0]} split; both splits of a "
                            f"COCO set must share one category list")
        samples[s], split_info[s] = _samples(images, cleaned)
        if s != "train":  # COCO evaluation needs the ground truth as one file; training does not
            files[instances_name(s)] = json.dumps(cleaned, separators=(",", ":")).encode()
            split_info[s]["instances"] = instances_name(s)
    cats = sorted(cats, key=lambda c: c["id"])
    info = {"task": "detection", "classes": [str(c["name"]) or str(c["id"]) for c in cats], "categories": cats}
    return ShardJob(samples, _coco_sample, info, split_info, files, left_out)


def _by_id(cats: list[dict]) -> list[tuple]:
    return sorted((c["id"], c["name"]) for c in cats)


def _validated(images: Path, ann: Path, skip_bad: bool) -> tuple[dict, list[tuple[str, str]]]:
    from botnet.data.coco import PROBLEMS, _NON_FATAL, read_json_file, validate_coco

    cleaned, rep = validate_coco(read_json_file(ann), images, require_masks=False, check_files=True,
                                 check_image_sizes=True, source=str(ann))
    if rep.num_errors and not skip_bad:
        raise DataError(f"{ann}: {rep.num_errors} record(s) the validation pass drops ({rep.brief()}); fix them, or "
                        f"pass --skip-bad to leave them out")
    if rep.num_images == 0:
        raise DataError(f"{ann}: no usable images ({rep.brief()})")
    bad = [(str(ann), f"{n} x {PROBLEMS.get(k, k)} (e.g. {'; '.join(rep.examples.get(k, []))})")
           for k, n in sorted(rep.counts.items()) if k not in _NON_FATAL]
    return cleaned, bad


def _samples(images: Path, cleaned: dict) -> tuple[list, dict]:
    """``[(image path, image record, its annotations)]`` in image-id order, and the split's counts."""
    per_image: dict[int, list] = {}
    for a in cleaned["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    recs = sorted(cleaned["images"], key=lambda im: im["id"])
    items = [(images / im["file_name"], im, per_image.get(im["id"], [])) for im in recs]
    anns = cleaned["annotations"]
    counts = {"num_annotations": len(anns), "num_crowd": sum(1 for a in anns if a["iscrowd"]),
              "num_without_segmentation": sum(1 for a in anns if "segmentation" not in a)}
    return items, counts


def _coco_sample(item: tuple) -> dict:
    from botnet.data.folder import open_regular

    path, image, anns = item
    with open_regular(path) as f:
        data = f.read()
    field = image_field(path)
    if field not in IMAGE_KEYS:  # an image named without its format's extension: the format PIL found
        field = _format_field(data, path)
    return {field: data, "json": json.dumps({"image": image, "annotations": anns}, separators=(",", ":")).encode()}


def _format_field(data: bytes, path) -> str:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "").lower()
    field = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
    if field not in IMAGE_KEYS:
        raise DataError(f"{path}: a {fmt or 'unknown'} image, which shards do not hold (they hold "
                        f"{', '.join(IMAGE_KEYS)}); convert it")
    return field


# ---------------------------------------------------------------------- reading
def read_detection_index(root: str | os.PathLike) -> ShardIndex:
    """The index of detection shards in ``root``: the train split, and val when written."""
    from botnet.validation import Dict, Int, List, Str, validate

    index = read_index(root, ("train",), task="detection", optional=("val",))
    cat = Dict({"id": Int(required=True), "name": Str(required=True)})
    validate(index.info, Dict({"categories": List(cat, min_len=1, required=True)}),
             source=str(Path(root) / "_info.json"), error=DataError)
    return index


@dataclass
class CocoShardSplit(ShardSplit):
    """One split of detection shards: the samples and the category mapping (labels 1..K in the order of
    the sorted category ids, as :class:`botnet.data.coco.CocoDetection`)."""

    with_masks: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.categories = sorted(self.index.info["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in self.categories]
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = ["__background__"] + [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def counts(self) -> dict:
        return self.index.info["splits"][self.name]

    def record(self, data: bytes, name: str) -> tuple[dict, list[dict]]:
        """The sample's image record and annotations, validated as the writer did (and, for masks, each
        annotation must have a segmentation, as when training from the instances file)."""
        from botnet.data.coco import validate_coco
        from botnet.validation import Dict, List, loads_json, validate

        spec = Dict({"image": Dict(required=True), "annotations": List(Dict(), required=True)})
        rec = validate(loads_json(data, source=f"{name}.json", error=DataError), spec, source=f"{name}.json",
                       error=DataError)
        cleaned, rep = validate_coco({"images": [rec["image"]], "annotations": rec["annotations"],
                                      "categories": self.categories}, None, require_masks=self.with_masks,
                                     check_files=False, source=name)
        if rep.num_errors - rep.counts["ann_missing_segmentation"] or not cleaned["images"]:
            raise DataError(f"sample {name}: {rep.brief()}; these records were not written by botnet data shards: "
                            f"write the shards again")
        return cleaned["images"][0], cleaned["annotations"]


class CocoShardStream(ShardStream):
    """:class:`ShardStream` whose samples are ``(image, target)`` as :class:`~botnet.data.coco.CocoDetection`
    gives them (a uint8 ``tv_tensors.Image``; boxes, labels, masks ...), through ``transform(image, target)``."""

    split: CocoShardSplit

    def _decode(self, raw: tuple[str, dict], augment_seed) -> tuple[Any, Any]:
        from botnet.data.coco import coco_target, image_from_bytes

        shard, sample = raw
        key = sample.get("__key__", "?")
        name = f"{self.split.index.root / shard}:{key}"
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None or "json" not in sample:
            raise DataError(f"sample {name} lacks its image or its annotations (fields {', '.join(sorted(sample))}); "
                            f"write the shards with botnet data shards")
        image, anns = self.split.record(sample["json"], name)
        img = image_from_bytes(data, name)
        h, w = img.shape[-2:]
        if (w, h) != (int(image["width"]), int(image["height"])):
            raise DataError(f"sample {name}: the image is {w}x{h}, its record says {image['width']}x{image['height']}; "
                            f"write the shards again")
        target = coco_target(anns, image["id"], h, w, self.split.cat_id_to_label, self.split.with_masks)
        tf = self.split.transform
        if tf is None:
            return img, target
        if augment_seed is None:
            return tf(img, target)
        with _seeded(augment_seed[0], augment_seed[1], _sample_id(key)):
            return tf(img, target)


def coco_shard_train_loader(split: CocoShardSplit, cfg: dict, rank: int, world_size: int,
                            num_workers: int) -> ShardLoader:
    """The training loader over detection shards (the epoch plan of :mod:`botnet.data.shard_stream`)."""
    import torch

    from botnet.data.coco import detection_collate

    stream = CocoShardStream(split, batch_size=int(cfg["data"]["batch_size"]), rank=rank, world_size=world_size,
                             num_workers=num_workers, seed=int(cfg["train"]["seed"]),
                             shuffle_block=int(cfg["data"].get("shuffle_block") or 1000), train=True)
    return ShardLoader(stream, batch_size=stream.batch_size, num_workers=num_workers, collate_fn=detection_collate,
                       pin_memory=torch.cuda.is_available())


class CocoShardVal:
    """The validation split of detection shards, as evaluation uses a :class:`~botnet.data.coco.CocoDetection`:
    the ground truth (``coco``, for COCOeval) from ``OUT/instances_val.json``, the images streamed from the
    val shards (:meth:`eval_loader`), each rank reading its own part."""

    def __init__(self, index: ShardIndex, split: str = "val", *, with_masks: bool = True, transforms=None,
                 strict: bool = False, quiet: bool = False):
        from botnet.data.coco import CocoDetection, load_coco

        path = index.root / instances_name(split)
        if not path.is_file():
            raise DataError(f"{path} is missing: detection shards keep their {split} split's ground truth there "
                            f"for COCO evaluation; copy the whole shards folder, or write it again")
        self.image_dir, self.with_masks, self.transforms = str(index.root), with_masks, transforms
        self.coco, self.report = load_coco(path, None, require_masks=with_masks, strict=strict, check_files=False,
                                           quiet=quiet)
        CocoDetection._set_categories(self)
        self.ids = sorted(self.coco.imgs)
        self.split = CocoShardSplit(index, split, transforms, with_masks=with_masks)
        if len(self.split) != len(self.ids) or self.cat_ids != self.split.cat_ids:
            raise DataError(f"{path} does not belong to the {split} shards beside it ({len(self.ids)} images and "
                            f"categories {self.cat_ids}, the shards {len(self.split)} and {self.split.cat_ids}); "
                            f"write the shards again")

    num_classes = property(lambda self: len(self.cat_ids))

    def __len__(self) -> int:
        return len(self.ids)

    def eval_loader(self, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> ShardLoader:
        """This rank's images in shard order, as ``(images, targets)`` batches."""
        from botnet.data.coco import detection_collate

        stream = CocoShardStream(self.split, batch_size=batch_size, rank=rank, world_size=world_size,
                                 num_workers=num_workers, train=False)
        return ShardLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=detection_collate)

    def drawn_items(self, n: int) -> list[tuple[str, int, dict, Any]]:
        """``(file name, image_id, ground truth, image)`` of the first ``n`` images in shard order: what
        :func:`botnet.detection.predict.predict_images` draws."""
        raw = CocoShardSplit(self.split.index, self.split.name, None, with_masks=self.with_masks)
        it: Iterator = iter(CocoShardStream(raw, batch_size=1, train=False))
        return [(self.coco.imgs[t["image_id"]]["file_name"], t["image_id"], t, img) for img, t in islice(it, n)]
