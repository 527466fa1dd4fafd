"""The published model folder (``config.json`` + ``model.safetensors`` + ``README.md``): finding one
and reading its config.

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

from botnet.errors import CheckpointError, UserInputError
from botnet.validation import Dict, Int, List, Num, Str, loads_json, validate

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "FORMAT", "RUN_CONFIG", "CONFIG_SCHEMA", "PublishedModelError",
           "published_folder", "require_published", "read_config", "write_generic_publish"]

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FORMAT = "botnet-published-v1"
_RUN_WEIGHTS = ("best.safetensors", "last.safetensors")


class PublishedModelError(CheckpointError):
    """A published model folder (or hub id) is missing a file, or its files disagree."""


# the sections of a run config (as a checkpoint and a published folder store it); each must be a mapping
RUN_CONFIG = Dict({k: Dict() for k in ("model", "data", "optim", "sched", "train", "eval", "output")},
                  what="a mapping (the run config)")

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
        "format": Str(), "task": Str(min_len=1), "arch": Str(min_len=1),
        "model_kwargs": Dict({"num_classes": Int(low=1)}), "weights": Str(), "run_config": RUN_CONFIG,
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


def require_published(source: str | os.PathLike) -> Path:
    """The published folder ``source`` names; one line saying what it is instead when it is none."""
    folder = published_folder(source)
    if folder is None:
        p = Path(os.fspath(source))
        what = "does not exist" if not p.exists() else "is not a published model folder (config.json, " \
                                                       "model.safetensors, README.md)"
        raise PublishedModelError(f"{p} {what}; write one with botnet publish RUN_DIR OUT_DIR")
    return folder


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
    task = (cfg.get("botnet") or {}).get("task")
    if task is not None:
        from botnet.tasks import is_task, task_specs

        if not is_task(task):
            raise PublishedModelError(f"{cfg_path}: botnet.task is {task!r}, a task this botnet does not know (known: "
                                      f"{', '.join(s.name for s in task_specs())}); install or import the package "
                                      f"that registers it")
    for name, what in ((WEIGHTS_NAME, "the weights"), (CARD_NAME, "the model card")):
        if not (folder / name).is_file():
            raise PublishedModelError(f"{folder / name} is missing ({what}); re-publish the run with botnet publish")
    return cfg


def write_generic_publish(folder: Path, *, task: str, meta: dict[str, Any], info: dict[str, Any]) -> None:
    """``config.json`` and a short ``README.md`` for a task without a format of its own: the botnet block (task,
    architecture, every model option, the run's config) is all ``load_model`` needs to rebuild the model."""
    import json

    names = list(meta.get("class_names") or [])
    block = {"format": FORMAT, "task": task, "arch": meta["arch"], "model_kwargs": dict(meta["model_kwargs"]),
             "weights": info.get("which", "raw"), "run_config": info.get("config") or {},
             "botnet_version": info.get("botnet_version")}
    config = {"architecture": meta["arch"], "label_names": names or None, "botnet": block}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
    final = (info.get("summary") or {}).get("final") or {}
    rows = [f"| {which} | {name} | {value:.4g} |" for which, metrics in final.items() if isinstance(metrics, dict)
            for name, value in metrics.items() if isinstance(value, (int, float))]
    card = [f"# {meta['arch']} ({task})", "", f"Weights: {info.get('weights', '')}.", "",
            f"Trained with `{info.get('command', '')}`; load with `botnet.engine.load_model({folder.name!r})`.", ""]
    if rows:
        card += ["| weights | metric | value |", "|---|---|---|", *rows, ""]
    (folder / CARD_NAME).write_text("\n".join(card))
