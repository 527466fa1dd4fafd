"""The training engine shared by every task: one loop, one config vocabulary, one checkpoint format.

``Trainer(task, cfg).run()`` trains any :class:`Task` (classification, detection, ...); see
:mod:`botnet.engine.trainer`, and :mod:`botnet.engine.hooks` for what the loop does besides its
steps. Checkpoints (:mod:`botnet.engine.checkpoint`) hold weights and training state as
safetensors, never pickles; :func:`load_model` rebuilds the model any checkpoint was trained with.
Names are imported on first use, so the config modules load without torch.
"""
from botnet.lazy import lazy_names

_NAMES = {
    "Trainer": "botnet.engine.trainer", "train": "botnet.engine.trainer", "default_hooks": "botnet.engine.hooks",
    "Task": "botnet.engine.task", "TaskSetup": "botnet.engine.task", "StepOutput": "botnet.engine.task",
    "Hook": "botnet.engine.hooks", "load_model": "botnet.engine.rebuild",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = sorted(_NAMES)
