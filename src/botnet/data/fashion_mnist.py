"""Fashion-MNIST from the standard gzipped IDX files (no download needed where they are installed).

Search order for the four files (``train-images-idx3-ubyte.gz`` ...):

1. ``data_dir`` if given: the IDX files directly in it, or torchvision's layout
   ``data_dir/FashionMNIST/raw/``;
2. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``);
3. ``torchvision.datasets.FashionMNIST(data_dir, download=True)`` when ``download=True`` and the
   machine has internet.

If none works, :class:`DatasetNotFoundError` says how to get the data.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from botnet.data.errors import DataError, DatasetNotFoundError

__all__ = ["CLASSES", "MEAN", "STD", "SYSTEM_DIR", "read_idx", "find_fashion_mnist", "load_fashion_mnist",
           "FashionMNISTDataset"]

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)
SYSTEM_DIR = Path(os.environ.get("BOTNET_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape and type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(data) - offset != count * dtype.itemsize:
        raise DataError(f"{path}: size does not match its header {dims} (truncated file?)")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _complete(d: Path) -> Path | None:
    if not d.is_dir():
        return None
    for split in FILES.values():
        for stem in split:
            if not ((d / (stem + ".gz")).is_file() or (d / stem).is_file()):
                return None
    return d


def find_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Directory holding the four IDX files (see the module doc for the search order)."""
    tried = []
    if data_dir is not None:
        # a folder the user named is used or refused: never silently replaced by the system copy
        if not Path(data_dir).is_dir() and not download:
            raise DatasetNotFoundError(f"--data-dir {data_dir} does not exist; give the folder holding the four "
                                       f"Fashion-MNIST *-ubyte(.gz) files, or leave --data-dir out to use {SYSTEM_DIR}")
        for cand in (Path(data_dir), Path(data_dir) / "FashionMNIST" / "raw", Path(data_dir) / "raw"):
            tried.append(str(cand))
            if _complete(cand):
                return cand
        if not download:
            raise DatasetNotFoundError(f"--data-dir {data_dir} does not hold the four Fashion-MNIST IDX files "
                                       f"({', '.join(s + '(.gz)' for f in FILES.values() for s in f)}); looked in: "
                                       f"{'; '.join(tried)}")
    tried.append(str(SYSTEM_DIR))
    if _complete(SYSTEM_DIR):
        return SYSTEM_DIR
    if download:
        root = Path(data_dir or "data")
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            found = _complete(root / "FashionMNIST" / "raw")
            if found:
                return found
        except Exception as e:  # no internet, proxy, ...
            tried.append(f"download into {root} failed: {e}")
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found (looked in: " + "; ".join(tried) + ").\n"
        "Get it with one of:\n"
        "  sudo apt-get install dataset-fashion-mnist      # Debian/Ubuntu, installs /usr/share/datasets/fashion-mnist\n"
        "  botnet train --config fashion-mnist --download   # torchvision download (needs internet)\n"
        "  or copy the four *-ubyte.gz files into a folder and pass --data-dir FOLDER")


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` for ``split`` in ``train``/``test``."""
    if split in ("val", "validation"):
        split = "test"
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = find_fashion_mnist(data_dir, download)
    arrays = []
    for stem in FILES[split]:
        p = d / (stem + ".gz")
        arrays.append(read_idx(p if p.is_file() else d / stem))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {d} have unexpected shapes {images.shape}, {labels.shape}")
    return images, labels.astype(np.int64)


class FashionMNISTDataset:
    """In-memory Fashion-MNIST as a map-style dataset of ``(transform(uint8 tensor [1,28,28]), label)``."""

    classes = CLASSES

    def __init__(self, split: str = "train", data_dir=None, download: bool = False, transform=None,
                 limit: int | None = None):
        import torch

        images, labels = load_fashion_mnist(split, data_dir, download)
        if limit:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # N,1,28,28 uint8
        self.targets = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[i])
