"""Turn a torchvision or timm ResNet into its BoTNet, as the paper built BoT50 from ResNet-50.

The paper's recipe: replace the 3x3 convolutions of the final stage c5 (``layer4``) by global
multi-head self-attention with 2D relative positions, nothing else. Each ``layer4`` bottleneck
becomes a :class:`botnet.models.BoTBlock` that keeps the source's modules (``conv1``, ``bn1``,
``bn2``, ``conv3``, ``bn3``, ``downsample``...) with their weights; only ``conv2`` is replaced.
From torchvision's ``resnet50()`` this gives exactly BoT50: 20,852,008 parameters with tables for
224 px, and the state-dict keys of ``botnet.create_model("botnet50")``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
from torch import nn

from botnet.models.botnet import BoTBlock, ResNet

__all__ = ["botnet_from_resnet", "Conversion", "ConversionReport"]


@dataclass
class ConversionReport:
    """What :func:`botnet_from_resnet` kept, added and removed (state-dict keys of the model)."""

    kept: list[str] = field(default_factory=list)  # the source's tensors, unchanged (the same objects)
    new: list[str] = field(default_factory=list)  # the attention's tensors, freshly initialised
    removed: list[str] = field(default_factory=list)  # the replaced 3x3 convolutions' weights
    attention_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # block -> (H, W) of its tables

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in self.attention_sizes.items())
        return (f"kept {len(self.kept)} tensors of the ResNet; {len(self.new)} new attention tensors; removed "
                f"{len(self.removed)} ({', '.join(self.removed)}); attention tables for {sizes}")


class Conversion(NamedTuple):
    model: nn.Module
    report: ConversionReport


def botnet_from_resnet(
    resnet: nn.Module,
    *,
    img_size: int | Sequence[int] = 224,
    heads: int = 4,
    pos: str = "relative",
    attn_impl: str = "auto",
    blocks: int | None = None,
    inplace: bool = False,
) -> Conversion:
    """The BoTNet of a torchvision or timm bottleneck ResNet: ``layer4``'s 3x3 convs become MHSA.

    Args:
        resnet: a ``torchvision.models.ResNet`` or ``timm.models.ResNet`` with bottleneck blocks
            (ResNet-50 and deeper, wide ResNets, ResNeXt), with or without its weights.
        img_size: the input size (int or (H, W)) the position tables are built for; every block's
            tables get the size its attention sees there (BoT50 at 224 px: 14x14 in the strided
            first block, 7x7 in the others). Any input size works at run time (tables resized).
        heads, pos, attn_impl: the attention's options (:class:`botnet.layers.RelPosMHSA`).
        blocks: how many final ``layer4`` blocks to convert (default all of them, as the paper).
        inplace: convert ``resnet`` itself; by default a deep copy is converted and ``resnet`` is
            left as it was.

    Returns:
        ``(model, report)``: the converted module (the same class as ``resnet``, running the same
        ``forward``) and a :class:`ConversionReport` naming the tensors kept, new and removed.
    """
    if isinstance(resnet, ResNet):
        raise TypeError("this is already a botnet ResNet: build the BoTNet with botnet.create_model('botnet50', ...) "
                        "(or attn_blocks=...) and copy the weights with botnet.load_resnet_weights")
    layer4 = getattr(resnet, "layer4", None)
    if not isinstance(layer4, nn.Sequential) or len(layer4) == 0:
        raise TypeError(f"{type(resnet).__name__} has no layer4 of blocks: pass a torchvision or timm ResNet")
    n = len(layer4) if blocks is None else int(blocks)
    if not 1 <= n <= len(layer4):
        raise ValueError(f"blocks must be between 1 and {len(layer4)} (layer4's blocks), got {blocks}")
    before = resnet.state_dict()
    model = resnet if inplace else copy.deepcopy(resnet)
    targets = list(range(len(layer4) - n, len(layer4)))
    sizes = _attention_sizes(model, targets, _pair(img_size))
    report = ConversionReport()
    for j in targets:
        model.layer4[j] = BoTBlock.from_bottleneck(model.layer4[j], feat_size=sizes[j], heads=heads, pos=pos,
                                                   attn_impl=attn_impl)
        report.attention_sizes[f"layer4.{j}"] = sizes[j]
    after = model.state_dict()
    report.kept = [k for k in after if k in before]
    report.new = [k for k in after if k not in before]
    report.removed = [k for k in before if k not in after]
    return Conversion(model, report)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"img_size must be a positive int or (H, W), got {size!r}")
    return hw


def _attention_sizes(model: nn.Module, targets: list[int], img_hw: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """The (H, W) each target block's 3x3 conv sees for an ``img_hw`` input, found by running the
    model on the meta device (shapes only: no memory, no time, the model's tensors untouched)."""
    from botnet.models.botnet import _bottleneck_conv2

    convs = {j: _bottleneck_conv2(model.layer4[j]) for j in targets}  # also checks every block first
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen: dict[int, tuple[int, int]] = {}

    def record(j: int):
        def hook(_module, args) -> None:  # returns None: the conv's input stays as it is
            seen.setdefault(j, (int(args[0].shape[-2]), int(args[0].shape[-1])))
        return hook

    hooks = [conv.register_forward_pre_hook(record(j)) for j, conv in convs.items()]
    meta = {k: torch.empty_like(v, device="meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, (torch.empty(1, first.in_channels, *img_hw, device="meta"),))
    finally:
        for h in hooks:
            h.remove()
    return {j: seen[j] for j in targets}
