"""A run folder belongs to one run: a lock while a run writes into it, and the rules for reusing a folder.

* **The lock.** A run holds ``RUN/.botnet.lock`` (``fcntl.flock``) from its start to its end; the file
  says who holds it (pid, host, start time). The kernel drops a ``flock`` when its process dies, so a
  SIGKILL never leaves a stale lock, only a stale text that nobody trusts. A second process on the same
  folder gets one line naming the folder and the holder (:class:`RunFolderBusy`) before it writes anything.
* **New run, replace or continue.** A new run refuses a folder that already holds a run (any of
  :data:`RUN_FILES` / :data:`RUN_DIRS`) unless told to replace it (``--overwrite``: :func:`clear_run_files`
  removes those names and nothing else) or to continue it (``--resume``). A folder of unrelated files is
  fine to train into: botnet's files are added beside them.
* **Resume writes where the checkpoint is.** :func:`resume_folder` is the folder of the checkpoint given
  to ``--resume``, never the ``output.dir`` recorded inside it (a moved or shared run must not write
  into its old place).

See docs/run-folder.md. Only the main rank under ``torchrun`` takes the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path

from botnet.errors import ConfigError

__all__ = ["LOCK_NAME", "RUN_FILES", "RUN_DIRS", "RUN_DIR_FILES", "RunFolderError", "RunFolderBusy", "RunFolderLock",
           "claim_run_folder", "clear_run_files", "existing_run_files", "resume_folder", "same_folder"]

LOCK_NAME = ".botnet.lock"
# Every name a training command writes in its run folder (the engine, the tasks' finalize, botnet demo).
# One list: the "holds a run" test, --overwrite and docs/run-folder.md all follow it.
RUN_FILES = (
    "config.json", "summary.json", "metrics.jsonl", "metrics.csv",  # engine
    "last.safetensors", "last.state.safetensors", "best.safetensors",  # checkpoints
    "last.prev.safetensors", "last.prev.state.safetensors",  # the pair a save keeps until the new one is whole
    "loss.png", "accuracy.png", "ap.png",  # train.plots
    "confusion_matrix.png", "confusion_matrix.csv",  # classification
    "eval.json", "eval.md", "coco_results.json",  # detection
)
RUN_DIRS = ("tb", "predictions", "samples", "attention")  # TensorBoard, detection drawings, botnet demo
# What botnet writes inside those folders: --overwrite removes these and leaves anything else in them.
RUN_DIR_FILES = {"tb": "events.out.tfevents.*", "predictions": "*.png", "samples": "*.png", "attention": "*.png"}


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked (holds another run, or a --resume/--output conflict)."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock."""


def existing_run_files(folder: str | os.PathLike) -> list[str]:
    """The names of :data:`RUN_FILES` / :data:`RUN_DIRS` present in ``folder`` (``tb/`` for a folder)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    found = [n for n in RUN_FILES if os.path.lexists(d / n)]
    return found + [n + "/" for n in RUN_DIRS if os.path.lexists(d / n)]


def clear_run_files(folder: str | os.PathLike) -> list[str]:
    """Remove what a previous run wrote in ``folder`` (``--overwrite``); every other file stays."""
    from botnet.io.dirswap import remove_written

    d, removed = Path(folder), []
    for name in existing_run_files(d):
        p = d / name.rstrip("/")
        if p.is_dir() and not p.is_symlink():  # only botnet's kind of file in it; the folder if then empty
            remove_written(p, [f.name for f in p.glob(RUN_DIR_FILES[p.name]) if f.is_file()])
        else:
            p.unlink()
        removed.append(name)
    return removed


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def resume_folder(resume: str | os.PathLike) -> Path:
    """The run folder a ``--resume`` target writes into: the folder given, or the folder of the checkpoint file."""
    p = Path(resume)
    if p.is_dir():
        return p
    from botnet.io.weights import resolve_checkpoint

    return resolve_checkpoint(p, prefer=("last",)).parent


def _holder(path: Path) -> str:
    """Who holds the lock, as the holder wrote it (pid, host, start)."""
    try:
        h = json.loads(path.read_text() or "{}")
        return f"pid {int(h['pid'])} on {h.get('host', '?')}, started {h.get('started', '?')}"
    except (OSError, ValueError, TypeError, KeyError):
        return "holder unknown"


_HELD: "weakref.WeakSet[RunFolderLock]" = weakref.WeakSet()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copy of a held lock's descriptor. Else, when the run is
    killed, the child's copy keeps the ``flock`` until the child notices and exits (seconds), and the run that
    ``torchrun --max-restarts`` starts at once finds its own folder busy. The parent's lock is not affected."""
    for lock in list(_HELD):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None  # and the child never removes the lock file


os.register_at_fork(after_in_child=_forget_in_child)


class RunFolderLock:
    """An exclusive ``flock`` on ``FOLDER/.botnet.lock``; :meth:`release` removes the file again.

    The file is removed while still locked, so a process that opened the old file before the removal
    finds, once it gets the lock, that the path no longer names its file, and tries again.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created_dirs: list[Path] = []

    def acquire(self) -> "RunFolderLock":
        for d in reversed([self.folder, *self.folder.parents]):
            if not d.exists():
                d.mkdir()
                self.created_dirs.append(d)  # removed again if the run leaves them empty
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._rmdirs()
                raise RunFolderBusy(f"run folder {self.folder} is in use by another botnet run "
                                    f"({_holder(self.path)}); wait for it to end, or choose another --output") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                _HELD.add(self)
                self._write_holder()
                return self
            os.close(fd)  # the previous holder removed the file after we opened it: take the new one
        raise RunFolderBusy(f"run folder {self.folder}: could not take its lock {self.path}; try again")

    def _write_holder(self) -> None:
        # in place, not atomic_write: replacing the file would give it another inode and split the lock
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = None
        self._rmdirs()

    def _rmdirs(self) -> None:
        for d in reversed(self.created_dirs):  # only empty ones: a run that wrote nothing leaves nothing
            with contextlib.suppress(OSError):
                d.rmdir()
        self.created_dirs = []

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_run_folder(folder: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                     what: str = "--output") -> RunFolderLock:
    """Check ``folder`` is a folder this run may write into, lock it, and return the held lock.

    Raises (one line, before anything is written): :class:`ConfigError` for a file or an unwritable
    path, :class:`RunFolderBusy` when another process holds it, :class:`RunFolderError` when a new
    run (neither ``resume`` nor ``overwrite``) would write into a folder that already holds a run.
    """
    from botnet.io.folders import check_output_dir

    if resume and overwrite:
        raise RunFolderError(f"--overwrite and --resume contradict each other: --resume continues the run in "
                             f"{folder}, --overwrite replaces it; give one of them")
    check_output_dir(folder, what)  # a file, under a file, or not writable
    lock = RunFolderLock(folder).acquire()
    found = [] if resume or overwrite else existing_run_files(folder)  # checked under the lock: no race
    if found:
        lock.release()
        shown = ", ".join(found[:4]) + (f", ... ({len(found)} in all)" if len(found) > 4 else "")
        raise RunFolderError(f"{what} {folder} already holds a run ({shown}): continue it with --resume {folder}, "
                             f"replace it with --overwrite (removes only the files botnet wrote there), or choose "
                             f"another {what}")
    return lock
