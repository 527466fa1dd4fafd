"""The ``botnet`` logger: the library logs, the command line decides where it goes.

:func:`setup_cli_logging` (called by ``botnet.cli.main``) sends INFO and above to standard output
through ``tqdm.write``, so messages never tear a progress bar. A library user who configures
nothing sees warnings only (Python's default), as with any library. Progress bars are drawn only on a
terminal (:func:`progress_enabled`); elsewhere the trainer logs plain lines instead.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["get_logger", "progress_enabled", "setup_cli_logging"]

LOGGER_NAME = "botnet"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def progress_enabled(requested: bool = True, stream=None) -> bool:
    """Whether to draw a progress bar: asked for, and ``stream`` (tqdm's, standard error) is a terminal.

    Into a file or a pipe a bar is one carriage-return-separated redraw after another (52 KB for a
    2.5-minute run) that nobody sees as a bar; the trainer writes plain per-step lines there instead.
    """
    stream = sys.stderr if stream is None else stream
    try:
        return bool(requested) and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _TqdmHandler(logging.Handler):
    """Writes each record on its own line, above any progress bar, to the *current* sys.stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            msg = self.format(record)
            if record.levelno >= logging.WARNING and not msg.startswith(("warning", "error")):
                msg = f"{record.levelname.lower()}: {msg}"
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(msg, file=stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_cli_logging(level: int = logging.INFO) -> None:
    log = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        h = _TqdmHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
