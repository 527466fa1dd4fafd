"""One-line loading of published models: a classifier through timm, a detector as torchvision's model.

    model = botnet.create_model("botnet_mini", pretrained="OUT_DIR")     # or "hf-hub:ORG/NAME"
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)      # the same model and weights
    detector = botnet.hub.load_detector("OUT_DIR")                       # torchvision MaskRCNN/FasterRCNN

Classifiers load in the model factory (:mod:`botnet.models.pretrained`); a detector needs its task,
so it loads here, above the tasks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from botnet.engine.rebuild import build_from_metadata, load_model
from botnet.io.published import require_published
from botnet.models import pretrained

__all__ = ["load_detector", "check_weights"]


def check_weights(folder: Path, meta: dict[str, Any]) -> None:
    """model.safetensors has exactly the tensors config.json describes, for a model of any task
    (names and shapes from the file header against the model built on the meta device)."""
    pretrained.check_weights(folder, meta, build=build_from_metadata)


def load_detector(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The torchvision detector of a published detection folder (or hf-hub id), in eval mode."""
    return load_model(require_published(source), device=device, task="detection")[0]
