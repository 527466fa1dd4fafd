"""Mask R-CNN / Faster R-CNN with a BoTNet-FPN backbone (torchvision detection models), COCO-format
data, COCO evaluation and the detection task of the training engine. See docs/detection.md.

``SPEC`` registers the task (:mod:`botnet.tasks`); the other names are imported on first use.
"""
from botnet.lazy import lazy_names
from botnet.tasks import TaskSpec

SPEC = TaskSpec(name="detection", task="botnet.detection.task:DetectionTask", command="detect",
                help="object detection / instance segmentation (botnet detect train | eval | predict | demo)",
                generated=False, schema="botnet.detection.config:DETECTION_SCHEMA", train_cmd="botnet detect train")
_NAMES = {
    **{name: "botnet.detection.config" for name in ("DETECTION_DEFAULTS", "DETECTION_SCHEMA",
                                                    "validate_detection_config")},
    **{name: "botnet.detection.models" for name in (
        "CanvasRCNNTransform", "botnet_fpn_backbone", "build_detector", "convert_frozen_batchnorm",
        "fasterrcnn_botnet50_fpn", "maskrcnn_botnet50_fpn")},
    "DetectionTask": "botnet.detection.task", "build_detector_from_kwargs": "botnet.detection.task",
    "train": "botnet.detection.task",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = ["SPEC", *sorted(_NAMES)]
