"""The output-folder rule every writer follows: check the folder can be written before any work.

A command that writes (a run, an export, a generated data set, a publish) calls
:func:`check_output_dir` first, so a folder it cannot use is one line naming it, not a failure
after minutes of work.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from botnet.errors import ConfigError

__all__ = ["check_output_dir"]


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """Make sure ``path`` is (or can become) a folder this process can write into, before any work.

    Creates it if needed and writes/removes a probe file. Raises :class:`botnet.errors.ConfigError`
    naming the path when it is a file, lies under a file, or cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a folder; choose another run directory")
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
