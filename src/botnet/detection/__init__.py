"""Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone (torchvision detection models), COCO-format
data, COCO evaluation and the detection task of the training engine. See docs/detection.md."""
from botnet.detection.config import DETECTION_DEFAULTS, validate_detection_config  # noqa: F401
from botnet.detection.models import (  # noqa: F401
    CanvasRCNNTransform,
    botnet_fpn_backbone,
    build_detector,
    convert_frozen_batchnorm,
    fasterrcnn_botnet50_fpn,
    maskrcnn_botnet50_fpn,
)
from botnet.detection.task import DetectionTask, build_detector_from_kwargs, train  # noqa: F401
from botnet.engine.rebuild import register_builder

register_builder("detection", build_detector_from_kwargs)

__all__ = [
    "CanvasRCNNTransform",
    "DETECTION_DEFAULTS",
    "DetectionTask",
    "botnet_fpn_backbone",
    "build_detector",
    "convert_frozen_batchnorm",
    "fasterrcnn_botnet50_fpn",
    "maskrcnn_botnet50_fpn",
    "train",
    "validate_detection_config",
]
