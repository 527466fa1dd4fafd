"""The output-path rule every writer follows: check the place it writes to before any work.

A command that writes (a run, an export, a generated data set, a publish, predictions) calls
:func:`check_output_dir` or :func:`check_output_file` first, so a path it cannot use is one line
naming it and its option, not a failure after minutes of work.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from botnet.errors import ConfigError

__all__ = ["check_output_dir", "check_output_file"]


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """Make sure ``path`` is (or can become) a folder this process can write into, before any work.

    Writes/removes a probe file, creating the missing folders for it and removing them again.
    Raises :class:`botnet.errors.ConfigError` naming the path when it is a file, lies under a file,
    or cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a folder; choose another folder")
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what} {p} cannot be created: {anc} is a file")
    created = []  # folders made only for the probe are removed again: a failed run leaves nothing
    try:
        for d in reversed([p, *p.parents]):
            if not d.exists():
                d.mkdir()
                created.append(d)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=str(p))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {p} is not writable ({e.strerror or e}); choose a folder you can "
                          f"write to") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
    return p


def check_output_file(path: str | os.PathLike | None, option: str) -> None:
    """``path`` can become a file: it is not a folder (or other non-file) and its parent is a folder."""
    if path is None:
        return
    p = os.fspath(path)
    if os.path.isdir(p):
        raise ConfigError(f"{option} {p} is a folder; give a file name (e.g. {os.path.join(p, 'out.json')})")
    if os.path.exists(p) and not os.path.isfile(p):
        raise ConfigError(f"{option} {p} exists and is not a regular file")
    parent = os.path.dirname(os.path.abspath(p))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"{option} {p}: {parent} is a file, not a folder")
