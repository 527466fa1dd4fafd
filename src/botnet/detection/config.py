"""Detection's config schema (``botnet detect train``): the engine's sections plus its own keys.

Same vocabulary as classification: ``optim.*``, ``sched.*``, ``train.*`` (budget in seconds),
``data.*`` (batch size, workers, augmentation), ``model.*``, ``eval.*``, ``output.dir``.
"""
from __future__ import annotations

import os

from botnet.engine.config import ENGINE_SCHEMA, Field, Section, check_model_kwargs
from botnet.validation import AnyOf, Int, List, Num

__all__ = ["DETECTION_SCHEMA", "DETECTION_DEFAULTS", "validate_detection_config", "detector_kwargs"]


def _count(key: str, default: int, help_: str) -> Field:
    return Field(key, default, int, low=1, help=help_)


DETECTION_SCHEMA = ENGINE_SCHEMA.extend(
    Section("data", (
        Field("dataset", "fashion-mosaic", str, choices=("fashion-mosaic", "coco", "shards"), flag="--dataset",
              help="data set type: fashion-mosaic, coco (data.train_images/train_ann/val_images/val_ann) or shards "
                   "(tar shards written by botnet data shards from a COCO set)"),
        Field("root", "data/fashion-mosaic", str, nullable=True, flag="--data-dir",
              help="data folder: the fashion-mosaic folder (generated when missing), the COCO root, or the shards "
                   "folder for 'shards'"),
        Field("train_images", None, str, nullable=True, help="coco: the training image folder (relative to root)"),
        Field("train_ann", None, str, nullable=True, help="coco: the training instances JSON (relative to root)"),
        Field("val_images", None, str, nullable=True, help="coco: the validation image folder"),
        Field("val_ann", None, str, nullable=True, help="coco: the validation instances JSON"),
        Field("strict", False, bool, help="raise instead of warn when the validation pass drops records"),
        Field("remove_empty", False, bool, help="drop training images without annotations"),
        Field("shuffle_block", 1000, int, low=1, help="shards: images each loader worker holds and shuffles together"),
        Field("mosaic.num_train", 512, int, low=1, help="fashion-mosaic: training images generated"),
        Field("mosaic.num_val", 128, int, low=1, help="fashion-mosaic: validation images generated"),
        Field("mosaic.canvas", 160, int, low=32, help="fashion-mosaic: image side in pixels"),
        Field("mosaic.min_items", 2, int, low=1, help="fashion-mosaic: fewest garments in an image"),
        Field("mosaic.max_items", 5, int, low=1, help="fashion-mosaic: most garments in an image"),
        Field("mosaic.min_item_size", 28, int, low=8, help="fashion-mosaic: smallest garment side in pixels"),
        Field("mosaic.max_item_size", 72, int, low=8, help="fashion-mosaic: largest garment side (<= canvas)"),
        Field("mosaic.max_overlap", 0.2, float, low=0, high=1, high_open=True,
              help="fashion-mosaic: largest share of a garment another may cover"),
        Field("mosaic.seed", 0, int, low=0, help="fashion-mosaic: the generator's seed"),
        Field("scale_range", [0.8, 1.25], list, nullable=True, spec=List(Num(low=0, low_open=True), min_len=2,
                                                                               max_len=2),
              help="scale jitter (canvas mode); [0.1, 2.0]: large-scale jitter; null: none"),
        Field("hflip", 0.5, float, low=0, high=1, help="mirror-image probability"),
    )),
    Section("model", (
        Field("kind", "maskrcnn", str, choices=("maskrcnn", "fasterrcnn"), help="Mask R-CNN or Faster R-CNN"),
        Field("backbone", "botnet50", str, flag="--backbone",
              help="backbone name from botnet.list_models(), e.g. botnet50, resnet50"),
        Field("img_size", None, int, low=1, nullable=True,
              help="the size the attention tables are built for; null: the canvas, else the largest min_size"),
        Field("canvas", 1024, int, low=32, nullable=True,
              help="fixed square canvas in pixels (paper: 1024); null: variable-size batches"),
        Field("min_size", [800], list, spec=AnyOf(Int(low=1), List(Int(low=1), min_len=1)),
              help="variable-size mode: the short side (a list: a random choice in training)"),
        Field("max_size", 1333, int, low=1, help="variable-size mode: the longest side"),
        Field("norm", None, str, choices=("bn", "frozen", "sync"), nullable=True,
              help="backbone normalisation; null: frozen with backbone weights, bn without"),
        Field("trainable_layers", None, int, low=0, high=5, nullable=True,
              help="backbone stages that train; null: 3 with backbone weights, 5 without"),
        Field("backbone_weights", None, str, nullable=True,
              help="a ResNet/BoTNet classification checkpoint on disk, local-dir:PATH or hf-hub:ORG/NAME"),
        Field("fpn_channels", 256, int, low=1, help="FPN channels"),
        Field("anchor_sizes", [32, 64, 128, 256, 512], list, spec=List(Int(low=1), min_len=1),
              help="anchor size of each FPN level"),
        Field("box_head_dim", 1024, int, low=1, help="width of the box head's two layers"),
        Field("mask_head_layers", [256, 256, 256, 256], list, spec=List(Int(low=1), min_len=1),
              help="channels of each mask head layer"),
        _count("rpn_pre_nms_top_n_train", 2000, "RPN proposals kept before NMS, training"),
        _count("rpn_post_nms_top_n_train", 2000, "RPN proposals kept after NMS, training"),
        _count("rpn_pre_nms_top_n_test", 1000, "RPN proposals kept before NMS, evaluation"),
        _count("rpn_post_nms_top_n_test", 1000, "RPN proposals kept after NMS, evaluation"),
        _count("rpn_batch_size_per_image", 256, "anchors sampled per image for the RPN loss"),
        _count("box_batch_size_per_image", 512, "proposals sampled per image for the box head's loss"),
        _count("box_detections_per_img", 100, "most detections kept per image"),
        Field("box_score_thresh", 0.05, float, low=0, high=1, help="detections scoring less are dropped"),
    )),
    Section("eval", (
        Field("batch_size", 2, int, low=1, help="evaluation batch size"),
        Field("backend", "pycocotools", str, choices=("pycocotools", "faster_coco_eval"),
              help="COCO evaluation library (the same numbers; faster_coco_eval is faster)"),
        Field("num_draw", 8, int, low=0, help="validation images drawn into RUN/predictions"),
        Field("draw_score", 0.5, float, low=0, high=1, help="score threshold for drawing"),
        Field("draw_scale", 3, int, low=1, high=16, help="upscale factor of drawn images"),
    ), help="the detection evaluation"),
    defaults={"name": "detect", "data.batch_size": 2, "optim.lr": 0.02, "optim.weight_decay": 1e-4,
              "sched.warmup_epochs": 0.1, "train.epochs": 12, "train.eval_every": 0},
)
DETECTION_DEFAULTS = DETECTION_SCHEMA.defaults()

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
    """Every declared key, then the backbone's options (built on the meta device) and its weights;
    raises a one-line ``ConfigError``."""
    from botnet.errors import ConfigError

    DETECTION_SCHEMA.validate(cfg)
    check_model_kwargs(cfg["model"]["backbone"], {"num_classes": 0, **(cfg["model"]["kwargs"] or {})})
    bw = cfg["model"]["backbone_weights"]
    if bw and str(bw).startswith(("hf-hub:", "local-dir:")):
        from botnet.io.weights import resolve_checkpoint

        resolve_checkpoint(bw)  # a published model: fetched and checked before training (one-line error)
    elif bw and not os.path.exists(bw):
        raise ConfigError(f"model.backbone_weights {bw} does not exist")
    return cfg
