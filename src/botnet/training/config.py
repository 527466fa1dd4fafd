"""Run configuration: named YAML recipes + command-line overrides.

A recipe is a YAML file (``configs/<name>.yaml``, or any path) holding a subset of
:data:`DEFAULTS`; it is deep-merged over the defaults, then ``--set a.b=value`` overrides are
applied (values parsed as YAML, so ``--set optim.lr=0.1 --set train.amp=bf16
--set data.mean=[0.5,0.5,0.5]`` work). A recipe may name a base with ``base: other-recipe``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "config_dirs", "list_recipes", "find_recipe", "load_config", "apply_overrides",
           "set_by_path", "get_by_path", "merge"]

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "model": {
        "name": "botnet_mini",      # botnet.create_model name
        "num_classes": None,        # None: number of classes of the data set
        "in_chans": None,           # None: 1 for Fashion-MNIST, 3 for image folders
        "img_size": None,           # None: data.img_size
        "drop_rate": 0.0,           # dropout before the classifier (paper: 0.25-0.4)
        "drop_path_rate": 0.0,      # stochastic depth (paper: up to 0.1)
        "kwargs": {},               # extra create_model(**kwargs)
    },
    "data": {
        "dataset": "fashion-mnist",  # fashion-mnist | folder
        "root": None,               # folder with train/ and val/ (folder) or IDX files (fashion-mnist)
        "download": False,          # fashion-mnist: allow torchvision download
        "train_split": "train",
        "val_split": "val",
        "img_size": 28,             # training resolution
        "eval_img_size": None,      # evaluation resolution (default img_size)
        "crop_pct": 0.875,          # eval: resize to img_size / crop_pct, centre crop img_size
        "interpolation": "bilinear",
        "mean": None,               # None: data set default (ImageNet / Fashion-MNIST statistics)
        "std": None,
        "auto_augment": None,       # timm string, e.g. rand-m9-mstd0.5-inc1 (RandAugment)
        "re_prob": 0.0,             # random erasing probability
        "hflip": 0.5,
        "scale": [0.08, 1.0],       # RandomResizedCrop scale (folders)
        "padding": 2,               # random-crop padding (Fashion-MNIST)
        "batch_size": 128,          # per process
        "eval_batch_size": None,    # default 2 x batch_size
        "num_workers": 0,
        "skip_bad": False,
        "limit_train": None,        # use only the first N training images (tests, smoke runs)
        "limit_val": None,
    },
    "optim": {
        "name": "sgd",              # any timm create_optimizer_v2 name: sgd, momentum, adamw, lamb ...
        "lr": 0.1,                  # absolute lr; with lr_base_batch set, scaled by global batch / lr_base_batch
        "lr_base_batch": None,      # e.g. 256 for "0.1 per 256 images"
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 4e-5,
        "filter_bias_and_bn": True,  # no weight decay on biases and norm parameters
    },
    "sched": {
        "name": "cosine",           # cosine | onecycle | step | constant
        "warmup_epochs": 0.0,       # linear warm-up (may be fractional)
        "warmup_lr": 1e-6,
        "min_lr": 0.0,
        "step_epochs": 30,          # step: decay every N epochs
        "gamma": 0.1,
        "pct_start": 0.25,          # onecycle
        "fit_time_budget": True,    # with train.time_budget: end the decay when the budget ends
    },
    "train": {
        "epochs": 10,
        "max_steps": None,          # stop after this many optimizer steps (overrides epochs)
        "time_budget": None,        # seconds of training; then stop and evaluate
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "ema": False,
        "ema_decay": 0.9999,
        "ema_warmup": False,        # timm ModelEmaV3 warm-up of the decay
        "amp": "none",              # none | bf16 | fp16
        "grad_clip": None,          # max gradient norm
        "channels_last": False,
        "compile": False,           # torch.compile the model
        "sync_bn": False,           # SyncBatchNorm under DDP (CUDA only)
        "freeze_bn": False,         # keep BatchNorm in eval mode (running statistics; affine params still train)
        "seed": 0,
        "deterministic": False,
        "device": "auto",
        "threads": "auto",          # CPU threads: auto (measured: shared machines are often faster with fewer) or N
        "eval_every": 1,            # evaluate every N epochs (0: only at the end)
        "save_every_steps": None,   # also checkpoint every N steps
        "log_every": 20,            # steps between log records
        "progress": True,           # tqdm progress bars
        "plots": True,              # PNG curves and confusion matrix at the end
    },
    "output": {"dir": None},        # default runs/<name>
}


def config_dirs() -> list[Path]:
    """Where named recipes are looked up: $BOTNET_CONFIG_DIR, ./configs, the repo's configs/, the package."""
    here = Path(__file__).resolve()
    dirs = []
    if os.environ.get("BOTNET_CONFIG_DIR"):
        dirs.append(Path(os.environ["BOTNET_CONFIG_DIR"]))
    dirs += [Path.cwd() / "configs", here.parents[3] / "configs", here.parents[1] / "configs"]
    out = []
    for d in dirs:
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def list_recipes() -> list[str]:
    names = set()
    for d in config_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in config_dirs():
        for cand in (d / name_or_path, d / f"{name_or_path}.yaml"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"no recipe {name_or_path!r}; known recipes: {', '.join(list_recipes()) or 'none'}")


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get_by_path(cfg: dict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_by_path(cfg: dict, dotted: str, value: Any, strict: bool = True) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``dotted="a.b"``; unknown keys raise unless under ``kwargs``."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            if strict and "kwargs" not in parts[: i + 1]:
                raise KeyError(f"unknown config key {dotted!r}")
            node[part] = {}
        node = node[part]
    if strict and parts[-1] not in node and "kwargs" not in parts:
        section = ".".join(parts[:-1])
        raise KeyError(f"unknown config key {dotted!r} (known in {section or 'top level'}: {', '.join(node)})")
    node[parts[-1]] = value


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply ``["optim.lr=0.1", ...]`` (values parsed as YAML)."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        set_by_path(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() != "" else None)
    return cfg


def _load_yaml(path: Path, seen: tuple = ()) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping")
    base = data.pop("base", None)
    if base:
        bp = find_recipe(base)
        if bp in seen:
            raise ValueError(f"recipe {path}: circular base {base}")
        data = merge(_load_yaml(bp, seen + (path,)), data)
    return data


def load_config(
    recipe: str | None = None, overrides: list[str] | None = None, *, defaults: dict | None = None
) -> dict:
    """Defaults <- recipe (name or path) <- ``--set`` overrides.

    ``defaults`` is the schema (classification's ``DEFAULTS`` unless given; detection passes its
    own): a recipe key it does not know is an error.
    """
    defaults = DEFAULTS if defaults is None else defaults
    cfg = copy.deepcopy(defaults)
    if recipe:
        data = _load_yaml(find_recipe(recipe))
        _check_keys(data, defaults, "")
        cfg = merge(cfg, data)
    return apply_overrides(cfg, overrides)


def _check_keys(data: dict, ref: dict, prefix: str) -> None:
    for k, v in data.items():
        if k not in ref:
            raise KeyError(f"unknown config key {prefix}{k!r} in recipe (known: {', '.join(ref)})")
        # "kwargs" and empty default sections are free-form
        if isinstance(v, dict) and isinstance(ref[k], dict) and k != "kwargs" and ref[k]:
            _check_keys(v, ref[k], f"{prefix}{k}.")
