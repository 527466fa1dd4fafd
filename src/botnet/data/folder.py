"""ImageNet-layout folders: ``ROOT/train/CLASS/*.jpg`` and ``ROOT/val/CLASS/*.jpg``.

:func:`check_image_folder` validates the layout *before* training starts (missing split,
no classes, empty class folders, classes of ``val`` missing from ``train``) and reports all
problems at once. :class:`SafeImageFolder` is torchvision's ``ImageFolder`` with a loader that
converts grayscale/RGBA/palette images to the model's channel count and names any file it cannot
decode; with ``skip_bad=True`` such samples are dropped by :func:`collate_skip_bad` and counted.
"""
from __future__ import annotations

import os
from pathlib import Path

from botnet.data.errors import BadImageError, DataError, DatasetNotFoundError

__all__ = ["IMG_EXTENSIONS", "check_image_folder", "pil_loader", "SafeImageFolder", "collate_skip_bad",
           "SkippedBatch"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".jfif")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def check_image_folder(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> dict[str, dict[str, int]]:
    """Validate ``root/<split>/<class>/<images>``; return ``{split: {class: n_files}}``.

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DataError: listing every problem found (missing split, empty class folder, split without
            classes, classes of a later split unknown to the first one).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data folder {root} does not exist (expected {root}/train/CLASS/*.jpg "
                                   f"and {root}/val/CLASS/*.jpg)")
    problems: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        d = root / split
        if not d.is_dir():
            problems.append(f"missing split folder {d}")
            continue
        classes = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            problems.append(f"split {d} has no class folders (expected {d}/CLASS/*.jpg)")
            continue
        counts[split] = {}
        for c in classes:
            n = 0
            for dirpath, _, files in os.walk(d / c, followlinks=True):
                n += sum(1 for f in files if _is_image_name(f))
            counts[split][c] = n
            if n == 0:
                problems.append(f"empty class folder {d / c} (no image files with extensions {', '.join(IMG_EXTENSIONS)})")
    if len(counts) > 1:
        first, *rest = list(counts)
        for split in rest:
            unknown = sorted(set(counts[split]) - set(counts[first]))
            if unknown:
                problems.append(f"classes in {split} that are not in {first}: {', '.join(unknown[:20])}")
    if problems:
        raise DataError(f"problems with the data folder {root}:\n  - " + "\n  - ".join(problems))
    return counts


def pil_loader(path: str, mode: str = "RGB"):
    """Open an image and convert it to ``mode`` (``RGB`` or ``L``); RGBA is composited on white.

    Raises :class:`BadImageError` naming ``path`` when the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert(mode)


class SkippedBatch(list):
    """Marker type: the sample list of a batch, with ``skipped`` paths attached by the collate."""


class SafeImageFolder:
    """``torchvision.datasets.ImageFolder`` that names bad files and can skip them.

    Items are ``(transform(image), class_index)``; with ``skip_bad=True`` an unreadable file
    yields ``(None, path)`` instead, which :func:`collate_skip_bad` removes and counts.
    ``class_to_idx`` can be forced (e.g. ``val`` uses the classes of ``train``).
    """

    def __init__(self, root: str | os.PathLike, transform=None, mode: str = "RGB", skip_bad: bool = False,
                 class_to_idx: dict[str, int] | None = None):
        from torchvision.datasets import ImageFolder

        self.mode, self.skip_bad, self.transform = mode, skip_bad, transform
        outer = self

        class _IF(ImageFolder):
            def find_classes(self, directory):
                if class_to_idx is not None:
                    return sorted(class_to_idx, key=class_to_idx.get), dict(class_to_idx)
                return super().find_classes(directory)

        self.inner = _IF(str(root), loader=lambda p: pil_loader(p, outer.mode), is_valid_file=_is_image_name,
                         allow_empty=class_to_idx is not None)
        self.classes, self.class_to_idx = self.inner.classes, self.inner.class_to_idx
        self.samples = self.inner.samples
        self.targets = self.inner.targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        try:
            img = pil_loader(path, self.mode)
        except BadImageError:
            if self.skip_bad:
                return None, path
            raise
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def collate_skip_bad(batch):
    """Collate that drops ``(None, path)`` items; returns ``(images, targets, skipped_paths)``."""
    import torch
    from torch.utils.data import default_collate

    good = [b for b in batch if b[0] is not None]
    skipped = [b[1] for b in batch if b[0] is None]
    if not good:
        return None, None, skipped
    x, y = default_collate(good)
    return x, torch.as_tensor(y), skipped
