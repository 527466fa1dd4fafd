"""What a task gives the training engine: its model, its config, its data, one step and one evaluation.

The engine (:class:`botnet.engine.Trainer`) owns everything else: devices and processes, autocast
and gradient scaling, clipping, the optimizer and schedule, EMA, the wall-clock budget, threads,
checkpoints and exact resume, Ctrl-C and non-finite losses, logging and ``summary.json``. A new
task (say, semantic segmentation) subclasses :class:`Task`, fills in these methods, and registers
itself once (:func:`botnet.tasks.register_task`); the command line (``botnet NAME train|eval``),
``load_model`` and ``botnet publish`` then serve it like botnet's own tasks (CONTRIBUTING.md).
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
    """One training step's losses (``losses["loss"]`` is minimised) and what the meters count.

    ``metrics`` holds counts that add up over a step's batches and over an epoch (classification:
    ``correct``, the right top-1 answers, which the epoch record turns into ``train_top1``)."""

    losses: dict[str, torch.Tensor]
    batch_size: int
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class Task:
    """Base class; see the module doc. ``key_metric`` decides ``best.safetensors`` (higher is better)."""

    name = "task"
    config_defaults: dict[str, Any] = {}  # the task's whole config: engine_sections() merged with its own
    key_metric = "loss"
    loss_label = "training loss"  # what losses["loss"] is, for the plots (classification: cross-entropy)
    find_unused_parameters = False  # DDP: True when some parameters get no gradient in a step
    # what ``auto`` becomes on CUDA for train.amp / channels_last / cudnn_benchmark (see engine.devices);
    # on the CPU ``auto`` is none / False / False
    cuda_defaults: dict[str, Any] = {}

    def validate(self, cfg: dict) -> None:
        """Raise :class:`botnet.errors.ConfigError` for a bad value, before any work."""

    def resolve_config(self, cfg: dict, recipe: str | None = None) -> dict[str, str]:
        """Fill, in place, the values the config leaves open (``None``) from the model or the data; returns
        ``{key: where its value came from}`` for ``--print-config``."""
        return {}

    def saved_config(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """The whole config of a saved run (``config.json``, a checkpoint's or a published folder's): the task's
        defaults with the saved values over them, keys its declared config renamed since moved to their place."""
        from botnet.engine.config import merge
        from botnet.tasks import config_schema, is_task

        schema = config_schema(self.name) if is_task(self.name) else None
        return merge(self.config_defaults, schema.migrate(saved or {}) if schema else (saved or {}))

    def build_model(self, arch: str, model_kwargs: dict[str, Any]) -> nn.Module:
        """The (untrained) model a checkpoint records as ``arch`` + ``model_kwargs`` (``load_model`` calls this)."""
        raise NotImplementedError

    def evaluate_checkpoint(self, model: nn.Module, meta: dict[str, Any], cfg: dict, device: torch.device
                            ) -> dict[str, Any]:
        """Metrics of a trained ``model`` on the validation data ``cfg`` names (``botnet NAME eval``): by default
        the task's own :meth:`setup` and :meth:`evaluate`, in one process."""
        from botnet.engine.distributed import DistInfo

        dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
        return self.evaluate(model.to(device).eval(), self.setup(cfg, dist), cfg, dist, desc="eval")

    def publish(self, model: nn.Module, meta: dict[str, Any], info: dict[str, Any], folder: Path) -> None:
        """Write ``folder/config.json`` and ``folder/README.md`` for ``botnet publish`` (the weights are written
        beside them). ``info``: what the run recorded (``weights``, ``config``, ``summary``, ``command`` ...)."""
        from botnet.io.published import write_generic_publish

        write_generic_publish(folder, task=self.name, meta=meta, info=info)

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
