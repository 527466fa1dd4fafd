"""One parameter-group policy and one optimizer factory for every task.

Weight decay never applies to 1-D tensors (biases, norm scales) nor to the tensors a module
declares with a timm-style ``no_weight_decay()`` method (names relative to that module), such as
the attention layer's position tables: they act like embeddings, and decaying them towards zero
pulls every position's logit to the same value. The modules are found anywhere in the model, so a
backbone inside a torchvision detector follows the same rule as a classifier.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["no_weight_decay_names", "param_groups", "build_optimizer"]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that declared themselves weight-decay free."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            for n in fn():
                names.add(f"{prefix}.{n}" if prefix else n)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``[decay group, no-decay group]`` over the trainable parameters (empty groups dropped)."""
    skip = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim_cfg: dict, lr: float) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups` (``optim.*`` config section)."""
    from timm.optim import create_optimizer_v2

    name = optim_cfg["name"]
    kw: dict[str, Any] = {}
    if name in ("sgd", "momentum", "nesterov"):
        kw = {"momentum": float(optim_cfg["momentum"]), "nesterov": bool(optim_cfg.get("nesterov", False))}
    groups = param_groups(model, float(optim_cfg["weight_decay"]))
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, **kw)
    except (AssertionError, ValueError) as e:  # timm: "Invalid optimizer"
        from botnet.errors import ConfigError

        raise ConfigError(f"optim.name = {name!r}: {' '.join(str(e).split())}") from None
