"""Detection augmentation with ``torchvision.transforms.v2`` (image, boxes and masks together).

Train pipelines (the input is a ``tv_tensors.Image`` plus a target with ``BoundingBoxes`` and
``Mask``):

- fixed canvas (``canvas=N``): horizontal flip -> ``ScaleJitter`` (resize so the image fits the
  N x N canvas, times a factor drawn from ``scale_range``: [0.8, 1.25] the paper's default,
  [0.1, 2.0] large-scale jitter) -> ``RandomCrop(N, pad_if_needed)`` (crop or pad to exactly
  N x N, padding with the mean colour) -> clamp boxes -> ``SanitizeBoundingBoxes`` (drops boxes
  that shrank below 1 px, with their labels and masks) -> float in [0, 1].
- variable size (``canvas=None``): horizontal flip -> float; scale variation then comes from the
  model's ``GeneralizedRCNNTransform`` (``min_size`` given as a tuple picks one per batch).

Eval pipelines only convert to float: the model transform resizes (and, with a canvas, pads).
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["build_transforms", "StripTarget"]

MEAN_FILL = (124, 116, 104)  # ImageNet mean colour in uint8


class StripTarget:
    """Keep only the target keys the detectors use (after geometric transforms, per-box extras
    such as ``area`` are no longer consistent)."""

    def __init__(self, keys: Sequence[str] = ("boxes", "labels", "masks", "image_id")):
        self.keys = tuple(keys)

    def __call__(self, image, target):
        return image, {k: v for k, v in target.items() if k in self.keys}


def build_transforms(
    train: bool,
    *,
    canvas: int | None = None,
    scale_range: Sequence[float] | None = (0.8, 1.25),
    hflip: float = 0.5,
):
    """Return a v2 transform callable as ``transform(image, target)``."""
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    ts: list = [StripTarget()]
    if train:
        if hflip > 0:
            ts.append(T.RandomHorizontalFlip(hflip))
        if canvas:
            if scale_range is not None:
                lo, hi = (float(v) for v in scale_range)
                if not 0 < lo <= hi:
                    raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
                ts.append(T.ScaleJitter((canvas, canvas), scale_range=(lo, hi), antialias=True))
            else:
                ts.append(T.Resize(size=None, max_size=canvas, antialias=True))
            fill = {tv_tensors.Image: MEAN_FILL, tv_tensors.Mask: 0, "others": 0}
            ts.append(T.RandomCrop(canvas, pad_if_needed=True, fill=fill))
        ts += [T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=1.0)]
    ts.append(T.ToDtype(torch.float32, scale=True))
    return T.Compose(ts)
