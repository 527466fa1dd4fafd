"""Image classification: the task for the training engine, evaluation and prediction."""
from botnet.classification.config import CLASSIFICATION_DEFAULTS, validate_classification_config  # noqa: F401
from botnet.classification.task import ClassificationTask, _build_model, evaluate, train  # noqa: F401
from botnet.engine.rebuild import register_builder

register_builder("classification", _build_model)

__all__ = ["ClassificationTask", "CLASSIFICATION_DEFAULTS", "evaluate", "train", "validate_classification_config"]
