"""Checks on the image files a command reads, made before the model loads: a bad file is one line
naming it (the paths a command writes to are checked by :mod:`botnet.io.folders`)."""
from __future__ import annotations

import os

__all__ = ["check_input_images"]


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


def missing_image(e: FileNotFoundError, offer_skip: bool = True):
    """The one-line error for an image path that does not exist (predict and attention name it where they
    read it, after the checkpoint)."""
    from botnet.errors import UserInputError

    return UserInputError(f"cannot read image file {e.filename}: no such file; check the path"
                          + (", or pass --skip-bad to skip unreadable files" if offer_skip else ""))
