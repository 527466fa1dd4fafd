"""Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone (torchvision detection models), COCO-format
data, COCO evaluation and the training loop behind ``botnet detect``. See docs/detection.md."""
from botnet.detection.models import (  # noqa: F401
    CanvasRCNNTransform,
    botnet_fpn_backbone,
    build_detector,
    convert_frozen_batchnorm,
    fasterrcnn_botnet50_fpn,
    maskrcnn_botnet50_fpn,
)

__all__ = [
    "CanvasRCNNTransform",
    "botnet_fpn_backbone",
    "build_detector",
    "convert_frozen_batchnorm",
    "fasterrcnn_botnet50_fpn",
    "maskrcnn_botnet50_fpn",
]
