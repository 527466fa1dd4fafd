"""One way back from a checkpoint to a model: ``load_model(path)``.

Every checkpoint stores its task, its architecture and every option the model was built with
(``model_kwargs``). The registered task (:mod:`botnet.tasks`) builds its models from those two; ``load_model``
reads the metadata, builds, and loads the weights strictly (raw, or EMA from the training
state). ``eval``, ``predict``, ``attention``, ``export``, ``detect eval|predict`` and resuming all
go through here, so an exported or evaluated model is always the model that was trained.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from botnet.engine.checkpoint import load_weights, read_metadata
from botnet.errors import CheckpointError
from botnet.io.weights import CheckpointMismatchError, check_state_dict, read_weights_file, resolve_checkpoint

__all__ = ["build_from_metadata", "load_model", "load_published", "task_of"]


def task_of(meta: dict[str, Any]) -> str:
    if meta.get("task"):
        return str(meta["task"])
    return "detection" if str(meta.get("arch", "")).startswith("detector:") else "classification"


def build_from_metadata(meta: dict[str, Any], where: str = "checkpoint") -> nn.Module:
    """Build (untrained) the model a checkpoint's metadata describes."""
    if meta.get("format") != "botnet-checkpoint-v1" or not meta.get("arch"):
        raise CheckpointError(f"{where} is not a botnet checkpoint (no architecture metadata); build the model "
                                   f"yourself and use botnet.load_resnet_weights or --init-weights")
    task, kwargs = task_of(meta), meta.get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where} has corrupt model_kwargs metadata ({kwargs!r})")
    from botnet.tasks import load_task

    try:
        builder = load_task(task).build_model
    except CheckpointError:
        raise CheckpointError(f"{where} was written by task {task!r}, which this botnet does not know "
                              f"(install or import the package that registers it)") from None
    try:
        return builder(meta["arch"], dict(kwargs))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where} describes a model this botnet cannot build ({meta['arch']}, "
                                   f"{kwargs}): {' '.join(str(e).split())}") from None


def load_model(path: str | os.PathLike, *, use_ema: bool = False, device: str | torch.device = "cpu",
               task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, metadata)`` for a checkpoint file, a run directory or a
    published model folder (a path, ``local-dir:PATH`` or ``hf-hub:ORG/NAME``, see :mod:`botnet.hub`).

    ``task`` (optional) makes a checkpoint of another task a clear error instead of a surprise.
    """
    from botnet.errors import resolve_device
    from botnet.io.published import published_folder

    device = resolve_device(str(device))
    folder = published_folder(path)
    if folder is not None:  # config.json says what to build; model.safetensors must fit it
        return load_published(folder, use_ema=use_ema, device=device, task=task)
    wpath = resolve_checkpoint(path)
    meta = read_metadata(wpath)
    if task is not None and meta.get("arch") and task_of(meta) != task:
        raise CheckpointError(f"{wpath} is a {task_of(meta)} checkpoint ({meta.get('arch')}), not a {task} one")
    model = build_from_metadata(meta, str(wpath))
    load_weights(model, wpath, use_ema=use_ema)
    return model.to(device).eval(), meta


def load_published(folder: Path, *, use_ema: bool = False, device: Any = "cpu",
                   task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, metadata)`` of a published folder of any task; every mismatch is one line."""
    from botnet.io.published import CONFIG_NAME, WEIGHTS_NAME, PublishedModelError, read_config
    from botnet.models.pretrained import apply_preprocessing, published_meta

    cfg = read_config(folder)
    meta = published_meta(folder, cfg)
    if use_ema:
        raise PublishedModelError(f"{folder} holds one set of weights ({meta['extra']['weights']}, chosen when it "
                                  f"was published); leave out --ema")
    if task is not None and meta["task"] != task:
        raise PublishedModelError(f"{folder / CONFIG_NAME} describes a {meta['task']} model ({meta['arch']}), "
                                  f"not a {task} one")
    model = build_from_metadata(meta, str(folder / CONFIG_NAME))
    wpath = folder / WEIGHTS_NAME
    state = read_weights_file(wpath)
    try:
        check_state_dict(model, state, wpath, arch=meta["arch"])
    except CheckpointMismatchError as e:
        raise PublishedModelError(f"{wpath} does not match {CONFIG_NAME} beside it: {e}") from None
    model.load_state_dict(state, strict=True)
    apply_preprocessing(model, cfg)
    return model.to(device).eval(), meta
