"""Model registry: ``@register_model`` entry points, ``create_model`` and ``list_models``.

When timm is installed every model also joins timm's registry, so ``timm.create_model("botnet50")``
works after ``import botnet``. Names timm already owns (``resnet50``...) join as ``botnet_<name>``
so timm's own models are never overwritten.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "TIMM_NAMES"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
TIMM_NAMES: dict[str, str] = {}  # our name -> the name it has in timm's registry

# Keyword arguments timm's create_model passes to every entry point that ours have no use for.
_TIMM_ONLY_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = fn
    _register_with_timm(name, fn)
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"botnet*"``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    **overrides,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs; 0 removes the classifier (``fc`` becomes Identity).
        img_size: image size the attention tables are built for (``None``: the model's default
            resolution). It does not restrict the input: every model accepts any size.
        in_chans: input channels.
        **overrides: any architecture option of :class:`botnet.models.ResNet` (e.g. ``pos="none"``,
            ``shortcut_act=True``, ``se_in_attn=True``, ``drop_path_rate=0.1``).
    """
    if name not in _MODELS:
        close = fnmatch.filter(_MODELS, f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See botnet.list_models().")
    return _MODELS[name](num_classes=num_classes, img_size=img_size, in_chans=in_chans, **overrides)


def _register_with_timm(name: str, fn: Callable[..., nn.Module]) -> None:
    try:
        from timm.models import _registry as timm_registry
    except Exception:  # timm absent or incompatible: our own registry still works
        return
    timm_name = name if name not in timm_registry._model_entrypoints else f"botnet_{name}"

    def entry(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{timm_name}: no pretrained weights are published for botnet models; "
                "build with pretrained=False and load your own checkpoint "
                "(botnet.load_resnet_weights for ResNet checkpoints)"
            )
        for k in _TIMM_ONLY_KWARGS:
            kwargs.pop(k, None)
        return fn(**kwargs)

    entry.__name__ = timm_name
    entry.__qualname__ = timm_name
    entry.__module__ = fn.__module__
    entry.__doc__ = fn.__doc__
    timm_registry.register_model(entry)
    TIMM_NAMES[name] = timm_name
