"""Exceptions for data problems; their messages are meant for the user as they are."""
from __future__ import annotations

from botnet.errors import UserInputError


class DataError(UserInputError, RuntimeError):
    """A data set is unusable (missing split, empty class, unreadable file ...)."""


class DatasetNotFoundError(DataError):
    """The data set could not be found locally (and could not be downloaded)."""


class BadImageError(DataError):
    """An image file could not be decoded; ``path`` names it."""

    def __init__(self, path: str, reason: str | None = None):
        if reason is None:  # rebuilt by a DataLoader worker's re-raise from the formatted traceback
            path, reason = _from_worker(str(path))
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image file {path}: {reason}. Remove or replace the file, "
                         f"or pass --skip-bad to skip unreadable files (they are counted in the summary).")


def _from_worker(text: str) -> tuple[str, str]:
    """``(path, reason)`` from the traceback text a DataLoader worker sends back for this error."""
    import re

    m = re.search(r"BadImageError: cannot read image file (.*?): (.*)\. Remove or replace the file", text, re.S)
    if m is None:
        return "(unknown file)", " ".join(text.split())[-200:]
    return m.group(1), " ".join(m.group(2).split())
