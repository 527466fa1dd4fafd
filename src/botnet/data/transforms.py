"""Transforms built from library pieces (torchvision v2 for Fashion-MNIST, timm for image folders).

* Image folders, training: ``timm.data.create_transform(is_training=True)`` - random resized
  crop, horizontal flip, optional RandAugment (``auto_augment="rand-m9-mstd0.5-inc1"``), random
  erasing, normalisation.
* Image folders, evaluation: the standard ImageNet evaluation, ``Resize(floor(size / crop_pct))``
  then ``CenterCrop(size)`` (timm ``create_transform(is_training=False, crop_pct=...)``).
* Fashion-MNIST (uint8 tensors ``[1, 28, 28]``): for training, :class:`BatchAugment` on whole
  uint8 batches on the training device (random crop with zero padding, flip, optional timm random
  erasing), because per image torchvision's v2 ops cost about 180 us an image on the 2-core CPU, a
  quarter of the demo model's own training time per image; per batch they are a few tensor ops.
  Evaluation: plain normalisation per image; ``v2.Resize`` first when the model runs at another
  size.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BatchAugment", "fashion_mnist_transforms", "folder_transforms"]


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


class BatchAugment:
    """Training augmentation of a uint8 batch ``(B, C, H, W)`` -> normalised float ``(B, C, S, S)``.

    Per sample: a random ``S x S`` crop of the image zero-padded by ``padding`` (torchvision's
    ``RandomCrop(padding=...)``), a horizontal flip with probability ``hflip``, then optional timm
    random erasing. Draws from the global torch (and, for erasing, Python) RNGs of the calling process,
    whose states the training checkpoint keeps, so a resumed run augments exactly as the uninterrupted one.
    """

    def __init__(self, img_size: int, mean, std, padding: int = 0, hflip: float = 0.5, re_prob: float = 0.0):
        self.size, self.padding, self.hflip, self.re_prob = int(img_size), int(padding), float(hflip), float(re_prob)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        b, c = x.shape[:2]
        x = x.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if self.padding:
            p, s = self.padding, self.size
            xp = F.pad(x, (p, p, p, p))  # zeros, as RandomCrop(padding) fills
            oy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
            ox = torch.randint(0, 2 * p + 1, (b, 1), device=x.device)
            rows = (oy + torch.arange(s, device=x.device))[:, :, None]  # (B, S, 1)
            cols = (ox + torch.arange(s, device=x.device))[:, None, :]  # (B, 1, S)
            x = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, C, S, S)
        if self.hflip:
            flip = torch.rand(b, device=x.device) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = ((x - mean) / std).contiguous()
        if self.re_prob:
            from timm.data.random_erasing import RandomErasing

            x = RandomErasing(self.re_prob, mode="const", device=str(x.device))(x)
        return x
