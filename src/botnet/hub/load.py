"""One-line loading of published models: a classifier through timm, a detector as torchvision's model.

    model = botnet.create_model("botnet_mini", pretrained="OUT_DIR")     # or "hf-hub:ORG/NAME"
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)      # the same model and weights
    detector = botnet.hub.load_detector("OUT_DIR")                       # torchvision MaskRCNN/FasterRCNN
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from botnet.hub.source import (CONFIG_NAME, WEIGHTS_NAME, PublishedModelError, published_folder, published_meta,
                               read_config)

__all__ = ["create_pretrained", "load_detector", "check_weights"]


def _folder(source: str | os.PathLike) -> Path:
    folder = published_folder(source)
    if folder is None:
        p = Path(os.fspath(source))
        what = "does not exist" if not p.exists() else "is not a published model folder (config.json, " \
                                                       "model.safetensors, README.md)"
        raise PublishedModelError(f"{p} {what}; write one with botnet publish RUN_DIR OUT_DIR")
    return folder


def check_weights(folder: Path, meta: dict[str, Any]) -> None:
    """model.safetensors has exactly the tensors config.json describes (names and shapes from the
    file header against the model built on the meta device: no weights are read)."""
    from safetensors import safe_open

    from botnet.engine import checkpoint as ckpt
    from botnet.engine.rebuild import build_from_metadata
    from botnet.models.limits import ModelTooLargeError, check_model

    try:  # the meta build below only caps the numbers: the memory the real one would take, first
        check_model(str(meta["arch"]), dict(meta["model_kwargs"]))
    except ModelTooLargeError as e:
        raise PublishedModelError(f"{folder / CONFIG_NAME}: {e}") from None
    with torch.device("meta"):
        model = build_from_metadata(meta, str(folder / CONFIG_NAME))
    wpath = folder / WEIGHTS_NAME
    try:
        with safe_open(str(wpath), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as e:
        raise PublishedModelError(f"cannot read {wpath}: {' '.join(str(e).split())[:160]} (truncated, or not a "
                                  f"safetensors file)") from None
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        ckpt.check_state_dict(model, state, wpath, arch=meta["arch"])
    except ckpt.CheckpointMismatchError as e:
        raise PublishedModelError(f"{wpath} does not match {CONFIG_NAME} beside it: {e}") from None


def create_pretrained(name: str | None, source: str | os.PathLike, **kwargs) -> nn.Module:
    """``botnet.create_model(name, pretrained=source, **kwargs)``: checked here (one-line errors),
    then built and loaded by ``timm.create_model("local-dir:...", pretrained=True)``."""
    import timm

    from botnet.models import resolve_name

    folder = _folder(source)
    cfg = read_config(folder)
    meta = published_meta(folder, cfg)
    if meta["task"] != "classification":
        raise PublishedModelError(f"{folder / CONFIG_NAME} describes a {meta['task']} model; load it with "
                                  f"botnet.hub.load_detector({str(folder)!r})")
    if name is not None and resolve_name(name) != meta["arch"]:
        raise PublishedModelError(f"{folder / CONFIG_NAME} holds a {meta['arch']} model, not {name}; "
                                  f"pass name={meta['arch']!r} or None")
    check_weights(folder, meta)
    return timm.create_model(f"local-dir:{folder}", pretrained=True,
                             **{k: v for k, v in kwargs.items() if v is not None})


def load_detector(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The torchvision detector of a published detection folder (or hf-hub id), in eval mode."""
    from botnet.engine.rebuild import load_model

    return load_model(_folder(source), device=device, task="detection")[0]
