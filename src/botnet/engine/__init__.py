"""The training engine shared by every task: one loop, one config vocabulary, one checkpoint format.

``Trainer(task, cfg).run()`` trains any :class:`Task` (classification, detection, ...); see
:mod:`botnet.engine.trainer`. Checkpoints (:mod:`botnet.engine.checkpoint`) hold weights and
training state as safetensors, never pickles; :func:`load_model` rebuilds the model any
checkpoint was trained with.
"""
from botnet.engine.rebuild import load_model, register_builder  # noqa: F401
from botnet.engine.task import StepOutput, Task, TaskSetup  # noqa: F401
from botnet.engine.trainer import Trainer, train  # noqa: F401

__all__ = ["Trainer", "Task", "TaskSetup", "StepOutput", "train", "load_model", "register_builder"]
