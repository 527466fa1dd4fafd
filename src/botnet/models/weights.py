"""Initialise a BoT (or any registered) model from a ResNet checkpoint the user has on disk.

No weights are downloaded (except an ``hf-hub:ORG/NAME`` id, through huggingface_hub): the
checkpoint is a torchvision or timm ResNet state dict (``.pth``/``.pt``, loaded with
``weights_only=True``, or ``.safetensors``), a botnet run directory, or a published model folder
(``botnet publish``), so a classifier trained here can start a detector. torchvision and timm share the
parameter names used here (``conv1``, ``bn1``, ``layerX.Y.convZ``, ``downsample.0/1``, ``fc``,
timm's ``se.fc1/fc2``), so a tensor transfers when its name and shape match.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from botnet.errors import CheckpointError
from botnet.io.weights import read_weights, resolve_checkpoint

__all__ = ["TransferReport", "load_resnet_weights", "read_state_dict"]

_log = logging.getLogger(__name__)

# Wrappers that training scripts put around a state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state", "module", "state_dict_ema", "model_ema")


@dataclass
class TransferReport:
    """What :func:`load_resnet_weights` did; ``str(report)`` is a short human summary."""

    transferred: list[str] = field(default_factory=list)  # copied from the checkpoint
    fresh: list[str] = field(default_factory=list)  # model tensors left freshly initialised
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, ckpt, model)
    unused: list[str] = field(default_factory=list)  # checkpoint tensors with no place in the model
    adapted: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # transferred after resizing

    def __str__(self) -> str:
        lines = [
            f"transferred {len(self.transferred)} tensors; {len(self.fresh)} stay freshly initialised; "
            f"{len(self.shape_mismatch)} shape mismatches; {len(self.unused)} checkpoint tensors unused"
        ]
        if self.adapted:
            lines.append(f"adapted {len(self.adapted)} of the transferred tensors: " + ", ".join(_summarise(
                [f"{n} {list(a)}->{list(b)}" for n, a, b in self.adapted], 6)))
        if self.fresh:
            lines.append("fresh: " + ", ".join(_summarise(self.fresh)))
        for name, got, want in self.shape_mismatch:
            lines.append(f"shape mismatch (kept fresh): {name}: checkpoint {list(got)} vs model {list(want)}")
        if self.unused:
            lines.append("unused: " + ", ".join(_summarise(self.unused)))
        return "\n".join(lines)


def _summarise(names: list[str], limit: int = 12) -> list[str]:
    return names[:limit] + ([f"... (+{len(names) - limit} more)"] if len(names) > limit else [])


def read_state_dict(source: str | PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a path (.safetensors / .pth / .pt / .bin, a run directory, a
    published folder or an ``hf-hub:`` id) or a mapping.

    Unwraps ``{"state_dict": ...}``-style nesting and strips DDP's ``module.`` prefix. Pickled files
    are read with ``weights_only=True``: no code in a checkpoint is ever executed.
    """
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            # a run directory (best, else last) or a published folder / hf-hub id (its model.safetensors)
            path = resolve_checkpoint(source)
        # safetensors, or torch.load(weights_only=True): pickles with arbitrary objects are refused
        sd = read_weights(path)
    for key in _NESTED_KEYS:
        if key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entries that are not tensors: {_summarise(bad)}")
    return sd


def _fit(name: str, tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` made to fit ``target`` where that keeps its meaning, else None.

    Position tables trained at another size are resized as the attention layer does on load (a
    classifier trained at 64 px starts a detector at 1024 px); the first conv of a model with other
    input channels is adapted (a grayscale classifier starts an RGB detector).
    """
    if name.rsplit(".", 1)[-1] in ("rel_h", "rel_w", "abs_h", "abs_w"):
        if tensor.dim() == 2 and tensor.shape[1] == target.shape[1]:
            from botnet.layers import resize_pos_table

            return resize_pos_table(tensor.to(target.dtype), target.shape[0])
    elif name == "conv1.weight" and tensor.dim() == 4 and tensor.shape[0] == target.shape[0] \
            and tensor.shape[2:] == target.shape[2:]:
        c = int(target.shape[1])
        if tensor.shape[1] == 1:  # grayscale -> c channels: a grey image repeated c times gives the same output
            return tensor.to(target.dtype).repeat(1, c, 1, 1) / c
        if tensor.shape[1] == 3:  # RGB -> c channels: timm's rule (sum for 1, tiled and rescaled otherwise)
            from timm.models import adapt_input_conv

            return adapt_input_conv(c, tensor).to(target.dtype)
    return None


def load_resnet_weights(
    model: nn.Module,
    source: str | PathLike | Mapping[str, torch.Tensor],
    *,
    include_classifier: bool | None = None,
    verbose: bool = True,
) -> TransferReport:
    """Copy every tensor whose name and shape match from a ResNet checkpoint into ``model``.

    BoT blocks keep their attention (``mhsa.*``) freshly initialised, since a ResNet has none; the
    rest of the network (stem, c2-c4, the 1x1 convs and BNs of c5, shortcuts) transfers. From a
    BoTNet checkpoint (a run directory or a published folder) every tensor of the same architecture
    transfers, position tables resized and the first conv adapted when sizes or channels differ
    (listed in ``report.adapted``). The classifier transfers only when its shape matches (or never,
    with ``include_classifier=False``).
    Returns a :class:`TransferReport`; with ``verbose`` it is also logged.
    """
    sd = read_state_dict(source)
    own = model.state_dict()
    report = TransferReport()
    new_sd = {}
    for name, tensor in sd.items():
        if name not in own:
            report.unused.append(name)
            continue
        if include_classifier is False and name.split(".")[0] == "fc":
            report.unused.append(name)
            continue
        if tuple(tensor.shape) != tuple(own[name].shape):
            fitted = _fit(name, tensor, own[name])
            if fitted is None:
                report.shape_mismatch.append((name, tuple(tensor.shape), tuple(own[name].shape)))
                continue
            report.adapted.append((name, tuple(tensor.shape), tuple(own[name].shape)))
            tensor = fitted
        new_sd[name] = tensor.to(own[name].dtype)
        report.transferred.append(name)
    report.fresh = [k for k in own if k not in new_sd]
    if not report.transferred:
        raise CheckpointError(
            "no tensor of the checkpoint matches the model by name and shape; is it a ResNet "
            f"state dict? first checkpoint keys: {_summarise(list(sd), 5)}"
        )
    model.load_state_dict(new_sd, strict=False)
    if verbose:
        _log.warning("load_resnet_weights: %s", report)
    return report
