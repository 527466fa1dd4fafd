"""Parameter and multiply-add counts (``botnet models``), without running real compute.

Counting runs the model on the ``meta`` device under ``torch.utils.flop_counter.FlopCounterMode``,
so even BoT200 at 1024 px costs no memory or time. FLOPs are reported as multiply-adds (MACs =
FLOPs / 2), the unit of the paper's tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from botnet.layers import RelPosMHSA
from botnet.models._registry import build_model

__all__ = ["ModelProfile", "profile_model", "count_params"]


@dataclass
class ModelProfile:
    name: str
    img_size: tuple[int, int]
    params: int
    gmacs: float  # the paper's formulation (attention logits built explicitly)
    gmacs_fused: float  # what the fused attention kernel executes (augmented q/k, padded v)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _gmacs(model: torch.nn.Module, x: torch.Tensor, backbone_only: bool) -> float:
    with FlopCounterMode(display=False) as counter:
        model.forward_features(x) if backbone_only else model(x)
    return counter.get_total_flops() / 2e9


def profile_model(
    name: str,
    *,
    img_size: int | None = None,
    num_classes: int = 1000,
    backbone_only: bool = False,
    **overrides,
) -> ModelProfile:
    """Parameters (with a ``num_classes`` head) and GMACs of one image at ``img_size``."""
    with torch.device("meta"):
        # eval mode: counting is the same, and BatchNorm accepts a 1x1 map (a stride-32 model at 28 px)
        model = build_model(name, num_classes=num_classes, img_size=img_size, **overrides).eval()
        hw = model.pretrained_cfg["img_size"]
        x = torch.empty(1, model.conv1.in_channels, *hw)
        layers = [m for m in model.modules() if isinstance(m, RelPosMHSA)]
        for m in layers:
            m.impl = "explicit"
        gmacs = _gmacs(model, x, backbone_only)
        for m in layers:
            m.impl = "sdpa"
        gmacs_fused = _gmacs(model, x, backbone_only)
    return ModelProfile(name, tuple(hw), count_params(model), gmacs, gmacs_fused)
