"""Published models as models: ``create_model(name, pretrained=FOLDER | "hf-hub:ORG/NAME")``.

A folder written by ``botnet publish`` (:mod:`botnet.io.published` reads it) is checked here
before anything is built, each problem one line naming the file: the task, the architecture, the
size this machine can hold, and every tensor of ``model.safetensors`` against the model
``config.json`` describes (names and shapes from the file header, the model built on the meta
device). Then timm's own loader builds and loads it (``timm.create_model("local-dir:...",
pretrained=True)``), so botnet and timm give the same model. :func:`published_meta` also tells the
engine what to rebuild from a published folder of any task.

    model = botnet.create_model("botnet_mini", pretrained="OUT_DIR")     # or "hf-hub:ORG/NAME"
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)      # the same model and weights
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from botnet.io.published import CONFIG_NAME, WEIGHTS_NAME, PublishedModelError, read_config, require_published
from botnet.io.weights import CheckpointMismatchError, check_state_dict
from botnet.models._registry import build_model, is_model, list_models, resolve_name

__all__ = ["create_pretrained", "check_weights", "published_meta", "apply_preprocessing"]


def _classifier(cfg: dict[str, Any], where: Path) -> tuple[str, dict[str, Any]]:
    """Our registry name and create_model options of a timm-style classification config."""
    name = str(cfg["architecture"])
    if not is_model(name):
        raise PublishedModelError(f"{where} names architecture {name!r}, which botnet does not know "
                                  f"(known: {', '.join(list_models())})")
    kwargs = dict(cfg.get("model_args") or {})
    if not isinstance(cfg.get("model_args", {}), dict):
        raise PublishedModelError(f"{where}: model_args must be a JSON object")
    kwargs["num_classes"] = int(cfg.get("num_classes", kwargs.get("num_classes", 1000)))
    return resolve_name(name), kwargs


def _data_config(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """A classification recipe whose evaluation transform is the folder's pretrained_cfg (used when
    config.json carries no botnet block, e.g. a folder timm wrote)."""
    pc = cfg.get("pretrained_cfg") or {}
    size = (pc.get("input_size") or (3, 224, 224))[-1]
    data = {"dataset": "folder", "img_size": int(size), "crop_pct": float(pc.get("crop_pct", 0.875)),
            "interpolation": pc.get("interpolation", "bicubic")}
    if pc.get("mean") and pc.get("std"):
        data.update(mean=list(pc["mean"]), std=list(pc["std"]))
    return {"model": {"name": arch}, "data": data}


def published_meta(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint-style metadata (task, arch, model_kwargs, class_names, config) of a published
    folder, in the shape ``botnet.engine.rebuild`` reads from a checkpoint."""
    where = folder / CONFIG_NAME
    b = cfg.get("botnet") if isinstance(cfg.get("botnet"), dict) else {}
    task = str(b.get("task") or "classification")
    if task == "classification":
        arch, kwargs = _classifier(cfg, where)
    else:
        arch, kwargs = b.get("arch"), b.get("model_kwargs")
        if not arch or not isinstance(kwargs, dict):
            raise PublishedModelError(f"{where}: the botnet block of a {task} model needs arch and model_kwargs")
        backbone = kwargs.get("backbone")
        if backbone is not None and not is_model(str(backbone)):
            raise PublishedModelError(f"{where} names backbone {backbone!r}, which botnet does not know")
    names = cfg.get("label_names") or b.get("class_names")
    return {"format": "botnet-checkpoint-v1", "task": task, "arch": arch, "model_kwargs": kwargs,
            "class_names": list(names) if names else None,
            "config": b.get("run_config") or (_data_config(cfg, arch) if task == "classification" else {}),
            "extra": {"weights": b.get("weights", "raw"), "class_names": list(names) if names else None,
                      **({"label_to_cat_id": b["label_to_cat_id"]} if b.get("label_to_cat_id") else {})},
            "published": str(folder)}


def apply_preprocessing(model, cfg: dict[str, Any]) -> None:
    """The model's pretrained_cfg takes the folder's preprocessing and labels, as timm's loader does."""
    pc = getattr(model, "pretrained_cfg", None)
    if not isinstance(pc, dict):
        return
    src = cfg.get("pretrained_cfg") or {}
    for k in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation"):
        if k in src:
            pc[k] = tuple(src[k]) if isinstance(src[k], list) else src[k]
    if cfg.get("label_names"):
        pc["label_names"] = list(cfg["label_names"])


def _build_classifier(meta: dict[str, Any], where: str) -> nn.Module:
    """The registry's model for a classifier's metadata; options it cannot take are one line."""
    try:
        return build_model(meta["arch"], **dict(meta["model_kwargs"]))
    except (TypeError, ValueError, KeyError) as e:
        raise PublishedModelError(f"{where} describes a model this botnet cannot build ({meta['arch']}, "
                                  f"{meta['model_kwargs']}): {' '.join(str(e).split())}") from None


def check_weights(folder: Path, meta: dict[str, Any],
                  build: Callable[[dict[str, Any], str], nn.Module] | None = None) -> None:
    """model.safetensors has exactly the tensors config.json describes (names and shapes from the
    file header against the model built on the meta device: no weights are read). ``build(meta,
    where)`` builds the described model (default: the registry's, for a classifier)."""
    from safetensors import safe_open

    from botnet.models.limits import ModelTooLargeError, check_model

    try:  # the meta build below only caps the numbers: the memory the real one would take, first
        check_model(str(meta["arch"]), dict(meta["model_kwargs"]))
    except ModelTooLargeError as e:
        raise PublishedModelError(f"{folder / CONFIG_NAME}: {e}") from None
    with torch.device("meta"):
        model = (build or _build_classifier)(meta, str(folder / CONFIG_NAME))
    wpath = folder / WEIGHTS_NAME
    try:
        with safe_open(str(wpath), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as e:
        raise PublishedModelError(f"cannot read {wpath}: {' '.join(str(e).split())[:160]} (truncated, or not a "
                                  f"safetensors file)") from None
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        check_state_dict(model, state, wpath, arch=meta["arch"])
    except CheckpointMismatchError as e:
        raise PublishedModelError(f"{wpath} does not match {CONFIG_NAME} beside it: {e}") from None


def create_pretrained(name: str | None, source: str | os.PathLike, **kwargs) -> nn.Module:
    """``botnet.create_model(name, pretrained=source, **kwargs)``: checked here (one-line errors),
    then built and loaded by ``timm.create_model("local-dir:...", pretrained=True)``."""
    import timm

    folder = require_published(source)
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
