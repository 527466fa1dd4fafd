"""Inference helpers for ``botnet predict`` / ``botnet attention``: checkpoint -> model + transform."""
from __future__ import annotations

import os
from typing import Any

import torch

from botnet.data.errors import BadImageError

__all__ = ["load_for_inference", "load_image", "predict_files"]


def load_for_inference(checkpoint: str | os.PathLike, use_ema: bool = False, device: str = "cpu"):
    """``(model, transform, class_names, metadata)`` for a training checkpoint."""
    from botnet.classification.config import CLASSIFICATION_SCHEMA
    from botnet.data.builder import build_eval_transform
    from botnet.engine.rebuild import load_model

    model, meta = load_model(checkpoint, use_ema=use_ema, device=device, task="classification")
    cfg = CLASSIFICATION_SCHEMA.from_saved(meta.get("config"))
    in_chans = int((meta.get("model_kwargs") or {}).get("in_chans", 3))
    transform = build_eval_transform(cfg, in_chans, for_files=True)
    names = meta.get("class_names") or [str(i) for i in range((meta.get("model_kwargs") or {}).get("num_classes", 0))]
    return model, transform, names, meta


def load_image(path: str, in_chans: int, invert: bool = False):
    """PIL image in ``L`` (1 channel) or ``RGB`` mode; grayscale/RGBA/palette inputs are converted."""
    from PIL import ImageOps

    from botnet.data.folder import pil_loader

    img = pil_loader(path, "L" if in_chans == 1 else "RGB")
    return ImageOps.invert(img) if invert else img


@torch.no_grad()
def predict_files(model, transform, class_names, paths: list[str], topk: int = 5, skip_bad: bool = False,
                  invert: bool = False, device: str = "cpu", tta: str = "none") -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Top-k predictions per file; returns ``(results, skipped)`` where skipped is ``[(path, reason)]``.
    ``tta``: the test-time augmentation of :func:`botnet.classification.task.log_probs`."""
    from botnet.classification.task import log_probs

    in_chans = model.conv1.in_channels if hasattr(model, "conv1") else 3
    results, skipped = [], []
    for p in paths:
        try:
            img = load_image(p, in_chans, invert)
        except (BadImageError, FileNotFoundError) as e:
            if not skip_bad:
                raise
            skipped.append((p, e.reason if isinstance(e, BadImageError) else "no such file"))
            continue
        x = transform(img).unsqueeze(0).to(device)
        prob = log_probs(model, x, tta).exp()[0]
        k = min(topk, prob.numel())
        v, i = prob.topk(k)
        results.append({"file": p, "top": [{"class": class_names[j] if j < len(class_names) else str(j),
                                            "index": int(j), "prob": float(pv)} for pv, j in zip(v.tolist(), i.tolist())]})
    return results, skipped
