"""Guards for long runs: non-finite loss detection and clean Ctrl-C handling.

::

    with GracefulInterrupt() as stop:          # first Ctrl-C sets stop.requested
        for batch in loader:
            loss = ...
            check_finite(loss, step)           # raises NonFiniteLossError
            ...
            if stop.requested:                 # save a checkpoint, then leave the loop
                break

A second Ctrl-C raises ``KeyboardInterrupt`` immediately. In a multi-process job use
:func:`botnet.engine.distributed.any_rank_true` on ``stop.requested`` / the non-finite flag
so all ranks stop at the same step (the classification trainer does this once per step).
"""
from __future__ import annotations

import math
import signal
import sys
import threading

import torch

__all__ = ["NonFiniteLossError", "check_finite", "is_finite", "GracefulInterrupt"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf. ``step`` is the optimizer step where it happened."""

    def __init__(self, value: float, step: int, epoch: int | None = None, hint: str = ""):
        self.value, self.step, self.epoch = value, step, epoch
        where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        msg = (f"loss is {value} at {where}; training stopped. The last good checkpoint was kept."
               " Try a lower learning rate (--set optim.lr=...), gradient clipping (--grad-clip 1.0),"
               " or bf16 instead of fp16.")
        if hint:
            msg += " " + hint
        super().__init__(msg)


def is_finite(value: torch.Tensor | float) -> bool:
    """True when ``value`` (a scalar tensor or float) is neither NaN nor inf."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all().item())
    return math.isfinite(float(value))


def check_finite(loss: torch.Tensor | float, step: int, epoch: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/inf."""
    if not is_finite(loss):
        v = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        raise NonFiniteLossError(v, step, epoch)


class GracefulInterrupt:
    """Context manager: the first SIGINT (and SIGTERM) only sets ``requested``; the second raises.

    Only installs handlers in the main thread (elsewhere it is a passive flag holder).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), message: str | None = None):
        self.signals = signals
        self.requested = False
        self.message = message or "\ninterrupt received: finishing this step, saving a checkpoint and exiting (press Ctrl-C again to abort now)"
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(self.message, file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                try:
                    self._old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):  # pragma: no cover
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            try:
                signal.signal(s, h)
            except (ValueError, OSError):  # pragma: no cover
                pass
        self._old.clear()
