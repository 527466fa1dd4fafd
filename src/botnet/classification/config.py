"""Classification's config schema (``botnet train``): the engine's sections plus its own keys."""
from __future__ import annotations

import math
import os
from typing import Any

from botnet.engine.config import ENGINE_SCHEMA, Field, Section, check_model_kwargs
from botnet.validation import List, Num

__all__ = ["CLASSIFICATION_SCHEMA", "CLASSIFICATION_DEFAULTS", "TTA_MODES", "validate_classification_config",
           "model_kwargs_from_cfg", "resolve_classification_config", "attention_grid_warning"]

TTA_MODES = ("none", "hflip")  # test-time augmentation of the evaluation (see classification.task.log_probs)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's resize modes

# Classification's schema (``botnet train``): Fashion-MNIST, ImageNet-layout folders or their tar
# shards. It is also the neutral base every run starts from: the model's own defaults hold (its
# strides, its image size) and nothing is assumed about the data (no flips), unless a recipe the
# user names (``--config``) or a flag says otherwise. Null values are filled by
# :func:`resolve_classification_config`.
#
# Label smoothing, mixup and cutmix sit in their own ``loss`` section: together they decide the
# training targets and the criterion (timm's Mixup smooths and mixes the labels into soft targets
# for SoftTargetCrossEntropy), and no other task has them. Runs saved with them under ``train``
# read with them moved (``renamed``).
CLASSIFICATION_SCHEMA = ENGINE_SCHEMA.extend(
    Section("model", (
        Field("name", "botnet_mini", str, flag="--model",
              help="architecture name from botnet.list_models(), e.g. botnet_mini, botnet50"),
        Field("num_classes", None, int, low=1, nullable=True, help="null: the number of classes of the data set"),
        Field("in_chans", None, int, low=1, nullable=True, help="null: 1 for Fashion-MNIST, 3 for image folders"),
        Field("img_size", None, int, low=1, nullable=True,
              help="the size the attention tables are built for; null: data.img_size (--img-size sets both)"),
        Field("drop_rate", 0.0, float, low=0, high=1, high_open=True, flag="--drop-rate",
              help="dropout before the classifier"),
        Field("drop_path_rate", 0.0, float, low=0, high=1, high_open=True, flag="--drop-path-rate",
              help="stochastic depth rate"),
    )),
    Section("data", (
        Field("dataset", "fashion-mnist", str, choices=("fashion-mnist", "folder", "shards"), flag="--dataset",
              help="data set type: fashion-mnist, folder (ImageNet layout ROOT/train/CLASS/*.jpg, "
                   "ROOT/val/CLASS/*.jpg) or shards (tar shards written by botnet data shards)"),
        Field("root", None, str, nullable=True, flag="--data-dir",
              help="data folder: ROOT with train/ and val/ for 'folder'; the shards folder for 'shards'; a folder "
                   "with the Fashion-MNIST IDX files (or torchvision's FashionMNIST root) for fashion-mnist"),
        Field("download", False, bool, flag="--download",
              help="let torchvision download Fashion-MNIST when it is not installed (needs internet)"),
        Field("train_split", "train", str, help="the training split's folder (or shard prefix)"),
        Field("val_split", "val", str, help="the validation split's folder (or shard prefix)"),
        Field("img_size", None, int, low=1, flag="--img-size", also_sets=("model.img_size",),
              help="image size in pixels for training and evaluation; the attention tables are built for it too, "
                   "unless --set model.img_size=N names another size (default: the model's own size, e.g. 224 "
                   "for botnet50)"),
        Field("eval_img_size", None, int, low=1, nullable=True, help="evaluation size; null: data.img_size"),
        Field("crop_pct", None, float, low=0, low_open=True, high=1,
              help="evaluation: resize to img_size / crop_pct, then centre-crop; null: the model's own"),
        Field("interpolation", None, str, choices=INTERPOLATIONS,
              help="resize mode; null: the model's own (bicubic, as its pretrained_cfg says)"),
        Field("mean", None, list, nullable=True, spec=List(Num(), min_len=1, max_len=3),
              help="per-channel mean (with data.std); null: the data set's (ImageNet or Fashion-MNIST statistics)"),
        Field("std", None, list, nullable=True, spec=List(Num(low=0, low_open=True), min_len=1, max_len=3),
              help="per-channel standard deviation (with data.mean)"),
        Field("auto_augment", None, str, nullable=True, flag="--auto-augment",
              help="timm auto-augment string for folders, e.g. rand-m9-mstd0.5-inc1"),
        Field("re_prob", 0.0, float, low=0, high=1, help="random erasing probability"),
        Field("hflip", 0.0, float, low=0, high=1,
              help="mirror-image probability; 0: a mirror image may be another class (digits, text)"),
        Field("scale", [0.08, 1.0], list, spec=List(Num(low=0, high=1), min_len=2, max_len=2),
              help="RandomResizedCrop scale range (folders, shards)"),
        Field("padding", 2, int, low=0, help="random-crop padding in pixels (Fashion-MNIST)"),
        Field("eval_batch_size", None, int, low=1, nullable=True, help="null: 2 x data.batch_size"),
        Field("eval_tta", "none", str, choices=TTA_MODES,
              help="hflip: average the probabilities of each image and its mirror image"),
        Field("skip_bad", False, bool, flag="--skip-bad",
              help="leave out unreadable image files (counted and listed in the summary) instead of stopping"),
        Field("shuffle_block", 1000, int, low=1, help="shards: samples each loader worker holds and shuffles together"),
        Field("limit_train", None, int, low=1, nullable=True, flag="--limit-train",
              help="use only N training images (smoke tests)"),
        Field("limit_val", None, int, low=1, nullable=True, flag="--limit-val", help="use only N validation images"),
    )),
    Section("loss", (
        Field("label_smoothing", 0.0, float, low=0, high=1, high_open=True, flag="--label-smoothing",
              help="label smoothing (paper: 0.1)"),
        Field("mixup", 0.0, float, low=0, flag="--mixup", help="mixup alpha (0 = off)"),
        Field("cutmix", 0.0, float, low=0, flag="--cutmix", help="cutmix alpha (0 = off)"),
    ), help="how the training targets and the loss are formed"),
    defaults={"name": Field("name", None, str, nullable=True,
                            help="the run's name; output.dir defaults to runs/NAME; null: the recipe's file name, "
                                 "else DATA-MODEL (flowers-botnet50)")},
    renamed={"train.label_smoothing": "loss.label_smoothing", "train.mixup": "loss.mixup",
             "train.cutmix": "loss.cutmix"},
)
CLASSIFICATION_DEFAULTS = CLASSIFICATION_SCHEMA.defaults()


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


def _is_size(v: Any) -> bool:
    """A size in pixels: a bad one is not copied to the other size key, so its check names the key it was set as."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and float(v).is_integer() \
        and v >= 1


def _model_default_size(m: dict) -> tuple[Any, str]:
    """The image size a model is built for when the run names none, and where that size comes from."""
    from botnet.models import MODEL_CFGS, resolve_name

    kw = m.get("kwargs") if isinstance(m.get("kwargs"), dict) else {}
    if _is_size(m.get("img_size")):
        return m["img_size"], "= model.img_size"
    if _is_size(kw.get("img_size")):
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
    ``data.img_size``, so the attention tables fit the images (a size is copied only when valid);
    ``name``: the recipe's file name
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
    if m.get("img_size") is None and _is_size(d.get("img_size")):
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


def _check_stats(cfg: dict) -> None:
    """``data.mean`` / ``data.std``: both unset (the data set's statistics) or both set, 1 or 3 values each."""
    from botnet.errors import ConfigError

    d = cfg["data"]
    if d.get("mean") is None and d.get("std") is None:
        return
    for key, other in (("mean", "std"), ("std", "mean")):
        if d.get(key) is None:
            raise ConfigError(f"data.{other} is set but data.{key} is not: give both (one number per channel), or "
                              f"neither for the data set's own statistics")
    if len(d["mean"]) != len(d["std"]) or len(d["mean"]) == 2:
        raise ConfigError(f"data.mean {d['mean']} and data.std {d['std']} must both have 1 or 3 values (one per "
                          f"channel)")


def validate_classification_config(cfg: dict) -> dict:
    """Fill the open values (:func:`resolve_classification_config`), then check every declared key and
    what no single key can say; raises a one-line ``ConfigError``."""
    CLASSIFICATION_SCHEMA.check_sections(cfg)
    _check_model_name(cfg)  # before the sizes it decides are checked
    resolve_classification_config(cfg)
    CLASSIFICATION_SCHEMA.validate(cfg)
    _check_stats(cfg)
    kw = model_kwargs_from_cfg(cfg, 10, 1)
    kw.pop("num_classes"), kw.pop("in_chans")
    check_model_kwargs(cfg["model"]["name"], kw)
    return cfg
