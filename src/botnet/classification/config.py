"""Classification's config schema (``botnet train``): the engine's sections plus its own keys."""
from __future__ import annotations

import os
from typing import Any

from botnet.engine.config import (_choice, _num, check_model_kwargs, check_sections, check_stats, check_typed,
                                  task_schema, validate_engine_config)

__all__ = ["CLASSIFICATION_DEFAULTS", "TTA_MODES", "validate_classification_config", "model_kwargs_from_cfg",
           "resolve_classification_config", "attention_grid_warning"]

TTA_MODES = ("none", "hflip")  # test-time augmentation of the evaluation (see classification.task.log_probs)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's resize modes

# Classification's schema (``botnet train``): Fashion-MNIST or ImageNet-layout folders. It is also the
# neutral base every run starts from: the model's own defaults hold (its strides, its image size) and
# nothing is assumed about the data (no flips), unless a recipe the user names (``--config``) or a
# flag says otherwise. ``None`` values are filled by :func:`resolve_classification_config`.
_OWN: dict[str, Any] = {
    "name": None,                   # None: the recipe's file name, else DATA-MODEL (runs/<name>)
    "model": {
        "name": "botnet_mini",      # botnet.create_model name
        "num_classes": None,        # None: number of classes of the data set
        "in_chans": None,           # None: 1 for Fashion-MNIST, 3 for image folders
        "img_size": None,           # attention tables' size; None: data.img_size (--img-size sets both)
        "drop_rate": 0.0,           # dropout before the classifier (paper: 0.25-0.4)
        "drop_path_rate": 0.0,      # stochastic depth (paper: up to 0.1)
    },
    "data": {
        "dataset": "fashion-mnist",  # fashion-mnist | folder | shards
        "root": None,               # folder with train/ and val/ (folder), shards (botnet data shards) or IDX files
        "download": False,          # fashion-mnist: allow torchvision download
        "train_split": "train",
        "val_split": "val",
        "img_size": None,           # training resolution; None: the model's default (28 botnet_mini, 224 botnet50)
        "eval_img_size": None,      # evaluation resolution (default img_size)
        "crop_pct": None,           # eval: resize to img_size / crop_pct, centre crop; None: the model's own
        "interpolation": None,      # resize mode; None: the model's own (bicubic, as its pretrained_cfg says)
        "mean": None,               # None: data set default (ImageNet / Fashion-MNIST statistics)
        "std": None,
        "auto_augment": None,       # timm string, e.g. rand-m9-mstd0.5-inc1 (RandAugment)
        "re_prob": 0.0,             # random erasing probability
        "hflip": 0.0,               # mirror-image probability; 0: a mirror image may be another class (digits, text)
        "scale": [0.08, 1.0],       # RandomResizedCrop scale (folders)
        "padding": 2,               # random-crop padding (Fashion-MNIST)
        "eval_batch_size": None,    # default 2 x batch_size
        "eval_tta": "none",         # none | hflip: average the probabilities of each image and its mirror image
        "skip_bad": False,
        "shuffle_block": 1000,      # shards: samples each loader worker holds and shuffles together
        "limit_train": None,        # use only the first N training images (tests, smoke runs)
        "limit_val": None,
    },
    "train": {
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
    },
}


CLASSIFICATION_DEFAULTS = task_schema(_OWN)


def _check_model_name(cfg: dict) -> None:
    from botnet.errors import ConfigError
    from botnet.models import list_models

    arch = cfg["model"].get("name")
    if not isinstance(arch, str) or arch not in list_models():
        raise ConfigError(f"model.name = {arch!r} is not a botnet model; known: {', '.join(list_models())}")


def model_kwargs_from_cfg(cfg: dict, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Every ``create_model`` argument of the run: stored in checkpoints, so any model rebuilds exactly."""
    m = cfg["model"]
    kw: dict[str, Any] = {"num_classes": int(m["num_classes"] or num_classes), "in_chans": int(in_chans),
                          "img_size": int(m["img_size"] or cfg["data"]["img_size"])}
    if m.get("drop_rate"):
        kw["drop_rate"] = float(m["drop_rate"])
    if m.get("drop_path_rate"):
        kw["drop_path_rate"] = float(m["drop_path_rate"])
    kw.update(m.get("kwargs") or {})
    return kw


def _model_default_size(m: dict) -> tuple[Any, str]:
    """The image size a model is built for when the run names none, and where that size comes from."""
    from botnet.models import MODEL_CFGS, resolve_name

    kw = m.get("kwargs") if isinstance(m.get("kwargs"), dict) else {}
    if m.get("img_size") is not None:
        return m["img_size"], "= model.img_size"
    if kw.get("img_size") is not None:
        return kw["img_size"], "= model.kwargs.img_size"
    c = MODEL_CFGS.get(resolve_name(str(m.get("name"))))
    return (c.img_size, f"{m['name']}'s default size") if c else (None, "")


def _run_name(cfg: dict, recipe: str | None) -> tuple[str, str]:
    """A recipe's file name, else DATA-MODEL: runs of one data set and model share a name, others do not."""
    if recipe:
        from botnet.engine.config import find_recipe

        path = find_recipe(recipe)
        return path.stem, f"recipe file {path.name}"
    d, m = cfg["data"], cfg["model"]
    data = str(d.get("dataset"))
    if data == "folder" and d.get("root"):
        data = os.path.basename(os.path.abspath(str(d["root"]))) or "folder"
    return f"{data}-{m.get('name')}", "data and model"


def resolve_classification_config(cfg: dict, recipe: str | None = None) -> dict[str, str]:
    """Fill, in place, the values the base leaves open (``None``); returns ``{key: where it came from}``.

    ``data.img_size``: the model's default size (or ``model.img_size`` when set); ``model.img_size``:
    ``data.img_size``, so the attention tables fit the images; ``name``: the recipe's file name
    (``recipe``), else ``DATA-MODEL``. A value that cannot be resolved (an unknown model) stays
    ``None`` for the validation to report."""
    filled: dict[str, str] = {}
    m, d = cfg.get("model"), cfg.get("data")
    if not isinstance(m, dict) or not isinstance(d, dict):
        return filled  # check_sections names the section
    if d.get("img_size") is None:
        size, why = _model_default_size(m)
        if size is not None:
            d["img_size"], filled["data.img_size"] = size, why
    if m.get("img_size") is None and d.get("img_size") is not None:
        m["img_size"], filled["model.img_size"] = d["img_size"], "= data.img_size"
    for key, value in _model_eval_defaults(m).items():
        if d.get(key) is None and value is not None:  # timm's resolve_data_config habit: the model's own
            d[key], filled[f"data.{key}"] = value, f"{m['name']}'s pretrained_cfg"
    if cfg.get("name") is None:
        cfg["name"], filled["name"] = _run_name(cfg, recipe)
    return filled


def _model_eval_defaults(m: dict) -> dict[str, Any]:
    """The model's own ``crop_pct`` and ``interpolation`` (its ``pretrained_cfg``), as timm resolves them."""
    from botnet.models import MODEL_CFGS, resolve_name
    from botnet.models.botnet import INTERPOLATION

    c = MODEL_CFGS.get(resolve_name(str(m.get("name"))))
    return {"crop_pct": c.crop_pct, "interpolation": INTERPOLATION} if c else {}


def _attention_grids(arch: str, kw: dict, size) -> list[tuple[tuple[int, int], str]]:
    """(H, W) tokens and position kind of each BoT block's attention when ``arch`` sees ``size`` px."""
    import torch

    from botnet.models import create_model

    with torch.device("meta"):  # the grids come from the constructor: no memory, no compute
        model = create_model(arch, **{**kw, "img_size": size})
    layers = model.attention_layers() if hasattr(model, "attention_layers") else []
    return [(tuple(mod.feat_size), mod.pos) for _, mod in layers]


def _resize(grids: list, tables: list) -> tuple[float, tuple, tuple]:
    """The largest factor by which a position table is stretched or shrunk: (factor, grid, table)."""
    worst = (1.0, (0, 0), (0, 0))
    for (g, _), (t, pos) in zip(grids, tables):
        if pos != "none":
            worst = max(worst, (max(max(a / b, b / a) for a, b in zip(g, t)), g, t))
    return worst


def attention_grid_warning(cfg: dict) -> str | None:
    """One line when a run's attention has (almost) no positions to encode, else ``None``.

    Said when, at a training or evaluation size, a BoT block attends over fewer than 2x2 tokens;
    when its position tables are built (at ``model.img_size``) for fewer than 2x2 tokens (a resized
    one-entry table is a constant); or when the tables are resized by more than a factor of 4."""
    d, arch = cfg["data"], cfg["model"]["name"]
    kw = model_kwargs_from_cfg(cfg, 10, 1)  # classes and channels do not change the token grids
    table_size = kw["img_size"]
    tables = _attention_grids(arch, kw, table_size)
    if not tables:
        return None
    parts, advice, few_tokens = [], [], False
    for size in sorted({int(d["img_size"]), int(d["eval_img_size"] or d["img_size"])}):
        grids = tables if size == table_size else _attention_grids(arch, kw, size)
        small = [g for g, _ in grids if min(g) < 2]
        factor, g, t = _resize(grids, tables)
        if small:
            few_tokens = True
            parts.append(f"at {size} px {len(small)} of {len(grids)} BoT blocks attend over {small[-1][0]}x"
                         f"{small[-1][1]} tokens, fewer than 2x2")
            advice.append("raise --img-size or lower model.kwargs.strides")
        elif factor > 4:
            parts.append(f"at {size} px the position tables built for {t[0]}x{t[1]} tokens (model.img_size "
                         f"{table_size}) are resized to {g[0]}x{g[1]} ({factor:.1f}x)")
            advice.append("set model.img_size near the images' size (--img-size sets both)")
    flat = [t for t, pos in tables if pos != "none" and min(t) < 2]
    if flat and not few_tokens:  # (with too few tokens as well, the tables are the lesser problem)
        parts.append(f"the position tables of {len(flat)} of {len(tables)} BoT blocks are built for "
                     f"{flat[-1][0]}x{flat[-1][1]} tokens (model.img_size {table_size}): they encode no position")
        advice.append("raise model.img_size (--img-size sets it with the images' size)")
    if not parts:
        return None
    return f"{arch}: " + "; ".join(parts) + ". To fix: " + "; ".join(dict.fromkeys(advice))


def validate_classification_config(cfg: dict) -> dict:
    """Fill the open values (:func:`resolve_classification_config`), then the engine's checks plus
    classification's keys; raises a one-line ``ConfigError``."""
    from botnet.validation import Bool, List, Num, Str

    check_sections(cfg, CLASSIFICATION_DEFAULTS)
    _check_model_name(cfg)  # before the sizes it decides are checked
    resolve_classification_config(cfg)
    validate_engine_config(cfg)
    _choice(cfg, "data.interpolation", INTERPOLATIONS)
    check_stats(cfg)
    check_typed(cfg, "data.scale", List(Num(low=0, high=1), min_len=2, max_len=2))
    check_typed(cfg, "data.auto_augment", Str(min_len=1, nullable=True))
    check_typed(cfg, "data.root", Str(min_len=1, nullable=True))
    for key in ("data.download", "data.skip_bad"):
        check_typed(cfg, key, Bool())
    _num(cfg, "train.label_smoothing", low=0, high=1, high_open=True)
    _num(cfg, "train.mixup", low=0)
    _num(cfg, "train.cutmix", low=0)
    _num(cfg, "data.img_size", kind=int, low=1)
    _num(cfg, "data.eval_img_size", kind=int, low=1, optional=True)
    _num(cfg, "data.eval_batch_size", kind=int, low=1, optional=True)
    _num(cfg, "data.crop_pct", low=0, high=1, low_open=True)
    _num(cfg, "data.hflip", low=0, high=1)
    _num(cfg, "data.re_prob", low=0, high=1)
    _num(cfg, "data.padding", kind=int, low=0)
    _num(cfg, "data.limit_train", kind=int, low=1, optional=True)
    _num(cfg, "data.limit_val", kind=int, low=1, optional=True)
    _num(cfg, "data.shuffle_block", kind=int, low=1)
    _choice(cfg, "data.dataset", ("fashion-mnist", "folder", "shards"))
    _choice(cfg, "data.eval_tta", TTA_MODES)
    _num(cfg, "model.drop_rate", low=0, high=1, high_open=True)
    _num(cfg, "model.drop_path_rate", low=0, high=1, high_open=True)
    _num(cfg, "model.num_classes", kind=int, low=1, optional=True)
    _num(cfg, "model.img_size", kind=int, low=1, optional=True)
    kw = model_kwargs_from_cfg(cfg, 10, 1)
    kw.pop("num_classes"), kw.pop("in_chans")
    check_model_kwargs(cfg["model"]["name"], kw)
    return cfg
