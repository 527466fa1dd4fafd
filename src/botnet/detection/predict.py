"""Running a detector on image files and drawing what it found (``botnet detect predict``, run pictures).

Drawings scale with the image: line width and font grow with its size, small images are upscaled
(``auto_scale``) so labels stay readable, and labels are placed so they never cover each other.
Where ground truth is known (a COCO instances file, a run's val split) it is drawn in a panel
beside the predictions. Every run of :func:`predict_images` also gives COCO result records
(``coco_results.json``, what pycocotools' ``COCO.loadRes`` reads).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["draw_predictions", "draw_instances", "predict_images", "check_drawing_size", "auto_scale",
           "place_labels", "image_to_float", "annotated_items", "label_to_category", "MAX_DRAWING_PIXELS", "MIN_DRAWING_SIDE"]

MAX_DRAWING_PIXELS = 1 << 26  # 64 megapixels (8192 x 8192) per drawing: ~0.2 GB as uint8, ~1 GB in float
MIN_DRAWING_SIDE = 512  # auto scale: small images are upscaled until their long side reaches this
PANEL_GAP = 8  # pixels between the ground-truth and the prediction panels

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def image_to_float(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float in [0, 1], by the same op as the evaluation pipeline (so ``detect predict``
    and ``detect eval`` feed the detector bit-identical tensors)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.to_dtype(image_u8, torch.float32, scale=True)


def auto_scale(height: int, width: int) -> int:
    """The integer upscale that brings the long side to :data:`MIN_DRAWING_SIDE` (1 for large images),
    never past :data:`MAX_DRAWING_PIXELS` for two panels."""
    want = max(1, math.ceil(MIN_DRAWING_SIDE / max(height, width, 1)))
    fits = max(1, int((MAX_DRAWING_PIXELS / (2 * max(height * width, 1))) ** 0.5))
    return min(want, fits)


def _style(height: int, width: int) -> tuple[int, int]:
    """(box line width, font size in px) for a drawing of this size: ~1/250 and ~1/30 of its mean side."""
    side = (height * width) ** 0.5
    return max(1, round(side / 250)), int(min(48, max(12, round(side / 30))))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's scalable built-in font: no font file needed


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], height: int,
                 width: int) -> list[tuple[int, int, int, int] | None]:
    """Rectangles (x0, y0, x1, y1) for labels of ``sizes`` (w, h), one per box, in order (give the boxes
    best first: they get the places next to their box). Each goes above its box, inside its top edge,
    below it or inside its bottom edge, or else right under or over a label already placed, or moved
    away from the box a label height at a time: the first of those places, kept inside the image,
    that covers no label placed before it. A label
    with no such place is ``None`` (left out: its box is still drawn), so labels never overlap."""
    placed: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int, int, int] | None] = []
    for (bx0, by0, bx1, by1), (tw, th) in zip(boxes, sizes):
        ys = [by0 - th, by0, by1 - th, by1]
        # then right under or over a label already placed (packs them), nearest to the box's top first
        ys += sorted({y for p in placed for y in (p[3], p[1] - th)}, key=lambda y: abs(y - by0 + th))
        for k in range(1, max(2, int(height // max(th, 1)) + 1)):
            ys += [by0 - th - k * th, by0 + k * th, by1 + k * th, by1 - th - k * th]
        rect = next((r for y in ys for x in (bx0, bx1 - tw) for r in [_clamped(x, y, tw, th, height, width)]
                     if not any(_overlap(r, p) for p in placed)), None)
        if rect is not None:
            placed.append(rect)
        out.append(rect)
    return out


def _clamped(x: float, y: float, tw: int, th: int, height: int, width: int) -> tuple[int, int, int, int]:
    x0 = int(min(max(x, 0), max(width - tw, 0)))
    y0 = int(min(max(y, 0), max(height - th, 0)))
    return x0, y0, x0 + tw, y0 + th


def _text_colour(rgb) -> tuple[int, int, int]:
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def draw_instances(image_u8: torch.Tensor, boxes: torch.Tensor, texts: list[str], colours: list, *,
                   masks: torch.Tensor | None = None, scale: int = 1):
    """A PIL image: ``image_u8`` (3, H, W) upscaled ``scale`` times, with boolean ``masks`` (N, H, W)
    tinted, ``boxes`` (N, 4 XYXY, image pixels) outlined and ``texts`` in labels that do not overlap."""
    import torch.nn.functional as F
    from PIL import Image, ImageDraw
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    img = image_u8.cpu()
    if scale > 1:
        img = F.interpolate(img[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
    h, w = img.shape[-2:]
    lw, fsize = _style(h, w)
    boxes = boxes.detach().cpu().float().reshape(-1, 4) * scale
    if masks is not None and len(masks):
        m = masks.detach().cpu()
        if scale > 1:
            m = F.interpolate(m[:, None].float(), scale_factor=scale, mode="nearest")[:, 0] > 0.5
        img = draw_segmentation_masks(img, m.bool(), alpha=0.45, colors=colours)
    if len(boxes):
        img = draw_bounding_boxes(img, boxes, colors=colours, width=lw)
    pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    if len(boxes) and texts:
        draw, font = ImageDraw.Draw(pil), _font(fsize)
        pad = max(1, fsize // 6)
        sizes = []
        for t in texts:
            x0, y0, x1, y1 = draw.textbbox((0, 0), t, font=font)
            sizes.append((x1 - x0 + 2 * pad, y1 - min(y0, 0) + 2 * pad))
        rects = place_labels(boxes.tolist(), sizes, h, w)
        for t, r, c in zip(texts, rects, colours):
            if r is None:  # no free place left: the label would cover another one
                continue
            draw.rectangle(r, fill=tuple(c))
            x0, y0, _, _ = draw.textbbox((0, 0), t, font=font)
            draw.text((r[0] + pad - x0, r[1] + pad - min(y0, 0)), t, fill=_text_colour(c), font=font)
    return pil


def _name(class_names: list[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _category(label_to_cat_id: dict[int, int] | None, label: int) -> int:
    return int(label_to_cat_id.get(label, label)) if label_to_cat_id else label


def _full_mapping(label_to_cat_id: dict[int, int] | None, labels: torch.Tensor) -> dict[int, int] | None:
    """``label_to_cat_id`` with every label in ``labels`` (an unmapped label keeps its own number)."""
    if not label_to_cat_id:
        return None
    return {**{int(v): int(v) for v in labels.tolist()}, **label_to_cat_id}


def _colours(labels) -> list[tuple[int, int, int]]:
    return [_PALETTE[int(lab) % len(_PALETTE)] for lab in labels]


def _titled(panels: list, titles: list[str]):
    """Panels side by side (a gap between them) under a title strip each."""
    from PIL import Image, ImageDraw

    w = sum(p.width for p in panels) + PANEL_GAP * (len(panels) - 1)
    _, fsize = _style(panels[0].height, panels[0].width)
    font = _font(fsize)
    strip = int(fsize * 1.6)
    out = Image.new("RGB", (w, panels[0].height + strip), (255, 255, 255))
    draw, x = ImageDraw.Draw(out), 0
    for p, t in zip(panels, titles):
        out.paste(p, (x, strip))
        draw.text((x + fsize // 3, fsize // 4), t, fill=(0, 0, 0), font=font)
        x += p.width + PANEL_GAP
    return out


def draw_predictions(image_u8: torch.Tensor, output: dict, class_names: list[str], *,
                     score_threshold: float = 0.5, scale: int = 1, mask_threshold: float = 0.5,
                     target: dict | None = None, target_names: list[str] | None = None):
    """A PIL drawing of ``output`` (boxes, ``label score`` captions, masks thresholded at
    ``mask_threshold``) on a uint8 (3, H, W) image; with ``target`` (``boxes``, ``labels``, optional
    ``masks`` of the ground truth) the ground truth is drawn in a panel on its left."""
    keep = torch.nonzero(output["scores"] >= score_threshold).flatten()
    keep = keep[torch.argsort(output["scores"][keep], descending=True, stable=True)]  # best first: labels by them
    labels, scores = output["labels"][keep].cpu(), output["scores"][keep].cpu()
    masks = output["masks"][keep][:, 0] > mask_threshold if "masks" in output else None
    texts = [f"{_name(class_names, int(lab))} {float(s):.2f}" for lab, s in zip(labels, scores)]
    pred = draw_instances(image_u8, output["boxes"][keep], texts, _colours(labels), masks=masks, scale=scale)
    if target is None:
        return pred
    names = target_names or class_names
    gl = torch.as_tensor(target["labels"]).cpu()
    gm = target.get("masks")
    gt = draw_instances(image_u8, torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor),
                        [_name(names, int(lab)) for lab in gl], _colours(gl),
                        masks=None if gm is None else torch.as_tensor(gm).as_subclass(torch.Tensor).bool(), scale=scale)
    return _titled([gt, pred], [f"ground truth ({len(gl)})",
                                f"predictions ({len(labels)} with score >= {score_threshold:g})"])


def check_drawing_size(paths: list[str], scale: int | None, option: str = "--scale", panels: int = 1) -> None:
    """Refuse a ``scale`` whose drawings would not fit (read from the image headers, before the model
    loads): each drawing is ``panels`` x (H x scale) x (W x scale) pixels. ``None`` (auto) always fits."""
    from PIL import Image

    from botnet.data.folder import open_regular
    from botnet.errors import ConfigError

    if scale is None:
        return
    for p in paths:
        with open_regular(p) as f, Image.open(f) as img:
            w, h = img.size
        px = w * h * scale * scale * panels
        if px > MAX_DRAWING_PIXELS:
            best = max(int((MAX_DRAWING_PIXELS / (w * h * panels)) ** 0.5), 1)
            raise ConfigError(f"{option} {scale}: the drawing of {p} ({w}x{h}) would be {w * scale * panels}x"
                              f"{h * scale} pixels, more than the limit of {MAX_DRAWING_PIXELS:,}; lower {option} "
                              f"(at most {best} for this image)")


@torch.no_grad()
def predict_images(model, items: Sequence, class_names: list[str], out_dir: str | os.PathLike, *,
                   score_threshold: float = 0.5, scale: int | None = None,
                   label_to_cat_id: dict[int, int] | None = None, target_names: list[str] | None = None
                   ) -> tuple[list[dict], list[dict]]:
    """Run ``model`` on images and save ``out_dir/<name>.png`` drawings.

    ``items``: image paths (their ``image_id`` is their position, from 1), or ``(path, image_id,
    target, a function returning it, or None)`` tuples (a target is drawn as ground truth beside the predictions, its labels
    named by ``target_names``), optionally with the decoded image as a fourth element (an image
    read from a shard: ``path`` then only names it). ``scale=None``: :func:`auto_scale`. Returns ``(records, results)``:
    one record per image (path, ``image_id``, drawing, detections with score >= ``score_threshold``)
    and the COCO result records of every detection (``category_id`` by ``label_to_cat_id``; the
    label itself without it), as ``detect eval`` scores them.
    """
    from botnet.data.coco import read_image_rgb
    from botnet.detection.coco_eval import outputs_to_coco_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    records, results, stems = [], [], set()
    for k, item in enumerate(items):
        p, image_id, target, *image = item if isinstance(item, tuple) else (item, k + 1, None)
        target = target() if callable(target) else target  # decoded one image at a time
        img = (image[0] if image else read_image_rgb(p)).as_subclass(torch.Tensor)
        out = {key: v.cpu() for key, v in net([image_to_float(img).to(device)])[0].items()}
        h, w = img.shape[-2:]  # a run's eval.draw_scale is capped to what fits (the CLI refuses it beforehand)
        s = min(scale or auto_scale(h, w), max(1, int((MAX_DRAWING_PIXELS / (2 * h * w)) ** 0.5)))
        drawn = draw_predictions(img, out, class_names, score_threshold=score_threshold, scale=s, target=target,
                                 target_names=target_names)
        stem = Path(p).stem if Path(p).stem not in stems else f"{Path(p).stem}-{image_id}"  # a/1.png, b/1.jpg
        stems.add(stem)
        dst = out_dir / (stem + ".png")
        drawn.save(dst)
        results += outputs_to_coco_results([out], [image_id], _full_mapping(label_to_cat_id, out["labels"]))
        keep = out["scores"] >= score_threshold
        records.append({"image": str(p), "image_id": int(image_id), "drawing": str(dst), "detections": [
            {"label": _name(class_names, int(lab)), "score": round(float(sc), 4),
             "box": [round(float(v), 1) for v in b], "category_id": _category(label_to_cat_id, int(lab))}
            for b, lab, sc in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])]})
    net.train(was)
    return records, results


def annotated_items(dataset, only: Sequence[str] | None = None) -> list[tuple[str, int, object]]:
    """``(path, image_id, ground-truth loader)`` for the images of a :class:`~botnet.data.coco.CocoDetection`
    in ``detect eval``'s order, or for the files ``only`` (each must be one of its images: its folder
    joined with a ``file_name``); a file that is not is one line naming it."""
    from botnet.data.errors import DataError

    def loader(image_id):
        info = dataset.coco.imgs[image_id]
        return lambda: dataset.target_for(image_id, int(info["height"]), int(info["width"]))

    items = {os.path.realpath(os.path.join(dataset.image_dir, dataset.coco.imgs[i]["file_name"])): i
             for i in dataset.ids}
    if only is None:
        return [(os.path.join(dataset.image_dir, dataset.coco.imgs[i]["file_name"]), i, loader(i))
                for i in dataset.ids]
    out = []
    for p in only:
        i = items.get(os.path.realpath(p))
        if i is None:
            raise DataError(f"{p} is not one of the usable images of the annotation file (looked for "
                            f"{dataset.image_dir}/<file_name>); give images of that set, or leave out --ann")
        out.append((p, i, loader(i)))
    return out


def label_to_category(meta: dict, num_classes: int) -> dict[int, int] | None:
    """The training set's ``{label: COCO category_id}`` stored with a detector (``extra.label_to_cat_id``
    of a run's checkpoint, ``botnet.label_to_cat_id`` of a published folder), checked; ``None`` when the
    checkpoint has none (then a label is its own category id)."""
    from botnet.errors import CheckpointError

    raw = (meta.get("extra") or {}).get("label_to_cat_id")
    if raw is None:
        return None
    where = meta.get("published") or "the checkpoint"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: label_to_cat_id is not a mapping; the file is damaged")
    out = {}
    for k, v in raw.items():
        ok_key = isinstance(k, (str, int)) and str(k).isdigit() and 1 <= int(k) < num_classes
        if not ok_key or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CheckpointError(f"{where}: label_to_cat_id has {k!r:.20}: {v!r:.20}; expected a label 1-"
                                  f"{num_classes - 1} and a category id >= 0 (the file is damaged)")
        out[int(k)] = v
    return out
