"""What a task gives the training engine: its model, its data, one step and one evaluation.

The engine (:class:`botnet.engine.Trainer`) owns everything else: devices and processes, autocast
and gradient scaling, clipping, the optimizer and schedule, EMA, the wall-clock budget, threads,
checkpoints and exact resume, Ctrl-C and non-finite losses, logging and ``summary.json``. A new
task (say, semantic segmentation) subclasses :class:`Task` and fills in these methods only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Task", "TaskSetup", "StepOutput"]


@dataclass
class TaskSetup:
    """What :meth:`Task.setup` built, before the engine moves and wraps anything."""

    model: nn.Module                       # on the CPU, unwrapped
    arch: str                              # stored in checkpoints: how to rebuild the model ...
    model_kwargs: dict[str, Any]           # ... with every option (rebuild_model reads both)
    train_loader: torch.utils.data.DataLoader  # its sampler has set_epoch(e) and skip(n) (ResumableSampler)
    num_val: int                           # items one evaluation sees (for the budget estimate)
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)      # extra checkpoint metadata (task-defined)
    skipped_train: list[str] = field(default_factory=list)  # files left out before training
    eval_passes: int = 1                   # forward passes per validation item (2 with flip test-time augmentation)
    state: dict[str, Any] = field(default_factory=dict)     # anything else the task keeps (val sets ...)


@dataclass
class StepOutput:
    """One training step's losses (``losses["loss"]`` is minimised) and counts for the meters."""

    losses: dict[str, torch.Tensor]
    batch_size: int
    correct: int | None = None             # classification: right top-1 answers (None: not tracked)
    skipped: list[str] = field(default_factory=list)


class Task:
    """Base class; see the module doc. ``key_metric`` decides ``best.safetensors`` (higher is better)."""

    name = "task"
    key_metric = "loss"
    loss_label = "training loss"  # what losses["loss"] is, for the plots (classification: cross-entropy)
    find_unused_parameters = False  # DDP: True when some parameters get no gradient in a step
    # what ``auto`` becomes on CUDA for train.amp / channels_last / cudnn_benchmark (see engine.devices);
    # on the CPU ``auto`` is none / False / False
    cuda_defaults: dict[str, Any] = {}

    def validate(self, cfg: dict) -> None:
        """Raise :class:`botnet.errors.ConfigError` for a bad value, before any work."""

    def setup(self, cfg: dict, dist) -> TaskSetup:
        raise NotImplementedError

    def train_step(self, model: nn.Module, batch: Any, device: torch.device, setup: TaskSetup) -> StepOutput | None:
        """Forward and loss for one batch (inside the engine's autocast); ``None``: nothing to train on."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, setup: TaskSetup, cfg: dict, dist, desc: str = "eval") -> dict[str, Any]:
        """Metrics of ``model`` on the validation data, over all ranks. Numbers are logged; other
        values (confusion matrices, full COCO tables) are kept for :meth:`finalize`."""
        raise NotImplementedError

    def describe(self, metrics: dict[str, Any]) -> str:
        """One line for the log after an evaluation."""
        return " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))

    def finalize(self, run_dir: Path, setup: TaskSetup, final: dict[str, dict[str, Any]], records: list[dict],
                 cfg: dict) -> dict[str, Any]:
        """Pictures and task files at the end (main rank); returns extra ``summary.json`` entries."""
        return {}

    def plot(self, records: list[dict], run_dir: Path) -> list[Path]:
        """The run's PNG plots from its ``metrics.jsonl`` records (``train.plots``; main rank, at the end):
        ``loss.png`` labelled :attr:`loss_label`, and ``accuracy.png`` when accuracy was logged."""
        from botnet.viz.plots import plot_curves

        return plot_curves(records, run_dir, loss_label=self.loss_label)
