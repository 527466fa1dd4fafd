"""Writing a file so that its name holds the old content or the new, never half of either.

A file is written under a temporary name beside its target (``.NAME.xxxxxxxx.tmp``), flushed,
``fsync``-ed and moved into place with ``os.replace`` (atomic on POSIX); the folder is fsync-ed
so the rename survives a power cut. An error (or Ctrl-C) removes the temporary file; a SIGKILL
between the write and the rename leaves it, and :func:`remove_stale_temp_files` removes it at the
next start.

Test-only fault injection: each step of a save calls :func:`fault_point` with its name (a
checkpoint pair's steps are ``botnet.engine.checkpoint.SAVE_POINTS``); ``fault_hook`` (a callable,
set by tests) may raise there, and the environment variable ``BOTNET_FAULT_KILL_AT=NAME[:N]``
SIGKILLs the process the N-th time it reaches NAME.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_bytes", "make_shareable", "write_temp", "link_over", "fsync_dir", "unlink_quiet",
           "remove_stale_temp_files", "is_disk_full", "fault_point", "fault_hook", "FAULT_ENV"]

FAULT_ENV = "BOTNET_FAULT_KILL_AT"
fault_hook: Callable[[str], None] | None = None  # test-only: called with each point's name; may raise
_fault_seen: dict[str, int] = {}
# only the names write_temp makes (".NAME.<8 mkstemp chars>.tmp") for the files botnet writes
_TEMP_NAME = re.compile(r"^\..+\.(safetensors|json|jsonl|csv|md|yaml|png|txt|onnx|pt2|ts)\.[a-z0-9_]{8}\.tmp$")


def fault_point(point: str) -> None:
    """Test-only hook at each step of a save: lets the crash tests stop a save exactly here."""
    if fault_hook is not None:
        fault_hook(point)
    spec = os.environ.get(FAULT_ENV)
    if spec and spec.partition(":")[0] == point:
        _fault_seen[point] = _fault_seen.get(point, 0) + 1
        if _fault_seen[point] >= int(spec.partition(":")[2] or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(d: Path) -> None:
    """Make renames, links and unlinks in folder ``d`` durable."""
    try:
        fd = os.open(str(d), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass


def unlink_quiet(path: str | os.PathLike | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def make_shareable(path: str | os.PathLike) -> None:
    """The mode a plain ``open(path, "w")`` or ``mkdir`` would give (0666 / 0777 less the umask): ``mkstemp`` and
    ``mkdtemp`` make theirs private, and a run's checkpoints, an export or a publish are for others to read too."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def write_temp(path: Path, write_fn: Callable[[str], None], point: str | None = None) -> str:
    """``write_fn(tmp)`` into a fsync-ed temporary file beside ``path``; returns its name.
    On any error (or Ctrl-C) the temporary file is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        make_shareable(tmp)
        if point:
            fault_point(f"{point}.write")
        write_fn(tmp)
        if point:
            fault_point(f"{point}.fsync")
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quiet(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None], *, point: str | None = None) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp_path)`` writes a temp file in the same
    directory, which is fsync-ed and then ``os.replace``-d onto ``path``.

    If ``write_fn`` raises (or the process dies) the old ``path`` is untouched and the temp file
    is removed (or left as ``.*.tmp``, never under the final name). ``point`` names the steps for
    the fault-injection tests (``weights``: ``weights.write``, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = write_temp(path, write_fn, point)
    try:
        if point:
            fault_point(f"{point}.rename")
        os.replace(tmp, path)
        tmp = None
    except BaseException:
        unlink_quiet(tmp)
        raise
    if point:
        fault_point("dir.fsync")
    fsync_dir(path.parent)
    if point:
        fault_point("done")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _w)


def link_over(src: Path, dst: Path, point: str) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link; a copy where links are unsupported),
    replacing ``dst`` atomically."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # rename() of two names of one file is a no-op that would leave the temporary name
    tmp: Path | None = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        fault_point(f"{point}.link")
        try:
            os.link(src, tmp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        fault_point(f"{point}.rename")
        os.replace(tmp, dst)
        tmp = None
    except BaseException:
        unlink_quiet(tmp)
        raise


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed save left in ``directory``; returns them.

    Call this at the start of a run, before anything writes into the directory (main rank only).
    """
    d = Path(directory)
    removed = []
    if d.is_dir():
        for f in d.glob(".*.tmp"):
            if f.is_file() and _TEMP_NAME.match(f.name):
                try:
                    f.unlink()
                    removed.append(f)
                except OSError:
                    pass
    return removed


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, also as safetensors' own error (which carries only the text of the OS error)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(m in text for m in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122"))
