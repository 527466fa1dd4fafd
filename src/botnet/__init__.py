"""botnet: Bottleneck Transformers for Visual Recognition (arXiv 2101.11605) in PyTorch.

``import botnet`` loads nothing heavy: the names below and the sub-packages (``botnet.hub``,
``botnet.engine``...) are imported on first use (PEP 562), so ``botnet --help`` answers without
loading torch. The models still join timm's registry as the docs promise: at once when timm is
already imported, else the moment it is (:class:`_JoinTimm`), so ``import botnet`` then
``timm.create_model("botnet50")`` works either way.
"""
__version__ = "0.1.0"

import importlib as _importlib
import sys as _sys

# top-level name -> the module that defines it
_LAZY_NAMES = {
    "RelPosMHSA": "botnet.layers",
    "ResNet": "botnet.models",
    "create_model": "botnet.models",
    "list_models": "botnet.models",
    "load_resnet_weights": "botnet.models",
}
# Sub-packages reachable as ``botnet.<name>`` after a plain ``import botnet`` (what `botnet publish`
# prints and the docs show: ``botnet.hub.load_detector(...)``).
_LAZY_SUBMODULES = frozenset({
    "bench", "classification", "cli", "data", "detection", "engine", "errors", "export", "hub", "io", "layers",
    "log", "models", "validation", "viz",
})


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(_importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # the import also sets it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES | set(_LAZY_NAMES))


class _JoinTimm:
    """An import hook that registers botnet's models in timm right after timm itself is imported.

    It sits on ``sys.meta_path`` until then, answers only for ``timm``, and wraps the loader the
    other finders return so that ``botnet.models`` (whose import registers every model) runs once
    timm's own package has run.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterTimm(spec.loader)
                return spec
        return None


class _AfterTimm:
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader  # timm keeps its own loader from here on
        if _JOIN_TIMM in _sys.meta_path:
            _sys.meta_path.remove(_JOIN_TIMM)
        _importlib.import_module("botnet.models")

    def __getattr__(self, name):  # anything else a loader offers (resources, source) is timm's own
        return getattr(self._loader, name)


_JOIN_TIMM = _JoinTimm()
if "timm" in _sys.modules:
    _importlib.import_module("botnet.models")
elif not any(isinstance(f, _JoinTimm) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _JOIN_TIMM)
