"""COCO box / mask evaluation (pycocotools by default; faster-coco-eval as an option).

:func:`outputs_to_coco_results` turns torchvision detector outputs (already in original image
coordinates) into COCO result records; :func:`coco_evaluate` runs COCOeval and returns the 12
standard numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) plus per-class
AP for each IoU type; :func:`results_markdown` renders them as a Markdown table.

AP and AR values are in percent (0-100, as the paper and detectron2 report them; pycocotools' own
``stats`` are fractions, multiplied by 100 here), and botnet uses that unit everywhere: logs,
``metrics.jsonl``, ``summary.json``, ``eval.json``, ``eval.md``. COCOeval's -1 for "no ground truth
in this bucket" is kept as ``None``. With no detections at all, every AP/AR is 0.0 (pycocotools
cannot load an empty result list, so this case is handled here).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Sequence

import numpy as np

__all__ = ["STAT_NAMES", "outputs_to_coco_results", "coco_evaluate", "results_markdown"]

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _mask_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def outputs_to_coco_results(
    outputs: Sequence[dict],
    image_ids: Sequence[int],
    label_to_cat_id: dict[int, int] | None = None,
    *,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Convert detector outputs (``boxes`` XYXY, ``scores``, ``labels``, optional ``masks``
    N x 1 x H x W probabilities) to COCO result dicts (``bbox`` XYWH, ``segmentation`` RLE)."""
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu().numpy()
        scores = out["scores"].detach().float().cpu().numpy()
        labels = out["labels"].detach().cpu().numpy()
        masks = out.get("masks")
        if masks is not None:
            masks = (masks.detach().float().cpu().numpy()[:, 0] > mask_threshold)
        for k in range(len(boxes)):
            x0, y0, x1, y1 = (float(v) for v in boxes[k])
            lab = int(labels[k])
            rec = {
                "image_id": int(image_id),
                "category_id": int(label_to_cat_id[lab]) if label_to_cat_id else lab,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(scores[k]),
            }
            if masks is not None:
                rec["segmentation"] = _mask_rle(masks[k])
            results.append(rec)
    return results


def _as_gt(gt, backend: str):
    """A COCO ground-truth object of the backend's own class."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FCOCO

        data = gt.dataset if hasattr(gt, "dataset") else gt
        with contextlib.redirect_stdout(io.StringIO()):
            obj = FCOCO()
            obj.dataset = copy.deepcopy(data)
            obj.createIndex()
        return obj
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, str):
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        obj = COCO()
        obj.dataset = copy.deepcopy(gt)
        obj.createIndex()
    return obj


def _per_class_ap(ev, cat_ids: list[int], names: dict[int, str]) -> dict[str, float | None]:
    prec = ev.eval["precision"]  # [T, R, K, A, M]; area 'all' = 0, maxDets 100 = -1
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        p = p[p > -1]
        out[names.get(cid, str(cid))] = 100.0 * float(p.mean()) if p.size else None
    return out


def coco_evaluate(
    gt,
    results: list[dict],
    *,
    iou_types: Iterable[str] = ("bbox", "segm"),
    backend: str = "pycocotools",
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict:
    """Evaluate COCO results against ground truth; returns ``{iou_type: {stat: value, ...,
    "per_class": {name: AP}}}``, values in percent.

    ``gt`` is a ``pycocotools.coco.COCO``, an instances dict or a JSON path. ``image_ids``
    restricts the evaluation (default: every image of ``gt``). ``backend`` is ``"pycocotools"``
    or ``"faster_coco_eval"`` (same numbers, faster on large sets).
    """
    if backend not in ("pycocotools", "faster_coco_eval"):
        raise ValueError(f"unknown backend {backend!r}")
    gt_obj = _as_gt(gt, backend)
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster as Evaluator
    else:
        from pycocotools.cocoeval import COCOeval as Evaluator
    cat_ids = sorted(gt_obj.getCatIds())
    names = {c: gt_obj.cats[c]["name"] for c in cat_ids}
    out: dict = {}
    for iou_type in iou_types:
        res = results
        if iou_type == "segm":
            res = [r for r in results if "segmentation" in r]
        if not res:
            out[iou_type] = {**{k: 0.0 for k in STAT_NAMES}, "per_class": {names[c]: 0.0 for c in cat_ids},
                             "num_detections": 0}
            continue
        res = copy.deepcopy(res)
        for r in res:
            if iou_type == "bbox":
                r.pop("segmentation", None)  # box AP uses the predicted boxes
            else:
                r.pop("bbox", None)  # so loadRes takes area and box from the mask (as detectron2 does)
        ctx = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with ctx:
            dt = gt_obj.loadRes(res)
            ev = Evaluator(gt_obj, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [float(s) for s in ev.stats[: len(STAT_NAMES)]]
        entry = {k: (None if v < 0 else 100.0 * v) for k, v in zip(STAT_NAMES, stats)}
        entry["per_class"] = _per_class_ap(ev, cat_ids, names)
        entry["num_detections"] = len(res)
        out[iou_type] = entry
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def results_markdown(metrics: dict, title: str | None = None) -> str:
    """Markdown tables (percent, one decimal) for the output of :func:`coco_evaluate`."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    types = [t for t in ("bbox", "segm") if t in metrics]
    lines.append("| | " + " | ".join(STAT_NAMES[:6]) + " |")
    lines.append("|---" * 7 + "|")
    for t in types:
        lines.append(f"| {'box' if t == 'bbox' else 'mask'} | " + " | ".join(_fmt(metrics[t][k]) for k in STAT_NAMES[:6]) + " |")
    lines.append("")
    classes = list(metrics[types[0]]["per_class"]) if types else []
    if classes:
        lines.append("| class | " + " | ".join(f"{'box' if t == 'bbox' else 'mask'} AP" for t in types) + " |")
        lines.append("|---" * (1 + len(types)) + "|")
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(_fmt(metrics[t]["per_class"].get(c)) for t in types) + " |")
        lines.append("")
    return "\n".join(lines)
