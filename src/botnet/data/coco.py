"""COCO-format instance data sets (instances JSON + image folder) for detection and segmentation.

Loading runs a validation pass *before* any training starts, so a bad record never crashes an
epoch half-way. The pass checks every record and either drops it (with a warning that gives
counts per problem) or, with ``strict=True``, raises :class:`CocoFormatError` listing the counts:

- missing top-level keys (``images`` / ``annotations`` / ``categories``): always an error;
- images without ``id`` / ``file_name`` / ``width`` / ``height``, duplicate image ids, image files
  that do not exist, are not images, or whose header size disagrees with the record: image dropped
  (a file that passes the header check but fails to decode later is skipped with a warning);
- annotations without ``id`` / ``image_id`` / ``category_id`` / ``bbox`` (and ``segmentation``
  when masks are used), unknown category or image ids, non-finite boxes, boxes entirely outside
  the image, boxes of negative width or height, zero-area boxes (< 1 px wide or high after
  clipping), degenerate polygons (fewer
  than 3 points, odd coordinate count, zero area) and RLEs whose size disagrees with the image:
  annotation dropped. Boxes partly outside the image are clipped (counted, not dropped).
  A degenerate polygon inside a multi-polygon annotation is removed; the annotation stays if
  another polygon of it is valid.

Bounds (so no file can crash pycocotools' mask code or exhaust memory): a field of the wrong type
(an id that is not an integer, a ``file_name`` that is not a string, an RLE size of strings) drops
its record, naming the field (``annotations[17].image_id``); a polygon coordinate further than
:data:`POLYGON_MARGIN` of the image's size outside it, more than :data:`MAX_POLYGON_POINTS` points
in one annotation, an RLE whose counts do not add up to the image drop the annotation; an image
wider or higher than :data:`MAX_IMAGE_SIDE`, with more than :data:`MAX_ANNOTATIONS_PER_IMAGE`
annotations, or whose masks would take more than :data:`MAX_MASK_BYTES` is dropped with its
annotations. The JSON itself may nest at most ``botnet.validation.MAX_JSON_DEPTH`` levels.

Crowd annotations (``iscrowd=1``) are kept in the ground truth used for evaluation (COCO ignores
detections matched to them) but are excluded from training targets, as in COCO practice.
Images without any (non-crowd) annotation are kept by default: torchvision's R-CNN models train
on them as pure background.

Category ids are mapped to contiguous labels ``1..K`` (0 is background) in the order of the
sorted category ids; :attr:`CocoDetection.label_to_cat_id` maps back.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from botnet.errors import UserInputError
from botnet.validation import AnyOf, Bool, Dict, Int, List, Num, Str, loads_json, problem

__all__ = [
    "read_json_file",
    "CocoFormatError",
    "ValidationReport",
    "validate_coco",
    "load_coco",
    "CocoDetection",
    "detection_collate",
    "read_image_rgb",
    "image_from_bytes",
    "coco_target",
]


class CocoFormatError(UserInputError, ValueError):
    """Raised when an annotation file cannot be used (or has bad records and ``strict=True``)."""


# Caps (documented in docs/detection.md). COCO 2017 images are at most 640 px, with at most
# about 100 annotations and polygons of a few hundred points.
MAX_IMAGE_SIDE = 16384            # px, width or height of an image record
MAX_ANNOTATIONS_PER_IMAGE = 1000
MAX_MASK_BYTES = 256 * 2**20      # one image's masks (uint8), at its size or the 1024 x 1024 canvas if larger
MASK_MIN_AREA = 1024 * 1024       # training resizes masks to the canvas (1024 px by default), so count at least that
MAX_POLYGON_POINTS = 10000        # (x, y) points over all polygons of one annotation
POLYGON_MARGIN = 0.5              # a polygon may reach this fraction of the image's size outside it

_CATEGORY = Dict({"id": Int(), "name": Str()})
_IMAGE = Dict({"id": Int(), "file_name": Str(min_len=1), "width": Num(), "height": Num()})
_ANNOTATION = Dict({"id": Int(), "image_id": Int(), "category_id": Int(),
                    "iscrowd": AnyOf(Int(low=0, high=1), Bool(), nullable=True, what="0 or 1")})
_RLE_SIZE = List(Int(low=0), min_len=2, max_len=2)


PROBLEMS = {
    "image_missing_fields": "image records without id/file_name/width/height",
    "image_bad_field": "image records with a field of the wrong type",
    "image_too_large": f"images wider or higher than {MAX_IMAGE_SIDE} px",
    "image_too_many_annotations": f"images with more than {MAX_ANNOTATIONS_PER_IMAGE} annotations (or masks "
                                  f"over {MAX_MASK_BYTES >> 20} MiB), dropped with their annotations",
    "image_duplicate_id": "duplicate image ids",
    "image_file_missing": "image files not found",
    "image_unreadable": "image files that are not readable images",
    "image_size_mismatch": "image files whose size differs from the record",
    "ann_missing_fields": "annotations without id/image_id/category_id/bbox",
    "ann_bad_field": "annotations with a field of the wrong type",
    "ann_polygon_outside": "annotations with polygon points far outside the image",
    "ann_too_many_points": f"annotations with more than {MAX_POLYGON_POINTS} polygon points",
    "ann_missing_segmentation": "annotations without segmentation (masks requested)",
    "ann_unknown_category": "annotations with an unknown category_id",
    "ann_unknown_image": "annotations with an unknown image_id (or of a dropped image)",
    "ann_bad_bbox": "annotations with a malformed or non-finite bbox",
    "ann_box_outside": "boxes entirely outside the image",
    "ann_box_clipped": "boxes partly outside the image (clipped, kept)",
    "ann_negative_size": "boxes with a negative width or height",
    "ann_zero_area": "zero-area boxes (< 1 px wide or high)",
    "ann_degenerate_polygon": "annotations whose polygons are all degenerate",
    "polygon_dropped": "degenerate polygons removed from otherwise valid annotations",
    "ann_bad_rle": "annotations with a malformed RLE or an RLE size that differs from the image",
    "ann_duplicate_id": "duplicate annotation ids",
}
# Problems that only adjust a record (never drop one) do not count as errors in strict mode.
_NON_FATAL = {"ann_box_clipped", "polygon_dropped"}


@dataclass
class ValidationReport:
    """Counts of each problem found by :func:`validate_coco` plus a few examples per problem."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    num_images: int = 0
    num_annotations: int = 0
    num_images_in: int = 0
    num_annotations_in: int = 0

    def add(self, problem: str, example: str) -> None:
        self.counts[problem] += 1
        ex = self.examples.setdefault(problem, [])
        if len(ex) < 3:
            ex.append(example)

    @property
    def num_errors(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in _NON_FATAL)

    def errors_line(self) -> str:
        """The problems that drop records, with their counts, on one line (no examples)."""
        return ", ".join(f"{v} x {PROBLEMS.get(k, k)}" for k, v in sorted(self.counts.items()) if k not in _NON_FATAL)

    @property
    def ok(self) -> bool:
        return not self.counts

    def summary(self) -> str:
        head = (
            f"kept {self.num_images}/{self.num_images_in} images, "
            f"{self.num_annotations}/{self.num_annotations_in} annotations"
        )
        if not self.counts:
            return head + "; no problems found"
        lines = [head + "; problems:"]
        for k, v in sorted(self.counts.items()):
            lines.append(f"  {v} x {PROBLEMS.get(k, k)} (e.g. {'; '.join(self.examples.get(k, []))})")
        return "\n".join(lines)

    def brief(self) -> str:
        """The summary on one line (for an error message), one example per problem."""
        parts = [f"{v} x {PROBLEMS.get(k, k)} (e.g. {self.examples.get(k, ['?'])[0]})"
                 for k, v in sorted(self.counts.items())]
        return (f"kept {self.num_images}/{self.num_images_in} images, {self.num_annotations}/"
                f"{self.num_annotations_in} annotations" + ("; problems: " + "; ".join(parts) if parts else ""))


def _finite(*xs: Any) -> bool:
    try:
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)
    except TypeError:
        return False


def _polygon_inside(poly: list, W: float, H: float) -> bool:
    """Every point within the image enlarged by POLYGON_MARGIN on each side: pycocotools rasterises
    the whole outline, and a coordinate of 1e9 makes it crash (SIGSEGV) or allocate without end."""
    xs = np.asarray(poly[0::2], dtype=np.float64)
    ys = np.asarray(poly[1::2], dtype=np.float64)
    mx, my = POLYGON_MARGIN * W, POLYGON_MARGIN * H
    return bool((xs >= -mx).all() and (xs <= W + mx).all() and (ys >= -my).all() and (ys <= H + my).all())


def _rle_string_counts(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString), or None when malformed."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # the last value is cut off
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts


def _rle_problem(seg: dict, H: int, W: int) -> str | None:
    """Why an RLE cannot be decoded into an H x W mask safely (pycocotools' decoder writes every run
    without a bounds check, so the runs must add up to the image exactly)."""
    size = seg.get("size")
    if problem(size, _RLE_SIZE) is not None:
        return f"size {size!r} is not [height, width]"
    if list(size) != [H, W]:
        return f"size {size}, image {H}x{W}"
    counts = seg.get("counts")
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        runs = counts
    else:
        return "counts is neither a list of run lengths nor an RLE string"
    if runs is None:
        return "counts is not a valid compressed RLE string"
    if sum(runs) != H * W:
        return f"its runs cover {sum(runs)} pixels, the {H}x{W} image {H * W}"
    return None


def _polygon_ok(poly: Any) -> bool:
    if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
        return False
    if not _finite(*poly):
        return False
    xs = np.asarray(poly[0::2], dtype=np.float64)
    ys = np.asarray(poly[1::2], dtype=np.float64)
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return area > 0.0


def validate_coco(
    data: dict,
    image_dir: str | os.PathLike | None = None,
    *,
    require_masks: bool = False,
    check_files: bool = True,
    check_image_sizes: bool = False,
    source: str | None = None,
) -> tuple[dict, ValidationReport]:
    """Check a COCO instances dict; return ``(cleaned_copy, report)``.

    The cleaned copy only holds valid records (partly-outside boxes clipped, degenerate polygons
    removed, ``iscrowd`` and ``area`` filled in where missing). Raises :class:`CocoFormatError`
    only for problems that make the whole file unusable (not a dict, missing top-level lists,
    bad or duplicate categories); everything else is counted in the report.
    """
    try:
        cats = _checked_categories(data)
    except CocoFormatError as e:
        raise CocoFormatError(f"{source}: {e}" if source else str(e)) from None
    seen_cat = {c["id"] for c in cats}
    rep = ValidationReport(num_images_in=len(data["images"]), num_annotations_in=len(data["annotations"]))
    images: dict[Any, dict] = {}
    for i, im in enumerate(data["images"]):
        if _image_ok(im, i, images, rep, image_dir if check_files else None, check_image_sizes):
            images[im["id"]] = dict(im)
    _drop_crowded_images(data["annotations"], images, rep, require_masks)
    anns, seen_ann = [], set()
    for i, a in enumerate(data["annotations"]):
        out = _checked_annotation(a, i, images, seen_cat, seen_ann, rep, require_masks)
        if out is not None:
            seen_ann.add(a["id"])
            anns.append(out)
    cleaned = {k: copy.deepcopy(v) for k, v in data.items() if k not in ("images", "annotations", "categories")}
    cleaned["images"] = list(images.values())
    cleaned["annotations"] = anns
    cleaned["categories"] = cats
    rep.num_images = len(images)
    rep.num_annotations = len(anns)
    return cleaned, rep


def _checked_categories(data: Any) -> list[dict]:
    """The top-level structure and the categories; a problem here makes the whole file unusable."""
    if not isinstance(data, dict):
        raise CocoFormatError(f"annotation file must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise CocoFormatError(f"annotation file lacks the top-level key(s) {missing}")
    for k in ("images", "annotations", "categories"):
        if not isinstance(data[k], list):
            raise CocoFormatError(f"'{k}' must be a list, got {type(data[k]).__name__}")
    cats, seen = [], set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise CocoFormatError(f"category record without id/name: {repr(c)[:80]}")
        why = problem(c, _CATEGORY, f"categories[{i}]")
        if why:
            raise CocoFormatError(why)
        if c["id"] in seen:
            raise CocoFormatError(f"duplicate category id {c['id']}")
        seen.add(c["id"])
        cats.append(dict(c))
    if not cats:
        raise CocoFormatError("annotation file has no categories")
    return cats


def _drop_crowded_images(anns: list, images: dict, rep: ValidationReport, require_masks: bool) -> None:
    """Drop images with more annotations (or mask bytes) than the caps: each annotation becomes a
    training target and, with masks, an H x W array, so one image could take any amount of memory."""
    per_image = Counter(a["image_id"] for a in anns if isinstance(a, dict) and type(a.get("image_id")) is int)
    for image_id, n in per_image.items():
        im = images.get(image_id)
        if im is None:
            continue
        mask_bytes = n * max(int(im["width"]) * int(im["height"]), MASK_MIN_AREA) if require_masks else 0
        if n > MAX_ANNOTATIONS_PER_IMAGE or mask_bytes > MAX_MASK_BYTES:
            del images[image_id]
            rep.add("image_too_many_annotations", f"image {image_id}: {n} annotations, masks of "
                    f"{mask_bytes / 2**20:.0f} MiB")


def _image_ok(im: Any, i: int, images: dict, rep: ValidationReport, image_dir, check_image_sizes: bool) -> bool:
    """One image record: fields, size, unique id and (with ``image_dir``) its file."""
    if not isinstance(im, dict) or any(k not in im for k in ("id", "file_name", "width", "height")):
        rep.add("image_missing_fields", repr(im)[:80])
        return False
    if not _finite(im["width"], im["height"]) or im["width"] <= 0 or im["height"] <= 0:
        rep.add("image_missing_fields", f"image {im['id']!r:.40}: width/height {im['width']!r:.20}x"
                f"{im['height']!r:.20}")
        return False
    why = problem(im, _IMAGE, f"images[{i}]")
    if why:
        rep.add("image_bad_field", why)
        return False
    if im["width"] > MAX_IMAGE_SIDE or im["height"] > MAX_IMAGE_SIDE:
        rep.add("image_too_large", f"image {im['id']}: {im['width']}x{im['height']}")
        return False
    if im["id"] in images:
        rep.add("image_duplicate_id", f"image id {im['id']}")
        return False
    if image_dir is None:
        return True
    path = os.path.join(os.fspath(image_dir), im["file_name"])
    if not os.path.isfile(path):
        rep.add("image_file_missing", path)
        return False
    if check_image_sizes:
        from PIL import Image

        try:
            with Image.open(path) as f:
                size = f.size
        except Exception as e:  # unreadable header
            rep.add("image_unreadable", f"{path}: {e}")
            return False
        if tuple(size) != (int(im["width"]), int(im["height"])):
            rep.add("image_size_mismatch", f"{path}: file {size}, record {im['width']}x{im['height']}")
            return False
    return True


def _checked_annotation(a: Any, i: int, images: dict, seen_cat: set, seen_ann: set, rep: ValidationReport,
                        require_masks: bool) -> dict | None:
    """One annotation record cleaned (box clipped, iscrowd/area filled), or ``None`` (counted in ``rep``)."""
    if not isinstance(a, dict) or any(k not in a for k in ("id", "image_id", "category_id", "bbox")):
        rep.add("ann_missing_fields", repr(a)[:80])
        return None
    why = problem(a, _ANNOTATION, f"annotations[{i}]")
    if why:
        rep.add("ann_bad_field", why)
        return None
    if a["id"] in seen_ann:
        rep.add("ann_duplicate_id", f"annotation id {a['id']}")
        return None
    if a["category_id"] not in seen_cat:
        rep.add("ann_unknown_category", f"annotation {a['id']}: category_id {a['category_id']}")
        return None
    im = images.get(a["image_id"])
    if im is None:
        rep.add("ann_unknown_image", f"annotation {a['id']}: image_id {a['image_id']}")
        return None
    box = _clipped_box(a, float(im["width"]), float(im["height"]), rep)
    if box is None:
        return None
    out = dict(a)
    out["bbox"] = box
    out["iscrowd"] = int(a.get("iscrowd", 0) or 0)
    if not _segmentation_ok(a, out, int(im["height"]), int(im["width"]), rep, require_masks):
        return None
    if not _finite(out.get("area", None)) or out.get("area", 0) <= 0:
        out["area"] = float(box[2] * box[3])
    return out


def _clipped_box(a: dict, W: float, H: float, rep: ValidationReport) -> list[float] | None:
    """``[x, y, w, h]`` clipped to the image, or ``None`` for a bad, empty or outside box."""
    bbox = a["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not _finite(*bbox):
        rep.add("ann_bad_bbox", f"annotation {a['id']}: bbox {bbox!r}")
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:  # a conversion bug (corners swapped: x2 - x1 < 0), not an empty box: say which
        which = " and ".join(n for n, v in (("width", w), ("height", h)) if v < 0)
        rep.add("ann_negative_size", f"annotation {a['id']}: bbox {bbox} has a negative {which}")
        return None
    if w == 0 or h == 0:
        rep.add("ann_zero_area", f"annotation {a['id']}: bbox {bbox}")
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
    if x1 <= 0 or y1 <= 0 or x >= W or y >= H:
        rep.add("ann_box_outside", f"annotation {a['id']}: bbox {bbox} in {int(W)}x{int(H)} image")
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        rep.add("ann_box_clipped", f"annotation {a['id']}: bbox {bbox}")
    if x1 - x0 < 1.0 or y1 - y0 < 1.0:
        rep.add("ann_zero_area", f"annotation {a['id']}: bbox {bbox} (after clipping)")
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def _segmentation_ok(a: dict, out: dict, H: int, W: int, rep: ValidationReport, require_masks: bool) -> bool:
    """Check (and clean, in ``out``) the polygons or RLE of one annotation."""
    seg = a.get("segmentation")
    if seg is None or (isinstance(seg, list) and not seg):
        if require_masks:
            rep.add("ann_missing_segmentation", f"annotation {a['id']}")
            return False
        out.pop("segmentation", None)
    elif isinstance(seg, list):
        points = sum(len(p) // 2 for p in seg if isinstance(p, (list, tuple)))
        if points > MAX_POLYGON_POINTS:
            rep.add("ann_too_many_points", f"annotation {a['id']}: {points} points")
            return False
        polys = [p for p in seg if _polygon_ok(p)]
        if not polys:
            rep.add("ann_degenerate_polygon", f"annotation {a['id']}")
            return False
        if not all(_polygon_inside(p, W, H) for p in polys):
            rep.add("ann_polygon_outside", f"annotation {a['id']}: a point beyond {POLYGON_MARGIN:g} x the "
                    f"{W}x{H} image's size outside it")
            return False
        if len(polys) != len(seg):
            rep.add("polygon_dropped", f"annotation {a['id']}: {len(seg) - len(polys)} of {len(seg)}")
        out["segmentation"] = polys
    elif isinstance(seg, dict):
        why = _rle_problem(seg, H, W)
        if why:
            rep.add("ann_bad_rle", f"annotation {a['id']}: {why}")
            return False
    else:
        rep.add("ann_bad_rle", f"annotation {a['id']}: segmentation of type {type(seg).__name__}")
        return False
    return True


def read_json_file(path: str | os.PathLike) -> Any:
    """Parse a JSON file; every failure is a :class:`CocoFormatError` naming the file (and line)."""
    src = os.fspath(path)
    if not os.path.isfile(src):
        raise CocoFormatError(f"annotation file not found: {src}")
    try:
        with open(src, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{src} is not UTF-8 JSON text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise CocoFormatError(f"cannot read {src}: {e.strerror or e}") from e
    data = loads_json(text, source=src, error=CocoFormatError)  # nesting depth capped before parsing
    if not isinstance(data, dict):
        raise CocoFormatError(f"{src} holds a JSON {type(data).__name__}, not a COCO object with 'images' and "
                              f"'annotations'")
    return data


def load_coco(
    ann_file: str | os.PathLike | dict,
    image_dir: str | os.PathLike | None = None,
    *,
    require_masks: bool = False,
    strict: bool = False,
    check_files: bool = True,
    check_image_sizes: bool = False,
    quiet: bool = False,
):
    """Read and validate an instances file; return ``(pycocotools.coco.COCO, ValidationReport)``.

    With ``strict=True`` any dropped record raises :class:`CocoFormatError` (with the counts);
    otherwise bad records are dropped and one warning with the counts is emitted.
    """
    from pycocotools.coco import COCO

    if isinstance(ann_file, dict):
        data = ann_file
        src = "<dict>"
    else:
        src = os.fspath(ann_file)
        data = read_json_file(src)
    cleaned, rep = validate_coco(
        data, image_dir, require_masks=require_masks, check_files=check_files, check_image_sizes=check_image_sizes,
        source=src,
    )
    if strict and rep.num_errors:
        raise CocoFormatError(f"{src}: {rep.brief()}")
    if rep.counts and not quiet:
        warnings.warn(f"{src}: {rep.summary()}", stacklevel=2)
    if rep.num_images == 0:
        raise CocoFormatError(f"{src}: no usable images ({rep.brief()})")
    coco = COCO()
    coco.dataset = cleaned
    _quiet_index(coco)
    return coco, rep


def _quiet_index(coco) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Decode one annotation's polygons / RLE into a (height, width) uint8 mask."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    with warnings.catch_warnings():  # pycocotools' own numpy-2 __array__ DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return m.astype(np.uint8)


class CocoDetection:
    """A map-style data set over a validated COCO instances file.

    ``dataset[i]`` returns ``(image, target)`` where ``image`` is a ``tv_tensors.Image`` (uint8,
    3 x H x W, before ``transforms``) and ``target`` holds ``boxes`` (``tv_tensors.BoundingBoxes``,
    XYXY, absolute pixels), ``labels`` (int64, 1..K), ``masks`` (``tv_tensors.Mask``, N x H x W,
    uint8; only with ``with_masks=True``), ``image_id`` (int), ``area`` and ``iscrowd``.
    ``transforms`` is called as ``transforms(image, target)`` (torchvision.transforms.v2 style).

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: instances JSON path (or an already-loaded dict).
        with_masks: decode instance masks (Mask R-CNN); annotations without a segmentation are
            then dropped by the validation pass.
        remove_empty: drop images that have no non-crowd annotation (default keeps them).
        strict: raise instead of warning when the validation pass drops records.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike | dict,
        *,
        transforms: Callable | None = None,
        with_masks: bool = True,
        remove_empty: bool = False,
        strict: bool = False,
        check_image_sizes: bool = True,
        quiet: bool = False,
    ):
        self.image_dir = os.fspath(image_dir)
        self.bad_ids: set[int] = set()
        self.transforms = transforms
        self.with_masks = with_masks
        self.coco, self.report = load_coco(
            ann_file,
            image_dir,
            require_masks=with_masks,
            strict=strict,
            check_image_sizes=check_image_sizes,
            quiet=quiet,
        )
        self._set_categories()
        ids = sorted(self.coco.imgs.keys())
        if remove_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
        self.ids = ids

    def _set_categories(self) -> None:
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in self.cat_ids]

    @property
    def num_classes(self) -> int:
        """Number of foreground categories (the detectors add the background class)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int):
        info = self.coco.imgs[image_id]
        return read_image_rgb(os.path.join(self.image_dir, info["file_name"]))

    def target_for(self, image_id: int, height: int, width: int) -> dict:
        return coco_target(self.coco.imgToAnns.get(image_id, []), image_id, height, width, self.cat_id_to_label,
                           self.with_masks)

    def __getitem__(self, idx: int):
        # The validation pass already checked every file's header; a file that still fails to
        # decode (e.g. truncated after the header) is reported once and replaced by the next
        # image, so one bad file cannot stop an epoch half-way.
        for k in range(min(len(self.ids), 16)):
            image_id = self.ids[(idx + k) % len(self.ids)]
            if image_id in self.bad_ids:
                continue
            try:
                img = self.load_image(image_id)
            except (OSError, ValueError, SyntaxError) as e:
                self.bad_ids.add(image_id)
                path = os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])
                warnings.warn(f"cannot decode {path} ({e}); skipped for the rest of this run "
                              f"({len(self.bad_ids)} bad image file(s) so far)", stacklevel=2)
                continue
            break
        else:
            raise CocoFormatError(f"no decodable image near index {idx} (bad files: {len(self.bad_ids)})")
        h, w = img.shape[-2:]
        target = self.target_for(image_id, h, w)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target


def coco_target(anns: list[dict], image_id: int, height: int, width: int, cat_id_to_label: dict[int, int],
                with_masks: bool) -> dict:
    """The training target of one image from its (validated) annotation records: ``boxes`` (XYXY),
    ``labels`` (1..K), ``image_id``, ``area``, ``iscrowd`` and, ``with_masks``, ``masks`` (N x H x W uint8);
    crowd annotations are left out."""
    import torch
    from torchvision import tv_tensors

    anns = [a for a in anns if not a.get("iscrowd", 0)]
    boxes = torch.tensor(
        [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
        dtype=torch.float32,
    ).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
        "image_id": int(image_id),
        "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
        "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
    }
    if with_masks:
        if anns:
            masks = np.stack([ann_to_mask(a, height, width) for a in anns])
        else:
            masks = np.zeros((0, height, width), dtype=np.uint8)
        target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
    return target


def read_image_rgb(path: str | os.PathLike):
    """Read an image file as a uint8 ``tv_tensors.Image`` (3, H, W) with PIL (torchvision.io's
    decoders are deprecated from torchvision 0.29)."""
    from PIL import Image

    from botnet.data.folder import open_regular

    with open_regular(path) as fh, Image.open(fh) as im:  # a FIFO among the images would block forever
        return _rgb_tensor(im)


def image_from_bytes(data: bytes, name: str):
    """:func:`read_image_rgb` for an image file's bytes held in memory (a sample of a shard); an image
    that does not decode is a :class:`~botnet.data.errors.BadImageError` naming ``name``."""
    import io

    from PIL import Image

    from botnet.data.errors import BadImageError
    from botnet.data.folder import _DECODE_ERRORS

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _rgb_tensor(im)
    except Image.DecompressionBombError as e:
        raise BadImageError(name, f"decompression bomb ({' '.join(str(e).split())})") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(name, f"{type(e).__name__}: {' '.join(str(e).split())}") from e


def _rgb_tensor(im):
    import torch
    from torchvision import tv_tensors

    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return tv_tensors.Image(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())


def detection_collate(batch):
    """Keep images and targets as lists (images may differ in size)."""
    return tuple(zip(*batch))
