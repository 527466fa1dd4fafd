"""Image classification: the task for the training engine, evaluation and prediction.

``SPEC`` registers the task (:mod:`botnet.tasks`); the other names are imported on first use, so
listing the tasks loads no torch.
"""
from botnet.lazy import lazy_names
from botnet.tasks import TaskSpec

SPEC = TaskSpec(name="classification", task="botnet.classification.task:ClassificationTask", command="train",
                help="image classification (botnet train | eval | predict | demo)", generated=False,
                train_cmd="botnet train", schema="botnet.classification.config:CLASSIFICATION_SCHEMA")
_NAMES = {
    "CLASSIFICATION_DEFAULTS": "botnet.classification.config", "CLASSIFICATION_SCHEMA": "botnet.classification.config",
    "validate_classification_config": "botnet.classification.config",
    "ClassificationTask": "botnet.classification.task", "evaluate": "botnet.classification.task",
    "train": "botnet.classification.task",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = ["SPEC", *sorted(_NAMES)]
