"""Reading a published model folder (``config.json`` + ``model.safetensors`` + ``README.md``).

The layout is timm's (``timm.create_model("local-dir:PATH" | "hf-hub:ORG/NAME", pretrained=True)``
reads it); botnet adds a ``botnet`` block to ``config.json`` with the task, the exact model
options and the run's recipe, so ``eval``/``predict``/``detect`` rebuild the trained model.

Every command that takes a run directory takes one of these too, as a path, ``local-dir:PATH`` or
``hf-hub:ORG/NAME[@REVISION]`` (downloaded with ``huggingface_hub``; offline it is a one-line
error). Only JSON and safetensors are read: nothing in a shared folder can run code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from botnet.engine.checkpoint import CheckpointError
from botnet.engine.schemas import CONFIG
from botnet.errors import UserInputError
from botnet.validation import Dict, Int, List, Num, Str, loads_json, validate

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "FORMAT", "PublishedModelError", "published_folder",
           "read_config", "published_meta", "load_published"]

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FORMAT = "botnet-published-v1"
_RUN_WEIGHTS = ("best.safetensors", "last.safetensors")


class PublishedModelError(CheckpointError):
    """A published model folder (or hub id) is missing a file, or its files disagree."""


# config.json as timm and botnet publish write it; other keys are allowed (timm adds its own)
CONFIG_SCHEMA = Dict({
    "architecture": Str(min_len=1, required=True),
    "num_classes": Int(low=1), "num_features": Int(low=0), "global_pool": Str(),
    "label_names": List(Str(), nullable=True, max_len=1_000_000),
    "model_args": Dict({"num_classes": Int(low=1), "in_chans": Int(low=1)}, nullable=True),
    "pretrained_cfg": Dict({
        "input_size": List(Int(low=1), min_len=3, max_len=3), "mean": List(Num(), min_len=1),
        "std": List(Num(low=0, low_open=True), min_len=1), "crop_pct": Num(low=0, high=1, low_open=True),
        "interpolation": Str(), "crop_mode": Str(), "num_classes": Int(low=0)}, nullable=True),
    "botnet": Dict({
        "format": Str(), "task": Str(("classification", "detection")), "arch": Str(min_len=1),
        "model_kwargs": Dict({"num_classes": Int(low=1)}), "weights": Str(), "run_config": CONFIG,
        "class_names": List(Str(), nullable=True)}, nullable=True),
})


def _is_run_dir(p: Path) -> bool:
    return any((p / n).is_file() or (p / "checkpoints" / n).is_file() for n in _RUN_WEIGHTS)


def _looks_published(p: Path) -> bool:
    """A folder meant as a published model: no run checkpoints, and one of its three files."""
    if not p.is_dir() or _is_run_dir(p):
        return False
    if (p / WEIGHTS_NAME).is_file() or (p / CARD_NAME).is_file():
        return True
    try:  # a run directory has a config.json too, but never an "architecture" key
        return "architecture" in loads_json((p / CONFIG_NAME).read_bytes(), source=str(p / CONFIG_NAME))
    except (OSError, TypeError, UserInputError):
        return False


def published_folder(spec: str | os.PathLike) -> Path | None:
    """The local folder ``spec`` names (``hf-hub:`` ids are downloaded), or None when ``spec`` is
    not a published model (a run directory or checkpoint file: the caller reads it as before)."""
    s = os.fspath(spec)
    if s.startswith("hf-hub:"):
        return _download(s[len("hf-hub:"):])
    if s.startswith("local-dir:"):
        p = Path(s[len("local-dir:"):])
        if not p.is_dir():
            raise PublishedModelError(f"{p} is not a folder (local-dir: takes a published model folder)")
        return p
    p = Path(s)
    if p.is_file() and p.name == WEIGHTS_NAME and _looks_published(p.parent):
        return p.parent
    return p if _looks_published(p) else None


def _download(repo: str) -> Path:
    """Fetch config.json, model.safetensors and README.md of a Hub repository (cached)."""
    repo_id, _, revision = repo.partition("@")
    if not repo_id or repo_id.count("/") != 1:
        raise PublishedModelError(f"hf-hub:{repo} is not a Hub id; write hf-hub:ORG/NAME (or hf-hub:ORG/NAME@REVISION)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PublishedModelError(f"hf-hub:{repo} needs the huggingface_hub package (pip install huggingface_hub)") \
            from None
    try:
        path = snapshot_download(repo_id=repo_id, revision=revision or None,
                                 allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
    except Exception as e:  # offline, unknown repo, network: all become one line naming the id
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else " ".join(str(e).split())[:200] or type(e).__name__)
        raise PublishedModelError(f"cannot fetch hf-hub:{repo} ({why}); download the folder where there is "
                                  f"network and pass its path") from None
    return Path(path)


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a published folder, after checking the three files are there."""
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise PublishedModelError(f"{cfg_path} is missing: a published model folder needs config.json, "
                                  f"{WEIGHTS_NAME} and {CARD_NAME} (write one with botnet publish RUN_DIR OUT_DIR)")
    try:
        cfg = loads_json(cfg_path.read_bytes(), source=str(cfg_path), error=PublishedModelError)
    except OSError as e:
        raise PublishedModelError(f"cannot read {cfg_path} ({e.strerror or e})") from None
    if not isinstance(cfg, dict) or not cfg.get("architecture"):
        raise PublishedModelError(f"{cfg_path} has no architecture field; it is not a timm/botnet model config")
    validate(cfg, CONFIG_SCHEMA, source=str(cfg_path), error=PublishedModelError,
             hint="the file is damaged; re-publish the run with botnet publish")
    for name, what in ((WEIGHTS_NAME, "the weights"), (CARD_NAME, "the model card")):
        if not (folder / name).is_file():
            raise PublishedModelError(f"{folder / name} is missing ({what}); re-publish the run with botnet publish")
    return cfg


def _classifier(cfg: dict[str, Any], where: Path) -> tuple[str, dict[str, Any]]:
    """Our registry name and create_model options of a timm-style classification config."""
    from botnet.models import is_model, list_models, resolve_name

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
        from botnet.models import is_model

        if backbone is not None and not is_model(str(backbone)):
            raise PublishedModelError(f"{where} names backbone {backbone!r}, which botnet does not know")
    names = cfg.get("label_names") or b.get("class_names")
    return {"format": "botnet-checkpoint-v1", "task": task, "arch": arch, "model_kwargs": kwargs,
            "class_names": list(names) if names else None,
            "config": b.get("run_config") or (_data_config(cfg, arch) if task == "classification" else {}),
            "extra": {"weights": b.get("weights", "raw"), "class_names": list(names) if names else None,
                      **({"label_to_cat_id": b["label_to_cat_id"]} if b.get("label_to_cat_id") else {})},
            "published": str(folder)}


def _apply_preprocessing(model, cfg: dict[str, Any]) -> None:
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


def load_published(folder: Path, *, use_ema: bool = False, device: Any = "cpu",
                   task: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(model in eval mode, metadata)`` of a published folder; every mismatch is one line."""
    from botnet.engine import checkpoint as ckpt
    from botnet.engine.rebuild import build_from_metadata

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
    state = ckpt.read_weights_file(wpath)
    try:
        ckpt.check_state_dict(model, state, wpath, arch=meta["arch"])
    except ckpt.CheckpointMismatchError as e:
        raise PublishedModelError(f"{wpath} does not match {CONFIG_NAME} beside it: {e}") from None
    model.load_state_dict(state, strict=True)
    _apply_preprocessing(model, cfg)
    return model.to(device).eval(), meta
