"""The error every bad-input failure derives from.

A :class:`UserInputError` means the user gave botnet something it cannot use (a missing file, a
corrupt checkpoint, an out-of-range option); its message names the culprit and what to do, on
one line. The command line prints it as ``error: MESSAGE`` and exits with code 2, without a
traceback. Any other exception is a bug in botnet and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserInputError", "ConfigError", "CheckpointError", "resolve_device", "one_line"]


class UserInputError(Exception):
    """Bad input (file, option, data): the message is meant for the user as it is."""


class ConfigError(UserInputError, ValueError):
    """A config value or command-line option is out of range or unknown."""


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint is missing, unreadable or inconsistent."""


def one_line(e: BaseException) -> str:
    """An error message on one line (library messages may span several)."""
    return " ".join(str(e).split()) or type(e).__name__


def resolve_device(spec: str | None) -> "torch.device":  # noqa: F821
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a usable ``torch.device``.

    Raises :class:`ConfigError` for a device this machine does not have, before any work starts.
    """
    import torch

    spec = "auto" if spec in (None, "") else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} was requested but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type not in ("cpu", "mps"):
        raise ConfigError(f"unsupported device {spec!r}: use auto, cpu or cuda")
    return dev
