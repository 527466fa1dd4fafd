"""botnet: Bottleneck Transformers for Visual Recognition (arXiv 2101.11605) in PyTorch."""
__version__ = "0.1.0"

import importlib as _importlib

from botnet.layers import RelPosMHSA  # noqa: E402,F401
from botnet.models import (  # noqa: E402,F401
    ResNet,
    create_model,
    list_models,
    load_resnet_weights,
)

# Sub-packages reachable as ``botnet.<name>`` after a plain ``import botnet`` (what `botnet publish`
# prints and the docs show: ``botnet.hub.load_detector(...)``). They are imported on first use
# (PEP 562), so ``import botnet`` and ``botnet --help`` load none of the task, data or hub code.
_LAZY_SUBMODULES = frozenset({
    "bench", "classification", "cli", "data", "detection", "engine", "errors", "export", "hub",
    "validation", "viz",
})


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # the import also sets it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)
