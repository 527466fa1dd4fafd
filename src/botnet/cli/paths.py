"""Checks on the paths commands write to, made before any work: an output file that is a folder,
or an output folder that is a file, is one line naming the option (not a traceback at the end)."""
from __future__ import annotations

import os

from botnet.errors import ConfigError

__all__ = ["check_output_file", "check_output_dir", "check_input_images"]


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


def check_output_dir(path: str | os.PathLike | None, option: str) -> None:
    """``path`` can become a folder: neither it nor a folder above it is a file."""
    if path is None:
        return
    p = os.path.abspath(os.fspath(path))
    while p and not os.path.exists(p):
        p = os.path.dirname(p) if os.path.dirname(p) != p else ""
    if p and not os.path.isdir(p):
        shown = os.fspath(path)
        raise ConfigError(f"{option} {shown}: {p} is a file, not a folder" if p != os.path.abspath(shown)
                          else f"{option} {shown} is a file, not a folder")


def check_input_images(paths: list[str], skip_bad: bool = False, offer_skip: bool = True,
                       missing_ok: bool = False) -> list[tuple[str, str]]:
    """Every image file's header, before the model is loaded: ``[(path, reason)]`` of the bad ones
    with ``skip_bad``, else the first bad one is a DataError (FIFOs, folders, 0-byte and non-image
    files are named here, never opened for decoding). ``missing_ok``: files that do not exist are
    left to the command."""
    from botnet.data.errors import DataError
    from botnet.data.folder import check_image_header

    bad = []
    for p in paths:
        if missing_ok and not os.path.lexists(p):
            continue  # the command names it where it reads it
        reason = check_image_header(p) if os.path.exists(p) else "no such file"
        if reason is not None:
            if not skip_bad:
                raise DataError(f"cannot read image file {p}: {reason}; remove it from the list"
                                + (" or pass --skip-bad to skip unreadable files" if offer_skip else ""))
            bad.append((p, reason))
    return bad
