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


MAX_IDX_BYTES = 2**30  # 1 GiB: the largest Fashion-MNIST/MNIST file holds 47 MB
_MAX_DEFLATE_RATIO = 1032  # deflate never expands more than ~1032:1, so a .gz of n bytes holds at most this x n


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its declared shape and type.

    The header's declared size is checked against ``max_bytes`` and against what the file can hold
    (its size, or for gzip the most deflate can expand it) before anything is unpacked; the data are
    then read into an array of exactly that size, so a file that unpacks to more is refused, not
    read (a gzip bomb costs nothing).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} is not a regular file")
    on_disk = path.stat().st_size
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise DataError(f"{path} is not an IDX file (bad magic number)")
            ndim, dtype = head[3], np.dtype(_DTYPES[head[2]])
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise DataError(f"{path}: size does not match its header (truncated file?)")
            dims = struct.unpack(">" + "I" * ndim, raw)
            need = (int(np.prod(dims, dtype=object)) if dims else 1) * dtype.itemsize
            can_hold = on_disk * _MAX_DEFLATE_RATIO if gz else on_disk - 4 - 4 * ndim
            if need > max_bytes or need > can_hold:
                why = f"more than the limit of {max_bytes:,} bytes" if need > max_bytes else \
                    f"more than its {on_disk:,} bytes can hold"
                raise DataError(f"{path}: its header declares {dims} ({need:,} bytes of data), {why}; "
                                f"the file is damaged or not an IDX data file")
            buf = bytearray(need)
            got = f.readinto(buf) if need else 0
            extra = f.read(1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if got != need or extra:
        raise DataError(f"{path}: size does not match its header {dims} (truncated file?)")
    return np.frombuffer(buf, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=False)


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
