"""Model registry: ``@register_model`` entry points, ``build_model`` and ``list_models``.

The registry knows nothing above it: :func:`build_model` builds a registered name from its options.
Published folders (``pretrained=FOLDER``, ``local-dir:``, ``hf-hub:``) are the factory's
(:mod:`botnet.models._factory`), as in timm, whose ``_registry`` only registers and looks up.

Every model also joins timm's registry through timm's public API (``timm.models.register_model``),
so ``timm.create_model("botnet50", ...)`` works after ``import botnet``, with its pretrained config
(``default_cfgs`` of the defining module) and every timm argument (``features_only``,
``out_indices``, ``global_pool``...). Names timm already owns (``resnet50``...) join timm as
``botnet_<name>`` so timm's own models are never overwritten; :data:`TIMM_NAMES` maps ours to timm's.
"""
from __future__ import annotations

import fnmatch
import functools
import sys
import warnings
from typing import Callable

from torch import nn

__all__ = ["register_model", "build_model", "list_models", "is_model", "resolve_name", "TIMM_NAMES"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
TIMM_NAMES: dict[str, str] = {}  # our name -> the name it has in timm's registry
_FROM_TIMM: dict[str, str] = {}  # timm name -> our name, for the names that differ


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an entry point ``fn(pretrained=False, **kwargs)`` here and in timm's registry.

    The entry point's module must hold ``default_cfgs`` (``timm.models.generate_default_cfgs``)
    keyed by our name; timm reads the pretrained config from there when the model registers.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    fn = _size_checked(fn)
    _MODELS[name] = fn
    TIMM_NAMES[name] = _register_with_timm(name, fn)
    if TIMM_NAMES[name] != name:
        _FROM_TIMM[TIMM_NAMES[name]] = name
    return fn


def _size_checked(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``fn`` that first refuses sizes this machine cannot hold (botnet.models.limits), on every
    path: botnet.create_model, timm.create_model (``local-dir:`` folders too) and load_model."""

    @functools.wraps(fn)
    def checked(pretrained: bool = False, **kwargs) -> nn.Module:
        from botnet.models.limits import check_model

        check_model(fn.__name__, kwargs)
        return fn(pretrained=pretrained, **kwargs)

    return checked


def _register_with_timm(name: str, fn: Callable[..., nn.Module]) -> str:
    import timm.models

    timm_name = name
    if timm.models.is_model(name):  # timm's own model (resnet50...): never overwrite it
        timm_name = f"botnet_{name}"
        if timm.models.is_model(timm_name):
            warnings.warn(f"timm already has models {name!r} and {timm_name!r}: {name} is not registered in timm",
                          stacklevel=3)
            return name

        @functools.wraps(fn)
        def entry(pretrained: bool = False, **kwargs) -> nn.Module:
            return fn(pretrained=pretrained, **kwargs)

        entry.__name__ = entry.__qualname__ = timm_name
        module = sys.modules[fn.__module__]
        # timm registers fn.__name__, reads its config from the module's default_cfgs under that
        # name and lists it in the module's __all__, so the module gets both under the timm name.
        cfgs = getattr(module, "default_cfgs", None)
        if cfgs is not None and name in cfgs:
            cfgs[timm_name] = cfgs[name]
        setattr(module, timm_name, entry)
    else:
        entry = fn
    timm.models.register_model(entry)
    return timm_name


def resolve_name(name: str) -> str:
    """Our registry name for ``name``, which may also be the model's timm name (``botnet_resnet50``)."""
    return _FROM_TIMM.get(name, name)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"botnet*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    return resolve_name(name) in _MODELS


def build_model(
    name: str | None,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    **overrides,
) -> nn.Module:
    """The registered model ``name`` (or its timm name) built with these options, untrained: the
    registry half of :func:`botnet.create_model`, which documents the options. ``pretrained=True``
    has timm's meaning (registry weights): the entry point explains there are none."""
    if pretrained:
        overrides["pretrained"] = True
    key = resolve_name(str(name))
    if key not in _MODELS:
        close = fnmatch.filter(_MODELS, f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See botnet.list_models().")
    return _MODELS[key](num_classes=num_classes, img_size=img_size, in_chans=in_chans, **overrides)
