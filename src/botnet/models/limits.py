"""How big a model botnet agrees to build: one check for every entry point.

A model's size comes from options a user (or a shared file) controls: ``model.kwargs`` (``layers``,
``widths``...), ``--img-size``, a published folder's ``config.json``. Absurd values must end in one
line, not in a machine that swaps for an hour. Two steps:

1. :func:`check_arch_kwargs` -- a cheap look at the numbers themselves (total blocks, widths,
   heads, image side, classes), so that even the meta-device build below stays cheap (200,000
   blocks would take minutes to build, even on ``meta``).
2. :func:`footprint` -- the model built on the ``meta`` device (no memory) and run on one image
   of the requested size: parameters (x4: weights, gradients and two optimizer moments) plus every
   module's output (what training keeps for the backward pass), in float32 bytes.

The footprint must stay below :func:`memory_limit`: the memory of this machine (physical RAM, or
the cgroup limit when lower; the largest GPU's when that is more), or ``BOTNET_MODEL_MEMORY_GB``
when set. The paper's models pass on an ordinary machine (footprints: BoTNet-S1-128 at 384 px
2.1 GB, BoT50 at 1024 px 4.0 GB, BoT200 at 1024 px 12.7 GB). Every model
built through the registry (``botnet.create_model``, ``timm.create_model`` including
``local-dir:`` folders, ``load_model``) passes through :func:`check_model` (a build on the meta
device, which costs nothing, gets the caps only); commands that run a model at another size than
it was built for call it with ``input_size`` (the training data's size) or :func:`check_input_size`
(``export --img-size``).
"""
from __future__ import annotations

import contextvars
import functools
import os
from dataclasses import asdict, replace
from typing import Any

from botnet.errors import ConfigError

__all__ = ["ModelTooLargeError", "MAX_BLOCKS", "MAX_WIDTH", "MAX_IMG_SIDE", "MAX_HEADS", "MAX_CLASSES",
           "memory_limit", "check_arch_kwargs", "footprint", "check_model", "check_input_size"]

MAX_BLOCKS = 1000        # bottleneck blocks in all (ResNet-1001 has 333)
MAX_WIDTH = 16384        # a bottleneck width (the paper's widest is 512, i.e. 2048 output channels)
MAX_IMG_SIDE = 65536     # pixels per side (the paper's largest is 1024)
MAX_HEADS = 1024
MAX_CLASSES = 10_000_000

_COUNTING = contextvars.ContextVar("botnet_counting_model_size", default=False)


class ModelTooLargeError(ConfigError):
    """The requested model (or input size) does not fit this machine's memory."""


def memory_limit() -> int:
    """Bytes a model's footprint may take: ``BOTNET_MODEL_MEMORY_GB``, else this machine's memory."""
    env = os.environ.get("BOTNET_MODEL_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise ModelTooLargeError(f"BOTNET_MODEL_MEMORY_GB={env!r} is not a number of GB") from None
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    try:  # a container's limit is what counts when it is lower
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw.isdigit():
            total = min(total, int(raw))
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():  # activations live on the GPU there
        total = max(total, max(torch.cuda.get_device_properties(i).total_memory
                               for i in range(torch.cuda.device_count())))
    return int(total)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def _ints(v: Any) -> list[int] | None:
    vals = list(v) if isinstance(v, (list, tuple)) else [v]
    if all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        return vals
    return None


def check_arch_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Cheap caps on the numbers of ``create_model(name, **kwargs)``; wrong types are left to the
    model's own checks."""
    limits = [("layers", MAX_BLOCKS, True), ("widths", MAX_WIDTH, False), ("stem_width", MAX_WIDTH, False),
              ("heads", MAX_HEADS, False), ("img_size", MAX_IMG_SIDE, False), ("num_classes", MAX_CLASSES, False),
              ("in_chans", MAX_WIDTH, False)]
    for key, cap, summed in limits:
        vals = _ints(kwargs.get(key)) if kwargs.get(key) is not None else None
        if not vals:
            continue
        big = sum(vals) if summed else max(vals)
        if big > cap:
            what = f"{sum(vals)} blocks in all" if summed else f"{big}"
            raise ModelTooLargeError(f"{name}: {key}={kwargs[key]} is too large ({what}; at most {cap}); "
                                     f"lower {'--img-size' if key == 'img_size' else key}")


def _resnet_cfg(name: str, kwargs: dict[str, Any]):
    """The ResNetCfg ``create_model(name, **kwargs)`` builds, or None when it is not a botnet ResNet
    or the options are of the wrong kind (the build itself reports those)."""
    from botnet.models.botnet import MODEL_CFGS

    if name not in MODEL_CFGS:
        return None
    cfg = MODEL_CFGS[name]
    fields = set(asdict(cfg))
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items() if k in fields and v is not None}
    try:
        return replace(cfg, **over)
    except (TypeError, ValueError):
        return None


def footprint(cfg, *, num_classes: int = 1000, in_chans: int = 3, img_size=None, input_hw=None) -> tuple[int, int]:
    """``(parameter bytes, activation bytes)`` of a ResNet built from ``cfg`` (float32): parameters
    once, activations of one ``input_hw`` image (default: ``img_size``), counted on the meta device."""
    import torch

    from botnet.layers import RelPosMHSA
    from botnet.models.botnet import ResNet, _img_hw

    token = _COUNTING.set(True)
    try:
        with torch.device("meta"):
            model = ResNet(cfg, num_classes=num_classes, in_chans=in_chans, img_size=img_size).eval()
            params = sum(p.numel() for p in model.parameters()) * 4
            hw = _img_hw(input_hw) if input_hw is not None else tuple(model.pretrained_cfg["img_size"])
            acts = [0]

            def hook(_m, _inp, out):
                if isinstance(out, torch.Tensor):
                    acts[0] += out.numel() * 4

            handles = [m.register_forward_hook(hook) for m in model.modules()
                       if not list(m.children()) or isinstance(m, RelPosMHSA)]
            try:
                with torch.no_grad():
                    model(torch.empty(1, in_chans, *hw))
            finally:
                for h in handles:
                    h.remove()
    finally:
        _COUNTING.reset(token)
    return params, acts[0]


def _verdict(name: str, params: int, acts: int, size: str, option: str, limit: int | None = None) -> None:
    """Raise when 4 x parameters (weights, gradients, two optimizer moments) + activations > the limit."""
    need, limit = 4 * params + acts, limit or memory_limit()
    if need > limit:
        raise ModelTooLargeError(
            f"{name} at {size} needs about {_gb(need)} (parameters {_gb(params)} x4 for training, activations of "
            f"one image {_gb(acts)}), more than the limit of {_gb(limit)} (this machine's memory, or "
            f"BOTNET_MODEL_MEMORY_GB); lower {option}")


@functools.lru_cache(maxsize=256)
def _check_cached(name: str, key: str, input_side: int | None, option: str | None, limit: int) -> None:
    import json

    kwargs = json.loads(key)
    cfg = _resnet_cfg(name, kwargs)
    if cfg is None:
        return
    try:
        nc, chans = kwargs.get("num_classes"), kwargs.get("in_chans")
        params, acts = footprint(cfg, num_classes=1000 if nc is None else int(nc),
                                 in_chans=3 if chans is None else int(chans), img_size=kwargs.get("img_size"),
                                 input_hw=input_side)
    except (TypeError, ValueError, RuntimeError):
        return  # options the model refuses: its own build says why
    side = input_side or kwargs.get("img_size") or cfg.img_size
    if option is None:  # name what dominates
        option = "--img-size" if acts > 4 * params else "model.kwargs (layers, widths, stem_width) or num_classes"
    shown = ", ".join(f"{k}={kwargs[k]}" for k in ("layers", "widths", "stem_width", "num_classes") if k in kwargs)
    _verdict(f"{name} ({shown})" if shown else name, params, acts, f"{side} px", option, limit)


def check_model(name: str, kwargs: dict[str, Any], *, input_size: int | None = None,
                option: str | None = None) -> None:
    """Refuse ``create_model(name, **kwargs)`` (run on ``input_size`` px images, default its
    ``img_size``) when it would not fit: one line naming the size, the limit and ``option`` to lower.
    Cheap: the caps first, then the meta-device count (cached)."""
    if _COUNTING.get():
        return
    check_arch_kwargs(name, kwargs)
    if _on_meta(kwargs) and input_size is None:
        return  # a meta build costs nothing (botnet models, config checks): the caps keep it cheap
    if input_size is not None and input_size > MAX_IMG_SIDE:
        raise ModelTooLargeError(f"{option or '--img-size'} {input_size} is too large (at most {MAX_IMG_SIDE} px)")
    import json

    try:
        key = json.dumps({k: v for k, v in kwargs.items() if k in _SIZE_KEYS}, sort_keys=True)
    except (TypeError, ValueError):
        return
    _check_cached(name, key, None if input_size is None else int(input_size), option, memory_limit())


def _on_meta(kwargs: dict[str, Any]) -> bool:
    import torch

    dev = kwargs.get("device")
    return str(dev if dev is not None else torch.get_default_device()).startswith("meta")


def check_input_size(model, hw, option: str = "--img-size") -> None:
    """Refuse running ``model`` (a botnet ResNet) on an image of ``hw`` pixels that would not fit."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "conv1"):
        return
    side = max(hw) if isinstance(hw, (tuple, list)) else hw
    if side > MAX_IMG_SIDE:
        raise ModelTooLargeError(f"{option} {side} is too large (at most {MAX_IMG_SIDE} px); lower {option}")
    try:
        params, acts = footprint(cfg, num_classes=max(int(getattr(model, "num_classes", 0)), 0),
                                 in_chans=model.conv1.in_channels, img_size=tuple(model.pretrained_cfg["img_size"]),
                                 input_hw=hw)
    except (TypeError, ValueError, RuntimeError):
        return  # a size the model refuses: the command's own run says why
    _verdict(getattr(model, "botnet_arch", None) or "the model", params, acts, f"{side} px", option)


_SIZE_KEYS = frozenset({"layers", "widths", "stem_width", "stem_kernel", "stem_stride", "strides", "attn_blocks",
                        "heads", "img_size", "num_classes", "in_chans", "se_ratio", "se_in_attn", "pos",
                        "global_pool"})
