"""The temporary file or folder a command writes beside its output, and what a killed one left.

``botnet export``, ``botnet publish``, ``botnet data shards`` and the data-set generator write their
output under a temporary name beside it (``.NAME.xxxxxxxx.tmp``, the random part from ``mkstemp`` /
``mkdtemp``) and rename it into place when it is complete. An error removes the temporary; a SIGKILL
or a power cut leaves it, and it can be as large as the output itself.

So the writer holds an exclusive ``flock`` on its temporary for as long as it works on it; the lock
dies with the process, however it ends. The next command writing the same output removes the
temporaries of that name whose lock it can take: their writer is gone. A temporary whose writer is
still running (a second command on the same output) is left alone.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, so nothing is ever taken as abandoned
    fcntl = None

from botnet.log import get_logger

__all__ = ["TempBeside", "remove_abandoned"]

log = get_logger("io")


def _lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file or folder open as ``fd`` (not removed or replaced since)."""
    try:
        st, at = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (at.st_dev, at.st_ino)


class TempBeside:
    """A new temporary file (or, ``folder``, folder) beside ``dest``, named ``.NAME.xxxxxxxx<suffix>``
    and locked until :meth:`close` (or the end of the ``with`` block, or of the process).

    Closing releases the lock only; the caller renames or removes the temporary itself."""

    def __init__(self, dest: str | os.PathLike, *, folder: bool = False, suffix: str = ".tmp"):
        dest = Path(dest)
        for _ in range(100):
            if folder:
                name = tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=str(dest.parent))
                fd = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            else:
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=str(dest.parent))
            # a command cleaning up after a killed one may have taken this name in the instant before the
            # lock: it removes it, and this writer takes another
            if (_lock(fd) or fcntl is None) and _names(fd, Path(name)):
                self.path, self._fd = Path(name), fd
                return
            os.close(fd)
        raise OSError(f"could not create a temporary file beside {dest}")  # pragma: no cover

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "TempBeside":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_abandoned(dest: str | os.PathLike, remove: Callable[[Path], None], *, suffix: str = ".tmp",
                     what: str = "an interrupted run") -> list[Path]:
    """Remove, with ``remove(path)``, each temporary :class:`TempBeside` made for ``dest`` whose writer is
    gone (its lock is free); returns them. ``remove`` runs while the lock is held, so a new writer
    cannot take the name meanwhile; it should delete only what the writer writes."""
    dest = Path(dest)
    pattern = re.compile(re.escape(f".{dest.name}.") + r"[a-z0-9_]{8}" + re.escape(suffix))
    try:
        entries = [e for e in os.scandir(dest.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone meanwhile, a link, or not ours to read
            continue
        try:
            if _lock(fd) and _names(fd, path):
                remove(path)
                removed.append(path)
                log.info(f"removed {path}: the temporary output of {what}, whose process is gone")
        except OSError as e:
            log.warning(f"could not remove {path}, left by {what} ({e}); remove it yourself")
        finally:
            os.close(fd)
    return removed
