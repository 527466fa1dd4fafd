"""Classification's config schema (``botnet train``): the engine's sections plus its own keys."""
from __future__ import annotations

from typing import Any

from botnet.engine.config import (_choice, _num, check_model_kwargs, check_sections, check_stats, check_typed,
                                  task_schema, validate_engine_config)

__all__ = ["CLASSIFICATION_DEFAULTS", "TTA_MODES", "validate_classification_config", "model_kwargs_from_cfg"]

TTA_MODES = ("none", "hflip")  # test-time augmentation of the evaluation (see classification.task.log_probs)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's resize modes

# Classification's schema (``botnet train``): Fashion-MNIST or ImageNet-layout folders.
_OWN: dict[str, Any] = {
    "name": "run",
    "model": {
        "name": "botnet_mini",      # botnet.create_model name
        "num_classes": None,        # None: number of classes of the data set
        "in_chans": None,           # None: 1 for Fashion-MNIST, 3 for image folders
        "img_size": None,           # None: data.img_size
        "drop_rate": 0.0,           # dropout before the classifier (paper: 0.25-0.4)
        "drop_path_rate": 0.0,      # stochastic depth (paper: up to 0.1)
    },
    "data": {
        "dataset": "fashion-mnist",  # fashion-mnist | folder | shards
        "root": None,               # folder with train/ and val/ (folder), shards (botnet data shards) or IDX files
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


def validate_classification_config(cfg: dict) -> dict:
    """The engine's checks plus classification's keys; raises a one-line ``ConfigError``."""
    from botnet.validation import Bool, List, Num, Str

    check_sections(cfg, CLASSIFICATION_DEFAULTS)
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
