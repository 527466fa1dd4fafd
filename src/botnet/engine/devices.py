"""Device-dependent defaults: what ``auto`` means for ``train.amp``, ``train.channels_last``,
``train.cudnn_benchmark`` and ``data.num_workers``.

A user who passes ``--device cuda`` (or has a GPU and keeps ``--device auto``) gets the settings
that were measured to pay off there, without knowing them; on the CPU ``auto`` keeps what the CPU
runs fastest. Each task states its CUDA preferences in ``Task.cuda_defaults``:

- classification: bf16 autocast, channels_last and ``cudnn.benchmark`` on. Shapes are fixed, so
  the autotuner's one-off search pays back (bf16 and channels_last are what the BoT50 / R50
  training-step ratios of docs/performance.md were measured with).
- detection: ``cudnn.benchmark`` off. The RoI heads see a different number of boxes every step,
  so the autotuner searched again nearly every step: a Mask R-CNN step was about 10x slower with
  it on (one H200, 1024 px canvas, batch 2).

``data.num_workers: auto`` is 0 on the CPU (the loader would take cores from the model: a 2-core
machine has none to spare) and up to 8 worker processes per GPU on CUDA (the detection demo ran
at 13 batches/s with the GPU waiting on the main process).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from botnet.data.workers import resolve_num_workers

__all__ = ["resolve_device_defaults", "bf16_supported", "describe_machine", "command_line",
           "set_command_line"]


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_device_defaults(cfg: dict, cuda_defaults: dict[str, Any], device: torch.device,
                            world_size: int = 1) -> dict[str, tuple[Any, Any]]:
    """Replace every ``auto`` in ``cfg`` (in place) by its value on ``device``; returns
    ``{key: (was, now)}`` for the log, so the choice is never hidden."""
    tc, changed = cfg["train"], {}
    cuda = device.type == "cuda"
    for key, cpu_value in (("amp", "none"), ("channels_last", False), ("cudnn_benchmark", False)):
        if tc.get(key, "auto") != "auto":
            continue
        now = cuda_defaults.get(key, cpu_value) if cuda else cpu_value
        if key == "amp" and now == "bf16" and not bf16_supported(device):
            now = "none"  # a GPU without bf16 (before Ampere): full precision rather than fp16 surprises
        tc[key] = now
        changed[f"train.{key}"] = ("auto", now)
    if cfg["data"].get("num_workers") == "auto":
        cfg["data"]["num_workers"] = resolve_num_workers("auto", device, world_size)
        changed["data.num_workers"] = ("auto", cfg["data"]["num_workers"])
    if cuda and not tc.get("deterministic"):
        torch.backends.cudnn.benchmark = bool(tc["cudnn_benchmark"])
    return changed


def describe_machine(device: torch.device | None = None) -> str:
    """CPU model and logical cores, and the GPU a run used: what ``summary.json`` and model cards state."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores"
    if device is not None and device.type == "cuda":
        text += f"; {torch.cuda.get_device_name(device)}"
    elif device is None and torch.cuda.is_available():
        text += "; " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return text


_COMMAND: list[str] | None = None


def set_command_line(argv: list[str]) -> None:
    """Set by ``botnet.cli.main``: the command a run records (``sys.argv`` may be a test runner's)."""
    global _COMMAND
    _COMMAND = [str(a) for a in argv]


def command_line() -> str:
    """The command this process runs, as a user would type it (``botnet ...`` from the command line)."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in (_COMMAND or sys.argv))
