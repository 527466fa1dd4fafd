"""Mask R-CNN / Faster R-CNN with a BoTNet (or ResNet) FPN backbone, composed from torchvision.

The backbone is any model of :func:`botnet.create_model` (``botnet50/101/152/200``,
``resnet50/...`` for comparison, or a reduced one via overrides such as ``layers=(1, 1, 1, 3)``).
Its stages ``layer1..layer4`` feed torchvision's ``BackboneWithFPN`` (FPN + max-pool level), and
the detector is torchvision's ``MaskRCNN`` / ``FasterRCNN`` with its own RPN, RoI heads and losses.

Two input modes:

- **variable size** (``canvas=None``, torchvision's default): ``GeneralizedRCNNTransform`` resizes
  each image so its short side is ``min_size`` (a tuple picks one at random in training) and its
  long side at most ``max_size``, and pads the batch to a multiple of 32;
- **fixed square canvas** (``canvas=N``, the paper's setting with N=1024): each image is resized so
  its long side is N (a no-op for training crops that are already N x N) and every batch is padded
  to N x N (:class:`CanvasRCNNTransform`). The attention tables are then built for N
  (``img_size`` defaults to the canvas), so c5 attends at N/16 and N/32 as in the paper.

Batch norm: ``norm="bn"`` trains ordinary BN (default when training from scratch),
``norm="frozen"`` converts every BatchNorm2d of the backbone to
``torchvision.ops.FrozenBatchNorm2d`` after building (default when ``backbone_weights`` is given,
as torchvision does for pretrained backbones), ``norm="sync"`` converts all BN to SyncBatchNorm
(for multi-process training). ``num_classes`` counts the background, as in torchvision.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = [
    "CanvasRCNNTransform",
    "ResNetFeatures",
    "botnet_fpn_backbone",
    "build_detector",
    "maskrcnn_botnet50_fpn",
    "fasterrcnn_botnet50_fpn",
    "convert_frozen_batchnorm",
]


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by ``FrozenBatchNorm2d`` holding the same
    statistics and affine parameters (returns the possibly replaced module)."""
    from torchvision.ops import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats and module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class ResNetFeatures(nn.Module):
    """The stem and stages of a :class:`botnet.models.ResNet`, returning the chosen stages.

    Holds the same child names as torchvision's ``IntermediateLayerGetter`` over a ResNet
    (``conv1, bn1, act1, maxpool, layer1..``), so state-dict keys match torchvision's detection
    checkpoints (``backbone.body.layer1...``), but runs them in the stem's real order
    (conv -> bn -> act -> maxpool) whatever order the model registered them in.
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, str]):
        super().__init__()
        names = [i["module"] for i in model.feature_info[1:]]  # level 0 is the stem (timm's act1)
        last = max(names.index(n) for n in return_layers)
        for n in ("conv1", "bn1", "act1", "maxpool"):
            self.add_module(n, getattr(model, n))
        self.stage_names = names[: last + 1]
        for n in self.stage_names:
            self.add_module(n, getattr(model, n))
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for n in self.stage_names:
            x = getattr(self, n)(x)
            if n in self.return_layers:
                out[self.return_layers[n]] = x
        return out


def botnet_fpn_backbone(
    backbone: str = "botnet50",
    *,
    img_size: int | Sequence[int] | None = None,
    trainable_layers: int = 5,
    norm: str = "bn",
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    backbone_weights: str | None = None,
    **model_kwargs,
) -> nn.Module:
    """A torchvision ``BackboneWithFPN`` over ``botnet.create_model(backbone, ...)``.

    ``trainable_layers`` (0-5) follows torchvision: the last k of
    ``layer4, layer3, layer2, layer1, conv1`` train, the rest are frozen (5 also trains bn1).
    ``returned_layers`` are torchvision's (k = ``layer{k}``), which are also the levels' numbers
    in the model's timm-style ``feature_info`` (level 0 is the stem, not used by the FPN).
    ``model_kwargs`` go to ``create_model`` (architecture overrides, e.g. ``layers=(1, 1, 1, 3)``).
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from botnet.models import create_model, load_resnet_weights

    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    if norm not in ("bn", "frozen", "sync"):
        raise ValueError(f"norm must be 'bn', 'frozen' or 'sync', got {norm!r}")
    model = create_model(backbone, num_classes=0, img_size=img_size, **model_kwargs)
    if backbone_weights:
        report = load_resnet_weights(model, backbone_weights, verbose=False)  # logged once, below
        from botnet.log import get_logger

        get_logger("detection").info(f"backbone weights {backbone_weights}: {report}")
    if norm == "frozen":
        model = convert_frozen_batchnorm(model)
    to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        to_train.append("bn1")
    for name, p in model.named_parameters():
        if all(not name.startswith(t) for t in to_train):
            p.requires_grad_(False)
    info = {i["module"]: i for i in model.feature_info}
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels = [info[f"layer{k}"]["num_chs"] for k in returned_layers]
    fpn = BackboneWithFPN(model, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
    fpn.body = ResNetFeatures(model, return_layers)
    fpn.strides = [info[f"layer{k}"]["reduction"] for k in returned_layers]
    fpn.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    return fpn


class CanvasRCNNTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes each image's long side to ``canvas`` and pads
    every batch to a fixed ``canvas x canvas`` square (rounded up to ``size_divisible``).

    Outputs are mapped back to each original image size by the inherited ``postprocess``.
    """

    def __init__(self, canvas: int, image_mean, image_std, size_divisible: int = 32, **kwargs):
        super().__init__(canvas, canvas, image_mean, image_std, size_divisible=size_divisible, **kwargs)
        self.canvas = int(canvas)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        h = w = self.canvas
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            # Resized images always fit the canvas (long side floor(L * (canvas / L)) <= canvas).
            # Traced or exported, the sizes are symbolic and comparing them would fix the program
            # to the traced size, so the canvas is taken as it is there.
            h = max(h, max(int(i.shape[-2]) for i in images))
            w = max(w, max(int(i.shape[-1]) for i in images))
        h = int(math.ceil(h / size_divisible) * size_divisible)
        w = int(math.ceil(w / size_divisible) * size_divisible)
        # zero padding on the right and bottom (F.pad, not a copy into a slice: ONNX keeps it)
        return torch.stack([F.pad(img, (0, w - img.shape[-1], 0, h - img.shape[-2])) for img in images])

    def __repr__(self) -> str:
        return super().__repr__().replace("GeneralizedRCNNTransform(", f"CanvasRCNNTransform(canvas={self.canvas}, ", 1)


def _shared_heads(fpn: nn.Module, num_classes: int, fpn_channels: int, anchor_sizes: Sequence[int],
                  aspect_ratios: Sequence[float], box_head_dim: int) -> dict:
    """The pieces Faster and Mask R-CNN share: anchors per FPN level, box head and predictor, and the
    backbone's normalisation (an RGB backbone's mean/std; torchvision's default otherwise)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    n_levels = 5  # 4 FPN levels + the max-pool level
    if len(anchor_sizes) != n_levels:
        raise ValueError(f"anchor_sizes needs {n_levels} entries (one per FPN level), got {len(anchor_sizes)}")
    mean = std = None
    pre = getattr(fpn, "pretrained_cfg", None) or {}
    if len(pre.get("mean", ())) == 3:
        mean, std = list(pre["mean"]), list(pre["std"])
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(aspect_ratios),) * n_levels)
    return dict(image_mean=mean, image_std=std, rpn_anchor_generator=anchors,
                box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
                box_predictor=FastRCNNPredictor(box_head_dim, num_classes))


def _fix_pool_scales(model: nn.Module, strides: Sequence[int]) -> None:
    """Give the RoI poolers the FPN levels' true scales (1 / stride).

    torchvision infers them on the first call, from the feature height over the tallest image's
    height rounded to a power of 2, and keeps them: when that first image is wide (on a square
    canvas, 3:2 is enough) every later RoI is pooled at twice its scale. Set, they are also fixed
    numbers in an exported graph rather than a function of the traced image.
    """
    from torchvision.ops.poolers import initLevelMapper

    for pool in (model.roi_heads.box_roi_pool, getattr(model.roi_heads, "mask_roi_pool", None)):
        if pool is None or pool.scales is not None:
            continue
        levels = [strides[int(n)] for n in pool.featmap_names]
        pool.scales = [1.0 / s for s in levels]
        pool.map_levels = initLevelMapper(int(math.log2(levels[0])), int(math.log2(levels[-1])),
                                          canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)


def build_detector(
    kind: str = "maskrcnn",
    backbone: str = "botnet50",
    *,
    num_classes: int,
    img_size: int | None = None,
    canvas: int | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    trainable_layers: int | None = None,
    norm: str | None = None,
    backbone_weights: str | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_head_dim: int = 1024,
    mask_head_layers: Sequence[int] = (256, 256, 256, 256),
    backbone_kwargs: dict | None = None,
    **detector_kwargs,
) -> nn.Module:
    """Build ``kind`` (``"maskrcnn"`` or ``"fasterrcnn"``) over ``backbone``.

    ``num_classes`` includes the background (torchvision convention). ``canvas`` switches to the
    fixed-canvas mode; ``img_size`` (default: ``canvas``, else the largest ``min_size``) is the
    size the attention tables are built for. ``trainable_layers`` defaults to 3 with
    ``backbone_weights`` and 5 without; ``norm`` defaults to ``"frozen"`` with weights and
    ``"bn"`` without. ``detector_kwargs`` go to torchvision's ``MaskRCNN`` / ``FasterRCNN``
    (e.g. ``rpn_pre_nms_top_n_train``, ``box_detections_per_img``, ``box_batch_size_per_image``).
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    if kind not in ("maskrcnn", "fasterrcnn"):
        raise ValueError(f"kind must be 'maskrcnn' or 'fasterrcnn', got {kind!r}")
    if num_classes < 2:
        raise ValueError("num_classes counts the background and must be >= 2")
    if trainable_layers is None:
        trainable_layers = 3 if backbone_weights else 5
    if norm is None:
        norm = "frozen" if backbone_weights else "bn"
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if img_size is None:
        img_size = canvas if canvas else max(sizes)
    fpn = botnet_fpn_backbone(
        backbone, img_size=img_size, trainable_layers=trainable_layers, norm="frozen" if norm == "frozen" else "bn",
        fpn_channels=fpn_channels, backbone_weights=backbone_weights, **(backbone_kwargs or {}),
    )
    common = dict(min_size=sizes, max_size=max_size,
                  **_shared_heads(fpn, num_classes, fpn_channels, anchor_sizes, aspect_ratios, box_head_dim))
    if kind == "maskrcnn":
        layers = tuple(int(c) for c in mask_head_layers)
        model = MaskRCNN(
            fpn, num_classes=None,
            mask_head=MaskRCNNHeads(fpn_channels, layers, 1),
            mask_predictor=MaskRCNNPredictor(layers[-1], layers[-1], num_classes),
            **common, **detector_kwargs,
        )
    else:
        model = FasterRCNN(fpn, num_classes=None, **common, **detector_kwargs)
    _fix_pool_scales(model, fpn.strides)
    if canvas:
        t = model.transform
        model.transform = CanvasRCNNTransform(canvas, t.image_mean, t.image_std, size_divisible=t.size_divisible)
    if norm == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.detector_config = {
        "kind": kind, "backbone": backbone, "num_classes": num_classes, "img_size": img_size, "canvas": canvas,
        "min_size": list(sizes), "max_size": max_size, "trainable_layers": trainable_layers, "norm": norm,
        "fpn_channels": fpn_channels, "anchor_sizes": list(anchor_sizes), "aspect_ratios": list(aspect_ratios),
        "box_head_dim": box_head_dim, "mask_head_layers": list(mask_head_layers),
        "backbone_kwargs": dict(backbone_kwargs or {}), **detector_kwargs,
    }
    return model


def maskrcnn_botnet50_fpn(*, num_classes: int, **kwargs) -> nn.Module:
    """Mask R-CNN with a BoT50-FPN backbone (``num_classes`` includes the background)."""
    return build_detector("maskrcnn", kwargs.pop("backbone", "botnet50"), num_classes=num_classes, **kwargs)


def fasterrcnn_botnet50_fpn(*, num_classes: int, **kwargs) -> nn.Module:
    """Faster R-CNN with a BoT50-FPN backbone (``num_classes`` includes the background)."""
    return build_detector("fasterrcnn", kwargs.pop("backbone", "botnet50"), num_classes=num_classes, **kwargs)
