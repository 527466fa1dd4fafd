"""Putting a finished folder in place of another without a moment where neither is there.

``botnet publish`` and the data-set generator write a whole folder beside its destination and then
swap it in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so a kill at any instant
leaves either the old folder or the new one under the destination name. Elsewhere (or on a file
system without it) two renames are used, with a short window in which the old folder sits under a
hidden sibling name. The old folder is then emptied of the files its writer names, never more.
"""
from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Iterable

from botnet.io.atomic import fsync_dir
from botnet.log import get_logger

__all__ = ["swap_into_place", "remove_written"]

log = get_logger("io")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing paths; False where the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # no glibc renameat2 (macOS, Windows, musl < 1.2.?)
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or file system without the flag
        return False
    raise OSError(e, os.strerror(e), os.fspath(b))


def swap_into_place(new: str | os.PathLike, dest: str | os.PathLike) -> Path | None:
    """Put folder ``new`` at ``dest`` (same parent folder). An existing ``dest`` (the caller has
    checked it is empty or its own earlier output) is returned at its new place, for the caller to
    remove what it wrote there; None when ``dest`` did not exist."""
    new, dest = Path(new), Path(dest)
    if not os.path.lexists(dest):
        os.rename(new, dest)
        fsync_dir(dest.parent)
        return None
    if _exchange(new, dest):
        fsync_dir(dest.parent)
        return new
    old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
    os.rename(dest, old)
    os.rename(new, dest)
    fsync_dir(dest.parent)
    return old


def remove_written(folder: str | os.PathLike, names: Iterable[str]) -> bool:
    """Delete ``names`` (files, relative to ``folder``), then the folders that are left empty,
    deepest first, ``folder`` last. Anything else in it stays; returns whether ``folder`` is gone."""
    folder = Path(folder)
    dirs = {folder}
    for n in names:
        p = folder / n
        dirs.update(q for q in p.parents if folder in q.parents)
        try:
            if p.is_file() or p.is_symlink():
                p.unlink()
        except FileNotFoundError:
            pass
    for d in sorted(dirs, key=lambda q: len(q.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    if folder.exists():
        log.warning(f"left {folder}: it holds files botnet did not write")
        return False
    return True
