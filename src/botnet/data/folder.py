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

__all__ = ["IMG_EXTENSIONS", "image_files", "open_regular", "check_image_folder", "pil_loader", "pil_from_bytes", "SafeImageFolder", "collate_skip_bad",
           "SkippedBatch", "check_image_header", "scan_image_files", "drop_bad_files"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".jfif")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def image_files(top: str | os.PathLike) -> list[str]:
    """Image files under ``top`` (sorted; symlinks followed), each file once even when two links
    reach it. A symlink that leads back to a folder above it (a loop) is a :class:`DataError`
    naming the link: os.walk(followlinks=True) would go round it forever."""
    import stat

    st = os.stat(top)
    start = (st.st_dev, st.st_ino)
    seen_dirs, seen_files, out = {start}, set(), []
    stack = [(os.fspath(top), {start: os.fspath(top)})]
    while stack:
        d, above = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list the folder {d}: {e.strerror or e}") from None
        for e in entries:
            try:
                st = os.stat(e.path)  # follows links
            except OSError:
                continue  # a dangling link: not an image
            key = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                if key in above:
                    raise DataError(f"symlink loop: {e.path} leads back to {above[key]}; remove the link "
                                    f"or point it outside the data folder")
                if key not in seen_dirs:
                    seen_dirs.add(key)
                    stack.append((e.path, {**above, key: e.path}))
            elif _is_image_name(e.name) and key not in seen_files:
                seen_files.add(key)  # non-regular files are kept: the header scan names them
                out.append(e.path)
    return sorted(out)


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
            n = len(image_files(d / c))
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


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class NotRegularFileError(OSError):
    """A FIFO, device or folder where an image file was expected."""


def open_regular(path: str | os.PathLike):
    """Open ``path`` for reading only when it is a regular file: a FIFO named x.png would block
    forever in open(), a device would never end. Raises :class:`NotRegularFileError` (an OSError)."""
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, unread
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise NotRegularFileError(f"{kind}, not an image file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def pil_loader(path: str, mode: str = "RGB"):
    """Open an image and convert it to ``mode`` (``RGB`` or ``L``); RGBA is composited on white.

    16-bit grayscale (PIL modes ``I;16*``, and ``I`` with values up to 65535) is scaled to 8 bits
    by its real range (v / 257), not clipped. Raises :class:`BadImageError` naming ``path`` when
    the file cannot be decoded, is a decompression bomb (more pixels than PIL's
    ``Image.MAX_IMAGE_PIXELS``), or has a pixel format botnet does not convert (32-bit float).
    """
    try:
        with open_regular(path) as f:
            img = _open_loaded(f, path)
    except NotRegularFileError as e:
        raise BadImageError(path, str(e)) from None
    return _to_mode(img, path, mode)


def pil_from_bytes(data: bytes, name: str, mode: str = "RGB"):
    """:func:`pil_loader` for an image held in memory (a sample of a shard); ``name`` is what errors call it."""
    import io

    return _to_mode(_open_loaded(io.BytesIO(data), name), name, mode)


def _open_loaded(f, name: str):
    """PIL image of the open file ``f``, pixels loaded; decoding problems become :class:`BadImageError`."""
    from PIL import Image

    try:
        img = Image.open(f)
        img.load()
    except Image.DecompressionBombError as e:
        raise BadImageError(name, f"decompression bomb ({' '.join(str(e).split())})") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(name, f"{type(e).__name__}: {' '.join(str(e).split())}") from e
    return img


def _to_mode(img, name: str, mode: str):
    from PIL import Image

    img = _to_8bit(img, name)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert(mode)


def _to_8bit(img, path: str):
    """16-bit grayscale -> 8-bit with the full range kept (PIL's convert("L") would clip at 255)."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise BadImageError(path, f"{img.mode} image with values {a.min()}..{a.max()} outside 0..65535")
        return Image.fromarray(np.round(a.astype(np.float32) / 257.0).astype(np.uint8), mode="L")
    if img.mode == "F":
        raise BadImageError(path, "32-bit float image: convert it to 8- or 16-bit (PNG/TIFF) first")
    return img


def check_image_header(path: str) -> str | None:
    """A quick look at one file: ``None`` when it looks like a whole image, else the reason.

    Reads the header (format, size; PIL refuses decompression bombs here) and, for PNG and JPEG,
    the end of the file (IEND chunk / EOI marker), which finds zero-byte, non-image and truncated
    files without decoding pixels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "empty file (0 bytes)"
            with Image.open(f) as img:
                fmt, (w, h) = img.format, img.size
            if w <= 0 or h <= 0:
                return f"image header claims {w}x{h} pixels"
            f.seek(max(size - 4096, 0))
            tail = f.read().rstrip(b"\x00")
    except Image.DecompressionBombError as e:
        return f"decompression bomb ({' '.join(str(e).split())})"
    except UnidentifiedImageError:
        return "not an image PIL can identify"
    except NotRegularFileError as e:
        return str(e)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    if fmt == "PNG" and b"IEND" not in tail[-16:]:
        return "truncated PNG (no IEND chunk at the end)"
    if fmt == "JPEG" and b"\xff\xd9" not in tail[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    return None


def scan_image_files(paths: list[str], *, progress: bool = True, desc: str = "checking image files",
                     workers: int = 8) -> list[tuple[str, str]]:
    """:func:`check_image_header` over many files (threads: it is I/O); returns ``[(path, reason)]``."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from botnet.log import progress_enabled

    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as ex:
        it = ex.map(check_image_header, paths, chunksize=64)
        for p, reason in zip(paths, tqdm(it, total=len(paths), desc=desc, unit="file", leave=False,
                                         disable=not progress_enabled(progress) or len(paths) < 2000)):
            if reason is not None:
                bad.append((p, reason))
    return bad


def drop_bad_files(datasets: dict[str, "SafeImageFolder"], *, skip_bad: bool, progress: bool = True) -> None:
    """Check every file of every split before training; all problems are reported together.

    ``datasets`` maps split names to data sets. Raises :class:`DataError` listing the bad files of
    all splits, or with ``skip_bad`` removes them (kept in ``ds.bad_files`` for the run's summary).
    """
    found: list[tuple[str, str, str]] = []
    for split, ds in datasets.items():
        ds.bad_files = scan_image_files([p for p, _ in ds.samples], progress=progress, desc=f"checking {split} images")
        found += [(split, p, r) for p, r in ds.bad_files]
    if not found:
        return
    if not skip_bad:
        shown = "; ".join(f"{p}: {r}" for _, p, r in found[:5])
        more = f" (+{len(found) - 5} more)" if len(found) > 5 else ""
        splits = ", ".join(sorted({s for s, _, _ in found}))
        raise DataError(f"{len(found)} unreadable image file(s) ({splits}): {shown}{more}. Remove or replace them, "
                        f"or pass --skip-bad to leave them out")
    for split, ds in datasets.items():
        bad_set = {p for p, _ in ds.bad_files}
        keep = [i for i, (p, _) in enumerate(ds.samples) if p not in bad_set]
        ds.samples = [ds.samples[i] for i in keep]
        ds.targets = [ds.targets[i] for i in keep]
        if not ds.samples:
            raise DataError(f"every image file of the {split} split is unreadable (e.g. {ds.bad_files[0][0]}: "
                            f"{ds.bad_files[0][1]})")


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
            @staticmethod
            def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
                # image_files, not os.walk(followlinks=True): each file once, loops refused
                found = [(p, class_to_idx[c]) for c in sorted(class_to_idx)
                         if os.path.isdir(os.path.join(directory, c))
                         for p in image_files(os.path.join(directory, c))]
                if not found and not allow_empty:
                    raise DataError(f"no image files in {directory}")
                return found

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
