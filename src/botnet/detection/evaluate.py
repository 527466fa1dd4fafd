"""COCO evaluation of a detector over all ranks, and the eval.json / eval.md / coco_results.json files.

AP is in percent everywhere (see :mod:`botnet.detection.coco_eval`); ``eval.json`` says so in
``ap_unit``, and :func:`metrics_in_percent` reads an ``eval.json`` of an earlier botnet (fractions).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["evaluate_detector", "headline", "write_eval", "write_results", "metrics_in_percent", "AP_UNIT",
           "RESULTS_NAME"]

AP_UNIT = "percent"
RESULTS_NAME = "coco_results.json"  # COCO results format: what pycocotools' COCO.loadRes reads


@torch.no_grad()
def evaluate_detector(model, dataset, *, batch_size: int = 2, backend: str = "pycocotools", device=None,
                      progress: bool = True, num_workers: int = 0, return_results: bool = False):
    """COCO box (and mask) metrics of ``model`` on ``dataset`` (a :class:`CocoDetection`, or the val split of
    detection shards, :class:`~botnet.data.coco_shards.CocoShardVal`), in percent.

    In a multi-process job each rank runs a shard; results are gathered and rank 0 computes the
    metrics (other ranks get ``{}``). ``return_results``: ``(metrics, results)``, the second the
    COCO result records that were scored (every detection the model returned, ``category_id`` of
    the data set, masks as RLE thresholded at 0.5).
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from botnet.data.coco import detection_collate
    from botnet.detection.coco_eval import coco_evaluate, outputs_to_coco_results
    from botnet.engine.distributed import all_gather_object, get_dist_info

    info = get_dist_info()
    device = device or next(model.parameters()).device
    if hasattr(dataset, "eval_loader"):  # tar shards (botnet.data.coco_shards): each rank streams its own part
        loader = dataset.eval_loader(batch_size, info.rank, info.world_size, num_workers)
    else:
        sampler = DistributedSampler(dataset, shuffle=False) if info.distributed else None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                            collate_fn=detection_collate, num_workers=num_workers)
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    results, seen = [], set()
    it = loader
    from botnet.log import progress_enabled

    if info.is_main and progress_enabled(progress):  # a bar on a terminal only, never into a log file
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
        return ({}, []) if return_results else {}
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
    return (metrics, all_results) if return_results else metrics


def headline(metrics: dict) -> dict:
    out = {}
    for t, name in (("bbox", "box"), ("segm", "mask")):
        if t in metrics:
            for k in ("AP", "AP50", "AP75"):
                v = metrics[t][k]
                out[f"{name}_{k}"] = 0.0 if v is None else v
    return out


def write_eval(out_dir: str | os.PathLike, metrics: dict, info: dict | None = None) -> tuple[Path, Path]:
    """Write ``eval.json`` (full metrics, ``ap_unit``) and ``eval.md`` (Markdown tables) into ``out_dir``."""
    from botnet.detection.coco_eval import results_markdown
    from botnet.io.atomic import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / "eval.json", out_dir / "eval.md"
    doc = {"metrics": metrics, "ap_unit": AP_UNIT, **(info or {})}
    atomic_write_bytes(jp, json.dumps(doc, indent=1, default=str).encode())
    head = "\n".join(f"- {k}: {v}" for k, v in (info or {}).items())
    md = results_markdown(metrics, title="COCO metrics (percent)") + ("\n" + head + "\n" if head else "")
    atomic_write_bytes(mp, md.encode())
    return jp, mp


def write_results(out_dir: str | os.PathLike, results: list[dict]) -> Path:
    """``coco_results.json``: a list of ``{image_id, category_id, bbox [x, y, w, h], score,
    segmentation (RLE, counts as str)}`` that ``pycocotools.coco.COCO.loadRes`` reads."""
    from botnet.io.atomic import atomic_write_bytes

    path = Path(out_dir) / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(results).encode())
    return path


def metrics_in_percent(ev: dict) -> dict:
    """The ``metrics`` of a loaded ``eval.json`` in percent: files written before ``ap_unit`` existed
    hold fractions (pycocotools' unit), which are scaled here so old runs still publish right."""
    from botnet.detection.coco_eval import STAT_NAMES

    metrics = ev.get("metrics") or {}
    if ev.get("ap_unit") == AP_UNIT:
        return metrics

    def pct(v):
        return 100.0 * v if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    out = {}
    for t, m in metrics.items():
        if not isinstance(m, dict):
            out[t] = m
            continue
        out[t] = {k: (pct(v) if k in STAT_NAMES else v) for k, v in m.items()}
        if isinstance(m.get("per_class"), dict):
            out[t]["per_class"] = {c: pct(v) for c, v in m["per_class"].items()}
    return out
