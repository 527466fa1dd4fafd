"""Transforms built from library pieces (torchvision v2 for Fashion-MNIST, timm for image folders).

* Image folders, training: ``timm.data.create_transform(is_training=True)`` - random resized
  crop, horizontal flip, optional RandAugment (``auto_augment="rand-m9-mstd0.5-inc1"``), random
  erasing, normalisation.
* Image folders, evaluation: the standard ImageNet evaluation, ``Resize(floor(size / crop_pct))``
  then ``CenterCrop(size)`` (timm ``create_transform(is_training=False, crop_pct=...)``).
* Fashion-MNIST (uint8 tensors ``[1, 28, 28]``): ``v2.RandomCrop(padding)`` + flip (+ optional
  ``v2.RandomErasing``) for training, plain normalisation for evaluation; ``v2.Resize`` first when
  the model is trained at another size.
"""
from __future__ import annotations

from typing import Any

__all__ = ["fashion_mnist_transforms", "folder_transforms"]


def fashion_mnist_transforms(img_size: int = 28, train: bool = True, mean=(0.2860,), std=(0.3530,),
                             padding: int = 2, hflip: float = 0.5, re_prob: float = 0.0):
    import torch
    from torchvision.transforms import v2

    ops: list[Any] = []
    if img_size != 28:
        ops.append(v2.Resize(img_size, antialias=True))
    if train:
        if padding:
            ops.append(v2.RandomCrop(img_size, padding=padding))
        if hflip:
            ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if train and re_prob:
        ops.append(v2.RandomErasing(p=re_prob, value=0))
    return v2.Compose(ops)


def folder_transforms(img_size: int, train: bool, mean, std, crop_pct: float = 0.875,
                      interpolation: str = "bilinear", auto_augment: str | None = None,
                      re_prob: float = 0.0, hflip: float = 0.5, scale=(0.08, 1.0), color_jitter: float | None = None):
    """timm ``create_transform`` for PIL images from a folder (``mean``/``std`` set the channel count)."""
    from timm.data import create_transform

    if train:
        return create_transform(img_size, is_training=True, auto_augment=auto_augment, interpolation=interpolation,
                                mean=tuple(mean), std=tuple(std), re_prob=re_prob, hflip=hflip, scale=tuple(scale),
                                color_jitter=color_jitter)
    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=tuple(mean),
                            std=tuple(std), crop_pct=crop_pct)
