"""Detection's config schema (``botnet detect train``): the engine's sections plus its own keys.

Same vocabulary as classification: ``optim.*``, ``sched.*``, ``train.*`` (budget in seconds),
``data.*`` (batch size, workers, augmentation), ``model.*``, ``eval.*``, ``output.dir``.
"""
from __future__ import annotations

import os
from typing import Any

from botnet.engine.config import (_choice, _num, check_model_kwargs, check_sections, check_typed, task_schema,
                                  validate_engine_config)

__all__ = ["DETECTION_DEFAULTS", "validate_detection_config", "detector_kwargs"]

_OWN: dict[str, Any] = {
    "name": "detect",
    "data": {
        "dataset": "fashion-mosaic",  # fashion-mosaic | coco | shards (botnet data shards COCO_ROOT OUT)
        "root": "data/fashion-mosaic",  # mosaic: generated here if missing; coco: base for relative paths
        "train_images": None, "train_ann": None,  # coco: image folder and instances JSON
        "val_images": None, "val_ann": None,
        "strict": False,            # raise instead of warn when the validation pass drops records
        "remove_empty": False,      # drop training images without annotations
        "shuffle_block": 1000,      # shards: images each loader worker holds and shuffles together
        "mosaic": {"num_train": 512, "num_val": 128, "canvas": 160, "min_items": 2, "max_items": 5,
                   "min_item_size": 28, "max_item_size": 72, "max_overlap": 0.2, "seed": 0},
        "batch_size": 2,            # per process
        "scale_range": [0.8, 1.25],  # jitter (canvas mode); [0.1, 2.0] = large-scale jitter; null: none
        "hflip": 0.5,
    },
    "model": {
        "kind": "maskrcnn",         # maskrcnn | fasterrcnn
        "backbone": "botnet50",     # any botnet.create_model name
        "img_size": None,           # attention tables' trained size (None: canvas or max min_size)
        "canvas": 1024,             # fixed square canvas (paper: 1024); null: variable-size batches
        "min_size": [800],          # variable-size mode: short side (list: random choice in training)
        "max_size": 1333,
        "norm": None,               # bn | frozen | sync (None: frozen with weights, bn without)
        "trainable_layers": None,   # 0-5 (None: 3 with weights, 5 without)
        "backbone_weights": None,   # ResNet/BoTNet classification checkpoint on disk
        "fpn_channels": 256,
        "anchor_sizes": [32, 64, 128, 256, 512],
        "box_head_dim": 1024,
        "mask_head_layers": [256, 256, 256, 256],
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
        "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512,
        "box_detections_per_img": 100, "box_score_thresh": 0.05,
    },
    "optim": {"lr": 0.02, "weight_decay": 1e-4},
    "sched": {"warmup_epochs": 0.1},
    "train": {"epochs": 12, "eval_every": 0},
    "eval": {
        "batch_size": 2,
        "backend": "pycocotools",   # pycocotools | faster_coco_eval
        "num_draw": 8,              # val images drawn into RUN/predictions
        "draw_score": 0.5,          # score threshold for drawing
        "draw_scale": 3,            # upscale factor of drawn images (1-16)
    },
}
DETECTION_DEFAULTS = task_schema(_OWN)

_DETECTOR_KEYS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                  "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                  "box_detections_per_img", "box_score_thresh")


def detector_kwargs(cfg: dict, num_classes: int) -> dict:
    """Every ``build_detector`` argument described by ``cfg["model"]`` (JSON-serialisable)."""
    m = cfg["model"]
    kw = dict(
        kind=m["kind"], backbone=m["backbone"], num_classes=int(num_classes), img_size=m["img_size"],
        canvas=m["canvas"], min_size=list(m["min_size"]) if isinstance(m["min_size"], (list, tuple)) else m["min_size"],
        max_size=m["max_size"], trainable_layers=m["trainable_layers"], norm=m["norm"],
        backbone_weights=m["backbone_weights"], fpn_channels=m["fpn_channels"], anchor_sizes=list(m["anchor_sizes"]),
        box_head_dim=m["box_head_dim"], mask_head_layers=list(m["mask_head_layers"]),
        backbone_kwargs=dict(m["kwargs"] or {}),
    )
    kw.update({k: m[k] for k in _DETECTOR_KEYS})
    return kw


def validate_detection_config(cfg: dict) -> dict:
    """The engine's checks plus detection's keys; raises a one-line ``ConfigError``."""
    from botnet.errors import ConfigError
    from botnet.validation import Bool, Int, List, Num, Str

    check_sections(cfg, DETECTION_DEFAULTS)
    validate_engine_config(cfg)
    check_typed(cfg, "data.root", Str(min_len=1, nullable=True))
    for key in ("data.strict", "data.remove_empty"):
        check_typed(cfg, key, Bool())
    check_typed(cfg, "data.scale_range", List(Num(low=0, low_open=True), min_len=2, max_len=2, nullable=True))
    check_typed(cfg, "model.anchor_sizes", List(Int(low=1), min_len=1))
    check_typed(cfg, "model.mask_head_layers", List(Int(low=1), min_len=1))
    _num(cfg, "data.hflip", low=0, high=1)
    _num(cfg, "eval.batch_size", kind=int, low=1)
    _num(cfg, "eval.num_draw", kind=int, low=0)
    _num(cfg, "eval.draw_score", low=0, high=1)
    _num(cfg, "eval.draw_scale", kind=int, low=1, high=16)
    _choice(cfg, "eval.backend", ("pycocotools", "faster_coco_eval"))
    _choice(cfg, "data.dataset", ("fashion-mosaic", "coco", "shards"))
    _num(cfg, "data.shuffle_block", kind=int, low=1)
    _choice(cfg, "model.kind", ("maskrcnn", "fasterrcnn"))
    _choice(cfg, "model.norm", ("bn", "frozen", "sync"), optional=True)
    _num(cfg, "model.canvas", kind=int, low=32, optional=True)
    _num(cfg, "model.img_size", kind=int, low=1, optional=True)
    _num(cfg, "model.trainable_layers", kind=int, low=0, high=5, optional=True)
    check_model_kwargs(cfg["model"]["backbone"], {"num_classes": 0, **(cfg["model"]["kwargs"] or {})})
    bw = cfg["model"]["backbone_weights"]
    if bw and str(bw).startswith(("hf-hub:", "local-dir:")):
        from botnet.io.weights import resolve_checkpoint

        resolve_checkpoint(bw)  # a published model: fetched and checked before training (one-line error)
    elif bw and not os.path.exists(bw):
        raise ConfigError(f"model.backbone_weights {bw} does not exist")
    return cfg
